"""examples/kws_dscnn.toml, MLPerf Tiny's keyword-spotting DS-CNN (issue 16, item 5): it learns
in C on generated data, and its emitted C fits a Cortex-M4 as the README's table says:
predict at batch 1 in 256 KB of RAM, the fine-tuning of the last block and the classifier
(emit --wrt) in 256 KB, and a whole SGD train step at batch 1 in 512 KB (a training firmware,
-DGRAPHC_TRAIN_ONLY), each keeping the link's default 16 KB free for the stack and the heap and
printing under QEMU what the host build of the same program prints.

The data: 12 classes of 49 x 10 "MFCC" frames, class k a ridge along feature 1 + k % 8 that
rises (k < 8) or falls (k >= 8, on another feature band) over the frames, plus Gaussian noise:
separable, but only by looking at the shape over time and features, as a word's spectrum is.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc
import graphc.tools.cli
from graphc.native.export import parse_example_output, summary_close

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "kws_dscnn.toml"


def keyword_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 12, n).astype(np.int32)
    t = np.linspace(-1, 1, 49)[:, None]
    x = rng.normal(0, 0.5, (n, 1, 49, 10))
    for i, k in enumerate(y):
        band = 1 + k % 8
        slope = 1.0 if k < 8 else -1.0
        x[i, 0, :, band] += 2.0 * (1 + slope * t[:, 0])
        if k >= 8:
            x[i, 0, :, (band + 4) % 10] += 1.5
    return x.astype(np.float32), y


def test_kws_dscnn_is_mlperf_tiny_sized():
    g = graphc.load(SPEC)
    trained = sum(int(np.prod(v.shape)) for k, v in g.params.items() if k not in g.states)
    assert trained == 23180 and len(g.states) == 19      # 18 running statistics and dropout's step
    assert g.outputs["probs"].shape == ("N", 12)
    convs = [n for n in g.nodes if n.op.name == "conv2d"]
    assert [n.attrs["groups"] for n in convs] == [1, 64, 1, 64, 1, 64, 1, 64, 1]
    assert convs[0].output.shape == ("N", 64, 25, 5)        # TensorFlow's 'same' output of the stride-2 conv
    macs = sum(int(np.prod(n.output.shape[1:])) * int(np.prod(n.inputs[1].shape[1:])) for n in convs)
    assert 2.6e6 < macs < 2.8e6


def test_kws_dscnn_learns_generated_keywords_in_c():
    g = graphc.load(SPEC)
    x, y = keyword_data(360, seed=0)
    xt, yt = keyword_data(120, seed=1)
    m = graphc.compile(g, dtype="float32", optimizer=graphc.Adam(lr=3e-3))
    state = m.train_state(graphc.init_params(g, seed=0))
    losses = m.fit(state, x=x, y=y, batch_size=32, epochs=6, seed=0, progress=False)
    assert losses[-1] < 0.3 * losses[0], losses
    acc = (m.predict(x=xt, **state.params)["probs"].argmax(axis=1) == yt).mean()
    assert acc > 0.8, (acc, losses)


# ------------------------------------------------------------------ on a Cortex-M4F under QEMU
from test_mcu import MISSING, RTOL, make  # noqa: E402  (the board's tools and the make helper)

# (emit's --wrt: None for the spec's, "none" for inference only; the RAM given to the firmware, and
# the room of it the link keeps free for the stack and newlib's heap; main.c's CPPFLAGS)
BUILDS = {
    "predict": ("none", "256K", "16K", "-DBATCH=1L"),                 # forward and predict
    "fine-tune": ("pw4,gp4,bp4,U,c", "256K", "16K", "-DBATCH=1L"),    # the last block's pointwise conv and the classifier
    # every param, SGD at batch 1, in a training firmware (main.c calls train_step alone: no arrays for
    # value_and_grad's gradients) in 512 KB, 16 KB of them left for the stack and the heap as in every build
    "train-step": (None, "512K", "16K", "-DBATCH=1L -DGRAPHC_TRAIN_ONLY"),
}


def firmware_figures(mode: str, tmp_path: Path) -> dict:
    """Emit kws_dscnn for `mode`, build it for the host and as firmware at batch 1, run both; the
    sizes (arm-none-eabi-size) and the outputs."""
    wrt, ram, free, cppflags = BUILDS[mode]
    out = tmp_path / mode
    args = ["emit", str(SPEC), "-o", str(out), "--optimizer", "sgd", "--lr", "0.05"] + (["--wrt", wrt] if wrt else [])
    assert graphc.tools.cli.main(args) == 0
    batch = f"CPPFLAGS={cppflags}"
    host = make(out, "run", batch)
    sizes = make(out, "mcu", batch, f"MCU_RAM={ram}", f"MCU_FREE={free}")
    qemu = make(out, "mcu-run", batch, f"MCU_RAM={ram}", f"MCU_FREE={free}", timeout=300)
    text, data, bss = (int(x) for x in sizes.splitlines()[1].split()[:3])
    workspace = int(re.search(r"^workspace (\d+) bytes", qemu, re.M).group(1))
    return dict(host=host, qemu=qemu, flash=text + data, ram=data + bss, workspace=workspace)


@pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
@pytest.mark.parametrize("mode", list(BUILDS))
def test_kws_dscnn_runs_on_a_cortex_m4_as_on_the_host(mode, tmp_path):
    import graphc.tools.cli  # noqa: F401
    fig = firmware_figures(mode, tmp_path)
    on_host, on_mcu = parse_example_output(fig["host"]), parse_example_output(fig["qemu"])
    assert on_host and set(on_mcu) == set(on_host)
    for key, want in on_host.items():
        assert summary_close(on_mcu[key], want, RTOL), (key, on_mcu[key], want)
    print(f"\nkws_dscnn {mode}: flash {fig['flash']:,} B, static RAM {fig['ram']:,} B, "
          f"workspace {fig['workspace']:,} B")
    if mode == "predict":       # the README's figures: inference at batch 1 in a 256 KB part
        assert fig["workspace"] <= 96 * 1024
    if mode != "train-step":    # ... and fine-tuning too (the frozen params are const, in flash)
        assert fig["ram"] + 16 * 1024 <= 256 * 1024
    else:   # one buffer kept per batch norm and relu (memory.recompute_late_reads), updates when ready, no
        # gradient arrays in main.c (950 KB before), and the arena's size exact at n = 1 (sizes.pmax: the
        # stem's constant patch-plane scratch beside per-row buffers): 16 KB free, as the link checks too
        assert fig["ram"] + 16 * 1024 <= 512 * 1024
        assert not any(k[0] in ("forward", "predict", "value_and_grad") for k in on_mcu), sorted(on_mcu)
    if mode != "predict":       # and it trains there: three SGD steps lower the loss
        losses = [on_mcu[(f"train_step:{s}", "loss")][0] for s in (1, 2, 3)]
        assert losses[-1] < losses[0], losses
