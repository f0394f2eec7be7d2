"""The matcher of backend/fusion.py's patterns (and backend/views.py's): a pattern names ops and
binds values; `match` gives the bindings under which a value matches it."""
from __future__ import annotations

from dataclasses import dataclass

from graphc.core.ir import Value


@dataclass(frozen=True)
class Pat:
    """A node of op `op` whose inputs match `args` (in either order when `commutative`), bound to
    `bind`; with op None, any value, bound to `bind` (a name bound twice must be the same value)."""
    op: str | None = None
    args: tuple = ()
    bind: str | None = None
    commutative: bool = False


def op(name: str, *args: Pat, bind: str | None = None, commutative: bool = False) -> Pat:
    return Pat(name, args, bind, commutative)


def var(bind: str) -> Pat:
    return Pat(None, (), bind)


def match(pat: Pat, v: Value, env: dict | None = None) -> dict | None:
    """The bindings under which v matches pat (extending env), or None."""
    env = dict(env or {})
    if pat.bind is not None:
        if pat.bind in env and env[pat.bind] is not v:
            return None
        env[pat.bind] = v
    if pat.op is None:
        return env
    n = v.node
    if n is None or n.op.name != pat.op or len(n.inputs) < len(pat.args):
        return None
    orders = [n.inputs]
    if pat.commutative and len(n.inputs) == 2:
        orders.append(n.inputs[::-1])
    for inputs in orders:
        out = env
        for sub, x in zip(pat.args, inputs):
            out = match(sub, x, out)
            if out is None:
                break
        else:
            return out
    return None
