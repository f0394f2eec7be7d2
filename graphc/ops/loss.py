"""Softmax, log-softmax and the losses.

`cross_entropy` is one op whose VJP is identity (7), ŷ − y scaled by the
upstream value over the batch: softmax and log are never differentiated
separately, which is cheaper and stays finite at extreme logits.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.core.ir import FLOAT, INT, TensorType
from graphc.core.notation import Printed, TextNotation
from graphc.core.opdef import OpDef, norm_axis, register, require_float


def _log_softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    s = x - m
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def check_labels(labels: np.ndarray, depth: int, what: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= depth):
        from graphc.core.errors import ArgumentError
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise ArgumentError(f"{what}: label/id {int(bad)} is out of range [0, {depth})")


@register
class Softmax(OpDef):
    """ŷ = softmax(x) along `axis` (default the last; torch's dim), computed as exp(x − max) / Σ
    for stability.

    Backward, identity (4) with the Jacobian diag(ŷ) − ŷŷᵀ in place of diag(f′), never built:
    dJ/dx = ŷ ∘ (δ − Σ δ ∘ ŷ), the sum along the same axis. cross_entropy never uses it
    (identity (7) instead)."""

    name = "softmax"
    attrs = {"axis": -1}
    identity = "4"
    leafy = True
    shown_by_name = False           # ŷ, even where the spec named the probabilities

    def shape(self, x, axis=-1):
        require_float(x)
        if x.rank == 0:
            raise ShapeError("needs at least one axis")
        norm_axis(axis, x.rank, self.name)
        return x

    def reference(self, x, axis=-1):
        return np.exp(_log_softmax(x, axis))

    def kernel(self, k, node):
        return k.row_softmax(node)

    def vjp(self, b, node, d):
        y, axis = node.output, node.attrs["axis"]
        with b.because(node, self.identity):
            s = b.apply("sum", b.mul(d, y), axis=axis, keepdims=True)
            return [b.mul(y, b.sub(d, s))]

    def notation(self, p, node, x):
        if node.inputs[0] in p.logits:                  # cross_entropy's own ŷ
            p.used.add("yhat")
            return Printed(p.sym.yhat())
        return super().notation(p, node, x)


def last_axis(node) -> bool:
    """Whether a softmax or log_softmax node works along the last axis (a row pass)."""
    return node.attrs.get("axis", -1) % node.output.rank == node.output.rank - 1


@register
class LogSoftmax(OpDef):
    """log softmax(x) along `axis` (default the last), as x − max − log Σ exp(x − max).

    Backward, identity (4) with the Jacobian I − 1 softmax(x)ᵀ, never built:
    dJ/dx = δ − softmax(x) ∘ Σ δ, the sum along the same axis."""

    name = "log_softmax"
    attrs = {"axis": -1}
    identity = "4"
    leafy = True
    shape = Softmax.shape

    def reference(self, x, axis=-1):
        return _log_softmax(x, axis)

    def kernel(self, k, node):
        return k.row_softmax(node)

    def vjp(self, b, node, d):
        axis = node.attrs["axis"]
        with b.because(node, self.identity):
            s = b.apply("sum", d, axis=axis, keepdims=True)
            return [b.sub(d, b.mul(b.apply("softmax", node.inputs[0], axis=axis), s))]

    def notation(self, p, node, x):
        if node.inputs[0] in p.logits:                  # log ŷ of cross_entropy's ŷ
            p.used.add("yhat")
            return Printed(p.sym.fn("log", p.sym.yhat()))
        return super().notation(p, node, x)


def _batch_count(b, theta):
    """Rows of the logits (1 for a single column-vector example): the mean's divisor."""
    return b.apply("size", theta, axes=tuple(range(theta.rank - 1))) if theta.rank > 1 else None


@register
class CrossEntropy(OpDef):
    """J = CE(y, softmax(θ)), the mean over the batch rows of -log ŷ[label].

    The classes are θ's last axis; every other axis is rows (θ [B, T, V]: the mean over the
    B·T positions; torch's F.cross_entropy has the classes on axis 1 instead). Labels are int32
    class indices (shape of θ without its last axis) or real targets shaped like θ (one-hot or
    probabilities).
    VJP, identity (7): dJ/dθ = (ŷ − y) · δ / rows. Real targets give ŷ Σy − y (the same when
    rows sum to 1, as one-hot and probability rows do) and also dJ/dy = -log ŷ · δ / rows.
    """

    name = "cross_entropy"
    arity = 2
    identity = "7"
    int_inputs = (1,)

    def accepts_float_at(self, i):
        return True

    def shape(self, theta, y):
        require_float(theta, "logits")
        if theta.rank == 0:
            raise ShapeError("logits need a class axis")
        want = theta.shape[:-1] if y.dtype == INT else theta.shape
        if y.shape != want:
            kind = "int32 labels" if y.dtype == INT else "real targets"
            raise ShapeError(f"{kind} must have shape {want}, got {y.shape}",
                             hint="labels are class indices, one per row; targets are rows like the logits")
        return TensorType(())

    def reference(self, theta, y):
        lsm = _log_softmax(theta)
        if np.issubdtype(y.dtype, np.integer):
            check_labels(y, theta.shape[-1], "cross_entropy")
            picked = np.take_along_axis(lsm, y[..., None].astype(np.intp), axis=-1)[..., 0]
            return -np.mean(picked)
        return -np.sum(y * lsm) / max(1, int(np.prod(theta.shape[:-1])))

    def kernel(self, k, node):
        return k.row_softmax(node)

    def index_bounds(self, node):
        theta, y = node.inputs
        return [(y, theta.shape[-1])] if y.dtype == INT else []     # a class: the logits' last dim

    def distribution_inputs(self, node):
        y = node.inputs[1]
        return [] if y.dtype == INT else [y]     # real targets: probability rows

    def vjp(self, b, node, d):
        theta, y = node.inputs
        with b.because(node, self.identity):
            count = _batch_count(b, theta)
            scale = d if count is None else b.div(d, count)
            yhat = b.apply("softmax", theta)
            if y.dtype == INT:
                d_theta = b.mul(b.sub(yhat, b.apply("onehot", y, depth=theta.shape[-1])), scale)
            else:
                # identity (7) assumes each target row sums to 1 (one-hot or probabilities);
                # for any real rows dJ/dθ = ŷ Σy − y, which is ŷ − y when they do
                mass = b.apply("sum", y, axis=-1, keepdims=True)
                d_theta = b.mul(b.sub(b.mul(yhat, mass), y), scale)
            d_y = None if y.dtype == INT else b.mul(b.neg(b.apply("log_softmax", theta)), scale)
            return [d_theta, d_y]

    def notation(self, p, node, theta, y):
        return p.call("CE", [y, theta])

    def logits(self, node):
        return node.inputs[0]

    def explain_notes(self, p, nodes):
        t = TextNotation()              # notes are plain text in every format
        notes = []
        if "yhat" in p.used:
            logits = ", ".join(sorted({n.inputs[0].name for n in nodes}))
            notes.append(f"ŷ = softmax({t.ident(logits)}), the predicted probabilities")
        if "onehot" in p.used:
            labels = sorted({n.inputs[1].name for n in nodes})
            notes.append(f"{', '.join(labels)} in a formula stands for the one-hot rows of the int32 labels")
        if any(n.inputs[1].dtype != INT for n in nodes):
            notes.append("Σ_classes y = 1 for one-hot or probability targets, so δ = ŷ − y as in the notes")
        means = [n for n in nodes if n.inputs[0].rank > 1]
        if means:
            rows = "·".join(p.dim(d) for d in means[0].inputs[0].shape[:-1])    # N, or B·T over [B, T, V]
            theta = t.ident(means[0].inputs[0].name)
            factor = f"1/({rows})" if "·" in rows else f"1/{rows}"
            notes.append(f"{p.of} is the mean of the cross-entropy over the {rows} rows of the batch, so "
                         f"δ = ∂{p.of}/∂{theta} carries a factor {factor} (the notes' ŷ − y is for one example)")
        return notes


@register
class Mse(OpDef):
    """J = mean((p − t)²) over every element.

    Backward, identity (4) on the square, then the mean: dJ/dp = 2 (p − t) δ / count and
    dJ/dt = −dJ/dp, each in its operand's shape."""

    name = "mse"
    arity = 2
    identity = "4"

    def shape(self, p, t):
        require_float(p), require_float(t)
        if p.shape != t.shape:
            raise ShapeError("prediction and target must have the same shape")
        return TensorType(())

    def reference(self, p, t):
        return np.mean((p - t) ** 2)

    def lower(self, b, node):
        return b.apply("mean", b.apply("square", b.sub(*node.inputs)))

    def vjp(self, b, node, d):
        p, t = node.inputs
        with b.because(node, self.identity):
            g = b.mul(b.sub(p, t), b.mul(d, 2.0))
            if p.rank:
                g = b.div(g, b.apply("size", p, axes=tuple(range(p.rank))))
            return [g, b.neg(g)]


@register
class Onehot(OpDef):
    """The one-hot rows of int32 labels: y.shape + (depth,).

    No gradient: its input is integer labels, which have no derivative."""

    name = "onehot"
    attrs = {"depth": 1}
    int_inputs = (0,)
    public = False
    leafy = True

    def shape(self, y, depth):
        return TensorType(y.shape + (depth,), FLOAT)

    def reference(self, y, depth):
        check_labels(y, depth, "onehot")
        return (y[..., None] == np.arange(depth)).astype(np.float64)

    def kernel(self, k, node):
        return k.gather(node, "onehot", ids=node.inputs[0], width=node.attrs["depth"])

    def inline_c(self, k, node, iter_shape, loads):
        return k.onehot_load(node.inputs[0], iter_shape, loads)

    def index_bounds(self, node):
        return [(node.inputs[0], node.attrs["depth"])]

    def vjp(self, b, node, d):
        return [None]

    def notation(self, p, node, y):
        p.used.add("onehot")                            # y stands for its one-hot rows
        return Printed(y.text)
