"""Sizes as polynomials over the graph's symbolic (run-time) dims: element counts, strides and
buffer offsets.

A Poly is a polynomial with integer coefficients over the symbolic dims' names: 128, 16 * N,
16 * N * T + 4. A dim is an int or the name of a symbolic dim. The functions below take ints
(and the 1-tuples of constants the first version of this module used, `(0,)`) where they take
a Poly. Polys here only ever have non-negative coefficients (sizes), and a run-time dim is at
least 1 (the C rejects less): `pge` and `pmax` compare for every value of the dims >= 1, with each
dim written 1 + m, so a constant beside a size that grows with n is compared at n = 1 where it
matters (a model run at batch 1 on a microcontroller), not at n = 0. The C
text of a size is cprint.c_poly's; which C identifier stands for which dim is codegen's.
"""
from __future__ import annotations

from typing import Iterable, Mapping

ALIGN = 16          # elements: 64 bytes of float, 128 of double

Monomial = tuple    # sorted tuple of dim names, one entry per power: ("N", "N", "T") is N^2 T


class Poly:
    """c + Σ coefficient · monomial over dim names, immutable and hashable. Compares equal to an
    int (and to a 1-tuple `(c,)`) when it is that constant."""

    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[Monomial, int] | Iterable[tuple[Monomial, int]] = ()):
        items = terms.items() if isinstance(terms, Mapping) else terms
        acc: dict[Monomial, int] = {}
        for mono, c in items:
            mono = tuple(sorted(mono))
            acc[mono] = acc.get(mono, 0) + int(c)
        object.__setattr__(self, "terms", tuple(sorted(((m, c) for m, c in acc.items() if c),
                                                       key=lambda t: (len(t[0]), t[0]))))

    def __setattr__(self, *_):
        raise AttributeError("Poly is immutable")

    # ---------------------------------------------------------------- making and reading
    @staticmethod
    def of(x) -> "Poly":
        """x as a Poly: a Poly, an int, a 1-tuple (c,) or a dim (name or size)."""
        if isinstance(x, Poly):
            return x
        if isinstance(x, bool):
            raise TypeError(f"a size is an int or a Poly, not {x!r}")
        if isinstance(x, int):
            return Poly({(): x})
        if isinstance(x, str):
            return Poly({(x,): 1})
        if isinstance(x, tuple) and len(x) == 1 and isinstance(x[0], int):
            return Poly({(): x[0]})
        raise TypeError(f"a size is an int, a dim name or a Poly, not {x!r}")

    @property
    def const(self) -> int:
        """The constant term."""
        return dict(self.terms).get((), 0)

    @property
    def is_const(self) -> bool:
        return all(not m for m, _ in self.terms)

    @property
    def dims(self) -> tuple[str, ...]:
        """The dims it depends on, sorted by name."""
        return tuple(sorted({d for m, _ in self.terms for d in m}))

    def coeff(self, mono: Monomial = ()) -> int:
        return dict(self.terms).get(tuple(sorted(mono)), 0)

    def __int__(self) -> int:
        if not self.is_const:
            raise TypeError(f"size {self} depends on the run-time dims {', '.join(self.dims)}")
        return self.const

    def __getitem__(self, i: int) -> int:
        """p[0]: the constant term (what the coefficient tuples of the first version gave)."""
        if i != 0:
            raise TypeError("a Poly has no coefficient index but 0 (its constant term): use coeff((dim,))")
        return self.const

    def __iter__(self):
        raise TypeError("a Poly is not a coefficient tuple: use .terms, .const or coeff()")

    # ---------------------------------------------------------------- arithmetic and order
    def __add__(self, other) -> "Poly":
        return Poly(self.terms + Poly.of(other).terms)

    __radd__ = __add__

    def __mul__(self, other) -> "Poly":
        o = Poly.of(other)
        return Poly([(a + b, x * y) for a, x in self.terms for b, y in o.terms])

    __rmul__ = __mul__

    def __eq__(self, other) -> bool:
        try:
            return self.terms == Poly.of(other).terms
        except TypeError:
            return NotImplemented

    def __hash__(self) -> int:
        return hash(self.const) if self.is_const else hash(self.terms)

    def ge(self, other) -> bool:
        """self >= other for every value of the dims >= 1 (what a run-time dim takes: the C rejects
        n < 1). Sufficient, and exact for what the plans compare (sums of monomials of one dim): with
        every dim written 1 + m, the difference has no negative coefficient in the m's."""
        return all(c >= 0 for c in _difference(_from_one(self), _from_one(Poly.of(other))).values())

    def max(self, other) -> "Poly":
        """At least both for every value of the dims >= 1, and exactly their larger one at dims 1:
        the coefficient-wise larger in the m's of dim = 1 + m (max(8000 n + 5008, 16064 n + 64) is
        16064 n + 64, not 16064 n + 5008: a constant scratch beside a per-row buffer costs nothing
        when the per-row side is the larger at n = 1). Where that has a negative coefficient back in
        the dims (not a size), the coefficient-wise larger in the dims themselves."""
        o, mine = _from_one(Poly.of(other)), _from_one(self)
        back = _to_dims({m: max(mine.get(m, 0), o.get(m, 0)) for m in set(o) | set(mine)})
        if all(c >= 0 for c in back.values()):
            return Poly(back)
        o, mine = dict(Poly.of(other).terms), dict(self.terms)
        return Poly({m: max(mine.get(m, 0), o.get(m, 0)) for m in set(o) | set(mine)})

    def at(self, values) -> int:
        """The value at `values`: a dict dim -> int, or one int every dim takes."""
        total = 0
        for mono, c in self.terms:
            for d in mono:
                if isinstance(values, Mapping):
                    if d not in values:
                        raise KeyError(f"no value for the dim {d} of size {self}")
                    c *= values[d]
                else:
                    c *= values
            total += c
        return total

    def __repr__(self) -> str:
        if not self.terms:
            return "0"
        return " + ".join(" * ".join(([str(c)] if c != 1 or not m else []) + list(m)) for m, c in self.terms)


def _shift(p: dict, sign: int) -> dict:
    """p's coefficients after each dim d is written d + sign (sign 1: in the m's of d = 1 + m, as the
    monomial's dim names; sign -1: back)."""
    out: dict = {}
    for mono, c in p.items():
        acc = {(): c}
        for d in mono:      # times (d + sign)
            nxt: dict = {}
            for m, k in acc.items():
                up = tuple(sorted(m + (d,)))
                nxt[up] = nxt.get(up, 0) + k
                nxt[m] = nxt.get(m, 0) + sign * k
            acc = nxt
        for m, k in acc.items():
            out[m] = out.get(m, 0) + k
    return {m: c for m, c in out.items() if c}


def _from_one(p: "Poly") -> dict:
    return _shift(dict(p.terms), 1)


def _to_dims(p: dict) -> dict:
    return _shift(p, -1)


def _difference(a: dict, b: dict) -> dict:
    return {m: a.get(m, 0) - b.get(m, 0) for m in set(a) | set(b)}


ZERO, ONE = Poly.of(0), Poly.of(1)


def padd(a, b) -> Poly:
    return Poly.of(a) + b


def pmax(a, b) -> Poly:
    return Poly.of(a).max(b)


def pge(a, b) -> bool:
    """a >= b for every value of the dims >= 1 (Poly.ge)."""
    return Poly.of(a).ge(b)


def peval(a, values) -> int:
    """a at `values`: a dict dim -> int, or one int for every dim (the batch, in a model with one)."""
    return Poly.of(a).at(values)


def align(a) -> Poly:
    return Poly({m: -(-c // ALIGN) * ALIGN for m, c in Poly.of(a).terms})


def dim_poly(d) -> Poly:
    return Poly.of(d)


def pmul(a, b) -> Poly:
    return Poly.of(a) * b


def numel(shape) -> Poly:
    p = ONE
    for d in shape:
        p = p * dim_poly(d)
    return p


def contiguous_strides(shape) -> list[Poly]:
    strides, acc = [], ONE
    for d in reversed(shape):
        strides.append(acc)
        acc = acc * dim_poly(d)
    return strides[::-1]


def broadcast_strides(shape, iter_shape) -> list[Poly]:
    """Strides of a `shape` array read at every index of `iter_shape` (0 where broadcast)."""
    own = contiguous_strides(shape)
    lead = len(iter_shape) - len(shape)
    out = []
    for axis, d in enumerate(iter_shape):
        k = axis - lead
        out.append(ZERO if k < 0 or (shape[k] == 1 and d != 1) else own[k])
    return out


def univariate(a, dim: str | None, others: int) -> tuple[int, ...]:
    """a as the coefficient tuple (c0, c1, ...) of a polynomial in `dim` alone, every other dim
    set to `others` (backend/packing.py's products, which depend on the batch: the other dims
    at a value past which the packing need no longer grows)."""
    p = Poly.of(a)
    out: dict[int, int] = {}
    for mono, c in p.terms:
        power = sum(1 for d in mono if d == dim)
        out[power] = out.get(power, 0) + c * others ** (len(mono) - power)
    top = max(out, default=0)
    return tuple(out.get(i, 0) for i in range(top + 1))
