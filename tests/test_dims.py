"""Several run-time dims: a model whose inputs are [N, T, D] with the batch N and a sequence
length T both chosen at call time. The C takes T after n in every entry point (and in the
workspace functions and macros); forward, value_and_grad, train_step and fit run at any (N, T)
and agree with the NumPy reference and finite differences; the workspace grows with T as the
planned polynomial says; the standalone C builds warning-free and prints what Python computes.
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

import graphc
from graphc.backend.codegen import generate
from graphc.backend.sizes import Poly, numel, peval
from graphc.core.errors import GraphcError, ShapeError, SpecError
from graphc.native.export import (TRAIN_STEPS, emit, example_arrays, example_summary, parse_example_output,
                                  summary_close)

SPEC = """
name = "seqdims"

[dims]
N = "batch"
T = "symbolic"
D = 6
C = 3

[inputs]
x = ["N", "T", "D"]
g = ["N", "T", 1]
y = { shape = ["N"], dtype = "int32" }

[params]
w = ["D"]
b = ["D"]
U = ["C", 12]
c = ["C"]

[graph]
h     = "tanh(x * w + b) * sigmoid(g)"        # per position: broadcast over N and T
z     = "concat(h, x, axis=2)"                # [N, T, 2D]
m     = "mean(z, axis=1)"                     # over the sequence: [N, 2D]
s     = "sum(h * h, axis=2)"                  # [N, T]
theta = "m @ U.T + c"
J     = "cross_entropy(theta, y) + 0.1 * mean(s)"

[outputs]
loss  = "J"
probs = "softmax(theta)"
s     = "s"
gram  = "s @ s.T"                             # a product over T: [N, N], K = T

[grad]
of  = "J"
wrt = ["w", "b", "U", "c"]
"""

SIZES = [(1, 1), (3, 7), (5, 129)]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("dims") / "seqdims.toml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def model(spec):
    return graphc.compile(spec, dtype="float64", optimizer=graphc.SGD(lr=0.1))


def data(N: int, T: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + 100 * N + T)
    return dict(x=rng.normal(size=(N, T, 6)), g=rng.normal(size=(N, T, 1)),
                y=rng.integers(0, 3, size=N).astype(np.int32))


def params(model, seed: int = 0) -> dict:
    p = graphc.init_params(model, seed=seed)
    p["b"] = np.random.default_rng(seed).normal(size=6) * 0.3        # not all zeros: every path moves
    return p


def test_dims_spec_order_puts_the_batch_first_and_c_takes_each_dim(model):
    assert model.graph.symbolic_dims == ["N", "T"]
    assert model.csrc.dim_args == ("n", "T")
    header = model.header
    for f in ("forward", "predict", "value_and_grad", "train_step"):
        assert f"int seqdims_{f}(long n, long T," in header.replace("\n", " ").replace("  ", " ")
    assert "size_t seqdims_workspace_size(long n, long T);" in header
    assert "#define seqdims_WORKSPACE_BYTES(max_n, max_T)" in header
    assert "size_t seqdims_fit_workspace_size(long batch, long T);" in header
    assert "T is the size of the run-time dim T" in header


@pytest.mark.parametrize("N,T", SIZES + [(20, 33)])
def test_dims_forward_matches_reference_at_each_size(model, N, T):
    p, d = params(model), data(N, T)
    out = model.forward(**d, **p)
    ref = graphc.evaluate(model.graph, **d, **p)
    assert out["s"].shape == (N, T) and out["probs"].shape == (N, 3)
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-11, atol=1e-12, err_msg=k)
    pred = model.predict(x=d["x"], g=d["g"], **p)
    np.testing.assert_allclose(pred["probs"], ref["probs"], rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("N,T", SIZES)
def test_dims_value_and_grad_matches_reference(model, N, T):
    p, d = params(model), data(N, T)
    outs, grads = model.value_and_grad(**d, **p)
    bwd = graphc.grad(model.graph, "J", ["w", "b", "U", "c"])
    ref = graphc.evaluate(bwd, **d, **p)
    for w in grads:
        np.testing.assert_allclose(grads[w], ref[f"d_{w}"], rtol=1e-10, atol=1e-12, err_msg=w)


@pytest.mark.parametrize("N,T", [(1, 1), (2, 3), (3, 7)])
def test_dims_gradients_match_central_differences(model, N, T):
    p, d = params(model, seed=1), data(N, T, seed=1)
    _, grads = model.value_and_grad(**d, **p)
    eps = 1e-6
    for w, grad in grads.items():
        numeric = np.zeros_like(p[w])
        for i in np.ndindex(p[w].shape):
            up, down = {k: v.copy() for k, v in p.items()}, {k: v.copy() for k, v in p.items()}
            up[w][i] += eps
            down[w][i] -= eps
            numeric[i] = (model.forward(**d, **up)["loss"] - model.forward(**d, **down)["loss"]) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7, err_msg=w)


@pytest.mark.parametrize("N,T", SIZES)
def test_dims_train_step_is_sgd_on_the_gradient(model, N, T):
    p, d = params(model), data(N, T)
    _, grads = model.value_and_grad(**d, **p)
    state = model.train_state(p)
    out = model.train_step(state, **d)
    assert out["s"].shape == (N, T)
    for w in grads:
        np.testing.assert_allclose(state.params[w], p[w] - 0.1 * grads[w], rtol=1e-12, atol=1e-13, err_msg=w)


def test_dims_fit_splits_the_batch_and_keeps_T(model):
    """fit at T = 11 equals the train steps on the minibatches its seed's orders draw."""
    p, d = params(model), data(7, 11)
    fitted = model.train_state(p)
    history = model.fit(fitted, batch_size=3, epochs=2, seed=5, progress=False, **d)
    stepped = model.train_state(p)
    rng, losses = np.random.default_rng(5), []
    for _ in range(2):
        order = rng.permutation(7)
        epoch = []
        for start in range(0, 7, 3):
            rows = order[start:start + 3]
            epoch.append((float(model.train_step(stepped, **{k: v[rows] for k, v in d.items()})["loss"]), len(rows)))
        losses.append(sum(loss * r for loss, r in epoch) / 7)
    np.testing.assert_allclose(history, losses, rtol=1e-12)
    for k in p:
        np.testing.assert_allclose(fitted.params[k], stepped.params[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_dims_workspace_grows_with_T_as_the_plan_says(model):
    lib, csrc = model.lib, model.csrc
    arena = Poly.of(csrc.arena)
    assert "T" in arena.dims and "N" in arena.dims          # a buffer [N, T, ...] is planned
    sizes = {}
    for T in (7, 129):
        c_bytes = lib.seqdims_workspace_size(5, T)
        assert c_bytes == csrc.workspace_parts((5, T), model.threads)[2]
        sizes[T] = c_bytes
    assert sizes[129] - sizes[7] == (peval(arena, {"N": 5, "T": 129}) - peval(arena, {"N": 5, "T": 7})) * 8
    assert sizes[129] > sizes[7]
    assert lib.seqdims_workspace_size(5, 0) == 0 and lib.seqdims_workspace_size(0, 5) == 0
    assert lib.seqdims_fit_workspace_size(3, 9) > lib.seqdims_workspace_size(3, 9)
    # gram's product has K = T: at T = 1 it is the plain loops, which pack nothing (nor does any other
    # product at n = 20); past K's block (KC) its share no longer grows with T (and packs at (20, 33))
    packs = {T: csrc.workspace_parts((20, T), 1)[1] for T in (1, 33, 5000)}
    assert packs[1] == 0 < packs[33] == packs[5000]


def test_dims_T_mismatch_between_inputs_names_both(model):
    p, d = params(model), data(3, 7)
    d["g"] = d["g"][:, :6]
    with pytest.raises(ShapeError, match=r"argument 'g' has T=6 on axis 1, but 'x' has T=7") as err:
        model.forward(**d, **p)
    assert "run-time dim T" in str(err.value)
    with pytest.raises(ShapeError, match="T=6"):
        model.train_step(model.train_state(p), **d)


def test_dims_T_of_zero_is_a_shape_error(model):
    p, d = params(model), data(3, 7)
    d["x"], d["g"] = d["x"][:, :0], d["g"][:, :0]
    with pytest.raises(ShapeError, match="T=0"):
        model.forward(**d, **p)


def test_dims_two_batch_dims_are_a_spec_error(tmp_path):
    path = tmp_path / "two.toml"
    path.write_text(SPEC.replace('T = "symbolic"', 'T = "batch"'))
    with pytest.raises(SpecError, match="at most one batch dim"):
        graphc.load(path)


def test_dims_the_batch_leads_wherever_the_spec_declares_it(tmp_path):
    path = tmp_path / "late.toml"
    path.write_text(SPEC.replace('N = "batch"\nT = "symbolic"', 'T = "symbolic"\nN = "batch"'))
    assert 'T = "symbolic"\nN = "batch"' in path.read_text()
    assert graphc.load(path).symbolic_dims == ["N", "T"]


def test_dims_spec_writer_keeps_the_batch_and_the_symbolic_dims(spec, tmp_path):
    from graphc.frontend.spec_writer import to_spec
    text = to_spec(graphc.load(spec))
    assert 'N = "batch"' in text and 'T = "symbolic"' in text
    (tmp_path / "again.toml").write_text(text)
    assert graphc.load(tmp_path / "again.toml").symbolic_dims == ["N", "T"]


def test_dims_a_dim_named_like_a_value_is_refused(tmp_path):
    g = graphc.Graph("clash")
    x = g.input("x", ("N", "h", 4))
    g.output("h", graphc.relu(x))
    with pytest.raises(GraphcError, match="symbolic dim h is the C argument h"):
        generate(g)


def test_dims_sizes_are_polynomials_over_names():
    p = numel(("N", "T", 4)) + numel(("N", 2))
    assert p == Poly({("N", "T"): 4, ("N",): 2})
    assert peval(p, {"N": 3, "T": 5}) == 66 and peval(p, 2) == 20
    assert p.ge(numel(("N", "T", 3))) and not numel(("N", "T", 3)).ge(p)
    assert Poly.of(7) == 7 == Poly.of((7,)) and numel((2, 3))[0] == 6


COMPILERS = [cc for cc in ("gcc", "clang") if shutil.which(cc)]
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1"]


@pytest.mark.parametrize("cc", COMPILERS)
def test_dims_standalone_c_builds_strict_and_prints_the_reference(spec, cc, tmp_path):
    g = graphc.load(spec)
    csrc = generate(g, "J", ["w", "b", "U", "c"], dtype="float64", optimizer=graphc.SGD(lr=0.1))
    emit(csrc, tmp_path, amalgamate=True)
    T = 9
    build = subprocess.run([cc, *STRICT, f"-DDIM_T={T}L", "seqdims.c", "main.c", "-o", "prog", "-lm"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0 and not build.stderr, build.stderr
    run = subprocess.run(["./prog"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    printed = parse_example_output(run.stdout)
    arrays = example_arrays(g, "float64", dims={"T": T})
    assert arrays["x"].shape == (4, T, 6)
    forward = graphc.evaluate(g, **arrays)
    backward = graphc.evaluate(graphc.grad(g, "J", ["w", "b", "U", "c"]), **arrays)
    trained = dict(arrays)            # main.c's SGD steps on the same batch, by the reference
    for _ in range(TRAIN_STEPS):
        grads = graphc.evaluate(graphc.grad(g, "J", ["w", "b", "U", "c"]), **trained)
        trained.update({w: trained[w] - 0.1 * grads[f"d_{w}"] for w in ("w", "b", "U", "c")})
    for (function, name), summary in printed.items():
        if function.startswith("train_step"):
            continue
        values = {"value_and_grad": backward, "trained": trained}.get(function, forward)
        assert summary_close(summary, example_summary(values[name]), 1e-7), (function, name)
    assert ("forward", "s") in printed and ("value_and_grad", "d_U") in printed
    bad = subprocess.run(["./prog", "--bad-label"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 0, bad.stderr


try:
    from hypothesis import given, settings, strategies as st
except ImportError:          # pragma: no cover
    given = None

if given is not None:
    monomials = st.lists(st.sampled_from(["N", "T", "S"]), max_size=3).map(tuple)
    polys = st.dictionaries(monomials, st.integers(0, 50), max_size=4).map(Poly)
    values = st.fixed_dictionaries({d: st.integers(0, 300) for d in ("N", "T", "S")})

    @settings(max_examples=200, deadline=None)
    @given(polys, polys, values)
    def test_dims_poly_arithmetic_and_order_agree_with_evaluation(a, b, at):
        assert (a + b).at(at) == a.at(at) + b.at(at)
        assert (a * b).at(at) == a.at(at) * b.at(at)
        top = a.max(b)
        assert top.at(at) >= max(a.at(at), b.at(at)) and top.ge(a) and top.ge(b)
        if a.ge(b):
            assert a.at(at) >= b.at(at)
        assert (a == b) == (a.terms == b.terms) and (a != b or hash(a) == hash(b))
