"""Numerics: graphc's own fused ops (softmax, log-softmax, cross-entropy, sigmoid) stay finite
and correct at huge logits in float32 and float64, in C and in the reference; NaN and Inf
inputs propagate to the outputs instead of crashing or vanishing."""
from __future__ import annotations

import numpy as np
import pytest

import graphc

from conftest import private_cache_dir

SPEC = """
name = "logits"
[dims]
N = "batch"
C = 5
[inputs]
t = ["N", "C"]
y = { shape = ["N"], dtype = "int32" }
[graph]
J = "cross_entropy(t, y)"
[outputs]
loss = "J"
p = "softmax(t)"
lp = "log_softmax(t)"
s = "sigmoid(t)"
r = "relu(t)"
[grad]
of = "J"
wrt = ["t"]
"""

HUGE = np.array([[1e4, -1e4, 0.0, 1e4, 5.0],       # two equal maxima
                 [1e4] * 5,                          # equal huge logits
                 [-1e4] * 5,
                 [-1e4, 1e4, -1e4, -1e4, -1e4],
                 [3.0, -2.0, 0.5, 1e-3, -1e4]])
LABELS = np.array([1, 2, 0, 1, 4], dtype=np.int32)


_cache_dir = pytest.fixture(scope="module", autouse=True)(private_cache_dir)


@pytest.fixture(scope="module")
def graph():
    return graphc.parse_spec(SPEC, "logits.toml")


@pytest.fixture(scope="module", params=["float32", "float64"])
def model(request, graph):
    return graphc.compile(graph, dtype=request.param)


def exact(t, y):
    """Stable closed forms in float64: what every result must equal."""
    shift = t - t.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shift).sum(axis=1, keepdims=True))
    lp = shift - lse
    p = np.exp(lp)
    onehot = np.eye(t.shape[1])[y]
    return dict(loss=-lp[np.arange(len(y)), y].mean(), p=p, lp=lp, s=0.5 * (1 + np.tanh(t / 2)),
                r=np.maximum(t, 0), d_t=(p - onehot) / len(y))


def test_numerics_huge_logits_stay_finite_and_correct_in_c(model):
    t = HUGE.astype(model.dtype)
    outs, grads = model.value_and_grad(t=t, y=LABELS)
    want = exact(HUGE, LABELS)
    tol = dict(rtol=2e-6, atol=1e-6) if model.dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    for k, v in {**outs, "d_t": grads["t"]}.items():
        assert np.isfinite(v).all(), k
        np.testing.assert_allclose(v, want[k], err_msg=k, **tol)
    assert np.isclose(outs["loss"], want["loss"], rtol=1e-6)            # 2e4 for the wrong-class rows
    np.testing.assert_array_equal(outs["p"][1], np.full(5, 0.2, model.dtype))   # equal huge logits
    assert outs["s"][1].tolist() == [1.0] * 5 and outs["s"][2].tolist() == [0.0] * 5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numerics_huge_logits_stay_finite_in_the_reference(graph, dtype):
    t = HUGE.astype(dtype)
    ref = graphc.evaluate(graphc.grad(graph, "J", ["t"]), _dtype=dtype, t=t, y=LABELS)
    want = exact(HUGE, LABELS)
    for k in ("loss", "p", "lp", "s", "d_t"):
        assert np.isfinite(ref[k]).all(), k
        np.testing.assert_allclose(ref[k], want[k], rtol=2e-6, atol=1e-6, err_msg=k)


def test_numerics_fused_ops_never_make_nan_from_finite_inputs(model):
    rng = np.random.default_rng(0)
    scale = 3e38 if model.dtype == np.float32 else 1e300
    t = np.concatenate([rng.standard_normal((50, 5)) * 10.0 ** rng.integers(-30, 30, (50, 1)),
                        rng.choice([-scale, scale, 0.0, -0.0, 1e-45], (30, 5))]).astype(model.dtype)
    y = rng.integers(0, 5, len(t)).astype(np.int32)
    outs, grads = model.value_and_grad(t=t, y=y)
    for k in ("p", "lp", "s", "r"):
        assert not np.isnan(outs[k]).any(), k
    assert not np.isnan(grads["t"]).any() and not np.isnan(outs["loss"])
    np.testing.assert_allclose(outs["p"].sum(axis=1), 1, rtol=1e-5)


def test_numerics_nan_and_inf_propagate(model):
    t = np.zeros((4, 5), dtype=model.dtype)
    t[0, 2] = np.nan
    t[1, 3] = np.inf
    t[2, 0] = -np.inf
    y = np.array([0, 1, 2, 3], dtype=np.int32)
    outs, grads = model.value_and_grad(t=t, y=y)
    assert np.isnan(outs["loss"])
    assert np.isnan(outs["p"][0]).all() and np.isnan(outs["lp"][0]).all()
    assert np.isnan(outs["s"][0, 2]) and np.isnan(outs["r"][0, 2])      # relu keeps the NaN
    assert outs["s"][1, 3] == 1 and outs["r"][1, 3] == np.inf and outs["r"][2, 0] == 0
    assert np.isnan(outs["p"][1]).any()                                  # inf - inf: NaN, not a crash
    assert np.isfinite(outs["p"][3]).all()                               # clean rows stay clean
    assert np.isnan(grads["t"][0]).all()
