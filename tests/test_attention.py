"""scaled_dot_product_attention: the reference against an independent NumPy composition and
against torch; its VJP against central finite differences (float64); the fused C kernels (forward,
and value_and_grad through a loss) against the reference at lengths and head sizes that cross the
kernel's blocks (32 query rows, 64 keys); float32; bad input with clear errors."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from helpers import assert_grads_close, c_and_reference, check_finite_differences


def composition(q, k, v, is_causal=False, scale=None):
    """scores, causal mask, softmax over the keys, product with v: written here, not graphc's."""
    s = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    scores = np.einsum("...id,...jd->...ij", q, k) * s
    if is_causal:
        scores = scores + np.triu(np.full(scores.shape[-2:], -np.inf), k=1)   # torch.ones(L, S).tril()
    w = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return np.einsum("...ij,...jd->...id", w / w.sum(axis=-1, keepdims=True), v)


def attention_graph(shapes, is_causal=False, scale=None, loss="dot"):
    """q, k, v (and r) as inputs of rank 4 [B, H, T, D]; o and J = sum(o * r) (or mean(o))."""
    g = graphc.Graph("att")
    q, k, v = (g.input(n, ("B",) + tuple(s[1:])) for n, s in zip("qkv", shapes))
    o = graphc.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    g.output("o", o)
    if loss == "dot":
        r = g.input("r", o.shape)
        g.output("J", graphc.sum(o * r))
    else:
        g.output("J", graphc.mean(o))
    return g


def draw(rng, B, H, Tq, Tk, D, Dv, dtype=np.float64):
    shapes = [(B, H, Tq, D), (B, H, Tk, D), (B, H, Tk, Dv)]
    arrays = {n: rng.standard_normal(s).astype(dtype) for n, s in zip("qkv", shapes)}
    arrays["r"] = rng.standard_normal((B, H, Tq, Dv)).astype(dtype)
    return shapes, arrays


# ------------------------------------------------------------------ the reference
@pytest.mark.parametrize("is_causal, Tq, Tk, scale", [(False, 5, 9, None), (False, 7, 3, 0.3), (True, 6, 6, None),
                                                      (True, 4, 7, 2.0), (True, 8, 3, None)])
def test_reference_is_the_composition_and_torch(is_causal, Tq, Tk, scale):
    rng = np.random.default_rng(Tq * 10 + Tk)
    shapes, a = draw(rng, 2, 3, Tq, Tk, 4, 5)
    g = attention_graph(shapes, is_causal, scale)
    got = graphc.evaluate(g, **a)["o"]
    np.testing.assert_allclose(got, composition(a["q"], a["k"], a["v"], is_causal, scale), rtol=1e-12, atol=1e-12)
    torch = pytest.importorskip("torch")
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.tensor(a[n]) for n in "qkv"), is_causal=is_causal, scale=scale).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_reference_is_stable_for_large_scores():
    rng = np.random.default_rng(1)
    shapes, a = draw(rng, 1, 1, 3, 4, 2, 2)
    a["q"] *= 1e3                       # scores of order 1e6: exp overflows unless the max is taken out
    got = graphc.evaluate(attention_graph(shapes), **a)["o"]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, composition(a["q"], a["k"], a["v"]), rtol=1e-12, atol=1e-12)


def test_rank_3_inputs():
    rng = np.random.default_rng(2)
    g = graphc.Graph("att3")
    q, k, v = g.input("q", ("B", 5, 3)), g.input("k", ("B", 6, 3)), g.input("v", ("B", 6, 2))
    g.output("o", graphc.scaled_dot_product_attention(q, k, v))
    a = {"q": rng.standard_normal((2, 5, 3)), "k": rng.standard_normal((2, 6, 3)), "v": rng.standard_normal((2, 6, 2))}
    np.testing.assert_allclose(graphc.evaluate(g, **a)["o"], composition(a["q"], a["k"], a["v"]), rtol=1e-12)


# ------------------------------------------------------------------ gradients vs finite differences
@pytest.mark.parametrize("is_causal, Tq, Tk, scale", [(False, 3, 5, None), (True, 4, 4, 0.7), (True, 5, 3, None)])
def test_gradients_match_finite_differences(is_causal, Tq, Tk, scale):
    rng = np.random.default_rng(3 + Tq)
    shapes, a = draw(rng, 2, 2, Tq, Tk, 3, 2)
    g = attention_graph(shapes, is_causal, scale)
    check_finite_differences(g, a, ["q", "k", "v"], of="J")


def test_gradients_agree_with_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    shapes, a = draw(rng, 2, 3, 6, 6, 4, 4)
    g = attention_graph(shapes, True)
    grads = graphc.evaluate(graphc.grad(g, "J", ["q", "k", "v"]), **a)
    t = {n: torch.tensor(a[n], requires_grad=True) for n in "qkv"}
    (torch.nn.functional.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=True)
     * torch.tensor(a["r"])).sum().backward()
    for w in "qkv":
        np.testing.assert_allclose(grads[f"d_{w}"], t[w].grad.numpy(), rtol=1e-10, atol=1e-12)


def test_explain_shows_the_backward_pass_in_the_notes_notation():
    g = attention_graph([(1, 2, 4, 3), (1, 2, 4, 3), (1, 2, 4, 3)], True)
    text = graphc.explain(g, of="J", wrt=["q", "k", "v"])
    assert "∂J/∂v = Pᵀ δ" in text or "∂J/∂v = Pᵀ r" in text, text
    assert "∂J/∂q = s (P ∘ (" in text and "vᵀ − rowsum(" in text and ")) k" in text, text
    assert "∂J/∂k = s (P ∘ (" in text and ")))ᵀ q" in text, text
    assert "P = softmax(s q kᵀ)" in text and "is_causal" in text and "log-sum-exp" in text, text
    for identity in ("(2)", "(4)", "(5)", "(6)"):
        assert identity in text


# ------------------------------------------------------------------ the C kernels
def compiled(shapes, is_causal, dtype, loss="dot"):
    g = attention_graph(shapes, is_causal, loss=loss)
    return g, graphc.compile(g, grad_of="J", wrt=["q", "k", "v"], dtype=dtype)


# T crosses the blocks (64 query rows, 64 keys: packing.ATTENTION_ROWS, _KEYS): 1, 7, 16, 17, 65, 129; D 1, 8, 16, 33
C_SIZES = [(1, 1, True), (7, 8, True), (16, 16, False), (17, 33, True), (65, 8, False), (65, 1, True),
           (129, 16, True), (129, 33, False)]


@pytest.mark.parametrize("T, D, is_causal", C_SIZES)
def test_c_forward_and_value_and_grad_match_the_reference(T, D, is_causal):
    rng = np.random.default_rng(T * 100 + D)
    shapes, a = draw(rng, 2, 2, T, T, D, D)
    g, m = compiled(shapes, is_causal, "float64")
    for n in (1, 2):                                  # two batch sizes through one build
        part = {k: x[:n] for k, x in a.items()}
        outs, grads, want = c_and_reference(m, g, part, "J", ["q", "k", "v"])
        np.testing.assert_allclose(m.forward(**part)["o"], want["o"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(outs["J"], want["J"], rtol=1e-11)
        assert_grads_close(grads, want, "qkv", rtol=1e-10, atol=1e-11, where=f" at N={n}")


@pytest.mark.parametrize("Tq, Tk", [(7, 70), (70, 7), (33, 129)])
def test_c_cross_attention_with_other_lengths_and_value_width(Tq, Tk):
    rng = np.random.default_rng(Tq + Tk)
    shapes, a = draw(rng, 2, 3, Tq, Tk, 8, 5)
    g, m = compiled(shapes, False, "float64", loss="mean")
    a.pop("r")
    outs, grads, want = c_and_reference(m, g, a, "J", ["q", "k", "v"])
    np.testing.assert_allclose(outs["o"], want["o"], rtol=1e-12, atol=1e-12)
    assert_grads_close(grads, want, "qkv", rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T, D, is_causal", [(17, 16, True), (129, 33, False)])
def test_c_float32(T, D, is_causal):
    rng = np.random.default_rng(T + D)
    shapes, a = draw(rng, 2, 2, T, T, D, D)
    g, m = compiled(shapes, is_causal, "float32")
    outs, grads, want = c_and_reference(m, g, {k: x.astype(np.float32) for k, x in a.items()}, "J", ["q", "k", "v"],
                                        reference_arrays=a)
    np.testing.assert_allclose(outs["o"], want["o"], rtol=1e-5, atol=1e-5)
    for w in "qkv":
        scale = np.abs(want[f"d_{w}"]).max()
        assert np.abs(grads[w] - want[f"d_{w}"]).max() < 1e-5 * max(scale, 1.0), w


@pytest.mark.parametrize("T, D, Dv, is_causal", [(70, 24, 20, True), (70, 16, 40, False), (129, 33, 16, True)])
def test_c_blocks_keep_the_bits_of_any_thread_count(T, D, Dv, is_causal):
    """Each head runs on one thread, its block products by the library's GEMM in that thread's
    share of the packing area (scores, dS, packing), and the workspace of a 2-thread build holds
    a share for each thread: a shared or short share would race or run out of bounds. Float32
    results agree with the reference, and the bits with one thread and with two are the same
    (T = 70, 129: blocks of 64 and the rest; causal blocks: rows with fewer keys than others)."""
    rng = np.random.default_rng(T + D + Dv)
    shapes, a = draw(rng, 3, 2, T, T, D, Dv)
    g = attention_graph(shapes, is_causal)
    a32 = {k: x.astype(np.float32) for k, x in a.items()}
    results, sizes = [], []
    for threads in (1, 2):
        m = graphc.compile(g, grad_of="J", wrt=["q", "k", "v"], dtype="float32", threads=threads)
        outs, grads, want = c_and_reference(m, g, a32, "J", ["q", "k", "v"], reference_arrays=a)
        np.testing.assert_allclose(outs["o"], want["o"], rtol=1e-5, atol=1e-5)
        for w in "qkv":
            assert np.abs(grads[w] - want[f"d_{w}"]).max() < 1e-5 * max(np.abs(want[f"d_{w}"]).max(), 1.0), w
        results.append([outs["o"]] + [grads[w] for w in "qkv"])
        sizes.append(m.workspace(3).nbytes)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
    assert sizes[1] > sizes[0], sizes


def test_c_stores_no_score_matrix():
    """The workspace holds o, the row log-sum-exp L and δ = dJ/do: no Tq x Tk matrix per head."""
    T, D = 129, 8
    shapes = [(1, 2, T, D)] * 3
    _, m = compiled(shapes, True, "float64")
    per_example = m.workspace(2).nbytes - m.workspace(1).nbytes
    assert per_example <= 8 * 2 * (2 * T * D + T), per_example     # o, δ and L: far below 8 * 2 * T * T


# ------------------------------------------------------------------ bad input
def test_bad_input_is_refused_clearly():
    g = graphc.Graph("bad")
    q, k, v = g.input("q", ("B", 2, 5, 4)), g.input("k", ("B", 2, 6, 4)), g.input("v", ("B", 2, 6, 3))
    sdpa = graphc.scaled_dot_product_attention
    with pytest.raises(graphc.ShapeError, match="same head size D"):
        sdpa(q, g.input("k3", ("B", 2, 6, 3)), v)
    with pytest.raises(graphc.ShapeError, match="batch and head axes of q and k"):
        sdpa(q, g.input("kh", ("B", 3, 6, 4)), v)
    with pytest.raises(graphc.ShapeError, match="same length Tk"):
        sdpa(q, k, g.input("v7", ("B", 2, 7, 3)))
    with pytest.raises(graphc.ShapeError, match="rank 4"):
        sdpa(g.input("q2", (5, 4)), g.input("k2", (6, 4)), g.input("v2", (6, 3)))
    with pytest.raises(graphc.ShapeError, match="takes k of rank 4"):
        sdpa(q, g.input("k5", ("B", 2, 1, 6, 4)), v)
    with pytest.raises(graphc.DTypeError, match="int32"):
        sdpa(g.input("qi", ("B", 2, 5, 4), dtype="int32"), k, v)
    with pytest.raises(graphc.SpecError, match="attn_mask is not supported"):
        sdpa(q, k, v, attn_mask=g.input("mask", (5, 6)))
    with pytest.raises(graphc.SpecError, match="attn_mask is not supported"):
        sdpa(q, k, v, g.input("mask2", (5, 6)))
    with pytest.raises(graphc.SpecError, match="dropout_p must be 0"):
        sdpa(q, k, v, dropout_p=0.1)
    with pytest.raises(graphc.SpecError, match="enable_gqa is not supported"):
        sdpa(q, k, v, enable_gqa=True)
    with pytest.raises(graphc.SpecError, match="is_causal must be True or False"):
        sdpa(q, k, v, is_causal=1)
    sdpa(q, k, v, None, 0.0, False, None, False)      # torch's defaults, positionally: accepted


def test_spec_writes_it():
    spec = """name = "att"
[dims]
B = "batch"
[inputs]
q = ["B", 2, 5, 4]
k = ["B", 2, 5, 4]
v = ["B", 2, 5, 4]
[graph]
o = "scaled_dot_product_attention(q, k, v, is_causal=True)"
J = "sum(o * o)"
[outputs]
loss = "J"
"""
    g = graphc.parse_spec(spec, "att.toml")
    rng = np.random.default_rng(5)
    a = {n: rng.standard_normal((2, 2, 5, 4)) for n in "qkv"}
    o = composition(a["q"], a["k"], a["v"], True)
    np.testing.assert_allclose(graphc.evaluate(g, **a)["loss"], np.sum(o * o), rtol=1e-12)
    with pytest.raises(graphc.GraphcError, match="dropout_p must be 0"):
        graphc.parse_spec(spec.replace("is_causal=True", "dropout_p=0.5"), "att.toml")


def test_c_train_step_through_attention_is_the_reference_sgd_update():
    """A param upstream of two attentions (tests/specs/small_attention.toml: causal self-attention
    and cross-attention, 70 rows across the blocks): one SGD step in C, w -= lr dJ/dw of the reference."""
    from pathlib import Path
    g = graphc.load(str(Path(__file__).resolve().parent / "specs" / "small_attention.toml"))
    m = graphc.compile(g, grad_of="loss", wrt=["w"], dtype="float64", optimizer=graphc.SGD(lr=0.1))
    params = graphc.init_params(g, seed=0)
    rng = np.random.default_rng(6)
    x, mem = rng.standard_normal((3, 2, 70, 8)), rng.standard_normal((3, 2, 33, 8))
    w0 = params["w"].copy()
    want = w0 - 0.1 * graphc.evaluate(graphc.grad(g, "loss", ["w"]), x=x, m=mem, w=w0)["d_w"]
    state = m.train_state(params)
    m.train_step(state, x=x, m=mem)
    assert np.abs(state.params["w"] - w0).max() > 1e-4
    np.testing.assert_allclose(state.params["w"], want, rtol=1e-12, atol=1e-14)
