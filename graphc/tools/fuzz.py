"""The differential fuzzer's campaigns (docs/fuzzing.md): random valid specs
(graphc/tools/fuzz_specs.py), each case checked every way graphc can be checked
(graphc/tools/fuzz_checks.py: the reference, finite differences, forward, predict,
value_and_grad, train_step with every optimizer, threads, the standalone C).

`cases()` is the hypothesis strategy of a case (a spec, its batch size, data seed, optimizers
and sampled checks, drawn by a `Plan`). `campaign()` runs cases in J processes, each a
hypothesis run over `cases()` (so a failure shrinks to a minimal spec), writes each failure as
a spec file that holds the case and the command that reruns it, and returns a `Summary`
(cases, ops covered, checks, CPU time by phase, failures). From the shell:

    python -m graphc.fuzz --cases N --seed S --jobs J [--out DIR]
    python -m graphc.fuzz --replay FILE
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from graphc.tools.fuzz_case import (COMPILERS, OPTIMIZER_NAMES, Case, Failure, arrays, compare,  # noqa: F401  (the fuzzer's API)
                                    failure_type, same_bits, _api)
from graphc.tools.fuzz_checks import CaseResult, cpu_seconds, run_case  # noqa: F401


# ====================================================================== hypothesis: cases
@dataclass(frozen=True)
class Plan:
    """What each case checks, and how the generator draws."""
    optimizers: str = "one"         # "one": drawn per case; "all": every optimizer
    threads1_every: int = 1         # compile for 1 thread too, and compare bits, in about one case in this many (0: never)
    standalone_every: int = 10      # about one case in this many builds its standalone export (0: never)
    float32_every: int = 2          # about one case in this many is also compiled for float32 and compared (0: never)
    min_nodes: int = 3
    max_nodes: int = 20
    entries: tuple[str, ...] | None = None     # the generator's entries (None: all)
    sequence: bool | None = None    # values [N, T, ...], T a second run-time dim (None: in one spec in 3)
    shrink_seconds: float = 300.0
    stop_at: float | None = None    # time.time() after which no new case starts (a campaign's time budget)


def sometimes(h: int, k: int) -> bool:
    """True in one case in k (always for k = 1, never for 0), by h, a uniform hash of the case."""
    return k == 1 or (k > 1 and h % k == 0)


def case_hash(spec: str, seed: int, salt: str) -> int:
    """A uniform number per case, from its spec and data seed: what picks its optimizer and its
    sampled checks. Hypothesis' own draws lean toward their simplest value in big examples (an
    integers(0, 7) drawn after a spec came out 7 in 1 case in 17, not 8; sampled_from picked its
    first option 37 % of the time, not 20 %), which would leave the sampled checks and the later
    optimizers rarer than planned. A shrink keeps the failing case's choices (run_chunk). cases() puts a
    drawn number in `salt`, so that hypothesis can still vary the choices of one spec."""
    return int.from_bytes(hashlib.sha256(f"{salt}\n{seed}\n{spec}".encode()).digest()[:8], "little")


def cases(plan: Plan = Plan()):
    from hypothesis import strategies as st
    from graphc.tools.fuzz_specs import RUN_TIME, specs

    @st.composite
    def draw_case(draw):
        spec = draw(specs(plan.min_nodes, plan.max_nodes, plan.entries, plan.sequence))
        batch = draw(st.one_of(st.integers(1, 9), st.integers(10, 300)))
        seed = draw(st.integers(0, 2 ** 16))
        choice = draw(st.integers(0, 2 ** 16))   # a choice after the spec: without one, shrinks stalled (7-15 lines, not 4)
        k = case_hash(spec.text, seed, f"optimizer {choice}") % len(OPTIMIZER_NAMES)
        if plan.optimizers == "all":           # every one, the first (which also checks threads) in turn
            optimizers = OPTIMIZER_NAMES[k:] + OPTIMIZER_NAMES[:k]
        else:
            optimizers = (OPTIMIZER_NAMES[k],)
        threads1 = sometimes(case_hash(spec.text, seed, f"threads=1 {choice}"), plan.threads1_every)
        standalone = COMPILERS if sometimes(case_hash(spec.text, seed, f"standalone {choice}"), plan.standalone_every) else ()
        float32 = sometimes(case_hash(spec.text, seed, f"float32 {choice}"), plan.float32_every)
        sizes = {d: draw(st.one_of(st.integers(1, 9), st.integers(10, RUN_TIME[d][1]))) for d in spec.sizes}
        return Case(spec.text, batch, seed, optimizers, threads1, standalone, tuple(spec.entries), sizes, float32)
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
    phase_cpu: Counter = field(default_factory=Counter)    # CPU seconds by phase (the compilers' too)
    cpu: float = 0.0                                       # CPU seconds of the worker processes, all told
    nodes: list = field(default_factory=list)
    failures: list = field(default_factory=list)           # dicts: kind, signature, file, message, repeats
    repeats: Counter = field(default_factory=Counter)      # further cases failing with a known signature
    float32_worst: float = 0.0                             # the float32 check's largest error, a share of its tolerance

    def add_case(self, case: Case, r: CaseResult) -> None:
        self.cases += 1
        self.ops.update(r.ops)
        self.cases_with.update(set(r.ops))
        self.entries.update(case.entries)
        self.checks.update(r.checks)
        self.phase_seconds.update(r.seconds)
        self.phase_cpu.update(r.cpu)
        self.nodes.append(r.nodes)
        self.float32_worst = max(self.float32_worst, r.float32_worst)

    def merge(self, other: "Summary") -> None:
        self.cases += other.cases
        self.shrink_runs += other.shrink_runs
        self.cpu += other.cpu
        for name in ("ops", "cases_with", "entries", "checks", "phase_seconds", "phase_cpu", "repeats"):
            getattr(self, name).update(getattr(other, name))
        self.nodes += other.nodes
        self.float32_worst = max(self.float32_worst, other.float32_worst)
        self.failures += other.failures

    def to_dict(self) -> dict:
        """Plain types (it crosses process boundaries and is written as JSON)."""
        return {f.name: (dict(v) if isinstance(v, Counter) else list(v) if isinstance(v, list) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}

    @classmethod
    def from_dict(cls, d: dict) -> "Summary":
        s = cls(**d)
        for name in ("ops", "cases_with", "entries", "checks", "phase_seconds", "phase_cpu", "repeats"):
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
        if self.float32_worst:
            lines.append(f"float32: the largest error was {self.float32_worst:.3f} of its tolerance")
        if self.phase_seconds:
            lines.append("time by phase (s, summed over processes): "
                         + ", ".join(f"{k} {v:.0f}" for k, v in sorted(self.phase_seconds.items(), key=lambda kv: -kv[1])))
        if self.phase_cpu:
            lines.append(f"CPU time (s: user + system, the compilers' included): {self.cpu:.0f} in all"
                         + (f", {self.cpu / self.cases:.2f} a case" if self.cases else "") + "; by phase: "
                         + ", ".join(f"{k} {v:.1f}" for k, v in sorted(self.phase_cpu.items(), key=lambda kv: -kv[1])))
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


def out_of_time(plan: Plan) -> bool:
    return plan.stop_at is not None and time.time() > plan.stop_at


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
    saved_env = {"GRAPHC_CACHE_DIR": os.environ.get("GRAPHC_CACHE_DIR")}
    os.environ["GRAPHC_CACHE_DIR"] = str(cache)     # (graphc's builder compiles without Python's -g)
    t0, c0 = time.perf_counter(), cpu_seconds()
    try:
        run = 0
        while summary.cases < count and not out_of_time(plan):
            state = {"failed": None, "known": {}, "shrink_start": None}
            todo = count - summary.cases

            @hseed(seed + run)
            @settings(max_examples=todo, database=None, deadline=None, derandomize=False,
                      phases=[Phase.generate, Phase.shrink], report_multiple_bugs=False,
                      suppress_health_check=list(HealthCheck), print_blob=False)
            @given(cases(plan))
            def body(case):
                state["current"] = case          # what an error of hypothesis' own run was running
                if state["failed"] is None and out_of_time(plan):
                    return                       # the budget is spent: the rest pass unrun, uncounted
                if state["failed"] is not None:  # a shrink keeps the failing case's optimizers and checks
                    first = state["first"]
                    case = replace(case, optimizers=first.optimizers, threads1=first.threads1,
                                   standalone=first.standalone, float32=first.float32)
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
                        state["failed"], state["shrink_start"], state["first"] = f, time.perf_counter(), case
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
                # (or an exception no check turned into a Failure: the case it came from is written, with
                # where it was raised, so that it can be replayed)
                last = state.get("last") or ((state["current"],) if state.get("current") is not None else None)
                path = out_dir / f"hypothesis-{worker}-{run}.toml"
                frames = traceback.extract_tb(e.__traceback__)
                message = f"{type(e).__name__}: {e}" + (f" (raised at {frames[-1].filename}:{frames[-1].lineno}, "
                                                        f"in {frames[-1].name})" if frames else "")
                if last is not None:
                    path.write_text(last[0].text(str(path), Failure("hypothesis", message)))
                summary.failures.append(dict(kind="hypothesis", signature=f"hypothesis {type(e).__name__}",
                                             file=str(path), message=message))
            if run > 1000:
                break
    finally:
        engine.MAX_SHRINKING_SECONDS = saved_cap
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(scratch, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    summary.cpu = cpu_seconds() - c0
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


KEEP = ("probes", "kernels", "jinja")   # the compiler probes, the kernel library, the templates' bytecode


def _wipe(cache: Path) -> None:
    """Empty the build cache after a case (a campaign would fill the disk) but for KEEP: the kernel
    library is compiled once per process (and compiler flags), not once per case; loaded modules stay
    loaded."""
    if cache.exists():
        for entry in cache.iterdir():
            if entry.name not in KEEP:
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
                results, late = [], 0
                for r in pool.imap(_chunk_job, tasks, chunksize=1):
                    results.append(r)
                    late += out_of_time(plan)
                    if late > jobs:     # the chunks under way at the deadline are in: start no more
                        break
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


SEQUENCE = {"some": None, "always": True, "never": False}     # --sequence: Plan.sequence


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
    p.add_argument("--float32-every", type=int, default=2, metavar="K",
                   help="also compile for float32 (with the case's optimizer) and compare its calls and 3 train "
                   "steps with the reference in about one case in K (0: never)")
    p.add_argument("--max-nodes", type=int, default=20)
    p.add_argument("--entries", default=None, metavar="A,B,...",
                   help="draw only these entries of the op table (graphc/tools/fuzz_specs.py)")
    p.add_argument("--sequence", choices=("some", "always", "never"), default="some",
                   help="draw values [N, T, ...] with a second run-time dim T (a sequence length, 1-64 per case) "
                        "in one spec in 3 (some), in every spec, or in none")
    p.add_argument("--chunk", type=int, default=100, help="cases per worker process")
    p.add_argument("--shrink-seconds", type=float, default=300.0)
    p.add_argument("--minutes", type=float, default=None, metavar="M",
                   help="start no new case after M minutes (the summary counts the cases run; shrinks may run on)")
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
                float32_every=args.float32_every,
                max_nodes=args.max_nodes, shrink_seconds=args.shrink_seconds, sequence=SEQUENCE[args.sequence],
                stop_at=time.time() + 60 * args.minutes if args.minutes else None,
                entries=tuple(args.entries.split(",")) if args.entries else None)
    summary = campaign(args.cases, args.seed, args.jobs, args.out, plan, args.chunk, progress=True)
    print(summary.report())
    if args.json:
        Path(args.json).write_text(json.dumps(summary.to_dict(), indent=1))
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
