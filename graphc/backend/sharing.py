"""What the C functions of one model share: the entry checks and the kernels they have in common.

In: the model's Functions (backend/functions.py), each with its schedule. Out: `Sharing`: the
arguments of the one check function every entry point calls, and the static helper functions
(the forward pass that forward, predict, value_and_grad and train_step have in common, then the
backward pass value_and_grad and train_step have in common), each with the steps it runs and
the call each entry point makes instead of those steps. Kernels are compared by their rendered C
text, so a helper holds exactly what each caller would have run; each caller passes its own
buffers (its own memory plan). It prints no C but through the templates and cprint.py.
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher
from dataclasses import dataclass, field

from graphc.backend.cprint import c_param
from graphc.backend.kernels import Kernel, RowSoftmax
from graphc.backend.templates import render_kernel

_IDENT = re.compile(r"\b[A-Za-z_]\w*\b")
MIN_LINES = 10      # a run of shared kernels shorter than this stays in each function: a call is not shorter
_COMMENT = re.compile(r"/\*.*?\*/", re.S)


@dataclass
class Helper:
    """A static function holding the first `count` steps (after `skip`) of each of `callers`."""
    name: str                   # C name (NAME_forward_pass)
    doc: str
    params: list[tuple[str, str, bool]]      # (C type, C name, const) of its pointer parameters
    steps: list[Kernel]         # the reference caller's records (rendered as they are)
    callers: dict[str, tuple[int, int]] = field(default_factory=dict)   # function -> (skip, count)

    uses_n: bool = True

    @property
    def call_args(self) -> list[str]:
        return ["n"] + [p[1] for p in self.params]

    @property
    def signature(self) -> list[str]:
        return [c_param(ctype, cname, const) for ctype, cname, const in self.params]


@dataclass
class Sharing:
    check_name: str
    label_params: list[tuple[str, str, str]]   # (C name, element count, bound) of every int array checked
    helpers: list[Helper]

    def label_args(self, f) -> list[str]:
        """The label arrays f passes to the check function (NULL for those it does not take)."""
        mine = {c for c, _count, _bound in f.label_checks}
        return [c if c in mine else "NULL" for c, _count, _bound in self.label_params]

    def calls(self, f) -> list[tuple[int, Helper]]:
        """(index of the first step it replaces, helper) for each helper f calls."""
        return [(h.callers[f.name][0], h) for h in self.helpers if f.name in h.callers]

    def own_steps(self, f) -> list[tuple[int, Kernel | Helper]]:
        """f's schedule with the helpers' steps replaced by the helper: (index, record or Helper)."""
        out, i = [], 0
        starts = {h.callers[f.name][0]: h for h in self.helpers if f.name in h.callers}
        while i < len(f.steps):
            h = starts.get(i)
            if h is not None:
                out.append((i, h))
                i += h.callers[f.name][1]
            else:
                out.append((i, f.steps[i]))
                i += 1
        return out


def _common_prefix(seqs: list[list[str]]) -> int:
    k = 0
    while all(k < len(s) for s in seqs) and len({s[k] for s in seqs}) == 1:
        k += 1
    return k


def _helper(model: str, name: str, doc: str, funcs, skip: dict[str, int], count: int) -> Helper:
    """The helper of steps skip[f] .. skip[f] + count of each f in funcs (the same C text in each)."""
    ref = funcs[0]
    text = "\n".join(render_kernel(st) for st in ref.steps[skip[ref.name]:skip[ref.name] + count])
    used = set(_IDENT.findall(_COMMENT.sub(" ", text)))
    params = []
    for a in ref.args:
        if a.cname in used:
            params.append((a.ctype, a.cname, a.role in ("input", "param", "param*")))
    for b in ref.sched.buffers:
        if b in used:
            params.append(("gc_real", b, False))
    if "pack" in used:
        params.append(("gc_real", "pack", False))
    h = Helper(f"{model}_{name}", doc, params, ref.steps[skip[ref.name]:skip[ref.name] + count],
               uses_n="n" in used)
    for f in funcs:
        h.callers[f.name] = (skip[f.name], count)
    return h


def _written(steps: list[Kernel]) -> list[str]:
    names: list[str] = []
    for st in steps:
        for v in st.defs:
            if v.name not in names:
                names.append(v.name)
    return names


def share(model: str, functions: list) -> Sharing:
    """The check function's label parameters and the helpers of the model's functions."""
    labels: list[tuple[str, str, str]] = []
    for f in functions:
        for check in f.label_checks:
            if check[0] not in {c for c, _, _ in labels}:
                labels.append(check)
    helpers: list[Helper] = []
    texts = {f.name: [render_kernel(st) for st in f.steps] for f in functions}
    if len(functions) >= 2:
        k = _common_prefix([texts[f.name] for f in functions])
        if k:
            names = [f.name for f in functions]
            doc = (f"The forward pass {_and(names)} share: it writes {_and(_written(functions[0].steps[:k]))}.")
            after = {f.name: f.steps[k] for f in functions if k < len(f.steps)}
            fused = [n for n, st in after.items() if isinstance(st, RowSoftmax) and st.grad]
            if fused and len(after) > len(fused):
                doc += (f" The loss of {_and(fused)} is not in it: there the pass over the rows that"
                        f" computes the loss also writes its gradient, identity (7).")
            elif len(after) > 1:
                doc += " Each entry point continues with kernels of its own."
            helpers.append(_helper(model, "forward_pass", doc, functions, {f.name: 0 for f in functions}, k))
        # the runs of kernels value_and_grad and train_step share after it: the train step's
        # optimizer may update a weight inside the product computing its gradient, which then
        # differs from value_and_grad's (and may move), so the shared part comes in runs
        both = [f for f in functions if f.name in ("value_and_grad", "train_step")]
        if len(both) == 2:
            a, b = (texts[f.name][k:] for f in both)
            runs = [r for r in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
                    if r.size and sum(t.count("\n") for t in a[r.a:r.a + r.size]) >= MIN_LINES]
            for i, r in enumerate(runs):
                part = f" (part {i + 1} of {len(runs)})" if len(runs) > 1 else ""
                doc = (f"The backward pass{part} value_and_grad and train_step share: it writes "
                       f"{_and(_written(both[0].steps[k + r.a:k + r.a + r.size]))}.")
                if i == len(runs) - 1 and len(runs) > 1:
                    doc += (" Between the parts, train_step updates a weight inside the product that computes"
                            " its gradient, which is then never stored.")
                suffix = f"_{i + 1}" if len(runs) > 1 else ""
                helpers.append(_helper(model, f"backward_pass{suffix}", doc, both,
                                       {both[0].name: k + r.a, both[1].name: k + r.b}, r.size))
    return Sharing(f"{model}_check", labels, helpers)


def _and(items: list[str]) -> str:
    items = list(items)
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


__all__ = ["share", "Sharing", "Helper"]
