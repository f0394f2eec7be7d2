#!/usr/bin/env python3
"""graphc's GPT benchmark (issue 17, item 6): the train step of examples/char_gpt.toml (AdamW,
clipping at 1.0) at its demo configuration and at a wider one, in tokens per second, against the
same model in PyTorch eager (torch.nn.functional) and torch.compile, on 1 and 2 threads.

    python benchmarks/gpt.py                        # both configurations, 1 and 2 threads (a few minutes)
    python benchmarks/gpt.py --configs demo --threads 1 --reps 3
    python benchmarks/gpt.py --peers torch          # PyTorch eager only (torch.compile takes a while)

The configurations, in llm.c's terms (L layers, H heads, C channels, T context, V vocabulary, B batch):
demo is the example as written (L 2, H 4, C 64, T 64, V 96, B 16); wide is the same text with
C 256, T 256, B 8 (the example's widths substituted: head size C/4, MLP 4C, a 256-row position table).
Every contender starts from the same parameters (graphc.init_params) and runs the same step on the same
minibatch: float32, AdamW(lr 3e-3, weight decay 0.1), gradients clipped to global norm 1.0. Measuring as
benchmarks/run.py does (benchmarks/common.py): one worker process per thread count (the 1-thread one under
taskset -c 0), the contenders alternating within each repetition, medians reported. graphc's training
workspace is allocated once, on the first step, and reused; its size is printed.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402  (the suite's measuring helpers: bench, wait_quiet, cpu_busy, workers)

EXAMPLE = HERE.parent / "examples" / "char_gpt.toml"
CONFIGS = {  # name: (L, H, C, T, V, B); only C and T change the spec text (L, H, V are the example's)
    "demo": (2, 4, 64, 64, 96, 16),
    "wide": (2, 4, 256, 256, 96, 8),
}
LR, WD, CLIP = 3e-3, 0.1, 1.0


def spec_text(C: int, T: int) -> str:
    """The example's text with C channels and a T-row position table (head size C/4, MLP 4C)."""
    text = EXAMPLE.read_text()
    if (C, T) == (64, 64):
        return text
    text = re.sub(r'(?m)^C = 64 ', f"C = {C} ", text)
    text = re.sub(r'(?m)^D = 16 ', f"D = {C // 4} ", text)
    text = re.sub(r'(?m)^F = 256 ', f"F = {4 * C} ", text)
    text = text.replace('wpe = { shape = [64,', f'wpe = {{ shape = [{T},')
    text = text.replace("[192", f"[{3 * C}")
    text = (text.replace("0:64]", f"0:{C}]").replace("64:128]", f"{C}:{2 * C}]")
            .replace("128:192]", f"{2 * C}:{3 * C}]"))
    return text.replace('name = "char_gpt"', f'name = "char_gpt_c{C}_t{T}"')


# ====================================================================== the model, for the peers
def torch_loss(F, p, idx, tgt, L, H):
    N, T = idx.shape
    C = p["wte"].shape[1]
    x = p["wte"][idx] + p["wpe"][:T]
    for l in range(1, L + 1):
        w = {k[len(f"l{l}_"):]: v for k, v in p.items() if k.startswith(f"l{l}_")}
        a = F.layer_norm(x, (C,), w["ln1_w"], w["ln1_b"]) @ w["qkv_w"].T + w["qkv_b"]
        q, k, v = (t.reshape(N, T, H, C // H).permute(0, 2, 1, 3) for t in a.split(C, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).permute(0, 2, 1, 3).reshape(N, T, C)
        x = x + y @ w["proj_w"].T + w["proj_b"]
        m = F.gelu(F.layer_norm(x, (C,), w["ln2_w"], w["ln2_b"]) @ w["fc_w"].T + w["fc_b"], approximate="tanh")
        x = x + m @ w["fc2_w"].T + w["fc2_b"]
    logits = F.layer_norm(x, (C,), p["lnf_w"], p["lnf_b"]) @ p["wte"].T
    return F.cross_entropy(logits.reshape(N * T, -1), tgt.reshape(N * T))


def make_torch(params, idx, tgt, L, H, compiled):
    import torch
    import torch.nn.functional as F
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = torch.optim.AdamW(list(p.values()), lr=LR, weight_decay=WD)
    ti, tt = torch.from_numpy(idx.astype("int64")), torch.from_numpy(tgt.astype("int64"))
    loss_fn = (lambda p, i, t: torch_loss(F, p, i, t, L, H))
    if compiled:
        loss_fn = torch.compile(loss_fn)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(p, ti, tt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), CLIP)
        opt.step()
        return loss
    return step


# ====================================================================== the worker (one thread count)
def worker(args) -> dict:
    import numpy as np
    sys.path.insert(0, str(common.SRC))
    import graphc
    nt = args.worker_threads
    out = {"threads": nt, "configs": {}, "versions": {"numpy": np.__version__}, "notes": []}
    torch = None
    if "torch" in args.peers.split(","):
        try:
            import torch
            torch.set_num_threads(nt)
            out["versions"]["torch"] = torch.__version__
        except ImportError:
            out["notes"].append("torch not installed: skipped")
    for name in args.configs.split(","):
        L, H, C, T, V, B = CONFIGS[name]
        g = graphc.parse_spec(spec_text(C, T))
        m = graphc.compile(g, dtype="float32", threads=nt,
                           optimizer=graphc.AdamW(lr=LR, weight_decay=WD, max_norm=CLIP))
        params = {k: np.array(v, dtype=np.float32) for k, v in graphc.init_params(g, seed=0).items()}
        rng = np.random.default_rng(1)
        idx = rng.integers(0, V, (B, T)).astype(np.int32)
        tgt = rng.integers(0, V, (B, T)).astype(np.int32)
        state = m.train_state(params)
        first = float(m.train_step(state, idx=idx, tgt=tgt)["loss"])
        ws = [a for a, _ in state.cache.workspaces.values()]
        fns = {"graphc": lambda: m.train_step(state, idx=idx, tgt=tgt)}
        if torch is not None:
            fns["PyTorch eager"] = make_torch(params, idx, tgt, L, H, False)
            theirs = float(fns["PyTorch eager"]().detach())     # the same function: a check, not a timing
            if abs(theirs - first) > 1e-4 * abs(first):
                raise SystemExit(f"{name}: graphc's first loss {first} is not PyTorch's {theirs}")
            if "compile" in args.peers.split(","):
                try:
                    f = make_torch(params, idx, tgt, L, H, True)
                    f()
                    fns["torch.compile"] = f
                except Exception as e:  # noqa: BLE001  (a peer that does not work here is skipped, said why)
                    out["notes"].append(f"torch.compile failed ({type(e).__name__}): skipped")
        t, load = common.measured(fns, args.reps, args.sample)
        out["configs"][name] = {"LHCTVB": [L, H, C, T, V, B], "params": int(sum(v.size for v in params.values())),
                                "workspace_bytes": int(sum(w.nbytes for w in ws)), "workspaces": len(ws),
                                "tok_s": {k: B * T / v for k, v in t.items()},
                                "load": load}
    return out


# ====================================================================== the table
def render(results, cmd) -> str:
    lines = [f"CPU: {common.cpu_name()}. Command: `{cmd}`.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results[0][1]["versions"].items()) + ".", "",
             "Train step (forward, backward, clipping, AdamW) of examples/char_gpt.toml, float32, "
             "in tokens per second (batch × context per step; higher is better).", "",
             "| config (L, H, C, T, V, B) | params | graphc workspace | threads | contender | tokens/s | graphc over it |",
             "|---|---|---|---|---|---|---|"]
    for name in results[0][1]["configs"]:
        for nt, r in results:
            c = r["configs"][name]
            L, H, C, T, V, B = c["LHCTVB"]
            g = c["tok_s"]["graphc"]
            for who, v in c["tok_s"].items():
                lines.append(f"| {name}: {L}, {H}, {C}, {T}, {V}, {B} | {c['params']:,} | "
                             f"{c['workspace_bytes'] / 1e6:.1f} MB | {nt} | {who} | {v:,.0f} | "
                             + ("" if who == "graphc" else f"{g / v:.2f}x") + " |")
    loads = ", ".join(f"{nt} thread{'s' * (nt > 1)}: {max(c['load'] for c in r['configs'].values()):.0%}"
                      for nt, r in results)
    lines += ["", f"Other processes' share of the cores while this was measured (most of the configs): {loads}."]
    notes = sorted({n for _, r in results for n in r["notes"]})
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {','.join(CONFIGS)}")
    common.worker_options(ap, 5, 0.5, "torch,compile",
                          peers_help="peers to try: torch (eager), compile (torch.compile)")
    args = ap.parse_args(argv)
    bad = [c for c in args.configs.split(",") if c not in CONFIGS]
    if bad:
        ap.error(f"unknown config(s) {bad}; known: {', '.join(CONFIGS)}")
    if common.worker_main(args, worker):
        return 0
    results = common.run_workers(__file__, args, ["--configs", args.configs])
    if results is None:
        return 1
    print(render(results, common.command(__file__, argv)))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
