"""The op functions of the Python builder API: graphc.relu(x), graphc.cross_entropy(theta, y), ...

One function per public op of the registry (the infix ops are Value operators instead:
x @ W, x + b, -x, x.T). Each builds a node in the graph of its Value arguments.
"""
from __future__ import annotations

from typing import Callable

from graphc.core.errors import GraphcError
from graphc.core.ir import Value
from graphc.ops import REGISTRY

# written as operators on Values (x @ W.T + b), or made by the graph itself (g.const(2.0))
OPERATORS = ("add", "sub", "mul", "div", "neg", "matmul", "transpose", "const")


def op_function(opname: str) -> Callable[..., Value]:
    op = REGISTRY[opname]

    def call(*args, **attrs):
        graph = next((a.graph for a in args if isinstance(a, Value)), None)
        if graph is None:
            raise GraphcError(f"{opname}: at least one argument must be a graph Value")
        args, attrs = op.split_call(list(args), attrs, lambda a: a is None)    # torch's order: permute(x, (0, 2, 1))
        return graph.apply(opname, *args, **attrs)

    call.__name__ = call.__qualname__ = opname
    call.__doc__ = type(op).__doc__
    return call


FUNCTIONS: dict[str, Callable[..., Value]] = {
    name: op_function(name) for name, op in REGISTRY.items() if op.public and name not in OPERATORS}
globals().update(FUNCTIONS)

# scan is no op function: jax.lax.scan's form, graphc.scan(f, init, xs, axis=1), builds its body
# graph by calling f (graphc/ops/scan.py)
from graphc.ops.scan import scan  # noqa: E402
FUNCTIONS["scan"] = scan
