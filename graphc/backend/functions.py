"""The C functions of a model: their arguments (with roles) and their schedules.

In: names, roles and IR values of the arguments; a Schedule. Out: what the templates print
for a function's signature, entry checks and workspace buffers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphc.backend.cprint import c_any_null, c_name, c_param, c_poly, c_signature
from graphc.backend.kernels import Gemm, Kernel
from graphc.backend.schedule import Schedule
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
class Function:
    name: str            # forward, value_and_grad, train_step, ...
    doc: str
    banner: str
    args: list[Arg]
    sched: Schedule

    @property
    def signature(self) -> str:
        return c_signature(["long n"] + [c_param(a.ctype, a.cname, a.const) for a in self.args] + ["void *workspace"])

    @property
    def steps(self) -> list[Kernel]:
        return self.sched.steps

    @property
    def uses_pack(self) -> bool:
        return any(isinstance(s, Gemm) for s in self.steps)

    @property
    def buffers(self):
        return [dict(name=b.name, offset=c_poly(b.offset), size=c_poly(b.size)) for b in self.sched.buffers.values()]

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


def output_args(graph: Graph) -> dict[str, tuple[str, Any]]:
    return {c_name(k): ("output", k) for k in graph.outputs}
