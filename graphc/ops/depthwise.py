"""The direct loop of a depthwise convolution (groups == C_in == C_out): one kernel op, in three
modes, that graphc/ops/conv.py chooses over im2col + one GEMM per channel (each of them a
product with one output column: all overhead). No patch matrix is made, so the workspace holds
none (on a microcontroller the patch matrix of a 64-channel 25x5 layer alone is 288 KB).

    mode "forward":      z[n, c] = Σ_ij x[n, c, window(ij)] w[c, 0, i, j] (+ b[c])   x [N, C, H, W]
    mode "input_grad":   dJ/dx = col2im(δ ∘ w): each output pixel's δ times w added back onto
                         the window it read, identity (2) per channel then identity (3)  δ [N, C, Ho, Wo]
    mode "weight_grad":  dJ/dw[c, 0, i, j] = Σ_n,pixels δ[n, c] x[n, c, window(ij)], identity (5)
                         per channel: δᵀ P over that channel's patch columns

Each is the grouped patch_matmul it replaces computed without the patches; the NumPy reference
goes through them (im2col_np) so the two agree by construction.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.core.ir import TensorType
from graphc.core.opdef import OpDef, register, require_float, three_mode_vjp
from graphc.ops.windows import col2im_np, geometry, im2col_np

MODES = ("forward", "input_grad", "weight_grad")


def _channel_patches(x, kernel, stride, padding, dilation):
    """im2col of x [N, C, H, W] as [N, Ho, Wo, C, kh*kw]."""
    P = im2col_np(x, kernel, stride, padding, dilation)
    return P.reshape(P.shape[:3] + (x.shape[1], kernel[0] * kernel[1]))


@register
class DepthwiseConv(OpDef):
    """A depthwise convolution's direct loop: see the module's docstring for the three modes.
    Inputs: forward (x, w, b?), input_grad (δ, w), weight_grad (x, δ); w [C, 1, kh, kw].

    Backward (the three are linear in each input, each the adjoint of another): forward's
    dJ/dx = input_grad(δ, w) and dJ/dw = weight_grad(x, δ), identities (2) and (5), dJ/db = Σ δ,
    identity (3); input_grad(d, w)'s dJ/dd = forward(δ, w), dJ/dw = weight_grad(δ, d); weight_grad(x, d)'s
    dJ/dx = input_grad(d, δ), dJ/dd = forward(x, δ)."""

    name = "depthwise_conv"
    arity = 3
    optional_inputs = 1
    attrs = {"mode": "forward", "size": (1, 1), "kernel": (1, 1), "stride": (1, 1), "padding": (0, 0, 0, 0),
             "dilation": (1, 1)}
    tuple_attrs = ("size", "kernel", "stride", "padding", "dilation")
    public = False
    identity = "2,3,5"

    def shape(self, a, b, bias=None, mode="forward", size=(1, 1), kernel=(1, 1), stride=(1, 1),
              padding=(0, 0, 0, 0), dilation=(1, 1)):
        for t in (a, b) + ((bias,) if bias is not None else ()):
            require_float(t)
        if mode not in MODES:
            raise ShapeError(f"depthwise_conv: mode must be one of {MODES}, got {mode!r}")
        if bias is not None and mode != "forward":
            raise ShapeError("depthwise_conv: only the forward mode takes a bias")
        if mode == "input_grad":
            image = TensorType((a.shape[0], a.shape[1]) + tuple(size))
        else:
            image = a
        g = geometry("im2col", image, kernel, stride, padding, dilation)
        w = b if mode != "weight_grad" else None
        if w is not None and w.shape != (g.C, 1) + tuple(kernel):
            raise ShapeError(f"depthwise_conv {mode}: w must be {(g.C, 1) + tuple(kernel)}, got {w.shape}")
        out = (g.N, g.C, g.Ho, g.Wo)
        if mode == "input_grad" and a.shape != out:
            raise ShapeError(f"depthwise_conv input_grad: δ {a.shape} is not the output {out} of an image {image.shape}")
        if mode == "weight_grad" and b.shape != out:
            raise ShapeError(f"depthwise_conv weight_grad: δ {b.shape} is not the output {out} of x {a.shape}")
        if bias is not None and bias.shape != (g.C,):
            raise ShapeError(f"depthwise_conv: the bias must be ({g.C},), got {bias.shape}")
        if mode == "forward":
            return TensorType(out)
        return TensorType(image.shape) if mode == "input_grad" else TensorType((g.C, 1) + tuple(kernel))

    def reference(self, a, b, bias=None, mode="forward", size=(1, 1), kernel=(1, 1), stride=(1, 1),
                  padding=(0, 0, 0, 0), dilation=(1, 1)):
        win = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation)
        C, K = a.shape[1], kernel[0] * kernel[1]
        if mode == "forward":
            z = np.einsum("nhwck,ck->nchw", _channel_patches(a, **win), b.reshape(C, K))
            return z + bias[None, :, None, None] if bias is not None else z
        if mode == "input_grad":
            dP = np.einsum("nchw,ck->nhwck", a, b.reshape(C, K))
            return col2im_np(dP.reshape(dP.shape[:3] + (C * K,)), size, **win).astype(a.dtype, copy=False)
        return np.einsum("nhwck,nchw->ck", _channel_patches(a, **win), b).reshape((C, 1) + tuple(kernel))

    def kernel(self, k, node):
        return k.depthwise(node)

    def vjp(self, b, node, d):
        a, w = node.inputs[:2]
        mode = node.attrs["mode"]
        win = {k: v for k, v in node.attrs.items() if k != "mode"}
        if mode != "input_grad":             # the image is an input: its size is the one to go back to
            win["size"] = tuple(a.shape[2:])
        return three_mode_vjp(b, node, d, lambda m, x, y: b.apply("depthwise_conv", x, y, mode=m, **win), "2")

    def notation(self, p, node, *args):
        return p.call({"forward": "dwconv", "input_grad": "dwconv_dx", "weight_grad": "dwconv_dw"}[node.attrs["mode"]],
                      list(args))
