"""Memory planning: liveness analysis over the kernel order, then one arena.

In: buffers with a size (a polynomial in the batch dim n, in elements) and a
lifetime [first step, last step]. Out: an offset per buffer such that no two
buffers alive at the same step overlap for any n >= 1, and the arena's peak.
Polynomials are coefficient tuples (c0, c1, ...) meaning c0 + c1 n + c2 n^2.
"""
from __future__ import annotations

from dataclasses import dataclass

Poly = tuple[int, ...]
ALIGN = 16          # elements: 64 bytes of float, 128 of double


def padd(a: Poly, b: Poly) -> Poly:
    n = max(len(a), len(b))
    return tuple((a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n))


def pmax(a: Poly, b: Poly) -> Poly:
    n = max(len(a), len(b))
    return tuple(max(a[i] if i < len(a) else 0, b[i] if i < len(b) else 0) for i in range(n))


def pge(a: Poly, b: Poly) -> bool:
    """a >= b for every n >= 0 (coefficient-wise, which suffices and is exact for our use)."""
    n = max(len(a), len(b))
    return all((a[i] if i < len(a) else 0) >= (b[i] if i < len(b) else 0) for i in range(n))


def peval(a: Poly, n: int) -> int:
    return sum(c * n ** i for i, c in enumerate(a))


def align(a: Poly) -> Poly:
    return tuple(-(-c // ALIGN) * ALIGN for c in a)


@dataclass
class Buffer:
    name: str
    size: Poly          # elements
    first: int          # step that writes it
    last: int           # last step that reads it
    offset: Poly = ()

    @property
    def end(self) -> Poly:
        return padd(self.offset, align(self.size))

    def overlaps_in_time(self, other: "Buffer") -> bool:
        return not (self.last < other.first or other.last < self.first)


def plan(buffers: list[Buffer], probe_n: int = 64) -> Poly:
    """Assign offsets (first fit, largest first); return the arena size in elements."""
    placed: list[Buffer] = []
    for buf in sorted(buffers, key=lambda b: (-peval(b.size, probe_n), b.first, b.name)):
        rivals = [p for p in placed if p.overlaps_in_time(buf)]
        candidates = sorted({(0,)} | {p.end for p in rivals}, key=lambda c: peval(c, probe_n))
        for off in candidates:
            end = padd(off, align(buf.size))
            if all(pge(off, r.end) or pge(r.offset, end) for r in rivals):
                buf.offset = off
                break
        else:  # unreachable: the max of all ends always fits
            buf.offset = (0,)
            for r in rivals:
                buf.offset = pmax(buf.offset, r.end)
        placed.append(buf)
    total: Poly = (0,)
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
