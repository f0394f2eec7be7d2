"""`graphc demo` (graphc/tools/demo.py): digits trained in C reach 95% test accuracy, fast."""
from __future__ import annotations

import re
import sys

import pytest


def test_demo_trains_digits_to_95_percent(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from graphc.tools import demo
    out = tmp_path / "c"
    assert demo.main(["--epochs", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    acc = float(re.search(r"test accuracy: ([0-9.]+)", text).group(1))
    assert acc >= 0.95, text
    assert len(re.findall(r"epoch +\d+ +loss [0-9.]+ +[0-9.]+ ms", text)) == 5
    assert "NumPy (closed forms)" in text and "speedup of graphc over NumPy" in text
    for name in ("one_layer.c", "one_layer.h"):
        assert (out / name).is_file()
    assert "one_layer_train_step" in (out / "one_layer.h").read_text()


def test_demo_run_returns_figures(tmp_path):
    pytest.importorskip("sklearn")
    from graphc.tools import demo
    lines = []
    r = demo.run(epochs=3, out=tmp_path, compare=False, write=lines.append)
    assert r["test_accuracy"] >= 0.95 and len(r["losses"]) == 3 and r["losses"][-1] < r["losses"][0]
    assert any("test accuracy" in line for line in lines)


def test_demo_trains_the_digits_cnn_to_98_5_percent_in_c(tmp_path, capsys):
    """Issue 16: conv + batch norm + relu + pool blocks and a dense head with dropout reach 98.5 %
    test accuracy (predict: the running statistics); PyTorch eager timed beside it if installed."""
    pytest.importorskip("sklearn")
    from graphc.tools import demo
    out = tmp_path / "c"
    assert demo.main(["--model", "digits_cnn", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    acc = float(re.search(r"test accuracy: ([0-9.]+)", text).group(1))
    assert acc >= 0.985, text
    assert len(re.findall(r"epoch +\d+ +loss [0-9.]+ +[0-9.]+ ms", text)) == 20
    try:
        import torch  # noqa: F401
        assert "PyTorch eager" in text and "speedup of graphc over PyTorch eager" in text
    except ImportError:
        assert "PyTorch is not installed" in text
    assert "digits_cnn_predict" in (out / "digits_cnn.h").read_text()


def test_demo_cnn_spec_copy_is_the_example():
    from graphc.tools import demo
    path = demo.spec_path("digits_cnn.toml")
    assert path is not None and path.read_text() == demo.CNN_TEXT


def test_demo_builder_graph_matches_spec():
    """The fallback for an installed wheel without examples/ builds the same network."""
    import numpy as np

    import graphc
    from graphc.tools import demo
    graphs = [graphc.parse_spec(demo.SPEC_TEXT), demo.build_graph()]
    if demo.spec_path():
        graphs.append(graphc.load(demo.spec_path()))
    rng = np.random.default_rng(0)
    x, y = rng.random((5, 64)), np.arange(5, dtype=np.int32)
    p = graphc.init_params(graphs[0], seed=0)
    loss = graphc.evaluate(graphs[0], x=x, y=y, **p)["loss"]
    for g in graphs[1:]:
        assert {k: v.shape for k, v in g.params.items()} == {k: v.shape for k, v in graphs[0].params.items()}
        assert all(np.array_equal(p[k], q) for k, q in graphc.init_params(g, seed=0).items())
        np.testing.assert_allclose(graphc.evaluate(g, x=x, y=y, **p)["loss"], loss, rtol=1e-12)


def test_demo_without_sklearn_says_how_to_install(monkeypatch, capsys):
    from graphc.tools import demo
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert demo.main(["--epochs", "1"]) == 2
    assert "pip install 'graphc[demo]'" in capsys.readouterr().err
