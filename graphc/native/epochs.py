"""Training in C, the epochs: fit, a C call per epoch (the Epochs half of native/training.py's
Trainer), and what the distributed fit (native/distributed.py) shares with it.

In: a TrainState (native/train_state.py) and the data, through the Trainer's one-step calls
(train_step, accumulate, apply) and its C function NAME_fit. Out: each epoch's mean loss;
FitInterrupted at a Ctrl-C between epochs; NonFiniteError naming the first step whose loss or
update was not finite (stop_on_nonfinite). Also check_fit_counts (fit's counts) and
loss_is_a_mean (how accumulation and comm= weigh micro-batches and shards).

Epochs is the base class of Trainer and is not used alone: what it reads of the Trainer is
`name`, `graph`, `dtype`, `layout`, the C functions `_cfit` and `_cacc`, `_sym`, `_inputs`,
`_counts_steps` and the methods `_cache`, `_ptr`, `_workspace`, `_fail`, `_require_mean`,
`train_step`, `accumulate` and `apply` (all set or defined in native/training.py).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from graphc.core.arguments import bind
from graphc.native.calls import as_c_array, dim_values
from graphc.native.progress import Progress, wanted
from graphc.native.train_state import TrainState
from graphc.core.errors import ArgumentError, GraphcError, NonFiniteError
from graphc.core.ir import Graph


class Epochs:
    """Trainer's fit: epochs of minibatches, each epoch one C call (NAME_fit)."""

    def fit(self, state: TrainState, batch_size: int = 64, epochs: int = 1, seed: int | None = 0,
            progress: bool | None | Callable = None, initial_epoch: int = 0, stop_on_nonfinite: bool = False,
            **data) -> list[float]:
        """Train epochs initial_epoch + 1 .. `epochs` of minibatches of `batch_size` rows (the last
        minibatch of an epoch takes the remaining rows), one C call per epoch, rows shuffled by
        np.random.default_rng(seed) (a new permutation each epoch; initial_epoch skips the first
        ones, so a fit resumed where another stopped draws what it would have drawn). Returns each
        epoch's mean loss (the minibatch losses weighted by their rows). progress: None shows a
        bar on stderr (tqdm's when it is installed) with the loss and rows per second when stderr
        is a terminal, True always, False never; a callable is called as progress(epoch, mean_loss).
        The optimizer's recipe runs in C: its schedule advances per optimizer step (state.step), and
        with accumulation (accumulate > 1 at run time) a step is made every `accumulate` minibatches
        and after the epoch's last, from the mean of their gradients.

        Ctrl-C (SIGINT) during an epoch takes effect when that epoch's C call returns: the state
        is then consistent (params, optimizer state and step count of the epochs done) and
        FitInterrupted, a KeyboardInterrupt, says how to resume. stop_on_nonfinite: check the
        losses and the updated state after each epoch; on a NaN or an infinity, go back to the
        state before the epoch, replay it a step at a time, and raise NonFiniteError naming the
        first step whose loss or update was not finite, with the state as it was before it."""
        if self._cfit is None:
            raise GraphcError(f"{self.name}: fit needs inputs whose first dim is the batch dim"
                              f"{'' if self._sym else ' (this model has no batch dim)'}",
                              hint="call m.train_step(state, ...) in a loop instead")
        check_fit_counts(batch_size=(batch_size, 1), epochs=(epochs, 0), initial_epoch=(initial_epoch, 0))
        if self._micro(state) > 1:
            self._require_mean()
        cache = self._cache(state)
        env, found = bind(self.graph, data, self.dtype, need_params=False)
        n_total, *others = dim_values(self.graph, found)    # the rows, and the other run-time dims
        arrays = [as_c_array(k, env[k]) for k in self._inputs]
        data_ptrs = [self._ptr(a) for a in arrays]
        batch = int(min(batch_size, n_total))
        nb = -(-n_total // batch)
        rows = np.full(nb, batch, dtype=np.float64)
        rows[-1] = n_total - batch * (nb - 1)
        losses = np.empty(nb, dtype=self.dtype)
        loss_ptr = self._ptr(losses)
        ws = self._workspace(cache, (batch, *others), fit=True)
        rng = np.random.default_rng(seed)
        for _ in range(min(int(initial_epoch), int(epochs))):
            rng.permutation(n_total)          # the orders of the epochs done before
        bar = Progress(int(epochs) - int(initial_epoch), n_total) if not callable(progress) and wanted(progress) else None
        history: list[float] = []
        with _DeferredInterrupt() as interrupt:
            for epoch in range(int(initial_epoch) + 1, int(epochs) + 1):
                order = rng.permutation(n_total).astype(np.int64)
                before = state.copy() if stop_on_nonfinite else None
                t0 = time.perf_counter()
                status = self._cfit(n_total, batch, *others, *data_ptrs, self._ptr(order), *cache.fit_ptrs,
                                    loss_ptr, ws)
                if status != 0:
                    self._fail(status, "fit", data, (batch, *others))
                if self._counts_steps:      # a step per minibatch, or per `accumulate` of them
                    state.count_sgd_steps(-(-nb // self._micro(state)))
                if before is not None and not (np.isfinite(losses).all() and _finite(state)):
                    self._find_nonfinite(state, before, epoch, order, batch, arrays)
                mean = float(np.dot(losses.astype(np.float64), rows) / n_total)
                history.append(mean)
                if callable(progress):
                    progress(epoch, mean)
                elif bar is not None:
                    bar.update(epoch - int(initial_epoch), mean, time.perf_counter() - t0)
                if interrupt.pending and epoch < epochs:
                    if bar is not None:
                        bar.close()
                        bar = None
                    raise FitInterrupted(epoch, int(epochs), state.step, history)
        if bar is not None:
            bar.close()
        return history

    def _micro(self, state: TrainState) -> int:
        """Minibatches per optimizer step in fit (the state's `accumulate` when the C accumulates)."""
        return int(state.optimizer.accumulate) if self._cacc is not None else 1

    def _find_nonfinite(self, state: TrainState, before: TrainState, epoch: int, order: np.ndarray, batch: int,
                        arrays: list[np.ndarray]) -> None:
        """An epoch ended with a non-finite loss or state: put the state back as it was before the
        epoch, replay the epoch's minibatches one train_step at a time, and raise NonFiniteError at
        the first step whose loss or update is not finite, with the state as it was before it."""
        _restore(state, before)
        loss_names = [name for name, (shape, is_int) in self.layout.out_types.items() if shape == () and not is_int]
        k = self._micro(state)
        for start in range(0, len(order), batch * k):
            rows = order[start:start + batch * k]
            step = state.step + 1
            good = state.copy()
            if k > 1:       # the step's minibatches, accumulated as fit did
                outs = {}
                for part in range(start, min(start + batch * k, len(order)), batch):
                    got = self.accumulate(state, {name: a[order[part:part + batch]]
                                                  for name, a in zip(self._inputs, arrays)})
                    if all(np.isfinite(outs[x]).all() for x in loss_names if x in outs):
                        outs = got      # the first micro-batch whose loss is not finite, else the last
                self.apply(state)
            else:
                outs = self.train_step(state, {k: a[rows] for k, a in zip(self._inputs, arrays)})
            bad = [k for k in loss_names if k in outs and not np.isfinite(outs[k]).all()]
            bad += [f"the update of {k}" for k, v in state.params.items() if not np.isfinite(v).all()]
            bad += [f"the optimizer state {k}" for k, v in state.buffers.items()
                    if v.dtype.kind == "f" and not np.isfinite(v).all()]
            if bad:
                _restore(state, good)
                raise NonFiniteError(f"{self.name}_fit: epoch {epoch}, optimizer step {step} (rows "
                                     f"{start}..{start + len(rows) - 1} of the epoch's order): {bad[0]} is not "
                                     f"finite; the state is left as it was before that step",
                                     epoch=epoch, step=step, tensor=bad[0],
                                     hint="lower the learning rate, or look at that minibatch's data")
        raise NonFiniteError(f"{self.name}_fit: epoch {epoch} ended with a non-finite loss or state, but no "
                             f"single step of its replay did; the state is left as it was before the epoch",
                             epoch=epoch, step=state.step + 1, tensor="the epoch")

def loss_is_a_mean(graph: Graph, name: str, loss: str) -> bool:
    """Whether the loss is a mean over the batch rows (the same for a batch and for that batch twice),
    else a sum (twice as large): data_parallel.batch_weighting on main.c's deterministic data, in
    inference (dropout's masks differ with the rows; the loss's form does not); GraphcError when it
    is neither. Accumulation and comm= both weigh shards by it."""
    from graphc.autodiff.modes import inference_graph
    from graphc.native.data_parallel import batch_weighting
    from graphc.native.export import example_arrays
    once = example_arrays(graph, "float64", 3)     # the training graph's (positive running variances)
    how = batch_weighting(inference_graph(graph), [loss], once)[loss]
    if how is None:
        raise GraphcError(f"{name}: this needs a loss that is a mean or a sum over the batch rows; "
                          f"{loss!r} is neither", hint="write the loss as a mean over the batch (cross_entropy, mse, mean)")
    return how == "mean"


def check_fit_counts(**values: tuple[Any, int]) -> None:
    """fit's counts, each name=(value, least): an int (not a bool) of at least `least`."""
    for name, (value, lo) in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ArgumentError(f"fit: {name} must be an integer >= {lo}, got {value!r}")


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C during fit, raised once the epoch under way finished: the TrainState is consistent
    with `epochs_done` epochs (`history` holds their mean losses), and
    m.fit(state, ..., epochs=EPOCHS, initial_epoch=epochs_done, seed=SEED) resumes it."""

    def __init__(self, epochs_done: int, epochs: int, step: int, history: list[float]):
        self.epochs_done, self.step, self.history = epochs_done, step, list(history)
        super().__init__(f"fit interrupted after epoch {epochs_done} of {epochs} (optimizer step {step}); "
                         f"the state is consistent: resume with fit(..., epochs={epochs}, "
                         f"initial_epoch={epochs_done}) and the same seed")


class _DeferredInterrupt:
    """Within the block, SIGINT only sets `pending` (when in the main thread, where Python delivers
    signals); the previous handler comes back at exit. fit checks `pending` between epochs, so a
    Ctrl-C never lands between a C call and the bookkeeping of its steps."""

    def __enter__(self):
        import signal
        import threading
        self.pending, self._old = False, None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._old = signal.signal(signal.SIGINT, self._note)
        return self

    def _note(self, signum, frame):
        self.pending = True

    def __exit__(self, *exc):
        if self._old is not None:
            import signal
            signal.signal(signal.SIGINT, self._old)
        return False


def _restore(state: TrainState, snap: TrainState) -> None:
    """Copy the values of `snap` (a state.copy()) back into `state` in place: its arrays stay the
    same objects, so the pointers cached for the C calls hold."""
    for k, v in snap.params.items():
        state.params[k][...] = v
    for k, v in snap.buffers.items():
        state.buffers[k][...] = v
    if "t" not in state.buffers:
        state.count_sgd_steps(snap.step - state.step)


def _finite(state: TrainState) -> bool:
    return all(np.isfinite(v).all() for v in state.params.values()) and \
        all(np.isfinite(v).all() for v in state.buffers.values() if v.dtype.kind == "f")
