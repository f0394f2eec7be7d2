"""Row gather and its adjoint, scatter-add: embedding lookups of word ids."""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ShapeError
from graphc.core.ir import TensorType
from graphc.core.notation import POSTFIX, Printed, wrap
from graphc.core.opdef import OpDef, register, require_float
from graphc.ops.loss import check_labels


@register
class Embedding(OpDef):
    """e = table[ids]: one row of the table per id; shape ids.shape + (D,).

    Backward, identity (3) per row: e[p] copies table[ids[p]] (∂e[p]/∂table[ids[p]] = I), so
    dJ/dtable[r] = Σ over p with ids[p] = r of δ[p], a scatter-add in the table's shape
    (repeated ids accumulate). The ids are integers and get no gradient."""

    name = "embedding"
    arity = 2
    identity = "3"
    int_inputs = (1,)

    def shape(self, table, ids):
        require_float(table, "table")
        if table.rank != 2 or isinstance(table.shape[0], str):
            raise ShapeError("the table must be 2-D (rows, dim) with a fixed number of rows")
        return TensorType(ids.shape + (table.shape[1],))

    def reference(self, table, ids):
        check_labels(ids, table.shape[0], "embedding")
        return table[ids.astype(np.intp)]

    def kernel(self, k, node):
        table, ids = node.inputs
        return k.gather(node, "embedding", ids=ids, width=table.shape[-1], src=table)

    def index_bounds(self, node):
        table, ids = node.inputs
        return [(ids, table.shape[0])]          # a row of the table

    def vjp(self, b, node, d):
        table, ids = node.inputs
        with b.because(node, self.identity):
            return [b.apply("embedding_grad", d, ids, rows=table.shape[0]), None]

    def notation(self, p, node, table, ids):
        return Printed(f"{wrap(table, POSTFIX)}[{ids.text}]", POSTFIX)


@register
class EmbeddingGrad(OpDef):
    """The adjoint of embedding: out[r] = Σ over positions p with ids[p] == r of d[p].

    Backward, identity (3): it is linear in d and its adjoint is the gather, so
    dJ/dd = embedding(δ, ids); the ids get no gradient."""

    name = "embedding_grad"
    symbol = "scatter_add"
    arity = 2
    attrs = {"rows": 1}
    identity = "3"
    int_inputs = (1,)
    public = False

    def shape(self, d, ids, rows):
        require_float(d)
        if d.shape[:-1] != ids.shape:
            raise ShapeError("the delta must have shape ids.shape + (dim,)")
        return TensorType((rows, d.shape[-1]))

    def reference(self, d, ids, rows):
        check_labels(ids, rows, "embedding_grad")
        out = np.zeros((rows, d.shape[-1]), dtype=d.dtype)
        np.add.at(out, ids.reshape(-1).astype(np.intp), d.reshape(-1, d.shape[-1]))
        return out

    def kernel(self, k, node):
        d, ids = node.inputs
        return k.gather(node, "embedding_grad", ids=ids, width=d.shape[-1], src=d, rows=node.attrs["rows"])

    def index_bounds(self, node):
        return [(node.inputs[1], node.attrs["rows"])]

    def vjp(self, b, node, d):
        with b.because(node, self.identity):
            return [b.apply("embedding", d, node.inputs[1]), None]
