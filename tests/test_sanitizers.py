"""Every example, and five hypothesis-generated specs, run clean under AddressSanitizer and
UndefinedBehaviorSanitizer: the exported standalone main.c is the harness (forward and
value_and_grad, batch 4 and 37; the generated specs at batch 1 and 37), and an out-of-range
label makes each function return GRAPHC_ERR_LABEL before touching memory."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import numpy as np

import graphc
from graphc.backend.codegen import prediction_graph
from graphc.native.export import EXAMPLE_FUNCTIONS, example_arrays, example_summary, parse_example_output, summary_close
from test_fuzz_spec import generated_specs
from conftest import SMALL_EXAMPLES

EXAMPLES = list(SMALL_EXAMPLES)
# and a wide softmax: the threaded kernel forms the examples are too small for
EXAMPLES += [Path(__file__).resolve().parent / "specs" / "many_classes.toml"]
EXAMPLES += [Path(__file__).resolve().parent / "specs" / "small_cnn.toml"]      # im2col, grouped GEMMs, col2im
EXAMPLES += [Path(__file__).resolve().parent / "specs" / "small_attention.toml"]    # the attention kernels
EXAMPLES += [Path(__file__).resolve().parent / "specs" / "seq_gpt.toml"]   # batched GEMMs, strided softmax, wpe[:T]
SANITIZE = "-std=c99 -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
CONFIGS = {"float64": "", "float32-native": "-march=native"}    # portable and vector GEMM paths
ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
       "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
REPORTS = ("AddressSanitizer", "LeakSanitizer", "runtime error", "UndefinedBehaviorSanitizer")


def _sanitizers_work() -> bool:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        return False
    probe = subprocess.run(["gcc", "-fsanitize=address,undefined", "-x", "c", "-", "-o", os.devnull],
                           input="int main(void) { return 0; }\n", capture_output=True, text=True)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _sanitizers_work(), reason="needs gcc with ASan/UBSan, and make")


@functools.lru_cache(maxsize=None)
def model(spec: str, dtype: str):
    return graphc.compile(spec, dtype=dtype)


def build(spec: Path, config: str, directory: Path, batch: int | None = None) -> tuple[graphc.CompiledModel, Path]:
    return make_example(model(str(spec), config.split("-")[0]), config, directory, batch)


def make_example(m: graphc.CompiledModel, config: str, directory: Path, batch: int | None = None
                 ) -> tuple[graphc.CompiledModel, Path]:
    """m exported standalone into `directory` and its main.c built with the sanitizers."""
    m.export(directory, standalone=True)
    flags = f"{SANITIZE} {CONFIGS[config]}" + (f" -DBATCH={batch}L" if batch else "")
    run = subprocess.run(["make", "-s", "CC=gcc", f"CFLAGS={flags}", f"{m.name}_example"], cwd=directory,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return m, directory / f"{m.name}_example"


def run_clean(program: Path, *args: str) -> str:
    run = subprocess.run([str(program), *args], cwd=program.parent, env=ENV, capture_output=True, text=True,
                         timeout=300)
    reports = [word for word in REPORTS if word in run.stderr]
    assert run.returncode == 0 and not reports, f"exit {run.returncode}, {reports}:\n{run.stderr[-4000:]}"
    return run.stdout


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_sanitizers_example_runs_clean(spec, config, tmp_path):
    m, program = build(spec, config, tmp_path)
    results = parse_example_output(run_clean(program))
    assert ("forward", next(iter(m.graph.outputs))) in results
    assert any(function == "value_and_grad" for function, _ in results)
    if m.graph.symbolic_dims:       # a prime batch: the edge tiles of every kernel
        program.unlink()
        _, program = build(spec, config, tmp_path, batch=37)
        assert parse_example_output(run_clean(program))


@pytest.mark.parametrize("spec", [p for p in EXAMPLES if p.stem in ("one_layer", "window_classifier")],
                         ids=lambda p: p.stem)
def test_sanitizers_out_of_range_label_returns_error_without_reports(spec, tmp_path):
    m, program = build(spec, "float64", tmp_path)
    out = run_clean(program, "--bad-label")
    lines = [line for line in out.splitlines() if "returned GRAPHC_ERR_LABEL" in line]
    # both bad values (-1 and the bound), for every function main.c calls that reads the ids: one_layer's
    # predict reads no labels (and returns GRAPHC_OK), the window classifier's reads the word ids
    readers = [f for f in EXAMPLE_FUNCTIONS if f in m.functions and m.functions[f].label_checks]
    assert len(lines) == 2 * len(readers), out
    assert ("predict" in readers) == (spec.stem == "window_classifier")
    assert out.count(f"{m.name}_predict with") == 2, out


def test_sanitizers_training_example_runs_clean(tmp_path):
    """With an optimizer (Adam: moments and an int64 step count), train_step runs clean too."""
    training = pytest.importorskip("graphc.native.training")
    m = graphc.compile(str(EXAMPLES[0].parent / "window_classifier.toml"), dtype="float32",
                       optimizer=training.Adam(lr=1e-2))
    m.export(tmp_path, standalone=True)
    run = subprocess.run(["make", "-s", "CC=gcc", f"CFLAGS={SANITIZE}", f"{m.name}_example"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    results = parse_example_output(run_clean(tmp_path / f"{m.name}_example"))
    losses = [results[(f"train_step:{step}", "loss")][0] for step in (1, 2, 3)]
    assert losses[2] < losses[0]


GENERATED = generated_specs(5)       # derandomized: the same five specs on every run
PRINT_TOLERANCE = {"float64": 1e-7, "float32": 1e-4}   # main.c prints 9 significant digits


@functools.lru_cache(maxsize=None)
def generated_model(i: int, dtype: str) -> graphc.CompiledModel:
    # threads=1, as tests/test_native_safety.py compiles them: one build serves both files
    return graphc.compile(graphc.parse_spec(GENERATED[i], f"generated{i}.toml"), dtype=dtype, threads=1)


@pytest.mark.parametrize("i", range(len(GENERATED)), ids=[f"generated{i}" for i in range(len(GENERATED))])
def test_sanitizers_generated_spec_runs_clean_at_batch_1_and_37(i, tmp_path):
    """Specs graphc was never tuned on: odd dims (1..7), fused chains, both GEMM paths (float64
    portable, float32 -march=native alternate); the numbers match the reference too."""
    config = ("float64", "float32-native")[i % 2]
    dtype = config.split("-")[0]
    m = generated_model(i, dtype)
    g = m.graph
    for batch in (1, 37):
        _, program = make_example(m, config, tmp_path / f"batch{batch}", batch)
        results = parse_example_output(run_clean(program))
        arrays = example_arrays(g, dtype, batch)
        reference = {("forward", k): v for k, v in graphc.evaluate(g, **arrays).items()}
        predict = prediction_graph(g)
        if predict is not None:
            reference.update({("predict", k): reference[("forward", k)] for k in predict.outputs})
        reference.update({("value_and_grad", k): v for k, v in
                          graphc.evaluate(graphc.grad(g, *g.grad_spec), **arrays).items()})
        assert set(results) == set(reference), sorted(set(results) ^ set(reference))
        for key, printed in results.items():
            # main.c prints a summary of each array (sums, a weighted sum, the first values)
            want = example_summary(np.asarray(reference[key], dtype=np.float64))
            assert summary_close(printed, want, PRINT_TOLERANCE[dtype]), f"batch {batch}, {key}: {printed} vs {want}"


def test_sanitizers_catch_an_out_of_bounds_write_in_a_generated_spec(tmp_path):
    """The check has teeth: the same build of a generated spec whose forward writes one element
    past the end of its output is reported."""
    m = generated_model(0, "float64")
    m.export(tmp_path, standalone=True)
    source = tmp_path / f"{m.name}.c"
    text = source.read_text()
    start = text.index(f"int {m.name}_forward(")    # the end of NAME_forward (the check function is above)
    broken = text[:start] + text[start:].replace(
        "    return GRAPHC_OK;\n}", f"    probs[n * {m.graph.dims['C']}] = 0;   /* one past the end */\n    return GRAPHC_OK;\n}}", 1)
    assert broken != text
    source.write_text(broken)
    run = subprocess.run(["make", "-s", "CC=gcc", f"CFLAGS={SANITIZE} -DBATCH=37L", f"{m.name}_example"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with pytest.raises(AssertionError, match="AddressSanitizer"):
        run_clean(tmp_path / f"{m.name}_example")


SPECS = Path(__file__).resolve().parent / "specs"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
# train_step of a CNN (im2col, grouped GEMMs, col2im, pooling, batch_norm's running statistics) and
# of sequence models (attention with a causal mask and wpe[:T]; a GRU's scan, forward and backward)
TRAINED = [SPECS / "small_cnn.toml", SPECS / "seq_gpt.toml", EXAMPLES_DIR / "gru.toml"]
MPIEXEC_DIR = Path(sys.executable).parent       # mpich's wheels put mpicc and mpiexec beside python


def trained_model(spec: Path, threads: int = 2) -> graphc.CompiledModel:
    return graphc.compile(str(spec), dtype="float64", optimizer=graphc.Adam(lr=1e-3, weight_decay=1e-2),
                          threads=threads)


def train_losses(printed: dict) -> list:
    steps = sorted(k for k in printed if k[0].startswith("train_step:"))
    return [printed[k] for k in steps]


@pytest.mark.parametrize("spec", TRAINED, ids=lambda p: p.stem)
def test_sanitizers_train_step_of_a_cnn_and_sequence_models_runs_clean(spec, tmp_path):
    """main.c's 3 Adam train steps (moments, step count, weight decay) of a CNN, an attention model
    and a GRU, under ASan and UBSan at batch 3: no report, and finite losses."""
    m, program = make_example(trained_model(spec), "float64", tmp_path, batch=3)
    losses = train_losses(parse_example_output(run_clean(program)))
    assert len(losses) >= 3 and all(np.isfinite(v).all() for v in losses), losses


def _mpi_tools():
    path = f"{MPIEXEC_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
    return shutil.which("mpicc", path=path), shutil.which("mpiexec", path=path), path


# MPI trains no model with state yet (batch_norm's statistics, dropout's step) nor a time-major one
# (a GRU's, seq_gpt's rows): attention batch-first, and small_cnn's convolutions, pooling and grouped GEMMs without its batch_norm and dropout
STATELESS_CNN = (SPECS / "small_cnn.toml").read_text().replace(
    "relu(batch_norm(conv2d(x, w1, padding=1), mean1, var1, gamma, beta))",
    "relu(conv2d(x, w1, gamma, padding=1))").replace("dropout(f, 0.2)", "f").replace(
    "[state]\nmean1 = [8]\nvar1 = [8]\n", "").replace("beta = [8]\n", "").replace(", \"beta\"]", "]")


@pytest.mark.parametrize("spec", ["cnn", SPECS / "small_attention.toml"], ids=lambda p: getattr(p, "stem", p))
def test_sanitizers_mpi_program_runs_clean_on_two_ranks(spec, tmp_path):
    """`make MPI=1`: main.c trained over 2 MPI ranks (the gradients summed by MPI_Allreduce, the update
    by NAME_mpi_update), each rank under ASan and UBSan: no report from any rank. Leaks are not
    checked here: MPICH keeps its own allocations to the end (the model allocates nothing)."""
    mpicc, mpiexec, path = _mpi_tools()
    if mpicc is None or mpiexec is None:
        pytest.skip("needs mpicc and mpiexec (pip install 'graphc[mpi]')")
    if spec == "cnn":
        spec = tmp_path / "small_cnn_stateless.toml"
        spec.write_text(STATELESS_CNN)
    m = trained_model(spec, threads=1)
    m.export(tmp_path, standalone=True)
    env = {**ENV, "PATH": path, "MPICH_CC": "gcc", "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"}
    build = subprocess.run(["make", "-s", "MPI=1", f"MPICC={mpicc}", f"CFLAGS={SANITIZE}", "CPPFLAGS=-DBATCH=6L",
                            f"{m.name}_mpi"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([mpiexec, "-n", "2", f"./{m.name}_mpi"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    reports = [word for word in REPORTS if word in run.stderr]
    assert run.returncode == 0 and not reports, f"exit {run.returncode}, {reports}:\n{run.stderr[-4000:]}"
    assert run.stdout.count("mpi rank") == 2, run.stdout[-2000:]


def test_sanitizers_convolution_images_shared_by_two_threads_run_clean(tmp_path):
    """A patch-planes convolution layer (tests/test_conv_planes.py's) built with OpenMP for 2
    threads, at batch 20: the images shared out, each thread's scratch in its own area of the
    workspace, the weight gradients over three chunks of images (the first thread's partial sum
    before those areas): no report, and main.c's outputs as the reference's."""
    from test_conv_planes import LAYER
    m = graphc.compile(graphc.parse_spec(LAYER, "planes_layer.toml"), dtype="float32", threads=2)
    m.export(tmp_path, standalone=True)
    flags = f"{SANITIZE} -march=native -fopenmp -DGC_MAX_THREADS=2 -DBATCH=20L"
    run = subprocess.run(["make", "-s", "CC=gcc", f"CFLAGS={flags}", f"{m.name}_example"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    env = {**ENV, "OMP_NUM_THREADS": "2"}
    run = subprocess.run([str(tmp_path / f"{m.name}_example")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and not [w for w in REPORTS if w in run.stderr], run.stderr[-4000:]
    printed = parse_example_output(run.stdout)
    g = m.graph
    want = graphc.evaluate(graphc.grad(g, *g.grad_spec), **example_arrays(g, "float32", 20))
    grads = [k for k in printed if k[0] == "value_and_grad" and k[1].startswith("d_")]
    assert len(grads) == 4, sorted(printed)
    for key in grads:
        assert summary_close(printed[key], example_summary(np.asarray(want[key[1]], dtype=np.float64)), 1e-3), key
