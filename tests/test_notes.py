"""The one-layer network of the notes against its closed forms, computed here in NumPy.

Row form (examples/one_layer.toml, a batch of N rows, J the mean over the rows) and the
column form the notes write (examples/one_layer_column.toml, one example x, one-hot y):

    δ1 = ŷ − y  (÷ N for the batch mean)      ∂J/∂U  = δ1ᵀ h      ∂J/∂b2 = Σ δ1
    δ2 = δ1 U ∘ sgn(h)                         ∂J/∂W  = δ2ᵀ x      ∂J/∂b1 = Σ δ2
                                               ∂J/∂x  = δ2 W
Both are also checked against central finite differences in float64.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.core.reference import evaluate_values

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WRT = ["W", "b1", "U", "b2", "x"]


def _softmax(t):
    e = np.exp(t - t.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _params(g, rng):
    """Weights at 1/sqrt(fan-in): logits of order 1, so the softmax is not saturated."""
    return {name: rng.normal(0.0, 1.0 / np.sqrt(v.shape[-1]) if v.rank == 2 else 0.1, size=v.shape)
            for name, v in g.params.items()}


def _away_from_kink(draw, a, margin=1e-3):
    """Draw x until no pre-activation z lies within `margin` of ReLU's kink at 0, where central
    differences would step across the kink (seeded: always the same x)."""
    while True:
        x = draw()
        z = x @ a["W"].T + a["b1"]
        if np.min(np.abs(z)) > margin:
            return x


@pytest.fixture(scope="module")
def row():
    g = graphc.load(EXAMPLES / "one_layer.toml")
    rng = np.random.default_rng(0)
    n = 6
    dx, nc = g.dims["Dx"], g.dims["Nc"]
    arrays = {"y": rng.integers(0, nc, size=n).astype(np.int32), **_params(g, rng)}
    arrays["x"] = _away_from_kink(lambda: rng.normal(size=(n, dx)), arrays)
    return g, graphc.grad(g, "J", WRT), arrays


@pytest.fixture(scope="module")
def column():
    g = graphc.load(EXAMPLES / "one_layer_column.toml")
    rng = np.random.default_rng(1)
    dx, nc = g.dims["Dx"], g.dims["Nc"]
    y = np.zeros(nc)
    y[2] = 1.0
    arrays = {"y": y, **_params(g, rng)}
    arrays["x"] = _away_from_kink(lambda: rng.normal(size=dx), arrays)
    return g, graphc.grad(g, "J", WRT), arrays


def closed_forms_row(a):
    x, W, b1, U, b2 = a["x"], a["W"], a["b1"], a["U"], a["b2"]
    n = x.shape[0]
    z = x @ W.T + b1
    h = np.maximum(z, 0)
    theta = h @ U.T + b2
    onehot = np.eye(U.shape[0])[a["y"]]
    d1 = (_softmax(theta) - onehot) / n          # J is the mean over the batch rows
    d2 = d1 @ U * np.sign(h)
    return {"d_theta": d1, "d_z": d2, "d_U": d1.T @ h, "d_b2": d1.sum(axis=0),
            "d_W": d2.T @ x, "d_b1": d2.sum(axis=0), "d_x": d2 @ W}


def closed_forms_column(a):
    x, W, b1, U, b2, y = a["x"], a["W"], a["b1"], a["U"], a["b2"], a["y"]
    z = W @ x + b1
    h = np.maximum(z, 0)
    theta = U @ h + b2
    d1 = _softmax(theta) - y                      # the notes' δ1 = ŷ − y, one example
    d2 = d1 @ U * np.sign(h)                      # δ1 as a row: δ1 U ∘ sgn(h)
    # gradient layout: the shape of each parameter (δ1ᵀ hᵀ as the outer product, section 4)
    return {"d_theta": d1, "d_z": d2, "d_U": np.outer(d1, h), "d_b2": d1,
            "d_W": np.outer(d2, x), "d_b1": d2, "d_x": d2 @ W}


@pytest.mark.parametrize("form", ["row", "column"])
def test_notes_gradients_match_closed_forms(form, request):
    g, bwd, arrays = request.getfixturevalue(form)
    expected = (closed_forms_row if form == "row" else closed_forms_column)(arrays)
    out = graphc.evaluate(bwd, **arrays)
    for w in WRT:
        assert out[f"d_{w}"].shape == arrays[w].shape, f"d_{w} is not in the shape of {w}"
        np.testing.assert_allclose(out[f"d_{w}"], expected[f"d_{w}"], rtol=1e-10, atol=1e-12, err_msg=f"d_{w}")


@pytest.mark.parametrize("form", ["row", "column"])
def test_notes_deltas_are_the_graph_values_d_theta_and_d_z(form, request):
    """δ1 and δ2 are values of the backward graph themselves, not only visible through the gradients."""
    g, bwd, arrays = request.getfixturevalue(form)
    expected = (closed_forms_row if form == "row" else closed_forms_column)(arrays)
    values = evaluate_values(bwd, arrays)
    np.testing.assert_allclose(values["d_theta"], expected["d_theta"], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(values["d_z"], expected["d_z"], rtol=1e-10, atol=1e-13)


def _loss(g, arrays):
    return float(graphc.evaluate(g, **arrays)["loss"])


@pytest.mark.parametrize("form", ["row", "column"])
def test_notes_gradients_match_central_differences(form, request):
    """Directional central differences along random directions, plus a few single entries."""
    g, bwd, arrays = request.getfixturevalue(form)
    grads = graphc.evaluate(bwd, **arrays)
    rng = np.random.default_rng(7)
    eps = 1e-5     # central differences: truncation ~eps², rounding ~1e-16/eps
    for w in WRT:
        base = arrays[w]
        directions = [rng.normal(size=base.shape) for _ in range(3)]
        for idx in [tuple(rng.integers(0, s) for s in base.shape) for _ in range(3)]:
            e = np.zeros(base.shape)
            e[idx] = 1.0
            directions.append(e)
        for v in directions:
            plus = _loss(g, {**arrays, w: base + eps * v})
            minus = _loss(g, {**arrays, w: base - eps * v})
            numeric = (plus - minus) / (2 * eps)
            analytic = float(np.sum(grads[f"d_{w}"] * v))
            scale = max(abs(numeric), abs(analytic), 1e-8)
            # a single entry's derivative can be ~0, where only the absolute error means anything
            assert abs(numeric - analytic) / scale < 1e-6 or abs(numeric - analytic) < 1e-9, \
                f"d_{w}: analytic {analytic:.10g} numeric {numeric:.10g}"
