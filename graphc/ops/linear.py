"""Products: matmul, transpose, and the notes' exercises dot and norm2.

matmul cites identities (1)/(2) for the operand the gradient passes through
and (5)/(6) for the weight; every gradient comes back in its operand's shape.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.core.ir import TensorType
from graphc.core.notation import MATMUL, MUL, Printed, wrap
from graphc.core.text import ATOM, PRODUCT, operand_text, spec_form
from graphc.core.opdef import OpDef, broadcast_shapes, register, require_float, unbroadcast


@register
class Matmul(OpDef):
    """z = a @ b with NumPy's rules: 1-D and 2-D operands, and operands of rank 3-4 whose leading
    (batch) axes broadcast, each batch element a matrix product. [B, T, C] @ [C, C'] is one
    product of B·T rows; [B, H, T, D] @ [B, H, D, T] one per (b, h).

    VJP: row form z = x W: dJ/dx = δ Wᵀ, identity (2); dJ/dW = xᵀ δ, identity (6).
    Column form z = W x: dJ/dW = δ xᵀ, identity (5); dJ/dx = Wᵀ δ, identity (1).
    Batched, the same per batch element (Wᵀ: the last two axes swapped), then summed over the
    batch axes an operand was broadcast along (identity (3)); a matrix W shared by the rows of a
    [.., K] x gets dJ/dW = Σ_rows xᵀ δ, one product over all the rows."""

    name = "matmul"
    arity = 2
    infix = ("@", PRODUCT)
    identity = "1,2,5,6"

    def shape(self, a, b):
        require_float(a, "left operand")
        require_float(b, "right operand")
        if not (1 <= a.rank <= 4 and 1 <= b.rank <= 4):
            raise ShapeError(f"supports operands of rank 1 to 4, got ranks {a.rank} and {b.rank}")
        if a.rank == 1 and b.rank > 2:
            raise ShapeError(f"a vector times a rank-{b.rank} operand is not supported",
                             hint="reshape the vector to a matrix [1, K]")
        k_a = a.shape[-1]
        k_b = b.shape[0] if b.rank == 1 else b.shape[-2]
        if k_a != k_b:
            hint = None
            if b.rank >= 2 and b.shape[-1] == k_a:
                hint = "the right operand transposed would fit"
            elif a.rank >= 2 and a.shape[-2] == k_b:
                hint = "the left operand transposed would fit"
            raise ShapeError(f"inner dims {k_a} and {k_b} differ", hint=hint)
        if b.rank == 1:
            return TensorType(a.shape[:-1])
        if b.rank == 2:                 # every leading axis of a is rows: one product
            return TensorType(a.shape[:-1] + b.shape[1:])
        try:
            batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ShapeError:
            raise ShapeError(f"batch axes {tuple(a.shape[:-2])} and {tuple(b.shape[:-2])} do not broadcast",
                             hint="the axes before the last two must be equal or 1") from None
        return TensorType(batch + (a.shape[-2], b.shape[-1]))

    def error_hint(self, inputs, error):
        if error.hint is None or len(inputs) != 2 or "transposed" not in error.hint:
            return error.hint
        a, b = inputs
        if a.rank > 2 or b.rank > 2:
            return error.hint + " (permute its last two axes)"
        g = a.graph
        if error.hint.startswith("the right"):
            fixed = transposed_text(b)
            fix = f"{operand_text(a, self, 0)} {self.infix[0]} {fixed}"
            shape = tuple(reversed(b.shape))
        else:
            fixed = transposed_text(a)
            fix = f"{fixed} {self.infix[0]} {operand_text(b, self, 1)}"
            shape = tuple(reversed(a.shape))
        return f"{fixed} is {g.format_shape(shape)}; did you mean {fix}?"

    def reference(self, a, b):
        return a @ b

    def kernel(self, k, node):
        return k.gemm(node)

    def vjp(self, b, node, d):
        x, w = node.inputs
        if x.rank > 2 or w.rank > 2:
            return self._batched_vjp(b, node, d)
        out = []
        # gradient of the left operand: d @ wᵀ (or an outer product when w is a vector)
        column = x.rank == 2 and w.rank == 1          # z = W x, the notes' column form
        with b.because(node, "5" if column else "2"):
            if w.rank == 2:
                out.append(b.matmul(d, b.transpose(w)))
            else:
                out.append(b.outer(d, w) if x.rank == 2 else b.mul(d, w))
        # gradient of the right operand: xᵀ @ d, the weight's shape
        with b.because(node, "1" if column else "6"):
            if x.rank == 2:
                out.append(b.matmul(b.transpose(x), d))
            elif w.rank == 2:
                out.append(b.outer(x, d))
            else:
                out.append(b.mul(d, x))
        return out

    def _batched_vjp(self, b, node, d):
        """x of rank 3-4 times a matrix or a vector w (the rows of x, one product), or two batched
        operands (a product per batch element, then sum_to over the broadcast batch axes)."""
        x, w = node.inputs
        if w.rank <= 2:
            col = w.rank == 1
            d2 = b.apply("reshape", d, shape=d.shape + (1,)) if col else d
            w2 = b.apply("reshape", w, shape=w.shape + (1,)) if col else w
            with b.because(node, "2"):
                dx = b.matmul(d2, b.transpose(w2))                           # δ Wᵀ, rows of x
            with b.because(node, "6"):
                dw = b.apply("patch_matmul", x, d2, mode="tn")              # Σ_rows xᵀ δ
                if col:
                    dw = b.apply("reshape", dw, shape=w.shape)
            return [dx, dw]
        with b.because(node, "2"):
            dx = unbroadcast(b, b.matmul(d, b.swap(w)), x.shape)
        with b.because(node, "6"):
            dw = unbroadcast(b, b.matmul(b.swap(x), d), w.shape)
        return [dx, dw]

    def notation(self, p, node, a, b):
        return p.product(a, b)

    def skeleton(self, p, node, top):
        a, b = node.inputs
        return p.skeleton(a, top) + p.skeleton(b, top)


def swaps_last_two(axes) -> bool:
    """Whether a permute's axes swap the last two and keep the rest: a batch of transposes."""
    r = len(axes)
    return r >= 2 and tuple(a % r for a in axes) == tuple(range(r - 2)) + (r - 1, r - 2)


@register
class Transpose(OpDef):
    """z = xᵀ (a no-op on vectors, as in NumPy).

    Backward, identity (3) up to the layout: transposing only moves elements, so dJ/dx = δᵀ,
    in the shape of x."""

    name = "transpose"
    postfix = (".T", ATOM)
    leafy = True

    def shape(self, x):
        return TensorType(tuple(reversed(x.shape)), x.dtype)     # NumPy: every axis reversed

    def reference(self, x):
        return np.transpose(x)

    def kernel(self, k, node):
        return k.permuted_copy(node, tuple(reversed(range(node.inputs[0].rank))))
    def vjp(self, b, node, d):
        with b.because(node, "3"):
            return [b.transpose(d)]

    def notation(self, p, node, a):
        return a if node.inputs[0].rank < 2 else p.transposed(a)     # a vector's ᵀ is NumPy's no-op


def transposed_text(v) -> str:
    """How a hint writes vᵀ: `W.T` for W, and `U` for the temporary U.T."""
    n = v.node
    if v.temporary and n is not None and isinstance(n.op, Transpose):
        return operand_text(n.inputs[0])
    text, prec = (v.name, ATOM) if not v.temporary else (operand_text(v), spec_form(v, 1)[1])
    return f"{text}{Transpose.postfix[0]}" if prec >= ATOM else f"({text}){Transpose.postfix[0]}"


@register
class Dot(OpDef):
    """a · b over the last axis (np.dot for vectors), a practice exercise of the notes.

    Backward, identity (4) on the elementwise product, then the sum: ∂(a·b)/∂a = bᵀ, so
    dJ/da = δ b and dJ/db = δ a, each summed over its broadcast axes."""

    name = "dot"
    arity = 2
    identity = "4"

    def shape(self, a, b):
        require_float(a), require_float(b)
        if a.rank == 0 or b.rank == 0 or a.shape[-1] != b.shape[-1]:
            raise ShapeError("needs two operands with the same last dim")
        return TensorType(broadcast_shapes(a.shape, b.shape)[:-1])

    def reference(self, a, b):
        return np.sum(a * b, axis=-1)

    def lower(self, b, node):
        return b.apply("sum", b.mul(*node.inputs), axis=-1)

    def vjp(self, b, node, d):
        x, y = node.inputs
        with b.because(node, self.identity):
            d = b.apply("reshape", d, shape=node.output.shape + (1,))
            return [unbroadcast(b, b.mul(d, y), x.shape), unbroadcast(b, b.mul(d, x), y.shape)]

    def notation(self, p, node, a, b):
        return Printed(f"{wrap(a, MATMUL)} · {wrap(b, MATMUL)}", MUL)


@register
class Norm2(OpDef):
    """‖x‖₂ over the last axis, a practice exercise of the notes.

    Backward, identity (4) through √(Σ x²): ∂‖x‖/∂x = xᵀ/‖x‖, so dJ/dx = δ x / ‖x‖, in the
    shape of x."""

    name = "norm2"
    identity = "4"

    def shape(self, x):
        require_float(x)
        if x.rank == 0:
            raise ShapeError("needs at least one axis")
        return TensorType(x.shape[:-1])

    def reference(self, x):
        return np.sqrt(np.sum(x * x, axis=-1))

    def lower(self, b, node):
        return b.apply("sqrt", b.apply("sum", b.apply("square", node.inputs[0]), axis=-1))

    def vjp(self, b, node, d):
        x = node.inputs[0]
        with b.because(node, self.identity):
            scale = b.apply("reshape", b.div(d, node.output), shape=node.output.shape + (1,))
            return [b.mul(scale, x)]

    def notation(self, p, node, a):
        return Printed(p.sym.norm(a.text))
