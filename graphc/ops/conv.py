"""Convolutions, NCHW, with torch.nn.functional's names, argument order and weight layouts:
conv2d and conv1d, and which form each lowers to: the direct depthwise loop (depthwise.py), one
GEMM per image for a 1x1 kernel (pointwise.py), or else the kernel ops of patches.py: im2col (the
patch matrix), col2im (its adjoint) and patch_matmul (the shared GEMM over the patch matrix, by
groups). Where the windows sit is windows.py's Geometry, which pooling (pool.py) shares.

conv2d is the notes' matrix product z = P Wᵀ over the patch matrix P = im2col(x) (one row per
output pixel, one column per (channel, kernel row, kernel column)), so its VJPs are identity (5)
for the weight, dJ/dW = δᵀ P, and identity (2) for the patches, dJ/dP = δ W, which col2im sums
back onto x (identity (3): each patch element is a copy of an element of x). With groups 1 the
same product runs transposed, per image, over the patch planes (patch_planes below): z[n] = W P[n]
with P[n] [C_in·kh·kw, Ho·Wo], so dJ/dW = Σ_n δ[n] P[n]ᵀ, identity (5), and dJ/dP[n] = Wᵀ δ[n],
identity (1).
"""
from __future__ import annotations

from graphc.core.errors import ShapeError
from graphc.core.ir import TensorType
from graphc.core.opdef import OpDef, register, require_float
from graphc.ops.patches import PatchMatmul
from graphc.ops.windows import Geometry, geometry, im2col_np, window_attrs, window_ints


def _divisors_hint(c_in: int, c_out: int) -> str:
    """groups dividing both channel counts, as a hint."""
    ok = [g for g in range(1, min(c_in, c_out) + 1) if c_in % g == 0 and c_out % g == 0]
    shown = ", ".join(map(str, ok[:8])) + (", ..." if len(ok) > 8 else "")
    return f"groups must divide both: {shown}" + (f" ({c_in} is depthwise)" if c_in in ok else "")


# ------------------------------------------------------------------ conv2d, conv1d
def _conv_parts(b, x, w, g: Geometry, groups: int):
    """P = im2col(x), and W, which patch_matmul reads in place as a matrix [C_out, C_in/groups · kh · kw]."""
    return b.apply("im2col", x, **g.attrs()), w


def _plane_parts(b, x, w, g: Geometry):
    """P = im2col(x) as planes [N, C_in·kh·kw, Ho, Wo], and W read as [C_out, C_in·kh·kw, 1, 1]
    (a reshape: no copy)."""
    P = b.apply("im2col", x, layout="nchw", **g.attrs())
    return P, b.apply("reshape", w, shape=(w.shape[0], g.patch, 1, 1))


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


# The least multiply-adds per image for the patch planes: below it a GEMM call per image costs more
# than it saves (the digits CNN's 16 x 64 x 9 and 32 x 16 x 144 per image: its train step went from
# 0.8 to 1.1 ms with them); ResNet-8's smallest, the 1x1 stride-2 shortcuts, have 131,072.
PLANES_WORK = 100_000


def patch_planes(g: Geometry, w_shape, groups: int) -> bool:
    """Whether a convolution runs as the patch planes P = im2col(x, layout="nchw") [N, C_in·kh·kw, Ho,
    Wo] and one GEMM per image over them (pointwise_conv: z[n] = W P[n], a 1x1 convolution of the
    planes) rather than the patch rows [N·Ho·Wo, C_in·kh·kw] and one GEMM for the batch: for groups 1
    and at least PLANES_WORK multiply-adds per image. The GEMM's long dimension is then its N (the
    Ho·Wo pixels, vectorised) rather than C_out (16 in ResNet-8: a narrow, mostly packing-bound
    product), it writes z in NCHW (no permute of z, nor of δ in the backward pass), the bias is a row
    per channel, and the planes are made (and col2im'd back) image by image inside the GEMM's kernel,
    in cache (backend/fusion.py's IMAGE_PLANES), never stored for the batch. ResNet-8's train step at
    batch 64 went from 147 to 71 ms of CPU time on one AVX-512 core (README, Convolutional models)."""
    return groups == 1 and w_shape[0] * g.patch * g.Ho * g.Wo >= PLANES_WORK


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
    if patch_planes(g, w.shape, groups):
        with b.because(node, "5"):
            # dJ/dWᵀ = Σ_n P[n] δ[n]ᵀ [C_in·kh·kw, C_out], then transposed: that GEMM has the
            # long patch side as its rows and reads P[n] in place (only δ[n] is packed), where
            # δ[n] P[n]ᵀ packs P[n] transposed; 2.1x faster at ResNet-8's 16 x 144 x 1024 (AVX-512)
            P, W4 = _plane_parts(b, x, w, g)
            dwt = b.apply("pointwise_conv", d, P, mode="weight_grad")
            dw = b.apply("reshape", b.apply("permute", dwt, axes=(1, 0, 2, 3)), shape=w.shape)
        with b.because(node, "1"):
            dP = b.apply("pointwise_conv", d, W4, mode="input_grad")
        with b.because(node, "3"):
            out = [b.apply("col2im", dP, size=(g.H, g.W), layout="nchw",
                           **{k: v for k, v in g.attrs().items() if k != "pad_value"}), dw]
            if has_bias:
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
    (2), summed back onto x by col2im, identity (3); dJ/db = Σ δ over batch and pixels, identity (3).
    With groups 1, per image over the patch planes: dJ/dW = Σ_n δ[n] P[n]ᵀ, identity (5);
    dJ/dP[n] = Wᵀ δ[n], identity (1), summed back by col2im, identity (3)."""

    name = "conv2d"
    arity = 3
    optional_inputs = 1
    positional = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    input_names = ("input", "weight", "bias")
    attrs = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    identity = "1,2,3,5"

    def check_attrs(self, inputs, attrs):
        return window_attrs(super().check_attrs(inputs, attrs))

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
        if patch_planes(g, w.shape, groups):
            P, W4 = _plane_parts(b, x, w, g)
            return b.apply("pointwise_conv", P, W4, *bias, mode="forward")   # [N, C_out, Ho, Wo]: NCHW
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
    x by col2im, identity (3); dJ/db = Σ δ, identity (3); with groups 1, per image over the patch
    planes, dJ/dW = Σ_n δ[n] P[n]ᵀ, identity (5), and dJ/dP[n] = Wᵀ δ[n], identity (1)."""

    name = "conv1d"
    arity = 3
    optional_inputs = 1
    positional = Conv2d.positional
    input_names = Conv2d.input_names
    attrs = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    identity = "1,2,3,5"

    def check_attrs(self, inputs, attrs):
        return window_attrs(super().check_attrs(inputs, attrs))

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
        (s,), (d,) = window_ints(stride, 1, "stride", 1), window_ints(dilation, 1, "dilation", 1)
        if padding == "same" and s != 1:
            raise ShapeError(f"padding='same' needs stride 1, got stride {s}",
                             hint="give the padding as a number for a strided convolution")
        p = 0 if isinstance(padding, str) else window_ints(padding, 1, "padding", 0)[0]
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
