"""What the C functions of one model share: the entry checks and the kernels they have in common.

In: the model's Functions (backend/functions.py), each with its schedule. Out: `Sharing`: the
arguments of the one check function every entry point calls, and the static helper functions
(the forward pass that forward, predict, value_and_grad and train_step have in common; then the
rest of it that forward shares with predict, or with value_and_grad and train_step, whichever
is longer: a scan that predict runs as forward does while the training functions keep its
states, a batch norm predict runs on its running statistics; then the backward pass
value_and_grad and train_step have in common, which accumulate, with gradient accumulation, calls
too where it runs the same kernels), each with the steps it runs and
the call each entry point makes instead of those steps. Kernels are compared by their rendered C
text, so a helper holds exactly what each caller would have run; each caller passes its own
buffers (its own memory plan). It prints no C but through the templates and cprint.py.
"""
from __future__ import annotations

import re
from difflib import SequenceMatcher
from dataclasses import dataclass, field, replace

from graphc.backend.cprint import c_param
from graphc.backend.kernels import Gemm, Kernel, RowSoftmax
from graphc.backend.templates import render_kernel

_IDENT = re.compile(r"\b[A-Za-z_]\w*\b")
MIN_LINES = 10      # a run of shared kernels shorter than this stays in each function: a call is not shorter
_COMMENT = re.compile(r"/\*.*?\*/", re.S)


@dataclass
class Helper:
    """A static function holding the first `count` steps (after `skip`) of each of `callers`."""
    name: str                   # C name (NAME_forward_pass)
    doc: str
    params: list[tuple]         # (C type, C name, const, pointer) of its parameters after the dims
    steps: list[Kernel]         # the reference caller's records (rendered as they are)
    callers: dict[str, tuple[int, int]] = field(default_factory=dict)   # function -> (skip, count)

    unused_dims: tuple = ()     # the dim arguments (n, T, ...) its steps do not read
    optional: frozenset = frozenset()   # parameters a caller without such a value passes as NULL
    args_of: dict = field(default_factory=dict)    # function -> its call's arguments

    def call_args(self, f) -> list[str]:
        return self.args_of[f.name]

    @property
    def signature(self) -> list[str]:
        return [c_param(ctype, cname, const) if pointer else f"{ctype} {cname}"
                for ctype, cname, const, pointer in self.params]


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


def _helper(model: str, name: str, doc: str, funcs, skip: dict[str, int], count: int,
            steps: list[Kernel] | None = None, optional: frozenset = frozenset(), extra=()) -> Helper:
    """The helper of steps skip[f] .. skip[f] + count of each f in funcs (the same C text in each,
    or `steps`, which reads the `optional` values some callers do not have: they pass NULL).
    `extra`: more parameters, (ctype, name, const, pointer, {function: the value it passes})."""
    ref = funcs[0]
    steps = ref.steps[skip[ref.name]:skip[ref.name] + count] if steps is None else steps
    text = "\n".join(render_kernel(st) for st in steps)
    used = set(_IDENT.findall(_COMMENT.sub(" ", text)))
    params: list[tuple[str, str, bool]] = []
    for f in funcs:             # arguments first, in the order of the function that has the most
        for a in f.args:
            if a.cname in used and a.cname not in {p[1] for p in params}:
                params.append((a.ctype, a.cname, a.role in ("input", "param", "param*"), True))
    for f in funcs:
        for b in f.sched.buffers:
            if b in used and b not in {p[1] for p in params}:
                params.append(("gc_real", b, False, True))
    if "pack" in used:
        params.append(("gc_real", "pack", False, True))
    passed = {x[1]: x[4] for x in extra}
    params += [x[:4] for x in extra]
    dims = tuple(ref.dim_args)
    h = Helper(f"{model}_{name}", doc, params, list(steps), unused_dims=tuple(d for d in dims if d not in used),
               optional=optional)
    for f in funcs:
        h.callers[f.name] = (skip[f.name], count)
        have = {a.cname for a in f.args} | set(f.sched.buffers) | {"pack"}
        missing = [p[1] for p in params if p[1] not in have and p[1] not in passed]
        assert set(missing) <= optional, (f.name, missing)
        h.args_of[f.name] = list(dims) + [passed[p[1]][f.name] if p[1] in passed else p[1] if p[1] in have else "NULL"
                                     for p in params]
    return h


def _one_loss_pass(records: list[Kernel]) -> tuple[RowSoftmax, frozenset] | None:
    """The pass over the rows of the logits that each entry point makes after the shared layers
    (softmax; cross-entropy with it; and identity (7)'s gradient), as one record whose labels and
    gradient may be NULL; None when they are not the same pass over the same logits."""
    if not all(isinstance(r, RowSoftmax) and r.kind in ("softmax", "softmax_xent") for r in records):
        return None
    probs = {r.out if r.kind == "softmax" else r.probs for r in records}
    labels = {(r.labels, r.targets) for r in records if r.kind == "softmax_xent"}
    grads = {(r.grad, r.scale) for r in records if r.grad}
    losses = {r.out for r in records if r.kind == "softmax_xent"}
    if len(probs) != 1 or None in probs or len(labels) != 1 or len(grads) > 1 or len(losses) != 1 \
            or len({(r.x, r.rows, r.cols, r.parallel) for r in records}) != 1:
        return None
    first = records[0]
    grad, scale = next(iter(grads)) if grads else (None, None)
    no_labels = any(r.kind == "softmax" for r in records)
    no_grad = grads and any(not r.grad for r in records)
    full = max(records, key=lambda r: (r.kind == "softmax_xent") + bool(r.grad))
    defs = tuple(dict.fromkeys(v for r in records for v in r.defs))
    uses = tuple(dict.fromkeys(v for r in records for v in r.uses))
    y, targets = next(iter(labels))
    merged = RowSoftmax(full.comment, defs, uses, "softmax_xent", next(iter(losses)), first.x, first.rows, first.cols,
                        labels=y, targets=targets, probs=next(iter(probs)), grad=grad, scale=scale,
                        parallel=first.parallel, optional_labels=no_labels, optional_grad=bool(no_grad))
    optional = ({y or targets, merged.out} if no_labels else set()) | ({grad} if no_grad else set())
    return merged, frozenset(optional)


GROUPS = (("forward", "predict"), ("forward", "value_and_grad", "train_step"))    # they may share more


def _prefix_helper(model: str, name: str, funcs, texts, start: int, min_lines: int, lead: str) -> Helper | None:
    """The helper of the kernels funcs run alike from step `start` (each has run the same steps before
    it), the pass over the logits they end with merged into one (`_one_loss_pass`); None when it
    would hold fewer than `min_lines` lines of C."""
    k = start + _common_prefix([texts[f.name][start:] for f in funcs])
    loss = _one_loss_pass([f.steps[k] for f in funcs]) if all(k < len(f.steps) for f in funcs) else None
    skip = {f.name: start for f in funcs}
    if loss is not None:
        merged, optional = loss
        steps = funcs[0].steps[start:k] + [merged]
        with_loss = (f" and, when {merged.labels or merged.targets} is given, the loss" if merged.optional_labels
                     else ", the loss")
        grad = (f" and, when {merged.grad} is given, its gradient by identity (7)" if merged.optional_grad
                else " and its gradient by identity (7)" if merged.grad else "")
        doc = (f"{lead}: it writes {_and(_written(steps[:-1]) + [merged.probs])}"
               f"{with_loss}{grad}, all in one pass over the rows of {merged.x}.")
        h = _helper(model, name, doc, funcs, skip, k - start + 1, steps, optional)
    elif k > start:
        doc = f"{lead}: it writes {_and(_written(funcs[0].steps[start:k]))}. Each caller continues with kernels of its own."
        h = _helper(model, name, doc, funcs, skip, k - start)
    else:
        return None
    return h if _lines(h) >= min_lines else None


def _lines(h: Helper) -> int:
    return sum(render_kernel(st).count("\n") + 1 for st in h.steps)


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
        names = [f.name for f in functions]
        first = _prefix_helper(model, "forward_pass", functions, texts, 0, 1,
                               f"The forward pass of {_and(names)}")
        k = first.callers[names[0]][1] if first else 0
        helpers += [first] if first else []
        done = {f.name: k for f in functions}
        best = None                 # then the group whose functions share the most lines more
        for group in GROUPS:
            funcs = [f for f in functions if f.name in group]
            if len(funcs) == len(group):
                h = _prefix_helper(model, "forward_rest", funcs, texts, k, MIN_LINES,
                                   f"The rest of the forward pass of {_and(group)}"
                                   f"{' (the other functions run their own)' if len(funcs) < len(functions) else ''}")
                if h and (best is None or _lines(h) > _lines(best)):
                    best = h
        if best:
            helpers.append(best)
            done.update({f: k + count for f, (_skip, count) in best.callers.items()})
        both = [f for f in functions if f.name in ("value_and_grad", "train_step")]
        if len(both) == 2 and done[both[0].name] == done[both[1].name]:
            k = done[both[0].name]
            also = [f for f in functions if f.name == "accumulate" and done[f.name] == k]
            if not _one_backward_pass(model, both, k, texts, helpers, also):
                _backward_runs(model, both, k, texts, helpers, also)
    return Sharing(f"{model}_check", labels, helpers)


def _one_backward_pass(model: str, both, k: int, texts, helpers: list, also=()) -> bool:
    """value_and_grad's kernels after the forward pass, as one helper train_step calls too: the
    same kernels but for plain SGD's GEMMs that update a weight as they write its gradient, which
    take the weight to update as a parameter (NULL from value_and_grad) and the learning rate.
    Each function of `also` (accumulate) that runs value_and_grad's kernels calls it as
    value_and_grad does."""
    vg, ts = both
    a, b = vg.steps[k:], ts.steps[k:]
    if not a or len(b) < len(a):
        return False
    also = [f for f in also if texts[f.name][k:k + len(a)] == texts[vg.name][k:]]
    steps, extra = [], []
    for x, y in zip(a, b):
        if render_kernel(x) == render_kernel(y):
            steps.append(x)
            continue
        ep = getattr(y, "epilogue", None)
        if not (isinstance(x, Gemm) and isinstance(y, Gemm) and ep is not None and ep.update):
            return False
        plain = replace(y, comment=x.comment, epilogue=replace(ep, update=None, ldu=None, rate=None))
        if render_kernel(plain) != render_kernel(x):
            return False
        target = f"gc_update_{ep.update}"
        steps.append(replace(y, comment=x.comment + f"\n   and, from train_step, {ep.update} -= lr d_{ep.update} as it is"
                                                    f" written ({target}: NULL from value_and_grad)",
                             epilogue=replace(ep, update=target, rate="gc_lr")))
        extra.append(("gc_real", target, False, True, {vg.name: "NULL", ts.name: ep.update,
                                                        **{f.name: "NULL" for f in also}}))
    if extra:
        rate = next(st.epilogue.rate for st in b if isinstance(st, Gemm) and st.epilogue.update)
        extra.append(("gc_real", "gc_lr", False, False, {vg.name: "0", ts.name: rate, **{f.name: "0" for f in also}}))
    callers = [*both, *also]
    doc = (f"The backward pass {_and([f.name for f in callers])} share: it writes {_and(_written(steps))}"
           + (" (a gradient that train_step's SGD applies as it is written is not stored there)" if extra else "")
           + ".")
    helpers.append(_helper(model, "backward_pass", doc, callers, {f.name: k for f in callers}, len(a), steps,
                           frozenset(), extra))
    return True


def _backward_runs(model: str, both, k: int, texts, helpers: list, also=()) -> None:
    """The runs of kernels value_and_grad and train_step share after the forward pass, as helpers;
    a function of `also` (accumulate) calls each run it makes too, in the same order."""
    a, b = (texts[f.name][k:] for f in both)
    runs = [r for r in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()
            if r.size and sum(t.count("\n") for t in a[r.a:r.a + r.size]) >= MIN_LINES]
    after = {f.name: k for f in also}       # where each function of `also` may run the next run
    for i, r in enumerate(runs):
        part = f" (part {i + 1} of {len(runs)})" if len(runs) > 1 else ""
        block = a[r.a:r.a + r.size]
        skip = {both[0].name: k + r.a, both[1].name: k + r.b}
        for f in also:
            mine = texts[f.name]
            at = next((j for j in range(after[f.name], len(mine) - r.size + 1) if mine[j:j + r.size] == block), None)
            if at is not None:
                skip[f.name] = at
                after[f.name] = at + r.size
        callers = [*both, *(f for f in also if f.name in skip)]
        doc = (f"The backward pass{part} {_and([f.name for f in callers])} share: it writes "
               f"{_and(_written(both[0].steps[k + r.a:k + r.a + r.size]))}.")
        suffix = f"_{i + 1}" if len(runs) > 1 else ""
        helpers.append(_helper(model, f"backward_pass{suffix}", doc, callers, skip, r.size))


def _and(items: list[str]) -> str:
    items = list(items)
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


__all__ = ["share", "Sharing", "Helper"]
