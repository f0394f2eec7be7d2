"""Stage 7: CompiledModel, NumPy in and NumPy out through the generated C, and graphc.compile.

In: the rendered C (backend/codegen.py) and its loaded library (native/build.py). Out: the
model's public calls (forward, predict, value_and_grad, generate), which check arguments, pass
arrays to C without copying when they already fit, and raise clear errors for C status codes;
a model compiled with an optimizer has a `trainer` (native/training.py) that its training
calls delegate to. It never re-reads the spec or re-derives a shape: both come from the IR
the C was made from.

How a call reaches C (a CallPlan per thread and function, the checked path, workspaces, the
errors of status codes) is CompiledModel's base class, native/loaded.py's LoadedModel. A model
whose argument names can be Python parameters takes on a subclass whose forward and
value_and_grad name them (fastcall.model_class): their arguments reach the plan
positionally, with no dict copied or looked up.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from graphc.native.calls import (CallPlan, aligned_empty, allocate_workspace, as_c_array,  # noqa: F401
                                  batch_rows, c_array_type, describe_dims, dim_values, output_specs, picker,
                                  shape_at)
from graphc.native.loaded import LoadedModel, busy_hold  # noqa: F401
from graphc.native.train_state import TrainState
from graphc.native.training import Trainer
from graphc.core.errors import ArgumentError, GraphcError
from graphc.core.ir import Graph
from graphc.autodiff.modes import has_modes

if TYPE_CHECKING:           # imported where used: a cached model loads without the backend (fastload.py)
    from graphc.backend.codegen import CSource

def default_threads() -> int:
    env = os.environ.get("GRAPHC_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise GraphcError(f"GRAPHC_NUM_THREADS={env!r} is not an integer") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class CompiledModel(LoadedModel):
    """A model compiled to C and loaded: forward, value_and_grad, export (and training).

    `trainer` is the model's Trainer (native/training.py) when it was compiled with an
    optimizer, else None; train_state, train_step, fit and load_state delegate to it.
    Calling the C functions (plans, workspaces, status codes) is LoadedModel's (native/loaded.py)."""

    def __init__(self, csrc: CSource, built, threads: int, optimizer=None, functions=None):
        """functions: the C functions' records when csrc renders them only on demand (a
        native/fastload.py LazySource), else csrc.functions."""
        super().__init__(csrc, built, threads, optimizer, functions)
        predict = csrc.predict_graph
        self._predict_inputs = frozenset(predict.inputs) if predict is not None else None
        self._n_arguments = len(self.graph.inputs) + len(self.graph.params)
        self._modes = predict is not None and has_modes(self.graph)
        # last: a Trainer reads the attributes above (and keeps no reference to the model)
        self.trainer: Trainer | None = Trainer(self) if "train_step" in self.functions else None
        fast = self._keyword_class()
        if fast is not None:
            self.__class__ = fast

    def __repr__(self) -> str:
        return (f"<CompiledModel {self.name} {self.dtype} ({', '.join(self.functions)}); "
                f"{'cached' if self.built.cached else 'built'} in {self.built.directory}>")

    @property
    def isa(self) -> str:
        """The instruction set the kernel library's GEMMs run on in this process: "avx512", "avx2"
        or "portable" (what gc_kernels_isa() says: the CPU's best, capped by compile(isa=...))."""
        from graphc.native.isa import NAME
        return NAME[int(self.lib.gc_kernels_isa())]

    # ------------------------------------------------------------------ the public calls
    def forward(self, **arrays) -> dict[str, np.ndarray]:
        """The graph's outputs by name, each a new array. Labels and targets may be left out:
        then the outputs that need none of them are returned (`probs`, not the loss), computed by
        the C function NAME_predict. (Each thread keeps references to its recent arguments, to
        pass them on without checks when they come back.)"""
        return self._forward(arrays)

    def _forward(self, arrays: dict, fast: bool = True) -> dict[str, np.ndarray]:
        """forward's work; fast=False: this thread's plan already said these are not its arrays."""
        plan = getattr(self._local, "forward", None) if fast else None
        if plan is not None:        # the fast path, inline: this thread's last forward arrays again
            done = plan.fast(arrays)
            if done is not None:
                status, outs = done
                if status != 0:
                    self._outputs("forward", arrays, plan, done)      # raises the error of the status
                return self._results["forward"][0](outs)
        if self._predict_inputs is not None and len(arrays) < self._n_arguments:
            missing = [k for k in self.graph.inputs if k not in arrays]
            if missing and all(k not in self._predict_inputs for k in missing):
                if self._modes:
                    raise ArgumentError(f"{self.name}.forward: {', '.join(missing)} not given; forward is the "
                                        f"training-mode pass (batch statistics, dropout) and takes every input",
                                        hint=f"m.predict({', '.join(sorted(self._predict_inputs))}, params...) runs "
                                             f"inference (running statistics, no dropout)")
                return self._results["predict"][0](self.call("predict", arrays))
        return self._results["forward"][0](self.call("forward", arrays))

    def predict(self, **arrays) -> dict[str, np.ndarray]:
        """Inference: the outputs that need no labels or targets, by the C function NAME_predict,
        with batch_norm by its running statistics and dropout the identity. Inputs only the other
        outputs need (labels) may be given and are left out. A model with neither such inputs
        nor such ops predicts what forward computes."""
        if "predict" not in self.functions:
            return self.forward(**arrays)
        arrays = {k: v for k, v in arrays.items() if k not in self.graph.inputs or k in self._predict_inputs}
        return self._results["predict"][0](self.call("predict", arrays))

    def generate(self, params: dict, prompt, count: int, temperature: float = 1.0, seed: int = 0,
                 context: int | None = None) -> np.ndarray:
        """A language model's next `count` token ids after `prompt` (int ids), sampled one at a time
        by the C's NAME_generate (the spec's [generate]): each from softmax(logits at the last
        position / temperature) on the last `context` tokens (default: the model's sequence length or
        its positional table), keyed by (seed, position): the same arguments give the same tokens,
        here, in NAME_generate called from C, and in graphc.native.generate.generate_reference.
        temperature <= 0 takes the most likely token."""
        from graphc.native.generate import generate
        return generate(self, params, prompt, count, temperature, seed, context)

    def value_and_grad(self, **arrays) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(outputs, gradients); gradients are keyed by the wrt names, each in its parameter's shape."""
        return self._value_and_grad(arrays)

    def _value_and_grad(self, arrays: dict, fast: bool = True):
        """value_and_grad's work; fast=False: this thread's plan already said these are not its arrays."""
        if "value_and_grad" not in self.functions:
            raise GraphcError(f"{self.name} was compiled without gradients",
                              hint="pass grad_of= and wrt= to graphc.compile")
        plan = getattr(self._local, "value_and_grad", None) if fast else None
        done = plan.fast(arrays) if plan is not None else None   # the fast path, inline
        if done is None:
            outs = self.call("value_and_grad", arrays)
        else:
            status, outs = done
            if status != 0:
                self._outputs("value_and_grad", arrays, plan, done)     # raises the error of the status
        values, grads = self._results["value_and_grad"]
        return values(outs), grads(outs)

    def _keyword_class(self) -> type | None:
        """The class this model takes on (fastcall.model_class): CompiledModel with forward and
        value_and_grad taking the model's argument names as keyword parameters; None when they
        cannot be Python parameter names, or this is not a plain CompiledModel with its own
        forward and value_and_grad (a subclass or a patched method keeps what it defines)."""
        from graphc.native.fastcall import keyword_names, model_class
        if type(self) is not CompiledModel or (CompiledModel.forward, CompiledModel.value_and_grad) != _METHODS:
            return None
        signatures = {f: tuple(a.value.name for a in self.functions[f].args
                               if a.role in ("input", "param", "param*", "state"))
                      for f in ("forward", "value_and_grad") if f in self.functions}
        if not all(map(keyword_names, signatures.values())):
            return None
        return model_class(CompiledModel, signatures)

    def memory_plan(self, n: int = 64) -> str:
        """The planned workspace of each C function: buffers, offsets, lifetimes, peak bytes at batch n
        (and every other run-time dim at n too)."""
        from graphc.backend.pipeline import memory_table
        from graphc.backend.sizes import Poly
        n = n if self.graph.symbolic_dims else 1      # a model without a batch dim runs at n = 1 only
        args = ", ".join([str(n)] * max(1, len(self.graph.symbolic_dims)))
        ws = getattr(self.lib, f"{self.name}_workspace_size")(*[n] * max(1, len(self.graph.symbolic_dims)))
        arena, pack, total = self.csrc.workspace_parts(n, self.threads)
        at = "n" if len(self.graph.symbolic_dims) < 2 else "every run-time dim"
        parts = [f"workspace of {self.name} at {at}={n}: {ws} bytes = arena {arena} + GEMM packing {pack} + 64 "
                 f"(alignment slack): {self.name}_workspace_size({args}), the header's "
                 f"{self.name}_WORKSPACE_BYTES({args}) with GC_MAX_THREADS={self.threads}"]
        if ws != total:    # the C and codegen's sizes disagree: a bug, shown rather than hidden
            parts.append(f"  (codegen computed {total} bytes: they should agree)")
        for f in self.functions.values():
            a = Poly.of(f.sched.arena)
            linear = len(a.dims) == 1 and all(len(m) <= 1 for m, _ in a.terms)
            per_row = a.coeff(a.dims) if linear and self.graph.symbolic_dims[:1] == list(a.dims) else None
            head = f"{f.name}: {per_row * self.dtype.itemsize} bytes per batch row" if per_row is not None else f.name
            parts.append(head + "\n" + memory_table(f.sched, n, self.dtype.itemsize, self.graph))
        return "\n".join(parts)

    # ------------------------------------------------------------------ training (native/training.py)
    # Each call delegates to self.trainer; on a model compiled without an optimizer (trainer
    # None) it raises GraphcError saying how to get one.
    def _no_trainer(self, call: str) -> GraphcError:
        return GraphcError(f"{call}: {self.name} was compiled without an optimizer, so it cannot train",
                           hint="pass optimizer= to graphc.compile, e.g. graphc.compile(..., "
                                "optimizer=graphc.Adam(lr=1e-3)) or optimizer=graphc.SGD(lr=0.1)")

    def train_state(self, params) -> TrainState:
        """Params (copied, updated in place by C) and zeroed optimizer state: a TrainState."""
        if self.trainer is None:
            raise self._no_trainer("train_state")
        return self.trainer.train_state(params)

    def train_step(self, state: TrainState, comm=None, **batch) -> dict[str, np.ndarray]:
        """One optimizer step on one minibatch in one C call; returns the outputs. comm (an mpi4py
        communicator): this rank's shard of a data-parallel step (native/distributed.py)."""
        trainer = self.trainer
        if trainer is None:
            raise self._no_trainer("train_step")
        if comm is not None:
            from graphc.native import distributed
            return distributed.train_step(self, state, comm, batch, compile)
        return trainer.train_step(state, batch)

    def accumulate(self, state: TrainState, **batch) -> dict[str, np.ndarray]:
        """One micro-batch of gradient accumulation in one C call: its outputs, and its gradients
        added to the state's (weighted by rows); m.apply(state) then makes the optimizer step.
        Needs an optimizer compiled with accumulate > 1 (graphc.AdamW(..., accumulate=4))."""
        if self.trainer is None:
            raise self._no_trainer("accumulate")
        return self.trainer.accumulate(state, batch)

    def apply(self, state: TrainState) -> dict[str, np.ndarray]:
        """One optimizer step from the gradients accumulated since the last: the same update as one
        train_step on the micro-batches concatenated. Returns {"grad_norm": ...} when clipping."""
        if self.trainer is None:
            raise self._no_trainer("apply")
        return self.trainer.apply(state)

    def fit(self, state: TrainState, batch_size=64, epochs=1, seed=0, progress=None, initial_epoch=0,
            stop_on_nonfinite=False, comm=None, **data) -> list[float]:
        """Shuffled minibatch training, one C call per epoch; returns the per-epoch mean losses (the
        optimizer's schedule, clipping and accumulation run in that call).
        initial_epoch resumes a fit that stopped (Ctrl-C raises FitInterrupted, saying where);
        stop_on_nonfinite raises NonFiniteError at the first step with a NaN or an infinity,
        with the state as it was before that step (Trainer.fit says more). comm (an mpi4py
        communicator): data-parallel epochs, each rank passing its shard (native/distributed.py)."""
        if self.trainer is None:
            raise self._no_trainer("fit")
        if comm is not None:         # data-parallel over MPI: a train_step(comm=) per global minibatch
            from graphc.native import distributed
            return distributed.fit(self, state, comm, batch_size, epochs, seed, data, compile)
        return self.trainer.fit(state, batch_size=batch_size, epochs=epochs, seed=seed, progress=progress,
                                initial_epoch=initial_epoch, stop_on_nonfinite=stop_on_nonfinite, **data)

    def load_state(self, path) -> TrainState:
        """A TrainState saved with state.save(path) (.npz), or a checkpoint (save_checkpoint)."""
        if self.trainer is None:
            raise self._no_trainer("load_state")
        from graphc.native import checkpoint
        if checkpoint.is_checkpoint(path):
            return checkpoint.load(self, path)
        return self.trainer.load_state(path)

    def save_checkpoint(self, state: TrainState, path) -> Path:
        """Write the state's params, optimizer state and step count as the binary checkpoint that
        the emitted NAME_checkpoint_read reads (its layout: NAME_checkpoint.h, native/checkpoint.py)."""
        if self.trainer is None:
            raise self._no_trainer("save_checkpoint")
        from graphc.native import checkpoint
        return checkpoint.save(self, state, path)

    def load_checkpoint(self, path) -> TrainState:
        """A new TrainState from a checkpoint that save_checkpoint or the emitted
        NAME_checkpoint_write wrote; ArgumentError when it is another model's, truncated or corrupted."""
        if self.trainer is None:
            raise self._no_trainer("load_checkpoint")
        from graphc.native import checkpoint
        return checkpoint.load(self, path)

    # ------------------------------------------------------------------ files
    @property
    def source(self) -> str:
        return self.csrc.source

    @property
    def header(self) -> str:
        return self.csrc.header

    def export(self, directory: str | os.PathLike, standalone: bool = True, params=None, isa: str = "auto") -> list[Path]:
        """Write NAME.c and NAME.h (portable: no -march=native needed). standalone adds an
        example main.c and a Makefile; otherwise the shared library is copied beside them.
        params (e.g. state.params after training) adds NAME_params.c/.h: the values as const arrays.
        isa: the Makefile's default ISA (make ISA=avx2 ...; native/isa.py)."""
        from graphc.native.export import export
        return export(self, Path(directory), standalone, params, isa=isa)


_METHODS = (CompiledModel.forward, CompiledModel.value_and_grad)   # as defined here (see _keyword_class)


def gradient_request(graph: Graph, grad_of: str | None, wrt, optimizer) -> tuple[str | None, list[str] | None]:
    """(grad_of, wrt) as codegen takes them from compile's arguments: the spec's [grad] when
    neither is given, every trainable param when only grad_of is."""
    if wrt is None and grad_of is None and graph.grad_spec:
        grad_of, wrt = graph.grad_spec
    elif wrt is not None and grad_of is None:
        if graph.grad_spec:
            grad_of = graph.grad_spec[0]
        else:
            raise GraphcError("compile: wrt is given but grad_of is not", hint="name the scalar loss: grad_of='loss'")
    elif grad_of is not None and wrt is None:
        wrt = graph.trainable()
    if optimizer is not None and not wrt:
        raise GraphcError("compile: an optimizer needs gradients", hint="pass grad_of= and wrt=")
    return grad_of, (list(wrt) if wrt else None)


def render(graph: Graph, grad_of, wrt, dtype: str, threads: int, optimizer):
    """The model's C (backend/codegen.py's CSource) for compile's arguments."""
    from graphc.backend.codegen import generate
    return generate(graph, *gradient_request(graph, grad_of, wrt, optimizer), dtype=dtype, threads=threads,
                    optimizer=optimizer)


def compile(graph_or_spec: Graph | str | os.PathLike, grad_of: str | None = None, wrt: list[str] | None = None,
            dtype: str = "float32", optimizer: Any = None, threads: int | None = None, native: bool = True,
            cache_dir: str | os.PathLike | None = None, isa: str | None = None) -> CompiledModel:
    """Compile a graph (or a spec path) to C, build it (cached) and load it. isa: the instruction
    set of the GEMMs, "auto" (the best the CPU has), "avx512", "avx2" or "portable"; None reads
    $GRAPHC_ISA (native/isa.py). m.isa says which one runs."""
    from graphc.native.isa import resolve as resolve_isa
    isa = resolve_isa(isa)
    if isinstance(dtype, type) or isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype).name
    threads = default_threads() if threads is None else int(threads)
    recipe = None
    if not isinstance(graph_or_spec, Graph):    # a spec compiled before loads without rendering C
        from graphc.native.fastload import Recipe
        recipe = Recipe.of(graph_or_spec, grad_of, wrt, dtype, optimizer, threads, native, isa, cache_dir)
        hit = recipe.load(lambda g: render(g, grad_of, wrt, dtype, threads, optimizer)) if recipe is not None else None
        if hit is not None:
            source, built = hit
            return CompiledModel(source, built, threads, optimizer, functions=source.light_functions)
    from graphc.native.build import build
    from graphc.frontend.spec import load
    if isinstance(graph_or_spec, Graph):
        graph = graph_or_spec
    else:                     # the text the recipe's key was made of, when it read the file
        graph = recipe.graph() if recipe is not None else load(graph_or_spec)
    csrc = render(graph, grad_of, wrt, dtype, threads, optimizer)
    # the thread cap is the C's compile-time GC_MAX_THREADS (the header's default is 1)
    built = build(graph.name, csrc.source, csrc.header, csrc.cdef, kernels=csrc.kernels, native=native,
                  isa=isa, defines=[f"-DGC_MAX_THREADS={threads}"], cache_dir=cache_dir)
    model = CompiledModel(csrc, built, threads, optimizer)
    if recipe is not None:
        recipe.save(model)
    return model
