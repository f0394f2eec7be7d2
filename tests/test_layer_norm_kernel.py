"""layer_norm as one row kernel (templates/kernels/layer_norm.c.j2) and the layout views of a
transformer's head split (backend/fusion.py: RESHAPE_ALIAS, SLICE_THROUGH, PLACE_SUM).

The C of each is compared with the NumPy reference (forward and every gradient, float32 and
float64), the reference's gradients with central differences, and the emitted C is checked for
the shape the change gives it: one pass per layer norm and per pair of its gradients, no copy for
a reshape, one strided copy per head split and its gradient written into the columns of the sum."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphc
from graphc.backend.codegen import generate

from helpers import check_finite_differences
from test_seq_ops import check_c, random_inputs

LN_SPEC = """
name = "ln_rows"
[dims]
N = "batch"
C = 6
[inputs]
x = ["N", 2, "C"]
y = ["N", 2, "C"]
[params]
g  = ["C"]
bb = ["C"]
g2 = [2, "C"]
W  = ["C", "C"]
[graph]
a = "layer_norm(x, (C,), g, bb) @ W.T"
b = "layer_norm(a * x, (2, C), g2, eps=0.1)"
c = "layer_norm(b + a, (C,))"
J = "mse(c + layer_norm(x, (C,)), y)"
[outputs]
loss = "J"
c = "c"
[grad]
of = "J"
wrt = ["x", "g", "bb", "g2", "W"]
"""


@pytest.fixture(scope="module")
def ln_graph():
    return graphc.parse_spec(LN_SPEC, "ln_rows.toml")


def test_layer_norm_gradients_of_the_reference_match_finite_differences(ln_graph):
    """dJ/dx through four layer norms (affine, over two axes with a weight only, plain twice)
    and dJ/dweight, dJ/dbias: the closed form of layer_norm_grad against central differences."""
    arrays = random_inputs(ln_graph, {"N": 2}, np.random.default_rng(3))
    check_finite_differences(ln_graph, arrays, ["x", "g", "bb", "g2", "W"], of="loss")


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-11), ("float32", 2e-4)])
@pytest.mark.parametrize("n", [1, 3, 40])
def test_layer_norm_row_kernel_c_matches_reference(ln_graph, dtype, rtol, n):
    """forward and value_and_grad in C against the reference at several batch sizes (40 rows of 2x6
    reach the threaded row loop's work when the model is built with threads)."""
    m = graphc.compile(ln_graph, dtype=dtype)
    arrays = random_inputs(ln_graph, {"N": n}, np.random.default_rng(n))
    arrays["x"] = arrays["x"] * 3 + 5           # rows with a mean far from 0: the two-pass variance
    check_c(m, ln_graph, arrays, rtol)


def test_each_layer_norm_is_one_row_pass_forward_and_backward(ln_graph):
    """Four layer norms: four forward row passes in each entry point (three for predict's c), and in value_and_grad one
    backward pass per layer norm (dJ/dx with dJ/dweight when it has a weight: one kernel); no loop
    of the old lowering's means and variances."""
    c = generate(ln_graph, *ln_graph.grad_spec, dtype="float32")
    for f in c.functions:
        norms = [st for st in f.steps if st.kind_name == "norm"]
        assert [st.kind for st in norms].count("forward") == (3 if f.name == "predict" else 4), f.name  # c: 3
        if f.name == "value_and_grad":
            back = [st for st in norms if st.kind == "backward"]
            assert len(back) == 4 and all(st.d_x for st in back)
            assert sorted(st.d_weight for st in back if st.d_weight) == ["d_g", "d_g2"]
    assert "gc_rstd = 1 / GC_SQRT(" in c.source and "__0__0__0[" not in c.source


HEADS_SPEC = """
name = "heads"
[dims]
N = "batch"
T = "symbolic"
C = 8
H = 2
D = 4
[inputs]
x = ["N", "T", "C"]
[params]
Wqkv = [24, "C"]
Wo = ["C", "C"]
[graph]
a = "x @ Wqkv.T"
q = "permute(reshape(a[:, :, 0:8], (N, T, H, D)), (0, 2, 1, 3))"
k = "permute(reshape(a[:, :, 8:16], (N, T, H, D)), (0, 2, 1, 3))"
v = "permute(reshape(a[:, :, 16:24], (N, T, H, D)), (0, 2, 1, 3))"
y = "reshape(permute(scaled_dot_product_attention(q, k, v, is_causal=True), (0, 2, 1, 3)), (N, T, C))"
J = "mean(square(y @ Wo.T))"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["x", "Wqkv", "Wo"]
"""


def test_head_split_is_one_strided_copy_and_its_gradient_writes_the_sum_in_place():
    g = graphc.parse_spec(HEADS_SPEC, "heads.toml")
    c = generate(g, *g.grad_spec, dtype="float64")
    src = c.source
    # q, k and v read a in place: a[i * (24 * T) + j * heads_D + k * 24 + l] (+ 8, + 16), no slice buffer
    for off in ("", r"8 \+ ", r"16 \+ "):
        assert re.search(rf"\w+\[[^\]]*\] = a\[{off}i \* \(24 \* T\) \+ j \* heads_D \+ k \* 24 \+ l\];", src), off
    assert not re.search(r"gc_real \*const (q|k|v)\w*__\d", src), "a slice or reshape got a buffer of its own"
    # dJ/da: each of d_q, d_k, d_v permuted straight into its columns of d_a; no unslice, no sum loop
    for off in ("", r"8 \+ ", r"16 \+ "):
        assert re.search(rf"d_a\[{off}i \* \(24 \* T\) \+ j \* 24 \+ k \* heads_D \+ l\] = d_[qkv]\[", src), off
    assert "memset(d_a," not in src and not re.search(r"d_a\[[^\]]*\] = \(", src)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-11), ("float32", 2e-4)])
def test_head_split_views_c_matches_reference_and_finite_differences(dtype, rtol):
    g = graphc.parse_spec(HEADS_SPEC, "heads.toml")
    arrays = random_inputs(g, {"N": 2, "T": 5}, np.random.default_rng(5))
    if dtype == "float64":
        check_finite_differences(g, arrays, ["x", "Wqkv"], of="loss")
    check_c(graphc.compile(g, dtype=dtype), g, arrays, rtol)


def test_a_reshape_is_its_inputs_buffer():
    """y = reshape(permute(o), (N, T, C)) read by a GEMM: no copy loop and no buffer for y."""
    g = graphc.parse_spec(HEADS_SPEC, "heads.toml")
    c = generate(g, *g.grad_spec, dtype="float32")
    assert "gc_real *const y =" not in c.source             # y is y__1's buffer read as [N, T, C]
    assert re.search(r"gc_gemm\w*\([^;]*\by__1, heads_C, Wo, heads_C", c.source)
