"""The passes in the order codegen runs them, for `graphc show --passes`.

In: a forward Graph (with its spec's [grad]). Out: (stage name, printable)
pairs: the graph after autodiff, after lowering composites and simplifying (folding, CSE, DCE),
and the kernel schedule with its fusion groups and arena offsets.
"""
from __future__ import annotations

from typing import Iterator

from graphc.core.ir import Graph


def stages(graph: Graph) -> Iterator[tuple[str, object]]:
    from graphc.autodiff.grad import grad
    from graphc.backend.lower import lower
    from graphc.backend.cprint import c_name
    from graphc.backend.schedule import Scheduler

    g = graph
    if graph.grad_spec:
        of, wrt = graph.grad_spec
        g = grad(graph, of, wrt)
        yield "autodiff (forward + backward)", g
    low = lower(g)
    yield "lower composites + simplify (fold constants and identities, CSE, DCE)", low
    outputs = {c_name(k): v for k, v in low.outputs.items()}
    sched = Scheduler(low, outputs)
    result = sched.run()
    lines = []
    computed = {v for st in result.steps for v in st.defs}   # written by a step: no value fused away
    for i, st in enumerate(result.steps):
        names = ", ".join(v.name for v in st.defs)
        fused = [v.name for v in (sched.inlined | sched.absorbed) - computed
                 if any(v in n.inputs for n in low.nodes if n.output in st.defs)]
        extra = f"   fused: {', '.join(sorted(fused))}" if fused else ""
        lines.append(f"  {i:3d}  {st.kind_name:<8} {names}{extra}")
    folded = sorted(v.name for v in sched.folded)
    if folded:
        lines.append(f"  transposes read in place by GEMM: {', '.join(folded)}")
    lines.append(memory_table(result, graph=graph))
    yield "schedule (kernels, fusion, arena)", "\n".join(lines)


def memory_table(result, n: int = 64, itemsize: int = 4, graph: Graph | None = None) -> str:
    """The arena plan of a schedule as text (sizes at n: every run-time dim at n); with several
    run-time dims (`graph`'s) the sizes name them as the spec does."""
    from graphc.backend.sizes import peval
    from graphc.backend.cprint import c_poly
    sym = graph.symbolic_dims if graph is not None else []
    names = {d: d for d in sym} if len(sym) > 1 else None
    rows = ["  arena plan (elements; n = batch):" if names is None else
            f"  arena plan (elements; every run-time dim of {', '.join(sym)} at {n} below):"]
    for b in sorted(result.buffers.values(), key=lambda b: (b.first, b.name)):
        rows.append(f"    {b.name:<14} offset {c_poly(b.offset, names):<12} size {c_poly(b.size, names):<12} live steps {b.first}..{b.last}")
    total = result.arena
    rows.append(f"    arena peak of this function {c_poly(total, names)} elements = {peval(total, n) * itemsize} bytes "
                f"at n={n} ({itemsize}-byte elements; the workspace holds the most of any function, "
                "after the GEMM packing)")
    return "\n".join(rows)
