"""Data-parallel training over MPI: m.train_step(state, comm=MPI.COMM_WORLD, ...) and
m.fit(state, ..., comm=...), each rank passing its own shard of the data.

Per step, every rank computes the gradients of its rows in C (NAME_value_and_grad), weights them
by its share of the global batch (n_rank / N, for a loss that is a mean over the rows; 1 for a
sum), and one in-place Allreduce per gradient sums them, so every rank holds the gradient of the
whole batch. Every rank then applies the same optimizer update in C: the train_step of a small
companion model whose loss is sum(P * G_P) over the params P, with each gradient G_P an input (its
gradient with respect to P is G_P itself, exactly), compiled with the model's optimizer and
sharing the state's arrays. Parameters stay identical on every rank.

A rank whose part fails (a bad label, a wrong shape) tells the others through an allreduce of a
status before any collective on the gradients: every rank then raises, none hangs.

In: a CompiledModel with value_and_grad and an optimizer, a TrainState, an mpi4py communicator.
mpi4py is imported only here, only when a comm is given (pip install 'graphc[mpi]').
"""
from __future__ import annotations

import weakref

import numpy as np

from graphc.core.errors import ArgumentError, ExecutionError, GraphcError
from graphc.native.data_parallel import check_stateless, update_graph
from graphc.native.epochs import check_fit_counts, loss_is_a_mean
from graphc.native.train_state import TrainState

_UPDATERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # model -> (companion model, weights)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise GraphcError("comm= needs mpi4py", hint="pip install 'graphc[mpi]' (mpi4py and the mpich wheels)") from None
    return MPI


def _updater(model, compile_model):
    """The companion model that applies the optimizer's update from given gradients (compiled by
    `compile_model`, runtime's compile), and whether the loss is a mean over the batch rows
    (gradients weighted by rows) or a sum (weight 1)."""
    hit = _UPDATERS.get(model)
    if hit is not None:
        return hit
    layout = model.functions["train_step"].train_layout
    if "value_and_grad" not in model.functions:
        raise GraphcError(f"{model.name}: comm= needs value_and_grad", hint="compile with grad_of= and wrt=")
    check_stateless(model.graph, "comm=", "train it in one process (train_step/fit without comm=)")
    companion = compile_model(update_graph(model.graph, layout.wrt), grad_of="J", wrt=list(layout.wrt),
                              dtype=model.dtype.name, optimizer=layout.optimizer, threads=model.threads)
    hit = _UPDATERS[model] = (companion, loss_is_a_mean(model.graph, model.name, layout.loss))
    return hit




def _agree(comm, ok: bool, what: str, error: BaseException | None):
    """Every rank learns whether every rank's part succeeded; all raise if one failed."""
    MPI = _mpi()
    failed = comm.allreduce(0 if ok else 1 << comm.Get_rank(), op=MPI.BOR)
    if failed:
        ranks = [r for r in range(comm.Get_size()) if failed >> r & 1]
        if error is not None:
            raise error
        raise ExecutionError(f"{what}: rank(s) {', '.join(map(str, ranks))} failed; rank {comm.Get_rank()} stops "
                             f"with them (the parameters are as before this step on every rank)")


def train_step(model, state: TrainState, comm, batch: dict, compile_model) -> dict[str, np.ndarray]:
    """One data-parallel optimizer step: this rank's rows in `batch`; returns the outputs of this
    rank's rows, with the loss replaced by the whole batch's. compile_model: runtime's compile."""
    MPI = _mpi()
    companion, mean = _updater(model, compile_model)
    layout = model.functions["train_step"].train_layout
    outs, grads, rows, error = None, None, 0, None
    try:
        rows = _rows(layout, batch)
        if rows:
            outs, grads = model.value_and_grad(**batch, **dict(state.params))
    except (GraphcError, ValueError, TypeError) as e:
        error = e
    _agree(comm, error is None, f"{model.name}_train_step(comm=)", error)
    total = comm.allreduce(rows, op=MPI.SUM)
    if total == 0:
        raise ArgumentError(f"{model.name}_train_step(comm=): no rank passed any rows")
    weight = rows / total if mean else 1.0
    summed = {}
    for name in layout.wrt:
        # value_and_grad's gradients are new C-order arrays of the model's dtype: scaled in place
        g = np.zeros(model.graph.params[name].shape, dtype=model.dtype) if grads is None else grads[name]
        if weight != 1.0:
            g *= model.dtype.type(weight)
        comm.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
        summed[f"grad_{name}"] = g
    local = 0.0 if outs is None else float(np.asarray(outs[layout.loss])) * weight
    loss = comm.allreduce(local, op=MPI.SUM)
    shared = TrainState(companion.name, state.dtype, state.optimizer,
                        {k: state.params[k] for k in layout.wrt}, dict(state.buffers))
    companion.train_step(shared, **summed)
    if "t" not in state.buffers:
        state.count_sgd_steps()
    result = dict(outs) if outs is not None else {}
    result[layout.loss] = np.asarray(loss, dtype=model.dtype)
    return result


def _rows(layout, batch: dict) -> int:
    """This rank's rows: the first dim of a batched input it passed (1 for a model without one)."""
    name = next((k for k in layout.batched if k in batch), None)
    return int(np.shape(batch[name])[0]) if name is not None else 1


def fit(model, state: TrainState, comm, batch_size: int, epochs: int, seed, data: dict,
        compile_model) -> list[float]:
    """Epochs of data-parallel minibatches: the global rows (every rank's shard, in rank order)
    are shuffled by np.random.default_rng(seed) the same way on every rank, and each global
    minibatch of batch_size rows is one train_step(comm=), each rank giving the rows of it that
    are in its shard. Parameters are broadcast from rank 0 first. Returns the global mean loss
    of each epoch."""
    MPI = _mpi()
    check_fit_counts(batch_size=(batch_size, 1), epochs=(epochs, 0))
    layout = model.functions["train_step"].train_layout
    rows = _rows(layout, data)
    counts = comm.allgather(rows)
    start = sum(counts[:comm.Get_rank()])
    total = sum(counts)
    for arr in list(state.params.values()) + [b for b in state.buffers.values()]:
        comm.Bcast(arr, root=0)
    rng = np.random.default_rng(seed)
    history = []
    for _ in range(int(epochs)):
        order = rng.permutation(total)
        weighted = 0.0
        for begin in range(0, total, batch_size):
            chunk = order[begin:begin + batch_size]
            mine = np.sort(chunk[(chunk >= start) & (chunk < start + rows)]) - start
            local = {k: (np.asarray(v)[mine] if k in layout.batched else v) for k, v in data.items()}
            outs = train_step(model, state, comm, local, compile_model)
            weighted += float(outs[layout.loss]) * len(chunk)
        history.append(weighted / total)
    return history
