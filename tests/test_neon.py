"""The NEON kernels (issue 18 item 3): the kernel library cross-compiled for AArch64 with
gcc-aarch64-linux-gnu and run under qemu-aarch64 (Debian's qemu-user): every GEMM form against a
naive product in double, through the NEON vector layer and, capped with GC_GEMM_ISA_CAP=0,
through plain C; and an emitted example program prints what the host build prints. No timing
from emulation."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.backend.codegen import kernel_library

CC = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64")
pytestmark = pytest.mark.skipif(CC is None or QEMU is None,
                                reason="needs aarch64-linux-gnu-gcc and qemu-aarch64 (.ci/run installs "
                                       "gcc-aarch64-linux-gnu and qemu-user)")
ROOT = Path(__file__).resolve().parent.parent

HARNESS = r"""
#include <math.h>
#include <stdio.h>
#include "graphc_kernels.h"

/* Every GEMM form, against a naive product in double: shapes across the NEON tile (8 x 12
   floats, 6 x 8 doubles), KC (256 floats, 128 doubles) and the small, matrix-vector and
   direct paths; both transposes; beta 0 and 1; the epilogue's bias, relu, sign mask (-1, 0, 1)
   and column sums. */
#define CAP (1 << 20)
static TYPE A[CAP], B[CAP], C[CAP], mask[CAP], bias[4096], colsum[4096], pack[CAP];
static double R[CAP];
static unsigned long long seed = 88172645463325252ull;
static TYPE rnd(void)
{
    seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
    return (TYPE)((double)(seed % 2000001) / 1000000.0 - 1.0);
}

int main(void)
{
    static const long shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {8, 12, 16}, {9, 13, 17}, {13, 27, 300},
                                     {64, 65, 129}, {127, 33, 257}, {1, 100, 64}, {100, 1, 64},
                                     {31, 130, 70}, {200, 24, 40}};
    int s, ta, tb, beta, ep_on;
    printf("isa %d\n", gc_kernels_isa());
    for (s = 0; s < (int)(sizeof shapes / sizeof shapes[0]); ++s)
    for (ta = 0; ta < 2; ++ta) for (tb = 0; tb < 2; ++tb) for (beta = 0; beta < 2; ++beta)
    for (ep_on = 0; ep_on < 2; ++ep_on) {
        const long M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        const long lda = ta ? M : K, ldb = tb ? K : N, ldc = N;
        long i, j, k;
        double worst = 0;
        EPI ep = {0};
        for (i = 0; i < M * K; ++i) A[i] = rnd();
        for (i = 0; i < K * N; ++i) B[i] = rnd();
        for (i = 0; i < M * N; ++i) { C[i] = rnd(); mask[i] = (TYPE)((i % 3) - 1); }
        for (j = 0; j < N; ++j) { bias[j] = rnd(); colsum[j] = 0; }
        ep.bias = bias; ep.relu = 1; ep.colsum = colsum; ep.mask = mask; ep.ldm = N;
        for (i = 0; i < M; ++i) for (j = 0; j < N; ++j) {
            double acc = beta ? (double)C[i * ldc + j] : 0.0;
            for (k = 0; k < K; ++k)
                acc += (double)(ta ? A[k * lda + i] : A[i * lda + k]) * (double)(tb ? B[j * ldb + k] : B[k * ldb + j]);
            if (ep_on) { acc += (double)bias[j]; if (acc < 0) acc = 0; acc *= (double)mask[i * N + j]; }
            R[i * N + j] = acc;
        }
        GEMM(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, 1, ep_on ? &ep : 0);
        for (i = 0; i < M; ++i) for (j = 0; j < N; ++j) {
            double e = fabs((double)C[i * ldc + j] - R[i * N + j]) / (1.0 + fabs(R[i * N + j])) / sqrt((double)K);
            if (e > worst) worst = e;
        }
        if (ep_on) for (j = 0; j < N; ++j) {
            double sum = 0;
            for (i = 0; i < M; ++i) sum += R[i * N + j];
            double e = fabs((double)colsum[j] - sum) / (1.0 + fabs(sum)) / sqrt((double)(K * M));
            if (e > worst) worst = e;
        }
        printf("%ld %ld %ld %d %d %d %d %.3g\n", M, N, K, ta, tb, beta, ep_on, worst);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("neon")
    lib = kernel_library()
    (d / lib.source_name).write_text(lib.source)
    (d / lib.header_name).write_text(lib.header)
    return d


def run_harness(directory: Path, dtype: str, cap: int | None) -> list[str]:
    typed = {"float32": ("float", "gc_gemm_ex_f", "gc_gemm_epilogue_f"),
             "float64": ("double", "gc_gemm_ex_d", "gc_gemm_epilogue_d")}[dtype]
    name = f"harness_{dtype}_{cap}"
    (directory / f"{name}.c").write_text(HARNESS)
    flags = ["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-static",
             f"-DTYPE={typed[0]}", f"-DGEMM={typed[1]}", f"-DEPI={typed[2]}"]
    flags += [] if cap is None else [f"-DGC_GEMM_ISA_CAP={cap}"]
    build = subprocess.run([CC, *flags, "-o", name, f"{name}.c", "graphc_kernels.c", "-lm"], cwd=directory,
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0 and not build.stderr, build.stderr
    run = subprocess.run([QEMU, f"./{name}"], cwd=directory, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cap", [None, 0])
def test_neon_gemm_matches_the_naive_product_under_qemu(library, dtype, cap):
    lines = run_harness(library, dtype, cap)
    assert lines[0] == f"isa {3 if cap is None else 0}"          # NEON, unless capped to plain C
    cases = [line.split() for line in lines[1:]]
    assert len(cases) == 11 * 16
    tolerance = 2e-6 if dtype == "float32" else 1e-14
    worst = max(float(c[-1]) for c in cases)
    assert worst < tolerance, [c for c in cases if float(c[-1]) >= tolerance][:5]


def test_neon_emitted_program_prints_what_the_host_build_prints(tmp_path):
    g = graphc.load(ROOT / "examples" / "mlp.toml")
    from graphc.backend.codegen import generate
    from graphc.native.export import emit, parse_example_output
    csrc = generate(g, *g.grad_spec, dtype="float32", threads=1)
    outputs = {}
    for target, cc, runner in (("host", "gcc", []), ("aarch64", CC, [QEMU])):
        d = tmp_path / target
        emit(csrc, d)
        build = subprocess.run(["make", "-s", f"CC={cc}", "CFLAGS=-O2 -std=c99 -Wall -Wextra -Werror -pedantic",
                                "LDFLAGS=-static" if runner else "LDFLAGS=", f"{g.name}_example"],
                               cwd=d, capture_output=True, text=True, timeout=600)
        assert build.returncode == 0 and not build.stderr, build.stderr
        run = subprocess.run([*runner, f"./{g.name}_example"], cwd=d, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        outputs[target] = parse_example_output(run.stdout)
    assert outputs["host"].keys() == outputs["aarch64"].keys() and outputs["host"]
    for key, host in outputs["host"].items():
        arm = outputs["aarch64"][key]
        scale = max(float(np.max(np.abs(host))), 1e-30)
        assert float(np.max(np.abs(arm - host))) / scale < 1e-5, key
