"""A 1x1 convolution (kernel 1x1, stride 1, no padding, dilation 1, groups 1: the pointwise
convolutions of a depthwise-separable block) as one product per image, with no patch matrix: x[n]
of an NCHW image is already the matrix [C_in, H·W], so z[n] = W x[n] ([C_out, C_in] · [C_in, H·W])
is written in NCHW directly (no permute copy, and no NHWC copy of x kept for the backward pass).
One kernel op, in three modes, that graphc/ops/conv.py chooses over im2col + the patch GEMM:

    mode "forward":      z[n] = W x[n] (+ b, one per row: per output channel)   x [N, C_in, H, W]
    mode "input_grad":   dJ/dx[n] = Wᵀ δ[n], identity (1) per image             δ [N, C_out, H, W]
    mode "weight_grad":  dJ/dW = Σ_n δ[n] x[n]ᵀ, identity (5) summed over the images

W [C_out, C_in, 1, 1] is read in place as the matrix [C_out, C_in]. Each mode is the patch_matmul
it replaces (P = im2col(x) is x permuted to NHWC when the kernel is 1x1) computed in place.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.core.ir import TensorType
from graphc.core.opdef import OpDef, register, require_float, three_mode_vjp

MODES = ("forward", "input_grad", "weight_grad")


@register
class PointwiseConv(OpDef):
    """A 1x1 convolution by one GEMM per image: see the module's docstring for the three modes.
    Inputs: forward (x, w, b?), input_grad (δ, w), weight_grad (x, δ); w [C_out, C_in, 1, 1].

    Backward (each mode is linear in each input, and the adjoint of another): forward's
    dJ/dx = input_grad(δ, w) and dJ/dw = weight_grad(x, δ), identities (1) and (5), dJ/db = Σ δ,
    identity (3); input_grad(d, w)'s dJ/dd = forward(δ, w), dJ/dw = weight_grad(δ, d); weight_grad(x, d)'s
    dJ/dx = input_grad(d, δ), dJ/dd = forward(x, δ)."""

    name = "pointwise_conv"
    arity = 3
    optional_inputs = 1
    attrs = {"mode": "forward"}
    public = False
    identity = "1,3,5"

    def shape(self, a, b, bias=None, mode="forward"):
        for t in (a, b) + ((bias,) if bias is not None else ()):
            require_float(t)
        if mode not in MODES:
            raise ShapeError(f"pointwise_conv: mode must be one of {MODES}, got {mode!r}")
        if bias is not None and mode != "forward":
            raise ShapeError("pointwise_conv: only the forward mode takes a bias")
        if a.rank != 4 or any(isinstance(d, str) for d in a.shape[1:]):
            raise ShapeError(f"pointwise_conv {mode}: an image [N, C, H, W] (only N symbolic), got {a.shape}")
        if mode == "weight_grad":
            if b.rank != 4 or b.shape[0] != a.shape[0] or b.shape[2:] != a.shape[2:]:
                raise ShapeError(f"pointwise_conv weight_grad: δ {b.shape} is not an output of x {a.shape}")
            return TensorType((b.shape[1], a.shape[1], 1, 1))
        if b.rank != 4 or b.shape[2:] != (1, 1) or any(isinstance(d, str) for d in b.shape):
            raise ShapeError(f"pointwise_conv {mode}: w must be [C_out, C_in, 1, 1], got {b.shape}")
        C_out, C_in = b.shape[:2]
        if mode == "forward":
            if a.shape[1] != C_in:
                raise ShapeError(f"pointwise_conv forward: x {a.shape} has not the {C_in} channels of w {b.shape}")
            if bias is not None and bias.shape != (C_out,):
                raise ShapeError(f"pointwise_conv: the bias must be ({C_out},), got {bias.shape}")
            return TensorType((a.shape[0], C_out) + a.shape[2:])
        if a.shape[1] != C_out:
            raise ShapeError(f"pointwise_conv input_grad: δ {a.shape} has not the {C_out} channels w {b.shape} makes")
        return TensorType((a.shape[0], C_in) + a.shape[2:])

    def reference(self, a, b, bias=None, mode="forward"):
        if mode == "weight_grad":
            return np.einsum("nohw,nihw->oi", b, a)[:, :, None, None]
        W = b[:, :, 0, 0]
        if mode == "input_grad":
            return np.einsum("oi,nohw->nihw", W, a)
        z = np.einsum("oi,nihw->nohw", W, a)
        return z + bias[None, :, None, None] if bias is not None else z

    def kernel(self, k, node):
        return k.pointwise(node)

    def vjp(self, b, node, d):
        return three_mode_vjp(b, node, d, lambda m, x, y: b.apply("pointwise_conv", x, y, mode=m), "1")

    def notation(self, p, node, a, b, *bias):
        """The notes' products per image: W x, Wᵀ δ, Σ over the images of δ xᵀ (a bias: a call)."""
        mode = node.attrs["mode"]
        if mode == "forward":
            return p.call("pwconv", [a, b, *bias]) if bias else p.product(b, a)
        if mode == "input_grad":
            return p.product(p.transposed(b), a)
        return p.summed("images", p.product(b, p.transposed(a)))
