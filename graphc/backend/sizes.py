"""Sizes as polynomials in the batch dim n: element counts, strides and buffer offsets.

A Poly is a coefficient tuple (c0, c1, ...) meaning c0 + c1 n + c2 n^2 + ...; a dim is an int
or the name of the symbolic (batch) dim, which is n. The C text of a size is cprint.c_poly's.
"""
from __future__ import annotations

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


def dim_poly(d) -> Poly:
    return (0, 1) if isinstance(d, str) else (d,)


def pmul(a: Poly, b: Poly) -> Poly:
    out = [0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    while len(out) > 1 and out[-1] == 0:
        out.pop()
    return tuple(out)


def numel(shape) -> Poly:
    p: Poly = (1,)
    for d in shape:
        p = pmul(p, dim_poly(d))
    return p


def contiguous_strides(shape) -> list[Poly]:
    strides, acc = [], (1,)
    for d in reversed(shape):
        strides.append(acc)
        acc = pmul(acc, dim_poly(d))
    return strides[::-1]


def broadcast_strides(shape, iter_shape) -> list[Poly]:
    """Strides of a `shape` array read at every index of `iter_shape` (0 where broadcast)."""
    own = contiguous_strides(shape)
    lead = len(iter_shape) - len(shape)
    out = []
    for axis, d in enumerate(iter_shape):
        k = axis - lead
        out.append((0,) if k < 0 or (shape[k] == 1 and d != 1) else own[k])
    return out
