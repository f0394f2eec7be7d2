#!/usr/bin/env python3
"""graphc's CNN benchmark (issue 16, item 7): the digits CNN and MLPerf Tiny's ResNet-8 at batch 64,
train step, forward and fit, against PyTorch eager and JAX jit (each when installed), on 1 and 2
threads; and the convolution GEMMs' GFLOP/s against the machine's sgemm figure.

    python benchmarks/cnn.py                     # both models, 1 and 2 threads (about 5 minutes)
    python benchmarks/cnn.py --models digits_cnn --threads 1 --reps 3
    python benchmarks/cnn.py --write-readme      # also put the tables into benchmarks/README.md
    python benchmarks/run.py                     # runs this too, after its own tables (--no-cnn: not)

The models: benchmarks/specs/digits_cnn.toml (1x8x8, conv 3x3 16 + relu + max pool 2, conv 3x3 32
+ relu + max pool 2, dense 10) and benchmarks/specs/resnet8.toml (3x32x32, 16/32/64 filters, residual adds),
with a bias per convolution instead of batch norm (as the earlier runs measured them), and the
examples themselves: digits_cnn_bn (examples/digits_cnn.toml: batch norm after each convolution,
dropout 0.25 before the dense head) and resnet8_bn (examples/resnet8.toml: MLPerf Tiny's ResNet-8,
batch norm after each 3x3 convolution). The peers compute the same functions from the same initial
parameters (torch.nn.functional; jax.lax.conv_general_dilated; batch norm on the batch's statistics
in the train step, the running ones updated with momentum 0.1, and the running ones in the forward
pass), float32, plain SGD lr=0.01, cross-entropy. Measuring as benchmarks/run.py does (benchmarks/common.py): one
worker process per thread count (the 1-thread one under taskset -c 0, the only way to hold JAX to
one core), the contenders alternating within each repetition, medians reported.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402  (the suite's measuring helpers: bench, wait_quiet, raw callers, workers)
import peers as P  # noqa: E402

EXAMPLES = HERE.parent / "examples"
MODELS = {   # name: (spec, input shape, batch, minibatches per fit epoch)
    "digits_cnn": (HERE / "specs" / "digits_cnn.toml", (1, 8, 8), 64, 20),
    "resnet8": (HERE / "specs" / "resnet8.toml", (3, 32, 32), 64, 3),
    "digits_cnn_bn": (EXAMPLES / "digits_cnn.toml", (1, 8, 8), 64, 20),
    "resnet8_bn": (EXAMPLES / "resnet8.toml", (3, 32, 32), 64, 3),
}
DEFAULT_MODELS = "digits_cnn,resnet8,digits_cnn_bn,resnet8_bn"
LR = 0.01
CLASSES = 10


# ====================================================================== the models, for the peers
def digits_cnn(O, p, x):
    h = O.maxpool2(O.relu(O.conv(x, p["w1"], p["b1"], 1, 1)))
    h = O.maxpool2(O.relu(O.conv(h, p["w2"], p["b2"], 1, 1)))
    return O.flat(h) @ p["U"].T + p["c"]


def resnet8(O, p, x):
    h0 = O.relu(O.conv(x, p["w0"], p["b0"], 1, 1))
    a1 = O.relu(O.conv(h0, p["w1a"], p["b1a"], 1, 1))
    h1 = O.relu(O.conv(a1, p["w1b"], p["b1b"], 1, 1) + h0)
    a2 = O.relu(O.conv(h1, p["w2a"], p["b2a"], 2, 1))
    h2 = O.relu(O.conv(a2, p["w2b"], p["b2b"], 1, 1) + O.conv(h1, p["w2s"], p["b2s"], 2, 0))
    a3 = O.relu(O.conv(h2, p["w3a"], p["b3a"], 2, 1))
    h3 = O.relu(O.conv(a3, p["w3b"], p["b3b"], 1, 1) + O.conv(h2, p["w3s"], p["b3s"], 2, 0))
    return O.gap(h3) @ p["U"].T + p["c"]


def digits_cnn_bn(O, p, x):       # examples/digits_cnn.toml: batch norm and dropout
    h = O.maxpool2(O.relu(O.bn(O.conv(x, p["w1"], None, 1, 1), p, "mean1", "var1", "g1", "b1")))
    h = O.maxpool2(O.relu(O.bn(O.conv(h, p["w2"], None, 1, 1), p, "mean2", "var2", "g2", "b2")))
    return O.dropout(O.flat(h), 0.25) @ p["U"].T + p["c"]


def resnet8_bn(O, p, x):          # examples/resnet8.toml: MLPerf Tiny's, batch norm after each 3x3
    bn = lambda z, i: O.bn(z, p, f"m{i}", f"v{i}", f"g{i}", f"b{i}")   # noqa: E731
    h0 = O.relu(bn(O.conv(x, p["w0"], None, 1, 1), "0"))
    a1 = O.relu(bn(O.conv(h0, p["w1a"], None, 1, 1), "1a"))
    h1 = O.relu(bn(O.conv(a1, p["w1b"], None, 1, 1), "1b") + h0)
    a2 = O.relu(bn(O.conv(h1, p["w2a"], None, 2, 1), "2a"))
    h2 = O.relu(bn(O.conv(a2, p["w2b"], None, 1, 1), "2b") + O.conv(h1, p["w2s"], p["b2s"], 2, 0))
    a3 = O.relu(bn(O.conv(h2, p["w3a"], None, 2, 1), "3a"))
    h3 = O.relu(bn(O.conv(a3, p["w3b"], None, 1, 1), "3b") + O.conv(h2, p["w3s"], p["b3s"], 2, 0))
    return O.gap(h3) @ p["U"].T + p["c"]


FORWARD = {"digits_cnn": digits_cnn, "resnet8": resnet8, "digits_cnn_bn": digits_cnn_bn, "resnet8_bn": resnet8_bn}
MOMENTUM, EPS = 0.1, 1e-5      # batch_norm's defaults, as torch's


class TorchOps:
    def __init__(self):
        import torch
        import torch.nn.functional as F
        self.F, self.torch = F, torch

    def conv(self, x, w, b, stride, padding):
        return self.F.conv2d(x, w, b, stride=stride, padding=padding)

    def relu(self, x):
        return self.F.relu(x)

    def maxpool2(self, x):
        return self.F.max_pool2d(x, 2)

    def flat(self, x):
        return x.flatten(1)

    def gap(self, x):
        return x.mean(dim=(2, 3))

    training = True

    def bn(self, x, p, mean, var, g, b):
        """torch's batch norm: batch statistics and the running ones updated in place when training."""
        return self.F.batch_norm(x, p[mean], p[var], p[g], p[b], self.training, MOMENTUM, EPS)

    def dropout(self, x, rate):
        return self.F.dropout(x, rate, self.training)


class JaxOps:
    def __init__(self):
        import jax
        import jax.numpy as jnp
        self.lax, self.jnp = jax.lax, jnp

    def conv(self, x, w, b, stride, padding):
        y = self.lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                          dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y if b is None else y + b[None, :, None, None]

    def relu(self, x):
        return self.jnp.maximum(x, 0)

    def maxpool2(self, x):
        return self.lax.reduce_window(x, -self.jnp.inf, self.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def flat(self, x):
        return x.reshape(x.shape[0], -1)

    def gap(self, x):
        return x.mean(axis=(2, 3))

    training, key = True, None

    def bn(self, x, p, mean, var, g, b):
        """Batch norm: batch statistics (the new running ones noted in self.updates) when
        training, else the running ones; the running variance unbiased, as torch's."""
        jnp = self.jnp
        if not self.training:
            mu, v = p[mean], p[var]
        else:
            mu, v = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
            count = x.size // x.shape[1]
            self.updates[mean] = (1 - MOMENTUM) * p[mean] + MOMENTUM * mu
            self.updates[var] = (1 - MOMENTUM) * p[var] + MOMENTUM * v * count / (count - 1)
        scale = p[g] / jnp.sqrt(v + EPS)
        return (x - mu[None, :, None, None]) * scale[None, :, None, None] + p[b][None, :, None, None]

    def dropout(self, x, rate):
        if not self.training:
            return x
        import jax
        keep = jax.random.bernoulli(self.key, 1 - rate, x.shape)
        return self.jnp.where(keep, x / (1 - rate), 0)


def make_torch(name, params, state, x, y, xf, yf, B, T):
    import torch
    torch.set_num_threads(T)
    O, fwd = TorchOps(), FORWARD[name]
    p = {k: torch.tensor(v, requires_grad=k not in state) for k, v in params.items()}
    opt = torch.optim.SGD([v for k, v in p.items() if k not in state], lr=LR)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y.astype("int64"))
    batches = [(torch.from_numpy(xf[i:i + B]), torch.from_numpy(yf[i:i + B].astype("int64")))
               for i in range(0, len(xf), B)]

    def step(bx=tx, by=ty):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(fwd(O, p, bx), by)
        loss.backward()
        opt.step()
        return loss

    def infer():
        O.training = False
        with torch.inference_mode():
            out = torch.softmax(fwd(O, p, tx), dim=1)
        O.training = True
        return out

    def epoch():
        for bx, by in batches:
            step(bx, by)
    return step, infer, epoch


def make_jax(name, params, state, x, y, xf, yf, B):
    import jax
    import jax.numpy as jnp
    O, fwd = JaxOps(), FORWARD[name]

    def loss_fn(p, s, bx, by, key):
        O.training, O.key, O.updates = True, key, {}
        logp = jax.nn.log_softmax(fwd(O, {**p, **s}, bx))
        return -jnp.mean(jnp.take_along_axis(logp, by[:, None], axis=1)), dict(O.updates)

    @jax.jit
    def sgd(ps, bx, by, key):
        p, s = ps
        (loss, new_s), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s, bx, by, key)
        return (jax.tree_util.tree_map(lambda a, b: a - LR * b, p, g), {**s, **new_s}), loss

    def predict_fn(ps, bx):
        O.training = False
        return jax.nn.softmax(fwd(O, {**ps[0], **ps[1]}, bx))

    predict = jax.jit(predict_fn)
    key = jax.random.PRNGKey(0)
    state = [({k: jnp.asarray(v) for k, v in params.items() if k not in state},
              {k: jnp.asarray(v) for k, v in params.items() if k in state})]
    jx, jy = jnp.asarray(x), jnp.asarray(y)
    batches = [(jnp.asarray(xf[i:i + B]), jnp.asarray(yf[i:i + B])) for i in range(0, len(xf), B)]

    def step():
        state[0], loss = sgd(state[0], jx, jy, key)
        loss.block_until_ready()

    def infer():
        predict(state[0], jx).block_until_ready()

    def epoch():
        loss = None
        for bx, by in batches:
            state[0], loss = sgd(state[0], bx, by, key)
        loss.block_until_ready()
    return step, infer, epoch


# ====================================================================== the convolution GEMMs
def conv_gemms(spec_graph, B):
    """(label, M, N, K, form) of every GEMM call of the convolutions of a spec at batch B, as graphc
    runs them: over the patch planes (ops/conv.py's patch_planes), one call per image (and per block
    of columns, or chunk of pixels) of z[n] = W P[n] (NN), dWᵀ += P[n] δ[n]ᵀ (NT) and dP[n] = Wᵀ δ[n]
    (TN); else the batch-wide patch rows: z = P Wᵀ (NT), dW = δᵀ P (TN) and dP = δ W (NN)."""
    from graphc.backend.packing import DIRECT_WORK
    from graphc.backend.schedule import POINTWISE_CHUNK, POINTWISE_COLUMNS
    from graphc.ops.conv import patch_planes
    from graphc.ops.windows import geometry
    out = []
    for n in spec_graph.nodes:
        if n.op.name != "conv2d":
            continue
        x, w = n.inputs[:2]
        a = n.attrs
        g = geometry("conv2d", x.type, w.shape[2:], a["stride"], a["padding"], a["dilation"])
        co, k, hw = w.shape[0], w.shape[1] * w.shape[2] * w.shape[3], g.Ho * g.Wo
        name = n.output.name
        if patch_planes(g, w.shape, a["groups"]):
            def block(M, K):
                cols = DIRECT_WORK // (M * K) // POINTWISE_COLUMNS * POINTWISE_COLUMNS
                if not cols or cols >= hw:
                    return hw
                blocks = -(-hw // cols)
                return -(-hw // blocks) // -POINTWISE_COLUMNS * -POINTWISE_COLUMNS
            out += [(f"{name}: z[n] = W P[n]", co, block(co, k), k, "nn"),
                    (f"{name}: dWᵀ += P[n] δ[n]ᵀ", k, co, min(hw, POINTWISE_CHUNK), "nt"),
                    (f"{name}: dP[n] = Wᵀ δ[n]", k, block(k, co), co, "tn")]
            continue
        rows = B * hw
        out += [(f"{name}: z = P Wᵀ", rows, co, k, "nt"), (f"{name}: dW = δᵀ P", co, k, rows, "tn"),
                (f"{name}: dP = δ W", rows, k, co, "nn")]
    return out


def gemm_rates(graphc, np, gemms, T, reps, sample):
    """GFLOP/s of graphc's GEMM (a one-product model each, called raw) and NumPy's on each shape."""
    rng = np.random.default_rng(3)
    res, seen = {}, {}
    for label, M, N, K, form in gemms:
        key = (M, N, K, form)
        if key in seen:
            res[label] = seen[key]
            continue
        ash = (M, K) if form != "tn" else (K, M)
        bsh = (N, K) if form == "nt" else (K, N)
        g = graphc.Graph(f"cgemm_{M}x{N}x{K}_{form}")
        a, b = g.input("a", ash), g.input("b", bsh)
        g.output("out", {"nt": lambda: a @ b.T, "tn": lambda: a.T @ b, "nn": lambda: a @ b}[form]())
        m = graphc.compile(g, threads=T)
        A, Bm = rng.standard_normal(ash, dtype=np.float32), rng.standard_normal(bsh, dtype=np.float32)
        npf = {"nt": lambda: A @ Bm.T, "tn": lambda: A.T @ Bm, "nn": lambda: A @ Bm}[form]
        t = common.bench({"graphc": common.raw_caller(m, "forward", {"a": A, "b": Bm}), "numpy": npf}, reps, sample)
        seen[key] = res[label] = {"M": M, "N": N, "K": K, "form": form,
                                  **{k: 2 * M * N * K / v / 1e9 for k, v in t.items()}}
    return res


# ====================================================================== the worker (one thread count)
def worker(args) -> dict:
    import numpy as np
    sys.path.insert(0, str(common.SRC))
    import graphc
    T = args.worker_threads
    out = {"threads": T, "models": {}, "versions": {"numpy": np.__version__}, "notes": []}
    peers = {}
    for name in [p for p in args.peers.split(",") if p]:
        version = P.available(name)
        if version:
            out["versions"][name] = version
            peers[name] = True
        else:
            out["notes"].append(f"{name} not installed: skipped")
    ga = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    ga @ ga
    t0 = time.perf_counter()
    for _ in range(3):
        ga @ ga
    out["sgemm_gflops"] = 3 * 2 * 2048 ** 3 / (time.perf_counter() - t0) / 1e9
    for name in args.models.split(","):
        spec, shape, B, F = MODELS[name]
        rng = np.random.default_rng(1)
        x = rng.standard_normal((B,) + shape, dtype=np.float32)
        y = rng.integers(0, CLASSES, B).astype(np.int32)
        xf = rng.standard_normal((B * F,) + shape, dtype=np.float32)
        yf = rng.integers(0, CLASSES, B * F).astype(np.int32)
        m = graphc.compile(str(spec), threads=T, optimizer=graphc.SGD(lr=LR))
        params = {k: np.array(v) for k, v in graphc.init_params(m, seed=0).items()}    # and the state
        running = set(m.graph.states)
        state = m.train_state({k: v.copy() for k, v in params.items()})
        fns = {"train": {"graphc": lambda: m.train_step(state, x=x, y=y)},
               "forward": {"graphc": common.raw_caller(m, "predict", {**params, "x": x})},
               "fit": {"graphc": lambda: m.fit(state, x=xf, y=yf, batch_size=B, epochs=1, seed=0, progress=False)}}
        if "torch" in peers:
            for kind, f in zip(fns, make_torch(name, params, running, x, y, xf, yf, B, T)):
                fns[kind]["PyTorch eager"] = f
        if "jax" in peers:
            for kind, f in zip(fns, make_jax(name, params, running, x, y, xf, yf, B)):
                fns[kind]["JAX jit"] = f
        res = out["models"][name] = {"batch": B, "fit_steps": F, "workspace_bytes": int(m.workspace(B).nbytes)}
        for kind, f in fns.items():
            per_call = {k: F for k in f} if kind == "fit" else None
            res[kind], res.setdefault("load", {})[kind] = common.measured(f, args.reps, args.sample, per_call)
        if name == "resnet8" and not args.no_gemm:
            res["gemms"] = gemm_rates(graphc, np, conv_gemms(graphc.load(str(spec)), B), T, args.reps, args.sample)
    return out


# ====================================================================== the tables
def render(results, cmd) -> str:
    lines = [f"CPU: {common.cpu_name()}. Command: `{cmd}`.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results[0][1]["versions"].items()) + ".", ""]
    for name in results[0][1]["models"]:
        first = results[0][1]["models"][name]
        lines += [f"**{name}**, batch {first['batch']}, float32, SGD; fit: an epoch of {first['fit_steps']} "
                  f"minibatches, per minibatch; graphc's workspace {first['workspace_bytes'] / 1e6:.1f} MB",
                  "", "| threads | contender | train step ms | forward ms | fit ms/step |", "|---|---|---|---|---|"]
        for T, r in results:
            mr = r["models"][name]
            for who in mr["train"]:
                lines.append(f"| {T} | {who} | " + " | ".join(f"{mr[k][who] * 1e3:.2f}" for k in ("train", "forward", "fit"))
                             + " |")
            peers = [w for w in mr["train"] if w != "graphc"]
            if peers:
                sp = [f"{k} {min(mr[k][w] for w in peers) / mr[k]['graphc']:.2f}x" for k in ("train", "forward", "fit")]
                lines.append(f"| {T} | graphc over the best peer | " + " | ".join(sp) + " |")
        loads = ", ".join(f"{T} thread{'s' * (T > 1)}: {max(r['models'][name]['load'].values()):.0%}" for T, r in results)
        lines += ["", f"Other processes' share of the cores while this was measured (most of the three): {loads}"
                  + ("; above 15% the figures are those of a loaded machine (2 threads then share cores with them)."
                     if any(max(r["models"][name]["load"].values()) > common.QUIET_LOAD for _, r in results) else "."), ""]
    gem = [(T, r) for T, r in results if "gemms" in r["models"].get("resnet8", {})]
    if gem:
        lines += ["**ResNet-8's convolution GEMMs** (batch 64): GFLOP/s of graphc's GEMM alone on each shape, "
                  "and its share of the machine's sgemm figure (NumPy float32 2048³ on as many threads: "
                  + ", ".join(f"{T}T {r['sgemm_gflops']:.0f}" for T, r in gem) + " GFLOP/s)", "",
                  "| GEMM | M x N x K | " + " | ".join(f"graphc {T}T (of sgemm) | NumPy {T}T" for T, _ in gem) + " |",
                  "|---|---|" + "---|---|" * len(gem)]
        for label in gem[0][1]["models"]["resnet8"]["gemms"]:
            g0 = gem[0][1]["models"]["resnet8"]["gemms"][label]
            cells = []
            for T, r in gem:
                g = r["models"]["resnet8"]["gemms"][label]
                cells.append(f"{g['graphc']:.1f} ({g['graphc'] / r['sgemm_gflops']:.0%}) | {g['numpy']:.1f}")
            lines.append(f"| {label} | {g0['M']} x {g0['N']} x {g0['K']} | " + " | ".join(cells) + " |")
        lines.append("")
    notes = sorted({n for _, r in results for n in r["notes"]})
    if notes:
        lines += ["Notes: " + "; ".join(notes) + ".", ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, of {','.join(MODELS)}")
    common.worker_options(ap, 5, 0.3, "torch,jax")
    ap.add_argument("--no-gemm", action="store_true", help="skip the per-GEMM table")
    ap.add_argument("--write-readme", action="store_true", help="put the tables into benchmarks/README.md")
    ap.add_argument("--from-json", help="print (and --write-readme) the tables of an earlier --json run, measuring nothing")
    args = ap.parse_args(argv)
    bad = [m for m in args.models.split(",") if m not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {bad}; known: {', '.join(MODELS)}")
    if common.worker_main(args, worker):
        return 0
    cmd = common.command(__file__, argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        results = common.run_workers(__file__, args, ["--models", args.models] + ["--no-gemm"] * args.no_gemm)
        if results is None:
            return 1
    text = render(results, cmd)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.write_readme:
        common.write_readme_block("<!-- CNN-RESULTS -->", "<!-- /CNN-RESULTS -->", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
