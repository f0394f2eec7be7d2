"""The names a user may give values: plain identifiers, none of the forms graphc reserves.

Values keep their spec names in the IR and in the C (a gradient is `d_` + name, a temporary
`z__0`), so a name must be a C and Python identifier that is no keyword and none of those forms;
`fresh_name` picks the next free one of a pattern.
"""
from __future__ import annotations

import itertools
import keyword
import re
from typing import Any, Callable, Iterable

from graphc.core.errors import Location, SpecError

IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum extern
float for goto if inline int long register restrict return short signed sizeof static struct
switch typedef union unsigned void volatile while _Bool _Complex _Imaginary bool true false
main NULL errno""".split())


def check_name(name: Any, what: str, location: Location | None = None) -> str:
    """User-chosen names become C identifiers and IR names: keep them plain."""
    err = None
    if not isinstance(name, str) or not IDENT.match(name):
        err = (f"{what} name {name!r} is not a plain identifier",
               "use ASCII letters, digits and '_', starting with a letter")
    elif name.startswith("d_"):
        err = (f"{what} name {name!r} starts with 'd_', which graphc reserves for gradients",
               f"rename it, e.g. {name[2:] or 'x'}_")
    elif "__" in name:
        err = (f"{what} name {name!r} contains '__', which graphc reserves for temporaries",
               f"rename it, e.g. {name.replace('__', '_')}")
    elif name.startswith("gc_") or name in C_KEYWORDS or keyword.iskeyword(name):
        err = (f"{what} name {name!r} is reserved (a C or Python keyword, or graphc's 'gc_' prefix)",
               f"rename it, e.g. {name}_v")
    if err:
        raise SpecError(err[0], location, hint=err[1])
    return name


def is_plain_name(name: Any) -> bool:
    """Whether `name` may name a value: what check_name accepts."""
    try:
        check_name(name, "value")
    except SpecError:
        return False
    return True


def fresh_name(taken: Callable[[str], bool], first: Iterable[str], base: str, start: int = 0) -> str:
    """The first name not `taken`: one of `first`, else `base` with k appended for k = start,
    start + 1, ... (`base` ends with its separator: "z__" gives z__0, z__1). The graph's
    temporaries, the train step's state names and the C locals of train_codegen all come from here."""
    for name in itertools.chain(first, (f"{base}{k}" for k in itertools.count(start))):
        if not taken(name):
            return name
    raise AssertionError("unreachable: itertools.count never ends")
