"""graphc_kernels.h's gc_expf and gc_exp (GC_EXP_ROW: the exp of softmax's rows and of attention's
scores, branch-free so that the loops around it vectorize) against NumPy's exp in a wider type, ulp by
ulp, over the whole range a row's x - max takes, its ends, and the special values; and a softmax
model's C, which now calls it, against the reference."""
import numpy as np
import pytest

import graphc
from graphc.backend.templates import templates_dir

SOURCE = """
#include "graphc_kernels.h"
void run_expf(const float *x, float *y, long n) { for (long i = 0; i < n; ++i) y[i] = gc_expf(x[i]); }
void run_exp(const double *x, double *y, long n) { for (long i = 0; i < n; ++i) y[i] = gc_exp(x[i]); }
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cffi = pytest.importorskip("cffi")
    ffi = cffi.FFI()
    ffi.cdef("void run_expf(const float *x, float *y, long n); void run_exp(const double *x, double *y, long n);")
    ffi.set_source("_gc_exp_row_test", SOURCE, include_dirs=[str(templates_dir())], extra_compile_args=["-O2"])
    out = tmp_path_factory.mktemp("exp_row")
    path = ffi.compile(tmpdir=str(out))
    import importlib.util
    spec = importlib.util.spec_from_file_location("_gc_exp_row_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(lib, xs):
    fn, ctype = (lib.lib.run_expf, "float *") if xs.dtype == np.float32 else (lib.lib.run_exp, "double *")
    ys = np.empty_like(xs)
    fn(lib.ffi.cast(ctype, xs.ctypes.data), lib.ffi.cast(ctype, ys.ctypes.data), xs.size)
    return ys


@pytest.mark.parametrize("dtype, low, high", [(np.float32, -87.0, 88.0), (np.float64, -708.0, 709.0)])
def test_exp_row_is_within_two_ulp_of_exp(lib, dtype, low, high):
    xs = np.concatenate([np.linspace(low, high, 400001), -np.geomspace(1e-30, -low, 40000),
                         np.geomspace(1e-30, 80, 40000), np.linspace(-1, 1, 20001)]).astype(dtype)
    y = _run(lib, xs)
    if dtype == np.float32:
        ref = np.exp(xs.astype(np.float64))
        ulps = np.abs(y.astype(np.float64) - ref) / np.spacing(ref.astype(np.float32)).astype(np.float64)
    else:
        ref = np.exp(xs.astype(np.longdouble))
        ulps = np.abs(y.astype(np.longdouble) - ref) / np.spacing(ref.astype(np.float64)).astype(np.longdouble)
    assert float(ulps.max()) <= 2.0, f"{float(ulps.max()):.2f} ulp at x = {xs[ulps.argmax()]!r}"


@pytest.mark.parametrize("dtype, low", [(np.float32, -87.0), (np.float64, -708.0)])
def test_exp_row_special_values(lib, dtype, low):
    y = _run(lib, np.array([0.0, -0.0, -np.inf, np.nan, low * 1.01, low, 1.0], dtype=dtype))
    assert y[0] == 1 and y[1] == 1 and y[2] == 0 and np.isnan(y[3]) and y[4] == 0 and y[5] > 0
    assert y[6] == np.exp(dtype(1.0)) or abs(float(y[6]) / np.e - 1) < 3 * np.finfo(dtype).eps


@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-6), ("float64", 1e-14)])
def test_softmax_and_cross_entropy_rows_match_the_reference(dtype, rtol):
    """Rows with a masked (-inf) logit, wide spreads and ties: probabilities, loss and identity (7)'s
    gradient of the C (whose exp is GC_EXP_ROW) against the reference."""
    g = graphc.Graph("rows")
    x = g.input("x", ("N", 37))
    y = g.input("y", ("N",), "int32")
    g.output("p", graphc.softmax(x))
    g.output("loss", graphc.cross_entropy(x, y))
    m = graphc.compile(g, dtype=dtype)
    from graphc.backend.codegen import generate
    assert "= GC_EXP_ROW(row[j] - max);" in generate(g, dtype=dtype).source
    rng = np.random.default_rng(4)
    xs = rng.normal(size=(9, 37)) * np.array([[0.1], [1], [10], [30], [100], [1], [1], [1], [1]])
    xs[5, 3] = -np.inf
    xs[6] = 2.0
    ys = rng.integers(0, 37, 9).astype(np.int32)
    real = np.float32 if dtype == "float32" else np.float64
    got = m.forward(x=xs.astype(real), y=ys)
    ref = graphc.evaluate(g, x=xs.astype(real).astype(np.float64), y=ys)
    assert got["p"][5, 3] == 0
    np.testing.assert_allclose(got["p"], ref["p"], rtol=rtol * 10, atol=rtol)
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=rtol * 10)
