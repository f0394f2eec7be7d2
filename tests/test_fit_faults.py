"""Faults during fit, with nothing lost (issue 20 item 4): a NaN or an infinity stops fit at the
first step that made it, with the state as it was before that step; Ctrl-C leaves a consistent
state that a later fit resumes to the bits of an uninterrupted one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.native.epochs import FitInterrupted

ROOT = Path(__file__).resolve().parent.parent
ONE_LAYER = ROOT / "examples" / "one_layer.toml"
WRT = ["W", "b1", "U", "b2"]
_MODELS: dict = {}


def model(optimizer: str, lr: float = 0.05):
    key = (optimizer, lr)
    if key not in _MODELS:
        opt = graphc.Adam(lr=lr) if optimizer == "adam" else graphc.SGD(lr=lr)
        _MODELS[key] = graphc.compile(ONE_LAYER, dtype="float32", optimizer=opt, threads=1)
    return _MODELS[key]


def data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 64)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def fresh(m):
    return m.train_state(graphc.init_params(m.graph, seed=1))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_stops_at_the_step_whose_loss_is_nan_and_keeps_the_state_before_it(optimizer):
    m = model(optimizer)
    x, y = data(40)
    bad_row = 29
    x[bad_row, 3] = np.nan
    batch, seed = 8, 5
    # where the bad row falls: epoch 2 (the first has clean rows only: the NaN is put in later)
    rng = np.random.default_rng(seed)
    rng.permutation(40)
    position = int(np.flatnonzero(rng.permutation(40) == bad_row)[0])
    steps_before = 40 // batch + position // batch           # epoch 1's steps, then epoch 2's clean ones
    state = fresh(m)
    clean = x.copy()
    clean[bad_row, 3] = 0.0
    m.fit(state, x=clean, y=y, batch_size=batch, epochs=1, seed=seed, progress=False)
    with pytest.raises(graphc.NonFiniteError) as err:
        m.fit(state, x=x, y=y, batch_size=batch, epochs=3, seed=seed, initial_epoch=1, progress=False,
              stop_on_nonfinite=True)
    e = err.value
    assert (e.epoch, e.step, e.tensor) == (2, steps_before + 1, "loss")
    assert "epoch 2" in str(e) and f"step {steps_before + 1}" in str(e) and "loss" in str(e)
    # the state is what the steps before it made: replay them one train_step at a time
    ref = fresh(m)
    m.fit(ref, x=clean, y=y, batch_size=batch, epochs=1, seed=seed, progress=False)
    order = np.random.default_rng(seed)
    order.permutation(40)
    order = order.permutation(40)
    for start in range(0, (position // batch) * batch, batch):
        idx = order[start:start + batch]
        m.train_step(ref, x=x[idx], y=y[idx])
    assert state.step == ref.step == steps_before
    for k in WRT:
        assert np.isfinite(state.params[k]).all()
        assert np.array_equal(state.params[k], ref.params[k]), k
    for key in state.buffers:
        assert np.array_equal(state.buffers[key], ref.buffers[key]), key
    # and the state trains on once the bad row is gone
    m.fit(state, x=clean, y=y, batch_size=batch, epochs=1, seed=seed, progress=False)
    assert all(np.isfinite(state.params[k]).all() for k in WRT)


def test_fit_names_the_param_whose_update_overflowed():
    m = model("sgd", lr=1e38)               # the first update sends the weights past float32's range
    x, y = data(16)
    state = fresh(m)
    before = {k: v.copy() for k, v in state.params.items()}
    with pytest.raises(graphc.NonFiniteError) as err:
        m.fit(state, x=x * 1e3, y=y, batch_size=16, epochs=2, seed=0, progress=False, stop_on_nonfinite=True)
    assert err.value.step == 1 and err.value.tensor.startswith("the update of ")
    assert err.value.tensor[len("the update of "):] in WRT
    assert state.step == 0
    for k in WRT:                            # nothing lost: the weights before the step
        assert np.array_equal(state.params[k], before[k]), k


def test_fit_without_the_check_runs_on_through_nan():
    """stop_on_nonfinite is an option: without it fit returns (the losses say what happened)."""
    m = model("sgd")
    x, y = data(16)
    x[0, 0] = np.inf
    history = m.fit(fresh(m), x=x, y=y, batch_size=16, epochs=2, seed=0, progress=False)
    assert len(history) == 2 and not np.isfinite(history).all()


def test_fit_interrupted_between_epochs_resumes_to_the_same_bits():
    m = model("adam")
    x, y = data(50)
    whole = fresh(m)
    expected = m.fit(whole, x=x, y=y, batch_size=16, epochs=5, seed=3, progress=False)

    def ctrl_c_during_epoch(epoch, loss):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)      # delivered while fit is under way

    state = fresh(m)
    with pytest.raises(FitInterrupted) as err:
        m.fit(state, x=x, y=y, batch_size=16, epochs=5, seed=3, progress=ctrl_c_during_epoch)
    assert isinstance(err.value, KeyboardInterrupt)
    assert err.value.epochs_done == 2 and err.value.step == state.step == 2 * 4
    assert "initial_epoch=2" in str(err.value)
    rest = m.fit(state, x=x, y=y, batch_size=16, epochs=5, seed=3, initial_epoch=2, progress=False)
    assert err.value.history + rest == expected
    for k in WRT:
        assert np.array_equal(state.params[k], whole.params[k]), k
    for key in state.buffers:
        assert np.array_equal(state.buffers[key], whole.buffers[key]), key
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler     # the handler is put back


def test_fit_ctrl_c_from_outside_leaves_a_state_that_resumes(tmp_path):
    """A real SIGINT from another process, at whatever point the fit is: the child saves the
    state it is left with, resumes, and matches an uninterrupted fit."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import sys, numpy as np, graphc
        from graphc.native.epochs import FitInterrupted
        m = graphc.compile({str(ONE_LAYER)!r}, dtype="float32", optimizer=graphc.SGD(lr=0.05), threads=1)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(4000, 64)).astype(np.float32); y = rng.integers(0, 10, 4000).astype(np.int32)
        init = graphc.init_params(m.graph, seed=1)
        whole = m.train_state(init)
        m.fit(whole, x=x, y=y, batch_size=32, epochs=40, seed=9, progress=False)
        state = m.train_state(init)
        def tick(epoch, loss):
            if epoch == 1:
                print("running", flush=True)
        try:
            m.fit(state, x=x, y=y, batch_size=32, epochs=40, seed=9, progress=tick)
            print("finished before the signal")
        except FitInterrupted as e:
            assert state.step == e.epochs_done * 125, (state.step, e.epochs_done)
            m.fit(state, x=x, y=y, batch_size=32, epochs=40, seed=9, initial_epoch=e.epochs_done, progress=False)
            same = all(np.array_equal(state.params[k], whole.params[k]) for k in whole.params)
            print("resumed", e.epochs_done, same)
    """))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout.readline().strip() == "running", proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    words = out.split()
    assert words[0] == "resumed" and 1 <= int(words[1]) < 40 and words[2] == "True", out


def test_fit_with_gradient_accumulation_stops_at_the_optimizer_step_whose_micro_batch_is_nan():
    """accumulate=2: an optimizer step is 2 minibatches; the NaN row's minibatch makes its step's
    loss non-finite: NonFiniteError names that optimizer step and the loss, and the state (params,
    Adam's moments and step count, the accumulators) is that of the steps before, made by
    accumulate and apply one at a time."""
    m = graphc.compile(ONE_LAYER, dtype="float32", optimizer=graphc.Adam(lr=0.01, accumulate=2), threads=1)
    x, y = data(40)
    batch, seed, bad_row = 4, 2, 17
    x[bad_row, 5] = np.inf
    order = np.random.default_rng(seed).permutation(40)
    position = int(np.flatnonzero(order == bad_row)[0])
    steps_before = position // (2 * batch)
    state = fresh(m)
    with pytest.raises(graphc.NonFiniteError) as err:
        m.fit(state, x=x, y=y, batch_size=batch, epochs=2, seed=seed, progress=False, stop_on_nonfinite=True)
    assert (err.value.epoch, err.value.step, err.value.tensor) == (1, steps_before + 1, "loss")
    ref = fresh(m)
    for start in range(0, steps_before * 2 * batch, batch):
        idx = order[start:start + batch]
        m.accumulate(ref, x=x[idx], y=y[idx])
        if (start // batch) % 2 == 1:
            m.apply(ref)
    assert state.step == ref.step == steps_before
    for k in WRT:
        assert np.isfinite(state.params[k]).all()
        assert np.array_equal(state.params[k], ref.params[k]), k
    for key in state.buffers:
        assert np.array_equal(state.buffers[key], ref.buffers[key]), key
