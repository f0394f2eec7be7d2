"""The differential fuzzer (graphc/tools/fuzz.py, docs/fuzzing.md): random valid specs over every
public op, each compiled and checked against the NumPy reference, finite differences, the IR's
train step, a 2-thread build and (on a sub-sample) the standalone C under gcc and clang.

The suite runs a fixed-seed slice of SLICE_CASES cases in 2 processes. A longer campaign:
python -m graphc.fuzz --cases 10000 --seed 1 --jobs 2; GRAPHC_FUZZ_CASES=N sets the slice.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

import graphc
from graphc.core.reference import evaluate_values
from graphc.ops import REGISTRY
from graphc.tools import fuzz
from graphc.tools.fuzz_specs import DIMS, ENTRIES, covered_ops, specs

# A case of the slice builds one model (for 2 threads, with one of the 5 optimizers), in one case
# in 8 a second (for 1 thread), in one in 4 a float32 model, and in one in 40 the standalone export
# with gcc and clang. The seed-0 slice of 200 cases ran in 3 min 38 s of wall time, 212 CPU-seconds
# (user + system, the compilers' included; 2026-12-07, a 2-core Xeon, KVM, AVX-512, other work at
# load 3.5-4): inside the issue's 5 minutes (docs/fuzzing.md). 200 is the issue's minimum. GRAPHC_FUZZ_CASES=N runs another count.
SLICE_CASES = int(os.environ.get("GRAPHC_FUZZ_CASES", "200"))
SLICE_PLAN = fuzz.Plan(optimizers="one", threads1_every=8, standalone_every=40, float32_every=4, shrink_seconds=120)
PUBLIC = sorted(k for k, op in REGISTRY.items() if op.public)
CONSTRUCTS = ["scan", "slice"]      # what specs write without an op's name: [scan.NAME] tables, v[a:b] and wpe[:T]


def test_fuzz_random_every_public_op_has_an_entry_in_the_generator():
    """A new op (conv2d, an rnn cell, ...) fails this until fuzz_specs.py draws it."""
    want = set(PUBLIC) | set(CONSTRUCTS)
    assert want <= covered_ops(), f"no generator entry draws {sorted(want - covered_ops())}"
    assert len({e.name for e in ENTRIES}) == len(ENTRIES)


def generated(count: int, seed: int = 0) -> list:
    found = []

    @settings(max_examples=count, database=None, deadline=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(specs())
    def collect(spec):
        found.append(spec)

    collect()
    return found


def consumers(g: graphc.Graph) -> Counter:
    return Counter(v for n in g.nodes for v in n.inputs)


def test_fuzz_random_generated_specs_are_valid_and_reach_what_the_issue_asks():
    """260 generated specs (no compiling; hypothesis' derandomized stream draws an entry in clumps:
    with the head-split attention entry added, 200 specs held no `dot`, 260 hold 23): each loads, differentiates and evaluates to finite
    numbers on the fuzzer's data; together they hold every public op, 3-20ish node DAGs,
    values read more than once, shared params, outputs at several depths and outputs that need
    no data, dims across the GEMM blocking, int labels and real targets, 1-D and 2-D matmuls."""
    from graphc.backend.codegen import prediction_graph
    specs_ = generated(260)
    ops, sizes, dims = Counter(), [], set()
    reused = shared = deep_outputs = params_only = int_ce = real_ce = batchless = 0
    matmul_ranks = set()
    for spec in specs_:
        g = graphc.parse_spec(spec.text, "fuzz.toml")
        of, wrt = g.grad_spec
        data = fuzz.arrays(g, 4, np.random.default_rng(0))
        values = evaluate_values(graphc.grad(g, of, wrt), data)
        assert all(np.all(np.isfinite(v)) for v in values.values() if np.asarray(v).dtype.kind == "f"), spec.text
        ops.update(n.op.name for n in g.nodes)
        sizes.append(len(g.nodes))
        dims.update(d for d in g.dims.values() if d is not None)
        uses = consumers(g)
        reused += any(uses[n.output] > 1 for n in g.nodes)
        shared += any(uses[p] > 1 for p in g.params.values())
        depth = {}
        for n in g.nodes:
            depth[n.output] = 1 + max((depth.get(v, 0) for v in n.inputs), default=0)
        deep_outputs += len({depth.get(v, 0) for v in g.outputs.values()}) > 1
        predict = prediction_graph(g)
        params_only += predict is not None and not predict.inputs
        for n in g.nodes:
            if n.op.name == "cross_entropy":
                int_ce += n.inputs[1].dtype == "int32"
                real_ce += n.inputs[1].dtype != "int32"
            if n.op.name == "matmul":
                matmul_ranks.add((n.inputs[0].rank, n.inputs[1].rank))
        batchless += not g.symbolic_dims
    missing = [k for k in PUBLIC if not ops[k]]
    assert not missing, f"no generated spec uses {missing}"
    assert min(sizes) >= 3 and max(sizes) <= 40 and np.median(sizes) >= 8, sizes
    assert {129, 257} & dims and {1, 2, 3} & dims and {15, 17, 31, 33, 65} & dims, sorted(dims)
    assert matmul_ranks >= {(2, 2), (2, 1), (1, 2), (1, 1)}, matmul_ranks
    counts = dict(reused=reused, shared=shared, deep_outputs=deep_outputs, params_only=params_only,
                  int_ce=int_ce, real_ce=real_ce, batchless=batchless)
    assert all(v >= 5 for v in counts.values()), counts


def test_fuzz_random_sequence_dims_are_drawn_declared_and_sized(tmp_path):
    """specs(sequence=True): values [N, T, ...] are drawn (T right after N, or leading a
    broadcasting partner [T, D]), T is declared "symbolic" exactly when an input has it, and a
    case gives it its own size. Every such spec loads with run-time dims N and T, and the
    reference runs at those sizes and gives finite numbers."""
    from graphc.tools.fuzz_specs import SEQ
    found = []

    @settings(max_examples=120, database=None, deadline=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(specs(sequence=True))
    def collect(spec):
        found.append(spec)

    collect()
    with_t = [s for s in found if s.sizes]
    assert len(with_t) >= 10
    for spec in found:
        declared = 'T = "symbolic"' in spec.text
        assert declared == (SEQ in spec.sizes) == ('"N", "T"' in spec.text), spec.text
        # T after N ([T, D] partners of [N, T, D] too), but for a time-major scan's sequence [T, N, d]
        assert '"T", "N"' not in spec.text or "axis  = 0" in spec.text, spec.text
    for spec in with_t:
        g = graphc.parse_spec(spec.text, "fuzz.toml")
        assert g.symbolic_dims == ["N", "T"], spec.text
        data = fuzz.arrays(g, 3, np.random.default_rng(0), {"T": 5})
        assert all(a.shape[1] == 5 for k, a in data.items() if g.inputs.get(k) is not None
                   and len(g.inputs[k].shape) > 1 and g.inputs[k].shape[1] == "T")
        values = evaluate_values(graphc.grad(g, *g.grad_spec), data)
        assert all(np.all(np.isfinite(v)) for v in values.values() if np.asarray(v).dtype.kind == "f"), spec.text
    case = fuzz.Case(with_t[0].text, batch=4, sizes={"T": 7})
    assert fuzz.Case.parse(case.text()).sizes == {"T": 7}


def test_fuzz_random_sequence_ops_are_drawn_with_their_options():
    """The sequence issue's ops, drawn by their entries (half the specs with T, the others as the
    slice and campaigns draw them, T in 1 in 3): matmuls of rank 3-4 with broadcast batch axes and T x T products; attention
    causal and not, of rank 3 and 4, Tq != Tk, T as Tq and as Tk, key counts past the kernel's
    64-key block; softmax and log_softmax over another axis than the last; cross-entropy over
    [N, T, V] with int labels and with probability targets; wpe[:T]; scans over T and over a fixed
    length, batch-first (axis 1) and time-major (axis 0, over [T, N, d] or [L, N, d]); attention fed
    by a head split of one projection (reshape and permute to [N, H, T, D], as char_gpt). Each spec
    loads, and its reference gradients are finite at T = 5."""
    from graphc.core.reference import evaluate_values
    seen = Counter()
    entries = ("scaled_dot_product_attention", "matmul_batched", "slice", "scan", "softmax", "log_softmax",
               "cross_entropy", "add")
    aimed = ("attention_heads", "scan", "add", "matmul_batched")    # the head split and time-major scans
    found = []

    for table, sequence, count in ((entries, True, 120), (entries, None, 80), (aimed, True, 60)):
        @settings(max_examples=count, database=None, deadline=None, derandomize=True, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(specs(entries=table, sequence=sequence))
        def collect(spec):
            found.append(spec)

        collect()
    for spec in found:
        g = graphc.parse_spec(spec.text, "fuzz.toml")
        seen["with T"] += "T" in g.symbolic_dims
        made = {n.output: n.op.name for n in g.nodes}
        for n in g.nodes:
            ins, name = n.inputs, n.op.name
            if name == "matmul" and ins[0].rank >= 3:
                seen[f"matmul rank {ins[0].rank}x{ins[1].rank}"] += 1
                seen["matmul broadcast batch"] += ins[1].rank >= 3 and ins[0].shape[:-2] != ins[1].shape[:-2]
                seen["matmul T x T"] += ins[0].shape[-2:] == ("T", "T") or n.output.shape[-2:] == ("T", "T")
            if name == "scaled_dot_product_attention":
                q, k = ins[0], ins[1]
                seen[f"attention rank {q.rank}"] += 1
                seen[f"attention causal {n.attrs.get('is_causal', False)}"] += 1
                seen["attention Tq != Tk"] += q.shape[-2] != k.shape[-2]
                seen["attention Tq = T"] += q.shape[-2] == "T"
                seen["attention Tk = T != Tq"] += k.shape[-2] == "T" != q.shape[-2]
                seen["attention Tk > 64"] += not isinstance(k.shape[-2], str) and k.shape[-2] > 64
                seen["attention scale"] += n.attrs.get("scale") is not None
            if name in ("softmax", "log_softmax") and n.attrs.get("axis", -1) not in (-1, ins[0].rank - 1):
                seen["softmax other axis"] += 1
            if name == "cross_entropy" and ins[0].shape[:2] == ("N", "T"):
                seen[f"cross_entropy [N, T, V] {ins[1].dtype}"] += 1
            if name == "slice" and "T" in n.output.shape:
                seen["slice [:T]"] += 1
            if name == "scan":
                seen["scan"] += 1
                seen["scan over T"] += any("T" in v.shape for v in ins)
                body = n.attrs["body"]
                seen["scan time-major"] += body.x_axes[0] == 0
                seen["scan time-major over T"] += body.x_axes[0] == 0 and any(v.shape[:1] == ("T",) for v in ins)
            if name == "scaled_dot_product_attention" and all(made.get(v) == "permute" for v in ins):
                seen["attention of a head split"] += 1
                seen["attention of a head split [N, H, T, D]"] += ins[0].shape[0] == "N" and ins[0].shape[2] == "T"
        if seen["value checks"] < 40:
            seen["value checks"] += 1
            data = fuzz.arrays(g, 3, np.random.default_rng(0), {"T": 5})
            values = evaluate_values(graphc.grad(g, *g.grad_spec), data)
            assert all(np.all(np.isfinite(v)) for v in values.values() if np.asarray(v).dtype.kind == "f"), spec.text
    want = ["with T", "matmul rank 3x2", "matmul rank 3x3", "matmul rank 4x4", "matmul broadcast batch",
            "matmul T x T", "attention rank 3", "attention rank 4", "attention causal True", "attention causal False",
            "attention Tq != Tk", "attention Tq = T", "attention Tk = T != Tq", "attention Tk > 64", "attention scale",
            "softmax other axis", "cross_entropy [N, T, V] int32", "cross_entropy [N, T, V] float", "slice [:T]",
            "scan", "scan over T", "scan time-major", "scan time-major over T", "attention of a head split",
            "attention of a head split [N, H, T, D]"]
    assert all(seen[k] >= 2 for k in want), ({k: seen[k] for k in want if seen[k] < 2}, seen)


def test_fuzz_random_cases_pick_optimizers_and_sampled_checks_at_the_planned_rates():
    """200 cases drawn as a campaign draws them (no compiling): each optimizer in about a fifth of
    them, the threads=1 build in about one in 8, the standalone export in about one in 10 (the
    draws of hypothesis itself lean toward their first value in big examples: 37 % sgd, 1 in 17)."""
    plan = fuzz.Plan(optimizers="one", threads1_every=8, standalone_every=10)
    drawn = []

    @seed(0)
    @settings(max_examples=200, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(fuzz.cases(plan), fuzz.cases(fuzz.Plan(optimizers="all", threads1_every=1, standalone_every=0, max_nodes=3)))
    def collect(case, every):
        drawn.append(case)
        assert sorted(every.optimizers) == sorted(fuzz.OPTIMIZER_NAMES) and every.threads1 and not every.standalone

    collect()
    n = len(drawn)
    per_optimizer = Counter(c.optimizers[0] for c in drawn)
    assert set(per_optimizer) == set(fuzz.OPTIMIZER_NAMES)
    assert all(0.1 * n <= k <= 0.3 * n for k in per_optimizer.values()), per_optimizer
    assert n / 16 <= sum(c.threads1 for c in drawn) <= n / 4
    assert n / 20 <= sum(bool(c.standalone) for c in drawn) <= n / 5


def test_fuzz_random_case_files_round_trip():
    case = fuzz.Case('name = "m"\n', batch=17, seed=3, optimizers=("adam", "sgd"), threads1=False,
                     standalone=("gcc", "clang"))
    text = case.text("f.toml", fuzz.Failure("forward", "forward out1: max abs error 1"))
    back = fuzz.Case.parse(text)
    assert back.options() == case.options() and back.spec.strip() == case.spec.strip()
    assert "--replay f.toml" in text and "# failure: forward" in text
    graphc.parse_spec(text.replace('name = "m"', SMALL), "case.toml")     # the comments leave it a spec


SMALL = """name = "m"
[dims]
N = "batch"
D3 = 3
[inputs]
x1 = ["N", "D3"]
[params]
w1 = ["D3"]
[graph]
v1 = "tanh(x1 * w1)"
J = "mean(v1)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["w1"]
"""


def test_fuzz_random_checks_reject_wrong_numbers():
    """compare and same_bits, the judges of every check, fail on a wrong entry, a NaN that is not
    expected, a shape, and bits that differ in the last place."""
    a = np.linspace(-1, 1, 12).reshape(3, 4)
    fuzz.compare("k", "a", a * (1 + 1e-12), a, scale=1.0)
    for bad in (a + np.eye(3, 4) * 1e-6, np.where(a > 0.9, np.nan, a), a[:2]):
        with pytest.raises(fuzz.Failure):
            fuzz.compare("k", "a", bad, a, scale=1.0)
    b = a.copy()
    b[1, 1] = np.nextafter(b[1, 1], 2)
    fuzz.same_bits("threads", "x", {"a": a}, {"a": a.copy()})
    with pytest.raises(fuzz.Failure, match="a differs"):
        fuzz.same_bits("threads", "x", {"a": a}, {"a": b})


CHEAP = ("tanh", "add", "mul", "sum", "mean", "sigmoid", "exp", "neg")    # no GEMM: fast builds


def test_fuzz_random_a_wrong_gradient_in_the_reference_is_caught_by_finite_differences(monkeypatch, tmp_path):
    """tanh's VJP made wrong (1 − tanh instead of 1 − tanh²): the C would agree with the
    reference, so only the finite differences can see it. They do, before anything compiles,
    and the case shrinks to a spec that still holds a tanh and is written to a file. (Shrinking
    stops when it converges, in seconds on a quiet machine; its time cap is generous, as 30 s ran
    out twice on a machine at load 10-15 before the spec was small.)"""
    from graphc.ops.elementwise import Tanh
    monkeypatch.setattr(Tanh, "derivative", lambda self, b, x, y: b.sub(1.0, y))
    plan = fuzz.Plan(optimizers="one", threads1_every=0, standalone_every=0, entries=CHEAP, shrink_seconds=120,
                     sequence=False)
    summary = fuzz.campaign(10, seed=5, jobs=0, out=tmp_path, plan=plan, chunk=10)
    kinds = {f["kind"] for f in summary.failures}
    assert kinds == {"finite-differences"}, summary.report()
    text = open(summary.failures[0]["file"]).read()
    assert "tanh(" in text and "--replay" in text
    graph_lines = text[text.index("[graph]"):text.index("[outputs]")].strip().splitlines()[1:]
    assert len(graph_lines) <= 5, text        # shrunk: the tanh, the loss and a line or two
    assert fuzz.main(["--replay", summary.failures[0]["file"]]) == 1


def test_fuzz_random_wrong_c_is_caught_shrunk_and_replayable(monkeypatch, tmp_path, capsys):
    """The C of tanh made wrong by one part in 1e6: forward (or value_and_grad) disagrees with the
    reference; the failing case is shrunk, written with its rerun command, fails when rerun,
    and passes once the C is right again."""
    from graphc.ops.elementwise import Tanh
    monkeypatch.setattr(Tanh, "c_expr", "(GC_TANH({0}) * (gc_real)1.000001)")
    plan = fuzz.Plan(optimizers="one", threads1_every=0, standalone_every=0, entries=CHEAP, max_nodes=8,
                     shrink_seconds=40, sequence=False)
    summary = fuzz.campaign(6, seed=2, jobs=0, out=tmp_path, plan=plan, chunk=6)
    assert len(summary.failures) == 1, summary.report()
    failure = summary.failures[0]
    assert failure["kind"] in ("forward", "value_and_grad", "predict"), summary.report()
    text = open(failure["file"]).read()
    assert "tanh(" in text
    assert fuzz.main(["--replay", failure["file"]]) == 1
    monkeypatch.undo()
    assert fuzz.main(["--replay", failure["file"]]) == 0
    assert "ok:" in capsys.readouterr().out


def test_fuzz_random_a_campaign_stops_at_its_time_budget(tmp_path):
    """Plan.stop_at (--minutes): no case starts after it; a budget already spent runs none, and
    the summary says so."""
    import time
    plan = fuzz.Plan(optimizers="one", threads1_every=0, standalone_every=0, entries=CHEAP, stop_at=time.time())
    summary = fuzz.campaign(50, seed=1, jobs=0, out=tmp_path, plan=plan, chunk=50)
    assert summary.cases == 0 and not summary.failures
    assert "0 cases" in summary.report()


def test_fuzz_random_fixed_seed_slice(tmp_path):
    """SLICE_CASES random cases, seed 0, in 2 processes: every check passes, and the summary
    shows every check made (every optimizer in about a fifth of the cases, a threads=1 build in
    about one case in 8, the standalone export with gcc and clang in about one in 40)."""
    summary = fuzz.campaign(SLICE_CASES, seed=0, jobs=2, out=tmp_path, plan=SLICE_PLAN, chunk=-(-SLICE_CASES // 2))
    print(summary.report())
    assert summary.cases == SLICE_CASES
    assert not summary.failures, summary.report()
    assert summary.checks["forward"] == summary.checks["value_and_grad"] == SLICE_CASES
    assert summary.checks["finite differences"] == SLICE_CASES
    assert sum(v for k, v in summary.checks.items() if k.startswith("train_step")) == SLICE_CASES
    assert summary.checks["OpenMP 1 vs 2 threads"] == SLICE_CASES
    standalone = {cc: sum(v for k, v in summary.checks.items() if k.startswith(f"standalone {cc}")) for cc in fuzz.COMPILERS}
    assert len(set(standalone.values())) == 1, standalone      # (made, or skipped where not installed)
    if SLICE_CASES >= 100:
        assert summary.checks["threads=1 vs threads=2 builds"] >= SLICE_CASES // 20
        assert standalone["gcc"] >= SLICE_CASES // 100, standalone
        assert all(summary.checks[f"train_step {k}"] >= SLICE_CASES // 10 for k in fuzz.OPTIMIZER_NAMES), summary.checks
        assert all(summary.ops[k] for k in PUBLIC), summary.report()


SMALL_EVERY_CHECK = """
name = "fz"
[dims]
N = "batch"
D3 = 3
D7 = 7
[inputs]
x1 = ["N", "D7"]
y1 = { shape = ["N"], dtype = "int32" }
p1 = ["N", "D3"]
[params]
w1 = ["D3", "D7"]
w2 = ["D3"]
[graph]
v1 = "sum(x1, axis=-1, keepdims=True) * w2"
v2 = "v1 / p1 + log(p1)"
J = "cross_entropy(v2, y1) + mean(square(w1))"
[outputs]
loss = "J"
probs = "softmax(v2)"
norms = "norm2(w1)"
[grad]
of = "J"
wrt = ["w1", "w2"]
"""


def test_fuzz_random_one_case_runs_every_check(tmp_path):
    """A fixed case with every optimizer, a threads=1 build and the standalone export under gcc
    and clang: each check of run_case runs (the slice reaches the sampled ones rarely)."""
    case = fuzz.Case(SMALL_EVERY_CHECK, batch=7, seed=1, optimizers=fuzz.OPTIMIZER_NAMES, threads1=True,
                     standalone=fuzz.COMPILERS)
    result = fuzz.run_case(case, tmp_path)
    expected = {"finite differences", "forward", "predict", "predict from the params alone", "value_and_grad",
                "OpenMP 1 vs 2 threads", "threads=1 vs threads=2 builds",
                *(f"train_step {k}" for k in fuzz.OPTIMIZER_NAMES),
                *(f"standalone {cc}" for cc in fuzz.COMPILERS if shutil.which(cc))}
    assert expected <= set(result.checks), sorted(result.checks)


@pytest.mark.parametrize("optimizer", ["momentum", "adamw"])
def test_fuzz_random_train_step_check_sees_hyperparameters_ignored_at_run_time(monkeypatch, tmp_path, optimizer):
    """After 3 steps the check changes the run-time hyperparameters (set_hparams) and trains 2
    more against the train graph of the retuned optimizer: a model that kept the old values
    fails it (set_hparams made a no-op), and passes once set_hparams works again."""
    from graphc.native.train_state import TrainState
    case = fuzz.Case(SMALL_EVERY_CHECK, batch=4, seed=1, optimizers=(optimizer,), threads1=False)
    real = TrainState.set_hparams
    monkeypatch.setattr(TrainState, "set_hparams", lambda self, **values: None)
    with pytest.raises(fuzz.Failure, match=r"step 4 \(hyperparameters changed at run time\)"):
        fuzz.run_case(case, tmp_path)
    monkeypatch.setattr(TrainState, "set_hparams", real)
    assert fuzz.run_case(case, tmp_path).checks[f"train_step {optimizer}"] == 1


def test_fuzz_random_standalone_check_expects_the_train_outputs_main_c_prints(tmp_path):
    """main.c prints the train step's outputs of one element whatever the batch; an output [N]
    at batch 1 has one element too but is not printed, and the check must not expect it (the
    first campaign's one failure: a fuzzer bug)."""
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc and make are needed")
    spec = SMALL.replace('[outputs]\nloss = "J"', '[outputs]\nloss = "J"\nrows = "sum(v1, axis=-1)"')
    case = fuzz.Case(spec, batch=1, seed=3, optimizers=("sgd",), threads1=False, standalone=("gcc",))
    assert fuzz.run_case(case, tmp_path).checks["standalone gcc"] == 1


SEQUENCE_STANDALONE = """
name = "fz"
[dims]
N = "batch"
T = "symbolic"
D3 = 3
D4 = 4
[inputs]
x1 = ["N", "T", "D3"]
[params]
w1 = ["D4", "D3"]
w2 = ["D4", "D4"]
w3 = ["D3"]
[scan.scan1]
init  = { scan1_h = { shape = ["N", "D4"], value = 0.0 } }
xs    = { scan1_x = "x1" }
axis  = 1
carry = { scan1_h = "scan1_n" }
ys    = { v1 = "scan1_n" }
[scan.scan1.body]
scan1_n = "tanh(scan1_x @ w1.T + scan1_h @ w2.T)"
[graph]
J = "mean(v1)"
[outputs]
loss = "J"
out1 = "softmax(w3)"
[grad]
of = "J"
wrt = ["w1", "w2"]
"""


def test_fuzz_random_standalone_check_passes_t_and_expects_the_trained_params_main_c_prints(tmp_path):
    """A spec with a sequence length T and a param outside [grad]'s wrt: main.c is built at the
    case's T (-DDIM_T, capped at 17) and prints, after its train steps, the params they update
    (w1, w2), not w3; the check expects exactly those, at that T."""
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc and make are needed")
    case = fuzz.Case(SEQUENCE_STANDALONE, batch=2, seed=3, optimizers=("sgd",), threads1=False, standalone=("gcc",),
                     sizes={"T": 40})
    assert fuzz.run_case(case, tmp_path).checks["standalone gcc"] == 1


def test_fuzz_random_float32_check_passes_correct_c_and_catches_an_error_graphc_check_would_pass(monkeypatch, tmp_path):
    """The float32 check (graphc/tools/fuzz_float32.py) passes the float32 C of a case with every
    kind of array (forward, predict, the params-alone output, gradients), and fails a float32 tanh
    made wrong by 5 parts in 1e5: inside `graphc check`'s float32 tolerance (1e-4 of the largest
    magnitude), outside the fuzzer's, which is derived from u = 2^-24 and the case's own rounding."""
    from graphc.ops.elementwise import Tanh
    from graphc.tools.check import TOLERANCES
    spec = SMALL_EVERY_CHECK.replace('v1 = "sum(x1, axis=-1, keepdims=True) * w2"',
                                     'v1 = "tanh(sum(x1, axis=-1, keepdims=True)) * w2"')
    case = fuzz.Case(spec, batch=40, seed=1, optimizers=("sgd",), threads1=False, float32=True)
    result = fuzz.run_case(case, tmp_path, only="float32")
    assert result.checks["float32"] == 1 and 0 < result.float32_worst < 1, (result.checks, result.float32_worst)
    assert 5e-5 < TOLERANCES["float32"]
    monkeypatch.setattr(Tanh, "c_expr", "(GC_TANH({0}) * (gc_real)1.00005)")
    with pytest.raises(fuzz.Failure, match="float32 tolerance"):
        fuzz.run_case(case, tmp_path, only="float32")


def test_fuzz_random_float32_check_compares_no_gradient_across_a_kink_rounding_may_flip(tmp_path):
    """A relu whose operand is within float32 rounding of 0 (x1 - x1 * 0.9999999 is 1e-7 of x1,
    its rounding as large): the gradient's path may differ in float32, so only the forward
    outputs are compared, and the summary says why."""
    from graphc.tools.fuzz_float32 import tolerance
    spec = SMALL.replace('v1 = "tanh(x1 * w1)"', 'v1 = "relu(x1 * w1 - x1 * w1 * 0.9999999) * 1e6"')
    case = fuzz.Case(spec, batch=6, seed=2, optimizers=("sgd",), threads1=False, float32=True)
    result = fuzz.run_case(case, tmp_path, only="float32")
    assert "float32" not in result.checks, result.checks
    assert any("kink" in k for k in result.checks), result.checks
    assert tolerance(np.ones(3), np.ones(3), 1.0) == pytest.approx((64 + 4) * 2.0 ** -24)


def test_fuzz_random_train_step_check_judges_an_ill_conditioned_step_within_the_references_spread():
    """A step whose result moves by its spread when its starting state moves by a few ulps passes
    within 16 times that spread, and an error past it still fails (judge_step, sensitivity)."""
    from graphc.tools.fuzz_checks import judge_step, sensitivity

    def evaluate(state):       # an amplifying step: 1e12 times the state's rounding
        return {"w_next": 1e12 * (state["w"] - 1.0) + state["w"]}
    state = {"w": np.full(4, 1.0 + 2 ** -40)}
    expected = evaluate(state)
    spread = sensitivity(evaluate, state, expected, ["w_next"], seed=0)
    assert 1e-5 < spread["w_next"] < 1e-1
    got = expected["w_next"] + 2 * spread["w_next"]
    with pytest.raises(fuzz.Failure):
        judge_step("train_step sgd", [("step 1: w", got, "w_next")], expected, 1.0)
    judge_step("train_step sgd", [("step 1: w", got, "w_next")], expected, 1.0, spread)
    with pytest.raises(fuzz.Failure):
        judge_step("train_step sgd", [("step 1: w", expected["w_next"] + 100 * spread["w_next"], "w_next")],
                   expected, 1.0, spread)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_fuzz_random_float32_train_steps_pass_correct_c_and_catch_a_wrong_update(optimizer, monkeypatch, tmp_path):
    """The float32 check trains the float32 model with the case's optimizer for 3 steps against
    the float64 train graph on the rounded data (fuzz_float32.check_train32): the correct C passes,
    within its tolerance; a step that leaves w1 wrong by 3 parts in 1e5 (500 float32 ulps, inside
    `graphc check`'s float32 tolerance of 1e-4) fails it, at step 1."""
    from graphc.native.runtime import CompiledModel
    case = fuzz.Case(SMALL_EVERY_CHECK, batch=40, seed=1, optimizers=(optimizer,), threads1=False, float32=True)
    result = fuzz.run_case(case, tmp_path, only="float32")
    assert result.checks[f"float32 train_step {optimizer}"] == 1, result.checks
    assert 0 < result.float32_worst < 1
    original = CompiledModel.train_step

    def off_by_a_little(self, state, **batch):
        out = original(self, state, **batch)
        if self.dtype == np.float32:
            state.params["w1"][...] *= np.float32(1 + 3e-5)
        return out
    monkeypatch.setattr(CompiledModel, "train_step", off_by_a_little)
    with pytest.raises(fuzz.Failure, match=f"float32 train_step {optimizer}.*step 1: w1"):
        fuzz.run_case(case, tmp_path, only="float32")


def test_fuzz_random_float32_adam_leaves_out_updates_of_a_gradient_of_rounding_noise(tmp_path):
    """w4's gradient, colsum(x1) (1 - 1.00000001), is -1e-8 of a column sum in float64 and 0 in float32
    (the constant rounds to 1): within the gradient's float32 tolerance of 0. AdamW (its weight decay
    decoupled: not in the moments) moves such an entry by a share of lr that the noise decides, so
    w4's entries are left out (the summary counts them) while the step's other arrays are compared."""
    spec = SMALL_EVERY_CHECK.replace('J = "cross_entropy(v2, y1) + mean(square(w1))"',
                                     'J = "cross_entropy(v2, y1) + mean(square(w1)) + sum(x1 * w4 - x1 * w4 * 1.00000001)"')
    spec = spec.replace('w2 = ["D3"]', 'w2 = ["D3"]\nw4 = ["D7"]').replace('wrt = ["w1", "w2"]',
                                                                         'wrt = ["w1", "w2", "w4"]')
    case = fuzz.Case(spec, batch=40, seed=1, optimizers=("adamw",), threads1=False, float32=True)
    result = fuzz.run_case(case, tmp_path, only="float32")
    assert result.checks["float32 train_step adamw"] == 1, result.checks
    assert result.checks["float32 train_step adamw (Adam updates of a gradient within rounding of 0 not compared)"] == 1


def test_fuzz_random_max_never_reads_entries_equal_by_construction():
    """max's vjp gives every tied entry the whole gradient, so the generator keeps max off values
    that may hold equal entries by construction: an embedding's rows (a repeated id repeats its row)
    and a value concatenated with itself, and anything computed from them. A campaign (seed 21)
    found max(embedding(w1, y1)) with both ids 0: d_w1 twice the central difference."""
    import graphc
    from hypothesis import HealthCheck, given, settings
    seen = {"max after a tie": 0, "max": 0}

    @settings(max_examples=60, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(specs(4, 10, entries=("embedding", "max", "concat", "tanh")))
    def check(spec):
        g = graphc.parse_spec(spec.text, "fuzz.toml")
        for n in g.nodes:
            if n.op.name != "max":
                continue
            seen["max"] += 1
            todo, ancestors = [n.inputs[0]], []
            while todo:
                v = todo.pop()
                if v.node is not None:
                    ancestors.append(v.node)
                    todo.extend(v.node.inputs)
            tied = [a for a in ancestors if a.op.name == "embedding"
                    or (a.op.name == "concat" and len({x.name for x in a.inputs}) < len(a.inputs))]
            assert not tied, spec.text
    check()
    assert seen["max"] >= 10, seen


def test_fuzz_random_an_exception_no_check_catches_leaves_a_replayable_case(monkeypatch, tmp_path):
    """An exception that is not a Failure (a KeyError from deep inside a check, as a campaign met twice
    and could not replay) stops that hypothesis run; the case it came from is written as a spec file
    that reruns it, and the summary says where the exception was raised."""
    def broken(case, *args, **kwargs):      # the same error for the same case (hypothesis shrinks it), no build
        if case.batch > 1:
            raise KeyError("v4")
        return fuzz.CaseResult()

    monkeypatch.setattr(fuzz, "run_case", broken)
    plan = fuzz.Plan(optimizers="one", threads1_every=0, standalone_every=0, float32_every=0, entries=("tanh",),
                     shrink_seconds=20, sequence=False)
    summary = fuzz.campaign(3, seed=1, jobs=0, out=tmp_path, plan=plan, chunk=3)
    failure = next(f for f in summary.failures if f["kind"] == "hypothesis")
    assert "KeyError: 'v4'" in failure["message"] and "test_fuzz_random.py" in failure["message"], failure
    text = open(failure["file"]).read()
    assert "[graph]" in text and "--replay" in text and "KeyError" in text
