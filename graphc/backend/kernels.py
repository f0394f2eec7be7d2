"""The kernel records: what the scheduler produces and the templates consume.

In: nothing but names, sizes and flags decided by backend/schedule.py. Out: one frozen record
per kernel call of a C function, each rendered by the macro `kernel` of the one template its
class names (`template`). A record also lists the IR values it writes (`defs`) and reads
(`uses`), which the memory plan reads. Records are never changed after they are made: a
fusion that changes one makes a new one (dataclasses.replace).

    Loop         a loop nest of elementwise statements, sums over axes and copies
    Gemm         a dense product with its epilogue (bias, relu, relu mask, column sums, SGD update)
    RowSoftmax   softmax / log-softmax / cross-entropy over the rows of the logits, and identity (7)
    Gather       embedding rows, their scatter-add adjoint, one-hot rows
    Patches      a convolution's patch matrix (im2col) and its adjoint (col2im)
    Depthwise    a depthwise convolution's direct loop and its two adjoints (no patch matrix)
    Pointwise    a 1x1 convolution and its two adjoints: one GEMM per image, NCHW (no patch matrix)
    Attention    scaled dot-product attention's forward (O and the row log-sum-exp) or backward pass
    RowNorm      layer_norm over rows: forward, or its gradients in the closed form (one pass each)
    ScanLoop     a scan's body inside a loop over time (backend/scan_loop.py)
    SgdUpdate, AdamStepCount, AdamUpdate   the optimizer's updates of a train step
    RecipeBegin, GradNorm, AccumulateGrad  its schedule, clipping and gradient accumulation
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from graphc.backend.cprint import LOOP_VARS, c_element, c_index, c_named, c_poly
from graphc.backend.sizes import Poly, dim_poly, peval, pmul

# A loop nest is split over threads only when it has at least PARALLEL_WORK iterations (C:
# GC_LOOP_PARALLEL_WORK, checked at run time), and is given the pragma at all only when a batch of
# PARALLEL_PROBE_ROWS rows would reach that: an OpenMP region costs about a microsecond even when
# its `if` clause keeps it on one thread, which small models (the notes' digits network) must not pay.
PARALLEL_WORK = 32768
PARALLEL_PROBE_ROWS = 64


def worth_parallel(work: Poly) -> bool:
    return peval(work, PARALLEL_PROBE_ROWS) >= PARALLEL_WORK


@dataclass(frozen=True)
class Kernel:
    """Base of every record: the comment tying it to its spec line or identity, and its values."""
    comment: str
    defs: tuple = ()            # IR values it writes
    uses: tuple = ()            # IR values it reads
    template: ClassVar[str] = ""
    kind_name: ClassVar[str] = ""


# ---------------------------------------------------------------------------------------- loops
@dataclass(frozen=True)
class Load:
    """One array read inside a loop statement: its C pointer, strides over the iteration axes,
    element offset, and the IR value it reads."""
    array: str
    strides: tuple
    offset: Poly
    value: Any


@dataclass(frozen=True)
class Statement:
    """target[index] op value, where value is C text with {L<k>} at each load (and {COL}: the
    index of the last axis, for one-hot)."""
    target: str
    strides: tuple
    offset: Poly
    value: str
    loads: tuple                # of Load
    accumulate: bool = False    # += (a sum over the axes the target does not move along)
    combine: str | None = None  # an accumulation other than +=: C over {T} (target) and {V} (value), e.g. a max


@dataclass(frozen=True)
class Loop(Kernel):
    """Statements over one iteration space; `zeros` are (buffer, element count) cleared first."""
    iter_shape: tuple = ()
    statements: tuple = ()
    comments: tuple = ()
    zeros: tuple = ()
    template: ClassVar[str] = "kernels/elementwise.c.j2"
    kind_name: ClassVar[str] = "loop"

    def joined(self, other: "Loop") -> "Loop":
        """This nest with the statements of `other` (same iteration space) appended."""
        return Loop("\n   ".join(self.comments + other.comments), self.defs + other.defs,
                    self.uses + other.uses, self.iter_shape, self.statements + other.statements,
                    self.comments + other.comments, self.zeros + other.zeros)

    @property
    def nest(self) -> "Nest":
        return collapse(self)


@dataclass(frozen=True)
class Nest:
    """A Loop as its template prints it: loops (index, extent), body (target, op, value)."""
    comment: str
    loops: list
    body: list
    zeros: list
    parallel: str | None        # the iteration count when the nest may be split over threads
    columns: bool               # split a (rows, columns) nest by blocks of columns, not by rows


def collapse(loop: Loop, names: dict[int, str] | None = None) -> Nest:
    """Collapse the iteration space of a loop nest and print each statement's indices (extents,
    strides and counts with the enum names of the dims, `names`, where a size is one dim).

    Adjacent axes merge into one loop when every operand is contiguous across them,
    so a same-shape elementwise op is one flat loop and a bias broadcast is two."""
    iter_shape, stmts = loop.iter_shape, loop.statements
    operands = []      # (strides, offset) of every target and load, statement by statement
    for st in stmts:
        operands.append((st.strides, st.offset))
        operands.extend((ld.strides, ld.offset) for ld in st.loads)
    dims = [(dim_poly(d), [op[0][a] for op in operands]) for a, d in enumerate(iter_shape)]
    dims = [d for d in dims if d[0] != (1,)]
    uses_col = any("{COL}" in st.value for st in stmts) and iter_shape and iter_shape[-1] != 1
    merged: list = []
    for axis, (size, strides) in enumerate(dims):
        # keep the last axis apart when an expression reads its index (one-hot)
        last_kept = uses_col and axis == len(dims) - 1
        if merged and not last_kept and all(ps == pmul(s, size) for ps, s in zip(merged[-1][1], strides)):
            merged[-1] = (pmul(merged[-1][0], size), strides)
        else:
            merged.append((size, strides))

    names = names or {}

    def index(k: int) -> str:
        return c_index(operands[k][1], [(LOOP_VARS[i], strides[k]) for i, (_, strides) in enumerate(merged)],
                       names)

    body, k, targets = [], 0, []
    for st in stmts:
        targets.append(k)
        loads = {f"L{j}": c_element(ld.array, index(k + 1 + j)) for j, ld in enumerate(st.loads)}
        loads["COL"] = LOOP_VARS[len(merged) - 1] if uses_col else "0"
        loads["IDX"] = index(k)      # the target's element index (dropout's mask: the flat index)
        target, value = c_element(st.target, index(k)), st.value.format(**loads)
        if st.combine:
            body.append(dict(target=target, op="=", value=st.combine.replace("{T}", target).replace("{V}", value)))
        elif st.accumulate and merged and merged[-1][1][k] == (0,):
            # a sum along the innermost loop (a convolution's bias gradient over each channel's pixels):
            # into a local that the compiler may keep in vector lanes (omp simd), added to the target after
            # the loop; a fixed order per build, whatever the threads (a += chain was one add per 4 cycles)
            body.append(dict(target=target, op="+=", value=value, sum=f"gc_sum{len(body)}"))
        else:
            body.append(dict(target=target, op="+=" if st.accumulate else "=", value=value))
        body[-1].setdefault("sum", None)
        k += 1 + len(st.loads)
    # The outer loop may be split across threads when every iteration of it writes elements of its
    # own: plain assignments (no += reduction) whose targets all move along it. Then each element
    # is computed by the same expression whatever the split: the bits never depend on threads.
    parallel = bool(merged) and not any(st.accumulate for st in stmts) and \
        all(merged[0][1][t] != (0,) for t in targets)
    # Otherwise a two-level nest (rows, columns) whose targets all move along the columns, such as a
    # delta and its bias gradient summed over the rows, may be split into blocks of columns: each
    # block runs every row, so each sum still adds its rows in order (the same bits again).
    columns = not parallel and len(merged) == 2 and all(merged[1][1][t] != (0,) for t in targets)
    work = (1,)
    for size, _ in merged:
        work = pmul(work, size)
    if not worth_parallel(work):
        parallel = columns = False
    return Nest("\n   ".join(loop.comments),
                [(LOOP_VARS[i], c_named(c_poly(size), names)) for i, (size, _) in enumerate(merged)],
                body, [(t, c_named(c_poly(z), names)) for t, z in loop.zeros],
                c_poly(work) if parallel or columns else None, columns)


# ------------------------------------------------------------------------------------- products
@dataclass(frozen=True)
class Epilogue:
    """What a GEMM applies to its output as it writes its last K block (gc_gemm_epilogue in C):
    + bias (a row vector), relu, ∘ sgn(mask) (ldm: the mask's row stride), column sums into
    colsum, and the SGD update param -= rate * result (ldu: the param's row stride), in that order."""
    bias: str | None = None
    relu: bool = False
    mask: str | None = None
    ldm: str | None = None
    colsum: str | None = None
    update: str | None = None
    ldu: str | None = None
    rate: str | None = None

    FIELDS: ClassVar[tuple] = ("bias", "relu", "mask", "ldm", "colsum", "update", "ldu", "rate")

    @property
    def needs_struct(self) -> bool:
        """gc_gemm_bias_act covers bias and relu; the other fields need a gc_gemm_epilogue."""
        return bool(self.mask or self.colsum or self.update)

    @property
    def fields(self) -> list[tuple[str, str]]:
        """(field, C value) of each field set, in gc_gemm_epilogue's order."""
        out = []
        for k in self.FIELDS:
            x = getattr(self, k)
            if x is not None and x is not False:
                out.append((k, "1" if x is True else x))
        return out


@dataclass(frozen=True)
class Gemm(Kernel):
    """out = op(a) op(b) (ta, tb: read transposed), M x N with inner dim K, leading dims lda, ldb, ldc.
    A batched product (matmul of rank 3-4) is the same call in at most two loops over the batch:
    `batch` holds (extent, stride of a, of b, of out) per loop, C text; a stride of 0 is an
    operand broadcast along that loop, read in place (never copied)."""
    out: str = ""
    a: str = ""
    b: str = ""
    ta: int = 0
    tb: int = 0
    M: str = ""
    N: str = ""
    K: str = ""
    lda: str = ""
    ldb: str = ""
    ldc: str = ""
    epilogue: Epilogue = field(default_factory=Epilogue)
    dims: tuple = ()            # (M, N, K) as polynomials in n: what backend/packing.py sizes the pack by
    batch: tuple = ()           # ((extent, stride a, stride b, stride out), ...): the batch loops, outermost first
    template: ClassVar[str] = "kernels/gemm.c.j2"
    kind_name: ClassVar[str] = "gemm"


# -------------------------------------------------------------------------------- rows, gathers
@dataclass(frozen=True)
class RowSoftmax(Kernel):
    """kind: softmax, log_softmax, cross_entropy, or softmax_xent (cross-entropy with the softmax
    of the same logits: probs and identity (7)'s grad = (probs - onehot(labels)) * scale, each
    when set). rows x cols logits x; labels (int32) or targets (real rows) for the losses. The
    forward pass shared by a model's entry points (backend/sharing.py) has one whose labels and
    grad may be NULL at run time (optional_labels, optional_grad): one pass for all of them.
    A softmax along an axis not the last has `stride` set: then x is [rows, cols, stride]."""
    kind: str = "softmax"
    out: str = ""
    x: str = ""
    rows: str = ""
    cols: str = ""
    labels: str | None = None
    targets: str | None = None
    probs: str | None = None
    grad: str | None = None
    scale: str | None = None
    parallel: str | None = None
    optional_labels: bool = False   # labels may be NULL: then no loss (and no gradient) is computed
    optional_grad: bool = False     # grad may be NULL: then it is not written
    stride: str | None = None       # softmax, log_softmax along an axis not the last: x [rows, cols, stride],
                                    # each of the rows·stride rows read with this stride (else None)
    template: ClassVar[str] = "kernels/softmax_xent.c.j2"
    kind_name: ClassVar[str] = "row_softmax"


@dataclass(frozen=True)
class Gather(Kernel):
    """kind: embedding (out rows = src[ids]), embedding_grad (out = scatter-add of src rows by
    ids, rows x width) or onehot (out rows of width, 1 at each label)."""
    kind: str = "embedding"
    out: str = ""
    ids: str = ""
    count: str = ""
    width: str = ""
    src: str | None = None
    rows: str | None = None
    out_stride: str | None = None   # embedding: the row stride of out (a concat's width), else width
    out_offset: str = "0"           # ... and the first column written
    src_stride: str | None = None   # embedding_grad: the row stride of src (a slice's source), else width
    src_offset: str = "0"
    zero: bool = True               # embedding_grad: clear out first (not for the second scatter of a sum)
    more: tuple = ()                # the gathers joined into this one's loop: (ids, src, out_offset, src_offset)
    template: ClassVar[str] = "kernels/gather.c.j2"
    kind_name: ClassVar[str] = "gather"

    @property
    def joined(self) -> bool:
        return bool(self.more)

    @property
    def parts(self) -> list[dict]:
        return [dict(ids=i, src=s, out_offset=oo, src_offset=so)
                for i, s, oo, so in ((self.ids, self.src, self.out_offset, self.src_offset),) + self.more]

    def join(self, other: "Gather") -> "Gather | None":
        """One loop over the rows for this gather and `other`, when they write the same array in
        the same way (the embeddings of a window into their columns of e, or their scatters into
        d_E); None otherwise."""
        same = ("kind", "out", "count", "width", "rows", "out_stride", "src_stride")
        if self.kind not in ("embedding", "embedding_grad") or other.zero and self.kind == "embedding_grad" \
                or any(getattr(self, f) != getattr(other, f) for f in same):
            return None
        mine, theirs = (c.split(": ", 1)[-1] for c in (self.comment, other.comment))
        comment = self.comment if other.comment == self.comment else \
            f"{self.out}: {mine}" if mine == theirs else self.comment + "\n   " + other.comment
        return replace(self, comment=comment, defs=self.defs + other.defs,
                       uses=self.uses + other.uses,
                       more=self.more + ((other.ids, other.src, other.out_offset, other.src_offset),) + other.more)


# -------------------------------------------------------------------------------------- patches
@dataclass(frozen=True)
class Window(Kernel):
    """Where the kernel windows of a 2-D convolution sit, over an image [batch, C, H, W] with
    output [.., Ho, Wo]: kernel kh x kw, stride (sh, sw), padding (pt top, pl left), dilation
    (dh, dw). Sizes are C text. The base of the records that loop over windows."""
    kind: str = ""
    out: str = ""
    x: str = ""
    batch: str = ""
    C: str = ""
    H: str = ""
    W: str = ""
    kh: str = ""
    kw: str = ""
    Ho: str = ""
    Wo: str = ""
    sh: str = ""
    sw: str = ""
    pt: str = ""
    pl: str = ""
    dh: str = ""
    dw: str = ""


@dataclass(frozen=True)
class Patches(Window):
    """kind im2col: out [n*Ho*Wo rows, C*kh*kw] = the windows of x [n, C, H, W] (pad_value outside);
    kind col2im: out [n, C, H, W] = zeros, then each patch element of x added back where it came
    from. layout "nchw": the patches as planes [n, C*kh*kw, Ho*Wo], copied (and added back) a row
    of Wo at a time."""
    pad_value: str = "0"
    layout: str = "nhwc"
    template: ClassVar[str] = "kernels/patches.c.j2"
    kind_name: ClassVar[str] = "patches"


@dataclass(frozen=True)
class Depthwise(Window):
    """A depthwise convolution's direct loop (no patch matrix), x and out NCHW, w [C, 1, kh, kw].
    kind forward: out = the windows of x times w (+ bias, then relu when set); input_grad: out
    [n, C, H, W] = each δ (x here) times w added back onto its window; weight_grad: out [C, 1, kh, kw]
    = Σ over batch and pixels of δ (w here) times the window of x."""
    w: str = ""
    bias: str | None = None
    relu: bool = False
    template: ClassVar[str] = "kernels/depthwise.c.j2"
    kind_name: ClassVar[str] = "depthwise"


@dataclass(frozen=True)
class Pointwise(Kernel):
    """A 1x1 convolution (stride 1, no padding) by one GEMM per image of the batch, x and out NCHW,
    w [C_out, C_in, 1, 1] read as the matrix [C_out, C_in]; each image's [C, H·W] is a matrix.
    kind forward: out[n] = w x[n] (+ bias per row, filled in first and accumulated onto; then relu
    when set, in the GEMM's epilogue); input_grad: out[n] = wᵀ δ[n] (δ is x here); weight_grad:
    out = Σ_n δ[n] x[n]ᵀ (δ is w here), the images, and chunks of K pixels of each, accumulated in
    order (beta 1 after the first product). forward and input_grad run over blocks of N of the HW
    columns when `columns` is set. ta, tb, M, N, K: each call's product (K the most; what
    the workspace's packing share is sized by: dims, as Gemm's). Sizes are C text."""
    kind: str = "forward"
    out: str = ""
    x: str = ""
    w: str = ""
    bias: str | None = None
    relu: bool = False
    batch: str = ""
    C_in: str = ""
    C_out: str = ""
    HW: str = ""
    ta: int = 0
    tb: int = 0
    M: str = ""
    N: str = ""
    K: str = ""
    chunk: str | None = None    # weight_grad: the pixels per product when fewer than HW (then K is that many)
    columns: str | None = None  # forward, input_grad: the pixels (columns) per product when fewer than HW (N)
    x_at: str = ""              # image gc_n of x (δ for input_grad): C text
    w_at: str | None = None     # weight_grad: image gc_n of w (δ)
    out_at: str | None = None   # forward, input_grad: image gc_n of out
    before: tuple = ()          # Patches records (one image) run before image gc_n's product: its planes made
    after: Any = None           # a Patches record run after it: its planes (out_at) summed back into the image
    scratch: tuple = ()         # (C name, elements): one image's planes (a chunk's partial sum), in the workspace
    dims: tuple = ()            # (M, N, K) as polynomials in n: what backend/packing.py sizes the pack by
    # images run in parallel: thread t > 0 has an area of its own (pack - t * GC_THREAD_ELEMS): its copy
    # of each scratch buffer (local C name, thread 0's buffer, offset in the area), then its packing share
    locals: tuple = ()
    thread_scratch: int = 0     # elements of the area before the packing share
    images: int = 8             # weight_grad: the images of a chunk (schedule.IMAGE_CHUNK)
    elems: str = ""             # weight_grad: the elements of out
    residual: str | None = None  # forward: image gc_n of r, added (with the bias) before the product (CONV_ADD_RELU)
    batch_dim: Any = None       # the batch as a Poly (weight_grad: thread 0's partial sum is needed past IMAGE_CHUNK)
    template: ClassVar[str] = "kernels/pointwise.c.j2"
    kind_name: ClassVar[str] = "pointwise"


@dataclass(frozen=True)
class Attention(Kernel):
    """Scaled dot-product attention over `heads` independent (batch, head) pairs, each q [Tq, D],
    k [Tk, D], v [Tk, Dv] contiguous, by blocks of br query rows and bc keys (causal: the blocks
    above the diagonal skipped). kind forward: out [Tq, Dv] = softmax(scale q kᵀ) v by an online
    softmax, accumulated in out itself, and lse [Tq] = the row log-sum-exp (each None when not
    wanted). kind backward: d_q, d_k, d_v (None: not wanted) from q, k, v, o, lse and d_o, P
    recomputed as exp(scale q kᵀ − lse). Each head runs on one thread; its block products are the
    library's GEMM on that thread. No Tq x Tk matrix: the thread's share (`share` elements,
    packing.attention_scratch; the packing area for the first thread, an area of its own for each
    other, as a convolution's images have) holds the products' packing (`pack`), a block of scores
    and (backward, `blocks` 2) one of dS. Sizes are C text."""
    kind: str = "forward"
    q: str = ""
    k: str = ""
    v: str = ""
    out: str | None = None
    lse: str | None = None
    o: str | None = None
    d_o: str | None = None
    d_q: str | None = None
    d_k: str | None = None
    d_v: str | None = None
    heads: str = ""
    Tq: str = ""
    Tk: str = ""
    D: str = ""
    Dv: str = ""
    scale: str = ""
    causal: bool = False
    br: int = 64
    bc: int = 64
    pack: int = 0
    blocks: int = 1
    share: int = 0
    template: ClassVar[str] = "kernels/attention.c.j2"
    kind_name: ClassVar[str] = "attention"


@dataclass(frozen=True)
class RowNorm(Kernel):
    """layer_norm over `rows` rows of `cols` elements, one row at a time (its mean and 1/σ in
    registers). kind forward: out = x̂ ∘ weight + bias (each None when left out). kind backward:
    d_x = (g − mean(g) − x̂ ∘ mean(g ∘ x̂)) / σ with g = d ∘ weight, and d_weight = Σ d ∘ x̂ over
    the rows (each None when not wanted), μ and σ recomputed. The rows go over threads when
    `parallel` (the element count) is set and no sum over rows is written. Sizes are C text."""
    kind: str = "forward"
    x: str = ""
    rows: str = ""
    cols: str = ""
    eps: str = ""
    weight: str | None = None
    bias: str | None = None
    out: str | None = None
    d: str | None = None
    d_x: str | None = None
    d_weight: str | None = None
    parallel: str | None = None
    template: ClassVar[str] = "kernels/layer_norm.c.j2"
    kind_name: ClassVar[str] = "norm"


# ------------------------------------------------------------------------------------- scans
@dataclass(frozen=True)
class ScanLoop(Kernel):
    """for t in 0 .. T-1 (or T-1 .. 0: reverse): the body's records. `locals` (C type, name, value)
    are declared before the loop (the body's buffers, carry buffers, scratch) and `fills` (name,
    value) set there (a constant read as a buffer); `carries` are (read pointer, write pointer,
    buffer a, buffer b, initial value); `slices` (C type, name, value) are declared at each step and
    `copies` (records) copy the strided ones; `finals` (output, read pointer, element count) are
    copied after the loop."""
    label: str = ""
    T: str = ""
    reverse: bool = False
    locals: tuple = ()
    fills: tuple = ()
    cleared: tuple = ()         # (buffer, element count): the running sums (Body.sums), zeroed before the loop
    carries: tuple = ()
    slices: tuple = ()
    copies: tuple = ()
    body: tuple = ()
    finals: tuple = ()
    scratch: tuple = ()         # (C name, elements as a polynomial in n): the workspace buffer of the loop
    template: ClassVar[str] = "kernels/scan.c.j2"
    kind_name: ClassVar[str] = "scan"

    @property
    def inner(self) -> tuple:
        """The records run inside the loop (the GEMM packing share counts their products too)."""
        return self.copies + self.body


# ---------------------------------------------------------------------------------- optimizers
@dataclass(frozen=True)
class Update(Kernel):
    """What every optimizer's update of one param has: the param and its gradient (C names), its
    element count, whether to split the loop over threads, and the C expression of the learning
    rate (a field of the run-time hyperparameters). The other hyperparameters are read by the
    model's update function (optimizer.c.j2's `define`) from the same struct."""
    param: str = ""
    grad: str = ""
    count: str = ""
    parallel: bool = False
    lr: str = ""
    mixed: bool = False         # some params' updates are split over threads, some not: pass the flag
    recipe: bool = False        # a schedule, clipping or accumulation: the update function takes lr (and gscale)
    gscale: str | None = None   # the gradient's scale (clipping, an accumulated mean), when the function takes one


@dataclass(frozen=True)
class SgdUpdate(Update):
    """param -= lr * (grad + wd param), through the momentum buffer buf when there is one."""
    buf: str | None = None
    template: ClassVar[str] = "kernels/optimizer.c.j2"
    kind_name: ClassVar[str] = "sgd"


@dataclass(frozen=True)
class AdamStepCount(Kernel):
    """t += 1 and the bias corrections of this step, once before the Adam updates (`counted`: a
    RecipeBegin counted the step already; `lr`: the C expression of the step's learning rate)."""
    t: str = ""
    counted: bool = False
    lr: str = "gc_hp->lr"
    template: ClassVar[str] = "kernels/optimizer.c.j2"
    kind_name: ClassVar[str] = "adam_begin"


@dataclass(frozen=True)
class RecipeBegin(Kernel):
    """At the top of a train step (or of NAME_apply): the run-time hyperparameters checked
    (`check`), and under a schedule t += 1 and this step's learning rate gc_lr (`t`: the step count)."""
    check: bool = False
    t: str | None = None
    template: ClassVar[str] = "kernels/optimizer.c.j2"
    kind_name: ClassVar[str] = "recipe_begin"


@dataclass(frozen=True)
class GradNorm(Kernel):
    """clip_grad_norm_: the 2-norm of the gradients `grads` (C names, `counts` elements each) together,
    written to `out`, and gc_gscale, the factor the updates apply to them (`mean`: a C factor the
    gradients are first multiplied by, an accumulated sum's 1 / rows; `clip`: clip to max_norm)."""
    grads: tuple = ()
    counts: tuple = ()
    out: str | None = None
    mean: str | None = None
    clip: bool = True
    template: ClassVar[str] = "kernels/optimizer.c.j2"
    kind_name: ClassVar[str] = "grad_norm"


@dataclass(frozen=True)
class AccumulateGrad(Kernel):
    """acc += weight grad (a micro-batch's gradient, weighted by its rows), or, with grad None,
    rows += weight (the rows accumulated)."""
    acc: str = ""
    grad: str | None = None
    count: str = ""
    weight: str = "n"
    template: ClassVar[str] = "kernels/optimizer.c.j2"
    kind_name: ClassVar[str] = "accumulate"


@dataclass(frozen=True)
class AdamUpdate(Update):
    """Adam's (or AdamW's) moments m, v and the update of param from grad."""
    m: str = ""
    v: str = ""
    template: ClassVar[str] = "kernels/optimizer.c.j2"
    kind_name: ClassVar[str] = "adam"


@dataclass(frozen=True)
class ParamUpdate:
    """One trained param in a train step: its value, its gradient's value, its C name, and the
    record that updates it after every other kernel (unless its gradient's GEMM does it)."""
    param: Any
    grad: Any
    cname: str
    record: Kernel


@dataclass(frozen=True)
class OptimizerUpdates:
    """The optimizer's part of a train step, for the scheduler. `first` runs before the updates
    (Adam's step count), then each param's update record. With plain SGD (`rate` set), a param
    whose gradient a GEMM writes, and that no later kernel reads, is updated by that GEMM as it
    writes the gradient (the epilogue's update field: W -= rate * d_W), with `note` appended
    to the GEMM's comment; its gradient is then scratch of that GEMM only."""
    params: tuple = ()          # of ParamUpdate
    first: tuple = ()           # records before the updates
    norm: Any = None            # a GradNorm run after `first` (its grads filled in by the scheduler)
    rate: str | None = None     # plain SGD's learning rate, as C: (gc_real)gc_hp->lr
    note: str = ""              # "SGD, as torch.optim.SGD: {w} -= lr d_{w}"


@dataclass(frozen=True)
class NamedLoop:
    """A Loop as its template prints it with the dims' enum names (see `with_names`)."""
    loop: Loop
    names: tuple
    template: ClassVar[str] = Loop.template

    @property
    def nest(self) -> Nest:
        return collapse(self.loop, dict(self.names))


# the fields of each record that hold a size printed by c_poly, named by `with_names`
_SIZE_FIELDS = ("M", "N", "K", "lda", "ldb", "ldc", "rows", "cols", "count", "width", "out_stride", "src_stride",
                "stride", "heads", "Tq", "Tk", "D", "Dv")


def with_names(record: Kernel, names: dict[int, str]):
    """The record as its template prints it with the enum names of the dims (one_layer_Dh for 128)
    in its sizes; the record itself keeps the numbers the planner and the fusions read."""
    if not names:
        return record
    if isinstance(record, Loop):
        return NamedLoop(record, tuple(sorted(names.items())))
    if isinstance(record, ScanLoop):
        return replace(record, T=c_named(record.T, names), copies=tuple(with_names(r, names) for r in record.copies),
                       body=tuple(with_names(r, names) for r in record.body))
    change = {f.name: c_named(getattr(record, f.name), names) for f in fields(record)
              if f.name in _SIZE_FIELDS and isinstance(getattr(record, f.name), str)}
    if isinstance(record, Gemm) and (record.epilogue.ldm or record.epilogue.ldu):
        ep = record.epilogue
        change["epilogue"] = replace(ep, ldm=ep.ldm and c_named(ep.ldm, names), ldu=ep.ldu and c_named(ep.ldu, names))
    return replace(record, **change)


RECORDS = (Loop, Gemm, RowSoftmax, Gather, Patches, Depthwise, Pointwise, Attention, RowNorm, ScanLoop, SgdUpdate,
           AdamStepCount, AdamUpdate, RecipeBegin, GradNorm, AccumulateGrad)


def all_records(steps):
    """The records and those run inside them (a scan's loop, backend/scan_loop.py), depth first."""
    for st in steps:
        yield st
        yield from all_records(getattr(st, "inner", ()))


# the records that call the GEMM library (and so need the workspace's packing share): each has
# ta, tb and dims, the (M, N, K) of its calls
PRODUCTS = (Gemm, Pointwise)
PACK_USERS = PRODUCTS + (Attention,)      # the records that use the workspace's packing area
