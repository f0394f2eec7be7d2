"""Fusion decisions: which values of a lowered Graph get no kernel of their own.

In: a lowered Graph and the values written to caller buffers. Out: sets and maps that
schedule.py's Scheduler reads while it builds the steps: scalars folded into C
expressions, elementwise values inlined into their consumer's loop, transposes read in
place by a GEMM, what a GEMM applies as it writes its output (bias, relu, the relu mask
and bias-gradient sums of the backward pass), and the softmax / cross-entropy pairs whose
one pass over the rows also writes identity (7)'s gradient. It only decides; it never
prints C.
"""
from __future__ import annotations

from dataclasses import dataclass

from graphc.core.ir import FLOAT, Graph, Node, Value

INLINE_CONSUMERS = ("sum", "sum_to")   # non-elementwise ops whose input is read inside a loop


@dataclass
class Epilogue:
    """What one GEMM call applies to its output as it writes it (gc_gemm_epilogue in the C)."""
    matmul: Node
    bias: Value | None = None       # + a row vector
    relu: bool = False
    mask: Value | None = None       # ∘ sgn(mask): relu's derivative read off its output
    colsum: Node | None = None      # a sum over the rows of the result, accumulated as it is written


class Fusion:
    def __init__(self, g: Graph, outputs: dict[str, Value]):
        self.g = g
        self.outputs = outputs                      # C name of the caller buffer -> value
        self.out_of: dict[Value, str] = {}
        for cname, v in outputs.items():
            self.out_of.setdefault(v, cname)
        self.users = g.consumers()
        self.static: set[Value] = set()             # scalar expressions of constants and n
        self.inlined: set[Value] = set()            # fused into their single consumer's loop
        self.folded: set[Value] = set()             # transposes read by matmul in place
        self.epilogue: dict[Node, Epilogue] = {}    # final node -> what its GEMM call also does
        self.emit_at: dict[Node, Node] = {}         # node where such a call is emitted -> its final node
        self.absorbed: set[Value] = set()           # values computed inside such a GEMM call
        self._decide()

    def _decide(self) -> None:
        for n in self.g.nodes:
            v = n.output
            if n.op.static or (
                    n.op.c_expr is not None and v.shape == () and n.inputs and all(x in self.static for x in n.inputs)):
                self.static.add(v)
        # softmax(θ) and cross_entropy(θ, y) of the same logits share one pass over the rows
        self.partner: dict[Node, Node] = {}
        softmaxes = {n.inputs[0]: n for n in self.g.nodes if n.op.name == "softmax"}
        for n in self.g.nodes:
            if n.op.name == "cross_entropy" and n.inputs[0] in softmaxes:
                sm = softmaxes.pop(n.inputs[0])
                self.partner[n], self.partner[sm] = sm, n
        self.xent_grad: dict[Node, tuple[Node, Value]] = {}   # cross_entropy -> (its dJ/dθ node, scale)
        for ce in [n for n in self.partner if n.op.name == "cross_entropy"]:
            self._decide_xent_grad(ce, self.partner[ce])
        self._decide_epilogues()
        finals = {n.output for n in self.epilogue}
        for n in self.g.nodes:
            v = n.output
            if v in self.static or v in self.out_of or v in self.absorbed or v in finals:
                continue
            users = self.users.get(v, [])
            if n.op.name == "transpose" and users and all(u.op.name == "matmul" for u in users):
                self.folded.add(v)
            elif (n.op.c_expr is not None or n.op.name == "onehot") and len({id(u) for u in users}) == 1:
                u = users[0]
                if (u.op.c_expr is not None and u.op.name != "broadcast_to" and u.output.shape == v.shape) or \
                        (u.op.name in INLINE_CONSUMERS and u.inputs[0] is v):
                    self.inlined.add(v)

    def _single_user(self, v: Value) -> Node | None:
        users = self.users.get(v, [])
        return users[0] if len({id(u) for u in users}) == 1 and v not in self.out_of else None

    def _decide_xent_grad(self, ce: Node, sm: Node) -> None:
        """Identity (7) in the softmax kernel: dJ/dθ = (ŷ − onehot(y)) · scale is written from
        each row of ŷ while it is in cache, and ŷ itself only when something else reads it."""
        theta, y = ce.inputs
        if y.dtype == FLOAT:
            return   # real targets: ŷ Σy − y needs the row sums of y; it stays a loop
        subs = [u for u in self.users.get(sm.output, []) if u.op.name == "sub" and u.inputs[0] is sm.output]
        if len(subs) != 1:
            return
        sub = subs[0]
        hot = sub.inputs[1]
        if hot.node is None or hot.node.op.name != "onehot" or hot.node.inputs[0] is not y \
                or self._single_user(hot) is not sub:
            return
        mul = self._single_user(sub.output)
        if mul is None or mul.op.name != "mul" or mul.output.shape != theta.shape:
            return
        scale = mul.inputs[1] if mul.inputs[0] is sub.output else mul.inputs[0]
        first = min(self.g.nodes.index(ce), self.g.nodes.index(sm))
        if scale.shape != () or scale is sub.output or (
                scale not in self.static and scale.node is not None and self.g.nodes.index(scale.node) > first):
            return   # the kernel runs where the loss is computed: the scale must exist by then
        self.xent_grad[ce] = (mul, scale)
        self.absorbed.update({sub.output, hot, mul.output})
        if len(self.users.get(sm.output, [])) == 1 and sm.output not in self.out_of:
            self.absorbed.add(sm.output)   # ŷ is needed only for the gradient: no buffer

    def _decide_epilogues(self) -> None:
        """What a GEMM applies to its output as it writes its last block, so that none of it makes
        a pass of its own: forward, z = x Wᵀ + b1 and h = relu(z); backward, the relu mask
        d_z = (d_theta U) ∘ sgn(h), identity (4), and the bias gradient d_b1 = Σ_rows d_z,
        identity (3), summed from the tile in registers."""
        where = {n: i for i, n in enumerate(self.g.nodes)}
        for m in self.g.nodes:
            if m.op.name != "matmul" or m.output.rank != 2:
                continue
            ep = Epilogue(m)
            final = m
            user = self._single_user(m.output)
            if user is not None and user.op.name == "add":
                other = user.inputs[1] if user.inputs[0] is m.output else user.inputs[0]
                if other is not m.output and other.shape == (m.output.shape[-1],) and other not in self.static \
                        and user.output.shape == m.output.shape:
                    final, ep.bias = user, other
                    user = self._single_user(user.output)
            if user is not None and user.op.name == "relu":
                final, ep.relu = user, True
                user = self._single_user(user.output)
            if user is not None and user.op.name == "mul":
                sign = user.inputs[1] if user.inputs[0] is final.output else user.inputs[0]
                r = sign.node.inputs[0] if sign.node is not None and sign.node.op.name == "sign" else None
                if (r is not None and sign is not final.output and self._single_user(sign) is user
                        and r.shape == m.output.shape and r not in self.static
                        and user.output.shape == m.output.shape):
                    final, ep.mask = user, r
                    self.absorbed.add(sign)
            width = m.output.shape[-1]
            for u in self.users.get(final.output, []):
                if u.output not in self.static and (
                        (u.op.name == "sum_to" and tuple(u.attrs["shape"]) in ((width,), (1, width)))
                        or (u.op.name == "sum" and u.attrs["axis"] in (0, -2) and u.output.shape == (width,))):
                    ep.colsum = u
                    self.absorbed.add(u.output)
                    break
            if final is m and ep.colsum is None:
                continue
            self.epilogue[final] = ep
            # the call runs where the product is, if what the epilogue reads exists by then (so that a
            # GEMM reading a param, d_h = d_theta U, runs before the one that may update it, d_U)
            early = all(x.node is None or where[x.node] < where[m] for x in (ep.bias, ep.mask) if x is not None)
            self.emit_at[m if early else final] = final
            # the values between the GEMM and the final one are computed inside the call
            v = m.output
            while v is not final.output:
                self.absorbed.add(v)
                v = self._single_user(v).output
