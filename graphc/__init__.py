"""graphc: compile a neural network's forward graph, and the backward graph it derives, to C.

The public API (see the README): load, Graph, the op functions (relu, softmax,
cross_entropy, ...), grad, explain, evaluate, compile, check, init_params,
SGD, Adam, AdamW and the recipe around them (Constant, StepLR, WarmupCosine schedules),
train_graph (the train step in the IR), and the GraphcError family.
This module only gathers them; the layers below are described in docs/architecture.md.
"""
from graphc.core.errors import (  # noqa: F401
    ArgumentError, CheckError, CompileError, DTypeError, ExecutionError, GradientError,
    GraphcError, Location, NonFiniteError, ShapeError, SpecError,
)
from graphc.core.ir import Graph, Value  # noqa: F401
from graphc.core.version import __version__  # noqa: F401
from graphc.frontend.functions import FUNCTIONS as _FUNCTIONS
from graphc.frontend.spec import load, parse_spec  # noqa: F401
from graphc.autodiff.optimizers import SGD, Adam, AdamW, Constant, StepLR, WarmupCosine  # noqa: F401

globals().update(_FUNCTIONS)

# Imported on first use, so that `import graphc` loads neither cffi nor jinja2 (PEP 562): the
# C side is needed only to compile, train or check; nor the reference, autodiff or ONNX import
# before they are called.
_LAZY = {"evaluate": "graphc.core.reference", "from_onnx": "graphc.frontend.onnx", "grad": "graphc.autodiff.grad",
         "explain": "graphc.autodiff.explain", "train_graph": "graphc.autodiff.train",
         "compile": "graphc.native.runtime", "CompiledModel": "graphc.native.runtime",
         "TrainState": "graphc.native.training", "init_params": "graphc.native.training",
         "check": "graphc.tools.check"}


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graphc' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
