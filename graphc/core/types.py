"""Tensor types: shapes (ints and symbolic dim names) and the two dtypes graphc knows."""
from __future__ import annotations

from dataclasses import dataclass

from graphc.core.errors import DTypeError

Dim = int | str          # an int, or the name of a symbolic dim (the batch)
Shape = tuple[Dim, ...]

FLOAT = "float"          # the real type; float32 or float64 is chosen at compile time
INT = "int32"
DTYPES = (FLOAT, INT)
_DTYPE_ALIASES = {"float": FLOAT, "float32": FLOAT, "float64": FLOAT, "real": FLOAT,
                  "int32": INT, "int": INT}


def normalize_dtype(dtype: str, where: str = "dtype") -> str:
    try:
        return _DTYPE_ALIASES[dtype]
    except (KeyError, TypeError):
        raise DTypeError(f"{where}: unknown dtype {dtype!r}",
                         hint="use 'float32', 'float64' (real values) or 'int32' (labels, ids)") from None


@dataclass(frozen=True)
class TensorType:
    shape: Shape
    dtype: str = FLOAT

    @property
    def rank(self) -> int:
        return len(self.shape)
