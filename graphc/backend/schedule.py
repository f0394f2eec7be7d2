"""Scheduling: a lowered Graph into kernel steps and an arena plan, for one C function.

In: a lowered Graph, the values the caller passes (inputs, params) and the
values written to caller buffers (outputs). Out: a list of `Step`s, each one
kernel of a family (loop, matmul, softmax, gather) with the C names and
dimensions its template prints, plus the workspace plan. Shapes are read off
the IR; nothing here re-derives them. What is fused is decided in fusion.py.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from graphc.backend.fusion import Epilogue, Fusion
from graphc.core.ir import FLOAT, Graph, Node, Value
from graphc.backend.memory import Buffer, Poly, padd, plan, peval

LOOP_VARS = ("i", "j", "k", "l", "p", "q", "r", "s")
C_RESERVED = frozenset("""auto break case char const continue default do double else enum extern float for goto
if inline int long register restrict return short signed sizeof static struct switch typedef union unsigned
void volatile while bool true false main NULL errno exp expf log logf tanh tanhf sqrt sqrtf fabs fabsf
fmax fmaxf memset memcpy size_t int32_t int64_t uint8_t n ws workspace status pack
int8_t int16_t uint16_t uint32_t uint64_t intptr_t uintptr_t ptrdiff_t
row out max sum total target shift lse dst src
alignas alignof static_assert thread_local nullptr constexpr typeof noreturn complex imaginary
asm new delete this template typename namespace operator private public protected virtual friend catch
throw using explicit mutable export decltype noexcept typeid wchar_t char8_t char16_t char32_t concept
requires consteval constinit bitand bitor compl xor and_eq or_eq xor_eq not_eq static_cast dynamic_cast
const_cast reinterpret_cast co_await co_yield co_return
stdin stdout stderr math_errhandling st_atime st_mtime st_ctime sched_priority unix linux i386
""".split()) | frozenset(LOOP_VARS)
# C_RESERVED also holds the locals of the kernel templates (row, out, max, ... of the softmax and
# gather kernels: a pointer argument of that name would be shadowed), C11/C23 and C++ keywords
# (the header is usable from C++) and lower-case macros of the headers the C sees (Python.h
# included by cffi). Macro-shaped names are mangled too: ALL_CAPS of 3+ characters (NAN, EOF,
# SIZE_MAX, GRAPHC_OK), and the <inttypes.h> / <math.h> / <stdio.h> families below.
_MACRO_LIKE = re.compile(r"^(?:[A-Z][A-Z0-9_]{2,}|(?:PRI|SCN)[A-Za-z0-9]+|M_\w+|L_(?:tmpnam|ctermid|cuserid)|P_tmpdir)$")


def _mangled(name: str) -> bool:
    """Reserved, or the mangled form of a reserved name (so that `exp` and `exp_v` stay distinct)."""
    return (name in C_RESERVED or name.startswith("gc_") or bool(_MACRO_LIKE.match(name))
            or (name.endswith("_v") and _mangled(name[:-2])))


def c_name(name: str) -> str:
    """A value's C identifier: its spec name, mangled (NAME_v) only when C, its headers or graphc
    reserve it. Injective: `exp` -> `exp_v`, and a user's own `exp_v` -> `exp_v_v`."""
    return name + "_v" if _mangled(name) else name


# ---------------------------------------------------------------- sizes as polynomials in n
def dim_poly(d) -> Poly:
    return (0, 1) if isinstance(d, str) else (d,)


def pmul(a: Poly, b: Poly) -> Poly:
    out = [0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    while len(out) > 1 and out[-1] == 0:
        out.pop()
    return tuple(out)


def numel(shape) -> Poly:
    p: Poly = (1,)
    for d in shape:
        p = pmul(p, dim_poly(d))
    return p


def c_poly(p: Poly) -> str:
    """C text of a size: 128, n, 128 * n, 4 + 2 * n * n."""
    terms = []
    for power, c in enumerate(p):
        if c == 0:
            continue
        factors = ([str(c)] if c != 1 or power == 0 else []) + ["n"] * power
        terms.append(" * ".join(factors))
    return " + ".join(terms) if terms else "0"


def contiguous_strides(shape) -> list[Poly]:
    strides, acc = [], (1,)
    for d in reversed(shape):
        strides.append(acc)
        acc = pmul(acc, dim_poly(d))
    return strides[::-1]


def broadcast_strides(shape, iter_shape) -> list[Poly]:
    """Strides of a `shape` array read at every index of `iter_shape` (0 where broadcast)."""
    own = contiguous_strides(shape)
    lead = len(iter_shape) - len(shape)
    out = []
    for axis, d in enumerate(iter_shape):
        k = axis - lead
        out.append((0,) if k < 0 or (shape[k] == 1 and d != 1) else own[k])
    return out


# ---------------------------------------------------------------- steps
def set_epilogue(ctx: dict, **fields) -> None:
    """Set fields of a matmul step's epilogue (bias, relu, mask + ldm, colsum, update + ldu + rate;
    see gc_gemm_epilogue) and what its template prints: gc_gemm_bias_act covers bias and relu, the
    rest needs a gc_gemm_epilogue (ctx["epilogue"], its initializer)."""
    ep = {**ctx.get("ep", {}), **{k: x for k, x in fields.items() if x is not None and x is not False}}
    ctx.update(ep=ep, bias=ep.get("bias"), relu=int(bool(ep.get("relu"))), colsum=ep.get("colsum"))
    if ep.keys() & {"mask", "colsum", "update"}:
        order = ("bias", "relu", "mask", "ldm", "colsum", "update", "ldu", "rate")
        ep = {k: ep[k] for k in order if k in ep}
        ctx["epilogue"] = ", ".join(f".{k} = {'1' if x is True else x}" for k, x in ep.items())


@dataclass
class Step:
    family: str                 # template family: loop, matmul, softmax, gather
    ctx: dict[str, Any]         # what the family's macro prints
    defs: list[Value] = field(default_factory=list)
    uses: list[Value] = field(default_factory=list)
    spec: dict | None = None    # loop steps: iteration shape and statements, kept for merging


# A loop nest is split over threads only when it has at least PARALLEL_WORK iterations (C:
# GC_LOOP_PARALLEL_WORK, checked at run time), and is given the pragma at all only when a batch of
# PARALLEL_PROBE_ROWS rows would reach that: an OpenMP region costs about a microsecond even when
# its `if` clause keeps it on one thread, which small models (the notes' digits network) must not pay.
PARALLEL_WORK = 32768
PARALLEL_PROBE_ROWS = 64


def worth_parallel(work: Poly) -> bool:
    return peval(work, PARALLEL_PROBE_ROWS) >= PARALLEL_WORK


def render_loop(spec: dict) -> dict[str, Any]:
    """Collapse the iteration space of a loop nest and print each statement's indices.

    Adjacent axes merge into one loop when every operand is contiguous across them,
    so a same-shape elementwise op is one flat loop and a bias broadcast is two."""
    iter_shape, stmts = spec["iter_shape"], spec["stmts"]
    operands = []      # (strides, offset) of every target and load, statement by statement
    for st in stmts:
        operands.append((st["strides"], st["offset"]))
        operands.extend((strides, offset) for _, strides, offset, _ in st["leaves"])
    dims = [(dim_poly(d), [op[0][a] for op in operands]) for a, d in enumerate(iter_shape)]
    dims = [d for d in dims if d[0] != (1,)]
    uses_col = any("{COL}" in st["value"] for st in stmts) and iter_shape and iter_shape[-1] != 1
    merged: list = []
    for axis, (size, strides) in enumerate(dims):
        # keep the last axis apart when an expression reads its index (one-hot)
        last_kept = uses_col and axis == len(dims) - 1
        if merged and not last_kept and all(ps == pmul(s, size) for ps, s in zip(merged[-1][1], strides)):
            merged[-1] = (pmul(merged[-1][0], size), strides)
        else:
            merged.append((size, strides))

    def index(k: int) -> str:
        offset = operands[k][1]
        terms = [c_poly(offset)] if offset != (0,) else []
        for i, (_, strides) in enumerate(merged):
            s = strides[k]
            if s == (1,):
                terms.append(LOOP_VARS[i])
            elif s != (0,):
                terms.append(f"{LOOP_VARS[i]} * {c_poly(s)}" if len(s) == 1 else f"{LOOP_VARS[i]} * ({c_poly(s)})")
        return " + ".join(terms) if terms else "0"

    body, k, targets = [], 0, []
    for st in stmts:
        target_k = k
        targets.append(target_k)
        loads = {f"L{j}": f"{leaf[0]}[{index(k + 1 + j)}]" for j, leaf in enumerate(st["leaves"])}
        loads["COL"] = LOOP_VARS[len(merged) - 1] if uses_col else "0"
        body.append(dict(target=f"{st['target']}[{index(target_k)}]", op=st["op"], value=st["value"].format(**loads)))
        k += 1 + len(st["leaves"])
    # The outer loop may be split across threads when every iteration of it writes elements of its
    # own: plain assignments (no += reduction) whose targets all move along it. Then each element
    # is computed by the same expression whatever the split: the bits never depend on threads.
    parallel = bool(merged) and all(st["op"] == "=" for st in stmts) and \
        all(merged[0][1][t] != (0,) for t in targets)
    # Otherwise a two-level nest (rows, columns) whose targets all move along the columns, such as a
    # delta and its bias gradient summed over the rows, may be split into blocks of columns: each
    # block runs every row, so each sum still adds its rows in order (the same bits again).
    columns = not parallel and len(merged) == 2 and all(merged[1][1][t] != (0,) for t in targets)
    work = (1,)
    for size, _ in merged:
        work = pmul(work, size)
    if not worth_parallel(work):
        parallel = columns = False
    return dict(comment="\n   ".join(spec["comments"]), loops=[(LOOP_VARS[i], c_poly(size)) for i, (size, _) in enumerate(merged)],
                body=body, zeros=[(t, c_poly(z)) for t, z in spec["zeros"]],
                parallel=c_poly(work) if parallel or columns else None, columns=columns)


@dataclass
class Schedule:
    steps: list[Step]
    buffers: dict[str, Buffer]      # workspace buffers by C name, with planned offsets
    arena: Poly                     # elements of gc_real, excluding the GEMM pack area
    label_checks: list[tuple[str, str, str]]   # (int input C name, its element count, bound)


class Scheduler(Fusion):
    """The steps of one C function, built from the fusion decisions of its graph."""

    # ---------------------------------------------------------------- names
    def ref(self, v: Value) -> str:
        """The C pointer holding v."""
        if v.node is None:
            return c_name(v.name)
        if v in self.out_of:
            return self.out_of[v]
        return c_name(v.name)

    def static_expr(self, v: Value) -> str:
        n = v.node
        if n.op.name == "const":
            value = n.attrs['value']    # finite from the spec; folding could still overflow
            return f"(gc_real){value!r}" if math.isfinite(value) else \
                "(gc_real)NAN" if value != value else f"(gc_real)({'-' if value < 0 else ''}HUGE_VAL)"
        if n.op.name == "size":
            src = n.inputs[0].shape
            return f"(gc_real)({c_poly(numel([src[a] for a in n.attrs['axes']]))})"
        return "(" + n.op.c_expr.format(*[self.static_expr(x) for x in n.inputs]) + ")"

    # ---------------------------------------------------------------- loop kernels
    def expr(self, v: Value, iter_shape, leaves: list) -> str:
        """C expression of v at the current index; loads become {L<k>} placeholders."""
        if v in self.static:
            return self.static_expr(v)
        if v in self.inlined:
            n = v.node
            if n.op.name == "onehot":   # 1 where the column index equals the row's label
                y = n.inputs[0]
                leaves.append((self.ref(y), broadcast_strides(y.shape + (1,), iter_shape), (0,), y))
                return "((gc_real)({L%d} == {COL}))" % (len(leaves) - 1)
            if n.op.name == "broadcast_to":
                return self.expr(n.inputs[0], iter_shape, leaves)
            return "(" + n.op.c_expr.format(*[self.expr(x, iter_shape, leaves) for x in n.inputs]) + ")"
        leaves.append((self.ref(v), broadcast_strides(v.shape, iter_shape), (0,), v))
        return "{L%d}" % (len(leaves) - 1)

    def loop_step(self, iter_shape, target: str, target_strides, value: str, leaves: list,
                  accumulate: bool, comment: str, defs, target_offset: Poly = (0,), zero_size: Poly | None = None):
        """One loop nest over iter_shape writing (or accumulating into) target."""
        stmt = dict(target=target, strides=target_strides, offset=target_offset, value=value, leaves=leaves,
                    op="+=" if accumulate else "=")
        spec = dict(iter_shape=tuple(iter_shape), stmts=[stmt], comments=[comment],
                    zeros=[(target, zero_size)] if zero_size else [])
        return Step("loop", render_loop(spec), list(defs), [leaf[3] for leaf in leaves], spec)

    @staticmethod
    def merge_reductions(steps: list[Step]) -> list[Step]:
        """A sum that reads a value right after the loop producing it joins that loop (the bias
        gradient is summed in the same pass that writes the delta): one pass over memory less."""
        out: list[Step] = []
        producer: dict[Value, int] = {}
        for st in steps:
            spec = st.spec
            if (spec and st.family == "loop" and len(spec["stmts"]) == 1 and spec["stmts"][0]["op"] == "+="
                    and len(st.uses) == 1 and st.uses[0] in producer):
                i = producer[st.uses[0]]
                host = out[i]
                if host.spec is not None and host.spec["iter_shape"] == spec["iter_shape"] and all(s["op"] == "=" for s in host.spec["stmts"][:1]):
                    merged = dict(iter_shape=spec["iter_shape"], stmts=host.spec["stmts"] + spec["stmts"],
                                  comments=host.spec["comments"] + spec["comments"],
                                  zeros=host.spec["zeros"] + spec["zeros"])
                    out[i] = Step("loop", render_loop(merged), host.defs + st.defs, host.uses + st.uses, merged)
                    continue
            for v in st.defs:
                producer[v] = len(out)
            out.append(st)
        return out

    # ---------------------------------------------------------------- per-family steps
    def comment(self, n: Node) -> str:
        o = n.origin
        text = (o.text or n.output.name).replace("*/", "* /")
        if o.identity:
            return f"{n.output.name}: identity ({o.identity}), from {text}"
        return f"{text}" + (f"    [{o.where}]" if o.where else "")

    def node_steps(self, n: Node) -> list[Step]:
        v, op = n.output, n.op
        if n in self.partner:
            return self.softmax_steps(n)
        if n in self.emit_at:
            final = self.emit_at[n]
            return [self.epilogue_step(final, self.epilogue[final])]
        if v in self.static or v in self.inlined or v in self.folded or v in self.absorbed or n in self.epilogue:
            return []
        out = self.ref(v)
        name = op.name
        if op.c_expr is not None:
            leaves: list = []
            if name == "broadcast_to":
                value = self.expr(n.inputs[0], v.shape, leaves)
            else:
                value = op.c_expr.format(*[self.expr(x, v.shape, leaves) for x in n.inputs])
            return [self.loop_step(v.shape, out, contiguous_strides(v.shape), value, leaves, False,
                                   self.comment(n), [v])]
        if name in ("sum", "sum_to"):
            x = n.inputs[0]
            if name == "sum":
                ax = n.attrs["axis"]
                keep = tuple(1 if ax is None or a == ax % x.rank else d for a, d in enumerate(x.shape))
            else:
                keep = n.attrs["shape"]
            leaves = []
            value = self.expr(x, x.shape, leaves)
            return [self.loop_step(x.shape, out, broadcast_strides(keep, x.shape), value, leaves, True,
                                   self.comment(n), [v], zero_size=numel(v.shape))]
        if name in ("transpose", "reshape", "slice", "concat"):
            return self.copy_steps(n, out)
        if name == "matmul":
            return [self.matmul_step(n, out)]
        if name in ("softmax", "log_softmax", "cross_entropy"):
            return self.softmax_steps(n)
        if name in ("embedding", "embedding_grad", "onehot"):
            if name == "onehot":
                y = n.inputs[0]
                ctx = dict(kind=name, out=out, ids=self.ref(y), count=c_poly(numel(y.shape)),
                           width=c_poly(dim_poly(n.attrs["depth"])))
            else:
                src, ids = n.inputs
                width = src.shape[-1]
                ctx = dict(kind=name, out=out, src=self.ref(src), ids=self.ref(ids),
                           count=c_poly(numel(ids.shape)), width=c_poly(dim_poly(width)),
                           rows=c_poly(dim_poly(n.attrs["rows"])) if name == "embedding_grad" else None)
            ctx["comment"] = self.comment(n)
            return [Step("gather", ctx, [v], list(n.inputs))]
        raise NotImplementedError(f"codegen: no kernel for op {name}")

    def softmax_steps(self, n: Node) -> list[Step]:
        """One pass over the rows of the logits; softmax and cross_entropy of the same logits (and
        the gradient of identity (7)) share it, emitted where the first of the two stands."""
        x, name = n.inputs[0], n.op.name
        rows, cols = c_poly(numel(x.shape[:-1])), c_poly(dim_poly(x.shape[-1]))
        ctx = dict(rows=rows, cols=cols, x=self.ref(x), labels=None, targets=None, probs=None, grad=None,
                   parallel=c_poly(numel(x.shape)) if worth_parallel(numel(x.shape)) else None)
        partner = self.partner.get(n)
        if partner is None:
            ctx.update(comment=self.comment(n), kind=name, out=self.ref(n.output))
            if name == "cross_entropy":
                y = n.inputs[1]
                ctx["labels" if y.dtype != FLOAT else "targets"] = self.ref(y)
            return [Step("softmax", ctx, [n.output], list(n.inputs))]
        if self.g.nodes.index(partner) < self.g.nodes.index(n):
            return []   # emitted with its partner
        ce, sm = (n, partner) if name == "cross_entropy" else (partner, n)
        y = ce.inputs[1]
        defs, uses = [ce.output], [x, y]
        ctx.update(comment=self.comment(ce), kind="softmax_xent",
                   out=self.ref(ce.output), labels=self.ref(y) if y.dtype != FLOAT else None,
                   targets=self.ref(y) if y.dtype == FLOAT else None)
        if sm.output not in self.absorbed:
            ctx.update(probs=self.ref(sm.output), comment=ctx["comment"] + f"\n   and {self.comment(sm)}")
            defs.append(sm.output)
        if ce in self.xent_grad:
            mul, scale = self.xent_grad[ce]
            ctx.update(grad=self.ref(mul.output),
                       scale=self.static_expr(scale) if scale in self.static else f"{self.ref(scale)}[0]",
                       comment=ctx["comment"] + f"\n   and {self.comment(mul)}")
            defs.append(mul.output)
            if scale not in self.static:
                uses.append(scale)
        return [Step("softmax", ctx, defs, uses)]

    def copy_steps(self, n: Node, out: str) -> list[Step]:
        v, name = n.output, n.op.name
        x = n.inputs[0]
        if name == "reshape":   # same elements in the same order: a flat copy
            # a static scalar (a constant such as the seed dJ/dJ = 1) has no buffer: use its value
            value = self.static_expr(x) if x in self.static else f"{self.ref(x)}[i]"
            ctx = dict(comment=self.comment(n), loops=[("i", c_poly(numel(v.shape)))], zeros=[],
                       body=[dict(target=f"{out}[i]", op="=", value=value)],
                       parallel=c_poly(numel(v.shape)) if worth_parallel(numel(v.shape)) else None, columns=False)
            return [Step("loop", ctx, [v], [x])]
        if name == "transpose":
            if x.rank < 2:
                leaves = [(self.ref(x), contiguous_strides(x.shape), (0,), x)]
            else:
                s = contiguous_strides(x.shape)
                leaves = [(self.ref(x), [s[1], s[0]], (0,), x)]
            return [self.loop_step(v.shape, out, contiguous_strides(v.shape), "{L0}", leaves, False,
                                   self.comment(n), [v])]
        if name == "slice":
            leaves = [(self.ref(x), contiguous_strides(x.shape)[:-1] + [(1,)], (n.attrs["start"],), x)]
            return [self.loop_step(v.shape, out, contiguous_strides(v.shape), "{L0}", leaves, False,
                                   self.comment(n), [v])]
        # concat: each operand into its column range of every row
        steps, start = [], 0
        out_strides = contiguous_strides(v.shape)
        for part in n.inputs:
            leaves = [(self.ref(part), contiguous_strides(part.shape), (0,), part)]
            steps.append(self.loop_step(part.shape, out, out_strides, "{L0}", leaves, False,
                                        self.comment(n), [v], target_offset=(start,)))
            start += part.shape[-1]
        return steps

    def epilogue_step(self, final: Node, ep: Epilogue) -> Step:
        v = final.output
        st = self.matmul_step(ep.matmul, self.ref(v))
        comment = st.ctx["comment"]
        if ep.bias is not None or ep.relu:
            parts = (["+ bias"] if ep.bias is not None else []) + (["relu"] if ep.relu else [])
            comment += "\n   " + ", then ".join(parts) + f", written to {v.name}"
        if ep.mask is not None:
            comment += f"\n   {self.comment(final)}:\n       ∘ sgn({ep.mask.name}) as the product is written"
        if ep.colsum is not None:
            comment += f"\n   {self.comment(ep.colsum)}:\n       summed over the rows of {v.name} as they are written"
        st.ctx["comment"] = comment
        set_epilogue(st.ctx, bias=self.ref(ep.bias) if ep.bias is not None else None, relu=ep.relu,
                     mask=self.ref(ep.mask) if ep.mask is not None else None,
                     ldm=st.ctx["N"] if ep.mask is not None else None,
                     colsum=self.ref(ep.colsum.output) if ep.colsum is not None else None)
        st.defs = [v] + ([ep.colsum.output] if ep.colsum is not None else [])
        st.uses = st.uses + [x for x in (ep.bias, ep.mask) if x is not None]
        return st

    def matmul_step(self, n: Node, out: str) -> Step:
        a, b = n.inputs
        ta = tb = 0
        if a in self.folded and a.rank == 2:
            a, ta = a.node.inputs[0], 1
        elif a in self.folded:
            a = a.node.inputs[0]
        if b in self.folded and b.rank == 2:
            b, tb = b.node.inputs[0], 1
        elif b in self.folded:
            b = b.node.inputs[0]
        A = a.shape if a.rank == 2 else (1, a.shape[0])
        B = b.shape if b.rank == 2 else (b.shape[0], 1)
        M, K = (A[1], A[0]) if ta else A
        N = B[0] if tb else B[1]
        ctx = dict(comment=self.comment(n), out=out, a=self.ref(a), b=self.ref(b), ta=ta, tb=tb,
                   M=c_poly(dim_poly(M)), N=c_poly(dim_poly(N)), K=c_poly(dim_poly(K)),
                   lda=c_poly(dim_poly(A[1])), ldb=c_poly(dim_poly(B[1])), ldc=c_poly(dim_poly(N)),
                   bias=None, relu=0, epilogue=None, colsum=None)
        return Step("matmul", ctx, [n.output], [a, b])

    # ---------------------------------------------------------------- whole function
    def run(self) -> Schedule:
        steps: list[Step] = []
        for n in self.g.nodes:
            steps.extend(self.node_steps(n))
        # outputs that are not computed into their buffer: a second name, or an input/param
        for cname, v in self.outputs.items():
            if self.out_of.get(v) != cname or v.node is None or v in self.static:
                leaves: list = []
                value = self.expr(v, v.shape, leaves) if v in self.static else "{L0}"
                if v not in self.static:
                    leaves = [(self.ref(v), contiguous_strides(v.shape), (0,), v)]
                steps.append(self.loop_step(v.shape, cname, contiguous_strides(v.shape), value, leaves, False,
                                            f"output {cname} = {v.name}", []))
        steps = self.merge_reductions(steps)
        return Schedule(steps, *self._plan(steps), self._label_checks())

    def _plan(self, steps: list[Step]):
        first: dict[Value, int] = {}
        last: dict[Value, int] = {}
        for i, st in enumerate(steps):
            for v in st.defs:
                first.setdefault(v, i)
                last[v] = max(last.get(v, i), i)
            for v in st.uses:
                last[v] = i
        buffers = {}
        for v, f in first.items():
            if v.node is None or v in self.out_of:
                continue
            buffers[c_name(v.name)] = Buffer(c_name(v.name), numel(v.shape), f, last[v])
        arena = plan(list(buffers.values()))
        return buffers, arena

    def _label_checks(self):
        """Every int input with its smallest bound over the ops that index with it (`index_bounds`)."""
        bounds: dict[Value, int] = {}
        for n in self.g.nodes:
            for y, bound in n.op.index_bounds(n):
                bounds[y] = min(bound, bounds.get(y, bound))
        return [(self.ref(y), c_poly(numel(y.shape)), str(b)) for y, b in bounds.items()]


def schedule(g: Graph, outputs: dict[str, Value]) -> Schedule:
    return Scheduler(g, outputs).run()


__all__ = ["schedule", "Schedule", "Step", "c_name", "c_poly", "numel", "padd"]
