"""The differential fuzzer's float32 check (docs/fuzzing.md, "float32"): the case's graph compiled
with dtype="float32" (and the case's optimizer), its forward, predict, value_and_grad and 3 train
steps (`check_train32`) against the float64 reference.

What is compared: the C in float32 is given the case's data rounded to float32, and the reference
is the float64 evaluation of that same rounded data, so the difference is the C's arithmetic
rounding alone, not the rounding of its inputs. How far that may go depends on the dtype and on
how much this graph, on this data, amplifies rounding. Each array's tolerance (`tolerance`) is

    8 · max|ref32 − ref64|  +  4 √K · u · max|ref64|  +  4 · u · scale,        u = 2⁻²⁴ (float32)

- ref32 is the same graph evaluated by NumPy in float32 (graphc.evaluate's dtype) on the same
  data: another float32 evaluation, whose deviation from float64 measures this case's
  conditioning (a cancellation, an exp, a long chain of products show up in it as they do in the
  C's). The C sums in other orders (blocked GEMMs, sequential loops; NumPy: pairwise sums and BLAS),
  whose error constants differ by small factors: 8.
- 4 √K u of the array's largest magnitude: where NumPy's float32 rounding happens to cancel (its
  pairwise sums are far more accurate than a sequential loop), the C's own bound still holds: a
  sum or dot product of K terms in float32 is typically within √K u of its terms' magnitude (a
  random walk of K roundings; 4 √K: four times that). K is bounded by the case's largest value's
  element count (no sum has more terms than its operand has elements), and at least 256. (It was
  64 u, on K ≤ 4096 elements per row, until the slice showed a sum over 298 rows at 0.87 of it:
  the rows count too.)
- 4 u of the case's scale (its largest intermediate value, as the float64 check's ATOL): a value
  computed by cancelling the case's largest values carries their rounding.

Kinks: relu, leaky_relu and max route a gradient by a comparison, and sign jumps; an operand
within its own tolerance of the kink (|z| for relu, the gap between the two largest for max) may
fall on the other side in float32 than in float64, which changes the gradient (or sign's value)
by a finite amount that no rounding bound covers. Such a case compares only what the kink cannot
change (the forward outputs, when the kink is not a sign), and the summary counts it ("float32
... (an operand within rounding of a kink)"). max_pool2d's windows are not measured: with one, the
gradients are not compared.
"""
from __future__ import annotations

import numpy as np

from graphc.tools.fuzz_case import Failure, _api, _max_abs, _optimizers, omp_threads, step

U32 = 2.0 ** -24            # float32's unit roundoff
REF32_FACTOR = 8.0
OWN_BOUND = 4.0             # times √K
MIN_TERMS = 256
SCALE_BOUND = 4.0
KINKS = ("relu", "leaky_relu", "sign", "max")     # a comparison of the operand decides the result's path
UNMEASURED = ("max_pool2d",)
TRAIN_STEPS = 3


def tolerance(expected: np.ndarray, ref32: np.ndarray, scale: float, terms: int = MIN_TERMS) -> float:
    """The float32 tolerance of one array (the module's docstring derives it); `terms`: K, the
    case's largest value's element count."""
    e = np.asarray(expected, np.float64)
    r = np.asarray(ref32, np.float64)
    dev = float(np.max(np.abs(r - e))) if e.size else 0.0
    own = OWN_BOUND * np.sqrt(max(terms, MIN_TERMS))
    return REF32_FACTOR * dev + own * U32 * _max_abs([e]) + SCALE_BOUND * U32 * scale


def judge(kind: str, what: str, actual, expected, ref32, scale: float, terms: int = MIN_TERMS) -> float:
    """actual within `tolerance` of expected; returns the error's share of the tolerance."""
    from graphc.tools.check import worst_entry
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != e.shape:
        raise Failure(kind, f"{what}: shape {a.shape}, expected {e.shape}")
    if not a.size:
        return 0.0
    tol = tolerance(e, ref32, scale, terms)
    err = float(np.max(np.abs(a - e))) if np.all(np.isfinite(a)) else np.inf
    if not err <= tol:
        dev = float(np.max(np.abs(np.asarray(ref32, np.float64) - e)))
        raise Failure(kind, f"{what}: max abs error {err:.3e} > float32 tolerance {tol:.3e} (NumPy float32 "
                      f"deviates {dev:.3e}, max magnitude {_max_abs([e]):.3e}, case scale {scale:.3e}); "
                      + worst_entry(a, e, "got"))
    return err / tol if tol > 0 else 0.0


def kink_margins(graph, values: dict, values32: dict, scale: float, terms: int = MIN_TERMS) -> list[str]:
    """The kinked ops of `graph` whose operand is within its own float32 tolerance of the kink
    (their names and ops), by the float64 and float32 evaluations of every value of `graph` itself
    (`forward_values`: graph.grad's and train_graph's graphs have merged or renamed some of them, a
    second relu(x1) being the first). An element that is exactly 0 in both is 0 by structure
    (relu(relu(x))'s inner zeros), not by rounding."""
    close = []
    for n in graph.nodes:
        name = n.op.name
        if name in UNMEASURED:
            close.append(f"{n.output.name} = {name}(...) (windows not measured)")
            continue
        if name not in KINKS:
            continue
        x = n.inputs[0]
        z, z32 = np.asarray(values[x.name], np.float64), np.asarray(values32[x.name], np.float64)
        if not z.size or x.name not in values32:
            continue
        if name == "max":
            margin = _top_gap(z, n.attrs.get("axis"))
        else:       # exact zeros in both evaluations are zeros by structure (a relu's), not by rounding
            moved = np.abs(z)[(z != 0) | (z32 != 0)]
            margin = float(np.min(moved)) if moved.size else np.inf
        delta = tolerance(z, z32, scale, terms) if x.name not in graph.inputs else 0.0
        if margin <= delta:
            close.append(f"{n.output.name} = {name}({x.name}): margin {margin:.2e} <= {delta:.2e}")
    return close


def forward_values(graph, arrays: dict, dtype=np.float64) -> dict:
    """Every value of the forward graph `graph` (graphc.core.reference.evaluate_values) from the
    arrays of its inputs and params (others in `arrays` are left out): what kink_margins reads."""
    from graphc.core.reference import evaluate_values
    return evaluate_values(graph, {k: arrays[k] for k in [*graph.inputs, *graph.params]}, dtype)


def _top_gap(z: np.ndarray, axis) -> float:
    """The smallest gap between the two largest elements of each group max reduces."""
    listed = axis if isinstance(axis, (list, tuple)) else (axis,)
    axes = tuple(range(z.ndim)) if axis is None else tuple(a % z.ndim for a in listed)
    rest = [a for a in range(z.ndim) if a not in axes]
    groups = np.transpose(z, rest + list(axes)).reshape(int(np.prod([z.shape[a] for a in rest], dtype=np.int64)), -1)
    if groups.shape[1] < 2:
        return np.inf
    top = np.sort(groups, axis=1)[:, -2:]
    return float(np.min(top[:, 1] - top[:, 0]))


def check_float32(g, data: dict, predict, result, optimizer: str | None = None) -> None:
    """The case's graph compiled for float32 (2 threads, OpenMP at 2): forward, predict and
    value_and_grad within `tolerance` of the float64 reference of the float32-rounded data; with
    `optimizer` (the case's first), compiled with it, and TRAIN_STEPS train steps checked too
    (`check_train32`)."""
    from graphc.core.reference import evaluate_values
    api = _api()
    of, wrt = g.grad_spec
    data32 = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in data.items()}
    rounded = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in data32.items()}
    with step("float32 reference"):
        bwd = api.grad(g, of, wrt)
        values = evaluate_values(bwd, rounded)
        values32 = evaluate_values(bwd, data32, np.float32)
    if any(np.asarray(v).dtype.kind == "f" and not np.all(np.isfinite(v)) for v in values32.values()):
        result.checks["float32 (skipped: NumPy's float32 evaluation overflows)"] += 1
        return
    scale = max(1.0, _max_abs(values.values()))
    terms = max(int(np.size(v)) for v in values.values())
    # the forward graph's ops (the backward's sign(relu(z)) reads zeros by structure)
    with step("float32 forward graph evaluated"):
        kinks = kink_margins(g, forward_values(g, rounded), forward_values(g, data32, np.float32), scale, terms)
    forward_only = bool(kinks)
    if any(" = sign(" in k for k in kinks):
        result.checks["float32 (skipped: a sign's operand within rounding of 0)"] += 1
        return
    ref = {k: values[v.name] for k, v in bwd.outputs.items()}
    ref32 = {k: values32[v.name] for k, v in bwd.outputs.items()}
    with step("compile for float32"):
        m = api.compile(g, dtype="float32", threads=2,
                        optimizer=None if optimizer is None else _optimizers()[optimizer])
    worst = 0.0
    with omp_threads(2):
        with step("float32 forward"):
            fwd = m.forward(**data32)
        for k, v in fwd.items():
            worst = max(worst, judge("float32", f"float32 forward {k}", v, ref[k], ref32[k], scale, terms))
        if predict is not None:
            args = [*predict.inputs, *predict.params]
            with step("float32 predict"):
                pred = m.predict(**{k: data32[k] for k in args})
                p64 = evaluate_values(predict, {k: rounded[k] for k in args})
                p32 = evaluate_values(predict, {k: data32[k] for k in args}, np.float32)
            for k, v in pred.items():
                name = predict.outputs[k].name
                worst = max(worst, judge("float32", f"float32 predict {k}", v, p64[name], p32[name], scale, terms))
        if forward_only:
            result.checks["float32 forward (gradients not compared: an operand within rounding of a kink)"] += 1
        else:
            with step("float32 value_and_grad"):
                outs, grads = m.value_and_grad(**data32)
            for k, v in outs.items():
                worst = max(worst, judge("float32", f"float32 value_and_grad {k}", v, ref[k], ref32[k], scale, terms))
            for w, v in grads.items():
                worst = max(worst, judge("float32", f"float32 value_and_grad d_{w}", v, ref[f"d_{w}"],
                                         ref32[f"d_{w}"], scale, terms))
            result.checks["float32"] += 1
            if optimizer is not None:
                worst = max(worst, check_train32(m, g, optimizer, data32, rounded, scale, terms, result))
    result.float32_worst = max(result.float32_worst, worst)


def _as(dtype, arrays: dict) -> dict:
    """The real arrays of `arrays` in `dtype` (ints as they are)."""
    return {k: (np.asarray(v, dtype) if np.asarray(v).dtype.kind == "f" else np.asarray(v)) for k, v in arrays.items()}


def check_train32(m, g, name: str, data32: dict, rounded: dict, scale: float, terms: int, result) -> float:
    """TRAIN_STEPS train steps of the float32 model `m` (compiled with optimizer `name`) on the case's
    data rounded to float32, each from the state the C reached, against graphc.train_graph evaluated
    in float64 from that state (and in float32 for its ref32): the step's outputs, params and optimizer
    state, each within `tolerance`. Returns the largest error's share of its tolerance.

    A step whose operands come within rounding of a kink (kink_margins, at that step's state) ends the
    check there. Adam's update m̂ / (√v̂ + eps) of a gradient that is rounding noise (|g| within the
    gradient's own float32 tolerance of 0, and not 0 by structure in both evaluations) is a step of
    about lr in a direction the noise picks, in any precision: those entries of the param are not
    compared (their moments are: those are smooth in g), and the summary counts them."""
    from graphc.autodiff.optimizers import Adam, AdamW
    from graphc.core.reference import evaluate_values
    api = _api()
    optimizer = _optimizers()[name]
    of, wrt = g.grad_spec
    with step(f"float32 train_graph {name}"):
        tg = api.train_graph(g, of, wrt, optimizer)
        bwd = api.grad(g, of, wrt)
    kind, worst, noise, adam_entries = f"float32 train_step {name}", 0.0, 0, 0
    with step(f"float32 train_state {name}"):
        state = m.train_state({k: data32[k] for k in g.params})
    fixed = {k: rounded[k] for k in g.inputs} | {k: rounded[k] for k in g.params if k not in tg.updates}
    for i in range(1, TRAIN_STEPS + 1):
        current = {inp: np.reshape(np.array(state.params[key] if key in state.params else state.buffers[key]),
                                   tg.values[inp].shape) for key, (inp, _out) in tg.updates.items()}
        args64, args32 = _as(np.float64, fixed | current), _as(np.float32, fixed | current)
        with step(f"float32 train_graph {name} evaluated, step {i}"):
            v64, v32 = evaluate_values(tg, args64), evaluate_values(tg, args32, np.float32)
            own = [*bwd.inputs, *bwd.params]
            d64 = evaluate_values(bwd, {k: args64[k] for k in own})
            d32 = evaluate_values(bwd, {k: args32[k] for k in own}, np.float32)
        if any(np.asarray(v).dtype.kind == "f" and not np.all(np.isfinite(v)) for v in v32.values()):
            result.checks[f"{kind} (stopped: NumPy's float32 evaluation overflows)"] += 1
            return worst
        step_scale = max(scale, _max_abs(v64.values()))
        with step(f"float32 forward graph evaluated, step {i}"):
            params = {k: args64[tg.updates[k][0]] if k in tg.updates else args64[k] for k in g.params}
            params32 = {k: args32[tg.updates[k][0]] if k in tg.updates else args32[k] for k in g.params}
            inputs = {k: args64[k] for k in g.inputs}
            inputs32 = {k: args32[k] for k in g.inputs}
            kinks = kink_margins(g, forward_values(g, inputs | params), forward_values(g, inputs32 | params32, np.float32),
                                 step_scale, terms)
        if kinks:
            result.checks[f"{kind} (stopped at a step with an operand within rounding of a kink)"] += 1
            return worst
        with step(f"float32 train_step {name} #{i}"), omp_threads(2):
            outs = m.train_step(state, **{k: data32[k] for k in g.inputs})
        for k, v in outs.items():
            out = tg.outputs[k].name
            worst = max(worst, judge(kind, f"step {i}: output {k}", v, v64[out], v32[out], step_scale, terms))
        for key, (inp, out) in tg.updates.items():
            got = np.asarray(state.params[key] if key in state.params else state.buffers[key], np.float64)
            want, want32 = (np.reshape(np.asarray(x[tg.outputs[out].name], np.float64), got.shape) for x in (v64, v32))
            keep = np.ones(got.shape, bool)
            if isinstance(optimizer, Adam) and key in wrt:       # AdamW is an Adam; not a model state (batch_norm's)
                dw = f"d_{key}"
                gw64, gw32 = (np.asarray(d[bwd.outputs[dw].name], np.float64) for d in (d64, d32))
                if optimizer.weight_decay and not isinstance(optimizer, AdamW):
                    gw64 = gw64 + optimizer.weight_decay * args64[inp]
                    gw32 = gw32 + optimizer.weight_decay * np.asarray(args32[inp], np.float64)
                tol = tolerance(gw64, gw32, step_scale, terms)
                keep = np.reshape(~((np.abs(gw64) <= tol) & ((gw64 != 0) | (gw32 != 0))), got.shape)
                noise += int(np.size(keep) - np.count_nonzero(keep))
                adam_entries += int(np.size(keep))
            worst = max(worst, judge(kind, f"step {i}: {key}", got[keep], want[keep], want32[keep], step_scale, terms))
    result.checks[kind] += 1
    if noise:
        result.checks[f"{kind} (Adam updates of a gradient within rounding of 0 not compared)"] += 1
    if adam_entries:        # how much the rule leaves out, over a campaign: entries of params, summed over steps
        result.checks["float32 train_step: Adam param entries compared"] += adam_entries - noise
        result.checks["float32 train_step: Adam param entries left out (a gradient within rounding of 0)"] += noise
    return worst
