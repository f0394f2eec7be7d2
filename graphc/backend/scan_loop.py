"""A scan (ops/scan.py) lowered to a C loop over time: the body's kernels inside `for (t ...)`.

In: the scheduler of the function the scan runs in and the scan's nodes (one per result it
gives: the last carried states, the stacked per-step outputs, the per-step values saved for the
backward scan). Out: one `ScanLoop` record. The body graph is lowered and scheduled as a
function of its own (its values are locals, NAME__LABEL, over a scratch area of the planned
workspace), with its inputs and outputs addressed where they are:

    a carried state    two buffers, one read and one written at each step, swapped after it
                       (the initial value is read in place at step 0: no copy)
    x_t                x + t * stride when the time axis leads ([T, N, ...]); else copied into a
                       scratch buffer at each step (a strided copy of one slice)
    a param            read in place
    y_t, saved values  written straight into their stacked buffer when time leads (saved values are
                       always time-major); y_t of a batch-first [N, T, ...] output by a strided copy

It prints no C but through the templates and cprint.py.
"""
from __future__ import annotations

from graphc.backend.cprint import c_load, c_name, c_poly
from graphc.backend.kernels import Kernel, Load, Loop, ScanLoop, Statement
from graphc.backend.sizes import Poly, align, contiguous_strides, dim_poly, numel, padd
from graphc.core.ir import FLOAT, Node, Value


def group_of(k, n: Node) -> list[Node]:
    """The nodes that are results of the same scan as n (same body, same inputs), in graph order."""
    body = n.attrs["body"]
    return [m for m in k.g.nodes if m.op.name == "scan" and m.attrs["body"] is body and m.inputs == n.inputs]


def stride_at(strides, axis: int) -> str:
    """t times the stride of the time axis, as C."""
    return "gc_t" if strides[axis] == (1,) else f"gc_t * ({c_poly(strides[axis])})"


def scan_loop(k, n: Node) -> list[Kernel]:
    """The ScanLoop of the scan whose first result is n ([] for its other results)."""
    from graphc.backend.lower import lower

    group = group_of(k, n)
    if group[0] is not n:
        return []           # written by the loop emitted at the first result
    parts = [m for m in group if m.output in k.users or m.output in k.out_of or m.output in k.keep]
    body = n.attrs["body"]
    label = body.label
    suffix = f"__{label}"
    low = lower(body.graph)
    ncarry, nxs = len(body.inits), len(body.xs)
    seqs = n.inputs[ncarry:ncarry + nxs]
    T = seqs[0].shape[body.x_axes[0]]

    def local(name: str) -> str:
        return c_name(name) + suffix

    def ctype(v: Value) -> str:
        return "gc_real" if v.dtype == FLOAT else "int32_t"

    scratch: list[tuple[str, Poly, str]] = []       # (local name, elements, C type): after the body's arena
    fills: list[tuple[str, str]] = []

    def outer(v: Value, name: str) -> str:
        """An outer value the loop reads: its buffer, or for a compile-time scalar (a constant the
        outer schedule keeps as a C expression) a scratch element holding it."""
        if v in k.static:
            scratch.append((name, (1,), "gc_real"))
            fills.append((name, k.static_expr(v)))
            return name
        return k.ref(v)

    names: dict[Value, str] = {}
    slices, carries, copies = [], [], []
    finals = {body.carry[m.attrs["part"][1]]: m for m in parts if m.attrs["part"][0] == "final"}
    cleared, read_at = [], {}
    for name in body.carry:
        v = low.inputs[name]
        if name in body.sums:       # a running sum: one buffer (its result's, when given), zeroed, added to in place
            buf = k.ref(finals[name].output) if name in finals else local(name)
            if name not in finals:
                scratch.append((buf, numel(v.shape), "gc_real"))
            cleared.append((buf, c_poly(numel(v.shape))))
            names[v] = read_at[name] = buf
            continue
        cur, nxt, a, b = (local(name + s) for s in ("", "__next", "__a", "__b"))
        scratch += [(a, numel(v.shape), "gc_real"), (b, numel(v.shape), "gc_real")]
        carries.append((cur, nxt, a, b, outer(n.inputs[body.inits.index(name)], local(name + "__init"))))
        names[v] = read_at[name] = cur
    read = {v for m in low.nodes for v in m.inputs} | set(low.outputs.values())
    for j, name in enumerate(body.xs):
        v, seq, axis = low.inputs[name], seqs[j], body.x_axes[j]
        if v not in read:
            continue                                    # scanned for its length only
        strides = contiguous_strides(seq.shape)
        src = outer(seq, local(name + "__seq"))
        if all(d == 1 for d in seq.shape[:axis]):      # the slice at t is one block: read in place
            slices.append((ctype(v), local(name), f"{src} + {stride_at(strides, axis)}"))
        else:                                           # a strided slice: copied at each step
            scratch.append((local(name), numel(v.shape), ctype(v)))
            loads = (Load(f"({src} + {stride_at(strides, axis)})", tuple(s for a, s in enumerate(strides) if a != axis),
                          (0,), seq),)
            st = Statement(local(name), tuple(contiguous_strides(v.shape)), (0,), c_load(0), loads)
            text = f"{name} = {seq.name} at t (axis {axis})"
            copies.append(Loop(text, (), (seq,), tuple(v.shape), (st,), (text,)))
        names[v] = local(name)
    for c, name in enumerate(body.consts):
        names[low.inputs[name]] = outer(n.inputs[ncarry + nxs + c], local(name))
    # what the body writes: the next carried states, then the stacked results this loop gives
    outputs: dict[str, Value] = {}
    for name, key in zip(body.carry, body.new_carry):
        outputs[read_at[name] if name in body.sums else local(name + "__next")] = low.outputs[key]
    strided = []
    for m in parts:
        kind, index = m.attrs["part"]
        out = k.ref(m.output)
        if kind == "ys":
            v, axis = low.outputs[body.ys[index]], body.y_axes[index]
            strides = contiguous_strides(m.output.shape)
            if all(d == 1 for d in m.output.shape[:axis]):
                outputs[f"({out} + {stride_at(strides, axis)})"] = v
            else:
                strided.append((v, f"({out} + {stride_at(strides, axis)})",
                                tuple(s for a, s in enumerate(strides) if a != axis), m))
        elif kind == "saved":
            v = low.values[index]
            outputs[f"({out} + {stride_at(contiguous_strides(m.output.shape), 0)})"] = v
    body_k = type(k)(low, outputs, names=names, suffix=suffix)
    sched = body_k.run()
    steps = list(sched.steps)
    for v, target, strides, m in strided:
        src = next((c for c, w in outputs.items() if w is v), None) or names.get(v) or local(v.name)
        st = Statement(target, strides, (0,), c_load(0), (Load(src, tuple(contiguous_strides(v.shape)), (0,), v),))
        text = f"{m.output.name} at t = {v.name}"
        steps.append(Loop(text, (), (v,), tuple(v.shape), (st,), (text,)))
    # the body's arena planned again with these copies, which read their values after the body's
    # steps: planned without them, a y_t was free for a later step to overwrite before its copy
    # (a backward scan's d_x_t under d_W's GEMM)
    buffers, arena = body_k.plan_steps(steps) if strided else (sched.buffers, sched.arena)
    copied = [(k.ref(m.output), read_at[name], c_poly(numel(m.output.shape)))
              for name, m in finals.items() if name not in body.sums]
    # the loop's workspace: the body's planned arena, then the carry buffers, slices and constants
    area = f"{label}__ws__{c_name(n.output.name)}"      # one per loop: a function may run two of a body
    lines, at = [], arena
    for buf in buffers.values():
        lines.append(("gc_real", buf.name, f"{area} + {c_poly(buf.offset)}"))
    for name, size, ty in scratch:
        lines.append((ty, name, f"{area} + {c_poly(at)}" if ty == "gc_real" else f"({ty} *)({area} + {c_poly(at)})"))
        at = padd(at, align(size))
    comment = (f"scan {label}: t = {'T-1 down to 0' if body.reverse else '0 to T-1'} (T = {T}), "
               f"carrying {', '.join(body.carry)}")
    return [ScanLoop(comment, tuple(m.output for m in parts), tuple(n.inputs), label=label,
                     T=c_poly(dim_poly(T)), reverse=body.reverse, locals=tuple(lines), fills=tuple(fills),
                     cleared=tuple(cleared), carries=tuple(carries), slices=tuple(slices), copies=tuple(copies),
                     body=tuple(steps), finals=tuple(copied), scratch=((area, at),))]
