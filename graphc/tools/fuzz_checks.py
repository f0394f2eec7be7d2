"""The checks of one fuzz case (docs/fuzzing.md, "What a case checks"): `run_case` runs them in
stages (the reference, finite differences, the models, the thread checks, the standalone
export), each raising a `Failure` of its kind at the first wrong number.

- the reference: the spec loads, graphc.grad and graphc.evaluate run and give finite numbers
  (else the generator left the valid domain: kind "generator"), and the reference gradients
  agree with central finite differences on a sample of entries (at a small batch);
- per optimizer, a model compiled with it for 2 threads and called with OpenMP at 2 threads:
  forward, predict (when the model has one: the outputs that need no labels or targets, or no
  data at all) and value_and_grad against the reference; train_step over 3 steps against
  graphc.train_graph evaluated by graphc.evaluate (outputs, params and optimizer state after
  each step), then 2 more with the hyperparameters changed at run time;
- threads: the first model's forward, predict, value_and_grad and 3 train steps in the same
  bits with OpenMP at 1 thread as at 2, and (case.threads1, a sub-sample in the suite's slice)
  in the same bits as the model compiled for 1 thread (graphc.compile(..., threads=1));
- on a sub-sample, the standalone export (main.c and its Makefile) built with gcc and with
  clang under -Werror: it prints what the extension computes on main.c's inputs (forward,
  predict, value_and_grad and the losses of its 3 train steps), and `--bad-label` passes; the
  kernel library is compiled once per compiler and flags in a process (`kernel_objects`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from graphc.core.errors import GraphcError
from graphc.tools.fuzz_case import (Case, Failure, _api, _max_abs, _optimizers, arrays, compare, omp_threads,
                                    same_bits, step)

PRINT_RTOL = 1e-7           # main.c prints 9 significant digits
FD_SAMPLES = 6              # entries perturbed per differentiated array
FD_BATCH = 3                # rows of the finite-difference check (it judges the reference's math)
FD_EPS = (1e-6, 1e-7)       # a mismatch must hold at both steps (one may straddle a relu's kink)
FD_TOLERANCE = 1e-6
TRAIN_STEPS = 3
RETUNED_STEPS = 2           # train steps after the hyperparameters change at run time
STANDALONE_BATCH = 5
STANDALONE_LENGTH = 17      # ... and the other run-time dims (T) at most this
TIMEOUT = 600               # seconds of a make or a run of the standalone example


# ====================================================================== one case
@dataclass
class CaseResult:
    ops: Counter = field(default_factory=Counter)        # the forward graph's nodes by op
    checks: Counter = field(default_factory=Counter)     # checks made, by name
    seconds: Counter = field(default_factory=Counter)    # wall time by phase
    cpu: Counter = field(default_factory=Counter)        # CPU time by phase: this process and the compilers it ran
    nodes: int = 0
    float32_worst: float = 0.0                           # the float32 check's largest error, a share of its tolerance


def cpu_seconds() -> float:
    """User + system time of this process (all its threads) and of its finished children (the C
    compilers): what a phase costs on a shared machine, where wall times swell with the load."""
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class _Timer:
    def __init__(self, result: CaseResult):
        self.result = result

    @contextlib.contextmanager
    def __call__(self, phase: str):
        t0, c0 = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.result.seconds[phase] += time.perf_counter() - t0
            self.result.cpu[phase] += cpu_seconds() - c0


STAGES = ("reference", "finite differences", "float32", "models", "threads", "standalone")   # in the order run_case runs them
NEEDS = {"reference": (), "finite differences": ("reference",), "float32": ("reference",), "models": ("reference",),
         "threads": ("reference", "models"), "standalone": ("reference", "models")}


def run_case(case: Case, workdir: str | os.PathLike | None = None, only: str | None = None,
             compilers: tuple[str, ...] | None = None) -> CaseResult:
    """Every check of one case, or only those of stage `only` and the stages it needs (what a
    shrink of a failure in that stage reruns; `compilers`: of the standalone check, those of
    case.standalone to run); raises Failure, its `stage` set, at the first check that fails."""
    if compilers is not None:
        case = replace(case, standalone=tuple(c for c in case.standalone if c in compilers))
    result = CaseResult()
    stage = ["reference"]
    wanted = set(STAGES) if only is None else {only, *NEEDS[only]}
    try:
        # what no check caught (a KeyError in the fuzzer's own code) is a Failure too, signed where it
        # was raised: hypothesis shrinks it like any other, with run_chunk's bookkeeping (an exception
        # escaping the test function left hypothesis shrinking it while run_chunk took a Failure met on
        # the way for the one being shrunk, and replays then ran other stages: FlakyFailure)
        with step("the checks"):
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
        data = arrays(g, case.batch, np.random.default_rng(case.seed), case.sizes)
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
    predict = prediction_graph(g)
    if case.float32 and enter("float32"):
        from graphc.tools.fuzz_float32 import check_float32
        with timer("float32"):
            check_float32(g, data, predict, result, case.optimizers[0] if case.optimizers else None)
    if not enter("models"):
        return
    models = {}
    shrinking_later_stage = "finite differences" not in wanted and bool(wanted & {"threads", "standalone"})
    names = case.optimizers[:1] if shrinking_later_stage else case.optimizers    # they need the first model only
    for name in names:
        optimizer = _optimizers()[name]
        with timer("build"), step(f"compile with {name}"):
            m = models[name] = api.compile(g, dtype="float64", optimizer=optimizer, threads=2)
            m.lib.gc_kernels_busy_hold(0.0)   # two threads even on a busy machine: the check compares them
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


def _batches(g, case: Case, salt: int, steps: int = TRAIN_STEPS) -> list[dict]:
    rng = np.random.default_rng([case.seed, salt])
    out = []
    for _ in range(steps):
        a = arrays(g, case.batch, rng, case.sizes)
        out.append({k: a[k] for k in g.inputs})
    return out


def retuned(optimizer):
    """The optimizer with other values of its run-time hyperparameters (graphc.autodiff.optimizers.
    run_time_hparams), none of them turned to or from 0: the same compiled C reads them at every call."""
    from dataclasses import replace
    from graphc.autodiff.optimizers import run_time_hparams
    new = {"lr": optimizer.lr * 0.5, "momentum": 0.5, "weight_decay": getattr(optimizer, "weight_decay", 0.0) * 3,
           "beta1": 0.8, "beta2": 0.99, "eps": getattr(optimizer, "eps", 0.0) * 2}
    return replace(optimizer, **{k: new[k] for k in run_time_hparams(optimizer)})


def check_train(m, g, name, optimizer, data, case: Case, scale: float, result: CaseResult) -> None:
    """TRAIN_STEPS train steps against graphc.train_graph evaluated by graphc.evaluate: each
    step's outputs, and every updated param and optimizer state after it; then, the
    hyperparameters changed at run time (TrainState.set_hparams, no rebuild: `retuned`), RETUNED_STEPS
    more against the train graph of the optimizer with those values, from the state reached."""
    from graphc.autodiff.optimizers import run_time_hparams
    api = _api()
    of, wrt = g.grad_spec
    after = retuned(optimizer)
    with step(f"train_graph {name}"):
        graphs = [api.train_graph(g, of, wrt, optimizer), api.train_graph(g, of, wrt, after)]
    tg = graphs[0]
    params = {k: data[k] for k in g.params}
    with step(f"train_state {name}"):
        state = m.train_state(params)
    frozen = {k: v for k, v in params.items() if k not in tg.updates}
    kind = f"train_step {name}"
    for i, batch in enumerate(_batches(g, case, 1, TRAIN_STEPS + RETUNED_STEPS), 1):
        if i == TRAIN_STEPS + 1:
            tg = graphs[1]
            with step(f"set_hparams {name}"):
                state.set_hparams(**{k: getattr(after, k) for k in run_time_hparams(after)})
        # each step from the state the C reached (not the reference's own trajectory): a step is judged
        # alone, and rounding differences do not grow over steps that amplify them (a large gradient
        # times lr through a recurrence: 7e-9 of a param after 3 steps on a 245-row GRU, all correct)
        current = {inp: np.reshape(np.array(state.params[key] if key in state.params else state.buffers[key],
                                            dtype=np.float64), tg.values[inp].shape)
                   for key, (inp, _out) in tg.updates.items()}
        with step(f"train_step {name} #{i}"):
            outs = m.train_step(state, **batch)
        with step(f"train_graph {name} evaluated, step {i}"):
            expected = api.evaluate(tg, **batch, **frozen, **current)
        label = f"step {i}" + (" (hyperparameters changed at run time)" if i > TRAIN_STEPS else "")
        pairs = [(f"{label}: output {k}", v, k) for k, v in outs.items()]
        for key, (inp, out) in tg.updates.items():
            got = state.params[key] if key in state.params else state.buffers[key]
            pairs.append((f"{label}: {key}", got, out))
        try:
            judge_step(kind, pairs, expected, scale)
        except Failure:
            with step(f"train_graph {name} evaluated near step {i}'s state"):
                spread = sensitivity(lambda state_: api.evaluate(tg, **batch, **frozen, **state_), current, expected,
                                     [out for _, _, out in pairs], case.seed + i)
            try:
                judge_step(kind, pairs, expected, scale, spread)
                result.checks[f"train_step {name} (ill-conditioned: judged within the reference's own spread)"] += 1
            except Failure:
                with step(f"train_graph {name} evaluated in long double, step {i}"):
                    precise = extended(lambda dtype, arrays: api.evaluate(tg, dtype, **arrays),
                                       {**batch, **frozen, **current})
                if precise is None:
                    raise
                judge_step(kind, pairs, precise, scale, spread)
                result.checks[f"train_step {name} (the float64 reference off: judged by the long-double one)"] += 1
    result.checks[f"train_step {name}"] += 1


SPREAD_NOISE = 1e-15        # relative noise on a train step's starting state: a few float64 ulps
SPREAD_FACTOR = 16.0


def sensitivity(evaluate, state: dict, expected: dict, keys: list, seed: int) -> dict:
    """How far the reference's results move when the state a step starts from moves by a few ulps
    (SPREAD_NOISE, relative, twice): the C's state is only known to its rounding, and a step that
    amplifies that (params grown to 1e4 by sums over 245 rows, a saturated softmax: 2e-8 of a param
    from 1e-15 of noise) cannot be judged closer than its spread."""
    rng = np.random.default_rng(seed)
    spread = {k: 0.0 for k in keys}
    for _ in range(2):
        moved = evaluate({k: v * (1 + SPREAD_NOISE * rng.standard_normal(np.shape(v))) for k, v in state.items()})
        for k in keys:
            spread[k] = max(spread[k], float(np.max(np.abs(np.asarray(moved[k], np.float64)
                                                         - np.asarray(expected[k], np.float64)), initial=0.0)))
    return spread


def extended(evaluate, arrays: dict) -> dict | None:
    """The reference evaluated in NumPy's long double (x86's 80-bit extended: 11 more bits than float64),
    as float64 arrays; None where long double is float64 itself. A step can be ill-conditioned in a
    way moving its starting state does not show (attention's gradient over scores of 1.6e6 recomputed
    from the forward pass's log-sum-exp: the float64 reference 8e-5 from the long-double one, the C
    6e-8): where C and the float64 reference disagree, the more precise reference judges."""
    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
        return None
    cast = {k: np.asarray(v, np.longdouble) if np.asarray(v).dtype.kind == "f" else v for k, v in arrays.items()}
    return {k: np.asarray(v, np.float64) for k, v in evaluate(np.longdouble, cast).items()}


def judge_step(kind: str, pairs: list, expected: dict, scale: float, spread: dict | None = None) -> None:
    """Each (what, got, key) of a train step against expected[key]; with `spread`, SPREAD_FACTOR times
    the reference's own spread added to the tolerance."""
    for what, got, key in pairs:
        want = expected[key]
        if np.size(got) == np.size(want):      # Adam's step count: C's int64[1], the IR's scalar
            want = np.reshape(want, np.shape(got))
        extra = SPREAD_FACTOR * spread[key] if spread else 0.0
        compare(kind, what + (f" (the reference's spread {spread[key]:.2e})" if spread else ""), got, want, scale,
                extra=extra)


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


def one_element(shape) -> bool:
    """Whether an output has one element whatever the batch: main.c prints those of train_step
    (native/export.py), not an output [N] that has one element at batch 1."""
    return all(not isinstance(d, str) for d in shape) and int(np.prod(shape, dtype=np.int64)) == 1


_KERNEL_OBJECTS: dict = {}


def kernel_objects(workdir):
    """The kernel libraries compiled by this process's standalone checks (kept in `workdir`, or a
    temporary folder): each compiled once per compiler and flags, not once per case."""
    from graphc.native.example_make import KernelObjects
    key = None if workdir is None else str(workdir)
    if key not in _KERNEL_OBJECTS:
        _KERNEL_OBJECTS[key] = KernelObjects(None if workdir is None else Path(workdir) / "kernel-objects")
    return _KERNEL_OBJECTS[key]


def check_standalone(m, g, predict, cc: str, workdir, case: Case, result: CaseResult) -> None:
    """m.export(dir, standalone=True), built by make with `cc`, prints what the extension
    computes on main.c's inputs, and its --bad-label run passes."""
    from graphc.native.example_make import make_example
    from graphc.native.export import example_arrays, example_summary, parse_example_output
    kind = f"standalone {cc}"
    n = min(case.batch, STANDALONE_BATCH) if g.symbolic_dims else 1
    # the other run-time dims (T) at the case's size, capped like the batch: main.c's DIM_<C name>
    dims = {d: min(case.sizes.get(d, n), STANDALONE_LENGTH) for d in g.symbolic_dims[1:]}
    c_dims = dict(zip(g.symbolic_dims, m.csrc.dim_args))
    defines = "".join(f" -DDIM_{c_dims[d]}={size}L" for d, size in dims.items())
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{cc}-", dir=workdir) as tmp:
        with step(f"export for {cc}"):
            m.export(tmp, standalone=True)
        # only the model's files are compiled when this folder's kernel library is one built before
        run = make_example(tmp, cc, STANDALONE_FLAGS, f"-DBATCH={n}L{defines}", kernel_objects(workdir),
                           timeout=TIMEOUT)
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
    a = example_arrays(g, "float64", n, dims)
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
                             if one_element(g.outputs[k].shape)})
        # main.c prints what its train steps update last: [grad]'s wrt and the model state
        expected.update({("trained", k): v for k, v in state.params.items() if k in g.grad_spec[1] or k in g.states})
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
    data = arrays(g, n, rng, {k: min(v, FD_BATCH) for k, v in case.sizes.items()})
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
