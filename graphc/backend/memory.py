"""Memory planning: liveness analysis over the kernel order, then one arena.

In: buffers with a size (a polynomial in the symbolic dims, in elements) and a
lifetime [first step, last step]. Out: an offset per buffer such that no two
buffers alive at the same step overlap for any values of the dims >= 1, and the
arena's peak. Sizes are polynomials (backend/sizes.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from graphc.backend.sizes import ZERO, Poly, align, padd, peval, pge, pmax  # noqa: F401  (sizes used with plans)


@dataclass
class Buffer:
    name: str
    size: Poly          # elements
    first: int          # step that writes it
    last: int           # last step that reads it
    offset: Poly = ZERO
    shape: tuple = ()   # the value's shape (dims), for the comment beside the buffer in the C

    @property
    def end(self) -> Poly:
        return padd(self.offset, align(self.size))

    def overlaps_in_time(self, other: "Buffer") -> bool:
        return not (self.last < other.first or other.last < self.first)


# The orders a plan tries, best kept: largest first; longest-lived first (the gradients of a train
# step live from their kernel to the updates at the end: placed first, they stay out of the way of
# the short-lived buffers in between); and the buffers that grow with the run-time dims first, so that
# what fits beside them at one batch size does not cost a row of every other.
ORDERS = (lambda b, n: (-peval(b.size, n), b.first, b.name),
          lambda b, n: (-(b.last - b.first), -peval(b.size, n), b.first, b.name),
          lambda b, n: (Poly.of(b.size).is_const, -peval(b.size, n), b.first, b.name))


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


def _first_fit(ordered: list[Buffer], probe_n: int) -> Poly:
    placed: list[Buffer] = []
    for buf in ordered:
        rivals = [p for p in placed if p.overlaps_in_time(buf)]
        # (sorted by value, then by terms: a set's order of Polys of dim names changes between processes)
        candidates = sorted({ZERO} | {Poly.of(p.end) for p in rivals}, key=lambda c: (peval(c, probe_n), c.terms))
        for off in candidates:
            end = padd(off, align(buf.size))
            if all(pge(off, r.end) or pge(r.offset, end) for r in rivals):
                buf.offset = off
                break
        else:  # unreachable: the max of all ends always fits
            buf.offset = ZERO
            for r in rivals:
                buf.offset = pmax(buf.offset, r.end)
        placed.append(buf)
    total: Poly = ZERO
    for b in placed:
        total = pmax(total, b.end)
    return total


def check_plan(buffers: list[Buffer], ns=(1, 2, 7, 64, 1000)) -> None:
    """Raise AssertionError if two buffers alive at once overlap for some n (used by tests)."""
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a.overlaps_in_time(b):
                for n in ns:
                    a0, a1 = peval(a.offset, n), peval(a.offset, n) + peval(a.size, n)
                    b0, b1 = peval(b.offset, n), peval(b.offset, n) + peval(b.size, n)
                    assert a1 <= b0 or b1 <= a0, f"{a.name} and {b.name} overlap at n={n}"
