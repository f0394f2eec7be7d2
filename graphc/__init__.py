"""graphc: compile a neural network's forward graph, and the backward graph it derives, to C.

The public API (see the README): load, Graph, the op functions (relu, softmax,
cross_entropy, ...), grad, explain, evaluate, compile, check, init_params,
SGD, Adam, train_graph (the train step in the IR), and the GraphcError family.
This module only gathers them; the layers below are described in docs/architecture.md.
"""
from graphc.core.errors import (  # noqa: F401
    ArgumentError, CheckError, CompileError, DTypeError, ExecutionError, GradientError,
    GraphcError, Location, ShapeError, SpecError,
)
from graphc.core.ir import Graph, Value  # noqa: F401
from graphc.core.reference import evaluate  # noqa: F401
from graphc.core.version import __version__  # noqa: F401
from graphc.frontend.functions import FUNCTIONS as _FUNCTIONS
from graphc.frontend.spec import load, parse_spec  # noqa: F401
from graphc.frontend.onnx import from_onnx  # noqa: F401
from graphc.autodiff.grad import grad  # noqa: F401
from graphc.autodiff.explain import explain  # noqa: F401
from graphc.autodiff.optimizers import SGD, Adam  # noqa: F401
from graphc.autodiff.train import train_graph  # noqa: F401
from graphc.native.runtime import CompiledModel, compile  # noqa: F401
from graphc.native.training import TrainState, init_params  # noqa: F401
from graphc.tools.check import check  # noqa: F401

globals().update(_FUNCTIONS)
