"""The workspace is sized to the model at compile time (issue 15, item 3).

- graphc/backend/packing.py computes the GEMM packing need as the kernel library's
  gc_gemm_pack_elems_f/_d does (compared over many shapes, both types, 1-3 threads); the library's
  own use stays within that need (tests/test_gemm.py: guard values and AddressSanitizer).
- Over two run-time dims (n and T): the packing share of products whose sizes grow with n, n·T or
  T is the most the library's gc_gemm_pack_elems gives for them at every (n, T) of a grid, not
  their need at an unbounded T; that of a product over both (M = N = n, K = T) is at least it,
  never shrinks as n or T grows, and is exact where one of them makes it pack nothing. The header's
  NAME_WORKSPACE_BYTES(max_n, max_T) equals NAME_workspace_size(n, T) and codegen's figure over
  a grid of (n, T) (char_gpt, gru, a product over both dims), and char_gpt's packing share is the
  most its own products pack there.
- NAME_WORKSPACE_BYTES(max_n) (and NAME_FIT_WORKSPACE_BYTES) in the emitted header is a constant
  expression (a static array's size) equal to NAME_workspace_size(n) (and the fit one) for many
  n, both dtypes, 1 and 2 threads, and to what codegen reports; it never shrinks as n grows.
- The targets: one_layer at batch 1 <= 16 KB, its train step at batch 4 <= 64 KB, a 784-500-10
  MLP's SGD train step at batch 1 <= 16 KB (the gradient of W1 is never stored).
- A train step whose SGD update is fused into a GEMM writing no C matches value_and_grad and a
  NumPy step, over several K blocks (batch 300 > KC) too.
"""
from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.backend.codegen import generate
from graphc.backend.packing import pack_elems, pack_shares, shares_value
from graphc.backend.sizes import Poly
from graphc.native.export import emit
from conftest import SMALL_EXAMPLES

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc not found")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = SMALL_EXAMPLES

MLP784 = """
name = "mlp784"
[dims]
Dx = 784
Dh = 500
Nc = 10
N = "batch"
[inputs]
x = ["N", "Dx"]
y = { shape = ["N"], dtype = "int32" }
[params]
W1 = ["Dh", "Dx"]
b1 = ["Dh"]
W2 = ["Nc", "Dh"]
b2 = ["Nc"]
[graph]
h = "relu(x @ W1.T + b1)"
theta = "h @ W2.T + b2"
J = "cross_entropy(theta, y)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["W1", "b1", "W2", "b2"]
"""
NS = list(range(1, 301)) + [383, 384, 385, 511, 512, 513, 777, 1000, 4096, 65537, 10 ** 6]


# ------------------------------------------------------------------ the library's need, mirrored
@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    """graphc_kernels.c as a plain shared library (ctypes), both element types."""
    if GCC is None:
        pytest.skip("gcc not found")
    where = tmp_path_factory.mktemp("kernels")
    so = where / "libgck.so"
    subprocess.run([GCC, "-O1", "-shared", "-fPIC", "-I", str(ROOT / "templates"),
                    str(ROOT / "templates" / "graphc_kernels.c"), "-o", str(so)], check=True)
    lib = ctypes.CDLL(str(so))
    for t in "fd":
        fn = getattr(lib, f"gc_gemm_pack_elems_{t}")
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_int]
        fn.restype = ctypes.c_long
    return lib


@needs_gcc
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_workspace_python_pack_need_is_the_libraries(kernels, dtype):
    fn = getattr(kernels, "gc_gemm_pack_elems_" + ("f" if dtype == "float32" else "d"))
    sizes = [0, 1, 2, 4, 5, 7, 12, 13, 16, 17, 31, 33, 64, 100, 128, 129, 192, 193, 255, 256, 257, 500,
             512, 513, 784, 1000]
    rng = np.random.default_rng(0)
    shapes = set(itertools.product([1, 5, 13, 128, 193, 784], repeat=3))
    shapes |= {tuple(int(x) for x in rng.choice(sizes, 3)) for _ in range(400)}
    checked = 0
    for (M, N, K), ta, tb, threads in itertools.product(sorted(shapes), (0, 1), (0, 1), (1, 2, 3)):
        want = fn(ta, tb, M, N, K, threads)
        assert pack_elems(ta, tb, M, N, K, threads, dtype) == want, (ta, tb, M, N, K, threads)
        checked += want > 0
    assert checked > 100     # the packed paths were compared, not only the zeros


N_, T_ = Poly.of("N"), Poly.of("T")
# products over [N, T] as a scan, a sequence model or a convolution makes them: sizes c0 + c1 m of
# one monomial m (n, n·T, T), and constant ones
ONE_MONOMIAL = [(0, 1, (N_ * T_, 96, 64)), (1, 0, (96, 64, N_ * T_)), (0, 0, (N_ * T_, 64, 192)),
                (0, 1, (N_ * T_ * 25, 65, 33)), (0, 1, (N_, 96, 32)), (1, 0, (96, 32, N_)),
                (0, 0, (N_, 16, 96)), (0, 1, (T_, 33, 65)), (1, 1, (40, T_ * 3, 200)), (0, 1, (130, 140, 300))]
GRAM = (0, 1, (N_, N_, T_))        # s @ s.T of s [N, T]: its sizes grow with n and with T
GRID = list(range(1, 21)) + [31, 32, 33, 63, 64, 65, 97, 128, 129, 257, 700, 1000]


def library_need(fn, records, n: int, T: int, threads: int) -> int:
    at = lambda p: Poly.of(p).at({"N": n, "T": T})   # noqa: E731
    return max(fn(ta, tb, *(at(d) for d in dims), threads) for ta, tb, dims in records)


@needs_gcc
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_workspace_pack_share_over_two_run_time_dims_is_the_librarys(kernels, dtype):
    fn = getattr(kernels, "gc_gemm_pack_elems_" + ("f" if dtype == "float32" else "d"))
    exact = pack_shares(ONE_MONOMIAL, dtype)
    assert sorted(s.over for s in exact) == [(("N",),), (("N", "T"),), (("T",),)]
    bound = pack_shares(ONE_MONOMIAL + [GRAM], dtype)
    gram = pack_shares([GRAM], dtype)
    below_saturation = 0
    for threads in (1, 2, 3):
        previous = {}
        for n, T in itertools.product(GRID, GRID):
            dims = {"N": n, "T": T}
            want = library_need(fn, ONE_MONOMIAL, n, T, threads)
            assert shares_value(exact, dims, threads) == want, (n, T, threads)
            with_gram = library_need(fn, ONE_MONOMIAL + [GRAM], n, T, threads)
            got = shares_value(bound, dims, threads)
            assert got >= with_gram, (n, T, threads)
            # never shrinks as n or T grows (a workspace for the largest serves the smaller)
            for before in ((GRID[max(0, GRID.index(n) - 1)], T), (n, GRID[max(0, GRID.index(T) - 1)])):
                assert got >= previous.get(before, got), (n, T, threads, before)
            previous[(n, T)] = got
            if library_need(fn, [GRAM], n, T, threads) == 0 and (n <= 4 or T == 1):
                assert shares_value(gram, dims, threads) == 0, (n, T, threads)
            below_saturation += want < library_need(fn, ONE_MONOMIAL, n, 1 << 20, threads)
    assert below_saturation > 100       # at small n·T the share is below its need at an unbounded T


# ------------------------------------------------------------------ the header's macro, in C
DRIVER = r"""
#include <stdio.h>
#include "{name}.h"

/* a constant expression: the size of a static array */
static unsigned char ws_static[{name}_WORKSPACE_BYTES(4)];
{fit_static}

int main(void)
{{
    static const long ns[] = {{ {ns} }};
    unsigned long i;
    ws_static[0] = 1;
    for (i = 0; i < sizeof ns / sizeof ns[0]; ++i) {{
        const long n = ns[i];
        printf("%ld %lu %lu %lu %lu\n", n, (unsigned long){name}_WORKSPACE_BYTES(n),
               (unsigned long){name}_workspace_size(n), (unsigned long){fit_macro},
               (unsigned long){fit_function});
    }}
    return ws_static[0] != 1;
}}
"""


def c_sizes(tmp_path: Path, graph, dtype: str, threads: int, optimizer=graphc.SGD(lr=0.1)):
    """{n: (macro, function, fit macro, fit function)} from a C program built on the emitted files,
    and the CSource."""
    csrc = generate(graph, *graph.grad_spec, dtype=dtype, optimizer=optimizer)
    out = tmp_path / f"{graph.name}_{dtype}_{threads}"
    emit(csrc, out)
    name = graph.name
    has_fit = f"{name}_fit_workspace_size" in csrc.header
    ns = NS if graph.symbolic_dims else [1]
    (out / "driver.c").write_text(DRIVER.format(
        name=name, ns=", ".join(f"{n}L" for n in ns),
        fit_static=(f"unsigned char fit_static[{name}_FIT_WORKSPACE_BYTES(4)];" if has_fit else ""),
        fit_macro=f"{name}_FIT_WORKSPACE_BYTES(n)" if has_fit else "0",
        fit_function=f"{name}_fit_workspace_size(n)" if has_fit else "0"))
    exe = out / "driver"
    built = subprocess.run([GCC, "-std=c99", "-O0", "-Wall", "-Wextra", "-Werror", "-pedantic",
                            f"-DGC_MAX_THREADS={threads}", *csrc.kernels.defines, "-I", str(out),
                            str(out / "driver.c"), str(out / f"{name}.c"), str(out / "graphc_kernels.c"),
                            "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    rows = {}
    for line in run.stdout.splitlines():
        n, *values = map(int, line.split())
        rows[n] = tuple(values)
    return rows, csrc


# (the examples with one run-time dim: the macro of several, NAME_WORKSPACE_BYTES(max_n, max_T), is
# tests/test_dims.py's)
CASES = [(spec, dtype, 1) for spec in EXAMPLES for dtype in ("float32", "float64")
         if len(graphc.load(spec).symbolic_dims) <= 1]
CASES += [(ROOT / "examples" / "one_layer.toml", dtype, 2) for dtype in ("float32", "float64")]
# convolutions whose images the threads share out: each thread's own area, and the first thread's
# partial sum of a weight gradient past one chunk of images (n > 8)
CASES += [(ROOT / "examples" / f"{name}.toml", "float32", 2) for name in ("kws_dscnn", "resnet8")]


@needs_gcc
@pytest.mark.parametrize("spec, dtype, threads", CASES,
                         ids=[f"{s.stem}-{d}-t{t}" for s, d, t in CASES])
def test_workspace_macro_equals_the_function_and_never_shrinks(tmp_path, spec, dtype, threads):
    rows, csrc = c_sizes(tmp_path, graphc.load(spec), dtype, threads)
    previous = (0, 0)
    for n, (macro, function, fit_macro, fit_function) in rows.items():
        assert macro == function > 0, (n, macro, function)
        assert fit_macro == fit_function, (n, fit_macro, fit_function)
        assert function == csrc.workspace_parts(n, threads)[2], n
        assert (function, fit_function) >= previous, n     # a workspace for max_n serves every n <= max_n
        previous = (function, fit_function)


DRIVER_TWO_DIMS = r"""
#include <stdio.h>
#include "{name}.h"

static unsigned char ws_static[{name}_WORKSPACE_BYTES(2, 16)];   /* a constant expression */

int main(void)
{{
    static const long grid[] = {{ {grid} }};
    unsigned long i, j;
    ws_static[0] = 1;
    for (i = 0; i < sizeof grid / sizeof grid[0]; ++i) {{
        for (j = 0; j < sizeof grid / sizeof grid[0]; ++j) {{
            const long n = grid[i], T = grid[j];
            printf("%ld %ld %lu %lu\n", n, T, (unsigned long){name}_WORKSPACE_BYTES(n, T),
                   (unsigned long){name}_workspace_size(n, T));
        }}
    }}
    return ws_static[0] != 1;
}}
"""
GRAM_SPEC = """
name = "gram"
[dims]
N = "batch"
T = "symbolic"
D = 6
[inputs]
x = ["N", "T", "D"]
[params]
w = ["D"]
[graph]
s = "sum(tanh(x * w), axis=2)"
J = "mean(s @ s.T)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["w"]
"""
TWO_DIM_CASES = ["char_gpt", "gru", "gram"]


@needs_gcc
@pytest.mark.parametrize("which", TWO_DIM_CASES)
def test_workspace_macro_of_two_run_time_dims_is_the_function_and_the_products_need(tmp_path, kernels, which):
    """NAME_WORKSPACE_BYTES(n, T) == NAME_workspace_size(n, T) == codegen's figure over a grid of (n, T)
    (T up to char_gpt's bound of 64), never shrinking as n or T grows; its packing share is the
    most the model's own products pack there (gc_gemm_pack_elems), or at least it for gram's
    product over both dims, or attention's share of it per thread (its blocks and their products'
    packing) where that is more; char_gpt's at batch 1 and 16 tokens is a fraction of its need at
    an unbounded T (the 336 KB it was)."""
    from graphc.backend.kernels import PRODUCTS, Attention, all_records
    g = graphc.parse_spec(GRAM_SPEC, "gram.toml") if which == "gram" else graphc.load(ROOT / "examples" / f"{which}.toml")
    csrc = generate(g, *g.grad_spec, dtype="float32", optimizer=graphc.SGD(lr=0.1))
    out = tmp_path / which
    emit(csrc, out)
    grid = [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 64]
    (out / "driver.c").write_text(DRIVER_TWO_DIMS.format(name=g.name, grid=", ".join(f"{x}L" for x in grid)))
    built = subprocess.run([GCC, "-std=c99", "-O0", "-Wall", "-Wextra", "-Werror", "-pedantic",
                            *csrc.kernels.defines, "-I", str(out), str(out / "driver.c"), str(out / f"{g.name}.c"),
                            str(out / "graphc_kernels.c"), "-o", str(out / "driver"), "-lm"],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    run = subprocess.run([str(out / "driver")], capture_output=True, text=True, check=True)
    rows = {}
    for line in run.stdout.splitlines():
        n, T, macro, function = map(int, line.split())
        rows[n, T] = function
        assert macro == function == csrc.workspace_parts((n, T), 1)[2] > 0, (n, T, macro, function)
    records = {(st.ta, st.tb, tuple(Poly.of(d) for d in st.dims)) for f in csrc.functions
               for st in all_records(f.steps) if isinstance(st, PRODUCTS) and st.dims}
    assert records
    attention = max((st.share for f in csrc.functions for st in all_records(f.steps) if isinstance(st, Attention)),
                    default=0)
    assert (attention > 0) == (which == "char_gpt")
    fn = kernels.gc_gemm_pack_elems_f
    for (n, T), size in rows.items():
        for before in ((n, grid[max(0, grid.index(T) - 1)]), (grid[max(0, grid.index(n) - 1)], T)):
            assert size >= rows[before], (n, T, before)
        pack = csrc.workspace_parts((n, T), 1)[1]
        need = max(library_need(fn, list(records), n, T, 1), attention) * 4
        assert pack == need if which != "gram" else pack >= need, (n, T, pack, need)
    if which == "char_gpt":
        unbounded = library_need(fn, list(records), 1, 1 << 20, 1) * 4       # bytes at T unbounded: 328 KB
        assert 4 * csrc.workspace_parts((1, 16), 1)[1] <= unbounded           # at 16 tokens: 80 KB


GENERATE_DRIVER = r"""
#define _POSIX_C_SOURCE 200112L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "{name}.h"

{arrays}
int main(void)
{{
    static const int32_t prompt[3] = {{ 1, 2, 3 }};
    int32_t out[40];
    const size_t bytes = {name}_generate_workspace_size(CONTEXT);
    void *ws = NULL;
    long i;
    int status;
{fills}
    if (bytes == 0 || bytes != {name}_GENERATE_WORKSPACE_BYTES(CONTEXT) || posix_memalign(&ws, 64, bytes) != 0) {{
        return 2;
    }}
    status = {name}_generate(prompt, 3, 40, CONTEXT, 1.0, 7UL, {params}, out, ws);
    free(ws);
    printf("%lu %lu %d", (unsigned long)bytes, (unsigned long){name}_WORKSPACE_BYTES(1, CONTEXT), status);
    for (i = 0; i < 40; ++i) {{
        printf(" %d", (int)out[i]);
    }}
    printf("\n");
    return status;
}}
"""


@pytest.mark.parametrize("which", ["gru", "char_gpt"])
def test_workspace_of_generate_is_its_functions_own_and_enough(tmp_path, which):
    """NAME_generate's workspace holds the function it calls (predict) at batch 1 and the window:
    that function's own arena and the packing share, not the model's whole workspace (a train
    step's buffers: gru's 100 KB at 16 tokens). Exactly that many bytes, malloc'ed, run 40
    sampling steps clean under AddressSanitizer (an overrun past them is an error) and draw what
    Python's m.generate draws."""
    if GCC is None or subprocess.run([GCC, "-fsanitize=address,undefined", "-x", "c", "-", "-o", "/dev/null"],
                                     input="int main(void) { return 0; }\n", text=True).returncode:
        pytest.skip("needs gcc with AddressSanitizer")
    g = graphc.load(ROOT / "examples" / f"{which}.toml")
    csrc = generate(g, *g.grad_spec, dtype="float32", optimizer=graphc.SGD(lr=0.1))
    out = tmp_path / which
    emit(csrc, out)
    names = list(csrc.generation.params)
    sizes = {k: int(np.prod(g.params[k].shape)) for k in names}
    (out / "driver.c").write_text(GENERATE_DRIVER.format(
        name=g.name, params=", ".join(f"p{i}" for i in range(len(names))),
        arrays="".join(f"static float p{i}[{sizes[k]}];\n" for i, k in enumerate(names)),
        fills="".join(f"    for (i = 0; i < {sizes[k]}; ++i) {{ p{i}[i] = (float)(0.5 * sin(0.7 * i + {i})); }}\n"
                      for i, k in enumerate(names))))
    flags = ["-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=all", "-DCONTEXT=16L"]
    built = subprocess.run([GCC, *flags, *csrc.kernels.defines, "-I", str(out), str(out / "driver.c"),
                            str(out / f"{g.name}.c"), str(out / "graphc_kernels.c"), "-o", str(out / "driver"), "-lm"],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    run = subprocess.run([str(out / "driver")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "Sanitizer" not in run.stderr, run.stderr[-3000:]
    bytes_, whole, status, *tokens = map(int, run.stdout.split())
    if which == "gru":
        assert bytes_ < 16 * 1024 and whole > 96 * 1024     # predict's 464 floats a row, not the train step's
    else:
        assert bytes_ < whole
    m = graphc.compile(g, dtype="float32", threads=1)
    params = {k: (0.5 * np.sin(0.7 * np.arange(sizes[k]) + i)).astype(np.float32).reshape(g.params[k].shape)
              for i, k in enumerate(names)}
    want = m.generate(params, np.array([1, 2, 3], np.int32), 40, context=16, temperature=1.0, seed=7)
    np.testing.assert_array_equal(tokens, want)


@needs_gcc
def test_workspace_targets_of_issue_15(tmp_path):
    one = graphc.load(ROOT / "examples" / "one_layer.toml")
    rows, _ = c_sizes(tmp_path, one, "float32", 1)
    assert rows[1][1] <= 16 * 1024           # predict (and every function) at batch 1
    assert rows[4][1] <= 64 * 1024           # train_step (SGD) at batch 4
    mlp = graphc.parse_spec(MLP784, "mlp784.toml")
    rows, csrc = c_sizes(tmp_path, mlp, "float32", 1)
    assert rows[1][1] <= 16 * 1024           # the SGD train step at batch 1: no d_W1 (1.5 MB) stored
    assert csrc.workspace_parts(1)[1] == 0    # and a batch of one packs nothing
    # with Adam the gradients are kept (Adam reads them): sized honestly, not squeezed
    adam = generate(mlp, *mlp.grad_spec, optimizer=graphc.Adam(lr=1e-3))
    assert adam.workspace_parts(1)[0] >= 784 * 500 * 4


# ------------------------------------------------------------------ SGD into a GEMM with no C
@pytest.mark.parametrize("batch", [1, 3, 300])
def test_workspace_sgd_step_without_a_stored_gradient_is_an_sgd_step(batch):
    """W -= lr d_W from the GEMM that computes d_W, with d_W stored nowhere (C = NULL): the same
    parameters as value_and_grad followed by the step in NumPy (batch 300 crosses KC = 128 for
    double, so each K block updates with its own partial product)."""
    g = graphc.load(ROOT / "examples" / "one_layer.toml")
    lr = 0.05
    model = graphc.compile(g, dtype="float64", optimizer=graphc.SGD(lr=lr), threads=1)
    train = model.functions["train_step"]
    assert any(getattr(st, "out", None) == "NULL" for st in train.steps)
    assert "d_W" not in train.sched.buffers and "d_U" not in train.sched.buffers
    rng = np.random.default_rng(batch)
    params = graphc.init_params(model, seed=1, dtype="float64")
    x = rng.standard_normal((batch, 64))
    y = rng.integers(0, 10, batch).astype(np.int32)
    _, grads = model.value_and_grad(x=x, y=y, **params)
    state = model.train_state(params)
    model.train_step(state, x=x, y=y)
    for k in params:
        np.testing.assert_allclose(state.params[k], params[k] - lr * grads[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("spec", SMALL_EXAMPLES + sorted((ROOT / "tests" / "specs").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_workspace_every_product_of_every_function_is_counted(spec):
    """The packing share is the most over the model's products: each product the schedule makes
    (a dense layer's, a convolution's per group, a train step's) carries its sizes, so none is
    left out of it (a convolution's once was: its GEMMs packed past the workspace)."""
    from graphc.backend.kernels import PRODUCTS, all_records
    g = graphc.load(spec)
    csrc = generate(g, *g.grad_spec, optimizer=graphc.Adam(lr=1e-3))
    # a scan's too; a convolution per image (planes_residual's): Pointwise records
    gemms = [st for f in csrc.functions for st in all_records(f.steps) if isinstance(st, PRODUCTS)]
    products = any(n.op.name in ("matmul", "conv2d", "conv1d") for n in g.nodes)    # small_attention has none
    assert (gemms or not products) and all(st.dims for st in gemms), [st.comment for st in gemms if not st.dims][:3]
