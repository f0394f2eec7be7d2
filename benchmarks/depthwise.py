#!/usr/bin/env python3
"""A depthwise convolution two ways: the direct loop graphc chooses (ops/depthwise.py) against
im2col + one GEMM per channel (what it did before), at a few shapes: forward and train-step time
and the workspace bytes, the latter also at batch 1 (the microcontroller case).

    python benchmarks/depthwise.py               # about a minute
    python benchmarks/depthwise.py --threads 2

Each shape is one layer, relu(conv2d(x, w, b, padding=1, groups=C)) followed by a mean as the
loss, compiled twice: as graphc compiles it, and with graphc.ops.conv.direct_depthwise made to
answer False (the im2col path).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402  (raw callers, bench)

SHAPES = {   # name: (C, H, W, stride, batch)
    "DS-CNN block (64ch 25x5)": (64, 25, 5, 1, 64),
    "MobileNet-like (32ch 56x56)": (32, 56, 56, 1, 16),
    "MobileNet-like stride 2 (64ch 28x28)": (64, 28, 28, 2, 16),
    "small (8ch 8x8 stride 2)": (8, 8, 8, 2, 64),
}


def spec(C, H, W, stride, train):
    return f"""name = "dw_{C}_{H}_{W}_{stride}_{'t' if train else 'i'}"
[dims]
N = "batch"
[inputs]
x = ["N", {C}, {H}, {W}]
[params]
w = [{C}, 1, 3, 3]
b = [{C}]
[graph]
h = "relu(conv2d(x, w, b, stride={stride}, padding=1, groups={C}))"
J = "mean(h)"
[outputs]
loss = "J"
""" + ('[grad]\nof = "J"\nwrt = ["w", "b", "x"]\n' if train else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sample", type=float, default=0.1)
    args = ap.parse_args(argv)
    os.environ.setdefault("GRAPHC_CACHE_DIR", common.CACHE)
    sys.path.insert(0, str(common.SRC))
    import numpy as np
    import graphc
    import graphc.ops.conv as conv

    chooser = conv.direct_depthwise
    print(f"threads {args.threads}; times in ms (median), workspace in bytes (float32)\n")
    print("| layer | batch | path | forward ms | value_and_grad ms | workspace (batch) | inference workspace, batch 1 |")
    print("|---|---|---|---|---|---|---|")
    for name, (C, H, W, s, B) in SHAPES.items():
        x = np.random.default_rng(0).standard_normal((B, C, H, W), dtype=np.float32)
        rows = {}
        for path, choose in (("im2col + GEMM per channel", lambda *a: False), ("direct loop", chooser)):
            conv.direct_depthwise = choose
            try:
                mt = graphc.compile(graphc.parse_spec(spec(C, H, W, s, True), "dw.toml"), threads=args.threads)
                mi = graphc.compile(graphc.parse_spec(spec(C, H, W, s, False), "dw.toml"), threads=args.threads)
            finally:
                conv.direct_depthwise = chooser
            p = {k: np.array(v) for k, v in graphc.init_params(mt, seed=0).items()}
            rows[path] = (common.raw_caller(mi, "forward", {**p, "x": x}),
                          common.raw_caller(mt, "value_and_grad", {**p, "x": x}),
                          mt.workspace(B).nbytes, mi.workspace(1).nbytes)
        t = common.bench({f"{k} {i}": v[i] for k, v in rows.items() for i in (0, 1)}, args.reps, args.sample)
        for path, v in rows.items():
            print(f"| {name} | {B} | {path} | {t[f'{path} 0'] * 1e3:.3f} | {t[f'{path} 1'] * 1e3:.3f} | "
                  f"{v[2]:,} | {v[3]:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
