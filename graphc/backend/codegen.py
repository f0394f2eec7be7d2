"""Stage 5: Graphs into C source, header and cffi declarations.

In: the forward graph (and its backward graph, and an optimizer when training).
Out: `CSource` (the .c, .h and cdef texts of the model, what each C function takes, and the
kernel library the model file calls: graphc_kernels.c/.h, the same text for every model).
Templates are opened through backend/templates.py; it never infers a shape (the IR
has them) and never compiles anything (native/build.py does).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

from graphc.core.errors import GraphcError
from graphc.core.ir import FLOAT, Graph, Value
from graphc.backend.lower import lower
from graphc.backend.functions import Arg, Function, output_args
from graphc.backend.cprint import c_name
from graphc.backend.kernels import PARALLEL_WORK
from graphc.backend.sizes import pmax
from graphc.backend.schedule import schedule
from graphc.backend.templates import environment, render_template, templates_dir  # noqa: F401
from graphc.backend.train_codegen import add_train_functions

CTYPES = {"float32": ("float", "f"), "float64": ("double", "")}
KERNEL_SUFFIX = {"float32": "f", "float64": "d"}   # graphc_kernels.h's entry points of each element type


@dataclass(frozen=True)
class KernelSources:
    """The kernel library every model file calls: plain C (templates/graphc_kernels.c and .h), the
    same text for every model and element type. `defines` are the -D flags that compile only the
    element type a model calls (the other half is never linked: it would only double the first
    build); the library is compiled once per element type, compiler and flags."""
    source: str
    header: str
    defines: tuple[str, ...] = ()
    source_name: str = "graphc_kernels.c"
    header_name: str = "graphc_kernels.h"


@functools.lru_cache(maxsize=None)
def kernel_library(dtype: str | None = None) -> KernelSources:
    """graphc_kernels.c and .h (read once per process), for the models of `dtype` (None: both types)."""
    where = templates_dir()
    defines = {None: (), "float32": ("-DGC_KERNELS_DOUBLE=0",), "float64": ("-DGC_KERNELS_FLOAT=0",)}[dtype]
    return KernelSources(_read(where / KernelSources.source_name), _read(where / KernelSources.header_name), defines)


@functools.lru_cache(maxsize=None)
def _read(path) -> str:
    return path.read_text()


@dataclass
class CSource:
    name: str
    dtype: str
    source: str
    header: str
    cdef: str
    functions: list[Function]
    forward_graph: Graph
    grad_graph: Graph | None
    grad_names: dict[str, str]        # param name -> gradient output name (d_W)
    predict_graph: Graph | None = None   # the graph of NAME_predict (outputs that need no labels)
    kernels: KernelSources = field(default_factory=kernel_library)   # graphc_kernels.c/.h, which source calls


class Emitter:
    """Collects the C functions of one model and renders them."""

    def __init__(self, graph: Graph, dtype: str = "float32", threads: int = 1):
        if dtype not in CTYPES:
            raise GraphcError(f"dtype {dtype!r} is not supported", hint="use 'float32' or 'float64'")
        if len(graph.symbolic_dims) > 1:
            raise GraphcError(f"C code supports one symbolic (batch) dim; {graph.name} has {graph.symbolic_dims}")
        self.graph, self.dtype, self.threads = graph, dtype, max(1, int(threads))
        self.ctype, self.fsuffix = CTYPES[dtype]
        self.functions: list[Function] = []
        self.extras: list[dict[str, str]] = []   # hand-written C (training's fit): source, header, cdef texts

    def shape_doc(self, v: Value) -> str:
        return "[" + ", ".join(self.graph.dim_label(d) for d in v.shape) + "]" if v.shape else "[1] (a scalar)"

    def arg(self, cname: str, role: str, v: Value, const: bool) -> Arg:
        return Arg(cname, role, v, "int32_t" if v.dtype != FLOAT else self.ctype, const, self.shape_doc(v))

    def add_function(self, name: str, doc: str, g: Graph, outputs: dict[str, tuple[str, Value]],
                     extra_args: list[Arg] = (), updated: set[str] = frozenset(), extra_steps=None) -> Function:
        """A C function computing `outputs` (C name -> (role, value)) of graph g into caller buffers."""
        low = lower(g)
        remap = {}
        for cname, (role, v) in outputs.items():
            remap[cname] = (role, low.outputs[v] if isinstance(v, str) else low.values[v.name])
        args = [self.arg(c_name(k), "input", v, True) for k, v in low.inputs.items()]
        args += [self.arg(c_name(k), "param*" if k in updated else "param", v, k not in updated)
                 for k, v in low.params.items()]
        args += [self.arg(c, role, v, False) for c, (role, v) in remap.items()]
        args += list(extra_args)
        sched = schedule(low, {c: v for c, (_, v) in remap.items()})
        f = Function(name, doc, f"{name}: {doc}", args, sched, list(extra_steps or []))
        self.functions.append(f)
        return f

    def render(self) -> tuple[str, str, str]:
        env = environment()
        g = self.graph
        legend = ", ".join(f"{k} = {'batch (argument n)' if v is None else v}" for k, v in g.dims.items()) or "(no named dims)"
        arena = (0,)
        for f in self.functions:
            arena = pmax(arena, f.sched.arena)
        ctx = dict(name=g.name, source=os.path.basename(g.source_file) if g.source_file else "",
                   functions=self.functions, ctype=self.ctype, fsuffix=self.fsuffix, shape_legend=legend,
                   kernels_header=KernelSources.header_name, ksuffix=KERNEL_SUFFIX[self.dtype],
                   batch_dim=(g.symbolic_dims[0] if g.symbolic_dims else None), arena=list(arena),
                   max_threads=self.threads, uses_matmul=any(f.uses_pack for f in self.functions),
                   guard=f"GRAPHC_{g.name.upper()}_H", extras=self.extras, loop_parallel_work=PARALLEL_WORK)
        return (env.get_template("model.c.j2").render(ctx), env.get_template("model.h.j2").render(ctx),
                env.get_template("cdef.h.j2").render(ctx))


def inputs_needed(graph: Graph) -> dict[str, set[str]]:
    """Output name -> the names of the graph inputs it depends on."""
    needs: dict[Value, set[str]] = {v: {k} for k, v in graph.inputs.items()}
    for n in graph.nodes:
        needs[n.output] = set().union(*(needs.get(v, set()) for v in n.inputs))
    return {k: needs.get(v, set()) for k, v in graph.outputs.items()}


def prediction_graph(graph: Graph) -> Graph | None:
    """The forward graph without the inputs some outputs do not need (labels, targets), keeping
    the outputs that need none of them; None when every output needs every input, or none is left.

    For the notes' network: probs = softmax(theta) needs x but not the labels y, which only the
    loss reads, so `predict` computes probs from x and the params alone."""
    from graphc.passes.simplify import dce
    needed = inputs_needed(graph)
    optional = {k for k in graph.inputs if any(k not in used for used in needed.values())}
    keep = [k for k, used in needed.items() if not used & optional]
    if not optional or not keep:
        return None
    g, _ = graph.copy()
    g.outputs = {k: g.outputs[k] for k in keep}
    dce(g)
    for k in optional:
        del g.inputs[k]
        del g.values[k]
    return g


def generate(graph: Graph, grad_of: str | None = None, wrt: list[str] | None = None,
             dtype: str = "float32", threads: int = 1, optimizer: Any = None) -> CSource:
    """Render the model's C: forward (and predict, the outputs that need no labels or targets),
    and value_and_grad (and train_step) when wrt is given."""
    from graphc.autodiff.grad import grad
    em = Emitter(graph, dtype, threads)
    em.add_function("forward", "the forward outputs", graph, output_args(graph))
    predict = prediction_graph(graph)
    if predict is not None:
        dropped = ", ".join(k for k in graph.inputs if k not in predict.inputs)
        em.add_function("predict", f"the outputs that need no {dropped}: {', '.join(predict.outputs)}",
                        predict, output_args(predict))
    bwd, grad_names = None, {}
    if wrt:
        bwd = grad(graph, grad_of, wrt)
        grad_names = {w: f"d_{w}" for w in wrt}
        outs = output_args(graph)
        outs.update({c_name(f"d_{w}"): ("grad", f"d_{w}") for w in wrt})
        em.add_function("value_and_grad", f"the outputs and dJ/d{{{', '.join(wrt)}}} for J = {grad_of}", bwd, outs)
        if optimizer is not None:
            add_train_functions(em, graph, bwd, grad_of, list(wrt), optimizer)
    source, header, cdef = em.render()
    return CSource(graph.name, dtype, source, header, cdef, em.functions, graph, bwd, grad_names, predict,
                   kernel_library(dtype))

