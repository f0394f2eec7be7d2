"""Model state and the two modes: batch_norm's running statistics and dropout's step count.

Training (forward, value_and_grad, train_step, fit) normalizes by the batch's statistics and
drops; train_step then updates the state ([state] in the spec); predict normalizes by the
running statistics and does not drop. Every C result here is checked against the IR's own
train graph (autodiff/train.py) and inference graph (autodiff/modes.py) evaluated in NumPy, and
where PyTorch is installed, against torch.nn.functional.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.autodiff.modes import inference_graph
from graphc.autodiff.train import train_graph
from graphc.ops.dropout import keep_scaled

SPEC = """name = "bn_net"
[dims]
N = "batch"
[inputs]
x = ["N", 2, 6, 5]
y = { shape = ["N"], dtype = "int32" }
[params]
w = [4, 2, 3, 3]
gamma = [4]
beta = [4]
U = [8, 120]
g2 = [8]
V = [3, 8]
[state]
rm = [4]
rv = [4]
m2 = [8]
v2 = [8]
[graph]
h = "relu(batch_norm(conv2d(x, w, padding=1), rm, rv, gamma, beta, momentum=0.2))"
f = "dropout(flatten(h), 0.3)"
z = "batch_norm(f @ U.T, m2, v2, g2)"
theta = "dropout(tanh(z), 0.1) @ V.T"
J = "cross_entropy(theta, y)"
[outputs]
loss = "J"
probs = "softmax(theta)"
[grad]
of = "J"
wrt = ["w", "gamma", "beta", "U", "g2", "V"]
"""


@pytest.fixture(scope="module")
def graph():
    return graphc.parse_spec(SPEC, "bn_net.toml")


def data(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2, 6, 5)), rng.integers(0, 3, n).astype(np.int32)


def reference_steps(g, params, optimizer, x, y, steps):
    """The train graph evaluated in NumPy `steps` times: params and state after each, losses."""
    tg = train_graph(g, "J", g.trainable(), optimizer)
    p = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    slots = {key: np.zeros(tg.values[i].shape) for key, (i, _) in tg.updates.items() if key not in p}
    losses = []
    for _ in range(steps):
        args = {"x": x, "y": y, **p, **{tg.updates[k][0]: v for k, v in slots.items()}}
        out = graphc.evaluate(tg, **args)
        losses.append(float(out["loss"]))
        for key, (_, new) in tg.updates.items():
            (p if key in p else slots)[key] = np.asarray(out[new], dtype=np.float64).reshape((p if key in p else slots)[key].shape)
    return p, losses


def test_spec_declares_state_among_the_params_and_untrained(graph):
    assert list(graph.states) == ["rm", "rv", "m2", "v2", "dropout_step"]
    assert graph.trainable() == ["w", "gamma", "beta", "U", "g2", "V"]
    assert "  state   rm " in str(graph) and "  state   dropout_step" in str(graph)
    p = graphc.init_params(graph, seed=0)
    # as torch: running mean 0, running variance 1, norm weight 1, bias 0; the step count 0
    assert (p["rm"] == 0).all() and (p["rv"] == 1).all() and (p["gamma"] == 1).all() and (p["beta"] == 0).all()
    assert (p["g2"] == 1).all() and p["dropout_step"].shape == () and p["dropout_step"] == 0


@pytest.mark.parametrize("dtype, optimizer", [("float64", graphc.SGD(lr=0.1, momentum=0.9)),
                                              ("float32", graphc.Adam(lr=0.01))], ids=["f64-momentum", "f32-adam"])
def test_train_step_updates_the_running_statistics_and_the_step_count_as_the_reference(graph, dtype, optimizer):
    x, y = data()
    params = graphc.init_params(graph, seed=1)
    m = graphc.compile(graph, dtype=dtype, optimizer=optimizer)
    state = m.train_state(params)
    losses = [float(m.train_step(state, x=x.astype(dtype), y=y)["loss"]) for _ in range(3)]
    want, want_losses = reference_steps(graph, params, optimizer, x, y, 3)
    tol = 1e-10 if dtype == "float64" else 2e-4
    np.testing.assert_allclose(losses, want_losses, rtol=tol, atol=tol)
    for k in graph.params:
        np.testing.assert_allclose(state.params[k], want[k], rtol=tol, atol=tol, err_msg=k)
    assert state.params["dropout_step"] == 3
    # the running statistics moved towards the batch's: mean of channel c over N, H, W
    assert not np.allclose(state.params["rm"], 0) and not np.allclose(state.params["rv"], 1)


def test_running_statistics_follow_torchs_rule(graph):
    """One step from rm = 0, rv = 1: rm = momentum mean, rv = (1 - momentum) + momentum var_unbiased
    of the first layer's batch (conv output), as torch.nn.BatchNorm2d."""
    x, y = data()
    params = graphc.init_params(graph, seed=1)
    m = graphc.compile(graph, dtype="float64", optimizer=graphc.SGD(lr=0.1))   # (the first step's statistics come before any update)
    state = m.train_state(params)
    m.train_step(state, x=x, y=y)
    g = graphc.Graph("conv")
    xv, wv = g.input("x", x.shape), g.param("w", params["w"].shape)
    g.output("z", graphc.conv2d(xv, wv, padding=1))
    z = graphc.evaluate(g, x=x, w=params["w"])["z"]
    mean, var = z.mean(axis=(0, 2, 3)), z.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(state.params["rm"], 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(state.params["rv"], 0.8 + 0.2 * var, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_predict_uses_the_running_statistics_and_no_dropout(graph, dtype):
    x, y = data()
    params = graphc.init_params(graph, seed=2, dtype=dtype)
    x = x.astype(dtype)
    params["rm"] = np.linspace(-0.5, 0.5, 4).astype(dtype)
    params["rv"] = np.linspace(0.5, 2.0, 4).astype(dtype)
    params["dropout_step"] = np.array(5.0, dtype=dtype)
    m = graphc.compile(graph, dtype=dtype)
    got = m.predict(x=x, y=y, **params)            # y is accepted and left out
    inferred = inference_graph(graph)
    assert not any(n.op.name in ("batch_norm", "dropout") for n in inferred.nodes)
    want = graphc.evaluate(inferred, x=x, y=y, **params)["probs"]
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(got["probs"], want, rtol=tol, atol=tol)
    # training mode differs: batch statistics and dropout
    train = m.forward(x=x, y=y, **params)["probs"]
    assert np.abs(train - got["probs"]).max() > 1e-3
    # and predict does not depend on the batch: row 0 alone gives row 0's probabilities
    alone = m.predict(x=x[:1], **params)["probs"]
    np.testing.assert_allclose(alone[0], got["probs"][0], rtol=tol, atol=tol)
    with pytest.raises(graphc.GraphcError, match="m.predict"):
        m.forward(x=x, **params)         # forward without labels would silently be a different mode


def test_dropout_masks_are_reproducible_keyed_by_step_and_seed():
    g = graphc.Graph("drop")
    x = g.input("x", ("N", 300))
    g.output("a", graphc.dropout(x, 0.25))
    g.output("b", graphc.dropout(x, 0.25))
    m = graphc.compile(g, dtype="float32")
    ones = np.ones((40, 300), dtype=np.float32)
    step = lambda s: np.array(s, dtype=np.float32)  # noqa: E731
    out = m.forward(x=ones, dropout_step=step(7.0))
    for k in ("a", "b"):
        kept = out[k] != 0
        assert abs(kept.mean() - 0.75) < 0.01                                   # 12,000 draws
        np.testing.assert_allclose(out[k][kept], 1 / 0.75, rtol=1e-6)
    assert (out["a"] != out["b"]).any()                                         # each dropout its own seed
    np.testing.assert_allclose(out["a"], keep_scaled(0, 7, 0.25, (40, 300)), rtol=1e-6)
    np.testing.assert_allclose(out["b"], keep_scaled(1, 7, 0.25, (40, 300)), rtol=1e-6)
    again = m.forward(x=ones, dropout_step=step(7.0))
    assert (again["a"] == out["a"]).all()
    other = m.forward(x=ones, dropout_step=step(8.0))
    assert (other["a"] != out["a"]).any()
    # threads split the mask's loop: the bits stay the same
    m2 = graphc.compile(g, dtype="float32", threads=2)
    assert (m2.forward(x=ones, dropout_step=step(7.0))["a"] == out["a"]).all()


def test_fit_updates_the_state_as_train_steps_do(graph):
    x, y = data(n=12, seed=3)
    params = graphc.init_params(graph, seed=4)
    m = graphc.compile(graph, dtype="float64", optimizer=graphc.SGD(lr=0.05))
    by_fit, by_step = m.train_state(params), m.train_state(params)
    m.fit(by_fit, x=x, y=y, batch_size=4, epochs=1, seed=5, progress=False)
    order = np.random.default_rng(5).permutation(12)
    for i in range(0, 12, 4):
        rows = order[i:i + 4]
        m.train_step(by_step, x=x[rows], y=y[rows])
    for k in graph.params:
        np.testing.assert_allclose(by_fit.params[k], by_step.params[k], rtol=1e-12, atol=1e-14, err_msg=k)
    assert by_fit.params["dropout_step"] == 3


def test_saved_state_and_checkpoint_carry_the_model_state(graph, tmp_path):
    x, y = data()
    m = graphc.compile(graph, dtype="float32", optimizer=graphc.Adam(lr=0.01))
    x = x.astype(np.float32)
    state = m.train_state(graphc.init_params(graph, seed=1))
    for _ in range(2):
        m.train_step(state, x=x, y=y)
    for loaded in (m.load_state(state.save(tmp_path / "s.npz")),
                   m.load_checkpoint(m.save_checkpoint(state, tmp_path / "s.gcc"))):
        for k in ("rm", "rv", "m2", "v2", "dropout_step"):
            np.testing.assert_array_equal(loaded.params[k], state.params[k])
        a, b = m.train_step(loaded, x=x, y=y), m.train_step(state.copy(), x=x, y=y)
        np.testing.assert_array_equal(a["loss"], b["loss"])


def test_emitted_header_documents_the_state(graph):
    m = graphc.compile(graph, dtype="float32", optimizer=graphc.SGD(lr=0.1))
    step = m.functions["train_step"]
    updated = {a.cname for a in step.args if a.role == "param*"}
    assert {"rm", "rv", "m2", "v2", "dropout_step"} <= updated
    assert "model state rm, rv, m2, v2, dropout_step updated in place" in m.header
    predict = m.functions["predict"]
    assert "inference (running statistics, no dropout)" in predict.doc


def test_spec_writer_keeps_the_state_section(graph):
    from graphc.frontend.spec_writer import to_spec
    text = to_spec(graph)
    assert "[state]" in text and "dropout(" in text
    back = graphc.parse_spec(text, "back.toml")
    assert list(back.states) == list(graph.states)
    x, y = data()
    p = graphc.init_params(graph, seed=0)
    np.testing.assert_allclose(graphc.evaluate(back, x=x, y=y, **p)["loss"], graphc.evaluate(graph, x=x, y=y, **p)["loss"])


BAD = [
    (SPEC.replace('wrt = ["w",', 'wrt = ["rm", "w",'), "model state"),
    (SPEC.replace("[state]\nrm = [4]", "[state]").replace("[params]\n", "[params]\nrm = [4]\n"),
     r"bn_net.toml:\d+.*batch_norm.*argument 2 \(rm\) must be model state, declared under \[state\]"),
    (SPEC.replace("dropout(flatten(h), 0.3)", "dropout(flatten(h), 1.0)"), r"bn_net.toml:\d+.*p must be a number in \[0, 1\)"),
    (SPEC.replace("m2, v2, g2", "rm, rv, g2"), "running_mean must have shape \\(8,\\)"),
    (SPEC.replace("momentum=0.2", "momentum=1.5"), "momentum must be a number in \\[0, 1\\]"),
    (SPEC.replace('x = ["N", 2, 6, 5]', 'x = ["N", 2, 6, 5, 1]'), "rank"),
]


@pytest.mark.parametrize("text, message", BAD, ids=["state-in-wrt", "param-as-running-mean", "p-1", "wrong-shape",
                                                    "momentum", "rank-5"])
def test_bad_state_use_is_a_clear_error(text, message):
    with pytest.raises(graphc.GraphcError, match=message):
        g = graphc.parse_spec(text, "bn_net.toml")
        graphc.compile(g, dtype="float64", optimizer=graphc.SGD(lr=0.1))


def test_two_batch_norms_sharing_running_statistics_are_refused():
    g = graphc.Graph("shared")
    x, w = g.input("x", ("N", 3)), g.param("w", (3,))
    rm, rv = g.state("rm", (3,)), g.state("rv", (3,))
    g.output("J", graphc.sum(graphc.batch_norm(x, rm, rv, w) * graphc.batch_norm(2.0 * x, rm, rv)))
    with pytest.raises(graphc.GraphcError, match="updated by two ops"):
        graphc.compile(g, grad_of="J", wrt=["w"], optimizer=graphc.SGD(lr=0.1))


def test_batch_norm_and_its_running_statistics_agree_with_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(5, 3, 4, 4)), rng.normal(size=3), rng.normal(size=3)
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2, size=3)
    g = graphc.Graph("bn")
    xv = g.input("x", x.shape)
    wv, bv = g.param("w", (3,)), g.param("b", (3,))
    rmv, rvv = g.state("rm", (3,)), g.state("rv", (3,))
    g.output("J", graphc.sum(graphc.batch_norm(xv, rmv, rvv, wv, bv, momentum=0.3) ** 2))
    m = graphc.compile(g, grad_of="J", wrt=["x", "w", "b"], dtype="float64", optimizer=None)
    out, grads = m.value_and_grad(x=x, w=w, b=b, rm=rm, rv=rv)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    ty = F.batch_norm(tx, trm, trv, tw, tb, training=True, momentum=0.3)
    (ty ** 2).sum().backward()
    np.testing.assert_allclose(out["J"], float((ty ** 2).sum()), rtol=1e-10)
    for name, t in (("x", tx), ("w", tw), ("b", tb)):
        np.testing.assert_allclose(grads[name], t.grad.numpy(), rtol=1e-8, atol=1e-10)
    # one train step moves the running statistics as torch's training call did
    sm = graphc.compile(g, grad_of="J", wrt=["w", "b"], dtype="float64", optimizer=graphc.SGD(lr=0.1))
    state = sm.train_state({"w": w, "b": b, "rm": rm, "rv": rv})
    sm.train_step(state, x=x)
    np.testing.assert_allclose(state.params["rm"], trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(state.params["rv"], trv.numpy(), rtol=1e-12)
    # inference against torch's eval mode
    pg = inference_graph(g)
    np.testing.assert_allclose(
        graphc.evaluate(pg, x=x, w=w, b=b, rm=rm, rv=rv)["J"],
        float((F.batch_norm(torch.tensor(x), torch.tensor(rm), torch.tensor(rv), torch.tensor(w), torch.tensor(b),
                            training=False) ** 2).sum()), rtol=1e-10)
