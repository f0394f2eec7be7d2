"""The outputs of repeated calls through a CallPlan's fast path (native/calls.py): every array a
caller still holds, in any way (the result dict, a list, a view, a memoryview, a weak reference),
keeps its values through later calls; the arrays a caller let go of may be handed out again.
And the arguments the plan caches pointers of: an array replaced between calls is seen."""
from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest

import graphc

from conftest import private_cache_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

_cache_dir = pytest.fixture(scope="module", autouse=True)(private_cache_dir)


@pytest.fixture(scope="module")
def m64():
    return graphc.compile(EXAMPLES / "one_layer.toml", dtype="float64")


def args(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return dict(x=rng.standard_normal((n, 64)), y=rng.integers(0, 10, n).astype(np.int32),
                W=rng.standard_normal((128, 64)) * 0.1, b1=rng.standard_normal(128) * 0.1,
                U=rng.standard_normal((10, 128)) * 0.1, b2=rng.standard_normal(10) * 0.1)


def checked(m, fname, a):
    """The same call through the checked path (x as a list: converted, so no plan is kept)."""
    return getattr(m, fname)(**dict(a, x=a["x"].tolist()))


def bits(got, want):
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.mark.parametrize("n", [6, 1000])       # small outputs (kept for reuse) and large ones (never)
def test_outputs_held_keep_their_values_through_later_calls(m64, n):
    a = args(n, seed=1)
    rng = np.random.default_rng(2)
    held, copies = [], []
    for _ in range(7):
        a["x"][...] = rng.standard_normal(a["x"].shape)        # in place: the same arrays, the fast path
        out = m64.forward(**a)
        bits(out, checked(m64, "forward", a))
        held.append(out)
        copies.append({k: v.copy() for k, v in out.items()})
    for out, want in zip(held, copies):
        bits(out, want)
    arrays = [v for out in held for v in out.values()]
    assert not any(np.shares_memory(p, q) for i, p in enumerate(arrays) for q in arrays[i + 1:])


def test_outputs_held_only_by_a_view_a_memoryview_or_a_weak_reference_are_not_written_again(m64):
    a = args(seed=3)
    m64.forward(**a)
    m64.forward(**a)
    out = m64.forward(**a)
    view, want_view = out["probs"][2:], out["probs"][2:].copy()
    out = m64.forward(**a)
    mem, want_mem = memoryview(out["probs"]), out["probs"].copy()
    out = m64.forward(**a)
    ref, want_ref = weakref.ref(out["probs"]), out["probs"].copy()
    del out
    rng = np.random.default_rng(4)
    for _ in range(6):
        a["x"][...] = rng.standard_normal(a["x"].shape)
        got = m64.forward(**a)
        bits(got, checked(m64, "forward", a))
        del got
    np.testing.assert_array_equal(view, want_view)
    np.testing.assert_array_equal(np.asarray(mem), want_mem)
    if ref() is not None:
        np.testing.assert_array_equal(ref(), want_ref)


def test_outputs_dropped_each_call_stay_right(m64):
    """The loop a benchmark runs: each call's results dropped before the next."""
    a = args(seed=5)
    rng = np.random.default_rng(6)
    for _ in range(8):
        a["W"][...] = rng.standard_normal(a["W"].shape) * 0.1
        bits(m64.forward(**a), checked(m64, "forward", a))


def test_value_and_grad_results_held_across_calls(m64):
    a = args(seed=7)
    rng = np.random.default_rng(8)
    held, copies = [], []
    for _ in range(5):
        a["U"][...] = rng.standard_normal(a["U"].shape) * 0.1
        values, grads = m64.value_and_grad(**a)
        want_values, want_grads = m64.value_and_grad(**dict(a, x=a["x"].tolist()))
        bits(values, want_values)
        bits(grads, want_grads)
        held.append(grads)
        copies.append({k: v.copy() for k, v in grads.items()})
    for got, want in zip(held, copies):
        bits(got, want)


def test_an_argument_replaced_between_calls_is_read_from_its_new_memory(m64):
    a = args(seed=9)
    m64.forward(**a)
    m64.forward(**a)                      # the plan holds a's arrays and their pointers
    for name in ("W", "b2", "x"):
        a[name] = a[name] * 2.0           # a new object of the same shape and dtype
        bits(m64.forward(**a), checked(m64, "forward", a))
        bits(m64.forward(**a), checked(m64, "forward", a))
    old = a["W"]
    a["W"] = np.asfortranarray(old)       # the same values, not C-contiguous: converted (checked path)
    bits(m64.forward(**a), checked(m64, "forward", dict(a, W=old)))
    a["W"] = old.astype(np.float32)       # another dtype: converted
    bits(m64.forward(**a), checked(m64, "forward", dict(a, W=old.astype(np.float32).astype(np.float64))))


def test_train_step_losses_held_across_steps_keep_their_values():
    m = graphc.compile(EXAMPLES / "one_layer.toml", dtype="float64", optimizer=graphc.SGD(lr=0.1))
    a = args(seed=10)
    batch = {"x": a.pop("x"), "y": a.pop("y")}
    state = m.train_state(a)
    twin = state.copy()
    held, values = [], []
    for _ in range(6):
        out = m.train_step(state, **batch)
        held.append(out)
        values.append(float(out["loss"]))
        # the twin steps through the checked path every time (x as a list)
        assert float(m.train_step(twin, **dict(batch, x=batch["x"].tolist()))["loss"]) == values[-1]
    assert [float(out["loss"]) for out in held] == values
    assert len(set(values)) > 1                       # the loss moved: the held arrays differ
    for k in state.params:
        np.testing.assert_array_equal(state.params[k], twin.params[k])
