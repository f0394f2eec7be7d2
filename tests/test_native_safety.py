"""Native safety: the emitted C of the examples and of five hypothesis-generated specs, driven by
a standalone harness with exact-size heap buffers, runs under valgrind's memcheck with zero
errors (no out-of-bounds access, no read of uninitialised memory, inputs never written); and the
Python-loaded library, called from a Python process under valgrind, shows no error in a frame of
the model's own .so."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc

from conftest import private_cache_dir
from test_fuzz_spec import generated_specs

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
VALGRIND = shutil.which("valgrind")
CC = shutil.which("gcc") or shutil.which("cc")
needs_valgrind = pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed (.ci/run installs it)")


_cache_dir = pytest.fixture(scope="module", autouse=True)(private_cache_dir)


def harness(m, n: int) -> str:
    """A main() that calls every function of m with exact-size malloc'd buffers, checks the
    status and that inputs are unchanged, and prints a checksum of every output."""
    ctype = "float" if m.dtype == np.float32 else "double"
    lines = ["#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>", "#include <stdint.h>",
             f'#include "{m.name}.h"', "",
             "int main(void)", "{", f"    const long n = {n};", "    int status;", "    void *ws = NULL;",
             f"    if (posix_memalign(&ws, 64, {m.name}_workspace_size(n)) != 0) return 2;"]
    for f in m.functions.values():
        bounds = {c: b for c, _, b in f.label_checks}
        lines.append("    {")
        call = []
        for a in f.args:
            count = " * ".join(["1"] + [("n" if isinstance(d, str) else str(d)) for d in a.value.shape])
            t = "int32_t" if a.ctype == "int32_t" else ctype
            lines.append(f"        const size_t k_{a.cname} = {count};")
            lines.append(f"        {t} *{a.cname} = malloc(sizeof({t}) * k_{a.cname});")
            if a.role in ("input", "param", "param*", "state"):
                if t == "int32_t":
                    fill = f"(int32_t)(i % {bounds.get(a.cname, '1')})"
                else:
                    fill = f"({t})((double)((i * 7919) % 23) / 23.0 - 0.5)"
                lines.append(f"        for (size_t i = 0; i < k_{a.cname}; ++i) {a.cname}[i] = {fill};")
                if a.const:
                    lines.append(f"        {t} *copy_{a.cname} = malloc(sizeof({t}) * k_{a.cname});")
                    lines.append(f"        memcpy(copy_{a.cname}, {a.cname}, sizeof({t}) * k_{a.cname});")
            call.append(a.cname)
        lines.append(f"        status = {m.name}_{f.name}(n, {', '.join(call)}, ws);")
        lines.append(f'        if (status != 0) {{ printf("{f.name}: status %d\\n", status); return 10 + status; }}')
        for a in f.args:
            t = "int32_t" if a.ctype == "int32_t" else ctype
            if a.role in ("input", "param") and a.const:
                lines.append(f"        if (memcmp(copy_{a.cname}, {a.cname}, sizeof({t}) * k_{a.cname}) != 0) "
                             f'{{ printf("{f.name} wrote its input {a.cname}\\n"); return 30; }}')
                lines.append(f"        free(copy_{a.cname});")
            elif a.role not in ("input", "param"):
                lines.append(f"        {{ double s = 0; for (size_t i = 0; i < k_{a.cname}; ++i) s += (double){a.cname}[i];")
                lines.append(f'          printf("{f.name} {a.cname} %.17g\\n", s); }}')
        lines += [f"        free({a.cname});" for a in f.args]
        lines.append("    }")
    lines += ["    free(ws);", "    return 0;", "}", ""]
    return "\n".join(lines)


def run_harness(m, n: int, tmp_path: Path) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{m.name}.c").write_text(m.source)
    (tmp_path / f"{m.name}.h").write_text(m.header)
    kernels = m.csrc.kernels           # the kernel library the model calls, its element type's half
    (tmp_path / kernels.source_name).write_text(kernels.source)
    (tmp_path / kernels.header_name).write_text(kernels.header)
    (tmp_path / "harness.c").write_text(harness(m, n))
    build = subprocess.run([CC, "-std=c99", "-O2", "-g", "-D_POSIX_C_SOURCE=200112L", "-Wall", "-Wextra", "-Werror",
                            *kernels.defines, f"{m.name}.c", kernels.source_name, "harness.c", "-o", "harness", "-lm"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([VALGRIND, "--tool=memcheck", "--error-exitcode=99", "--leak-check=full",
                          "--errors-for-leak-kinds=definite", "--track-origins=yes", "-q", "./harness"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-6000:]}"
    assert run.stderr.strip() == "", run.stderr[-6000:]          # -q: any line is a report
    return run.stdout


CASES = [("one_layer.toml", "float32", 5), ("one_layer.toml", "float64", 1), ("mlp.toml", "float32", 7),
         ("window_classifier.toml", "float64", 3), ("one_layer_column.toml", "float64", 1)]


@needs_valgrind
@pytest.mark.parametrize("spec,dtype,n", CASES, ids=[f"{s[:-5]}-{d}-n{n}" for s, d, n in CASES])
def test_native_harness_runs_clean_under_memcheck(spec, dtype, n, tmp_path):
    m = graphc.compile(EXAMPLES / spec, dtype=dtype, threads=1)
    out = run_harness(m, n, tmp_path)
    assert "forward" in out and ("value_and_grad" in out or "value_and_grad" not in m.functions)
    assert "nan" not in out.lower()


GENERATED = generated_specs(5)       # derandomized: the five specs tests/test_sanitizers.py runs


@needs_valgrind
@pytest.mark.parametrize("i", range(len(GENERATED)), ids=[f"generated{i}" for i in range(len(GENERATED))])
def test_native_harness_runs_generated_specs_clean_under_memcheck(i, tmp_path):
    """Hypothesis-generated specs (odd dims 1..7, fused chains), float64 and float32 alternately,
    at batch 1 and 37 (the edge tiles of every kernel)."""
    dtype = ("float64", "float32")[i % 2]
    m = graphc.compile(graphc.parse_spec(GENERATED[i], f"generated{i}.toml"), dtype=dtype, threads=1)
    for n in (1, 37):
        out = run_harness(m, n, tmp_path / f"n{n}")
        assert "forward" in out and "value_and_grad" in out
        assert "nan" not in out.lower()


@needs_valgrind
def test_native_harness_catches_an_out_of_bounds_write(tmp_path):
    """The check has teeth: the same harness around a C function that writes one element too far fails."""
    m = graphc.compile(EXAMPLES / "one_layer.toml", dtype="float64", threads=1)

    class Broken:
        def __init__(self, model):
            self.__dict__.update(name=model.name, dtype=model.dtype, header=model.header,
                                 functions=model.functions, csrc=model.csrc)
            start = model.source.index(f"int {model.name}_forward(")   # (the check function is above it)
            self.source = model.source[:start] + model.source[start:].replace(
                "    return GRAPHC_OK;\n}", "    probs[n * 10] = 0;   /* one past the end */\n    return GRAPHC_OK;\n}", 1)
            assert self.source != model.source

    with pytest.raises(AssertionError, match="Invalid write"):
        run_harness(Broken(m), 2, tmp_path)


PYTHON_CHILD = """
import numpy as np, graphc
# native=False: valgrind cannot decode AVX-512, which -march=native may use
m = graphc.compile("{spec}", dtype="float64", threads=1, native=False)
rng = np.random.default_rng(0)
a = dict(x=rng.standard_normal((5, 64)), y=rng.integers(0, 10, 5).astype(np.int32),
         W=rng.standard_normal((128, 64)) * 0.1, b1=np.zeros(128), U=rng.standard_normal((10, 128)) * 0.1,
         b2=np.zeros(10))
for v in a.values():
    v.flags.writeable = False
for _ in range(2):
    m.forward(**a)
    outs, grads = m.value_and_grad(**a)
print("ok", float(outs["loss"]))
"""


@needs_valgrind
@pytest.mark.skipif(os.environ.get("GRAPHC_VALGRIND_PYTHON", "1") == "0", reason="GRAPHC_VALGRIND_PYTHON=0")
def test_native_python_loaded_library_has_no_memcheck_errors_in_its_frames(tmp_path):
    code = PYTHON_CHILD.format(spec=EXAMPLES / "one_layer.toml")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONMALLOC": "malloc"}
    warm = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert warm.returncode == 0, warm.stderr[-3000:]          # built and cached outside valgrind
    log = tmp_path / "valgrind.log"
    run = subprocess.run([VALGRIND, "--tool=memcheck", "--leak-check=no", "--errors-for-leak-kinds=none",
                          "--num-callers=30", f"--log-file={log}", sys.executable, "-c", code],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]
    text = log.read_text(errors="replace")
    assert "ERROR SUMMARY" in text
    # Python itself is noisy under memcheck: judge only the errors with a frame in the model's .so
    blocks = re.split(r"\n==\d+== \n", text)
    ours = [b for b in blocks if "_graphc_" in b and re.search(r"Invalid|uninitialised|Mismatched|overlap", b)]
    assert not ours, "\n\n".join(ours)[:6000]


# train_step of a CNN and of sequence models (the specs tests/test_sanitizers.py trains under ASan)
TRAINED = [REPO / "tests" / "specs" / "small_cnn.toml", REPO / "tests" / "specs" / "seq_gpt.toml",
           EXAMPLES / "gru.toml"]
MEMCHECK = [VALGRIND, "--tool=memcheck", "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite",
            "--track-origins=yes", "-q"]
_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"   # mpich's wheels: mpicc, mpiexec


def exported(spec: Path, tmp_path: Path) -> graphc.CompiledModel:
    m = graphc.compile(spec, dtype="float64", optimizer=graphc.Adam(lr=1e-3, weight_decay=1e-2), threads=1)
    m.export(tmp_path, standalone=True)
    return m


@needs_valgrind
@pytest.mark.parametrize("spec", TRAINED, ids=lambda p: p.stem)
def test_native_train_steps_of_a_cnn_and_sequence_models_run_clean_under_memcheck(spec, tmp_path):
    """main.c (no OpenMP, no -march=native: valgrind decodes no AVX-512) runs forward, value_and_grad
    and 3 Adam train steps at batch 3 under memcheck: no error, no definite leak."""
    m = exported(spec, tmp_path)
    build = subprocess.run(["make", "-s", f"CC={CC}", "CFLAGS=-std=c99 -O1 -g -DBATCH=3L", f"{m.name}_example"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([*MEMCHECK, f"./{m.name}_example"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and not run.stderr.strip(), f"exit {run.returncode}\n{run.stderr[-6000:]}"
    assert "train_step:3" in run.stdout


def errors_in_our_code(log: str, sources: set[str]) -> list[str]:
    """The memcheck errors of `log` whose innermost frame outside the C library and valgrind's own
    replacements (memcpy, malloc) is in one of `sources` (the emitted files), or whose uninitialised
    value was created there: MPICH and ld.so report errors of their own inside MPI_Init."""
    ours = []
    for block in re.split(r"\n==\d+== \n", log):
        if not re.search(r"Invalid|uninitialised|Mismatched|overlap|definitely lost", block):
            continue
        frames = re.findall(r"(?:at|by) 0x[0-9A-F]+: (\S+) \(([^)]*)\)", block.split("Address")[0].split("created")[0])
        inner = next((where for _fn, where in frames
                      if not where.startswith("in /usr/libexec/valgrind") and "libc.so" not in where
                      and not re.match(r"[\w-]+\.S:", where)), "")
        created = block.split("created by", 1)[1] if "created by" in block else ""
        if inner.split(":")[0] in sources or any(f"({s}:" in created for s in sources):
            ours.append(block)
    return ours


@needs_valgrind
@pytest.mark.parametrize("spec", ["small_attention", "cnn"])
def test_native_mpi_program_has_no_memcheck_errors_in_the_emitted_code(spec, tmp_path):
    """`make MPI=1`'s program on 2 ranks, each under memcheck: no error whose innermost frame is in
    main.c, the model, its MPI update or the kernel library (MPICH's own, inside MPI_Init, are its
    own); the ranks end with the same params. The CNN is tests/test_sanitizers.py's small_cnn without
    its batch_norm and dropout (MPI trains no model with state yet)."""
    mpicc, mpiexec = shutil.which("mpicc", path=_PATH), shutil.which("mpiexec", path=_PATH)
    if mpicc is None or mpiexec is None:
        pytest.skip("needs mpicc and mpiexec (pip install 'graphc[mpi]')")
    if spec == "cnn":
        from test_sanitizers import STATELESS_CNN
        path = tmp_path / "small_cnn_stateless.toml"
        path.write_text(STATELESS_CNN)
    else:
        path = REPO / "tests" / "specs" / f"{spec}.toml"
    m = exported(path, tmp_path)
    env = {**os.environ, "PATH": _PATH, "MPICH_CC": CC}
    build = subprocess.run(["make", "-s", "MPI=1", f"MPICC={mpicc}", "CFLAGS=-std=c99 -O1 -g", "CPPFLAGS=-DBATCH=6L",
                            f"{m.name}_mpi"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert build.returncode == 0, build.stderr[-3000:]
    log = tmp_path / "memcheck.%p.log"
    run = subprocess.run([mpiexec, "-n", "2", *MEMCHECK[:-1], f"--log-file={log}", f"./{m.name}_mpi"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    hashes = re.findall(r"^mpi rank \d/2: .* params hash ([0-9a-f]{16})$", run.stdout, re.M)
    assert len(hashes) == 2 and hashes[0] == hashes[1], run.stdout[-2000:] + run.stderr[-2000:]
    sources = {"main.c", f"{m.name}.c", f"{m.name}_mpi_update.c", f"{m.name}_checkpoint.c", "graphc_kernels.c"}
    logs = sorted(tmp_path.glob("memcheck.*.log"))
    assert len(logs) == 2
    ours = [b for f in logs for b in errors_in_our_code(f.read_text(errors="replace"), sources)]
    assert not ours, "\n\n".join(ours)[:6000]


def test_native_memcheck_filter_keeps_errors_of_the_emitted_code_and_drops_mpichs():
    """errors_in_our_code: an invalid read inside libmpi's MPI_Init (called from main.c) is MPICH's;
    one in a kernel, one in memcpy called from the model, and an uninitialised value created in
    main.c are ours."""
    def block(kind, *frames, created=""):
        lines = [f"==7== {kind}"] + [f"==7==    {'at' if i == 0 else 'by'} 0x{i + 1:X}: {fn} ({where})"
                                      for i, (fn, where) in enumerate(frames)]
        return "\n".join(lines + (["==7==  Uninitialised value was created by a stack allocation",
                                    f"==7==    at 0x9: main ({created})"] if created else []))
    mpich = block("Invalid read of size 8", ("???", "in /venv/lib/libmpi.so.12"), ("PMPI_Init", "in /venv/lib/libmpi.so.12"),
                  ("main", "main.c:438"))
    kernel = block("Invalid write of size 8", ("gc_gemm", "graphc_kernels.c:120"), ("m_forward", "m.c:40"))
    copy = block("Invalid read of size 8", ("memcpy", "in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so"),
                 ("m_train_step", "m.c:77"))
    origin = block("Conditional jump or move depends on uninitialised value(s)", ("???", "in /venv/lib/libmpi.so.12"),
                   created="main.c:300")
    log = "\n==7== \n".join([mpich, kernel, copy, origin])
    found = errors_in_our_code(log, {"main.c", "m.c", "graphc_kernels.c"})
    assert found == [kernel, copy, origin]
