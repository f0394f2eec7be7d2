"""graphc.autodiff.explain: the derivation in the notes' notation, printed from the backward graph."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import graphc
from graphc.autodiff.explain import LatexNotation, explain

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SPECS = sorted(EXAMPLES.glob("*.toml"))


def squash(text: str) -> str:
    """Collapse runs of spaces (the text format aligns its columns)."""
    return re.sub(r"[ \t]+", " ", text)


@pytest.fixture(scope="module")
def one_layer():
    g = graphc.load(EXAMPLES / "one_layer.toml")
    return g, squash(explain(g, "J", ["W", "b1", "U", "b2"]))


@pytest.mark.parametrize("line", [
    "δ1 = ∂J/∂θ = (ŷ − y)/N identity (7) (N×Nc)",
    "δ2 = ∂J/∂z = δ1 U ∘ sgn(h) identities (2),(4) (N×Dh) = (N×Nc)(Nc×Dh) ∘ (N×Dh)",
    "∂J/∂U = δ1ᵀ h identity (5) (Nc×Dh) = (Nc×N)(N×Dh)",
    "∂J/∂b2 = Σ_rows δ1 identity (3) (Nc) = Σ_rows (N×Nc)",
    "∂J/∂W = δ2ᵀ x identity (5) (Dh×Dx) = (Dh×N)(N×Dx)",
    "∂J/∂b1 = Σ_rows δ2 identity (3) (Dh) = Σ_rows (N×Dh)",
])
def test_explain_one_layer_has_the_notes_lines(one_layer, line):
    _, text = one_layer
    assert line in text.splitlines() or any(l.strip() == line for l in text.splitlines()), text


def test_explain_one_layer_mentions_the_mean_and_the_symbols(one_layer):
    _, text = one_layer
    assert "mean" in text and "1/N" in text
    assert "ŷ = softmax(θ)" in text
    for n in ("(2)", "(3)", "(4)", "(5)", "(7)"):
        assert f"\n {n} " in text                     # the legend of the identities used


def test_explain_is_printed_from_the_graph_not_hard_coded():
    """Rename the values and the formulas follow; a builder graph has no spec names at all."""
    g = graphc.Graph("renamed")
    x = g.input("inp", ("B", 6))
    y = g.input("lab", ("B",), dtype="int32")
    V = g.param("V", (5, 6))
    c = g.param("c", (5,))
    hidden = graphc.relu(x @ V.T + c)
    Q = g.param("Q", (3, 5))
    g.output("loss", graphc.cross_entropy(hidden @ Q.T, y))
    text = squash(explain(g, "loss", ["V", "c", "Q"]))
    assert "∂loss/∂V = δ2ᵀ inp identity (5) (5×6) = (5×B)(B×6)" in text
    assert "∂loss/∂c = Σ_rows δ2 identity (3)" in text
    assert "δ2 = " in text and "δ1 Q ∘ sgn(" in text
    assert "(ŷ − lab)/B" in text


def test_explain_column_form_reads_like_the_notes():
    g = graphc.load(EXAMPLES / "one_layer_column.toml")
    text = squash(explain(g, *g.grad_spec))
    # real targets: dJ/dθ = ŷ Σy − y, which the notes write ŷ − y for one-hot y
    assert "δ1 = ∂J/∂θ = (Σ_classes y) ŷ − y identity (7) (Nc)" in text
    assert "Σ_classes y = 1 for one-hot or probability targets" in text
    assert "δ2 = ∂J/∂z = Uᵀ δ1 ∘ sgn(h) identities (1),(4)" in text
    assert "∂J/∂U = δ1 hᵀ identity (5) (Nc×Dh) = (Nc×1)(1×Dh)" in text
    assert "∂J/∂x = Wᵀ δ2 identity (1) (Dx) = (Dx×Dh)(Dh)" in text
    assert "mean" not in text                         # one example: no 1/N


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
@pytest.mark.parametrize("fmt", ["text", "markdown", "latex"])
def test_explain_every_example_in_every_format(spec, fmt):
    g = graphc.load(spec)
    of, wrt = g.grad_spec
    text = explain(g, of, wrt, format=fmt)
    if fmt == "text":
        for w in wrt:
            assert re.search(rf"∂{of}/∂{w} *= ", text), w
        assert re.search(r"δ1 = ∂J/∂(θ|logits)", text) and "identity (7)" in text   # char_gpt names its θ logits
    elif fmt == "markdown":
        assert "| | formula | identities | shape check |" in text and "|---|---|---|---|" in text
        assert sum(1 for line in text.splitlines() if line.startswith("| `")) >= len(wrt)
    else:
        assert r"\begin{align*}" in text and r"\end{align*}" in text
        assert r"\delta_{1}" in text and re.search(r"\\frac\{\\partial J\}\{\\partial (\\theta|\\mathrm\{logits\}|logits)", text)
        for w in wrt:
            assert rf"\partial {LatexNotation().ident(w)}}}" in text, w
        assert text.count(r"\\") >= len(wrt)


def test_explain_latex_uses_the_notes_symbols(one_layer):
    g, _ = one_layer
    text = explain(g, "J", ["W", "b1", "U", "b2"], format="latex")
    assert r"\delta_{1} U \circ \operatorname{sgn}(h)" in text
    assert r"\delta_{2}^\top x" in text
    assert r"(N \times D_{h}) = (N \times N_{c})(N_{c} \times D_{h}) \circ (N \times D_{h})" in text


def test_explain_markdown_table_rows(one_layer):
    g, _ = one_layer
    text = explain(g, "J", ["W", "b1", "U", "b2"], format="markdown")
    assert "| `δ2` | `∂J/∂z = δ1 U ∘ sgn(h)` | (2), (4) | `(N×Dh) = (N×Nc)(Nc×Dh) ∘ (N×Dh)` |" in text
    assert "| `∂J/∂W` | `δ2ᵀ x` | (5) | `(Dh×Dx) = (Dh×N)(N×Dx)` |" in text


def test_explain_mlp_names_the_pre_activation_delta():
    g = graphc.load(EXAMPLES / "mlp.toml")
    text = squash(explain(g, *g.grad_spec))
    assert "δ2 = ∂J/∂(h1 W2ᵀ + b2) = δ1 W3 ∘ sgn(h2) identities (2),(4)" in text
    assert "δ3 = ∂J/∂(x W1ᵀ + b1) = δ2 W2 ∘ (1 − h1²) identities (2),(4)" in text
    assert "∂J/∂W1 = δ3ᵀ x identity (5) (H1×Dx) = (H1×N)(N×Dx)" in text


def test_explain_exercises_and_zero_gradient():
    g = graphc.Graph("exercises")
    a = g.input("a", (4,))
    b = g.input("b", (4,))
    g.output("f", graphc.dot(a, b))
    g.output("n", graphc.norm2(a))
    assert "∂f/∂a = b" in squash(explain(g, "f", ["a"]))
    text = squash(explain(g, "n", ["a", "b"]))
    assert re.search(r"∂n/∂a = a/\w+", text)          # x/‖x‖
    assert "∂n/∂b = 0" in text and "does not depend on b" in text


def test_explain_second_order_graph_does_not_fail():
    g = graphc.Graph("hvp")
    x = g.input("x", ("N", 3))
    W = g.param("W", (2, 3))
    h = graphc.sigmoid(x @ W.T)
    g.output("J", graphc.sum(h * h))
    g1 = graphc.grad(g, "J", ["W"])
    v = g1.input("v", (2, 3))
    g1.output("s", graphc.sum(g1["d_W"] * v))
    assert "∂s/∂W = " in explain(g1, "s", ["W"])
    assert "| `∂s/∂W` |" in explain(g1, "s", ["W"], format="markdown")
    assert r"\frac{\partial s}{\partial W}" in explain(g1, "s", ["W"], format="latex")


def test_explain_rejects_unknown_format(one_layer):
    g, _ = one_layer
    with pytest.raises(graphc.GraphcError, match="format"):
        explain(g, "J", ["W"], format="html")
