"""forward and value_and_grad with the model's argument names as keyword parameters (native/fastcall.py's
model_class) and the plan's positional check-and-call (CallPlan.fastpos): the same answers and the same
errors as the checked path, whatever was shortcut (the dict of arguments, the result dicts, the
status check), and the same object model as a plain CompiledModel's methods."""
from __future__ import annotations

import gc
import inspect
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.core.errors import ArgumentError, DTypeError, ShapeError
from graphc.native.fastcall import keyword_names
from graphc.native.runtime import CompiledModel

from conftest import private_cache_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

_cache_dir = pytest.fixture(scope="module", autouse=True)(private_cache_dir)


@pytest.fixture(scope="module")
def m64():
    return graphc.compile(EXAMPLES / "one_layer.toml", dtype="float64")


def args(n=6, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return dict(x=rng.standard_normal((n, 64)).astype(dtype), y=rng.integers(0, 10, n).astype(np.int32),
                W=(rng.standard_normal((128, 64)) * 0.1).astype(dtype), b1=(rng.standard_normal(128) * 0.1).astype(dtype),
                U=(rng.standard_normal((10, 128)) * 0.1).astype(dtype), b2=(rng.standard_normal(10) * 0.1).astype(dtype))


def checked(m, fname, a):
    """The same call through the checked path (x as a list: converted, so no plan is kept or used)."""
    return getattr(m, fname)(**dict(a, x=np.asarray(a["x"]).tolist()))


def bits(got: dict, want: dict):
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].tobytes() == want[k].tobytes(), k


def warm(m, fname, a):
    """Two calls: the second leaves this thread's plan holding a's arrays (the next call is fastpos)."""
    getattr(m, fname)(**a)
    return getattr(m, fname)(**a)


def test_the_model_class_spells_out_the_argument_names_and_is_still_a_compiled_model(m64):
    assert isinstance(m64, CompiledModel) and type(m64).__name__ == "CompiledModel"
    for fname in ("forward", "value_and_grad"):
        params = inspect.signature(getattr(m64, fname)).parameters
        assert [p for p in params if p != "_gc_rest"] == ["x", "y", "W", "b1", "U", "b2"], fname
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for k, p in params.items() if k != "_gc_rest")
        assert getattr(m64, fname).__doc__ == getattr(CompiledModel, fname).__doc__
        assert fname not in vars(m64)                 # a method of the class, not an instance attribute
    for name in ("predict", "train_step", "export", "call"):
        assert getattr(type(m64), name) is getattr(CompiledModel, name)
    other = graphc.compile(EXAMPLES / "one_layer.toml", dtype="float32")
    assert type(other) is type(m64)                   # one class per set of argument names
    with pytest.raises(TypeError):
        m64.forward(*args().values())                 # keywords only, as before


def test_keyword_names_refuses_what_cannot_be_a_parameter():
    assert keyword_names(("x", "W", "b1", "y_"))
    for bad in (("lambda",), ("self",), ("_gc_rest",), ("a-b",), ("x", "x"), ("1x",)):
        assert not keyword_names(bad), bad


def test_fast_calls_give_the_checked_results_and_dicts_of_their_own(m64):
    a = args(seed=1)
    warm(m64, "value_and_grad", a)
    warm(m64, "forward", a)
    rng = np.random.default_rng(2)
    held = []
    for _ in range(4):
        a["x"][...] = rng.standard_normal(a["x"].shape)         # in place: the same arrays, fastpos
        values, grads = m64.value_and_grad(**a)
        want_values, want_grads = checked(m64, "value_and_grad", a)
        bits(values, want_values)
        bits(grads, want_grads)
        out = m64.forward(**a)
        bits(out, checked(m64, "forward", a))
        held.append((values, grads, out, {k: v.copy() for d in (values, grads, out) for k, v in d.items()}))
    for values, grads, out, copies in held:                    # nothing held was written again
        assert all(d is not e for d in (values, grads, out) for e in (values, grads, out) if d is not e)
        for k, v in {**values, **grads, **out}.items():
            assert v.tobytes() == copies[k].tobytes(), k
    dicts = [d for h in held for d in h[:3]]
    assert len({id(d) for d in dicts}) == len(dicts)           # a new dict every call


def test_forward_without_the_labels_is_predict_after_fast_calls(m64):
    a = args(seed=3)
    warm(m64, "forward", a)
    no_labels = {k: v for k, v in a.items() if k != "y"}
    got = m64.forward(**no_labels)
    assert set(got) == {"probs"}
    np.testing.assert_allclose(got["probs"], m64.forward(**a)["probs"], rtol=1e-12)


def test_wrong_arrays_after_fast_calls_raise_the_checked_errors(m64):
    a = args(seed=4)
    warm(m64, "value_and_grad", a)
    with pytest.raises(ArgumentError, match=r"missing argument 'U'"):
        m64.value_and_grad(**{k: v for k, v in a.items() if k != "U"})
    with pytest.raises(ArgumentError, match="unexpected argument 'Ww'"):
        m64.value_and_grad(**{("Ww" if k == "W" else k): v for k, v in a.items()})
    with pytest.raises(ArgumentError, match="unexpected argument 'lr'"):
        m64.value_and_grad(**a, lr=np.float64(0.1))            # an extra keyword: not the plan's call
    with pytest.raises(DTypeError, match="'y'"):
        m64.value_and_grad(**dict(a, y=a["y"].astype(np.float64)))
    with pytest.raises(ShapeError, match=r"argument 'W' has shape \(64, 128\)"):
        m64.value_and_grad(**dict(a, W=np.ascontiguousarray(a["W"].T)))
    a["W"].shape = (64, 128)                                   # the plan's own object, reshaped in place
    with pytest.raises(ShapeError, match=r"argument 'W' has shape \(64, 128\)"):
        m64.value_and_grad(**a)
    a["W"].shape = (128, 64)
    b = dict(a, W=a["W"].copy())
    warm(m64, "value_and_grad", b)
    with warnings.catch_warnings():                            # setting strides is deprecated in NumPy 2.4
        warnings.simplefilter("ignore", DeprecationWarning)
        b["W"].shape = (64, 128)
        b["W"].strides = (512, 8)                              # another shape with the plan's strides
    with pytest.raises(ShapeError, match=r"argument 'W' has shape \(64, 128\)"):
        m64.value_and_grad(**b)
    a["y"].dtype = np.float32                                  # the plan's own object, another dtype in place
    with pytest.raises(DTypeError, match="'y'"):
        m64.value_and_grad(**a)
    a["y"].dtype = np.int32
    warm(m64, "value_and_grad", a)
    bits(m64.value_and_grad(**a)[1], checked(m64, "value_and_grad", a)[1])


def test_non_contiguous_and_other_dtype_arrays_after_fast_calls_are_converted(m64):
    a = args(seed=5)
    warm(m64, "value_and_grad", a)
    wide = np.zeros((128, 128))
    wide[:, ::2] = a["W"]
    for W in (wide[:, ::2], np.asfortranarray(a["W"]), a["W"].astype(">f8")):
        got = m64.value_and_grad(**dict(a, W=W))
        want = checked(m64, "value_and_grad", dict(a, W=np.array(W, np.float64)))
        bits(got[0], want[0])
        bits(got[1], want[1])


def test_the_plan_s_own_arrays_with_strides_set_in_place_are_read_as_strided(m64):
    a = args(seed=12)
    warm(m64, "value_and_grad", a)
    warm(m64, "forward", a)
    with warnings.catch_warnings():                            # setting strides is deprecated in NumPy 2.4
        warnings.simplefilter("ignore", DeprecationWarning)
        a["x"].strides = (0, 8)                                # the same shape; every row now reads row 0
    want = checked(m64, "value_and_grad", dict(a, x=np.array(a["x"])))
    got = m64.value_and_grad(**a)
    bits(got[0], want[0])
    bits(got[1], want[1])
    bits(m64.forward(**a), checked(m64, "forward", dict(a, x=np.array(a["x"]))))


def test_the_plan_s_own_arrays_of_one_dim_changed_in_place_are_seen(m64):
    """An array of one dim is checked by its strides and dtype (fastcall.plan_caller): each change still shows."""
    a = args(seed=13)
    warm(m64, "value_and_grad", a)
    b1 = a["b1"]
    for refcheck in (True, False):                             # its size cannot change while the plan holds it
        with pytest.raises(ValueError, match="resize"):
            b1.resize((256,), refcheck=refcheck)
    b1.shape = (2, 64)                                         # the same memory, two dims
    with pytest.raises(ShapeError, match=r"'b1' has shape \(2, 64\)"):
        m64.value_and_grad(**a)
    b1.shape = (128,)
    warm(m64, "value_and_grad", a)
    b1.dtype = np.int64                                        # the same size and strides, another dtype
    got = m64.value_and_grad(**a)
    want = checked(m64, "value_and_grad", dict(a, b1=b1.astype(np.float64)))
    bits(got[0], want[0])
    bits(got[1], want[1])
    b1.dtype = np.float64
    warm(m64, "value_and_grad", a)
    y = a["y"]
    with warnings.catch_warnings():                            # setting strides is deprecated in NumPy 2.4
        warnings.simplefilter("ignore", DeprecationWarning)
        y.strides = (0,)                                       # every label now reads label 0
    want = checked(m64, "value_and_grad", dict(a, y=np.array(y)))
    got = m64.value_and_grad(**a)
    bits(got[0], want[0])
    bits(got[1], want[1])
    y.shape = (1, 6)                                           # the same size, two dims
    with pytest.raises(ShapeError, match=r"'y'"):
        m64.value_and_grad(**a)


def test_a_status_error_of_the_fast_call_is_the_checked_error_and_the_plan_still_works(m64):
    a = args(seed=6)
    warm(m64, "value_and_grad", a)
    warm(m64, "forward", a)
    good = a["y"].copy()
    a["y"][2] = 10                                             # out of range, in place: C finds it
    for fname in ("value_and_grad", "forward"):
        with pytest.raises(ArgumentError, match=r"'y'.*out of range|out of range.*'y'"):
            getattr(m64, fname)(**a)
    a["y"][...] = good
    bits(m64.value_and_grad(**a)[1], checked(m64, "value_and_grad", a)[1])
    bits(m64.forward(**a), checked(m64, "forward", a))


def test_arrays_freed_and_made_again_at_the_same_address_give_their_own_results(m64):
    a = args(seed=7)
    warm(m64, "value_and_grad", a)
    rng = np.random.default_rng(8)
    for i in range(6):                  # a new W each call, the last one freed: its memory is often reused
        W = rng.standard_normal((128, 64)) * 0.1
        got = m64.value_and_grad(**dict(a, W=W))
        want = checked(m64, "value_and_grad", dict(a, W=W.copy()))
        bits(got[0], want[0])
        bits(got[1], want[1])
        del W, got


def test_the_plan_keeps_no_reference_to_the_model_and_a_bound_method_keeps_it(m64):
    m = graphc.compile(EXAMPLES / "one_layer.toml", dtype="float64")
    a = args(seed=9)
    warm(m, "value_and_grad", a)
    warm(m, "forward", a)
    want = m.forward(**a)["probs"].copy()
    forward, ref = m.forward, weakref.ref(m)
    del m
    gc.collect()
    assert ref() is not None                                     # the bound method holds it
    np.testing.assert_array_equal(forward(**a)["probs"], want)
    del forward
    assert ref() is None                                         # no cycle: freed at once, without gc


def test_each_thread_calls_through_its_own_plan(m64):
    a = args(seed=10)
    warm(m64, "forward", a)
    errors, results = [], {}

    def work(i):
        try:
            b = args(seed=20 + i)
            for _ in range(30):
                b["x"] *= 1.01
                out = m64.forward(**b)
                bits(out, checked(m64, "forward", b))
            results[i] = True
        except Exception as e:      # noqa: BLE001 - reported by the main thread
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 3
    bits(m64.forward(**a), checked(m64, "forward", a))


def test_a_patched_class_method_is_used_by_models_made_after_it(monkeypatch):
    calls = []
    original = CompiledModel.forward

    def counted(self, **arrays):
        calls.append(sorted(arrays))
        return original(self, **arrays)
    monkeypatch.setattr(CompiledModel, "forward", counted)
    m = graphc.compile(EXAMPLES / "one_layer.toml", dtype="float64")
    a = args(seed=11)
    for _ in range(3):
        m.forward(**a)
    assert type(m) is CompiledModel and len(calls) == 3
