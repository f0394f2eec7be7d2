"""The emitted C is strict C99 (-Wall -Wextra -Werror -pedantic, with and without OpenMP and
-march=native), and the exported standalone folder (NAME.c/.h with the kernel library they
call, graphc_kernels.c/.h) builds with its Makefile, runs, and prints the values of the NumPy
reference on main.c's deterministic inputs."""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.backend.codegen import generate, prediction_graph
from graphc.native.export import example_arrays, example_batch, parse_example_output

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))
# and a wide softmax: the threaded kernel forms the examples are too small for
EXAMPLES += [Path(__file__).resolve().parent / "specs" / "many_classes.toml"]
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
FLAG_SETS = {"plain": [], "openmp": ["-fopenmp"], "native": ["-O2", "-march=native"]}
PRINT_TOLERANCE = {"float64": 1e-7, "float32": 1e-4}   # main.c prints 9 significant digits

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                                reason="needs gcc and make")


@functools.lru_cache(maxsize=None)
def model(spec: str, dtype: str):
    return graphc.compile(spec, dtype=dtype)


def gcc(args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["gcc", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_c_strict_emitted_source_compiles_without_warnings(spec, dtype, tmp_path):
    g = graphc.load(spec)
    csrc = generate(g, *g.grad_spec, dtype=dtype, threads=2)   # threads > 1: the OpenMP paths exist
    (tmp_path / f"{g.name}.c").write_text(csrc.source)
    (tmp_path / f"{g.name}.h").write_text(csrc.header)
    (tmp_path / csrc.kernels.header_name).write_text(csrc.kernels.header)
    for label, flags in FLAG_SETS.items():
        run = gcc([*STRICT, *flags, "-c", f"{g.name}.c", "-o", f"{g.name}-{label}.o"], tmp_path)
        assert run.returncode == 0 and not run.stderr, f"{label} ({' '.join(flags)}):\n{run.stderr}"


def assert_prints_reference(output: str, g: graphc.Graph, dtype: str, n: int | None = None) -> None:
    results = parse_example_output(output)
    arrays = example_arrays(g, dtype, n)
    forward = graphc.evaluate(g, **arrays)
    backward = graphc.evaluate(graphc.grad(g, *g.grad_spec), **arrays)
    predict = prediction_graph(g)
    expected = {("forward", k) for k in forward} | {("value_and_grad", k) for k in backward}
    expected |= {("predict", k) for k in (predict.outputs if predict is not None else ())}
    assert set(results) == expected
    for (function, name), printed in results.items():
        reference = (backward if function == "value_and_grad" else forward)[name].ravel()
        assert printed.shape == reference.shape, (function, name)
        scale = max(float(np.max(np.abs(reference))), 1e-300)
        err = float(np.max(np.abs(printed - reference))) / scale
        assert err < PRINT_TOLERANCE[dtype], f"{function} {name}: rel err {err:.2e}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_c_strict_standalone_export_builds_runs_and_matches_reference(spec, dtype, tmp_path):
    m = model(str(spec), dtype)
    files = m.export(tmp_path, standalone=True)
    assert sorted(p.name for p in files) == sorted([f"{m.name}.c", f"{m.name}.h", "graphc_kernels.c",
                                                    "graphc_kernels.h", "main.c", "Makefile"])
    assert (tmp_path / f"{m.name}.c").read_text() == m.source       # the same text as the loaded build
    assert (tmp_path / f"{m.name}.h").read_text() == m.header
    assert (tmp_path / "graphc_kernels.c").read_text() == m.csrc.kernels.source
    flags = " ".join(["-O2", *STRICT])                                # main.c is warning-free too
    run = subprocess.run(["make", "-s", "CC=gcc", f"CFLAGS={flags}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert not run.stderr
    assert_prints_reference(run.stdout, m.graph, dtype)
    if m.graph.symbolic_dims:    # BATCH can be overridden: a prime batch, every edge of every kernel
        subprocess.run(["make", "-s", "clean"], cwd=tmp_path, check=True, timeout=60)
        run = subprocess.run(["make", "-s", "CC=gcc", f"CFLAGS={flags} -DBATCH=37L"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert_prints_reference(run.stdout, m.graph, dtype, n=37)


def test_c_strict_makefile_defaults_build_run_and_clean(tmp_path):
    m = model(str(EXAMPLES[0].parent / "one_layer.toml"), "float64")
    m.export(tmp_path, standalone=True)
    run = subprocess.run(["make", "CC=gcc"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "-O2 -fno-math-errno -std=c99 -Wall -Wextra -pedantic" in run.stdout and "-lm" in run.stdout   # the echoed command
    assert ("forward", "loss") in parse_example_output(run.stdout)
    assert example_batch(m.graph) == 4
    assert (tmp_path / "one_layer_example").is_file()
    subprocess.run(["make", "clean"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    assert not (tmp_path / "one_layer_example").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"one_layer.c", "one_layer.h", "graphc_kernels.c",
                                                     "graphc_kernels.h", "main.c", "Makefile"}


def test_c_strict_build_export_copies_the_loaded_library(tmp_path):
    m = model(str(EXAMPLES[0].parent / "one_layer.toml"), "float64")
    files = m.export(tmp_path, standalone=False)
    library = tmp_path / Path(m.built.library).name
    assert library in files and library.read_bytes() == Path(m.built.library).read_bytes()
    assert (tmp_path / "one_layer.c").read_text() == m.source
    assert not (tmp_path / "main.c").exists()


def test_c_strict_standalone_export_of_a_training_model_runs_train_steps(tmp_path):
    """With an optimizer, main.c also makes a few train_step calls; with plain SGD each loss is the
    reference loss at the params of the previous step, p -= lr dJ/dp (reproduced here in NumPy)."""
    training = pytest.importorskip("graphc.native.training")
    spec = EXAMPLES[0].parent / "one_layer.toml"
    lr = 0.1
    m = graphc.compile(str(spec), dtype="float64", optimizer=training.SGD(lr=lr))
    m.export(tmp_path, standalone=True)
    flags = " ".join(["-O2", *STRICT])
    run = subprocess.run(["make", "-s", "CC=gcc", f"CFLAGS={flags}"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    results = parse_example_output(run.stdout)
    g = m.graph
    of, wrt = g.grad_spec
    arrays = example_arrays(g, "float64")
    bwd = graphc.grad(g, of, wrt)
    losses = []
    for step in (1, 2, 3):
        reference = graphc.evaluate(bwd, **arrays)
        losses.append(float(reference["loss"]))
        printed = results[(f"train_step:{step}", "loss")]
        assert abs(printed[0] - losses[-1]) < 1e-7 * abs(losses[-1]), (step, printed, losses[-1])
        arrays = {**arrays, **{w: arrays[w] - lr * reference[f"d_{w}"] for w in wrt}}
    assert losses[2] < losses[0]


def test_c_strict_build_library_links_into_a_c_program(tmp_path):
    """`graphc build` writes libNAME.so, a plain C library: the emitted main.c links with it
    (no Python symbols needed) and prints the reference's numbers."""
    g = graphc.load(str(EXAMPLES[0].parent / "one_layer.toml"))
    m = graphc.compile(g, dtype="float64")
    m.export(tmp_path / "lib", standalone=False)
    m.export(tmp_path / "prog", standalone=True)
    library = tmp_path / "lib" / "libone_layer.so"
    assert library.is_file()
    run = gcc([*STRICT, "-I", str(tmp_path / "lib"), "main.c", "-L", str(tmp_path / "lib"), "-lone_layer",
               "-lm", f"-Wl,-rpath,{tmp_path / 'lib'}", "-o", "linked"], tmp_path / "prog")
    assert run.returncode == 0, run.stderr
    out = subprocess.run([str(tmp_path / "prog" / "linked")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert_prints_reference(out.stdout, g, "float64")


LIBM = "exp|expm1|log|log1p|tanh|sqrt|fabs|fmax|fmin|pow|erf"
ALLOWED_UNDEFINED = re.compile(rf"^((?:{LIBM})f?|memset|memcpy|memmove|omp_\w+|GOMP_\w+|__cpu_model|__cpu_indicator_init"
                               r"|__stack_chk_fail|_GLOBAL_OFFSET_TABLE_)$")   # libgcc's CPU dispatch, PIC
KERNEL_ENTRY_POINTS = re.compile(r"^gc_gemm(_ex|_bias_act|_pack_elems)?_[fd]$")   # graphc_kernels.h's


def assert_no_state_allocator_or_io(directory: Path, obj: str, also_allowed=None) -> set[str]:
    """The object's undefined symbols are libm, memset/memcpy and OpenMP's runtime (and also_allowed);
    it has no data or bss symbols. Returns its defined text symbols."""
    symbols = subprocess.run(["nm", obj], cwd=directory, capture_output=True, text=True).stdout.splitlines()
    undefined = {line.split()[-1] for line in symbols if line.split()[0] == "U"}
    unexpected = [s for s in undefined if not ALLOWED_UNDEFINED.match(s) and not (also_allowed and also_allowed.match(s))]
    assert not unexpected, sorted(undefined)
    state = [line for line in symbols if len(line.split()) == 3 and line.split()[1] in "BbDdCc"]
    assert not state, state
    return {line.split()[2] for line in symbols if len(line.split()) == 3 and line.split()[1] == "T"}


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_c_strict_emitted_object_keeps_no_state_and_calls_no_allocator_or_io(spec, tmp_path):
    """The promise of the header: no global mutable state (no data or bss symbols), no malloc, no
    printing. The model object's undefined symbols are libm, memset/memcpy, OpenMP's runtime and
    the kernel library's entry points; the library's own object needs nothing more."""
    g = graphc.load(str(spec))
    csrc = generate(g, *g.grad_spec, threads=2, optimizer=graphc.Adam(lr=1e-3))
    (tmp_path / f"{g.name}.c").write_text(csrc.source)
    (tmp_path / f"{g.name}.h").write_text(csrc.header)
    (tmp_path / csrc.kernels.source_name).write_text(csrc.kernels.source)
    (tmp_path / csrc.kernels.header_name).write_text(csrc.kernels.header)
    for flags in ([], ["-fopenmp"], ["-march=native", "-fopenmp"]):
        run = gcc([*STRICT, "-O2", *flags, "-c", f"{g.name}.c", "-o", "m.o"], tmp_path)
        assert run.returncode == 0, run.stderr
        assert_no_state_allocator_or_io(tmp_path, "m.o", KERNEL_ENTRY_POINTS)
        run = gcc([*STRICT, "-O2", *flags, "-c", "graphc_kernels.c", "-o", "k.o"], tmp_path)
        assert run.returncode == 0, run.stderr
        exported = assert_no_state_allocator_or_io(tmp_path, "k.o")
        assert {s for s in exported if KERNEL_ENTRY_POINTS.match(s)} == {
            f"gc_gemm{kind}_{t}" for kind in ("", "_ex", "_bias_act", "_pack_elems") for t in "fd"}
