"""The generated Python of the fast path: a CallPlan's check-and-call, and a model's keyword methods.

In: a plan's arrays, outputs and result layout (calls.CallPlan), or a model's argument names.
Out: functions compiled once per shape of the code (count of arrays and outputs, result layout,
argument names) from source made here. They shortcut only what a full check (core/arguments.bind)
would pass: anything that differs goes back to the checked path, which raises its errors.
"""
from __future__ import annotations

import keyword
from typing import Any

# The same-arrays check and the C call of a plan (calls.CallPlan), as two functions over one
# body: `fast(d)` takes the arrays in a dict by name, `fastpos(a0, ...)` positionally in the
# plan's order (a model's keyword method passes its parameters on, with no dict: model_class).
# The check is identity, shape, strides and dtype of each array in straight-line code (about
# 0.1 µs an array, less for one of 1 dim; all three can change in place: `a.shape = `,
# `a.strides = `, `a.dtype = `).
#
# The outputs: new arrays (np.empty, and a cffi pointer to each) on every call, except that a
# plan whose outputs are small (calls.RECYCLE_BYTES in all) keeps those of its last two calls and
# hands a call's set out again when nothing but the plan holds any of its arrays: no reference
# (a dict, a list, a view, a memoryview all hold one) and no weak reference. An array the caller
# can still reach is never written again; one it has let go of is, as np.empty would give its
# memory to the next array. This saves np.empty and ffi.from_buffer per output (0.3 µs each).
# Each set keeps the C call's whole argument tuple (the dims, the arrays' and fixed pointers,
# the outputs', the workspace) beside the outputs, so a call builds no tuple.
_PLAN_SOURCE = """
def make(cf, head, ws, keys, objs, shapes, strides, dtypes, out_shapes, out_dtypes, out_types, from_buffer, empty,
         recycle, rc, wc, out_names, fail):
    {unpack}
    ring = [None, None]             # the outputs of the last two calls (older, newer), with the C arguments

    def fresh():
        {outs}
        return (*head, {ptrs}ws), {tuple}

    # what rc says of an output that only the ring holds (its tuple, its cffi pointer): measured
    # by the same unpacking as below, not assumed (it depends on cffi and the interpreter)
    counts = set(probe(rc, fresh())) if recycle else ()
    free = counts.pop() if len(counts) == 1 else -1
    recycle = recycle and free > 0

    def fast(d):
        if len(d) == {count}:
            try:
                {fetch}
            except KeyError:
                return None
{body_fast}
        return None

    def fastpos({params}):
{body_pos}
        return None
    return fast, fastpos


def probe(rc, slot):
    p, {tuple}= slot
    return {counts}
"""

_BODY = """
if {same}:
    if recycle:
        old, new = ring
        if old is not None:
            p, {tuple}= old
            if {free}:
                ring[0], ring[1] = new, old
                {call}
        if new is not None:
            p, {tuple}= new
            if {free}:
                {call}
        ring[0] = new
        got = ring[1] = fresh()
    else:
        got = fresh()
    p, {tuple}= got
    {call}
"""
_CALL = "return cf(*p), {result}"                                           # fast: (status, outputs)
_CALL_POS = "st = cf(*p); return fail(st, ({args})) if st else {result}"   # fastpos: the outputs (fail raises)
_PLANS: dict[tuple, Any] = {}


def plan_caller(count: int, outputs: int, named: bool = False, layout: tuple | None = None,
                group_names: tuple | None = None, shapes: tuple | None = None):
    """make(cf, head, ws, keys, objs, shapes, strides, dtypes, out_shapes, out_dtypes, out_types,
    from_buffer, empty, recycle, sys.getrefcount, weakref.getweakrefcount, out_names, fail)
    -> (fast, fastpos).

    fast(arrays): the C call's (status, outputs) when `arrays` (a dict) holds exactly the `keys`,
    each the same object as in `objs` with its shape, strides and dtype, else None.
    fastpos(*arrays): for the arrays given in the order of `keys`, the outputs alone, or None;
    on a nonzero status it calls fail(status, arrays), which raises its error.
    recycle: whether the outputs of the last two calls may be handed out again (when nothing
    else holds them). fast's outputs: a tuple, or when `named` a dict by out_names. fastpos's:
    with a `layout` (per group, the output indices of its entries), a dict per group by
    group_names (the dict alone for one group; the names are written into the source: a dict
    display of constant keys is the quickest to build), else as fast's. shapes: the arrays'
    shapes (None: each checked as if of 2 dims or more)."""
    # An array of 0 or 1 dims needs no shape check: the same strides are as many dims, and its size
    # cannot change in place (`a.shape = ` keeps it, a new dtype of another itemsize changes the
    # strides, and NumPy refuses to resize an array with a weak reference, refcheck or not), so
    # the same shape. Not so with 2 dims or more: (64, 128) with strides set to (512, 8) has the
    # strides and size of (128, 64).
    ndims = tuple(len(s) for s in shapes) if shapes is not None else (2,) * count
    key = (count, outputs, named, layout, group_names, ndims)
    make = _PLANS.get(key)
    if make is None:
        r, q = range(count), range(outputs)
        unpack = [f"k{i}, o{i}, s{i}, r{i}, t{i} = keys[{i}], objs[{i}], shapes[{i}], strides[{i}], dtypes[{i}]"
                  for i in r] + [f"S{j}, D{j}, C{j} = out_shapes[{j}], out_dtypes[{j}], out_types[{j}]" for j in q]
        unpack += [f"N{j} = out_names[{j}]" for j in q] if named else []
        same = [f"a{i} is o{i}" for i in r] + [(f"a{i}.shape == s{i} and " if ndims[i] > 1 else "") +
                                               f"a{i}.strides == r{i} and a{i}.dtype is t{i}" for i in r]
        plain = "{" + ", ".join(f"N{j}: y{j}" for j in q) + "}" if named else "(" + "".join(f"y{j}, " for j in q) + ")"
        if layout is None:
            grouped = plain
        else:
            dicts = ["{" + ", ".join(f"{str(k)!r}: y{j}" for k, j in zip(names, group)) + "}"
                     for names, group in zip(group_names, layout)]
            grouped = dicts[0] if len(dicts) == 1 else "(" + "".join(f"{d}, " for d in dicts) + ")"
        parts = dict(same=" and ".join(same) or "True", tuple="".join(f"y{j}, " for j in q),
                     free=" and ".join([f"rc(y{j}) == free" for j in q] + [f"not wc(y{j})" for j in q]) or "True")
        text = _PLAN_SOURCE.format(
            unpack="\n    ".join(unpack) or "pass", count=count,
            fetch="; ".join(f"a{i} = d[k{i}]" for i in r) or "pass",
            outs="; ".join(f"y{j} = empty(S{j}, D{j})" for j in q) or "pass",
            ptrs="".join(f"from_buffer(C{j}, y{j}), " for j in q), tuple=parts["tuple"],
            counts="".join(f"rc(y{j}), " for j in q), params=", ".join(f"a{i}" for i in r),
            body_fast=_indent(_BODY.format(call=_CALL.format(result=plain), **parts), 12),
            body_pos=_indent(_BODY.format(call=_CALL_POS.format(result=grouped, args="".join(
                f"a{i}, " for i in r)), **parts), 8))
        namespace: dict = {}
        exec(text, namespace)
        make = _PLANS[key] = namespace["make"]
    return make


def _indent(text: str, spaces: int) -> str:
    """text with each non-empty line indented (textwrap.indent, whose import a cached load would pay for)."""
    return "\n".join(" " * spaces + line if line else line for line in text.split("\n"))


# A model's forward and value_and_grad with its argument names as keyword-only parameters: a
# call passes them on to this thread's plan positionally (CallPlan.fastpos), with no dict made or
# looked up (CompiledModel's own methods take **arrays, a dict copied on every call: 0.2 µs). Any
# other call (an argument missing or extra, a new array) goes on as the class's method goes
# (CompiledModel._forward, _value_and_grad: checks, and GraphcErrors, on the same arguments).
_METHOD_SOURCE = """
def make(base, M):
    def {fname}(self, *, {params}, **_gc_rest):
        _gc_plan = self._local.{fname}
        if _gc_plan is not None and not _gc_rest:
            _gc_out = _gc_plan.fastpos({args})
            if _gc_out is not None:
                return _gc_out
        _gc_d = {{{given}}}
        {missing}
        if _gc_rest:
            _gc_d.update(_gc_rest)
        return self._{fname}(_gc_d, _gc_plan is None)
    {fname}.__doc__, {fname}.__qualname__, {fname}.__module__ = base.__doc__, base.__qualname__, base.__module__
    return {fname}
"""
_MISSING = type("Missing", (), {"__repr__": lambda self: "<not given>", "__slots__": ()})()
_CLASSES: dict[tuple, type] = {}


def keyword_names(names) -> bool:
    """Whether `names` can be a method's keyword parameters next to `self` and the generated code's own."""
    return all(n.isidentifier() and not keyword.iskeyword(n) and n != "self" and not n.startswith("_gc_")
               for n in names) and len(set(names)) == len(names)


def model_class(base: type, signatures: dict[str, tuple[str, ...]]) -> type:
    """A subclass of `base` (CompiledModel) whose methods named in `signatures` (fname -> the C
    function's array arguments in its order) take those names as keyword-only parameters; one
    class per set of signatures (this thread's plan of the function answers, through its
    fastpos, or the class's method does). The names must pass keyword_names; the model's
    `_local` must answer None for a function without a plan in this thread (loaded._ThreadPlans)."""
    key = (base, tuple(sorted(signatures.items())))
    cls = _CLASSES.get(key)
    if cls is None:
        methods = {}
        for fname, names in signatures.items():
            text = _METHOD_SOURCE.format(fname=fname, params=", ".join(f"{n}=M" for n in names),
                                         args=", ".join(names),
                                         given=", ".join(f"{n!r}: {n}" for n in names),
                                         missing="\n        ".join(f"if {n} is M: del _gc_d[{n!r}]" for n in names))
            namespace: dict = {}
            exec(text, namespace)
            methods[fname] = namespace["make"](getattr(base, fname), _MISSING)
        doc = (f"{base.__name__} with the arguments of {', '.join(signatures)} as keyword parameters "
               f"({'; '.join(', '.join(n) for n in signatures.values())}): the same calls, passed to C without a dict")
        cls = _CLASSES[key] = type(base.__name__, (base,), {"__doc__": doc, "__slots__": (), **methods,
                                                            "__module__": base.__module__})
        cls.__qualname__ = base.__qualname__
    return cls
