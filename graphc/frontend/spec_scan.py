"""The spec's [scan.NAME] tables: a recurrence, as jax.lax.scan(f, init, xs), in spec lines.

    [scan.gru]
    init  = { h = "h0" }        # the carried state: its name in the body = its initial value (outer)
    xs    = { x_t = "e" }       # what is scanned over: the slice's name in the body = the sequence
    axis  = 1                   # the time axis of xs and ys (1: batch-first [N, T, ...], the default)
    carry = { h = "h_new" }     # the next carried state: a value of the body
    ys    = { hs = "h_new" }    # outer name = a body value at every step, stacked along axis
    final = { h_last = "h" }    # outer name = a carried state after the last step

    [scan.gru.body]             # the body's lines, as [graph]'s: they read the carried state, the
    h_new = "..."               # slices and any input, param or line of the model

An init may be a number (a scalar state, such as a running loss) or { shape = [...], value = 0.0 }.
The scan is one entry of [graph]'s order: it runs after the lines its init, xs and body read, and
before the lines that read its ys and final values. In: the parser (spec.py) and its Graph. Out:
the scan's nodes in that graph (ops/scan.py), named after ys and final.
"""
from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass, field

from graphc.core.errors import SpecError
from graphc.core.ir import Graph, Origin, check_name
from graphc.ops.scan import finish, new_body, unstacked

KEYS = ("init", "xs", "axis", "carry", "ys", "final", "body")


@dataclass
class ScanTable:
    label: str
    table: dict
    provides: list = field(default_factory=list)     # outer names it defines (ys, final)
    reads: set = field(default_factory=set)          # names its expressions read


def _names(tree) -> set:
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}


def scan_tables(p, g: Graph) -> dict[str, ScanTable]:
    """The [scan.NAME] tables, checked for their keys, by their order key `scan.NAME`."""
    out = {}
    for label, t in p.table("scan").items():
        section = f"scan.{label}"
        loc = p.src.loc(section)
        check_name(label, "scan", loc)
        if not isinstance(t, dict):
            raise SpecError(f"[{section}] must be a table", loc)
        extra = [k for k in t if k not in KEYS]
        if extra:
            close = difflib.get_close_matches(extra[0], KEYS, n=1)
            raise SpecError(f"[{section}] has unknown key {extra[0]!r}", p.src.loc(section, extra[0]),
                            hint=f"did you mean {close[0]!r}?" if close else f"a scan takes {', '.join(KEYS)}")
        for k in ("init", "xs", "carry", "body"):
            if not isinstance(t.get(k), dict) or not t.get(k):
                raise SpecError(f"[{section}] needs {k} = {{ ... }}" if k != "body" else
                                f"[{section}] needs its body's lines under [{section}.body]", loc,
                                hint='e.g. init = { h = "h0" }, xs = { x_t = "x" }, carry = { h = "h_new" }')
        st = ScanTable(label, t)
        for k in ("ys", "final"):
            part = t.get(k, {})
            if not isinstance(part, dict):
                raise SpecError(f"[{section}] {k} must be a table {{ outer_name = \"body value\" }}", loc)
            st.provides += list(part)
        reads = set()
        for k in ("init", "xs"):
            for key, v in t[k].items():
                if isinstance(v, str):
                    reads |= _names(p.parse_expression(section, key, v))
        body_names = set(t["body"]) | set(t["init"]) | set(t["xs"])
        for key, v in t["body"].items():
            reads |= _names(p.parse_expression(f"{section}.body", key, v)) - body_names
        st.reads = reads
        out[section] = st
    return out


def build_scan(p, g: Graph, st: ScanTable) -> None:
    """The scan's body graph from its lines, then its nodes in g, named after ys and final."""
    section, t = f"scan.{st.label}", st.table
    axis = t.get("axis", 1)
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise SpecError(f"[{section}] axis must be an integer, got {axis!r}", p.src.loc(section, "axis"))
    inits = [(k, _outer(p, g, section, k, v)) for k, v in t["init"].items()]
    seqs = [(k, _outer(p, g, section, k, v)) for k, v in t["xs"].items()]
    for k, v in seqs:
        if not -v.rank <= axis < v.rank:
            raise SpecError(f"[{section}] cannot scan over axis {axis} of {t['xs'][k]!r}, of shape "
                            f"{g.format_shape(v.shape)}", p.src.loc(section, "axis"),
                            hint=f"its time axis is from {-v.rank} to {v.rank - 1}")
    body = new_body(g, st.label)
    for k, v in inits:
        p.guard(lambda: body.input(k, v.shape, v.dtype), p.src.loc(section, "init"))
    for k, v in seqs:
        p.guard(lambda: body.input(k, unstacked(v.shape, axis % v.rank), v.dtype), p.src.loc(section, "xs"))
    p.graph_section(body, f"{section}.body", t["body"])

    def body_value(key: str, field_: str):
        name = t[field_][key]
        if not isinstance(name, str) or name not in body.values:
            close = difflib.get_close_matches(str(name), list(body.values), n=1)
            raise SpecError(f"[{section}] {field_}.{key} = {name!r} is not a value of the body",
                            p.src.loc(section, field_), hint=f"did you mean {close[0]!r}?" if close else
                            f"the body's values are {', '.join(body.values)}")
        return body.values[name]

    missing = [k for k, _ in inits if k not in t["carry"]]
    unknown = [k for k in t["carry"] if k not in t["init"]]
    if missing or unknown:
        raise SpecError(f"[{section}] carry must give the next value of each carried state ({', '.join(t['init'])})"
                        + (f": {missing[0]!r} is missing" if missing else f": {unknown[0]!r} is not in init"),
                        p.src.loc(section, "carry"))
    ys = t.get("ys", {})
    final = t.get("final", {})
    for k in final.values():
        if k not in t["init"]:
            raise SpecError(f"[{section}] final names {k!r}, which is not a carried state ({', '.join(t['init'])})",
                            p.src.loc(section, "final"))
    rec = finish(body, [k for k, _ in inits], [k for k, _ in seqs], [body_value(k, "carry") for k, _ in inits],
                 [body_value(k, "ys") for k in ys], axis % seqs[0][1].rank, st.label, list(ys))
    inputs = [v for _, v in inits] + [v for _, v in seqs] + list(body.captures)
    loc = p.src.loc(section)
    def result(part: tuple, name: str):
        return p.guard(lambda: g.apply("scan", *inputs, body=rec, part=part, name=check_name(name, "value", loc)), loc)

    with g.origin(Origin(f"[{section}]", loc)):
        for j, name in enumerate(ys):
            result(("ys", j), name)
        for name, state in final.items():
            result(("final", [k for k, _ in inits].index(state)), name)


def _outer(p, g: Graph, section: str, key: str, v):
    """An init or xs entry: an expression of the model, a number (a scalar) or { shape, value }."""
    loc = p.src.loc(section, key)
    with g.origin(Origin(f"[{section}] {key}", loc)):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return g.const(v)
        if isinstance(v, dict):
            if set(v) != {"shape", "value"}:
                raise SpecError(f"[{section}] {key} = {{ shape = [...], value = 0.0 }} takes shape and value", loc)
            shape = p.guard(lambda: g.resolve_shape(v["shape"], key, loc), loc)
            return g.apply("broadcast_to", g.const(v["value"]), shape=shape)
        if not isinstance(v, str):
            raise SpecError(f"[{section}] {key} must be an expression, a number or {{ shape, value }}", loc)
        return p.expression(g, section, key, p.parse_expression(section, key, v), v.strip())
