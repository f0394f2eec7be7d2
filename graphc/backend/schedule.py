"""Scheduling: a lowered Graph into kernel records and an arena plan, for one C function.

In: a lowered Graph, the values the caller passes (inputs, params) and the values written to
caller buffers (outputs). Out: a Schedule: the kernel records (backend/kernels.py) in order,
each with the C names and sizes its template prints, and the workspace plan. Which record an
op becomes is the op's own choice (its `kernel` method, in graphc/ops/), made through the
builders below; what is fused is decided in fusion.py. Shapes are read off the IR; nothing
here re-derives them, and no C text is made here but through the printer (cprint.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from graphc.backend.cprint import (c_apply, c_at, c_index, c_load, c_name, c_onehot, c_poly, c_real, c_scalar,
                                   c_size_real)
from graphc.backend.fusion import Epilogue as Fused, Fusion, sgd_in_gemm, updates_when_ready
from graphc.backend.packing import attention_blocks, attention_scratch
from graphc.backend.kernels import (Attention, Depthwise, Epilogue, Gather, Gemm, Kernel, Load, Loop, OptimizerUpdates, Patches,
                                    Pointwise, RowNorm, RowSoftmax, Statement, worth_parallel)
from graphc.backend.memory import Buffer, live_peak, plan, recompute_late_reads
from graphc.backend.packing import DIRECT_WORK
from graphc.backend.scan_loop import scan_loop
from graphc.backend.sizes import Poly, broadcast_strides, contiguous_strides, dim_poly, numel, peval, pmul
from graphc.core.ir import FLOAT, Graph, Node, Value


@dataclass
class Schedule:
    steps: list[Kernel]
    buffers: dict[str, Buffer]      # workspace buffers by C name, with planned offsets
    arena: Poly                     # elements of gc_real, excluding the GEMM pack area
    label_checks: list[tuple[str, str, str]]   # (int input C name, its element count, bound)


# The weight gradient of a 1x1 convolution, Σ_n δ[n] x[n]ᵀ, reads x[n] transposed, which the GEMM
# packs: K (the pixels) at most the library's KC at a time, for every column of the product. Its
# products run over chunks of this many pixels (accumulated in order), so the packing share stays
# that of a 64-deep panel: 5,120 floats for kws_dscnn's 64x64 layers, not 10,240 for their 125 pixels.
POINTWISE_CHUNK = 64
# Its forward and input-gradient products, W x[n] and Wᵀ δ[n], have few rows (C_out or C_in: 16-64 in
# ResNet-8) and Ho·Wo columns: packing the whole [K, Ho·Wo] right operand, read by only a few row panels,
# cost as much as the product. They run over column blocks of a multiple of this many pixels, as wide as
# keeps a block's product within the library's DIRECT_WORK (which then reads both operands in place):
# 16 x 1024 x 144 (ResNet-8's 16-channel layers, forward) went from 89 to 143 GFLOP/s on one AVX-512 core.
POINTWISE_COLUMNS = 64
# The images of a 1x1 convolution's (or a patch-planes convolution's) weight gradient, Σ_n δ[n] x[n]ᵀ,
# are summed by chunks of this many: each chunk's partial sum (images in order) is made by one
# thread, and the partials are added in chunk order, so the bits depend on the batch, never on the
# threads (forward and input gradient: each image by one thread, whichever, the same bits).
IMAGE_CHUNK = 8

# A train step applies each update right after the last kernel that reads its param or gradient
# (fusion.updates_when_ready) when that makes its arena at least EARLY_SAVING elements smaller at
# n = 1 and larger at no n: each gradient then lives from its kernel to its update, not to the end
# of the step (Adam's on char_gpt: 400 KB; mlp's two with Adam: 21 KB). Otherwise
# every update runs last, and train_step shares more of its backward kernels with value_and_grad
# (sharing.py compares runs of kernels): a few KB are not worth the longer model file.
# UPDATES_WHEN_READY = False: always last (to compare the two; no model needs it).
UPDATES_WHEN_READY = True
EARLY_SAVING = 4096


def smaller(a: Poly, b: Poly, by: int = 1) -> bool:
    """Whether arena a is at least `by` elements smaller than b at n = 1 and larger at no n (1, 64)."""
    return peval(a, 1) + by <= peval(b, 1) and peval(a, 64) <= peval(b, 64)


class Scheduler(Fusion):
    """The kernel records of one C function, built from the fusion decisions of its graph. The
    builders (elementwise, reduce, gemm, row_softmax, gather and the copies) are what the ops'
    `kernel` methods call. A train step's graph (autodiff/train.py: the backward graph, then the
    updates in the IR) comes with its optimizer's records (`updates`): the gradients are computed
    into the workspace, the update nodes get no kernel of their own, and the records run last."""

    def __init__(self, g: Graph, outputs: dict[str, Value], updates: OptimizerUpdates | None = None,
                 writes: dict[str, Value] | None = None, names: dict[Value, str] | None = None, suffix: str = ""):
        self.state_writes = dict(writes or {})     # C name of a state param -> its new value
        # a scan body's (backend/scan_loop.py): the C of its inputs, and the suffix of its buffers' names
        self.names, self.suffix = dict(names or {}), suffix
        super().__init__(g, outputs, keep=(tuple(pu.grad for pu in updates.params) if updates else ())
                         + tuple(v for v in self.state_writes.values() if v.node is not None))
        self.updates = updates

    # ---------------------------------------------------------------- names
    def ref(self, v: Value) -> str:
        """The C pointer holding v."""
        if v in self.names:
            return self.names[v]
        if v.node is None:
            return c_name(v.name)
        if v in self.alias:
            return self.ref(self.alias[v])
        if v in self.out_of:
            return self.out_of[v]
        return c_name(v.name) + self.suffix

    def static_expr(self, v: Value) -> str:
        """The C expression of a value fusion made static (constants, sizes and their arithmetic)."""
        n = v.node
        return n.op.static_c(self, n)

    def real(self, value: float) -> str:
        return c_real(value)

    def size_of(self, shape) -> str:
        return c_size_real(numel(shape))

    def apply(self, n: Node, operands: list[str]) -> str:
        return c_apply(n.op.c_code(self, n), operands)

    # ---------------------------------------------------------------- loop kernels
    def load(self, v: Value, iter_shape, loads: list, shape=None) -> str:
        """A read of v (broadcast as `shape`, default its own) at the current index of iter_shape."""
        loads.append(Load(self.ref(v), tuple(broadcast_strides(v.shape if shape is None else shape, iter_shape)),
                          (0,), v))
        return c_load(len(loads) - 1)

    def onehot_load(self, labels: Value, iter_shape, loads: list) -> str:
        """1 where the column index equals the row's label."""
        self.load(labels, iter_shape, loads, labels.shape + (1,))
        return c_onehot(len(loads) - 1)

    def expr(self, v: Value, iter_shape, loads: list) -> str:
        """C expression of v at the current index; loads become {L<k>} placeholders."""
        if v in self.static:
            return self.static_expr(v)
        if v in self.inlined:
            return v.node.op.inline_c(self, v.node, iter_shape, loads)
        return self.load(v, iter_shape, loads)

    def loop(self, iter_shape, target: str, target_strides, value: str, loads: list, comment: str, defs,
             accumulate: bool = False, target_offset: Poly = (0,), zero_size: Poly | None = None,
             combine: str | None = None) -> Loop:
        """One loop nest over iter_shape writing (or accumulating into) target."""
        st = Statement(target, tuple(target_strides), target_offset, value, tuple(loads), accumulate, combine)
        return Loop(comment, tuple(defs), tuple(ld.value for ld in loads), tuple(iter_shape), (st,), (comment,),
                    ((target, zero_size),) if zero_size else ())

    @staticmethod
    def merge_reductions(steps: list[Kernel]) -> list[Kernel]:
        """A sum that reads a value right after the loop producing it joins that loop (the bias
        gradient is summed in the same pass that writes the delta): one pass over memory less."""
        out: list[Kernel] = []
        producer: dict[Value, int] = {}
        for st in steps:
            # (not a max: its target is filled with -inf by the loop before it, after the producer)
            if (isinstance(st, Loop) and len(st.statements) == 1 and st.statements[0].accumulate
                    and st.statements[0].combine is None and len(st.uses) == 1 and st.uses[0] in producer):
                i = producer[st.uses[0]]
                host = out[i]
                if isinstance(host, Loop) and host.iter_shape == st.iter_shape \
                        and not host.statements[0].accumulate:
                    out[i] = host.joined(st)
                    continue
            for v in st.defs:
                producer[v] = len(out)
            out.append(st)
        return out

    @staticmethod
    def join_gathers(steps: list[Kernel]) -> list[Kernel]:
        """Gathers one after the other into the same array (GATHER_INTO_CONCAT's, SCATTER_SUM's)
        share one loop over the rows."""
        out: list[Kernel] = []
        for st in steps:
            joined = out[-1].join(st) if out and isinstance(out[-1], Gather) and isinstance(st, Gather) else None
            if joined is not None:
                out[-1] = joined
            else:
                out.append(st)
        return out

    # ---------------------------------------------------------------- the builders ops lower through
    def comment(self, n: Node) -> str:
        o = n.origin
        text = (o.text or n.output.name).replace("*/", "* /")
        if o.identity:
            return f"{n.output.name}: identity ({o.identity}), from {text}"
        return f"{text}" + (f"    [{o.where}]" if o.where else "")

    def elementwise(self, n: Node) -> list[Kernel]:
        """An elementwise op (its c_expr) over its output's shape, operands broadcast."""
        v, loads = n.output, []
        value = n.op.c_code(self, n).format(*[self.expr(x, v.shape, loads) for x in n.inputs])
        return [self.loop(v.shape, self.ref(v), contiguous_strides(v.shape), value, loads, self.comment(n), [v])]

    def reduce(self, n: Node, keep) -> list[Kernel]:
        """A sum of the input over the axes where `keep` (the output, broadcastable) is 1."""
        x, v, loads = n.inputs[0], n.output, []
        value = self.expr(x, x.shape, loads)
        return [self.loop(x.shape, self.ref(v), broadcast_strides(keep, x.shape), value, loads, self.comment(n), [v],
                          accumulate=True, zero_size=numel(v.shape))]

    def reduce_max(self, n: Node, keep) -> list[Kernel]:
        """The largest element of the input over the axes where `keep` (the output) is 1: the
        output filled with -inf, then each element compared in."""
        x, v, loads = n.inputs[0], n.output, []
        value = self.expr(x, x.shape, loads)
        comment = self.comment(n)
        fill = self.loop(v.shape, self.ref(v), contiguous_strides(v.shape), c_real(float("-inf")), [], comment, [v])
        return [fill, self.loop(x.shape, self.ref(v), broadcast_strides(keep, x.shape), value, loads, comment, [v],
                                accumulate=True, combine="({T} >= {V} ? {T} : {V})")]

    def flat_copy(self, n: Node) -> list[Kernel]:
        """The same elements in the same order (a reshape): one flat loop."""
        x, v = n.inputs[0], n.output
        # a static scalar (a constant such as the seed dJ/dJ = 1) has no buffer: use its value
        loads: list = []
        value = self.static_expr(x) if x in self.static else None
        if value is None:
            loads.append(Load(self.ref(x), tuple(contiguous_strides(v.shape)), (0,), x))
            value = c_load(0)
        return [self.loop(v.shape, self.ref(v), contiguous_strides(v.shape), value, loads, self.comment(n), [v])]

    def permuted_copy(self, n: Node, axes) -> list[Kernel]:
        """out[i0, i1, ...] = x[i_axes[0], ...]: x read with its strides permuted (written into the relu's
        buffer when the relu was applied before it: CONV_RELU). x may be a window of a buffer read in
        place (SLICE_THROUGH), and out a window of a sum's buffer (PLACE_SUM)."""
        x, v = n.inputs[0], self.writes.get(n, n.output)
        src, s, offset = self.through.get(x, (x, contiguous_strides(x.shape), (0,)))
        loads = [Load(self.ref(src), tuple(s[a] for a in axes), offset, src)]
        if n in self.placed:
            total, strides, at, zero = self.placed[n]
            comment = self.comment(n) + f"\n   written into its window of {total.name}"
            return [self.loop(v.shape, self.ref(total), strides, c_load(0), loads, comment, [total],
                              target_offset=at, zero_size=numel(total.shape) if zero else None)]
        return [self.loop(v.shape, self.ref(v), contiguous_strides(v.shape), c_load(0), loads, self.comment(n), [v])]

    def window_copy(self, n: Node, axis: int, start: int, step: int = 1) -> list[Kernel]:
        """x[..., start::step, ...] along `axis` (a slice): x read with that axis' stride times step."""
        x, v = n.inputs[0], n.output
        s = contiguous_strides(x.shape)
        strides = tuple(pmul(st, (step,)) if a == axis else st for a, st in enumerate(s))
        loads = [Load(self.ref(x), strides, pmul(s[axis], (start,)), x)]
        return [self.loop(v.shape, self.ref(v), contiguous_strides(v.shape), c_load(0), loads, self.comment(n), [v])]

    def window_place(self, n: Node, axis: int, start: int, step: int = 1) -> list[Kernel]:
        """The adjoint of window_copy: zeros, then x written at start::step along `axis` (or, a leaf
        of PLACE_SUM, written into its window of the sum, zeroed by the first leaf unless they cover it)."""
        x, v, zero = n.inputs[0], n.output, True
        if n in self.placed:
            v, _, _, zero = self.placed[n]
        s = contiguous_strides(v.shape)
        strides = tuple(pmul(st, (step,)) if a == axis else st for a, st in enumerate(s))
        loads = [Load(self.ref(x), tuple(contiguous_strides(x.shape)), (0,), x)]
        return [self.loop(x.shape, self.ref(v), strides, c_load(0), loads, self.comment(n), [v],
                          target_offset=pmul(s[axis], (start,)), zero_size=numel(v.shape) if zero else None)]

    def concat(self, n: Node, axis: int = -1) -> list[Kernel]:
        """Each operand into its range of `axis` of the output (but the gathers that write theirs
        themselves: GATHER_INTO_CONCAT, a concat along the last axis)."""
        v, steps, start = n.output, [], 0
        axis %= v.rank
        out_strides = contiguous_strides(v.shape)
        for part in n.inputs:
            if part.node in self.into_concat:
                start += part.shape[axis]
                continue
            loads = [Load(self.ref(part), tuple(contiguous_strides(part.shape)), (0,), part)]
            steps.append(self.loop(part.shape, self.ref(v), out_strides, c_load(0), loads, self.comment(n), [v],
                                   target_offset=pmul(out_strides[axis], (start,))))
            start += part.shape[axis]
        return steps

    def gather(self, n: Node, kind: str, ids: Value, width, src: Value | None = None, rows=None) -> list[Kernel]:
        """Rows picked, scattered or set by int32 ids (Gather: embedding, embedding_grad, onehot);
        written into a concat's columns, read from a slice's, or summed with the other scatters of
        a gradient, as fusion decided."""
        v, uses, extra = n.output, tuple(n.inputs), {}
        if n in self.into_concat:
            v, start = self.into_concat[n]
            extra.update(out_stride=c_poly(dim_poly(v.shape[-1])), out_offset=c_poly((start,)))
        if n in self.from_slice:
            src, start = self.from_slice[n]
            uses = (src, ids)
            extra.update(src_stride=c_poly(dim_poly(src.shape[-1])), src_offset=c_poly((start,)))
        if n in self.scatter_sum:
            v, first = self.scatter_sum[n]
            extra.update(zero=first)
        k = Gather(self.comment(n), (v,), uses, kind, self.ref(v), self.ref(ids), c_poly(numel(ids.shape)),
                   c_poly(dim_poly(width)), self.ref(src) if src is not None else None,
                   c_poly(dim_poly(rows)) if rows is not None else None, **extra)
        return [k]

    def in_place(self, v: Value) -> tuple[Value, int]:
        """(the buffer a GEMM reads for operand v, 1 when it reads it transposed): a transpose or a
        permute of the last two axes that fusion folded is read in place (op(A) = Aᵀ)."""
        if v in self.folded:
            return v.node.inputs[0], int(v.rank >= 2)
        return v, 0

    def gemm(self, n: Node, out: str | None = None) -> list[Kernel]:
        """A product: of rank-1 or rank-2 operands; of rows of a [.., K] (every leading axis) times
        a matrix or a vector, as one product of numel(a.shape[:-1]) rows; or batched (b of rank
        3-4), the same product in loops over the batch, each operand read in place by its
        strides (0 along an axis it is broadcast over). A folded transpose is read in place."""
        (a, ta), (b, tb) = self.in_place(n.inputs[0]), self.in_place(n.inputs[1])
        la, lb = n.inputs                       # the logical operands: op(a), op(b)
        poly = lambda d: d if isinstance(d, tuple) else dim_poly(d)  # noqa: E731
        size = lambda d: c_poly(poly(d))  # noqa: E731
        out = self.ref(n.output) if out is None else out
        if lb.rank >= 3:
            return [self.batched_gemm(n, a, ta, b, tb, out)]
        A = (numel(la.shape[:-1]), la.shape[-1]) if la.rank >= 3 else la.shape if la.rank == 2 else (1, la.shape[0])
        B = lb.shape if lb.rank == 2 else (lb.shape[0], 1)
        M, K = A
        N = B[1]
        lda = size(a.shape[-1]) if a.rank >= 2 else size(la.shape[-1])
        ldb = size(b.shape[-1]) if b.rank == 2 else "1"
        return [Gemm(self.comment(n), (n.output,), (a, b), out, self.ref(a), self.ref(b), ta, tb,
                     size(M), size(N), size(K), lda, ldb, size(N), dims=(poly(M), poly(N), poly(K)))]

    def batched_gemm(self, n: Node, a: Value, ta: int, b: Value, tb: int, out: str) -> Gemm:
        """One GEMM per batch element of a rank 3-4 product, the batch axes merged into at most
        two loops where every operand is contiguous across them."""
        la, lb, v = n.inputs[0], n.inputs[1], n.output
        batch = v.shape[:-2]
        M, K, N = la.shape[-2], la.shape[-1], lb.shape[-1]

        def strides(x: Value) -> list:       # per batch axis, 0 where x is broadcast
            return broadcast_strides(x.shape, batch + tuple(x.shape[-2:]))[:len(batch)]
        axes = [(dim_poly(d), s) for d, s in zip(batch, zip(strides(a), strides(b),
                                                              contiguous_strides(v.shape)[:len(batch)]))]
        axes = [ax for ax in axes if ax[0] != (1,)]
        loops: list = []
        for size, st in axes:
            if loops and all(p == pmul(s, size) for p, s in zip(loops[-1][1], st)):
                loops[-1] = (pmul(loops[-1][0], size), st)
            else:
                loops.append((size, st))
        var = [f"gc_b{i}" for i in range(len(loops))]
        at = lambda ptr, k: c_at(ptr, c_index((0,), [(var[i], loops[i][1][k]) for i in range(len(loops))]))  # noqa: E731
        size = lambda d: c_poly(dim_poly(d))  # noqa: E731
        return Gemm(self.comment(n), (v,), (a, b), at(out, 2), at(self.ref(a), 0), at(self.ref(b), 1), ta, tb,
                    size(M), size(N), size(K), size(a.shape[-1]), size(b.shape[-1]), size(N),
                    dims=(dim_poly(M), dim_poly(N), dim_poly(K)),
                    batch=tuple((var[i], c_poly(loops[i][0])) for i in range(len(loops))))

    @staticmethod
    def window(image, out, attrs) -> dict:
        """The Window fields (backend/kernels.py) of an image shape, an output shape and a node's
        kernel, stride, padding and dilation."""
        size = lambda d: c_poly(dim_poly(d))  # noqa: E731
        return dict(batch=size(image[0]), C=size(image[1]), H=size(image[2]), W=size(image[3]),
                    kh=str(attrs["kernel"][0]), kw=str(attrs["kernel"][1]), Ho=size(out[0]), Wo=size(out[1]),
                    sh=str(attrs["stride"][0]), sw=str(attrs["stride"][1]), pt=str(attrs["padding"][0]),
                    pl=str(attrs["padding"][2]), dh=str(attrs["dilation"][0]), dw=str(attrs["dilation"][1]))

    def patches(self, n: Node, kind: str) -> list[Kernel]:
        """A convolution's patch matrix (im2col) or its adjoint (col2im): one Patches record."""
        x, v = n.inputs[0], n.output
        a = n.attrs
        image, cols = (x, v) if kind == "im2col" else (v, x)
        pad_value = c_real(a["pad_value"]) if kind == "im2col" else "0"
        pixels = cols.shape[1:3] if a["layout"] == "nhwc" else cols.shape[2:4]
        return [Patches(self.comment(n), (v,), (x,), kind=kind, out=self.ref(v), x=self.ref(x), pad_value=pad_value,
                        layout=a["layout"], **self.window(image.shape, pixels, a))]

    def depthwise(self, n: Node) -> list[Kernel]:
        """A depthwise convolution's direct loop or one of its adjoints (ops/depthwise.py): one
        Depthwise record, with the relu that follows when fusion moved it in (CONV_RELU)."""
        a, b = n.inputs[:2]
        bias = n.inputs[2] if len(n.inputs) > 2 else None
        at, v = n.attrs, self.writes.get(n, n.output)
        mode = at["mode"]
        image = a.shape if mode != "input_grad" else n.output.shape
        out = n.output.shape if mode == "forward" else a.shape if mode == "input_grad" else b.shape
        comment = self.comment(n) + (f"\n   then relu, written to {v.name}" if n in self.conv_relu else "")
        return [Depthwise(comment, (v,), tuple(n.inputs), kind=mode, out=self.ref(v), x=self.ref(a), w=self.ref(b),
                          bias=self.ref(bias) if bias is not None else None, relu=n in self.conv_relu,
                          **self.window(image, out[2:], at))]

    def pointwise(self, n: Node) -> list[Kernel]:
        """A 1x1 convolution or one of its adjoints (ops/pointwise.py): one Pointwise record, a GEMM
        per image, with the relu that follows when fusion moved it in (CONV_RELU)."""
        a, b = n.inputs[:2]
        bias = n.inputs[2] if len(n.inputs) > 2 else None
        mode, v = n.attrs["mode"], self.writes.get(n, n.output)
        x, d = {"forward": (a, n.output), "input_grad": (n.output, a), "weight_grad": (a, b)}[mode]   # image, δ
        C_in, C_out, HW = x.shape[1], d.shape[1], x.shape[2] * x.shape[3]
        ta, tb, M, N, K = {"forward": (0, 0, C_out, HW, C_in), "input_grad": (1, 0, C_in, HW, C_out),
                           "weight_grad": (0, 1, C_out, C_in, min(HW, POINTWISE_CHUNK))}[mode]
        columns = DIRECT_WORK // (M * K) // POINTWISE_COLUMNS * POINTWISE_COLUMNS if mode != "weight_grad" else 0
        if columns and columns < HW:            # blocks of equal width (a multiple of POINTWISE_COLUMNS)
            blocks = -(-HW // columns)
            N = -(-HW // blocks) // -POINTWISE_COLUMNS * -POINTWISE_COLUMNS
        size = lambda d: c_poly(dim_poly(d))  # noqa: E731
        r = self.conv_residual.get(n)
        comment = self.comment(n) + (f"\n   {r.name} (and the bias) filled in first, then relu as each image's product "
                                     f"is written (the sum and the relu of the spec line)" if r is not None else
                                     "\n   then relu as each image's product is written (the relu of the spec line)"
                                     if n in self.conv_relu else "")
        image = lambda ptr, C: f"{ptr} + gc_n * ({size(C)} * {size(HW)})"  # noqa: E731
        # image n of each of the GEMM's operands: its x (δ for input_grad), its w (δ for weight_grad), its out
        at = {"x": image(self.ref(a), a.shape[1]), "w": image(self.ref(b), b.shape[1]) if mode == "weight_grad" else None,
              "out": image(self.ref(v), n.output.shape[1]) if mode != "weight_grad" else None}
        uses, before, after, scratch = list(n.inputs), [], None, []
        residual = self.conv_residual.get(n)             # CONV_ADD_RELU: out[n] starts as r[n] (+ b)
        if residual is not None:
            uses.append(residual)
        for role, operand in (("x", a), ("w", b)):
            if operand in self.image_planes:        # IMAGE_PLANES: made here, image by image
                made = self.image_planes[operand]
                area = f"{self.ref(operand)}__{n.output.name}"
                local = f"gc_s{len(scratch)}"      # this thread's planes (thread 0's: the area)
                scratch.append((area, numel(operand.shape[1:])))
                before.append(self.image_patches(made, "im2col", operand, local, comment))
                at[role] = local
                uses[uses.index(operand)] = made.inputs[0]
        if n in self.image_col2im:                  # IMAGE_COL2IM: image n's dP summed back into dJ/dx at once
            area = f"{self.ref(n.output)}__image"
            local = f"gc_s{len(scratch)}"
            scratch.append((area, numel(n.output.shape[1:])))
            after = self.image_patches(self.image_col2im[n], "col2im", n.output, local, comment)
            at["out"] = local
        # each thread's own copies of the scratch, at these offsets of its area; weight_grad: then its
        # chunk's partial sum (IMAGE_CHUNK images), thread 0's outside the arena (GC_CHUNK0, model.c)
        own = scratch + ([("GC_CHUNK0", numel(n.output.shape))] if mode == "weight_grad" else [])
        if not all(Poly.of(s).is_const for _, s in own):
            raise AssertionError(f"pointwise_conv {n.output.name}: per-image sizes must be constant")
        offsets, at_off = [], 0
        for _, s in own:
            offsets.append(at_off)
            at_off += -(-Poly.of(s).const // 16) * 16
        return [Pointwise(comment, (v,), tuple(dict.fromkeys(uses)), mode, self.ref(v), self.ref(a), self.ref(b),
                          self.ref(bias) if bias is not None else None, n in self.conv_relu, size(x.shape[0]),
                          size(C_in), size(C_out), size(HW), ta, tb, size(M), size(N), size(K),
                          str(K) if mode == "weight_grad" and K < HW else None,
                          str(N) if mode != "weight_grad" and N < HW else None,
                          at["x"], at["w"], at["out"], tuple(before), after, tuple(scratch),
                          dims=tuple(dim_poly(s) for s in (M, N, K)),
                          locals=tuple((f"gc_s{i}", area, off) for i, ((area, _), off) in enumerate(zip(own, offsets))),
                          thread_scratch=at_off, images=IMAGE_CHUNK, batch_dim=dim_poly(x.shape[0]),
                          residual=image(self.ref(residual), C_out) if residual is not None else None,
                          elems=str(Poly.of(numel(n.output.shape)).const) if mode == "weight_grad" else "")]

    def image_patches(self, n: Node, kind: str, planes: Value, area: str, comment: str) -> Patches:
        """The Patches record (layout nchw) of image gc_n of an im2col or col2im node fused into a
        pointwise_conv kernel (IMAGE_PLANES, IMAGE_COL2IM): between its image and `area`, one image's planes."""
        x, v = n.inputs[0], n.output
        img = v if kind == "col2im" else x
        whole = self.ref(img) + f" + gc_n * ({c_poly(numel(img.shape[1:]))})"
        src, dst = (whole, area) if kind == "im2col" else (area, whole)
        pad_value = c_real(n.attrs["pad_value"]) if kind == "im2col" else "0"
        window = self.window((1,) + tuple(img.shape[1:]), planes.shape[2:4], n.attrs)
        what = "image gc_n's patch planes, made" if kind == "im2col" else "image gc_n's patch planes, summed back"
        return Patches(f"{what} here ({n.output.name})", (), (), kind=kind, out=dst, x=src, pad_value=pad_value,
                       layout="nchw", **window)

    def patch_gemm(self, n: Node) -> list[Kernel]:
        """patch_matmul: one GEMM per group over column blocks of its operands (ops/conv.py), the
        rows of a [..., K] taken as one matrix; a bias is the epilogue of the nt form."""
        a, b = n.inputs[:2]
        bias = n.inputs[2] if len(n.inputs) > 2 else None
        mode, G, v = n.attrs["mode"], n.attrs["groups"], n.output
        poly = lambda d: dim_poly(d) if not isinstance(d, tuple) else d  # noqa: E731
        size = lambda d: c_poly(poly(d))  # noqa: E731
        at = lambda ptr, off: ptr if off == 0 else f"{ptr} + {off}"  # noqa: E731
        out, A, B = self.ref(v), self.ref(a), self.ref(b)
        steps = []
        for g in range(G):
            if mode == "tn":
                Ma, Nb = a.shape[-1] // G, b.shape[-1] // G
                shape = (Ma, Nb, numel(a.shape[:-1]))
                dims = dict(ta=1, tb=0, M=size(Ma), N=size(Nb), K=size(numel(a.shape[:-1])), lda=size(a.shape[-1]),
                            ldb=size(b.shape[-1]), ldc=size(Nb))
                ptrs = (at(out, g * Ma * Nb), at(A, g * Ma), at(B, g * Nb))
            else:
                Ka = a.shape[-1] // G
                cols = numel(b.shape[1:])[0]        # a conv weight [C_out, C_in/G, kh, kw] read as a matrix
                Nb = b.shape[0] // G if mode == "nt" else cols
                shape = (numel(a.shape[:-1]), Nb, Ka)
                dims = dict(ta=0, tb=1 if mode == "nt" else 0, M=size(numel(a.shape[:-1])), N=size(Nb), K=size(Ka),
                            lda=size(a.shape[-1]), ldb=size(cols), ldc=size(G * Nb))
                ptrs = (at(out, g * Nb), at(A, g * Ka), at(B, g * Nb * Ka))
            epilogue = Epilogue(bias=at(self.ref(bias), g * Nb) if bias is not None else None, relu=n in self.conv_relu)
            comment = self.comment(n) + (f"\n   group {g + 1} of {G}" if G > 1 else "") + \
                ("\n   + bias, then relu as the product is written (the relu of the spec line)" if n in self.conv_relu else "")
            # the sizes as polynomials in n too: the workspace's packing share is sized from them
            steps.append(Gemm(comment, (v,), tuple(n.inputs), *ptrs, **dims, epilogue=epilogue,
                              dims=tuple(poly(d) for d in shape)))
        return steps

    def row_softmax(self, n: Node) -> list[Kernel]:
        """One pass over the rows of the logits; softmax and cross_entropy of the same logits (and
        the gradient of identity (7)) share it, emitted where the first of the two stands."""
        x, name = n.inputs[0], n.op.name
        axis = n.attrs.get("axis", -1) % x.rank
        if axis != x.rank - 1:          # softmax along another axis: each row read with a stride
            inner = numel(x.shape[axis + 1:])
            return [RowSoftmax(self.comment(n), (n.output,), (x,), name, self.ref(n.output), self.ref(x),
                               rows=c_poly(numel(x.shape[:axis])), cols=c_poly(dim_poly(x.shape[axis])),
                               stride=c_poly(inner))]
        common = dict(rows=c_poly(numel(x.shape[:-1])), cols=c_poly(dim_poly(x.shape[-1])), x=self.ref(x),
                      parallel=c_poly(numel(x.shape)) if worth_parallel(numel(x.shape)) else None)
        partner = self.partner.get(n)
        if partner is None:
            labels = targets = None
            if len(n.inputs) > 1:
                y = n.inputs[1]
                labels, targets = (self.ref(y), None) if y.dtype != FLOAT else (None, self.ref(y))
            return [RowSoftmax(self.comment(n), (n.output,), tuple(n.inputs), name, self.ref(n.output),
                               labels=labels, targets=targets, **common)]
        if self.g.nodes.index(partner) < self.g.nodes.index(n):
            return []   # emitted with its partner
        ce, sm = (n, partner) if len(n.inputs) > 1 else (partner, n)
        y = ce.inputs[1]
        defs, uses = [ce.output], [x, y]
        comment = self.comment(ce)
        probs = grad = scale = None
        if sm.output not in self.absorbed:
            probs, comment = self.ref(sm.output), comment + f"\n   and {self.comment(sm)}"
            defs.append(sm.output)
        if ce in self.xent_grad:
            mul, s = self.xent_grad[ce]
            grad, comment = self.ref(mul.output), comment + f"\n   and {self.comment(mul)}"
            scale = self.static_expr(s) if s in self.static else c_scalar(self.ref(s))
            defs.append(mul.output)
            if s not in self.static:
                uses.append(s)
        return [RowSoftmax(comment, tuple(defs), tuple(uses), "softmax_xent", self.ref(ce.output),
                           labels=self.ref(y) if y.dtype != FLOAT else None,
                           targets=self.ref(y) if y.dtype == FLOAT else None,
                           probs=probs, grad=grad, scale=scale, **common)]

    def attention(self, n: Node, kind: str, scale: float) -> list[Kernel]:
        """Scaled dot-product attention (ops/attention.py): the forward kernel, writing O and the
        row log-sum-exp L of the same q and k when the backward pass reads it (ATTENTION_PARTS), or
        L alone (kind "lse"); or the backward kernel writing the dQ, dK and dV of one attention that
        are needed (kind "backward"). scale: the scores' factor."""
        size = lambda d: c_poly(dim_poly(d))  # noqa: E731
        q, k = n.inputs[:2]
        heads = c_poly(numel(q.shape[:-2]))
        D, Dv = int(q.shape[-1]), int(n.inputs[2].shape[-1]) if kind != "lse" else 1
        br, bc = attention_blocks(q.shape[-2], k.shape[-2])
        common = dict(q=self.ref(q), k=self.ref(k), heads=heads, Tq=size(q.shape[-2]), Tk=size(k.shape[-2]),
                      D=size(q.shape[-1]), scale=c_real(scale), causal=bool(n.attrs["is_causal"]), br=br, bc=bc)
        if kind == "backward":
            parts = self.attention_grads.get(n, (n,))
            v, o, lse, d = n.inputs[2:]
            outs = {m.attrs["wrt"]: m.output for m in parts}
            comment = "\n   ".join(self.comment(m) for m in parts)
            return [Attention(comment, tuple(outs.values()), tuple(n.inputs), "backward", v=self.ref(v), o=self.ref(o),
                              lse=self.ref(lse), d_o=self.ref(d), Dv=size(v.shape[-1]),
                              **attention_scratch(br, bc, D, Dv, "q" in outs or "k" in outs),
                              **{f"d_{w}": self.ref(x) for w, x in outs.items()}, **common)]
        if kind == "lse":                       # L alone (no forward attention of these q and k here)
            return [Attention(self.comment(n), (n.output,), (q, k), "forward", v="NULL", lse=self.ref(n.output),
                              Dv="1", **attention_scratch(br, bc, D, 0, False), **common)]
        v = n.inputs[2]
        partner = self.attention_lse.get(n)
        defs = (n.output,) + ((partner.output,) if partner is not None else ())
        comment = self.comment(n) + (f"\n   and {self.comment(partner)}, saved for the backward pass"
                                     if partner is not None else "")
        return [Attention(comment, defs, tuple(n.inputs), "forward", v=self.ref(v), out=self.ref(n.output),
                          lse=self.ref(partner.output) if partner is not None else None, Dv=size(v.shape[-1]),
                          **attention_scratch(br, bc, D, Dv, False), **common)]

    def layer_norm(self, n: Node) -> list[Kernel]:
        """layer_norm (ops/norm.py) as one pass over the rows: the forward kernel, or the backward
        one writing the gradients of one layer norm that are needed (NORM_GRADS)."""
        x, k = n.inputs[0], len(n.attrs["normalized_shape"])
        common = dict(x=self.ref(x), rows=c_poly(numel(x.shape[:-k])), cols=c_poly(numel(x.shape[-k:])),
                      eps=c_real(float(n.attrs["eps"])),
                      parallel=c_poly(numel(x.shape)) if worth_parallel(numel(x.shape)) else None)
        if n.op.name == "layer_norm":
            affine = dict(zip(("weight", "bias"), (self.ref(t) for t in n.inputs[1:])))
            return [RowNorm(self.comment(n), (n.output,), tuple(n.inputs), "forward", out=self.ref(n.output),
                            **affine, **common)]
        parts = self.norm_grads.get(n, (n,))
        outs = {m.attrs["wrt"]: m.output for m in parts}
        return [RowNorm("\n   ".join(self.comment(m) for m in parts), tuple(outs.values()), tuple(n.inputs),
                        "backward", d=self.ref(n.inputs[1]),
                        weight=self.ref(n.inputs[2]) if len(n.inputs) > 2 else None,
                        **{"d_x" if w == "input" else "d_weight": self.ref(v) for w, v in outs.items()}, **common)]

    def scan(self, n: Node) -> list[Kernel]:
        """The results of one scan (ops/scan.py): one C loop over time (backend/scan_loop.py)."""
        return scan_loop(self, n)

    # ---------------------------------------------------------------- per node
    def node_steps(self, n: Node) -> list[Kernel]:
        v = n.output
        if n in self.partner:
            return self.row_softmax(n)
        if n in self.emit_at:
            final = self.emit_at[n]
            return [self.epilogue_step(final, self.epilogue[final])]
        if n in self.into_concat or n in self.from_slice or n in self.scatter_sum or n in self.placed:
            return n.op.kernel(self, n)
        if v in self.static or v in self.alias or v in self.inlined or v in self.folded or v in self.absorbed or n in self.epilogue \
                or n in self.moved or v in self.image_planes:
            return []
        return n.op.kernel(self, n)

    def epilogue_step(self, final: Node, ep: Fused) -> Gemm:
        v = final.output
        gemm, = self.gemm(ep.matmul, self.ref(v))
        comment = gemm.comment
        if ep.bias is not None or ep.relu:
            parts = (["+ bias"] if ep.bias is not None else []) + (["relu"] if ep.relu else [])
            comment += "\n   " + ", then ".join(parts) + f", written to {v.name}"
        if ep.mask is not None:
            comment += f"\n   {self.comment(final)}:\n       ∘ sgn({ep.mask.name}) as the product is written"
        if ep.colsum is not None:
            comment += f"\n   {self.comment(ep.colsum)}:\n       summed over the rows of {v.name} as they are written"
        epilogue = Epilogue(bias=self.ref(ep.bias) if ep.bias is not None else None, relu=ep.relu,
                            mask=self.ref(ep.mask) if ep.mask is not None else None,
                            ldm=gemm.N if ep.mask is not None else None,
                            colsum=self.ref(ep.colsum.output) if ep.colsum is not None else None)
        defs = (v,) + ((ep.colsum.output,) if ep.colsum is not None else ())
        uses = gemm.uses + tuple(x for x in (ep.bias, ep.mask) if x is not None)
        return replace(gemm, comment=comment, defs=defs, uses=uses, epilogue=epilogue)

    # ---------------------------------------------------------------- whole function
    def run(self) -> Schedule:
        steps: list[Kernel] = []
        for n in self.g.nodes:
            steps.extend(self.node_steps(n))
        if self.alias:      # a kernel reading a reshape reads its input's buffer (RESHAPE_ALIAS)
            steps = [replace(st, uses=tuple(dict.fromkeys(self.alias.get(v, v) for v in st.uses))) for st in steps]
        # outputs that are not computed into their buffer: a second name, or an input/param
        for cname, v in self.outputs.items():
            if self.out_of.get(v) != cname or v.node is None or v in self.static:
                loads: list = []
                if v in self.static:
                    value = self.expr(v, v.shape, loads)
                else:
                    loads = [Load(self.ref(v), tuple(contiguous_strides(v.shape)), (0,), v)]
                    value = c_load(0)
                steps.append(self.loop(v.shape, cname, contiguous_strides(v.shape), value, loads,
                                       f"output {cname} = {v.name}", []))
        # a kept value (a gradient the updates read) that fusion made a static scalar gets its buffer
        for v in self.keep:
            if v in self.static:
                steps.append(self.loop(v.shape, self.ref(v), contiguous_strides(v.shape), self.static_expr(v), [],
                                       f"{v.name} = {self.static_expr(v)}", [v]))
        steps = self.join_gathers(self.merge_reductions(steps))
        copies: dict = {}
        if not self.suffix and not self.names:      # (a scan body's buffers are planned by its loop)
            again, copies = recompute_late_reads(steps, lambda v: numel(v.shape),
                                                 lambda v: v.node is not None and v not in self.out_of)
            # kept only where the peak of live buffers gets lower (a copy is one more pass over memory)
            if copies and all(live_peak(self.buffers_of(again, copies), n) < live_peak(self.buffers_of(steps), n)
                              for n in (1, 64)):
                steps = again
            else:
                copies = {}
        # the model state's new values (a train step's running statistics), copied over the old
        # ones last, when no kernel reads them any more
        for cname, v in self.state_writes.items():
            if v.node is not None:
                loads = [Load(self.ref(v), tuple(contiguous_strides(v.shape)), (0,), v)]
                steps.append(self.loop(v.shape, cname, contiguous_strides(v.shape), c_load(0), loads,
                                       f"{cname} = {v.name}", []))
        if self.updates is not None:
            steps, fused = sgd_in_gemm(steps, self.updates)
            steps = [self.unstored(st) for st in steps]
            # each record reads its gradient where this schedule put it: its buffer, or the output
            # argument it was computed into when the gradient is an output too
            norm = self.updates.norm
            norm = [replace(norm, grads=tuple(self.ref(pu.grad) for pu in self.updates.params))] if norm else []
            records = [replace(pu.record, grad=self.ref(pu.grad)) for pu in self.updates.params if pu.param not in fused]
            late = steps + list(self.updates.first) + norm + records
            planned = self.plan_steps(late, copies)
            if not norm and records and UPDATES_WHEN_READY:
                early = updates_when_ready(steps, list(self.updates.first), records)
                other = self.plan_steps(early, copies)
                if smaller(other[1], planned[1], EARLY_SAVING):
                    return Schedule(early, *other, self._label_checks())
            return Schedule(late, *planned, self._label_checks())
        return Schedule(steps, *self.plan_steps(steps, copies), self._label_checks())

    def unstored(self, st: Kernel) -> Kernel:
        """A GEMM whose epilogue only updates a param (SGD fused by sgd_in_gemm) and whose result is
        no output: it writes no C (gc_gemm_epilogue's update with C = NULL), so the gradient gets
        no buffer at all (the 784-500-10 network's d_W1 would take 1.5 MB)."""
        if not isinstance(st, Gemm) or st.epilogue.update is None or not st.defs or st.defs[0] in self.out_of:
            return st
        ep = st.epilogue
        if ep.bias is not None or ep.relu or ep.mask is not None or ep.colsum is not None:
            return st
        return replace(st, out="NULL", defs=())

    def plan_steps(self, steps: list[Kernel], copies: dict | None = None):
        """The workspace buffers by C name, planned, and the arena."""
        buffers = {b.name: b for b in self.buffers_of(steps, copies)}
        arena = plan(list(buffers.values()))
        return buffers, arena

    def buffers_of(self, steps: list[Kernel], copies: dict | None = None) -> list[Buffer]:
        """The workspace buffers of steps, with their lifetimes (a value recomputed by
        memory.recompute_late_reads holds nothing between its last read before the copy and the
        copy: a gap other buffers may use)."""
        first: dict[Value, int] = {}
        last: dict[Value, int] = {}
        gaps: dict[Value, list] = {}
        for i, st in enumerate(steps):
            v = (copies or {}).get(id(st))
            if v is not None:
                before = max(j for j in range(i) if v in steps[j].uses or v in steps[j].defs)
                if before + 1 <= i - 1:
                    gaps.setdefault(v, []).append((before + 1, i - 1))
            for v in st.defs:
                first.setdefault(v, i)
                last[v] = max(last.get(v, i), i)
            for v in st.uses:
                last[v] = i
        buffers = {}
        for v, f in first.items():
            if v.node is None or v in self.out_of:
                continue
            buffers[self.ref(v)] = Buffer(self.ref(v), numel(v.shape), f, last[v], shape=tuple(v.shape),
                                          gaps=tuple(gaps.get(v, ())))
        for i, st in enumerate(steps):      # a scan's loop: its body's buffers, carries and slices
            for name, size in getattr(st, "scratch", ()):
                buffers[name] = Buffer(name, size, i, i)
        return list(buffers.values())

    def _label_checks(self):
        """Every int input with its smallest bound over the ops that index with it (`index_bounds`)."""
        bounds: dict[Value, int] = {}
        for n in self.g.nodes:
            for y, bound in n.op.index_bounds(n):
                bounds[y] = min(bound, bounds.get(y, bound))
        return [(self.ref(y), c_poly(numel(y.shape)), str(b)) for y, b in bounds.items()]


def schedule(g: Graph, outputs: dict[str, Value], updates: OptimizerUpdates | None = None,
             writes: dict[str, Value] | None = None) -> Schedule:
    return Scheduler(g, outputs, updates, writes).run()


__all__ = ["schedule", "Schedule", "Scheduler"]
