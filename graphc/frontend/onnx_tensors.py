"""ONNX's tensors as NumPy arrays, for the importer (onnx.py) and its op table (onnx_ops.py): the
onnx package, imported when first needed (`pip install 'graphc[onnx]'`), the dtype codes graphc
reads (float, double and float16 as its real type, int32 and int64 as ids) and an initializer's
or Constant's values as an array.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import DTypeError, GraphcError, Location, SpecError

INSTALL_HINT = "pip install 'graphc[onnx]'"

# ONNX's TensorProto.DataType and AttributeProto.AttributeType numbers (part of the format)
_FLOAT32, _INT32, _INT64, _FLOAT16, _FLOAT64 = 1, 6, 7, 10, 11
REAL_TYPES = {_FLOAT32: np.float32, _FLOAT64: np.float64, _FLOAT16: np.float32}
INT_TYPES = (_INT32, _INT64)


def onnx_package():
    try:
        import onnx
    except ImportError:
        raise GraphcError("importing an ONNX model needs the onnx package, which is not installed",
                          hint=INSTALL_HINT) from None
    return onnx


def dtype_name(code: int) -> str:
    try:
        return onnx_package().helper.tensor_dtype_to_string(code).replace("TensorProto.", "").lower()
    except Exception:               # an unknown number
        return f"type {code}"


def tensor_array(tensor, what: str, location: Location | None) -> np.ndarray:
    """An initializer's or Constant's values as a writable, contiguous array (float16 widened)."""
    onnx = onnx_package()
    kind = tensor.data_type
    if kind not in REAL_TYPES and kind not in INT_TYPES:
        raise DTypeError(f"{what} is {dtype_name(kind)}", location,
                         hint="graphc reads float, double, float16 (widened to float32), int32 and int64 tensors")
    try:
        a = onnx.numpy_helper.to_array(tensor)
    except Exception as e:
        raise SpecError(f"cannot read the values of {what}: {type(e).__name__}: {e}", location) from None
    return np.array(a, dtype=REAL_TYPES.get(kind, a.dtype), copy=True, order="C")
