"""The notes' notation, and the three layouts of a derivation (text, Markdown, LaTeX).

In: names, and the Lines of a derivation that graphc/autodiff/explain.py reads off a backward
graph. Out: text in the notes' symbols, Unicode (TextNotation) or LaTeX (LatexNotation), and
the whole document in each format; and `Printed`, the printed form of one formula, which each
op's `notation` method (graphc/ops/) returns. It reads no graph but its name: what a formula
says is explain.py's and the ops' business, and no op is named here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

FORMATS = ("text", "markdown", "latex")

# The notes' table (DESIGN.md, "The identities"), for the legend under a derivation.
IDENTITIES = {
    "1": "z = W x (column x): ∂z/∂x = W",
    "2": "z = x W (row x): ∂z/∂x = Wᵀ",
    "3": "z = x: ∂z/∂x = I (drops out of the chain rule; a broadcast sums back)",
    "4": "z = f(x) elementwise: ∂z/∂x = diag(f′(x)), i.e. ∘ f′(x)",
    "5": "z = W x, δ = ∂J/∂z: ∂J/∂W = δᵀ xᵀ (the outer product, shape of W)",
    "6": "z = x W, δ = ∂J/∂z: ∂J/∂W = xᵀ δ",
    "7": "ŷ = softmax(θ), J = CE(y, ŷ): ∂J/∂θ = ŷ − y",
}

_GREEK = {name: chr(code) for name, code in (
    ("alpha", 0x3B1), ("beta", 0x3B2), ("gamma", 0x3B3), ("delta", 0x3B4), ("epsilon", 0x3B5),
    ("eta", 0x3B7), ("theta", 0x3B8), ("lambda", 0x3BB), ("mu", 0x3BC), ("rho", 0x3C1),
    ("sigma", 0x3C3), ("tau", 0x3C4), ("phi", 0x3C6), ("psi", 0x3C8), ("omega", 0x3C9))}


# ---------------------------------------------------------------------------- printed formulas
# Precedence of printed formulas: a sum, a ∘ or a quotient, a product (juxtaposition), a
# postfix (ᵀ, ², [i]), an atom. Half steps mark a right operand that must bind tighter (a − (b − c)).
ADD, MUL, MATMUL, POSTFIX, ATOM = 1, 2, 3, 5, 6


@dataclass
class Printed:
    """A formula as printed, its precedence (an atom unless told), and the backward nodes it
    shows (their identities are the line's)."""

    text: str
    prec: int = ATOM
    nodes: set = field(default_factory=set)


def wrap(p: Printed, prec: float) -> str:
    """p's text as an operand that must bind at least as tight as `prec`."""
    return p.text if p.prec >= prec else f"({p.text})"


# LaTeX's own operator names (\log x, not \operatorname{log}); any other name is an \operatorname
_LATEX_FUNCTIONS = {"arccos", "arcsin", "arctan", "cos", "cosh", "exp", "ln", "log", "max", "min",
                    "sin", "sinh", "tan", "tanh"}


# ---------------------------------------------------------------------------- notations
class TextNotation:
    """The notes' symbols in Unicode (also used inside Markdown tables)."""

    circ, times, minus = " ∘ ", "×", " − "

    def ident(self, name: str) -> str:
        if name in _GREEK:
            return _GREEK[name]
        m = re.fullmatch(r"([A-Za-z])hat", name)
        if m:
            return m.group(1) + "\u0302"
        return name

    def delta(self, k: int) -> str:
        return f"δ{k}"

    def partial(self, of: str, x: str, compound: bool) -> str:
        return f"∂{of}/∂({x})" if compound else f"∂{of}/∂{x}"

    def T(self, x: str) -> str:
        return x + "ᵀ"

    def square(self, x: str) -> str:
        return x + "²"

    def fn(self, name: str, x: str) -> str:
        """f(x); a Greek name prints as its letter (sigma: σ(x))."""
        return f"{_GREEK.get(name, name)}({x})"

    def norm(self, x: str) -> str:
        return f"‖{x}‖"

    def sqrt(self, x: str) -> str:
        return f"sqrt({x})"

    def sum(self, over: str, x: str) -> str:
        return f"Σ_{over} {x}" if over else f"Σ {x}"

    def yhat(self) -> str:
        return "ŷ"

    def number(self, c: float) -> str:
        return f"{c:g}"

    def div(self, a: str, b: str) -> str:
        return f"{a}/{b}"

    def neg(self, x: str) -> str:
        return "−" + x

    def shape(self, dims: list[str]) -> str:
        return "(" + self.times.join(dims) + ")" if dims else "()"


class LatexNotation(TextNotation):
    circ, times, minus = r" \circ ", r" \times ", " - "

    def ident(self, name: str) -> str:
        if name in _GREEK:
            return "\\" + name
        m = re.fullmatch(r"([A-Za-z])hat", name)
        if m:
            return rf"\hat{{{m.group(1)}}}"
        if len(name) == 1:
            return name
        m = re.fullmatch(r"([A-Za-z])([0-9]+|[a-z]{1,2})", name)
        if m and (m.group(2).isdigit() or name[0].isupper()):     # W1 -> W_{1}, Dh -> D_{h}
            return f"{m.group(1)}_{{{m.group(2)}}}"
        return r"\mathrm{" + name.replace("_", r"\_") + "}"

    def delta(self, k: int) -> str:
        return rf"\delta_{{{k}}}"

    def partial(self, of: str, x: str, compound: bool) -> str:
        return rf"\frac{{\partial {of}}}{{\partial {'(' + x + ')' if compound else x}}}"

    def T(self, x: str) -> str:
        return x + r"^\top"

    def square(self, x: str) -> str:
        return x + "^2"

    def fn(self, name: str, x: str) -> str:
        if name in _GREEK or name in _LATEX_FUNCTIONS:
            return rf"\{name}({x})"
        word = name.replace("_", r"\_")
        return rf"\operatorname{{{word}}}({x})"

    def norm(self, x: str) -> str:
        return rf"\lVert {x} \rVert"

    def sqrt(self, x: str) -> str:
        return rf"\sqrt{{{x}}}"

    def sum(self, over: str, x: str) -> str:
        return rf"\textstyle\sum_{{\text{{{over}}}}} {x}" if over else rf"\textstyle\sum {x}"

    def yhat(self) -> str:
        return r"\hat{y}"

    def div(self, a: str, b: str) -> str:
        return f"{a} / {b}"

    def neg(self, x: str) -> str:
        return "-" + x

    def shape(self, dims: list[str]) -> str:
        return "(" + self.times.join(self.ident(d) if not d.isdigit() else d for d in dims) + ")" if dims else "()"


# ---------------------------------------------------------------------------- layouts
def _ident_text(ids: list[str]) -> str:
    if not ids:
        return ""
    return ("identity " if len(ids) == 1 else "identities ") + ",".join(f"({i})" for i in ids)


def _title(graph, of: str, wrt: list[str]) -> str:
    t = TextNotation()
    return f"explain {graph.name}: " + ", ".join(t.partial(t.ident(of), t.ident(w), False) for w in wrt)


def text(graph, of, wrt, lines, notes, used) -> str:
    out = [_title(graph, of, wrt)] + [f"  {note}" for note in notes] + [""]
    deltas = [line for line in lines if line.kind == "delta"]
    grads = [line for line in lines if line.kind == "grad"]
    glhs = max((len(line.lhs) for line in grads), default=0)
    rows = [(line.lhs, line.formula) for line in deltas] + [(line.lhs.ljust(glhs), line.formula) for line in grads]
    left = [f"{lhs} = {f}" for lhs, f in rows]
    width = max((len(s) for s in left if len(s) <= 60), default=0)   # one long formula does not push every column
    iwidth = max((len(_ident_text(line.identities)) for line in lines), default=0)
    for s, line in zip(left, deltas + grads):
        tail = f"{s:<{width}}   {_ident_text(line.identities):<{iwidth}}   {line.shape}"
        if line.note:
            tail += f"   ({line.note})"
        out.append(tail.rstrip())
    if used:
        out += ["", "identities used (the notes' numbering):"] + [f"  ({i}) {IDENTITIES[i]}" for i in used if i in IDENTITIES]
    return "\n".join(out) + "\n"


def markdown(graph, of, wrt, lines, notes, used) -> str:
    def cell(s: str) -> str:
        return f"`{s}`" if s else ""
    out = [f"### {_title(graph, of, wrt)}", ""] + [f"- {note}" for note in notes] + [""]
    out += ["| | formula | identities | shape check |", "|---|---|---|---|"]
    for line in lines:
        head, _, rest = line.lhs.partition(" = ")
        formula = f"{rest} = {line.formula}" if rest else line.formula
        ids = ", ".join(f"({i})" for i in line.identities) or line.note
        out.append(f"| {cell(head)} | {cell(formula.replace('|', '‖'))} | {ids} | {cell(line.shape)} |")
    if used:
        out += ["", "Identities used (the notes' numbering):", ""]
        out += [f"- ({i}) {IDENTITIES[i]}" for i in used if i in IDENTITIES]
    return "\n".join(out) + "\n"


def latex(graph, of, wrt, lines, notes, used) -> str:
    out = [f"% {_title(graph, of, wrt)}"] + [f"% {note}" for note in notes]
    out.append(r"\begin{align*}")
    body = []
    for line in lines:
        head, _, rest = line.lhs.partition(" = ")
        formula = f"{rest} = {line.formula}" if rest else line.formula
        ids = _ident_text(line.identities) or line.note
        body.append(f"{head} &= {formula} && \\text{{{ids}}} && {line.shape}")
    out.append(" \\\\\n".join(body))
    out.append(r"\end{align*}")
    return "\n".join(out) + "\n"


LAYOUTS = {"text": text, "markdown": markdown, "latex": latex}
