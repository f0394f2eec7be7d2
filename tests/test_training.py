"""Training in C (graphc/native/training.py, train_state.py, epochs.py): train_step and fit against
NumPy, state save/load, init_params, optimizer validation and the errors of the training API."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.core.errors import ArgumentError, GraphcError, ShapeError

ROOT = Path(__file__).resolve().parent.parent
ONE_LAYER = ROOT / "examples" / "one_layer.toml"
WINDOW = ROOT / "examples" / "window_classifier.toml"
WRT = ["W", "b1", "U", "b2"]


@pytest.fixture(scope="module")
def graph():
    return graphc.load(ONE_LAYER)


_MODELS: dict = {}


def compiled(optimizer, dtype="float64", spec=ONE_LAYER):
    key = (repr(optimizer), dtype, str(spec))
    if key not in _MODELS:
        _MODELS[key] = graphc.compile(spec, dtype=dtype, optimizer=optimizer, threads=1)
    return _MODELS[key]


def batch(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 64)), rng.integers(0, 10, n).astype(np.int32)


# ---------------------------------------------------------------- NumPy reference
class NumpyOptimizer:
    """The update rules of torch.optim.SGD and torch.optim.Adam, written out in NumPy."""

    def __init__(self, opt, params):
        self.opt, self.t = opt, 0
        self.buf = {k: np.zeros_like(v) for k, v in params.items()}
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params, grads):
        o = self.opt
        self.t += 1
        for k, g in grads.items():
            g = g + o.weight_decay * params[k]
            if isinstance(o, graphc.SGD):
                if o.momentum:
                    self.buf[k] = o.momentum * self.buf[k] + g
                    g = self.buf[k]
                params[k] = params[k] - o.lr * g
            else:
                self.m[k] = o.beta1 * self.m[k] + (1 - o.beta1) * g
                self.v[k] = o.beta2 * self.v[k] + (1 - o.beta2) * g * g
                step_size = o.lr / (1 - o.beta1 ** self.t)
                bc2_sqrt = np.sqrt(1 - o.beta2 ** self.t)
                params[k] = params[k] - step_size * self.m[k] / (np.sqrt(self.v[k]) / bc2_sqrt + o.eps)


OPTIMIZERS = {
    "sgd": graphc.SGD(lr=0.1),
    "sgd_momentum": graphc.SGD(lr=0.05, momentum=0.9),
    "sgd_weight_decay": graphc.SGD(lr=0.1, weight_decay=0.01),
    "adam": graphc.Adam(lr=1e-2),
    "adam_weight_decay_momentum": graphc.Adam(lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05),
}


@pytest.mark.parametrize("which", list(OPTIMIZERS))
def test_train_step_matches_numpy_reference(graph, which):
    opt = OPTIMIZERS[which]
    m = compiled(opt)
    init = graphc.init_params(graph, seed=1)
    state = m.train_state(init)
    params = {k: v.copy() for k, v in init.items()}
    ref = NumpyOptimizer(opt, params)
    bwd = graphc.grad(graph, of="J", wrt=WRT)
    for step, n in enumerate((5, 8, 3, 8, 1)):      # batch size changes between steps
        x, y = batch(step, n)
        outs = m.train_step(state, x=x, y=y)
        fwd = graphc.evaluate(graph, x=x, y=y, **params)
        grads = graphc.evaluate(bwd, x=x, y=y, **params)
        np.testing.assert_allclose(outs["loss"], fwd["loss"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(outs["probs"], fwd["probs"], rtol=1e-10, atol=1e-12)
        ref.step(params, {w: grads[f"d_{w}"] for w in WRT})
        for k in WRT:
            np.testing.assert_allclose(state.params[k], params[k], rtol=1e-10, atol=1e-12,
                                       err_msg=f"{which}: {k} after step {step + 1}")
    if isinstance(opt, graphc.Adam):
        assert int(state.buffers["t"][0]) == 5
        np.testing.assert_allclose(state.buffers["m/W"], ref.m["W"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(state.buffers["v/b2"], ref.v["b2"], rtol=1e-10, atol=1e-14)
    elif opt.momentum:
        np.testing.assert_allclose(state.buffers["momentum/U"], ref.buf["U"], rtol=1e-10, atol=1e-12)
    else:
        assert dict(state.buffers) == {}
    assert state.step == 5


def test_train_state_copies_and_casts(graph):
    m = compiled(OPTIMIZERS["adam"], dtype="float32")
    init = graphc.init_params(graph, seed=0)
    state = m.train_state(init)
    for k, v in state.params.items():
        assert v.dtype == np.float32 and v.flags.c_contiguous and v is not init[k]
    x, y = batch(0, 16)
    before = init["W"].copy()
    out = m.train_step(state, x=x.astype(np.float32), y=y)
    assert np.isfinite(out["loss"]) and np.array_equal(init["W"], before)   # the caller's arrays are untouched
    assert not np.allclose(state.params["W"], before.astype(np.float32))
    with pytest.raises(TypeError):
        state.params["W"] = np.zeros((128, 64), np.float32)   # rebinding would stale the cached pointers


# ---------------------------------------------------------------- fit
def step_by_step(m, state, x, y, batch_size, epochs, seed):
    """fit's loop in Python: the same permutations, one train_step per minibatch."""
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            total += float(m.train_step(state, x=x[idx], y=y[idx])["loss"]) * len(idx)
        history.append(total / len(x))
    return history


@pytest.mark.parametrize("n_total,batch_size", [(23, 5), (20, 5), (7, 64)])
def test_fit_equals_train_step_loop(graph, n_total, batch_size):
    m = compiled(OPTIMIZERS["adam"])
    x, y = batch(42, n_total)
    a = m.train_state(graphc.init_params(graph, seed=2))
    b = m.train_state(graphc.init_params(graph, seed=2))
    hist_fit = m.fit(a, x=x, y=y, batch_size=batch_size, epochs=3, seed=7, progress=False)
    hist_loop = step_by_step(m, b, x, y, batch_size, 3, 7)
    for k in WRT:       # the same C, the same minibatches in the same order: bit-identical
        assert np.array_equal(a.params[k], b.params[k]), k
    for key in a.buffers:
        assert np.array_equal(a.buffers[key], b.buffers[key]), key
    assert int(a.buffers["t"][0]) == 3 * -(-n_total // batch_size)   # the partial batch is a step too
    np.testing.assert_allclose(hist_fit, hist_loop, rtol=1e-12)
    assert len(hist_fit) == 3


def test_fit_is_seeded_and_reshuffles(graph):
    m = compiled(OPTIMIZERS["sgd_momentum"])
    x, y = batch(3, 40)
    runs = []
    for seed in (0, 0, 1):
        s = m.train_state(graphc.init_params(graph, seed=0))
        runs.append((m.fit(s, x=x, y=y, batch_size=8, epochs=2, seed=seed), s.params["W"].copy()))
    assert runs[0][0] == runs[1][0] and np.array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][1], runs[2][1])
    # a new permutation each epoch: two epochs in one fit are not the first epoch twice
    twice = m.train_state(graphc.init_params(graph, seed=0))
    m.fit(twice, x=x, y=y, batch_size=8, epochs=1, seed=0)
    m.fit(twice, x=x, y=y, batch_size=8, epochs=1, seed=0)
    assert not np.array_equal(twice.params["W"], runs[0][1])


def test_fit_progress_callback_and_losses_fall(graph):
    m = compiled(OPTIMIZERS["adam"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 64))
    y = (x[:, :10].argmax(axis=1)).astype(np.int32)        # a learnable rule
    s = m.train_state(graphc.init_params(graph, seed=0))
    seen = []
    hist = m.fit(s, x=x, y=y, batch_size=32, epochs=8, seed=0, progress=lambda e, loss: seen.append((e, loss)))
    assert [e for e, _ in seen] == list(range(1, 9)) and [loss for _, loss in seen] == hist
    assert hist[-1] < 0.5 * hist[0]


def test_fit_checks_labels_before_any_update(graph):
    m = compiled(OPTIMIZERS["sgd"])
    x, y = batch(0, 30)
    y[25] = 10
    s = m.train_state(graphc.init_params(graph, seed=0))
    before = s.params["W"].copy()
    with pytest.raises(ArgumentError):
        m.fit(s, x=x, y=y, batch_size=8, epochs=1)
    assert np.array_equal(s.params["W"], before)
    with pytest.raises(ArgumentError):
        m.fit(s, x=x, y=np.zeros(30, np.int32), batch_size=0)
    with pytest.raises(ShapeError):
        m.fit(s, x=x, y=np.zeros(29, np.int32), batch_size=8)


def test_fit_window_classifier_int_inputs():
    m = compiled(graphc.Adam(lr=1e-2), spec=WINDOW)
    g = m.graph
    rng = np.random.default_rng(0)
    n = 300
    w = [rng.integers(0, 200, n).astype(np.int32) for _ in range(3)]
    y = (w[1] % 5).astype(np.int32)
    s = m.train_state(graphc.init_params(g, seed=0))
    a = s.copy()
    hist = m.fit(s, w0=w[0], w1=w[1], w2=w[2], y=y, batch_size=25, epochs=6, seed=0)
    assert hist[-1] < hist[0]
    # the same epochs step by step (embedding gradients scatter into the workspace)
    rng2 = np.random.default_rng(0)
    for _ in range(6):
        order = rng2.permutation(n)
        for start in range(0, n, 25):
            idx = order[start:start + 25]
            m.train_step(a, w0=w[0][idx], w1=w[1][idx], w2=w[2][idx], y=y[idx])
    for k in g.params:
        assert np.array_equal(a.params[k], s.params[k]), k


def test_model_without_batch_dim_trains_step_by_step_only():
    spec = ROOT / "examples" / "one_layer_column.toml"
    m = compiled(graphc.SGD(lr=0.1), spec=spec)
    g = m.graph
    s = m.train_state(graphc.init_params(g, seed=0))
    x = np.linspace(-1, 1, 10)
    y = np.eye(5)[2]
    losses = [float(m.train_step(s, x=x, y=y)["loss"]) for _ in range(20)]
    assert losses[-1] < losses[0]
    assert "x" not in s.params or s.params["x"] is not x       # inputs in wrt are not updated
    with pytest.raises(GraphcError, match="fit"):
        m.fit(s, x=x, y=y)


# ---------------------------------------------------------------- save / load
def test_saved_state_continues_identically(graph, tmp_path):
    m = compiled(OPTIMIZERS["adam"])
    s = m.train_state(graphc.init_params(graph, seed=4))
    for i in range(3):
        x, y = batch(i, 9)
        m.train_step(s, x=x, y=y)
    path = s.save(tmp_path / "ckpt.npz")
    r = m.load_state(path)
    assert int(r.buffers["t"][0]) == 3
    for i in range(3, 6):
        x, y = batch(i, 9)
        out_s, out_r = m.train_step(s, x=x, y=y), m.train_step(r, x=x, y=y)
        assert np.array_equal(out_s["loss"], out_r["loss"])
    x, y = batch(9, 50)
    assert m.fit(s, x=x, y=y, batch_size=16, epochs=2, seed=5) == m.fit(r, x=x, y=y, batch_size=16, epochs=2, seed=5)
    for k in WRT:
        assert np.array_equal(s.params[k], r.params[k])
    for k in s.buffers:
        assert np.array_equal(s.buffers[k], r.buffers[k])


def test_load_state_checks_optimizer_and_shapes(graph, tmp_path):
    adam, sgd = compiled(OPTIMIZERS["adam"]), compiled(OPTIMIZERS["sgd_momentum"])
    path = adam.train_state(graphc.init_params(graph, seed=0)).save(tmp_path / "a.npz")
    with pytest.raises(ArgumentError, match="adam"):
        sgd.load_state(path)
    data = dict(np.load(path))
    data["param.W"] = np.zeros((3, 3))
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(ShapeError):
        adam.load_state(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ArgumentError):
        adam.load_state(tmp_path / "junk.npz")
    with pytest.raises(ArgumentError):     # a state of another optimizer cannot be trained here
        sgd.train_step(adam.train_state(graphc.init_params(graph, seed=0)), x=batch(0, 2)[0], y=batch(0, 2)[1])


# ---------------------------------------------------------------- init_params
def test_init_params_seeded_and_schemes(graph):
    a, b, c = (graphc.init_params(graph, seed=s) for s in (0, 0, 1))
    assert set(a) == set(WRT) and all(v.dtype == np.float64 for v in a.values())
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["W"], c["W"])
    assert not a["b1"].any() and not a["b2"].any()                 # biases: zeros
    # spec: W init = "he" (Kaiming normal, std sqrt(2 / fan_in)), U init = "xavier"
    big = graphc.Graph("big")
    big.input("x", ("N", 400))
    W = big.param("W", (300, 400))
    V = big.param("V", (300, 400))
    bias = big.param("c", (300,))
    big.output("o", graphc.sum(big.inputs["x"] @ W.T + big.inputs["x"] @ V.T + bias))
    big.param_init = {"W": "he"}
    p = graphc.init_params(big, seed=0)
    assert abs(p["W"].std() - np.sqrt(2 / 400)) < 0.01 * np.sqrt(2 / 400) * 5
    limit = np.sqrt(6 / 700)
    assert np.abs(p["V"]).max() <= limit and np.abs(p["V"]).max() > 0.95 * limit   # xavier by default
    assert abs(p["V"].std() - limit / np.sqrt(3)) < 0.02 * limit
    q = graphc.init_params(big, seed=0, scheme="normal")
    assert abs(q["W"].std() - 0.1) < 0.005 and abs(q["V"].std() - 0.1) < 0.005 and not q["c"].any()
    z = graphc.init_params(big, seed=0, scheme={"V": "zeros", "c": "normal"})
    assert not z["V"].any() and z["c"].std() > 0.05
    u = graphc.init_params(ONE_LAYER, seed=0)        # a spec path works too
    assert all(np.array_equal(u[k], a[k]) for k in a)
    with pytest.raises(GraphcError):
        graphc.init_params(graph, scheme="uniformish")
    with pytest.raises(GraphcError):
        graphc.init_params(graph, scheme={"nope": "zeros"})


# ---------------------------------------------------------------- errors and validation
def test_optimizer_validation():
    for bad in (dict(lr=0), dict(lr=-1), dict(lr=float("nan")), dict(momentum=-0.1), dict(weight_decay=-1),
                dict(lr="0.1"), dict(lr=True)):
        with pytest.raises(GraphcError):
            graphc.SGD(**bad)
    for bad in (dict(lr=0), dict(beta1=1.0), dict(beta2=-0.1), dict(eps=0), dict(weight_decay=float("inf"))):
        with pytest.raises(GraphcError):
            graphc.Adam(**bad)
    with pytest.raises(Exception):
        graphc.Adam().lr = 1.0          # frozen
    assert graphc.SGD(lr=0.5) == graphc.SGD(lr=0.5)
    with pytest.raises(GraphcError):
        graphc.compile(ONE_LAYER, optimizer="adam")


def test_train_without_optimizer_raises(graph, tmp_path):
    """No optimizer, no trainer: each training call raises a GraphcError whose hint names the fix."""
    m = graphc.compile(ONE_LAYER, dtype="float64", threads=1)
    assert m.trainer is None
    x, y = batch(0, 4)
    calls = {"train_step": lambda: m.train_step(None, x=x, y=y),
             "train_state": lambda: m.train_state(graphc.init_params(graph)),
             "fit": lambda: m.fit(None, x=x, y=y),
             "load_state": lambda: m.load_state(tmp_path / "none.npz")}
    for name, call in calls.items():
        with pytest.raises(GraphcError, match="without an optimizer") as caught:
            call()
        assert name in caught.value.message
        assert "pass optimizer= to graphc.compile" in caught.value.hint


def test_trainer_is_a_member_not_methods_patched_onto_the_model():
    from graphc.native.runtime import CompiledModel
    from graphc.native.training import Trainer
    m = compiled(OPTIMIZERS["sgd"])
    assert isinstance(m.trainer, Trainer)
    for name in ("train_state", "train_step", "fit", "load_state"):
        assert name not in vars(m), name                      # the class's methods, not instance attributes
        assert getattr(type(m), name) is getattr(CompiledModel, name)
    assert m.trainer.layout is m.functions["train_step"].train_layout
    assert m.functions["forward"].train_layout is None       # a declared field, None but on train_step


def test_train_state_interface_the_trainer_uses(graph, tmp_path):
    """TrainState's public interface: read-only params/buffers, count_sgd_steps (step, save and
    copy carry the count), and a TrainerCache that only the trainer that made it reuses."""
    from graphc.native.train_state import TrainerCache
    m = compiled(OPTIMIZERS["sgd_momentum"])
    s = m.train_state(graphc.init_params(graph, seed=0))
    assert isinstance(s.cache, TrainerCache) and s.cache.trainer is None and s.cache.plan is None
    with pytest.raises(TypeError):
        s.buffers["momentum/W"] = np.zeros((128, 64))
    x, y = batch(0, 8)
    m.train_step(s, x=x, y=y)
    m.train_step(s, x=x, y=y)
    cache = s.cache
    assert cache.trainer is m.trainer and cache.plan is not None and list(cache.workspaces) == [8]
    assert len(cache.step_ptrs) == len(WRT) * 2 + 1   # each param and its momentum buffer, the hyperparameters
    m.fit(s, x=x, y=y, batch_size=3, epochs=2, progress=False)  # 3 minibatches an epoch
    assert s.cache is cache and sorted(cache.workspaces) == [-3, 8]
    assert s.step == 2 + 6
    s.count_sgd_steps(4)
    assert s.step == 12
    c = s.copy()
    assert c.step == 12 and c.cache is not cache and c.cache.trainer is None
    assert m.load_state(s.save(tmp_path / "s.npz")).step == 12

    other = graphc.compile(ONE_LAYER, dtype="float64", threads=1, optimizer=OPTIMIZERS["sgd_momentum"])  # a new model
    out = other.train_step(s, x=x, y=y)                        # another trainer binds the state anew
    assert s.cache.trainer is other.trainer and s.cache is not cache and s.step == 13
    ref = c.copy()
    want = m.train_step(ref, x=x, y=y)
    np.testing.assert_allclose(out["loss"], want["loss"], rtol=1e-12)
    np.testing.assert_allclose(s.params["W"], ref.params["W"], rtol=1e-12, atol=1e-15)
    m.train_step(s, x=x, y=y)                                  # and back: its pointers are made again
    assert s.cache.trainer is m.trainer and s.step == 14


def test_train_state_argument_errors(graph):
    m = compiled(OPTIMIZERS["sgd"])
    p = graphc.init_params(graph, seed=0)
    with pytest.raises(ArgumentError):
        m.train_state({**p, "Wx": p["W"]})
    missing = dict(p)
    del missing["U"]
    with pytest.raises(ArgumentError):
        m.train_state(missing)
    with pytest.raises(ShapeError):
        m.train_state({**p, "W": p["W"].T})
    with pytest.raises(ArgumentError):
        m.train_state([p["W"]])
    s = m.train_state(p)
    x, y = batch(0, 4)
    with pytest.raises(ArgumentError):
        m.train_step(s, x=x, y=y, W=p["W"])            # params live in the state
    with pytest.raises(ShapeError):
        m.train_step(s, x=x[:, :10], y=y)
    with pytest.raises(ArgumentError):
        m.train_step(s, x=x, y=np.array([0, 1, 2, 99], np.int32))
    with pytest.raises(ArgumentError):
        m.train_step("state", x=x, y=y)
    out = m.train_step(s, x=np.asfortranarray(x[:, ::-1]).copy(order="F"), y=y)   # a non-contiguous batch is copied
    assert np.isfinite(out["loss"])


# ---------------------------------------------------------------- the generated C
def test_train_functions_in_source_and_header():
    m = compiled(OPTIMIZERS["adam"])
    h = m.header
    flat = " ".join(h.split())       # the prototypes are wrapped
    assert "int one_layer_train_step(long n, const double *x, const int32_t *y, double *W" in flat
    assert "int64_t *adam_t, const one_layer_hparams *hparams, double *loss, double *probs, void *workspace);" in flat
    assert "int one_layer_fit(long n_total, long batch, const double *x, const int32_t *y, const int64_t *order" in flat
    assert "size_t one_layer_fit_workspace_size(long batch);" in h
    for doc in ("Adam first moment m of W", "Adam step count t", "a permutation of 0 .. n_total-1",
                "out: the loss"):
        assert doc in h, doc
    assert "torch.optim.Adam" in m.source and "gc_adam_update(W, d_W, W_m, W_v," in m.source


def test_train_function_docs_read_well_whatever_the_loss_is_called():
    """The headers name the loss value and the output holding it: no "for J = J", no "the loss loss"."""
    from graphc.backend.codegen import generate
    from conftest import one_layer_spec
    for outputs, held_in in (({"loss": "J", "probs": "softmax(theta)"}, "loss"), ({"J": "J"}, "J")):
        g = graphc.parse_spec(one_layer_spec("docs", dx=4, dh=8, nc=3, outputs=outputs), "docs.toml")
        h = generate(g, *g.grad_spec, optimizer=graphc.SGD(lr=0.1)).header
        assert "/* the outputs and the gradients of the loss J with respect to W, b1, U, b2\n" in h
        assert ("/* one training step of SGD(lr=0.1, momentum=0.0, weight_decay=0.0): the outputs, the gradients "
                "of the loss J with respect to W, b1, U, b2 (in the workspace), then W, b1, U, b2 updated in "
                "place\n") in h
        assert f"out: the loss (output `{held_in}`) of each minibatch\n" in h
        assert "J = J" not in h and "the loss loss" not in h and "dJ/d{" not in h


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("which,dtype", [("adam", "float32"), ("sgd_momentum", "float64"), ("sgd_weight_decay", "float32")])
def test_generated_training_c_is_strict_c99(tmp_path, which, dtype):
    from graphc.backend.codegen import generate
    g = graphc.load(WINDOW if dtype == "float32" else ONE_LAYER)
    cs = generate(g, g.grad_spec[0], g.grad_spec[1], dtype=dtype, optimizer=OPTIMIZERS[which])
    (tmp_path / f"{g.name}.c").write_text(cs.source)
    (tmp_path / f"{g.name}.h").write_text(cs.header)
    (tmp_path / cs.kernels.header_name).write_text(cs.kernels.header)    # the shared library's header
    r = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-c",
                        str(tmp_path / f"{g.name}.c"), "-o", str(tmp_path / "m.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_frozen_param_and_loss_that_is_no_output():
    """wrt names some params only: the others are const in C and stay put; a loss that is not an
    output comes back from train_step as "loss"."""
    g = graphc.Graph("frozen")
    x = g.input("x", ("N", 6))
    y = g.input("y", ("N",), dtype="int32")
    W, b, S = g.param("W", (5, 6)), g.param("b", (5,)), g.param("S", (6, 6))
    theta = (x @ S) @ W.T + b
    J = graphc.cross_entropy(theta, y)
    g.output("probs", graphc.softmax(theta))
    m = graphc.compile(g, grad_of=J.name, wrt=["W", "b"], dtype="float64", optimizer=graphc.SGD(lr=0.5), threads=1)
    assert "const double *S" in m.header
    s = m.train_state(graphc.init_params(g, seed=0, scheme={"S": "normal"}))
    S0, W0 = s.params["S"].copy(), s.params["W"].copy()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6))
    Y = X[:, :5].argmax(axis=1).astype(np.int32)
    out = m.train_step(s, x=X[:4], y=Y[:4])
    assert set(out) == {"probs", "loss"}
    ref = graphc.evaluate(graphc.grad(g, of=J.name, wrt=["W"]), x=X[:4], y=Y[:4], W=W0, b=np.zeros(5), S=S0)
    np.testing.assert_allclose(s.params["W"], W0 - 0.5 * ref["d_W"], rtol=1e-12, atol=1e-14)
    hist = m.fit(s, x=X, y=Y, batch_size=8, epochs=5)
    assert hist[-1] < hist[0] and np.array_equal(S0, s.params["S"])


@pytest.mark.parametrize("with_tqdm", [True, False])
def test_fit_progress_bar_only_on_a_terminal(graph, monkeypatch, with_tqdm):
    """The bar shows the epoch, the loss and the rows per second: tqdm's when it is installed,
    graphc's own otherwise; on a terminal by default, always with progress=True, never with False."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    if with_tqdm:
        pytest.importorskip("tqdm", reason="tqdm is an optional extra (pip install 'graphc[demo]')")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)      # import tqdm raises ImportError
    m = compiled(OPTIMIZERS["sgd"])
    x, y = batch(0, 20)
    s = m.train_state(graphc.init_params(graph, seed=0))
    cases = ((Terminal(), None, True), (Terminal(), False, False), (io.StringIO(), None, False),
             (io.StringIO(), True, True))
    for stream, progress, shown in cases:
        monkeypatch.setattr(sys, "stderr", stream)
        m.fit(s, x=x, y=y, batch_size=8, epochs=2, progress=progress)
        text = stream.getvalue()
        assert ("2/2" in text and "loss" in text and "rows/s" in text) == shown, (progress, text)
        assert (("it/s" in text or "epoch/s" in text or "s/epoch" in text) if shown and with_tqdm else True)
        assert not shown or with_tqdm == ("epoch 2/2 [" not in text)


# ---------------------------------------------------------------- the train_step fast path never uses stale data
def _reference_steps(m, init, batches):
    """The same steps with every minibatch passed as lists: each call takes the checked path."""
    state = m.train_state(init)
    outs = [m.train_step(state, x=x.tolist(), y=y.tolist()) for x, y in batches]
    return state, outs


def _same_bits(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes(), k


@pytest.mark.parametrize("which", ["sgd", "adam"])
def test_train_step_fast_path_new_and_mutated_minibatches(graph, which):
    m = compiled(OPTIMIZERS[which])
    init = graphc.init_params(graph, seed=2)
    x1, y1 = batch(1, 8)
    x2, y2 = batch(2, 8)
    x3 = x1.copy()
    state = m.train_state(init)
    got = [m.train_step(state, x=x1, y=y1), m.train_step(state, x=x1, y=y1),   # checked, then fast
           m.train_step(state, x=x2, y=y2)]                                    # new arrays, same shapes
    x1[...] = x2[::-1]                                                          # changed in place
    y1[...] = y2[::-1]
    got.append(m.train_step(state, x=x1, y=y1))
    got.append(m.train_step(state, x=x3, y=y1))                                # x new, y the same object
    kept = [{k: v.copy() for k, v in o.items()} for o in got]
    x0, y0 = batch(1, 8)                                  # x1, y1 before the change
    ref_state, want = _reference_steps(m, init, [(x0, y0), (x0, y0), (x2, y2), (x2[::-1], y2[::-1]),
                                                 (x3, y2[::-1])])
    for g, k, w in zip(got, kept, want):
        _same_bits(g, w)
        _same_bits(g, k)                                  # outputs of earlier calls are untouched by later ones
    _same_bits(dict(state.params), dict(ref_state.params))
    _same_bits(dict(state.buffers), dict(ref_state.buffers))
    assert state.step == ref_state.step == 5


def test_train_step_fast_path_is_per_state_and_checks_again_on_change(graph):
    m = compiled(OPTIMIZERS["sgd_momentum"])
    init = graphc.init_params(graph, seed=3)
    x, y = batch(4, 6)
    a, b = m.train_state(init), m.train_state(init)
    for _ in range(3):
        m.train_step(a, x=x, y=y)
    m.train_step(b, x=x, y=y)                            # b has its own plan, pointers and workspace
    ref, _ = _reference_steps(m, init, [(x, y)])
    _same_bits(dict(b.params), dict(ref.params))
    with pytest.raises(ShapeError):
        m.train_step(a, x=x[:, :10].copy(), y=y)
    with pytest.raises(ShapeError, match="'y' has N=5"):
        m.train_step(a, x=x, y=y[:5].copy())
    with pytest.raises(ArgumentError, match="out of range"):
        m.train_step(a, x=x, y=np.array([0, 1, 2, 3, 4, 99], np.int32))
    with pytest.raises(ArgumentError, match="unexpected argument 'W'"):
        m.train_step(a, x=x, y=y, W=init["W"])
    with pytest.raises(ArgumentError, match="missing argument 'y'"):
        m.train_step(a, x=x)
    x.shape = (3, 128)                                   # the held array reshaped in place
    with pytest.raises(ShapeError, match="'x'"):
        m.train_step(a, x=x, y=y)
    x.shape = (6, 64)
    c = m.train_state(init)
    x0 = x.copy()
    m.train_step(c, x=x, y=y)
    x.dtype = np.int64                                   # reinterpreted in place: converted, not read as floats
    x[...] = 3
    m.train_step(c, x=x, y=y)
    ref, _ = _reference_steps(m, init, [(x0, y), (np.full((6, 64), 3.0), y)])
    _same_bits(dict(c.params), dict(ref.params))
