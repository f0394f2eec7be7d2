"""The ops of the CNN issue in C: activations, rank-4 layout ops, convolutions and pooling.

Each test compiles one spec holding several ops (a compile costs a second or two on 2 cores)
and runs graphc.check on it: the C forward and gradients against the NumPy reference in float32
and float64, and the reference gradients against central finite differences in float64. The
per-op references and VJPs on drawn shapes are in tests/test_ops.py.
"""
from __future__ import annotations

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


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_activations_c_matches_reference_and_finite_differences(dtype):
    report = graphc.check(graphc.parse_spec(ACTIVATIONS, "acts.toml"), dtype=dtype)
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


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_rank4_layout_ops_c_matches_reference_and_finite_differences(dtype):
    report = graphc.check(graphc.parse_spec(RANK4, "rank4.toml"), dtype=dtype)
    assert report.ok, str(report)
