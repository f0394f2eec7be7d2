"""Stage 3, the reverse pass: the structure of backward graphs, the notes' practice
exercises, higher order (Hessian-vector products), shared weights and the errors.

Every numeric check runs the graphs with the NumPy reference in float64 and compares
with closed forms or central finite differences.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc import GradientError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def backward_nodes(forward: graphc.Graph, bwd: graphc.Graph):
    """The nodes grad() added: every name the forward graph did not have."""
    return [n for n in bwd.nodes if n.output.name not in forward.values]


def rel_err(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300))


def central_gradient(loss, arrays: dict, name: str, eps: float = 1e-6) -> np.ndarray:
    """Entry-by-entry central differences of the scalar loss(arrays) with respect to arrays[name]."""
    base = np.asarray(arrays[name], float)
    out = np.zeros_like(base)
    for idx in np.ndindex(base.shape):
        step = np.zeros_like(base)
        step[idx] = eps
        out[idx] = (loss({**arrays, name: base + step}) - loss({**arrays, name: base - step})) / (2 * eps)
    return out


# ----------------------------------------------------------------------------- the one-layer network
@pytest.fixture(scope="module")
def one_layer():
    g = graphc.load(EXAMPLES / "one_layer.toml")
    return g, graphc.grad(g, "J", ["W", "b1", "U", "b2"])


def test_autodiff_computes_delta1_once_and_shares_it(one_layer):
    g, bwd = one_layer
    assert [n.op.name for n in bwd.nodes].count("softmax") == 1      # the forward ŷ, reused by identity (7)
    assert [n.op.name for n in bwd.nodes].count("onehot") == 1
    d_theta = bwd.values["d_theta"]
    assert sum(1 for n in bwd.nodes if n.output is d_theta) == 1
    assert d_theta.node.origin.identity == "7"
    consumers = [n for n in bwd.nodes if d_theta in n.inputs]
    assert len(consumers) == 3
    d_U, d_b2, d_h = bwd.outputs["d_U"].node, bwd.outputs["d_b2"].node, bwd.values["d_h"].node
    assert d_b2.inputs == (d_theta,)                                  # Σ_rows δ1, identity (3)
    assert d_theta in d_h.inputs and d_h.op.name == "matmul"          # δ1 U, identity (2)
    assert d_U.op.name == "matmul" and d_U.inputs[0].node.op.name == "transpose" \
        and d_U.inputs[0].node.inputs == (d_theta,)                   # δ1ᵀ h, identity (5)
    assert {n.output for n in consumers} == {d_b2.output, d_h.output, d_U.inputs[0]}


def test_autodiff_graph_declares_adjoints_and_copy_maps_them(one_layer):
    """grad's Graph carries `adjoints` (forward value -> its adjoint, both values of that graph);
    a forward graph declares it empty, and Graph.copy carries it through the value map."""
    g, bwd = one_layer
    assert g.adjoints == {} and g.updates == {}
    names = {v.name: d.name for v, d in bwd.adjoints.items()}
    assert names["theta"] == "d_theta" and names["W"] == "d_W" and names["J"] == "d_J"
    for v, d in bwd.adjoints.items():
        assert bwd.values[v.name] is v and bwd.values[d.name] is d
    copy, vmap = bwd.copy("again")
    assert {vmap[v]: vmap[d] for v, d in bwd.adjoints.items()} == copy.adjoints
    assert {v.name: d.name for v, d in copy.adjoints.items()} == names
    for v, d in copy.adjoints.items():
        assert copy.values[v.name] is v and copy.values[d.name] is d       # the copy's values, not bwd's


def test_autodiff_shares_delta_between_W_and_b1(one_layer):
    g, bwd = one_layer
    d_z = bwd.values["d_z"]
    assert bwd.outputs["d_b1"].node.inputs == (d_z,)
    assert bwd.outputs["d_W"].node.inputs[0].node.inputs == (d_z,)


def test_autodiff_has_no_duplicated_subgraph(one_layer):
    g, bwd = one_layer
    keys = [(n.op.name, tuple(id(v) for v in n.inputs), repr(sorted(n.attrs.items()))) for n in bwd.nodes]
    assert len(keys) == len(set(keys))


def test_autodiff_relu_backward_reads_h_never_z(one_layer):
    g, bwd = one_layer
    h, z = bwd.values["h"], bwd.values["z"]
    signs = [n for n in bwd.nodes if n.op.name == "sign"]
    assert len(signs) == 1 and signs[0].inputs == (h,)
    assert not [n for n in backward_nodes(g, bwd) if z in n.inputs]


def test_autodiff_cross_entropy_uses_identity_7_not_the_softmax_jacobian(one_layer):
    g, bwd = one_layer
    new = backward_nodes(g, bwd)
    assert not [n for n in new if n.op.name in ("sum", "log_softmax")]
    yhat = next(n.output for n in bwd.nodes if n.op.name == "softmax")
    users = [n for n in new if yhat in n.inputs]
    assert [n.op.name for n in users] == ["sub"]                      # ŷ − y, and nothing else


# ----------------------------------------------------------------------------- relevance
def test_autodiff_param_not_affecting_loss_gets_zeros_and_dead_branch_no_nodes():
    g = graphc.Graph("branches")
    x = g.input("x", ("N", 3))
    y = g.input("y", ("N",), dtype="int32")
    W = g.param("W", (4, 3))
    P = g.param("P", (2, 3))
    xs = graphc.tanh(x)                               # leads to J but depends on no wrt value
    WT = W.T
    theta = xs @ WT
    J = g.output("J", graphc.cross_entropy(theta, y))
    aux = graphc.sigmoid(x @ P.T)                     # P's branch does not lead to J
    g.output("aux", graphc.sum(aux * aux))
    side = graphc.relu(theta)                         # depends on W but does not lead to J
    g.output("side", graphc.sum(side))
    on_path = {WT.name, theta.name, J.name}           # the only values between W and J
    bwd = graphc.grad(g, "J", ["W", "P"])

    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(5, 3)), "y": rng.integers(0, 4, 5).astype(np.int32),
              "W": rng.normal(size=(4, 3)), "P": rng.normal(size=(2, 3))}
    out = graphc.evaluate(bwd, **arrays)
    assert out["d_P"].shape == (2, 3) and not out["d_P"].any()        # zeros, in the shape of P

    differentiated = {n.origin.forward.output.name for n in backward_nodes(g, bwd) if n.origin.forward is not None}
    assert differentiated <= on_path
    assert {v.name for v in bwd.adjoints} <= on_path | {"W"}         # no adjoint for tanh(x), aux, side, P
    assert "d_x" not in bwd.outputs
    fd = central_gradient(lambda a: float(graphc.evaluate(g, **a)["J"]), arrays, "W")
    assert rel_err(out["d_W"], fd) < 1e-6


# ----------------------------------------------------------------------------- the notes' exercises
def jacobian(make, wrt: str, arrays: dict) -> np.ndarray:
    """Full Jacobian of f = make(g) (any shape) wrt `wrt`: row i is the gradient of sum(f ∘ e_i)."""
    g = graphc.Graph("jac")
    values = make(g)
    f = values["f"]
    e = g.input("e", f.shape)
    g.output("s", graphc.sum(f * e))
    bwd = graphc.grad(g, "s", [wrt])
    m = int(np.prod(f.shape))
    rows = []
    for i in range(m):
        ei = np.zeros(m)
        ei[i] = 1.0
        rows.append(graphc.evaluate(bwd, **arrays, e=ei.reshape(f.shape))[f"d_{wrt}"].reshape(-1))
    return np.array(rows)


def gradient(make, wrt: str, arrays: dict) -> np.ndarray:
    g = graphc.Graph("gradient")
    values = make(g)
    g.output("f", values["f"])
    return graphc.evaluate(graphc.grad(g, "f", [wrt]), **arrays)[f"d_{wrt}"]


RNG = np.random.default_rng(3)
A, B = RNG.normal(size=5), RNG.normal(size=5)
X, V = RNG.normal(size=(3, 5)), RNG.normal(size=5)


def test_exercise_dot_product_gradient_and_jacobian():
    def dot(g):
        return {"f": graphc.dot(g.input("a", (5,)), g.input("b", (5,)))}
    np.testing.assert_allclose(gradient(dot, "a", {"a": A, "b": B}), B, rtol=1e-12)      # ∂(a·b)/∂a = bᵀ
    np.testing.assert_allclose(gradient(dot, "b", {"a": A, "b": B}), A, rtol=1e-12)

    def rows_dot(g):            # f_i = X_i · v, three dot products at once
        return {"f": graphc.dot(g.input("X", (3, 5)), g.input("v", (5,)))}
    arrays = {"X": X, "v": V}
    np.testing.assert_allclose(jacobian(rows_dot, "v", arrays), X, rtol=1e-12)            # ∂f/∂v = X
    expected = np.zeros((3, 15))
    for i in range(3):
        expected[i, 5 * i:5 * i + 5] = V                                                   # ∂f_i/∂X_i = vᵀ
    np.testing.assert_allclose(jacobian(rows_dot, "X", arrays), expected, rtol=1e-12)


def test_exercise_elementwise_product_jacobian_is_diagonal():
    def product(g):
        return {"f": g.input("a", (5,)) * g.input("b", (5,))}
    arrays = {"a": A, "b": B}
    np.testing.assert_allclose(jacobian(product, "a", arrays), np.diag(B), rtol=1e-12)     # identity (4): diag(b)
    np.testing.assert_allclose(jacobian(product, "b", arrays), np.diag(A), rtol=1e-12)


def test_exercise_two_norm_gradient_and_jacobian():
    def norm(g):
        return {"f": graphc.norm2(g.input("x", (5,)))}
    np.testing.assert_allclose(gradient(norm, "x", {"x": A}), A / np.linalg.norm(A), rtol=1e-12)   # xᵀ/‖x‖

    def rows_norm(g):
        return {"f": graphc.norm2(g.input("X", (3, 5)))}
    expected = np.zeros((3, 15))
    for i in range(3):
        expected[i, 5 * i:5 * i + 5] = X[i] / np.linalg.norm(X[i])
    np.testing.assert_allclose(jacobian(rows_norm, "X", {"X": X}), expected, rtol=1e-12)


# ----------------------------------------------------------------------------- higher order
def _mlp(activation: str):
    g = graphc.Graph(f"{activation}_mlp")
    x = g.input("x", ("N", 4))
    W1 = g.param("W1", (6, 4))
    W2 = g.param("W2", (3, 6))
    theta = getattr(graphc, activation)(x @ W1.T) @ W2.T
    if activation == "tanh":
        y = g.input("y", ("N",), dtype="int32")
        g.output("J", graphc.cross_entropy(theta, y))
    else:
        t = g.input("t", ("N", 3))
        g.output("J", graphc.mse(theta, t))
    return g


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_autodiff_hessian_vector_product_matches_differences_of_the_gradient(activation):
    g = _mlp(activation)
    wrt = ["W1", "W2"]
    g1 = graphc.grad(g, "J", wrt)
    first = graphc.grad(g, "J", wrt)                 # an untouched copy for the finite differences
    v1 = g1.input("v1", g.params["W1"].shape)
    v2 = g1.input("v2", g.params["W2"].shape)
    g1.output("s", graphc.sum(g1["d_W1"] * v1) + graphc.sum(g1["d_W2"] * v2))
    g2 = graphc.grad(g1, "s", wrt)                   # ∇(∇J · v) = H v

    rng = np.random.default_rng(11)
    arrays = {"x": rng.normal(size=(5, 4)), "W1": rng.normal(size=(6, 4)) * 0.5, "W2": rng.normal(size=(3, 6)) * 0.5}
    if activation == "tanh":
        arrays["y"] = rng.integers(0, 3, 5).astype(np.int32)
    else:
        arrays["t"] = rng.normal(size=(5, 3))
    v = {"W1": rng.normal(size=(6, 4)), "W2": rng.normal(size=(3, 6))}
    hv = graphc.evaluate(g2, **arrays, v1=v["W1"], v2=v["W2"])

    eps = 1e-5
    plus = graphc.evaluate(first, **{**arrays, **{w: arrays[w] + eps * v[w] for w in wrt}})
    minus = graphc.evaluate(first, **{**arrays, **{w: arrays[w] - eps * v[w] for w in wrt}})
    for w in wrt:
        fd = (plus[f"d_{w}"] - minus[f"d_{w}"]) / (2 * eps)
        assert hv[f"d_{w}"].shape == arrays[w].shape
        assert rel_err(hv[f"d_{w}"], fd) < 1e-6, w


def test_autodiff_shared_weight_gradients_add_up():
    """W used by two layers: ∂J/∂W is the sum of both uses (vs finite differences and vs untied weights)."""
    def build(tied: bool):
        g = graphc.Graph("tied" if tied else "untied")
        x = g.input("x", ("N", 4))
        Wa = g.param("W", (4, 4)) if tied else g.param("Wa", (4, 4))
        Wb = Wa if tied else g.param("Wb", (4, 4))
        h2 = graphc.tanh(graphc.tanh(x @ Wa.T) @ Wb.T)
        g.output("J", graphc.sum(h2 * h2))
        return g

    rng = np.random.default_rng(5)
    x, W = rng.normal(size=(3, 4)), rng.normal(size=(4, 4)) * 0.5
    tied = build(True)
    bwd = graphc.grad(tied, "J", ["W"])
    d_W = graphc.evaluate(bwd, x=x, W=W)["d_W"]
    fd = central_gradient(lambda a: float(graphc.evaluate(tied, **a)["J"]), {"x": x, "W": W}, "W")
    assert rel_err(d_W, fd) < 1e-6
    untied = build(False)
    parts = graphc.evaluate(graphc.grad(untied, "J", ["Wa", "Wb"]), x=x, Wa=W, Wb=W)
    np.testing.assert_allclose(d_W, parts["d_Wa"] + parts["d_Wb"], rtol=1e-12)
    assert [n.op.name for n in backward_nodes(tied, bwd) if n.output is bwd.outputs["d_W"]] == ["add"]


# ----------------------------------------------------------------------------- errors
def test_autodiff_rejects_non_scalar_of(one_layer):
    g, _ = one_layer
    with pytest.raises(GradientError, match="scalar"):
        graphc.grad(g, "h", ["W"])


def test_autodiff_rejects_unknown_names(one_layer):
    g, _ = one_layer
    with pytest.raises(GradientError, match="'Wx'"):
        graphc.grad(g, "J", ["Wx"])
    with pytest.raises(GradientError, match="'Jx'"):
        graphc.grad(g, "Jx", ["W"])


def test_autodiff_rejects_int_input_and_computed_value(one_layer):
    g, _ = one_layer
    with pytest.raises(GradientError, match="int32"):
        graphc.grad(g, "J", ["y"])
    with pytest.raises(GradientError, match="computed value"):
        graphc.grad(g, "J", ["z"])
