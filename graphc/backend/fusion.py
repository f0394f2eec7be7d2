"""Fusion decisions: which values of a lowered Graph get no kernel of their own.

In: a lowered Graph and the values written to caller buffers. Out: sets and maps that
schedule.py's Scheduler reads while it builds the kernel records. It only decides; it never
prints C. The fusions are declared below as patterns over the graph, and one small matcher
(`match`) applies them:

    SHARED_ROW_PASS     softmax(θ) and cross_entropy(θ, y) of the same logits: one pass over the rows
    IDENTITY_7          (softmax(θ) − onehot(y)) · scale, identity (7)'s gradient, written by that pass
    GEMM_EPILOGUE       what a GEMM applies as it writes its product: + bias, relu, ∘ sgn(mask)
                        (identity (4) read off the output) and the column sums of identity (3)
    CONV_RELU           relu(conv2d(x, w, b)): the relu in the conv GEMM's epilogue (after the bias it
                        already has) or in the depthwise loop or 1x1 GEMMs; the permute to NCHW writes h
    TRANSPOSE_IN_PLACE  a transpose read only by GEMMs is read in place (op(A) = Aᵀ), never copied; so is
                        a permute swapping the last two axes of a batched product's operand
    SGD_IN_GEMM         (train step, over the kernel records) plain SGD's W -= lr d_W applied by the
                        GEMM that writes d_W, which is then never stored
    GATHER_INTO_CONCAT  embedding rows written straight into their columns of a concat
    SCATTER_FROM_SLICE  embedding's adjoint reads its rows straight from the columns a slice takes
    SCATTER_SUM         the adjoints of several embeddings of one table, summed: each scatters into
                        the sum's buffer, zeroed once (a gradient fed by several uses)
    ATTENTION_PARTS     scaled dot-product attention's forward kernel writes O and the row log-sum-exp L
                        of the same q and k; its dQ, dK and dV (the same inputs) are one backward kernel
    NORM_GRADS          layer_norm's dJ/dx and dJ/dweight (the same inputs): one pass over the rows
    RESHAPE_ALIAS       a reshape (or flatten) is its input's buffer under another shape: no copy, no buffer
    SLICE_THROUGH       permute(reshape(x[..., a:b])) (a transformer's head split) reads x in place, with
                        strides: one strided copy
    PLACE_SUM           unslices of disjoint windows summed (the head split's gradient): each writes its
                        window of the sum's buffer (zeroed once unless they cover it), and a permute
                        before one (through a reshape) writes straight into it
    and two rules over op traits: scalars of constants and sizes are static C expressions
    (OpDef.static), and a single-use elementwise value is computed inside its consumer's loop.

A pattern names ops and binds values; the conditions beside it (single use, shapes, what
exists when the kernel runs) are what makes the fusion safe.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from graphc.backend.kernels import Gemm
from graphc.backend.matcher import Pat, match, op, var  # noqa: F401  (Pat: the patterns' type)
from graphc.backend.views import layout_views
from graphc.core.ir import FLOAT, Graph, Node, Value
from graphc.ops.linear import swaps_last_two
from graphc.ops.loss import last_axis


# --------------------------------------------------------------------------------- the patterns
SHARED_ROW_PASS = (op("cross_entropy", var("logits"), var("labels"), bind="loss"),
                   op("softmax", var("logits"), bind="probs"))

IDENTITY_7 = op("mul", op("sub", op("softmax", var("logits"), bind="probs"),
                          op("onehot", var("labels"), bind="hot"), bind="diff"),
                var("scale"), bind="grad", commutative=True)


@dataclass(frozen=True)
class Link:
    """One optional step of an epilogue chain: the product's single consumer, if it matches `pat`
    (the chain's value so far bound as `prev`), fills the epilogue field `role`."""
    role: str
    pat: Pat


GEMM_EPILOGUE = (
    Link("bias", op("add", var("prev"), var("bias"), commutative=True)),        # z = x Wᵀ + b1
    Link("relu", op("relu", var("prev"))),                                      # h = relu(z)
    Link("mask", op("mul", var("prev"), op("sign", var("mask"), bind="sign"),  # identity (4): ∘ sgn(h)
                    commutative=True)),
)
# a sum over the rows of the chain's last value (identity (3): a bias gradient)
COLUMN_SUMS = (op("sum_to", var("rows")), op("sum", var("rows")))

# a convolution's relu in its kernel: relu(conv2d(x, w, b)) lowers to relu(permute(patch_matmul(P, W, b)))
# (the GEMM writes rows of output pixels, NHWC; the permute makes them NCHW), so the GEMM applies the relu
# in its epilogue, after the bias, and the permute writes h itself; a depthwise convolution's direct
# loop (ops/depthwise.py) applies it to each row as it finishes it and writes h; a 1x1 convolution's
# GEMM per image (ops/pointwise.py) applies it in its epilogue and writes h (NCHW already).
CONV_RELU = (op("relu", op("permute", op("patch_matmul", var("P"), var("W"), bind="rows"), bind="nchw"), bind="h"),
             op("relu", op("depthwise_conv", var("x"), var("w"), bind="rows"), bind="h"),
             op("relu", op("pointwise_conv", var("x"), var("w"), bind="rows"), bind="h"))
NCHW = (0, 3, 1, 2)

# a convolution's patch planes made per image (ops/conv.py's patch_planes): P = im2col(x, layout nchw) read
# only by pointwise_conv GEMMs (one per image) is not stored for the batch (9x x for a 3x3 kernel: 38 MB per
# 16-channel layer of ResNet-8 at batch 64, written and read back from memory); each GEMM's kernel makes
# image n's planes into a scratch buffer (in cache) just before its product. Likewise col2im(dP) of a
# pointwise_conv input gradient dP: each image's dP goes to scratch and is added back into dJ/dx at once.
IMAGE_PLANES = op("im2col", var("x"), bind="P")
# a residual block's sum and relu in the convolution's kernel: h = relu(pointwise_conv(x, w, b) + r) (ResNet-8's
# h1 = relu(conv2d(a1, w1b, b1b) + h0)): each image's output is filled with r[n] + b, the product added onto
# it and the relu applied as it is written; the sum is never stored nor read back. Of two convolutions
# summed, the later one does it (the other's output is then r).
CONV_ADD_RELU = ("relu", "add", "pointwise_conv")
IMAGE_COL2IM = op("col2im", op("pointwise_conv", var("d"), var("w"), bind="dP"), bind="dx")

GATHER_INTO_CONCAT = ("embedding", "concat")           # the gather, its single consumer
SCATTER_FROM_SLICE = op("embedding_grad", op("slice", var("whole"), bind="part"), var("ids"))
SCATTER_SUM = ("add", "embedding_grad")                  # a tree of adds, each leaf a scatter

# (forward, its row log-sum-exp, the gradients): one kernel writes O and L, one dQ, dK and dV
ATTENTION_PARTS = ("scaled_dot_product_attention", "attention_lse", "attention_grad")
NORM_GRADS = "layer_norm_grad"

TRANSPOSE_IN_PLACE = op("transpose", var("x"))
PERMUTE_IN_PLACE = "permute"   # a permute swapping the last two axes: a batch of transposes
READS_IN_PLACE = "matmul"      # the consumer that reads a transpose in place (op(A) = Aᵀ)
INLINE_CONSUMERS = ("sum", "sum_to")   # non-elementwise ops whose input is read inside their loop


@dataclass
class Epilogue:
    """What one GEMM call applies to its output as it writes it (gc_gemm_epilogue in the C)."""
    matmul: Node
    bias: Value | None = None       # + a row vector
    relu: bool = False
    mask: Value | None = None       # ∘ sgn(mask): relu's derivative read off its output
    colsum: Node | None = None      # a sum over the rows of the result, accumulated as it is written


class Fusion:
    def __init__(self, g: Graph, outputs: dict[str, Value], keep=()):
        self.g = g
        self.outputs = outputs                      # C name of the caller buffer -> value
        self.out_of: dict[Value, str] = {}
        for cname, v in outputs.items():
            self.out_of.setdefault(v, cname)
        # values a kernel outside the graph's nodes reads (a train step's gradients, read by the
        # optimizer's updates): computed into a buffer of their own, like outputs. The nodes that
        # only lead to other values (the updates written in the IR by autodiff/train.py) are the
        # optimizer kernels' to compute: they get none here.
        self.keep = set(keep)
        needed = set(self.out_of) | self.keep
        for n in reversed(g.nodes):
            if n.output in needed:
                needed.update(n.inputs)
        self.dropped = {n.output for n in g.nodes if n.output not in needed} if self.keep else set()
        self.users: dict[Value, list[Node]] = {}
        for n in g.nodes:
            if n.output not in self.dropped:
                for v in n.inputs:
                    self.users.setdefault(v, []).append(n)
        self.where = {n: i for i, n in enumerate(g.nodes)}
        self.static: set[Value] = set()             # scalar expressions of constants and n
        self.inlined: set[Value] = set()            # fused into their single consumer's loop
        self.folded: set[Value] = set()             # transposes read by matmul in place
        self.partner: dict[Node, Node] = {}         # softmax <-> cross_entropy of the same logits
        self.xent_grad: dict[Node, tuple[Node, Value]] = {}   # cross_entropy -> (its dJ/dθ node, scale)
        self.epilogue: dict[Node, Epilogue] = {}    # final node -> what its GEMM call also does
        self.emit_at: dict[Node, Node] = {}         # node where such a call is emitted -> its final node
        self.absorbed: set[Value] = set(self.dropped)   # values computed inside such a GEMM call
        self.into_concat: dict[Node, tuple[Value, int]] = {}   # embedding -> (concat output, first column)
        self.from_slice: dict[Node, tuple[Value, int]] = {}    # embedding_grad -> (sliced value, first column)
        self.scatter_sum: dict[Node, tuple[Value, bool]] = {}  # embedding_grad -> (the sum, zeroes it first)
        self.moved: set[Node] = set()               # relus (CONV_RELU), col2ims (IMAGE_COL2IM) done by the kernel before
        self.conv_relu: set[Node] = set()           # conv GEMMs and depthwise loops that apply a relu
        self.writes: dict[Node, Value] = {}         # node -> the relu output it writes instead of its own
        self.conv_residual: dict[Node, Value] = {}  # pointwise_conv forward -> the r it adds (CONV_ADD_RELU)
        self.attention_lse: dict[Node, Node] = {}   # attention forward -> the log-sum-exp node it also writes
        self.attention_grads: dict[Node, tuple[Node, ...]] = {}   # first of dQ, dK, dV -> all of them
        self.norm_grads: dict[Node, tuple[Node, ...]] = {}        # first of dJ/dx, dJ/dweight -> both
        self.image_planes: dict[Value, Node] = {}   # patch planes made per image by their GEMMs -> im2col
        self.image_col2im: dict[Node, Node] = {}    # pointwise_conv input_grad -> the col2im it runs per image
        self.alias: dict[Value, Value] = {}         # a reshape's output -> the buffer it is (RESHAPE_ALIAS)
        self.through: dict[Value, tuple] = {}       # a permute's input -> (buffer, strides, offset) it is read at
        self.placed: dict[Node, tuple] = {}         # unslice or permute -> (the sum, strides, offset, zeroes it)
        self._statics()
        self._shared_row_passes()
        self._identity_7()
        self._gemm_epilogues()
        self._conv_relus()
        self._conv_add_relus()
        self._per_image_patches()
        self._gathers()
        self._attention()
        self._in_place_and_inline()
        self._layout_views()

    def single_user(self, v: Value) -> Node | None:
        users = self.users.get(v, [])
        return users[0] if len({id(u) for u in users}) == 1 and v not in self.out_of and v not in self.keep else None

    def _statics(self) -> None:
        for n in self.g.nodes:
            v = n.output
            if n.op.static or (n.op.c_expr is not None and v.shape == () and n.inputs
                               and all(x in self.static for x in n.inputs)):
                self.static.add(v)

    def _shared_row_passes(self) -> None:
        loss_pat, probs_pat = SHARED_ROW_PASS
        taken: set[Node] = set()
        for n in self.g.nodes:
            env = match(loss_pat, n.output)
            if env is None:
                continue
            sm = next((u for u in self.g.nodes if u not in taken and match(probs_pat, u.output, env)
                       and last_axis(u)), None)
            if sm is not None:
                taken.add(sm)
                self.partner[n], self.partner[sm] = sm, n

    def _identity_7(self) -> None:
        """Identity (7) in the softmax kernel: dJ/dθ = (ŷ − onehot(y)) · scale is written from
        each row of ŷ while it is in cache, and ŷ itself only when something else reads it."""
        for mul in self.g.nodes:
            env = match(IDENTITY_7, mul.output)
            if env is None:
                continue
            sm, diff, hot, scale = env["probs"].node, env["diff"], env["hot"], env["scale"]
            ce = self.partner.get(sm)
            if ce is None or ce.inputs[1] is not env["labels"] or env["labels"].dtype == FLOAT or ce in self.xent_grad:
                continue      # real targets: ŷ Σy − y needs the row sums of y; it stays a loop
            subs = [u for u in self.users.get(sm.output, []) if u.op.name == "sub" and u.inputs[0] is sm.output]
            if len(subs) != 1 or self.single_user(hot) is not diff.node or self.single_user(diff) is not mul \
                    or mul.output.shape != ce.inputs[0].shape:
                continue
            first = min(self.where[ce], self.where[sm])
            if scale.shape != () or scale is diff or (
                    scale not in self.static and scale.node is not None and self.where[scale.node] > first):
                continue   # the kernel runs where the loss is computed: the scale must exist by then
            self.xent_grad[ce] = (mul, scale)
            self.absorbed.update({diff, hot, mul.output})
            if len(self.users.get(sm.output, [])) == 1 and sm.output not in self.out_of:
                self.absorbed.add(sm.output)   # ŷ is needed only for the gradient: no buffer

    def _gemm_epilogues(self) -> None:
        """What a GEMM applies to its output as it writes its last block, so that none of it makes
        a pass of its own: forward, z = x Wᵀ + b1 and h = relu(z); backward, the relu mask
        d_z = (d_theta U) ∘ sgn(h), identity (4), and the bias gradient d_b1 = Σ_rows d_z,
        identity (3), summed from the tile in registers."""
        for m in self.g.nodes:
            # a product of rows (rank 2, or rows of a [.., K] times a matrix: one 2-D GEMM)
            if m.op.name != READS_IN_PLACE or m.output.rank < 2 or m.inputs[1].rank != 2:
                continue
            ep, final, shape = Epilogue(m), m, m.output.shape
            for link in GEMM_EPILOGUE:
                user = self.single_user(final.output)
                env = match(link.pat, user.output, {"prev": final.output}) if user is not None else None
                if env is None or user.output.shape != shape or not self._fits(link.role, env, final, user, shape):
                    continue
                final = user
                if link.role == "bias":
                    ep.bias = env["bias"]
                elif link.role == "relu":
                    ep.relu = True
                else:
                    ep.mask = env["mask"]
                    self.absorbed.add(env["sign"])
            width = shape[-1]
            for u in self.users.get(final.output, []):
                if u.output not in self.static and any(match(p, u.output) for p in COLUMN_SUMS) \
                        and self._sums_rows(u, width):
                    ep.colsum = u
                    self.absorbed.add(u.output)
                    break
            if final is m and ep.colsum is None:
                continue
            self.epilogue[final] = ep
            # the call runs where the product is, if what the epilogue reads exists by then (so that a
            # GEMM reading a param, d_h = d_theta U, runs before the one that may update it, d_U)
            early = all(x.node is None or self.where[x.node] < self.where[m] for x in (ep.bias, ep.mask) if x is not None)
            self.emit_at[m if early else final] = final
            # the values between the GEMM and the final one are computed inside the call
            v = m.output
            while v is not final.output:
                self.absorbed.add(v)
                v = self.single_user(v).output

    def _conv_relus(self) -> None:
        """CONV_RELU: the product (a grouped GEMM per group, or the direct depthwise loop) applies the
        relu as it writes; the relu node has no kernel of its own, and h is written by the permute
        (or by the direct loop, whose output is NCHW already)."""
        for n in self.g.nodes:
            for pat in CONV_RELU:
                env = match(pat, n.output)
                if env is None or n.output in self.static:
                    continue
                rows, nchw = env["rows"], env.get("nchw")
                if rows.node.attrs["mode"] not in ("nt", "forward") or \
                        self.single_user(rows) is not (nchw.node if nchw is not None else n) or \
                        nchw is not None and (nchw.node.attrs["axes"] != NCHW or self.single_user(nchw) is not n):
                    continue
                self.conv_relu.add(rows.node)
                self.writes[(nchw if nchw is not None else rows).node] = n.output
                self.moved.add(n)
                break

    def _conv_add_relus(self) -> None:
        """CONV_ADD_RELU: relu(add(z, r)), z a pointwise_conv forward read only by the add (the later
        of two such), r computed before z's kernel and of z's shape: z's kernel adds r and applies the
        relu; the add and the relu have no kernel of their own."""
        relu, add, conv = CONV_ADD_RELU
        for n in self.g.nodes:
            if n.op.name != relu or n.output in self.static or n.inputs[0].node is None:
                continue
            a = n.inputs[0].node
            if a.op.name != add or len(a.inputs) != 2 or self.single_user(a.output) is not n \
                    or a.inputs[0] is a.inputs[1] or any(x.shape != n.output.shape for x in a.inputs):
                continue
            convs = [x for x in a.inputs if x.node is not None and x.node.op.name == conv and x.node not in self.writes
                     and x.node.attrs["mode"] == "forward" and self.single_user(x) is a]
            if not convs:
                continue
            z = max(convs, key=lambda x: self.where[x.node])
            r = a.inputs[1] if a.inputs[0] is z else a.inputs[0]
            if r.node is not None and (self.where[r.node] > self.where[z.node] or r in self.static):
                continue
            self.conv_relu.add(z.node)
            self.conv_residual[z.node] = r
            self.writes[z.node] = n.output
            self.moved.update((a, n))

    def _per_image_patches(self) -> None:
        """IMAGE_PLANES and IMAGE_COL2IM: the patch planes (layout nchw) made, and summed back, one
        image at a time inside the GEMM kernels of pointwise_conv; im2col and col2im get no kernel."""
        for n in self.g.nodes:
            if n.op.name == "im2col" and n.attrs["layout"] == "nchw" and n.output not in self.out_of \
                    and n.output not in self.keep and n.output not in self.static:
                users = self.users.get(n.output, [])
                if users and all(u.op.name == "pointwise_conv" and u.attrs["mode"] != "input_grad" for u in users):
                    self.image_planes[n.output] = n
            env = match(IMAGE_COL2IM, n.output)
            if env is not None and env["dx"].node.attrs["layout"] == "nchw" and \
                    env["dP"].node.attrs["mode"] == "input_grad" and self.single_user(env["dP"]) is n:
                self.image_col2im[env["dP"].node] = n
                self.writes[env["dP"].node] = n.output
                self.moved.add(n)

    def _gathers(self) -> None:
        """GATHER_INTO_CONCAT, SCATTER_FROM_SLICE and SCATTER_SUM: the word-window classifier's
        e = concat(E[w0], E[w1], E[w2]) gathers into e's columns, and its backward pass, d_E =
        the sum over the three uses of E, scatters each column range of d_e into d_E."""
        gather, joined = GATHER_INTO_CONCAT
        for n in self.g.nodes:
            user = self.single_user(n.output)
            if n.op.name == gather and user is not None and user.op.name == joined \
                    and list(user.inputs).count(n.output) == 1 and user.output.rank == 2 \
                    and user.attrs.get("axis", -1) % 2 == 1:          # rows into columns of a matrix
                start = sum(x.shape[-1] for x in user.inputs[:user.inputs.index(n.output)])
                self.into_concat[n] = (user.output, start)
                self.absorbed.add(n.output)
            env = match(SCATTER_FROM_SLICE, n.output)
            sliced = env["part"].node.attrs if env is not None else {}
            if env is not None and self.single_user(env["part"]) is n and env["whole"].rank == 2 \
                    and sliced.get("axis", -1) % 2 == 1 and sliced.get("step", 1) == 1:   # a column range
                self.from_slice[n] = (env["whole"], env["part"].node.attrs["start"])
                self.absorbed.add(env["part"])
        add, leaf = SCATTER_SUM
        for n, inner, leaves in self.sum_trees(add, leaf):
            first = min(leaves, key=lambda lf: self.where[lf])
            for lf in leaves:
                self.scatter_sum[lf] = (n.output, lf is first)
                self.absorbed.add(lf.output)
            self.absorbed.update(inner)
            self.absorbed.add(n.output)     # computed by its scatters: the add itself has no kernel

    def sum_trees(self, add: str, leaf: str):
        """(top, inner adds, leaves) of each tree of `add` nodes whose leaves are all `leaf` nodes
        of the top's shape, at least two, each value used once (s + s, where two identical
        embeddings of one table were merged, is not a tree: its scatter would run once)."""
        for n in self.g.nodes:
            if n.op.name != add or self.single_user(n.output) is not None and \
                    self.single_user(n.output).op.name == add:
                continue        # the top of a tree only
            inner, leaves, todo = [], [], [n]
            while todo:
                m = todo.pop()
                for x in m.inputs:
                    xn = x.node
                    once = self.single_user(x) is m and m.inputs.count(x) == 1    # (not x + x: twice)
                    if xn is not None and xn.op.name == add and once:
                        inner.append(x)
                        todo.append(xn)
                    elif xn is not None and xn.op.name == leaf and once:
                        leaves.append(xn)
                    else:
                        leaves = []
                        todo = []
                        break
            if len(leaves) < 2 or any(lf.output.shape != n.output.shape for lf in leaves) \
                    or len(leaves) != len(inner) + 2 or n.output in self.static or n.output in self.absorbed:
                continue
            yield n, inner, leaves

    def _attention(self) -> None:
        """ATTENTION_PARTS: the log-sum-exp L of a forward attention's q and k (same flags), saved
        for the backward pass, is written by the forward kernel as it finishes each row; the
        attention_grad nodes of one attention (the same six inputs and flags) are one kernel,
        emitted where the first stands (all read the same values), writing each gradient needed."""
        forward, lse, grad = ATTENTION_PARTS
        flags = lambda n: (n.attrs["is_causal"], n.attrs["scale"])  # noqa: E731
        live = [n for n in self.g.nodes if n.output not in self.dropped]
        forwards = {(n.inputs[0], n.inputs[1], flags(n)): n for n in live if n.op.name == forward}
        for n in live:
            f = forwards.get((n.inputs[0], n.inputs[1], flags(n))) if n.op.name == lse else None
            if f is not None and f not in self.attention_lse and self.where[f] < self.where[n]:
                self.attention_lse[f] = n
                self.absorbed.add(n.output)
        for first, nodes in self._grad_groups(live, grad, flags).items():
            self.attention_grads[first] = nodes
        norm = lambda n: (n.attrs["eps"], tuple(n.attrs["normalized_shape"]))  # noqa: E731
        for first, nodes in self._grad_groups(live, NORM_GRADS, norm).items():
            self.norm_grads[first] = nodes

    def _grad_groups(self, live, name: str, flags) -> dict:
        """The `name` nodes with the same inputs and flags, one of each wrt: one kernel each group,
        emitted where the first stands and writing each gradient (the others' outputs absorbed)."""
        out: dict = {}
        groups: dict = {}
        for n in live:
            if n.op.name != name:
                continue
            nodes = groups.setdefault((n.inputs, flags(n)), [])
            if any(m.attrs["wrt"] == n.attrs["wrt"] for m in nodes):
                out[n] = (n,)          # a twin CSE left: a kernel of its own
                continue
            nodes.append(n)
        for nodes in groups.values():
            out[nodes[0]] = tuple(nodes)
            self.absorbed.update(n.output for n in nodes[1:])
        return out

    def has_buffer(self, x: Value) -> bool:
        return x not in self.static and x not in self.inlined and x not in self.folded and x not in self.absorbed

    def _layout_views(self) -> None:
        layout_views(self)

    def _fits(self, role: str, env: dict, final: Node, user: Node, shape) -> bool:
        """The conditions of an epilogue link: a bias is a row vector computed at run time; the
        mask is relu's output, read through a sign used by nothing else."""
        if role == "bias":
            b = env["bias"]
            return b is not final.output and b.shape == (shape[-1],) and b not in self.static
        if role == "mask":
            sign, r = env["sign"], env["mask"]
            return sign is not final.output and self.single_user(sign) is user and r.shape == shape \
                and r not in self.static
        return True

    @staticmethod
    def _sums_rows(u: Node, width) -> bool:
        """Whether u sums every row of its input (the rows of a rank-3 product too) to one row."""
        rank = u.inputs[0].rank
        if u.op.name == "sum_to":
            return tuple(u.attrs["shape"]) in ((width,), (1,) * (rank - 1) + (width,))
        return rank == 2 and u.attrs["axis"] in (0, -2) and u.output.shape == (width,)

    @staticmethod
    def _read_transposed(v: Value, users: list) -> bool:
        """TRANSPOSE_IN_PLACE: v is a matrix's transpose (or a permute swapping the last two axes of
        a batched operand) and every consumer is a GEMM that can read it transposed: any product
        for a matrix, a batched one for a permute (not the left operand of one product over the
        rows of a [.., K])."""
        n = v.node
        if not users or any(u.op.name != READS_IN_PLACE for u in users):
            return False
        if match(TRANSPOSE_IN_PLACE, v):
            return v.rank <= 2
        if n.op.name == PERMUTE_IN_PLACE and swaps_last_two(n.attrs["axes"]):
            return v.rank == 2 or all(u.inputs[1].rank >= 3 for u in users)
        return False

    def _in_place_and_inline(self) -> None:
        finals = {n.output for n in self.epilogue}
        for n in self.g.nodes:
            v = n.output
            if v in self.static or v in self.out_of or v in self.keep or v in self.absorbed or v in finals \
                    or n in self.moved:
                continue
            users = self.users.get(v, [])
            if self._read_transposed(v, users):
                self.folded.add(v)
            elif (n.op.c_expr is not None or n.op.name == "onehot") and len({id(u) for u in users}) == 1:
                u = users[0]     # (not into a node another kernel does: CONV_ADD_RELU's add reads r's buffer)
                if u not in self.moved and ((u.op.c_expr is not None and u.op.name != "broadcast_to"
                                             and u.output.shape == v.shape)
                                            or (u.op.name in INLINE_CONSUMERS and u.inputs[0] is v)):
                    self.inlined.add(v)


def sgd_in_gemm(steps: list, updates) -> tuple[list, set]:
    """SGD_IN_GEMM over the kernel records of a train step: plain SGD (updates.rate set) moves a
    param's update into the GEMM that writes its gradient, when that GEMM writes the gradient
    first, is a 2-D product the shape of the param, does not read the param, and no later
    kernel reads the gradient or the param. Returns the records and the params so updated."""
    fused: set = set()
    if updates.rate is None:
        return steps, fused
    steps = list(steps)
    for pu in updates.params:
        at = next((i for i, st in enumerate(steps) if pu.grad in st.defs), None)
        st = steps[at] if at is not None else None
        if not isinstance(st, Gemm) or st.batch or st.defs[0] is not pu.grad or pu.grad.rank != 2 \
                or pu.param.shape != pu.grad.shape or pu.param in st.uses \
                or any(pu.grad in later.uses or pu.param in later.uses for later in steps[at + 1:]):
            continue
        w = pu.param.name
        epilogue = replace(st.epilogue, update=pu.cname, ldu=st.N, rate=updates.rate)
        steps[at] = replace(st, epilogue=epilogue, comment=st.comment + (
            f"\n   update {w} from d_{w} as it is written (d_{w} is not stored):\n       "
            + updates.note.format(w=w)))
        fused.add(pu.param)
    return steps, fused


def updates_when_ready(steps: list, first: list, updates: list) -> list:
    """Each param's update record (`updates`, with their ParamUpdate's param and grad as its uses)
    right after the last kernel that reads its param or writes or reads its gradient, instead of
    after every kernel: the gradient's buffer then lives from its kernel to its update only, not to
    the end of the train step (a DS-CNN's nine weight gradients would otherwise all be kept through
    the backward pass). `first` (the step count, the hyperparameter check) runs before the earliest.
    Not for clipped gradients: their norm needs every gradient before the first update."""
    out = list(steps)
    after = {}
    for u in updates:
        touched = [i for i, st in enumerate(steps) if any(v in st.uses or v in st.defs for v in u.uses)]
        after.setdefault(max(touched, default=len(steps) - 1), []).append(u)
    for i in sorted(after, reverse=True):
        out[i + 1:i + 1] = after[i]
    if first:
        ids = {id(u) for u in updates}
        at = min(i for i, st in enumerate(out) if id(st) in ids)
        out[at:at] = list(first)
    return out
