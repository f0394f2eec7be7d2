"""What the two data-parallel paths share: Python's comm= (distributed.py) and the MPI build of
the emitted main.c (mpi_emit.py).

In: a model's forward graph. Out: the companion graph whose train step applies the optimizer's
update from given gradients, how an output combines over shards of the batch rows (a mean
weighs rows / total, a sum 1), and the refusal of a model with state. No MPI here.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import GraphcError
from graphc.core.ir import Graph
from graphc.core.reference import evaluate
from graphc.frontend.functions import FUNCTIONS


def check_stateless(graph: Graph, what: str, hint: str) -> None:
    """Data-parallel training here has no collective for a model's state: refuse a model with one."""
    if graph.states:
        # the ranks' batch statistics and dropout steps would need a collective of their own
        raise GraphcError(f"{graph.name}: {what} does not train models with state yet "
                          f"({', '.join(graph.states)}: batch_norm's running statistics, dropout's step)", hint=hint)


def update_graph(graph: Graph, wrt) -> Graph:
    """The companion NAME_mpi_update: loss J = sum over the params P in wrt of sum(P * grad_P), each
    gradient grad_P an input; its gradient with respect to P is grad_P itself, exactly, so its train
    step, compiled with the model's optimizer, applies that optimizer's update from given gradients
    (the same C the model's own train step runs). Python's comm= path compiles it (distributed.py);
    `graphc emit` writes its C for the MPI build of main.c (mpi_emit.py)."""
    g = Graph(f"{graph.name}_mpi_update")
    total = None
    for name in wrt:
        p = g.param(name, tuple(graph.params[name].shape))
        grad = g.input(f"grad_{name}", tuple(graph.params[name].shape))
        term = FUNCTIONS["sum"](p * grad)
        total = term if total is None else total + term
    g.output("J", total)
    return g


def batch_weighting(graph: Graph, names, once: dict[str, np.ndarray]) -> dict[str, str | None]:
    """How each named output (one without the batch dim) combines over shards of the batch rows:
    "mean" when it is the same for a batch and for that batch twice (a shard's value weighs
    rows / total), "sum" when it is twice as large (weight 1), None for neither; by the NumPy
    reference on `once`, valid inputs and params (export.example_arrays: main.c's data)."""
    sym = graph.symbolic_dims[0] if graph.symbolic_dims else None
    twice = {k: (np.concatenate([v, v]) if k in graph.inputs and sym is not None
                 and graph.inputs[k].shape[:1] == (sym,) else v) for k, v in once.items()}
    a, b = evaluate(graph, **once), evaluate(graph, **twice)
    out = {}
    for name in names:
        x, y = np.asarray(a[name], dtype=np.float64), np.asarray(b[name], dtype=np.float64)
        out[name] = (None if x.shape != y.shape else "mean" if np.allclose(x, y, rtol=1e-9, atol=1e-12) else
                     "sum" if np.allclose(2 * x, y, rtol=1e-9, atol=1e-12) else None)
    return out
