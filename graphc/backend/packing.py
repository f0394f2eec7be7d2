"""The GEMM packing scratch of a model, known at compile time.

In: the products of a model's C functions (ta, tb and M, N, K as backend/sizes.py Polys over the
run-time dims) and a dtype. Out: the elements of packing scratch a call needs, as
templates/graphc_kernels.c's gc_gemm_pack_elems computes it (`pack_elems`), and the most over the
model's products as a function of every run-time dim with the thread count a symbol (`pack_shares`),
which codegen prints as the header's NAME_PACK_ELEMS(n, ..., t) macro. It must not drift from the
C: tests/test_workspace_size.py compares the two over many shapes and dims.

A product whose growing sizes are all multiples of one monomial of the dims (n; n·T; a
convolution's N·Ho·Wo is 25 n) has a need that is a function of that monomial's value alone:
`pack_pieces`, piecewise-linear in it, exactly. The products are grouped by that monomial (a
`Share` each) and the need is the most over the shares. A product whose sizes grow with different
dims (s @ s.T over [N, T]: M = N = n, K = T) is bounded by the least, over its dims, of its need
with that dim at its value and the others unbounded (SATURATED): exact where any of its sizes is
too small to pack, an upper bound elsewhere.

The library's default block sizes are assumed (a model built with -DGC_GEMM_KC=... or other
block-size overrides needs its own sizes: the C function then differs and the test says so).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from graphc.backend.sizes import Poly, univariate

# graphc_kernels.c's constants (part 1 and part 2)
SMALL_WORK = 16 * 16 * 16          # GC_GEMM_SMALL_WORK
SMALL_ROWS = 4                     # GC_GEMM_SMALL_ROWS
DIRECT_WORK = 128 * 128 * 128      # GC_GEMM_DIRECT_WORK
PARALLEL_WORK = 100 * 100 * 100    # GC_GEMM_PARALLEL_WORK
NC = 512                           # GC_GEMM_NC
MC_PANELS = 16                     # GC_GEMM_MC_PANELS
TILES = ((4, 8), (6, 2), (12, 2))  # (MR, NV) of plain C, AVX2, AVX-512 (GC_GEMM_MR_k, GC_GEMM_NV_k)
NEON_TILE = {"float32": (8, 3), "float64": (6, 4)}   # GC_GEMM_MR_3F/NV_3F, _3D: 128-bit vectors
VECTOR_BYTES = (None, 32, 64)      # a vector of each: one value, 256 bits, 512 bits
KC = {"float32": 256, "float64": 128}
ITEMSIZE = {"float32": 4, "float64": 8}
DIRECT_A, DIRECT_B = 1, 2


def _area(direct: bool, lanes: int, width: int, cap: int, K: int, dtype: str) -> int:
    """gc_pack_area: one panel when read in place, else the block rounded up to panels, capped."""
    chunk = 64 // ITEMSIZE[dtype]
    kc = min(-(-K // chunk) * chunk, KC[dtype])
    rows = width
    if not direct:
        rows = -(-lanes // width) * width
        rows = min(rows, -(-cap // width) * width)
    return rows * kc


def is_small(ta: int, tb: int, M: int, N: int, K: int) -> bool:
    """gc_is_small: the plain loops, which pack nothing."""
    return (K <= 0 or M * N * K < SMALL_WORK or ((not tb or not ta) and M <= SMALL_ROWS)
            or M == 1 or N == 1 or K == 1)


def thread_elems(ta: int, tb: int, M: int, N: int, K: int, dtype: str) -> int:
    """gc_pack_thread_elems: one thread's share, the most over the four register tiles."""
    direct = (DIRECT_A | DIRECT_B) if M * N * K <= DIRECT_WORK else 0
    if not ta:
        direct |= DIRECT_A
    direct_a, direct_b = bool(direct & DIRECT_A), bool(direct & DIRECT_B) and not tb
    need = 0
    for (mr, nv), vector in zip((*TILES, NEON_TILE[dtype]), (*VECTOR_BYTES, 16)):
        nr = nv * (vector // ITEMSIZE[dtype] if vector else 1)
        need = max(need, _area(direct_a, M, mr, mr * MC_PANELS, K, dtype) + _area(direct_b, N, nr, NC, K, dtype))
    return need


def threaded(threads: int, M: int, N: int, K: int) -> bool:
    """gc_team_bound > 1: the product may be split over `threads` threads, each with a share."""
    return threads > 1 and M * N * K >= PARALLEL_WORK


def pack_elems(ta: int, tb: int, M: int, N: int, K: int, threads: int, dtype: str) -> int:
    """gc_gemm_pack_elems_f (float32) or _d (float64) of these arguments."""
    if M <= 0 or N <= 0 or is_small(ta, tb, M, N, K):
        return 0
    return (threads if threaded(threads, M, N, K) else 1) * thread_elems(ta, tb, M, N, K, dtype)


# ------------------------------------------------------------------------ as a function of n
# The size a run-time dim is taken at where a product's need is bounded over its other dims: past
# it no product's packing need grows (the panels are capped at GC_GEMM_MC_PANELS rows and
# GC_GEMM_NC columns, K at GC_GEMM_KC, and every threshold has flipped), and the need never
# shrinks as a size grows (a bigger product is no smaller, reads fewer operands in place, and is
# split over more threads). So the need at this size bounds the need at every size of that dim.
SATURATED = 1 << 20


@dataclass(frozen=True)
class Product:
    """One GEMM call: its transposes and its sizes, coefficient tuples (c0, c1) of c0 + c1 x, x
    the value of the monomial of dims its Share is over (the batch n, n·T, ...)."""
    ta: int
    tb: int
    M: tuple
    N: tuple
    K: tuple

    def at(self, n: int) -> tuple[int, int, int]:
        return tuple(sum(c * n ** i for i, c in enumerate(p)) for p in (self.M, self.N, self.K))


@dataclass(frozen=True)
class Piece:
    """From n = start on (to the next piece): max(t * (threaded), plain), each c0 + c1 n (None: no
    product of that kind), t the threads per product."""
    start: int
    threaded: tuple[int, int] | None
    plain: tuple[int, int] | None

    def value(self, n: int, threads: int) -> int:
        a = threads * (self.threaded[0] + self.threaded[1] * n) if self.threaded else 0
        b = self.plain[0] + self.plain[1] * n if self.plain else 0
        return max(a, b)


_LIMIT = 1 << 40      # past this every threshold has flipped (sizes are longs in C)


def _flip(predicate, lo: int = 1, hi: int = _LIMIT) -> int | None:
    """The first n in [lo, hi] where a predicate that is monotone in n changes its value."""
    first = predicate(lo)
    if predicate(hi) == first:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if predicate(mid) == first:
            lo = mid
        else:
            hi = mid
    return hi


def _breakpoints(products: list[Product], dtype: str) -> list[int]:
    """Every n where some product's need may stop being one linear function of n."""
    points = {1}
    for p in products:
        if all(len(d) < 2 or not any(d[1:]) for d in (p.M, p.N, p.K)):
            continue                                  # no size depends on n
        work = lambda n, p=p: p.at(n)[0] * p.at(n)[1] * p.at(n)[2]   # noqa: E731
        for predicate in (lambda n, p=p: is_small(p.ta, p.tb, *p.at(n)),
                          lambda n: work(n) <= DIRECT_WORK, lambda n: work(n) >= PARALLEL_WORK):
            flip = _flip(predicate)
            if flip is not None:
                points.add(flip)
        points.update(range(2, SMALL_ROWS + 3))
        # a size c0 + c1 n passes r (the need steps there) at the first n with c0 + c1 n > r: for a
        # convolution's M = N·Ho·Wo that is not r + 1
        passes = lambda d, rs: {max(1, (r - d[0]) // d[1] + 1) for r in rs}  # noqa: E731
        for mr, nv in TILES:
            if len(p.M) > 1 and p.M[1]:
                points.update(passes(p.M, range(mr, mr * MC_PANELS + 1, mr)))
            if len(p.N) > 1 and p.N[1]:
                for vector in VECTOR_BYTES:
                    nr = nv * (vector // ITEMSIZE[dtype] if vector else 1)
                    points.update(passes(p.N, range(nr, NC + nr + 1, nr)))
        if len(p.K) > 1 and p.K[1]:
            chunk = 64 // ITEMSIZE[dtype]
            points.update(passes(p.K, range(chunk, KC[dtype] + 1, chunk)))
    return sorted(points)


def _line(f, lo: int, hi: int | None) -> tuple[int, int]:
    """(c0, c1) of f, linear on [lo, hi] (hi None: constant from lo on); checked at the ends."""
    if hi is None or hi == lo:
        c1 = 0 if hi is None else 0
        if hi is None:
            for n in (lo + 1, lo + 1000, _LIMIT):
                assert f(n) == f(lo), "packing need still grows past its last breakpoint"
        return f(lo), c1
    c1 = f(lo + 1) - f(lo)
    c0 = f(lo) - c1 * lo
    assert f(hi) == c0 + c1 * hi and f((lo + hi) // 2) == c0 + c1 * ((lo + hi) // 2), \
        "packing need is not linear between breakpoints"
    return c0, c1


def _envelope(lines: list[tuple[int, int]], lo: int, hi: int | None) -> list[tuple[int, tuple[int, int] | None]]:
    """The upper envelope of lines on [lo, hi] as (start, line) pieces."""
    if not lines:
        return [(lo, None)]
    cuts = {lo}
    for i, (a0, a1) in enumerate(lines):
        for b0, b1 in lines[i + 1:]:
            if a1 != b1:
                x = Fraction(b0 - a0, a1 - b1)
                cut = int(x) + 1 if x >= 0 else 0
                if lo < cut and (hi is None or cut <= hi):
                    cuts.add(cut)
    out = []
    for start in sorted(cuts):
        best = max(lines, key=lambda ln: (ln[0] + ln[1] * start, ln[1]))
        out.append((start, best))
    return out


def pack_pieces(products: list[Product], dtype: str) -> list[Piece]:
    """The most packing scratch any of `products` needs at batch n, for any thread count t, as
    pieces (merged where consecutive ones agree); [] when none ever packs."""
    if not products:
        return []
    points = _breakpoints(products, dtype)
    pieces: list[Piece] = []
    for i, lo in enumerate(points):
        hi = points[i + 1] - 1 if i + 1 < len(points) else None
        threaded_lines, plain_lines = [], []
        for p in products:
            one = lambda n, p=p: pack_elems(p.ta, p.tb, *p.at(n), 1, dtype)   # noqa: E731
            line = _line(one, lo, hi)
            if line == (0, 0):
                continue
            (threaded_lines if threaded(2, *p.at(lo)) else plain_lines).append(line)
        # split where either envelope changes its line
        a = _envelope(threaded_lines, lo, hi)
        b = _envelope(plain_lines, lo, hi)
        starts = sorted({s for s, _ in a} | {s for s, _ in b})
        for start in starts:
            ta = [ln for s, ln in a if s <= start][-1]
            tb = [ln for s, ln in b if s <= start][-1]
            piece = Piece(start, ta, tb)
            if pieces and (pieces[-1].threaded, pieces[-1].plain) == (ta, tb):
                continue
            pieces.append(piece)
    if all(p.threaded is None and p.plain is None for p in pieces):
        return []
    return pieces


def pieces_value(pieces: list[Piece], n: int, threads: int) -> int:
    """The elements the pieces give at batch n with `threads` threads per product."""
    value = 0
    for piece in pieces:
        if piece.start <= n:
            value = piece.value(n, threads)
    return value


# ------------------------------------------------------------------------ over every run-time dim
@dataclass(frozen=True)
class Share:
    """The most some products pack, as a function of the run-time dims: the least, over the
    monomials `over` (sorted tuples of dim names, as sizes.py's; () for none), of `pieces` in that
    monomial's value. One monomial for products whose sizes grow with it alone (exact); one per
    dim for products whose sizes grow with several (a bound)."""
    over: tuple
    pieces: tuple          # one tuple of Pieces per monomial of `over` (one for over = ())
    what: str = ""         # what needs it, when not products (the header's comment)

    def value(self, values, threads: int) -> int:
        """The elements at `values` (dim -> int) with `threads` threads per product."""
        if not self.over:
            return pieces_value(self.pieces[0], 1, threads)
        return min(pieces_value(p, monomial_value(m, values), threads) for m, p in zip(self.over, self.pieces))


def monomial_value(mono: tuple, values) -> int:
    return Poly({mono: 1}).at(values)


def _linear(size: Poly, mono: tuple) -> tuple[int, int] | None:
    """size as (c0, c1) of c0 + c1 · mono ((c0,): constant), or None when it has another term."""
    if size.is_const:
        return (size.const,)
    c = {(): 0, mono: 0}
    for m, k in size.terms:
        if m not in c:
            return None
        c[m] += k
    return (c[()], c[mono]) if c[mono] else (c[()],)


def grows_with(dims) -> tuple:
    """The monomials a product of sizes `dims` is a function of: (m,) when every size is
    c0 + c1 · m; (); else each dim it has, alone (the product is then bounded over the others)."""
    sizes = [Poly.of(d) for d in dims]
    monos = sorted({m for p in sizes for m, _ in p.terms if m}, key=lambda m: (len(m), m))
    if len(monos) <= 1:
        return tuple(monos)
    return tuple((d,) for d in sorted({d for m in monos for d in m}))


def along(ta: int, tb: int, dims, mono: tuple) -> Product:
    """The product of sizes `dims` (Polys) as a function of the value of `mono` (one of
    grows_with(dims)): exactly, or with the other dims at SATURATED."""
    sizes = [Poly.of(d) for d in dims]
    exact = [_linear(p, mono) for p in sizes]
    if all(e is not None for e in exact):
        return Product(ta, tb, *exact)
    return Product(ta, tb, *(univariate(p, mono[0], SATURATED) for p in sizes))


def pack_shares(records, dtype: str) -> list[Share]:
    """The packing need of the products `records` ((ta, tb, (M, N, K)) with Poly sizes) as Shares,
    whose most at the dims' values is the most any of them packs there; [] when none ever packs.
    A product of constant sizes joins every other share (max(c, min(f, g)) = min(max(c, f),
    max(c, g))), or is a share of its own when there is none."""
    groups: dict[tuple, list] = {}
    for ta, tb, dims in records:
        groups.setdefault(grows_with(dims), []).append((ta, tb, dims))
    constant = groups.pop((), [])
    if not groups and constant:
        groups[()] = []
    shares = []
    for over in sorted(groups, key=lambda o: (len(o), [(len(m), m) for m in o])):
        members = groups[over] + constant
        pieces = tuple(tuple(pack_pieces(list(dict.fromkeys(along(ta, tb, dims, m) for ta, tb, dims in members)), dtype))
                       for m in (over or [()]))
        if all(pieces):        # (a monomial along which none packs: none packs at all)
            shares.append(Share(over, pieces))
    return shares


# ------------------------------------------------------------------------ attention's blocks
# Scaled dot-product attention (templates/kernels/attention.c.j2) goes by blocks of ATTENTION_ROWS
# query rows and ATTENTION_KEYS keys (fewer for shorter sequences), each head on one thread, its
# block products by the library's GEMM on that thread: the scores (or weights) of a block, its dS
# and the products' packing are that thread's share of the workspace's packing area.
ATTENTION_ROWS = 64
ATTENTION_KEYS = 64
ALIGN = 16        # elements: a share (and each part of it) starts 64-byte aligned in float


def _up(x: int, to: int) -> int:
    return -(-x // to) * to


def attention_blocks(Tq, Tk) -> tuple[int, int]:
    """(query rows, keys) per block: ATTENTION_ROWS and ATTENTION_KEYS, or a sequence length of a
    fixed size rounded up to whole vectors (8) when it is shorter."""
    br, bc = ATTENTION_ROWS, ATTENTION_KEYS
    if isinstance(Tq, int):
        br = min(br, _up(Tq, 8))
    if isinstance(Tk, int):
        bc = min(bc, _up(Tk, 8))
    return br, bc


def attention_scratch(br: int, bc: int, D: int, Dv: int, dscores: bool) -> dict:
    """One thread's share of attention's scratch, in elements (the same count serves float and
    double): `pack` for its block products (the most gc_gemm_pack_elems gives any of them on one
    thread: S = Q Kᵀ, O += P V, and the backward pass's dP = dO Vᵀ, dV += Pᵀ dO, dQ += dS K,
    dK += dSᵀ Q), then a block of scores, then (dscores) a block of dS. As the Attention record's
    fields: pack, blocks (1 or 2) and share (the whole of it)."""
    dims = [(0, 1, br, bc, D), (0, 0, br, Dv, bc), (0, 1, br, bc, Dv), (1, 0, bc, Dv, br),
            (0, 0, br, D, bc), (1, 0, bc, D, br)]
    pack = _up(max(pack_elems(ta, tb, M, N, K, 1, dt) for dt in ITEMSIZE for ta, tb, M, N, K in dims
                   if min(M, N, K) > 0), ALIGN)
    blocks = 2 if dscores else 1
    return dict(pack=pack, blocks=blocks, share=pack + blocks * _up(br * bc, ALIGN))


def scratch_share(elems: int) -> Share:
    """A need of `elems` whatever the dims and threads: the first thread's share of attention's
    blocks (the others' are areas of their own: codegen's thread_elems), a Share of its own."""
    return Share((), ((Piece(1, None, (elems, 0)),),), "the first thread's share of the blocks of attention")


def shares_value(shares: list[Share], values, threads: int) -> int:
    """The elements of packing the shares give at `values` (dim -> int)."""
    return max((s.value(values, threads) for s in shares), default=0)
