"""The spec's text as TOML: its document, and where each key sits in the text.

In: the spec's text and file name. Out: the TOML document (tomllib's) and a SpecSource, which
gives the Location (line, column, section.key) of any key or of a piece of its value, for the
errors spec.py raises. tomllib gives values, not positions, and names neither a key defined twice
nor its first line: this module's line scan does.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field

from graphc.core.errors import Location, SpecError

_KEY_LINE = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_\-]+))\s*=\s*(.*)$""")
_SECTION_LINE = re.compile(r"^\s*\[([^\]]+)\]")


def read_toml(text: str, file: str) -> tuple[dict, SpecSource]:
    """The spec's TOML document and where each of its keys sits; a SpecError at the line and column
    of invalid TOML (naming both definitions of a key defined twice)."""
    src = _scan(text, file)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        repeated = _repeated_definition(src, int(m.group(1)) if m else None)
        if repeated is not None:   # the scan saw a second definition on the line tomllib stopped at
            raise repeated from None
        loc = Location(file, None, int(m.group(1)), int(m.group(2))) if m else Location(file)
        if m is None and "(at end of document)" in str(e):   # tomllib stopped at the end: point there
            last = text.splitlines() or [""]
            loc = Location(file, None, len(last), len(last[-1]) + 1)
        raise SpecError(f"not valid TOML: {str(e).split(' (at ')[0]}", loc) from None
    return doc, src


@dataclass
class SpecSource:
    """Where each `key = value` of a spec sits: (section, key) -> (line, value column, raw value)."""
    file: str
    lines: dict[tuple[str, str], tuple[int, int, str]]   # (section, key) -> (line, value col, raw value)
    repeats: dict[int, tuple[str, str, int, int]] = field(default_factory=dict)
    # line of a second definition -> (section, key, line of the first, column of the key); key "" for a [section]

    def loc(self, section: str, key: str | None = None, text: str | None = None, offset: int | None = None) -> Location:
        line, col, raw = self.lines.get((section, key or ""), (None, None, ""))
        if text is not None and col is not None and offset is not None:
            start = raw.find(text)
            col = col + (start if start >= 0 else 1) + offset
        where = (f"{section}.{key}" if section else key) if key else section
        return Location(self.file, where, line, col, text, offset)


def _scan(text: str, file: str) -> SpecSource:
    """Line and column of every `key = value` by section (tomllib gives values, not positions),
    and the keys and sections defined twice (tomllib names neither the key nor the first line)."""
    src, section, open_string = SpecSource(file, {}), "", None
    for i, line in enumerate(text.splitlines(), 1):
        if open_string is not None:   # inside a multi-line string: its lines are no keys
            if line.count(open_string) % 2:
                open_string = None
            continue
        m = _SECTION_LINE.match(line)
        if m:
            section = m.group(1).strip()
            if not line.lstrip().startswith("[["):   # [[array]] tables repeat by design
                _define(src, section, "", i, 1, "")
            continue
        m = _KEY_LINE.match(line)
        if m:   # bare or quoted key (quoted keys may hold any character, e.g. a non-ASCII name)
            key = next(k for k in m.group(1, 2, 3) if k is not None)
            _define(src, section, key, i, m.start(4) + 1, m.group(4), len(line) - len(line.lstrip()) + 1)
            quote = m.group(4)[:3]
            if quote in ('"""', "'''") and m.group(4).count(quote) % 2:
                open_string = quote
    return src


def _define(src: SpecSource, section: str, key: str, line: int, col: int, raw: str, key_col: int = 1) -> None:
    first = src.lines.setdefault((section, key), (line, col, raw))
    if first[0] != line:
        src.repeats.setdefault(line, (section, key, first[0], key_col))


def _repeated_definition(src: SpecSource, line: int | None) -> SpecError | None:
    """The error for a key or section defined twice, if that is what tomllib stopped at `line`."""
    if line not in src.repeats:
        return None
    section, key, first, col = src.repeats[line]
    if key:
        where = f"{section}.{key}" if section else key
        return SpecError(f"{where} is defined twice (lines {first} and {line})",
                         Location(src.file, where, line, col),
                         hint=f"keep one definition of {key!r}, or give the second its own name")
    return SpecError(f"[{section}] is declared twice (lines {first} and {line})",
                     Location(src.file, section, line, col),
                     hint=f"put every key of [{section}] under one [{section}] header")
