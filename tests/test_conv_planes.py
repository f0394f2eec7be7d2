"""Convolutions of groups 1 over the patch planes (ops/conv.py's patch_planes): im2col in layout
"nchw" and one GEMM per image, z[n] = W P[n], with each image's planes made (and the input
gradient's planes summed back) inside the GEMM's kernel (backend/fusion.py's IMAGE_PLANES and
IMAGE_COL2IM). Small test shapes fall under conv.PLANES_WORK and take the batch-wide patch rows;
these tests set it to 0 so that every dense convolution of tests/test_ops_cnn.py's CNN spec
(padding, stride, dilation, conv1d, no bias) takes the planes. tests/test_cnn_options.py's blocking
test covers the default threshold (its 17 -> 33 channel 9x9 layer is above it).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import graphc
import graphc.ops.conv as conv
from graphc.backend.codegen import generate
from test_ops_cnn import CNN, CONV_RELU


@pytest.fixture
def planes(monkeypatch):
    monkeypatch.setattr(conv, "PLANES_WORK", 0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_patch_planes_c_matches_reference_and_finite_differences(planes, dtype):
    """The CNN spec's conv2d (bias, padding 1) and conv1d (stride 2, padding 1, dilation 2) over the
    planes, made per image in the GEMM's kernel and summed back into dJ/dx and dJ/ds: forward and every
    gradient, C against NumPy (and the reference against finite differences)."""
    g = graphc.parse_spec(CNN, "cnn.toml")
    src = generate(g, *g.grad_spec, dtype=dtype).source
    # y's and q's planes (z's convolution has groups 2: patch rows), in the forward and weight gradients
    assert src.count("patch planes, made here (y__0__0)") == 2 and src.count("made here (q__2__0)") == 3, src
    assert "patch planes, summed back here (d_x)" in src and src.count("patch planes, summed back here") == 2
    assert "gc_real *gc_col = z__0 + " in src, "the grouped convolution's patch rows"
    report = graphc.check(g, dtype=dtype)
    assert report.ok, str(report)


def test_patch_planes_vjps_are_the_notes_identities_in_explain(planes):
    """dJ/dW = (Σ over the images of P δᵀ)ᵀ with P = im2col(x) the planes of an image, identity (5);
    dJ/dx = col2im(Wᵀ δ), identity (1): z = W P per image."""
    g = graphc.parse_spec(CNN, "cnn.toml")
    lines = graphc.explain(g, of="J", wrt=["w", "x"]).splitlines()
    dw = next(line for line in lines if line.startswith("∂J/∂w"))
    assert re.search(r"permute\(Σ_images im2col\(x\) δ\d*ᵀ\)", dw) and "identity (5)" in dw, dw
    dx = next(line for line in lines if line.startswith("∂J/∂x"))
    assert re.search(r"col2im\(reshape\(w\)ᵀ δ\d*\)", dx) and "(1)" in dx, dx


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_patch_planes_write_nchw_with_the_bias_and_relu_in_the_gemm(planes, dtype):
    """relu(conv2d(x, w, b)): the GEMM of each image writes h in NCHW itself (no permute), the bias
    filled into h's rows first, the relu in its epilogue, and no loop of its own for the relu."""
    g = graphc.parse_spec(CONV_RELU, "conv_relu.toml")
    src = generate(g, dtype=dtype).source
    forward = src[src.index("int conv_relu_forward("):]
    forward = forward[:forward.index("\n}\n")]
    gemm = re.search(r"gc_gemm_bias_act(?:_on)?\([^;]*;", forward).group(0)
    assert "gc_o, 63, gc_pack, gc_inner, NULL, GC_ACT_RELU)" in gemm, gemm
    assert "gc_real *gc_o = h + gc_n * (8 * 63);" in forward and "gc_o[gc_c * 63 + gc_p] = b[gc_c];" in forward
    assert not re.search(r"\n\s*h\[[^\]]*\] = [a-z_0-9]+\[[^\]]*\];", forward), "no permute writes h"
    assert forward.count("<= 0 ? 0 :") == 1, "one relu loop: the depthwise convolution's"
    assert forward.count("patch planes, made here") == 1 and "gc_col" not in forward
    report = graphc.check(g, dtype=dtype)
    assert report.ok, str(report)


LAYER = """name = "planes_layer"
[dims]
N = "batch"
[inputs]
x = ["N", 16, 32, 32]
[params]
w = [16, 16, 3, 3]
b = [16]
v = [32, 16, 3, 3]
[graph]
h = "relu(conv2d(x, w, b, padding=1))"
z = "conv2d(h, v, stride=2, padding=1)"
J = "mean(z * z)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["w", "b", "v", "x"]
"""


def test_patch_planes_are_never_stored_for_the_batch(monkeypatch):
    """ResNet-8's 16-channel 32x32 layer at batch 8, value_and_grad: the patch matrix of the batch
    (8 x 144 x 1024 floats, 4.7 MB) is in the workspace of the batch-wide patch rows (forced here)
    and not in that of the planes, which holds one image's planes at a time."""
    g = graphc.parse_spec(LAYER, "layer.toml")
    patch_matrix = 8 * 144 * 1024 * 4
    with_planes = generate(g, *g.grad_spec, dtype="float32").workspace_parts(8)[0]
    monkeypatch.setattr(conv, "PLANES_WORK", 10 ** 12)
    with_rows = generate(g, *g.grad_spec, dtype="float32").workspace_parts(8)[0]
    # the rows' workspace holds the batch's patch matrix (other buffers may use its gap: memory.py's
    # recompute rule); the planes' workspace is smaller than that matrix alone
    assert with_planes < patch_matrix <= with_rows, (with_planes, with_rows)


@pytest.mark.parametrize("batch", [3, 20])
def test_patch_planes_give_the_same_bits_on_1_and_2_threads(batch):
    """The per-image GEMMs and the per-image planes, the images shared out among the threads (at
    batch 3: the weight gradients' one chunk of images by GEMMs split over the threads instead; at
    batch 20: three chunks of 8, 8 and 4 images, two rounds on 2 threads, the second with one chunk):
    the same bits of the loss and of every gradient on 1 and 2 threads, and close to the reference."""
    g = graphc.parse_spec(LAYER, "layer.toml")
    rng = np.random.default_rng(5)
    arrays = {"x": rng.standard_normal((batch, 16, 32, 32)), "w": 0.1 * rng.standard_normal((16, 16, 3, 3)),
              "b": 0.1 * rng.standard_normal(16), "v": 0.1 * rng.standard_normal((32, 16, 3, 3))}
    got = []
    for threads in (1, 2):
        m = graphc.compile(g, dtype="float32", threads=threads)
        m.lib.gc_kernels_busy_hold(0.0)     # two threads even on a busy machine
        got.append(m.value_and_grad(**{k: a.astype(np.float32) for k, a in arrays.items()}))
    (o1, g1), (o2, g2) = got
    assert o1["loss"].tobytes() == o2["loss"].tobytes()
    for k in g1:
        assert g1[k].tobytes() == g2[k].tobytes(), k
    want = graphc.evaluate(graphc.grad(g, "J", ["w", "b", "v", "x"]), **arrays)
    for k in g1:
        np.testing.assert_allclose(g1[k], want[f"d_{k}"], rtol=2e-3, atol=2e-4 * np.abs(want[f"d_{k}"]).max())


def test_residual_sum_and_relu_run_in_the_later_convolutions_kernel():
    """relu(conv2d(h, w2) + s) and relu(conv2d(a, w3, b3) + conv2d(a, w4)) (tests/specs/planes_residual.toml):
    the kernel of the (later) convolution fills each image's output with r (+ its bias), adds its
    product and applies the relu: no loop of their own for the sums or the relus, and the sums are
    never stored; value_and_grad as the reference's, and the same bits on 1 and 2 threads at batch 12."""
    g = graphc.load(Path(__file__).resolve().parent / "specs" / "planes_residual.toml")
    src = generate(g, *g.grad_spec, dtype="float32").source
    forward = src[src.index("planes_residual_forward_pass("):]
    forward = forward[:forward.index("\n}\n")]
    assert forward.count("(and the bias) filled in first") == 2, forward
    # a: r = s = x * x (computed by a loop of its own, not inlined into the sum, which has no loop);
    # z: the 1x1 convolution (the later) adds the 3x3's output, which has its bias already
    assert forward.count("gc_o[gc_c * 256 + gc_p] = gc_r[gc_c * 256 + gc_p];") == 2, forward
    assert "<= 0 ? 0 :" not in forward, "no relu loop: all three in the GEMMs' epilogues"
    assert re.search(r"\bs\w*\[i\] = x\[i\] \* x\[i\];", forward), "s is stored for the kernel"
    rng = np.random.default_rng(7)
    shapes = {"x": (12, 8, 16, 16), "w1": (8, 8, 3, 3), "b1": (8,), "w2": (8, 8, 3, 3), "w3": (16, 8, 3, 3),
              "b3": (16,), "w4": (16, 8, 1, 1)}
    arrays = {k: 0.3 * rng.standard_normal(shape) for k, shape in shapes.items()}
    got = []
    for threads in (1, 2):
        m = graphc.compile(g, dtype="float32", threads=threads)
        m.lib.gc_kernels_busy_hold(0.0)
        got.append(m.value_and_grad(**{k: a.astype(np.float32) for k, a in arrays.items()}))
    (o1, g1), (o2, g2) = got
    assert o1["loss"].tobytes() == o2["loss"].tobytes()
    assert all(g1[k].tobytes() == g2[k].tobytes() for k in g1)
    want = graphc.evaluate(graphc.grad(g, *g.grad_spec), **arrays)
    for k in g1:
        np.testing.assert_allclose(g1[k], want[f"d_{k}"], rtol=2e-3, atol=2e-4 * np.abs(want[f"d_{k}"]).max())
