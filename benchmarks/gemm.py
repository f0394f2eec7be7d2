"""GFLOP/s of the gc_gemm kernel (the kernel library, templates/graphc_kernels.c) vs NumPy.

Builds the library (or, for a --baseline revision from before it, renders the
template kernels/matmul.c.j2) for float32 with cffi (-O3 -march=native
-fopenmp, or without -march=native with --portable), and times gc_gemm on 1
and 2 threads against NumPy float32 matmul (OpenBLAS) on 1 and 2 threads, for
square sizes and the shapes of the benchmark models.  With --baseline REV the
templates of git revision REV are built too and timed in the same run, so a
change can be judged against what it replaces.  Runs alternate between the
contenders; a sample is a loop of calls of about 20 ms; the table reports the
median of the samples.

    python benchmarks/gemm.py [--reps 5] [--shapes digits,mnist] [--baseline HEAD]
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (set in this machine's shell) make NumPy's OpenBLAS pick a
# slower kernel and blocking (about half its 1-thread sgemm here).  OpenBLAS reads them when it
# loads, so remove them and re-execute this script before NumPy is imported, as run.py does for
# its workers; the NumPy column then shows what a plain environment gets.
_SLOW_BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
# With --isa avx2 the script measures graphc's AVX2 kernels against OpenBLAS's own (Haswell), as
# run.py --isa avx2 does: OPENBLAS_CORETYPE=Haswell is then set for this process only.
_AVX2_BLAS_ENV = {"OPENBLAS_CORETYPE": "Haswell"}
_WANT_AVX2 = any(a == "--isa=avx2" or (a == "avx2" and prev == "--isa")
                 for prev, a in zip([""] + sys.argv[1:], sys.argv[1:]))
if __name__ == "__main__":
    _want_env = {k: v for k, v in os.environ.items() if k not in _SLOW_BLAS_ENV}
    if _WANT_AVX2:
        _want_env.update(_AVX2_BLAS_ENV)
    if any(os.environ.get(k) != _want_env.get(k) for k in set(_SLOW_BLAS_ENV) | set(_AVX2_BLAS_ENV)):
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], _want_env)

import cffi  # noqa: E402
import jinja2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
NATIVE = ["-O3", "-std=c99", "-ffp-contract=fast", "-fno-math-errno", "-march=native", "-fopenmp"]

# (label, ta, tb, M, N, K): C[M,N] = op(A)[M,K] op(B)[K,N]


def one_layer_train_step(n, dx, dh, nc):
    """The five GEMMs of the 1-layer train step at batch n, in its order."""
    return [(f"NT z = x W^T {n}x{dh}x{dx}", 0, 1, n, dh, dx),
            (f"NT th = h U^T {n}x{nc}x{dh}", 0, 1, n, nc, dh),
            (f"NN dh = d1 U {n}x{dh}x{nc}", 0, 0, n, dh, nc),
            (f"TN dU = d1^T h {nc}x{dh}x{n}", 1, 0, nc, dh, n),
            (f"TN dW = d2^T x {dh}x{dx}x{n}", 1, 0, dh, dx, n)]


SHAPES = {
    "square": [(f"{n}^3", 0, 0, n, n, n) for n in (256, 512, 1024)],
    # one product in every form: what the form alone costs (packing by transpose or copy)
    "forms": [(f"{f} 128x512x784", ta, tb, 128, 512, 784) for f, ta, tb in
              (("NN", 0, 0), ("NT", 0, 1), ("TN", 1, 0), ("TT", 1, 1))],
    "digits": one_layer_train_step(32, 64, 128, 10),
    "mnist": one_layer_train_step(128, 784, 512, 10),
    "wide": one_layer_train_step(256, 1024, 4096, 1000),
}

WRAPPER = """
typedef float gc_real;
#define GC_REAL_IS_DOUBLE 0
#define GC_MAX_THREADS 2
{kernels}
void gemm_api(int ta, int tb, long M, long N, long K, const float *A, long lda,
              const float *B, long ldb, int beta, float *C, long ldc, float *pack, long calls)
{{
    long c;
    for (c = 0; c < calls; ++c)
        gc_gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack);
}}
long pack_elems_api(void) {{ return gc_gemm_pack_elems(); }}
void set_threads_api(int threads)
{{
#ifdef _OPENMP
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
}}
"""
CDEF = """
void gemm_api(int ta, int tb, long M, long N, long K, const float *A, long lda,
              const float *B, long ldb, int beta, float *C, long ldc, float *pack, long calls);
long pack_elems_api(void);
void set_threads_api(int threads);
"""


def templates_of(rev: str | None, tmpdir: str) -> pathlib.Path:
    """The templates folder of the working tree, or of git revision `rev` (extracted to tmpdir)."""
    if rev is None:
        return ROOT / "templates"
    out = pathlib.Path(tmpdir) / f"templates-{rev.replace('/', '_')}"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "templates"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "templates"


LIBRARY_PRELUDE = """
#define GC_KERNELS_DOUBLE 0
#include "graphc_kernels.c"
typedef float gc_real;
#define gc_gemm(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack) \\
    gc_gemm_f(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, 2)
/* the most any product packs into on 2 threads (a product's need is bounded by its blocks) */
static long gc_gemm_pack_elems(void)
{
    long most = 0, need;
    int ta, tb;
    for (ta = 0; ta < 2; ++ta)
        for (tb = 0; tb < 2; ++tb)
            if ((need = gc_gemm_pack_elems_f(ta, tb, 8192, 8192, 8192, 2)) > most) most = need;
    return most;
}
"""


def build(templates: pathlib.Path, tag: str, flags: list[str], tmpdir: str):
    if (templates / "graphc_kernels.c").is_file():     # the kernel library: plain C
        name = f"_gc_gemm_bench_{tag}"
        ffi = cffi.FFI()
        ffi.cdef(CDEF)
        source = LIBRARY_PRELUDE + WRAPPER.format(kernels="").split("#define GC_MAX_THREADS 2", 1)[1]
        ffi.set_source(name, source, include_dirs=[str(templates)], extra_compile_args=flags,
                       extra_link_args=["-fopenmp"])
        so_path = ffi.compile(tmpdir=os.path.join(tmpdir, tag))
        spec = importlib.util.spec_from_file_location(name, so_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module, so_path
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True, autoescape=False,
    )
    kernels = env.get_template("kernels/matmul.c.j2").render()
    name = f"_gc_gemm_bench_{tag}"
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(name, WRAPPER.format(kernels=kernels),
                   extra_compile_args=flags, extra_link_args=["-fopenmp"])
    so_path = ffi.compile(tmpdir=os.path.join(tmpdir, tag))
    spec = importlib.util.spec_from_file_location(name, so_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, so_path


def openblas_thread_setter():
    """NumPy's bundled OpenBLAS thread setter, or None."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "*openblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                     "openblas_set_num_threads"):
            if hasattr(lib, name):
                setter = getattr(lib, name)
                setter.argtypes = [ctypes.c_int]
                return setter
    return None


class Contender:
    def __init__(self, label, module, so_path):
        self.label, self.ffi, self.lib = label, module.ffi, module.lib
        self.zmm = sum("vfmadd" in line and "zmm" in line for line in os.popen(f"objdump -d {so_path} 2>/dev/null"))
        elems = self.lib.pack_elems_api()
        raw = np.empty(elems + 16, np.float32)
        self._keep = raw
        self.pack = self.ffi.cast("float *", raw[(-raw.ctypes.data % 64) // 4:].ctypes.data)


CLOCK = time.perf_counter


def sample(run, calls: int) -> float:
    """Seconds per call of one loop of `calls` calls."""
    start = CLOCK()
    run(calls)
    return (CLOCK() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--shapes", default="square,digits,mnist,wide",
                        help=f"comma-separated groups of {sorted(SHAPES)}")
    parser.add_argument("--baseline", metavar="REV", help="also time the templates of this git revision")
    parser.add_argument("--portable", action="store_true", help="build without -march=native")
    parser.add_argument("--isa", choices=("auto", "avx2"), default="auto",
                        help="avx2: build graphc's AVX2 kernels only (-mno-avx512f -DGC_GEMM_ISA_CAP=1, every "
                             "tree) and time OpenBLAS on its Haswell kernels (OPENBLAS_CORETYPE=Haswell)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--no-numpy", action="store_true")
    parser.add_argument("--cflags", default="", help="extra flags for the working tree's build (e.g. -DNAME=VALUE)")
    parser.add_argument("--variants", default="", metavar="FLAGS;FLAGS",
                        help="also build the working tree with each ;-separated set of extra flags")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by the process's CPU time, not wall time: robust to other processes on a "
                             "shared machine, meaningful for 1 thread only (2 threads sum both threads' time)")
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    flags = [f for f in NATIVE if not (args.portable and f == "-march=native")]
    if args.isa == "avx2":
        flags += ["-mno-avx512f", "-DGC_GEMM_ISA_CAP=1"]
    thread_counts = [int(t) for t in args.threads.split(",")]

    with tempfile.TemporaryDirectory() as tmpdir:
        tree = templates_of(None, tmpdir)
        contenders = [Contender("gc", *build(tree, "tree", flags + args.cflags.split(), tmpdir))]
        for i, extra in enumerate(v for v in args.variants.split(";") if v.strip()):
            contenders.append(Contender(f"gc[{extra.strip()}]", *build(tree, f"v{i}", flags + extra.split(), tmpdir)))
        if args.baseline:
            contenders.append(Contender(f"gc@{args.baseline}",
                                        *build(templates_of(args.baseline, tmpdir), "base", flags, tmpdir)))
        set_blas_threads = openblas_thread_setter()
        rng = np.random.default_rng(0)

        print(f"gc_gemm float32, {' '.join(flags)}; zmm FMA instructions: "
              + ", ".join(f"{c.label} {c.zmm}" for c in contenders))
        print(f"numpy {np.__version__}" + ("" if set_blas_threads else "; cannot set OpenBLAS threads")
              + f"; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
        print()
        names = [c.label for c in contenders] + ([] if args.no_numpy else ["numpy"])
        head = ["shape"] + [f"{n} {t}T" for t in thread_counts for n in names]
        print("GFLOP/s (µs per call), median of samples")
        print("| " + " | ".join(head) + " |")
        print("|---" + "|---:" * (len(head) - 1) + "|")

        for group in args.shapes.split(","):
            for label, ta, tb, M, N, K in SHAPES[group]:
                A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
                B = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
                C = np.empty((M, N), np.float32)
                opA, opB = (A.T if ta else A), (B.T if tb else B)
                lda, ldb = A.shape[1], B.shape[1]
                flops = 2.0 * M * N * K
                calls = max(1, int(0.02 / (flops / 50e9 + 0.3e-6)))

                runs = {}
                for c in contenders:
                    pa, pb, pc = (c.ffi.cast("float *", x.ctypes.data) for x in (A, B, C))
                    runs[c.label] = (c, (lambda n, c=c, pa=pa, pb=pb, pc=pc:
                                         c.lib.gemm_api(ta, tb, M, N, K, pa, lda, pb, ldb, 0, pc, N, c.pack, n)))

                def np_run(n):
                    for _ in range(n):
                        np.matmul(opA, opB, out=C)

                row = [label]
                for threads in thread_counts:
                    times = {n: [] for n in names}
                    for rep in range(args.reps):
                        order = names[rep % len(names):] + names[:rep % len(names)]
                        for n in order:
                            for c in contenders:
                                c.lib.set_threads_api(threads)
                            if set_blas_threads:
                                set_blas_threads(threads if n == "numpy" else 1)
                            # idle thread pools spin after their last call: let them sleep
                            time.sleep(0.05)
                            run = np_run if n == "numpy" else runs[n][1]
                            run(max(1, calls // 10))
                            times[n].append(sample(run, calls))
                    for n in names:
                        t = statistics.median(times[n])
                        row.append(f"{flops / t / 1e9:.1f} ({t * 1e6:.3g})")
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
