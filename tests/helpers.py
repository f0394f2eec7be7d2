"""Checks several test files share: a graph's gradients against central differences in float64,
and a compiled model's value_and_grad against the NumPy reference (graphc.evaluate of the
graph's backward graph at the same arrays)."""
from __future__ import annotations

import numpy as np

import graphc

EPS = 1e-6


def finite_difference(g, arrays: dict, name: str, of: str, eps: float = EPS) -> np.ndarray:
    """Central differences of the scalar output `of` of g with respect to arrays[name], float64."""
    base = np.asarray(arrays[name], np.float64)
    grad = np.zeros_like(base)
    for idx in np.ndindex(base.shape):
        vals = []
        for step in (eps, -eps):
            x = base.copy()
            x[idx] += step
            vals.append(float(graphc.evaluate(g, **{**arrays, name: x})[of]))
        grad[idx] = (vals[0] - vals[1]) / (2 * eps)
    return grad


def assert_close(got, want, what: str, rtol: float):
    """The same shape, and the largest difference below rtol times the largest |want| (at least 1e-3)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    scale = max(np.abs(want).max(initial=0.0), 1e-3)
    err = np.abs(got - want).max(initial=0.0) / scale
    assert err < rtol, f"{what}: relative error {err:.2e}"


def check_finite_differences(g, arrays: dict, wrt: list[str], of: str, rtol: float = 1e-6):
    """Each d_w of graphc.grad(g, of, wrt), run by the reference, against central differences."""
    got = graphc.evaluate(graphc.grad(g, of=of, wrt=wrt), **arrays)
    for w in wrt:
        assert_close(got[f"d_{w}"], finite_difference(g, arrays, w, of), f"d_{w}", rtol)


def c_and_reference(m, g, arrays: dict, of: str, wrt: list[str], reference_arrays: dict | None = None):
    """(outputs, gradients) of the compiled m.value_and_grad(**arrays), and the reference's values
    (every output and each d_w) of graphc.grad(g, of, wrt) at reference_arrays (default: arrays)."""
    want = graphc.evaluate(graphc.grad(g, of=of, wrt=wrt), **(arrays if reference_arrays is None else reference_arrays))
    outs, grads = m.value_and_grad(**arrays)
    return outs, grads, want


def assert_grads_close(grads: dict, want: dict, wrt, rtol: float, atol: float, where: str = ""):
    """Each C gradient grads[w] against the reference's want[d_w], elementwise (assert_allclose)."""
    for w in wrt:
        np.testing.assert_allclose(grads[w], want[f"d_{w}"], rtol=rtol, atol=atol, err_msg=f"d_{w}{where}")
