"""The body of a scan (ops/scan.py): a Graph of its own and the roles of its inputs and outputs.

Shared by the op record (scan.py) and its VJP (scan_grad.py), which builds the backward body.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from graphc.core.ir import Graph, TensorType, Value

_SERIAL = itertools.count()


@dataclass(eq=False)
class Body:
    """A scan's body and the roles of its inputs and outputs (names of body inputs and outputs)."""
    graph: Graph
    carry: tuple            # body inputs: the carried state, in order
    xs: tuple               # body inputs: the time slices x_t of the scanned sequences
    consts: tuple           # body inputs: outer values read at every step (params)
    new_carry: tuple        # body output names: the next carried state, in carry order
    ys: tuple               # body output names: per-step values stacked along time
    x_axes: tuple           # the time axis of each scanned sequence
    y_axes: tuple           # the time axis each per-step output is stacked along
    reverse: bool = False   # t runs from T-1 down to 0 (the backward scan)
    sums: tuple = ()        # carries that are running sums from 0 (the params' gradients of a backward
                            # scan): no initial value is given, and the C adds to them in place
    label: str = "scan"
    serial: int = field(default_factory=lambda: next(_SERIAL))
    derived: dict = field(default_factory=dict, repr=False)    # the backward bodies, by the ys output read

    def __repr__(self) -> str:      # attrs print by repr, and CSE compares them so: one body, one text
        return f"body({self.label}@{self.serial})"

    def value(self, name: str) -> Value:
        g = self.graph
        return g.outputs[name] if name in g.outputs else g.values[name]

    @property
    def inits(self) -> tuple:
        """The carries given an initial value (the scan's first inputs)."""
        return tuple(c for c in self.carry if c not in self.sums)

    def input_names(self) -> tuple:
        return self.inits + self.xs + self.consts


def stacked(shape: tuple, axis: int, T) -> tuple:
    return shape[:axis] + (T,) + shape[axis:]


def unstacked(shape: tuple, axis: int) -> tuple:
    return shape[:axis] + shape[axis + 1:]



def bypass_input(g: Graph, name: str, t: TensorType) -> Value:
    """A body input named by graphc (h__adj: the adjoint arriving from the next step)."""
    v = Value(g, name, t, None, "input")
    g.inputs[name] = g.values[name] = v
    return v


