"""Pooling, NCHW, with torch.nn.functional's names and arguments: max_pool2d, avg_pool2d and
adaptive_avg_pool2d (output size 1: the global average pool).

Each is a composite over the patch matrix of graphc/ops/patches.py: the windows of x as rows
(im2col), one max or mean per (pixel, channel), back to NCHW. Their VJPs route δ back through
the same windows: col2im sums each window's share onto x, identity (3).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from graphc.core.errors import ShapeError, SpecError
from graphc.core.ir import TensorType
from graphc.core.opdef import OpDef, register, require_float
from graphc.ops.windows import geometry, im2col_np, window_attrs


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{name} must be True or False, got {value!r}")
    return value


def _pool_geometry(op, x, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    """The windows of a pooling: torch's output size, rounded down or (ceil_mode) up. A window
    rounded up reaches past the padded input; that part is extra bottom/right padding of the
    patch matrix (never the max, never counted by a mean), and the last window still starts
    inside the input or its left padding, as in torch."""
    if isinstance(padding, str):
        raise ShapeError(f"takes padding as numbers, got {padding!r}",
                         hint="pooling has no 'same' or 'valid': give padding as an int or a pair")
    _flag(ceil_mode, "ceil_mode")
    g = geometry(op, x, kernel_size, kernel_size if stride is None else stride, padding, dilation)
    if any(2 * p > k for p, k in zip((g.padding[0], g.padding[2]), g.kernel)):
        raise ShapeError(f"padding {padding} is more than half the kernel {g.kernel}",
                         hint=f"as in torch, padding <= kernel_size / 2, here at most "
                              f"{tuple(k // 2 for k in g.kernel)}")
    if not ceil_mode:
        return g
    outs, extra = [], []
    for n, p, k, d, s in zip((g.H, g.W), (g.padding[0], g.padding[2]), g.kernel, g.dilation, g.stride):
        span = d * (k - 1) + 1
        out = (n + 2 * p - span + s - 1) // s + 1
        if (out - 1) * s >= n + p:           # torch: the last window must start inside the input or the left padding
            out -= 1
        outs.append(out)
        extra.append(max(0, (out - 1) * s + span - (n + 2 * p)))
    pt, pb, pl, pr = g.padding
    return replace(g, padding=(pt, pb + extra[0], pl, pr + extra[1]), Ho=outs[0], Wo=outs[1])


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
    attrs = {"kernel_size": 1, "stride": None, "padding": 0, "ceil_mode": False}

    def check_attrs(self, inputs, attrs):
        return window_attrs(super().check_attrs(inputs, attrs))

    def _geometry(self, x, a):
        return _pool_geometry(self.name, x, a["kernel_size"], a["stride"], a["padding"], a.get("dilation", 1),
                              a["ceil_mode"])

    def shape(self, x, **a):
        require_float(x)
        g = self._geometry(x, a)
        return TensorType((g.N, g.C, g.Ho, g.Wo))


@register
class MaxPool2d(_Pool):
    """max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False): the largest
    element of each window (stride defaults to kernel_size; the padding never wins, as -inf).

    Backward, identity (4) then (3): δ goes to the element that is the window's max (∂max/∂x is 1
    there, 0 elsewhere; a tie gives δ to each), summed back onto x by col2im."""

    name = "max_pool2d"
    attrs = {"kernel_size": 1, "stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}
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
    """avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
    divisor_override=None) as torch: the sum of each window over its count, which is kh·kw, or
    (a window reaching past the padding with ceil_mode, or count_include_pad=False) the elements
    of the window inside the padded input (or the input), or divisor_override.

    Backward, identity (3): each element of a window gets δ / count, summed back onto x by col2im."""

    name = "avg_pool2d"
    attrs = {"kernel_size": 1, "stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
             "divisor_override": None}
    identity = "3"

    def _geometry(self, x, a):
        _flag(a["count_include_pad"], "count_include_pad")
        div = a["divisor_override"]
        if div is not None and (isinstance(div, bool) or not isinstance(div, int) or div < 1):
            raise SpecError(f"divisor_override must be None or a positive int, got {div!r}")
        return super()._geometry(x, a)

    @staticmethod
    def _counting(g, a):
        """(the count as a number, when every window has the same), else (None, (image size,
        patch padding)): the elements each window counts are those of a ones image of that size
        read with that padding of zeros."""
        if a["divisor_override"] is not None:
            return float(a["divisor_override"]), None
        pt, pb, pl, pr = g.padding
        p = a["padding"]
        ph, pw = (p, p) if isinstance(p, int) else tuple(p)
        extra = (pb - ph, pr - pw)
        if extra == (0, 0) and (a["count_include_pad"] or (ph, pw) == (0, 0)):
            return float(g.kernel[0] * g.kernel[1]), None
        if a["count_include_pad"]:           # the padded input counts, the ceil_mode extra does not
            return None, ((g.H + 2 * ph, g.W + 2 * pw), (0, extra[0], 0, extra[1]))
        return None, ((g.H, g.W), g.padding)

    def _counts(self, b, g, a):
        """The count of each window as a value [1, Ho, Wo, 1], or a number."""
        number, ones = self._counting(g, a)
        if number is not None:
            return number
        size, pads = ones
        image = b.apply("broadcast_to", 1.0, shape=(1, 1) + size)
        P = b.apply("im2col", image, kernel=g.kernel, stride=g.stride, padding=pads, dilation=g.dilation,
                    pad_value=0.0)
        return b.apply("sum", P, axis=-1, keepdims=True)

    def reference(self, x, **a):
        g = self._geometry(TensorType(x.shape), a)
        P = im2col_np(x, **g.attrs()).reshape(x.shape[0], g.Ho, g.Wo, g.C, -1)
        number, ones = self._counting(g, a)
        if number is None:
            size, pads = ones
            count = im2col_np(np.ones((1, 1) + size), g.kernel, g.stride, pads, g.dilation).sum(-1, keepdims=True)
        else:
            count = number
        return (P.sum(axis=-1) / count).transpose(0, 3, 1, 2)

    def lower(self, b, node):
        x = node.inputs[0]
        g = self._geometry(x, node.attrs)
        count = self._counts(b, g, node.attrs)
        if isinstance(count, float) and count == g.kernel[0] * g.kernel[1]:
            mean = b.apply("mean", _windows(b, x, g, 0.0), axis=-1)
        else:
            mean = b.div(b.apply("sum", _windows(b, x, g, 0.0), axis=-1), count)
        return b.apply("permute", mean, axes=(0, 3, 1, 2))

    def vjp(self, b, node, d):
        x = node.inputs[0]
        g = self._geometry(x, node.attrs)
        kk = g.kernel[0] * g.kernel[1]
        with b.because(node, self.identity):
            count = self._counts(b, g, node.attrs)
            if not isinstance(count, float):
                count = b.apply("reshape", count, shape=(1, g.Ho, g.Wo, 1, 1))
            share = b.div(_rows(b, d, g), count)
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
        return window_attrs(super().check_attrs(inputs, attrs))

    def reference(self, x, output_size):
        return x.mean(axis=(2, 3), keepdims=True)

    def lower(self, b, node):
        return b.apply("mean", node.inputs[0], axis=(2, 3), keepdims=True)

    def vjp(self, b, node, d):
        x = node.inputs[0]
        with b.because(node, self.identity):
            share = b.div(d, float(x.shape[2] * x.shape[3]))
            return [b.apply("broadcast_to", share, shape=x.shape)]
