"""Checking a model three ways: compiled C vs the NumPy reference vs finite differences.

In: a Graph or spec path, what to differentiate, a dtype and batch sizes. Out: a
CheckReport, one row per compared array. It judges the C only through the
reference (graphc.evaluate), and the reference gradients only through the loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphc.native.export import label_bounds
from graphc.core.arguments import dim_bounds
from graphc.core.ir import INT, Graph

TOLERANCES = {"float64": 1e-10, "float32": 1e-4}   # C vs reference, relative to the array's max magnitude
FD_TOLERANCE = 1e-6          # reference gradient vs central differences (float64)
FD_EPS = 1e-6
FD_SAMPLES = 20              # entries perturbed per differentiated array
DEFAULT_BATCHES = (1, 37)    # 37: a prime, so no kernel's blocking divides it


@dataclass
class CheckRow:
    value: str          # what was compared: "C forward n=37: probs", "finite differences n=1: d_W"
    abs_err: float
    rel_err: float
    tolerance: float
    ok: bool
    detail: str = ""    # for a failed row: the worst index, both numbers, and where the value comes from


@dataclass
class CheckReport:
    name: str
    dtype: str
    rows: list[CheckRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def add(self, value: str, abs_err: float, rel_err: float, tolerance: float, detail=None) -> None:
        """detail: a function giving the failure's description, called only when the row fails."""
        ok = bool(np.isfinite(rel_err) and rel_err < tolerance)
        text = "" if ok or detail is None else detail()
        self.rows.append(CheckRow(value, float(abs_err), float(rel_err), tolerance, ok, text))

    def __str__(self) -> str:
        head = ("value", "max abs err", "max rel err", "tolerance", "")
        body = [(r.value, f"{r.abs_err:.3e}", f"{r.rel_err:.3e}", f"< {r.tolerance:.0e}", "ok" if r.ok else "FAIL")
                for r in self.rows]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        lines = [f"check of {self.name} ({self.dtype})"]
        for row in [head, *body]:
            lines.append("  ".join(cell.ljust(w) if i in (0, 4) else cell.rjust(w)
                                   for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
        failed = [r for r in self.rows if not r.ok and r.detail]
        if failed:
            lines.append("")
        for r in failed:
            lines.append(f"{r.value}: {r.detail}")
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


def random_arrays(graph: Graph, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seeded float64 inputs and params; int32 labels/ids in range; inputs of log/sqrt positive."""
    bounds = label_bounds(graph)
    positive = {v.name for node in graph.nodes for v in node.op.positive_inputs(node)}   # log's, a running variance
    # Real cross-entropy targets are distributions (identity 7 needs rows summing to 1).
    targets = {node.inputs[1].name for node in graph.nodes
               if node.op.name == "cross_entropy" and node.inputs[1].dtype != INT}
    out = {}
    for kind, table in (("input", graph.inputs), ("param", graph.params)):
        for name, v in table.items():
            shape = tuple(n if isinstance(d, str) else d for d in v.shape)
            if v.dtype == INT:
                out[name] = rng.integers(0, bounds[name], size=shape).astype(np.int32)
                continue
            scale = 1.0 if kind == "input" or len(shape) < 2 else 1.0 / np.sqrt(shape[-1])
            a = rng.standard_normal(shape) * scale
            if name in targets:
                e = np.exp(a - a.max(axis=-1, keepdims=True))
                a = e / e.sum(axis=-1, keepdims=True)
            out[name] = np.abs(a) + 0.5 if name in positive else a
    return out


def worst_entry(actual, reference, name: str = "actual") -> str:
    """Where two arrays differ most, and both numbers there: 'at index [3, 17]: C 0.0123  reference 0.013'."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    if actual.shape != reference.shape:
        return f"shape {actual.shape}, reference {reference.shape}"
    if actual.size == 0:
        return ""
    diff = np.where(np.isnan(actual - reference), np.inf, np.abs(actual - reference))
    idx = np.unravel_index(int(np.argmax(diff)), actual.shape)
    where = f"at index {list(map(int, idx))}" if idx else "the scalar"
    return f"{where}: {name} {actual[idx]:.9g}  reference {reference[idx]:.9g}"


def origin_of(graph: Graph, value: str) -> str:
    """'from matmul.vjp, identity (5), for z = "x @ W.T + b1" (one_layer.toml:22)', or ''."""
    v = graph[value]
    node = v.node
    if node is None:
        return ""
    o = node.origin
    fwd = o.forward
    text = o.text or (fwd.origin.text if fwd is not None else None)
    where = o.where or (fwd.origin.where if fwd is not None else "")
    parts = []
    if fwd is not None:
        parts.append(f"from {fwd.op.name}.vjp")
    if o.identity:
        parts.append(f"identity ({o.identity})")
    if text:
        parts.append(f'for {text}' + (f" ({where})" if where else ""))
    return ", ".join(parts)


def errors(actual: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(max |actual - reference|, that over max |reference|), NaN when the shapes differ."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    if actual.shape != reference.shape:
        return float("nan"), float("nan")
    if actual.size == 0:
        return 0.0, 0.0
    diff = np.abs(actual - reference)
    abs_err = float(np.max(diff)) if np.all(np.isfinite(diff)) else float("inf")
    scale = float(np.max(np.abs(reference)))
    return abs_err, abs_err / scale if scale > 0 else (0.0 if abs_err == 0 else float("inf"))


def _loss(graph: Graph, of_value: str, arrays: dict) -> float:
    from graphc.core.reference import evaluate_values
    return float(evaluate_values(graph, arrays)[of_value])


def finite_differences(report: CheckReport, graph: Graph, of: str, wrt: list[str], arrays: dict,
                       reference_grads: dict, label: str, rng: np.random.Generator,
                       bwd_graph: Graph | None = None) -> None:
    """Reference gradients vs central differences of the reference loss, on up to FD_SAMPLES entries each.

    Errors are relative to the largest entry of the reference gradient, floored at
    1e-3 * max(1, |J|): central differences carry about 1e-16 |J| / eps of rounding."""
    of_value = graph[of].name
    loss = _loss(graph, of_value, arrays)
    floor = 1e-3 * max(1.0, abs(loss))
    for w in wrt:
        base = arrays[w]
        analytic = reference_grads[f"d_{w}"]
        picks = rng.choice(base.size, size=min(FD_SAMPLES, base.size), replace=False)
        worst, detail = 0.0, ""
        for flat in picks:
            idx = np.unravel_index(flat, base.shape)
            values = []
            for sign in (1, -1):
                bumped = base.copy()
                bumped[idx] += sign * FD_EPS
                values.append(_loss(graph, of_value, {**arrays, w: bumped}))
            numeric = (values[0] - values[1]) / (2 * FD_EPS)
            diff = abs(numeric - float(analytic[idx]))
            if not diff <= worst:     # NaN counts as the worst
                worst = diff
                detail = (f"at index {list(map(int, idx))}: analytic {float(analytic[idx]):.9g}  "
                          f"numeric {numeric:.9g}  (float64, eps {FD_EPS:g})")
        scale = max(float(np.max(np.abs(analytic))), floor)
        origin = origin_of(bwd_graph, f"d_{w}") if bwd_graph is not None else ""
        report.add(f"finite differences {label}: d_{w}", worst, worst / scale, FD_TOLERANCE,
                   lambda detail=detail, origin=origin: detail + (f"; {origin}" if origin else ""))


def check(graph_or_spec, grad_of: str | None = None, wrt: list[str] | None = None, dtype: str = "float64",
          batch: int | None = None, seed: int = 0, atol: float | None = None,
          rtol: float | None = None) -> CheckReport:
    """Compile the model and compare its C forward and gradients with the NumPy reference, and
    the reference gradients with central finite differences (float64), on seeded random data.

    batch: one batch size (default: 1 and 37). rtol: C vs reference tolerance, relative to each
    array's largest magnitude (default 1e-10 in float64, 1e-4 in float32). atol: also pass a row
    whose max abs error is below it.
    """
    from graphc.autodiff.grad import grad
    from graphc.core.reference import evaluate
    from graphc.frontend.spec import load
    from graphc.native.runtime import compile
    graph = graph_or_spec if isinstance(graph_or_spec, Graph) else load(graph_or_spec)
    if grad_of is None and wrt is None and graph.grad_spec:
        grad_of, wrt = graph.grad_spec
    elif wrt is not None and grad_of is None and graph.grad_spec:
        grad_of = graph.grad_spec[0]
    elif grad_of is not None and wrt is None:
        wrt = graph.trainable()
    wrt = list(wrt) if wrt else []
    dtype = np.dtype(dtype).name
    tolerance = rtol if rtol is not None else TOLERANCES[dtype]
    model = compile(graph, grad_of=grad_of if wrt else None, wrt=wrt or None, dtype=dtype)
    bwd = grad(graph, grad_of, wrt) if wrt else None
    report = CheckReport(graph.name, dtype)
    batches = [batch] if batch is not None else list(DEFAULT_BATCHES)
    if not graph.symbolic_dims:
        batches = [1]
    else:           # a model whose batch dim is bounded (a sequence length T <= its positional table)
        bound = dim_bounds(graph).get(graph.symbolic_dims[0])
        if bound is not None:
            batches = sorted({min(b, bound[0]) for b in batches})
    rng = np.random.default_rng(seed)
    real = np.dtype(dtype)

    def compare(label: str, actual, reference, origin: str = "") -> None:
        abs_err, rel_err = errors(actual, reference)
        if atol is not None and abs_err < atol:
            rel_err = min(rel_err, 0.0)
        def detail() -> str:      # a second pass over the arrays, only for a row that failed
            where = worst_entry(actual, reference, "C")
            return where + (f"; {origin}" if origin and where else "")

        report.add(label, abs_err, rel_err, tolerance, detail)

    for n in batches:
        arrays = random_arrays(graph, n, rng)
        # The C computes on the arrays rounded to its dtype; the reference gets the same rounded values.
        arrays = {k: a if a.dtype == np.int32 else a.astype(real).astype(np.float64) for k, a in arrays.items()}
        c_arrays = {k: a if a.dtype == np.int32 else a.astype(real) for k, a in arrays.items()}
        reference = evaluate(graph, **arrays)
        for name, value in model.forward(**c_arrays).items():
            compare(f"C forward n={n}: {name}", value, reference[name])
        if bwd is None:
            continue
        reference_bwd = evaluate(bwd, **arrays)
        values, grads = model.value_and_grad(**c_arrays)
        for name, value in values.items():
            compare(f"C value_and_grad n={n}: {name}", value, reference_bwd[name])
        for w, value in grads.items():
            compare(f"C value_and_grad n={n}: d_{w}", value, reference_bwd[f"d_{w}"], origin_of(bwd, f"d_{w}"))
        finite_differences(report, graph, grad_of, wrt, arrays, reference_bwd, f"n={n}", rng, bwd)
    return report


__all__ = ["CheckReport", "CheckRow", "check", "random_arrays"]
