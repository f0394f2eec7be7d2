"""Convolutions and pooling, NCHW, with torch.nn.functional's names, argument order and weight
layouts: conv2d, conv1d, max_pool2d, avg_pool2d, adaptive_avg_pool2d; and the kernel ops they
lower to: im2col (the patch matrix), col2im (its adjoint) and patch_matmul (the shared GEMM over
the patch matrix, by groups).

conv2d is the notes' matrix product z = P Wᵀ over the patch matrix P = im2col(x) (one row per
output pixel, one column per (channel, kernel row, kernel column)), so its VJPs are identity (5)
for the weight, dJ/dW = δᵀ P, and identity (2) for the patches, dJ/dP = δ W, which col2im sums
back onto x (identity (3): each patch element is a copy of an element of x).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphc.core.errors import ShapeError, SpecError
from graphc.core.ir import TensorType
from graphc.core.opdef import OpDef, register, require_float


# ------------------------------------------------------------------ geometry
def _ints(value, n: int, name: str, low: int) -> tuple[int, ...]:
    """An int or a tuple of n ints, each >= low, as a tuple of n."""
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value,) * n
    if len(vals) != n or any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
        raise SpecError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if any(v < low for v in vals):
        hints = {"stride": "a stride of 0 would never move the kernel", "kernel_size": "a window has at least one element",
                 "dilation": "dilation 1 is a plain kernel", "padding": "padding adds that many zeros on each side: 0 or more"}
        raise ShapeError(f"{name} {value!r} must be >= {low}", hint=hints.get(name))
    return vals


def _divisors_hint(c_in: int, c_out: int) -> str:
    """groups dividing both channel counts, as a hint."""
    ok = [g for g in range(1, min(c_in, c_out) + 1) if c_in % g == 0 and c_out % g == 0]
    shown = ", ".join(map(str, ok[:8])) + (", ..." if len(ok) > 8 else "")
    return f"groups must divide both: {shown}" + (f" ({c_in} is depthwise)" if c_in in ok else "")


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
    kernel = _ints(kernel, 2, "kernel_size", 1)
    stride = _ints(stride, 2, "stride", 1)
    dilation = _ints(dilation, 2, "dilation", 1)
    if padding in ("same", "valid"):
        if padding == "same" and stride != (1, 1):
            raise ShapeError(f"padding='same' needs stride 1, got stride {stride}",
                             hint="give the padding as numbers for a strided convolution")
        total = [0, 0] if padding == "valid" else [d * (k - 1) for d, k in zip(dilation, kernel)]
        pads = (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    elif isinstance(padding, str):
        raise SpecError(f"padding must be an int, a tuple of ints, 'same' or 'valid', got {padding!r}")
    elif isinstance(padding, tuple) and len(padding) == 4 and op == "im2col":   # resolved: top, bottom, left, right
        pads = _ints(padding, 4, "padding", 0)
    else:
        ph, pw = _ints(padding, 2, "padding", 0)
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


def _window_attrs(attrs: dict) -> dict:
    """Lists from the builder as tuples: hashable, as the spec's."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}


def im2col_np(x: np.ndarray, kernel, stride, padding, dilation, pad_value=0.0) -> np.ndarray:
    """x [N, C, H, W] -> patches [N, Ho, Wo, C*kh*kw], columns ordered (channel, row, column)."""
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


def col2im_np(p: np.ndarray, size, kernel, stride, padding, dilation) -> np.ndarray:
    """The adjoint of im2col_np: each patch element added back where it was copied from."""
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


# ------------------------------------------------------------------ the kernel ops
@register
class Im2col(OpDef):
    """The patch matrix of x [N, C, H, W]: one row per output pixel [N, Ho, Wo], one column per
    (channel, kernel row, kernel column); outside x it reads pad_value.

    Backward, identity (3): every patch element is a copy of one element of x (or of the padding),
    so dJ/dx = col2im(δ), each copy's δ summed back where it came from."""

    name = "im2col"
    attrs = {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "pad_value": 0.0}
    tuple_attrs = ("kernel", "stride", "padding", "dilation")
    public = False
    identity = "3"

    def shape(self, x, kernel, stride, padding, dilation, pad_value):
        require_float(x)
        if len(padding) != 4:
            raise ShapeError(f"im2col takes padding (top, bottom, left, right), got {padding}")
        g = geometry(self.name, x, kernel, stride, padding, dilation)
        return TensorType((g.N, g.Ho, g.Wo, g.patch))

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
    """The adjoint of im2col: patches [N, Ho, Wo, C*kh*kw] summed back into an image [N, C, H, W]
    of `size` (H, W); what fell on the padding is dropped.

    Backward, identity (3): each image element is a sum of copies, so dJ/dpatches = im2col(δ)."""

    name = "col2im"
    attrs = {"size": (1, 1), "kernel": (1, 1), "stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1)}
    tuple_attrs = ("size", "kernel", "stride", "padding", "dilation")
    public = False
    identity = "3"

    def shape(self, p, size, kernel, stride, padding, dilation):
        require_float(p)
        K = kernel[0] * kernel[1]
        if p.rank != 4 or isinstance(p.shape[3], str) or p.shape[3] % K:
            raise ShapeError(f"takes patches [N, Ho, Wo, C*{K}], got {p.shape}")
        out = TensorType((p.shape[0], p.shape[3] // K) + tuple(size))
        g = geometry("im2col", out, kernel, stride, padding, dilation)
        if p.shape[1:3] != (g.Ho, g.Wo):
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


# ------------------------------------------------------------------ conv2d, conv1d
def _conv_parts(b, x, w, g: Geometry, groups: int):
    """P = im2col(x), and W, which patch_matmul reads in place as a matrix [C_out, C_in/groups · kh · kw]."""
    return b.apply("im2col", x, **g.attrs()), w


def _conv_geometry(op, x, w, b, stride, padding, dilation, groups):
    """The geometry of conv2d(x, w, b, ...) with every shape checked against torch's rules."""
    if w.rank != 4:
        raise ShapeError(f"takes w of rank 4 [C_out, C_in/groups, kh, kw], got rank {w.rank} {w.shape}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ShapeError(f"groups must be a positive int, got {groups!r}")
    g = geometry(op, x, w.shape[2:], stride, padding, dilation)
    C_out = w.shape[0]
    if g.C % groups or C_out % groups:
        raise ShapeError(f"groups={groups} must divide the input channels ({g.C}) and the output "
                         f"channels ({C_out})", hint=_divisors_hint(g.C, C_out))
    if w.shape[1] != g.C // groups:
        raise ShapeError(f"w is {w.shape}; with {g.C} input channels and groups={groups} its second dim "
                         f"must be {g.C // groups}", hint=f"w of shape ({C_out}, {g.C // groups}, "
                         f"{w.shape[2]}, {w.shape[3]})")
    if b is not None and b.shape != (C_out,):
        raise ShapeError(f"the bias must have shape ({C_out},) (one per output channel), got {b.shape}")
    return g


def direct_depthwise(g: Geometry, w_shape, groups: int) -> bool:
    """Whether a convolution runs as the direct depthwise loop (ops/depthwise.py) rather than
    im2col + one GEMM per group: when it is depthwise (groups == C_in == C_out, one filter per
    channel). Each group's GEMM then has a single output column and C_in/groups·kh·kw inner
    terms, all call and packing overhead: the direct loop was 1.6-16x faster, forward and backward,
    at every shape of benchmarks/depthwise.py on one thread (benchmarks/README.md), and it needs no
    patch matrix in the workspace."""
    return groups > 1 and groups == g.C == w_shape[0] and w_shape[1] == 1


def direct_pointwise(g: Geometry, w_shape, groups: int) -> bool:
    """Whether a convolution runs as one GEMM per image (ops/pointwise.py) rather than im2col + the
    patch GEMM: a 1x1 kernel of stride 1, no padding, dilation 1 and groups 1. x[n] of an NCHW
    image is then already the matrix [C_in, H·W], so z[n] = W x[n] is written in NCHW: no patch
    matrix (an NHWC copy of x, kept for the backward pass) and no permute copy of the output."""
    return groups == 1 and tuple(w_shape[2:]) == (1, 1) and g.stride == (1, 1) and g.padding == (0, 0, 0, 0) \
        and g.dilation == (1, 1)


def _direct_attrs(g: Geometry) -> dict:
    return dict(size=(g.H, g.W), kernel=g.kernel, stride=g.stride, padding=g.padding, dilation=g.dilation)


def conv2d_vjp(b, node, d, x, w, has_bias, g: Geometry, groups: int):
    """dJ/dx, dJ/dw (and dJ/db) of y = conv2d(x, w, b) in the notes' terms, over the patch matrix
    (for a depthwise convolution, the same products per channel, by the direct loop; for a 1x1
    convolution, per image: dJ/dx[n] = Wᵀ δ[n] and dJ/dW = Σ_n δ[n] x[n]ᵀ)."""
    if direct_pointwise(g, w.shape, groups):
        with b.because(node, "2"):
            out = [b.apply("pointwise_conv", d, w, mode="input_grad")]
        with b.because(node, "5"):
            out.append(b.apply("pointwise_conv", x, d, mode="weight_grad"))
        if has_bias:
            with b.because(node, "3"):
                out.append(b.apply("sum", d, axis=(0, 2, 3)))
        return out
    if direct_depthwise(g, w.shape, groups):
        with b.because(node, "2"):
            out = [b.apply("depthwise_conv", d, w, mode="input_grad", **_direct_attrs(g))]
        with b.because(node, "5"):
            out.append(b.apply("depthwise_conv", x, d, mode="weight_grad", **_direct_attrs(g)))
        if has_bias:
            with b.because(node, "3"):
                out.append(b.apply("sum", d, axis=(0, 2, 3)))
        return out
    with b.because(node, "5"):
        P, W2 = _conv_parts(b, x, w, g, groups)
        delta = b.apply("permute", d, axes=(0, 2, 3, 1))        # δ as rows of output pixels [N, Ho, Wo, C_out]
        dw = b.apply("reshape", b.apply("patch_matmul", delta, P, mode="tn", groups=groups), shape=w.shape)
    with b.because(node, "2"):
        dP = b.apply("patch_matmul", delta, W2, mode="nn", groups=groups)
    with b.because(node, "3"):
        dx = b.apply("col2im", dP, size=(g.H, g.W), **{k: v for k, v in g.attrs().items() if k != "pad_value"})
        out = [dx, dw]
        if has_bias:
            out.append(b.apply("sum", d, axis=(0, 2, 3)))
    return out


@register
class Conv2d(OpDef):
    """conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1) as torch.nn.functional:
    x [N, C_in, H, W], w [C_out, C_in/groups, kh, kw], b [C_out]; padding an int, a pair, 'same'
    or 'valid'. With the patch matrix P = im2col(x) [N·Ho·Wo, C_in·kh·kw] it is z = P Wᵀ + b.

    Backward: dJ/dW = δᵀ P, identity (5) (δ as one row per output pixel); dJ/dP = δ W, identity
    (2), summed back onto x by col2im, identity (3); dJ/db = Σ δ over batch and pixels, identity (3)."""

    name = "conv2d"
    arity = 3
    optional_inputs = 1
    positional = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    input_names = ("input", "weight", "bias")
    attrs = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    identity = "2,3,5"

    def check_attrs(self, inputs, attrs):
        return _window_attrs(super().check_attrs(inputs, attrs))

    def shape(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        for t in (x, w) + ((b,) if b is not None else ()):
            require_float(t)
        g = _conv_geometry(self.name, x, w, b, stride, padding, dilation, groups)
        return TensorType((g.N, w.shape[0], g.Ho, g.Wo))

    def _geometry(self, node):
        x, w, *b = node.inputs
        a = node.attrs
        return _conv_geometry(self.name, x.type, w.type, b[0].type if b else None, a["stride"], a["padding"],
                              a["dilation"], a["groups"])

    def reference(self, x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
        g = _conv_geometry(self.name, TensorType(x.shape), TensorType(w.shape), None, stride, padding, dilation,
                           groups)
        P = im2col_np(x, **g.attrs())
        z = PatchMatmul.reference(None, P, w, b, "nt", groups)
        return z.transpose(0, 3, 1, 2)

    def lower(self, b, node):
        x, w, *bias = node.inputs
        g = self._geometry(node)
        groups = node.attrs["groups"]
        if direct_depthwise(g, w.shape, groups):
            return b.apply("depthwise_conv", x, w, *bias, mode="forward", **_direct_attrs(g))
        if direct_pointwise(g, w.shape, groups):
            return b.apply("pointwise_conv", x, w, *bias, mode="forward")
        P, W2 = _conv_parts(b, x, w, g, groups)
        z = b.apply("patch_matmul", P, W2, *bias, mode="nt", groups=groups)   # [N, Ho, Wo, C_out]: NHWC
        return b.apply("permute", z, axes=(0, 3, 1, 2))

    def vjp(self, b, node, d):
        x, w, *bias = node.inputs
        return conv2d_vjp(b, node, d, x, w, bool(bias), self._geometry(node), node.attrs["groups"])


@register
class Conv1d(OpDef):
    """conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1) as torch.nn.functional:
    x [N, C_in, L], w [C_out, C_in/groups, k]: conv2d of a height-1 image.

    Backward as conv2d: dJ/dW = δᵀ P, identity (5); dJ/dP = δ W, identity (2), summed back onto
    x by col2im, identity (3); dJ/db = Σ δ, identity (3)."""

    name = "conv1d"
    arity = 3
    optional_inputs = 1
    positional = Conv2d.positional
    input_names = Conv2d.input_names
    attrs = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    identity = "2,3,5"

    def check_attrs(self, inputs, attrs):
        return _window_attrs(super().check_attrs(inputs, attrs))

    @staticmethod
    def _as_2d(attrs):
        one = lambda v: (1, v[0] if isinstance(v, tuple) else v)  # noqa: E731
        pad = attrs["padding"]
        return dict(stride=one(attrs["stride"]), dilation=one(attrs["dilation"]), groups=attrs["groups"],
                    padding=pad if isinstance(pad, str) else (0, pad[0] if isinstance(pad, tuple) else pad))

    def shape(self, x, w, b=None, **attrs):
        for t in (x, w) + ((b,) if b is not None else ()):
            require_float(t)
        if x.rank != 3:
            raise ShapeError(f"takes x of rank 3 [N, C, L], got rank {x.rank} {x.shape}",
                             hint="an image [N, C, H, W] goes to conv2d" if x.rank == 4 else None)
        if w.rank != 3:
            raise ShapeError(f"takes w of rank 3 [C_out, C_in/groups, k], got rank {w.rank} {w.shape}",
                             hint="a weight [C_out, C_in/groups, kh, kw] goes with conv2d" if w.rank == 4 else None)
        self._check_1d(x, w, **attrs)      # in conv1d's terms, before the height-1 conv2d below
        y = Conv2d.shape(self, TensorType(x.shape[:2] + (1,) + x.shape[2:]), TensorType(w.shape[:2] + (1, w.shape[2])),
                         b, **self._as_2d(attrs))
        return TensorType(y.shape[:2] + y.shape[3:])

    @staticmethod
    def _check_1d(x, w, stride=1, padding=0, dilation=1, groups=1):
        """conv1d's own checks, so that an error speaks of a length, not of a height-1 image."""
        (s,), (d,) = _ints(stride, 1, "stride", 1), _ints(dilation, 1, "dilation", 1)
        if padding == "same" and s != 1:
            raise ShapeError(f"padding='same' needs stride 1, got stride {s}",
                             hint="give the padding as a number for a strided convolution")
        p = 0 if isinstance(padding, str) else _ints(padding, 1, "padding", 0)[0]
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ShapeError(f"groups must be a positive int, got {groups!r}")
        (_, C, L), (C_out, cg, k) = x.shape, w.shape
        if isinstance(C, str) or isinstance(L, str):
            raise ShapeError(f"only the batch dim (first) may be symbolic, x is {x.shape}")
        if C % groups or C_out % groups:
            raise ShapeError(f"groups={groups} must divide the input channels ({C}) and the output "
                             f"channels ({C_out})", hint=_divisors_hint(C, C_out))
        if cg != C // groups:
            raise ShapeError(f"w is {w.shape}; with {C} input channels and groups={groups} its second dim "
                             f"must be {C // groups}", hint=f"w of shape ({C_out}, {C // groups}, {k})")
        span = d * (k - 1) + 1
        padded = L + (span - 1 if padding == "same" else 2 * p)
        if span > padded:
            raise ShapeError(f"the kernel spans {span} (kernel {k}, dilation {d}), longer than the padded "
                             f"input {padded} (length {L}, padding {padding})",
                             hint="use a smaller kernel or dilation, or more padding")

    def reference(self, x, w, b=None, **attrs):
        y = Conv2d.reference(self, x[:, :, None, :], w[:, :, None, :], b, **self._as_2d(attrs))
        return y[:, :, 0, :]

    def _views(self, b, node):
        x, w, *bias = node.inputs
        x4 = b.apply("reshape", x, shape=x.shape[:2] + (1,) + x.shape[2:])
        w4 = b.apply("reshape", w, shape=w.shape[:2] + (1, w.shape[2]))
        return x4, w4, bias

    def lower(self, b, node):
        x4, w4, bias = self._views(b, node)
        y = b.apply("conv2d", x4, w4, *bias, **self._as_2d(node.attrs))
        return b.apply("reshape", y, shape=node.output.shape)

    def vjp(self, b, node, d):
        x, w, *bias = node.inputs
        a = self._as_2d(node.attrs)
        with b.because(node, "3"):
            x4, w4, _ = self._views(b, node)
            d4 = b.apply("reshape", d, shape=d.shape[:2] + (1,) + d.shape[2:])
        g = _conv_geometry(self.name, x4.type, w4.type, None, a["stride"], a["padding"], a["dilation"], a["groups"])
        grads = conv2d_vjp(b, node, d4, x4, w4, bool(bias), g, a["groups"])
        with b.because(node, "3"):
            return [b.apply("reshape", grads[0], shape=x.shape), b.apply("reshape", grads[1], shape=w.shape)] + grads[2:]
