"""A graph run by PyTorch eager, op by op: the peer `graphc demo` and the benchmarks time graphc
against, and a second opinion on its numbers.

`TorchPeer(graph, params)` holds the params as leaf tensors and the model state (running
statistics) as buffers; `forward(training=...)` runs the graph's nodes with torch.nn.functional
(batch_norm with training=True updates the buffers as torch does; dropout draws from torch's
generator, so its masks differ from graphc's), and `fit_epoch` trains one epoch with a
torch.optim optimizer in the minibatch order graphc's fit uses. PyTorch is optional: importing
this module without it raises GraphcError.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from graphc.core.errors import GraphcError
from graphc.core.ir import Graph

try:
    import torch
    import torch.nn.functional as F
except ImportError:      # pragma: no cover - the callers check first
    raise GraphcError("the PyTorch peer needs torch", hint="pip install torch") from None


def _sizes(shape, batch: int) -> list[int]:
    return [batch if isinstance(d, str) else d for d in shape]


def _pool_stride(a):
    return a["kernel_size"] if a.get("stride") is None else a["stride"]


def _reduce(fn):
    def run(x, axis=None, keepdims=False):
        if axis is None:
            return fn(x)
        return fn(x, dim=axis, keepdim=keepdims)
    return run


_UNARY: dict[str, Callable] = {
    "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "exp": torch.exp, "log": torch.log,
    "sqrt": torch.sqrt, "square": torch.square, "neg": torch.neg, "erf": torch.erf, "sign": torch.sign,
    "silu": F.silu,
}
_BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "matmul": torch.matmul}


class TorchPeer:
    """The forward graph in PyTorch eager, with graphc's params (and state) as its tensors."""

    def __init__(self, graph: Graph, params: dict[str, np.ndarray], dtype: str = "float32", threads: int | None = None):
        if threads is not None:
            torch.set_num_threads(threads)
        self.graph, self.dtype = graph, getattr(torch, dtype)
        self.params = {k: torch.tensor(np.asarray(params[k]), dtype=self.dtype, requires_grad=k not in graph.states)
                       for k in graph.params}

    def trainable(self) -> list:
        return [self.params[k] for k in self.graph.trainable()]

    def forward(self, training: bool = True, **inputs) -> dict:
        """The outputs (those the given inputs determine), as tensors."""
        env = dict(self.params)
        for k, v in inputs.items():
            env[k] = torch.as_tensor(v) if np.asarray(v).dtype.kind in "iu" else torch.as_tensor(v, dtype=self.dtype)
        batch = next((int(np.asarray(v).shape[0]) for k, v in inputs.items()
                      if self.graph.inputs[k].shape and isinstance(self.graph.inputs[k].shape[0], str)), 1)
        for n in self.graph.nodes:
            if all(v.name in env for v in n.inputs):       # (without labels: the outputs that need none)
                env[n.output.name] = self._node(n, [env[v.name] for v in n.inputs], training, batch)
        return {k: env[v.name] for k, v in self.graph.outputs.items() if v.name in env}

    def _node(self, n, x, training: bool, batch: int):
        op, a = n.op.name, n.attrs
        if op in _UNARY:
            return _UNARY[op](x[0])
        if op in _BINARY:
            return _BINARY[op](x[0], x[1])
        if op == "const":
            return torch.tensor(a["value"], dtype=self.dtype)
        if op == "transpose":
            return x[0].T if x[0].dim() <= 2 and not a.get("axes") else x[0].permute(*a["axes"])
        if op in ("conv2d", "conv1d"):
            conv = F.conv2d if op == "conv2d" else F.conv1d
            return conv(x[0], x[1], x[2] if len(x) > 2 else None, a["stride"], a["padding"], a["dilation"], a["groups"])
        if op == "max_pool2d":
            return F.max_pool2d(x[0], a["kernel_size"], _pool_stride(a), a["padding"], a.get("dilation", 1))
        if op == "avg_pool2d":
            return F.avg_pool2d(x[0], a["kernel_size"], _pool_stride(a), a["padding"])
        if op == "adaptive_avg_pool2d":
            return F.adaptive_avg_pool2d(x[0], a["output_size"])
        if op == "batch_norm":
            return F.batch_norm(x[0], x[1], x[2], *(x[3:] + [None] * (5 - len(x))), training=training,
                                momentum=a["momentum"], eps=a["eps"])
        if op == "layer_norm":
            return F.layer_norm(x[0], a["normalized_shape"], *(x[1:] + [None] * (3 - len(x))), eps=a["eps"])
        if op == "dropout":
            return F.dropout(x[0], a["p"], training=training)
        if op in ("gelu", "leaky_relu", "elu", "softplus"):
            return getattr(F, op)(x[0], **a)
        if op == "flatten":
            return torch.flatten(x[0], a["start_dim"], a["end_dim"])
        if op == "reshape":
            return x[0].reshape(_sizes(a["shape"], batch))
        if op == "permute":
            return x[0].permute(*a["axes"])
        if op == "concat":
            return torch.cat(x, dim=a["axis"])
        if op in ("sum", "mean", "max"):
            fn = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax}[op]
            return _reduce(fn)(x[0], a["axis"], a["keepdims"])
        if op in ("softmax", "log_softmax"):
            return getattr(F, op)(x[0], dim=a["axis"])
        if op == "cross_entropy":
            y = x[1].long() if x[1].dtype in (torch.int32, torch.int64) else x[1]
            return F.cross_entropy(x[0].reshape(-1, x[0].shape[-1]), y.reshape(-1) if y.dtype == torch.long
                                   else y.reshape(-1, x[0].shape[-1]))
        raise GraphcError(f"the PyTorch peer has no translation of {op} (node {n.output.name})")

    def fit_epoch(self, optimizer, loss: str, batch_size: int, order: np.ndarray, **data) -> float:
        """One epoch of minibatches in `order` (rows), as graphc's fit: returns the mean loss."""
        total, rows = 0.0, len(order)
        tensors = {k: (torch.as_tensor(v) if np.asarray(v).dtype.kind in "iu" else torch.as_tensor(v, dtype=self.dtype))
                   for k, v in data.items()}
        for i in range(0, rows, batch_size):
            idx = torch.as_tensor(order[i:i + batch_size])
            optimizer.zero_grad(set_to_none=True)
            value = self.forward(training=True, **{k: t[idx] for k, t in tensors.items()})[loss]
            value.backward()
            optimizer.step()
            total += float(value.detach()) * len(idx)
        return total / rows

    def predict(self, output: str, **inputs) -> np.ndarray:
        with torch.no_grad():
            return self.forward(training=False, **inputs)[output].numpy()
