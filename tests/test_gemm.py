"""Tests of the GEMM of the kernel library (templates/graphc_kernels.c and .h).

The library is wrapped in a small C file that includes graphc_kernels.c and exports plain
functions, built with cffi (float and double; AVX-512 via -march=native, AVX2 via
-march=haswell, plain C, and the portable flags' run-time choice of instruction set, uncapped
and capped at AVX2) and checked against NumPy.  Strict-compile and sanitizer checks use gcc
(and clang and tcc, where installed) directly.

Paths: tiny products take plain loops; products up to GC_GEMM_DIRECT_WORK
multiply-adds run the micro-kernel on the operands in place (the "direct"
path); larger ones pack.  SHAPES covers all three in every form, and the
"packed" build (GC_GEMM_DIRECT_WORK=0) checks that the direct path gives the
packed path's bits.
"""

from __future__ import annotations

import importlib.util
import itertools
import pathlib
import shutil
import subprocess

import numpy as np
import pytest

cffi = pytest.importorskip("cffi")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

TEMPLATES_DIR = pathlib.Path(__file__).resolve().parent.parent / "templates"
LIBRARY = TEMPLATES_DIR / "graphc_kernels.c"
GCC = shutil.which("gcc")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
THREADS = 2     # the packing buffers of the tests hold this many threads' blocks

needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc not found")


def model_prelude(real: str, max_threads: int = THREADS) -> str:
    """The library (one element type), then what a model file defines to call it by its names."""
    t = "d" if real == "double" else "f"
    other = "GC_KERNELS_FLOAT" if real == "double" else "GC_KERNELS_DOUBLE"
    return (
        f"#define {other} 0\n"
        '#include "graphc_kernels.c"\n'
        f"typedef {real} gc_real;\n"
        f"typedef gc_gemm_epilogue_{t} gc_gemm_epilogue;\n"
        f"#define GC_MAX_THREADS {max_threads}\n"
        f"#define gc_gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack) \\\n"
        f"    gc_gemm_{t}(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, GC_MAX_THREADS)\n"
        f"#define gc_gemm_bias_act(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, bias, act) \\\n"
        f"    gc_gemm_bias_act_{t}(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, GC_MAX_THREADS, bias, act)\n"
        f"#define gc_gemm_ex(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, ep) \\\n"
        f"    gc_gemm_ex_{t}(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, GC_MAX_THREADS, ep)\n"
        f"#define gc_gemm_pack_elems(ta, tb, M, N, K) gc_gemm_pack_elems_{t}(ta, tb, M, N, K, GC_MAX_THREADS)\n"
    )


# Exported wrappers: the pack buffer comes from Python.
WRAPPERS = """
void gemm_api(int ta, int tb, long M, long N, long K,
              const gc_real *A, long lda, const gc_real *B, long ldb,
              int beta, gc_real *C, long ldc, gc_real *pack)
{
    gc_gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack);
}

void gemm_bias_act_api(int ta, int tb, long M, long N, long K,
                       const gc_real *A, long lda, const gc_real *B, long ldb,
                       int beta, gc_real *C, long ldc, gc_real *pack,
                       const gc_real *bias, int act)
{
    gc_gemm_bias_act(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, bias, act);
}

void gemm_ex_api(int ta, int tb, long M, long N, long K,
                 const gc_real *A, long lda, const gc_real *B, long ldb,
                 int beta, gc_real *C, long ldc, gc_real *pack,
                 const gc_real *bias, int relu, const gc_real *mask, long ldm, gc_real *colsum,
                 gc_real *update, long ldu, gc_real rate)
{
    const gc_gemm_epilogue ep = {bias, relu, mask, ldm, colsum, update, ldu, rate};
    gc_gemm_ex(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, &ep);
}

long pack_elems_api(int ta, int tb, long M, long N, long K) { return gc_gemm_pack_elems(ta, tb, M, N, K); }

int isa_api(void) { return gc_kernels_isa(); }

void set_threads_api(int threads)
{
    gc_kernels_busy_hold(0.0);   /* the threads asked for, even on a busy machine */
#ifdef _OPENMP
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
}
"""

CDEF = """
void gemm_api(int ta, int tb, long M, long N, long K,
              const {t} *A, long lda, const {t} *B, long ldb,
              int beta, {t} *C, long ldc, {t} *pack);
void gemm_bias_act_api(int ta, int tb, long M, long N, long K,
                       const {t} *A, long lda, const {t} *B, long ldb,
                       int beta, {t} *C, long ldc, {t} *pack,
                       const {t} *bias, int act);
void gemm_ex_api(int ta, int tb, long M, long N, long K,
                 const {t} *A, long lda, const {t} *B, long ldb,
                 int beta, {t} *C, long ldc, {t} *pack,
                 const {t} *bias, int relu, const {t} *mask, long ldm, {t} *colsum,
                 {t} *update, long ldu, {t} rate);
long pack_elems_api(int ta, int tb, long M, long N, long K);
int isa_api(void);
void set_threads_api(int threads);
int gc_kernels_threads(int threads);
double gc_kernels_busy_hold(double seconds);
"""

# name -> compiler flags; "native" is the build the model uses, "dispatch" the
# exported (portable) one; GC_GEMM_DISPATCH=0 makes the flags alone decide.
VARIANTS = {
    "native": ["-O3", "-march=native", "-fopenmp"],
    "avx2": ["-O3", "-march=haswell", "-fopenmp", "-DGC_GEMM_DISPATCH=0"],
    "portable": ["-O3", "-DGC_GEMM_DISPATCH=0"],
    "dispatch": ["-O3", "-fopenmp"],
    "dispatch_avx2": ["-O3", "-fopenmp", "-DGC_GEMM_ISA_CAP=1"],
}
# Built on demand only: the packed path for every size, to compare bits with.
EXTRA_VARIANTS = {"packed": ["-O3", "-march=native", "-fopenmp", "-DGC_GEMM_DIRECT_WORK=0",
                             "-DGC_GEMM_A_ROWS_IN_PLACE=0"],
                  # AVX2 with the plain k loop and with every product packed: the bits to compare with
                  "avx2_rolled": ["-O3", "-march=haswell", "-fopenmp", "-DGC_GEMM_DISPATCH=0",
                                  "-DGC_GEMM_AVX2_UNROLL=0"],
                  "avx2_packed": ["-O3", "-march=haswell", "-fopenmp", "-DGC_GEMM_DISPATCH=0",
                                  "-DGC_GEMM_DIRECT_WORK=0", "-DGC_GEMM_A_ROWS_IN_PLACE=0"],
                  # every split product finds the machine busy (any wait counts as late)
                  "busy": ["-O3", "-march=native", "-fopenmp", "-DGC_BUSY_LATE=-1", "-DGC_BUSY_SHARE=0",
                           "-DGC_BUSY_STRIKES=1"]}
HAS_AVX512 = "avx512f" in pathlib.Path("/proc/cpuinfo").read_text(errors="ignore") \
    if pathlib.Path("/proc/cpuinfo").exists() else False
HAS_AVX2 = "avx2" in pathlib.Path("/proc/cpuinfo").read_text(errors="ignore") \
    if pathlib.Path("/proc/cpuinfo").exists() else False
DTYPES = {"float32": "float", "float64": "double"}


class Gemm:
    """A built library; each call gets a 64-byte aligned pack of exactly the elements
    gc_gemm_pack_elems reports for its arguments, followed by guard values that must survive
    (and a NULL pack when that is 0)."""

    GUARD = 64

    def __init__(self, module, dtype, so_path):
        self.ffi, self.lib = module.ffi, module.lib
        self.so_path = so_path
        self.dtype = np.dtype(dtype)
        self.ctype = DTYPES[self.dtype.name] + " *"
        self.pack_elems = 0
        self.pack_with_guard = None

    def guarded_pack(self, ta, tb, M, N, K):
        """The pack pointer of one call (NULL when it needs none), guards set after its end."""
        self.pack_elems = self.lib.pack_elems_api(ta, tb, M, N, K)
        assert self.pack_elems >= 0
        raw = np.empty(self.pack_elems + self.GUARD + 64, self.dtype)
        offset = (-raw.ctypes.data % 64) // self.dtype.itemsize
        self.pack_with_guard = raw[offset : offset + self.pack_elems + self.GUARD]
        self.pack_with_guard[self.pack_elems :] = 12345.0
        return self.ptr(self.pack_with_guard) if self.pack_elems else self.ffi.NULL

    def ptr(self, array):
        return self.ffi.cast(self.ctype, array.ctypes.data) if array is not None else self.ffi.NULL

    def leading_dimension(self, array):
        assert array.dtype == self.dtype
        if array.size == 0:
            return max(array.shape[1], 1)
        assert array.strides[1] == self.dtype.itemsize
        return array.strides[0] // self.dtype.itemsize

    def __call__(self, ta, tb, M, N, K, A, B, C, beta, bias=None, act=0):
        """C[:M,:N] = beta*C + op(A) op(B); leading dimensions from the arrays' strides."""
        lda, ldb, ldc = (self.leading_dimension(x) for x in (A, B, C))
        pack = self.guarded_pack(ta, tb, M, N, K)
        self.lib.gemm_bias_act_api(
            ta, tb, M, N, K, self.ptr(A), lda, self.ptr(B), ldb, beta,
            self.ptr(C), ldc, pack, self.ptr(bias), act,
        )
        assert (self.pack_with_guard[self.pack_elems :] == 12345.0).all(), "pack overrun"

    def ex(self, ta, tb, M, N, K, A, B, C, beta, bias=None, relu=0, mask=None, colsum=None,
           update=None, rate=0.0):
        """gc_gemm_ex: the general epilogue (bias, relu, * sgn(mask), update -= rate C, column sums)."""
        lda, ldb = (self.leading_dimension(x) for x in (A, B))
        ldc = self.leading_dimension(C) if C is not None else N
        ldm = self.leading_dimension(mask) if mask is not None else 0
        ldu = self.leading_dimension(update) if update is not None else 0
        pack = self.guarded_pack(ta, tb, M, N, K)
        self.lib.gemm_ex_api(
            ta, tb, M, N, K, self.ptr(A), lda, self.ptr(B), ldb, beta, self.ptr(C), ldc,
            pack, self.ptr(bias), relu, self.ptr(mask), ldm, self.ptr(colsum),
            self.ptr(update), ldu, rate,
        )
        assert (self.pack_with_guard[self.pack_elems :] == 12345.0).all(), "pack overrun"


def load_module(name: str, so_path: str):
    spec = importlib.util.spec_from_file_location(name, so_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gemm_build")


_LIBS: dict = {}


@pytest.fixture(scope="module")
def gemm_lib(build_dir):
    """gemm_lib(variant, dtype) -> Gemm, built once per module."""
    pytest.importorskip("setuptools")
    if GCC is None:
        pytest.skip("gcc not found")

    def get(variant: str, dtype: str) -> Gemm:
        key = (variant, dtype)
        if key not in _LIBS:
            real = DTYPES[dtype]
            name = f"_gc_gemm_test_{variant}_{dtype}"
            ffi = cffi.FFI()
            ffi.cdef(CDEF.format(t=real))
            flags = {**VARIANTS, **EXTRA_VARIANTS}[variant]
            ffi.set_source(
                name,
                model_prelude(real) + WRAPPERS,
                include_dirs=[str(TEMPLATES_DIR)],
                extra_compile_args=flags,
                extra_link_args=["-fopenmp"] if "-fopenmp" in flags else [],
            )
            so_path = ffi.compile(tmpdir=str(build_dir))
            _LIBS[key] = Gemm(load_module(name, so_path), dtype, so_path)
        return _LIBS[key]

    yield get
    _LIBS.clear()


def operands(rng, ta, tb, M, N, K, dtype, pad=0):
    """op(A) is M x K, op(B) is K x N; with pad > 0 the arrays are views with
    leading dimensions larger than the minimum."""
    a_shape = (K, M) if ta else (M, K)
    b_shape = (N, K) if tb else (K, N)
    A = rng.standard_normal((a_shape[0], a_shape[1] + pad)).astype(dtype)[:, : a_shape[1]]
    B = rng.standard_normal((b_shape[0], b_shape[1] + pad)).astype(dtype)[:, : b_shape[1]]
    return A, B


def reference(ta, tb, A, B):
    opA = (A.T if ta else A).astype(np.float64)
    opB = (B.T if tb else B).astype(np.float64)
    return opA @ opB


def assert_close(got, want, dtype):
    """Relative to the magnitude of the result (and of the terms summed)."""
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    tol = 1e-12 if np.dtype(dtype) == np.float64 else 1e-5
    err = float(np.abs(got.astype(np.float64) - want).max(initial=0.0))
    assert np.isfinite(got).all()
    assert err <= tol * scale, f"max abs err {err:.3g} > {tol:g} * {scale:.3g}"


def check_gemm(gemm, rng, ta, tb, M, N, K, beta, pad=0):
    dtype = gemm.dtype
    A, B = operands(rng, ta, tb, M, N, K, dtype, pad)
    c_full = rng.standard_normal((M + 1, N + pad + 1)).astype(dtype)
    C = c_full[:M, :N]
    if beta == 0:
        C[...] = np.nan  # must never be read
    before = c_full.copy()
    want = reference(ta, tb, A, B) + (before[:M, :N].astype(np.float64) if beta else 0.0)
    gemm(ta, tb, M, N, K, A, B, C, beta)
    assert_close(C, want, dtype)
    # Nothing outside C[:M, :N] is touched.
    outside = np.ones(c_full.shape, bool)
    outside[:M, :N] = False
    np.testing.assert_array_equal(c_full[outside], before[outside])


FORMS = list(itertools.product((0, 1), (0, 1)))
# (M, N, K): empty, ones, primes, below and above the tiny-problem threshold,
# not multiples of the register tile (12 x 32 / 6 x 16 / 4 x 8), and K beyond
# one KC block (256 float, 128 double).
TINY_SHAPES = [(0, 5, 3), (4, 0, 3), (3, 4, 0), (1, 1, 1), (1, 37, 7), (37, 1, 7), (7, 7, 7),
               (2, 300, 40)]
# Direct path (M*N*K <= 128^3): the digits train step's GEMMs, edge rows and
# columns, N below one register tile, several K blocks.
DIRECT_SHAPES = [(37, 131, 7), (300, 3, 40), (13, 33, 131), (37, 131, 300), (131, 37, 260),
                 (64, 64, 64), (97, 530, 33), (32, 128, 64), (32, 10, 128), (32, 128, 10),
                 (10, 128, 32), (128, 64, 32), (24, 64, 300), (40, 7, 100), (50, 16, 60)]
# Packed path: several NC and KC blocks, edge tiles; N = 12 is one vector or
# less (the narrow micro-kernel) for float on AVX-512 and AVX2 (double: 7).
PACKED_SHAPES = [(131, 140, 300), (45, 1100, 270), (600, 45, 129), (700, 12, 300), (1100, 7, 300)]
SHAPES = TINY_SHAPES + DIRECT_SHAPES + PACKED_SHAPES


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_matches_numpy_all_forms(gemm_lib, variant, dtype, shape):
    gemm = gemm_lib(variant, dtype)
    rng = np.random.default_rng(sum(shape))
    for (ta, tb), beta in itertools.product(FORMS, (0, 1)):
        check_gemm(gemm, rng, ta, tb, *shape, beta)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_padded_leading_dimensions(gemm_lib, variant, dtype):
    gemm = gemm_lib(variant, dtype)
    rng = np.random.default_rng(1)
    for (ta, tb), beta in itertools.product(FORMS, (0, 1)):
        for shape in [(5, 9, 3), (37, 131, 7), (61, 45, 270), (140, 150, 270), (700, 12, 300)]:
            check_gemm(gemm, rng, ta, tb, *shape, beta, pad=3)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_k_zero_writes_zeros_or_keeps_c(gemm_lib, dtype):
    gemm = gemm_lib("native", dtype)
    for M, N in [(1, 1), (7, 37), (64, 200)]:
        A = np.empty((M, 0), dtype)
        B = np.empty((0, N), dtype)
        C = np.full((M, N), np.nan, dtype)
        gemm(0, 0, M, N, 0, A, B, C, 0)
        np.testing.assert_array_equal(C, 0)
        C[...] = 2.5
        gemm(0, 0, M, N, 0, A, B, C, 1)
        np.testing.assert_array_equal(C, 2.5)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_bias_act_applies_bias_then_relu(gemm_lib, variant, dtype):
    gemm = gemm_lib(variant, dtype)
    rng = np.random.default_rng(2)
    for (ta, tb), beta, act, shape in itertools.product(
        FORMS, (0, 1), (0, 1), [(3, 5, 4), (37, 131, 7), (50, 70, 300)]
    ):
        M, N, K = shape
        A, B = operands(rng, ta, tb, M, N, K, dtype)
        bias = rng.standard_normal(N).astype(dtype)
        C = rng.standard_normal((M, N)).astype(dtype)
        want = reference(ta, tb, A, B) + (C.astype(np.float64) if beta else 0.0) + bias
        if act == 1:
            want = np.maximum(want, 0.0)
        if beta == 0:
            C[...] = np.nan
        gemm(ta, tb, M, N, K, A, B, C, beta, bias=bias, act=act)
        assert_close(C, want, dtype)
        if act == 1:
            assert (C >= 0).all()


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_bias_act_full_and_edge_tiles_agree_bitwise(gemm_lib, dtype):
    """An element's value must not depend on whether its tile is a full
    register tile or an edge tile: compare C[:m, :n] of an m x n product with
    the same corner of a larger product (its tiles there are full)."""
    gemm = gemm_lib("native", dtype)
    rng = np.random.default_rng(3)
    M, N, K = 96, 128, 300
    A, B = operands(rng, 0, 0, M, N, K, dtype)
    bias = rng.standard_normal(N).astype(dtype)
    C0 = rng.standard_normal((M, N)).astype(dtype)
    big = C0.copy()
    gemm(0, 0, M, N, K, A, B, big, 1, bias=bias, act=1)
    m, n = 37, 45
    small = np.ascontiguousarray(C0[:m, :n])
    gemm(0, 0, m, n, K, np.ascontiguousarray(A[:m]), np.ascontiguousarray(B[:, :n]), small, 1,
         bias=bias[:n].copy(), act=1)
    np.testing.assert_array_equal(small, big[:m, :n])


@pytest.mark.parametrize("variant", ["native", "avx2"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_edge_row_kernels_agree_bitwise(gemm_lib, variant, dtype):
    """The last M mod MR rows of C go through a kernel of their own for some row
    counts (8 and 4 with MR = 12, 4 and 2 with MR = 6): their bits must be
    those of the same rows inside full tiles, in every form, packed or not."""
    gemm = gemm_lib(variant, dtype)
    rng = np.random.default_rng(5)
    M, K = 96, 300
    for (ta, tb), N, n in itertools.product(FORMS, (128, 2048), (64, 100)):
        A, B = operands(rng, ta, tb, M, N, K, dtype)
        bias = rng.standard_normal(N).astype(dtype)
        C0 = rng.standard_normal((M, N)).astype(dtype)
        big = C0.copy()
        gemm(ta, tb, M, N, K, A, B, big, 1, bias=bias, act=1)
        for m in (8, 14, 16, 20, 28, 44):   # > GC_GEMM_SMALL_ROWS: not the plain loops
            a = np.ascontiguousarray(A[:, :m] if ta else A[:m])
            b = np.ascontiguousarray(B[:n] if tb else B[:, :n])
            small = np.ascontiguousarray(C0[:m, :n])
            gemm(ta, tb, m, n, K, a, b, small, 1, bias=bias[:n].copy(), act=1)
            np.testing.assert_array_equal(small, big[:m, :n], err_msg=f"ta={ta} tb={tb} m={m} n={n} N={N}")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    dtype=st.sampled_from(list(DTYPES)),
    ta=st.integers(0, 1),
    tb=st.integers(0, 1),
    M=st.integers(0, 80),
    N=st.integers(0, 80),
    K=st.integers(0, 300),
    beta=st.integers(0, 1),
    pad=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_gemm_random_shapes(gemm_lib, dtype, ta, tb, M, N, K, beta, pad, seed):
    check_gemm(gemm_lib("native", dtype), np.random.default_rng(seed), ta, tb, M, N, K, beta, pad)


@pytest.mark.parametrize("variant", ["native", "dispatch", "dispatch_avx2"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_bit_identical_for_one_and_two_threads(gemm_lib, variant, dtype):
    gemm = gemm_lib(variant, dtype)
    rng = np.random.default_rng(4)
    # Wide (split over N) and tall (split over M), both with edge tiles and
    # several K blocks; packed, and direct but large enough to be threaded.
    try:
        for M, N, K in [(70, 333, 301), (333, 70, 301), (128, 512, 200), (32, 128, 64),
                        (128, 64, 32), (100, 37, 90), (130, 110, 90), (1100, 7, 300)]:
            for ta, tb in FORMS:
                A, B = operands(rng, ta, tb, M, N, K, dtype)
                bias = rng.standard_normal(N).astype(dtype)
                C0 = rng.standard_normal((M, N)).astype(dtype)
                results = []
                for threads in (1, 2):
                    gemm.lib.set_threads_api(threads)
                    C = C0.copy()
                    gemm(ta, tb, M, N, K, A, B, C, 1, bias=bias, act=1)
                    results.append(C)
                np.testing.assert_array_equal(results[0], results[1])
    finally:
        gemm.lib.set_threads_api(2)


def test_gemm_runs_on_one_thread_for_a_while_after_a_product_finds_the_machine_busy(gemm_lib):
    """A product split over two threads notes how late they started and waited; a wait past
    GC_BUSY_LATE (here any wait: the "busy" build) makes gc_kernels_threads answer 1 for the hold's
    time, so the next products and loops run on one thread, with the same bits. A hold of 0 ends it
    and turns it off."""
    gemm = gemm_lib("busy", "float32")
    if gemm.lib.gc_kernels_threads(2) == 1 and gemm.lib.gc_kernels_busy_hold(-1) == 0:
        pytest.skip("the library was built without OpenMP")
    rng = np.random.default_rng(11)
    M, N, K = 128, 512, 200                       # split: more than GC_GEMM_PARALLEL_WORK
    A, B = operands(rng, 0, 1, M, N, K, "float32")
    try:
        gemm.lib.set_threads_api(2)               # (hold 0: two threads, never one)
        C2 = np.zeros((M, N), np.float32)
        gemm(0, 1, M, N, K, A, B, C2, 0)
        assert gemm.lib.gc_kernels_threads(2) == 2
        assert gemm.lib.gc_kernels_busy_hold(60.0) == 0.0
        assert gemm.lib.gc_kernels_threads(2) == 2    # nothing found busy yet
        assert gemm.lib.gc_kernels_threads(1) == 1
        C1 = np.zeros((M, N), np.float32)
        gemm(0, 1, M, N, K, A, B, C1, 0)          # two threads: one of them "late"
        assert gemm.lib.gc_kernels_threads(2) == 1    # held on one thread
        C0 = np.zeros((M, N), np.float32)
        gemm(0, 1, M, N, K, A, B, C0, 0)          # on one thread
        np.testing.assert_array_equal(C1, C2)
        np.testing.assert_array_equal(C0, C2)
        assert gemm.lib.gc_kernels_busy_hold(0.0) == 60.0
        assert gemm.lib.gc_kernels_threads(2) == 2    # the hold ended
    finally:
        gemm.lib.set_threads_api(2)


# Tiny, direct and packed paths; tall (M > N: threads would split rows, but column sums make
# them split columns), edge tiles, several K blocks, one vector wide (the narrow kernel).
EPILOGUE_SHAPES = [(3, 5, 4), (1, 37, 7), (37, 131, 7), (32, 128, 10), (300, 3, 40), (128, 512, 10),
                   (131, 140, 300), (600, 45, 129), (1100, 7, 300), (256, 700, 90)]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_ex_mask_and_column_sums(gemm_lib, variant, dtype):
    """The backward epilogue: C = (op(A) op(B)) * sgn(mask) as it is written, and the column
    sums of those values added in row order: the bits of a loop that sums C's rows after the
    product, for 1 and 2 threads alike."""
    gemm = gemm_lib(variant, dtype)
    rng = np.random.default_rng(7)
    try:
        for (ta, tb), (M, N, K) in itertools.product(FORMS, EPILOGUE_SHAPES):
            A, B = operands(rng, ta, tb, M, N, K, dtype)
            mask = rng.standard_normal((M, N + 3)).astype(dtype)[:, :N]   # a padded row stride
            mask[rng.random((M, N)) < 0.3] = 0   # relu outputs: many exact zeros
            mask.flat[::7] = -1.5                # and a sign of -1
            mask.flat[5::11] = np.nan            # sgn(NaN) = 0
            start = rng.standard_normal(N).astype(dtype)
            sign = np.where(mask > 0, 1.0, np.where(mask < 0, -1.0, 0.0))
            want = reference(ta, tb, A, B) * sign
            runs = []
            for threads in (1, 2):
                gemm.lib.set_threads_api(threads)
                C = np.full((M, N), np.nan, dtype)
                colsum = start.copy()
                gemm.ex(ta, tb, M, N, K, A, B, C, 0, mask=mask, colsum=colsum)
                assert_close(C, want, dtype)
                in_order = start.copy()
                for row in C:
                    in_order = in_order + row
                np.testing.assert_array_equal(colsum, in_order)
                runs.append((C, colsum))
            np.testing.assert_array_equal(runs[0][0], runs[1][0])
            np.testing.assert_array_equal(runs[0][1], runs[1][1])
    finally:
        gemm.lib.set_threads_api(2)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_ex_update_is_an_sgd_step_from_the_product(gemm_lib, variant, dtype):
    """update -= rate * (op(A) op(B)) as the product is written (the SGD step W -= lr d_W from the
    GEMM that computes d_W), with K over several KC blocks too; the same bits for 1 and 2 threads,
    and nothing outside the updated matrix is touched."""
    gemm = gemm_lib(variant, dtype)
    rng = np.random.default_rng(9)
    try:
        for (ta, tb), (M, N, K) in itertools.product(FORMS, EPILOGUE_SHAPES + [(70, 90, 600)]):
            A, B = operands(rng, ta, tb, M, N, K, dtype)
            P0 = rng.standard_normal((M + 1, N + 2)).astype(dtype)
            want = P0[:M, :N].astype(np.float64) - 0.1 * reference(ta, tb, A, B)
            runs = []
            for threads in (1, 2):
                gemm.lib.set_threads_api(threads)
                P = P0.copy()
                C = np.full((M, N), np.nan, dtype)     # scratch: whatever it holds afterwards
                gemm.ex(ta, tb, M, N, K, A, B, C, 0, update=P[:M, :N], rate=0.1)
                assert_close(P[:M, :N], want, dtype)
                np.testing.assert_array_equal(P[M:], P0[M:])
                np.testing.assert_array_equal(P[:, N:], P0[:, N:])
                runs.append(P)
            np.testing.assert_array_equal(runs[0], runs[1])
    finally:
        gemm.lib.set_threads_api(2)


@pytest.mark.parametrize("variant", ["native", "dispatch", "portable"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_ex_update_without_c_stores_nothing(gemm_lib, variant, dtype):
    """C = NULL with an update-only epilogue (a train step's W -= lr d_W when d_W is not kept):
    the parameter gets the SGD step on every path (tiny, a batch of one, direct, packed, K over
    several KC blocks), the same bits for 1 and 2 threads, and the pack stays within the size
    gc_gemm_pack_elems reports (the guard values)."""
    gemm = gemm_lib(variant, dtype)
    rng = np.random.default_rng(11)
    shapes = [(3, 5, 4), (500, 784, 1), (1, 300, 70), (70, 1, 300), (128, 64, 4), (130, 70, 33),
              (70, 90, 600), (200, 530, 300)]
    try:
        for (ta, tb), (M, N, K) in itertools.product(FORMS, shapes):
            A, B = operands(rng, ta, tb, M, N, K, dtype)
            P0 = rng.standard_normal((M + 1, N + 2)).astype(dtype)
            want = P0[:M, :N].astype(np.float64) - 0.1 * reference(ta, tb, A, B)
            runs = []
            for threads in (1, 2):
                gemm.lib.set_threads_api(threads)
                P = P0.copy()
                gemm.ex(ta, tb, M, N, K, A, B, None, 0, update=P[:M, :N], rate=0.1)
                assert_close(P[:M, :N], want, dtype)
                np.testing.assert_array_equal(P[M:], P0[M:])
                np.testing.assert_array_equal(P[:, N:], P0[:, N:])
                runs.append(P)
            np.testing.assert_array_equal(runs[0], runs[1])
    finally:
        gemm.lib.set_threads_api(2)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_pack_need_is_zero_for_a_batch_of_one_and_never_shrinks(gemm_lib, dtype):
    """gc_gemm_pack_elems: 0 on the tiny path and whenever a dimension is 1 (a batch of one row
    is a matrix-vector or outer product), and never smaller for a larger M, N or K (so a
    workspace sized for the largest batch serves every smaller one)."""
    gemm = gemm_lib("native", dtype)
    need = gemm.lib.pack_elems_api
    for ta, tb in FORMS:
        for other in [(500, 784), (784, 500), (10, 500), (128, 64), (4096, 4096)]:
            for dims in [(1, *other), (other[0], 1, other[1]), (*other, 1)]:
                assert need(ta, tb, *dims) == 0, (ta, tb, dims)
        assert need(ta, tb, 3, 5, 7) == 0
        assert need(ta, tb, 300, 300, 300) > 0
        for base in [(13, 40, 27), (130, 70, 33), (200, 530, 300), (12, 32, 256)]:
            for axis in range(3):
                values = []
                for grow in range(1, 600, 7):
                    dims = list(base)
                    dims[axis] = grow
                    values.append(need(ta, tb, *dims))
                assert values == sorted(values), (ta, tb, base, axis)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_ex_whole_epilogue_order(gemm_lib, dtype):
    """bias, then relu, then the mask, then the column sum, in every path."""
    gemm = gemm_lib("native", dtype)
    rng = np.random.default_rng(8)
    for (ta, tb), (M, N, K) in itertools.product(FORMS, EPILOGUE_SHAPES[::2]):
        A, B = operands(rng, ta, tb, M, N, K, dtype)
        bias = rng.standard_normal(N).astype(dtype)
        mask = rng.standard_normal((M, N)).astype(dtype)
        want = np.maximum(reference(ta, tb, A, B) + bias, 0.0) * np.sign(mask)
        C = np.full((M, N), np.nan, dtype)
        colsum = np.zeros(N, dtype)
        gemm.ex(ta, tb, M, N, K, A, B, C, 0, bias=bias, relu=1, mask=mask, colsum=colsum)
        assert_close(C, want, dtype)
        assert_close(colsum, want.sum(axis=0), dtype)


@pytest.mark.skipif(not HAS_AVX2, reason="the CPU has no AVX2")
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_avx2_unrolled_loop_gives_the_plain_loops_bits(gemm_lib, dtype):
    """AVX2's micro-kernels take 4 steps of k per iteration when the strides are those of
    op(A) read in place (ta = 0) or packed and op(B) packed, then the plain loop for the
    rest: each accumulator sees the same operations in the same order, so the bits equal
    the plain loop's (-DGC_GEMM_AVX2_UNROLL=0) and those of the build that packs every
    product, for every K mod 4, form, edge tile, beta, bias and relu."""
    unrolled, rolled, packed = (gemm_lib(v, dtype) for v in ("avx2", "avx2_rolled", "avx2_packed"))
    rng = np.random.default_rng(6)
    odd_depths = [(200, 150, k) for k in (257, 258, 259, 260)] + [(131, 37, 6), (37, 131, 5)]
    for (M, N, K), (ta, tb), beta in itertools.product(DIRECT_SHAPES + PACKED_SHAPES + odd_depths, FORMS, (0, 1)):
        if M <= 4:
            continue  # the tiny path
        A, B = operands(rng, ta, tb, M, N, K, dtype, pad=1)
        bias = rng.standard_normal(N).astype(dtype)
        C0 = rng.standard_normal((M, N)).astype(dtype)
        out = []
        for gemm in (unrolled, rolled, packed):
            C = C0.copy()
            gemm(ta, tb, M, N, K, A, B, C, beta, bias=bias, act=1)
            out.append(C)
        np.testing.assert_array_equal(out[0], out[1], err_msg=f"rolled {(M, N, K)} ta={ta} tb={tb}")
        np.testing.assert_array_equal(out[0], out[2], err_msg=f"packed {(M, N, K)} ta={ta} tb={tb}")
        a64, b64 = (A.T if ta else A).astype(np.float64), (B.T if tb else B).astype(np.float64)
        assert_close(out[0], np.maximum(a64 @ b64 + beta * C0 + bias, 0.0), dtype)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_gemm_direct_path_gives_the_packed_paths_bits(gemm_lib, dtype):
    """Reading the operands in place changes where the micro-kernel loads
    from, not what it computes: the same bits as the build that packs every
    product, in every form, with bias and relu, with edge tiles."""
    direct, packed = gemm_lib("native", dtype), gemm_lib("packed", dtype)
    rng = np.random.default_rng(5)
    for (M, N, K), (ta, tb), beta in itertools.product(DIRECT_SHAPES + PACKED_SHAPES, FORMS, (0, 1)):
        if M <= 4:
            continue  # the tiny path
        A, B = operands(rng, ta, tb, M, N, K, dtype, pad=1)
        bias = rng.standard_normal(N).astype(dtype)
        C0 = rng.standard_normal((M, N)).astype(dtype)
        out = []
        for gemm in (direct, packed):
            C = C0.copy()
            gemm(ta, tb, M, N, K, A, B, C, beta, bias=bias, act=1)
            out.append(C)
        np.testing.assert_array_equal(out[0], out[1], err_msg=f"{(M, N, K)} ta={ta} tb={tb}")


def test_gemm_instruction_set_choice(gemm_lib):
    """-march=native and the run-time choice take AVX-512 where the CPU has it;
    the cap and GC_GEMM_DISPATCH=0 are obeyed."""
    best = 2 if HAS_AVX512 else 1 if HAS_AVX2 else 0
    assert gemm_lib("dispatch", "float32").lib.isa_api() == best
    assert gemm_lib("dispatch_avx2", "float32").lib.isa_api() == min(best, 1)
    assert gemm_lib("portable", "float32").lib.isa_api() == 0
    assert gemm_lib("avx2", "float32").lib.isa_api() == 1
    if HAS_AVX512:
        assert gemm_lib("native", "float32").lib.isa_api() == 2


# ---------------------------------------------------------------------------
# Compiler-level checks
# ---------------------------------------------------------------------------

STRICT_CONFIGS = {
    "plain": [],
    "openmp": ["-fopenmp"],
    "native": ["-march=native"],
    "openmp_native": ["-fopenmp", "-march=native"],
    "no_dispatch": ["-DGC_GEMM_DISPATCH=0"],
    "avx2_no_dispatch": ["-march=haswell", "-DGC_GEMM_DISPATCH=0"],
}


@needs_gcc
@pytest.mark.parametrize("config", list(STRICT_CONFIGS))
def test_gemm_library_compiles_strict_c99(tmp_path, config):
    """graphc_kernels.c alone (both element types), and with a model's prelude of each type."""
    cmd = [GCC, *STRICT, "-O2", *STRICT_CONFIGS[config], "-c", str(LIBRARY), "-o", str(tmp_path / "lib.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr, f"{' '.join(cmd)}\n{result.stderr}"
    for real in ("float", "double"):
        source = tmp_path / f"gemm_{real}.c"
        source.write_text(model_prelude(real) + WRAPPERS)
        cmd = [GCC, *STRICT, "-O2", *STRICT_CONFIGS[config], "-I", str(TEMPLATES_DIR), "-c", str(source),
               "-o", str(tmp_path / f"gemm_{real}.o")]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0 and not result.stderr, f"{' '.join(cmd)}\n{result.stderr}"


OTHER_COMPILERS = {"clang": ["-O2"], "clang-native": ["-O2", "-march=native"], "tcc": []}


@pytest.mark.parametrize("compiler", list(OTHER_COMPILERS))
def test_gemm_library_compiles_strict_c99_with_clang_and_tcc(tmp_path, compiler):
    exe = shutil.which(compiler.split("-")[0])
    if exe is None:
        pytest.skip(f"{compiler.split('-')[0]} is not installed (.ci/run installs it)")
    strict = STRICT if compiler != "tcc" else ["-std=c99", "-Wall", "-Werror"]   # tcc: no -Wextra/-pedantic
    cmd = [exe, *strict, *OTHER_COMPILERS[compiler], "-c", str(LIBRARY), "-o", str(tmp_path / "lib.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr, f"{' '.join(cmd)}\n{result.stderr}"


def test_gemm_library_is_plain_c_and_the_same_for_every_model():
    """No template syntax: graphc_kernels.c/.h are the files, and every model and type gets them."""
    import graphc
    from graphc.backend.codegen import generate, kernel_library
    text = LIBRARY.read_text() + (TEMPLATES_DIR / "graphc_kernels.h").read_text()
    assert "{{" not in text and "{%" not in text
    examples = sorted((TEMPLATES_DIR.parent / "examples").glob("*.toml"))[:2]
    seen, defines = set(), {}
    for spec, dtype in itertools.product(examples, ("float32", "float64")):
        g = graphc.load(spec)
        kernels = generate(g, *g.grad_spec, dtype=dtype).kernels
        seen.add((kernels.source, kernels.header))
        defines.setdefault(dtype, set()).add(kernels.defines)
    assert seen == {(kernel_library().source, kernel_library().header)} and LIBRARY.read_text() in seen.pop()
    # each model's build compiles the half of its element type only
    assert defines == {"float32": {("-DGC_KERNELS_DOUBLE=0",)}, "float64": {("-DGC_KERNELS_FLOAT=0",)}}


@pytest.mark.parametrize("variant", ["native", "dispatch"])
def test_gemm_build_uses_zmm_fma(gemm_lib, variant):
    """-march=native, and the portable build's AVX-512 variant, use 512-bit FMAs."""
    if not HAS_AVX512 and variant == "native":
        pytest.skip("no AVX-512 on this machine")
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump not found")
    so_path = gemm_lib(variant, "float32").so_path
    disassembly = subprocess.run([objdump, "-d", so_path], capture_output=True, text=True).stdout
    assert sum("vfmadd" in line and "zmm" in line for line in disassembly.splitlines()) >= 24


# A standalone driver run under AddressSanitizer and UBSan: the pack buffer is
# malloc'ed with exactly gc_gemm_pack_elems() elements, so any overrun is
# reported, and results are checked against a naive triple loop.
SANITIZER_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <math.h>

static double naive(int ta, int tb, long K, const gc_real *A, long lda,
                    const gc_real *B, long ldb, long i, long j)
{
    double sum = 0;
    long k;
    for (k = 0; k < K; ++k)
        sum += (double)(ta ? A[k * lda + i] : A[i * lda + k]) *
               (double)(tb ? B[j * ldb + k] : B[k * ldb + j]);
    return sum;
}

int main(void)
{
    static const long shapes[][3] = {
        {0, 3, 3}, {1, 1, 1}, {3, 5, 0}, {7, 37, 131}, {37, 131, 7},
        {131, 37, 300}, {45, 400, 270}, {400, 45, 129}, {13, 600, 20},
        {20, 1100, 300}, /* fills every thread's whole pack slice */
        {32, 128, 64}, {32, 10, 128}, {10, 128, 32}, {128, 64, 32}, /* direct path */
        {40, 7, 100}, {700, 12, 300}, /* narrow micro-kernel, direct and packed */
        {1, 500, 784}, {500, 784, 1}, {784, 1, 500}, {12, 32, 257}, {13, 33, 513}, {192, 512, 256},
        {193, 513, 300}, {25, 17, 40}, {5, 16, 100}}; /* batch 1; block edges; small edges */
    const long count = (long)(sizeof shapes / sizeof shapes[0]);
    long s, i, j, failures = 0;
    int ta, tb, beta;
    for (s = 0; s < count; ++s) {
        const long M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        for (ta = 0; ta < 2; ++ta) for (tb = 0; tb < 2; ++tb) for (beta = 0; beta < 2; ++beta) {
            /* Exactly the size reported for this call (a multiple of 64 bytes), so that ASan
               reports any access past it; NULL when it is 0. */
            const size_t bytes = (size_t)gc_gemm_pack_elems(ta, tb, M, N, K) * sizeof(gc_real);
            gc_real *pack = bytes ? aligned_alloc(64, bytes) : NULL;
            const long lda = (ta ? M : K) + 1, ldb = (tb ? K : N) + 2, ldc = N + 3;
            gc_real *A = malloc(sizeof(gc_real) * (size_t)((ta ? K : M) * lda + 1));
            gc_real *B = malloc(sizeof(gc_real) * (size_t)((tb ? N : K) * ldb + 1));
            gc_real *C = malloc(sizeof(gc_real) * (size_t)(M * ldc + 1));
            for (i = 0; i < (ta ? K : M) * lda; ++i) A[i] = (gc_real)((i * 7 % 13) - 6) / 8;
            for (i = 0; i < (tb ? N : K) * ldb; ++i) B[i] = (gc_real)((i * 5 % 11) - 5) / 4;
            for (i = 0; i < M * ldc; ++i) C[i] = beta ? (gc_real)(i % 3) : (gc_real)NAN;
            gc_gemm_bias_act(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, 0, 0);
            for (i = 0; i < M; ++i) for (j = 0; j < N; ++j) {
                const double want = naive(ta, tb, K, A, lda, B, ldb, i, j) +
                                    (beta ? (double)((i * ldc + j) % 3) : 0.0);
                if (!(fabs((double)C[i * ldc + j] - want) <= 1e-3 * (1.0 + fabs(want)))) ++failures;
            }
            free(A); free(B); free(C); free(pack);
            if (bytes % 64) return 2;
        }
    }
    if (failures) printf("%ld mismatches\n", failures);
    return failures != 0;
}
"""


@needs_gcc
@pytest.mark.parametrize(
    "flags, max_threads",
    [(["-march=native", "-fopenmp"], 1), (["-march=native", "-fopenmp"], 2),
     (["-DGC_GEMM_DISPATCH=0"], 2), (["-fopenmp"], 2), (["-fopenmp", "-DGC_GEMM_ISA_CAP=1"], 2)],
    ids=["native-omp-max1", "native-omp-max2", "plain-c", "dispatch-omp", "dispatch-avx2-omp"],
)
def test_gemm_clean_under_sanitizers(tmp_path, flags, max_threads):
    source = tmp_path / "driver.c"
    source.write_text(model_prelude("float", max_threads) + SANITIZER_DRIVER)
    exe = tmp_path / "driver"
    # C11 only for the driver's aligned_alloc; the library itself is C99.
    cmd = [GCC, "-std=c11", "-O1", "-g", "-fsanitize=address,undefined", "-I", str(TEMPLATES_DIR),
           "-fno-sanitize-recover=all", *flags, str(source), "-o", str(exe), "-lm"]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0 and "sanitize" in built.stderr:
        pytest.skip("sanitizer runtime unavailable: " + built.stderr[-300:])
    assert built.returncode == 0, built.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120,
                         env={"OMP_NUM_THREADS": "2", "ASAN_OPTIONS": "detect_leaks=1"})
    assert run.returncode == 0, run.stdout + run.stderr
