"""Training in C: optimizers, NAME_train_step and NAME_fit, and the Python side of both.

In: the forward graph, its backward graph and an optimizer (codegen's `generate` calls
`add_train_functions`), then a loaded CompiledModel (runtime's `compile` calls `attach`).
Out: two more C functions in the model's source, and `train_state`, `train_step`, `fit`
and `load_state` on the model.

- NAME_train_step(n, inputs, params, optimizer state, outputs, workspace): the
  value_and_grad computation with every gradient in the workspace, then the update of
  each parameter in place (templates/kernels/optimizer.c.j2), all in one C call.
- NAME_fit(n_total, batch, dataset, order, params, state, losses, workspace): one epoch;
  each minibatch is gathered into the workspace and passed to NAME_train_step
  (templates/fit.c.j2).

Hyperparameters are compile-time constants of the C. Optimizer state (momentum buffers,
Adam's moments and step count) lives in caller-owned arrays: a `TrainState` in Python.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from graphc.errors import ArgumentError, DTypeError, GraphcError, ShapeError
from graphc.ir import FLOAT, INT, Graph, TensorType, Value

STATE_FORMAT = 1        # version of the .npz layout written by TrainState.save


class OptimizerError(GraphcError, ValueError):
    """An optimizer hyperparameter is out of range."""


def _number(owner: str, name: str, value: Any, low: float, high: float = math.inf,
            low_open: bool = False, high_open: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptimizerError(f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo = f"{'>' if low_open else '>='} {low:g}"
        hi = f" and {'<' if high_open else '<='} {high:g}" if math.isfinite(high) else ""
        raise OptimizerError(f"{owner}: {name}={value!r} is out of range; it must be {lo}{hi}",
                             hint="see torch.optim for the meaning of each hyperparameter")


@dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent as torch.optim.SGD (dampening 0, no Nesterov):
    g = dJ/dp + weight_decay p;  v = momentum v + g;  p -= lr v   (v = g without momentum)."""

    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0

    kind = "sgd"

    def __post_init__(self):
        _number("SGD", "lr", self.lr, 0.0, low_open=True)
        _number("SGD", "momentum", self.momentum, 0.0, 1.0, high_open=False)
        _number("SGD", "weight_decay", self.weight_decay, 0.0)

    def slots(self) -> tuple[str, ...]:
        """Per-parameter state buffers, each in the parameter's shape."""
        return ("momentum",) if self.momentum else ()

    def scalars(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class Adam:
    """Adam as torch.optim.Adam (L2 weight decay added to the gradient, not AdamW):
    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    kind = "adam"

    def __post_init__(self):
        _number("Adam", "lr", self.lr, 0.0, low_open=True)
        _number("Adam", "beta1", self.beta1, 0.0, 1.0)
        _number("Adam", "beta2", self.beta2, 0.0, 1.0)
        _number("Adam", "eps", self.eps, 0.0, low_open=True)
        _number("Adam", "weight_decay", self.weight_decay, 0.0)

    def slots(self) -> tuple[str, ...]:
        return ("m", "v")

    def scalars(self) -> tuple[str, ...]:
        return ("t",)       # the step count, int64


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def _describe(opt) -> str:
    return f"{type(opt).__name__}(" + ", ".join(f"{f.name}={getattr(opt, f.name)!r}" for f in fields(opt)) + ")"


def _check_optimizer(opt) -> None:
    if not isinstance(opt, (SGD, Adam)):
        raise GraphcError(f"optimizer must be graphc.SGD(...) or graphc.Adam(...), got {opt!r}",
                          hint="e.g. optimizer=graphc.Adam(lr=1e-3)")


# ====================================================================== C generation
@dataclass
class _TextStep:
    """A step of a C function that renders its own text (model.c.j2 prints st.text)."""
    family: str
    text: str
    ctx: dict
    defs: list
    uses: list


@dataclass
class TrainLayout:
    """What the Python side needs to call NAME_train_step and NAME_fit (kept on the CSource's
    train_step Function as `train_layout`)."""
    optimizer: Any
    wrt: list[str]                       # the params updated, in graph order
    step_args: list[tuple[str, str, str]]     # (role, name, C name) of train_step, in order
    state: dict[str, tuple[tuple, str]]  # state key ("m/W", "t") -> (shape, numpy dtype name)
    loss: str                            # the output name holding the loss (grad_of)
    outputs: list[tuple[str, str]]       # (output name, C name) of train_step
    out_types: dict[str, tuple[tuple, bool]]   # output name -> (shape, int32?)
    fit: bool                            # NAME_fit was generated
    fit_args: list[tuple[str, str, str]]
    batched: list[str]                   # inputs whose first dim is the batch dim


def _literal(x: float) -> str:
    return repr(float(x))


def _fresh(base: str, taken: set[str]) -> str:
    """A C identifier near `base` that no argument or local of the function uses. A name that
    starts with gc_ never collides with a spec name (c_name mangles those)."""
    from graphc.schedule import c_name
    cand, k = base, 1
    if cand in taken or c_name(cand) != cand:
        cand = f"gc_{base}"
        while cand in taken:
            k += 1
            cand = f"gc_{base}{k}"
    taken.add(cand)
    return cand


def _loss_output(graph: Graph, grad_of: str) -> str | None:
    """The output that is the loss: the one grad_of names, or one holding the value grad_of names."""
    if grad_of in graph.outputs:
        return grad_of
    target = graph.values.get(grad_of)
    for k, v in graph.outputs.items():
        if v is target:
            return k
    return None


def add_train_functions(em, graph: Graph, bwd: Graph, grad_of: str, wrt: list[str], optimizer) -> None:
    """Add NAME_train_step (and NAME_fit when every batched input has the batch dim first)."""
    from graphc.autodiff import grad
    from graphc.codegen import Arg, environment, output_args
    from graphc.passes.memory import Buffer, align, padd
    from graphc.schedule import c_name, c_poly, numel

    _check_optimizer(optimizer)
    params = [w for w in graph.params if w in wrt]
    if not params:
        raise GraphcError(f"compile: the optimizer has nothing to update: wrt={wrt} names no param of {graph.name}",
                          hint=f"the params are {', '.join(graph.params)}")
    loss_name, fwd = _loss_output(graph, grad_of), graph
    if loss_name is None:    # the loss is no output: train_step returns it as one ("loss", or its name)
        loss_name = "loss" if "loss" not in graph.values and "loss" not in graph.outputs else grad_of
        fwd, _ = graph.copy()
        fwd.output(loss_name, fwd.values[grad_of])
        bwd = grad(fwd, grad_of, params)
    elif params != list(wrt):
        bwd = grad(graph, grad_of, params)      # gradients of params only (inputs are not updated)

    # ---- train_step: value_and_grad's schedule, gradients in the workspace instead of caller buffers
    outs = output_args(fwd)
    grad_c = {w: c_name(f"d_{w}") for w in params}
    outs.update({grad_c[w]: ("grad", f"d_{w}") for w in params})
    doc = (f"one training step of {_describe(optimizer)}: the outputs, dJ/d{{{', '.join(params)}}} for "
           f"J = {grad_of} (in the workspace), then {', '.join(params)} updated in place")
    f = em.add_function("train_step", doc, bwd, outs, updated=set(params))
    inputs = [a for a in f.args if a.role == "input"]
    pargs = [a for a in f.args if a.role in ("param", "param*")]
    out_args = [a for a in f.args if a.role == "output"]
    grad_args = {a.cname: a for a in f.args if a.role == "grad"}

    # gradients: workspace blocks after the planned arena, alive for the whole function
    sched = f.sched
    top, n_steps = sched.arena, len(sched.steps)
    for w in params:
        a = grad_args[grad_c[w]]
        size = numel(a.value.shape)
        b = Buffer(a.cname, size, 0, n_steps, offset=top)
        sched.buffers[a.cname] = b
        top = padd(top, align(size))
    sched.arena = top

    # state arguments
    taken = {a.cname for a in f.args} | set(sched.buffers) | {"n", "workspace", "ws", "pack"}
    pvalue = {a.value.name: a for a in pargs}
    state_args: list[Arg] = []
    state_layout: dict[str, tuple[tuple, str]] = {}
    slot_c: dict[tuple[str, str], str] = {}
    slot_doc = {"momentum": "SGD momentum buffer v of", "m": "Adam first moment m of", "v": "Adam second moment v of"}
    for slot in optimizer.slots():
        for w in params:
            pa = pvalue[w]
            cname = _fresh(f"{pa.cname}_{slot}", taken)
            slot_c[(slot, w)] = cname
            state_args.append(Arg(cname, "state", pa.value, em.ctype, False,
                                  f"{pa.shape_doc}  {slot_doc[slot]} {w}, zeros at the start"))
            state_layout[f"{slot}/{w}"] = (tuple(pa.value.shape), em.dtype)
    t_c = None
    if "t" in optimizer.scalars():
        t_c = _fresh("adam_t", taken)
        tv = Value(graph, "t", TensorType((1,), FLOAT), None, "state")
        state_args.append(Arg(t_c, "state", tv, "int64_t", False, "[1] int64  Adam step count t, 0 at the start"))
        state_layout["t"] = ((1,), "int64")

    # the updates: one text step per parameter (plus Adam's bias corrections first)
    module = environment().get_template("kernels/optimizer.c.j2").module
    steps = []
    grad_values = [grad_args[grad_c[w]].value for w in params]
    if isinstance(optimizer, Adam):
        ctx = dict(t=t_c, lr=_literal(optimizer.lr), beta1=_literal(optimizer.beta1), beta2=_literal(optimizer.beta2))
        steps.append(_TextStep("optimizer", str(module.adam_begin(ctx)).strip("\n"), dict(refs=[t_c]), [], []))
    for w, gv in zip(params, grad_values):
        pa = pvalue[w]
        ctx = dict(comment=f"update {w} from d_{w}", param=pa.cname, grad=grad_c[w],
                   count=c_poly(numel(pa.value.shape)), lr=_literal(optimizer.lr),
                   wd=_literal(optimizer.weight_decay) if optimizer.weight_decay else None)
        if isinstance(optimizer, SGD):
            ctx.update(momentum=_literal(optimizer.momentum) if optimizer.momentum else None,
                       buf=slot_c.get(("momentum", w)))
            text = module.sgd(ctx)
        else:
            ctx.update(m=slot_c[("m", w)], v=slot_c[("v", w)], beta1=_literal(optimizer.beta1),
                       beta2=_literal(optimizer.beta2), one_minus_beta1=_literal(1.0 - optimizer.beta1),
                       one_minus_beta2=_literal(1.0 - optimizer.beta2), eps=_literal(optimizer.eps))
            text = module.adam(ctx)
        steps.append(_TextStep("optimizer", str(text).strip("\n"), dict(refs=[pa.cname]), [], [gv, pa.value]))
    f.extra_steps.extend(steps)
    # signature: inputs, params, optimizer state, outputs, workspace
    f.args = inputs + pargs + state_args + out_args

    step_args = [("input", a.value.name, a.cname) for a in inputs]
    step_args += [("param", a.value.name, a.cname) for a in pargs]
    step_args += [("state", k, a.cname) for k, a in zip(state_layout, state_args)]
    out_names = {c_name(k): k for k in fwd.outputs}
    outputs = [(out_names[a.cname], a.cname) for a in out_args]
    out_types = {k: (tuple(v.shape), v.dtype == INT) for k, v in fwd.outputs.items()}
    step_args += [("output", k, c) for k, c in outputs]

    # ---- fit: only when the batch dim exists and leads every input that has it
    sym = graph.symbolic_dims
    batched = [k for k, v in graph.inputs.items() if sym and sym[0] in v.shape]
    fit_ok = bool(sym) and all(graph.inputs[k].shape[0] == sym[0] and sym[0] not in graph.inputs[k].shape[1:]
                               for k in batched) and bool(batched)
    fit_args: list[tuple[str, str, str]] = []
    if fit_ok:
        fit_args = _add_fit(em, graph, f, inputs, pargs, state_args, state_layout, out_args, outputs,
                            loss_name, batched, taken)
    f.train_layout = TrainLayout(optimizer, params, step_args, state_layout, loss_name, outputs, out_types,
                                 fit_ok, fit_args, batched)


def _add_fit(em, graph, f, inputs, pargs, state_args, state_layout, out_args, outputs, loss_name, batched,
             taken) -> list[tuple[str, str, str]]:
    from graphc.codegen import environment
    from graphc.schedule import c_name, numel

    ctype = em.ctype
    names = {a.cname for a in f.args}
    fit_taken = set(names)
    n_total, batch, order, losses = (_fresh(x, fit_taken) for x in ("n_total", "batch", "order", "losses"))
    sym = graph.symbolic_dims[0]
    loss_c = c_name(loss_name)

    def row(v: Value) -> int:
        return int(np.prod([d for d in v.shape[1:]], dtype=np.int64)) if len(v.shape) > 1 else 1

    in_ctx = [dict(cname=a.cname, ctype=a.ctype, batched=a.value.name in batched, row=row(a.value)) for a in inputs]
    checks = {c: bound for c, _count, bound in f.label_checks}
    label_checks = [dict(cname=x["cname"], row=x["row"], bound=checks[x["cname"]])
                    for x in in_ctx if x["batched"] and x["cname"] in checks]
    staging = [dict(cname=x["cname"], ctype=x["ctype"], coeffs=[0, x["row"]],
                    doc=f"minibatch rows of {x['cname']}") for x in in_ctx if x["batched"]]
    for a in out_args:
        coeffs = list(numel(a.value.shape))
        staging.append(dict(cname=a.cname, ctype=a.ctype, coeffs=coeffs, doc=f"output {a.cname} of each step"))
    staged = {s["cname"] for s in staging}
    step_call = []
    for a in f.args:
        step_call.append(f"gc_s_{a.cname}" if a.cname in staged else a.cname)

    def doc(a) -> str:
        extra = "  int32" if a.ctype == "int32_t" else ""
        upd = "  (updated in place)" if a.role in ("param*", "state") else ""
        return f"{a.role:<7} {a.shape_doc}{extra}{upd}"

    sig = [f"long {n_total}", f"long {batch}"]
    args_doc = [dict(cname=n_total, doc="rows of the dataset, >= 1"),
                dict(cname=batch, doc="rows per minibatch, >= 1 (the last minibatch takes the rest)")]
    fit_args: list[tuple[str, str, str]] = []
    for a, x in zip(inputs, in_ctx):
        sig.append(f"const {a.ctype} *{a.cname}")
        if x["batched"]:
            shape = "[" + ", ".join([n_total] + [graph.dim_label(d) for d in a.value.shape[1:]]) + "]"
            args_doc.append(dict(cname=a.cname, doc=f"dataset {shape}{'  int32' if a.ctype == 'int32_t' else ''}, all rows"))
        else:
            args_doc.append(dict(cname=a.cname, doc="input   " + a.shape_doc + "  (the same for every minibatch)"))
        fit_args.append(("input", a.value.name, a.cname))
    sig.append(f"const int64_t *{order}")
    args_doc.append(dict(cname=order, doc=f"[{n_total}] int64  a permutation of 0 .. {n_total}-1: the rows in the order trained"))
    fit_args.append(("order", "order", order))
    for a in pargs + state_args:
        sig.append(f"{'const ' if a.const else ''}{a.ctype} *{a.cname}")
        args_doc.append(dict(cname=a.cname, doc=doc(a)))
    fit_args += [("param", a.value.name, a.cname) for a in pargs]
    fit_args += [("state", k, a.cname) for k, a in zip(state_layout, state_args)]
    sig.append(f"{ctype} *{losses}")
    args_doc.append(dict(cname=losses, doc=f"[ceil({n_total} / {batch})]  out: the loss {loss_name} of each minibatch"))
    fit_args.append(("losses", "losses", losses))
    sig.append("void *workspace")
    args_doc.append(dict(cname="workspace", doc=f"{em.graph.name}_fit_workspace_size({batch}) bytes, 64-byte aligned"))
    signature = ", ".join(sig)
    null_checks = " || ".join(["!workspace"] + [f"!{a.cname}" for a in inputs + pargs + state_args] + [f"!{order}", f"!{losses}"])
    ctx = dict(name=graph.name, ctype=ctype, signature=signature, args=args_doc, inputs=in_ctx,
               label_checks=label_checks, staging=staging, step_args=step_call, loss=loss_c, order=order,
               losses=losses, n_total=n_total, batch=batch, batch_dim=sym, null_checks=null_checks)
    tpl = environment().get_template("fit.c.j2")
    em.extras.append(dict(source=tpl.render(ctx, part="source"), header=tpl.render(ctx, part="header"),
                          cdef=tpl.render(ctx, part="cdef")))
    return fit_args


# ====================================================================== Python side
class TrainState:
    """Parameters (updated in place by C) and optimizer state of one model being trained.

    `params` and `buffers` are read-only mappings of NumPy arrays in the model's dtype
    (Adam's step count `t` is int64): change values in place (state.params["W"][...] = 0),
    never rebind them, so the pointers cached for the C calls stay valid."""

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
        self._plan = None          # the last train_step's minibatch (runtime.CallPlan)

    @property
    def step(self) -> int:
        """Optimizer steps taken (Adam's t; counted in Python for SGD)."""
        return int(self._buffers["t"][0]) if "t" in self._buffers else self._sgd_steps

    _sgd_steps = 0

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in self._params.items())
        return f"<TrainState {self.model_name} {self.dtype} {_describe(self.optimizer)}; {shapes}; step {self.step}>"

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
        from graphc.runtime import picker
        self._result = picker([(name, i) for i, (name, _) in enumerate(outs)])
        self._counts_steps = "t" not in lay.state      # SGD: Python counts the steps (Adam's t is in C)
        sym = self.graph.symbolic_dims
        self._sym = sym[0] if sym else None

    def _out_spec(self, name: str):
        shape, is_int = self.layout.out_types[name]
        return shape, (np.dtype(np.int32) if is_int else self.dtype)

    def _ptr(self, arr: np.ndarray):
        from graphc.runtime import c_array_type
        return self.ffi.from_buffer(c_array_type(self._ctype, arr.dtype), arr)

    # ------------------------------------------------------------------ state
    def train_state(self, params: Mapping[str, Any]) -> TrainState:
        """Copy `params` (name -> array) into C-contiguous arrays of the model dtype, with zeroed
        optimizer state. Every param of the graph must be given, in its declared shape."""
        g = self.graph
        if not isinstance(params, Mapping):
            raise ArgumentError(f"train_state takes a dict of parameter arrays, got {type(params).__name__}",
                                hint="e.g. m.train_state(graphc.init_params(graph, seed=0))")
        extra = [k for k in params if k not in g.params]
        if extra:
            raise ArgumentError(f"train_state: {extra[0]!r} is not a param of {g.name}",
                                hint=f"the params are {', '.join(g.params)}")
        missing = [k for k in g.params if k not in params]
        if missing:
            raise ArgumentError(f"train_state: param {missing[0]!r} (shape {g.format_shape(g.params[missing[0]].shape)}) "
                                "is missing", hint="graphc.init_params(graph) makes them all")
        arrays = {}
        for k, v in g.params.items():
            arr = np.asarray(params[k])
            if arr.dtype.kind not in "fiub":     # float64 init values are cast: the state is a copy
                raise DTypeError(f"train_state: param {k!r} has dtype {arr.dtype}, expected real numbers")
            if arr.shape != tuple(v.shape):
                raise ShapeError(f"train_state: param {k!r} has shape {arr.shape}, expected {g.format_shape(v.shape)}")
            arrays[k] = np.array(arr, dtype=self.dtype, order="C", copy=True)
        buffers = {key: np.zeros(shape, dtype=dt) for key, (shape, dt) in self.layout.state.items()}
        return TrainState(self.model.name, self.dtype, self.optimizer, arrays, buffers)

    def load_state(self, path: str | Path) -> TrainState:
        """A TrainState saved by TrainState.save; checks the model's params, shapes and optimizer."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                data = {k: z[k] for k in z.files if k != "__meta__"}
        except (OSError, KeyError, ValueError) as e:
            raise ArgumentError(f"load_state: {path} is not a graphc training state ({e})") from None
        kind = meta.get("optimizer")
        if kind != self.optimizer.kind:
            raise ArgumentError(f"load_state: {path} holds {kind} state, but {self.model.name} was compiled with "
                                f"{_describe(self.optimizer)}", hint="compile with the optimizer the state was saved with")
        params = {k[len("param."):]: v for k, v in data.items() if k.startswith("param.")}
        state = self.train_state(params)
        for key, buf in state._buffers.items():
            stored = data.get(f"state.{key.replace('/', '.')}")
            if stored is None:
                raise ArgumentError(f"load_state: {path} lacks optimizer state {key!r}")
            if stored.shape != buf.shape:
                raise ShapeError(f"load_state: optimizer state {key!r} in {path} has shape {stored.shape}, "
                                 f"expected {buf.shape}")
            buf[...] = stored
        state._sgd_steps = int(meta.get("sgd_steps", 0))
        return state

    def _bind(self, state: TrainState) -> None:
        """Cache the pointers of a state's long-lived arrays in the order the C functions take them."""
        if not isinstance(state, TrainState):
            raise ArgumentError(f"expected a TrainState (from m.train_state(params)), got {type(state).__name__}")
        if state.optimizer.kind != self.optimizer.kind or state.dtype != self.dtype:
            raise ArgumentError(f"this TrainState is for {_describe(state.optimizer)} in {state.dtype}, "
                                f"but {self.model.name} trains with {_describe(self.optimizer)} in {self.dtype}")
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
            from graphc.runtime import aligned_empty
            ws = aligned_empty(size)
            hit = state._ws[key] = (ws, self.ffi.from_buffer(ws))
        return hit[1]

    # ------------------------------------------------------------------ one step
    def train_step(self, state: TrainState, **batch) -> dict[str, np.ndarray]:
        """One optimizer step on one minibatch, in one C call; returns the forward outputs (new arrays).

        The state remembers the last minibatch's arrays and their pointers (a CallPlan): when the
        same arrays come back, or new ones of the same shapes and dtypes, nothing else is checked."""
        try:
            plan = state._plan if state._trainer is self else None
        except AttributeError:
            plan = None
        again = plan.reuse(batch) if plan is not None else None
        if again is None:
            return self._train_step_checked(state, batch)
        if again is not plan:
            state._plan = again
        outs = list(map(np.empty, again.out_shapes, again.out_dtypes))
        status = self._cstep(*again.head, *map(self.ffi.from_buffer, again.out_ctypes, outs), again.ws)
        if status != 0:
            self._fail(status, "train_step", batch, again.n)
        if self._counts_steps:
            state._sgd_steps += 1
        return self._result(outs)

    def _train_step_checked(self, state: TrainState, batch: dict) -> dict[str, np.ndarray]:
        """Check and convert the minibatch; leave a CallPlan on the state when nothing was converted."""
        from graphc.arguments import bind
        from graphc.runtime import CallPlan, as_c_array, c_array_type, output_specs
        if getattr(state, "_trainer", None) is not self:
            self._bind(state)
        env, dims = bind(self.graph, batch, self.dtype, need_params=False)
        n = self.model._batch(dims)
        arrays = [as_c_array(k, env[k]) for k in self._inputs]
        specs = [(tuple(n if isinstance(d, str) else d for d in shape), dt) for _, (shape, dt) in self._outs]
        plan = CallPlan(self.ffi, n, self._inputs, [c_array_type(self._ctype, a.dtype) for a in arrays], arrays,
                        self._workspace(state, n), output_specs(self._ctype, specs), tuple(state._step_ptrs))
        outs = list(map(np.empty, plan.out_shapes, plan.out_dtypes))
        status = self._cstep(*plan.head, *map(self.ffi.from_buffer, plan.out_ctypes, outs), plan.ws)
        if status != 0:
            self._fail(status, "train_step", env, n)
        if self._counts_steps:
            state._sgd_steps += 1
        if len(batch) == len(arrays) and all(arr is batch.get(k) for k, arr in zip(self._inputs, arrays)):
            state._plan = plan          # every input went to C as it was passed
        return self._result(outs)

    def _fail(self, status: int, fname: str, arrays, n: int):
        from graphc.arguments import bind
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
        from graphc.errors import ExecutionError
        raise ExecutionError(f"{self.model.name}_{fname} returned status {status}")

    # ------------------------------------------------------------------ epochs
    def fit(self, state: TrainState, batch_size: int = 64, epochs: int = 1, seed: int | None = 0,
            progress: bool | None | Callable = None, **data) -> list[float]:
        """Train `epochs` epochs of minibatches of `batch_size` rows (the last minibatch of an epoch
        takes the remaining rows), one C call per epoch, rows shuffled by
        np.random.default_rng(seed) (a new permutation each epoch). Returns each epoch's mean
        loss (the minibatch losses weighted by their rows). progress: None shows a bar on stderr
        when it is a terminal, False never; a callable is called as progress(epoch, mean_loss)."""
        from graphc.arguments import bind
        from graphc.runtime import as_c_array
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
                scheme: str | Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """Initial values of every param of `graph` (a Graph, a spec path or a CompiledModel) as
    float64 arrays (train_state casts them), from np.random.default_rng(seed), params drawn
    in graph order.

    Schemes: "xavier" (Glorot uniform, U(+-sqrt(6/(fan_in+fan_out)))), "he" (Kaiming normal,
    N(0, 2/fan_in)), "normal" (N(0, 0.1^2)), "zeros"; fan_in is the last dim of a [out, in]
    matrix. Each param's scheme: scheme[name] when scheme is a dict naming it; else `scheme`
    when it is a string and the param has 2+ dims; else the spec's `init = ...`; else zeros
    for biases (fewer than 2 dims) and xavier for matrices."""
    if hasattr(graph, "graph") and isinstance(getattr(graph, "graph"), Graph):
        graph = graph.graph
    if not isinstance(graph, Graph):
        from graphc.spec import load
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
        out[name] = np.asarray(_init_one(rng, s, shape), dtype=np.float64)
    return out


__all__ = ["SGD", "Adam", "OptimizerError", "TrainState", "Trainer", "init_params", "add_train_functions", "attach"]
