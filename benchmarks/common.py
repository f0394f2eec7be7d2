"""What the benchmark commands share: where graphc is imported from, timing on a shared machine,
the CPU's name, calling a model's C with the pointers made once, and running one worker process
per thread count (benchmarks/run.py, cnn.py, gpt.py) with the options they have in common.

The commands keep their own tables; each imports this module (run.py's MLP specs, data and
parameters stay in run.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# graphc is imported from this tree; GRAPHC_BENCH_SRC can point at a copy (e.g. a snapshot of a tree
# that others are editing) holding graphc/ and templates/.
SRC = Path(os.environ.get("GRAPHC_BENCH_SRC", str(ROOT))).resolve()
CACHE = os.environ.get("GRAPHC_CACHE_DIR", "/tmp/gcache_bench")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GRAPHC_NUM_THREADS")


# ====================================================================== timing
PAUSE_S = 0.1


def cpu_busy():
    """(jiffies all CPUs spent busy, this process's CPU seconds, wall time): for the foreign-load figure."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        busy = sum(v) - v[3] - (v[4] if len(v) > 4 else 0)          # all but idle and iowait
    except OSError:
        busy = 0
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system, time.perf_counter()


def foreign_load(a, b):
    """Share of the machine's cores used by other processes between two cpu_busy() snapshots."""
    wall = b[2] - a[2]
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / (wall * os.cpu_count())) if wall > 0 else 0.0


QUIET_LOAD = 0.15          # foreign load above this marks a measurement as taken on a loaded machine


def wait_quiet(max_wait_s: float, window_s: float = 0.3) -> float:
    """Wait (up to max_wait_s) for a window in which other processes use < QUIET_LOAD of the
    cores; return the last window's foreign load."""
    t_end = time.perf_counter() + max_wait_s
    if max_wait_s <= 0:
        return 0.0
    while True:
        a = cpu_busy()
        time.sleep(window_s)
        load = foreign_load(a, cpu_busy())
        if load < QUIET_LOAD or time.perf_counter() > t_end:
            return load


def bench(fns: dict, reps: int, sample_s: float, per_call_divisor: dict | None = None) -> dict:
    """Median seconds per call of each callable; the callables alternate within each repetition.

    Before each sample: a pause of PAUSE_S, so that the worker threads of the contender that ran
    last (OpenBLAS, OpenMP, XLA spin after a call) have gone to sleep and do not steal a core,
    then one untimed call."""
    names = list(fns)
    loops = {}
    for k in names:                                        # warm up (JAX compiles here) and calibrate
        f = fns[k]
        f()
        f()
        c, t0 = 0, time.perf_counter()
        while True:
            f()
            c += 1
            dt = time.perf_counter() - t0
            if dt > min(sample_s, 0.05) or c >= 100000:
                break
        loops[k] = max(1, int(sample_s / (dt / c)))
    samples = {k: [] for k in names}
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            f, c = fns[k], loops[k]
            time.sleep(PAUSE_S)
            f()
            t0 = time.perf_counter()
            for _ in range(c):
                f()
            samples[k].append((time.perf_counter() - t0) / c)
    div = per_call_divisor or {}
    return {k: median(v) / div.get(k, 1) for k, v in samples.items()}


def measured(fns: dict, reps: int, sample_s: float, per_call_divisor: dict | None = None,
             wait_s: float = 5.0) -> tuple[dict, float]:
    """bench() after waiting (up to wait_s) for a quiet machine, and the foreign load seen while it ran."""
    wait_quiet(wait_s)
    a = cpu_busy()
    times = bench(fns, reps, sample_s, per_call_divisor)
    return times, foreign_load(a, cpu_busy())


# ====================================================================== the machine
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_name() -> str:
    """The CPU's model name, family and model (Zen generation where known), ISA and core count."""
    model, flags = "?", ""
    fam = mod = None
    for line in open("/proc/cpuinfo"):
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k == "model name" and model == "?":
            model = v
        elif k == "cpu family" and fam is None:
            fam = v
        elif k == "model" and mod is None:
            mod = v
        elif k == "flags" and not flags:
            flags = v
    zen = {("25", "17"): " (Zen 4, Genoa)", ("25", "1"): " (Zen 3, Milan)"}.get((fam, mod), "")
    isa = "AVX-512" if "avx512f" in flags.split() else "AVX2" if "avx2" in flags.split() else "no AVX2"
    return f"{model}{zen}, family {fam} model {mod}, {isa}, {os.cpu_count()} cores"


# ====================================================================== a model's C called directly
def raw_caller(m, fname, arrays):
    """The C function of `fname` called through cffi with pointers made once: the floor a Python
    caller can reach. Returns a zero-argument callable."""
    f = m.functions[fname]
    n = arrays["x"].shape[0] if "x" in arrays else 1
    keep, ptrs = [], []
    for a in f.args:
        if a.role in ("input", "param", "param*", "state"):
            arr = arrays[a.value.name]
        else:
            arr = m._out_array(a, n)
        keep.append(arr)
        ptrs.append(m._pointer(arr))
    return _bound(m, m._cfuncs[fname], n, ptrs, keep)


def raw_step_caller(m, state, arrays):
    """NAME_train_step called through cffi with pointers made once (inputs, the state's params and
    optimizer state, outputs): the floor of m.train_step. Returns a zero-argument callable."""
    import numpy as np
    lay = m.functions["train_step"].train_layout
    n = arrays["x"].shape[0] if "x" in arrays else 1
    keep, ptrs = [], []
    for role, name, _ in lay.step_args:
        if role == "hparams":             # NULL: the hyperparameters compiled in
            ptrs.append(m.ffi.NULL)
            continue
        if role == "input":
            arr = arrays[name]
        elif role == "param":
            arr = state.params[name]
        elif role == "state":
            arr = state.buffers[name]
        else:
            shape, is_int = lay.out_types[name]
            arr = np.empty(tuple(n if isinstance(d, str) else d for d in shape), np.int32 if is_int else m.dtype)
        keep.append(arr)
        ptrs.append(m._pointer(arr))
    return _bound(m, getattr(m.lib, f"{m.name}_train_step"), n, ptrs, keep)


def _bound(m, cf, n: int, ptrs: list, keep: list):
    """cf(n, *ptrs, workspace) as a zero-argument callable holding its arrays and workspace."""
    ws = m.ffi.from_buffer(m.workspace(n))
    keep.append(ws)

    def call():
        return cf(n, *ptrs, ws)
    call.keep = keep
    return call


# ====================================================================== one worker process per thread count
def worker_options(ap, reps: int | None, sample: float | None, peers: str,
                   reps_help: str = "repetitions per contender (median reported)",
                   sample_help: str = "seconds per repetition of one contender",
                   peers_help: str = "optional peers to try") -> None:
    """The options of a command that measures in one worker process per thread count."""
    ap.add_argument("--threads", default="1,2", help="thread counts, one worker process each (default 1,2)")
    ap.add_argument("--reps", type=int, default=reps, help=reps_help)
    ap.add_argument("--sample", type=float, default=sample, help=sample_help)
    ap.add_argument("--peers", default=peers, help=peers_help)
    ap.add_argument("--json", help="also write the raw results to this file")
    ap.add_argument("--worker-threads", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)


def thread_env(threads: int, **more: str) -> dict:
    """The environment of a worker on `threads` threads: every thread count set before NumPy is imported,
    OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed (they slow a current OpenBLAS), the benchmark cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env.update({k: str(threads) for k in THREAD_VARIABLES}, GRAPHC_CACHE_DIR=CACHE, **more)
    return env


def run_workers(script: str, args, worker_args: list[str], env_of=thread_env, say=None) -> list | None:
    """Run `script --worker-threads T --worker-out FILE worker_args... --reps --sample --peers` (those
    of worker_options, from args) once per thread count T of args.threads (the ones below the cores
    the process may use under `taskset`, the only way to hold JAX to them) and return [(T, its JSON
    result)], or None when a worker fails (said on stderr)."""
    worker_args = [*worker_args, "--reps", str(args.reps), "--sample", str(args.sample), "--peers", args.peers]
    name = Path(script).name
    results = []
    for T in [int(t) for t in args.threads.split(",")]:
        outf = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
        wargs = [sys.executable, str(Path(script).resolve()), "--worker-threads", str(T), "--worker-out", outf,
                 *worker_args]
        cpus = sorted(os.sched_getaffinity(0))
        if T < len(cpus) and shutil.which("taskset"):
            wargs = ["taskset", "-c", ",".join(str(c) for c in cpus[:T])] + wargs
        print(say(T, wargs) if say else f"[{name}] {T} thread(s)", file=sys.stderr)
        run = subprocess.run(wargs, env=env_of(T))
        if run.returncode:
            print(f"[{name}] the {T}-thread worker failed (exit {run.returncode})", file=sys.stderr)
            os.unlink(outf)
            return None
        results.append((T, json.loads(Path(outf).read_text())))
        os.unlink(outf)
    return results


def worker_main(args, worker) -> bool:
    """In a worker process (--worker-threads given): run worker(args), write its result, and say so."""
    if not args.worker_threads:
        return False
    Path(args.worker_out).write_text(json.dumps(worker(args)))
    return True


def command(script: str, argv) -> str:
    """The command line as the tables print it."""
    return (f"python benchmarks/{Path(script).name} " + " ".join(argv if argv is not None else sys.argv[1:])).strip()


def write_readme_block(start: str, end: str, text: str) -> None:
    """Put `text` between the markers start and end of benchmarks/README.md (at its end when missing)."""
    readme = HERE / "README.md"
    body = readme.read_text() if readme.exists() else ""
    block = f"{start}\n{text}\n{end}"
    if start in body and end in body:
        body = body[:body.index(start)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(body)
