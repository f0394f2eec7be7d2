"""Training in C, the Python half: TrainState (params and optimizer state in caller-owned
arrays) and the calls a model compiled with an optimizer gets (train_state, train_step, fit,
load_state), plus init_params. The optimizers and the generation of NAME_train_step and
NAME_fit are in graphc/train_codegen.py (re-exported here).

In: a loaded CompiledModel whose train_step Function carries a TrainLayout (runtime's `compile`
calls `attach`). Out: `train_state`, `train_step`, `fit` and `load_state` on the model.

Per call, train_step does as little as it can: the state's params and optimizer state have
pointers made once (at the state's first call), and the minibatch goes through an
arguments.CallPlan kept on the state, so the same arrays (or new ones of the same shapes)
pass with an identity, shape, strides and dtype check; anything else takes the checked path.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from graphc.core.arguments import bind
from graphc.native.calls import CallPlan, allocate_workspace, as_c_array, c_array_type, output_specs, picker
from graphc.core.errors import ArgumentError, DTypeError, GraphcError, ShapeError
from graphc.core.ir import Graph
from graphc.autodiff.optimizers import OPTIMIZERS, Adam, OptimizerError, SGD, describe  # noqa: F401  (re-exported)
from graphc.backend.functions import TrainLayout

STATE_FORMAT = 1        # version of the .npz layout written by TrainState.save


class TrainState:
    """Parameters (updated in place by C) and optimizer state of one model being trained.

    `params` and `buffers` are read-only mappings of NumPy arrays in the model's dtype
    (Adam's step count `t` is int64): change values in place (state.params["W"][...] = 0),
    never rebind them, so the pointers cached for the C calls stay valid.

    A state also holds its workspace and recent train_step minibatch arrays (a CallPlan; NumPy
    will not resize in place the arrays whose pointers it keeps). Use a state from one thread at
    a time; threads training at once each need their own state (state.copy())."""

    def __init__(self, model_name: str, dtype: np.dtype, optimizer, params: dict[str, np.ndarray],
                 buffers: dict[str, np.ndarray]):
        self.model_name, self.dtype, self.optimizer = model_name, np.dtype(dtype), optimizer
        self._params, self._buffers = params, buffers
        self.params: Mapping[str, np.ndarray] = MappingProxyType(params)
        self.buffers: Mapping[str, np.ndarray] = MappingProxyType(buffers)
        self._trainer = None       # the Trainer whose pointers are cached below
        self._step_ptrs: list = []
        self._fit_ptrs: list = []
        self._ws: dict[int, tuple[np.ndarray, Any]] = {}
        self._plan = None          # the train_step minibatch plan (arguments.CallPlan)

    @property
    def step(self) -> int:
        """Optimizer steps taken (Adam's t; counted in Python for SGD)."""
        return int(self._buffers["t"][0]) if "t" in self._buffers else self._sgd_steps

    _sgd_steps = 0

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self._params.items())
        return f"<TrainState {self.model_name} {self.dtype} {describe(self.optimizer)}; {shapes}; step {self.step}>"

    def copy(self) -> "TrainState":
        s = TrainState(self.model_name, self.dtype, self.optimizer,
                       {k: v.copy() for k, v in self._params.items()}, {k: v.copy() for k, v in self._buffers.items()})
        s._sgd_steps = self._sgd_steps
        return s

    def save(self, path: str | Path) -> Path:
        """Write params, optimizer state and the optimizer to an .npz file (load with model.load_state)."""
        path = Path(path)
        meta = dict(format=STATE_FORMAT, model=self.model_name, dtype=self.dtype.name, optimizer=self.optimizer.kind,
                    hyper=asdict(self.optimizer), params=list(self._params), buffers=list(self._buffers),
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


class Trainer:
    """The training calls of one CompiledModel (attached as its train_state, train_step, fit
    and load_state)."""

    def __init__(self, model):
        f = model.functions["train_step"]
        lay: TrainLayout = f.train_layout
        self.model, self.layout, self.optimizer = model, lay, lay.optimizer
        self.ffi, self.lib = model.ffi, model.lib
        self.graph: Graph = model.graph
        self.dtype = model.dtype
        self._ctype = "float" if self.dtype == np.float32 else "double"
        self._cstep = getattr(model.lib, f"{model.name}_train_step")
        self._cfit = getattr(model.lib, f"{model.name}_fit") if lay.fit else None
        self._inputs = [name for role, name, _ in lay.step_args if role == "input"]
        self._params = [name for role, name, _ in lay.step_args if role == "param"]
        outs = [(name, self._out_spec(name)) for role, name, _ in lay.step_args if role == "output"]
        self._outs = outs
        self._result = picker([(name, i) for i, (name, _) in enumerate(outs)])
        self._counts_steps = "t" not in lay.state      # SGD: Python counts the steps (Adam's t is in C)
        sym = self.graph.symbolic_dims
        self._sym = sym[0] if sym else None

    def _out_spec(self, name: str):
        shape, is_int = self.layout.out_types[name]
        return shape, (np.dtype(np.int32) if is_int else self.dtype)

    def _ptr(self, arr: np.ndarray):
        return self.ffi.from_buffer(c_array_type(self._ctype, arr.dtype), arr)

    # ------------------------------------------------------------------ state
    def train_state(self, params: Mapping[str, Any]) -> TrainState:
        """Copy `params` (name -> array) into C-contiguous arrays of the model dtype, with zeroed
        optimizer state. Every param of the graph must be given, in its declared shape."""
        g = self.graph
        from graphc.core.arguments import param_arrays
        # float64 init values are cast: the state is a copy
        arrays = {k: np.array(a, dtype=self.dtype, order="C", copy=True)
                  for k, a in param_arrays(g, params, "train_state").items()}
        buffers = {key: np.zeros(shape, dtype=dt) for key, (shape, dt) in self.layout.state.items()}
        return TrainState(self.model.name, self.dtype, self.optimizer, arrays, buffers)

    def load_state(self, path: str | Path) -> TrainState:
        """A TrainState saved by TrainState.save; checks the model's params, shapes and optimizer."""
        path = Path(path)
        try:
            meta_text, params, stored = TrainState.read(path)
            if meta_text is None:
                raise KeyError("__meta__ is not a file in the archive")
            meta = json.loads(meta_text)
        except (OSError, KeyError, ValueError) as e:
            raise ArgumentError(f"load_state: {path} is not a graphc training state ({e})") from None
        kind = meta.get("optimizer")
        if kind != self.optimizer.kind:
            raise ArgumentError(f"load_state: {path} holds {kind} state, but {self.model.name} was compiled with "
                                f"{describe(self.optimizer)}", hint="compile with the optimizer the state was saved with")
        state = self.train_state(params)
        for key, buf in state._buffers.items():
            array = stored.get(key.replace('/', '.'))
            if array is None:
                raise ArgumentError(f"load_state: {path} lacks optimizer state {key!r}")
            if array.shape != buf.shape:
                raise ShapeError(f"load_state: optimizer state {key!r} in {path} has shape {array.shape}, "
                                 f"expected {buf.shape}")
            buf[...] = array
        state._sgd_steps = int(meta.get("sgd_steps", 0))
        return state

    def _bind(self, state: TrainState) -> None:
        """Cache the pointers of a state's long-lived arrays in the order the C functions take them."""
        if not isinstance(state, TrainState):
            raise ArgumentError(f"expected a TrainState (from m.train_state(params)), got {type(state).__name__}")
        if state.optimizer.kind != self.optimizer.kind or state.dtype != self.dtype:
            raise ArgumentError(f"this TrainState is for {describe(state.optimizer)} in {state.dtype}, "
                                f"but {self.model.name} trains with {describe(self.optimizer)} in {self.dtype}")
        g = self.graph
        for k, v in g.params.items():
            arr = state._params.get(k)
            if arr is None or arr.shape != tuple(v.shape) or not arr.flags.c_contiguous:
                raise ShapeError(f"TrainState param {k!r} does not fit {g.name} (expected {g.format_shape(v.shape)})")
        for key, (shape, dt) in self.layout.state.items():
            arr = state._buffers.get(key)
            if arr is None or arr.shape != shape or arr.dtype != np.dtype(dt):
                raise ShapeError(f"TrainState optimizer state {key!r} does not fit {g.name}")

        def ptrs(args):
            out = []
            for role, name, _ in args:
                if role == "param":
                    out.append(self._ptr(state._params[name]))
                elif role == "state":
                    out.append(self._ptr(state._buffers[name]))
            return out
        state._step_ptrs = ptrs(self.layout.step_args)
        state._fit_ptrs = ptrs(self.layout.fit_args)
        state._ws = {}
        state._plan = None
        state._trainer = self

    def _workspace(self, state: TrainState, n: int, fit: bool = False):
        key = -n if fit else n
        hit = state._ws.get(key)
        if hit is None:
            size_fn = getattr(self.lib, f"{self.model.name}_{'fit_' if fit else ''}workspace_size")
            size = size_fn(n)
            if size == 0:
                raise ShapeError(f"{self.model.name}: batch size {n} is invalid or its workspace would overflow size_t",
                                 hint="use a batch size >= 1 that fits in memory")
            if len(state._ws) > 8:
                state._ws.clear()
            ws = allocate_workspace(self.model.name, size, n)
            hit = state._ws[key] = (ws, self.ffi.from_buffer(ws))
        return hit[1]

    # ------------------------------------------------------------------ one step
    def train_step(self, state: TrainState, **batch) -> dict[str, np.ndarray]:
        """One optimizer step on one minibatch, in one C call; returns the forward outputs (new arrays).

        The state keeps a CallPlan of its minibatch arrays: when the same arrays come back, or new
        ones of the same shapes and dtypes (C-contiguous, aligned), the minibatch is not checked
        again beyond identity, shape, strides and dtype."""
        try:
            plan = state._plan if state._trainer is self else None
        except AttributeError:
            plan = None
        hit = plan.reuse(batch) if plan is not None else None
        if hit is None:
            return self._train_step_checked(state, batch)
        again, head = hit
        if again is not plan:
            state._plan = again
        status, outs = again.run(self._cstep, head)
        if status != 0:
            self._fail(status, "train_step", batch, again.n)
        if self._counts_steps:
            state._sgd_steps += 1
        return self._result(outs)

    def _train_step_checked(self, state: TrainState, batch: dict) -> dict[str, np.ndarray]:
        """Check and convert the minibatch; leave a CallPlan on the state when nothing was converted."""
        if getattr(state, "_trainer", None) is not self:
            self._bind(state)
        env, dims = bind(self.graph, batch, self.dtype, need_params=False)
        n = self.model._batch(dims)
        arrays = [as_c_array(k, env[k]) for k in self._inputs]
        specs = [(tuple(n if isinstance(d, str) else d for d in shape), dt) for _, (shape, dt) in self._outs]
        plan = CallPlan(self.ffi, n, self._inputs, [c_array_type(self._ctype, a.dtype) for a in arrays], arrays,
                        self._workspace(state, n), output_specs(self._ctype, specs), tuple(state._step_ptrs))
        status, outs = plan.run(self._cstep, plan.head)
        if status != 0:
            self._fail(status, "train_step", env, n)
        if self._counts_steps:
            state._sgd_steps += 1
        if len(batch) == len(arrays) and all(arr is batch.get(k) for k, arr in zip(self._inputs, arrays)):
            state._plan = plan          # every input went to C as it was passed
        return self._result(outs)

    def _fail(self, status: int, fname: str, arrays, n: int):
        if status == self.lib.GRAPHC_ERR_LABEL:
            from graphc.ops.loss import check_labels
            env, _ = bind(self.graph, arrays, self.dtype, need_params=False)
            for name, _cname, bound in self.model.csrc_label_bounds("train_step"):
                check_labels(env[name], bound, f"argument {name!r}")
            raise ArgumentError(f"{self.model.name}_{fname}: an int32 label or id is out of range")
        if status == self.lib.GRAPHC_ERR_BATCH:
            raise ShapeError(f"{self.model.name}_{fname}: batch size {n} is invalid for this model")
        if fname == "fit" and status == self.lib.GRAPHC_ERR_ORDER:
            raise ArgumentError(f"{self.model.name}_fit: the order array is not a permutation of the rows")
        from graphc.core.errors import ExecutionError
        raise ExecutionError(f"{self.model.name}_{fname} returned status {status}")

    # ------------------------------------------------------------------ epochs
    def fit(self, state: TrainState, batch_size: int = 64, epochs: int = 1, seed: int | None = 0,
            progress: bool | None | Callable = None, **data) -> list[float]:
        """Train `epochs` epochs of minibatches of `batch_size` rows (the last minibatch of an epoch
        takes the remaining rows), one C call per epoch, rows shuffled by
        np.random.default_rng(seed) (a new permutation each epoch). Returns each epoch's mean
        loss (the minibatch losses weighted by their rows). progress: None shows a bar on stderr
        when it is a terminal, False never; a callable is called as progress(epoch, mean_loss)."""
        if self._cfit is None:
            raise GraphcError(f"{self.model.name}: fit needs inputs whose first dim is the batch dim"
                              f"{'' if self._sym else ' (this model has no batch dim)'}",
                              hint="call m.train_step(state, ...) in a loop instead")
        for name, value, lo in (("batch_size", batch_size, 1), ("epochs", epochs, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ArgumentError(f"fit: {name} must be an integer >= {lo}, got {value!r}")
        if getattr(state, "_trainer", None) is not self:
            self._bind(state)
        env, dims = bind(self.graph, data, self.dtype, need_params=False)
        n_total = self.model._batch(dims)
        arrays = [as_c_array(k, env[k]) for k in self._inputs]
        data_ptrs = [self._ptr(a) for a in arrays]
        batch = int(min(batch_size, n_total))
        nb = -(-n_total // batch)
        rows = np.full(nb, batch, dtype=np.float64)
        rows[-1] = n_total - batch * (nb - 1)
        losses = np.empty(nb, dtype=self.dtype)
        loss_ptr = self._ptr(losses)
        ws = self._workspace(state, batch, fit=True)
        rng = np.random.default_rng(seed)
        show = progress is not False and not callable(progress) and sys.stderr.isatty()
        history = []
        for epoch in range(1, int(epochs) + 1):
            order = rng.permutation(n_total).astype(np.int64)
            t0 = time.perf_counter()
            status = self._cfit(n_total, batch, *data_ptrs, self._ptr(order), *state._fit_ptrs, loss_ptr, ws)
            if status != 0:
                self._fail(status, "fit", data, batch)
            if "t" not in state._buffers:
                state._sgd_steps += nb
            mean = float(np.dot(losses.astype(np.float64), rows) / n_total)
            history.append(mean)
            if callable(progress):
                progress(epoch, mean)
            elif show:
                _bar(epoch, int(epochs), mean, time.perf_counter() - t0)
        if show and epochs:
            sys.stderr.write("\n")
            sys.stderr.flush()
        return history


def _bar(epoch: int, epochs: int, loss: float, seconds: float, width: int = 30) -> None:
    done = int(width * epoch / max(epochs, 1))
    sys.stderr.write(f"\repoch {epoch:>{len(str(epochs))}}/{epochs} [{'=' * done}{' ' * (width - done)}] "
                     f"loss {loss:.4f}  {seconds * 1e3:.1f} ms/epoch")
    sys.stderr.flush()


def trainer_of(model) -> Trainer:
    """The model's Trainer; GraphcError when it was compiled without an optimizer."""
    t = getattr(model, "_trainer", None)
    if t is None:
        if "train_step" not in getattr(model, "functions", {}):
            raise GraphcError(f"{model.name} was compiled without an optimizer, so it cannot train",
                              hint="graphc.compile(..., optimizer=graphc.Adam(lr=1e-3)) or graphc.SGD(lr=0.1)")
        t = model._trainer = Trainer(model)
    return t


def attach(model) -> None:
    """Give a model compiled with an optimizer its training calls (instance attributes, so a
    call skips the class's checking wrappers)."""
    t = trainer_of(model)
    model.train_state, model.train_step, model.fit, model.load_state = t.train_state, t.train_step, t.fit, t.load_state


# ====================================================================== initialisation
SCHEMES = ("xavier", "he", "normal", "zeros")


def _fans(shape: tuple) -> tuple[int, int]:
    """(fan_in, fan_out) of a param laid out (out, in, ...) as the spec's W = [Dh, Dx]."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return int(shape[0]), int(shape[0])
    receptive = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def _init_one(rng: np.random.Generator, scheme: str, shape: tuple) -> np.ndarray:
    fan_in, fan_out = _fans(shape)
    if scheme == "zeros":
        return np.zeros(shape)
    if scheme == "xavier":      # Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
        a = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-a, a, size=shape)
    if scheme == "he":          # Kaiming normal: N(0, 2 / fan_in)
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)
    return rng.normal(0.0, 0.1, size=shape)     # normal: N(0, 0.1^2)


def init_params(graph: Graph | str | Path, seed: int | None = 0,
                scheme: str | Mapping[str, str] | None = None, dtype=None) -> dict[str, np.ndarray]:
    """Initial values of every param of `graph` (a Graph, a spec path or a CompiledModel), from
    np.random.default_rng(seed), params drawn in graph order. dtype: of the arrays; by default
    the model's for a CompiledModel (so m.forward takes them as they are), else float64
    (train_state casts them). The values do not depend on dtype but for its rounding.

    Schemes: "xavier" (Glorot uniform, U(+-sqrt(6/(fan_in+fan_out)))), "he" (Kaiming normal,
    N(0, 2/fan_in)), "normal" (N(0, 0.1^2)), "zeros"; fan_in is the last dim of a [out, in]
    matrix. Each param's scheme: scheme[name] when scheme is a dict naming it; else `scheme`
    when it is a string and the param has 2+ dims; else the spec's `init = ...`; else zeros
    for biases (fewer than 2 dims) and xavier for matrices."""
    if hasattr(graph, "graph") and isinstance(getattr(graph, "graph"), Graph):
        dtype = getattr(graph, "dtype", None) if dtype is None else dtype
        graph = graph.graph
    dtype = np.dtype(np.float64 if dtype is None else dtype)
    if dtype.kind != "f":
        raise DTypeError(f"init_params: dtype must be a float type, got {dtype}", hint="float32 or float64")
    if not isinstance(graph, Graph):
        from graphc.frontend.spec import load
        graph = load(graph)
    per: Mapping[str, str] = scheme if isinstance(scheme, Mapping) else {}
    if scheme is not None and not isinstance(scheme, (str, Mapping)):
        raise ArgumentError(f"init_params: scheme must be a string or a dict name -> scheme, got {scheme!r}")
    for name, s in list(per.items()) + ([("*", scheme)] if isinstance(scheme, str) else []):
        if name != "*" and name not in graph.params:
            raise ArgumentError(f"init_params: {name!r} is not a param of {graph.name}",
                                hint=f"the params are {', '.join(graph.params)}")
        if s not in SCHEMES:
            raise ArgumentError(f"init_params: unknown scheme {s!r}", hint=f"use one of {', '.join(SCHEMES)}")
    rng = np.random.default_rng(seed)
    out = {}
    for name, v in graph.params.items():
        shape = tuple(int(d) for d in v.shape)
        s = per.get(name) or (scheme if isinstance(scheme, str) and len(shape) >= 2 else None) \
            or graph.param_init.get(name) or ("xavier" if len(shape) >= 2 else "zeros")
        if s not in SCHEMES:
            raise ArgumentError(f"init_params: param {name!r} asks for unknown scheme {s!r}",
                                hint=f"use one of {', '.join(SCHEMES)}")
        out[name] = np.asarray(_init_one(rng, s, shape), dtype=np.float64).astype(dtype)
    return out


__all__ = ["SGD", "Adam", "OptimizerError", "TrainState", "Trainer", "init_params", "add_train_functions", "attach"]
