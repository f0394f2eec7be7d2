"""Memory planning: what is kept or recomputed, liveness over the kernel order, then one arena.

In: buffers with a size (a polynomial in the symbolic dims, in elements) and a
lifetime [first step, last step], less the gaps where it holds nothing. Out: an offset per
buffer such that no two buffers alive at the same step overlap for any values of the dims
>= 1, and the arena's peak. Sizes are polynomials (backend/sizes.py). Before the plan,
`recompute_late_reads` decides which values are written again where they are read late
rather than kept across the gap (RECOMPUTE).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from graphc.backend.kernels import Kernel, Loop, Patches
from graphc.backend.sizes import ZERO, Poly, align, padd, peval, pge, pmax  # noqa: F401  (sizes used with plans)


@dataclass
class Buffer:
    name: str
    size: Poly          # elements
    first: int          # step that writes it
    last: int           # last step that reads it
    offset: Poly = ZERO
    shape: tuple = ()   # the value's shape (dims), for the comment beside the buffer in the C
    gaps: tuple = ()    # (from, to) step ranges inside [first, last] where it holds nothing (RECOMPUTE)

    @property
    def end(self) -> Poly:
        return padd(self.offset, align(self.size))

    @property
    def lives(self) -> list[tuple[int, int]]:
        """The step ranges in which it holds a value: [first, last] less its gaps."""
        out, start = [], self.first
        for a, b in sorted(self.gaps):
            out.append((start, a - 1))
            start = b + 1
        return out + [(start, self.last)]

    def overlaps_in_time(self, other: "Buffer") -> bool:
        if self.last < other.first or other.last < self.first:
            return False
        if not self.gaps and not other.gaps:
            return True
        return any(not (b < c or d < a) for a, b in self.lives for c, d in other.lives)


# The orders a plan tries, best kept: largest first; longest-lived first (the gradients of a train
# step live from their kernel to the updates at the end: placed first, they stay out of the way of
# the short-lived buffers in between); the buffers that grow with the run-time dims first, so that
# what fits beside them at one batch size does not cost a row of every other; and largest first but,
# of one size, the first to die first (the activations a backward pass frees layer by layer leave
# their places in the order the next gradients need them: kws_dscnn's train step 11 % smaller).
ORDERS = (lambda b, n: (-peval(b.size, n), b.first, b.name),
          lambda b, n: (-(b.last - b.first), -peval(b.size, n), b.first, b.name),
          lambda b, n: (Poly.of(b.size).is_const, -peval(b.size, n), b.first, b.name),
          lambda b, n: (-peval(b.size, n), b.last, b.name))


def plan(buffers: list[Buffer], probe_n: int = 64) -> Poly:
    """Assign offsets (first fit, in each of ORDERS, keeping the plan with the smallest peak at
    probe_n; the first on a tie); return the arena size in elements."""
    best: tuple | None = None
    for order in ORDERS:
        total = _first_fit(sorted(buffers, key=lambda b: order(b, probe_n)), probe_n)
        if best is None or peval(total, probe_n) < peval(best[0], probe_n):
            best = (total, [b.offset for b in buffers])
    total, offsets = best
    for b, off in zip(buffers, offsets):
        b.offset = off
    return total


def live_peak(buffers: list[Buffer], n: int) -> int:
    """The most elements alive at one step at n (what no plan can go below)."""
    steps: dict[int, int] = {}
    for b in buffers:
        size = peval(align(b.size), n)
        for a, c in b.lives:
            for i in range(a, c + 1):
                steps[i] = steps.get(i, 0) + size
    return max(steps.values(), default=0)


def _first_fit(ordered: list[Buffer], probe_n: int) -> Poly:
    placed: list[Buffer] = []
    for buf in ordered:
        rivals = [(p.offset, Poly.of(p.end)) for p in placed if p.overlaps_in_time(buf)]
        # (sorted by value, then by terms: a set's order of Polys of dim names changes between processes)
        candidates = sorted({ZERO} | {e for _, e in rivals}, key=lambda c: (peval(c, probe_n), c.terms))
        size = align(buf.size)
        for off in candidates:
            end = padd(off, size)
            if all(pge(off, r_end) or pge(r_off, end) for r_off, r_end in rivals):
                buf.offset = off
                break
        else:  # unreachable: the max of all ends always fits
            buf.offset = ZERO
            for _, r_end in rivals:
                buf.offset = pmax(buf.offset, r_end)
        placed.append(buf)
    total: Poly = ZERO
    for b in placed:
        total = pmax(total, b.end)
    return total


# RECOMPUTE: a value that grows with the batch, written by one cheap kernel (an elementwise loop,
# an im2col patch matrix), whose reads fall in two groups far apart (the forward pass, then the
# backward pass) is written again by the same kernel just before the later group instead of being
# kept across the gap, when what that kernel reads is held there anyway (a batch norm's input,
# which its own gradient reads later still; an input or param of the caller) or is small beside it
# (a per-channel scale). Same kernel, same operands: the same bits, so every result is what it was.
# A relu after a batch norm thus costs one buffer per layer across the backward pass, not two.
# The schedule keeps the copies only where they lower the peak of live buffers (schedule.py).
SMALL = 16          # an operand at most 1/SMALL of the value's size (at n = 1) and not growing with n


def recomputable(st: Kernel) -> bool:
    """A record that writes the whole of its one value from what it reads, and nothing else: an
    elementwise loop of one plain statement, or an im2col patch matrix."""
    if isinstance(st, Patches):
        return st.kind == "im2col" and len(st.defs) == 1
    return (isinstance(st, Loop) and len(st.defs) == 1 and len(st.statements) == 1 and not st.zeros
            and not st.statements[0].accumulate and st.statements[0].combine is None
            and tuple(st.statements[0].offset) in ((), (0,))
            and st.defs[0] not in st.uses)


def recompute_late_reads(steps: list[Kernel], size, in_workspace) -> tuple[list[Kernel], dict]:
    """RECOMPUTE over a function's records (`size(v)`: elements, a Poly; `in_workspace(v)`: whether v
    has a workspace buffer, as opposed to an argument of the caller). Returns the records with the
    copies inserted and {id(copy): the value}, whose buffer is free from its last read before the
    copy to the copy (Buffer.gaps)."""
    defs: dict = {}
    reads: dict = {}
    for i, st in enumerate(steps):
        for v in st.defs:
            defs.setdefault(v, []).append(i)
        for v in st.uses:
            reads.setdefault(v, []).append(i)
    last = {v: max(defs.get(v, [-1]) + reads.get(v, [-1])) for v in set(defs) | set(reads)}
    chosen: dict[int, list] = {}       # step index of the later group's first read -> the records to copy there
    extended: dict = {}                 # value recomputed -> that step
    operands: set = set()               # what the copies read: kept whole, never recomputed themselves
    # the largest first (what they read is then kept whole); only values that grow with the run-time
    # dims (a layer's activations, not its per-channel statistics: a copy of those saves nothing)
    for v in sorted((v for v in defs if not Poly.of(size(v)).is_const), key=lambda v: (-peval(size(v), 1), defs[v])):
        where = defs[v]
        st = steps[where[0]]
        if len(where) != 1 or not in_workspace(v) or not recomputable(st) or v in operands:
            continue
        points = where + sorted(set(reads.get(v, ())))
        gap, at = max(((b - a, i + 1) for i, (a, b) in enumerate(zip(points, points[1:]))), default=(0, 0))
        if gap < 2:
            continue
        later, big = points[at], peval(size(v), 1)
        held = True
        for u in st.uses:
            if len(defs.get(u, [])) > 1 or u in extended:
                held = False          # written in parts, or itself recomputed: not simply there
            elif in_workspace(u) and last[u] < later and not (
                    Poly.of(size(u)).is_const and peval(size(u), 1) * SMALL <= big):
                held = False
        if not held:
            continue
        for u in st.uses:
            last[u] = max(last[u], later)
        operands.update(st.uses)
        extended[v] = later
        chosen.setdefault(later, []).append(st)
    if not chosen:
        return steps, {}
    out, copies = [], {}
    for i, st in enumerate(steps):
        for rec in chosen.get(i, ()):
            v = rec.defs[0]
            copy = replace(rec, comment=rec.comment + f"\n   computed again here, where {v.name} is read again, rather "
                                                      "than kept since its earlier reads (RECOMPUTE)")
            copies[id(copy)] = v
            out.append(copy)
        out.append(st)
    return out, copies


def check_plan(buffers: list[Buffer], ns=(1, 2, 7, 64, 1000)) -> None:
    """Raise AssertionError if two buffers alive at once overlap for some n (used by tests)."""
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a.overlaps_in_time(b):
                for n in ns:
                    a0, a1 = peval(a.offset, n), peval(a.offset, n) + peval(a.size, n)
                    b0, b1 = peval(b.offset, n), peval(b.offset, n) + peval(b.size, n)
                    assert a1 <= b0 or b1 <= a0, f"{a.name} and {b.name} overlap at n={n}"
