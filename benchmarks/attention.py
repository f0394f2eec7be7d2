#!/usr/bin/env python3
"""scaled_dot_product_attention's fused kernels (forward + backward through value_and_grad of
J = sum(o * r)) against PyTorch eager (F.scaled_dot_product_attention with autograd), float32, on
one thread, at B=8, H=4, T in {64, 256}, D in {16, 64}, causal and not. A benchmark, not a test.

    python benchmarks/attention.py                 # the table (about a minute)
    python benchmarks/attention.py --reps 21 --causal no

Both run the same function on the same arrays; the contenders alternate within each repetition
and the medians are reported (times on these shared machines are noisy).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")      # before NumPy, torch and the OpenMP runtime load
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import graphc  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model  # noqa: E402


CLOCK = time.perf_counter


def timed(fn, inner: int) -> float:
    t = CLOCK()
    for _ in range(inner):
        fn()
    return (CLOCK() - t) / inner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=11)
    ap.add_argument("--causal", choices=["yes", "no", "both"], default="both")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time by the process's CPU time (both contenders run on one thread): robust to other "
                         "processes on a shared machine")
    args = ap.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    try:
        import torch
        torch.set_num_threads(1)
        F = torch.nn.functional
    except ImportError:
        torch = None
    B, H = 8, 4
    print(f"CPU: {cpu_model()}; 1 thread; float32; B={B}, H={H}; forward + backward (value_and_grad), "
          f"median of {args.reps}" + ("; CPU time" if args.cpu_time else ""))
    print(f"{'T':>4} {'D':>3} {'causal':>6} {'graphc ms':>10} {'torch ms':>9} {'speed-up':>8}")
    for T in (64, 256):
        for D in (16, 64):
            for causal in {"yes": (True,), "no": (False,), "both": (False, True)}[args.causal]:
                g = graphc.Graph("bench_attention")
                q, k, v, r = (g.input(n, ("B", H, T, D)) for n in "qkvr")
                o = graphc.scaled_dot_product_attention(q, k, v, is_causal=causal)
                g.output("J", graphc.sum(o * r))
                m = graphc.compile(g, grad_of="J", wrt=["q", "k", "v"], dtype="float32")
                rng = np.random.default_rng(0)
                a = {n: rng.standard_normal((B, H, T, D)).astype(np.float32) for n in "qkvr"}
                inner = max(1, int(2e7 // (B * H * T * T * D)))

                def ours():
                    m.value_and_grad(**a)

                contenders = {"graphc": ours}
                if torch is not None:
                    t = {n: torch.tensor(a[n], requires_grad=n != "r") for n in "qkvr"}

                    def theirs():
                        for n in "qkv":
                            t[n].grad = None
                        (F.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=causal) * t["r"]).sum().backward()
                    contenders["torch"] = theirs
                    # the same numbers: a check, not a timing
                    _, grads = m.value_and_grad(**a)
                    theirs()
                    assert np.allclose(grads["q"], t["q"].grad.numpy(), rtol=1e-3, atol=1e-4)
                times = {k: [] for k in contenders}
                for fn in contenders.values():
                    fn()                                    # warm-up
                for _ in range(args.reps):
                    for name, fn in contenders.items():
                        times[name].append(timed(fn, inner))
                med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
                tm = med.get("torch")
                print(f"{T:>4} {D:>3} {'yes' if causal else 'no':>6} {med['graphc']:>10.3f} "
                      f"{tm if tm is not None else float('nan'):>9.3f} "
                      f"{(tm / med['graphc']) if tm is not None else float('nan'):>7.2f}x")


if __name__ == "__main__":
    main()
