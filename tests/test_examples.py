"""The example scripts of examples/ run and reach what examples/README.md says they reach."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(args, cwd, timeout=300) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_examples_window_classifier_learns_the_synthetic_tagging_task(tmp_path):
    out = run([sys.executable, str(EXAMPLES / "train_window_classifier.py")], tmp_path)
    last = [line for line in out.splitlines() if line.startswith("epoch")][-1]
    accuracy, ambiguous = map(float, re.search(r"test accuracy ([0-9.]+) \(ambiguous words ([0-9.]+)\)", last).groups())
    assert accuracy > 0.9 and ambiguous > 0.9, out


def test_examples_train_digits_reaches_95_percent_and_writes_c(tmp_path):
    pytest.importorskip("sklearn")
    out = run([sys.executable, str(EXAMPLES / "train_digits.py")], tmp_path)
    accuracy = float(re.search(r"test accuracy ([0-9.]+)\s*$", out.strip().splitlines()[-2]).group(1))
    assert accuracy >= 0.95, out
    assert (tmp_path / "digits_ckpt.npz").exists() and (tmp_path / "digits_c" / "one_layer.c").exists()


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None, reason="needs make and cc")
def test_examples_c_program_makefile_trains_exports_and_classifies(tmp_path):
    pytest.importorskip("sklearn")
    out = run(["make", "-s", f"PYTHON={sys.executable}", f"OUT={tmp_path / 'out'}"], EXAMPLES / "c_program")
    python_accuracy = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    c_accuracy = float(re.search(r"^accuracy ([0-9.]+) \(\d+ of 450\)", out, re.M).group(1))
    assert python_accuracy >= 0.95 and abs(c_accuracy - python_accuracy) < 1e-3, out
