"""The microcontroller target (issue 15, item 4): each example's emitted main.c, built as Cortex-M4F
firmware with 256 KB of RAM (`make mcu`: arm-none-eabi-gcc, newlib's semihosting specs, the start-up
code and linker script of examples/mcu/) and run under QEMU's mps2-an386 board, prints what the host
build of the same main.c prints (forward, predict, value_and_grad and three SGD train steps).

Tolerance: float32, relative to each array's sum of absolute values (at least 1). The two builds
compute the same sums in different orders: the host's GEMM runs AVX-512 or AVX2 tiles with fused
multiply-adds, the firmware's the plain-C tiles without (arm-none-eabi-gcc contracts no a*b + c
under -std=c99), and expf/logf come from glibc and newlib. Each value is a sum of at most a few
hundred products (one_layer's Dx = 64, mlp's widest layer), whose rounding error is at most about
K * 2^-24 * sum|terms| ~ 1e-5 relative, and is typically sqrt(K) times smaller; three train steps
at lr = 0.1 carry it on without amplifying it. Measured: at most 1.4e-7 (one_layer_column; 3e-8
to 6e-8 for the others), so 1e-5 holds with room (the largest difference seen is printed on
failure); a wrong kernel, a wrong fill or a lost FPU setting is off by far more.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.backend.codegen import generate
from graphc.native.export import TRAIN_STEPS, emit, parse_example_output, summary_close
from conftest import SMALL_EXAMPLES

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = SMALL_EXAMPLES      # (kws_dscnn: tests/test_kws.py, with its own builds)
# The batch main.c runs on the board: 4 (its default), 1 for the convolutional examples, whose
# training at batch 1 is what a device does (digits_cnn's train step at 4 would need 300 KB)
MCU_BATCH = {"digits_cnn": 1, "kws_dscnn": 1, "gru": 1}   # (gru: the steps saved for the backward scan, 190 KB at 4)
# gru's firmware samples too (main.c's NAME_generate, 32 tokens on 16-token windows): its workspace
# holds predict's own arena at batch 1 (14 KB with the windows), not the train step's (113 KB were 19
# KB too many beside the training)
RTOL = 1e-5
RAM = 256 * 1024


def _missing() -> str | None:
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm", "gcc", "make"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)"
    specs = subprocess.run(["arm-none-eabi-gcc", "-print-file-name=rdimon.specs"], capture_output=True, text=True)
    if not Path(specs.stdout.strip()).is_file():
        return "newlib's rdimon.specs not found (apt-get install libnewlib-arm-none-eabi)"
    machines = subprocess.run(["qemu-system-arm", "-M", "help"], capture_output=True, text=True).stdout
    if "mps2-an386" not in machines:
        return "this qemu-system-arm has no mps2-an386 board"
    return None


MISSING = _missing()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def make(directory: Path, *targets: str, timeout: int = 300) -> str:
    run = subprocess.run(["make", "-s", *targets], cwd=directory, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"make {' '.join(targets)} in {directory}:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    return run.stdout


@pytest.fixture(scope="module", params=EXAMPLES, ids=lambda p: p.stem)
def firmware(request, tmp_path_factory):
    """One example emitted as `graphc emit` does (float32, SGD lr=0.1), built for the host and as
    firmware: (graph, host output, firmware output, `make mcu` output: the sizes)."""
    g = graphc.load(request.param)
    out = tmp_path_factory.mktemp(g.name)
    emit(generate(g, *g.grad_spec, dtype="float32", optimizer=graphc.SGD(lr=0.1)), out)
    batch = [f"CPPFLAGS=-DBATCH={MCU_BATCH[g.name]}L"] if g.name in MCU_BATCH else []
    host = make(out, "run", *batch)
    sizes = make(out, "mcu", *batch)
    qemu = make(out, "mcu-run", *batch, timeout=300)
    return g, host, qemu, sizes


def test_mcu_firmware_prints_what_the_host_build_prints(firmware):
    g, host, qemu, _ = firmware
    on_host, on_mcu = parse_example_output(host), parse_example_output(qemu)
    assert set(on_mcu) == set(on_host)
    functions = {f for f, _ in on_host}
    assert {"forward", "value_and_grad"} <= functions
    assert {f"train_step:{s}" for s in range(1, TRAIN_STEPS + 1)} <= functions
    worst = 0.0
    for key, want in on_host.items():
        got = on_mcu[key]
        assert got.shape == want.shape, key
        scale = max(1.0, abs(float(want[1])))
        worst = max(worst, float(np.max(np.abs(got - want))) / scale)
        assert summary_close(got, want, RTOL), (key, got, want, f"largest difference so far {worst:.2e}")
    # the same workspace line: the header's constant, the same on both
    assert re.search(r"^workspace \d+ bytes", qemu, re.M).group(0) == re.search(r"^workspace \d+ bytes", host, re.M).group(0)
    # a language model samples on the board too (NAME_generate), the tokens the host draws
    sampled = [re.findall(r"^generate \d+:.*$", out, re.M) for out in (host, qemu)]
    assert sampled[0] == sampled[1] and len(sampled[0]) == (g.generation is not None), sampled


def test_mcu_losses_are_true_cross_entropies_and_fall(firmware):
    """Valid data for every loss (one_layer_column's targets are probability rows): each loss is
    positive, and three SGD steps on one batch (at the emitted default lr = 0.1) lower it."""
    g, _, qemu, _ = firmware
    results = parse_example_output(qemu)
    losses = [results[(f"train_step:{s}", "loss")][0] for s in range(1, TRAIN_STEPS + 1)]
    assert all(loss > 0 for loss in losses), losses
    assert losses[-1] < losses[0], losses


def test_mcu_firmware_fits_in_256_kb_of_ram(firmware):
    """Static RAM (.data + .bss: the example's arrays and the static workspace) leaves the linker
    script's 16 KB for the stack and newlib's heap in 256 KB (the link fails otherwise)."""
    g, _, _, sizes = firmware
    text, data, bss = (int(x) for x in sizes.splitlines()[1].split()[:3])
    assert data + bss + 16 * 1024 <= RAM, (data, bss)
    assert text > 0
