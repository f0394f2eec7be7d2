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
import re
from dataclasses import dataclass, field
from typing import Any

from graphc.core.arguments import dim_bounds
from graphc.core.errors import GraphcError
from graphc.core.ir import FLOAT, Graph, Value
from graphc.backend.lower import lower
from graphc.backend.functions import Arg, Function, output_args
from graphc.backend.cprint import (c_long, c_name, c_named, c_pack_shares, c_param, c_poly, c_poly_table,
                                   c_size_poly, c_wrap, dims_in_c)
from graphc.backend.kernels import PARALLEL_WORK, PRODUCTS, Attention, Pointwise, SgdUpdate, all_records
from graphc.backend.packing import pack_elems, pack_shares, scratch_share
from graphc.backend.sharing import share
from graphc.backend.sizes import ZERO, Poly, peval, pmax
from graphc.backend.schedule import schedule
from graphc.backend.templates import environment, render_template, templates_dir  # noqa: F401  (re-exported)
from graphc.backend.sampling import add_generate
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
    arena: Poly = ZERO                # the planned arena, elements (the most over the functions)
    pack: list = field(default_factory=list)   # GEMM packing need in the run-time dims (backend/packing.py's shares)
    thread_elems: int = 0             # the area of each thread but the first (Emitter.thread_elems), after the shares
    chunk0: Any = None                # (elements, [(batch, images)]): the first thread's partial sum (Emitter.chunk0)
    dim_args: tuple = ("n",)          # the C arguments of the symbolic dims, in the graph's order
    generation: Any = None            # backend/sampling.py's GenerateLayout: NAME_generate exists

    def dim_values(self, values) -> dict[str, int]:
        """dim -> value from an int (the batch: every symbolic dim, for a model with one), a tuple
        in the order of the C arguments, or a dict dim -> value."""
        sym = self.forward_graph.symbolic_dims
        if isinstance(values, dict):
            return dict(values)
        if isinstance(values, int):
            return {d: values for d in sym}
        return dict(zip(sym, values))

    def workspace_parts(self, values, threads: int = 1) -> tuple[int, int, int]:
        """(arena bytes, packing bytes, total) at the dims' values (dim_values: the batch n of a
        model with one run-time dim): what NAME_workspace_size(n, ...) returns with the C compiled
        for `threads` threads (the header's NAME_WORKSPACE_BYTES), total = arena + packing + 64."""
        from graphc.backend.packing import shares_value
        item = 8 if self.dtype == "float64" else 4
        dims = self.dim_values(values)
        pack = shares_value(self.pack, dims, threads) + (threads - 1) * self.thread_elems
        if self.chunk0 and any(peval(b, dims) > images for b, images in self.chunk0[1]):
            pack += self.chunk0[0]
        pack *= item
        arena = peval(self.arena, dims) * item
        return arena, pack, arena + pack + 64


class Emitter:
    """Collects the C functions of one model and renders them."""

    def dim_max(self) -> list[dict]:
        """The largest size of each run-time dim a node bounds (x[:T] of a table of 64 rows: T <= 64),
        with the spec line that does: {"arg": "T", "dim": "T", "n": 64, "macro": "NAME_MAX_T", "why": "..."};
        the C functions return GRAPHC_ERR_BATCH for a larger one."""
        out = []
        for d, (bound, node) in dim_bounds(self.graph).items():
            if d in self.c_dims:
                arg = self.c_dims[d]
                out.append(dict(arg=arg, dim=d, n=bound, macro=f"{self.graph.name}_MAX_{arg.upper()}",
                                why=(node.origin.text or node.output.name).replace("*/", "* /")))
        return out

    def __init__(self, graph: Graph, dtype: str = "float32", threads: int = 1):
        if dtype not in CTYPES:
            raise GraphcError(f"dtype {dtype!r} is not supported", hint="use 'float32' or 'float64'")
        self.graph, self.dtype, self.threads = graph, dtype, max(1, int(threads))
        self.c_dims = c_dims(graph)         # symbolic dim -> the C argument (n, T, ...)
        self.dim_args = tuple(self.c_dims.values()) or ("n",)
        self.ctype, self.fsuffix = CTYPES[dtype]
        self.functions: list[Function] = []
        self.extras: list[dict[str, str]] = []   # hand-written C (training's fit): source, header, cdef texts
        self.dim_names, self.dim_text = dim_names(graph)
        self.hparams: dict | None = None   # a train step's NAME_hparams: ctype, macro, fields, define

    def shape_doc(self, v: Value) -> str:
        return "[" + ", ".join(self.graph.dim_label(d) for d in v.shape) + "]" if v.shape else "[1] (a scalar)"

    def arg(self, cname: str, role: str, v: Value, const: bool) -> Arg:
        return Arg(cname, role, v, "int32_t" if v.dtype != FLOAT else self.ctype, const, self.shape_doc(v))

    def add_function(self, name: str, doc: str, g: Graph, outputs: dict[str, tuple[str, Value]],
                     extra_args: list[Arg] = (), updated: set[str] = frozenset(), lowered: Graph | None = None,
                     updates=None, writes: dict[str, str] | None = None) -> Function:
        """A C function computing `outputs` (C name -> (role, value)) of graph g into caller buffers
        (`lowered`: g already lowered; `updates`: the optimizer's records of a train step;
        `writes`: param name -> the output of g copied over it last, the model state's update)."""
        low = lower(g) if lowered is None else lowered
        remap = {}
        for cname, (role, v) in outputs.items():
            remap[cname] = (role, low.outputs[v] if isinstance(v, str) else low.values[v.name])
        args = [self.arg(c_name(k), "input", v, True) for k, v in low.inputs.items()]
        args += [self.arg(c_name(k), "param*" if k in updated else "param", v, k not in updated)
                 for k, v in low.params.items()]
        args += [self.arg(c, role, v, False) for c, (role, v) in remap.items()]
        args += list(extra_args)
        sched = schedule(low, {c: v for c, (_, v) in remap.items()}, updates,
                         {c_name(k): low.outputs[out] for k, out in (writes or {}).items()})
        f = Function(name, doc, f"{name}: {doc}", args, sched, dim_text=self.dim_text, dim_args=self.dim_args)
        self.functions.append(f)
        return f

    def products(self) -> list[tuple]:
        """Every matrix product of the model's functions (NAME_fit runs NAME_train_step's):
        (ta, tb, (M, N, K)) with the sizes as Polys over the run-time dims."""
        seen = {}
        for f in self.functions:
            for st in all_records(f.steps):
                if isinstance(st, PRODUCTS) and st.dims:
                    p = (st.ta, st.tb, tuple(Poly.of(d) for d in st.dims))
                    seen[p] = p
        return list(seen)

    def thread_elems(self) -> int:
        """The elements of each thread's own area but the first's (the header's NAME_PACK_ELEMS has
        t - 1 of them): the most, over the convolutions whose images are shared out among the
        threads (Pointwise records), of the scratch of one image and the packing share of one
        product on one thread, and over the attentions (whose heads are) of a thread's share of
        their blocks (packing.attention_scratch), in whole 64-byte lines."""
        most = 0
        for f in self.functions:
            for st in all_records(f.steps):
                if isinstance(st, Attention):
                    most = max(most, st.share)
                elif isinstance(st, Pointwise):
                    M, N, K = (Poly.of(d).const for d in st.dims)
                    share = pack_elems(st.ta, st.tb, M, N, K, 1, self.dtype)
                    most = max(most, st.thread_scratch + -(-share // 16) * 16)
        return most

    def chunk0(self):
        """(elements, [(batch, images per chunk)]) of the first thread's partial sum of a weight
        gradient summed over chunks of images (Pointwise records of kind weight_grad), needed only
        where a batch has more than one chunk (so not at batch 1: kws_dscnn's firmware); None
        when no kernel sums so."""
        most, batches = 0, {}
        for f in self.functions:
            for st in all_records(f.steps):
                if isinstance(st, Pointwise) and st.kind == "weight_grad":
                    most = max(most, -(-int(st.elems) // 16) * 16)
                    batches[(st.batch_dim, st.images)] = None
        return (most, list(batches)) if most else None

    def render(self) -> tuple[str, str, str]:
        env = environment()
        g = self.graph
        legend = ", ".join(f"{k} = {self.legend(k) if v is None else v}" for k, v in g.dims.items()) or "(no named dims)"
        arena = ZERO
        for f in self.functions:
            arena = pmax(arena, f.sched.arena)
        scratch = max((st.share for f in self.functions for st in all_records(f.steps) if isinstance(st, Attention)),
                      default=0)       # the first thread's share of attention's blocks is in the packing area
        self.arena, self.pack = arena, pack_shares(self.products(), self.dtype) + [scratch_share(scratch)] * (scratch > 0)
        self.threads_area, self.chunk0_area = self.thread_elems(), self.chunk0()
        if self.hparams:      # plain SGD may update every param in its gradient's GEMM: then nothing calls this
            self.hparams["define"]["sgd_called"] = any(isinstance(st, SgdUpdate) for f in self.functions
                                                       for st in all_records(f.steps)) \
                or any("gc_sgd_update(" in extra["source"] for extra in self.extras)   # NAME_apply's
        sharing = share(g.name, self.functions)
        ctx = dict(sharing=sharing, dim_names=self.dim_names, wrap=c_wrap, named=lambda t: c_named(str(t), self.dim_names),
                   call=lambda f, args: c_wrap(f, args, ");"),
                   check_params=[c_param("int32_t", c, True) for c, _, _ in sharing.label_params],
                   ids_tests=[f"!gc_ids_in_range({c}, {c_named(count, self.dim_names)}, {c_named(bound, self.dim_names)})"
                              for c, count, bound in sharing.label_params],
                   dims=[(c, v) for v, c in sorted(self.dim_names.items(), key=lambda x: list(g.dims).index(self.dim_text[x[0]]))],
                   hparams=self.hparams, name=g.name, source=os.path.basename(g.source_file) if g.source_file else "",
                   functions=self.functions, ctype=self.ctype, fsuffix=self.fsuffix, shape_legend=legend,
                   kernels_header=KernelSources.header_name, ksuffix=KERNEL_SUFFIX[self.dtype],
                   batch_dim=(g.symbolic_dims[0] if g.symbolic_dims else None), dim_max=self.dim_max(),
                   arena=c_poly_table(arena, list(self.c_dims) or [""]), dim_args=list(self.dim_args),
                   dim_params=[c_long(d) for d in self.dim_args], max_args=[f"max_{d}" for d in self.dim_args],
                   run_dims=[(d, c) for d, c in self.c_dims.items()][1:],
                   uses_matmul=any(f.uses_pack for f in self.functions),
                   pack_macros=c_pack_shares(g.name, self.pack, self.c_dims or {"": "n"}, self.threads_area,
                                             self.chunk0_area),
                   images=any(isinstance(st, Pointwise) for f in self.functions for st in all_records(f.steps)),
                   thread_elems=self.threads_area, chunk0=self.chunk0_area and dict(
                       elems=self.chunk0_area[0], more=" || ".join(f"{c_poly(b, self.c_dims)} > {i}"
                                                                   for b, i in self.chunk0_area[1])),
                   arena_expr=c_size_poly(arena, {d: f"max_{c}" for d, c in self.c_dims.items()}),
                   guard=f"GRAPHC_{g.name.upper()}_H", extras=self.extras, loop_parallel_work=PARALLEL_WORK)
        return (env.get_template("model.c.j2").render(ctx), env.get_template("model.h.j2").render(ctx),
                env.get_template("cdef.h.j2").render(ctx))


    def legend(self, d: str) -> str:
        """How the header's shape legend names a symbolic dim: the batch or another run-time size."""
        c = self.c_dims[d]
        return f"batch (argument {c})" if c == "n" else f"run-time size (argument {c})"


def c_dims(graph: Graph) -> dict[str, str]:
    """Each symbolic dim of the graph -> the C argument every entry point takes it as, in the
    graph's order: the first (the batch) is `n`, as it always was; the others are named after
    the dim (mangled as values are where C or graphc reserve the name: a dim `n` is `n_v`).
    GraphcError when a name would be that of a value or another dim's."""
    sym = graph.symbolic_dims
    out = {d: ("n" if i == 0 else c_name(d)) for i, d in enumerate(sym)}
    taken = {c_name(k): f"the value {k}" for k in [*graph.values, *graph.outputs]}
    for d, c in out.items():
        if c != "n" and c in taken:
            raise GraphcError(f"{graph.name}: the symbolic dim {d} is the C argument {c}, which {taken[c]} "
                              f"names too", hint=f"rename the dim {d} or the value")
        taken[c] = f"the dim {d}"
    return out


def dim_names(graph: Graph) -> tuple[dict[int, str], dict[int, str]]:
    """(size -> enum name NAME_Dh, size -> spec name Dh) of the dims whose size no other dim has
    (the enum names are the header's: NAME_ keeps two models in one program apart)."""
    sizes: dict[int, list[str]] = {}
    for k, v in graph.dims.items():
        if v is not None:
            sizes.setdefault(v, []).append(k)
    text = {v: ks[0] for v, ks in sizes.items() if len(ks) == 1 and 1 < v < 2 ** 31}
    return {v: f"{graph.name}_{k}" for v, k in text.items()}, text


def inputs_needed(graph: Graph) -> dict[str, set[str]]:
    """Output name -> the names of the graph inputs it depends on."""
    needs: dict[Value, set[str]] = {v: {k} for k, v in graph.inputs.items()}
    for n in graph.nodes:
        needs[n.output] = set().union(*(needs.get(v, set()) for v in n.inputs))
    return {k: needs.get(v, set()) for k, v in graph.outputs.items()}


def prediction_graph(graph: Graph) -> Graph | None:
    """The graph in inference (autodiff/modes.py: batch_norm by its running statistics, dropout
    the identity) without the inputs some outputs do not need (labels, targets), keeping the
    outputs that need none of them; None when that is the forward graph itself or no output is left.

    For the notes' network: probs = softmax(theta) needs x but not the labels y, which only the
    loss reads, so `predict` computes probs from x and the params alone."""
    from graphc.autodiff.modes import has_modes, inference_graph
    from graphc.passes.simplify import dce
    source = inference_graph(graph)
    needed = inputs_needed(source)
    optional = {k for k in source.inputs if any(k not in used for used in needed.values())}
    keep = [k for k, used in needed.items() if not used & optional]
    if not keep or not (optional or has_modes(graph)):
        return None
    g, _ = source.copy()
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
    with dims_in_c(c_dims(graph)):       # every size printed names the dims as the C arguments do
        return _generate(graph, grad_of, wrt, dtype, threads, optimizer)


def _generate(graph: Graph, grad_of, wrt, dtype: str, threads: int, optimizer) -> CSource:
    from graphc.autodiff.grad import grad
    from graphc.autodiff.modes import has_modes
    em = Emitter(graph, dtype, threads)
    em.add_function("forward", "the forward outputs", graph, output_args(graph))
    predict = prediction_graph(graph)
    if predict is not None:
        dropped = ", ".join(k for k in graph.inputs if k not in predict.inputs)
        what = f"the outputs that need no {dropped}: {', '.join(predict.outputs)}" if dropped else \
            f"the outputs {', '.join(predict.outputs)}"
        em.add_function("predict", what + (" in inference (running statistics, no dropout)" if has_modes(graph) else ""),
                        predict, output_args(predict))
    bwd, grad_names = None, {}
    if wrt:
        bwd = grad(graph, grad_of, wrt)
        grad_names = {w: f"d_{w}" for w in wrt}
        outs = output_args(graph)
        outs.update({c_name(f"d_{w}"): ("grad", f"d_{w}") for w in wrt})
        em.add_function("value_and_grad", f"the outputs and the gradients of the loss {grad_of} with respect "
                                           f"to {', '.join(wrt)}", bwd, outs)
        if optimizer is not None:
            add_train_functions(em, graph, grad_of, list(wrt), optimizer)
    generation = add_generate(em, graph)
    source, header, cdef = em.render()
    return CSource(graph.name, dtype, source, header, cdef, em.functions, graph, bwd, grad_names, predict,
                   kernel_library(dtype), em.arena, em.pack, em.thread_elems(), em.chunk0(), em.dim_args, generation)


def amalgamate(csrc: CSource) -> str:
    """One self-contained NAME.c: graphc_kernels.h, graphc_kernels.c and the model's source, in that
    order, for a build of one translation unit (graphc emit --amalgamate). graphc_kernels.c compiles
    its parts 2-4 by including itself; here each is pasted where it is included, for the model's
    element type only, and the library's entry points become static (unused ones need no warning)."""
    lib = csrc.kernels
    include = re.compile(rf'^#include "{re.escape(lib.source_name)}"[^\n]*$', re.M)
    own_header = re.compile(rf'^#include "{re.escape(lib.header_name)}"[^\n]*$', re.M)
    lines = lib.source.splitlines(keepends=True)
    try:
        starts = [lines.index(line + "\n") for line in _PART_LINES[:-1]]
        end = lines.index(_PART_LINES[-1] + "\n")
    except ValueError:
        raise GraphcError(f"{lib.source_name} is not laid out in the four parts amalgamate() expects") from None
    parts = ["".join(lines[a + 1:b]) for a, b in zip(starts, starts[1:] + [end])]

    def pasted(level: int) -> str:   # part level + 1, with the parts it includes pasted in
        text = parts[level]
        if level + 1 < len(parts):
            text = include.sub(lambda _: pasted(level + 1), text)   # a function: its text is taken as is
        return f"/* ---- {lib.source_name}, {_PART_NAMES[level]} ---- */\n{text}/* ---- end of it ---- */"

    pieces = include.split(parts[0])      # part 1 includes part 2 for float, then for double
    if len(pieces) != 3:
        raise GraphcError(f"{lib.source_name}: part 1 should include part 2 twice (float, double), "
                          f"not {len(pieces) - 1} times")
    keep, other = (0, ("double", "GC_KERNELS_DOUBLE")) if csrc.dtype == "float32" else (1, ("float", "GC_KERNELS_FLOAT"))
    part1 = pieces[0]
    for index, piece in enumerate(pieces[1:]):
        part1 += (pasted(1) if index == keep else f"/* ({other[0]}: not used by this model) */") + piece
    here = f"/* {lib.header_name}: above, in this file */"
    return (f"/* {csrc.name}.c: model \"{csrc.name}\" with graphc's kernel library, in one translation unit\n"
            f" * (graphc emit --amalgamate). In order: {lib.header_name}, {lib.source_name} ({csrc.dtype}\n"
            f" * only, its entry points static) and the model, each from a banner on. Build it as any\n"
            f" * C99 file: cc -std=c99 -O2 -c {csrc.name}.c (-fopenmp optional). */\n"
            "#if defined(__GNUC__) || defined(__clang__)\n"
            "#define GC_KERNELS_API static __attribute__((unused))\n"
            "#else\n"
            "#define GC_KERNELS_API static\n"
            "#endif\n"
            f"#define {other[1]} 0\n\n"
            f"/* ==== {lib.header_name} ==== */\n{lib.header}\n"
            f"/* ==== {lib.source_name} ==== */\n{''.join(lines[:starts[0]])}"
            + own_header.sub(here, part1)
            + f"\n/* ==== {csrc.name}.c ==== */\n" + own_header.sub(here, csrc.source))


# The lines that open graphc_kernels.c's parts 1-4, and the #endif closing the last one.
_PART_LINES = ("#if !defined(GC_KERNELS_TYPE_PASS)      /* part 1 */", "#elif !defined(GC_KERNELS_ISA_PASS)     /* part 2 */",
               "#elif !defined(GC_KERNELS_TILE_PASS)    /* part 3 */", "#else                                   /* part 4 */",
               "#endif                                  /* parts 1-4 */")
_PART_NAMES = ("part 1", "part 2, the GEMM of one element type", "part 3, one instruction set",
               "part 4, one micro-kernel")


