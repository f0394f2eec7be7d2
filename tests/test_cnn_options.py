"""The CNN ops over their options, and their bad input.

1. Bad input (issue 16, item 8): every CNN op given a kernel larger than its padded input, a
   stride of 0, channels not divisible by groups, a rank it does not take, a weight of the wrong
   shape or a negative padding raises a GraphcError naming the spec's file:line, the op, the
   shapes it got and what would be right. Each case is a TOML spec written to tmp_path.
2. Options (item 6): hypothesis over conv2d / conv1d (shapes, strides, paddings with 'same'
   and 'valid', dilations, groups with depthwise, bias or not) and the pools (kernel, stride,
   padding, dilation, ceil_mode, count_include_pad, divisor_override): the NumPy reference's
   gradients against central differences in float64 (no C: cheap per example).
3. The C build against the reference in float32 and float64 at shapes across the GEMM blocking
   (17, 33, 65 channels and columns): a few models compiled once each, hypothesis varying the
   data and the batch, not the shapes (a compile costs seconds; an example, milliseconds).
4. Where PyTorch is installed: the same options, layer_norm and where forward and backward
   against torch.nn.functional (tests/test_ops_cnn.py compares a fixed CNN spec).
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import graphc
from graphc.ops import REGISTRY

# ====================================================================== 1. bad input
HEAD = '''name = "bad"

[dims]
N = "batch"

[inputs]
x = ["N", 3, 8, 8]
s = ["N", 4, 10]
v = ["N", 6]

[params]
w = [6, 3, 3, 3]
wg = [6, 1, 3, 3]
k = [5, 4, 3]
k2 = [5, 3, 3]
b = [6]
g = [8]

[graph]
h = "relu(x)"
'''
LINE = HEAD.count("\n") + 1          # the line of `y`

# (id, expression of y, the error class, texts the message must hold: op and shapes, what is wrong, the fix)
BAD = [
    # a kernel larger than the padded input
    ("conv2d-kernel", "conv2d(h, w, dilation=5)", graphc.ShapeError,
     ["conv2d", "h is (N, 3, 8, 8)", "w is (6, 3, 3, 3)", "kernel spans (11, 11)", "padded input (8, 8)",
      "hint: use a smaller kernel or dilation, or more padding"]),
    ("conv1d-kernel", "conv1d(s, k, dilation=6)", graphc.ShapeError,
     ["conv1d", "s is (N, 4, 10)", "k is (5, 4, 3)", "kernel spans 13", "padded input 10 (length 10, padding 0)",
      "hint: use a smaller kernel"]),
    ("max_pool2d-kernel", "max_pool2d(h, 9)", graphc.ShapeError,
     ["max_pool2d", "h is (N, 3, 8, 8)", "kernel spans (9, 9)", "padded input (8, 8)", "hint: use a smaller kernel"]),
    ("avg_pool2d-kernel", "avg_pool2d(h[:, :, :2], (3, 5), padding=(0, 2))", graphc.ShapeError,
     ["avg_pool2d", "(N, 3, 2, 8)", "kernel spans (3, 5)", "padded input (2, 12)", "hint: use a smaller kernel"]),
    # a stride of 0
    ("conv2d-stride", "conv2d(h, w, stride=(1, 0))", graphc.ShapeError,
     ["conv2d", "h is (N, 3, 8, 8)", "stride (1, 0) must be >= 1", "hint: a stride of 0 would never move the kernel"]),
    ("conv1d-stride", "conv1d(s, k, stride=0)", graphc.ShapeError,
     ["conv1d", "s is (N, 4, 10)", "stride 0 must be >= 1", "hint: a stride of 0 would never move the kernel"]),
    ("max_pool2d-stride", "max_pool2d(h, 2, 0)", graphc.ShapeError,
     ["max_pool2d", "h is (N, 3, 8, 8)", "stride 0 must be >= 1", "hint: a stride of 0"]),
    ("avg_pool2d-stride", "avg_pool2d(h, 2, stride=0)", graphc.ShapeError,
     ["avg_pool2d", "h is (N, 3, 8, 8)", "stride 0 must be >= 1", "hint: a stride of 0"]),
    # channels not divisible by groups
    ("conv2d-groups", "conv2d(h, wg, groups=2)", graphc.ShapeError,
     ["conv2d", "h is (N, 3, 8, 8)", "wg is (6, 1, 3, 3)", "groups=2 must divide the input channels (3) and the "
      "output channels (6)", "hint: groups must divide both: 1, 3 (3 is depthwise)"]),
    ("conv1d-groups", "conv1d(s, k, groups=2)", graphc.ShapeError,
     ["conv1d", "s is (N, 4, 10)", "k is (5, 4, 3)", "groups=2 must divide the input channels (4) and the output "
      "channels (5)", "hint: groups must divide both: 1"]),
    # a rank the op does not take
    ("conv2d-rank", "conv2d(v, w)", graphc.ShapeError,
     ["conv2d", "v is (N, 6)", "takes x of rank 4 [N, C, H, W], got rank 2"]),
    ("conv1d-rank", "conv1d(h, k)", graphc.ShapeError,
     ["conv1d", "h is (N, 3, 8, 8)", "takes x of rank 3 [N, C, L], got rank 4", "hint: an image [N, C, H, W] goes to conv2d"]),
    ("max_pool2d-rank", "max_pool2d(s, 2)", graphc.ShapeError,
     ["max_pool2d", "s is (N, 4, 10)", "takes x of rank 4 [N, C, H, W], got rank 3"]),
    ("avg_pool2d-rank", "avg_pool2d(v, 2)", graphc.ShapeError,
     ["avg_pool2d", "v is (N, 6)", "takes x of rank 4 [N, C, H, W], got rank 2"]),
    ("adaptive_avg_pool2d-rank", "adaptive_avg_pool2d(s, 1)", graphc.ShapeError,
     ["adaptive_avg_pool2d", "s is (N, 4, 10)", "takes x of rank 4 [N, C, H, W], got rank 3"]),
    ("layer_norm-rank", "layer_norm(v, (3, 6))", graphc.ShapeError,
     ["layer_norm", "v is (N, 6)", "normalized_shape (3, 6) must be the last dims of x", "hint: e.g. normalized_shape=(6,)"]),
    ("pad-rank", "pad(v, (1, 1, 1, 1, 1, 1))", graphc.ShapeError,
     ["pad", "v is (N, 6)", "for at most 2 axes", "hint: e.g. pad(x, (1, 1, 2, 2))"]),
    ("permute-rank", "permute(h, (0, 2, 1))", graphc.ShapeError,
     ["permute", "h is (N, 3, 8, 8)", "axes (0, 2, 1) are not an order of the 4 axes", "hint: e.g. permute(x, (3, 2, 1, 0))"]),
    ("flatten-rank", "flatten(v, start_dim=2)", graphc.ShapeError,
     ["flatten", "v is (N, 6)", "axis 2 is out of range for rank 2", "hint: an axis of a rank-2 value is from -2 to 1"]),
    ("slice-rank", "h[:, 0, 0, 0, 0]", graphc.SpecError,
     ["slice", "h is (N, 3, 8, 8)", "5 indices for a value of rank 4", "hint: at most 4 indices"]),
    ("concat-rank", "concat(h, s, axis=1)", graphc.ShapeError,
     ["concat", "h is (N, 3, 8, 8)", "s is (N, 4, 10)", "(N, 4, 10) does not fit (N, *, 8, 8)", "hint: concat joins along axis 1"]),
    ("conv2d-weight-rank", "conv2d(h, k)", graphc.ShapeError,
     ["conv2d", "k is (5, 4, 3)", "takes w of rank 4 [C_out, C_in/groups, kh, kw], got rank 3"]),
    ("conv1d-weight-rank", "conv1d(s, w)", graphc.ShapeError,
     ["conv1d", "w is (6, 3, 3, 3)", "takes w of rank 3 [C_out, C_in/groups, k], got rank 4",
      "hint: a weight [C_out, C_in/groups, kh, kw] goes with conv2d"]),
    # a weight of the wrong shape
    ("conv2d-weight", "conv2d(h, wg)", graphc.ShapeError,
     ["conv2d", "h is (N, 3, 8, 8)", "wg is (6, 1, 3, 3)", "second dim must be 3", "hint: w of shape (6, 3, 3, 3)"]),
    ("conv1d-weight", "conv1d(s, k2)", graphc.ShapeError,
     ["conv1d", "s is (N, 4, 10)", "k2 is (5, 3, 3)", "second dim must be 4", "hint: w of shape (5, 4, 3)"]),
    ("conv2d-bias", "conv2d(h, w, g)", graphc.ShapeError,
     ["conv2d", "g is (8,)", "the bias must have shape (6,) (one per output channel), got (8,)"]),
    ("layer_norm-weight", "layer_norm(h, (8,), b)", graphc.ShapeError,
     ["layer_norm", "h is (N, 3, 8, 8)", "b is (6,)", "weight must have shape (8,), got (6,)"]),
    # negative padding
    ("conv2d-padding", "conv2d(h, w, padding=(1, -1))", graphc.ShapeError,
     ["conv2d", "h is (N, 3, 8, 8)", "padding (1, -1) must be >= 0", "hint: padding adds that many zeros on each side"]),
    ("conv1d-padding", "conv1d(s, k, padding=-2)", graphc.ShapeError,
     ["conv1d", "s is (N, 4, 10)", "padding -2 must be >= 0", "hint: padding adds that many zeros"]),
    ("max_pool2d-padding", "max_pool2d(h, 3, padding=-1)", graphc.ShapeError,
     ["max_pool2d", "h is (N, 3, 8, 8)", "padding -1 must be >= 0", "hint: padding adds"]),
    ("avg_pool2d-padding", "avg_pool2d(h, 3, padding=2)", graphc.ShapeError,
     ["avg_pool2d", "h is (N, 3, 8, 8)", "padding 2 is more than half the kernel (3, 3)",
      "hint: as in torch, padding <= kernel_size / 2, here at most (1, 1)"]),
    ("pad-padding", "pad(h, (1, -1))", graphc.ShapeError,
     ["pad", "h is (N, 3, 8, 8)", "pad (1, -1) must be pairs of counts >= 0"]),
    # the other options
    ("adaptive_avg_pool2d-size", "adaptive_avg_pool2d(h, 2)", graphc.ShapeError,
     ["adaptive_avg_pool2d", "h is (N, 3, 8, 8)", "supports output_size 1", "hint: avg_pool2d with a kernel"]),
    ("avg_pool2d-flag", "avg_pool2d(h, 2, ceil_mode=1)", graphc.SpecError,
     ["avg_pool2d", "h is (N, 3, 8, 8)", "ceil_mode must be True or False, got 1"]),
    ("avg_pool2d-divisor", "avg_pool2d(h, 2, divisor_override=0)", graphc.SpecError,
     ["avg_pool2d", "h is (N, 3, 8, 8)", "divisor_override must be None or a positive int, got 0"]),
    ("max_pool2d-same", "max_pool2d(h, 3, 1, 'same')", graphc.ShapeError,
     ["max_pool2d", "h is (N, 3, 8, 8)", "takes padding as numbers, got 'same'", "hint: pooling has no 'same'"]),
    ("slice-empty", "h[:, 5:9]", graphc.SpecError,
     ["slice", "h is (N, 3, 8, 8)", "slice 5:9 of axis 1 (size 3) is empty", "hint: axis 1 has indices 0 to 2"]),
    ("slice-index", "h[:, :, -9]", graphc.SpecError,
     ["slice", "h is (N, 3, 8, 8)", "index -9 is out of range for axis 2 (size 8)", "hint: an index of axis 2 is from -8 to 7"]),
    ("where-broadcast", "where(v, h, 0.0)", graphc.ShapeError,
     ["where", "v is (N, 6)", "h is (N, 3, 8, 8)", "cannot broadcast"]),
]


@pytest.mark.parametrize("expr, cls, texts", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_names_the_spec_line_the_op_the_shapes_and_the_fix(tmp_path, expr, cls, texts):
    path = tmp_path / "bad.toml"
    path.write_text(HEAD + f'y = "{expr}"\n\n[outputs]\ny = "y"\n', encoding="utf-8")
    with pytest.raises(cls) as info:
        graphc.load(path)
    text = str(info.value)
    assert text.startswith(f"{path}:{LINE}:"), text
    assert f"in graph.y: {texts[0]}" in text, text
    for t in texts[1:]:
        assert t in text, f"{t!r} not in:\n{text}"


def test_bad_input_covers_every_cnn_op_and_every_kind():
    ops = {c[0].split("-")[0] for c in BAD}
    assert {"conv1d", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "layer_norm", "pad", "permute",
            "flatten", "slice", "concat"} <= ops
    for kind in ("kernel", "stride", "groups", "rank", "weight", "padding"):
        assert any(c[0].endswith("-" + kind) for c in BAD), kind


def test_bad_input_from_the_builder_is_the_same_error_without_a_file():
    g = graphc.Graph("b")
    x = g.input("x", ("N", 3, 8, 8))
    w = g.param("w", (6, 1, 3, 3))
    with pytest.raises(graphc.ShapeError, match=r"conv2d: x is \(N, 3, 8, 8\), w is \(6, 1, 3, 3\): groups=2") as e:
        graphc.conv2d(x, w, groups=2)
    assert e.value.hint == "groups must divide both: 1, 3 (3 is depthwise)"


# ====================================================================== 2. options vs finite differences
def _pairs(draw, low, high):
    a = draw(st.integers(low, high))
    return a if draw(st.booleans()) else (a, draw(st.integers(low, high)))


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


@st.composite
def conv2d_options(draw):
    groups_kind = draw(st.sampled_from(["one", "two", "depthwise"]))
    c_in = {"one": draw(st.integers(1, 3)), "two": 2 * draw(st.integers(1, 2)), "depthwise": draw(st.integers(2, 3))}[groups_kind]
    groups = {"one": 1, "two": 2, "depthwise": c_in}[groups_kind]
    c_out = groups * draw(st.integers(1, 2))
    h, w = draw(st.integers(3, 7)), draw(st.integers(3, 7))
    kernel = _pair(_pairs(draw, 1, 3))
    dilation = _pairs(draw, 1, 2)
    padding = draw(st.sampled_from(["int", "same", "valid"]))
    stride = 1 if padding == "same" else _pairs(draw, 1, 3)
    if padding == "int":
        padding = _pairs(draw, 0, 2)
    pads = {"same": (0, 0), "valid": (0, 0)}.get(padding, _pair(padding)) if isinstance(padding, str) else _pair(padding)
    span = [d * (k - 1) + 1 for d, k in zip(_pair(dilation), kernel)]
    assume(padding == "same" or all(s <= n + 2 * p for s, n, p in zip(span, (h, w), pads)))
    return dict(x=(draw(st.integers(1, 2)), c_in, h, w), w=(c_out, c_in // groups) + kernel, bias=draw(st.booleans()),
                attrs=dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


@st.composite
def conv1d_options(draw):
    o = draw(conv2d_options())
    n, c, _, length = o["x"]
    a = {k: (v[1] if isinstance(v, tuple) else v) for k, v in o["attrs"].items()}
    return dict(x=(n, c, length), w=o["w"][:2] + o["w"][3:], bias=o["bias"], attrs=a)


@st.composite
def pool_options(draw):
    op = draw(st.sampled_from(["max_pool2d", "avg_pool2d"]))
    kernel = _pairs(draw, 1, 3)
    k = _pair(kernel)
    stride = draw(st.one_of(st.none(), st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = draw(st.tuples(st.integers(0, k[0] // 2), st.integers(0, k[1] // 2)))
    attrs = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=draw(st.booleans()))
    if op == "max_pool2d":
        attrs["dilation"] = _pairs(draw, 1, 2)
    else:
        attrs["count_include_pad"] = draw(st.booleans())
        attrs["divisor_override"] = draw(st.sampled_from([None, None, 2, 5]))
    d = _pair(attrs.get("dilation", 1))
    h, w = draw(st.integers(2, 8)), draw(st.integers(2, 8))
    assume(all(dd * (kk - 1) + 1 <= n + 2 * p for dd, kk, n, p in zip(d, k, (h, w), padding)))
    return dict(op=op, x=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), attrs=attrs)


def _graph(op, shapes, attrs):
    """y = op(x, w, b, **attrs) and L = sum(y ∘ v), built with the Python builder."""
    g = graphc.Graph("opt")
    args = [g.input("x", shapes[0])] + [g.param(f"p{i}", s) for i, s in enumerate(shapes[1:])]
    names = REGISTRY[op].input_names or ("x", "y", "z")     # by keyword: torch's order (layer_norm's weight after normalized_shape)
    y = getattr(graphc, op)(args[0], **dict(zip(names[1:], args[1:])), **attrs)
    g.output("y", y)
    g.output("L", graphc.sum(y * g.input("v", y.shape)))
    return g


def _check_directional(g, arrays, rng, eps=1e-6):
    """⟨u, ∂L/∂a⟩ of the reference VJP against central differences (L(a + εu) − L(a − εu)) / 2ε, for
    every real input a and two random directions u."""
    wrt = [k for k in arrays if k != "v"]
    grads = graphc.evaluate(graphc.grad(g, "L", wrt), **arrays)
    for k in wrt:
        for _ in range(2):
            u = rng.standard_normal(arrays[k].shape)
            up = graphc.evaluate(g, **{**arrays, k: arrays[k] + eps * u})["L"]
            down = graphc.evaluate(g, **{**arrays, k: arrays[k] - eps * u})["L"]
            numeric, analytic = (up - down) / (2 * eps), float(np.sum(u * grads[f"d_{k}"]))
            assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (k, numeric, analytic)


def _conv_case(o):
    shapes = [o["x"], o["w"]] + ([(o["w"][0],)] if o["bias"] else [])
    return shapes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv2d_options(), st.integers(0, 2**31 - 1))
def test_conv2d_options_reference_gradients_match_finite_differences(o, seed):
    rng = np.random.default_rng(seed)
    g = _graph("conv2d", _conv_case(o), o["attrs"])
    arrays = {k: rng.standard_normal(v.shape) for k, v in {**g.inputs, **g.params}.items()}
    _check_directional(g, arrays, rng)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv1d_options(), st.integers(0, 2**31 - 1))
def test_conv1d_options_reference_gradients_match_finite_differences(o, seed):
    rng = np.random.default_rng(seed)
    g = _graph("conv1d", _conv_case(o), o["attrs"])
    arrays = {k: rng.standard_normal(v.shape) for k, v in {**g.inputs, **g.params}.items()}
    _check_directional(g, arrays, rng)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool_options(), st.integers(0, 2**31 - 1))
def test_pool_options_reference_gradients_match_finite_differences(o, seed):
    rng = np.random.default_rng(seed)
    g = _graph(o["op"], [o["x"]], o["attrs"])
    arrays = {k: rng.standard_normal(v.shape) for k, v in g.inputs.items()}
    _check_directional(g, arrays, rng)


# ====================================================================== 3. C against the reference
# Shapes across the GEMM blocking: 17, 33 and 65 as channels, patch columns and output pixels.
C_SPEC = '''name = "cnn_blocking"

[dims]
N = "batch"

[inputs]
x = ["N", 17, 9, 9]
s = ["N", 33, 20]
m = ["N", 1, 5, 5]

[params]
w1 = [33, 17, 3, 3]
b1 = [33]
dw = [33, 1, 3, 3]
w2 = [65, 33, 1, 1]
k1 = [66, 11, 3]
kb = [66]

[graph]
h = "relu(conv2d(x, w1, b1, padding=1))"
e = "conv2d(h, dw, padding='same', dilation=2, groups=33)"
p = "max_pool2d(e, 3, stride=2, padding=1, ceil_mode=True) + avg_pool2d(e, 3, 2, 1, True, False)"
q = "conv2d(where(m, p, 0.25 * p), w2)"
r = "conv1d(s, k1, kb, stride=2, padding=2, groups=3)"
t = "avg_pool2d(h[:, :, 1:, :8], (2, 3), padding=(1, 0), ceil_mode=True, divisor_override=4)"
J = "mean(q * q) + sum(max(r, axis=(1, -1), keepdims=True)) + mean(max(q, (2, 3))) + mean(t) + mean(max(e, -1)) + mean(max_pool2d(h, 2, 1, 0, 2, True))"

[outputs]
loss = "J"
q = "q"
r = "r"

[grad]
of = "J"
wrt = ["w1", "b1", "dw", "w2", "k1", "kb", "x", "s"]
'''


@functools.lru_cache(maxsize=None)
def _compiled(dtype):
    g = graphc.parse_spec(C_SPEC, "cnn_blocking.toml")
    wrt = g.grad_spec[1]
    return g, graphc.grad(g, "J", wrt), graphc.compile(g, dtype=dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.sampled_from([1, 2, 5]), seed=st.integers(0, 2**31 - 1))
def test_c_matches_reference_across_the_gemm_blocking(dtype, n, seed):
    """One model compiled per dtype; the examples draw the batch and the values."""
    g, bwd, m = _compiled(dtype)
    rng = np.random.default_rng(seed)
    arrays = {k: rng.standard_normal([n if d == "N" else d for d in v.shape]) * (0.3 if k in g.params else 1.0)
              for k, v in {**g.inputs, **g.params}.items()}
    arrays["m"] = (arrays["m"] > 0).astype(np.float64)
    real = np.float32 if dtype == "float32" else np.float64
    outs, grads = m.value_and_grad(**{k: a.astype(real) for k, a in arrays.items()})
    want = graphc.evaluate(bwd, **arrays)
    forward = graphc.evaluate(g, **arrays)
    rtol, atol = (2e-4, 2e-5) if dtype == "float32" else (1e-10, 1e-12)
    for k in ("loss", "q", "r"):
        np.testing.assert_allclose(outs[k], forward[k], rtol=rtol, atol=atol, err_msg=k)
    for k, got in grads.items():
        scale = np.abs(want[f"d_{k}"]).max()
        np.testing.assert_allclose(got, want[f"d_{k}"], rtol=rtol, atol=atol * max(1.0, scale), err_msg=f"d_{k}")


def test_where_and_the_pool_keywords_write_back_as_a_spec_that_computes_the_same():
    from graphc.frontend.spec_writer import to_spec
    g = graphc.parse_spec(C_SPEC, "a.toml")
    text = to_spec(g)
    assert "count_include_pad=False" in text and "divisor_override=4" in text and "where(m, p, 0.25 * p)" in text
    back = graphc.parse_spec(text, "b.toml")
    rng = np.random.default_rng(0)
    arrays = {k: rng.standard_normal([2 if d == "N" else d for d in v.shape]) for k, v in {**g.inputs, **g.params}.items()}
    want, got = graphc.evaluate(g, **arrays), graphc.evaluate(back, **arrays)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)


# ====================================================================== 4. against PyTorch (optional)
def _torch_compare(op, args, attrs, torch_fn, rng):
    """Forward and every gradient of sum(op(...) ∘ v), graphc's reference against torch in float64."""
    torch = pytest.importorskip("torch")
    shapes = [a.shape for a in args]
    g = _graph(op, shapes, attrs)
    y_shape = g.inputs["v"].shape
    v = rng.standard_normal(y_shape)
    names = ["x"] + [f"p{i}" for i in range(len(args) - 1)]
    arrays = dict(zip(names, args), v=v)
    t = [torch.tensor(a, requires_grad=True) for a in args]
    ty = torch_fn(*t)
    (ty * torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(graphc.evaluate(g, **arrays)["y"], ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    grads = graphc.evaluate(graphc.grad(g, "L", names), **arrays)
    for name, tt in zip(names, t):
        np.testing.assert_allclose(grads[f"d_{name}"], tt.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name)


@pytest.mark.filterwarnings("ignore:Using padding='same'")     # torch's note on its own speed
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv2d_options(), st.integers(0, 2**31 - 1))
def test_conv2d_options_agree_with_torch(o, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal(s) for s in _conv_case(o)]
    a = o["attrs"]
    _torch_compare("conv2d", args, a, lambda x, w, b=None: torch.nn.functional.conv2d(
        x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"]), rng)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv1d_options(), st.integers(0, 2**31 - 1))
def test_conv1d_options_agree_with_torch(o, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal(s) for s in _conv_case(o)]
    a = o["attrs"]
    _torch_compare("conv1d", args, a, lambda x, w, b=None: torch.nn.functional.conv1d(
        x, w, b, a["stride"], a["padding"], a["dilation"], a["groups"]), rng)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool_options(), st.integers(0, 2**31 - 1))
def test_pool_options_agree_with_torch(o, seed):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    fn = getattr(torch.nn.functional, o["op"])
    _torch_compare(o["op"], [rng.standard_normal(o["x"])], o["attrs"], lambda x: fn(x, **o["attrs"]), rng)


def test_layer_norm_and_where_agree_with_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    x, wt, bs = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    _torch_compare("layer_norm", [x, wt, bs], {"normalized_shape": (4, 5), "eps": 1e-3},
                   lambda x, w, b: F.layer_norm(x, (4, 5), w, b, eps=1e-3), rng)
    _torch_compare("layer_norm", [rng.standard_normal((3, 6))], {"normalized_shape": 6},
                   lambda x: F.layer_norm(x, (6,)), rng)
    mask = (rng.standard_normal((2, 1, 5)) > 0).astype(np.float64)
    a, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((5,))
    g = graphc.Graph("w")
    mv, av, bv = g.input("m", mask.shape), g.input("a", a.shape), g.param("b", b.shape)
    y = graphc.where(mv, av, bv)
    g.output("y", y)
    v = rng.standard_normal(y.shape)
    g.output("L", graphc.sum(y * g.input("v", y.shape)))
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    ty = torch.where(torch.tensor(mask) != 0, ta, tb)
    (ty * torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(graphc.evaluate(g, m=mask, a=a, b=b, v=v)["y"], ty.detach().numpy())
    grads = graphc.evaluate(graphc.grad(g, "L", ["a", "b"]), m=mask, a=a, b=b, v=v)
    np.testing.assert_allclose(grads["d_a"], ta.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads["d_b"], tb.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_packing_need_of_a_convolution_follows_its_rows_per_image(dtype):
    """A convolution's GEMM has M = N·Ho·Wo rows (25 n for a 5×5 output): the packing need steps
    where 25 n passes a multiple of the register tile, not where n does (float32 once failed to
    build a 1×1 convolution 33 -> 65 channels: 'packing need is not linear between breakpoints')."""
    from graphc.backend.packing import Product, pack_elems, pack_pieces, pieces_value
    products = [Product(0, 1, (0, 25), (65,), (33,)), Product(1, 0, (33,), (65,), (0, 25)),
                Product(0, 0, (0, 11), (22,), (33,))]
    pieces = pack_pieces(products, dtype)
    for n in range(1, 300):
        for threads in (1, 2):
            want = max(pack_elems(p.ta, p.tb, *p.at(n), threads, dtype) for p in products)
            assert pieces_value(pieces, n, threads) == want, (n, threads)


WHERE_SPEC = '''name = "masked"

[dims]
N = "batch"

[inputs]
x = ["N", 3, 4]
m = ["N", 1, 4]

[params]
a = [3, 4]
c = [4]

[graph]
h = "where(m, tanh(x * a), c)"
J = "sum(h * h) + mean(where(m, c, 2.0))"

[outputs]
loss = "J"
h = "h"

[grad]
of = "J"
wrt = ["a", "c", "x"]
'''


def test_where_with_a_broadcast_mask_in_c():
    """where(m, δ, 0) with the mask m [N, 1, 4] broadcast over the middle axis: GCC 12 at -O3 with
    AVX-512 miscompiled it as `m != 0 ? δ : 0` (δ read at m's stride from the second row on);
    graphc_kernels.h's GC_WHERE picks from a two-element array instead."""
    g = graphc.parse_spec(WHERE_SPEC, "masked.toml")
    m = graphc.compile(g, dtype="float64")
    rng = np.random.default_rng(1)
    arrays = dict(x=rng.standard_normal((5, 3, 4)), m=(rng.standard_normal((5, 1, 4)) > 0) * 1.0,
                  a=rng.standard_normal((3, 4)), c=rng.standard_normal(4))
    outs, grads = m.value_and_grad(**arrays)
    want = graphc.evaluate(graphc.grad(g, "J", ["a", "c", "x"]), **arrays)
    np.testing.assert_allclose(outs["h"], graphc.evaluate(g, **arrays)["h"], rtol=1e-12)
    for k in ("a", "c", "x"):
        np.testing.assert_allclose(grads[k], want[f"d_{k}"], rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_where_and_the_new_pool_keywords_emit_strict_c99(dtype, tmp_path):
    """The C of C_SPEC (where, ceil_mode, count_include_pad, divisor_override, dilation) compiles
    under -std=c99 -Wall -Wextra -Werror -pedantic, split and amalgamated."""
    import shutil
    import subprocess
    from graphc.backend.codegen import amalgamate, generate
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    g = graphc.parse_spec(C_SPEC, "cnn_blocking.toml")
    csrc = generate(g, *g.grad_spec, dtype=dtype, threads=2)
    (tmp_path / f"{g.name}.h").write_text(csrc.header)
    (tmp_path / csrc.kernels.header_name).write_text(csrc.kernels.header)
    for text in (csrc.source, amalgamate(csrc)):
        (tmp_path / f"{g.name}.c").write_text(text)
        run = subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c", f"{g.name}.c",
                              "-o", "m.o"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and not run.stderr, run.stderr
