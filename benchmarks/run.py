#!/usr/bin/env python3
"""graphc benchmark suite (issue 6): graphc against NumPy closed forms, PyTorch eager and JAX jit.

    python benchmarks/run.py                      # full run (about 5-10 minutes)
    python benchmarks/run.py --quick              # tiny, digits, mnist; fewer repetitions (< 2 minutes)
    python benchmarks/run.py --sizes tiny,mnist --threads 2 --reps 9
    python benchmarks/run.py --write-readme       # also put the tables into benchmarks/README.md
    (then the CNN models, benchmarks/cnn.py, unless --no-cnn)

How it measures (see benchmarks/README.md for the columns):

- One worker subprocess per thread count, started with OMP_NUM_THREADS,
  OPENBLAS_NUM_THREADS, MKL_NUM_THREADS and GRAPHC_NUM_THREADS set before NumPy
  is imported and OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed (they slow a
  current OpenBLAS). The 1-thread worker runs under `taskset -c 0`, which is the
  only way to hold JAX to one core; graphc gets `threads=`, PyTorch
  `torch.set_num_threads`.
- Inside a worker the contenders alternate: each repetition times every
  contender once (rotating who goes first), a repetition being a loop of calls
  long enough to time reliably; the tables show the median over repetitions.
- Everything is float32, the same initial parameters, the same batch, plain SGD lr=0.1.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (timing, raw callers, the worker processes)
from common import (CACHE, HERE, QUIET_LOAD, ROOT, SRC, bench, cpu_busy, foreign_load,  # noqa: E402
                    raw_caller, raw_step_caller, wait_quiet)

SPECS = HERE / "specs"

# name: (layer sizes [Dx, hidden..., Nc], batch, mini-batches per fit epoch)
SIZES = {
    "tiny": ([10, 20, 5], 1, 4000),
    "digits": ([64, 128, 10], 32, 400),
    "mnist": ([784, 512, 10], 128, 40),
    "wide": ([1024, 4096, 1000], 256, 4),
    "mlp3": ([784, 1024, 1024, 10], 256, 6),
}
QUICK_SIZES = ["tiny", "digits", "mnist"]
LR = 0.1

# Targets of issue 6, in µs; threads=None: any thread count, else only that one.
TRAIN_TARGET = {"tiny": (3.0, None), "digits": (20.0, None), "mnist": (1600.0, 2), "wide": (60000.0, 2)}
FIT_TARGET = {"tiny": (1.0, None)}
SGEMM_TARGET = {"mnist": 0.80, "wide": 0.90}          # share of the machine's sgemm rate, 2 threads
EXPORT_RATIO_TARGET = 2.0
FIRST_BUILD_TARGET_S = 5.0                             # "a few seconds"
CACHED_LOAD_TARGET_MS = 100.0


# ====================================================================== specs
def param_names(layers):
    if len(layers) == 3:
        return [("W", "b1"), ("U", "b2")]
    return [(f"W{i + 1}", f"b{i + 1}") for i in range(len(layers) - 1)]


def spec_text(size: str, train: bool) -> str:
    layers, batch, _ = SIZES[size]
    names = param_names(layers)
    dims = ["Dx"] + [f"H{i + 1}" for i in range(len(layers) - 2)] + ["Nc"]
    if len(layers) == 3:
        dims = ["Dx", "Dh", "Nc"]
    kind = "train step" if train else "inference"
    lines = [f"# Benchmark spec ({kind}), size {size!r}: layers {layers}, batch {batch}.",
             "# Written by benchmarks/run.py (write_specs); edit SIZES there, not this file.",
             f'name = "bench_{size}_{"train" if train else "infer"}"', "", "[dims]"]
    lines += [f"{d} = {v}" for d, v in zip(dims, layers)]
    lines += ['N = "batch"', "", "[inputs]", 'x = ["N", "Dx"]']
    if train:
        lines.append('y = { shape = ["N"], dtype = "int32" }')
    lines += ["", "[params]"]
    for i, (w, b) in enumerate(names):
        lines.append(f'{w} = ["{dims[i + 1]}", "{dims[i]}"]')
        lines.append(f'{b} = ["{dims[i + 1]}"]')
    lines += ["", "[graph]"]
    h = "x"
    for i, (w, b) in enumerate(names):
        last = i == len(names) - 1
        out = "theta" if last else ("h" if len(names) == 2 else f"h{i + 1}")
        expr = f"{h} @ {w}.T + {b}"
        lines.append(f'{out} = "{expr if last else f"relu({expr})"}"')
        h = out
    if train:
        lines += ['J = "cross_entropy(theta, y)"', "", "[outputs]", 'loss = "J"', "", "[grad]",
                  'of = "J"', "wrt = [" + ", ".join(f'"{n}"' for pair in names for n in pair) + "]"]
    else:
        lines += ["", "[outputs]", 'probs = "softmax(theta)"']
    return "\n".join(lines) + "\n"


def write_specs():
    SPECS.mkdir(exist_ok=True)
    for size in SIZES:
        for train in (True, False):
            p = SPECS / f"{size}_{'train' if train else 'infer'}.toml"
            text = spec_text(size, train)
            if not p.exists() or p.read_text() != text:
                p.write_text(text)


def flops_train(layers, batch):
    """2*M*N*K per GEMM: forward one per layer; backward dW per layer and dh for every
    layer but the first (no dx). For the 1-layer net: 2 forward + 3 backward GEMMs."""
    pairs = list(zip(layers[:-1], layers[1:]))
    fwd = sum(2 * batch * a * b for a, b in pairs)
    bwd = sum(2 * batch * a * b for a, b in pairs) + sum(2 * batch * a * b for a, b in pairs[1:])
    return fwd + bwd


def flops_infer(layers, batch):
    return sum(2 * batch * a * b for a, b in zip(layers[:-1], layers[1:]))


# ====================================================================== the worker (one thread count)
def init_params(layers, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    out = []
    for a, b in zip(layers[:-1], layers[1:]):
        W = (rng.standard_normal((b, a)) * np.sqrt(2.0 / a)).astype(np.float32)
        out.append((W, np.zeros(b, np.float32)))
    return out


def make_data(layers, batch, steps, seed=1):
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, layers[0]), dtype=np.float32)
    y = rng.integers(0, layers[-1], batch).astype(np.int32)
    xf = rng.standard_normal((batch * steps, layers[0]), dtype=np.float32)
    yf = rng.integers(0, layers[-1], batch * steps).astype(np.int32)
    return x, y, xf, yf


def graphc_param_dict(layers, params):
    import numpy as np
    d = {}
    for (wn, bn), (W, b) in zip(param_names(layers), params):
        d[wn], d[bn] = np.array(W), np.array(b)
    return d


def worker(args) -> dict:
    import numpy as np
    sys.path.insert(0, str(SRC))
    sys.path.insert(0, str(HERE))
    import graphc
    import peers as P

    T = args.worker_threads
    res = {"threads": T, "env": {k: os.environ.get(k) for k in
                                 ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                  "GRAPHC_ISA")},
           "affinity": sorted(os.sched_getaffinity(0)), "sizes": {}, "notes": []}
    try:
        from threadpoolctl import threadpool_info
        res["blas"] = [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
                       for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        res["blas"] = None
        res["notes"].append("threadpoolctl not installed: OpenBLAS kernel not recorded")

    reps, sample = args.reps, args.sample
    snap0 = cpu_busy()
    wait_budget = [5.0 if args.quick else 40.0]      # seconds this worker may spend waiting for quiet, in all

    def wait():
        t0 = time.perf_counter()
        wait_quiet(min(10.0, wait_budget[0]))
        wait_budget[0] = max(0.0, wait_budget[0] - (time.perf_counter() - t0))

    def measure(out, kind, fns, r, div=None):
        """bench() after waiting for a quiet machine; records the foreign load seen while measuring."""
        wait()
        out[kind], out.setdefault("load", {})[kind] = common.measured(fns, r, sample, div, wait_s=0)
    # ---- the machine's sgemm figure, NumPy float32 2048^3: measured at the start and again before
    # every size; the table uses the best (other processes only ever slow it down)
    ga = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    gb = np.random.default_rng(1).standard_normal((2048, 2048), dtype=np.float32)
    res["sgemm_runs"] = []

    def sgemm(n):
        ga @ gb
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            ga @ gb
            ts.append(time.perf_counter() - t0)
        res["sgemm_runs"].append(2 * 2048 ** 3 / median(ts) / 1e9)
        res["sgemm_gflops"] = max(res["sgemm_runs"])

    sgemm(3)

    want = [p for p in args.peers.split(",") if p]
    have = {"numpy": np.__version__}
    for name in ("torch", "jax"):
        if name in want:
            v = P.available(name)
            if v:
                have[name] = v
            else:
                res["notes"].append(f"{name} not installed: skipped")
    res["versions"] = dict(have, graphc=getattr(graphc, "__version__", "?"))
    res["training_api"] = True

    def compile_train(size, native=True):
        """The train-step model with graphc.SGD, or (training API missing or failing) without one."""
        spec = str(SPECS / f"{size}_train.toml")
        if hasattr(graphc, "SGD"):
            try:
                m = graphc.compile(spec, threads=T, optimizer=graphc.SGD(lr=LR), native=native)
                if hasattr(m, "train_step") and hasattr(m, "fit"):
                    return m, True
                why = "the compiled model has no train_step/fit"
            except Exception as e:                                   # noqa: BLE001
                why = f"compile(optimizer=SGD) failed: {type(e).__name__}: {str(e)[:200]}"
        else:
            why = "graphc.SGD does not exist"
        note = (f"graphc training API unusable ({why}): the graphc train-step column times value_and_grad "
                f"(forward + backward, no SGD update) as a stand-in; fit not timed")
        if note not in res["notes"]:
            res["notes"].append(note)
        res["training_api"] = False
        return graphc.compile(spec, threads=T, native=native), False

    for size in args.sizes.split(","):
        layers, batch, steps = SIZES[size]
        if args.quick:
            steps = max(2, steps // 4)
        out = res["sizes"][size] = {}
        snap_size = cpu_busy()
        params = init_params(layers)
        x, y, xf, yf = make_data(layers, batch, steps)
        t0 = time.perf_counter()
        wait()
        sgemm(2)
        mt, training = compile_train(size)
        mi = graphc.compile(str(SPECS / f"{size}_infer.toml"), threads=T)
        out["graphc_compile_s"] = time.perf_counter() - t0
        res.setdefault("graphc_isa", getattr(mi, "isa", "not recorded"))
        gp = graphc_param_dict(layers, params)
        gpi = graphc_param_dict(layers, params)
        if training:
            state = mt.train_state(gp)
            g_step = lambda: mt.train_step(state, x=x, y=y)                       # noqa: E731
            g_fit = lambda: mt.fit(state, x=xf, y=yf, batch_size=batch, epochs=1, seed=0, progress=False)  # noqa: E731
        else:
            g_step = lambda: mt.value_and_grad(x=x, y=y, **gp)                    # noqa: E731
            g_fit = None
        g_infer = lambda: mi.forward(x=x, **gpi)                                  # noqa: E731

        peer_objs = {"numpy": P.make_numpy([(W.copy(), b.copy()) for W, b in params], x, y, xf, yf, batch, LR)}
        if "torch" in have:
            peer_objs["torch"] = P.make_torch(params, x, y, xf, yf, batch, LR, threads=T)
        if "jax" in have:
            peer_objs["jax"] = P.make_jax(params, x, y, xf, yf, batch, LR)

        big = flops_train(layers, batch) > 2e9
        r = max(3, reps - 2) if big else reps
        measure(out, "train", {"graphc": g_step, **{k: p.step for k, p in peer_objs.items()}}, r)
        measure(out, "infer", {"graphc": g_infer, **{k: p.infer for k, p in peer_objs.items()}}, r)
        fit_fns = {k: p.epoch for k, p in peer_objs.items()}
        div = {k: p.steps for k, p in peer_objs.items()}
        if g_fit is not None:
            fit_fns = {"graphc": g_fit, **fit_fns}
            div["graphc"] = steps
        measure(out, "fit", fit_fns, max(3, r - 2), div)
        out["flops_train"] = flops_train(layers, batch)
        out["flops_infer"] = flops_infer(layers, batch)

        try:
            # ---- diagnostics: Python-side overhead per call (small sizes)
            if size in ("tiny", "digits"):
                vg_arrays = dict(x=x, y=y, **graphc_param_dict(layers, params))
                if "value_and_grad" in mt.functions:
                    raw_vg = raw_caller(mt, "value_and_grad", vg_arrays)
                    api_vg = lambda: mt.value_and_grad(**vg_arrays)                  # noqa: E731
                else:
                    raw_vg = api_vg = None
                raw_fw = raw_caller(mi, "forward", dict(x=x, **gpi))
                fns = {"forward_api": g_infer, "forward_raw": raw_fw}
                if raw_vg:
                    fns.update(vg_api=api_vg, vg_raw=raw_vg)
                if training:
                    raw_state = mt.train_state(graphc_param_dict(layers, params))
                    fns.update(step_api=lambda: mt.train_step(raw_state, x=x, y=y),    # noqa: E731
                               step_raw=raw_step_caller(mt, raw_state, dict(x=x, y=y)))
                ffi = mi.ffi
                buf = np.zeros(16, np.float32)
                fns["from_buffer"] = lambda: ffi.from_buffer("float[]", buf)
                fns["np_empty"] = lambda: np.empty((batch, layers[-1]), np.float32)
                measure(out, "overhead", fns, reps)

            # ---- diagnostics: graphc's GEMMs alone (1-layer, large sizes)
            if size in ("mnist", "wide") and len(layers) == 3 and not args.no_gemm:
                wait()
                a0 = cpu_busy()
                out["gemms"] = gemm_breakdown(graphc, layers, batch, T, reps, sample, g_step)
                out.setdefault("load", {})["gemms"] = foreign_load(a0, cpu_busy())

            # ---- exported (portable, no -march=native) vs native, mnist
            if size == "mnist":
                mtp, training = compile_train(size, native=False)
                mip = graphc.compile(str(SPECS / f"{size}_infer.toml"), threads=T, native=False)
                gp2 = graphc_param_dict(layers, params)
                if training:
                    st2 = mtp.train_state(gp2)
                    p_step = lambda: mtp.train_step(st2, x=x, y=y)                   # noqa: E731
                else:
                    p_step = lambda: mtp.value_and_grad(x=x, y=y, **gp2)              # noqa: E731
                measure(out, "export", {"native_train": g_step, "portable_train": p_step,
                                        "native_infer": g_infer, "portable_infer": lambda: mip.forward(x=x, **gpi)}, reps)
        except Exception as e:                                           # noqa: BLE001
            res["notes"].append(f"{size}: a diagnostic failed: {type(e).__name__}: {str(e)[:200]}")
        del peer_objs
        out["foreign_load"] = foreign_load(snap_size, cpu_busy())
    res["foreign_load"] = foreign_load(snap0, cpu_busy())
    return res


def gemm_breakdown(graphc, layers, batch, T, reps, sample, whole):
    """Each GEMM of the 1-layer train step as its own graphc model (forward only), timed alone,
    alternating with the whole train step `whole` (so the difference is measured in one run)."""
    import numpy as np
    Dx, Dh, Nc = layers
    B = batch
    # (label, A name/shape, B name/shape, expression, M, N, K)
    cases = [
        ("z = x W^T (NT)", ("a", (B, Dx)), ("b", (Dh, Dx)), "a @ b.T", B, Dh, Dx),
        ("theta = h U^T (NT)", ("a", (B, Dh)), ("b", (Nc, Dh)), "a @ b.T", B, Nc, Dh),
        ("dU = d1^T h (TN)", ("a", (B, Nc)), ("b", (B, Dh)), "a.T @ b", Nc, Dh, B),
        ("dh = d1 U (NN)", ("a", (B, Nc)), ("b", (Nc, Dh)), "a @ b", B, Dh, Nc),
        ("dW = d2^T x (TN)", ("a", (B, Dh)), ("b", (B, Dx)), "a.T @ b", Dh, Dx, B),
    ]
    rng = np.random.default_rng(3)
    fns, info = {}, {}
    for label, (an, ash), (bn, bsh), expr, M, N, K in cases:
        g = graphc.Graph(f"gemm_{M}x{N}x{K}_{expr.replace(' ', '').replace('@', 'm').replace('.', '')}")
        A = g.input(an, ash)
        Bv = g.input(bn, bsh)
        out = eval(expr, {}, {"a": A, "b": Bv})      # noqa: S307 (a fixed table above)
        g.output("out", out)
        m = graphc.compile(g, threads=T)
        arrs = {an: rng.standard_normal(ash, dtype=np.float32), bn: rng.standard_normal(bsh, dtype=np.float32)}
        fns[label] = raw_caller(m, "forward", arrs)
        info[label] = 2 * M * N * K
    fns["whole"] = whole
    t = bench(fns, reps, sample)
    return {k: {"s": t[k], "flops": info.get(k, 0)} for k in t}


# ====================================================================== the parent: compile times
COMPILE_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {src!r})
import graphc
t1 = time.perf_counter()
m = graphc.compile({spec!r})
t2 = time.perf_counter()
r = {{"import_s": t1 - t0, "compile_s": t2 - t1, "cached": bool(m.built.cached)}}
try:  # where a compile's time goes: parse, codegen (autodiff, passes, render), build-or-load
    from graphc.backend.codegen import generate
    from graphc.native.build import build
    from graphc.native.runtime import default_threads
    ta = time.perf_counter(); g = graphc.load({spec!r}); tb = time.perf_counter()
    c = generate(g, *g.grad_spec, dtype="float32", threads=default_threads()); tc = time.perf_counter()
    build(g.name, c.source, c.header, c.cdef, native=True); td = time.perf_counter()
    r.update(parse_s=tb - ta, codegen_s=tc - tb, build_s=td - tc)
except Exception as e:
    r["breakdown_error"] = repr(e)
print(json.dumps(r))
"""


def compile_times(specs, env):
    rows = {}
    for spec in specs:
        tmp = tempfile.mkdtemp(prefix="gcache_first_")
        e = dict(env, GRAPHC_CACHE_DIR=tmp)
        code = COMPILE_SNIPPET.format(src=str(SRC), spec=str(spec))
        try:
            r1 = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300)
            r2 = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=300)
            if r1.returncode or r2.returncode:
                rows[spec.name] = {"error": (r1.stderr or r2.stderr).strip().splitlines()[-1:]}
            else:
                rows[spec.name] = {"first": json.loads(r1.stdout.strip().splitlines()[-1]),
                                   "cached": json.loads(r2.stdout.strip().splitlines()[-1])}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


# ====================================================================== tables
def tmark(T, d, kind):
    """The threads cell: a dagger when other processes loaded the machine during the measurement."""
    load = d.get("load", {}).get(kind, 0)
    return f"{T} †{load:.0%}" if load > QUIET_LOAD else str(T)


def us(s):
    if s is None:
        return "—"
    v = s * 1e6
    if v < 10:
        return f"{v:.2f}"
    if v < 1000:
        return f"{v:.1f}"
    return f"{v:,.0f}"


PEER_COLS = [("numpy", "NumPy closed forms"), ("torch", "PyTorch eager"), ("jax", "JAX jit")]


def met(ok):
    return "met" if ok else "**not met**"


def table_times(results, kind, title, target_fn, note_graphc=""):
    lines = [f"### {title}", "",
             f"| size | threads | graphc{note_graphc} | " + " | ".join(c for _, c in PEER_COLS) +
             " | best peer | graphc speed-up vs best peer | target | met? |",
             "|---|---|---|" + "---|" * len(PEER_COLS) + "---|---|---|---|"]
    for size in SIZES:
        for T, res in results:
            d = res["sizes"].get(size)
            if not d:
                continue
            t = d[kind]
            peers = {k: v for k, v in t.items() if k != "graphc"}
            best = min(peers, key=peers.get) if peers else None
            g = t.get("graphc")
            cells = [us(t.get(k)) if k in t else "skipped" for k, _ in PEER_COLS]
            speed = f"{peers[best] / g:.2f}×" if (g and best) else "—"
            target, ok = target_fn(size, T, g, peers)
            lines.append(f"| {size} | {tmark(T, d, kind)} | {us(g)} | " + " | ".join(cells) +
                         f" | {best or '—'} {us(peers.get(best)) if best else ''} | {speed} | {target} | {ok} |")
    return lines


def train_target(size, T, g, peers):
    if size in TRAIN_TARGET:
        lim, tt = TRAIN_TARGET[size]
        if tt is None or tt == T:
            return f"≤ {lim:g} µs" if lim < 1000 else f"≤ {lim / 1000:g} ms", met(g is not None and g * 1e6 <= lim)
    return "—", "—"


def infer_target(size, T, g, peers):
    return "faster than every peer", met(g is not None and all(g < v for v in peers.values()))


def fit_target(size, T, g, peers):
    if size in FIT_TARGET:
        lim, _ = FIT_TARGET[size]
        return f"≤ {lim:g} µs/step", met(g is not None and g * 1e6 <= lim)
    return "—", "—"


def table_gflops(results):
    lines = ["### Achieved GFLOP/s of graphc's train step vs the machine's sgemm (NumPy float32 2048³, best of the "
             "measurements in the same worker)", "",
             "| size | threads | GFLOP per step | graphc train step (µs) | graphc GFLOP/s | sgemm GFLOP/s | % of sgemm | "
             "best peer GFLOP/s | target | met? |", "|---|---|---|---|---|---|---|---|---|---|"]
    for size in SIZES:
        for T, res in results:
            d = res["sizes"].get(size)
            if not d:
                continue
            f, g = d["flops_train"], d["train"]["graphc"]
            peers = {k: v for k, v in d["train"].items() if k != "graphc"}
            bp = min(peers.values()) if peers else None
            gf = f / g / 1e9
            share = gf / res["sgemm_gflops"]
            if size in SGEMM_TARGET and T == 2:
                tgt, ok = f"≥ {SGEMM_TARGET[size]:.0%} of sgemm", met(share >= SGEMM_TARGET[size])
            else:
                tgt, ok = "—", "—"
            lines.append(f"| {size} | {tmark(T, d, 'train')} | {f / 1e9:.4g} | {us(g)} | {gf:.1f} | {res['sgemm_gflops']:.0f} | {share:.0%} | "
                         f"{f / bp / 1e9 if bp else 0:.1f} | {tgt} | {ok} |")
    return lines


def table_gemms(results):
    lines = []
    for T, res in results:
        for size in ("mnist", "wide"):
            d = res["sizes"].get(size)
            if not d or "gemms" not in d:
                continue
            if not lines:
                lines = ["### Where graphc's train step goes: each GEMM alone (a one-matmul graphc model, raw cffi call)", "",
                         "| size | threads | GEMM (M×N×K) | µs | GFLOP/s | % of sgemm |", "|---|---|---|---|---|---|"]
            tot_s = tot_f = 0
            for label, v in d["gemms"].items():
                if label == "whole":
                    continue
                tot_s += v["s"]
                tot_f += v["flops"]
                lines.append(f"| {size} | {tmark(T, d, 'gemms')} | {label} | {us(v['s'])} | {v['flops'] / v['s'] / 1e9:.1f} | "
                             f"{v['flops'] / v['s'] / 1e9 / res['sgemm_gflops']:.0%} |")
            g = d["gemms"]["whole"]["s"] if "whole" in d["gemms"] else d["train"]["graphc"]
            lines.append(f"| {size} | {tmark(T, d, 'gemms')} | **sum of GEMMs** vs whole train step "
                         f"{us(g)} µs (same alternation) | {us(tot_s)} | "
                         f"{tot_f / tot_s / 1e9:.1f} | rest (non-GEMM + call): {us(g - tot_s)} µs = {(g - tot_s) / g:.0%} |")
    return lines


def table_overhead(results):
    lines = []
    for T, res in results:
        for size in ("tiny", "digits"):
            d = res["sizes"].get(size)
            if not d or "overhead" not in d:
                continue
            if not lines:
                lines = ["### Python-side overhead per call (µs)", "",
                         "| size | threads | forward: API | forward: raw cffi call | value_and_grad: API | "
                         "value_and_grad: raw cffi call | train_step: API | train_step: raw cffi call | "
                         "one ffi.from_buffer | one np.empty |",
                         "|---|---|---|---|---|---|---|---|---|---|"]
            o = d["overhead"]
            lines.append(f"| {size} | {tmark(T, d, 'overhead')} | {us(o['forward_api'])} | {us(o['forward_raw'])} | {us(o.get('vg_api'))} | "
                         f"{us(o.get('vg_raw'))} | {us(o.get('step_api'))} | {us(o.get('step_raw'))} | "
                         f"{us(o['from_buffer'])} | {us(o['np_empty'])} |")
    return lines


def table_export(results):
    lines = []
    for T, res in results:
        d = res["sizes"].get("mnist")
        if not d or "export" not in d:
            continue
        if not lines:
            lines = ["### Exported portable C (no -march=native: `graphc.compile(..., native=False)`) vs native, mnist", "",
                     "| threads | call | native (µs) | portable (µs) | portable / native | target | met? |",
                     "|---|---|---|---|---|---|---|"]
        e = d["export"]
        for call in ("train", "infer"):
            n, p = e[f"native_{call}"], e[f"portable_{call}"]
            lines.append(f"| {tmark(T, d, 'export')} | {'train step' if call == 'train' else 'inference'} | {us(n)} | {us(p)} | {p / n:.2f}× | "
                         f"≤ {EXPORT_RATIO_TARGET:g}× | {met(p / n <= EXPORT_RATIO_TARGET)} |")
    return lines


def table_compile(rows):
    lines = ["### Compile time (`graphc.compile(spec)` in a fresh process; first: empty GRAPHC_CACHE_DIR, "
             "cached: a second process, same cache)", "",
             "| spec | first build (s) | cached load (ms) | of which parse / codegen / load .so (ms, repeated in-process) "
             "| import graphc (ms) | target | met? |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {' '.join(r['error'])} | | | | |")
            continue
        f, c = r["first"]["compile_s"], r["cached"]["compile_s"] * 1e3
        ok = f <= FIRST_BUILD_TARGET_S and c < CACHED_LOAD_TARGET_MS and r["cached"]["cached"]
        cc = r["cached"]
        parts = (f"{cc['parse_s'] * 1e3:.1f} / {cc['codegen_s'] * 1e3:.1f} / {cc['build_s'] * 1e3:.1f}"
                 if "parse_s" in cc else "—")
        lines.append(f"| {name} | {f:.2f} | {c:.1f}{'' if cc['cached'] else ' (rebuilt!)'} | {parts} | "
                     f"{cc['import_s'] * 1e3:.0f} | first ≤ {FIRST_BUILD_TARGET_S:g} s, cached < "
                     f"{CACHED_LOAD_TARGET_MS:g} ms | {met(ok)} |")
    return lines


def machine_line(results, cmd):
    model = common.cpu_model()
    v = results[0][1]["versions"] if results else {}
    blas = results[0][1].get("blas") if results else None
    kern = ", ".join(f"{b['internal_api']} {b['version']} {b['architecture']}" for b in blas) if blas else "not recorded"
    cores = os.cpu_count()
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    return (f"Machine: {model} ({isa}), {cores} cores, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, NumPy {v.get('numpy', '?')} (BLAS: {kern}), "
            f"PyTorch {v.get('torch', 'not installed')}, JAX {v.get('jax', 'not installed')}, graphc {v.get('graphc', '?')}"
            f"{'' if SRC == ROOT else f' (from a copy of the tree at {SRC})'}. "
            f"Command: `{cmd}`")


def render(results, compile_rows, cmd, elapsed):
    training = all(r["training_api"] for _, r in results)
    stand = "" if training else " (stand-in: value_and_grad, no update)"
    out = []
    out += table_times(results, "train", "Train step (forward + backward + SGD update), µs per step, median",
                       train_target, stand)
    out += [""] + table_times(results, "infer", "Inference (softmax probabilities of one batch), µs per call, median",
                              infer_target)
    out += [""] + table_times(results, "fit", "fit: µs per train step within one epoch "
                              "(graphc: `m.fit(epochs=1)`, one C call; NumPy/PyTorch: Python loop over shuffled "
                              "mini-batches; JAX: one jitted `lax.scan` epoch)", fit_target)
    out += [""] + table_gflops(results)
    for fn in (table_gemms, table_overhead, table_export):
        t = fn(results)
        if t:
            out += [""] + t
    if compile_rows:
        out += [""] + table_compile(compile_rows)
    notes = []
    for T, r in results:
        for n in r["notes"]:
            if n not in notes:
                notes.append(n)
        blas = r.get("blas")
        notes.append(f"{T}-thread worker: sgemm GFLOP/s measured " + ", ".join(f"{g:.0f}" for g in r.get("sgemm_runs", []))
                     + " (start, then before each size); the table uses the best")
        notes.append(f"{T}-thread worker: other processes used {r.get('foreign_load', 0):.0%} of the machine's "
                     f"{os.cpu_count()} cores while it ran; graphc kernels {r.get('graphc_isa', 'not recorded')} "
                     f"(GRAPHC_ISA={r['env'].get('GRAPHC_ISA') or 'auto'}); CPU affinity {r['affinity']}, OPENBLAS_CORETYPE={r['env']['OPENBLAS_CORETYPE']}, "
                     f"OPENBLAS_L2_SIZE={r['env']['OPENBLAS_L2_SIZE']}, BLAS: "
                     + (", ".join(f"{b['internal_api']} {b['version']} kernel={b['architecture']} threads={b['num_threads']}"
                                  for b in blas) if blas else "not recorded"))
    notes.append(f"† N%: other processes used N% of the machine's cores while that row was measured (the run waits "
                 f"for a quiet machine before each measurement, up to a limit); such rows are not representative, "
                 f"2-thread rows least of all")
    out += ["", "Notes:"] + [f"- {n}" for n in notes]
    out += [f"- whole run: {elapsed:.0f} s", "", machine_line(results, cmd)]
    return "\n".join(out)


# ====================================================================== main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", help=f"comma-separated, of {','.join(SIZES)} (default: all; --quick: {','.join(QUICK_SIZES)})")
    common.worker_options(ap, None, None, "torch,jax",
                          reps_help="repetitions per contender (median reported; default 7, --quick 3)",
                          sample_help="seconds per repetition of one contender (default 0.05, --quick 0.02)",
                          peers_help="optional peers to try (NumPy always runs)")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repetitions: under 2 minutes")
    ap.add_argument("--no-compile-times", action="store_true", help="skip the first-build / cached-load table")
    ap.add_argument("--no-gemm", action="store_true", help="skip the per-GEMM breakdown")
    ap.add_argument("--no-cnn", action="store_true", help="skip the CNN benchmark (benchmarks/cnn.py)")
    ap.add_argument("--no-gil-threads", action="store_true",
                    help="skip benchmarks/threads.py (two Python threads calling one model: is the GIL released?)")
    ap.add_argument("--isa", choices=("auto", "avx512", "avx2", "neon", "portable"), default="auto",
                    help="graphc's GEMM kernels (GRAPHC_ISA); avx2 also forces OpenBLAS to its AVX2 kernels "
                         "(OPENBLAS_CORETYPE=Haswell), so both run AVX2 on an AVX-512 machine")
    ap.add_argument("--write-readme", action="store_true", help="put the tables into benchmarks/README.md")
    args = ap.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 7
    if args.sample is None:
        args.sample = 0.02 if args.quick else 0.05
    if args.sizes is None:
        args.sizes = ",".join(QUICK_SIZES if args.quick else SIZES)
    bad = [s for s in args.sizes.split(",") if s not in SIZES]
    if bad:
        ap.error(f"unknown size(s) {bad}; known: {', '.join(SIZES)}")

    if common.worker_main(args, worker):
        return 0

    t_start = time.perf_counter()
    write_specs()
    cmd = common.command(__file__, argv)
    isa = dict(GRAPHC_ISA=args.isa, **({"OPENBLAS_CORETYPE": "Haswell"} if args.isa == "avx2" else {}))
    results = common.run_workers(__file__, args, ["--sizes", args.sizes] + ["--quick"] * args.quick
                                 + ["--no-gemm"] * args.no_gemm,
                                 env_of=lambda T: common.thread_env(T, **isa),
                                 say=lambda T, wargs: f"[run.py] {T} thread(s): {' '.join(wargs[:4])} ... "
                                                      f"({time.perf_counter() - t_start:.0f} s)")
    if results is None:
        return 1
    compile_rows = None
    if not args.no_compile_times:
        print(f"[run.py] compile times ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
        env = dict(os.environ)
        specs = sorted((ROOT / "examples").glob("*.toml"))
        if args.quick:
            specs = [s for s in specs if s.name == "one_layer.toml"] or specs[:1]
        specs += [SPECS / "mnist_train.toml"]
        compile_rows = compile_times(specs, env)
    text = render(results, compile_rows, cmd, time.perf_counter() - t_start)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "compile": compile_rows}, indent=1))
    if args.write_readme:
        common.write_readme_block("<!-- BENCH-RESULTS -->", "<!-- /BENCH-RESULTS -->", text)
    if not args.no_cnn:              # the CNN models, its own tables and README block (<!-- CNN-RESULTS -->)
        print(f"[run.py] CNN models, benchmarks/cnn.py ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
        subprocess.run([sys.executable, str(HERE / "cnn.py"), "--threads", args.threads]
                       + ["--reps", "3", "--models", "digits_cnn"] * args.quick + ["--write-readme"] * args.write_readme)
    if not args.no_gil_threads:      # its own table and README block (<!-- GIL-RESULTS -->), after the above
        print(f"[run.py] two Python threads, benchmarks/threads.py ({time.perf_counter() - t_start:.0f} s)",
              file=sys.stderr)
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
        env.setdefault("GRAPHC_CACHE_DIR", CACHE)
        subprocess.run([sys.executable, str(HERE / "threads.py"), "--wait", "5" if args.quick else "20"]
                       + ["--write-readme"] * args.write_readme, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
