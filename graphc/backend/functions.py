"""The C functions of a model: their arguments (with roles) and their schedules.

In: names, roles and IR values of the arguments; a Schedule. Out: what the templates print
for a function's signature, entry checks and workspace buffers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphc.backend.cprint import c_any_null, c_long, c_name, c_param, c_poly, c_signature
from graphc.backend.kernels import PACK_USERS, Kernel, all_records
from graphc.backend.schedule import Schedule
from graphc.backend.sizes import peval
from graphc.core.ir import Graph, Value


@dataclass
class Arg:
    cname: str
    role: str            # input, param, output, grad, param* (updated), state
    value: Value | None
    ctype: str
    const: bool
    shape_doc: str


@dataclass
class TrainLayout:
    """What the Python side (native/training.py's Trainer) needs to call NAME_train_step and
    NAME_fit: made by backend/train_codegen.py, kept as the train_step Function's `train_layout`."""
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
    hparams: tuple = ()                  # the fields of the NAME_hparams struct, in order
    hparams_type: str = ""               # its C type name
    hparams_ints: tuple = ()             # those of them that are int64_t (step counts)
    grad_norm: str | None = None         # the output of train_step (and apply) holding the clipped norm
    accumulate_args: list = field(default_factory=list)   # (role, name, C name) of NAME_accumulate, in order
    apply_args: list = field(default_factory=list)        # ... of NAME_apply


@dataclass
class Function:
    name: str            # forward, value_and_grad, train_step, ...
    doc: str
    banner: str
    args: list[Arg]
    sched: Schedule
    train_layout: TrainLayout | None = None     # train_step only: how Python calls it (and NAME_fit)
    dim_text: dict = field(default_factory=dict)   # dim size -> its spec name, where one dim has it
    prologue: tuple = ()     # records run first, after the checks (a train step's RecipeBegin)
    dim_args: tuple = ("n",)    # the C arguments of the symbolic dims (codegen.c_dims), first

    @property
    def params(self) -> list[str]:
        return ([c_long(d) for d in self.dim_args] + [c_param(a.ctype, a.cname, a.const) for a in self.args]
                + ["void *workspace"])

    @property
    def signature(self) -> str:
        return c_signature(self.params)

    @property
    def steps(self) -> list[Kernel]:
        return self.sched.steps

    @property
    def uses_pack(self) -> bool:
        return any(isinstance(s, PACK_USERS) for s in all_records(self.steps))

    @property
    def buffers(self):
        """Each workspace buffer: name, offset, and a comment with its shape and the buffers
        whose memory it reuses (the planner put them there because none is read after it is
        first written)."""
        bufs = list(self.sched.buffers.values())
        out = []
        for b in bufs:
            doc = "[" + ", ".join(d if isinstance(d, str) else self.dim_text.get(d, str(d))
                                  for d in b.shape) + "]" if b.shape else "[1]"
            before = [o.name for o in bufs if o is not b and o.last < b.first and _overlap(o, b)]
            if before:
                doc += (f", over {', '.join(before)} ({'each' if len(before) > 1 else 'it is'} read for the "
                        f"last time before {b.name} is written)")
            between = [o.name for o in bufs if o is not b and _overlap(o, b)
                       and any(g0 <= b.first and b.last <= g1 for g0, g1 in o.gaps)]
            if between:
                doc += (f", in the gap of {', '.join(between)} ({'each is' if len(between) > 1 else 'it is'} "
                        f"computed again later rather than kept: nothing in it meanwhile)")
            out.append(dict(name=b.name, offset=c_poly(b.offset), size=c_poly(b.size), doc=doc))
        return out

    @property
    def checked(self) -> list[str]:
        """The pointer arguments that must not be NULL (the hyperparameters may be: the defaults)."""
        return [a.cname for a in self.args if a.role != "hparams"]

    @property
    def hparams_arg(self) -> str | None:
        return next((a.cname for a in self.args if a.role == "hparams"), None)

    @property
    def null_checks(self) -> str:
        return c_any_null(["workspace"] + [a.cname for a in self.args])

    @property
    def label_checks(self):
        return self.sched.label_checks

    @property
    def unused(self) -> list[str]:
        used = {id(v) for s in self.steps for v in s.uses + s.defs}
        return [a.cname for a in self.args if a.role in ("input", "param") and id(a.value) not in used
                and a.cname not in {c[0] for c in self.label_checks}]


def _overlap(a, b, ns=(1, 2, 3, 64)) -> bool:
    """Whether buffers a and b share memory at some batch size."""
    for n in ns:
        a0, b0 = peval(a.offset, n), peval(b.offset, n)
        if a0 < b0 + peval(b.size, n) and b0 < a0 + peval(a.size, n):
            return True
    return False


def output_args(graph: Graph) -> dict[str, tuple[str, Any]]:
    return {c_name(k): ("output", k) for k in graph.outputs}
