"""The C backend against the NumPy reference: every op (public, and internal ones reached through
gradients) and every example, C forward and C gradients, float64 and float32, batch sizes 1, 2, 37.

Ops are grouped into a few small graphs (each distinct graph costs a compile), every op of a
graph feeding one scalar loss so that each contributes to the gradients."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.tools.check import random_arrays
from graphc.core.ir import INT
from graphc.ops import REGISTRY
from conftest import SMALL_EXAMPLES

EXAMPLES = SMALL_EXAMPLES
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}   # relative to the largest magnitude of the reference
BATCHES = (1, 2, 37)


# ---------------------------------------------------------------- the op graphs
def elementwise_graph() -> graphc.Graph:
    g = graphc.Graph("ops_elementwise")
    x = g.input("x", ("N", 5))
    y = g.input("y", ("N", 5))
    p = g.input("p", ("N", 5))        # positive: read by log and sqrt
    c = g.input("c", ("N", 1))        # broadcast along the row
    w = g.param("w", (5,))
    b = g.param("b", (5,))
    outs = {
        "relu": graphc.relu(x), "sigmoid": graphc.sigmoid(x * 3.0), "tanh": graphc.tanh(x),
        "exp": graphc.exp(x * 0.5), "log": graphc.log(p), "sqrt": graphc.sqrt(p),
        "square": graphc.square(x), "sign": graphc.sign(x), "neg": -x,
        "sub": x - y, "mul": x * y, "div": y / p, "bias": x + b, "scale": c * x, "rsub": 1.0 - x,
        "rdiv": 2.0 / p,
    }
    total = None
    for k, (name, v) in enumerate(outs.items()):
        g.output(name, v)
        term = graphc.sum(v * w * (0.5 + 0.1 * k))
        total = term if total is None else total + term
    g.output("J", total)
    return g


def reduction_graph() -> graphc.Graph:
    g = graphc.Graph("ops_reduce")
    x = g.input("x", ("N", 6))
    t = g.input("t", ("N", 6))
    v = g.param("v", (6,))
    m = g.param("m", (2, 3))
    outs = {
        "sum_all": graphc.sum(x), "sum0": graphc.sum(x, axis=0), "sum1": graphc.sum(x, axis=1),
        "sum_keep": graphc.sum(x * v, axis=-1, keepdims=True), "mean_all": graphc.mean(x),
        "mean0": graphc.mean(x, axis=0), "mean1": graphc.mean(x * x, axis=-1), "dot": graphc.dot(x, t),
        "dot_v": graphc.dot(x, v), "norm2": graphc.norm2(x), "mse": graphc.mse(x, t),
        "reshape": graphc.reshape(x * v, shape=("N", 2, 3)), "reshape_p": graphc.reshape(m, shape=(6,)),
    }
    total = None
    for k, (name, value) in enumerate(outs.items()):
        g.output(name, value)
        term = graphc.sum(value * value) * (0.3 + 0.1 * k)
        total = term if total is None else total + term
    g.output("J", total + graphc.sum(graphc.reshape(outs["reshape"], shape=("N", 6)) * v))
    return g


def softmax_graph() -> graphc.Graph:
    g = graphc.Graph("ops_softmax")
    x = g.input("x", ("N", 4))
    y = g.input("y", ("N",), dtype="int32")
    t = g.input("t", ("N", 7))        # a real target: one distribution per row
    W = g.param("W", (7, 4))
    b = g.param("b", (7,))
    theta = x @ W.T + b
    sm = graphc.softmax(theta)
    lsm = graphc.log_softmax(theta)
    ce = graphc.cross_entropy(theta, y)
    ce_real = graphc.cross_entropy(theta * 0.5, t)
    g.output("softmax", sm)
    g.output("log_softmax", lsm)
    g.output("ce", ce)
    g.output("ce_real", ce_real)
    g.output("J", ce + ce_real + graphc.sum(sm * theta) * 0.1 + graphc.sum(lsm * t) * 0.05)
    return g


def linear_graph() -> graphc.Graph:
    g = graphc.Graph("ops_linear")
    x = g.input("x", ("N", 5))
    W = g.param("W", (4, 5))
    V = g.param("V", (5, 3))
    v = g.param("v", (5,))
    a = x @ W.T                      # row form, identity (2)/(6)
    c = W @ v                        # column form, identity (1)/(5)
    outs = {
        "a": a, "xv": x @ V, "c": c, "vW": v @ W.T, "ac": a @ c, "WtW": W.T @ W, "vv": v @ v,
        "aTa": a.T @ a,              # contracts over the batch dim
        "tr": graphc.sum(a.T, axis=0),
    }
    total = None
    for k, (name, value) in enumerate(outs.items()):
        g.output(name, value)
        term = graphc.sum(value * value) * (0.2 + 0.05 * k)
        total = term if total is None else total + term
    g.output("J", total)
    return g


def gather_graph() -> graphc.Graph:
    g = graphc.Graph("ops_gather")
    ids = g.input("ids", ("N",), dtype="int32")
    ids2 = g.input("ids2", ("N",), dtype="int32")
    x = g.input("x", ("N", 3))
    E = g.param("E", (11, 4))          # 11 rows: ids repeat at N = 37, and repeats must accumulate
    F = g.param("F", (6, 2))
    e = graphc.concat(graphc.embedding(E, ids), x, graphc.embedding(F, ids2), graphc.embedding(E, ids2))
    h = graphc.tanh(e)
    g.output("e", e)
    g.output("J", graphc.sum(h * h) + graphc.sum(graphc.embedding(E, ids) * 0.5))
    return g


def column_graph() -> graphc.Graph:
    """No batch dim: one example as a column vector (the notes' form)."""
    g = graphc.Graph("ops_column")
    x = g.input("x", (5,))
    t = g.input("t", (3,))
    W = g.param("W", (4, 5))
    U = g.param("U", (3, 4))
    b = g.param("b", (4,))
    h = graphc.sigmoid(W @ x + b)
    out = U @ h
    g.output("out", out)
    g.output("J", graphc.mse(out, t) + graphc.norm2(h) + graphc.dot(h, h))
    return g


def tensor_graph() -> graphc.Graph:
    """Rank 4 (NCHW): the activations, broadcasting over channels, the layout ops, slices."""
    g = graphc.Graph("ops_tensor")
    x = g.input("x", ("N", 3, 4, 5))
    s = g.param("s", (3, 1, 1))
    a = graphc.tanh(x * s)
    acts = graphc.leaky_relu(a, negative_slope=0.1) + graphc.elu(a) + graphc.softplus(a) + graphc.gelu(a) \
        + graphc.gelu(a, approximate="tanh") + graphc.silu(a) + graphc.erf(a)
    outs = {
        "acts": acts, "perm": graphc.permute(acts, (0, 2, 3, 1)), "flat": graphc.flatten(acts, start_dim=2),
        "cat": graphc.concat(a, acts * a, axis=1), "pool": graphc.mean(acts, axis=(2, 3), keepdims=True),
        "row": graphc.reshape(acts, ("N", -1)), "pad": graphc.pad(acts, (1, 2, 0, 1), value=0.5),
        "norm": graphc.layer_norm(acts, (4, 5), g.param("ln_w", (4, 5)), g.param("ln_b", (4, 5))), "sliced": acts[:, 1:, ::2, 0] * a[:, :2, 1:4:2, -1],
    }
    total = None
    for k, (name, value) in enumerate(outs.items()):
        g.output(name, value)
        term = graphc.sum(value * value) * (0.2 + 0.05 * k)
        total = term if total is None else total + term
    g.output("J", total)
    return g


def conv_graph() -> graphc.Graph:
    """Convolutions and pooling; the first conv's patch rows (30 channels x 3 x 3 = 270) are deeper
    than one packed GEMM panel (KC: 128 doubles, 256 floats), and its weight gradient sums over
    N x 36 pixels; a 1x1 convolution (8 -> 35 channels, bias and relu) runs as one GEMM per image."""
    g = graphc.Graph("ops_conv")
    x = g.input("x", ("N", 30, 6, 6))
    w1, b1 = g.param("w1", (8, 30, 3, 3)), g.param("b1", (8,))
    dw = g.param("dw", (8, 1, 3, 3))            # depthwise
    w3, b3 = g.param("w3", (4, 8, 5)), g.param("b3", (4,))
    pw, pb = g.param("pw", (35, 8, 1, 1)), g.param("pb", (35,))   # 1x1: one GEMM per image
    y = graphc.relu(graphc.conv2d(x, w1, b1, padding=1))
    rm, rv = g.state("rm", (8,)), g.state("rv", (8,))
    outs = {
        "depthwise": graphc.conv2d(y, dw, stride=2, padding=1, groups=8),
        "bn": graphc.dropout(graphc.batch_norm(y, rm, rv, g.param("bn_w", (8,)), g.param("bn_b", (8,))), 0.3),
        "where": graphc.where(graphc.relu(y[:, :, :, 0]), y[:, :, :, 1], 0.5),
        "maxpool": graphc.max_pool2d(y, 2), "avgpool": graphc.avg_pool2d(y, 3, stride=1, padding=1),
        "gap": graphc.adaptive_avg_pool2d(y, 1), "max": graphc.max(y, axis=(2, 3)),
        "conv1d": graphc.conv1d(graphc.reshape(y, ("N", 8, 36)), w3, b3, stride=2, dilation=2),
        "pointwise": graphc.relu(graphc.conv2d(y, pw, pb)),
    }
    total = None
    for k, (name, value) in enumerate(outs.items()):
        g.output(name, value)
        term = graphc.sum(value * value) * (0.2 + 0.05 * k)
        total = term if total is None else total + term
    g.output("J", total)
    return g


def attention_graph() -> graphc.Graph:
    """scaled_dot_product_attention, causal (Tq = Tk) and not (Tq != Tk): its forward kernel (O and
    the row log-sum-exp) and its fused backward kernel."""
    g = graphc.Graph("ops_attention")
    q, k, v = g.input("q", ("N", 2, 5, 3)), g.input("k", ("N", 2, 7, 3)), g.input("v", ("N", 2, 7, 4))
    s = g.param("s", (1, 2, 1, 1))
    qs = graphc.tanh(q * s)
    g.output("causal", graphc.scaled_dot_product_attention(qs, qs, qs, is_causal=True))
    g.output("cross", graphc.scaled_dot_product_attention(qs, k, v, scale=0.8))
    g.output("J", graphc.sum(g.outputs["causal"] * qs) + graphc.mean(g.outputs["cross"] * g.outputs["cross"]))
    return g


OP_GRAPHS = {f.__name__.removesuffix("_graph"): f for f in
             (elementwise_graph, reduction_graph, softmax_graph, linear_graph, gather_graph, column_graph,
              tensor_graph, conv_graph, attention_graph)}


def real_names(g: graphc.Graph) -> list[str]:
    """The real inputs and the trained params (not the model state)."""
    return [k for k, v in {**g.inputs, **g.params}.items() if v.dtype != INT and k not in g.states]


@functools.lru_cache(maxsize=None)
def op_graph(name: str) -> graphc.Graph:
    return OP_GRAPHS[name]()


@functools.lru_cache(maxsize=None)
def compiled(kind: str, name: str, dtype: str):
    """(graph, of, wrt, model), compiled once per test session."""
    if kind == "op":
        g = op_graph(name)
        of, wrt = "J", real_names(g)
    else:
        g = graphc.load(name)
        of, wrt = g.grad_spec
    return g, of, list(wrt), graphc.compile(g, grad_of=of, wrt=wrt, dtype=dtype)


def relative_error(actual, reference) -> float:
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape
    scale = np.max(np.abs(reference)) if reference.size else 0.0
    diff = np.max(np.abs(actual - reference)) if reference.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def assert_matches_reference(g, of, wrt, model, dtype: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    real = np.dtype(dtype)
    arrays = random_arrays(g, n, rng)
    c_arrays = {k: a if a.dtype == np.int32 else a.astype(real) for k, a in arrays.items()}
    ref_arrays = {k: a if a.dtype == np.int32 else a.astype(np.float64) for k, a in c_arrays.items()}
    tolerance = TOLERANCE[dtype]
    failures = []

    forward = model.forward(**c_arrays)
    reference = graphc.evaluate(g, **ref_arrays)
    assert set(forward) == set(reference)
    for k, value in forward.items():
        assert value.dtype == real
        err = relative_error(value, reference[k])
        if not err < tolerance:
            failures.append(f"forward {k}: rel err {err:.3e}")

    values, grads = model.value_and_grad(**c_arrays)
    reference = graphc.evaluate(graphc.grad(g, of, wrt), **ref_arrays)
    assert set(grads) == set(wrt)
    for k, value in values.items():
        err = relative_error(value, reference[k])
        if not err < tolerance:
            failures.append(f"value_and_grad {k}: rel err {err:.3e}")
    for w, value in grads.items():
        assert value.shape == ref_arrays[w].shape         # the gradient has its parameter's shape
        err = relative_error(value, reference[f"d_{w}"])
        if not err < tolerance:
            failures.append(f"d_{w}: rel err {err:.3e}")
    assert not failures, f"{g.name} {dtype} n={n}: " + "; ".join(failures)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(OP_GRAPHS))
def test_backend_op_graph_matches_reference(name, dtype):
    g, of, wrt, model = compiled("op", name, dtype)
    for k, n in enumerate(BATCHES if g.symbolic_dims else (1,)):
        assert_matches_reference(g, of, wrt, model, dtype, n, seed=k)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_backend_example_matches_reference(spec, dtype):
    g, of, wrt, model = compiled("example", str(spec), dtype)
    for k, n in enumerate(BATCHES if g.symbolic_dims else (1,)):
        assert_matches_reference(g, of, wrt, model, dtype, n, seed=10 + k)


def test_backend_op_graphs_cover_every_op():
    """Every registered op appears in some forward or backward graph above (so a new op needs a test)."""
    seen = set()
    for name in OP_GRAPHS:
        g = op_graph(name)
        bwd = graphc.grad(g, "J", real_names(g))
        seen |= {node.op.name for node in g.nodes} | {node.op.name for node in bwd.nodes}
    assert set(REGISTRY) - seen == set()


def test_backend_rejects_out_of_range_labels_without_touching_memory():
    g, of, wrt, model = compiled("op", "gather", "float64")
    arrays = random_arrays(g, 3, np.random.default_rng(0))
    arrays["ids"][1] = 11
    with pytest.raises(graphc.ArgumentError):
        model.forward(**arrays)
    arrays["ids"][1] = -1
    with pytest.raises(graphc.ArgumentError):
        model.value_and_grad(**arrays)


def test_backend_passes_contiguous_arrays_of_the_model_dtype_without_a_copy():
    """Zero-copy: C reads the caller's own buffers (the pointers C got are the arrays' data
    addresses); a Fortran-ordered array is copied, and the result is the same."""
    m = graphc.compile(str(EXAMPLES[0].parent / "one_layer.toml"), dtype="float32")
    params = graphc.init_params(m, seed=0)
    assert all(a.dtype == np.float32 for a in params.values())
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 64)).astype(np.float32)
    Y = rng.integers(0, 10, 6).astype(np.int32)
    for _ in range(2):                                   # the checked path, then the plan's fast path
        first = m.forward(x=X, y=Y, **params)
        plan = m._local.forward
        addresses = {int(m.ffi.cast("uintptr_t", p)) for p in plan.ptrs}
        assert {X.ctypes.data, Y.ctypes.data} | {a.ctypes.data for a in params.values()} <= addresses
    F = np.asfortranarray(X)
    again = m.forward(x=F, y=Y, **params)
    assert F.ctypes.data not in {int(m.ffi.cast("uintptr_t", p)) for p in m._local.forward.ptrs}
    np.testing.assert_array_equal(again["probs"], first["probs"])


def test_backend_forward_without_labels_returns_the_outputs_that_need_none():
    """DESIGN.md: m.forward(x=X, W=..., ...) without y gives probs (C: NAME_predict)."""
    m = graphc.compile(str(EXAMPLES[0].parent / "one_layer.toml"), dtype="float64")
    params = graphc.init_params(m, seed=0)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((5, 64))
    Y = rng.integers(0, 10, 5).astype(np.int32)
    full = m.forward(x=X, y=Y, **params)
    for _ in range(2):
        outs = m.forward(x=X, **params)
        assert set(outs) == {"probs"}
        np.testing.assert_array_equal(outs["probs"], full["probs"])
    with pytest.raises(graphc.ArgumentError, match="missing argument 'x'"):
        m.forward(y=Y, **params)
    with pytest.raises(graphc.ArgumentError, match="missing argument 'W'"):
        m.forward(x=X, **{k: v for k, v in params.items() if k != "W"})
