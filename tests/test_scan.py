"""scan (graphc/ops/scan.py): recurrences written as a body graph applied along time.

GRU and LSTM cells written with sigmoid, tanh and matmul in a scan's body are checked: their
gradients (params, initial state, inputs) against central finite differences in float64 over
several steps; the C (forward, value_and_grad, train_step) against the NumPy reference at several
sequence lengths and batch sizes; torch.nn.GRU and torch.nn.LSTM with the same weights (where torch
is installed); and bad input (a carried state that changes shape or dtype, a wrong axis, T = 0, a
spec table that does not fit) raises a GraphcError naming it.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.core.errors import DTypeError, GraphcError, ShapeError, SpecError
from helpers import assert_grads_close, c_and_reference, check_finite_differences


# ------------------------------------------------------------------ the cells, as a user writes them
def gru_graph(T, D=3, H=4, axis=1, name="gru"):
    """torch.nn.GRU's equations (gate order r, z, n), batch-first x [N, T, D] (axis 1) or [T, N, D]."""
    g = graphc.Graph(name)
    x = g.input("x", ("N", T, D) if axis == 1 else (T, "N", D))
    h0 = g.input("h0", ("N", H))
    W_ih, W_hh = g.param("W_ih", (3 * H, D)), g.param("W_hh", (3 * H, H))
    b_ih, b_hh = g.param("b_ih", (3 * H,)), g.param("b_hh", (3 * H,))

    def cell(h, x_t):
        gi, gh = x_t @ W_ih.T + b_ih, h @ W_hh.T + b_hh
        r = graphc.sigmoid(gi[:, 0:H] + gh[:, 0:H])
        z = graphc.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = graphc.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h_new = (1 - z) * n + z * h
        return h_new, h_new

    h_T, hs = graphc.scan(cell, h0, x, axis=axis, name="gru")
    return g, h_T, hs


def lstm_graph(T, D=3, H=4):
    """torch.nn.LSTM's equations (gate order i, f, g, o), carrying (h, c)."""
    g = graphc.Graph("lstm")
    x = g.input("x", ("N", T, D))
    h0, c0 = g.input("h0", ("N", H)), g.input("c0", ("N", H))
    W_ih, W_hh = g.param("W_ih", (4 * H, D)), g.param("W_hh", (4 * H, H))
    b_ih, b_hh = g.param("b_ih", (4 * H,)), g.param("b_hh", (4 * H,))

    def cell(state, x_t):
        h, c = state
        gates = x_t @ W_ih.T + b_ih + h @ W_hh.T + b_hh
        i, f = graphc.sigmoid(gates[:, 0:H]), graphc.sigmoid(gates[:, H:2 * H])
        gg, o = graphc.tanh(gates[:, 2 * H:3 * H]), graphc.sigmoid(gates[:, 3 * H:])
        c_new = f * c + i * gg
        h_new = o * graphc.tanh(c_new)
        return (h_new, c_new), h_new

    (h_T, c_T), hs = graphc.scan(cell, (h0, c0), x, axis=1, name="lstm")
    return g, (h_T, c_T), hs


def with_loss(g, values):
    """L = Σ_k sum(values[k] * v_k) with fixed random v_k (inputs): every output's gradient flows."""
    total = None
    for k, v in enumerate(values):
        w = g.input(f"v{k}", v.shape)
        term = graphc.sum(v * w)
        total = term if total is None else total + term
    g.output("L", total)
    return g


def arrays(g, N, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in {**g.inputs, **g.params}.items():
        shape = tuple(N if isinstance(d, str) else d for d in v.shape)
        out[k] = rng.standard_normal(shape) * (0.5 if k in g.params else 1.0)
    return out


# ------------------------------------------------------------------ gradients vs finite differences
@pytest.mark.parametrize("axis", [1, 0])
def test_scan_gru_cell_gradients_match_finite_differences(axis):
    g, h_T, hs = gru_graph(T=4, axis=axis)
    g = with_loss(g, [hs, h_T])
    check_finite_differences(g, arrays(g, N=2), ["W_ih", "W_hh", "b_ih", "b_hh", "h0", "x"], of="L")


def test_scan_lstm_cell_gradients_match_finite_differences():
    g, (h_T, c_T), hs = lstm_graph(T=4)
    g = with_loss(g, [hs, h_T, c_T])
    check_finite_differences(g, arrays(g, N=2), ["W_ih", "W_hh", "b_ih", "b_hh", "h0", "c0", "x"], of="L")


def test_scan_reference_runs_the_body_in_a_loop():
    """The reference of a scan is its body at each step: the same numbers as the loop in NumPy."""
    g, h_T, hs = gru_graph(T=3)
    g.output("hs", hs)
    g.output("h_T", h_T)
    v = arrays(g, N=2)
    H = 4
    h = v["h0"]
    for t in range(3):
        gi, gh = v["x"][:, t] @ v["W_ih"].T + v["b_ih"], h @ v["W_hh"].T + v["b_hh"]
        r = 1 / (1 + np.exp(-(gi[:, :H] + gh[:, :H])))
        z = 1 / (1 + np.exp(-(gi[:, H:2 * H] + gh[:, H:2 * H])))
        n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * n + z * h
        np.testing.assert_allclose(graphc.evaluate(g, **v)["hs"][:, t], h, rtol=1e-12)
    np.testing.assert_allclose(graphc.evaluate(g, **v)["h_T"], h, rtol=1e-12)


def test_scan_backward_is_one_reverse_scan_reading_saved_values():
    """The VJP is a scan of the body's own backward graph, run backwards, that reads what the forward
    saved (the gates) rather than computing the step again."""
    g, h_T, hs = gru_graph(T=3)
    g.output("L", graphc.sum(h_T))
    bwd = graphc.grad(g, of="L", wrt=["W_hh"])
    scans = [n for n in bwd.nodes if n.op.name == "scan"]
    backward = {id(n.attrs["body"]): n.attrs["body"] for n in scans if n.attrs["body"].reverse}
    assert len(backward) == 1
    body = next(iter(backward.values()))
    saved = [n for n in scans if n.attrs["part"][0] == "saved"]
    assert saved and all(n.output.shape[0] == 3 for n in saved)         # time-major [T, ...]
    assert not any(n.op.name == "matmul" and n.inputs[0].name == "h" for n in body.graph.nodes), \
        "the backward step recomputes the forward product h W_hh^T"


# ------------------------------------------------------------------ torch.nn.GRU / LSTM
def _torch_module(kind, D, H, values):
    torch = pytest.importorskip("torch")
    m = (torch.nn.GRU if kind == "gru" else torch.nn.LSTM)(D, H, batch_first=True).double()
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            ours = name.replace("weight", "W").replace("bias", "b").replace("_l0", "")
            getattr(m, name).copy_(torch.tensor(values[ours]))
    return torch, m


def test_scan_gru_matches_torch_nn_gru():
    g, h_T, hs = gru_graph(T=5)
    g.output("hs", hs)
    g.output("h_T", h_T)
    g.output("L", graphc.sum(hs * hs) + graphc.sum(h_T))
    v = arrays(g, N=3, seed=1)
    torch, m = _torch_module("gru", 3, 4, v)
    x = torch.tensor(v["x"], requires_grad=True)
    h0 = torch.tensor(v["h0"])[None].clone().requires_grad_(True)
    ys, hn = m(x, h0)
    ((ys * ys).sum() + hn.sum()).backward()
    out = graphc.evaluate(g, **v)
    np.testing.assert_allclose(out["hs"], ys.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["h_T"], hn[0].detach().numpy(), rtol=1e-10, atol=1e-12)
    grads = graphc.evaluate(graphc.grad(g, of="L", wrt=["W_ih", "W_hh", "b_ih", "b_hh", "h0", "x"]), **v)
    for ours, theirs in (("W_ih", m.weight_ih_l0.grad), ("W_hh", m.weight_hh_l0.grad), ("b_ih", m.bias_ih_l0.grad),
                         ("b_hh", m.bias_hh_l0.grad), ("h0", h0.grad[0]), ("x", x.grad)):
        np.testing.assert_allclose(grads[f"d_{ours}"], theirs.numpy(), rtol=1e-9, atol=1e-12, err_msg=ours)


def test_scan_lstm_matches_torch_nn_lstm():
    g, (h_T, c_T), hs = lstm_graph(T=5)
    g.output("hs", hs)
    g.output("c_T", c_T)
    g.output("L", graphc.sum(hs * hs) + graphc.sum(c_T))
    v = arrays(g, N=3, seed=2)
    torch, m = _torch_module("lstm", 3, 4, v)
    x = torch.tensor(v["x"], requires_grad=True)
    h0 = torch.tensor(v["h0"])[None].clone().requires_grad_(True)
    c0 = torch.tensor(v["c0"])[None].clone().requires_grad_(True)
    ys, (hn, cn) = m(x, (h0, c0))
    ((ys * ys).sum() + cn.sum()).backward()
    out = graphc.evaluate(g, **v)
    np.testing.assert_allclose(out["hs"], ys.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["c_T"], cn[0].detach().numpy(), rtol=1e-10, atol=1e-12)
    grads = graphc.evaluate(graphc.grad(g, of="L", wrt=["W_ih", "W_hh", "b_ih", "b_hh", "h0", "c0", "x"]), **v)
    for ours, theirs in (("W_ih", m.weight_ih_l0.grad), ("W_hh", m.weight_hh_l0.grad), ("b_hh", m.bias_hh_l0.grad),
                         ("h0", h0.grad[0]), ("c0", c0.grad[0]), ("x", x.grad)):
        np.testing.assert_allclose(grads[f"d_{ours}"], theirs.numpy(), rtol=1e-9, atol=1e-12, err_msg=ours)


# ------------------------------------------------------------------ the C against the reference
@pytest.mark.parametrize("T", [1, 2, 7, 33])
def test_scan_c_matches_reference_at_several_lengths_and_batches(T):
    g, h_T, hs = gru_graph(T=T, name=f"gru_t{T}")
    g.output("hs", hs)
    g.output("L", graphc.mean(hs * hs) + graphc.sum(h_T))
    wrt = ["W_ih", "W_hh", "b_ih", "b_hh", "h0"]
    lr = 0.1
    m = graphc.compile(g, grad_of="L", wrt=wrt, dtype="float64", optimizer=graphc.SGD(lr=lr))
    bwd = graphc.grad(g, of="L", wrt=wrt)
    for N in (1, 3, 8):
        v = arrays(g, N=N, seed=T + N)
        want = graphc.evaluate(bwd, **v)
        out = m.forward(**v)
        np.testing.assert_allclose(out["hs"], want["hs"], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(out["L"], want["L"], rtol=1e-12)
        out, grads = m.value_and_grad(**v)
        assert_grads_close(grads, want, wrt, rtol=1e-10, atol=1e-12, where=f" at N={N}")
        state = m.train_state({k: v[k].copy() for k in g.params})
        step = m.train_step(state, x=v["x"], h0=v["h0"])
        np.testing.assert_allclose(step["L"], want["L"], rtol=1e-12)
        for w in ("W_ih", "W_hh", "b_ih", "b_hh"):
            np.testing.assert_allclose(state.params[w], v[w] - lr * want[f"d_{w}"], rtol=1e-10, atol=1e-12)


def test_scan_c_takes_the_sequence_length_at_run_time_when_it_is_the_symbolic_dim():
    """With a fixed batch, T is the one size the C functions take (their argument n): one build runs
    every length, and the saved steps are sized by it like a batch-sized buffer."""
    g = graphc.Graph("rnn_t")
    x, h0 = g.input("x", (4, "T", 3)), g.input("h0", (4, 5))
    W, U = g.param("W", (5, 3)), g.param("U", (5, 5))
    h_T, hs = graphc.scan(lambda h, x_t: (graphc.tanh(x_t @ W.T + h @ U.T),) * 2, h0, x, axis=1)
    g.output("L", graphc.mean(hs * hs) + graphc.sum(h_T))
    m = graphc.compile(g, grad_of="L", wrt=["W", "U", "h0"], dtype="float64")
    rng = np.random.default_rng(0)
    for T in (1, 2, 7, 33):
        v = dict(x=rng.normal(size=(4, T, 3)), h0=rng.normal(size=(4, 5)), W=rng.normal(size=(5, 3)) * 0.5,
                 U=rng.normal(size=(5, 5)) * 0.5)
        out, grads, want = c_and_reference(m, g, v, "L", ["W", "U", "h0"])
        np.testing.assert_allclose(out["L"], want["L"], rtol=1e-12)
        assert_grads_close(grads, want, ("W", "U", "h0"), rtol=1e-10, atol=1e-13, where=f" at T={T}")


def test_scan_c_time_major_lstm_matches_reference_in_float32():
    """An LSTM (two carried states) over time-major x [T, N, D] read in place (no copy of x_t), float32."""
    g = graphc.Graph("lstm_tm")
    x, h0 = g.input("x", (6, "N", 3)), g.input("h0", ("N", 4))
    W, U, b = g.param("W", (16, 3)), g.param("U", (16, 4)), g.param("b", (16,))

    def cell(state, x_t):
        h, c = state
        gates = x_t @ W.T + h @ U.T + b
        c_new = graphc.sigmoid(gates[:, 4:8]) * c + graphc.sigmoid(gates[:, 0:4]) * graphc.tanh(gates[:, 8:12])
        h_new = graphc.sigmoid(gates[:, 12:16]) * graphc.tanh(c_new)
        return (h_new, c_new), h_new

    (h_T, _), hs = graphc.scan(cell, (h0, h0), x, axis=0, name="lstm")
    g.output("L", graphc.mean(hs) + graphc.mean(h_T * h_T))
    m = graphc.compile(g, grad_of="L", wrt=["W", "U", "b", "h0"], dtype="float32")
    assert "x + gc_t * (" in m.source          # x_t read in place
    v = {k: a.astype(np.float32) for k, a in arrays(g, N=5).items()}
    out, grads, want = c_and_reference(m, g, v, "L", ["W", "U", "b", "h0"])
    np.testing.assert_allclose(out["L"], want["L"], rtol=1e-5)
    assert_grads_close(grads, want, ("W", "U", "b", "h0"), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", ["gru", "lstm"])
def test_scan_examples_train_in_c_as_the_reference_says(spec, examples_dir):
    """examples/gru.toml (next character at every step, the loss carried) and examples/lstm.toml
    (a classifier of the last state): C gradients = the reference's; Adam steps lower the loss."""
    path = examples_dir / f"{spec}.toml"
    g = graphc.load(path)
    rng = np.random.default_rng(0)
    params = {k: a.astype(np.float64) for k, a in graphc.init_params(g, seed=0).items()}
    if spec == "gru":
        text = rng.integers(0, 96, size=(4, 17)).astype(np.int32)
        data = dict(x=text[:, :-1], y=text[:, 1:])
    else:
        data = dict(x=rng.standard_normal((6, 20, 3)), y=rng.integers(0, 4, 6).astype(np.int32))
    m = graphc.compile(path, dtype="float64", optimizer=graphc.Adam(lr=1e-2))
    out, grads, want = c_and_reference(m, g, {**data, **params}, *g.grad_spec)
    np.testing.assert_allclose(out["loss"], want["loss"], rtol=1e-12)
    assert_grads_close(grads, want, g.grad_spec[1], rtol=1e-9, atol=1e-13)
    state = m.train_state(params)
    losses = [float(m.train_step(state, **data)["loss"]) for _ in range(20)]
    assert losses[-1] < 0.8 * losses[0]


def test_scan_c_checks_the_ids_of_the_sequence_it_embeds(examples_dir):
    """An embedding in the body indexes with x[:, t]: the C checks x before the loop (an error code,
    never an out-of-bounds read)."""
    m = graphc.compile(examples_dir / "gru.toml")
    params = graphc.init_params(m, seed=0)
    x = np.zeros((2, 16), np.int32)
    x[1, 11] = 96
    with pytest.raises(GraphcError, match="x"):
        m.forward(x=x, y=np.zeros((2, 16), np.int32), **params)


# ------------------------------------------------------------------ bad input
def test_scan_carried_state_changing_shape_is_an_error_naming_both_shapes():
    g = graphc.Graph("bad")
    x, h0 = g.input("x", ("N", 5, 3)), g.input("h0", ("N", 4))
    W = g.param("W", (3, 2))
    with pytest.raises(ShapeError, match=r"carried state 'h' changes shape.*\(N, 4\).*\(N, 2\)"):
        graphc.scan(lambda h, x_t: (x_t @ W, x_t), h0, x)


def test_scan_dtype_mismatches_are_errors():
    g = graphc.Graph("bad")
    x, ids = g.input("x", ("N", 5, 3)), g.input("ids", ("N", 3), dtype="int32")
    with pytest.raises(DTypeError, match="carried state 'h' is int32: a carried state is real"):
        graphc.scan(lambda h, x_t: (x_t, x_t), ids, x)
    h0, seq = g.input("h0", ("N", 3)), g.input("seq", ("N", 5, 3), dtype="int32")
    h_T, _ = graphc.scan(lambda h, x_t: (graphc.tanh(h + x_t), h), h0, x)
    with pytest.raises(DTypeError, match=r"argument 2 \(x_t '\w+' of the body\) is \(N, 3\) int32, "
                                         r"but the body reads it as \(N, 3\) float"):
        g.apply("scan", h0, seq, body=h_T.node.attrs["body"], part=("final", 0))      # the body's x_t is real


def test_scan_over_a_wrong_axis_is_an_error():
    g = graphc.Graph("bad")
    x, h0 = g.input("x", ("N", 5, 3)), g.input("h0", ("N", 3))
    with pytest.raises(ShapeError, match="axis 3"):
        graphc.scan(lambda h, x_t: (h + x_t, h), h0, x, axis=3)
    with pytest.raises(ShapeError, match=r"\(N, 3\)"):      # axis 0 slices [5, 3], not the carry's [N, 3]
        graphc.scan(lambda h, x_t: (h + x_t, h), h0, x, axis=0)


def test_scan_sequences_of_different_lengths_are_an_error():
    g = graphc.Graph("bad")
    a, b, h0 = g.input("a", ("N", 5, 3)), g.input("b", ("N", 4, 3)), g.input("h0", ("N", 3))
    with pytest.raises(ShapeError, match="disagree on their length"):
        graphc.scan(lambda h, xs: (h + xs[0] * xs[1], h), h0, (a, b))


def test_scan_over_an_empty_sequence_is_an_error():
    g = graphc.Graph("empty")
    x, h0 = g.input("x", ("N", "T", 3)), g.input("h0", ("N", 3))
    h_T, _ = graphc.scan(lambda h, x_t: (graphc.tanh(h + x_t), h), h0, x)
    g.output("h_T", h_T)
    out = graphc.evaluate(g, x=np.ones((2, 4, 3)), h0=np.zeros((2, 3)))       # T is set by x, like N
    assert out["h_T"].shape == (2, 3)
    with pytest.raises(ShapeError, match="T = 0"):
        graphc.evaluate(g, x=np.ones((2, 0, 3)), h0=np.zeros((2, 3)))


SPEC = """name = "rnn"
[dims]
N = "batch"
T = 5
D = 3
H = 4
[inputs]
x = ["N", "T", "D"]
[params]
W = ["H", "D"]
U = ["H", "H"]
[scan.rnn]
init = {{ h = {{ shape = ["N", "H"], value = 0.0 }} }}
xs = {{ x_t = "x" }}
axis = {axis}
carry = {{ h = "{carry}" }}
ys = {{ hs = "h_new" }}
final = {{ h_T = "h" }}
[scan.rnn.body]
h_new = "tanh(x_t @ W.T + h @ U.T)"
half = "h_new[:, 0:2]"
[graph]
J = "mean(hs) + sum(h_T)"
[outputs]
loss = "J"
"""


def test_scan_spec_table_builds_the_scan():
    g = graphc.parse_spec(SPEC.format(axis=1, carry="h_new"))
    assert g["hs"].shape == ("N", 5, 4) and g["h_T"].shape == ("N", 4)
    rng = np.random.default_rng(0)
    v = dict(x=rng.standard_normal((2, 5, 3)), W=rng.standard_normal((4, 3)), U=rng.standard_normal((4, 4)))
    h, hs = np.zeros((2, 4)), []
    for t in range(5):
        h = np.tanh(v["x"][:, t] @ v["W"].T + h @ v["U"].T)
        hs.append(h)
    np.testing.assert_allclose(graphc.evaluate(g, **v)["loss"], np.mean(hs) + h.sum(), rtol=1e-12)


def test_scan_spec_carry_changing_shape_is_an_error_at_the_table():
    with pytest.raises(ShapeError, match=r"carried state 'h' changes shape.*\(N, H=4\).*\(N, 2\)") as e:
        graphc.parse_spec(SPEC.format(axis=1, carry="half"), "rnn.toml")
    assert "scan.rnn" in str(e.value)


def test_scan_spec_wrong_axis_and_unknown_names_are_spec_errors():
    with pytest.raises(SpecError, match="axis 3"):
        graphc.parse_spec(SPEC.format(axis=3, carry="h_new"))
    with pytest.raises(SpecError, match="not a value of the body"):
        graphc.parse_spec(SPEC.format(axis=1, carry="h_nwe"))
    with pytest.raises(SpecError, match="unknown key 'carries'"):
        graphc.parse_spec(SPEC.format(axis=1, carry="h_new").replace("carry = {", "carries = {"))
    with pytest.raises(SpecError, match="positive"):
        graphc.parse_spec(SPEC.format(axis=1, carry="h_new").replace("T = 5", "T = 0"))
