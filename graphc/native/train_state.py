"""Training in C, the state: TrainState (a model's params and optimizer state in caller-owned
arrays, its hyperparameters, its .npz file) and the TrainerCache a Trainer keeps on it.

In: arrays (params and optimizer buffers, made by native/training.py's Trainer), an optimizer
(graphc/autodiff/optimizers.py), a path to save to or read from. Out: TrainStates, .npz files,
the arrays such a file holds. Knows nothing of the C functions: the Trainer binds a state to
its model (native/training.py) and only it reads or writes the state's cache.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from graphc.native.calls import CallPlan
from graphc.core.errors import ArgumentError
from graphc.autodiff.optimizers import describe, flat_hparams, hparam_names, with_hparams

STATE_FORMAT = 1        # version of the .npz layout written by TrainState.save


class TrainerCache:
    """What a Trainer keeps on a TrainState so that its calls skip work already done.

    - trainer: the Trainer that made it. Any other (another model's, or another compile of the
      same model) finds it is not its own and binds the state anew, checking it first.
    - step_ptrs, fit_ptrs, accumulate_ptrs, apply_ptrs: cffi pointers to the state's params and
      optimizer state, in the order NAME_train_step, NAME_fit, NAME_accumulate and NAME_apply
      take them (after the minibatch arrays). They stay valid because TrainState's mappings are
      read-only: the arrays are never rebound.
    - workspaces: batch size (negated for NAME_fit) -> (workspace array, its cffi pointer); with
      several run-time dims their values (batch first; "fit" before them for NAME_fit).
    - plan: the calls.CallPlan of the state's recent train_step minibatch, or None.

    Only the Trainer that made it reads or writes it; a TrainState starts with an empty one
    (trainer None) and state.copy() gets a new empty one (its arrays are new)."""

    __slots__ = ("trainer", "step_ptrs", "fit_ptrs", "accumulate_ptrs", "apply_ptrs", "workspaces", "plan")

    def __init__(self, trainer: Any = None, step_ptrs: tuple = (), fit_ptrs: tuple = (),
                 accumulate_ptrs: tuple = (), apply_ptrs: tuple = ()):
        self.trainer, self.step_ptrs, self.fit_ptrs = trainer, tuple(step_ptrs), tuple(fit_ptrs)
        self.accumulate_ptrs, self.apply_ptrs = tuple(accumulate_ptrs), tuple(apply_ptrs)
        self.workspaces: dict[int | tuple, tuple[np.ndarray, Any]] = {}
        self.plan: CallPlan | None = None


class TrainState:
    """Parameters (updated in place by C) and optimizer state of one model being trained.

    `params` and `buffers` are read-only mappings of NumPy arrays in the model's dtype
    (Adam's step count `t` is int64): change values in place (state.params["W"][...] = 0),
    never rebind them, so the pointers cached for the C calls stay valid.

    What a Trainer uses: `params`, `buffers`, `optimizer`, `dtype`, `count_sgd_steps` and
    `cache` (a TrainerCache: its pointers, workspaces and minibatch CallPlan for this state;
    a Trainer replaces it when it binds the state). NumPy will not resize in place the
    arrays whose pointers a CallPlan keeps. Use a state from one thread at a time; threads
    training at once each need their own state (state.copy())."""

    def __init__(self, model_name: str, dtype: np.dtype, optimizer, params: dict[str, np.ndarray],
                 buffers: dict[str, np.ndarray], sgd_steps: int = 0):
        self.model_name, self.dtype, self.optimizer = model_name, np.dtype(dtype), optimizer
        self._params, self._buffers = params, buffers
        self.params: Mapping[str, np.ndarray] = MappingProxyType(params)
        self.buffers: Mapping[str, np.ndarray] = MappingProxyType(buffers)
        self._sgd_steps = int(sgd_steps)      # steps of an optimizer without a step count in C (SGD)
        self.cache = TrainerCache()

    @property
    def step(self) -> int:
        """Optimizer steps taken (Adam's t; counted in Python for SGD)."""
        return int(self._buffers["t"][0]) if "t" in self._buffers else self._sgd_steps

    def count_sgd_steps(self, k: int = 1) -> None:
        """Record k more optimizer steps taken in C by an optimizer that keeps no step count in
        the buffers (SGD); `step` reports them and `save` stores them. A Trainer calls it after
        each train_step (k = 1) and each fit epoch (k = its minibatches)."""
        self._sgd_steps += k

    @property
    def hparams(self) -> dict[str, Any]:
        """The hyperparameters the next step uses, by name (the optimizer's fields; `schedule` the
        dict of its schedule's fields, which set_hparams also takes by name)."""
        return asdict(self.optimizer)

    def set_hparams(self, **values: Any) -> None:
        """Change hyperparameters for the steps to come: state.set_hparams(lr=1e-4), a schedule's
        too (warmup=200, total=10_000, or schedule=graphc.WarmupCosine(...) of the kind compiled).
        The C reads them at every call (no rebuild). Each is checked as the optimizer checks it;
        the ones whose term the model was compiled without (a momentum or weight decay that was
        0, clipping, another kind of schedule) raise ArgumentError at the next step, as does an
        unknown name here."""
        names = hparam_names(self.optimizer)
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ArgumentError(f"set_hparams: {type(self.optimizer).__name__} has no hyperparameter "
                                f"{', '.join(map(repr, unknown))}", hint=f"it has {', '.join(sorted(names))}")
        self.optimizer = with_hparams(self.optimizer, values)    # checks the values (OptimizerError)
        self.cache = TrainerCache()     # the next call binds the state anew, with these values

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self._params.items())
        return f"<TrainState {self.model_name} {self.dtype} {describe(self.optimizer)}; {shapes}; step {self.step}>"

    def copy(self) -> "TrainState":
        return TrainState(self.model_name, self.dtype, self.optimizer,
                          {k: v.copy() for k, v in self._params.items()},
                          {k: v.copy() for k, v in self._buffers.items()}, self._sgd_steps)

    def save(self, path: str | Path) -> Path:
        """Write params, optimizer state and the optimizer to an .npz file (load with model.load_state)."""
        path = Path(path)
        meta = dict(format=STATE_FORMAT, model=self.model_name, dtype=self.dtype.name, optimizer=self.optimizer.kind,
                    hyper=flat_hparams(self.optimizer), schedule=self.optimizer.schedule.kind,
                    params=list(self._params), buffers=list(self._buffers),
                    sgd_steps=self._sgd_steps)
        arrays = {f"param.{k}": v for k, v in self._params.items()}
        arrays.update({f"state.{k.replace('/', '.')}": v for k, v in self._buffers.items()})
        with open(path, "wb") as fh:
            np.savez(fh, __meta__=np.array(json.dumps(meta)), **arrays)
        return path

    @staticmethod
    def read(path: str | Path) -> tuple[str | None, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(the JSON text of `__meta__`, params by name, optimizer state by stored key) of an .npz
        file in the layout `save` writes: `param.NAME`, `state.KEY` (a buffers key, '/' written
        '.') and `__meta__`. A file with neither param.NAME keys nor __meta__ (np.savez(path,
        W=..., b1=...)) holds the params under their own names: (None, its arrays, {}).
        OSError or ValueError when the file cannot be read as an .npz."""
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = arrays.pop("__meta__", None)
        if meta is None and not any(k.startswith("param.") for k in arrays):
            return None, arrays, {}
        params = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
        state = {k[len("state."):]: v for k, v in arrays.items() if k.startswith("state.")}
        return None if meta is None else str(meta), params, state
