"""Standalone training: the exported C (graphc/native/export.py) carries NAME_train_step when the model
was compiled with an optimizer, builds warning-free with its Makefile, and its example program's
train steps give the losses the Python runtime gives."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.native.export import TRAIN_STEPS, example_arrays, example_summary, parse_example_output

ROOT = Path(__file__).resolve().parent.parent
STRICT = "-O2 -std=c99 -Wall -Wextra -Werror -pedantic"

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None,
                                reason="needs make and a C compiler")


def build_and_run(directory: Path) -> str:
    subprocess.run(["make", f"CFLAGS={STRICT}", f"{directory.name}_example"], cwd=directory, check=True,
                   capture_output=True, text=True)
    return subprocess.run([f"./{directory.name}_example"], cwd=directory, check=True, capture_output=True,
                          text=True).stdout


@pytest.mark.parametrize("spec,optimizer", [
    ("one_layer", graphc.Adam(lr=1e-2, weight_decay=1e-3)),
    ("window_classifier", graphc.SGD(lr=0.1, momentum=0.9)),
])
def test_exported_train_step_matches_python(tmp_path, spec, optimizer):
    m = graphc.compile(ROOT / "examples" / f"{spec}.toml", dtype="float64", optimizer=optimizer, threads=1)
    out = tmp_path / m.name
    names = {p.name for p in m.export(out, standalone=True)}
    assert {f"{m.name}.c", f"{m.name}.h", "main.c", "Makefile"} <= names
    header = (out / f"{m.name}.h").read_text()
    assert f"int {m.name}_train_step(" in header and f"int {m.name}_fit(" in header
    results = parse_example_output(build_and_run(out))

    arrays = example_arrays(m.graph, "float64")
    state = m.train_state({k: arrays[k] for k in m.graph.params})
    batch = {k: arrays[k] for k in m.graph.inputs}
    for step in range(1, TRAIN_STEPS + 1):
        loss = float(m.train_step(state, **batch)["loss"])
        np.testing.assert_allclose(results[(f"train_step:{step}", "loss")], example_summary([loss]), rtol=1e-7)


def test_cli_emit_includes_train_step(tmp_path):
    from graphc.tools.cli import main
    out = tmp_path / "one_layer"
    assert main(["emit", str(ROOT / "examples" / "one_layer.toml"), "-o", str(out), "--lr", "0.02"]) == 0
    assert "one_layer_train_step(" in (out / "one_layer.h").read_text()
    # the standalone program trains: built by its Makefile, its loss goes down step by step
    results = parse_example_output(build_and_run(out))
    losses = [results[(f"train_step:{s}", "loss")][0] for s in range(1, TRAIN_STEPS + 1)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_emit_keeps_frozen_params_const_and_trains_the_rest(tmp_path):
    """emit --wrt a subset: main.c declares each param no call writes `static const` (flash on a
    microcontroller), holding exactly the values example_arrays gives it, the trained ones as
    plain arrays; the program still trains as Python does with the same wrt."""
    from graphc.tools.cli import main
    spec = ROOT / "examples" / "one_layer.toml"
    out = tmp_path / "one_layer"
    assert main(["emit", str(spec), "-o", str(out), "--dtype", "float64", "--optimizer", "sgd", "--lr", "0.05",
                 "--wrt", "W,b1"]) == 0
    text = (out / "main.c").read_text()
    m = graphc.compile(spec, wrt=["W", "b1"], dtype="float64", optimizer=graphc.SGD(lr=0.05), threads=1)
    arrays = example_arrays(m.graph, "float64")
    for name in ("U", "b2"):
        body = re.search(rf"static const double arr_{name}\[\d+\] = \{{[^\n]*\n(.*?)\n\}};", text, re.S)
        assert body, name
        values = [float(v) for v in body.group(1).replace(",", " ").split()]
        np.testing.assert_array_equal(values, arrays[name].ravel())
    for name in ("W", "b1"):
        assert re.search(rf"^static double arr_{name}\[", text, re.M), name
    results = parse_example_output(build_and_run(out))
    state = m.train_state({k: arrays[k] for k in m.graph.params})
    batch = {k: arrays[k] for k in m.graph.inputs}
    for step in range(1, TRAIN_STEPS + 1):
        loss = float(m.train_step(state, **batch)["loss"])
        np.testing.assert_allclose(results[(f"train_step:{step}", "loss")], example_summary([loss]), rtol=1e-7)
    for name in ("W", "b1"):
        np.testing.assert_allclose(results[("trained", name)], example_summary(state.params[name]), rtol=1e-7)
