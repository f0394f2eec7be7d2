"""The convolutional and normalization ops of ONNX import (CNN_OPS, part of graphc/frontend/onnx.py's table):
Conv, MaxPool, AveragePool, GlobalAveragePool, BatchNormalization, LayerNormalization, Dropout,
Erf (and with it the erf form of GELU) and Gelu, each one entry of ONNX_OPS built from graphc's
ops of the same meaning (torch.nn.functional's, NCHW).

BatchNormalization's mean and var initializers become model state (the spec's [state]): m.predict
computes what the ONNX model (an inference graph) computes, with those running statistics, and
training normalizes by the batch's statistics and updates them, with ONNX's momentum m as
graphc's 1 - m. Dropout is the identity in predict, as in the ONNX inference graph.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.frontend.onnx_table import INTS, OnnxNode, OnnxOp


def _pads(n: OnnxNode, pads, spatial: int) -> tuple:
    """ONNX's pads [x1_begin, x2_begin, ..., x1_end, x2_end] as graphc's symmetric padding."""
    if pads is None:
        return (0,) * spatial
    if len(pads) != 2 * spatial:
        n.fail(f"pads {pads} must have {2 * spatial} values (begin and end of each spatial axis)")
    begin, end = pads[:spatial], pads[spatial:]
    if list(begin) != list(end):
        n.fail(f"pads {pads}: graphc pads each axis the same at both ends (torch's padding)", cls=ShapeError,
               hint="export with symmetric padding, or pad explicitly before the op")
    return tuple(int(p) for p in begin)


def _spatial(n: OnnxNode, x, op: str) -> int:
    if x.rank not in (3, 4):
        n.fail(f"{op} takes an input of rank 3 ([N, C, L]) or 4 ([N, C, H, W]), got rank {x.rank}", cls=ShapeError)
    return x.rank - 2


def _ints_or_default(values, spatial: int, default: int) -> tuple:
    return tuple(int(v) for v in values) if values is not None else (default,) * spatial


def _conv(n: OnnxNode, x, w, b=None, *, dilations, group, kernel_shape, pads, strides):
    spatial = _spatial(n, x, "Conv")
    if kernel_shape is not None and tuple(kernel_shape) != tuple(w.shape[2:]):
        n.fail(f"kernel_shape {kernel_shape} differs from the weight's {tuple(w.shape[2:])}", cls=ShapeError)
    pad, stride = _pads(n, pads, spatial), _ints_or_default(strides, spatial, 1)
    dilation = _ints_or_default(dilations, spatial, 1)
    one = (lambda t: t[0]) if spatial == 1 else (lambda t: t)
    op = "conv2d" if spatial == 2 else "conv1d"
    args = (x, w) + ((b,) if b is not None else ())
    return n.g.apply(op, *args, stride=one(stride), padding=one(pad), dilation=one(dilation), groups=int(group))


def _pool(op: str, avg: bool):
    def convert(n: OnnxNode, x, *, kernel_shape, pads, strides, ceil_mode, **more):
        if _spatial(n, x, op) != 2:
            n.fail(f"graphc pools 2-D images ([N, C, H, W]); this input has rank {x.rank}", cls=ShapeError)
        if kernel_shape is None:
            n.fail("kernel_shape is required")
        attrs = dict(kernel_size=tuple(kernel_shape), stride=_ints_or_default(strides, 2, 1),
                     padding=_pads(n, pads, 2), ceil_mode=bool(ceil_mode))
        if avg:
            attrs["count_include_pad"] = bool(more["count_include_pad"])
        else:
            if more.get("storage_order"):
                n.fail("storage_order=1 (column major) is not supported")
            attrs["dilation"] = _ints_or_default(more.get("dilations"), 2, 1)
        return n.g.apply(op, x, **attrs)
    common = {"kernel_shape": INTS, "pads": INTS, "strides": INTS, "ceil_mode": 0}
    extra = {"count_include_pad": 0} if avg else {"dilations": INTS, "storage_order": 0}
    return OnnxOp(convert, {**common, **extra})


def _global_average_pool(n: OnnxNode, x):
    if x.rank != 4:
        n.fail(f"graphc's global average pooling takes [N, C, H, W], got rank {x.rank}", cls=ShapeError)
    return n.g.apply("adaptive_avg_pool2d", x, output_size=1)


def _as_state(n: OnnxNode, v, what: str):
    """An initializer that graphc declared a param becomes model state (a running statistic)."""
    if v.node is not None or v.name not in n.g.params:
        n.fail(f"the {what} must be an initializer (graphc keeps it as model state), got a computed value")
    n.g.states[v.name] = v
    return v


def _batch_norm(n: OnnxNode, x, scale, bias, mean, var, *, epsilon, momentum, training_mode):
    if training_mode:
        n.fail("training_mode=1 (an exported training graph) is not supported",
               hint="export the model in eval mode: graphc trains it itself (m.train_step)")
    if not 0.0 <= momentum <= 1.0:
        n.fail(f"momentum {momentum} must lie in [0, 1]")
    return n.g.apply("batch_norm", x, _as_state(n, mean, "input_mean"), _as_state(n, var, "input_var"), scale, bias,
                     momentum=1.0 - float(momentum), eps=float(epsilon))


def _layer_norm(n: OnnxNode, x, scale, bias=None, *, axis, epsilon, stash_type):
    first = n.axis(axis, x.rank)
    args = (x, tuple(x.shape[first:]), scale) + ((bias,) if bias is not None else ())
    return n.g.apply("layer_norm", args[0], args[2], *args[3:], normalized_shape=args[1], eps=float(epsilon))


def _dropout(n: OnnxNode, x, ratio=None, training_mode=None, *, seed):
    if training_mode is not None and np.asarray(training_mode).reshape(-1)[:1].any():
        n.fail("training_mode=True is not supported", hint="export in eval mode: graphc's dropout drops in training")
    p = 0.5 if ratio is None else float(np.asarray(ratio).reshape(()))
    return n.g.apply("dropout", x, p=p)


def _gelu(n: OnnxNode, x, *, approximate):
    return n.g.apply("gelu", x, approximate=approximate)


CNN_OPS: dict[str, OnnxOp] = {
    "Conv": OnnxOp(_conv, {"dilations": INTS, "group": 1, "kernel_shape": INTS, "pads": INTS, "strides": INTS},
                   (2, 3)),
    "MaxPool": _pool("max_pool2d", avg=False),
    "AveragePool": _pool("avg_pool2d", avg=True),
    "GlobalAveragePool": OnnxOp(_global_average_pool),
    "BatchNormalization": OnnxOp(_batch_norm, {"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0}, (5, 5)),
    "LayerNormalization": OnnxOp(_layer_norm, {"axis": -1, "epsilon": 1e-5, "stash_type": 1}, (2, 3)),
    "Dropout": OnnxOp(_dropout, {"seed": 0}, (1, 3), arrays=(1, 2)),
    "Erf": OnnxOp(lambda n, x: n.g.apply("erf", x)),
    "Gelu": OnnxOp(_gelu, {"approximate": "none"}),
}
