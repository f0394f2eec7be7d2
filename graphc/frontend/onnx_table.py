"""The op table's types of ONNX import (graphc/frontend/onnx.py): how one ONNX op becomes graphc
ops (`OnnxOp`), the node being converted as a converter sees it (`OnnxNode`), and ONNX's attribute
kinds. onnx.py's ONNX_OPS and onnx_cnn.py's CNN_OPS are tables of OnnxOp.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from graphc.core.errors import DTypeError, GraphcError, Location, SpecError
from graphc.core.ir import Graph, Value

# ONNX's AttributeProto.AttributeType numbers (part of the format)
_A_FLOAT, _A_INT, _A_STRING, _A_TENSOR, _A_FLOATS, _A_INTS = 1, 2, 3, 4, 6, 7
_ATTR_KINDS = {_A_FLOAT: "a float", _A_INT: "an int", _A_STRING: "a string", _A_TENSOR: "a tensor",
               _A_FLOATS: "a list of floats", _A_INTS: "a list of ints"}


class _Absent:
    """The default of an attribute that has none: the converter gets None when it is not given."""

    def __init__(self, kind: int):
        self.kind = kind


def absent(kind: int) -> _Absent:
    return _Absent(kind)


INTS, FLOATS, TENSOR = absent(_A_INTS), absent(_A_FLOATS), absent(_A_TENSOR)


@dataclass(frozen=True)
class OnnxOp:
    """How one ONNX op becomes graphc ops.

    convert(node, *inputs, **attrs) returns the graphc Value of the node's one output (or, for
    a constant, a NumPy array). `inputs` are Values, except at the positions in `arrays`, which
    arrive as the NumPy array of a constant (None when the optional input is absent), and, when
    `numbers` is set, a one-element Constant, which arrives as its array so the op can use it
    as a graphc number. `attrs` maps each ONNX attribute read to its default (its type gives
    the attribute's type; INTS, FLOATS, TENSOR: no default); any other attribute is an error."""

    convert: Callable[..., Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    n_inputs: tuple[int, int] = (1, 1)       # fewest and most inputs
    arrays: tuple[int, ...] = ()
    numbers: bool = False


class OnnxNode:
    """The ONNX node being converted, as its converter sees it: the graph to build in, and `fail`."""

    def __init__(self, g: Graph, index: int, proto, location: Location):
        self.g, self.index, self.proto, self.location = g, index, proto, location

    def fail(self, message: str, hint: str | None = None, cls: type[GraphcError] = SpecError):
        raise cls(message, self.location, hint)

    def number(self, array: np.ndarray) -> Value:
        """A one-element constant as the graphc number the spec language would write (-2 is -(2))."""
        if array.dtype.kind != "f":
            self.fail(f"a constant operand must be a float, got {array.dtype}", cls=DTypeError)
        v = float(array.reshape(()))
        if not math.isfinite(v):
            self.fail(f"the constant {v} is not finite", hint="graphc's constants are finite floats")
        return self.g.apply("neg", self.g.const(-v)) if math.copysign(1.0, v) < 0 else self.g.const(v)

    def axis(self, axis: int, rank: int, what: str = "axis") -> int:
        if not -rank <= axis < rank:
            self.fail(f"{what} {axis} is out of range for rank {rank}")
        return axis % rank
