"""A Graph as spec text: the TOML that `graphc.load` reads back to the same graph.

In: a forward Graph (from the builder, a spec or an ONNX import). Out: the spec's text, each
named value one `[graph]` line whose expression is written in the spec language by each op's
own spec form (`x @ W.T + b1`, `relu(h)`, `reshape(x, shape=(N, 784))`). A temporary (a
value graphc named, such as `z__0`) is written inside the expression of its one consumer,
as the spec would have made it; a temporary that several nodes read, or that is an output,
gets its own line under a plain name (`z__0` -> `z_0`). Numbers are written as Python
writes them, so they read back bit for bit; a negative constant reads back as the negation
of a positive one (the spec language has no negative literals), which computes the same.
"""
from __future__ import annotations

import json
from typing import Iterable

from graphc.core.errors import SpecError
from graphc.core.ir import Graph, Node, Value, fresh_name, is_plain_name
from graphc.core.opdef import OpDef
from graphc.core.types import FLOAT


class _Shape(tuple):
    """A shape attribute as the spec writes it: (N, 784), dim names bare."""

    def __repr__(self) -> str:
        return "(" + ", ".join(str(d) for d in self) + ("," if len(self) == 1 else "") + ")"


def _toml_shape(shape) -> str:
    return "[" + ", ".join(json.dumps(d) for d in shape) + "]"


def to_spec(graph: Graph, comments: Iterable[str] = ()) -> str:
    """The spec text of `graph` (a forward graph of public ops), headed by `comments`."""
    scan = next((n for n in graph.nodes if n.op.name == "scan"), None)
    if scan is not None:
        raise SpecError(f"{scan.output.name} = scan(...): a scan ([scan.NAME] table) is not written back as a "
                        "spec yet", hint="keep the spec it was loaded from; graphc.scan graphs stay in Python")
    users: dict[Value, int] = {}
    for n in graph.nodes:
        for v in n.inputs:
            users[v] = users.get(v, 0) + 1
    outputs: dict[Value, int] = {}
    for v in graph.outputs.values():
        outputs[v] = outputs.get(v, 0) + 1
    named: dict[Value, str] = {}           # node values written on a [graph] line of their own -> the name
    in_outputs: set[Value] = set()         # temporaries written in the [outputs] line of their one output
    taken = set(graph.values) | set(graph.outputs)
    for n in graph.nodes:
        v = n.output
        constant = n.op.static and not n.inputs
        writable = n.op.public or type(n.op).spec_text is not OpDef.spec_text     # a slice: x[:, 1:5]
        if not writable and not constant:
            raise SpecError(f"{v.name} = {n.op.name}(...): {n.op.name} is no op of the spec language",
                            hint="only a forward graph is a spec (backward and train graphs use internal ops)")
        if v.temporary and (constant or users.get(v, 0) + outputs.get(v, 0) == 1):
            if outputs.get(v):
                in_outputs.add(v)
            continue
        name = v.name
        if not is_plain_name(name):               # a temporary of graphc's, z__0: z_0 (z_0_2, ... when taken)
            base = name.replace("__", "_") if is_plain_name(name.replace("__", "_")) else "t"
            name = fresh_name(lambda s: s in taken, (base,), f"{base}_", 2)
            taken.add(name)
        named[v] = name

    def operand(v: Value, need: int = 0) -> str:
        if v.node is None or v in named:
            return named.get(v, v.name)
        text, prec = node_text(v.node)
        return text if prec >= need else f"({text})"

    def node_text(n: Node) -> tuple[str, int]:
        attrs = {k: _Shape(a) if isinstance(a, tuple) else a for k, a in n.attrs.items()}
        return n.op.spec_text(Node(n.op, n.inputs, attrs, n.output, n.origin), operand)

    lines = [f"# {c}" if c else "#" for c in comments]
    lines += [f"name = {json.dumps(graph.name)}", "", "[dims]"]
    first = graph.symbolic_dims[:1]          # the batch; the other run-time dims are "symbolic"
    lines += [f"{k} = {json.dumps(('batch' if k in first else 'symbolic') if d is None else d)}"
              for k, d in graph.dims.items()]
    lines += ["", "[inputs]"]
    for k, v in graph.inputs.items():
        lines.append(f"{k} = " + (_toml_shape(v.shape) if v.dtype == FLOAT else
                                  f"{{ shape = {_toml_shape(v.shape)}, dtype = {json.dumps(v.dtype)} }}"))
    for section, names in (("params", graph.trainable()), ("state", list(graph.states))):
        if section == "params" or names:
            lines += ["", f"[{section}]"]
        for k in names:
            v, init = graph.params[k], graph.param_init.get(k)
            lines.append(f"{k} = " + (_toml_shape(v.shape) if init is None else
                                      f"{{ shape = {_toml_shape(v.shape)}, init = {json.dumps(init)} }}"))
    lines += ["", "[graph]"]
    lines += [f"{named[n.output]} = {json.dumps(node_text(n)[0])}" for n in graph.nodes if n.output in named]
    lines += ["", "[outputs]"]
    for k, v in graph.outputs.items():
        lines.append(f"{k} = {json.dumps(node_text(v.node)[0] if v in in_outputs else operand(v))}")
    if graph.grad_spec is not None:
        of, wrt = graph.grad_spec
        lines += ["", "[grad]", f"of = {json.dumps(of)}", f"wrt = {json.dumps(list(wrt))}"]
    if graph.generation is not None:
        ids, logits = graph.generation
        lines += ["", "[generate]", f"ids = {json.dumps(ids)}", f"logits = {json.dumps(logits)}"]
    return "\n".join(lines) + "\n"
