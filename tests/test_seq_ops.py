"""The sequence-model ops of a character-level GPT: batched matmul on rank 3-4 operands, softmax
and log_softmax along any axis, cross-entropy over [B, T, V], embeddings of [B, T] ids with
positions wpe[:T] for a run-time length T, and weight tying (wte used by the embedding and as
the output projection h @ wte.T).

Each form is checked three ways: the reference gradients against central finite differences in
float64, the C (graphc.compile) against the reference at several batch sizes and sequence lengths
(ones that cross the GEMM's blocking: MC = 16·MR rows, KC = 128 doubles or 256 floats deep), and
PyTorch where it is installed. Bad input (batch axes that do not broadcast, an axis out of range,
labels out of range, a sequence longer than the table) raises a clear GraphcError, and an error
code in C.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphc
from graphc.backend.codegen import generate
from graphc.core.errors import ArgumentError, ShapeError
from helpers import assert_close, check_finite_differences


def check_c(m, g, arrays: dict, rtol: float):
    """The compiled model's forward and value_and_grad against the reference, in m's dtype."""
    real = np.float32 if m.dtype == np.float32 else np.float64
    c_arrays = {k: a if a.dtype == np.int32 else a.astype(real) for k, a in arrays.items()}
    ref_arrays = {k: a if a.dtype == np.int32 else a.astype(real).astype(np.float64) for k, a in arrays.items()}
    ref = graphc.evaluate(g, **ref_arrays)
    for k, v in m.forward(**c_arrays).items():
        assert_close(v, ref[k], f"forward {k}", rtol)
    if g.grad_spec or getattr(m, "wrt", None):
        outs, grads = m.value_and_grad(**c_arrays)
        bwd = graphc.evaluate(graphc.grad(g, of="loss", wrt=list(grads)), **ref_arrays)
        for k, v in grads.items():
            assert_close(v, bwd[f"d_{k}"], f"d_{k}", rtol)


def random_inputs(g, sizes: dict, rng, high: dict | None = None) -> dict:
    """Normal arrays for the real inputs and params, ids below `high[name]` for the int32 ones."""
    out = {}
    for name, v in {**g.inputs, **g.params}.items():
        shape = tuple(sizes.get(d, d) if isinstance(d, str) else d for d in v.shape)
        if v.dtype == "int32":
            out[name] = rng.integers(0, high[name], shape).astype(np.int32)
        else:
            out[name] = rng.normal(size=shape)
    return out


# ---------------------------------------------------------------------------------- matmul
RANKED = st.lists(st.sampled_from([1, 2, 3]), min_size=0, max_size=2)


@settings(max_examples=60, deadline=None, derandomize=True)   # seeded: the same shapes every run
@given(batch_a=RANKED, batch_b=RANKED, m=st.sampled_from([1, 4]), k=st.sampled_from([1, 3]),
       n=st.sampled_from([1, 5]), vec=st.sampled_from([None, "a", "b"]))
def test_matmul_shapes_match_numpy_up_to_rank_4(batch_a, batch_b, m, k, n, vec):
    a = (k,) if vec == "a" else tuple(batch_a) + (m, k)
    b = (k,) if vec == "b" else tuple(batch_b) + (k, n)
    g = graphc.Graph("mm")
    x, w = g.input("x", a), g.input("w", b)
    try:
        want = np.matmul(np.zeros(a), np.zeros(b)).shape
    except ValueError:
        want = None
    if want is None or (len(a) == 1 and len(b) > 2):
        with pytest.raises(ShapeError, match="batch axes|vector times"):
            x @ w
        return
    z = x @ w
    assert z.shape == want
    g.output("z", z)
    rng = np.random.default_rng(0)
    xa, wa = rng.normal(size=a), rng.normal(size=b)
    assert np.allclose(graphc.evaluate(g, x=xa, w=wa)["z"], np.matmul(xa, wa), rtol=1e-13, atol=1e-13)


MATMUL_SPEC = """name = "batched"
[dims]
N = "batch"
H = 2
T = 5
D = 3
C = 4
[inputs]
q = ["N", "H", "T", "D"]
k = ["N", "H", "T", "D"]
v = [1, "H", "T", "D"]
x = ["N", "T", "C"]
[params]
W = [6, "C"]
b = [6]
u = ["C"]
P = ["D", "T"]
[graph]
att  = "q @ permute(k, (0, 1, 3, 2))"          # [N, H, T, T]: one product per (n, h)
o    = "att @ v"                               # v broadcast over N (stride 0)
lin  = "relu(x @ W.T + b)"                     # the rows of x: one 2-D GEMM of N*T rows
vec  = "x @ u"                                 # [N, T]
left = "permute(P, (1, 0)) @ permute(q, (0, 1, 3, 2))"   # [T, D] @ [N, H, D, T]: P broadcast, both transposed
J    = "sum(o * o) + sum(lin * lin) + sum(vec * vec) + sum(left * left)"
[outputs]
loss = "J"
o = "o"
[grad]
of = "J"
wrt = ["q", "k", "v", "x", "W", "b", "u", "P"]
"""


def test_batched_matmul_gradients_match_finite_differences():
    g = graphc.parse_spec(MATMUL_SPEC, "batched.toml")
    rng = np.random.default_rng(1)
    arrays = random_inputs(g, {"N": 2}, rng)
    check_finite_differences(g, arrays, g.grad_spec[1], of="loss")


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-11), ("float32", 2e-5)])
def test_batched_matmul_c_matches_reference_at_several_batch_sizes(dtype, rtol):
    g = graphc.parse_spec(MATMUL_SPEC, "batched.toml")
    m = graphc.compile(g, dtype=dtype)
    rng = np.random.default_rng(2)
    for n in (1, 2, 5):
        check_c(m, g, random_inputs(g, {"N": n}, rng), rtol)


def test_batched_matmul_reads_its_operands_in_place():
    """A batched product is gc_gemm in loops over the batch: k's permute read transposed (no copy),
    v broadcast over N with no term of the N loop; x @ W.T + b with relu is one GEMM of N*T rows
    with its bias and relu in the epilogue, and d_W one GEMM over those rows."""
    g = graphc.parse_spec(MATMUL_SPEC, "batched.toml")
    src = generate(g, *g.grad_spec, dtype="float32").source
    assert "for (long gc_b0 = 0; gc_b0 < 2 * n; ++gc_b0)" in src          # (n, h) merged into one loop
    assert re.search(r"gc_gemm\(GC_NO_TRANS, GC_TRANS, batched_T, batched_T, batched_D,\s+"
                     r"q_v \+ gc_b0 \* 15, batched_D, k_v \+ gc_b0 \* 15, batched_D", src)
    # att @ v: N and H stay two loops, v moves along H only (stride 0 along N)
    assert re.search(r"att \+ gc_b0 \* 50 \+ gc_b1 \* 25, batched_T, v \+ gc_b1 \* 15, batched_D", src)
    # P [D, T] read transposed and broadcast over the batch: no term of the loop
    assert re.search(r"gc_gemm\(GC_TRANS, GC_TRANS, batched_T, batched_T, batched_D,\s+P, batched_T, q_v \+ gc_b0", src)
    assert re.search(r"gc_gemm_bias_act\(GC_NO_TRANS, GC_TRANS, batched_T \* n, 6, batched_C,\s+x, batched_C, "
                     r"W, batched_C,.*b, GC_ACT_RELU\)", src, re.S)
    assert not re.search(r"\b(k_v|W|P)\[[^\]]*\]", src), "k, W and P are never copied"
    assert re.search(r"gc_gemm\(GC_TRANS, GC_NO_TRANS, 6, batched_C, batched_T \* n,", src), \
        "d_W: one GEMM over the N*T rows"


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 5e-5)])
def test_sequence_products_cross_the_gemm_blocking(dtype, rtol):
    """T the symbolic dim, at 1, 7, 17, 65 and 129: attention-shaped products [B, H, T, T] whose
    inner dim T passes KC in double, and a linear layer over [B, T, C] of 2T rows (258 > MC)."""
    spec = """name = "blocking"
[dims]
B = 2
H = 2
T = "symbolic"
D = 16
C = 24
[inputs]
q = ["B", "H", "T", "D"]
k = ["B", "H", "T", "D"]
v = ["B", "H", "T", "D"]
x = ["B", "T", "C"]
[params]
W = [40, "C"]
b = [40]
[graph]
s = "q @ permute(k, (0, 1, 3, 2))"
o = "s @ v"
h = "x @ W.T + b"
J = "sum(o * o) + sum(h * h)"
[outputs]
loss = "J"
o = "o"
h = "h"
[grad]
of = "J"
wrt = ["q", "k", "v", "x", "W", "b"]
"""
    g = graphc.parse_spec(spec, "blocking.toml")
    m = graphc.compile(g, dtype=dtype)
    rng = np.random.default_rng(3)
    for T in (1, 7, 17, 65, 129):
        arrays = random_inputs(g, {"T": T}, rng)
        arrays["q"] /= 4
        check_c(m, g, arrays, rtol)


def test_matmul_agrees_with_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    cases = [((2, 3, 4, 5), (2, 3, 5, 4)), ((2, 3, 4, 5), (1, 3, 5, 2)), ((2, 7, 5), (5, 6)),
             ((4, 5), (2, 5, 3)), ((2, 1, 4, 5), (3, 5, 2)), ((2, 7, 5), (5,))]
    for sa, sb in cases:
        g = graphc.Graph("mmt")
        a, b = g.input("a", sa), g.input("b", sb)
        z = a @ b
        c = g.input("c", z.shape)
        g.output("loss", graphc.sum(z * c))
        arrays = {"a": rng.normal(size=sa), "b": rng.normal(size=sb), "c": rng.normal(size=c.shape)}
        bwd = graphc.evaluate(graphc.grad(g, of="loss", wrt=["a", "b"]), **arrays)
        ta, tb = (torch.tensor(arrays[k], requires_grad=True) for k in "ab")
        (torch.matmul(ta, tb) * torch.tensor(arrays["c"])).sum().backward()
        assert_close(bwd["d_a"], ta.grad.numpy(), f"{sa} @ {sb}: d_a", 1e-12)
        assert_close(bwd["d_b"], tb.grad.numpy(), f"{sa} @ {sb}: d_b", 1e-12)


def test_mismatched_batch_axes_are_a_shape_error_naming_the_operands():
    spec = MATMUL_SPEC.replace('o    = "att @ v"', 'o    = "att @ x"')      # [N, H, T, T] @ [N, T, C]
    with pytest.raises(ShapeError) as e:
        graphc.parse_spec(spec, "batched.toml")
    text = str(e.value)
    assert "batched.toml:20" in text and "att is (N, H=2, T=5, T=5), x is (N, T=5, C=4)" in text, text
    assert "batch axes ('N', 2) and ('N',) do not broadcast" in text, text


# ---------------------------------------------------------------------------------- softmax
SOFTMAX_SPEC = """name = "softmaxes"
[dims]
N = "batch"
[inputs]
x = ["N", 3, 4, 5]
w = ["N", 3, 4, 5]
[graph]
a = "softmax(x, axis=1) * w"
b = "log_softmax(x, axis=0) * w"
c = "softmax(x, axis=-2) + log_softmax(x, axis=2)"
d = "softmax(x) + log_softmax(x, axis=3)"
J = "sum(a * a) + sum(b) + sum(c * w) + sum(d * d * w)"
[outputs]
loss = "J"
a = "a"
[grad]
of = "J"
wrt = ["x"]
"""


def test_softmax_along_any_axis_matches_finite_differences():
    g = graphc.parse_spec(SOFTMAX_SPEC, "softmaxes.toml")
    arrays = random_inputs(g, {"N": 2}, np.random.default_rng(5))
    check_finite_differences(g, arrays, ["x"], of="loss")


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-11), ("float32", 2e-5)])
def test_softmax_along_any_axis_c_matches_reference(dtype, rtol):
    g = graphc.parse_spec(SOFTMAX_SPEC, "softmaxes.toml")
    m = graphc.compile(g, dtype=dtype)
    src = m.csrc.source
    assert "one row along the axis: stride 20" in src and "one row along the axis: stride 5" in src
    rng = np.random.default_rng(6)
    for n in (1, 3, 8):
        arrays = random_inputs(g, {"N": n}, rng)
        arrays["x"] *= 20             # large logits: the max is subtracted along the axis
        check_c(m, g, arrays, rtol)


def test_softmax_agrees_with_torch_along_every_axis():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.random.default_rng(7).normal(size=(2, 3, 4, 5))
    for axis in range(-4, 4):
        g = graphc.Graph("sm")
        v = g.input("x", x.shape)
        g.output("p", graphc.softmax(v, axis=axis))
        g.output("l", graphc.log_softmax(v, axis=axis))
        out = graphc.evaluate(g, x=x)
        assert_close(out["p"], F.softmax(torch.tensor(x), dim=axis).numpy(), f"softmax axis {axis}", 1e-14)
        assert_close(out["l"], F.log_softmax(torch.tensor(x), dim=axis).numpy(), f"log_softmax axis {axis}", 1e-14)


def test_softmax_axis_out_of_range_is_a_shape_error():
    with pytest.raises(ShapeError, match="axis 3 is out of range for rank 3"):
        graphc.parse_spec(SOFTMAX_SPEC.replace('x = ["N", 3, 4, 5]', 'x = ["N", 3, 4]')
                          .replace('w = ["N", 3, 4, 5]', 'w = ["N", 3, 4]'), "softmaxes.toml")


# ------------------------------------------------------------------- a tiny GPT's loss and embeddings
GPT_SPEC = """name = "tiny_gpt"
[dims]
B = 2
T = "symbolic"      # the sequence length: chosen at call time, at most Tmax
V = 11
C = 8
Tmax = 6
[inputs]
idx     = { shape = ["B", "T"], dtype = "int32" }
targets = { shape = ["B", "T"], dtype = "int32" }
[params]
wte = ["V", "C"]
wpe = ["Tmax", "C"]
W1  = [16, "C"]
b1  = [16]
W2  = ["C", 16]
b2  = ["C"]
g   = ["C"]
bb  = ["C"]
[graph]
x      = "embedding(wte, idx) + wpe[:T]"             # token + position embeddings
h      = "x + gelu(x @ W1.T + b1) @ W2.T + b2"        # an MLP block with its residual
hn     = "layer_norm(h, (C,), g, bb)"
logits = "hn @ wte.T"                                 # tied output projection
J      = "cross_entropy(logits, targets)"             # the mean over the B*T positions
[outputs]
loss = "J"
probs = "softmax(logits)"
[grad]
of = "J"
wrt = ["wte", "wpe", "W1", "b1", "W2", "b2", "g", "bb"]
"""


def gpt_arrays(g, T: int, rng) -> dict:
    arrays = random_inputs(g, {"T": T}, rng, high={"idx": 11, "targets": 11})
    return {k: (a * 0.5 if a.dtype != np.int32 else a) for k, a in arrays.items()}


def test_tied_embedding_gets_the_sum_of_both_gradients_by_finite_differences():
    """wte is gathered by the embedding and multiplies hn as the output projection: dJ/dwte is
    δ1ᵀ hn (identity (5)) plus the scatter-add of the embedding's δ (identity (3)), and equals the
    central differences of the loss; so do wpe's (only its first T rows) and the others'."""
    g = graphc.parse_spec(GPT_SPEC, "tiny_gpt.toml")
    rng = np.random.default_rng(8)
    arrays = gpt_arrays(g, 4, rng)
    arrays["idx"][0, :2] = 3               # a repeated id: its rows accumulate
    check_finite_differences(g, arrays, g.grad_spec[1], of="loss")
    d = graphc.evaluate(graphc.grad(g, of="loss", wrt=["wpe"]), **arrays)["d_wpe"]
    assert np.all(d[4:] == 0) and np.any(d[:4] != 0), "only the first T rows of wpe are used"
    # both uses of wte are in its gradient: neither one alone is it
    explained = graphc.explain(g, of="loss", wrt=["wte"])
    assert re.search(r"∂loss/∂wte = δ\d+ᵀ hn \+ scatter_add\(.*, idx\)", explained), explained


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 5e-5)])
def test_tiny_gpt_c_matches_reference_at_several_sequence_lengths(dtype, rtol):
    g = graphc.parse_spec(GPT_SPEC, "tiny_gpt.toml")
    m = graphc.compile(g, dtype=dtype)
    rng = np.random.default_rng(9)
    for T in (1, 2, 5, 6):
        check_c(m, g, gpt_arrays(g, T, rng), rtol)
    assert graphc.check(g, dtype="float64").ok          # n = 1 and 37 clipped to the bound 6


def test_cross_entropy_over_positions_agrees_with_torch():
    """graphc's classes are the last axis ([B, T, V], as its 2-D form); torch's are axis 1, so
    torch gets the logits permuted to [B, V, T]. Int labels and probability targets."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(3, 4, 7)) * 3
    labels = rng.integers(0, 7, (3, 4)).astype(np.int32)
    probs = rng.dirichlet(np.ones(7), size=(3, 4))
    for y in (labels, probs):
        g = graphc.Graph("ce")
        th = g.input("theta", logits.shape)
        yv = g.input("y", y.shape, dtype="int32" if y.dtype == np.int32 else "float32")
        g.output("loss", graphc.cross_entropy(th, yv))
        ours = graphc.evaluate(graphc.grad(g, of="loss", wrt=["theta"]), theta=logits, y=y)
        t = torch.tensor(logits, requires_grad=True)
        target = torch.tensor(y).long() if y.dtype == np.int32 else torch.tensor(y).permute(0, 2, 1)
        loss = F.cross_entropy(t.permute(0, 2, 1), target)
        loss.backward()
        assert abs(float(ours["loss"]) - loss.item()) < 1e-12
        assert_close(ours["d_theta"], t.grad.numpy(), "d_theta", 1e-12)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-11), ("float32", 2e-5)])
def test_cross_entropy_over_positions_c_matches_reference(dtype, rtol):
    """[N, T, V] logits with int32 labels [N, T] and with probability targets [N, T, V] in C,
    loss and gradients (of the logits and of the targets), at several batch sizes."""
    spec = """name = "ce3"
[dims]
N = "batch"
T = 7
V = 5
[inputs]
x = ["N", "T", 3]
y = { shape = ["N", "T"], dtype = "int32" }
p = ["N", "T", "V"]
[params]
W = ["V", 3]
[graph]
logits = "x @ W.T"
J = "cross_entropy(logits, y) + 0.5 * cross_entropy(logits * 2.0, softmax(p))"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["W", "x", "p"]
"""
    g = graphc.parse_spec(spec, "ce3.toml")
    m = graphc.compile(g, dtype=dtype)
    rng = np.random.default_rng(16)
    for n in (1, 4, 9):
        check_c(m, g, random_inputs(g, {"N": n}, rng, high={"y": 5}), rtol)
    check_finite_differences(g, random_inputs(g, {"N": 2}, rng, high={"y": 5}), ["W", "x", "p"], of="loss")


def test_embedding_of_positions_agrees_with_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    g = graphc.parse_spec(GPT_SPEC, "tiny_gpt.toml")
    g.output("x_out", g["x"])
    rng = np.random.default_rng(11)
    arrays = gpt_arrays(g, 5, rng)
    ours = graphc.evaluate(g, **arrays)["x_out"]
    pos = torch.arange(0, 5)
    want = F.embedding(torch.tensor(arrays["idx"]).long(), torch.tensor(arrays["wte"])) + \
        F.embedding(pos, torch.tensor(arrays["wpe"]))
    assert_close(ours, want.numpy(), "token + position embeddings", 1e-15)


def test_labels_out_of_range_raise_in_python_and_in_c():
    g = graphc.parse_spec(GPT_SPEC, "tiny_gpt.toml")
    m = graphc.compile(g, dtype="float64")
    arrays = gpt_arrays(g, 3, np.random.default_rng(12))
    bad = dict(arrays, targets=arrays["targets"].copy())
    bad["targets"][1, 2] = 11
    with pytest.raises(ArgumentError, match=r"label/id 11 is out of range \[0, 11\)"):
        graphc.evaluate(g, **bad)
    with pytest.raises(ArgumentError, match=r"'targets': label/id 11 is out of range \[0, 11\)"):
        m.forward(**bad)                       # the C's GRAPHC_ERR_LABEL, explained
    bad = dict(arrays, idx=arrays["idx"].copy())
    bad["idx"][0, 0] = -1
    with pytest.raises(ArgumentError, match="'idx'"):
        m.value_and_grad(**bad)


def test_a_sequence_longer_than_the_positional_table_is_an_error_in_python_and_in_c():
    g = graphc.parse_spec(GPT_SPEC, "tiny_gpt.toml")
    m = graphc.compile(g, dtype="float64")
    arrays = gpt_arrays(g, 7, np.random.default_rng(13))
    for call in (lambda: graphc.evaluate(g, **arrays), lambda: m.forward(**arrays),
                 lambda: m.value_and_grad(**arrays)):
        with pytest.raises(ShapeError) as e:
            call()
        assert "T=7 is larger than 6" in str(e.value) and "wpe[:T]" in str(e.value), str(e.value)
    # the C itself: no workspace size past the table, and GRAPHC_ERR_BATCH before anything is read
    lib, ffi = m.lib, m.ffi
    assert lib.tiny_gpt_workspace_size(6) > 0 and lib.tiny_gpt_workspace_size(7) == 0
    assert "#define tiny_gpt_MAX_N 6" in m.csrc.header
    c = {k: np.ascontiguousarray(a) for k, a in arrays.items()}
    ptr = lambda a: ffi.from_buffer("int32_t[]" if a.dtype == np.int32 else "double[]", a)  # noqa: E731
    loss, probs = np.zeros(1), np.zeros((2, 7, 11))
    work = np.zeros(lib.tiny_gpt_workspace_size(6) // 8 + 16)
    aligned = work[(-work.ctypes.data % 64) // 8:]
    status = lib.tiny_gpt_forward(7, *(ptr(c[k]) for k in ("idx", "targets", "wte", "wpe", "W1", "b1", "W2", "b2",
                                                            "g", "bb")), ptr(loss), ptr(probs),
                                   ffi.from_buffer(aligned))
    assert status == lib.GRAPHC_ERR_BATCH


def test_symbolic_slice_bounds_are_checked_when_the_graph_is_built():
    for body in ('"embedding(wte, idx) + wpe[1:T]"', '"embedding(wte, idx) + wpe[:T:2]"'):
        spec = GPT_SPEC.replace('"embedding(wte, idx) + wpe[:T]"', body)
        with pytest.raises(graphc.GraphcError, match="tiny_gpt.toml:.*starts at 0 with step 1") as e:
            graphc.parse_spec(spec, "tiny_gpt.toml")
        assert "hint: write x[:T]" in str(e.value)
    g = graphc.Graph("g", {"T": None, "Q": 3})
    wpe = g.param("wpe", (6, 4))
    with pytest.raises(ShapeError, match="'Q' is not a symbolic dim"):
        wpe[:"Q"]
    x = g.input("x", ("T", 4))
    with pytest.raises(ShapeError, match="cannot slice the batch dim T"):
        x[:"T"]


def test_explain_and_the_python_builder_take_the_new_forms():
    g = graphc.Graph("built", {"B": 2, "T": None})
    idx = g.input("idx", ("B", "T"), dtype="int32")
    wte, wpe = g.param("wte", (11, 8)), g.param("wpe", (6, 8))
    q = g.param("Wq", (8, 8))
    x = graphc.embedding(wte, idx) + wpe[:"T"]
    heads = graphc.permute(graphc.reshape(x @ q.T, (2, "T", 2, 4)), (0, 2, 1, 3))      # [B, 2, T, 4]
    att = graphc.softmax(heads @ graphc.permute(heads, (0, 1, 3, 2)), axis=-1)
    y = graphc.reshape(graphc.permute(att @ heads, (0, 2, 1, 3)), (2, "T", 8))
    g.output("loss", graphc.cross_entropy(y @ wte.T, idx))
    text = graphc.explain(g, of="loss", wrt=["wte", "wpe", "Wq"])
    assert "identity (7)" in text and "∂loss/∂wpe = unslice(" in text and "1/(B·T)" in text
    arrays = {"idx": np.array([[1, 2, 3], [4, 5, 6]], np.int32)}
    rng = np.random.default_rng(14)
    arrays.update({k: rng.normal(size=v.shape) * 0.5 for k, v in g.params.items()})
    check_finite_differences(g, arrays, ["wte", "wpe", "Wq"], of="loss")


# ------------------------------------------------------------------------ an MLP over [B, T, C]
MLP_SPEC = """name = "seq_mlp"
[dims]
N = "batch"
T = 5
C = 8
F = 16
[inputs]
x = ["N", "T", "C"]
y = ["N", "T", "C"]
[params]
W1 = { shape = ["F", "C"], init = "he" }
b1 = ["F"]
W2 = ["C", "F"]
b2 = ["C"]
g  = ["C"]
bb = ["C"]
W3 = ["F", "C"]
b3 = ["F"]
W4 = ["C", "F"]
b4 = ["C"]
[graph]
h1 = "x + gelu(layer_norm(x, (C,), g, bb) @ W1.T + b1) @ W2.T + b2"
h2 = "h1 + gelu(h1 @ W3.T + b3) @ W4.T + b4"
J  = "mse(h2, y)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["W1", "b1", "W2", "b2", "g", "bb", "W3", "b3", "W4", "b4"]
"""


def test_two_layer_mlp_over_rank_3_activations_trains_in_c():
    """Two residual MLP layers over [N, T, C] (x @ W.T + b, gelu, layer_norm over the last axis):
    gradients against finite differences, one SGD train_step in C equal to p - lr * grad of the
    reference, and the loss falls over steps."""
    g = graphc.parse_spec(MLP_SPEC, "seq_mlp.toml")
    rng = np.random.default_rng(15)
    arrays = random_inputs(g, {"N": 2}, rng)
    check_finite_differences(g, arrays, g.grad_spec[1], of="loss")
    m = graphc.compile(g, dtype="float64", optimizer=graphc.SGD(lr=0.05))
    params = graphc.init_params(m, seed=0, dtype="float64")
    data = {"x": rng.normal(size=(6, 5, 8)), "y": rng.normal(size=(6, 5, 8)) * 0.1}
    grads = graphc.evaluate(graphc.grad(g, of="loss", wrt=g.grad_spec[1]), **data, **params)
    state = m.train_state({k: v.copy() for k, v in params.items()})
    first = float(m.train_step(state, **data)["loss"])
    for k in g.grad_spec[1]:
        assert_close(state.params[k], params[k] - 0.05 * grads[f"d_{k}"], f"{k} after one step", 1e-11)
    for _ in range(30):
        last = float(m.train_step(state, **data)["loss"])
    assert last < 0.7 * first


def test_explain_writes_attention_in_the_notes_notation():
    """One GPT block (tests/specs/seq_gpt.toml): kᵀ of each head is written ᵀ, the gradients of
    q kᵀ are δ k (identity (2)) and δᵀ q (identity (5)), and the loss' factor is 1/(2·T)."""
    from pathlib import Path
    g = graphc.load(Path(__file__).resolve().parent / "specs" / "seq_gpt.toml")
    text = graphc.explain(g, of="J", wrt=["Wqkv"])
    assert "softmax(0.5 q kᵀ)" in text and "1/(2·T)" in text, text
    delta = re.search(r"(δ\d+) = ∂J/∂\(q kᵀ\)", text).group(1)
    assert f"permute({delta}ᵀ q)" in text and f"permute({delta} k)" in text, text
