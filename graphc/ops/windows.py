"""Where every kernel window of a 2-D convolution or pooling sits (NCHW), for conv.py, patches.py,
depthwise.py and pool.py: the Geometry of x's windows (torch's kernel_size, stride, padding and
dilation checked, padding 'same'/'valid' resolved) and, as the NumPy references of the patch
ops, im2col_np (each window copied out as a row) and col2im_np, its adjoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphc.core.errors import ShapeError, SpecError


def window_ints(value, n: int, name: str, low: int) -> tuple[int, ...]:
    """An int or a tuple of n ints, each >= low, as a tuple of n."""
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
    if len(vals) != n or any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
        raise SpecError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if any(v < low for v in vals):
        hints = {"stride": "a stride of 0 would never move the kernel", "kernel_size": "a window has at least one element",
                 "dilation": "dilation 1 is a plain kernel", "padding": "padding adds that many zeros on each side: 0 or more"}
        raise ShapeError(f"{name} {value!r} must be >= {low}", hint=hints.get(name))
    return vals


@dataclass(frozen=True)
class Geometry:
    """Where every kernel window of a 2-D convolution or pooling sits."""
    N: object
    C: int
    H: int
    W: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]      # top, bottom, left, right
    dilation: tuple[int, int]
    Ho: int
    Wo: int

    @property
    def patch(self) -> int:
        return self.C * self.kernel[0] * self.kernel[1]

    def attrs(self, pad_value: float = 0.0) -> dict:
        return dict(kernel=self.kernel, stride=self.stride, padding=self.padding, dilation=self.dilation,
                    pad_value=pad_value)


def geometry(op: str, x, kernel, stride, padding, dilation, spatial: int = 2) -> Geometry:
    """The windows of `op` over x [N, C, H, W]: shapes checked, padding 'same'/'valid' resolved."""
    if x.rank != 2 + spatial:
        form = "[N, C, H, W]" if spatial == 2 else "[N, C, L]"
        raise ShapeError(f"takes x of rank {2 + spatial} {form}, got rank {x.rank} {x.shape}")
    N, C, *hw = x.shape
    if any(isinstance(d, str) for d in (C, *hw)):
        raise ShapeError(f"only the batch dim (first) may be symbolic, x is {x.shape}")
    kernel = window_ints(kernel, 2, "kernel_size", 1)
    stride = window_ints(stride, 2, "stride", 1)
    dilation = window_ints(dilation, 2, "dilation", 1)
    if padding in ("same", "valid"):
        if padding == "same" and stride != (1, 1):
            raise ShapeError(f"padding='same' needs stride 1, got stride {stride}",
                             hint="give the padding as numbers for a strided convolution")
        total = [0, 0] if padding == "valid" else [d * (k - 1) for d, k in zip(dilation, kernel)]
        pads = (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    elif isinstance(padding, str):
        raise SpecError(f"padding must be an int, a tuple of ints, 'same' or 'valid', got {padding!r}")
    elif isinstance(padding, tuple) and len(padding) == 4 and op == "im2col":   # resolved: top, bottom, left, right
        pads = window_ints(padding, 4, "padding", 0)
    else:
        ph, pw = window_ints(padding, 2, "padding", 0)
        pads = (ph, ph, pw, pw)
    H, W = hw if spatial == 2 else (1, hw[0])
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    padded = (H + pads[0] + pads[1], W + pads[2] + pads[3])
    if span[0] > padded[0] or span[1] > padded[1]:
        raise ShapeError(f"the kernel spans {tuple(span)} (kernel {kernel}, dilation {dilation}), larger than "
                         f"the padded input {padded} (input {(H, W)}, padding {pads})",
                         hint="use a smaller kernel or dilation, or more padding")
    Ho, Wo = ((p - s) // st + 1 for p, s, st in zip(padded, span, stride))
    return Geometry(N, C, H, W, kernel, stride, pads, dilation, Ho, Wo)


def window_attrs(attrs: dict) -> dict:
    """Lists from the builder as tuples: hashable, as the spec's."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}


def im2col_np(x: np.ndarray, kernel, stride, padding, dilation, pad_value=0.0, layout="nhwc") -> np.ndarray:
    """x [N, C, H, W] -> patches [N, Ho, Wo, C*kh*kw], columns ordered (channel, row, column); with
    layout "nchw" the same patches as planes [N, C*kh*kw, Ho, Wo]."""
    if layout == "nchw":
        return im2col_np(x, kernel, stride, padding, dilation, pad_value).transpose(0, 3, 1, 2).copy()
    (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = kernel, stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=pad_value)
    N, C, Hp, Wp = xp.shape
    Ho, Wo = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((N, Ho, Wo, C, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, :, i, j] = xp[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh,
                                       j * dw:j * dw + sw * (Wo - 1) + 1:sw].transpose(0, 2, 3, 1)
    return out.reshape(N, Ho, Wo, C * kh * kw)


def col2im_np(p: np.ndarray, size, kernel, stride, padding, dilation, layout="nhwc") -> np.ndarray:
    """The adjoint of im2col_np: each patch element added back where it was copied from."""
    if layout == "nchw":
        p = p.transpose(0, 2, 3, 1)
    (kh, kw), (sh, sw), (pt, pb, pl, pr), (dh, dw) = kernel, stride, padding, dilation
    N, Ho, Wo, K = p.shape
    C = K // (kh * kw)
    H, W = size
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr))
    q = p.reshape(N, Ho, Wo, C, kh, kw)
    for i in range(kh):
        for j in range(kw):
            xp[:, :, i * dh:i * dh + sh * (Ho - 1) + 1:sh, j * dw:j * dw + sw * (Wo - 1) + 1:sw] += \
                q[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return xp[:, :, pt:pt + H, pl:pl + W]
