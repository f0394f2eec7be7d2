"""Concurrency: one CompiledModel called from 8 Python threads at once gives the bits of serial
calls, and the same model compiled for 1 and 2 threads gives the same bits."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import graphc

from conftest import one_layer_spec, private_cache_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
THREADS = 8

WIDE = one_layer_spec()


_cache_dir = pytest.fixture(scope="module", autouse=True)(private_cache_dir)


def batch(seed: int, n: int, dx=64, dh=128, nc=10, params_seed=0):
    rng, prng = np.random.default_rng(seed), np.random.default_rng(params_seed)
    return dict(x=rng.standard_normal((n, dx)), y=rng.integers(0, nc, n).astype(np.int32),
                W=prng.standard_normal((dh, dx)) * 0.1, b1=prng.standard_normal(dh) * 0.1,
                U=prng.standard_normal((nc, dh)) * 0.1, b2=prng.standard_normal(nc) * 0.1)


def assert_bits(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def one_and_two_threads_give_the_reference_in_the_same_bits(g: graphc.Graph, a: dict) -> graphc.CompiledModel:
    """forward and value_and_grad of g on a, float64, with 1 and 2 threads: the same bits, and the
    reference's outputs and gradients. Returns the 2-thread model."""
    one = graphc.compile(g, dtype="float64", threads=1)
    two = graphc.compile(g, dtype="float64", threads=2)
    o1, g1 = one.value_and_grad(**a)
    o2, g2 = two.value_and_grad(**a)
    assert_bits(o1, o2)
    assert_bits(g1, g2)
    assert_bits(one.forward(**a), two.forward(**a))
    reference = graphc.evaluate(graphc.grad(g, *g.grad_spec), **a)
    for k, value in o2.items():
        np.testing.assert_allclose(value, reference[k], rtol=1e-12, atol=1e-15)
    for w, value in g2.items():
        np.testing.assert_allclose(value, reference[f"d_{w}"], rtol=1e-10, atol=1e-13)
    return two


def test_concurrency_eight_threads_share_one_model_bit_identically():
    m = graphc.compile(EXAMPLES / "one_layer.toml", dtype="float64", threads=2)
    jobs = [batch(seed, n=1 + 7 * seed) for seed in range(THREADS * 3)]   # varied batch sizes too
    serial = [(m.forward(**a), m.value_and_grad(**a)) for a in jobs]
    start = threading.Barrier(THREADS)

    def work(i):
        start.wait()
        out = []
        for _ in range(4):
            for j in range(i, len(jobs), THREADS):
                out.append((j, m.forward(**jobs[j]), m.value_and_grad(**jobs[j])))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        results = [r for f in [pool.submit(work, i) for i in range(THREADS)] for r in f.result()]
    assert len(results) == 4 * len(jobs)
    for j, fwd, (outs, grads) in results:
        assert_bits(fwd, serial[j][0])
        assert_bits(outs, serial[j][1][0])
        assert_bits(grads, serial[j][1][1])


def test_concurrency_results_are_the_same_bits_for_one_and_two_threads():
    g = graphc.parse_spec(WIDE, "wide.toml")
    one = graphc.compile(g, dtype="float64", threads=1)
    two = graphc.compile(g, dtype="float64", threads=2)
    # the C text is the same; the thread cap is a compile-time define of the model's build
    assert one.source == two.source and "#ifndef GC_MAX_THREADS" in one.header
    assert one.built.key != two.built.key
    for dtype in (np.float64,):
        a = {k: (v.astype(dtype) if v.dtype.kind == "f" else v)
             for k, v in batch(7, n=256, dx=192, dh=512).items()}
        o1, g1 = one.value_and_grad(**a)
        o2, g2 = two.value_and_grad(**a)
        assert_bits(o1, o2)
        assert_bits(g1, g2)
        assert_bits(one.forward(**a), two.forward(**a))


def test_concurrency_train_steps_on_separate_states_match_serial():
    training = pytest.importorskip("graphc.native.training", reason="graphc.native.training does not exist yet")
    if not hasattr(graphc, "SGD"):
        pytest.skip("graphc.SGD is not exported yet")
    m = graphc.compile(EXAMPLES / "one_layer.toml", dtype="float64", optimizer=graphc.SGD(lr=0.1, momentum=0.9))
    g = graphc.load(EXAMPLES / "one_layer.toml")
    data = [batch(seed, n=16) for seed in range(5)]

    def run(_=None):
        state = m.train_state({k: v.copy() for k, v in graphc.init_params(g, seed=0).items()})
        for a in data:
            m.train_step(state, x=a["x"], y=a["y"])
        return {k: np.array(v) for k, v in state.params.items()}

    serial = run()
    with ThreadPoolExecutor(THREADS) as pool:
        for params in pool.map(run, range(THREADS)):
            assert_bits(params, serial)
    del training


def test_concurrency_threads_alternating_arrays_of_one_shape_get_their_own_results():
    """Each thread's fast path keeps its own plan: new arrays of the same shape (pointers swapped on
    every call), from 8 threads at once, never see another thread's arrays or outputs."""
    m = graphc.compile(EXAMPLES / "one_layer.toml", dtype="float64", threads=1)
    jobs = [batch(seed, n=9) for seed in range(THREADS * 2)]
    serial = [m.value_and_grad(**a) for a in jobs]
    start = threading.Barrier(THREADS)

    def work(i):
        mine = [(j, {k: v.copy() for k, v in jobs[j].items()}) for j in (i, i + THREADS)]
        start.wait()
        out = []
        for r in range(40):
            j, a = mine[r % 2]
            out.append((j, m.value_and_grad(**a)))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        for f in [pool.submit(work, i) for i in range(THREADS)]:
            for j, (outs, grads) in f.result():
                assert_bits(outs, serial[j][0])
                assert_bits(grads, serial[j][1])


def test_concurrency_the_gil_is_released_during_the_c_call():
    """cffi's API mode releases the GIL around each C call: another Python thread runs meanwhile.
    With a 1 s switch interval the GIL only changes hands when it is released, so the main
    thread's counter moves during the call only if the call released it."""
    import sys
    g = graphc.parse_spec(WIDE, "wide.toml")
    m = graphc.compile(g, dtype="float64", threads=1)
    a = {k: v for k, v in batch(3, n=1024, dx=192, dh=512).items()}
    m.value_and_grad(**a)                                  # the plan exists: the next call is the fast path
    entered, done = threading.Event(), threading.Event()

    def work():
        entered.set()
        m.value_and_grad(**a)
        done.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        t = threading.Thread(target=work)
        count = 0
        t.start()
        entered.wait()
        while not done.is_set():
            count += 1
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert count > 100, f"the main thread ran {count} loop iterations during the C call"


def test_concurrency_parallel_elementwise_loops_and_updates_give_the_same_bits_for_one_and_two_threads():
    """Loops of at least GC_LOOP_PARALLEL_WORK iterations (tanh over 256 x 512, Adam's updates of
    98k parameters) are split over the threads; each element is computed the same way."""
    spec = one_layer_spec(act="tanh")
    g = graphc.parse_spec(spec, "wide.toml")
    optimizer = graphc.Adam(lr=1e-3, weight_decay=1e-2)
    one = graphc.compile(g, dtype="float64", threads=1, optimizer=optimizer)
    two = graphc.compile(g, dtype="float64", threads=2, optimizer=optimizer)
    assert "GC_PARALLEL_LOOP(" in two.source
    a = batch(7, n=256, dx=192, dh=512)
    params = graphc.init_params(g, seed=3)
    s1, s2 = one.train_state(params), two.train_state(params)
    for _ in range(3):
        data = {k: v for k, v in a.items() if k in g.inputs}
        assert_bits(one.train_step(s1, **data), two.train_step(s2, **data))
    assert_bits(dict(s1.params), dict(s2.params))
    assert_bits(dict(s1.buffers), dict(s2.buffers))


def test_concurrency_column_blocked_sums_match_the_reference_and_serial_bits():
    """d_z = d_h .* (1 - h²) with d_b1 += d_z over 256 rows and 512 columns: two blocks of columns,
    one per thread. The bias gradient is the reference's, and the same bits as with one thread."""
    spec = one_layer_spec(act="tanh")
    two = one_and_two_threads_give_the_reference_in_the_same_bits(graphc.parse_spec(spec, "wide.toml"),
                                                                  batch(11, n=256, dx=192, dh=512))
    assert "gc_block += GC_LOOP_COLUMNS" in two.source


@pytest.mark.parametrize("n", [256, 1000])
def test_concurrency_relu_mask_and_bias_gradient_in_the_gemm_epilogue(n):
    """d_z = (d_theta U) ∘ sgn(h) and d_b1 = Σ_rows d_z are written by the GEMM that computes
    d_theta U, split over the threads by columns (also when the rows outnumber the columns, n =
    1000 > 512): the reference's gradients, and the same bits for 1 and 2 threads."""
    two = one_and_two_threads_give_the_reference_in_the_same_bits(graphc.parse_spec(WIDE, "wide.toml"),
                                                                  batch(12, n=n, dx=192, dh=512))
    assert ".mask = h" in two.source and ".colsum = d_b1" in two.source


def test_concurrency_small_models_get_no_parallel_regions():
    """An OpenMP region costs about a microsecond even when its `if` keeps it on one thread: the
    notes' digits network (rows of 128) has no parallel loop at all, the 512-wide one has them."""
    adam = graphc.Adam(lr=1e-3)   # (plain SGD updates the weights in their GEMMs: no loops at all)
    small = graphc.compile(EXAMPLES / "one_layer.toml", threads=2, optimizer=adam)
    wide = graphc.compile(graphc.parse_spec(WIDE, "wide.toml"), threads=2, optimizer=adam)
    calls = lambda source: source.count("GC_PARALLEL_LOOP(") - source.count("#define GC_PARALLEL_LOOP(")
    assert calls(small.source) == 0 and calls(wide.source) >= 1   # at least Adam's update of W (98k)


@pytest.mark.parametrize("outputs", ["loss and probs", "loss only"])
def test_concurrency_softmax_over_wide_rows_is_split_over_threads_with_the_same_bits(outputs):
    """600 classes: the softmax, cross-entropy and identity (7)'s gradient are one pass over the
    rows, split into GC_ROW_CHUNKS chunks of rows (300 rows: chunks of 5, the last ones empty).
    The loss, the probabilities and every gradient are the reference's, and the same bits for 1
    and 2 threads; without a probs output no probabilities are stored, only the gradient."""
    spec = one_layer_spec(dx=24, dh=32, nc=600, outputs={"loss": "J"} if outputs == "loss only" else None)
    two = one_and_two_threads_give_the_reference_in_the_same_bits(graphc.parse_spec(spec, "wide.toml"),
                                                                  batch(13, n=300, dx=24, dh=32, nc=600))
    assert "gc_partial[gc_c] = total;" in two.source          # the threaded form of the kernel
    # the pass is in the forward pass value_and_grad calls (with probs) or in the backward pass (without)
    step = two.source[two.source.index("static void wide_forward_pass("):]
    assert "identity (7): (probs - onehot) * scale" in step and "d_J" not in step


def test_concurrency_graphc_busy_hold_sets_the_kernels_fallback_and_refuses_a_bad_value(monkeypatch):
    """GRAPHC_BUSY_HOLD reaches the loaded kernel library (gc_kernels_busy_hold: how long products
    run on one thread after finding the machine busy); a value that is not seconds >= 0 is an
    ArgumentError naming the variable, before any call."""
    g = graphc.parse_spec(WIDE, "wide.toml")
    monkeypatch.setenv("GRAPHC_BUSY_HOLD", "0.75")
    m = graphc.compile(g, dtype="float64", threads=2)
    if '"-fopenmp"' not in (m.built.directory / "manifest.json").read_text():
        pytest.skip("built without OpenMP: one thread always, and no hold to set")
    assert m.lib.gc_kernels_busy_hold(-1.0) == 0.75     # -1: read without changing it
    monkeypatch.setenv("GRAPHC_BUSY_HOLD", "0")
    m = graphc.compile(g, dtype="float64", threads=2)
    assert m.lib.gc_kernels_busy_hold(-1.0) == 0.0
    if m.lib.gc_kernels_threads(2) == 2:                # built with OpenMP, two threads allowed
        a = batch(3, n=256, dx=192, dh=512)
        m.value_and_grad(**a)
        assert m.lib.gc_kernels_threads(2) == 2         # hold 0: never one thread
    for bad in ("-1", "soon", "nan"):
        monkeypatch.setenv("GRAPHC_BUSY_HOLD", bad)
        with pytest.raises(graphc.ArgumentError, match="GRAPHC_BUSY_HOLD"):
            graphc.compile(g, dtype="float64", threads=2)
