"""The NumPy reference (graphc.evaluate): numerical stability at extreme inputs, argument
checking, and whole example graphs against hand-written NumPy."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.core.errors import ArgumentError, DTypeError, GraphcError, ShapeError
from graphc.core.reference import evaluate_values

I32 = np.int32


def _logits_graph():
    g = graphc.Graph("logits")
    t = g.input("t", ("N", 3))
    y = g.input("y", ("N",), dtype="int32")
    g.output("p", graphc.softmax(t))
    g.output("lp", graphc.log_softmax(t))
    g.output("J", graphc.cross_entropy(t, y))
    g.output("s", graphc.sigmoid(t))
    return g


# ------------------------------------------------------------------ stability
@pytest.mark.parametrize("big", [1000.0, 1e4, 1e300])
def test_reference_softmax_family_is_stable_at_extreme_logits(big):
    g = _logits_graph()
    t = np.array([[big, -big, 0.0], [-big, big, 0.0], [big, big, -big], [-big, -big, -big]])
    y = np.array([0, 0, 2, 1], I32)
    out = graphc.evaluate(g, t=t, y=y)
    for k in ("p", "lp", "J", "s"):
        assert np.all(np.isfinite(out[k])), (k, out[k])
    np.testing.assert_allclose(out["p"], [[1, 0, 0], [0, 1, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-15)
    np.testing.assert_allclose(out["lp"][0], [0, -2 * big, -big], rtol=1e-15)
    np.testing.assert_allclose(out["lp"][2, :2], [-np.log(2)] * 2, rtol=1e-15)
    np.testing.assert_allclose(out["lp"][3], [-np.log(3)] * 3, rtol=1e-15)
    # row losses: 0, 2*big, 2*big + log 2, log 3; mean over the 4 rows
    np.testing.assert_allclose(out["J"], (0 + 2 * big + 2 * big + np.log(2) + np.log(3)) / 4, rtol=1e-14)
    np.testing.assert_array_equal(out["s"][0], [1.0, 0.0, 0.5])


@pytest.mark.parametrize("big", [1000.0, 1e4])
def test_reference_gradients_are_finite_at_extreme_logits(big):
    g = _logits_graph()
    g2 = graphc.Graph("loss")
    t = g2.input("t", ("N", 3))
    y = g2.input("y", ("N",), dtype="int32")
    g2.output("J", graphc.cross_entropy(t, y) + graphc.sum(graphc.sigmoid(t)) + graphc.sum(graphc.log_softmax(t)))
    bwd = graphc.grad(g2, of="J", wrt=["t"])
    tv = np.array([[big, -big, 0.0], [-big, big, 0.0]])
    d_t = graphc.evaluate(bwd, t=tv, y=np.array([0, 0], I32))["d_t"]
    assert np.all(np.isfinite(d_t))
    # identity (7): (yhat - y) / rows; sigmoid' underflows to 0 at +-big, is 1/4 at 0;
    # log_softmax summed over a row: 1 - 3 softmax
    yhat = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    onehot = np.array([[1.0, 0, 0], [1.0, 0, 0]])
    want = (yhat - onehot) / 2 + np.array([[0, 0, 0.25], [0, 0, 0.25]]) + (1 - 3 * yhat)
    np.testing.assert_allclose(d_t, want, atol=1e-12)
    assert graphc.evaluate(g, t=tv, y=np.array([0, 0], I32))["J"] == pytest.approx(big)


def test_reference_sigmoid_is_finite_at_1000():
    g = graphc.Graph("sig")
    x = g.input("x", (4,))
    g.output("s", graphc.sigmoid(x))
    g.output("J", graphc.sum(graphc.sigmoid(x)))
    out = graphc.evaluate(g, x=[1000.0, -1000.0, 0.0, -30.0])
    np.testing.assert_allclose(out["s"], [1.0, 0.0, 0.5, 1 / (1 + np.exp(30.0))], rtol=1e-15, atol=0)
    d_x = graphc.evaluate(graphc.grad(g, of="J", wrt=["x"]), x=[1000.0, -1000.0, 0.0, -30.0])["d_x"]
    assert np.all(np.isfinite(d_x))
    np.testing.assert_allclose(d_x[:3], [0.0, 0.0, 0.25], atol=1e-300)


def test_reference_float32_evaluation_keeps_float32():
    g = _logits_graph()
    out = graphc.evaluate(g, np.float32, t=np.ones((2, 3), np.float32), y=[1, 2])
    assert out["p"].dtype == np.float32
    np.testing.assert_allclose(out["p"], np.full((2, 3), 1 / 3), rtol=1e-6)


# ------------------------------------------------------------------ argument checking
@pytest.fixture
def g():
    return _logits_graph()


T = np.zeros((2, 3))
Y = np.array([0, 1], I32)


def test_evaluate_accepts_lists(g):
    out = graphc.evaluate(g, t=[[0.0, 0.0, 0.0], [1, 2, 3]], y=[0, 2])
    np.testing.assert_allclose(out["p"][0], [1 / 3] * 3)


def test_evaluate_missing_argument(g):
    with pytest.raises(ArgumentError, match=r"missing argument 'y'.*\(N,\)"):
        graphc.evaluate(g, t=T)


def test_evaluate_extra_argument_suggests_the_close_name(g):
    with pytest.raises(ArgumentError, match="unexpected argument 'yy'") as e:
        graphc.evaluate(g, t=T, y=Y, yy=Y)
    assert e.value.hint == "did you mean 'y'?"


@pytest.mark.parametrize("t", [np.zeros((2, 4)), np.zeros(3), np.zeros((1, 2, 3))])
def test_evaluate_misshapen_argument(g, t):
    with pytest.raises(ShapeError, match=r"argument 't' has shape .*expected \(N, 3\)"):
        graphc.evaluate(g, t=t, y=Y[:t.shape[0]] if t.ndim == 2 else Y)


def test_evaluate_inconsistent_batch_names_both_arguments(g):
    with pytest.raises(ShapeError) as e:
        graphc.evaluate(g, t=np.zeros((2, 3)), y=np.zeros(5, I32))
    msg = str(e.value)
    assert "'y'" in msg and "'t'" in msg and "N=5" in msg and "N=2" in msg


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0]])
def test_evaluate_labels_out_of_range(g, labels):
    with pytest.raises(ArgumentError, match=r"out of range \[0, 3\)"):
        graphc.evaluate(g, t=T, y=np.array(labels, I32))


def test_evaluate_embedding_ids_out_of_range():
    h = graphc.Graph("emb")
    E = h.param("E", (4, 2))
    ids = h.input("ids", ("N",), dtype="int32")
    h.output("e", graphc.embedding(E, ids))
    with pytest.raises(ArgumentError, match="4 is out of range"):
        graphc.evaluate(h, E=np.zeros((4, 2)), ids=[0, 4])


@pytest.mark.parametrize("labels", [np.array([0.0, 1.0]), np.array([0.5, 1.0]), np.array([True, False])])
def test_evaluate_float_labels_are_a_dtype_error(g, labels):
    with pytest.raises(DTypeError, match="'y'.*int"):
        graphc.evaluate(g, t=T, y=labels)


def test_evaluate_int64_labels_in_range_are_accepted(g):
    out = graphc.evaluate(g, t=T, y=np.array([0, 2], np.int64))
    assert out["J"] == pytest.approx(np.log(3))


def test_evaluate_refuses_a_silent_downcast_to_float32(g):
    with pytest.raises(DTypeError, match="'t'"):
        graphc.evaluate(g, np.float32, t=T, y=Y)


def test_evaluate_errors_are_graphc_errors(g):
    for kwargs in ({"t": T}, {"t": T, "y": Y, "z": 1}, {"t": np.zeros(3), "y": Y}):
        with pytest.raises(GraphcError):
            graphc.evaluate(g, **kwargs)


# ------------------------------------------------------------------ whole graphs
def test_evaluate_values_names_every_value(g):
    vals = evaluate_values(g, {"t": T, "y": Y})
    assert set(vals) >= {"t", "y"} | {n.output.name for n in g.nodes}


def test_reference_one_layer_example_matches_numpy(examples_dir):
    g = graphc.load(examples_dir / "one_layer.toml")
    rng = np.random.default_rng(0)
    a = {k: rng.standard_normal(tuple(d if isinstance(d, int) else 6 for d in v.shape)) * 0.1
         for k, v in {**g.inputs, **g.params}.items() if v.dtype != "int32"}
    a["y"] = rng.integers(0, 10, 6).astype(I32)
    out = graphc.evaluate(g, **a)
    h = np.maximum(a["x"] @ a["W"].T + a["b1"], 0)
    theta = h @ a["U"].T + a["b2"]
    p = np.exp(theta - theta.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(out["probs"], p, rtol=1e-12)
    np.testing.assert_allclose(out["loss"], -np.mean(np.log(p[np.arange(6), a["y"]])), rtol=1e-12)


def test_reference_column_example_matches_the_notes(examples_dir):
    g = graphc.load(examples_dir / "one_layer_column.toml")
    rng = np.random.default_rng(1)
    a = {k: rng.standard_normal(v.shape) for k, v in {**g.inputs, **g.params}.items()}
    a["y"] = np.eye(5)[3]
    out = graphc.evaluate(g, **a)
    theta = a["U"] @ np.maximum(a["W"] @ a["x"] + a["b1"], 0) + a["b2"]
    yhat = np.exp(theta) / np.exp(theta).sum()
    np.testing.assert_allclose(out["yhat"], yhat, rtol=1e-12)
    np.testing.assert_allclose(out["loss"], -np.log(yhat[3]), rtol=1e-12)


def test_evaluate_ragged_list_is_a_shape_error(g):
    with pytest.raises(ShapeError, match="'t' is not a rectangular array"):
        graphc.evaluate(g, t=[[0.0, 1.0, 2.0], [1.0]], y=Y)


@pytest.mark.parametrize("bad", [None, "abc", {"a": 1}])
def test_evaluate_non_numeric_argument_is_a_dtype_error(g, bad):
    with pytest.raises(DTypeError, match="'t'"):
        graphc.evaluate(g, t=bad, y=Y)
