"""The optimizer in the IR (graphc.train_graph): the train step as a graph of ordinary ops,
evaluated by the NumPy reference, is what NAME_train_step computes in C, step after step."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphc
from graphc.tools.cli import main as cli

from conftest import EXAMPLES_DIR, one_layer_spec

OPTIMIZERS = {
    "sgd": graphc.SGD(lr=0.1),
    "momentum+decay": graphc.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": graphc.Adam(lr=1e-2),
    "adam+decay": graphc.Adam(lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=1e-2),
    "adamw": graphc.AdamW(lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1),
}


def batch(g: graphc.Graph, n: int, rng) -> dict[str, np.ndarray]:
    from graphc.tools.check import random_arrays
    return {k: v for k, v in random_arrays(g, n, rng).items() if k in g.inputs}


@pytest.mark.parametrize("n", [5, 300])     # 300 rows: the gradient GEMMs take two K blocks (KC = 256)
@pytest.mark.parametrize("spec", ["one_layer.toml", "mlp.toml", "window_classifier.toml"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_updates_c_train_step_equals_the_ir_train_graph(spec, name, n):
    """Plain SGD updates the weights inside the GEMMs that compute their gradients (partial sums
    over K blocks in the workspace at n = 300), the others in loops: the IR's numbers either way."""
    g = graphc.load(EXAMPLES_DIR / spec)
    of, wrt = g.grad_spec
    optimizer = OPTIMIZERS[name]
    tg = graphc.train_graph(g, of, wrt, optimizer)
    m = graphc.compile(g, dtype="float64", optimizer=optimizer)
    fused = re.search(r"gc_ep = \{[^}]*\.update = ", m.source) is not None   # an update in a GEMM epilogue
    assert fused == (name == "sgd")
    params = graphc.init_params(g, seed=1)
    state = m.train_state(params)
    rng = np.random.default_rng(2)
    current = {}                                  # the train graph's inputs for params and optimizer state
    for key, (inp, _out) in tg.updates.items():
        current[inp] = params[key] if key in params else np.zeros(tg.inputs[inp].shape)
    frozen = {k: v for k, v in params.items() if k not in tg.updates}
    for _ in range(4):
        data = batch(g, n, rng)
        outs = m.train_step(state, **data)
        ref = graphc.evaluate(tg, **data, **frozen, **current)
        for k, v in outs.items():
            np.testing.assert_allclose(v, ref[k], rtol=1e-10, atol=1e-12)
        for key, (inp, out) in tg.updates.items():
            c_value = state.params[key] if key in state.params else state.buffers[key]
            scale = max(float(np.max(np.abs(ref[out]))), 1e-300)
            assert float(np.max(np.abs(c_value - ref[out]))) / scale < 1e-10, (name, key)
            current[inp] = ref[out]


def test_updates_train_graph_is_ordinary_ir():
    g = graphc.load(EXAMPLES_DIR / "one_layer.toml")
    tg = graphc.train_graph(g, "J", ["W", "b1", "U", "b2"], graphc.Adam())
    tg.verify()
    assert set(tg.updates) == {"t"} | {f"{s}/{w}" for s in ("m", "v") for w in ("W", "b1", "U", "b2")} | {
        "W", "b1", "U", "b2"}
    assert tg.updates["m/W"] == ("m_W", "next_m_W") and tg.updates["W"] == ("W", "next_W")
    assert tg.inputs["m_W"].shape == g.params["W"].shape and tg.inputs["adam_t"].shape == ()
    assert {n.op.name for n in tg.nodes} <= set(graphc.ops.REGISTRY)
    text = str(tg)
    assert "next_W " in text and "# Adam update of W" in text and "sqrt(next_v_W)" in text


def test_updates_graph_copy_keeps_updates_and_adjoints():
    g = graphc.load(EXAMPLES_DIR / "one_layer.toml")
    tg = graphc.train_graph(g, "J", ["W", "b1", "U", "b2"], graphc.SGD(lr=0.1))
    assert tg.updates == {w: (w, f"next_{w}") for w in ("W", "b1", "U", "b2")}
    assert {v.name for v in tg.adjoints} >= {"W", "theta", "J"}     # carried from grad's graph
    copy, vmap = tg.copy()
    assert copy.updates == tg.updates and copy.updates is not tg.updates
    assert copy.adjoints == {vmap[v]: vmap[d] for v, d in tg.adjoints.items()}


def test_updates_state_names_avoid_the_models_own_names():
    g = graphc.Graph("clash")
    x = g.input("x", ("N", 3))
    y = g.input("m_W", ("N", 2))            # the name Adam's first moment of W would take
    W = g.param("W", (2, 3))
    g.output("loss", graphc.mse(x @ W.T, y))
    tg = graphc.train_graph(g, "loss", ["W"], graphc.Adam())
    assert tg.updates["m/W"][0] == "m_W_1" and "m_W" in tg.inputs


def test_updates_refuse_a_wrong_optimizer_or_no_param():
    g = graphc.load(EXAMPLES_DIR / "one_layer.toml")
    with pytest.raises(graphc.GraphcError, match="optimizer must be graphc.SGD"):
        graphc.train_graph(g, "J", ["W"], "adam")
    with pytest.raises(graphc.GraphcError, match="names no param"):
        graphc.train_graph(g, "J", ["x"], graphc.SGD())


def test_cli_show_optimizer_prints_the_train_step(capsys):
    assert cli(["show", str(EXAMPLES_DIR / "one_layer.toml"), "--optimizer", "sgd", "--lr", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "# train step: dJ/d(W, b1, U, b2), then the update of SGD(lr=0.5)" in out
    assert "output  next_W = next_W" in out and "const(value=0.5)" in out and "# backward" not in out


ECHO = one_layer_spec("echo", dx=6, dh=8, nc=3, outputs={"loss": "J", "weights": "W"})


def test_updates_a_weight_read_after_its_gradient_gemm_is_not_updated_inside_it():
    """The output `weights = W` is copied after the backward pass: W must still hold its value
    from before the step there, so W's update stays a loop after the copy; U's moves into the GEMM
    that computes d_U. The train step is the IR's either way."""
    g = graphc.parse_spec(ECHO, "echo.toml")
    optimizer = graphc.SGD(lr=0.1)
    m = graphc.compile(g, dtype="float64", optimizer=optimizer)
    # in the backward pass value_and_grad shares (train_step passes the weight to update as
    # gc_update_U), or in train_step itself when the gradient is not stored (C = NULL)
    updates = re.findall(r"gc_ep = \{[^}]*\.update = (?:gc_update_)?(\w+)", m.source)
    assert updates == ["U"]
    params = graphc.init_params(g, seed=0)
    state = m.train_state(params)
    data = batch(g, 7, np.random.default_rng(3))
    outs = m.train_step(state, **data)
    np.testing.assert_array_equal(outs["weights"], params["W"])
    tg = graphc.train_graph(g, "J", ["W", "b1", "U", "b2"], optimizer)
    ref = graphc.evaluate(tg, **data, **params)
    for key, (_inp, out) in tg.updates.items():
        np.testing.assert_allclose(state.params[key], ref[out], rtol=1e-12, atol=1e-14)
