"""The emitted C is strict C99 (-Wall -Wextra -Werror -pedantic, with and without OpenMP and
-march=native) under gcc, clang and tcc, split (NAME.c with graphc_kernels.c) and amalgamated
(one NAME.c); the exported standalone folder builds with its Makefile under each compiler, runs,
and prints the values of the NumPy reference on main.c's deterministic inputs (so the compilers
agree); and no object keeps state or calls an allocator or I/O."""
from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.backend.codegen import amalgamate, generate, kernel_library, prediction_graph
from graphc.native.example_make import KernelObjects, make_example
from graphc.native.export import (emit, example_arrays, example_batch, example_summary, parse_example_output,
                                  summary_close)
from conftest import SMALL_EXAMPLES

EXAMPLES = list(SMALL_EXAMPLES)
# and the specs of tests/specs (a wide softmax: the threaded kernel forms the examples are too small for)
EXAMPLES += sorted((Path(__file__).resolve().parent / "specs").glob("*.toml"))
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
# Flag sets per compiler. clang's OpenMP needs libomp, tcc has neither OpenMP nor intrinsics (it
# compiles the portable path) and takes the same warning flags (it warns about less).
FLAG_SETS = {
    "gcc": {"plain": [], "openmp": ["-fopenmp"], "native": ["-O2", "-march=native"]},
    "clang": {"plain": [], "openmp": ["-fopenmp"], "native": ["-O2", "-march=native"]},
    "tcc": {"plain": []},
}
COMPILERS = list(FLAG_SETS)
PRINT_TOLERANCE = {"float64": 1e-7, "float32": 1e-4}   # main.c prints 9 significant digits

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                                reason="needs gcc and make")


def compiler(name: str) -> str:
    """The compiler's path, or a skip saying it is missing (.ci/run installs clang and tcc)."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (.ci/run installs clang and tcc with apt-get)")
    return path


@functools.lru_cache(maxsize=None)
def has_openmp(name: str) -> bool:
    """Whether `name -fopenmp` compiles a file that includes <omp.h> (clang needs libomp for it)."""
    run = subprocess.run([name, "-fopenmp", "-x", "c", "-c", "-", "-o", "/dev/null"],
                         input="#include <omp.h>\nint f(void) { return omp_get_max_threads(); }\n",
                         capture_output=True, text=True)
    return run.returncode == 0


@functools.lru_cache(maxsize=None)
def model(spec: str, dtype: str):
    return graphc.compile(spec, dtype=dtype)


def run_cc(name: str, args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([compiler(name), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def gcc(args, cwd) -> subprocess.CompletedProcess:
    return run_cc("gcc", args, cwd)


KERNEL_OBJECTS = KernelObjects()


def make(directory: Path, cc: str, cflags: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`make -s CC=cc CFLAGS=cflags` in an emitted folder. A split folder's graphc_kernels.c (the
    same text for every model) is compiled once per compiler, flags and element types, by the
    Makefile's own rule for it, and the object is reused (graphc/native/example_make.py)."""
    return make_example(directory, compiler(cc), cflags, objects=KERNEL_OBJECTS, timeout=timeout)


def write_sources(g, csrc, directory: Path, amalgamated: bool) -> None:
    """NAME.c and NAME.h, and graphc_kernels.c/.h beside them unless the NAME.c is amalgamated."""
    (directory / f"{g.name}.c").write_text(amalgamate(csrc) if amalgamated else csrc.source)
    (directory / f"{g.name}.h").write_text(csrc.header)
    if not amalgamated:
        (directory / csrc.kernels.source_name).write_text(csrc.kernels.source)
        (directory / csrc.kernels.header_name).write_text(csrc.kernels.header)


@pytest.mark.parametrize("cc", COMPILERS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_c_strict_emitted_source_compiles_without_warnings(spec, dtype, cc, tmp_path):
    """NAME.c under every flag set of the compiler; the amalgamated NAME.c (the library's entry points
    static, the model using some of them) without optimization, where unused-function warnings show."""
    compiler(cc)
    g = graphc.load(spec)
    csrc = generate(g, *g.grad_spec, dtype=dtype, threads=2)   # threads > 1: the OpenMP paths exist
    for amalgamated in (False, True):
        layout = "amalgamated" if amalgamated else "split"
        write_sources(g, csrc, tmp_path, amalgamated)
        for label, flags in FLAG_SETS[cc].items():
            if "-fopenmp" in flags and not has_openmp(cc):
                continue
            if amalgamated and label != "plain":
                continue
            run = run_cc(cc, [*STRICT, *flags, "-c", f"{g.name}.c", "-o", f"{g.name}-{label}.o"], tmp_path)
            assert run.returncode == 0 and not run.stderr, f"{cc} {layout} {label} ({' '.join(flags)}):\n{run.stderr}"


def assert_prints_reference(output: str, g: graphc.Graph, dtype: str, n: int | None = None) -> None:
    results = parse_example_output(output)
    arrays = example_arrays(g, dtype, n)
    forward = graphc.evaluate(g, **arrays)
    backward = graphc.evaluate(graphc.grad(g, *g.grad_spec), **arrays)
    predict = prediction_graph(g)
    expected = {("forward", k) for k in forward} | {("value_and_grad", k) for k in backward}
    expected |= {("predict", k) for k in (predict.outputs if predict is not None else ())}
    assert set(results) == expected
    # predict in inference: batch_norm by its running statistics, no dropout
    inferred = graphc.evaluate(predict, **{k: v for k, v in arrays.items() if k in predict.values}) if predict else {}
    for (function, name), printed in results.items():
        # main.c prints a summary of each array (sums, a weighted sum, the first values)
        values = {"value_and_grad": backward, "predict": inferred}.get(function, forward)
        reference = example_summary(values[name])
        assert printed.shape == reference.shape, (function, name)
        assert summary_close(printed, reference, PRINT_TOLERANCE[dtype]), (function, name, printed, reference)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_c_strict_standalone_export_builds_runs_and_matches_reference(spec, dtype, tmp_path):
    m = model(str(spec), dtype)
    files = m.export(tmp_path, standalone=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in files) == sorted(
        [f"{m.name}.c", f"{m.name}.h", "graphc_kernels.c", "graphc_kernels.h", "main.c", "Makefile",
         "mcu/startup.c", "mcu/mps2_an386.ld"])
    assert (tmp_path / f"{m.name}.c").read_text() == m.source       # the same text as the loaded build
    assert (tmp_path / f"{m.name}.h").read_text() == m.header
    assert (tmp_path / "graphc_kernels.c").read_text() == m.csrc.kernels.source
    flags = " ".join(["-O2", *STRICT])                                # main.c is warning-free too
    run = make(tmp_path, "gcc", flags)
    assert run.returncode == 0, run.stderr
    assert not run.stderr
    assert_prints_reference(run.stdout, m.graph, dtype)
    if m.graph.symbolic_dims:    # BATCH can be overridden: a prime batch, every edge of every kernel
        subprocess.run(["make", "-s", "clean"], cwd=tmp_path, check=True, timeout=60)
        run = make(tmp_path, "gcc", f"{flags} -DBATCH=37L")
        assert run.returncode == 0, run.stderr
        assert_prints_reference(run.stdout, m.graph, dtype, n=37)


@pytest.mark.parametrize("cc, layout", [("clang", "split"), ("clang", "amalgamated"), ("tcc", "split"),
                                        ("tcc", "amalgamated"), ("gcc", "amalgamated")])   # gcc split: above
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_c_strict_emitted_program_builds_with_each_compiler_and_matches_reference(spec, dtype, cc, layout, tmp_path):
    """`graphc emit`'s folder (no compiler run to write it), built by its Makefile with clang and
    tcc as with gcc, split and amalgamated: warning-free, and the numbers of the reference, so the
    three compilers agree to the printed digits."""
    compiler(cc)
    g = graphc.load(spec)
    csrc = generate(g, *g.grad_spec, dtype=dtype, threads=2)
    names = sorted(p.relative_to(tmp_path).as_posix()
                   for p in emit(csrc, tmp_path, amalgamate=layout == "amalgamated"))
    kernels = [] if layout == "amalgamated" else ["graphc_kernels.c", "graphc_kernels.h"]
    assert names == sorted([f"{g.name}.c", f"{g.name}.h", "main.c", "Makefile", *kernels,
                            "mcu/startup.c", "mcu/mps2_an386.ld"])
    flags = " ".join(["-O2", *STRICT])
    run = make(tmp_path, cc, flags)
    assert run.returncode == 0 and not run.stderr, run.stderr
    assert_prints_reference(run.stdout, g, dtype)


def test_c_strict_amalgamated_file_is_the_library_then_the_model(tmp_path):
    """One translation unit: the header, the library's parts for the model's element type only (its
    self-includes pasted in), then the model text unchanged; no #include of graphc's files is left."""
    g = graphc.load(EXAMPLES[0].parent / "one_layer.toml")
    for dtype, dropped, off in (("float32", "double", "GC_KERNELS_DOUBLE"), ("float64", "float", "GC_KERNELS_FLOAT")):
        csrc = generate(g, *g.grad_spec, dtype=dtype)
        text = amalgamate(csrc)
        assert '#include "graphc_kernels' not in text
        library, model_part = text.split(f"/* ==== {g.name}.c ==== */\n")
        assert model_part == re.sub(r'#include "graphc_kernels.h"[^\n]*', "/* graphc_kernels.h: above, in this file */",
                                    csrc.source)
        assert library.index("#ifndef GRAPHC_KERNELS_H") < library.index("GC_KERNELS_API void gc_gemm_ex_T(")
        assert "#define GC_KERNELS_API static" in library and f"#define {off} 0\n" in library
        assert library.count("graphc_kernels.c, part 2,") == 1 and f"({dropped}: not used by this model)" in library
        assert library.count("graphc_kernels.c, part 3,") == 3   # one per instruction set
        assert library.count("GC_ISA_ATTR static void gc_pack_copy(") == 3


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
                                                     "graphc_kernels.h", "main.c", "Makefile", "mcu"}


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


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_c_strict_train_only_program_calls_train_step_alone_as_the_full_one_does(cc, tmp_path):
    """-DGRAPHC_TRAIN_ONLY (a training firmware): main.c declares only train_step's arrays and calls it
    alone, warning-free under -Werror, and prints the train steps and trained params the full
    program prints; --bad-label checks train_step alone. Each run of what it leaves out sits in one
    #ifndef GRAPHC_TRAIN_ONLY."""
    training = pytest.importorskip("graphc.native.training")
    spec = EXAMPLES[0].parent / "mlp.toml"
    m = graphc.compile(str(spec), dtype="float32", optimizer=training.Adam(lr=1e-3))
    full, only = tmp_path / "full", tmp_path / "train_only"
    for d in (full, only):
        m.export(d, standalone=True)
    flags = " ".join(["-O2", *STRICT])
    run_full = make(full, cc, flags)
    run_only = make_example(only, compiler(cc), flags, "-DGRAPHC_TRAIN_ONLY", objects=KERNEL_OBJECTS)
    assert run_full.returncode == 0 and run_only.returncode == 0, run_only.stderr
    everything, trained = parse_example_output(run_full.stdout), parse_example_output(run_only.stdout)
    assert {f for f, _ in everything} >= {"forward", "predict", "value_and_grad"}
    want = {k: v for k, v in everything.items() if k[0].startswith(("train_step", "trained"))}
    assert want and set(trained) == set(want)
    for k, v in want.items():
        assert list(trained[k]) == list(v), k       # the same printed digits
    main_c = (only / "main.c").read_text()
    assert "d_W1" not in main_c.split("#ifndef GRAPHC_TRAIN_ONLY", 1)[0]
    # one #ifndef a run of what the train-only build leaves out: the gradients' arrays, the calls
    # run makes and those bad_label makes before train_step
    assert main_c.count("#ifndef GRAPHC_TRAIN_ONLY") == 3 and "#endif\n#ifndef GRAPHC_TRAIN_ONLY" not in main_c
    bad = subprocess.run(["./mlp_example", "--bad-label"], cwd=only, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 0 and "mlp_train_step with" in bad.stdout and "mlp_forward" not in bad.stdout, bad.stdout


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
KERNEL_ENTRY_POINTS = re.compile(r"^(gc_gemm(_ex|_bias_act|_pack_elems)?_[fd]|gc_sample_[fd]|gc_random_bits|gc_size_poly"
                                 r"|gc_kernels_threads|gc_kernels_busy_hold|gc_kernels_note_wait)$")   # the .h's


# The kernel library's one state, with OpenMP: the atomic hint that the machine is busy (graphc_kernels.h,
# gc_kernels_threads and gc_kernels_busy_hold). It changes how many threads run, never a result.
BUSY_MARK = {"gc_busy_until", "gc_busy_hold", "gc_busy_strikes", "gc_busy_times"}


def assert_no_state_allocator_or_io(directory: Path, obj: str, also_allowed=None, state_allowed=frozenset()) -> set[str]:
    """The object's undefined symbols are libm, memset/memcpy and OpenMP's runtime (and also_allowed);
    it has no data or bss symbols but those named in state_allowed. Returns its defined text symbols."""
    symbols = subprocess.run(["nm", obj], cwd=directory, capture_output=True, text=True).stdout.splitlines()
    undefined = {line.split()[-1] for line in symbols if line.split()[0] == "U"}
    unexpected = [s for s in undefined if not ALLOWED_UNDEFINED.match(s) and not (also_allowed and also_allowed.match(s))]
    assert not unexpected, sorted(undefined)
    state = [line for line in symbols if len(line.split()) == 3 and line.split()[1] in "BbDdCc"
             and line.split()[2] not in state_allowed]
    assert not state, state
    return {line.split()[2] for line in symbols if len(line.split()) == 3 and line.split()[1] == "T"}


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_c_strict_emitted_object_keeps_no_state_and_calls_no_allocator_or_io(spec, tmp_path):
    """The promise of the header: no global mutable state (no data or bss symbols), no malloc, no
    printing. The model object's undefined symbols are libm, memset/memcpy, OpenMP's runtime and
    the kernel library's entry points; the library's own object and the amalgamated one need
    nothing more (and the amalgamated one exports only the model's functions)."""
    g = graphc.load(str(spec))
    csrc = generate(g, *g.grad_spec, threads=2, optimizer=graphc.Adam(lr=1e-3))
    write_sources(g, csrc, tmp_path, amalgamated=False)
    (tmp_path / "amalgamated.c").write_text(amalgamate(csrc))
    for flags in ([], ["-fopenmp"], ["-march=native", "-fopenmp"]):
        run = gcc([*STRICT, "-O2", *flags, "-c", f"{g.name}.c", "-o", "m.o"], tmp_path)
        assert run.returncode == 0, run.stderr
        assert_no_state_allocator_or_io(tmp_path, "m.o", KERNEL_ENTRY_POINTS)
    # the amalgamated file holds the whole library: once, with every instruction set and OpenMP
    # (the library's own object under each flag set is the next test's: it is the same for every model)
    run = gcc([*STRICT, "-O2", "-fopenmp", "-c", "amalgamated.c", "-o", "a.o"], tmp_path)
    assert run.returncode == 0, run.stderr
    exported = assert_no_state_allocator_or_io(tmp_path, "a.o", state_allowed=BUSY_MARK)
    assert all(s.startswith(f"{g.name}_") for s in exported), sorted(exported)


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm (binutils)")
@pytest.mark.parametrize("flags", [[], ["-fopenmp"], ["-march=native", "-fopenmp"]], ids=["plain", "openmp", "native"])
def test_c_strict_kernel_library_object_keeps_no_state_and_calls_no_allocator_or_io(flags, tmp_path):
    """graphc_kernels.c, the same text for every model: no data or bss symbols but the busy mark
    (with OpenMP), no allocator, no
    I/O, and it exports exactly its entry points."""
    lib = kernel_library()
    (tmp_path / lib.source_name).write_text(lib.source)
    (tmp_path / lib.header_name).write_text(lib.header)
    run = gcc([*STRICT, "-O2", *flags, "-c", lib.source_name, "-o", "k.o"], tmp_path)
    assert run.returncode == 0, run.stderr
    exported = assert_no_state_allocator_or_io(tmp_path, "k.o", state_allowed=BUSY_MARK if "-fopenmp" in flags else ())
    assert {s for s in exported if KERNEL_ENTRY_POINTS.match(s)} == {
        f"gc_gemm{kind}_{t}" for kind in ("", "_ex", "_bias_act", "_pack_elems") for t in "fd"} | {
        "gc_random_bits", "gc_sample_f", "gc_sample_d", "gc_size_poly", "gc_kernels_threads", "gc_kernels_busy_hold",
        "gc_kernels_note_wait"}


def test_c_strict_c_string_reads_back_as_the_text_it_was_given(tmp_path):
    """cprint.c_string (the templates' filter c_string) makes a C string literal of any text: a C99
    program printing the literals of texts with quotes, backslashes, line breaks, trigraph-like
    "??" runs, control characters, non-ASCII and octal-looking digits after an escape compiles
    warning-free (trigraphs on under -std=c99) and writes back each text's UTF-8 bytes exactly."""
    import random

    from graphc.backend.cprint import c_string
    texts = ['', 'plain', 'a "quoted" \\back\\slash', 'two\nlines\r\n\ttab', '??/ ??= ??( ??) ??! ??< ??> ??- ???/',
             'é1 — 7ü \x01\x7f9 \x00end', "it's /* not a comment */"]
    alphabet = '?\\"\n\'/=0123456789aé—\x00\x1b\t'
    draw = random.Random(11)
    texts += ["".join(draw.choice(alphabet) for _ in range(draw.randrange(1, 24))) for _ in range(200)]
    rows = ",\n".join(f"    {{ {c_string(t)}, {len(t.encode())} }}" for t in texts)
    source = tmp_path / "strings.c"
    source.write_text("#include <stdio.h>\n\nstatic const struct { const char *s; unsigned long n; } texts[] = {\n"
                      f"{rows}\n}};\n\nint main(void)\n{{\n    unsigned long i;\n"
                      "    for (i = 0; i < sizeof texts / sizeof texts[0]; ++i) {\n"
                      "        fwrite(texts[i].s, 1, texts[i].n, stdout);\n        putchar(0xff);\n    }\n"
                      "    return 0;\n}\n")
    for cc in ("gcc", "clang"):
        if shutil.which(cc) is None:
            continue
        program = tmp_path / f"strings_{cc}"
        built = subprocess.run([cc, *STRICT, str(source), "-o", str(program)], capture_output=True, text=True)
        assert built.returncode == 0 and not built.stderr, built.stderr
        out = subprocess.run([str(program)], capture_output=True, check=True).stdout
        assert out.split(b"\xff")[:-1] == [t.encode() for t in texts], cc


ALL_UPDATES_IN_GEMMS = """
name = "sgd_in_gemms"
[dims]
N = "batch"
D = 3
[inputs]
x = ["N", "D"]
[params]
W = ["D", "D"]
[graph]
J = "mean(x @ W.T)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["W"]
"""


@pytest.mark.parametrize("cc", COMPILERS)
def test_c_strict_plain_sgd_that_updates_every_param_in_its_gemm_defines_no_unused_update(cc, tmp_path):
    """Plain SGD updates a weight in the GEMM that computes its gradient; a model whose params are
    all such weights calls no gc_sgd_update, so the train step's C must not define it (it did:
    -Wunused-function broke the standalone build under -Werror; found by the fuzzer, seed 12).
    With a bias (updated by gc_sgd_update) it is defined and called."""
    compiler(cc)
    with_bias = ALL_UPDATES_IN_GEMMS.replace('W = ["D", "D"]', 'W = ["D", "D"]\nb = ["D"]').replace(
        '"mean(x @ W.T)"', '"mean(x @ W.T + b)"').replace('wrt = ["W"]', 'wrt = ["W", "b"]')
    for spec, called in ((ALL_UPDATES_IN_GEMMS, False), (with_bias, True)):
        g = graphc.parse_spec(spec, "sgd_in_gemms.toml")
        csrc = generate(g, *g.grad_spec, dtype="float32", optimizer=graphc.SGD(lr=0.1))
        assert ("gc_sgd_update(" in csrc.source) == called
        write_sources(g, csrc, tmp_path, amalgamated=False)
        run = run_cc(cc, [*STRICT, "-O2", "-c", f"{g.name}.c", "-o", f"{g.name}.o"], tmp_path)
        assert run.returncode == 0 and not run.stderr, run.stderr
