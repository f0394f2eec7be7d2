"""Values as the user wrote them, for error messages and hints.

In: a Value of a Graph. Out: text in the spec language: a value's name, or for a temporary
the expression computing it (its spec source text, else rebuilt from the nodes, `U.T`,
`relu(x @ W.T)`), parenthesized as an operand needs. It reads the IR and never changes it.
"""
from __future__ import annotations

from graphc.core.types import FLOAT

MAX_OPERAND_TEXT = 48     # characters of an expression before its deep sub-expressions become `...`

# Python's precedence levels, enough to print an expression with the parentheses it needs
_ATOM, _POWER, _UNARY, _PRODUCT, _SUM = 5, 4, 3, 2, 1
_INFIX = {"matmul": ("@", _PRODUCT), "mul": ("*", _PRODUCT), "div": ("/", _PRODUCT),
          "add": ("+", _SUM), "sub": ("-", _SUM)}


def describe(op, vals, msg: str) -> str:
    """A shape or dtype error of `op` applied to `vals`: `matmul: x is (N, Dx=784), W is ...: msg`."""
    operands = ", ".join(f"{operand_text(v)} is {v.graph.format_shape(v.shape)}"
                         + (f" {v.dtype}" if v.dtype != FLOAT else "") for v in vals)
    return f"{op.name}: {operands}: {msg}" if operands else f"{op.name}: {msg}"


def operand_text(v: Value, within: str | None = None, side: int = 0) -> str:
    """How an error message names a value: its name, or for a temporary the expression it
    computes (the spec's source text, else rebuilt from the nodes: `U.T`, `relu(x @ W.T)`),
    with deep sub-expressions elided as `...` when long; the temporary's name only as a last resort.
    With `within` (an infix operator such as "@"), parenthesized as operand `side` (0 left, 1 right) of it."""
    if not v.temporary or v.node is None:
        return v.name
    text = _operand_text(v)
    if within is not None:
        need = {sym: prec for sym, prec in _INFIX.values()}[within] + side
        if _render(v, 1)[1] < need:
            text = f"({text})"
    return text


def _operand_text(v: Value) -> str:
    text = " ".join(v.spec_text.split()) if v.spec_text else None
    if text and len(text) <= MAX_OPERAND_TEXT:
        return text
    for depth in (None, 4, 3, 2, 1):
        text = _render(v, depth)[0]
        if len(text) <= MAX_OPERAND_TEXT:
            return text
    return v.name


def transposed_text(v: Value) -> str:
    """How a hint writes vᵀ: `W.T` for W, and `U` for the temporary U.T."""
    n = v.node
    if v.temporary and n is not None and n.op.name == "transpose":
        return operand_text(n.inputs[0])
    text, prec = (v.name, _ATOM) if not v.temporary else (operand_text(v), _render(v, 1)[1])
    return f"{text}.T" if prec >= _ATOM else f"({text}).T"


def _render(v: Value, depth: int | None) -> tuple[str, int]:
    """(text, precedence) of the expression computing v, in the spec language. Values the user
    named print as their names; below `depth` levels a temporary prints as `...`."""
    n = v.node
    if not v.temporary or n is None:
        return v.name, _ATOM
    if depth == 0:
        return "...", _ATOM
    if n.op.name == "const":
        value = float(n.attrs["value"])
        text = str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
        return text, _UNARY if value < 0 else _ATOM
    sub = None if depth is None else depth - 1

    def arg(u: Value, need: int) -> str:
        text, prec = _render(u, sub)
        return text if prec >= need else f"({text})"

    name, ins = n.op.name, n.inputs
    if name in _INFIX and len(ins) == 2:
        sym, prec = _INFIX[name]
        return f"{arg(ins[0], prec)} {sym} {arg(ins[1], prec + 1)}", prec
    if name == "transpose":
        return f"{arg(ins[0], _ATOM)}.T", _ATOM
    if name == "neg":
        return f"-{arg(ins[0], _UNARY)}", _UNARY
    if name == "square":
        return f"{arg(ins[0], _ATOM)} ** 2", _POWER
    args = [_render(u, sub)[0] for u in ins]
    args += [f"{k}={val!r}" for k, val in n.attrs.items() if n.op.attrs.get(k, object()) != val]
    return f"{name}({', '.join(args)})", _ATOM
