"""graphc: compile a neural network's forward graph, and the backward graph it derives, to C.

The public API (see the README): load, Graph, the op functions (relu, softmax,
cross_entropy, ...), grad, explain, evaluate, compile, check, init_params,
SGD, Adam, AdamW and the recipe around them (Constant, StepLR, WarmupCosine schedules),
train_graph (the train step in the IR), and the GraphcError family.
This module only gathers them; the layers below are described in docs/architecture.md.

`import graphc` loads only the errors and the version: every other name is imported on first
use (PEP 562), so that importing graphc costs neither NumPy (the IR and the ops need it), nor
cffi and jinja2 (the C side), nor the reference, autodiff or the ONNX importer before they are
called. `from graphc import X`, `graphc.X`, `dir(graphc)` and `from graphc import *` see every
name as before; the first use pays for the imports the name needs (NumPy's the largest part).
"""
from graphc.core.errors import (  # noqa: F401
    ArgumentError, CheckError, CompileError, DTypeError, ExecutionError, GradientError,
    GraphcError, Location, NonFiniteError, ShapeError, SpecError,
)
from graphc.core.version import __version__  # noqa: F401

# name -> the module that defines it, imported on first use
_LAZY = {"Graph": "graphc.core.ir", "Value": "graphc.core.ir",
         "load": "graphc.frontend.spec", "parse_spec": "graphc.frontend.spec",
         **dict.fromkeys(("SGD", "Adam", "AdamW", "Constant", "StepLR", "WarmupCosine"), "graphc.autodiff.optimizers"),
         "evaluate": "graphc.core.reference", "from_onnx": "graphc.frontend.onnx", "grad": "graphc.autodiff.grad",
         "explain": "graphc.autodiff.explain", "train_graph": "graphc.autodiff.train",
         "compile": "graphc.native.runtime", "CompiledModel": "graphc.native.runtime",
         "TrainState": "graphc.native.train_state", "init_params": "graphc.native.training",
         "check": "graphc.tools.check"}
# the layers' packages, which `import graphc` used to import as a side effect (graphc.core.ir ...)
_PACKAGES = ("core", "ops", "frontend", "passes", "autodiff", "backend", "native", "tools")


def _functions() -> dict:
    """The op functions by name (relu, softmax, ...: frontend/functions.py's FUNCTIONS)."""
    from graphc.frontend.functions import FUNCTIONS
    return FUNCTIONS


def __getattr__(name: str):
    import importlib
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name in _PACKAGES:
        value = importlib.import_module(f"graphc.{name}")
    elif name == "__all__":
        value = sorted(n for n in __dir__() if not n.startswith("_") and n not in _PACKAGES)
    elif not name.startswith("_") and name in _functions():
        value = _functions()[name]
    else:
        raise AttributeError(f"module 'graphc' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_functions()) | set(_PACKAGES))
