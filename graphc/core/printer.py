"""The IR printer: a Graph as text (str(graph), `graphc show`), one node per line.

    graph one_layer
      dims    Dx=64, Dh=128, Nc=10, N=batch
      input   x          (N, Dx=64)
      z__1     = matmul(x, z__0)          (N, Dh=128)        # z = "x @ W.T + b1"  [one_layer.toml:22]

In: a Graph (core/ir.py's Graph.__str__ and format_node call these). Out: text for people; nothing
parses it back.
"""
from __future__ import annotations

from graphc.core.types import FLOAT


def graph_text(graph) -> str:
    """The whole graph: dims, inputs and params, a line per node (call, shape, origin), outputs."""
    lines = [f"graph {graph.name}"]
    if graph.dims:
        lines.append("  dims    " + ", ".join(f"{k}={'batch' if v is None else v}" for k, v in graph.dims.items()))
    for kind, table in (("input", graph.inputs), ("param", graph.params)):
        for v in table.values():
            label = "state" if v.name in graph.states else kind
            lines.append(f"  {label:<7} {v.name:<10} {_value_line(graph, v)}")
    width = max([len(n.output.name) for n in graph.nodes] + [8])
    calls = [_node_call(n, width) for n in graph.nodes]
    shapes = [_value_line(graph, n.output) for n in graph.nodes]
    call_w, shape_w = max(map(len, calls), default=0), max(map(len, shapes), default=0)
    for n, call, shape in zip(graph.nodes, calls, shapes):
        lines.append("  " + f"{call:<{call_w}}  {shape:<{shape_w}}{_node_comment(n)}".rstrip())
    for k, v in graph.outputs.items():
        lines.append(f"  output  {k} = {v.name}")
    return "\n".join(lines)


def node_text(graph, n, width: int = 8) -> str:
    """One node as the printer shows it: `name = op(args, attrs)  shape    # origin`."""
    return f"{_node_call(n, width)}  {_value_line(graph, n.output)}{_node_comment(n)}"


def _value_line(graph, v) -> str:
    dt = "" if v.dtype == FLOAT else f" {v.dtype}"
    return f"{graph.format_shape(v.shape)}{dt}"


def operand(v) -> str:
    """An argument as printed: its name, or the number a constant is (CSE may have merged the 1 of
    `1 - h**2` with the seed dJ/dJ = 1, whose name would read as a gradient)."""
    n = v.node
    if n is not None and n.op.static and not n.inputs:
        return repr(float(n.attrs["value"]))
    return v.name


def _node_call(n, width: int) -> str:
    args = ", ".join(operand(v) for v in n.inputs)
    attrs = ", ".join(f"{k}={v!r}" for k, v in n.attrs.items())
    return f"{n.output.name:<{width}} = {n.op.name}({', '.join(filter(None, (args, attrs)))})"


def _node_comment(n) -> str:
    o = n.origin
    if o.identity:
        return f"    # identity ({o.identity})" + (f" of {o.text}" if o.text else "")
    if o.text:
        return f"    # {o.text}" + (f"  [{o.where}]" if o.where else "")
    return ""
