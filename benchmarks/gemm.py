"""GFLOP/s of the gc_gemm kernel (templates/kernels/matmul.c.j2) vs NumPy.

Renders the template, builds it for float32 with cffi (-O3 -march=native
-fopenmp), and times gc_gemm on 1 and 2 threads against NumPy float32
matmul (OpenBLAS) on 1 and 2 threads, for square sizes and the model's
shapes.  Runs alternate between the contenders; the table reports medians.

    python benchmarks/gemm.py [--reps 7] [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import os
import pathlib
import statistics
import sys
import tempfile
import time

import cffi
import jinja2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
FLAGS = ["-O3", "-march=native", "-fopenmp"]

# (label, ta, tb, M, N, K): C[M,N] = op(A)[M,K] op(B)[K,N]
SQUARE = [(f"{n}^3", 0, 0, n, n, n) for n in (256, 512, 1024, 2048)]
MODEL = [
    ("(128x784)(784x512)", 0, 0, 128, 512, 784),
    ("(256x1024)(1024x4096)", 0, 0, 256, 4096, 1024),
    ("TN (256x4096)^T(256x1024)", 1, 0, 4096, 1024, 256),
    ("NT (256x1024)(4096x1024)^T", 0, 1, 256, 4096, 1024),
    ("NT (128x512)(784x512)^T", 0, 1, 128, 784, 512),
    ("TN (128x784)^T(128x512)", 1, 0, 784, 512, 128),
]

WRAPPER = """
typedef float gc_real;
#define GC_REAL_IS_DOUBLE 0
#define GC_MAX_THREADS 2
{kernels}
void gemm_api(int ta, int tb, long M, long N, long K, const float *A, long lda,
              const float *B, long ldb, int beta, float *C, long ldc, float *pack)
{{
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
              const float *B, long ldb, int beta, float *C, long ldc, float *pack);
long pack_elems_api(void);
void set_threads_api(int threads);
"""


def build(tmpdir: str):
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(ROOT / "templates")),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True, autoescape=False,
    )
    kernels = env.get_template("kernels/matmul.c.j2").render()
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("_gc_gemm_bench", WRAPPER.format(kernels=kernels),
                   extra_compile_args=FLAGS, extra_link_args=["-fopenmp"])
    so_path = ffi.compile(tmpdir=tmpdir)
    spec = importlib.util.spec_from_file_location("_gc_gemm_bench", so_path)
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


def median_seconds(run, reps: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="skip 2048^3")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir:
        module, so_path = build(tmpdir)
        ffi, lib = module.ffi, module.lib
        zmm_fmas = sum("vfmadd" in line and "zmm" in line
                       for line in os.popen(f"objdump -d {so_path} 2>/dev/null"))

        pack_elems = lib.pack_elems_api()
        raw = np.empty(pack_elems + 16, np.float32)
        offset = (-raw.ctypes.data % 64) // 4
        pack = ffi.cast("float *", raw[offset:].ctypes.data)
        set_blas_threads = openblas_thread_setter()
        rng = np.random.default_rng(0)

        print(f"gc_gemm float32, gcc {' '.join(FLAGS)}; zmm FMA instructions: {zmm_fmas}; "
              f"pack {pack_elems * 4 / 2**20:.2f} MiB")
        blas_env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_"))}
        print(f"numpy {np.__version__}; environment: {blas_env or '(no OPENBLAS_*/OMP_* set)'}"
              + ("" if set_blas_threads else "; cannot set OpenBLAS threads, numpy uses its default"))
        print()
        print("| shape | gc 1T | numpy 1T | gc/np 1T | gc 2T | numpy 2T | gc/np 2T |")
        print("|---|---:|---:|---:|---:|---:|---:|")

        cases = SQUARE[:-1] if args.quick else SQUARE
        for label, ta, tb, M, N, K in cases + MODEL:
            A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
            B = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
            C = np.empty((M, N), np.float32)
            opA, opB = (A.T if ta else A), (B.T if tb else B)
            pa, pb, pc = (ffi.cast("float *", x.ctypes.data) for x in (A, B, C))
            lda, ldb = A.shape[1], B.shape[1]
            reps = max(3, min(args.reps, int(args.reps * 2e9 / (2 * M * N * K) + 1)))
            flops = 2.0 * M * N * K

            def gc_run():
                lib.gemm_api(ta, tb, M, N, K, pa, lda, pb, ldb, 0, pc, N, pack)

            def np_run():
                np.matmul(opA, opB, out=C)

            def settle(gc_threads, blas_threads):
                # Idle thread pools spin for a while after their last call
                # (OpenBLAS up to ~0.1 s) and steal the core from the other
                # contender: give them time to go to sleep.
                lib.set_threads_api(gc_threads)
                if set_blas_threads:
                    set_blas_threads(blas_threads)
                time.sleep(0.25)

            row = [label]
            results = {}
            for threads in (1, 2):
                # Alternate the contenders, keep each one's best median.
                gc_t, np_t = [], []
                for _ in range(3):
                    settle(threads, 1)
                    gc_t.append(median_seconds(gc_run, reps))
                    settle(1, threads)
                    np_t.append(median_seconds(np_run, reps))
                results[threads] = (flops / min(gc_t) / 1e9, flops / min(np_t) / 1e9)
            for threads in (1, 2):
                gc_gflops, np_gflops = results[threads]
                row += [f"{gc_gflops:.1f}", f"{np_gflops:.1f}", f"{gc_gflops / np_gflops:.0%}"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
