"""The C printer: every piece of C text the backend makes outside the templates.

Identifiers (a value's C name, mangled only where C or graphc reserve it), sizes (c_poly),
literals, element indices and loads of loop nests, casts, argument lists and entry checks.
The kernel records (backend/kernels.py) carry what this prints; the templates print the rest.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Mapping

from graphc.backend.sizes import Poly

LOOP_VARS = ("i", "j", "k", "l", "p", "q", "r", "s")
C_RESERVED = frozenset("""auto break case char const continue default do double else enum extern float for goto
if inline int long register restrict return short signed sizeof static struct switch typedef union unsigned
void volatile while bool true false main NULL errno exp expf log logf tanh tanhf sqrt sqrtf fabs fabsf
erf erff fmax fmaxf memset memcpy size_t int32_t int64_t uint8_t n ws workspace status pack
int8_t int16_t uint16_t uint32_t uint64_t intptr_t uintptr_t ptrdiff_t
row out max sum total target shift lse dst src
alignas alignof static_assert thread_local nullptr constexpr typeof noreturn complex imaginary
asm new delete this template typename namespace operator private public protected virtual friend catch
throw using explicit mutable export decltype noexcept typeid wchar_t char8_t char16_t char32_t concept
requires consteval constinit bitand bitor compl xor and_eq or_eq xor_eq not_eq static_cast dynamic_cast
const_cast reinterpret_cast co_await co_yield co_return
stdin stdout stderr math_errhandling st_atime st_mtime st_ctime sched_priority unix linux i386
""".split()) | frozenset(LOOP_VARS)
# C_RESERVED also holds the locals of the kernel templates (row, out, max, ... of the softmax and
# gather kernels: a pointer argument of that name would be shadowed), C11/C23 and C++ keywords
# (the header is usable from C++) and lower-case macros of the headers the C sees (Python.h
# included by cffi). Macro-shaped names are mangled too: ALL_CAPS of 3+ characters (NAN, EOF,
# SIZE_MAX, GRAPHC_OK), and the <inttypes.h> / <math.h> / <stdio.h> families below.
_MACRO_LIKE = re.compile(r"^(?:[A-Z][A-Z0-9_]{2,}|(?:PRI|SCN)[A-Za-z0-9]+|M_\w+|L_(?:tmpnam|ctermid|cuserid)|P_tmpdir)$")


def _mangled(name: str) -> bool:
    """Reserved, or the mangled form of a reserved name (so that `exp` and `exp_v` stay distinct)."""
    return (name in C_RESERVED or name.startswith("gc_") or bool(_MACRO_LIKE.match(name))
            or (name.endswith("_v") and _mangled(name[:-2])))


def c_name(name: str) -> str:
    """A value's C identifier: its spec name, mangled (NAME_v) only when C, its headers or graphc
    reserve it. Injective: `exp` -> `exp_v`, and a user's own `exp_v` -> `exp_v_v`."""
    return name + "_v" if _mangled(name) else name


# The C identifier of each symbolic dim in the C being generated: codegen's `generate` sets it for
# the model it renders (the batch, the first symbolic dim, is `n`; the others are named after the
# dim), so every size printed while it runs names the dims as the functions' arguments do.
_C_DIMS: ContextVar[Mapping[str, str] | None] = ContextVar("graphc_c_dims", default=None)


@contextmanager
def dims_in_c(names: Mapping[str, str]):
    """Within the block, c_poly writes dim d as names[d] (the argument of the C functions)."""
    token = _C_DIMS.set(dict(names))
    try:
        yield
    finally:
        _C_DIMS.reset(token)


def c_dim(d: str, dims: Mapping[str, str] | None = None) -> str:
    """The C identifier of symbolic dim d: dims[d], else the one of the C being generated; with
    neither (text for people: graphc show's memory plan), `n` for a model's only run-time dim."""
    names = dims if dims is not None else _C_DIMS.get()
    if names is None:
        return "n"
    if d not in names:
        raise KeyError(f"the symbolic dim {d!r} has no C name here (known: {', '.join(names) or 'none'})")
    return names[d]


def c_poly(p, dims: Mapping[str, str] | None = None) -> str:
    """C text of a size: 128, n, 128 * n, 4 + 2 * n * n, 16 * n * T (dims: C names of the dims,
    default those of the C being generated)."""
    p = Poly.of(p)
    if dims is None and _C_DIMS.get() is None and len(p.dims) > 1:
        dims = {d: d for d in p.dims}       # people's text: the dims by their own names
    terms = []
    for mono, c in p.terms:
        factors = ([str(c)] if c != 1 or not mono else []) + [c_dim(d, dims) for d in mono]
        terms.append(" * ".join(factors))
    return " + ".join(terms) if terms else "0"


def c_real(value: float) -> str:
    """A gc_real literal: (gc_real)0.5, and for the non-finite values a fold can make, NAN or +-HUGE_VAL."""
    if math.isfinite(value):
        return f"(gc_real){value!r}"
    return "(gc_real)NAN" if value != value else f"(gc_real)({'-' if value < 0 else ''}HUGE_VAL)"


_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def c_string(text: str) -> str:
    """Any text as one C string literal that C99 reads back as its UTF-8 bytes: backslash, quote and
    control characters escaped, non-ASCII bytes in octal (which, unlike hex, stops after three
    digits), and a '?' after a '?' as \\? so that no trigraph (??/ is a backslash in -std=c99) forms.
    The templates' filter `c_string`: main.c's MPI refusal prints an error's text with it."""
    out, previous = [], ""
    for byte in str(text).encode("utf-8"):
        char = chr(byte)
        if char in _C_ESCAPES:
            out.append(_C_ESCAPES[char])
        elif char == "?" and previous == "?":
            out.append("\\?")
        elif 32 <= byte < 127:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
        previous = char
    return '"' + "".join(out) + '"'


def c_size_real(p) -> str:
    """A size as a gc_real (the count of a mean): (gc_real)(128 * n)."""
    return f"(gc_real)({c_poly(p)})"


def c_paren(text: str) -> str:
    return f"({text})"


def c_apply(template: str, operands: list[str]) -> str:
    """An op's elementwise C expression (its `c_expr`, over {0}, {1}, ...) of operand texts, parenthesized."""
    return "(" + template.format(*operands) + ")"


def c_load(slot: int) -> str:
    """The placeholder of the slot-th load of a loop statement (render_loop fills in the index)."""
    return "{L%d}" % slot


def c_onehot(slot: int) -> str:
    """1 where the column index equals the row's label (the slot-th load)."""
    return "((gc_real)({L%d} == {COL}))" % slot


def c_element(array: str, index: str) -> str:
    return f"{array}[{index}]"


def c_at(array: str, index: str) -> str:
    """A pointer `index` elements into array (the array itself at 0)."""
    return array if index == "0" else f"{array} + {index}"


def c_scalar(array: str) -> str:
    """The one element of a scalar buffer."""
    return f"{array}[0]"


def c_index(offset, strides: list[tuple[str, Poly]], names: dict[int, str] | None = None) -> str:
    """offset + var * stride + ...: the element index of an operand in a loop nest (0 when empty);
    strides that are one dim's size are written with its enum name (`names`)."""
    offset = Poly.of(offset)
    terms = [c_poly(offset)] if offset != 0 else []
    for var, s in strides:
        s = Poly.of(s)
        if s == 1:
            terms.append(var)
        elif s != 0:
            text = c_named(c_poly(s), names or {})
            terms.append(f"{var} * {text}" if s.is_const else f"{var} * ({text})")
    return " + ".join(terms) if terms else "0"


def c_size_poly(p, args: str | Mapping[str, str]) -> str:
    """A size as a size_t constant expression in macro arguments: `args` maps each dim to its
    argument (a str: the one argument of every dim, a model's batch)."""
    p = Poly.of(p)
    terms = []
    for mono, c in p.terms:
        factors = [f"(size_t)({args if isinstance(args, str) else args[d]})" for d in mono]
        terms.append(" * ".join([f"(size_t){c}"] + factors))
    return "(" + " + ".join(terms or ["(size_t)0"]) + ")"


def c_poly_table(p, dims: list[str]) -> list[str]:
    """The terms of a size as rows { coefficient, power of dims[0], power of dims[1], ... } of
    the table gc_size_poly (graphc_kernels.c) evaluates; one row { 0, ... } for 0."""
    p = Poly.of(p)
    rows = [[c] + [mono.count(d) for d in dims] for mono, c in p.terms] or [[0] * (1 + len(dims))]
    return ["{ " + ", ".join(str(x) for x in r) + " }" for r in rows]


def c_pack_pieces(pieces, n: str, t: str, maximum: str) -> str:
    """backend/packing.py's pieces as one C constant expression of size_t in n and t (each piece
    max(t * threaded, plain), `maximum` a macro of two values), 0 when there are none."""
    def line(c) -> str:
        c0, c1 = c
        if not c1:
            return f"(size_t){c0}"
        return f"(size_t){c1} * (size_t)({n})" if not c0 else f"((size_t){c0} + (size_t){c1} * (size_t)({n}))"

    def value(p) -> str:
        threaded = f"(size_t)({t}) * {line(p.threaded)}" if p.threaded else None
        plain = line(p.plain) if p.plain else None
        if threaded and plain:
            return f"{maximum}({threaded}, {plain})"
        return threaded or plain or "((size_t)0)"

    if not pieces:
        return "((size_t)0)"
    lines = [f"(size_t)({n}) < {after.start} ? {value(here)} :" for here, after in zip(pieces, pieces[1:])]
    lines.append(value(pieces[-1]))
    if len(lines) == 1:
        return f"({lines[0]})"
    return "\\\n    (" + " \\\n     ".join(lines) + ")"    # one piece a line, for a macro


def c_pack_shares(name: str, shares, args: Mapping[str, str], thread_elems: int = 0, chunk0=None) -> str:
    """backend/packing.py's shares as the header's #define NAME_PACK_ELEMS(n, ..., t): a constant
    expression of size_t in the run-time dims' C arguments (`args`: dim -> argument) and t. One
    share is one expression; several are a macro each (NAME_PACK_ELEMS_1, ...) and their most.
    GRAPHC_MAX_ and GRAPHC_MIN_ are the header's. thread_elems: an area each thread but the first
    has besides (a convolution's images shared out, ops/pointwise.py), (t - 1) of them first;
    chunk0 (elements, [(batch Poly, images)]): before those, the first thread's partial sum of a
    weight gradient over chunks of images, when a batch has more than one chunk."""
    params = ", ".join(list(dict.fromkeys(args.values())) or ["n"]) + ", t"

    def of(mono) -> str:       # a monomial's value
        return " * ".join(f"(size_t)({args[d]})" for d in mono) if len(mono) > 1 else args[mono[0]] if mono else "1"

    def expr(share) -> str:
        parts = [c_pack_pieces(p, of(m), "t", "GRAPHC_MAX_") for m, p in zip(share.over or [()], share.pieces)]
        out = parts[-1]
        for part in reversed(parts[:-1]):
            out = f"GRAPHC_MIN_({part}, {out})"
        return out

    areas = f"((size_t)(t) - 1) * (size_t){thread_elems} + " if thread_elems else ""
    if chunk0:
        elems, batches = chunk0
        more = " || ".join(f"{c_size_poly(b, args)} > {images}" for b, images in batches)
        areas += f"({more} ? (size_t){elems} : (size_t)0) + "
    if len(shares) <= 1:
        one = expr(shares[0]) if shares else '((size_t)0)'
        return f"#define {name}_PACK_ELEMS({params}) " + (f"({areas}{one})" if areas else one)
    lines, total = [], None
    for i, share in enumerate(shares, 1):
        grows = " and with ".join(" * ".join(args[d] for d in m) for m in share.over) or "nothing"
        why = "" if len(share.over) < 2 else (": the least, over those, of their need with the others unbounded")
        lines.append(f"/* {share.what} */" if share.what else f"/* the products whose sizes grow with {grows}{why} */")
        lines.append(f"#define {name}_PACK_ELEMS_{i}({params}) {expr(share)}")
        total = f"{name}_PACK_ELEMS_{i}({params})" if total is None else f"GRAPHC_MAX_({total}, {name}_PACK_ELEMS_{i}({params}))"
    lines.append(f"#define {name}_PACK_ELEMS({params}) \\\n    " + (f"({areas}{total})" if areas else total))
    return "\n".join(lines)


def c_long(name: str) -> str:
    return f"long {name}"


def c_param(ctype: str, name: str, const: bool) -> str:
    return f"{'const ' if const else ''}{ctype} *{name}"


def c_signature(params: list[str]) -> str:
    return ", ".join(params)


def c_any_null(names: list[str]) -> str:
    """The entry check that any pointer argument is NULL."""
    return " || ".join(f"!{n}" for n in names)


WIDTH = 100     # the column the emitted C wraps argument lists before


def c_wrap(head: str, params: list[str], tail: str = ")", width: int = WIDTH, opener: str = "(",
           sep: str = ",") -> str:
    """`head(p1, p2, ...)` + tail, the arguments wrapped before `width`, continuation lines aligned
    after the parenthesis: a prototype or a call as a person would write it (opener " { ": a list;
    sep " ||": a condition)."""
    one = f"{head}{opener}{(sep + ' ').join(params)}{tail}"
    if len(one) <= width or not params:
        return one
    indent = " " * (len(head) + len(opener))
    lines, line = [], f"{head}{opener}"
    for i, p in enumerate(params):
        piece = p + (sep if i < len(params) - 1 else tail)
        if line == f"{head}{opener}" or len(line) + 1 + len(piece) <= width:
            line += ("" if line == f"{head}{opener}" else " ") + piece
        else:
            lines.append(line)
            line = indent + piece
    lines.append(line)
    return "\n".join(lines)


_INT = re.compile(r"(?<![\w.])\d+(?![\w.])")


def c_count(shape, names: dict[int, str]) -> str:
    """The element count of a shape of fixed dims, as a product of the dims' enum names where a
    dim has one: one_layer_Dh * one_layer_Dx; (long) first when it would overflow an int."""
    factors, total = [], 1
    for d in shape:
        total *= d
        if d != 1:
            factors.append(names.get(d, str(d)))
    text = " * ".join(factors) or "1"
    return f"(long){text}" if total > 2 ** 31 - 1 and len(factors) > 1 else text


def c_named(text: str, names: dict[int, str]) -> str:
    """A size's C text (c_poly's) with each integer that is the size of exactly one named dim
    written as that dim's enum name: 128 * n -> one_layer_Dh * n."""
    if not names:
        return text
    return _INT.sub(lambda m: names.get(int(m.group()), m.group()), text)
