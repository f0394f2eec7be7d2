"""The character-level GPT (examples/char_gpt.toml) and sampling from the emitted C.

- One transformer block written in the spec against an independent NumPy block whose forward and
  backward are written by hand (tests/gpt_numpy.py, llm.c's layer by layer): outputs and every
  gradient, float64, in the reference and in C.
- char_gpt in C against the reference at several batch sizes and sequence lengths (the sequence
  length a run-time argument, at most the 64 rows of the position table).
- NAME_generate (the spec's [generate]): the C's tokens equal the NumPy reference's draw for draw,
  past the context, at temperature 0 the argmax; bad arguments are clear errors.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import graphc
import gpt_numpy
from graphc.core.random import sample_index
from graphc.native.generate import generate_reference
from helpers import assert_grads_close, c_and_reference

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "char_gpt.toml"

BLOCK = """
name = "gpt_block"
[dims]
N = "batch"
T = "symbolic"
C = 8
H = 2
D = 4
[inputs]
x = ["N", "T", "C"]
r = ["N", "T", "C"]
[params]
ln1_w = ["C"]
ln1_b = ["C"]
attn_w = [24, "C"]
attn_b = [24]
proj_w = ["C", "C"]
proj_b = ["C"]
ln2_w = ["C"]
ln2_b = ["C"]
fc_w = [32, "C"]
fc_b = [32]
fc2_w = ["C", 32]
fc2_b = ["C"]
[graph]
a  = "layer_norm(x, (C,), ln1_w, ln1_b) @ attn_w.T + attn_b"
q  = "permute(reshape(a[:, :, 0:8], (N, T, H, D)), (0, 2, 1, 3))"
k  = "permute(reshape(a[:, :, 8:16], (N, T, H, D)), (0, 2, 1, 3))"
v  = "permute(reshape(a[:, :, 16:24], (N, T, H, D)), (0, 2, 1, 3))"
y  = "reshape(permute(scaled_dot_product_attention(q, k, v, is_causal=True), (0, 2, 1, 3)), (N, T, C))"
x1 = "x + y @ proj_w.T + proj_b"
m  = "gelu(layer_norm(x1, (C,), ln2_w, ln2_b) @ fc_w.T + fc_b)"
x2 = "x1 + m @ fc2_w.T + fc2_b"
J  = "sum(x2 * r)"
[outputs]
out = "x2"
J = "J"
[grad]
of = "J"
wrt = ["x", "ln1_w", "ln1_b", "attn_w", "attn_b", "proj_w", "proj_b", "ln2_w", "ln2_b", "fc_w", "fc_b", "fc2_w", "fc2_b"]
"""


def _block(tmp_path):
    path = tmp_path / "gpt_block.toml"
    path.write_text(BLOCK)
    return graphc.load(path)


@pytest.mark.parametrize("n, t", [(1, 1), (2, 5), (3, 17)])
def test_char_gpt_block_matches_an_independent_numpy_block_forward_and_backward(tmp_path, n, t):
    """The spec's block (layer norms, fused qkv, causal multi-head attention by reshape/permute,
    exact GELU MLP, residuals) against gpt_numpy's hand-written forward and backward: the
    reference and the C (float64) agree with it in the output and every gradient."""
    g = _block(tmp_path)
    rng = np.random.default_rng(n * 10 + t)
    P = gpt_numpy.block_params(8, rng)
    x, r = rng.normal(size=(n, t, 8)), rng.normal(size=(n, t, 8))
    want, cache = gpt_numpy.block_forward(x, P, 2)
    dx, grads = gpt_numpy.block_backward(r, cache, P)
    grads["x"] = dx
    ref = graphc.evaluate(graphc.grad(g, *g.grad_spec), x=x, r=r, **P)
    np.testing.assert_allclose(ref["out"], want, rtol=1e-10, atol=1e-12)
    for k, d in grads.items():
        np.testing.assert_allclose(ref[f"d_{k}"], d, rtol=1e-9, atol=1e-11, err_msg=f"reference d_{k}")
    m = graphc.compile(g, dtype="float64")
    outs, gr = m.value_and_grad(x=x, r=r, **P)
    np.testing.assert_allclose(outs["out"], want, rtol=1e-10, atol=1e-12)
    for k, d in grads.items():
        np.testing.assert_allclose(gr[k], d, rtol=1e-9, atol=1e-11, err_msg=f"C d_{k}")


@pytest.fixture(scope="module")
def gpt64():
    g = graphc.load(EXAMPLE)
    return g, graphc.compile(g, dtype="float64"), graphc.init_params(g, seed=1)


@pytest.mark.parametrize("n, t", [(1, 1), (2, 7), (1, 64), (5, 33)])
def test_char_gpt_c_matches_the_reference_at_run_time_batch_and_length(gpt64, n, t):
    g, m, p = gpt64
    rng = np.random.default_rng(t)
    idx, tgt = (rng.integers(0, 96, (n, t)).astype(np.int32) for _ in range(2))
    outs, grads, ref = c_and_reference(m, g, dict(idx=idx, tgt=tgt, **p), *g.grad_spec)
    np.testing.assert_allclose(outs["loss"], ref["loss"], rtol=1e-12)
    np.testing.assert_allclose(outs["logits"], ref["logits"], rtol=1e-10, atol=1e-12)
    assert_grads_close(grads, ref, ("wte", "wpe", "l1_qkv_w", "l2_fc_b", "lnf_w"), rtol=1e-9, atol=1e-12)
    assert not grads["wpe"][t:].any(), "rows of the position table past T get no gradient"


def test_char_gpt_loss_starts_near_log_vocabulary_and_falls_under_adamw(gpt64):
    g, _, _ = gpt64
    opt = graphc.AdamW(lr=3e-3, weight_decay=0.1, schedule=graphc.WarmupCosine(warmup=5, total=40, min_lr=3e-4),
                       max_norm=1.0)
    m = graphc.compile(g, dtype="float32", optimizer=opt)
    state = m.train_state(graphc.init_params(g, seed=0))
    rng = np.random.default_rng(0)
    text = np.tile(rng.integers(0, 96, 40).astype(np.int32), 30)      # a repeating text: learnable
    losses = []
    for step in range(40):
        s = rng.integers(0, len(text) - 33, 8)
        x = np.stack([text[i:i + 32] for i in s]); y = np.stack([text[i + 1:i + 33] for i in s])
        losses.append(float(m.train_step(state, idx=x, tgt=y)["loss"]))
    assert abs(losses[0] - math.log(96)) < 0.5
    assert np.mean(losses[-5:]) < losses[0] - 1.0


def test_generate_c_draws_the_reference_tokens_past_the_context(gpt64):
    g, m, p = gpt64
    prompt = np.array([5, 17, 40], dtype=np.int32)
    c = m.generate(p, prompt, 70, temperature=1.0, seed=3)          # 73 tokens: the window slides past 64
    assert c.dtype == np.int32 and c.shape == (70,) and c.min() >= 0 and c.max() < 96
    np.testing.assert_array_equal(c, generate_reference(g, p, prompt, 70, temperature=1.0, seed=3))
    assert not np.array_equal(c, m.generate(p, prompt, 70, temperature=1.0, seed=4)), "the seed changes the draw"
    np.testing.assert_array_equal(m.generate(p, prompt, 70, temperature=1.0, seed=3), c)
    greedy = m.generate(p, prompt, 4, temperature=0.0)
    np.testing.assert_array_equal(greedy, generate_reference(g, p, prompt, 4, temperature=0.0))
    np.testing.assert_array_equal(m.generate(p, prompt, 8, temperature=1.0, seed=3, context=5),
                                  generate_reference(g, p, prompt, 8, temperature=1.0, seed=3, context=5))


def test_sample_index_is_softmax_of_the_scaled_logits():
    """The sampler's frequencies over many seeds follow softmax(l / T); T <= 0 is the argmax."""
    logits = np.array([1.0, 2.0, 0.5, -1.0])
    for temp in (0.5, 1.0, 2.0):
        draws = np.bincount([sample_index(logits, temp, seed, 0) for seed in range(4000)], minlength=4) / 4000
        p = np.exp(logits / temp) / np.exp(logits / temp).sum()
        assert np.abs(draws - p).max() < 0.03, (temp, draws, p)
    assert sample_index(logits, 0.0, 1, 2) == 1 and sample_index(logits, -1.0, 1, 2) == 1


def test_generate_bad_arguments_are_clear_errors(gpt64):
    g, m, p = gpt64
    with pytest.raises(graphc.GraphcError, match="prompt is empty"):
        m.generate(p, [], 3)
    with pytest.raises(graphc.GraphcError, match=r"token ids in \[0, 96\)"):
        m.generate(p, [3, 96], 3)
    for generate in (m.generate, lambda *a, **k: generate_reference(g, *a, **k)):   # one rule for both
        with pytest.raises(graphc.GraphcError, match=r"context=65 is outside \[1, 64\]"):
            generate(p, [3], 3, context=65)
    with pytest.raises(graphc.GraphcError, match="count=-1"):
        m.generate(p, [3], -1)
    other = graphc.compile(graphc.load(Path(EXAMPLE).parent / "one_layer.toml"), dtype="float64")
    with pytest.raises(graphc.GraphcError, match=r"\[generate\]"):
        other.generate({}, [1], 2)


def test_generate_spec_section_is_checked(tmp_path):
    head, tail = EXAMPLE.read_text().split("[generate]")
    path = tmp_path / "bad.toml"
    path.write_text(head + "[generate]" + tail.replace('logits = "logits"', 'logits = "loss"'))
    with pytest.raises(graphc.SpecError, match="logits must be the ids' shape"):
        graphc.load(path)
    path.write_text(head + "[generate]" + tail.replace('ids = "idx"', 'ids = "tgtx"'))
    with pytest.raises(graphc.SpecError, match="must name an int32 input"):
        graphc.load(path)


def test_generate_in_the_standalone_program_prints_the_tokens_python_draws(tmp_path):
    """graphc emit's main.c samples GENERATE_TOKENS ids with NAME_generate (no heap: its workspace is
    the header's constant NAME_GENERATE_WORKSPACE_BYTES); built strict with gcc and run without
    training steps, it prints what m.generate draws from main.c's own params."""
    import shutil
    import subprocess
    from graphc.native.export import GENERATE_PROMPT, GENERATE_TOKENS, example_arrays
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    g = graphc.load(EXAMPLE)
    m = graphc.compile(g, dtype="float64", optimizer=graphc.AdamW(lr=1e-3))
    m.export(tmp_path, standalone=True)
    cfiles = [str(p) for p in tmp_path.glob("*.c")]
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-DTRAIN_STEPS=0",
                    "-o", str(tmp_path / "prog"), *cfiles, "-lm"], check=True, capture_output=True, text=True)
    run = subprocess.run([str(tmp_path / "prog")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    line = next(x for x in run.stdout.splitlines() if x.startswith("generate "))
    printed = np.array(line.split(":")[1].split(), dtype=np.int32)
    params = {k: v for k, v in example_arrays(g, "float64").items() if k in g.params}
    want = m.generate(params, np.array(GENERATE_PROMPT, dtype=np.int32), GENERATE_TOKENS, temperature=1.0, seed=0)
    np.testing.assert_array_equal(printed, want)
