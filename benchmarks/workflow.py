#!/usr/bin/env python3
"""How fast graphc is to work with (issue 15 item 6, issue 18 item 4): four figures, each from fresh processes.

    python benchmarks/workflow.py                 # 7 processes per figure (about a minute)
    python benchmarks/workflow.py --reps 15 --spec examples/mlp.toml --json /tmp/workflow.json

1. `import graphc` (and `import numpy` alone) in a new interpreter;
2. a cached load: `graphc.compile(spec)` in a new process, the spec compiled before (NumPy, which
   a program imports for its arrays, imported before it is timed; graphc's own modules are
   imported by graphc.compile, not by `import graphc`, so their cost is in this figure); and the
   whole start of a program that uses a model: `import graphc`, that cached load and a first
   call (`forward` on zeros at batch 4) in a new process (`import graphc` loads neither NumPy
   nor cffi: the first use of the API pays for them, so this is the figure a user waits for);
3. a first build of a new model with the kernel library cached: `graphc.compile` of a spec no
   process has compiled (the spec with a hidden size of its own), the cache holding the kernel
   library (and the Jinja and compiler probes) from an earlier build (NumPy imported before, as in 2);
4. the Python cost of a call: the tiny model of benchmarks/run.py (10-20-5, batch 1) called
   through the API (forward, value_and_grad, train_step with SGD) against the same C function
   called through cffi with pointers made once (its C time), in one process.

Each figure is the median over --reps processes (calls: over repetitions of 20,000 calls), wall
time and CPU time (this process's and its children's, the compiler's included): on a shared
machine the CPU time is the steadier of the two. Python bytecode is cached as a user's
install caches it (PYTHONDONTWRITEBYTECODE is lifted for the children, the .pyc files kept in a
temporary PYTHONPYCACHEPREFIX, warmed first). The builds go to a temporary GRAPHC_CACHE_DIR.
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
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, ROOT, SRC, cpu_model  # noqa: E402
# the first call of a model just loaded: zeros of each input and param at batch 4
FIRST_CALL = """
import numpy as np
g = m.graph
m.forward(**{k: np.zeros(tuple(4 if isinstance(d, str) else d for d in v.shape),
                         np.int32 if v.dtype == "int32" else m.dtype) for k, v in {**g.inputs, **g.params}.items()})
"""
TARGETS = {"import": 60.0, "cached": 50.0, "first": 500.0, "call": 1.5, "tiny_step": 2.0}   # ms, ms, ms, µs, µs

# Each child prints one JSON line: wall and CPU milliseconds of what it measures.
TIMED = """
import json, resource, sys, time
def cpu():
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime
{setup}
c0, t0 = cpu(), time.perf_counter()
{body}
t1, c1 = time.perf_counter(), cpu()
print(json.dumps({{"wall": (t1 - t0) * 1e3, "cpu": (c1 - c0) * 1e3{extra}}}))
"""

CALLS = r"""
import json, sys, time, timeit
sys.path.insert(0, sys.argv[1])
import numpy as np, graphc
import common, run as R
layers, batch, _ = R.SIZES["tiny"]
params = R.init_params(layers)
x, y, _, _ = R.make_data(layers, batch, 1)
mt = graphc.compile(str(R.SPECS / "tiny_train.toml"), optimizer=graphc.SGD(lr=0.1), threads=1)
mi = graphc.compile(str(R.SPECS / "tiny_infer.toml"), threads=1)
gpi, vg = R.graphc_param_dict(layers, params), dict(x=x, y=y, **R.graphc_param_dict(layers, params))
st = mt.train_state(R.graphc_param_dict(layers, params))
pairs = {"forward": (lambda: mi.forward(x=x, **gpi), common.raw_caller(mi, "forward", dict(x=x, **gpi))),
         "value_and_grad": (lambda: mt.value_and_grad(**vg), common.raw_caller(mt, "value_and_grad", vg)),
         "train_step": (lambda: mt.train_step(st, x=x, y=y), common.raw_step_caller(mt, st, dict(x=x, y=y)))}
out = {k: {"api": [], "c": []} for k in pairs}
for rep in range(int(sys.argv[2])):
    for k, (api, raw) in pairs.items():
        for name, f in (("api", api), ("c", raw)):
            f()
            for timer, unit in ((time.perf_counter, ""), (time.thread_time, "_cpu")):
                t = min(timeit.repeat(f, number=20000, repeat=3, timer=timer)) / 20000 * 1e6
                out[k].setdefault(name + unit, []).append(t)
print(json.dumps({k: {n: sorted(v)[len(v) // 2] for n, v in d.items() if v} for k, d in out.items()}))
"""


def isa() -> str:
    sys.path.insert(0, str(SRC))
    from graphc.native.isa import cpu_isas
    have = cpu_isas() or set()
    return next((i for i in ("avx512", "avx2", "neon") if i in have), "portable")


def child(env: dict, code: str, *args: str) -> dict:
    # in a folder of its own: `python -c` puts the working folder first on sys.path, ahead of PYTHONPATH
    run = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=900,
                         cwd=env["GRAPHC_CACHE_DIR"].rsplit("/", 1)[0])
    if run.returncode:
        raise RuntimeError(f"a measuring process failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def timed(env: dict, body: str, setup: str = "", extra: str = "") -> dict:
    return child(env, TIMED.format(setup=setup, body=body, extra=extra))


def summary(samples: list[dict]) -> dict:
    return {k: median(s[k] for s in samples) for k in ("wall", "cpu")} | {"n": len(samples)}


def new_spec(spec: Path, where: Path, i: int) -> Path:
    """The spec with its hidden size changed to one no earlier run used (so its C is new)."""
    import re
    text = spec.read_text()
    dims = re.search(r"^\[dims\]\n(.*?)(^\[|\Z)", text, re.S | re.M)
    sized = [m for m in re.finditer(r"^(\w+)\s*=\s*(\d+)", dims.group(1), re.M)] if dims else []
    if not sized:
        raise SystemExit(f"{spec}: no [dims] entry with a number to vary")
    m = sized[min(1, len(sized) - 1)]
    start = dims.start(1)
    value = 1000 + (os.getpid() % 1000) * 50 + i
    text = text[:start + m.start(2)] + str(value) + text[start + m.end(2):]
    out = where / f"{spec.stem}_{value}.toml"
    out.write_text(text)
    return out


def measure(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="graphc-workflow-"))
    env = {**os.environ, "PYTHONPATH": str(SRC), "GRAPHC_CACHE_DIR": str(work / "cache"),
           "PYTHONPYCACHEPREFIX": str(work / "pyc")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    spec = Path(args.spec).resolve()
    try:
        res = {"cpu": cpu_model(), "cores": os.cpu_count(), "isa": isa(), "spec": str(spec.relative_to(ROOT))
               if spec.is_relative_to(ROOT) else str(spec), "python": platform.python_version()}
        load0 = os.getloadavg()[0]
        # a build into a cache of its own writes the .pyc files (as a user's install has them), so
        # that the empty-cache figure below times the build, not Python compiling the packages
        timed(dict(env, GRAPHC_CACHE_DIR=str(work / "warm")), f"m = graphc.compile({str(spec)!r})", "import graphc")
        res["first_empty_cache"] = timed(env, f"m = graphc.compile({str(spec)!r})", "import numpy, graphc")
        timed(env, f"m = graphc.compile({str(spec)!r})", "import graphc")
        reps = args.reps
        res["numpy"] = summary([timed(env, "import numpy") for _ in range(reps)])
        res["import"] = summary([timed(env, "import graphc") for _ in range(reps)])
        res["cached"] = summary([timed(env, f"m = graphc.compile({str(spec)!r})", "import numpy, graphc")
                                 for _ in range(reps)])
        res["start"] = summary([timed(env, f"import graphc\nm = graphc.compile({str(spec)!r})" + FIRST_CALL)
                                for _ in range(reps)])
        res["first"] = summary([timed(env, f"m = graphc.compile({str(new_spec(spec, work, i))!r})",
                                      "import numpy, graphc")
                                for i in range(reps)])
        res["calls"] = child(env, CALLS, str(HERE), str(max(3, reps // 2)))
        res["load"] = [load0, os.getloadavg()[0]]
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(res: dict) -> str:
    def ms(d):
        return f"{d['wall']:.0f} ms (CPU {d['cpu']:.0f})"

    calls = res["calls"]
    lines = [f"Machine: {res['cpu']}, {res['cores']} cores ({res['isa']}), Python {res['python']}; "
             f"load average {res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at the end",
             "", "| figure | median, wall (CPU) | target |", "|---|---|---|",
             f"| `import numpy` alone | {ms(res['numpy'])} | — |",
             f"| `import graphc` | {ms(res['import'])} | ≤ {TARGETS['import']:.0f} ms |",
             f"| cached load: `graphc.compile(\"{Path(res['spec']).name}\")` in a new process (NumPy imported before) | "
             f"{ms(res['cached'])} | "
             f"≤ {TARGETS['cached']:.0f} ms |",
             f"| `import graphc`, that cached load and a first call, in a new process | {ms(res['start'])} | — |",
             f"| first build of a new model, kernel library cached (NumPy imported before) | {ms(res['first'])} | ≤ {TARGETS['first']:.0f} ms |",
             f"| (first build into an empty cache, kernel library included; one run) | {ms(res['first_empty_cache'])} | — |",
             "", "| tiny (10-20-5, batch 1), µs per call | from Python | C (cffi, pointers made once) | "
             "Python's part | target |", "|---|---|---|---|---|"]
    for k, d in calls.items():
        target = f"≤ {TARGETS['call']} µs above C" + (f"; ≤ {TARGETS['tiny_step']} µs in all" if k == "train_step" else "")
        lines.append(f"| {k} | {d['api']:.2f} (CPU {d['api_cpu']:.2f}) | {d['c']:.2f} (CPU {d['c_cpu']:.2f}) | "
                     f"{d['api'] - d['c']:.2f} (CPU {d['api_cpu'] - d['c_cpu']:.2f}) | {target} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="processes per figure (default 7)")
    parser.add_argument("--spec", default=str(ROOT / "examples" / "one_layer.toml"))
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    res = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))


if __name__ == "__main__":
    main()
