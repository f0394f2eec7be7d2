"""Memory planning: no two workspace buffers that are alive at the same step share memory, for
any batch size; every buffer lies inside the planned arena; the plan reuses memory.

Liveness is recomputed here from the kernel steps themselves (which values each step reads and
writes), not taken from the planner, so a planner that got lifetimes wrong fails too."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import graphc
from graphc.backend.codegen import generate
from graphc.backend.memory import align, peval
from graphc.backend.sizes import Poly, pge, pmax
from graphc.backend.cprint import c_name

from conftest import EXAMPLE_SPECS, EXAMPLES_DIR

BATCHES = (1, 2, 7, 37, 64, 1000)


def live_ranges(f) -> dict[str, list[tuple[int, int]]]:
    """C name of each workspace buffer -> the (first, last) steps touching it, over all of f's steps:
    one range, or one more from each step that writes the whole value again without reading it
    (memory.recompute_late_reads's copies: the buffer holds nothing from its last read before).

    A buffer the plan pins for the whole function (train_step's gradients, which values such as
    d_theta are written into under the gradient's name) is alive from the first step to the last,
    optimizer steps included."""
    from dataclasses import replace
    touched: dict[str, list[list[int]]] = {}
    first: dict = {}
    for i, step in enumerate(f.steps):
        for v in list(step.defs) + list(step.uses):
            lives = touched.setdefault(c_name(v.name), [])
            if v in step.defs and v not in step.uses:
                if v in first and replace(first[v], comment="") == replace(step, comment=""):
                    lives.append([])    # the kernel that wrote it first, again: a new life
                first.setdefault(v, step)
            if not lives:
                lives.append([])
            lives[-1].append(i)
        for name, _size in getattr(step, "scratch", ()):      # a scan loop's own area (backend/scan_loop.py)
            touched.setdefault(name, [[]])[-1].append(i)
    end = len(f.sched.steps) - 1
    ranges = {}
    for name, b in f.sched.buffers.items():
        if b.first == 0 and b.last >= end:
            ranges[name] = [(0, len(f.steps) - 1)]
        elif name in touched:
            ranges[name] = [(min(life), max(life)) for life in touched[name]]
    return ranges


def assert_plan_is_safe(csrc) -> None:
    for f in csrc.functions:
        buffers, ranges = f.sched.buffers, live_ranges(f)
        assert set(ranges) == set(buffers), f"{f.name}: a planned buffer no step touches"
        names = sorted(buffers)
        for n in BATCHES:
            arena = peval(f.sched.arena, n)
            spans = {b: (peval(buffers[b].offset, n), peval(buffers[b].offset, n) + peval(buffers[b].size, n))
                     for b in names}
            for b, (lo, hi) in spans.items():
                assert 0 <= lo <= hi <= arena, f"{f.name}: {b} [{lo}, {hi}) outside the arena of {arena} at n={n}"
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    if not any(not (la < fb or lb < fa) for fa, la in ranges[a] for fb, lb in ranges[b]):
                        continue            # never alive at once
                    (a0, a1), (b0, b1) = spans[a], spans[b]
                    assert a1 <= b0 or b1 <= a0, (f"{f.name}: {a} (steps {ranges[a]}) and {b} (steps {ranges[b]}) "
                                                  f"overlap at n={n}: [{a0}, {a1}) and [{b0}, {b1})")
        total = sum(peval(align(b.size), 64) for b in buffers.values())
        assert peval(f.sched.arena, 64) <= total


@pytest.mark.parametrize("spec", EXAMPLE_SPECS)
@pytest.mark.parametrize("optimizer", [None, graphc.Adam(lr=1e-3)], ids=["no-optimizer", "adam"])
def test_memory_plan_of_every_example_never_overlaps_live_buffers(spec, optimizer):
    g = graphc.load(EXAMPLES_DIR / spec)
    of, wrt = g.grad_spec
    assert_plan_is_safe(generate(g, of, list(wrt), optimizer=optimizer))


def test_memory_plan_reuses_memory_in_the_one_layer_backward_pass():
    g = graphc.load(EXAMPLES_DIR / "one_layer.toml")
    csrc = generate(g, *g.grad_spec)
    f = next(f for f in csrc.functions if f.name == "value_and_grad")
    sizes = sum(peval(align(b.size), 64) for b in f.sched.buffers.values())
    assert peval(f.sched.arena, 64) < sizes          # some buffers share memory
    offsets = [peval(b.offset, 64) for b in f.sched.buffers.values()]
    assert len(set(offsets)) < len(offsets)


@st.composite
def networks(draw):
    """A random MLP-like graph: a few layers of matmul, bias, activation, sometimes a skip or a
    shared weight, ending in a cross-entropy or an MSE loss."""
    g = graphc.Graph("rand")
    width = draw(st.integers(1, 9))
    h = g.input("x", ("N", width))
    params = []
    for layer in range(draw(st.integers(1, 4))):
        out = draw(st.integers(1, 9))
        W = g.param(f"W{layer}", (out, h.shape[1]))
        b = g.param(f"b{layer}", (out,))
        params += [f"W{layer}", f"b{layer}"]
        z = h @ W.T + b
        act = draw(st.sampled_from(["relu", "tanh", "sigmoid", "none"]))
        a = z if act == "none" else getattr(graphc, act)(z)
        if draw(st.booleans()) and a.shape == h.shape:
            a = a + h * draw(st.sampled_from([0.5, 2.0]))        # a skip connection
        h = a
    if draw(st.booleans()):
        y = g.input("y", ("N",), dtype="int32")
        loss = graphc.cross_entropy(h, y)
    else:
        t = g.input("t", h.shape)
        loss = graphc.mse(h, t)
    g.output("loss", loss)
    if draw(st.booleans()):
        g.output("act", h)
    return g, params


@settings(max_examples=40, deadline=None, derandomize=True)
@given(networks())
def test_memory_plan_of_random_networks_never_overlaps_live_buffers(net):
    g, params = net
    assert_plan_is_safe(generate(g, "loss", params))


def test_memory_plan_checker_catches_an_overlap():
    """The check above is not vacuous: moving one live buffer onto another fails it."""
    g = graphc.load(EXAMPLES_DIR / "one_layer.toml")
    csrc = generate(g, *g.grad_spec)
    f = next(f for f in csrc.functions if f.name == "value_and_grad")
    h, d_z = f.sched.buffers["h"], f.sched.buffers["d_z"]      # both alive while d_z = d_h .* sgn(h)
    d_z.offset = h.offset
    with pytest.raises(AssertionError, match="overlap"):
        assert_plan_is_safe(csrc)


def test_memory_plan_workspace_in_the_header_covers_the_arena():
    m = graphc.compile(str(EXAMPLES_DIR / "one_layer.toml"))
    for n in (1, 37, 256):
        ws = m.lib.one_layer_workspace_size(n)
        for f in m.csrc.functions:
            assert ws >= peval(f.sched.arena, n) * np.dtype(np.float32).itemsize
    assert m.lib.one_layer_workspace_size(256) > m.lib.one_layer_workspace_size(1)


EARLY_OPTIMIZERS = [graphc.Adam(lr=1e-3), graphc.SGD(lr=0.1, momentum=0.9), graphc.SGD(lr=0.1)]


@pytest.mark.parametrize("spec", ["kws_dscnn.toml", "mlp.toml", "gru.toml"])
@pytest.mark.parametrize("optimizer", EARLY_OPTIMIZERS, ids=["adam", "momentum", "sgd"])
def test_memory_plan_with_early_updates_is_safe_and_no_larger(monkeypatch, spec, optimizer):
    """The backend applies each param's update right after the last kernel that reads the param
    or touches its gradient (no later one does) where that makes the train step's arena smaller
    (schedule.UPDATES_WHEN_READY): the plan still safe and no larger than with every update last;
    mlp's with Adam or momentum (its two weight gradients) early. (kws_dscnn's nine weight gradients,
    constant in size, sit beside its per-row buffers when every update is last: 656 floats more at
    n = 1 with SGD, 1,424 with Adam, under EARLY_SAVING, so its updates stay last; the 19,600 counted
    before were the arena's old over-estimate, sizes.pmax coefficient by coefficient.)"""
    import graphc.backend.schedule as schedule
    from graphc.backend.kernels import Update
    g = graphc.load(EXAMPLES_DIR / spec)
    monkeypatch.setattr(schedule, "UPDATES_WHEN_READY", False)
    late = next(f for f in generate(g, *g.grad_spec, optimizer=optimizer).functions if f.name == "train_step")
    monkeypatch.undo()
    csrc = generate(g, *g.grad_spec, optimizer=optimizer)
    assert_plan_is_safe(csrc)
    early = next(f for f in csrc.functions if f.name == "train_step")
    updates = [i for i, st in enumerate(early.steps) if isinstance(st, Update)]
    assert updates
    chosen = updates[0] < len(early.steps) - len(updates)      # not all at the end
    for i in updates:
        touched = set(early.steps[i].uses)
        assert not any(touched & set(st.uses + st.defs) for st in early.steps[i + 1:]), early.steps[i].comment
    smaller = peval(late.sched.arena, 1) - peval(early.sched.arena, 1)
    assert smaller >= 0 and peval(early.sched.arena, 64) <= peval(late.sched.arena, 64)
    assert chosen == (smaller > 0)          # early only where it saves, else as before
    if spec == "mlp.toml" and optimizer is not EARLY_OPTIMIZERS[2]:
        assert chosen and smaller >= 4096
    if spec == "gru.toml":      # (its gradients are all complete only when its backward scan ends)
        assert not chosen


@pytest.mark.parametrize("optimizer", EARLY_OPTIMIZERS[:2], ids=["adam", "momentum"])
def test_memory_plan_early_updates_train_the_same(monkeypatch, tmp_path, optimizer):
    """The same three train steps (float64) with the updates early (mlp with Adam or momentum: the
    backend's choice) as all at the end: bit for bit."""
    import graphc.backend.schedule as schedule
    from graphc.backend.kernels import Update
    g = graphc.load(EXAMPLES_DIR / "mlp.toml")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, g.inputs["x"].shape[1]))
    y = rng.integers(0, 10, 5).astype(np.int32)        # Nc = 10 classes
    trained = []
    for early in (False, True):
        monkeypatch.setattr(schedule, "UPDATES_WHEN_READY", early)
        monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / str(early)))     # (a build of its own)
        m = graphc.compile(g, dtype="float64", optimizer=optimizer, threads=1)
        step = next(f for f in m.csrc.functions if f.name == "train_step")
        ups = [i for i, st in enumerate(step.steps) if isinstance(st, Update)]
        assert (ups[0] < len(step.steps) - len(ups)) == early      # early: not all last
        state = m.train_state(graphc.init_params(m, seed=3, dtype="float64"))
        losses = [float(m.train_step(state, x=x, y=y)["loss"]) for _ in range(3)]
        trained.append((losses, {k: v.copy() for k, v in state.params.items()}))
    assert trained[0][0] == trained[1][0]
    for k, v in trained[0][1].items():
        np.testing.assert_array_equal(trained[1][1][k], v, err_msg=k)


# ------------------------------------------------------------------ sizes compared for dims >= 1
sizes_poly = st.builds(lambda c, n, t, nt, nn: Poly({(): c, ("N",): n, ("T",): t, ("N", "T"): nt, ("N", "N"): nn}),
                       *[st.integers(0, 20_000)] * 3, st.integers(0, 50), st.integers(0, 5))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(sizes_poly, sizes_poly)
def test_memory_sizes_max_and_order_hold_for_every_run_time_dim_from_1(a, b):
    """The arena is the max of its buffers' ends (sizes.pmax) and a buffer fits beside another when
    one's offset is past the other's end (sizes.pge), both for every value of the dims >= 1 (the C
    rejects less): pmax at least both and growing with the dims, and exact at dims 1 when both are
    sizes in the batch alone (a model on a microcontroller runs at n = 1); pge never wrong."""
    m = pmax(a, b)
    assert all(c >= 0 for _, c in m.terms), m           # so the workspace never shrinks as n grows
    for n in (1, 2, 3, 7, 64, 1000):
        for t in (1, 2, 5, 33):
            at = {"N": n, "T": t}
            assert peval(m, at) >= max(peval(a, at), peval(b, at)), (a, b, m, at)
            if pge(a, b):
                assert peval(a, at) >= peval(b, at), (a, b, at)
    linear = lambda p: Poly({k: c for k, c in p.terms if k in ((), ("N",))})   # noqa: E731
    la, lb = linear(a), linear(b)
    assert peval(pmax(la, lb), 1) == max(peval(la, 1), peval(lb, 1)), (la, lb)
    assert pge(la, lb) == all(peval(la, n) >= peval(lb, n) for n in (1, 10 ** 6))


def test_memory_sizes_a_constant_beside_a_per_row_buffer_costs_nothing_at_batch_1():
    """kws_dscnn's predict: the stem convolution's patch planes of one image (5,000 floats, constant)
    end at 8000 n + 5008 while the activations end at 16064 n + 64: the arena is the latter, 64,512
    bytes at n = 1, not the coefficient-wise max 16064 n + 5008 (84,288 bytes: the planes' 20 KB)."""
    N = Poly.of("N")
    assert pmax(8000 * N + 5008, 16064 * N + 64) == 16064 * N + 64
    assert pge(16000 * N, 8000 * N + 5008) and not pge(8000 * N + 5008, 16000 * N)
    assert pmax(N * N, 4 * N) == N * N + 2 * N + 1          # neither is larger: at least both, exact at 1


STEM = """name = "stem"
[dims]
N = "batch"
[inputs]
x = ["N", 1, 49, 10]
y = { shape = ["N"], dtype = "int32" }
[params]
w0 = [32, 1, 10, 4]
b0 = [32]
pw = [32, 32, 1, 1]
U = [12, 32]
c = [12]
[graph]
h0 = "relu(conv2d(x, w0, b0, stride=2, padding=(5, 1)))"
h1 = "relu(conv2d(h0, pw))"
theta = "flatten(adaptive_avg_pool2d(h1, 1)) @ U.T + c"
J = "cross_entropy(theta, y)"
[outputs]
loss = "J"
probs = "softmax(theta)"
[grad]
of = "J"
wrt = ["w0", "b0", "pw", "U", "c"]
"""


def test_memory_plan_patch_planes_cost_no_more_workspace_than_the_rows(monkeypatch):
    """A keyword-spotting stem (kws_dscnn's 10x4 stride-2 convolution, 32 filters) over the patch
    planes (one image's planes in the workspace, constant in n) or over the batch's patch rows: the
    planes' workspace, predict and train step, is no larger at batch 1 and smaller at 64, so there is
    no batch at which memory asks for the rows; and both compute what the NumPy reference does."""
    import graphc.ops.conv as conv
    g = graphc.parse_spec(STEM, "stem.toml")
    rng = np.random.default_rng(3)
    params = {k: 0.3 * rng.standard_normal(v.shape) for k, v in g.params.items()}
    sizes = {}
    for way, work in (("planes", 0), ("rows", 10 ** 12)):
        monkeypatch.setattr(conv, "PLANES_WORK", work)
        for wrt in (None, list(g.grad_spec[1])):
            csrc = generate(g, "J" if wrt else None, wrt, dtype="float32", threads=1, optimizer=graphc.SGD(lr=0.1))
            assert ("patch planes, made here" in csrc.source) == (way == "planes")
            sizes[way, bool(wrt)] = [csrc.workspace_parts(n, 1)[2] for n in (1, 64)]
        m = graphc.compile(g, dtype="float64")
        for n in (1, 3):
            x = rng.standard_normal((n, 1, 49, 10))
            y = rng.integers(0, 12, n).astype(np.int32)
            out, grads = m.value_and_grad(x=x, y=y, **params)
            want = graphc.evaluate(graphc.grad(g, "J", list(g.grad_spec[1])), x=x, y=y, **params)
            np.testing.assert_allclose(out["loss"], want["loss"], rtol=1e-10)
            for k in grads:
                np.testing.assert_allclose(grads[k], want[f"d_{k}"], rtol=1e-9, atol=1e-12)
    for training in (False, True):
        (p1, p64), (r1, r64) = sizes["planes", training], sizes["rows", training]
        assert p1 <= r1 and p64 < r64, (training, sizes)
