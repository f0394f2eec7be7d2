"""The emitted C of each example (float32, threads=1, with a train step and fit) against a checked-in
copy in tests/golden/.

The generated C is deterministic, so a diff here is a change to review like code. After an
intended change, rewrite the copies with `GRAPHC_UPDATE_GOLDEN=1 pytest tests/test_golden.py`."""
from __future__ import annotations

import difflib
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import graphc
from graphc.backend.codegen import generate
from conftest import SMALL_EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = SMALL_EXAMPLES
UPDATE = os.environ.get("GRAPHC_UPDATE_GOLDEN") == "1"


# The optimizer compiled into each example's golden train_step and fit: together they cover plain
# SGD updated inside the gradient GEMMs, SGD with momentum and decay, Adam's L2 and AdamW's decay.
GOLDEN_OPTIMIZERS = {
    "one_layer": graphc.SGD(lr=0.1),
    "mlp": graphc.AdamW(lr=1e-3),
    "one_layer_column": graphc.Adam(lr=1e-3, weight_decay=1e-4),
    "window_classifier": graphc.SGD(lr=0.05, momentum=0.9, weight_decay=1e-4),
    "digits_cnn": graphc.Adam(lr=2e-3),        # the demo's: batch norm's running statistics, dropout's step
    "gru": graphc.Adam(lr=1e-2),               # scans: a loop over time, forward and backward
    "lstm": graphc.SGD(lr=0.1),
}


def emit(spec: Path):
    g = graphc.load(spec)
    return g.name, generate(g, *g.grad_spec, dtype="float32", threads=1, optimizer=GOLDEN_OPTIMIZERS.get(g.name))


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_golden_emitted_c_matches_checked_in_copy(spec):
    name, first = emit(spec)
    assert f"{name}_train_step(" in first.source, "the golden copy covers the train step (and fit)"
    _, second = emit(spec)
    assert (first.source, first.header) == (second.source, second.header), "generate() is not deterministic"
    for suffix, text in ((".c", first.source), (".h", first.header)):
        path = GOLDEN / f"{name}{suffix}"
        if UPDATE:
            GOLDEN.mkdir(exist_ok=True)
            path.write_text(text)
            continue
        assert path.is_file(), f"{path} is missing: run GRAPHC_UPDATE_GOLDEN=1 pytest tests/test_golden.py"
        expected = path.read_text()
        if text != expected:
            diff = list(difflib.unified_diff(expected.splitlines(), text.splitlines(), f"golden/{path.name}",
                                             f"emitted {path.name}", lineterm="", n=2))
            shown = "\n".join(diff[:120]) + (f"\n... ({len(diff) - 120} more diff lines)" if len(diff) > 120 else "")
            pytest.fail(f"emitted {path.name} differs from tests/golden/{path.name} (if intended, rewrite it "
                        f"with GRAPHC_UPDATE_GOLDEN=1):\n{shown}")


def test_golden_emitted_c_is_the_same_in_another_process():
    """No dependence on hash seeds, ids or dict order of one interpreter."""
    script = ("import hashlib, sys, graphc; from graphc.backend.codegen import generate; "
              "g = graphc.load(sys.argv[1]); c = generate(g, *g.grad_spec, dtype='float32', threads=1, "
              "optimizer=graphc.SGD(lr=0.05, momentum=0.9, weight_decay=1e-4)); "
              "print(hashlib.sha256((c.source + c.header).encode()).hexdigest())")
    spec = ROOT / "examples" / "window_classifier.toml"
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        run = subprocess.run([sys.executable, "-c", script, str(spec)], env=env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        digests.add(run.stdout.strip())
    _, here = emit(spec)
    digests.add(hashlib.sha256((here.source + here.header).encode()).hexdigest())
    assert len(digests) == 1
