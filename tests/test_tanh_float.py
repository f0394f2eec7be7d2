"""The float32 C's tanh (model.c.j2's gc_tanhf: a branch-free polynomial that vectorizes, used by tanh,
GELU(approximate='tanh') and their gradients) against NumPy's float64 tanh, ulp by ulp, over both of its
ranges, their seam at |x| = 0.625, the saturation past 9, tiny values and the special values."""
import numpy as np

import graphc


def _c_tanh_float32(xs):
    g = graphc.Graph("tanh_f32")
    x = g.input("x", ("N",))
    g.output("y", graphc.tanh(x))
    return graphc.compile(g, dtype="float32").predict(x=xs)["y"]


def test_float32_tanh_is_within_two_ulp_of_tanh_everywhere():
    xs = np.concatenate([np.linspace(-12, 12, 400001), np.geomspace(1e-38, 20, 40000),
                         -np.geomspace(1e-38, 20, 40000), np.linspace(0.62, 0.63, 2001)]).astype(np.float32)
    y = _c_tanh_float32(xs)
    ref = np.tanh(xs.astype(np.float64))
    ulps = np.abs(y.astype(np.float64) - ref) / np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 2.0, f"{ulps.max():.2f} ulp at x = {xs[ulps.argmax()]!r}"
    assert np.array_equal(np.sign(y), np.sign(xs))


def test_float32_tanh_keeps_the_special_values():
    y = _c_tanh_float32(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 9.5, -30.0], dtype=np.float32))
    assert y[0] == 0 and not np.signbit(y[0]) and y[1] == 0 and np.signbit(y[1])
    assert y[2] == 1 and y[3] == -1 and np.isnan(y[4]) and y[5] == 1 and y[6] == -1
