"""Export of trained parameters as const C arrays, and the hand-written C program of
examples/c_program that classifies with them (no Python at run time)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.tools.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
ONE_LAYER = ROOT / "examples" / "one_layer.toml"
PROGRAM = ROOT / "examples" / "c_program" / "classify.c"
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1"]

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def read_params_c(text: str, name: str) -> np.ndarray:
    """The numbers of one const array in NAME_params.c, parsed back."""
    body = re.search(rf"one_layer_param_{name}\[\d+\] = \{{(.*?)\}};", text, re.S).group(1)
    return np.array([float(t.rstrip("f")) for t in re.findall(r"[-+0-9.eEinfa]+f?", body)])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_export_params_writes_every_param_exactly(dtype, tmp_path):
    m = graphc.compile(str(ONE_LAYER), dtype=dtype)
    rng = np.random.default_rng(3)
    params = {k: rng.standard_normal(v.shape) * 10.0 ** rng.integers(-30, 30, size=v.shape)
              for k, v in ((k, graphc.init_params(m.graph, seed=0)[k]) for k in m.graph.params)}
    params["b2"][0] = -0.0
    files = {p.name for p in m.export(tmp_path, params=params)}
    assert {"one_layer_params.c", "one_layer_params.h", "one_layer.c", "one_layer.h"} <= files
    text = (tmp_path / "one_layer_params.c").read_text()
    for name, value in params.items():
        back = read_params_c(text, name)
        assert np.array_equal(back.astype(dtype), value.astype(dtype).ravel())   # bit-exact round trip
    header = (tmp_path / "one_layer_params.h").read_text()
    ctype = "float" if dtype == "float32" else "double"
    assert f"extern const {ctype} one_layer_param_W[8192];   /* W [Dh=128, Dx=64] */" in header


def test_export_params_refuses_wrong_missing_unknown_and_non_finite_values(tmp_path):
    m = graphc.compile(str(ONE_LAYER))
    good = graphc.init_params(m.graph, seed=0)
    with pytest.raises(graphc.ArgumentError, match=r"param 'b2' \(shape \(Nc=10,\)\) is missing"):
        m.export(tmp_path / "a", params={k: v for k, v in good.items() if k != "b2"})
    with pytest.raises(graphc.ArgumentError, match="'V' is not a param"):
        m.export(tmp_path / "b", params={**good, "V": good["U"]})
    with pytest.raises(graphc.ShapeError, match=r"'U' has shape \(128, 10\), expected \(Nc=10, Dh=128\)"):
        m.export(tmp_path / "c", params={**good, "U": good["U"].T})
    bad = {**good, "W": good["W"].copy()}
    bad["W"][3, 5] = np.nan
    with pytest.raises(graphc.GraphcError, match=r"'W' holds nan at flat index 197"):
        m.export(tmp_path / "d", params=bad)
    assert not (tmp_path / "d").exists()   # checked before anything is written


def test_cli_emit_params_from_a_saved_train_state(tmp_path):
    m = graphc.compile(str(ONE_LAYER), optimizer=graphc.SGD(lr=0.1))
    state = m.train_state(graphc.init_params(m.graph, seed=1))
    rng = np.random.default_rng(0)
    m.train_step(state, x=rng.standard_normal((8, 64)).astype(np.float32), y=rng.integers(0, 10, 8).astype(np.int32))
    state.save(tmp_path / "ckpt.npz")
    assert cli(["emit", str(ONE_LAYER), "-o", str(tmp_path / "out"), "--params", str(tmp_path / "ckpt.npz")]) == 0
    back = read_params_c((tmp_path / "out" / "one_layer_params.c").read_text(), "U")
    assert np.array_equal(back.astype(np.float32), state.params["U"].ravel())
    # a plain npz of arrays works too; a file that is not an npz is a clear error, exit 2
    np.savez(tmp_path / "plain.npz", **state.params)
    assert cli(["emit", str(ONE_LAYER), "-o", str(tmp_path / "out2"), "--params", str(tmp_path / "plain.npz")]) == 0
    (tmp_path / "junk.npz").write_text("not an npz")
    assert cli(["emit", str(ONE_LAYER), "-o", str(tmp_path / "out3"), "--params", str(tmp_path / "junk.npz")]) == 2


@needs_gcc
def test_c_program_example_classifies_like_the_reference(tmp_path):
    """classify.c, built strictly against the exported model and weights, prints the reference's
    argmax for every image, and the reference's accuracy."""
    m = graphc.compile(str(ONE_LAYER))
    params = graphc.init_params(m.graph, seed=4)
    rng = np.random.default_rng(5)
    n = 37
    x = rng.uniform(0, 1, (n, 64)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    m.export(tmp_path, params=params)
    exe = tmp_path / "classify"
    build = subprocess.run(["gcc", *STRICT, f"-I{tmp_path}", "-o", str(exe), str(PROGRAM),
                            str(tmp_path / "one_layer.c"), str(tmp_path / "one_layer_params.c"),
                            str(tmp_path / "graphc_kernels.c"), "-lm"],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    stdin = "".join(f"{label} " + " ".join(f"{p:.9g}" for p in row) + "\n" for row, label in zip(x, y))
    run = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    reference = graphc.evaluate(m.graph, x=x.astype(np.float64), y=y, **{k: v.astype(np.float64) for k, v in params.items()})
    expected = reference["probs"].argmax(axis=1)
    predicted = np.array([int(line.split()[0]) for line in lines[:n]])
    assert np.array_equal(predicted, expected)
    assert [int(line.split()[1]) for line in lines[:n]] == list(y)
    accuracy = re.match(r"accuracy ([0-9.]+) \(\d+ of 37\)$", lines[n]).group(1)
    assert float(accuracy) == pytest.approx(np.mean(expected == y), abs=1e-4)
    # the probabilities come from one_layer_predict, which takes no labels at all
    assert "one_layer_predict(long n, const float *x, const float *W" in (tmp_path / "one_layer.h").read_text()
    bad = subprocess.run([str(exe)], input="12 " + " ".join(["0.5"] * 64) + "\n", capture_output=True, text=True)
    assert bad.returncode == 1 and "label 12" in bad.stderr
