"""graphc: compile a neural network's forward graph, and the backward graph it derives, to C.

The public API (see DESIGN.md): load, Graph, the op functions (relu, softmax,
cross_entropy, ...), grad, explain, evaluate, compile, check, init_params,
SGD, Adam, train_graph (the train step in the IR), and the GraphcError family.
"""
from graphc.errors import (  # noqa: F401
    ArgumentError, CheckError, CompileError, DTypeError, ExecutionError, GradientError,
    GraphcError, Location, ShapeError, SpecError,
)
from graphc.ir import Graph, Value  # noqa: F401
from graphc.ops import REGISTRY as _REGISTRY
from graphc.spec import load, parse_spec  # noqa: F401
from graphc.reference import evaluate  # noqa: F401
from graphc.autodiff import grad  # noqa: F401
from graphc.explain import explain  # noqa: F401

try:
    from importlib.metadata import version as _version
    __version__ = _version("graphc")
except Exception:  # running from a source tree that was never installed
    __version__ = "0+source"


def _op_function(opname: str):
    op = _REGISTRY[opname]

    def call(*args, **attrs):
        graph = next((a.graph for a in args if isinstance(a, Value)), None)
        if graph is None:
            raise GraphcError(f"{opname}: at least one argument must be a graph Value")
        return graph.apply(opname, *args, **attrs)

    call.__name__ = call.__qualname__ = opname
    call.__doc__ = type(op).__doc__
    return call


for _name, _op in _REGISTRY.items():
    if _op.public and _name not in ("add", "sub", "mul", "div", "neg", "matmul", "transpose", "const"):
        globals()[_name] = _op_function(_name)
del _name, _op

from graphc.runtime import CompiledModel, compile  # noqa: E402,F401
from graphc.check import check  # noqa: F401,E402
from graphc.training import SGD, Adam, TrainState, init_params  # noqa: E402,F401
from graphc.updates import train_graph  # noqa: E402,F401
