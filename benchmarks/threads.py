#!/usr/bin/env python3
"""Does graphc release the GIL during its C call? (issue 7, item 5)

    python benchmarks/threads.py                  # about 15 s; prints a Markdown table
    python benchmarks/threads.py --write-readme   # also put it into benchmarks/README.md
    (python benchmarks/run.py runs it last, unless --no-gil-threads)

N value_and_grad calls of the mnist model (784-512-10, batch 128, float32, compiled with
graphc threads=1, so each call uses one core) on one Python thread, then the same N calls split
over two Python threads of the same process. If the GIL is held during the C call, the two
threads take turns and the split takes as long as one thread (speed-up 1x); if it is released,
they run at once on two cores (speed-up up to 2x). The control row is a pure-Python loop split
the same way: it holds the GIL, so it shows what "no overlap" looks like on this machine.

Both variants run on persistent worker threads (each keeps its graphc workspace between
repetitions), alternate within each repetition, and the table shows medians. Other processes'
load is measured as in run.py: a row marked † N% was measured while they used N% of the cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402  (load measurement, the README block)
import run as R  # noqa: E402  (the specs, data and parameters of run.py)

START, END = "<!-- GIL-RESULTS -->", "<!-- /GIL-RESULTS -->"


class Workers:
    """k persistent threads; run(job, calls) has them do `calls` calls of job() between them
    and returns the wall time from the common start to the last one finishing."""

    def __init__(self, k: int):
        self.k, self.job, self.calls = k, None, 0
        self.start, self.end = threading.Barrier(k + 1), threading.Barrier(k + 1)
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(k)]
        for t in self.threads:
            t.start()

    def _loop(self, i: int):
        while True:
            self.start.wait()
            if self.job is None:
                return
            share = self.calls // self.k + (i < self.calls % self.k)
            for _ in range(share):
                self.job()
            self.end.wait()

    def run(self, job, calls: int) -> float:
        self.job, self.calls = job, calls
        self.start.wait()
        t0 = time.perf_counter()
        self.end.wait()
        return time.perf_counter() - t0

    def close(self):
        self.job = None
        self.start.wait()


def measure(calls: int, reps: int, wait_s: float) -> dict:
    sys.path.insert(0, str(common.SRC))
    import graphc
    R.write_specs()
    layers, batch, _ = R.SIZES["mnist"]
    m = graphc.compile(str(R.SPECS / "mnist_train.toml"), threads=1)
    x, y, _, _ = R.make_data(layers, batch, 1)
    args = dict(x=x, y=y, **R.graphc_param_dict(layers, R.init_params(layers)))
    reference = m.value_and_grad(**args)[1]

    def graphc_call():
        m.value_and_grad(**args)

    t0 = time.perf_counter()
    graphc_call()
    one_call = time.perf_counter() - t0
    spin = max(1000, int(20000 * one_call / 1e-3))           # a pure-Python loop of about one call's time

    def python_loop():
        total = 0
        for i in range(spin):
            total += i * i
        return total

    pools = {1: Workers(1), 2: Workers(2)}
    for pool in pools.values():                             # warm: each thread's workspace and call plan
        pool.run(graphc_call, pool.k)
    out = {}
    for name, job, n in (("graphc", graphc_call, calls), ("python", python_loop, calls)):
        common.wait_quiet(wait_s)
        a = common.cpu_busy()
        times = {1: [], 2: []}
        for r in range(reps):
            for k in ((1, 2) if r % 2 == 0 else (2, 1)):
                time.sleep(common.PAUSE_S)
                times[k].append(pools[k].run(job, n))
        out[name] = dict(calls=n, one=median(times[1]), two=median(times[2]), load=common.foreign_load(a, common.cpu_busy()))
    for pool in pools.values():
        pool.close()
    for k, v in m.value_and_grad(**args)[1].items():       # threads changed nothing
        assert (v == reference[k]).all(), k
    out["machine"] = dict(cores=os.cpu_count(), affinity=sorted(os.sched_getaffinity(0)),
                          graphc=getattr(graphc, "__version__", "?"))
    return out


def table(res: dict, cmd: str) -> str:
    def mark(load):
        return f" †{load:.0%}" if load > common.QUIET_LOAD else ""
    rows = [("mnist `value_and_grad` (784-512-10, batch 128, float32, graphc threads=1)", res["graphc"]),
            ("control: pure-Python loop of similar length (holds the GIL)", res["python"])]
    lines = ["### Two Python threads calling one model: is the GIL released during the C call?", "",
             "| work | calls | one Python thread (ms) | the same calls on two Python threads (ms) | speed-up |",
             "|---|---|---|---|---|"]
    for label, r in rows:
        lines.append(f"| {label}{mark(r['load'])} | {r['calls']} | {r['one'] * 1e3:,.1f} | {r['two'] * 1e3:,.1f} "
                     f"| {r['one'] / r['two']:.2f}× |")
    mach = res["machine"]
    lines += ["", f"Speed-up = one thread's time / two threads' time, medians; 2× is two cores fully used, "
                  f"1× no overlap. Machine: {mach['cores']} cores (affinity {mach['affinity']}), "
                  f"graphc {mach['graphc']}. Command: `{cmd}`"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=300, help="calls per measurement (default 300)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each variant (median; default 5)")
    ap.add_argument("--wait", type=float, default=5.0, help="seconds to wait for a quiet machine (default 5)")
    ap.add_argument("--write-readme", action="store_true", help="put the table into benchmarks/README.md")
    args = ap.parse_args(argv)
    for k in common.THREAD_VARIABLES:
        os.environ[k] = "1"
    os.environ.setdefault("GRAPHC_CACHE_DIR", common.CACHE)
    text = table(measure(args.calls, args.reps, args.wait), common.command(__file__, argv))
    print(text)
    if args.write_readme:
        common.write_readme_block(START, END, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
