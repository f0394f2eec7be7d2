"""Initial values of a model's params: init_params (graphc.init_params), by the schemes of torch's
initialisers (Glorot uniform, Kaiming normal, ...), each param's scheme from its spec, the op reading
it or its rank.

In: a Graph, a spec path or a CompiledModel. Out: a dict name -> array. It never compiles anything.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np

from graphc.core.errors import ArgumentError, DTypeError
from graphc.core.ir import Graph

SCHEMES = ("xavier", "he", "normal", "zeros", "ones")


def _usage_init(graph: Graph) -> dict[str, str]:
    """The scheme each param gets from the op reading it (OpDef.input_init), for a param whose
    spec says none: a norm's weight and a running variance start at ones."""
    out: dict[str, str] = {}
    for n in graph.nodes:
        for i, scheme in n.op.input_init.items():
            if i < len(n.inputs) and n.inputs[i].node is None:
                out.setdefault(n.inputs[i].name, scheme)
    return out


def _fans(shape: tuple) -> tuple[int, int]:
    """(fan_in, fan_out) of a param laid out (out, in, ...) as the spec's W = [Dh, Dx]."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return int(shape[0]), int(shape[0])
    receptive = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    return int(shape[1]) * receptive, int(shape[0]) * receptive


def _init_one(rng: np.random.Generator, scheme: str, shape: tuple) -> np.ndarray:
    fan_in, fan_out = _fans(shape)
    if scheme in ("zeros", "ones"):
        return np.zeros(shape) if scheme == "zeros" else np.ones(shape)
    if scheme == "xavier":      # Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
        a = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-a, a, size=shape)
    if scheme == "he":          # Kaiming normal: N(0, 2 / fan_in)
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)
    return rng.normal(0.0, 0.1, size=shape)     # normal: N(0, 0.1^2)


def init_params(graph: Graph | str | Path, seed: int | None = 0,
                scheme: str | Mapping[str, str] | None = None, dtype=None) -> dict[str, np.ndarray]:
    """Initial values of every param of `graph` (a Graph, a spec path or a CompiledModel), from
    np.random.default_rng(seed), params drawn in graph order. dtype: of the arrays; by default
    the model's for a CompiledModel (so m.forward takes them as they are), else float64
    (train_state casts them). The values do not depend on dtype but for its rounding.

    Schemes: "xavier" (Glorot uniform, U(+-sqrt(6/(fan_in+fan_out)))), "he" (Kaiming normal,
    N(0, 2/fan_in)), "normal" (N(0, 0.1^2)), "zeros", "ones"; fan_in is the last dim of a
    [out, in] matrix (times the kernel size of a convolution weight). Each param's scheme:
    scheme[name] when scheme is a dict naming it; else `scheme` when it is a string and the
    param has 2+ dims; else the spec's `init = ...`; else what the op reading it asks (ones for
    a norm's weight and a running variance, as torch); else zeros for biases (fewer than 2
    dims) and xavier for matrices. Model state (running statistics) is among the params."""
    if hasattr(graph, "graph") and isinstance(getattr(graph, "graph"), Graph):
        dtype = getattr(graph, "dtype", None) if dtype is None else dtype
        graph = graph.graph
    dtype = np.dtype(np.float64 if dtype is None else dtype)
    if dtype.kind != "f":
        raise DTypeError(f"init_params: dtype must be a float type, got {dtype}", hint="float32 or float64")
    if not isinstance(graph, Graph):
        from graphc.frontend.spec import load
        graph = load(graph)
    per: Mapping[str, str] = scheme if isinstance(scheme, Mapping) else {}
    if scheme is not None and not isinstance(scheme, (str, Mapping)):
        raise ArgumentError(f"init_params: scheme must be a string or a dict name -> scheme, got {scheme!r}")
    for name, s in list(per.items()) + ([("*", scheme)] if isinstance(scheme, str) else []):
        if name != "*" and name not in graph.params:
            raise ArgumentError(f"init_params: {name!r} is not a param of {graph.name}",
                                hint=f"the params are {', '.join(graph.params)}")
        if s not in SCHEMES:
            raise ArgumentError(f"init_params: unknown scheme {s!r}", hint=f"use one of {', '.join(SCHEMES)}")
    rng = np.random.default_rng(seed)
    out, usage = {}, _usage_init(graph)
    for name, v in graph.params.items():
        shape = tuple(int(d) for d in v.shape)
        s = per.get(name) or (scheme if isinstance(scheme, str) and len(shape) >= 2 else None) \
            or graph.param_init.get(name) or usage.get(name) or ("xavier" if len(shape) >= 2 else "zeros")
        if s not in SCHEMES:
            raise ArgumentError(f"init_params: param {name!r} asks for unknown scheme {s!r}",
                                hint=f"use one of {', '.join(SCHEMES)}")
        out[name] = np.asarray(_init_one(rng, s, shape), dtype=np.float64).astype(dtype)
    return out


__all__ = ["init_params", "SCHEMES"]
