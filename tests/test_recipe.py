"""The training recipe of current models: learning-rate schedules computed in C per step, clipping by
the global gradient norm, gradient accumulation over calls (graphc/autodiff/optimizers.py, the train
step's C from graphc/backend/train_codegen.py and templates/kernels/optimizer.c.j2, the Python side in
graphc/native/training.py). Checked against closed forms, the IR's own train graph (graphc.train_graph
run by graphc.evaluate), torch.optim where PyTorch is installed, and the standalone C."""
from __future__ import annotations

import copy
import functools
import math
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import graphc
from graphc.autodiff.optimizers import OptimizerError

WRT = ["W", "b1", "U", "b2"]


def mlp(name: str = "recipe_mlp") -> graphc.Graph:
    """A small MLP: x [N, 6] -> relu(x W^T + b1) [N, 5] -> logits [N, 3], mean cross-entropy."""
    g = graphc.Graph(name)
    x = g.input("x", ("N", 6))
    y = g.input("y", ("N",), dtype="int32")
    W, b1 = g.param("W", (5, 6)), g.param("b1", (5,))
    U, b2 = g.param("U", (3, 5)), g.param("b2", (3,))
    theta = graphc.relu(x @ W.T + b1) @ U.T + b2
    g.output("loss", graphc.cross_entropy(theta, y))
    return g


def data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)), rng.integers(0, 3, size=n).astype(np.int32)


def params(seed: int = 1):
    return graphc.init_params(mlp(), seed=seed)


def compiled(opt, dtype="float64", name="recipe_mlp"):
    return graphc.compile(mlp(name), grad_of="loss", wrt=WRT, dtype=dtype, optimizer=opt, threads=1)


# ------------------------------------------------------------------------------- schedules
def test_schedules_closed_form():
    step = graphc.StepLR(step_size=3, gamma=0.5)
    assert [step.lr_at(2.0, t) for t in range(1, 9)] == [2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    cos = graphc.WarmupCosine(warmup=4, total=10, min_lr=0.1)
    assert cos.lr_at(1.0, 1) == 0.25 and cos.lr_at(1.0, 4) == 1.0        # linear warmup
    assert cos.lr_at(1.0, 5) == 1.0                                       # the decay starts at the peak
    assert math.isclose(cos.lr_at(1.0, 8), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)), rel_tol=1e-15)
    assert cos.lr_at(1.0, 11) == 0.1 and cos.lr_at(1.0, 500) == 0.1     # min_lr at and after total
    no_warmup = graphc.WarmupCosine(warmup=0, total=2, min_lr=0.0)
    assert [no_warmup.lr_at(1.0, t) for t in (1, 2, 3)] == [1.0, 0.5, 0.0]
    assert graphc.Constant().lr_at(0.3, 1000) == 0.3
    opt = graphc.AdamW(lr=3e-4, schedule=graphc.WarmupCosine(warmup=100, total=5000, min_lr=3e-5))
    assert opt.lr_at(50) == pytest.approx(3e-4 * 50 / 100) and opt.lr_at(6000) == 3e-5


def _torch_schedule(torch, opt, schedule):
    lr_scheduler = torch.optim.lr_scheduler
    if isinstance(schedule, graphc.StepLR):
        return lr_scheduler.StepLR(opt, step_size=schedule.step_size, gamma=schedule.gamma)
    w, total = schedule.warmup, schedule.total
    return lr_scheduler.SequentialLR(opt, [
        lr_scheduler.LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=w - 1),
        lr_scheduler.CosineAnnealingLR(opt, T_max=total - w, eta_min=schedule.min_lr)], milestones=[w])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("schedule", [graphc.StepLR(step_size=3, gamma=0.3),
                                      graphc.WarmupCosine(warmup=3, total=11, min_lr=0.02)])
def test_schedules_match_torch_lr_scheduler(schedule):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.7)
    sched = _torch_schedule(torch, opt, schedule)
    for t in range(1, 13):          # step t runs at the rate set before its optimizer.step()
        assert schedule.lr_at(0.7, t) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15), t
        opt.step()
        sched.step()


@pytest.mark.parametrize("schedule", [graphc.StepLR(step_size=2, gamma=0.5),
                                      graphc.WarmupCosine(warmup=2, total=5, min_lr=0.01)])
def test_c_runs_the_schedule_per_step(schedule):
    """Plain SGD (its update fused into the gradient's GEMM) moves W by lr_t d_W: the rate the C used at
    step t, read back, is the schedule's closed form; the step count is the state's t."""
    opt = graphc.SGD(lr=0.2, schedule=schedule)
    m = compiled(opt)
    assert "is not stored" in m.source          # the fused update stays under a schedule
    state = m.train_state(params())
    x, y = data(8)
    for t in range(1, 8):
        before = {k: v.copy() for k, v in state.params.items()}
        _, grads = m.value_and_grad(x=x, y=y, **before)
        m.train_step(state, x=x, y=y)
        assert state.step == t and state.buffers["t"][0] == t
        rate = (before["b2"] - state.params["b2"]) / grads["b2"]
        np.testing.assert_allclose(rate, opt.lr_at(t), rtol=1e-9)
        np.testing.assert_allclose(before["W"] - state.params["W"], opt.lr_at(t) * grads["W"], rtol=1e-9, atol=1e-15)


@functools.lru_cache(maxsize=None)
def _scheduled_sgd(kind: str):
    schedule = graphc.StepLR() if kind == "step" else graphc.WarmupCosine()
    return compiled(graphc.SGD(lr=0.1, schedule=schedule), name=f"recipe_hyp_{kind}")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(step_size=st.integers(1, 4), gamma=st.floats(0.0, 2.0), warmup=st.integers(0, 4), extra=st.integers(0, 4),
       min_lr=st.floats(0.0, 0.05), lr=st.floats(1e-3, 0.5))
def test_c_schedule_at_run_time_values_is_the_closed_form(step_size, gamma, warmup, extra, min_lr, lr):
    """Any run-time schedule values (set_hparams: the same library), 7 steps: the rate the C used at each
    step, read back from plain SGD's update of b2, is lr_at(t)."""
    x, y = data(5)
    for kind, values in (("step", dict(step_size=step_size, gamma=gamma)),
                         ("warmup_cosine", dict(warmup=warmup, total=max(1, warmup + extra), min_lr=min_lr))):
        m = _scheduled_sgd(kind)
        state = m.train_state(params())
        state.set_hparams(lr=lr, **values)
        for t in range(1, 8):
            before = state.params["b2"].copy()
            _, grads = m.value_and_grad(x=x, y=y, **state.params)
            m.train_step(state, x=x, y=y)
            np.testing.assert_allclose(before - state.params["b2"], state.optimizer.lr_at(t) * grads["b2"],
                                       rtol=1e-9, atol=1e-14, err_msg=f"{kind} {values} step {t}")


def test_cli_emit_recipe_options(tmp_path, capsys):
    from graphc.tools.cli import main
    spec = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "examples" / "one_layer.toml")
    assert main(["emit", spec, "-o", str(tmp_path / "a"), "--optimizer", "adamw", "--lr", "3e-4", "--weight-decay",
                 "0.1", "--schedule", "warmup_cosine", "--warmup", "100", "--total", "5000", "--min-lr", "3e-5",
                 "--max-norm", "1.0", "--accumulate", "4"]) == 0
    header = (tmp_path / "a" / "one_layer.h").read_text()
    assert "ONE_LAYER_HPARAMS_DEFAULT { 0.0003, 0.9, 0.999, 1e-08, 0.1, 100, 5000, 3e-05, 1.0, 4 }" in header
    assert "int one_layer_apply(" in header and "float *grad_norm" in " ".join(header.split())
    assert main(["emit", spec, "-o", str(tmp_path / "b"), "--schedule", "step", "--step-size", "30"]) == 0
    assert "int64_t step_size;" in (tmp_path / "b" / "one_layer.h").read_text()
    assert main(["emit", spec, "-o", str(tmp_path / "c"), "--warmup", "10"]) == 2
    assert "--schedule warmup_cosine" in capsys.readouterr().err
    assert main(["emit", spec, "-o", str(tmp_path / "c"), "--schedule", "warmup_cosine", "--warmup", "-1"]) == 2
    assert "warmup" in capsys.readouterr().err


# ------------------------------------------------------------------------------- the IR's train graph
RECIPES = {
    "adamw_cosine_clip": graphc.AdamW(lr=2e-2, weight_decay=0.1, max_norm=0.3,
                                      schedule=graphc.WarmupCosine(warmup=2, total=5, min_lr=1e-3)),
    "sgd_step_clip": graphc.SGD(lr=0.3, max_norm=0.2, schedule=graphc.StepLR(step_size=2, gamma=0.5)),
    "sgd_momentum_cosine": graphc.SGD(lr=0.1, momentum=0.9, weight_decay=1e-3,
                                      schedule=graphc.WarmupCosine(warmup=3, total=6)),
    "adam_clip": graphc.Adam(lr=1e-2, weight_decay=1e-2, max_norm=0.25),
}


@pytest.mark.parametrize("key", list(RECIPES))
def test_train_step_matches_the_ir_train_graph(key):
    """The C train step, over 7 steps (past the schedule's total), against graphc.train_graph run by
    graphc.evaluate: the step's lr an input from the closed form, clipping and the update in the IR."""
    opt = RECIPES[key]
    m = compiled(opt)
    tg = graphc.train_graph(mlp(), "loss", WRT, opt)
    state = m.train_state(params())
    ir = {k: v.copy() for k, v in params().items()}
    ir_state = {key_: np.zeros_like(v, dtype=np.float64) for key_, v in state.buffers.items()}
    names = {key_: inp for key_, (inp, _out) in tg.updates.items()}
    clipped = 0
    for t in range(1, 8):
        x, y = data(7, seed=t)
        outs = m.train_step(state, x=x, y=y)
        feed = dict(x=x, y=y, **ir)
        feed.update({names[k]: (v.reshape(()) if k == "t" else v) for k, v in ir_state.items()})
        if "lr" in tg.recipe:
            feed[tg.recipe["lr"]] = np.float64(opt.lr_at(t))
        ref = graphc.evaluate(tg, **feed)
        for k, (_inp, out) in tg.updates.items():
            (ir if k in ir else ir_state)[k] = np.asarray(ref[out], dtype=np.float64).reshape(
                (ir if k in ir else ir_state)[k].shape)
        np.testing.assert_allclose(outs["loss"], ref["loss"], rtol=1e-12)
        if opt.max_norm is not None:
            np.testing.assert_allclose(outs["grad_norm"], ref[tg.recipe["grad_norm"]], rtol=1e-12)
            clipped += float(outs["grad_norm"]) > opt.max_norm
        for k in ir:
            np.testing.assert_allclose(state.params[k], ir[k], rtol=1e-10, atol=1e-13, err_msg=f"{key} {k} step {t}")
        for k in state.buffers:
            np.testing.assert_allclose(state.buffers[k], ir_state[k], rtol=1e-10, atol=1e-13)
    assert clipped >= 2 or opt.max_norm is None      # the clipping path ran


def test_clipping_turns_the_fused_sgd_update_off_exactly():
    """Plain SGD updates W in the GEMM that writes d_W, which is never stored; with clipping every gradient
    is stored (the norm comes before any update); a schedule alone keeps the fusion."""
    plain = compiled(graphc.SGD(lr=0.1), name="fuse_plain")
    clipped = compiled(graphc.SGD(lr=0.1, max_norm=1.0), name="fuse_clip")
    scheduled = compiled(graphc.SGD(lr=0.1, schedule=graphc.StepLR(step_size=2)), name="fuse_sched")
    assert "is not stored" in plain.source and "is not stored" in scheduled.source
    assert "is not stored" not in clipped.source
    assert "gc_sgd_update(W, d_W" in clipped.source and "gc_sgd_update(W," not in plain.source
    size = {m.name: getattr(m.lib, f"{m.name}_workspace_size")(64) for m in (plain, clipped)}
    assert size["fuse_clip"] > size["fuse_plain"]


# ------------------------------------------------------------------------------- against PyTorch
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("key", ["adamw_cosine_clip", "sgd_step_clip"])
def test_recipe_matches_torch(key):
    """AdamW (or SGD) + the schedule + clip_grad_norm_, float64, 5 steps on the MLP, against torch.optim
    with torch.optim.lr_scheduler and torch.nn.utils.clip_grad_norm_: losses, norms and params."""
    torch = pytest.importorskip("torch")
    opt = RECIPES[key]
    m = compiled(opt)
    p0 = params()
    state = m.train_state(p0)
    tp = {k: torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for k, v in p0.items()}
    if isinstance(opt, graphc.AdamW):
        topt = torch.optim.AdamW(list(tp.values()), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                                 weight_decay=opt.weight_decay)
    else:
        topt = torch.optim.SGD(list(tp.values()), lr=opt.lr)
    sched = _torch_schedule(torch, topt, opt.schedule)
    clipped = 0
    for t in range(1, 6):
        x, y = data(9, seed=10 + t)
        outs = m.train_step(state, x=x, y=y)
        topt.zero_grad()
        theta = torch.relu(torch.tensor(x) @ tp["W"].T + tp["b1"]) @ tp["U"].T + tp["b2"]
        loss = torch.nn.functional.cross_entropy(theta, torch.tensor(y, dtype=torch.int64))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(tp.values()), max_norm=opt.max_norm)
        clipped += float(norm) > opt.max_norm
        topt.step()
        sched.step()
        np.testing.assert_allclose(outs["loss"], loss.item(), rtol=1e-12)
        np.testing.assert_allclose(outs["grad_norm"], norm.item(), rtol=1e-12)
        for k in tp:
            np.testing.assert_allclose(state.params[k], tp[k].detach().numpy(), rtol=1e-10, atol=1e-13,
                                       err_msg=f"{k} after step {t}")
    assert clipped >= 2         # the clipping path ran


# ------------------------------------------------------------------------------- accumulation
def test_accumulating_three_micro_batches_is_one_step_on_their_concatenation():
    opt = graphc.AdamW(lr=1e-2, weight_decay=0.05, max_norm=0.3, accumulate=3,
                       schedule=graphc.WarmupCosine(warmup=1, total=4, min_lr=1e-3))
    m = compiled(opt, name="recipe_acc")
    one, acc = m.train_state(params()), m.train_state(params())
    for round_ in range(3):
        x, y = data(12, seed=round_)
        whole = m.train_step(one, x=x, y=y)
        losses = []
        for part in (slice(0, 3), slice(3, 7), slice(7, 12)):       # 3, 4 and 5 rows
            losses.append(float(m.accumulate(acc, x=x[part], y=y[part])["loss"]))
        assert acc.buffers["acc_rows"][0] == 12
        got = m.apply(acc)
        assert acc.buffers["acc_rows"][0] == 0 and not acc.buffers["acc/W"].any()
        np.testing.assert_allclose(np.dot(losses, [3, 4, 5]) / 12, whole["loss"], rtol=1e-12)
        np.testing.assert_allclose(got["grad_norm"], whole["grad_norm"], rtol=1e-12)
        assert one.step == acc.step == round_ + 1
        for k in WRT:
            np.testing.assert_allclose(acc.params[k], one.params[k], rtol=1e-11, atol=1e-14)
    with pytest.raises(graphc.ArgumentError, match="no gradient was accumulated"):
        m.apply(acc)
    # a model compiled without accumulation has neither call
    with pytest.raises(graphc.GraphcError, match="accumulate"):
        plain = compiled(graphc.SGD(lr=0.1), name="recipe_noacc")
        plain.accumulate(plain.train_state(params()), x=x, y=y)


def test_accumulation_refuses_a_loss_that_is_a_sum_over_rows():
    """Micro-batches are weighted by their rows: right for a mean loss only."""
    g = graphc.Graph("recipe_sum")
    x = g.input("x", ("N", 3))
    W = g.param("W", (2, 3))
    g.output("loss", graphc.sum(graphc.square(x @ W.T)))
    m = graphc.compile(g, grad_of="loss", wrt=["W"], dtype="float64", optimizer=graphc.SGD(lr=0.1, accumulate=2),
                       threads=1)
    s = m.train_state({"W": np.ones((2, 3))})
    with pytest.raises(graphc.GraphcError, match="mean over the batch rows"):
        m.accumulate(s, x=np.ones((4, 3)))
    with pytest.raises(graphc.GraphcError, match="mean over the batch rows"):
        m.fit(s, x=np.ones((4, 3)), batch_size=2, progress=False)
    assert not s.buffers["acc/W"].any()


def test_fit_accumulates_and_schedules_as_the_calls_it_stands_for():
    """fit with accumulate=2 and a schedule: per epoch, an optimizer step every 2 minibatches (the last
    takes the rest), the same values as accumulate/apply in the order fit draws."""
    opt = graphc.SGD(lr=0.2, momentum=0.5, max_norm=0.5, accumulate=2, schedule=graphc.StepLR(step_size=2, gamma=0.5))
    m = compiled(opt, name="recipe_fit")
    x, y = data(20, seed=4)
    fitted, manual = m.train_state(params()), m.train_state(params())
    history = m.fit(fitted, x=x, y=y, batch_size=6, epochs=2, seed=3, progress=False)
    rng = np.random.default_rng(3)
    for epoch in range(2):
        order = rng.permutation(20)
        losses = []
        for i, start in enumerate(range(0, 20, 6)):           # minibatches of 6, 6, 6, 2 rows
            rows = order[start:start + 6]
            losses.append(float(m.accumulate(manual, x=x[rows], y=y[rows])["loss"]) * len(rows))
            if i % 2 == 1 or start + 6 >= 20:
                m.apply(manual)
        np.testing.assert_allclose(history[epoch], sum(losses) / 20, rtol=1e-12)
    assert fitted.step == manual.step == 4
    for k in WRT:
        np.testing.assert_allclose(fitted.params[k], manual.params[k], rtol=1e-12, atol=1e-15)
    # accumulate = 1 at run time: fit makes a train step per minibatch
    fitted.set_hparams(accumulate=1)
    m.fit(fitted, x=x, y=y, batch_size=6, epochs=1, seed=0, progress=False)
    assert fitted.step == 8


# ------------------------------------------------------------------------------- run time, no rebuild
def test_schedule_values_change_at_run_time_without_a_rebuild():
    """The same library: set_hparams(warmup=..., total=..., max_norm=...) gives the bits of a model
    compiled with those values; the state's values survive save and load_state."""
    opt = graphc.AdamW(lr=1e-2, max_norm=1.0, schedule=graphc.WarmupCosine(warmup=1, total=3))
    changed = dict(warmup=3, total=9, min_lr=1e-4, max_norm=0.1, lr=5e-3)
    m = compiled(opt, name="recipe_rt")
    m2 = compiled(graphc.AdamW(lr=5e-3, max_norm=0.1, schedule=graphc.WarmupCosine(warmup=3, total=9, min_lr=1e-4)),
                  name="recipe_rt")
    lib = m.lib
    a, b = m.train_state(params()), m2.train_state(params())
    a.set_hparams(**changed)
    assert a.hparams["schedule"] == dict(warmup=3, total=9, min_lr=1e-4) and a.hparams["max_norm"] == 0.1
    for t in range(4):
        x, y = data(5, seed=t)
        np.testing.assert_array_equal(m.train_step(a, x=x, y=y)["loss"], m2.train_step(b, x=x, y=y)["loss"])
    assert m.lib is lib
    for k in WRT:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    a.set_hparams(schedule=graphc.WarmupCosine(warmup=0, total=2))      # a schedule object of the kind compiled
    m.train_step(a, x=x, y=y)
    a.set_hparams(schedule=graphc.StepLR(step_size=2))                 # another kind: not in this C
    with pytest.raises(graphc.ArgumentError, match="schedule"):
        m.train_step(a, x=x, y=y)


def test_state_save_keeps_the_schedule_values(tmp_path):
    opt = graphc.SGD(lr=0.1, schedule=graphc.StepLR(step_size=3, gamma=0.5))
    m = compiled(opt, name="recipe_save")
    s = m.train_state(params())
    s.set_hparams(step_size=5, gamma=0.9)
    x, y = data(4)
    m.train_step(s, x=x, y=y)
    back = m.load_state(s.save(tmp_path / "s.npz"))
    assert back.optimizer.schedule == graphc.StepLR(step_size=5, gamma=0.9) and back.step == 1


# ------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("make, field", [
    (lambda: graphc.WarmupCosine(warmup=-1, total=10), "warmup"),
    (lambda: graphc.WarmupCosine(warmup=20, total=10), "total"),
    (lambda: graphc.WarmupCosine(total=0), "total"),
    (lambda: graphc.WarmupCosine(min_lr=-1e-3), "min_lr"),
    (lambda: graphc.StepLR(step_size=0), "step_size"),
    (lambda: graphc.StepLR(gamma=-0.5), "gamma"),
    (lambda: graphc.AdamW(max_norm=0.0), "max_norm"),
    (lambda: graphc.SGD(max_norm=-1.0), "max_norm"),
    (lambda: graphc.Adam(accumulate=0), "accumulate"),
    (lambda: graphc.AdamW(schedule="cosine"), "schedule"),
])
def test_bad_recipe_values_are_optimizer_errors_naming_the_field(make, field):
    with pytest.raises(OptimizerError, match=field):
        make()


def test_bad_run_time_values_are_refused_in_python_and_in_c():
    m = compiled(graphc.SGD(lr=0.1, max_norm=1.0, schedule=graphc.StepLR(step_size=2)), name="recipe_bad")
    s = m.train_state(params())
    with pytest.raises(OptimizerError, match="max_norm"):
        s.set_hparams(max_norm=-2.0)
    with pytest.raises(OptimizerError, match="step_size"):
        s.set_hparams(step_size=0)
    # values Python would refuse, forced past it: the C checks them before any write
    bad = copy.copy(s.optimizer.schedule)
    object.__setattr__(bad, "step_size", 0)
    forced = copy.copy(s.optimizer)
    object.__setattr__(forced, "schedule", bad)
    s.optimizer, s.cache = forced, type(s.cache)()
    before = {k: v.copy() for k, v in s.params.items()}
    x, y = data(4)
    with pytest.raises(OptimizerError, match="out of range"):
        m.train_step(s, x=x, y=y)
    assert s.step == 0 and all(np.array_equal(before[k], s.params[k]) for k in before)


# ------------------------------------------------------------------------------- the standalone C
@pytest.mark.skipif(shutil.which("make") is None or shutil.which("cc") is None, reason="needs make and a C compiler")
def test_emitted_c_runs_the_schedule_and_clipping_as_the_extension(tmp_path):
    from graphc.native.export import TRAIN_STEPS, example_arrays, example_summary, parse_example_output
    opt = graphc.AdamW(lr=5e-2, weight_decay=0.1, max_norm=0.5, accumulate=2,
                       schedule=graphc.WarmupCosine(warmup=2, total=2, min_lr=1e-3))
    m = compiled(opt, name="recipe_emit")
    out = tmp_path / m.name
    m.export(out, standalone=True)
    header = (out / f"{m.name}.h").read_text()
    for text in ("int64_t warmup;", "double max_norm;", "GRAPHC_ERR_HPARAMS", "clip_grad_norm_",
                 f"int {m.name}_accumulate(", f"int {m.name}_apply("):
        assert text in header, text
    strict = "-O2 -std=c99 -Wall -Wextra -Werror -pedantic"
    subprocess.run(["make", f"CFLAGS={strict}", f"{m.name}_example"], cwd=out, check=True, capture_output=True)
    results = parse_example_output(subprocess.run([f"./{m.name}_example"], cwd=out, check=True, capture_output=True,
                                                  text=True).stdout)
    arrays = example_arrays(m.graph, "float64")
    state = m.train_state({k: arrays[k] for k in m.graph.params})
    norms = []
    for step in range(1, TRAIN_STEPS + 1):
        outs = m.train_step(state, **{k: arrays[k] for k in m.graph.inputs})
        norms.append(float(outs["grad_norm"]))
        np.testing.assert_allclose(results[(f"train_step:{step}", "loss")], example_summary([outs["loss"]]), rtol=1e-7)
        np.testing.assert_allclose(results[(f"train_step:{step}", "grad_norm")], example_summary([outs["grad_norm"]]),
                                   rtol=1e-7)
    assert max(norms) > opt.max_norm        # main.c's steps were clipped
    assert len({opt.lr_at(t) for t in range(1, TRAIN_STEPS + 1)}) == TRAIN_STEPS     # ... each at its own rate


HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "NAME.h"

/* fit (accumulating 2 minibatches of 3 rows a step), then accumulate + apply by hand, then a bad
 * hyperparameter and an apply with nothing accumulated: the run the Python test compares with. */
enum { ROWS = 10, BATCH = 3 };
static double x[ROWS * 6], W[30], b1[5], U[15], b2[3], m_[53], v_[53], acc[53];
static int32_t y[ROWS];

int main(int argc, char **argv)
{
    int64_t order[ROWS], t = 0, rows = 0;
    double losses[4], loss, norm;
    double *p[4] = { W, b1, U, b2 };
    const int size[4] = { 30, 5, 15, 3 };
    size_t bytes = NAME_fit_workspace_size(BATCH);
    void *raw = malloc(bytes + 63), *ws = (char *)raw + (64 - (uintptr_t)raw % 64) % 64;
    NAME_hparams hp = UPPER_HPARAMS_DEFAULT;
    int status, i, k, off = 0;
    (void)argc;
    for (i = 0; i < ROWS * 6; ++i) x[i] = sin(0.3 * i);
    for (i = 0; i < ROWS; ++i) { y[i] = (int32_t)(i % 3); order[i] = ROWS - 1 - i; }
    for (k = 0; k < 4; ++k) for (i = 0; i < size[k]; ++i) p[k][i] = 0.1 * cos(0.7 * (i + 11 * k));
    status = NAME_fit(ROWS, BATCH, x, y, order, W, b1, U, b2, m_, m_ + 30, m_ + 35, m_ + 50, v_, v_ + 30, v_ + 35,
                      v_ + 50, &t, acc, acc + 30, acc + 35, acc + 50, &rows, &hp, losses, ws);
    printf("fit %d %lld %.17g %.17g %.17g %.17g\n", status, (long long)t, losses[0], losses[1], losses[2], losses[3]);
    for (i = 0; i < 2; ++i) {
        status = NAME_accumulate(4, x + 24 * i, y + 4 * i, W, b1, U, b2, acc, acc + 30, acc + 35, acc + 50, &rows,
                                 &loss, ws);
        printf("accumulate %d %.17g\n", status, loss);
    }
    status = NAME_apply(W, b1, U, b2, m_, m_ + 30, m_ + 35, m_ + 50, v_, v_ + 30, v_ + 35, v_ + 50, &t, acc,
                        acc + 30, acc + 35, acc + 50, &rows, &hp, &norm);
    printf("apply %d %lld %.17g\n", status, (long long)t, norm);
    for (k = 0; k < 4; ++k) for (i = 0; i < size[k]; ++i, ++off) printf("param %d %.17g\n", off, p[k][i]);
    hp.total = hp.warmup - 1;      /* out of range: refused before any write */
    status = NAME_apply(W, b1, U, b2, m_, m_ + 30, m_ + 35, m_ + 50, v_, v_ + 30, v_ + 35, v_ + 50, &t, acc,
                        acc + 30, acc + 35, acc + 50, &rows, &hp, &norm);
    printf("empty %d\n", status);
    rows = 1;
    status = NAME_apply(W, b1, U, b2, m_, m_ + 30, m_ + 35, m_ + 50, v_, v_ + 30, v_ + 35, v_ + 50, &t, acc,
                        acc + 30, acc + 35, acc + 50, &rows, &hp, &norm);
    printf("bad %d %lld\n", status, (long long)t);
    free(raw);
    (void)argv;
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_emitted_fit_accumulate_and_apply_run_clean_under_sanitizers(tmp_path):
    """The emitted NAME_fit (accumulating), NAME_accumulate and NAME_apply called from C under ASan and
    UBSan: no report, the values of the same calls from Python, GRAPHC_ERR_BATCH for an apply with
    nothing accumulated and GRAPHC_ERR_HPARAMS (nothing written) for total < warmup."""
    opt = graphc.AdamW(lr=5e-2, weight_decay=0.1, max_norm=0.5, accumulate=2,
                       schedule=graphc.WarmupCosine(warmup=2, total=2, min_lr=1e-3))
    m = compiled(opt, name="recipe_san")
    m.export(tmp_path, standalone=True)
    source = HARNESS.replace("NAME", m.name).replace("UPPER", m.name.upper()).replace('#include "', '#include <math.h>\n#include "', 1)
    (tmp_path / "harness.c").write_text(source)
    flags = "-std=c99 -O1 -g -Wall -Wextra -Werror -pedantic -fsanitize=address,undefined -fno-omit-frame-pointer " \
            "-fno-sanitize-recover=all"
    build = subprocess.run(f"gcc {flags} -DGC_KERNELS_DOUBLE=1 -o harness harness.c {m.name}.c graphc_kernels.c -lm",
                           shell=True, cwd=tmp_path, capture_output=True, text=True)
    if build.returncode and "sanitize" in build.stderr:
        pytest.skip("gcc without ASan/UBSan")
    assert build.returncode == 0, build.stderr
    run = subprocess.run(["./harness"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "runtime error" not in run.stderr and "Sanitizer" not in run.stderr, run.stderr
    lines = [line.split() for line in run.stdout.splitlines()]

    # the same calls from Python
    p = {"W": np.array([0.1 * math.cos(0.7 * i) for i in range(30)]).reshape(5, 6),
         "b1": np.array([0.1 * math.cos(0.7 * (i + 11)) for i in range(5)]),
         "U": np.array([0.1 * math.cos(0.7 * (i + 22)) for i in range(15)]).reshape(3, 5),
         "b2": np.array([0.1 * math.cos(0.7 * (i + 33)) for i in range(3)])}
    x = np.sin(0.3 * np.arange(60)).reshape(10, 6)
    y = (np.arange(10) % 3).astype(np.int32)
    s = m.train_state(p)
    order = np.arange(10)[::-1]
    losses = []
    for i, start in enumerate(range(0, 10, 3)):
        rows = order[start:start + 3]
        losses.append(float(m.accumulate(s, x=x[rows], y=y[rows])["loss"]))
        if i % 2 == 1 or start + 3 >= 10:
            m.apply(s)
    assert lines[0][:3] == ["fit", "0", "2"]
    np.testing.assert_allclose([float(v) for v in lines[0][3:]], losses, rtol=1e-12)
    for i in range(2):
        loss = m.accumulate(s, x=x[4 * i:4 * i + 4], y=y[4 * i:4 * i + 4])["loss"]
        assert lines[1 + i][:2] == ["accumulate", "0"]
        np.testing.assert_allclose(float(lines[1 + i][2]), loss, rtol=1e-12)
    norm = m.apply(s)["grad_norm"]
    assert lines[3][:3] == ["apply", "0", "3"]
    np.testing.assert_allclose(float(lines[3][3]), norm, rtol=1e-12)
    flat = np.concatenate([s.params[k].ravel() for k in WRT])
    np.testing.assert_allclose([float(line[2]) for line in lines[4:57]], flat, rtol=1e-11, atol=1e-15)
    assert lines[57] == ["empty", str(int(m.lib.GRAPHC_ERR_BATCH))]
    assert lines[58] == ["bad", str(int(m.lib.GRAPHC_ERR_HPARAMS)), "3"]


@pytest.mark.parametrize("opt", [
    graphc.SGD(lr=0.1, schedule=graphc.StepLR(step_size=3)),                  # the fused update, scheduled
    graphc.SGD(lr=0.1, momentum=0.9, weight_decay=1e-4, max_norm=1.0, accumulate=2),
    graphc.Adam(lr=1e-3, max_norm=2.0),
    graphc.AdamW(lr=1e-3, accumulate=3, schedule=graphc.WarmupCosine(warmup=5, total=50)),
], ids=["sgd_step", "momentum_clip_acc", "adam_clip", "adamw_cosine_acc"])
def test_recipe_c_compiles_strict_with_gcc_and_clang(tmp_path, opt):
    from graphc.backend.codegen import generate, kernel_library
    compilers = [cc for cc in ("gcc", "clang") if shutil.which(cc)]
    if not compilers:
        pytest.skip("needs gcc or clang")
    (tmp_path / "graphc_kernels.h").write_text(kernel_library().header)
    for dtype in ("float32", "float64"):
        csrc = generate(mlp(), "loss", WRT, dtype=dtype, optimizer=opt)
        (tmp_path / "recipe_mlp.c").write_text(csrc.source)
        (tmp_path / "recipe_mlp.h").write_text(csrc.header)
        for cc in compilers:
            run = subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c", "recipe_mlp.c",
                                  "-o", "recipe_mlp.o"], cwd=tmp_path, capture_output=True, text=True)
            assert run.returncode == 0, f"{cc} {dtype}:\n{run.stderr}"
