"""graphc.tools.check: C vs NumPy reference vs finite differences, and proof that it can fail."""
from __future__ import annotations

from pathlib import Path

import pytest

import graphc
from graphc.ops.elementwise import Relu

ONE_LAYER = str(Path(__file__).resolve().parents[1] / "examples" / "one_layer.toml")
GRADIENTS = ("d_W", "d_b1", "d_U", "d_b2")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_check_one_layer_passes_and_reports_every_gradient(dtype):
    report = graphc.check(ONE_LAYER, dtype=dtype)
    text = str(report)
    assert report.ok, text
    assert text.splitlines()[-1] == "PASS"
    for n in (1, 37):
        for name in GRADIENTS:
            assert f"C value_and_grad n={n}: {name}" in text
            assert f"finite differences n={n}: {name}" in text
        assert f"C forward n={n}: probs" in text
    assert all(row.ok and row.rel_err < row.tolerance for row in report.rows)
    assert {row.tolerance for row in report.rows} == {1e-10 if dtype == "float64" else 1e-4, 1e-6}


def test_check_table_is_aligned():
    report = graphc.check(ONE_LAYER, batch=3, seed=1)
    lines = str(report).splitlines()[1:-1]
    widths = {len(line.rstrip()) for line in lines[1:]}
    assert len(widths) == 1, lines          # every row of the table is as wide as the others
    assert all(" n=3: " in line for line in lines[1:])


def test_check_accepts_a_graph_with_grad_of_and_wrt():
    g = graphc.load(ONE_LAYER)
    report = graphc.check(g, grad_of="loss", wrt=["U", "b2"], batch=5)
    assert report.ok, str(report)
    names = {row.value.split(": ")[-1] for row in report.rows}
    assert {"d_U", "d_b2"} <= names and "d_W" not in names


def test_check_fails_on_a_wrong_vjp(monkeypatch):
    """relu'(x) doubled: C and reference agree (both use the broken rule), finite differences do not."""
    def wrong(self, b, x, y):
        return b.mul(b.apply("sign", y), 2.0)

    monkeypatch.setattr(Relu, "derivative", wrong)
    report = graphc.check(ONE_LAYER, batch=4)
    text = str(report)
    assert not report.ok
    assert text.splitlines()[-1] == "FAIL"
    failed = {row.value for row in report.rows if not row.ok}
    assert failed == {"finite differences n=4: d_W", "finite differences n=4: d_b1"}, text
    # the report says where: the worst index, both numbers, and the rule and spec line behind the gradient
    d_W = next(row for row in report.rows if row.value == "finite differences n=4: d_W")
    assert "at index [" in d_W.detail and "analytic" in d_W.detail and "numeric" in d_W.detail
    assert 'from matmul.vjp, identity (5), for z = "x @ W.T + b1" (one_layer.toml:' in d_W.detail
    assert d_W.detail in text
    analytic, numeric = (float(d_W.detail.split(word)[1].split()[0]) for word in ("analytic ", "numeric "))
    assert analytic == pytest.approx(2 * numeric, rel=1e-4)   # the doubled derivative, at that entry
    assert all(row.detail == "" for row in report.rows if row.ok)


def test_check_fails_when_the_c_disagrees(monkeypatch):
    """A C result off by 1e-6 relative fails the float64 check (the C is judged, not trusted)."""
    original = graphc.CompiledModel.forward

    def skewed(self, **arrays):
        return {k: v * (1 + 1e-6) for k, v in original(self, **arrays).items()}

    monkeypatch.setattr(graphc.CompiledModel, "forward", skewed)
    report = graphc.check(ONE_LAYER, batch=2)
    assert not report.ok
    assert {row.value for row in report.rows if not row.ok} == {"C forward n=2: loss", "C forward n=2: probs"}
    probs = next(row for row in report.rows if row.value == "C forward n=2: probs")
    assert probs.detail.startswith("at index [") and " C " in probs.detail and "reference" in probs.detail
