"""The oracle: a NumPy interpreter of any Graph (forward or backward).

In: a Graph and named arrays. Out: every output (or every value) as NumPy
arrays, computed by each op's `reference`. It must not share code paths with
the C backend beyond the op records, so that it can judge the C.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from graphc.core.arguments import bind
from graphc.core.ir import Graph


def bind_attrs(attrs: dict, dims: dict[str, int]) -> dict:
    """Replace symbolic dims in shape attributes by their sizes at this call."""
    out = dict(attrs)
    if "shape" in out:
        out["shape"] = tuple(dims[d] if isinstance(d, str) else d for d in out["shape"])
    if isinstance(out.get("stop"), str):       # x[:T], a slice with a symbolic bound
        out["stop"] = dims[out["stop"]]
    return out


def evaluate_values(graph: Graph, arrays: dict[str, Any], dtype=np.float64) -> dict[str, np.ndarray]:
    """Every value of the graph by name (inputs, params and node outputs)."""
    real = np.dtype(dtype)
    env, dims = bind(graph, arrays, real)
    values = {graph.values[k]: v for k, v in env.items()}
    with np.errstate(all="ignore"):     # NaN and Inf propagate as in C; they are the user's to see
        for n in graph.nodes:
            out = n.op.reference(*[values[v] for v in n.inputs], **bind_attrs(n.attrs, dims))
            out = np.asarray(out)
            values[n.output] = out.astype(real) if out.dtype.kind == "f" else out
    return {v.name: a for v, a in values.items()}


def evaluate(graph: Graph, /, _dtype=np.float64, **arrays) -> dict[str, np.ndarray]:
    """Run the graph in NumPy (float64 unless `_dtype` says otherwise); return its outputs by name."""
    vals = evaluate_values(graph, arrays, _dtype)
    return {k: vals[v.name] for k, v in graph.outputs.items()}
