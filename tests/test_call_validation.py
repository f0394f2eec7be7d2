"""Call-time validation: every misfit argument is a clear GraphcError naming it, every odd but
valid array (strided, Fortran, read-only, misaligned, a list) gives the right numbers, and the C
itself refuses what would index out of bounds or overflow."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import graphc

from conftest import private_cache_dir
from graphc.core.errors import ArgumentError, DTypeError, ShapeError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


_cache_dir = pytest.fixture(scope="module", autouse=True)(private_cache_dir)


@pytest.fixture(scope="module")
def m64():
    return graphc.compile(EXAMPLES / "one_layer.toml", dtype="float64")


@pytest.fixture(scope="module")
def m32():
    return graphc.compile(EXAMPLES / "one_layer.toml", dtype="float32")


@pytest.fixture(scope="module")
def window():
    return graphc.compile(EXAMPLES / "window_classifier.toml", dtype="float64")


def args(dtype=np.float64, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return dict(x=rng.standard_normal((n, 64)).astype(dtype), y=rng.integers(0, 10, n).astype(np.int32),
                W=(rng.standard_normal((128, 64)) * 0.1).astype(dtype), b1=(rng.standard_normal(128) * 0.1).astype(dtype),
                U=(rng.standard_normal((10, 128)) * 0.1).astype(dtype), b2=(rng.standard_normal(10) * 0.1).astype(dtype))


def same(got, want, exact=True):
    for k in want:
        if exact:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        else:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)


# ---------------------------------------------------------------- names
def test_call_missing_argument_is_named_with_its_shape(m64):
    a = args()
    del a["U"]
    with pytest.raises(ArgumentError, match=r"missing argument 'U' \(shape \(Nc=10, Dh=128\)"):
        m64.forward(**a)


def test_call_misnamed_argument_suggests_the_right_name(m64):
    a = args()
    a["Ww"] = a.pop("W")
    with pytest.raises(ArgumentError, match="unexpected argument 'Ww'") as caught:
        m64.value_and_grad(**a)
    assert "did you mean 'W'?" in str(caught.value)


def test_call_extra_argument_is_refused(m64):
    with pytest.raises(ArgumentError, match="unexpected argument 'lr'"):
        m64.forward(**args(), lr=np.float64(0.1))


# ---------------------------------------------------------------- shapes
def test_call_wrong_shape_names_the_argument_and_the_expected_shape(m64):
    a = args()
    a["W"] = a["W"].T.copy()
    with pytest.raises(ShapeError, match=r"argument 'W' has shape \(64, 128\), expected \(Dh=128, Dx=64\)"):
        m64.forward(**a)
    a = args()
    a["b1"] = a["b1"][None, :]
    with pytest.raises(ShapeError, match=r"argument 'b1' has shape \(1, 128\)"):
        m64.forward(**a)


def test_call_inconsistent_batch_sizes_are_refused(m64):
    a = args(n=6)
    a["y"] = a["y"][:5]
    with pytest.raises(ShapeError, match=r"'y' has N=5 .* 'x' has N=6") as caught:
        m64.value_and_grad(**a)
    assert "batch dim N" in str(caught.value)


def test_call_batch_size_zero_is_a_clear_shape_error(m64):
    a = args(n=0)
    with pytest.raises(ShapeError, match="batch size N=0"):
        m64.forward(**a)


def test_call_workspace_overflow_is_refused_before_any_allocation(m64):
    lib, name = m64.lib, m64.name
    size = getattr(lib, f"{name}_workspace_size")
    assert size(1) > 0 and size(0) == 0 and size(-5) == 0
    assert size(2**62) == 0 and size(2**63 - 1) == 0          # would overflow size_t: 0, not a wrapped size
    with pytest.raises(ShapeError, match="overflow size_t"):
        m64.workspace(2**62)
    # the C functions themselves refuse such an n before touching any array
    ffi = m64.ffi
    fake = ffi.new("double[]", 1)
    ws = ffi.cast("void *", 64 * 1024)
    status = getattr(lib, f"{name}_forward")(2**62, fake, ffi.new("int32_t[]", 1), fake, fake, fake, fake,
                                             fake, fake, ws)
    assert status == lib.GRAPHC_ERR_BATCH


def test_call_c_functions_check_null_and_alignment(m64):
    lib, ffi, name = m64.lib, m64.ffi, m64.name
    a = args(n=2)
    bufs = [ffi.from_buffer("double[]", a[k]) for k in ("x",)] + [ffi.from_buffer("int32_t[]", a["y"])] + \
        [ffi.from_buffer("double[]", a[k]) for k in ("W", "b1", "U", "b2")]
    outs = [ffi.new("double[]", 1), ffi.new("double[]", 20)]
    ws = m64.workspace(2)
    fwd = getattr(lib, f"{name}_forward")
    assert fwd(2, *bufs, *outs, ffi.from_buffer(ws)) == lib.GRAPHC_OK
    assert fwd(2, *bufs, *outs, ffi.NULL) == lib.GRAPHC_ERR_NULL
    assert fwd(2, bufs[0], ffi.NULL, *bufs[2:], *outs, ffi.from_buffer(ws)) == lib.GRAPHC_ERR_NULL
    assert fwd(2, *bufs, *outs, ffi.from_buffer(ws[1:])) == lib.GRAPHC_ERR_ALIGN


# ---------------------------------------------------------------- labels and ids
@pytest.mark.parametrize("bad", [10, -1, 2**31 - 1, -2**31])
def test_call_labels_out_of_range_are_caught_in_c_and_named(m64, bad):
    a = args()
    m64.value_and_grad(**a)                    # a good call first: the fast path is primed
    a["y"] = a["y"].copy()
    a["y"][3] = bad
    with pytest.raises(ArgumentError) as caught:
        m64.value_and_grad(**a)
    assert "'y'" in str(caught.value) and str(bad) in str(caught.value)
    with pytest.raises(ArgumentError, match="'y'"):
        m64.forward(**a)


def test_call_labels_are_checked_by_the_c_function_itself(m64):
    """The range check lives in C (GRAPHC_ERR_LABEL), not only in Python: call the C directly."""
    lib, ffi, name = m64.lib, m64.ffi, m64.name
    a = args(n=3)
    a["y"][1] = 10
    bufs = [ffi.from_buffer("double[]", a["x"]), ffi.from_buffer("int32_t[]", a["y"])] + \
        [ffi.from_buffer("double[]", a[k]) for k in ("W", "b1", "U", "b2")]
    outs = [ffi.new("double[]", n) for n in (1, 30, 128 * 64, 128, 10 * 128, 10)]
    status = getattr(lib, f"{name}_value_and_grad")(3, *bufs, *outs, ffi.from_buffer(m64.workspace(3)))
    assert status == lib.GRAPHC_ERR_LABEL
    assert "GRAPHC_ERR_LABEL" in m64.source and "gc_ids_in_range(y, n, one_layer_Nc)" in m64.source
    assert "ids[i] < 0 || ids[i] >= bound" in m64.source


@pytest.mark.parametrize("bad", [200, -1])
def test_call_embedding_ids_out_of_range_never_index_out_of_bounds(window, bad):
    rng = np.random.default_rng(0)
    n = 4
    a = dict(w0=rng.integers(0, 200, n).astype(np.int32), w1=rng.integers(0, 200, n).astype(np.int32),
             w2=rng.integers(0, 200, n).astype(np.int32), y=rng.integers(0, 5, n).astype(np.int32),
             E=rng.standard_normal((200, 16)), W=rng.standard_normal((32, 48)) * 0.1, b1=np.zeros(32),
             U=rng.standard_normal((5, 32)) * 0.1, b2=np.zeros(5))
    window.value_and_grad(**a)
    a["w1"] = a["w1"].copy()
    a["w1"][2] = bad
    with pytest.raises(ArgumentError, match="'w1'"):
        window.value_and_grad(**a)
    with pytest.raises(ArgumentError, match="'w1'"):
        window.forward(**a)


def test_call_float_labels_are_a_dtype_error(m64):
    a = args()
    a["y"] = a["y"].astype(np.float64)
    with pytest.raises(DTypeError, match="'y' must hold integer labels"):
        m64.value_and_grad(**a)


def test_call_int64_labels_in_range_are_accepted_and_out_of_int32_range_refused(m64):
    a = args()
    want = m64.value_and_grad(**a)
    a64 = dict(a, y=a["y"].astype(np.int64))
    got = m64.value_and_grad(**a64)
    same(got[0], want[0])
    a64["y"][0] = 2**40
    with pytest.raises(DTypeError, match="'y'"):
        m64.value_and_grad(**a64)


# ---------------------------------------------------------------- array layouts
def test_call_non_contiguous_fortran_and_read_only_arrays_give_the_same_results(m64):
    a = args()
    outs, grads = m64.value_and_grad(**a)
    wide = np.zeros((6, 128))
    wide[:, ::2] = a["x"]
    strided = dict(a, x=wide[:, ::2], W=np.asfortranarray(a["W"]), U=a["U"].T.copy().T)
    assert not strided["x"].flags.c_contiguous and not strided["W"].flags.c_contiguous
    o2, g2 = m64.value_and_grad(**strided)
    same(o2, outs)
    same(g2, grads)
    frozen = {k: v.copy() for k, v in a.items()}
    for v in frozen.values():
        v.flags.writeable = False
    o3, g3 = m64.value_and_grad(**frozen)
    same(o3, outs)
    same(g3, grads)
    same(m64.forward(**frozen), m64.forward(**a))


def test_call_misaligned_float32_arrays_give_the_same_results(m32):
    a = args(np.float32)
    want = m32.value_and_grad(**a)
    odd = {}
    for k, v in a.items():
        raw = np.zeros(v.nbytes + 1, dtype=np.uint8)
        view = raw[1:].view(v.dtype).reshape(v.shape)     # starts 1 byte past an aligned address
        view[...] = v
        assert view.ctypes.data % v.dtype.itemsize != 0 and not view.flags.aligned
        odd[k] = view
    got = m32.value_and_grad(**odd)
    same(got[0], want[0])
    same(got[1], want[1])


def test_call_python_lists_and_scalars(m64):
    a = args(n=2)
    want = m64.forward(**a)
    lists = {k: v.tolist() for k, v in a.items()}
    same(m64.forward(**lists), want)
    with pytest.raises(ShapeError, match="argument 'b2' has shape \\(\\), expected \\(Nc=10,\\)"):
        m64.forward(**dict(a, b2=0.5))
    with pytest.raises(DTypeError, match="'x'"):
        m64.forward(**dict(a, x=[["a"] * 64] * 2))


def test_call_float64_into_a_float32_model_is_refused_not_downcast(m32):
    with pytest.raises(DTypeError, match="'x' is float64 but the model computes in float32"):
        m32.forward(**dict(args(np.float32), x=args()["x"]))


# ---------------------------------------------------------------- values
def test_call_nan_and_inf_inputs_propagate_and_never_crash(m64):
    a = args()
    a["x"] = a["x"].copy()
    a["x"][0, 0] = np.nan
    a["x"][1, :] = np.inf
    outs, grads = m64.value_and_grad(**a)
    assert np.isnan(outs["loss"]) and np.isnan(outs["probs"][0]).all()
    assert np.isfinite(outs["probs"][2:]).all()                  # other rows are untouched
    assert not np.isfinite(grads["W"]).all()
    ref = graphc.evaluate(graphc.load(EXAMPLES / "one_layer.toml"), **a)
    np.testing.assert_array_equal(np.isnan(outs["probs"]), np.isnan(ref["probs"]))


def test_call_inputs_are_never_written(m64, m32):
    for model, dtype in ((m64, np.float64), (m32, np.float32)):
        a = args(dtype)
        for v in a.values():
            v.flags.writeable = False
        before = {k: v.tobytes() for k, v in a.items()}
        for _ in range(2):                                       # checked path, then the fast path
            model.forward(**a)
            model.value_and_grad(**a)
        assert {k: v.tobytes() for k, v in a.items()} == before


# ---------------------------------------------------------------- the fast path never returns stale data
def cold(model):
    """A fresh CompiledModel of the same library: its first call takes the checked path."""
    return graphc.compile(EXAMPLES / "one_layer.toml", dtype=model.dtype.name)


def bits(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_fast_path_new_arrays_of_the_same_shape_are_used(m64):
    ref = cold(m64)
    a1, a2 = args(seed=1), args(seed=2)
    for _ in range(2):                                   # the second round is the fast path
        m64.value_and_grad(**a1)
    o2, g2 = m64.value_and_grad(**a2)                    # every array a new object, same shapes
    r2, rg2 = ref.value_and_grad(**{k: v.copy() for k, v in a2.items()})
    bits(o2, r2)
    bits(g2, rg2)
    bits(m64.forward(**dict(a1, x=a2["x"])), ref.forward(**dict(a1, x=a2["x"].copy())))   # only x new


def test_fast_path_sees_values_changed_in_place(m64):
    ref = cold(m64)
    a = args(seed=3)
    first = m64.forward(**a)
    m64.forward(**a)
    a["x"][...] = args(seed=4)["x"]
    a["W"] *= 2.0
    a["y"][:] = 9 - a["y"]
    got = m64.value_and_grad(**a)
    m64.value_and_grad(**a)
    bits(m64.forward(**a), ref.forward(**{k: v.copy() for k, v in a.items()}))
    bits(got[0], ref.value_and_grad(**{k: v.copy() for k, v in a.items()})[0])
    assert not np.array_equal(first["probs"], m64.forward(**a)["probs"])


def test_fast_path_outputs_are_new_arrays_every_call(m64):
    a1, a2 = args(seed=5), args(seed=6)
    o1, g1 = m64.value_and_grad(**a1)
    f1 = m64.forward(**a1)
    keep = ({k: v.copy() for k, v in o1.items()}, {k: v.copy() for k, v in g1.items()}, f1["probs"].copy())
    for a in (a1, a2, a1, a2):
        o, g = m64.value_and_grad(**a)
        f = m64.forward(**a)
        assert not any(np.shares_memory(o[k], o1[k]) for k in o) and not np.shares_memory(f["probs"], f1["probs"])
    bits(o1, keep[0])
    bits(g1, keep[1])
    assert f1["probs"].tobytes() == keep[2].tobytes()


def test_fast_path_temporaries_at_reused_addresses_give_their_own_results(m64):
    ref = cold(m64)
    a = args(seed=7)
    for i in range(6):                                    # a new temporary x each call (the old one is freed)
        got = m64.forward(**dict(a, x=np.full((6, 64), 0.1 * i)))
        want = ref.forward(**dict(a, x=np.full((6, 64), 0.1 * i).tolist()))   # a list: always the checked path
        bits(got, want)
    view = a["x"][...]                                     # another object over the same memory
    bits(m64.forward(**dict(a, x=view)), m64.forward(**a))


def test_fast_path_metadata_changed_in_place_is_checked_again(m64):
    import warnings
    ref = cold(m64)
    a = args(seed=8)
    m64.forward(**a)
    m64.forward(**a)
    x = a["x"]
    x.shape = (3, 128)                                     # same object and memory, another shape
    with pytest.raises(ShapeError, match=r"argument 'x' has shape \(3, 128\)"):
        m64.forward(**a)
    x.shape = (6, 64)
    m64.forward(**a)
    ints = np.arange(6 * 64, dtype=np.int64).reshape(6, 64) % 7
    a["x"] = ints.copy()
    m64.forward(**a)                                       # the checked path converts int64 to float64
    bits(m64.forward(**a), ref.forward(**dict(a, x=ints.astype(np.float64))))
    a["x"] = x
    m64.forward(**a)
    x.dtype = np.int64                                     # reinterpreted in place: the same shape, other values
    x[...] = ints
    bits(m64.forward(**a), ref.forward(**dict(a, x=ints.astype(np.float64))))
    x.dtype = np.float64
    m64.forward(**a)
    with warnings.catch_warnings():                        # setting strides is deprecated in NumPy 2.4
        warnings.simplefilter("ignore", DeprecationWarning)
        x.strides = (0, 8)                                 # every row now reads row 0
    bits(m64.forward(**a), ref.forward(**dict(a, x=np.array(x))))


def test_fast_path_arrays_it_holds_cannot_be_resized_under_it(m64):
    ref = cold(m64)
    a = args(seed=9)
    m64.forward(**a)
    m64.forward(**a)                                       # the second call in a row: the plan holds a's arrays
    for refcheck in (True, False):
        with pytest.raises(ValueError, match="resize"):
            a["x"].resize((12, 64), refcheck=refcheck)
    other = a["x"].copy()
    m64.forward(**dict(a, x=other))
    m64.forward(**dict(a, x=other))                        # the plan now holds `other`, no longer x
    a["x"].resize((12, 64), refcheck=False)
    with pytest.raises(ShapeError, match="'y' has N=6 .* 'x' has N=12"):
        m64.forward(**a)
    # an array seen once is not held: resized away and back (its data moved), it gets a fresh pointer
    x = args(seed=11)["x"]
    want = ref.forward(**dict(a, x=x.copy()))
    m64.forward(**dict(a, x=x))
    keep = [np.ones(64 * 64) for _ in range(4)]            # so the moved data lands elsewhere
    x.resize((64, 64), refcheck=False)
    x.resize((6, 64), refcheck=False)
    bits(m64.forward(**dict(a, x=x)), want)
    bits(m64.forward(**dict(a, x=x)), want)
    del keep


def test_fast_path_falls_back_for_odd_arrays_of_the_same_shape(m32):
    ref = cold(m32)
    a = args(np.float32, seed=10)
    m32.value_and_grad(**a)
    m32.value_and_grad(**a)
    raw = np.zeros(a["x"].nbytes + 1, dtype=np.uint8)
    odd = raw[1:].view(np.float32).reshape(a["x"].shape)    # misaligned
    odd[...] = a["x"] + 1
    wide = np.zeros((6, 128), np.float32)
    wide[:, ::2] = a["x"] - 1
    for x in (odd, wide[:, ::2], np.asfortranarray(a["x"]), (a["x"] * 2).astype(">f4")):
        bits(m32.value_and_grad(**dict(a, x=x))[1], ref.value_and_grad(**dict(a, x=np.array(x, np.float32)))[1])


def test_fast_path_errors_are_those_of_the_checked_path(m64, m32):
    a = args()
    for _ in range(2):
        m64.value_and_grad(**a)
        m32.value_and_grad(**args(np.float32))
    with pytest.raises(ArgumentError, match=r"missing argument 'U'"):
        m64.value_and_grad(**{k: v for k, v in a.items() if k != "U"})
    with pytest.raises(ArgumentError, match="unexpected argument 'Ww'.*") as caught:
        m64.value_and_grad(**{("Ww" if k == "W" else k): v for k, v in a.items()})
    assert "did you mean 'W'?" in str(caught.value)
    with pytest.raises(ArgumentError, match="unexpected argument 'lr'"):
        m64.value_and_grad(**a, lr=np.float64(0.1))
    with pytest.raises(ShapeError, match=r"argument 'W' has shape \(64, 128\)"):
        m64.value_and_grad(**dict(a, W=np.ascontiguousarray(a["W"].T)))
    with pytest.raises(ShapeError, match=r"'y' has N=5 .* 'x' has N=6"):
        m64.value_and_grad(**dict(a, y=a["y"][:5].copy()))
    with pytest.raises(DTypeError, match="'x' is float64 but the model computes in float32"):
        m32.value_and_grad(**dict(args(np.float32), x=args()["x"]))
    with pytest.raises(DTypeError, match="'y'"):
        m64.value_and_grad(**dict(a, y=a["y"].astype(np.float64)))
    with pytest.raises(ArgumentError, match="out of range"):
        m64.value_and_grad(**dict(a, y=np.array([0, 1, 2, 3, 4, 10], np.int32)))
    m64.value_and_grad(**a)                                     # and the good call still works after them
