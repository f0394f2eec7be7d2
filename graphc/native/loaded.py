"""A loaded model library called from NumPy: LoadedModel, CompiledModel's base class.

In: the C functions' records (backend/codegen.py's CSource, or a native/fastload.py LazySource)
and the loaded library (native/build.py). Out: `call(fname, arrays)`, one C function's outputs,
and what runtime.py's public calls build on: this thread's plans, the outputs' layouts, the
errors of C's status codes. It never re-reads the spec or re-derives a shape: both come from
the IR the C was made from.

A call is checked in full once (core/arguments.bind); the check leaves a CallPlan
(native/calls.py) per thread and function, and the next calls with the same
arrays, or new arrays of the same shapes and dtypes, skip straight to C. The GIL is released
during the C call (cffi API mode). Outputs are new arrays on every call, or (small ones, on the
fast path) arrays of an earlier call that nothing but the plan holds any more: an
array the caller can reach is never written again.
"""
from __future__ import annotations

import operator
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from graphc.core.arguments import bind, check_dim_bounds
from graphc.native.calls import (CallPlan, allocate_workspace, as_c_array, c_array_type, describe_dims, dim_values,
                                  output_specs, picker, shape_at)
from graphc.core.errors import ArgumentError, ExecutionError, ShapeError
from graphc.core.ir import FLOAT, Graph
from graphc.ops.loss import check_labels

if TYPE_CHECKING:           # imported where used: a cached model loads without the backend (fastload.py)
    from graphc.backend.codegen import CSource

def busy_hold(lib) -> None:
    """Apply $GRAPHC_BUSY_HOLD (seconds; 0 = always the threads asked for) to a loaded library's
    kernels: how long they run on one thread after finding the machine busy (templates/
    graphc_kernels.h, gc_kernels_busy_hold; unset: the library's 0.2 s)."""
    env = os.environ.get("GRAPHC_BUSY_HOLD")
    if env is None or env == "":
        return
    try:
        seconds = float(env)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ArgumentError(f"GRAPHC_BUSY_HOLD={env!r} is not a number of seconds >= 0 "
                            "(0: never fall back to one thread on a busy machine)")
    lib.gc_kernels_busy_hold(seconds)


class _ThreadPlans(threading.local):
    """A model's per-thread state: the CallPlan of each C function (None until a call leaves
    one: read without a lookup that fails, as the keyword methods of fastcall.model_class do)
    and the workspaces (`ws`)."""
    forward = predict = value_and_grad = None


class LoadedModel:
    """A model's loaded C library and the calls of its functions on NumPy arrays (what
    CompiledModel, native/runtime.py, builds its public calls on)."""

    def __init__(self, csrc: CSource, built, threads: int, optimizer=None, functions=None):
        """functions: the C functions' records when csrc renders them only on demand (a
        native/fastload.py LazySource), else csrc.functions."""
        self.csrc, self.built, self.threads, self.optimizer = csrc, built, threads, optimizer
        self.graph: Graph = csrc.forward_graph
        self.name = csrc.name
        self.dtype = np.dtype(csrc.dtype)
        self.ffi, self.lib = built.ffi, built.lib
        busy_hold(self.lib)
        self.functions = {f.name: f for f in (csrc.functions if functions is None else functions)}
        self.wrt = list(csrc.grad_names)
        self._local = _ThreadPlans()
        self._cfuncs = {f: getattr(self.lib, f"{self.name}_{f}") for f in self.functions}
        self._ctype = "float" if self.dtype == np.float32 else "double"
        self._layouts = {f: self._result_layout(f) for f in ("forward", "predict", "value_and_grad")
                         if f in self.functions}
        self._results = {f: tuple(map(picker, layout)) for f, layout in self._layouts.items()}

    # ------------------------------------------------------------------ calling C
    def workspace(self, dims) -> np.ndarray:
        """This thread's workspace for the dims' values (the batch size n, or a tuple: n and the
        other run-time dims, in the C functions' order), allocated once per thread and values."""
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        cache = getattr(self._local, "ws", None)
        if cache is None:
            cache = self._local.ws = {}
        ws = cache.get(dims)
        if ws is None:
            size = getattr(self.lib, f"{self.name}_workspace_size")(*self._c_dims(dims))
            if size == 0:
                raise ShapeError(f"{self.name}: {describe_dims(dims, self.graph)} is invalid or its workspace "
                                 f"would overflow size_t", hint="use sizes >= 1 that fit in memory")
            if len(cache) > 8:
                cache.clear()
            ws = cache[dims] = allocate_workspace(self.name, size, dims)
        return ws

    def _c_dims(self, dims: tuple) -> tuple:
        """The dims' values as the C functions take them: one per symbolic dim (n alone without any)."""
        return dims[:max(1, len(self.graph.symbolic_dims))]

    def _pointer(self, arr: np.ndarray):
        return self.ffi.from_buffer(c_array_type(self._ctype, arr.dtype), arr, require_writable=False)

    def _out_spec(self, arg, dims) -> tuple[tuple, np.dtype]:
        shape = shape_at(arg.value.shape, self.graph, (dims,) if isinstance(dims, int) else dims)
        return shape, (self.dtype if arg.value.dtype == FLOAT else np.dtype(np.int32))

    def _out_array(self, arg, dims) -> np.ndarray:
        return np.empty(*self._out_spec(arg, dims))

    def call(self, fname: str, arrays: dict[str, Any]) -> tuple[np.ndarray, ...]:
        """Run C function `fname` on named arrays; return its outputs in C order (new arrays, or
        arrays of this thread's earlier calls that nothing else holds: calls.CallPlan).

        This thread's calls of `fname` keep a CallPlan (holding recent arrays): when it can be
        reused, no argument is checked beyond its identity, shape, strides and dtype. (C takes
        every input and param of the graph; were one left out, the plan would never match and
        every call would take the checked path.)"""
        plan = getattr(self._local, fname, None)
        if plan is None:
            return self._call_checked(fname, arrays)
        done = plan.fast(arrays)            # the same arrays as the plan's: straight to C
        if done is None:
            hit = plan.reuse(arrays)
            if hit is None:
                return self._call_checked(fname, arrays)
            again, head = hit
            if again is not plan:
                setattr(self._local, fname, again)
            plan = again
            done = again.run(self._cfuncs[fname], head)
        return self._outputs(fname, arrays, plan, done)

    def _outputs(self, fname: str, arrays: dict, plan: CallPlan, done: tuple) -> tuple[np.ndarray, ...]:
        """The outputs of a call through `plan` that returned done = (status, outputs), or the
        error its status means."""
        status, outs = done
        if status != 0:
            self._raise_status(status, fname, bind(self._graph_of(fname), arrays, self.dtype)[0], plan.dims)
        return outs

    def _graph_of(self, fname: str) -> Graph:
        """The graph whose inputs and params C function `fname` takes."""
        return self.csrc.predict_graph if fname == "predict" else self.graph

    def _call_checked(self, fname: str, arrays: dict[str, Any]) -> tuple[np.ndarray, ...]:
        """Check and convert every argument; leave a CallPlan when none needed converting."""
        graph = self._graph_of(fname)
        env, found = bind(graph, arrays, self.dtype)
        n = self._c_dims(dim_values(graph, found))     # the batch size n and the other run-time dims
        names, ins, specs = [], [], []
        for a in self.functions[fname].args:
            if a.role in ("input", "param", "param*", "state"):
                names.append(a.value.name)
                ins.append(as_c_array(a.cname, env[a.value.name]))
            else:
                specs.append(self._out_spec(a, n))
        plan = CallPlan(self.ffi, n, names, [c_array_type(self._ctype, a.dtype) for a in ins], ins,
                        self.ffi.from_buffer(self.workspace(n)), output_specs(self._ctype, specs),
                        cfunc=self._cfuncs[fname], **self._fast_results(fname, names, n))
        status, outs = plan.run(self._cfuncs[fname], plan.head)
        if status != 0:
            self._raise_status(status, fname, env, n)
        if len(arrays) == len(names) and all(map(operator.is_, ins, map(arrays.get, names))):
            setattr(self._local, fname, plan)     # every argument went to C as it was passed
        return outs

    def _raise_status(self, status: int, fname: str, env: dict, n):
        if status == self.lib.GRAPHC_ERR_LABEL:
            for name, label, bound in self.csrc_label_bounds(fname):
                check_labels(env[name], bound, f"argument {name!r}")
            raise ArgumentError(f"{self.name}_{fname}: an int32 label or id is out of range")
        if status == self.lib.GRAPHC_ERR_BATCH:
            if self.graph.symbolic_dims:        # past a bound of the model (a sequence longer than its table)
                values = (n,) if isinstance(n, int) else tuple(n)
                check_dim_bounds(self.graph, dict(zip(self.graph.symbolic_dims, values)))
            raise ShapeError(f"{self.name}_{fname}: {describe_dims(n, self.graph)} is invalid for this model")
        raise ExecutionError(f"{self.name}_{fname} returned status {status}")

    def csrc_label_bounds(self, fname: str):
        for cname, _count, bound in self.functions[fname].label_checks:
            a = next(a for a in self.functions[fname].args if a.cname == cname)
            yield a.value.name, cname, int(bound)

    # ------------------------------------------------------------------ the outputs of runtime's public calls
    def _fast_results(self, fname: str, names: list[str], dims) -> dict:
        """A plan's `groups` and `fail` for `fastpos` (CallPlan): forward's outputs by name,
        value_and_grad's (outputs, gradients); the error of a nonzero status (through a weak
        reference to the model: the plan is in the model's thread-local). Other functions:
        none (their fastpos is never called)."""
        layout = self._layouts.get(fname)
        if fname not in ("forward", "value_and_grad") or layout is None:
            return {}
        model, names = weakref.ref(self), tuple(names)

        def fail(status, arrays):
            m = model()
            m._raise_status(status, fname, bind(m._graph_of(fname), dict(zip(names, arrays)), m.dtype)[0], dims)
        return {"groups": layout[:1] if fname == "forward" else layout, "fail": fail}

    def _result_layout(self, fname: str):
        """Two lists of (name, index) pairs of the output list of `fname` (new arrays in C order):
        the graph's outputs by name, and the gradients by wrt name."""
        from graphc.backend.cprint import c_name
        where = {a.cname: i for i, a in enumerate(a for a in self.functions[fname].args
                                                  if a.role not in ("input", "param", "param*", "state"))}
        values = [(k, where[c_name(k)]) for k in self.graph.outputs if c_name(k) in where]
        grads = [(w, where[c_name(f"d_{w}")]) for w in self.wrt if c_name(f"d_{w}") in where]
        return values, grads
