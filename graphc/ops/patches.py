"""The kernel ops a convolution lowers to (ops/conv.py's conv2d and conv1d): im2col (the patch
matrix), col2im (its adjoint) and patch_matmul (the GEMM over the patch matrix, by groups).
They are not spec ops (public = False): conv2d's VJP builds them.

The patch matrix has two layouts: "nhwc", one row per output pixel [N, Ho, Wo, C*kh*kw] (what
patch_matmul multiplies, by groups), and "nchw", the same numbers as planes [N, C*kh*kw, Ho, Wo]:
an image of C*kh*kw channels, which a convolution of groups 1 multiplies by one GEMM per image
(pointwise_conv: W [C_out, C*kh*kw] times the planes [C*kh*kw, Ho*Wo], written in NCHW).
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.core.ir import TensorType
from graphc.core.opdef import OpDef, register, require_float
from graphc.ops.windows import col2im_np, geometry, im2col_np


@register
class Im2col(OpDef):
    """The patch matrix of x [N, C, H, W]: one row per output pixel [N, Ho, Wo], one column per
    (channel, kernel row, kernel column); outside x it reads pad_value. layout "nchw": the same
    patches as planes [N, C*kh*kw, Ho, Wo], one plane per column.

    Backward, identity (3): every patch element is a copy of one element of x (or of the padding),
    so dJ/dx = col2im(δ), each copy's δ summed back where it came from."""

    name = "im2col"
    attrs = {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "pad_value": 0.0,
             "layout": "nhwc"}
    tuple_attrs = ("kernel", "stride", "padding", "dilation")
    public = False
    identity = "3"

    def shape(self, x, kernel, stride, padding, dilation, pad_value, layout="nhwc"):
        require_float(x)
        if len(padding) != 4:
            raise ShapeError(f"im2col takes padding (top, bottom, left, right), got {padding}")
        _check_layout(layout)
        g = geometry(self.name, x, kernel, stride, padding, dilation)
        return TensorType((g.N, g.Ho, g.Wo, g.patch) if layout == "nhwc" else (g.N, g.patch, g.Ho, g.Wo))

    def reference(self, x, **a):
        return im2col_np(x, **a)

    def kernel(self, k, node):
        return k.patches(node, "im2col")

    def vjp(self, b, node, d):
        x = node.inputs[0]
        a = {k: v for k, v in node.attrs.items() if k != "pad_value"}
        with b.because(node, self.identity):
            return [b.apply("col2im", d, size=tuple(x.shape[2:]), **a)]

    def notation(self, p, node, x):
        return p.call("im2col", [x])


@register
class Col2im(OpDef):
    """The adjoint of im2col: patches [N, Ho, Wo, C*kh*kw] (layout "nchw": planes [N, C*kh*kw, Ho,
    Wo]) summed back into an image [N, C, H, W] of `size` (H, W); what fell on the padding is dropped.

    Backward, identity (3): each image element is a sum of copies, so dJ/dpatches = im2col(δ)."""

    name = "col2im"
    attrs = {"size": (1, 1), "kernel": (1, 1), "stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1),
             "layout": "nhwc"}
    tuple_attrs = ("size", "kernel", "stride", "padding", "dilation")
    public = False
    identity = "3"

    def shape(self, p, size, kernel, stride, padding, dilation, layout="nhwc"):
        require_float(p)
        _check_layout(layout)
        K = kernel[0] * kernel[1]
        what = f"patches [N, Ho, Wo, C*{K}]" if layout == "nhwc" else f"patch planes [N, C*{K}, Ho, Wo]"
        if p.rank != 4:
            raise ShapeError(f"takes {what}, got {p.shape}")
        cols, pixels = (p.shape[3], p.shape[1:3]) if layout == "nhwc" else (p.shape[1], p.shape[2:4])
        if isinstance(cols, str) or cols % K:
            raise ShapeError(f"takes {what}, got {p.shape}")
        out = TensorType((p.shape[0], cols // K) + tuple(size))
        g = geometry("im2col", out, kernel, stride, padding, dilation)
        if pixels != (g.Ho, g.Wo):
            raise ShapeError(f"col2im: patches {p.shape} are not the windows of an image {out.shape}")
        return out

    def reference(self, p, **a):
        return col2im_np(p, **a)

    def kernel(self, k, node):
        return k.patches(node, "col2im")

    def vjp(self, b, node, d):
        a = {k: v for k, v in node.attrs.items() if k != "size"}
        with b.because(node, self.identity):
            return [b.apply("im2col", d, **a)]

    def notation(self, p, node, x):
        return p.call("col2im", [x])


def _check_layout(layout):
    if layout not in ("nhwc", "nchw"):
        raise ShapeError(f"the patch matrix's layout is 'nhwc' (rows of pixels) or 'nchw' (planes), got {layout!r}")


def matrix(shape) -> tuple[int, int]:
    """A weight [C_out, C_in/groups, kh, kw] (or any rank >= 2) read row-major as a matrix."""
    return shape[0], int(np.prod(shape[1:]))


def _groups(a_cols, b_rows, groups, what):
    if a_cols % groups or b_rows % groups:
        raise ShapeError(f"patch_matmul: {what} not divisible by groups={groups}")


@register
class PatchMatmul(OpDef):
    """The GEMM of a convolution, by groups g (columns of each operand split in `groups` blocks),
    over rows r = every leading index of a [..., G*Ka]; for nt and nn, b of rank > 2 (a conv
    weight) is read in place as the matrix [b.shape[0], the rest]:
      mode "nt": z[r, g*Nb + j] = Σ_k a[r, g*Ka + k] b[g*Nb + j, k]  (+ bias[g*Nb + j])   z = P Wᵀ
      mode "nn": z[r, g*Nb + j] = Σ_k a[r, g*Ka + k] b[g*Ka + k, j]                       z = δ W
      mode "tn": z[g*Ma + i, j] = Σ_r a[r, g*Ma + i] b[r, g*Nb + j]                       z = δᵀ P

    Backward (per group, as matmul): for z = a bᵀ, dJ/da = δ b, identity (2), and dJ/db = δᵀ a,
    identity (5); for z = a b, dJ/da = δ bᵀ, identity (2), and dJ/db = aᵀ δ, identity (6); for
    z = aᵀ b, dJ/da = b δᵀ and dJ/db = a δ (identities (6) and (2)); dJ/dbias = Σ_rows δ, identity (3)."""

    name = "patch_matmul"
    arity = 3
    optional_inputs = 1
    attrs = {"mode": "nt", "groups": 1}
    public = False
    identity = "2,3,5,6"

    def shape(self, a, b, bias=None, mode="nt", groups=1):
        for t in (a, b) + ((bias,) if bias is not None else ()):
            require_float(t)
        G = groups
        if mode == "tn":
            if a.rank < 2 or a.shape[:-1] != b.shape[:-1]:
                raise ShapeError(f"patch_matmul tn needs operands with the same rows, got {a.shape} and {b.shape}")
            _groups(a.shape[-1], b.shape[-1], G, "the columns")
            return TensorType((a.shape[-1], b.shape[-1] // G))
        if b.rank < 2 or a.rank < 2 or mode not in ("nt", "nn") or any(isinstance(d, str) for d in b.shape):
            raise ShapeError(f"patch_matmul {mode}: a [..., K] and a fixed b of rank >= 2, got {a.shape} and {b.shape}")
        rows, cols = matrix(b.shape)
        _groups(a.shape[-1], rows, G, "the inner dims")
        Ka = a.shape[-1] // G
        if (cols if mode == "nt" else rows // G) != Ka:
            raise ShapeError(f"patch_matmul {mode}: inner dims differ, a {a.shape}, b {b.shape}, groups {G}")
        Nb = rows // G if mode == "nt" else cols
        if bias is not None and (mode != "nt" or bias.shape != (G * Nb,)):
            raise ShapeError(f"patch_matmul: a bias of shape ({G * Nb},) goes with mode nt, got {bias.shape}")
        return TensorType(a.shape[:-1] + (G * Nb,))

    def reference(self, a, b, bias=None, mode="nt", groups=1):
        G = groups
        if mode == "tn":
            A = a.reshape(-1, G, a.shape[-1] // G)
            B = b.reshape(-1, G, b.shape[-1] // G)
            return np.einsum("rgi,rgj->gij", A, B).reshape(a.shape[-1], b.shape[-1] // G)
        A = a.reshape(a.shape[:-1] + (G, a.shape[-1] // G))
        rows, cols = matrix(b.shape)
        Bm = b.reshape(G, rows // G, cols)
        z = np.einsum("...gk,gjk->...gj" if mode == "nt" else "...gk,gkj->...gj", A, Bm)
        z = z.reshape(a.shape[:-1] + (-1,))
        return z + bias if bias is not None else z

    def kernel(self, k, node):
        return k.patch_gemm(node)

    def vjp(self, b, node, d):
        a, w = node.inputs[:2]
        mode, G = node.attrs["mode"], node.attrs["groups"]
        pm = lambda x, y, m: b.apply("patch_matmul", x, y, mode=m, groups=G)  # noqa: E731
        if mode == "nt":
            with b.because(node, "2"):
                da = pm(d, w, "nn")
            with b.because(node, "5"):
                dw = pm(d, a, "tn")
        elif mode == "nn":
            with b.because(node, "2"):
                da = pm(d, w, "nt")
            with b.because(node, "6"):
                dw = pm(a, d, "tn")
        else:
            with b.because(node, "6"):
                da = pm(w, d, "nt")
            with b.because(node, "2"):
                dw = pm(a, d, "nn")
        if dw.shape != w.shape:                     # a weight read as a matrix [C_out, C_in/groups·kh·kw]
            with b.because(node, "3"):
                dw = b.apply("reshape", dw, shape=w.shape)
        out = [da, dw]
        if len(node.inputs) == 3:
            with b.because(node, "3"):
                out.append(b.apply("sum_to", d, shape=node.inputs[2].shape))
        return out

    def notation(self, p, node, a, b, *bias):
        mode = node.attrs["mode"]
        if mode == "nt":
            z = p.product(a, p.transposed(b))
        elif mode == "tn":
            z = p.product(p.transposed(a), b)
        else:
            z = p.product(a, b)
        return p.call("patch_matmul", [a, b, *bias]) if bias else z
