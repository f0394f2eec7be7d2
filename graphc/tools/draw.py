"""Pictures of graphs: a Graph as Graphviz DOT text, rendered to SVG or PNG by the `dot` program.

From Python:

    import graphc
    from graphc.tools.draw import to_dot, draw

    g = graphc.load("examples/one_layer.toml")
    text = to_dot(g)                                  # the forward graph as DOT text (a str)
    draw(g, "one_layer.svg")                          # the format from the suffix: .dot, .svg or .png
    draw(g, "one_layer_grad.png", backward=True)      # forward + backward of the spec's [grad]
    draw(graphc.grad(g, "J", ["W", "b1"]), "g.svg")   # any Graph, a backward graph included

From the shell: `graphc show SPEC --format dot|svg|png [--backward] -o FILE`.

One node per graph node, labelled as the IR printer writes it (`z__1 = matmul(x, z__0)`, then
the shape with its named dims, `(N, Dh=128)`); a backward node adds the identity of the notes
that made it and the forward node it differentiates (`identity (5) of z__1`). Inputs, params
and outputs are nodes of their own shapes; params are blue, gradients (the `d_W` outputs and
the nodes that compute them) orange, the backward pass sits in its own box. The same graph
always gives byte-identical DOT text.

The DOT text needs the `graphviz` Python package (pip install 'graphc[draw]'); SVG and PNG
also need Graphviz's `dot` program (apt-get install graphviz, or brew install graphviz).
Either missing is a GraphcError saying what to install.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from graphc.core.errors import GraphcError
from graphc.core.ir import FLOAT, Graph, Node, Value
from graphc.core.printer import operand

FORMATS = ("dot", "svg", "png")

PIP_HINT = "pip install 'graphc[draw]' (the graphviz Python package)"
DOT_HINT = ("install Graphviz, which provides the `dot` program: apt-get install graphviz (Debian, Ubuntu), "
            "brew install graphviz (macOS), or see https://graphviz.org/download/; "
            "--format dot writes the DOT text without it")

# fill, border
STYLE = {
    "input":    dict(shape="invhouse", style="filled", fillcolor="#e6e6e6", color="#636363"),
    "param":    dict(shape="cylinder", style="filled", fillcolor="#c6dbef", color="#2171b5"),
    "forward":  dict(shape="box", style="rounded,filled", fillcolor="#ffffff", color="#252525"),
    "backward": dict(shape="box", style="rounded,filled", fillcolor="#fff5d6", color="#8c6d1f"),
    "gradient": dict(shape="box", style="rounded,filled", fillcolor="#fdd0a2", color="#d94801"),
    "const":    dict(shape="plaintext", style="", fillcolor="", color=""),
    "output":   dict(shape="house", style="filled", fillcolor="#c7e9c0", color="#238b45"),
    "grad_out": dict(shape="house", style="filled", fillcolor="#fdae6b", color="#d94801"),
}


def _graphviz():
    try:
        import graphviz
    except ImportError:
        raise GraphcError("drawing a graph needs the graphviz Python package, which is not installed",
                          hint=PIP_HINT) from None
    return graphviz


def is_backward(node: Node) -> bool:
    """Whether a node belongs to the backward pass: made by a VJP (it carries an identity or the
    forward node it differentiates), or named as a gradient (`d_J`, the seed dJ/dJ = 1)."""
    o = node.origin
    return o.identity is not None or o.forward is not None or node.output.name.startswith("d_")


def _shape(v: Value) -> str:
    return v.graph.format_shape(v.shape) + ("" if v.dtype == FLOAT else f" {v.dtype}")


def _call(n: Node) -> str:
    args = [operand(v) for v in n.inputs] + [f"{k}={v!r}" for k, v in n.attrs.items()]
    return f"{n.output.name} = {n.op.name}({', '.join(args)})"


def _lines(*lines: str) -> str:
    """A multi-line Graphviz label (centred lines); never read as an HTML label."""
    return "\\n".join(line.replace("\\", "\\\\") for line in lines)


def to_dot(graph: Graph, backward: bool = False) -> str:
    """The graph as Graphviz DOT text (deterministic: the same graph gives the same bytes).

    backward=True draws graphc.grad(graph, of, wrt) for the graph's [grad] (`graph.grad_spec`)
    instead: the forward graph and, in a box of its own, the backward graph. A graph that
    already holds backward nodes (the result of graphc.grad) is drawn with that box as it is."""
    graphviz = _graphviz()
    title = graph.name
    if backward:
        if graph.grad_spec is None:
            raise GraphcError(f"graph {graph.name!r} has no [grad] section, so there is no backward graph to draw",
                              hint='add [grad] with of = "J" and wrt = ["W", ...], or draw graphc.grad(g, of, wrt)')
        from graphc.autodiff.grad import grad
        of, wrt = graph.grad_spec
        graph = grad(graph, of, wrt)
        title = f"{graph.name}: forward and backward, d{of}/d({', '.join(wrt)})"
    nohtml = graphviz.nohtml
    dot = graphviz.Digraph(graph.name,
                           graph_attr=dict(label=nohtml(title), labelloc="t", fontname="Helvetica",
                                           fontsize="16", rankdir="TB", nodesep="0.25", ranksep="0.35"),
                           node_attr=dict(fontname="Helvetica", fontsize="11", margin="0.12,0.05"),
                           edge_attr=dict(color="#525252", arrowsize="0.7"))

    def node(g, name: str, label: str, kind: str, tooltip: str | None = None) -> None:
        attrs = {k: v for k, v in STYLE[kind].items() if v}
        if tooltip:
            attrs["tooltip"] = nohtml(tooltip.replace("\\", "\\\\"))
        g.node(name, nohtml(label), **attrs)

    for kind, table in (("input", graph.inputs), ("param", graph.params)):
        for v in table.values():
            node(dot, v.name, _lines(f"{kind} {v.name}", _shape(v)), kind)

    gradients = {v for k, v in graph.outputs.items() if k.startswith("d_")}

    def op_node(g, n: Node) -> None:
        v, o = n.output, n.origin
        if n.op.static and not n.inputs:    # a constant: its number, as the IR printer writes it
            node(g, v.name, _lines(operand(v)), "const", f"the constant {operand(v)}")
            return
        lines = [_call(n), _shape(v)]
        if o.identity is not None or o.forward is not None:
            ident = f"identity ({o.identity})" if o.identity else "derivative"
            lines.append(ident + (f" of {o.forward.output.name}" if o.forward is not None else ""))
        where = f"  [{o.where}]" if o.where else ""
        kind = "gradient" if v in gradients else "backward" if v in in_backward else "forward"
        node(g, v.name, _lines(*lines), kind, (o.text + where) if o.text else None)

    back, in_backward = [], set()
    for n in graph.nodes:   # made by a VJP, or computed from what a VJP made (a sum of two adjoints)
        if is_backward(n) or any(v in in_backward for v in n.inputs):
            back.append(n)
            in_backward.add(n.output)
    if not back:     # a forward graph alone needs no box around it
        for n in graph.nodes:
            op_node(dot, n)
    else:
        boxes = (("cluster_forward", "forward", [n for n in graph.nodes if n.output not in in_backward], "#fafafa"),
                 ("cluster_backward", "backward (the notes' identities)", back, "#fffcf2"))
        for box, label, nodes, fill in boxes:
            with dot.subgraph(name=box) as sub:
                sub.attr(label=nohtml(label), labeljust="l", style="rounded,filled", fillcolor=fill,
                         color="#bdbdbd", fontname="Helvetica", fontsize="13")
                for n in nodes:
                    op_node(sub, n)
    for n in graph.nodes:
        for v in n.inputs:
            dot.edge(v.name, n.output.name)
    if gradients:
        with dot.subgraph() as sink:
            sink.attr(rank="sink")     # the gradients in one row at the bottom
            for k, v in graph.outputs.items():
                if k.startswith("d_"):
                    node(sink, f"out.{k}", _lines(f"output {k}", _shape(v)), "grad_out")
    for k, v in graph.outputs.items():
        if not k.startswith("d_"):
            node(dot, f"out.{k}", _lines(f"output {k}", _shape(v)), "output")
        dot.edge(v.name, f"out.{k}")
    return dot.source


def draw(graph: Graph, path: str | Path, format: str | None = None, backward: bool = False) -> Path:
    """Write the picture of `graph` to `path` and return the path. format: "dot" (the DOT text,
    which needs no `dot` program), "svg" or "png"; None takes it from the file's suffix.
    backward=True draws the forward and backward graph of the graph's [grad] (see to_dot)."""
    path = Path(path)
    if format is None:
        format = path.suffix.lstrip(".").lower()
        if format == "gv":
            format = "dot"
    if format not in FORMATS:
        raise GraphcError(f"cannot draw to {str(path)!r}: format {format!r} is not one of {', '.join(FORMATS)}",
                          hint="give the file a .dot, .svg or .png suffix, or name the format "
                               "(graphc show --format svg; draw(..., format='svg') from Python)")
    text = to_dot(graph, backward=backward)
    if format == "dot":
        data = text.encode()
    else:
        data = render(text, format)
    path.write_bytes(data)
    return path


def render(text: str, format: str) -> bytes:
    """DOT text -> the bytes of an SVG or PNG, through Graphviz's `dot` program."""
    graphviz = _graphviz()
    if shutil.which("dot") is None:
        raise GraphcError(f"drawing {format.upper()} needs Graphviz's `dot` program, which is not on PATH",
                          hint=DOT_HINT)
    try:
        return graphviz.Source(text).pipe(format=format)
    except graphviz.ExecutableNotFound:
        raise GraphcError(f"drawing {format.upper()} needs Graphviz's `dot` program, which could not be run",
                          hint=DOT_HINT) from None
    except graphviz.CalledProcessError as e:
        err = (e.stderr or b"").decode(errors="replace").strip()
        raise GraphcError(f"Graphviz's `dot` failed to draw {format.upper()} (exit status {e.returncode})"
                          + (f": {err}" if err else ""),
                          hint="graphc's DOT text may have met a Graphviz it does not know; "
                               "--format dot writes the text to inspect") from None
