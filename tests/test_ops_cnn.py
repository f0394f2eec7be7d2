"""The ops of the CNN issue in C: activations, rank-4 layout ops, convolutions and pooling.

Each test compiles one spec holding several ops (a compile costs a second or two on 2 cores)
and runs graphc.check on it: the C forward and gradients against the NumPy reference in float32
and float64, and the reference gradients against central finite differences in float64. The
per-op references and VJPs on drawn shapes are in tests/test_ops.py.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphc

ACTIVATIONS = """name = "acts"
[dims]
N = "batch"
D = 6
[inputs]
x = ["N", "D"]
[params]
W = ["D", "D"]
[graph]
z = "x @ W"
a = "leaky_relu(z, negative_slope=0.2) + elu(z) + softplus(z, beta=2.0) + gelu(z) + silu(z)"
c = "gelu(z, approximate='tanh') * erf(z) + leaky_relu(z) + elu(z, 0.5) + softplus(z * 15, threshold=5.0)"
J = "mean(a * c)"
[outputs]
loss = "J"
act = "a"
[grad]
of = "J"
wrt = ["W", "x"]
"""


def test_activations_c_matches_reference_and_finite_differences():
    # (float32 C: tests/test_backend.py's tensor graph)
    report = graphc.check(graphc.parse_spec(ACTIVATIONS, "acts.toml"), dtype="float64")
    assert report.ok, str(report)


def test_activation_keywords_are_checked():
    with pytest.raises(graphc.GraphcError, match="approximate must be 'none' or 'tanh'"):
        graphc.parse_spec(ACTIVATIONS.replace("approximate='tanh'", "approximate='fast'"), "acts.toml")
    with pytest.raises(graphc.GraphcError, match="beta must be > 0"):
        graphc.parse_spec(ACTIVATIONS.replace("beta=2.0", "beta=0"), "acts.toml")


def test_activations_agree_with_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.linspace(-4, 4, 41)
    t = torch.tensor(x)
    g = graphc.Graph("t")
    v = g.input("x", (41,))
    pairs = [(graphc.leaky_relu(v, negative_slope=0.2), F.leaky_relu(t, 0.2)), (graphc.elu(v), F.elu(t)),
             (graphc.softplus(v, beta=2.0), F.softplus(t, beta=2.0)), (graphc.gelu(v), F.gelu(t)),
             (graphc.gelu(v, approximate="tanh"), F.gelu(t, approximate="tanh")), (graphc.silu(v), F.silu(t))]
    for i, (ours, _) in enumerate(pairs):
        g.output(f"o{i}", ours)
    got = graphc.evaluate(g, x=x)
    for i, (_, want) in enumerate(pairs):
        np.testing.assert_allclose(got[f"o{i}"], want.numpy(), rtol=1e-12, atol=1e-12)


RANK4 = """name = "rank4"
[dims]
N = "batch"
C = 3
H = 5
W = 4
[inputs]
x = ["N", "C", "H", "W"]
[params]
s = ["C", 1, 1]
t = [1, "W"]
u = ["C", "H"]
[graph]
a = "tanh(x * s + t)"
p = "permute(a, (0, 2, 3, 1))"
q = "concat(a[:, 0:2, 1:4], a[:, 1:, 0:5:2], axis=2)"
r = "sum(q, axis=(2, 3), keepdims=True) + reshape(mean(p, axis=-1)[:, 0, 1], (N, 1, 1, 1))"
f = "flatten(a[..., ::3] * reshape(u, (C, -1, 1)))"
J = "sum(r * r) + sum(f ** 2) + mean(sigmoid(a.T))"
[outputs]
loss = "J"
q = "q"
f = "f"
[grad]
of = "J"
wrt = ["s", "t", "u", "x"]
"""


def test_rank4_layout_ops_c_matches_reference_and_finite_differences():
    # (float32 C: tests/test_backend.py's tensor graph)
    report = graphc.check(graphc.parse_spec(RANK4, "rank4.toml"), dtype="float64")
    assert report.ok, str(report)


CNN = """name = "cnn"
[dims]
N = "batch"
[inputs]
x = ["N", 2, 7, 6]
s = ["N", 3, 9]
[params]
w = [4, 2, 3, 3]
b = [4]
v = [6, 2, 2, 2]
d = [4, 1, 3, 3]
k = [2, 3, 3]
[graph]
y = "relu(conv2d(x, w, b, padding=1))"
z = "conv2d(y, v, None, 2, 0, (1, 2), 2)"
e = "conv2d(y, d, padding='same', groups=4)"
p = "max_pool2d(e, 2) + avg_pool2d(e[:, :, 1:, ::2], (2, 1)) + avg_pool2d(e, 3, stride=2, padding=(0, 1))"
q = "conv1d(s, k, stride=2, padding=1, dilation=2)"
J = "mean(z * z) + sum(adaptive_avg_pool2d(p, 1)) + mean(max(q, axis=2) ** 2)"
[outputs]
loss = "J"
z = "z"
p = "p"
[grad]
of = "J"
wrt = ["w", "b", "v", "d", "k", "x", "s"]
"""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_conv_and_pool_c_matches_reference_and_finite_differences(dtype):
    """conv2d with bias and padding, grouped strided dilated conv2d without bias (torch's positional
    arguments), depthwise 'same', max and avg pooling, global average pooling, conv1d, max."""
    report = graphc.check(graphc.parse_spec(CNN, "cnn.toml"), dtype=dtype)
    assert report.ok, str(report)


def test_conv_vjps_are_the_notes_identities_in_explain():
    """dJ/dw = δᵀ P over the patch matrix P = im2col(x), identity (5); dJ/dx through col2im."""
    g = graphc.parse_spec(CNN, "cnn.toml")
    lines = graphc.explain(g, of="J", wrt=["w", "x"]).splitlines()
    dw = next(line for line in lines if line.startswith("∂J/∂w"))
    assert re.search(r"δ\d*\)?ᵀ im2col\(x\)\)", dw) and "identity (5)" in dw, dw
    dx = next(line for line in lines if line.startswith("∂J/∂x"))
    assert "col2im(" in dx and "(2)" in dx, dx


def test_conv_errors_name_the_line_the_op_the_shapes_and_the_fix():
    bad = CNN.replace('z = "conv2d(y, v, None, 2, 0, (1, 2), 2)"', 'z = "conv2d(y, v, groups=3)"')
    with pytest.raises(graphc.ShapeError) as e:
        graphc.parse_spec(bad, "cnn.toml")
    text = str(e.value)
    assert text.startswith("cnn.toml:15:") and "conv2d" in text and "(N, 4, 7, 6)" in text
    assert "groups=3 must divide the input channels (4) and the output channels (6)" in text
    bad = CNN.replace("padding=1))", "stride=0))")
    with pytest.raises(graphc.ShapeError, match="stride 0 must be >= 1"):
        graphc.parse_spec(bad, "cnn.toml")
    bad = CNN.replace('q = "conv1d(s, k, stride=2, padding=1, dilation=2)"', 'q = "conv1d(s, k, dilation=5)"')
    with pytest.raises(graphc.ShapeError, match=r"kernel spans 11 \(kernel 3, dilation 5\), longer than the padded input 9"):
        graphc.parse_spec(bad, "cnn.toml")


def test_conv_and_pool_agree_with_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    g = graphc.parse_spec(CNN, "cnn.toml")
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal([3 if d == "N" else d for d in v.shape]) for k, v in {**g.inputs, **g.params}.items()}
    t = {k: torch.tensor(a, requires_grad=True) for k, a in arrays.items()}
    y = F.relu(F.conv2d(t["x"], t["w"], t["b"], padding=1))
    z = F.conv2d(y, t["v"], None, 2, 0, (1, 2), 2)
    e = F.conv2d(y, t["d"], padding="same", groups=4)
    p = F.max_pool2d(e, 2) + F.avg_pool2d(e[:, :, 1:, ::2], (2, 1)) + F.avg_pool2d(e, 3, stride=2, padding=(0, 1))
    q = F.conv1d(t["s"], t["k"], stride=2, padding=1, dilation=2)
    J = (z * z).mean() + F.adaptive_avg_pool2d(p, 1).sum() + (q.max(dim=2).values ** 2).mean()
    J.backward()
    ours = graphc.evaluate(graphc.grad(g, "J", list(arrays)), **arrays)
    np.testing.assert_allclose(graphc.evaluate(g, **arrays)["loss"], J.item(), rtol=1e-10)
    for k in arrays:
        np.testing.assert_allclose(ours[f"d_{k}"], t[k].grad.numpy(), rtol=1e-8, atol=1e-10)


def test_specs_with_the_new_ops_write_back_as_specs_that_compute_the_same():
    """graphc import's writer: conv, pooling, activation keywords and subscripts read back the same."""
    from graphc.frontend.spec_writer import to_spec
    for spec in (CNN, RANK4, ACTIVATIONS):
        g = graphc.parse_spec(spec, "a.toml")
        back = graphc.parse_spec(to_spec(g), "b.toml")
        rng = np.random.default_rng(0)
        arrays = {k: rng.standard_normal([3 if d == "N" else d for d in v.shape])
                  for k, v in {**g.inputs, **g.params}.items()}
        want, got = graphc.evaluate(g, **arrays), graphc.evaluate(back, **arrays)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-12)


def test_torch_argument_order_and_keywords_in_the_spec_and_the_builder():
    """conv2d(x, w, bias=b), layer_norm(x, shape, weight, bias, eps) by position or keyword: the same node."""
    head = 'name = "k"\n[dims]\nN = "batch"\n[inputs]\nx = ["N", 2, 5, 5]\n[params]\nw = [3, 2, 3, 3]\nb = [3]\n' \
           'g = [5]\n[graph]\n'
    forms = ['conv2d(x, w, b, 2, 1)', 'conv2d(x, w, bias=b, stride=2, padding=1)', 'conv2d(x, w, b, padding=1, stride=2)',
             'layer_norm(x, (5,), g, None, 0.1)', 'layer_norm(x, normalized_shape=5, weight=g, eps=0.1)']
    nodes = []
    for form in forms:
        g = graphc.parse_spec(head + f'y = "{form}"\n[outputs]\ny = "y"\n', "k.toml")
        n = g.values["y"].node
        nodes.append((n.op.name, [v.name for v in n.inputs], n.attrs))
    assert nodes[0] == nodes[1] == nodes[2] and nodes[3] == nodes[4]
    g = graphc.Graph("k")
    x, w, b = g.input("x", ("N", 2, 5, 5)), g.param("w", (3, 2, 3, 3)), g.param("b", (3,))
    y = graphc.conv2d(x, w, bias=b, stride=2, padding=1)
    assert ([v.name for v in y.node.inputs], y.node.attrs) == nodes[0][1:]
    with pytest.raises(graphc.GraphcError, match="bias is given without weight"):
        graphc.layer_norm(x, (5,), None, b)


CONV_RELU = """name = "conv_relu"
[dims]
N = "batch"
[inputs]
x = ["N", 3, 9, 7]
y = { shape = ["N"], dtype = "int32" }
[params]
w = [8, 3, 3, 3]
b = [8]
d = [8, 1, 3, 3]
e = [8]
U = [5, 120]
[graph]
h = "relu(conv2d(x, w, b, padding=1))"
k = "relu(conv2d(h, d, e, stride=2, padding=1, groups=8))"
J = "cross_entropy(flatten(k[:, :, :, 1:]) @ U.T, y)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["w", "b", "d", "e", "U", "x"]
"""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_conv_bias_and_relu_run_in_the_gemm_epilogue_and_the_depthwise_loop(dtype):
    """relu(conv2d(x, w, b)): the bias and the relu in the patch GEMM's epilogue (GC_ACT_RELU), h
    written by the permute to NCHW, no loop of its own for the relu; the depthwise convolution's
    relu inside its direct loop, which makes no patch matrix. C vs NumPy in both dtypes."""
    from graphc.backend.codegen import generate
    g = graphc.parse_spec(CONV_RELU, "conv_relu.toml")
    src = generate(g, dtype=dtype).source
    forward = src[src.index("int conv_relu_forward("):]
    forward = forward[:forward.index("\n}\n")]
    gemm = re.search(r"gc_gemm_bias_act\([^;]*;", forward).group(0)
    assert ", b, GC_ACT_RELU)" in gemm, gemm
    assert re.search(r"\n\s*h\[[^\]]*\] = [a-z_0-9]+\[[^\]]*\];", forward), "the permute writes h"
    assert "<= 0 ? 0 :" in forward and forward.count("<= 0 ? 0 :") == 1, "one relu: the depthwise loop's"
    assert "gc_orow[gc_ow] = gc_orow[gc_ow] <= 0 ? 0 : gc_orow[gc_ow];" in forward
    assert re.search(r"gc_real \*gc_o = k_v \+", forward), "the depthwise loop writes k"
    assert forward.count("gc_real *gc_col = ") == 1, "one patch matrix (the dense conv's), none for the depthwise one"
    report = graphc.check(g, dtype=dtype)
    assert report.ok, str(report)


def test_depthwise_inference_needs_no_patch_matrix_in_the_workspace(monkeypatch):
    """A DS-CNN depthwise layer (64 channels, 25x5, 3x3) at batch 1: the direct loop's workspace
    holds the 32,000-byte output and no 288,000-byte patch matrix (im2col's, forced here)."""
    import graphc.ops.conv as conv
    spec = """name = "dw_ws"
[dims]
N = "batch"
[inputs]
x = ["N", 64, 25, 5]
[params]
w = [64, 1, 3, 3]
b = [64]
[graph]
h = "relu(conv2d(x, w, b, padding=1, groups=64))"
[outputs]
h = "h"
"""
    direct = graphc.compile(graphc.parse_spec(spec, "dw.toml"), dtype="float32").workspace(1).nbytes
    monkeypatch.setattr(conv, "direct_depthwise", lambda *a: False)
    patches = graphc.compile(graphc.parse_spec(spec, "dw.toml"), dtype="float32").workspace(1).nbytes
    assert direct < 1024 < 288_000 <= patches, (direct, patches)


POINTWISE = """name = "pointwise"
[dims]
N = "batch"
[inputs]
x = ["N", 3, 9, 8]
s = ["N", 4, 7]
y = { shape = ["N"], dtype = "int32" }
[params]
w1 = [17, 3, 1, 1]
b1 = [17]
w2 = [34, 17, 1, 1]
w3 = [66, 34, 1, 1]
b3 = [66]
w4 = [5, 66, 1, 1]
k = [6, 4, 1]
kb = [6]
U = [4, 362]
[graph]
h1 = "relu(conv2d(x, w1, b1))"
h2 = "conv2d(h1, w2, padding='same')"
h3 = "tanh(conv2d(h2, w3, b3, padding='valid'))"
h4 = "relu(conv2d(h3, w4))"
q = "conv1d(s, k, kb)"
J = "cross_entropy(flatten(h4[:, :, 1:, :]) @ U[:, :320].T + flatten(q) @ U[:, 320:].T, y) + mean(h2 * h2)"
[outputs]
loss = "J"
h4 = "h4"
q = "q"
[grad]
of = "J"
wrt = ["w1", "b1", "w2", "w3", "b3", "w4", "k", "kb", "x", "s"]
"""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_pointwise_convs_run_as_one_gemm_per_image_without_patches(dtype):
    """1x1 convolutions (stride 1, no padding, groups 1; with and without bias, followed by relu or not;
    3 -> 17 -> 34 -> 66 -> 5 channels, across the GEMM's tile sizes; and a conv1d of kernel 1) run as
    one GEMM per image in NCHW (ops/pointwise.py): no patch matrix, no permute copy, the relu in the
    GEMM's epilogue; the weight gradients over the 72 pixels of x by chunks of 64 and 8. C vs NumPy
    (and the reference vs finite differences) in both dtypes."""
    from graphc.backend.codegen import generate
    g = graphc.parse_spec(POINTWISE, "pointwise.toml")
    c = generate(g, *g.grad_spec, dtype=dtype)
    assert "gc_col" not in c.source, "no im2col nor col2im"
    kinds = [st.kind for f in c.functions for st in f.steps if st.kind_name == "pointwise"]
    assert {"forward", "input_grad", "weight_grad"} <= set(kinds)
    assert "gc_p += 64) {" in c.source, "x's 72 pixels in chunks for the weight gradients"
    forward = c.source[c.source.index("void pointwise_forward_pass("):]     # (shared by the entry points)
    forward = forward[:forward.index("\n}\n")]
    assert forward.count("GC_ACT_RELU") == 2, "h1's and h4's relus in their GEMMs' epilogues"
    assert "<= 0 ? 0 :" not in forward, "no relu loop"
    report = graphc.check(g, dtype=dtype)
    assert report.ok, str(report)


def test_pointwise_backward_keeps_no_nhwc_copy_of_the_input(monkeypatch):
    """A DS-CNN pointwise layer (64 -> 64 channels, 25x5) at batch 1, value_and_grad: one GEMM per
    image reads x in place, so the workspace holds no NHWC copy of x for dJ/dW and no permuted copy
    of the output: its buffers are NCHW values, the weight's shape and scalars, and it is smaller
    than with the direct path forced off (the per-image patch planes then: since the arena is
    exact at n = 1, 16,320 bytes smaller, not the 32,000 of an im2col matrix it once was)."""
    import graphc.ops.conv as conv
    spec = """name = "pw_ws"
[dims]
N = "batch"
[inputs]
x = ["N", 64, 25, 5]
[params]
w = [64, 64, 1, 1]
b = [64]
[graph]
h = "relu(conv2d(x, w, b))"
J = "mean(h * h)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["w", "b", "x"]
"""
    from graphc.backend.codegen import generate
    g = graphc.parse_spec(spec, "pw.toml")
    c = generate(g, *g.grad_spec, dtype="float32")
    direct = c.workspace_parts(1)[0]
    shapes = {b.name: b.shape for f in c.functions if f.name == "value_and_grad" for b in f.sched.buffers.values()}
    assert shapes and all(s in (("N", 64, 25, 5), (64, 64, 1, 1), ()) for s in shapes.values()), shapes
    monkeypatch.setattr(conv, "direct_pointwise", lambda *a: False)
    patches = generate(g, *g.grad_spec, dtype="float32").workspace_parts(1)[0]
    assert direct < patches, (direct, patches)
