"""passes/: constant folding and algebraic simplification, CSE and DCE keep every value and
remove what they promise to remove; `graphc show --passes` shows the stages."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphc
from graphc.tools.cli import main as cli
from graphc.backend.lower import lower
from graphc.passes.simplify import simplify


def ops_of(g: graphc.Graph) -> list[str]:
    return [n.op.name for n in g.nodes]


def graph_xw():
    g = graphc.Graph("p")
    x = g.input("x", ("N", 3))
    W = g.param("W", (4, 3))
    return g, x, W


def test_passes_fold_transpose_of_transpose_and_multiply_by_one():
    g, x, W = graph_xw()
    z = x @ W.T.T.T                           # three transposes are one
    g.output("out", graphc.tanh(z * 1.0 + 0.0) / 1.0)
    low = lower(g)
    assert ops_of(low).count("transpose") == 1
    assert "mul" not in ops_of(low) and "add" not in ops_of(low) and "div" not in ops_of(low)
    assert ops_of(low) == ["transpose", "matmul", "tanh"]


def test_passes_fold_constants_and_double_negation():
    g, x, W = graph_xw()
    two = g.apply("const", value=2.0)
    half = g.apply("div", g.apply("const", value=1.0), two)          # 1 / 2
    g.output("out", -(-(x @ W.T)) * half * graphc.exp(g.apply("const", value=0.0)))
    low = lower(g)
    assert "neg" not in ops_of(low) and "exp" not in ops_of(low) and "div" not in ops_of(low)
    consts = [n.attrs["value"] for n in low.nodes if n.op.name == "const"]
    assert consts == [0.5]
    rng = np.random.default_rng(0)
    args = dict(x=rng.standard_normal((5, 3)), W=rng.standard_normal((4, 3)))
    np.testing.assert_allclose(graphc.evaluate(low, **args)["out"], 0.5 * args["x"] @ args["W"].T, rtol=1e-15)


def test_passes_keep_a_broadcasting_identity_and_x_times_zero():
    g = graphc.Graph("p")
    v = g.input("v", (3,))
    ones = g.input("ones", (2, 3))
    g.output("a", v * 0.0)          # NaN * 0 is NaN: not folded to 0
    g.output("b", v + 0.0 * ones)   # v + (2,3) broadcasts: the add stays
    low = lower(g)
    assert "mul" in ops_of(low) and "add" in ops_of(low)
    out = graphc.evaluate(low, v=np.array([np.nan, 1.0, 2.0]), ones=np.ones((2, 3)))
    assert np.isnan(out["a"][0]) and out["b"].shape == (2, 3)


def test_passes_an_output_that_simplifies_to_an_input_still_compiles():
    g, x, W = graph_xw()
    g.output("same", x * 1.0)
    g.output("z", x @ W.T)
    m = graphc.compile(g, dtype="float64")
    X = np.random.default_rng(1).standard_normal((2, 3))
    outs = m.forward(x=X, W=np.ones((4, 3)))
    np.testing.assert_array_equal(outs["same"], X)


def test_passes_cse_merges_and_dce_drops():
    g, x, W = graph_xw()
    a = graphc.relu(x @ W.T)
    b = graphc.relu(x @ W.T)          # the same again: merged
    graphc.sigmoid(x)                 # no output uses it: dropped
    g.output("out", a + b)
    low = lower(g)
    assert ops_of(low) == ["transpose", "matmul", "relu", "add"]


# ---- property: simplification never changes a value ------------------------------------------
UNARY = ["neg", "tanh", "sigmoid", "relu", "exp", "transpose"]
BINARY = ["add", "sub", "mul", "div"]


@st.composite
def expressions(draw):
    """A random graph over two (3, 3) inputs, consts 0, 1, 2 and -1 mixed in to trigger the rules;
    its outputs are the last value made and up to two others."""
    g = graphc.Graph("prop")
    tensors = [g.input("x", (3, 3)), g.input("y", (3, 3))]
    scalars = []
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            scalars.append(g.apply("const", value=draw(st.sampled_from([0.0, 1.0, 2.0, -1.0]))))
        a = draw(st.sampled_from(tensors[-3:]))          # mostly the newest values: deep chains
        if draw(st.booleans()):
            op = draw(st.sampled_from(UNARY))
            if op == "exp":
                a = g.apply("tanh", a)            # keep exp finite
            tensors.append(g.apply(op, a))
        else:
            op = draw(st.sampled_from(BINARY))
            b = draw(st.sampled_from(scalars if scalars and draw(st.booleans()) else tensors))
            if op == "div":
                b = g.apply("add", g.apply("exp", g.apply("tanh", b)), 1.0)   # keep the divisor away from 0
            pair = (a, b) if draw(st.booleans()) else (b, a)
            tensors.append(g.apply(op, *pair))
    g.output("last", tensors[-1])
    for i, v in enumerate(draw(st.lists(st.sampled_from(tensors[2:] + scalars), max_size=2))):
        g.output(f"o{i}", v)
    return g


@settings(max_examples=150, deadline=None, derandomize=True)
@given(expressions())
def test_passes_simplify_preserves_every_output(g):
    rng = np.random.default_rng(0)
    args = dict(x=rng.standard_normal((3, 3)), y=rng.standard_normal((3, 3)))
    before = graphc.evaluate(g, **args)
    after_graph = simplify(g.copy()[0])
    after = graphc.evaluate(after_graph, **args)
    assert set(after) == set(before)
    for k in before:
        np.testing.assert_allclose(np.broadcast_to(after[k], before[k].shape), before[k], rtol=1e-13, atol=1e-13)
    assert not any(n.op.name == "transpose" and n.inputs[0].node is not None and n.inputs[0].node.op.name == "transpose"
                   for n in after_graph.nodes)


def test_cli_show_passes_prints_each_stage(capsys, examples_dir):
    assert cli(["show", str(examples_dir / "one_layer.toml"), "--passes"]) == 0
    out = capsys.readouterr().out
    for stage in ("autodiff (forward + backward)", "fold constants and identities, CSE, DCE",
                  "schedule (kernels, fusion, arena)"):
        assert stage in out
    assert "transposes read in place by GEMM" in out
