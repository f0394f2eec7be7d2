"""Values as the user wrote them, for error messages and hints.

In: a Value of a Graph. Out: text in the spec language: a value's name, or for a temporary
the expression computing it (its spec source text, else rebuilt from the nodes, `U.T`,
`relu(x @ W.T)`), parenthesized as an operand needs. It reads the IR and never changes it.
How each op is written (`x @ W`, `-x`, `x.T`, `x ** 2`, `relu(x)`, `2`) is the op's own
(`infix`, `prefix`, `postfix`, `spec_text` in graphc/core/opdef.py and graphc/ops/).
"""
from __future__ import annotations

from graphc.core.types import FLOAT

MAX_OPERAND_TEXT = 48     # characters of an expression before its deep sub-expressions become `...`

# Python's precedence levels, enough to print an expression with the parentheses it needs
SUM, PRODUCT, UNARY, POWER, ATOM = 1, 2, 3, 4, 5


def describe(op, vals, msg: str) -> str:
    """A shape or dtype error of `op` applied to `vals`: `matmul: x is (N, Dx=784), W is ...: msg`."""
    operands = ", ".join(f"{operand_text(v)} is {v.graph.format_shape(v.shape)}"
                         + (f" {v.dtype}" if v.dtype != FLOAT else "") for v in vals)
    return f"{op.name}: {operands}: {msg}" if operands else f"{op.name}: {msg}"


def operand_text(v, within=None, side: int = 0) -> str:
    """How an error message names a value: its name, or for a temporary the expression it
    computes (the spec's source text, else rebuilt from the nodes: `U.T`, `relu(x @ W.T)`),
    with deep sub-expressions elided as `...` when long; the temporary's name only as a last resort.
    With `within` (an op written infix, such as matmul's `@`), parenthesized as operand `side`
    (0 left, 1 right) of it."""
    if not v.temporary or v.node is None:
        return v.name
    text = _operand_text(v)
    if within is not None and spec_form(v, 1)[1] < within.infix[1] + side:
        text = f"({text})"
    return text


def _operand_text(v) -> str:
    text = " ".join(v.spec_text.split()) if v.spec_text else None
    if text and len(text) <= MAX_OPERAND_TEXT:
        return text
    for depth in (None, 4, 3, 2, 1):
        text = spec_form(v, depth)[0]
        if len(text) <= MAX_OPERAND_TEXT:
            return text
    return v.name


def spec_form(v, depth: int | None = None) -> tuple[str, int]:
    """(text, precedence) of the expression computing v, in the spec language, rebuilt from the
    nodes by each op's `spec_text`. Values the user named print as their names; below `depth`
    levels a temporary prints as `...`."""
    n = v.node
    if not v.temporary or n is None:
        return v.name, ATOM
    if depth == 0:
        return "...", ATOM
    sub = None if depth is None else depth - 1

    def arg(u, need: int = 0) -> str:
        text, prec = spec_form(u, sub)
        return text if prec >= need else f"({text})"

    return n.op.spec_text(n, arg)
