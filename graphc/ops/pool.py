"""Pooling, NCHW, with torch.nn.functional's names and arguments: max_pool2d, avg_pool2d and
adaptive_avg_pool2d (output size 1: the global average pool).

Each is a composite over the patch matrix of graphc/ops/conv.py: the windows of x as rows
(im2col), one max or mean per (pixel, channel), back to NCHW. Their VJPs route δ back through
the same windows: col2im sums each window's share onto x, identity (3).
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.core.ir import TensorType
from graphc.core.opdef import OpDef, register, require_float
from graphc.ops.conv import _window_attrs, geometry, im2col_np


def _pool_geometry(op, x, kernel_size, stride, padding, dilation=1):
    g = geometry(op, x, kernel_size, kernel_size if stride is None else stride, padding, dilation)
    if isinstance(padding, str):
        raise ShapeError(f"takes padding as numbers, got {padding!r}")
    if any(2 * p > k for p, k in zip((g.padding[0], g.padding[2]), g.kernel)):
        raise ShapeError(f"padding {padding} is more than half the kernel {g.kernel}",
                         hint="as in torch, padding <= kernel_size / 2")
    return g


def _windows(b, x, g, pad_value):
    """The windows of x as [N, Ho, Wo, C, kh·kw]: im2col, its columns split by channel."""
    P = b.apply("im2col", x, **g.attrs(pad_value))
    return b.apply("reshape", P, shape=(g.N, g.Ho, g.Wo, g.C, g.kernel[0] * g.kernel[1]))


def _rows(b, v, g):
    """An NCHW value [N, C, Ho, Wo] as the windows' [N, Ho, Wo, C, 1]."""
    return b.apply("reshape", b.apply("permute", v, axes=(0, 2, 3, 1)), shape=(g.N, g.Ho, g.Wo, g.C, 1))


def _back(b, x, g, dR):
    """Window gradients [N, Ho, Wo, C, kh·kw] summed back onto x by col2im (identity (3))."""
    dP = b.apply("reshape", dR, shape=(g.N, g.Ho, g.Wo, g.patch))
    a = {k: v for k, v in g.attrs().items() if k != "pad_value"}
    return b.apply("col2im", dP, size=(g.H, g.W), **a)


class _Pool(OpDef):
    attrs = {"kernel_size": 1, "stride": None, "padding": 0}

    def check_attrs(self, inputs, attrs):
        return _window_attrs(super().check_attrs(inputs, attrs))

    def _geometry(self, x, a):
        return _pool_geometry(self.name, x, a["kernel_size"], a["stride"], a["padding"], a.get("dilation", 1))

    def shape(self, x, **a):
        require_float(x)
        g = self._geometry(x, a)
        return TensorType((g.N, g.C, g.Ho, g.Wo))


@register
class MaxPool2d(_Pool):
    """max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1): the largest element of each
    window (stride defaults to kernel_size; the padding never wins, as -inf).

    Backward, identity (4) then (3): δ goes to the element that is the window's max (∂max/∂x is 1
    there, 0 elsewhere; a tie gives δ to each), summed back onto x by col2im."""

    name = "max_pool2d"
    attrs = {"kernel_size": 1, "stride": None, "padding": 0, "dilation": 1}
    identity = "3,4"

    def reference(self, x, **a):
        g = self._geometry(TensorType(x.shape), a)
        P = im2col_np(x, **g.attrs(-np.inf)).reshape(x.shape[0], g.Ho, g.Wo, g.C, -1)
        return P.max(axis=-1).transpose(0, 3, 1, 2)

    def lower(self, b, node):
        x = node.inputs[0]
        g = self._geometry(x, node.attrs)
        return b.apply("permute", b.apply("max", _windows(b, x, g, float("-inf")), axis=-1), axes=(0, 3, 1, 2))

    def vjp(self, b, node, d):
        x = node.inputs[0]
        g = self._geometry(x, node.attrs)
        with b.because(node, "4"):
            # the padding's mask entries are dropped by col2im: read it as 0, keeping every value finite
            at_max = b.apply("equal", _windows(b, x, g, 0.0), _rows(b, node.output, g))
            dR = b.mul(_rows(b, d, g), at_max)
        with b.because(node, "3"):
            return [_back(b, x, g, dR)]


@register
class AvgPool2d(_Pool):
    """avg_pool2d(x, kernel_size, stride=None, padding=0): the mean of each window, the padding
    counted as zeros (torch's count_include_pad=True).

    Backward, identity (3): each element of a window gets δ / (kh·kw), summed back onto x by col2im."""

    name = "avg_pool2d"
    identity = "3"

    def reference(self, x, **a):
        g = self._geometry(TensorType(x.shape), a)
        P = im2col_np(x, **g.attrs()).reshape(x.shape[0], g.Ho, g.Wo, g.C, -1)
        return P.mean(axis=-1).transpose(0, 3, 1, 2)

    def lower(self, b, node):
        x = node.inputs[0]
        g = self._geometry(x, node.attrs)
        return b.apply("permute", b.apply("mean", _windows(b, x, g, 0.0), axis=-1), axes=(0, 3, 1, 2))

    def vjp(self, b, node, d):
        x = node.inputs[0]
        g = self._geometry(x, node.attrs)
        kk = g.kernel[0] * g.kernel[1]
        with b.because(node, self.identity):
            share = b.div(_rows(b, d, g), float(kk))
            dR = b.apply("broadcast_to", share, shape=(g.N, g.Ho, g.Wo, g.C, kk))
            return [_back(b, x, g, dR)]


@register
class AdaptiveAvgPool2d(OpDef):
    """adaptive_avg_pool2d(x, output_size) for output_size 1 (or (1, 1)): the global average pool,
    the mean of each channel over H and W, [N, C, 1, 1].

    Backward, identity (3): every pixel gets δ / (H·W), broadcast back in the shape of x."""

    name = "adaptive_avg_pool2d"
    attrs = {"output_size": 1}
    identity = "3"

    def shape(self, x, output_size):
        require_float(x)
        if output_size not in (1, (1, 1), [1, 1]):
            raise ShapeError(f"adaptive_avg_pool2d supports output_size 1 (global average), got {output_size!r}",
                             hint="avg_pool2d with a kernel of H / out and W / out gives other sizes")
        if x.rank != 4:
            raise ShapeError(f"takes x of rank 4 [N, C, H, W], got rank {x.rank} {x.shape}")
        return TensorType(x.shape[:2] + (1, 1))

    def check_attrs(self, inputs, attrs):
        return _window_attrs(super().check_attrs(inputs, attrs))

    def reference(self, x, output_size):
        return x.mean(axis=(2, 3), keepdims=True)

    def lower(self, b, node):
        return b.apply("mean", node.inputs[0], axis=(2, 3), keepdims=True)

    def vjp(self, b, node, d):
        x = node.inputs[0]
        with b.because(node, self.identity):
            share = b.div(d, float(x.shape[2] * x.shape[3]))
            return [b.apply("broadcast_to", share, shape=x.shape)]
