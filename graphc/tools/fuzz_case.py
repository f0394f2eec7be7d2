"""The differential fuzzer's case and its judges (docs/fuzzing.md): `Case` (a spec, a batch size,
a data seed, the optimizers, the sampled checks; written to and read from a case file),
`Failure` and `step` (how a check fails, signed so that hypothesis shrinks toward the same
failure), `arrays` (the data a spec's input names ask for) and `compare` / `same_bits` (the
tolerances every check uses). graphc/tools/fuzz_checks.py runs the checks, graphc/tools/fuzz.py
the campaigns.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import traceback
from dataclasses import dataclass, field

import numpy as np

from graphc.core.errors import GraphcError

RTOL = 1e-9                 # C vs reference, relative to the array's largest magnitude ...
ATOL = 1e-12                # ... plus this times the case's scale (its largest intermediate value)
COMPILERS = ("gcc", "clang")


def _api():
    """The public calls the checks make, from their own layers (tools may not import graphc/__init__)."""
    from types import SimpleNamespace
    from graphc.autodiff.grad import grad
    from graphc.autodiff.train import train_graph
    from graphc.core.reference import evaluate
    from graphc.frontend.spec import parse_spec
    from graphc.native.runtime import compile
    return SimpleNamespace(parse_spec=parse_spec, grad=grad, train_graph=train_graph, evaluate=evaluate, compile=compile)


def _optimizers():
    from graphc.autodiff.optimizers import SGD, Adam, AdamW
    # Plain SGD updates inside the gradient GEMMs; the others in loops. Adam's eps is not tiny and its
    # weight decay is on, so a gradient that is rounding noise around zero takes no lr-sized step.
    # AdamW's decay is decoupled (it does not enter the moments): its eps is larger still, so that
    # a gradient of rounding noise (1e-12 where the reference has 0) moves a param by lr 1e-8 at most.
    return {"sgd": SGD(lr=0.05),
            "momentum": SGD(lr=0.02, momentum=0.9, weight_decay=1e-3),
            "sgd-decay": SGD(lr=0.05, weight_decay=1e-2),
            "adam": Adam(lr=1e-2, eps=1e-6, weight_decay=1e-2),
            "adamw": AdamW(lr=1e-2, eps=1e-4, weight_decay=0.1)}


OPTIMIZER_NAMES = ("sgd", "momentum", "sgd-decay", "adam", "adamw")


# ====================================================================== cases
@dataclass
class Case:
    spec: str                               # the TOML text
    batch: int = 5
    seed: int = 0
    optimizers: tuple[str, ...] = ("sgd",)
    threads1: bool = True                   # the first model also compiled for 1 thread, and its bits compared
    standalone: tuple[str, ...] = ()        # compilers of the standalone check
    entries: tuple[str, ...] = ()           # what the generator drew (not part of the file)
    sizes: dict = field(default_factory=dict)   # the run-time dims other than the batch dim: {"T": 7}
    float32: bool = False                   # also compiled for float32 and compared (graphc/tools/fuzz_float32.py)

    HEADER = "# graphc fuzz case: "

    def options(self) -> dict:
        return dict(batch=self.batch, seed=self.seed, optimizers=list(self.optimizers), threads1=self.threads1,
                    standalone=list(self.standalone), **({"sizes": dict(self.sizes)} if self.sizes else {}),
                    **({"float32": True} if self.float32 else {}))

    def text(self, path: str | None = None, failure: "Failure | None" = None) -> str:
        """The case as a spec file: comments with the case and the command that reruns it."""
        lines = [self.HEADER + json.dumps(self.options()),
                 f"# rerun: python -m graphc.fuzz --replay {path or 'THIS_FILE'}"]
        if failure is not None:
            lines.append(f"# failure: {failure.kind}")
            lines += [f"#   {line}" for line in failure.message.splitlines()[:30]]
        return "\n".join(lines) + "\n" + self.spec

    @classmethod
    def parse(cls, text: str) -> "Case":
        """A case file (or any spec: then the defaults)."""
        options = {}
        for line in text.splitlines():
            if line.startswith(cls.HEADER):
                options = json.loads(line[len(cls.HEADER):])
        spec = "\n".join(line for line in text.splitlines() if not line.startswith("#")) + "\n"
        return cls(spec, int(options.get("batch", 5)), int(options.get("seed", 0)),
                   tuple(options.get("optimizers", ["sgd"])), bool(options.get("threads1", True)),
                   tuple(options.get("standalone", [])), sizes=dict(options.get("sizes", {})),
                   float32=bool(options.get("float32", False)))

    def __repr__(self) -> str:          # what hypothesis prints for a falsifying example
        return f"Case(options={self.options()}, spec=\n{self.spec})"


class Failure(Exception):
    """A check failed. `kind` names the check ("forward", "threads", "crash", ...)."""

    def __init__(self, kind: str, message: str, signature: str | None = None):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message
        self.signature = signature or kind


_FAILURE_TYPES: dict[str, type] = {}


def failure_type(signature: str) -> type:
    """A Failure subclass per signature: hypothesis keeps shrinking toward the same failure
    (it tells failures apart by exception type and place)."""
    t = _FAILURE_TYPES.get(signature)
    if t is None:
        t = _FAILURE_TYPES[signature] = type("Failure_" + re.sub(r"\W+", "_", signature)[:60], (Failure,), {})
    return t


@contextlib.contextmanager
def step(what: str):
    """Failures pass through; a GraphcError becomes kind "graphc-error", anything else "crash",
    each signed by the step, the exception type and the innermost graphc frame."""
    try:
        yield
    except Failure:
        raise
    except GraphcError as e:
        frame = _graphc_frame(e)
        text = str(e)
        first = next((line.strip() for line in text.splitlines() if " error: " in line), "")   # a C compiler's
        raise Failure("graphc-error", f"{what}: {type(e).__name__}" + (f": {first}" if first else "")
                      + f"\n{text}\n  raised at {frame}", f"graphc-error {what} {type(e).__name__} {frame}") from e
    except Exception as e:    # noqa: BLE001: what the fuzzer is for
        frame = _graphc_frame(e)
        kind = "fuzzer-bug" if "tools/fuzz" in frame else "crash"     # the fuzzer's own code failed
        tail = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
        raise Failure(kind, f"{what}: {type(e).__name__}: {e}\n  raised at {frame}\n{tail}",
                      f"{kind} {what} {type(e).__name__} {frame}") from e


def _graphc_frame(e: BaseException) -> str:
    """file:line (function) of the innermost frame in graphc's own files."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/graphc/" in f.filename]
    if not frames:
        return "outside graphc"
    f = frames[-1]
    return f"{f.filename[f.filename.rindex('/graphc/') + 1:]}:{f.lineno} ({f.name})"


# ====================================================================== threads
def _omp():
    """libgomp's omp_set_num_threads / omp_get_max_threads, or None (then the thread count is
    whatever OMP_NUM_THREADS says)."""
    try:
        lib = ctypes.CDLL("libgomp.so.1")
        return lib.omp_set_num_threads, lib.omp_get_max_threads
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def omp_threads(n: int):
    omp = _omp()
    if omp is None:
        yield int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
        return
    set_threads, get_threads = omp
    before = get_threads()
    set_threads(n)
    try:
        yield get_threads()
    finally:
        set_threads(before)


# ====================================================================== data
def arrays(graph, n: int, rng: np.random.Generator, sizes: dict | None = None) -> dict[str, np.ndarray]:
    """float64 inputs and params by the generator's names: x real N(0, 1); p positive in
    [0.5, 1.5]; t target rows that sum to 1; int32 labels and ids within the bounds the ops set;
    params N(0, 1/last dim) for matrices, N(0, 1/4) else; model state (running statistics) in
    [0.5, 1.5], dropout's step count an integer in [0, 1000). Other names: real N(0, 1).
    Run-time dims: the batch dim n, the others as `sizes` gives them (else n too)."""
    from graphc.native.export import label_bounds
    from graphc.ops.dropout import STEP
    bounds = label_bounds(graph)
    out = {}
    for name, v in {**graph.inputs, **graph.params}.items():
        shape = tuple((sizes or {}).get(d, n) if isinstance(d, str) else d for d in v.shape)
        if v.dtype == "int32":
            out[name] = np.asarray(rng.integers(0, bounds[name], size=shape), dtype=np.int32)
        elif name == STEP:                           # dropout's step count: a count
            out[name] = np.array(float(rng.integers(0, 1000)))
        elif name in graph.states:                   # running statistics (a variance is positive)
            out[name] = rng.uniform(0.5, 1.5, size=shape)
        elif name in graph.params:
            out[name] = rng.standard_normal(shape) / (math.sqrt(shape[-1]) if len(shape) >= 2 else 2.0)
        elif re.fullmatch(r"p\d+", name):
            out[name] = rng.uniform(0.5, 1.5, size=shape)
        elif re.fullmatch(r"t\d+", name):
            e = np.exp(rng.standard_normal(shape))
            out[name] = e / e.sum(axis=-1, keepdims=True) if shape else np.ones(())
        else:
            out[name] = rng.standard_normal(shape)
        out[name] = np.array(out[name], dtype=out[name].dtype if v.dtype == "int32" else np.float64)   # 0-d too
    return out


def _max_abs(values) -> float:
    m = 0.0
    for v in values:
        a = np.asarray(v)
        if a.size and a.dtype.kind == "f":
            m = max(m, float(np.max(np.abs(a))))
    return m


def compare(kind: str, what: str, actual, expected, scale: float, rtol: float = RTOL, extra: float = 0.0) -> None:
    """actual within rtol * max|expected| + ATOL * scale (+ extra) of expected, NaN where it is NaN."""
    from graphc.tools.check import worst_entry
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise Failure(kind, f"{what}: shape {actual.shape}, expected {expected.shape}")
    if actual.size == 0:
        return
    if not np.array_equal(np.isnan(actual), np.isnan(expected)):
        raise Failure(kind, f"{what}: NaN where the expected array has none (or the reverse); "
                      + worst_entry(actual, expected, "got"))
    finite = ~np.isnan(expected)
    with np.errstate(invalid="ignore"):                     # inf - inf: judged below
        diff = np.abs(actual[finite] - expected[finite])
    err = float(np.max(diff)) if diff.size else 0.0
    if diff.size and not np.all(np.isfinite(diff)):
        same = actual[finite] == expected[finite]            # the same infinities agree
        err = float(np.max(np.where(same, 0.0, np.where(np.isfinite(diff), diff, np.inf))))
    tol = rtol * _max_abs([expected[finite & np.isfinite(expected)]]) + ATOL * scale + extra
    if not err <= tol:
        raise Failure(kind, f"{what}: max abs error {err:.3e} > tolerance {tol:.3e}; "
                      + worst_entry(actual, expected, "got"))


def same_bits(kind: str, what: str, a: dict, b: dict) -> None:
    if a.keys() != b.keys():
        raise Failure(kind, f"{what}: keys {sorted(a)} and {sorted(b)}")
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape or x.tobytes() != y.tobytes():
            from graphc.tools.check import worst_entry
            raise Failure(kind, f"{what}: {k} differs; " + worst_entry(y, x, "2 threads"))
