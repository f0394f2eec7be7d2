"""The differential fuzzer: random valid specs (graphc/tools/fuzz_specs.py), each compiled and
checked every way graphc can be checked (docs/fuzzing.md).

A case is a spec plus a batch size, a data seed, the optimizers to train with and the
standalone compilers to try. `run_case` checks, in float64:

- the reference: the spec loads, graphc.grad and graphc.evaluate run and give finite numbers
  (else the generator left the valid domain: kind "generator"), and the reference gradients
  agree with central finite differences on a sample of entries (at a small batch);
- per optimizer, a model compiled with it for 2 threads and called with OpenMP at 2 threads:
  forward, predict (when the model has one: the outputs that need no labels or targets, or no
  data at all) and value_and_grad against the reference; train_step over 3 steps against
  graphc.train_graph evaluated by graphc.evaluate (outputs, params and optimizer state after
  each step);
- threads: the first model's forward, predict, value_and_grad and 3 train steps in the same
  bits with OpenMP at 1 thread as at 2, and (case.threads1, a sub-sample in the suite's slice)
  in the same bits as the model compiled for 1 thread (graphc.compile(..., threads=1));
- on a sub-sample, the standalone export (main.c and its Makefile) built with gcc and with
  clang under -Werror: it prints what the extension computes on main.c's inputs (forward,
  predict, value_and_grad and the losses of its 3 train steps), and `--bad-label` passes.

A failing check raises `Failure(kind, message)`. A GraphcError where none is due is kind
"graphc-error"; any other exception from inside graphc is "crash" (from the fuzzer's own code,
"fuzzer-bug").

`campaign()` runs cases in J processes, each a hypothesis run over `cases()` (so a failure
shrinks to a minimal spec), writes each failure as a spec file that holds the case and the
command that reruns it, and returns a `Summary`. From the shell:

    python -m graphc.fuzz --cases N --seed S --jobs J [--out DIR]
    python -m graphc.fuzz --replay FILE
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from graphc.core.errors import GraphcError

RTOL = 1e-9                 # C vs reference, relative to the array's largest magnitude ...
ATOL = 1e-12                # ... plus this times the case's scale (its largest intermediate value)
PRINT_RTOL = 1e-7           # main.c prints 9 significant digits
FD_SAMPLES = 6              # entries perturbed per differentiated array
FD_BATCH = 3                # rows of the finite-difference check (it judges the reference's math)
FD_EPS = (1e-6, 1e-7)       # a mismatch must hold at both steps (one may straddle a relu's kink)
FD_TOLERANCE = 1e-6
TRAIN_STEPS = 3
STANDALONE_BATCH = 5
COMPILERS = ("gcc", "clang")
TIMEOUT = 600


def _api():
    """The public calls the checks make, from their own layers (tools may not import graphc/__init__)."""
    from types import SimpleNamespace
    from graphc.autodiff.grad import grad
    from graphc.autodiff.train import train_graph
    from graphc.core.reference import evaluate
    from graphc.frontend.spec import parse_spec
    from graphc.native.runtime import compile
    return SimpleNamespace(parse_spec=parse_spec, grad=grad, train_graph=train_graph, evaluate=evaluate, compile=compile)


def _optimizers():
    from graphc.autodiff.optimizers import SGD, Adam
    # Plain SGD updates inside the gradient GEMMs; the others in loops. Adam's eps is not tiny and its
    # weight decay is on, so a gradient that is rounding noise around zero takes no lr-sized step.
    return {"sgd": SGD(lr=0.05),
            "momentum": SGD(lr=0.02, momentum=0.9, weight_decay=1e-3),
            "sgd-decay": SGD(lr=0.05, weight_decay=1e-2),
            "adam": Adam(lr=1e-2, eps=1e-6, weight_decay=1e-2)}


OPTIMIZER_NAMES = ("sgd", "momentum", "sgd-decay", "adam")


# ====================================================================== cases
@dataclass
class Case:
    spec: str                               # the TOML text
    batch: int = 5
    seed: int = 0
    optimizers: tuple[str, ...] = ("sgd",)
    threads1: bool = True                   # the first model also compiled for 1 thread, and its bits compared
    standalone: tuple[str, ...] = ()        # compilers of the standalone check
    entries: tuple[str, ...] = ()           # what the generator drew (not part of the file)

    HEADER = "# graphc fuzz case: "

    def options(self) -> dict:
        return dict(batch=self.batch, seed=self.seed, optimizers=list(self.optimizers), threads1=self.threads1,
                    standalone=list(self.standalone))

    def text(self, path: str | None = None, failure: "Failure | None" = None) -> str:
        """The case as a spec file: comments with the case and the command that reruns it."""
        lines = [self.HEADER + json.dumps(self.options()),
                 f"# rerun: python -m graphc.fuzz --replay {path or 'THIS_FILE'}"]
        if failure is not None:
            lines.append(f"# failure: {failure.kind}")
            lines += [f"#   {line}" for line in failure.message.splitlines()[:30]]
        return "\n".join(lines) + "\n" + self.spec

    @classmethod
    def parse(cls, text: str) -> "Case":
        """A case file (or any spec: then the defaults)."""
        options = {}
        for line in text.splitlines():
            if line.startswith(cls.HEADER):
                options = json.loads(line[len(cls.HEADER):])
        spec = "\n".join(line for line in text.splitlines() if not line.startswith("#")) + "\n"
        return cls(spec, int(options.get("batch", 5)), int(options.get("seed", 0)),
                   tuple(options.get("optimizers", ["sgd"])), bool(options.get("threads1", True)),
                   tuple(options.get("standalone", [])))

    def __repr__(self) -> str:          # what hypothesis prints for a falsifying example
        return f"Case(options={self.options()}, spec=\n{self.spec})"


class Failure(Exception):
    """A check failed. `kind` names the check ("forward", "threads", "crash", ...)."""

    def __init__(self, kind: str, message: str, signature: str | None = None):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message
        self.signature = signature or kind


_FAILURE_TYPES: dict[str, type] = {}


def failure_type(signature: str) -> type:
    """A Failure subclass per signature: hypothesis keeps shrinking toward the same failure
    (it tells failures apart by exception type and place)."""
    t = _FAILURE_TYPES.get(signature)
    if t is None:
        t = _FAILURE_TYPES[signature] = type("Failure_" + re.sub(r"\W+", "_", signature)[:60], (Failure,), {})
    return t


@contextlib.contextmanager
def step(what: str):
    """Failures pass through; a GraphcError becomes kind "graphc-error", anything else "crash",
    each signed by the step, the exception type and the innermost graphc frame."""
    try:
        yield
    except Failure:
        raise
    except GraphcError as e:
        frame = _graphc_frame(e)
        text = str(e)
        first = next((line.strip() for line in text.splitlines() if " error: " in line), "")   # a C compiler's
        raise Failure("graphc-error", f"{what}: {type(e).__name__}" + (f": {first}" if first else "")
                      + f"\n{text}\n  raised at {frame}", f"graphc-error {what} {type(e).__name__} {frame}") from e
    except Exception as e:    # noqa: BLE001: what the fuzzer is for
        frame = _graphc_frame(e)
        kind = "fuzzer-bug" if "tools/fuzz" in frame else "crash"     # the fuzzer's own code failed
        tail = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
        raise Failure(kind, f"{what}: {type(e).__name__}: {e}\n  raised at {frame}\n{tail}",
                      f"{kind} {what} {type(e).__name__} {frame}") from e


def _graphc_frame(e: BaseException) -> str:
    """file:line (function) of the innermost frame in graphc's own files."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/graphc/" in f.filename]
    if not frames:
        return "outside graphc"
    f = frames[-1]
    return f"{f.filename[f.filename.rindex('/graphc/') + 1:]}:{f.lineno} ({f.name})"


# ====================================================================== data
def arrays(graph, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """float64 inputs and params by the generator's names: x real N(0, 1); p positive in
    [0.5, 1.5]; t target rows that sum to 1; int32 labels and ids within the bounds the ops set;
    params N(0, 1/last dim) for matrices, N(0, 1/4) else; model state (running statistics) in
    [0.5, 1.5], dropout's step count an integer in [0, 1000). Other names: real N(0, 1)."""
    from graphc.native.export import label_bounds
    from graphc.ops.dropout import STEP
    bounds = label_bounds(graph)
    out = {}
    for name, v in {**graph.inputs, **graph.params}.items():
        shape = tuple(n if isinstance(d, str) else d for d in v.shape)
        if v.dtype == "int32":
            out[name] = np.asarray(rng.integers(0, bounds[name], size=shape), dtype=np.int32)
        elif name == STEP:                           # dropout's step count: a count
            out[name] = np.array(float(rng.integers(0, 1000)))
        elif name in graph.states:                   # running statistics (a variance is positive)
            out[name] = rng.uniform(0.5, 1.5, size=shape)
        elif name in graph.params:
            out[name] = rng.standard_normal(shape) / (math.sqrt(shape[-1]) if len(shape) >= 2 else 2.0)
        elif re.fullmatch(r"p\d+", name):
            out[name] = rng.uniform(0.5, 1.5, size=shape)
        elif re.fullmatch(r"t\d+", name):
            e = np.exp(rng.standard_normal(shape))
            out[name] = e / e.sum(axis=-1, keepdims=True) if shape else np.ones(())
        else:
            out[name] = rng.standard_normal(shape)
        out[name] = np.array(out[name], dtype=out[name].dtype if v.dtype == "int32" else np.float64)   # 0-d too
    return out


def _max_abs(values) -> float:
    m = 0.0
    for v in values:
        a = np.asarray(v)
        if a.size and a.dtype.kind == "f":
            m = max(m, float(np.max(np.abs(a))))
    return m


def compare(kind: str, what: str, actual, expected, scale: float, rtol: float = RTOL) -> None:
    """actual within rtol * max|expected| + ATOL * scale of expected, NaN where it is NaN."""
    from graphc.tools.check import worst_entry
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise Failure(kind, f"{what}: shape {actual.shape}, expected {expected.shape}")
    if actual.size == 0:
        return
    if not np.array_equal(np.isnan(actual), np.isnan(expected)):
        raise Failure(kind, f"{what}: NaN where the expected array has none (or the reverse); "
                      + worst_entry(actual, expected, "got"))
    finite = ~np.isnan(expected)
    diff = np.abs(actual[finite] - expected[finite])
    err = float(np.max(diff)) if diff.size else 0.0
    if diff.size and not np.all(np.isfinite(diff)):
        same = actual[finite] == expected[finite]            # the same infinities agree
        err = float(np.max(np.where(same, 0.0, np.where(np.isfinite(diff), diff, np.inf))))
    tol = rtol * _max_abs([expected[finite & np.isfinite(expected)]]) + ATOL * scale
    if not err <= tol:
        raise Failure(kind, f"{what}: max abs error {err:.3e} > tolerance {tol:.3e}; "
                      + worst_entry(actual, expected, "got"))


def same_bits(kind: str, what: str, a: dict, b: dict) -> None:
    if a.keys() != b.keys():
        raise Failure(kind, f"{what}: keys {sorted(a)} and {sorted(b)}")
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape or x.tobytes() != y.tobytes():
            from graphc.tools.check import worst_entry
            raise Failure(kind, f"{what}: {k} differs; " + worst_entry(y, x, "2 threads"))


# ====================================================================== one case
@dataclass
class CaseResult:
    ops: Counter = field(default_factory=Counter)        # the forward graph's nodes by op
    checks: Counter = field(default_factory=Counter)     # checks made, by name
    seconds: Counter = field(default_factory=Counter)    # time by phase
    nodes: int = 0


def _omp():
    """libgomp's omp_set_num_threads / omp_get_max_threads, or None (then the thread count is
    whatever OMP_NUM_THREADS says)."""
    try:
        lib = ctypes.CDLL("libgomp.so.1")
        return lib.omp_set_num_threads, lib.omp_get_max_threads
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def omp_threads(n: int):
    omp = _omp()
    if omp is None:
        yield int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
        return
    set_threads, get_threads = omp
    before = get_threads()
    set_threads(n)
    try:
        yield get_threads()
    finally:
        set_threads(before)


class _Timer:
    def __init__(self, result: CaseResult):
        self.result = result

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.result.seconds[phase] += time.perf_counter() - t0


STAGES = ("reference", "finite differences", "models", "threads", "standalone")   # in the order run_case runs them
NEEDS = {"reference": (), "finite differences": ("reference",), "models": ("reference",),
         "threads": ("reference", "models"), "standalone": ("reference", "models")}


def run_case(case: Case, workdir: str | os.PathLike | None = None, only: str | None = None,
             compilers: tuple[str, ...] | None = None) -> CaseResult:
    """Every check of one case, or only those of stage `only` and the stages it needs (what a
    shrink of a failure in that stage reruns; `compilers`: of the standalone check, those of
    case.standalone to run); raises Failure, its `stage` set, at the first check that fails."""
    if compilers is not None:
        case = Case(case.spec, case.batch, case.seed, case.optimizers, case.threads1,
                    tuple(c for c in case.standalone if c in compilers), case.entries)
    result = CaseResult()
    stage = ["reference"]
    wanted = set(STAGES) if only is None else {only, *NEEDS[only]}
    try:
        _run_stages(case, workdir, result, wanted, stage)
    except Failure as f:
        f.stage = stage[0]
        raise
    return result


def _run_stages(case: Case, workdir, result: CaseResult, wanted: set, stage: list) -> None:
    api = _api()
    from graphc.backend.codegen import prediction_graph
    from graphc.core.reference import evaluate_values
    timer = _Timer(result)

    def enter(name: str) -> bool:
        stage[0] = name
        return name in wanted

    with timer("reference"):
        with step("load"):
            try:
                g = api.parse_spec(case.spec, "fuzz.toml")
            except GraphcError as e:
                raise Failure("spec-rejected", f"{type(e).__name__}: {e}") from e
        result.ops.update(n.op.name for n in g.nodes)
        result.nodes = len(g.nodes)
        if g.grad_spec is None:
            raise Failure("generator", "the spec has no [grad]")
        of, wrt = g.grad_spec
        data = arrays(g, case.batch, np.random.default_rng(case.seed))
        with step("reference"):
            bwd = api.grad(g, of, wrt)
            values = evaluate_values(bwd, data)
            ref = {k: values[v.name] for k, v in bwd.outputs.items()}
            fwd_ref = {k: ref[k] for k in g.outputs}
        bad = [k for k, v in values.items() if np.asarray(v).dtype.kind == "f" and not np.all(np.isfinite(v))]
        if bad:
            raise Failure("generator", f"the reference computes non-finite values: {', '.join(bad[:5])}")
        scale = max(1.0, _max_abs(values.values()))
    if enter("finite differences"):
        with timer("finite differences"), step("finite differences"):
            finite_differences(g, of, wrt, case, result)
    if not enter("models"):
        return
    predict = prediction_graph(g)
    models = {}
    shrinking_later_stage = "finite differences" not in wanted and bool(wanted & {"threads", "standalone"})
    names = case.optimizers[:1] if shrinking_later_stage else case.optimizers    # they need the first model only
    for name in names:
        optimizer = _optimizers()[name]
        with timer("build"), step(f"compile with {name}"):
            m = models[name] = api.compile(g, dtype="float64", optimizer=optimizer, threads=2)
        with timer("calls"), omp_threads(2):
            calls = check_calls(m, g, data, fwd_ref, ref, predict, scale, result)
            if name == case.optimizers[0]:
                first_calls = calls
            else:           # the same C functions in another build: the same bits
                same_bits("builds", f"forward with {name} vs {case.optimizers[0]}", calls[0], first_calls[0])
                same_bits("builds", f"value_and_grad with {name} vs {case.optimizers[0]}", calls[2], first_calls[2])
        with timer("train"), omp_threads(2):
            check_train(m, g, name, optimizer, data, case, scale, result)
    if case.optimizers and enter("threads"):
        name = case.optimizers[0]
        two = models[name]
        with timer("threads"):
            same_thread_bits(two, 1, two, 2, g, data, predict, case, result, "OpenMP 1 vs 2 threads")
        if case.threads1:
            with timer("build"), step(f"compile with {name} for 1 thread"):
                one = api.compile(g, dtype="float64", optimizer=_optimizers()[name], threads=1)
            with timer("threads"):
                same_thread_bits(one, 1, two, 2, g, data, predict, case, result, "threads=1 vs threads=2 builds")
    if case.standalone and enter("standalone"):
        m = models[case.optimizers[0]]
        for cc in case.standalone:
            if shutil.which(cc) is None or shutil.which("make") is None:
                result.checks[f"standalone {cc} (skipped: not installed)"] += 1
                continue
            with timer(f"standalone {cc}"):
                check_standalone(m, g, predict, cc, workdir, case, result)


def check_calls(m, g, data, fwd_ref, ref, predict, scale, result):
    """forward, predict and value_and_grad against the reference; returns their results."""
    with step("forward"):
        fwd = m.forward(**data)
    if set(fwd) != set(g.outputs):
        raise Failure("forward", f"outputs {sorted(fwd)}, expected {sorted(g.outputs)}")
    for k, v in fwd.items():
        compare("forward", f"forward {k}", v, fwd_ref[k], scale)
    result.checks["forward"] += 1
    pred = {}
    if predict is not None:
        args = {k: data[k] for k in [*predict.inputs, *predict.params]}
        with step("predict"):
            pred = m.predict(**args)
        if set(pred) != set(predict.outputs):
            raise Failure("predict", f"predict({', '.join(args)}) gave {sorted(pred)}, expected {sorted(predict.outputs)}")
        with step("predict's graph evaluated"):     # inference: batch_norm's running statistics, no dropout
            pred_ref = _api().evaluate(predict, **args)
        for k, v in pred.items():
            compare("predict", f"predict {k}", v, pred_ref[k], scale)
        result.checks["predict"] += 1
        if not predict.inputs:
            result.checks["predict from the params alone"] += 1
    with step("value_and_grad"):
        outs, grads = m.value_and_grad(**data)
    for k, v in outs.items():
        compare("value_and_grad", f"value_and_grad {k}", v, ref[k], scale)
    for w, v in grads.items():
        compare("value_and_grad", f"value_and_grad d_{w}", v, ref[f"d_{w}"], scale)
    if set(grads) != set(g.grad_spec[1]):
        raise Failure("value_and_grad", f"gradients {sorted(grads)}, expected {sorted(g.grad_spec[1])}")
    result.checks["value_and_grad"] += 1
    return fwd, pred, {**outs, **{f"d_{w}": v for w, v in grads.items()}}


def _batches(g, case: Case, salt: int) -> list[dict]:
    rng = np.random.default_rng([case.seed, salt])
    out = []
    for _ in range(TRAIN_STEPS):
        a = arrays(g, case.batch, rng)
        out.append({k: a[k] for k in g.inputs})
    return out


def check_train(m, g, name, optimizer, data, case: Case, scale: float, result: CaseResult) -> None:
    """TRAIN_STEPS train steps against graphc.train_graph evaluated by graphc.evaluate: each
    step's outputs, and every updated param and optimizer state after it."""
    api = _api()
    of, wrt = g.grad_spec
    with step(f"train_graph {name}"):
        tg = api.train_graph(g, of, wrt, optimizer)
    params = {k: data[k] for k in g.params}
    with step(f"train_state {name}"):
        state = m.train_state(params)
    current = {inp: (params[key] if key in params else np.zeros(tg.inputs[inp].shape))
               for key, (inp, _out) in tg.updates.items()}
    frozen = {k: v for k, v in params.items() if k not in tg.updates}
    kind = f"train_step {name}"
    for i, batch in enumerate(_batches(g, case, 1), 1):
        with step(f"train_step {name} #{i}"):
            outs = m.train_step(state, **batch)
        with step(f"train_graph {name} evaluated, step {i}"):
            expected = api.evaluate(tg, **batch, **frozen, **current)
        for k, v in outs.items():
            compare(kind, f"step {i}: output {k}", v, expected[k], scale)
        for key, (inp, out) in tg.updates.items():
            got = state.params[key] if key in state.params else state.buffers[key]
            want = expected[out]
            if np.size(got) == np.size(want):      # Adam's step count: C's int64[1], the IR's scalar
                want = np.reshape(want, np.shape(got))
            compare(kind, f"step {i}: {key}", got, want, scale)
            current[inp] = expected[out]
    result.checks[f"train_step {name}"] += 1


def same_thread_bits(a, threads_a: int, b, threads_b: int, g, data, predict, case: Case, result: CaseResult,
                     label: str) -> None:
    """Model a called with OpenMP at threads_a gives model b's bits at threads_b: forward,
    predict, value_and_grad and the train steps (outputs, params, optimizer state after each)."""
    def calls(m, threads):
        out = {}
        with omp_threads(threads) as got:
            with step(f"{label}: forward"):
                out["forward"] = m.forward(**data)
            if predict is not None:
                with step(f"{label}: predict"):
                    out["predict"] = m.predict(**{k: data[k] for k in [*predict.inputs, *predict.params]})
            with step(f"{label}: value_and_grad"):
                o, d = m.value_and_grad(**data)
            out["value_and_grad"] = {**o, **{f"d_{w}": v for w, v in d.items()}}
            state = m.train_state({k: data[k] for k in g.params})
            for i, batch in enumerate(_batches(g, case, 2), 1):
                with step(f"{label}: train_step #{i}"):
                    out[f"train_step #{i} outputs"] = m.train_step(state, **batch)
                out[f"train_step #{i} params"] = {k: v.copy() for k, v in state.params.items()}
                out[f"train_step #{i} optimizer state"] = {k: v.copy() for k, v in state.buffers.items()}
        return out, got

    (x, got_a), (y, got_b) = calls(a, threads_a), calls(b, threads_b)
    for what in x:
        same_bits("threads", f"{label}: {what}", x[what], y[what])
    result.checks[label if max(got_a, got_b) >= 2 else f"{label} (OpenMP gave 1 thread)"] += 1


STANDALONE_FLAGS = "-O2 -std=c99 -Wall -Wextra -Werror -pedantic -fno-math-errno"


def check_standalone(m, g, predict, cc: str, workdir, case: Case, result: CaseResult) -> None:
    """m.export(dir, standalone=True), built by make with `cc`, prints what the extension
    computes on main.c's inputs, and its --bad-label run passes."""
    from graphc.native.export import example_arrays, example_summary, parse_example_output
    kind = f"standalone {cc}"
    n = min(case.batch, STANDALONE_BATCH) if g.symbolic_dims else 1
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{cc}-", dir=workdir) as tmp:
        with step(f"export for {cc}"):
            m.export(tmp, standalone=True)
        make = ["make", "-s", f"CC={cc}", f"CFLAGS={STANDALONE_FLAGS} -DBATCH={n}L"]
        run = subprocess.run(make, cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT)
        if run.returncode != 0 or run.stderr.strip():
            first = next((line for line in run.stderr.splitlines() if "error" in line or "warning" in line), "")
            raise Failure(kind, f"make CC={cc} (exit {run.returncode}): {first.strip()}\n{run.stderr[-3000:]}",
                          f"{kind} build")
        printed = parse_example_output(run.stdout)
        bad = subprocess.run([f"./{m.name}_example", "--bad-label"], cwd=tmp, capture_output=True, text=True,
                             timeout=TIMEOUT)
        if bad.returncode != 0:
            raise Failure(kind, f"./{m.name}_example --bad-label (exit {bad.returncode}):\n{bad.stderr[-2000:]}",
                          f"{kind} bad-label")
    a = example_arrays(g, "float64", n)
    with step(f"extension on main.c's inputs ({cc})"):
        expected = {("forward", k): v for k, v in m.forward(**a).items()}
        if predict is not None:
            expected.update({("predict", k): v for k, v in
                             m.predict(**{k: a[k] for k in [*predict.inputs, *predict.params]}).items()})
        outs, grads = m.value_and_grad(**a)
        expected.update({("value_and_grad", k): v for k, v in outs.items()})
        expected.update({("value_and_grad", f"d_{w}"): v for w, v in grads.items()})
        state = m.train_state({k: a[k] for k in g.params})
        batch = {k: a[k] for k in g.inputs}
        for i in range(1, 4):
            expected.update({(f"train_step:{i}", k): v for k, v in m.train_step(state, **batch).items()
                             if np.asarray(v).size == 1})
    if set(printed) != set(expected):
        raise Failure(kind, f"main.c printed {sorted(printed)}, expected {sorted(expected)}", f"{kind} printout")
    scale = max(1.0, _max_abs(expected.values()))
    for key, v in expected.items():
        # main.c prints a summary of each array (sums, a weighted sum, the first values)
        compare(kind, f"{key[0]} {key[1]}", printed[key], example_summary(np.asarray(v)), scale * 1e3, rtol=PRINT_RTOL)
    result.checks[kind] += 1


def finite_differences(g, of: str, wrt: list[str], case: Case, result: CaseResult) -> None:
    """The reference's gradients against central differences of the reference loss, on
    FD_SAMPLES entries of each array at FD_BATCH rows; a mismatch must hold at both FD_EPS."""
    api = _api()
    from graphc.core.reference import evaluate
    from graphc.passes.simplify import dce
    n = min(case.batch, FD_BATCH)
    rng = np.random.default_rng([case.seed, 3])
    data = arrays(g, n, rng)
    loss_graph, vmap = g.copy()
    loss_graph.outputs = {"J": vmap[g[of]]}
    dce(loss_graph)

    def loss(a):
        return float(evaluate(loss_graph, **a)["J"])

    bwd = api.grad(g, of, wrt)
    analytic = evaluate(bwd, **data)
    j = loss(data)
    floor = 1e-3 * max(1.0, abs(j))
    for w in wrt:
        base, grad = data[w], analytic[f"d_{w}"]
        scale = max(_max_abs([grad]), floor)
        for flat in rng.choice(base.size, size=min(FD_SAMPLES, base.size), replace=False):
            idx = np.unravel_index(flat, base.shape)
            errors = []
            for eps in FD_EPS:
                values = []
                for sign in (1, -1):
                    bumped = base.copy()
                    bumped[idx] += sign * eps
                    values.append(loss({**data, w: bumped}))
                numeric = (values[0] - values[1]) / (2 * eps)
                errors.append((abs(numeric - float(grad[idx])) / scale, numeric, eps))
                if errors[-1][0] < FD_TOLERANCE:
                    break
            if all(e[0] >= FD_TOLERANCE or not np.isfinite(e[0]) for e in errors):
                err, numeric, eps = errors[0]
                raise Failure("finite-differences",
                              f"d_{w} at {list(map(int, idx))}: reference {float(grad[idx]):.9g}, central difference "
                              f"{numeric:.9g} (eps {eps:g}, batch {n}); error {err:.2e} of the gradient's scale")
    result.checks["finite differences"] += 1


# ====================================================================== hypothesis: cases
@dataclass(frozen=True)
class Plan:
    """What each case checks, and how the generator draws."""
    optimizers: str = "one"         # "one": drawn per case; "all": every optimizer
    threads1_every: int = 1         # compile for 1 thread too, and compare bits, in about one case in this many (0: never)
    standalone_every: int = 10      # about one case in this many builds its standalone export (0: never)
    min_nodes: int = 3
    max_nodes: int = 20
    entries: tuple[str, ...] | None = None     # the generator's entries (None: all)
    shrink_seconds: float = 300.0


def sometimes(draw, k: int) -> bool:
    """True in about one draw in k (always for k = 1, never for 0); shrinks to False (k > 1)."""
    from hypothesis import strategies as st
    return k == 1 or (k > 1 and draw(st.integers(0, k - 1)) == k - 1)


def cases(plan: Plan = Plan()):
    from hypothesis import strategies as st
    from graphc.tools.fuzz_specs import specs

    @st.composite
    def draw_case(draw):
        spec = draw(specs(plan.min_nodes, plan.max_nodes, plan.entries))
        batch = draw(st.one_of(st.integers(1, 9), st.integers(10, 300)))
        seed = draw(st.integers(0, 2 ** 16))
        if plan.optimizers == "all":
            optimizers = tuple(draw(st.permutations(OPTIMIZER_NAMES)))    # the first also checks threads
        else:
            optimizers = (draw(st.sampled_from(OPTIMIZER_NAMES)),)
        threads1 = sometimes(draw, plan.threads1_every)
        standalone = COMPILERS if sometimes(draw, plan.standalone_every) else ()
        return Case(spec.text, batch, seed, optimizers, threads1, standalone, tuple(spec.entries))
    return draw_case()


# ====================================================================== campaigns
@dataclass
class Summary:
    cases: int = 0
    shrink_runs: int = 0
    seconds: float = 0.0
    ops: Counter = field(default_factory=Counter)          # nodes by op, over every case
    cases_with: Counter = field(default_factory=Counter)   # cases with at least one node of each op
    entries: Counter = field(default_factory=Counter)
    checks: Counter = field(default_factory=Counter)
    phase_seconds: Counter = field(default_factory=Counter)
    nodes: list = field(default_factory=list)
    failures: list = field(default_factory=list)           # dicts: kind, signature, file, message, repeats
    repeats: Counter = field(default_factory=Counter)      # further cases failing with a known signature

    def add_case(self, case: Case, r: CaseResult) -> None:
        self.cases += 1
        self.ops.update(r.ops)
        self.cases_with.update(set(r.ops))
        self.entries.update(case.entries)
        self.checks.update(r.checks)
        self.phase_seconds.update(r.seconds)
        self.nodes.append(r.nodes)

    def merge(self, other: "Summary") -> None:
        self.cases += other.cases
        self.shrink_runs += other.shrink_runs
        for name in ("ops", "cases_with", "entries", "checks", "phase_seconds", "repeats"):
            getattr(self, name).update(getattr(other, name))
        self.nodes += other.nodes
        self.failures += other.failures

    def to_dict(self) -> dict:
        """Plain types (it crosses process boundaries and is written as JSON)."""
        return {f.name: (dict(v) if isinstance(v, Counter) else list(v) if isinstance(v, list) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d: dict) -> "Summary":
        s = cls(**d)
        for name in ("ops", "cases_with", "entries", "checks", "phase_seconds", "repeats"):
            setattr(s, name, Counter(getattr(s, name)))
        return s

    def report(self) -> str:
        from graphc.ops import REGISTRY
        public = sorted(k for k, op in REGISTRY.items() if op.public)
        lines = [f"graphc fuzz: {self.cases} cases in {self.seconds:.0f} s"
                 + (f" ({self.seconds / self.cases:.2f} s a case" if self.cases else "")
                 + (f"; {self.shrink_runs} more runs shrinking failures)" if self.shrink_runs else ")" if self.cases else "")]
        if self.nodes:
            lines.append(f"graph nodes per case: min {min(self.nodes)}, median {int(np.median(self.nodes))}, "
                         f"max {max(self.nodes)}")
        lines.append("ops covered (nodes in all cases / cases with the op):")
        width = max(len(k) for k in public)
        for k in public:
            lines.append(f"  {k.ljust(width)} {self.ops[k]:>7} {self.cases_with[k]:>6}"
                         + ("   NOT COVERED" if not self.ops[k] else ""))
        internal = sorted(k for k in self.ops if k not in public)
        if internal:
            lines.append("  (and, written by the spec's syntax: " + ", ".join(f"{k} {self.ops[k]}" for k in internal) + ")")
        lines.append("checks made:")
        lines += [f"  {k}: {v}" for k, v in sorted(self.checks.items())]
        if self.phase_seconds:
            lines.append("time by phase (s, summed over processes): "
                         + ", ".join(f"{k} {v:.0f}" for k, v in sorted(self.phase_seconds.items(), key=lambda kv: -kv[1])))
        if not self.failures:
            lines.append("failures: none")
        else:
            by_kind = Counter(f["kind"] for f in self.failures)
            lines.append(f"failures: {len(self.failures)} distinct ("
                         + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items())) + ")")
            for f in self.failures:
                again = self.repeats.get(f["signature"], 0)
                lines.append(f"  {f['kind']}: {f['message'].splitlines()[0][:160]}")
                lines.append(f"    {f['file']}" + (f"  ({again} more cases failed the same way)" if again else ""))
                lines.append(f"    rerun: python -m graphc.fuzz --replay {f['file']}")
        return "\n".join(lines)


def _slug(signature: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "-", signature.split(" raised at")[0]).strip("-").lower()[:50]
    return f"{words}-{hashlib.sha256(signature.encode()).hexdigest()[:8]}"


def run_chunk(count: int, seed: int, plan: Plan, out: str, worker: int = 0, progress: bool = False) -> dict:
    """`count` cases from hypothesis runs seeded `seed`, `seed` + 1, ...; each new failure is
    shrunk and written to `out` (a failure whose signature has a file there already is counted
    as a repeat, not shrunk again). Returns Summary.to_dict()."""
    from hypothesis import HealthCheck, Phase, given, seed as hseed, settings
    from hypothesis.internal.conjecture import engine
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    saved_cap = engine.MAX_SHRINKING_SECONDS
    engine.MAX_SHRINKING_SECONDS = plan.shrink_seconds     # hypothesis' own cap (internal; 300 s by default)
    scratch = Path(tempfile.mkdtemp(prefix=f"graphc-fuzz-{worker}-"))
    cache = scratch / "cache"
    old_cache = os.environ.get("GRAPHC_CACHE_DIR")
    os.environ["GRAPHC_CACHE_DIR"] = str(cache)
    t0 = time.perf_counter()
    try:
        run = 0
        while summary.cases < count:
            state = {"failed": None, "known": {}, "shrink_start": None}
            todo = count - summary.cases

            @hseed(seed + run)
            @settings(max_examples=todo, database=None, deadline=None, derandomize=False,
                      phases=[Phase.generate, Phase.shrink], report_multiple_bugs=False,
                      suppress_health_check=list(HealthCheck), print_blob=False)
            @given(cases(plan))
            def body(case):
                known = state["known"].get(case.text())
                if known is not None:            # hypothesis replays its best example: the same failure
                    state["last"] = known[0], known[1]
                    raise known[1]
                if state["failed"] is not None:
                    summary.shrink_runs += 1
                    if time.perf_counter() - state["shrink_start"] > plan.shrink_seconds:
                        return                   # out of shrinking time: this one counts as passing
                try:
                    shrinking = state["failed"]
                    if shrinking is None:
                        result = run_case(case, scratch)
                    else:
                        kind = shrinking.kind.split()
                        result = run_case(case, scratch, only=getattr(shrinking, "stage", None),
                                          compilers=(kind[1],) if kind[0] == "standalone" else None)
                except Failure as f:
                    if state["failed"] is None:
                        summary.cases += 1
                        summary.entries.update(case.entries)
                        _record_ops(summary, case)
                        if (out_dir / f"{_slug(f.signature)}.toml").exists():
                            summary.repeats[f.signature] += 1
                            _write_repeat(out_dir, case, f, summary.repeats[f.signature])
                            return
                        state["failed"], state["shrink_start"] = f, time.perf_counter()
                    elif f.signature != state["failed"].signature:
                        return                   # another failure: not the one being shrunk
                    error = failure_type(f.signature)(f.kind, f.message, f.signature)
                    error.stage = getattr(f, "stage", None)
                    state["known"][case.text()] = (case, error)
                    state["last"] = (case, error)
                    raise error from None
                finally:
                    _wipe(cache)
                if state["failed"] is None:
                    summary.add_case(case, result)
                    if progress and summary.cases % 10 == 0:
                        print(f"[worker {worker}] {summary.cases}/{count} cases, "
                              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

            run += 1
            try:
                body()
            except Failure:
                case, f = state["last"]
                path = out_dir / f"{_slug(f.signature)}.toml"
                path.write_text(case.text(str(path), f))
                summary.failures.append(dict(kind=f.kind, signature=f.signature, file=str(path), message=f.message))
                if progress:
                    print(f"[worker {worker}] failure {f.kind}: {path}", file=sys.stderr, flush=True)
            except Exception as e:      # noqa: BLE001: hypothesis' own errors (Flaky, ...): said, and on to the next run
                last = state.get("last")
                path = out_dir / f"hypothesis-{worker}-{run}.toml"
                message = f"{type(e).__name__}: {e}"
                if last is not None:
                    path.write_text(last[0].text(str(path), Failure("hypothesis", message)))
                summary.failures.append(dict(kind="hypothesis", signature=f"hypothesis {type(e).__name__}",
                                             file=str(path), message=message))
            if run > 1000:
                break
    finally:
        engine.MAX_SHRINKING_SECONDS = saved_cap
        if old_cache is None:
            os.environ.pop("GRAPHC_CACHE_DIR", None)
        else:
            os.environ["GRAPHC_CACHE_DIR"] = old_cache
        shutil.rmtree(scratch, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    return summary.to_dict()


def _record_ops(summary: Summary, case: Case) -> None:
    """The ops of a case that failed (its CaseResult was not returned)."""
    with contextlib.suppress(Exception):
        api = _api()
        g = api.parse_spec(case.spec, "fuzz.toml")
        ops = Counter(n.op.name for n in g.nodes)
        summary.ops.update(ops)
        summary.cases_with.update(set(ops))
        summary.nodes.append(len(g.nodes))


def _write_repeat(out_dir: Path, case: Case, f: Failure, k: int, keep: int = 3) -> None:
    """The first `keep` further cases of a known failure, unshrunk, beside it."""
    if k <= keep:
        path = out_dir / "repeats" / f"{_slug(f.signature)}-{k}.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(case.text(str(path), f))


def _wipe(cache: Path) -> None:
    """Empty the build cache after a case (a campaign would fill the disk); loaded modules stay loaded."""
    if cache.exists():
        for entry in cache.iterdir():
            if entry.name != "probes":
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def _chunk_job(args) -> dict:
    return run_chunk(*args)


def campaign(cases_total: int, seed: int = 0, jobs: int = 1, out: str | os.PathLike = "fuzz-failures",
             plan: Plan = Plan(), chunk: int = 100, progress: bool = False) -> Summary:
    """`cases_total` cases in chunks of `chunk`, each a hypothesis run in a fresh process (at
    most `jobs` at once; jobs=0: in this process), seeded from `seed`. Returns the Summary."""
    t0 = time.perf_counter()
    sizes = [min(chunk, cases_total - i) for i in range(0, cases_total, chunk)]
    tasks = [(size, seed * 1_000_003 + 7919 * i, plan, str(out), i, progress) for i, size in enumerate(sizes)]
    total = Summary()
    if jobs <= 0:
        results = [run_chunk(*t) for t in tasks]
    else:
        import multiprocessing
        env = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}   # NumPy's BLAS: one thread per process
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(jobs, maxtasksperchild=1) as pool:     # a fresh process per chunk: no pile of loaded models
                results = pool.map(_chunk_job, tasks, chunksize=1)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    for r in results:
        total.merge(Summary.from_dict(r))
    total.seconds = time.perf_counter() - t0
    return total


def replay(path: str | os.PathLike) -> int:
    """Rerun a case file; print what failed, or what was checked. Exit status 1 on a failure."""
    case = Case.parse(Path(path).read_text())
    with tempfile.TemporaryDirectory(prefix="graphc-fuzz-replay-") as tmp:
        try:
            result = run_case(case, tmp)
        except Failure as f:
            print(f"FAIL {f.kind}: {f.message}")
            return 1
    print(f"ok: {result.nodes} nodes; checks: " + ", ".join(f"{k}" for k in sorted(result.checks)))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m graphc.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100, metavar="N")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--jobs", type=int, default=1, metavar="J", help="processes (0: this one)")
    p.add_argument("--out", default="fuzz-failures", metavar="DIR", help="where failing cases are written")
    p.add_argument("--optimizers", choices=("one", "all"), default="all",
                   help="train each case with every optimizer, or with one drawn per case")
    p.add_argument("--standalone-every", type=int, default=10, metavar="K",
                   help="build the standalone export with gcc and clang in about one case in K (0: never)")
    p.add_argument("--threads1-every", type=int, default=1, metavar="K",
                   help="also compile for 1 thread and compare bits in about one case in K (0: never)")
    p.add_argument("--max-nodes", type=int, default=20)
    p.add_argument("--entries", default=None, metavar="A,B,...",
                   help="draw only these entries of the op table (graphc/tools/fuzz_specs.py)")
    p.add_argument("--chunk", type=int, default=100, help="cases per worker process")
    p.add_argument("--shrink-seconds", type=float, default=300.0)
    p.add_argument("--json", default=None, metavar="FILE", help="also write the summary as JSON")
    p.add_argument("--replay", default=None, metavar="FILE", help="rerun one case file and exit")
    args = p.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        print("graphc fuzz needs hypothesis: pip install 'graphc[test]'", file=sys.stderr)
        return 2
    plan = Plan(optimizers=args.optimizers, threads1_every=args.threads1_every, standalone_every=args.standalone_every,
                max_nodes=args.max_nodes, shrink_seconds=args.shrink_seconds,
                entries=tuple(args.entries.split(",")) if args.entries else None)
    summary = campaign(args.cases, args.seed, args.jobs, args.out, plan, args.chunk, progress=True)
    print(summary.report())
    if args.json:
        Path(args.json).write_text(json.dumps(summary.to_dict(), indent=1))
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
