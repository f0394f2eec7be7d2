"""Every op of graphc, one record each: shape rule, NumPy reference, VJP (citing its
identity), lowering to a kernel and explanation text, side by side.

The base class and the registry are in graphc/core/opdef.py; importing this package
registers every op (attention.py, elementwise.py, activations.py, conv.py, patches.py, depthwise.py, pointwise.py, pool.py,
norm.py, dropout.py, linear.py, reduce.py, layout.py, loss.py, gather.py, scan.py).
"""
from graphc.core.opdef import (  # noqa: F401
    REGISTRY, Binary, OpDef, Unary, broadcast_shapes, get_op, norm_axis, numel, register, require_float,
    unbroadcast,
)
from graphc.ops import (  # noqa: E402,F401
    activations, attention, conv, depthwise, dropout, elementwise, gather, layout, linear, loss, norm, patches, pointwise,
    pool, reduce, scan,
)
