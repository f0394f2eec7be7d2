"""Every op record is complete, and what it knows is said only there.

For each op of the registry: a shape rule, a NumPy reference, a VJP (or an explicit "no
gradient") whose docstring cites every identity it stamps, its formula in the notes' notation
(text and LaTeX), its index bounds when it reads int32 labels or ids, and its spec form for
error messages, which parses back to the same node. EXAMPLES holds one or more nodes per op
with what each must print; a new op fails `test_every_op_has_an_example` until it has one.
"""
from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import graphc
from graphc.autodiff import explain as explain_module
from graphc.autodiff.explain import Derivation, LatexNotation, TextNotation
from graphc.autodiff.grad import Builder
from graphc.backend.schedule import Scheduler
from graphc.core import text as text_module
from graphc.core.errors import ArgumentError
from graphc.core.ir import INT
from graphc.core.opdef import OpDef
from graphc.core.reference import evaluate_values
from graphc.core.text import spec_form
from graphc.native.export import label_bounds
from graphc.ops import REGISTRY

DIMS = {"N": None, "D": 4, "K": 3, "V": 7}
BATCH = 3
REAL = {"x": ("N", "D"), "u": ("N", "D"), "p": ("N", "K"), "b": ("D",), "s": (),
        "img": ("N", 2, 5, 4), "seq": ("N", 2, 6), "pat": ("N", 5, 4, 18),      # NCHW, NCL, patch rows
        "lse": ("N", 2, 5)}                                                     # attention's row log-sum-exp of img
LABELS = {"y": ("N",), "ids": ("N",)}      # below K (classes) and V (table rows)
PARAMS = {"W": ("D", "K"), "E": ("V", "D"), "ker": (3, 2, 3, 3), "kb": (3,), "k1": (3, 2, 3), "w2": (3, 18),
          "dk": (2, 1, 3, 3), "pk": (3, 2, 1, 1), "gam": (2,)}
STATE = {"rm": (2,), "rv": (2,)}          # running statistics of img's 2 channels

SPEC_HEAD = """name = "ex"
[dims]
N = "batch"
D = 4
K = 3
V = 7
[inputs]
x = ["N", "D"]
u = ["N", "D"]
p = ["N", "K"]
b = ["D"]
s = []
img = ["N", 2, 5, 4]
seq = ["N", 2, 6]
pat = ["N", 5, 4, 18]
y = { shape = ["N"], dtype = "int32" }
ids = { shape = ["N"], dtype = "int32" }
[params]
W = ["D", "K"]
E = ["V", "D"]
ker = [3, 2, 3, 3]
kb = [3]
k1 = [3, 2, 3]
w2 = [3, 18]
dk = [2, 1, 3, 3]
pk = [3, 2, 1, 1]
gam = [2]
[state]
rm = [2]
rv = [2]
"""

def _scan_body():
    """s_t = s_{t-1} + Σ x_t, over seq [N, 2, 6] along axis 1 (a scan of ops/scan.py)."""
    from graphc.ops.scan import finish
    body = graphc.Graph("acc", DIMS)
    s, x = body.input("s", ()), body.input("x_t", ("N", 6))
    return finish(body, ["s"], ["x_t"], [s + graphc.sum(x)], [], 1, "acc")


SCAN_BODY = _scan_body()

# (op, inputs, attrs, spec form or None where the spec language cannot write it, text, LaTeX)
EXAMPLES = [
    ("const", (), {"value": 2.5}, "2.5", "2.5", "2.5"),
    ("add", ("x", "u"), {}, "x + u", "x + u", "x + u"),
    ("sub", ("x", "u"), {}, "x - u", "x − u", "x - u"),
    ("mul", ("x", "u"), {}, "x * u", "x ∘ u", r"x \circ u"),
    ("div", ("x", "u"), {}, "x / u", "x/u", "x / u"),
    ("neg", ("x",), {}, "-x", "−x", "-x"),
    ("square", ("x",), {}, "x ** 2", "x²", "x^2"),
    ("relu", ("x",), {}, "relu(x)", "relu(x)", r"\operatorname{relu}(x)"),
    ("sign", ("x",), {}, "sign(x)", "sgn(x)", r"\operatorname{sgn}(x)"),
    ("sigmoid", ("x",), {}, "sigmoid(x)", "σ(x)", r"\sigma(x)"),
    ("tanh", ("x",), {}, "tanh(x)", "tanh(x)", r"\tanh(x)"),
    ("exp", ("x",), {}, "exp(x)", "exp(x)", r"\exp(x)"),
    ("log", ("x",), {}, "log(x)", "log(x)", r"\log(x)"),
    ("sqrt", ("x",), {}, "sqrt(x)", "sqrt(x)", r"\sqrt{x}"),
    ("leaky_relu", ("x",), {}, "leaky_relu(x)", "leaky_relu(x)", r"\operatorname{leaky\_relu}(x)"),
    ("leaky_relu", ("x",), {"negative_slope": 0.2}, "leaky_relu(x, negative_slope=0.2)", "leaky_relu(x)",
     r"\operatorname{leaky\_relu}(x)"),
    ("elu", ("x",), {"alpha": 0.5}, "elu(x, alpha=0.5)", "elu(x)", r"\operatorname{elu}(x)"),
    ("softplus", ("x",), {}, "softplus(x)", "softplus(x)", r"\operatorname{softplus}(x)"),
    ("gelu", ("x",), {}, "gelu(x)", "gelu(x)", r"\operatorname{gelu}(x)"),
    ("gelu", ("x",), {"approximate": "tanh"}, "gelu(x, approximate='tanh')", "gelu(x)", r"\operatorname{gelu}(x)"),
    ("silu", ("x",), {}, "silu(x)", "silu(x)", r"\operatorname{silu}(x)"),
    ("erf", ("x",), {}, "erf(x)", "erf(x)", r"\operatorname{erf}(x)"),
    ("broadcast_to", ("b",), {"shape": ("N", 4)}, None, "b", "b"),
    ("matmul", ("x", "W"), {}, "x @ W", "x W", "x W"),
    ("transpose", ("W",), {}, "W.T", "Wᵀ", r"W^\top"),
    ("sum", ("x",), {}, "sum(x)", "Σ x", r"\textstyle\sum x"),
    ("sum", ("x",), {"axis": 0}, "sum(x, axis=0)", "Σ_rows x", r"\textstyle\sum_{\text{rows}} x"),
    ("sum", ("x",), {"axis": 1, "keepdims": True}, "sum(x, axis=1, keepdims=True)", "Σ_cols x",
     r"\textstyle\sum_{\text{cols}} x"),
    ("mean", ("x",), {"axis": 1}, "mean(x, axis=1)", "mean(x)", r"\operatorname{mean}(x)"),
    ("sum_to", ("x",), {"shape": (4,)}, None, "Σ_rows x", r"\textstyle\sum_{\text{rows}} x"),
    ("size", ("x",), {"axes": (0,)}, None, "N", "N"),
    ("dot", ("x", "u"), {}, "dot(x, u)", "x · u", "x · u"),
    ("norm2", ("x",), {}, "norm2(x)", "‖x‖", r"\lVert x \rVert"),
    ("reshape", ("b",), {"shape": (2, 2)}, "reshape(b, shape=(2, 2))", "reshape(b)", r"\operatorname{reshape}(b)"),
    ("reshape", ("b",), {"shape": (1, 4)}, "reshape(b, shape=(1, 4))", "bᵀ", r"b^\top"),
    ("concat", ("x", "u"), {}, "concat(x, u)", "[x, u]", "[x, u]"),
    ("slice", ("x",), {"start": 1, "stop": 3}, "x[:, 1:3]", "x[:, 1:3]", "x[:, 1:3]"),
    ("slice", ("W",), {"start": 0, "stop": 4, "step": 2, "axis": -2}, "W[0:4:2]", "W[0:4:2]", "W[0:4:2]"),
    ("unslice", ("x",), {"size": 6, "start": 1, "stop": 5}, None, "unslice(x)", r"\operatorname{unslice}(x)"),
    ("permute", ("x",), {"axes": (1, 0)}, "permute(x, axes=(1, 0))", "xᵀ", r"x^\top"),   # the last two axes swapped
    ("flatten", ("x",), {}, "flatten(x)", "flatten(x)", r"\operatorname{flatten}(x)"),
    ("pad", ("img",), {"pad": (1, 1, 2, 0), "value": 0.5}, "pad(img, pad=(1, 1, 2, 0), value=0.5)", "pad(img)",
     r"\operatorname{pad}(\mathrm{img})"),
    ("concat", ("W", "W"), {"axis": 0}, "concat(W, W, axis=0)", "[W, W]", "[W, W]"),
    ("embedding", ("E", "ids"), {}, "embedding(E, ids)", "E[ids]", r"E[\mathrm{ids}]"),
    ("embedding_grad", ("x", "ids"), {"rows": 7}, None, "scatter_add(x, ids)",
     r"\operatorname{scatter\_add}(x, \mathrm{ids})"),
    ("softmax", ("p",), {}, "softmax(p)", "softmax(p)", r"\operatorname{softmax}(p)"),
    ("log_softmax", ("p",), {}, "log_softmax(p)", "log_softmax(p)", r"\operatorname{log\_softmax}(p)"),
    ("cross_entropy", ("p", "y"), {}, "cross_entropy(p, y)", "CE(y, p)", r"\operatorname{CE}(y, p)"),
    ("cross_entropy", ("p", "p"), {}, "cross_entropy(p, p)", "CE(p, p)", r"\operatorname{CE}(p, p)"),
    ("mse", ("x", "u"), {}, "mse(x, u)", "mse(x, u)", r"\operatorname{mse}(x, u)"),
    ("onehot", ("y",), {"depth": 3}, None, "y", "y"),
    ("conv2d", ("img", "ker", "kb"), {"padding": 1}, "conv2d(img, ker, kb, padding=1)", "conv2d(img, ker, kb)",
     r"\operatorname{conv2d}(\mathrm{img}, \mathrm{ker}, \mathrm{kb})"),
    ("conv2d", ("img", "ker"), {"stride": 2}, "conv2d(img, ker, stride=2)", "conv2d(img, ker)",
     r"\operatorname{conv2d}(\mathrm{img}, \mathrm{ker})"),
    ("conv1d", ("seq", "k1", "kb"), {}, "conv1d(seq, k1, kb)", "conv1d(seq, k1, kb)",
     r"\operatorname{conv1d}(\mathrm{seq}, k_{1}, \mathrm{kb})"),
    ("im2col", ("img",), {"kernel": (3, 3), "padding": (1, 1, 1, 1)}, None, "im2col(img)",
     r"\operatorname{im2col}(\mathrm{img})"),
    ("col2im", ("pat",), {"size": (5, 4), "kernel": (3, 3), "padding": (1, 1, 1, 1)}, None, "col2im(pat)",
     r"\operatorname{col2im}(\mathrm{pat})"),
    ("patch_matmul", ("pat", "w2"), {}, None, "pat w2ᵀ", r"\mathrm{pat} w_{2}^\top"),
    ("patch_matmul", ("pat", "w2", "kb"), {}, None, "patch_matmul(pat, w2, kb)",
     r"\operatorname{patch\_matmul}(\mathrm{pat}, w_{2}, \mathrm{kb})"),
    ("patch_matmul", ("pat", "pat"), {"mode": "tn"}, None, "patᵀ pat", r"\mathrm{pat}^\top \mathrm{pat}"),
    ("depthwise_conv", ("img", "dk"), {"kernel": (3, 3), "padding": (1, 1, 1, 1)}, None, "dwconv(img, dk)",
     r"\operatorname{dwconv}(\mathrm{img}, \mathrm{dk})"),
    ("pointwise_conv", ("img", "pk"), {}, None, "pk img", r"\mathrm{pk} \mathrm{img}"),
    ("max", ("x",), {"axis": 1}, "max(x, axis=1)", "max(x)", r"\max(x)"),
    ("layer_norm", ("x", "b", "b"), {"normalized_shape": (4,)}, "layer_norm(x, (4,), b, b)", "layer_norm(x, b, b)",
     r"\operatorname{layer\_norm}(x, b, b)"),
    ("layer_norm", ("x",), {"normalized_shape": (4,), "eps": 0.001}, "layer_norm(x, normalized_shape=(4,), eps=0.001)",
     "layer_norm(x)", r"\operatorname{layer\_norm}(x)"),
    ("layer_norm_grad", ("x", "x", "b"), {"normalized_shape": (4,), "wrt": "weight"}, None,
     "layer_norm_grad(x, x, b)", r"\operatorname{layer\_norm\_grad}(x, x, b)"),
    ("equal", ("x", "u"), {}, None, "equal(x, u)", r"\operatorname{equal}(x, u)"),
    ("where", ("x", "u", "b"), {}, "where(x, u, b)", "where(x, u, b)", r"\operatorname{where}(x, u, b)"),
    ("max_pool2d", ("img",), {"kernel_size": 2}, "max_pool2d(img, kernel_size=2)", "max_pool2d(img)",
     r"\operatorname{max\_pool2d}(\mathrm{img})"),
    ("avg_pool2d", ("img",), {"kernel_size": 3, "stride": 1, "padding": 1},
     "avg_pool2d(img, kernel_size=3, stride=1, padding=1)", "avg_pool2d(img)",
     r"\operatorname{avg\_pool2d}(\mathrm{img})"),
    ("adaptive_avg_pool2d", ("img",), {"output_size": 1}, "adaptive_avg_pool2d(img)", "adaptive_avg_pool2d(img)",
     r"\operatorname{adaptive\_avg\_pool2d}(\mathrm{img})"),
    ("batch_norm", ("img", "rm", "rv", "gam", "gam"), {}, "batch_norm(img, rm, rv, gam, gam)", "batch_norm(img, rm, rv, gam, gam)",
     r"\operatorname{batch\_norm}(\mathrm{img}, \mathrm{rm}, \mathrm{rv}, \mathrm{gam}, \mathrm{gam})"),
    ("batch_norm", ("img", "rm", "rv"), {"momentum": 0.5}, "batch_norm(img, rm, rv, momentum=0.5)", "batch_norm(img, rm, rv)",
     r"\operatorname{batch\_norm}(\mathrm{img}, \mathrm{rm}, \mathrm{rv})"),
    ("scaled_dot_product_attention", ("img", "img", "img"), {"is_causal": True},
     "scaled_dot_product_attention(img, img, img, is_causal=True)", "attention(img, img, img)",
     r"\operatorname{attention}(\mathrm{img}, \mathrm{img}, \mathrm{img})"),
    ("attention_lse", ("img", "img"), {}, None, "logsumexp(s img imgᵀ)",
     r"\operatorname{logsumexp}(s \mathrm{img} \mathrm{img}^\top)"),
    ("attention_grad", ("img", "img", "img", "img", "lse", "img"), {"wrt": "v"}, None, "Pᵀ img",
     r"P^\top \mathrm{img}"),
    ("dropout", ("x",), {"p": 0.25}, "dropout(x, 0.25, seed=0)", "dropout(x)", r"\operatorname{dropout}(x)"),
    ("dropout_mask", ("s",), {"shape": (3, 4), "p": 0.5, "seed": 0}, None, "mask()", r"\operatorname{mask}()"),
    ("scan", ("s", "seq"), {"body": SCAN_BODY, "part": ("final", 0)}, None, "scan[acc](s, seq)",
     r"\operatorname{scan[acc]}(s, \mathrm{seq})"),
]
IDS = [f"{e[0]}-{i}" for i, e in enumerate(EXAMPLES)]
FIRST = {}                                   # one example per op, for the checks that need one node
for e in EXAMPLES:
    FIRST.setdefault(e[0], e)


def example(name, ins, attrs):
    """A graph holding the declared values and the node `name(ins, **attrs)`; the node's output."""
    g = graphc.Graph("ex", DIMS)
    for n, shape in REAL.items():
        g.input(n, shape)
    for n, shape in LABELS.items():
        g.input(n, shape, "int32")
    for n, shape in PARAMS.items():
        g.param(n, shape)
    for n, shape in STATE.items():
        g.state(n, shape)
    return g, g.apply(name, *[g.values[i] for i in ins], **attrs)


def arrays(g, overrides=None):
    rng = np.random.default_rng(0)
    out = {}
    for n, v in {**g.inputs, **g.params}.items():
        shape = tuple(BATCH if isinstance(d, str) else d for d in v.shape)
        if v.dtype == INT:
            out[n] = rng.integers(0, 3, size=shape).astype(np.int32)
        else:
            out[n] = np.abs(rng.standard_normal(shape)) + 0.5    # log and sqrt need positive inputs
    out.update(overrides or {})
    return out


def test_every_op_has_an_example():
    assert set(FIRST) == set(REGISTRY), (
        f"ops without an example: {sorted(set(REGISTRY) - set(FIRST))}; "
        f"examples of no op: {sorted(set(FIRST) - set(REGISTRY))}")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_op_has_a_shape_rule_and_a_reference(name):
    op = REGISTRY[name]
    assert type(op).shape is not OpDef.shape, f"{name} has no shape rule"
    assert type(op).reference is not OpDef.reference, f"{name} has no NumPy reference"
    _, ins, attrs, *_ = FIRST[name]
    g, v = example(name, ins, attrs)
    got = evaluate_values(g, arrays(g))[v.name]
    want = tuple(BATCH if isinstance(d, str) else d for d in v.shape)
    assert got.shape == want, f"{name}: the reference gives {got.shape}, the shape rule {v.shape}"


# backward kernels whose own VJP (a second derivative) graphc does not build
NO_SECOND_DERIVATIVE = {"attention_grad", "layer_norm_grad"}


def _identities(doc: str) -> set[str]:
    return set(re.findall(r"\((\d)\)", doc))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_op_has_a_vjp_citing_its_identities_or_says_no_gradient(name):
    op = REGISTRY[name]
    doc = type(op).__doc__ or ""             # its own: inspect.getdoc would inherit the base class's
    assert doc.strip(), f"{name} has no docstring"
    _, ins, attrs, *_ = FIRST[name]
    g, v = example(name, ins, attrs)
    d = g.input("delta", v.shape)
    before = len(g.nodes)
    if name in NO_SECOND_DERIVATIVE:            # a backward kernel op: says so, in a GraphcError
        assert "not supported" in doc
        with pytest.raises(graphc.GraphcError, match="not supported"):
            op.vjp(Builder(g), v.node, d)
        return
    grads = op.vjp(Builder(g), v.node, d)       # the base class raises: every op says what flows back
    assert len(grads) == len(v.node.inputs), f"{name}: one gradient (or None) per input"
    for x, gx in zip(v.node.inputs, grads):
        assert gx is None or gx.shape == x.shape, f"{name}: the gradient of {x.name} is not in its shape"
    if all(gx is None for gx in grads):
        assert "no gradient" in doc.lower(), f"{name} has no gradient and its docstring must say so"
        return
    # the identities stamped on the nodes it builds, and the op's own (identity (3) may build none: δ passes)
    stamped = {i.strip() for n in g.nodes[before:] for i in (n.origin.identity or "").split(",") if i.strip()}
    unstamped = [n.output.name for n in g.nodes[before:] if not n.origin.identity]
    assert not unstamped, f"{name}'s VJP builds {unstamped} citing no identity (build them inside b.because)"
    declared = {i for i in (op.identity or "").split(",") if i}
    assert stamped | declared, f"{name}'s VJP cites no identity"
    missing = (stamped | declared) - _identities(doc)
    assert not missing, f"{name}'s docstring does not cite identity {sorted(missing)} that its VJP uses"
    assert "identit" in doc, f"{name}'s docstring does not name the identity its VJP applies"


@pytest.mark.parametrize("name, ins, attrs, spec, text, latex", EXAMPLES, ids=IDS)
def test_op_notation_in_the_notes(name, ins, attrs, spec, text, latex):
    g, v = example(name, ins, attrs)
    nowhere = graphc.Graph("forward")           # no forward values: every node prints as its formula
    assert Derivation(nowhere, g, "J", [], TextNotation()).expr(v).text == text
    assert Derivation(nowhere, g, "J", [], LatexNotation()).expr(v).text == latex


# Which ops set explain's flags; a record that lost one changes the derivations' text.
LEAFY = {"const", "size", "onehot", "softmax", "log_softmax", "sign", "transpose", "reshape", "broadcast_to", "equal",
         "dropout_mask", "attention_lse"}
SEE_THROUGH = {"broadcast_to", "reshape"}
NOT_SHOWN_BY_NAME = {"softmax", "const"}


def test_explain_flags():
    assert {n for n, op in REGISTRY.items() if op.leafy} == LEAFY
    assert {n for n, op in REGISTRY.items() if op.see_through} == SEE_THROUGH
    assert {n for n, op in REGISTRY.items() if not op.shown_by_name} == NOT_SHOWN_BY_NAME


def test_a_shared_leafy_value_gets_no_delta():
    for name, ins, attrs, *_ in EXAMPLES:
        g, v = example(name, ins, attrs)
        g.apply("neg", v), g.apply("neg", v)        # used twice: a δ of its own unless leafy
        d = Derivation(graphc.Graph("forward"), g, "J", [], TextNotation())
        assert (v in d.deltas) != REGISTRY[name].leafy, name


def test_softmax_of_cross_entropy_logits_is_yhat():
    g, loss = example("cross_entropy", ("p", "y"), {})
    probs, logp = g.apply("softmax", g.values["p"]), g.apply("log_softmax", g.values["p"])
    d = Derivation(graphc.Graph("forward"), g, "J", [], TextNotation())
    assert (d.expr(probs).text, d.expr(logp).text) == ("ŷ", "log(ŷ)")
    assert REGISTRY["cross_entropy"].explain_notes(d, [loss.node])[0].startswith("ŷ = softmax(p)")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_int_inputs_declare_their_index_bounds(name):
    """An op that reads int32 values indexes with them: it says below what, and its reference
    agrees (bound − 1 is read, bound is refused)."""
    op = REGISTRY[name]
    _, ins, attrs, *_ = FIRST[name]
    g, v = example(name, ins, attrs)
    bounds = op.index_bounds(v.node)
    ints = [x for i, x in enumerate(v.node.inputs) if i in op.int_inputs and x.dtype == INT]
    assert [x for x, _ in bounds] == ints, f"{name}: index bounds for {[x.name for x, _ in bounds]}, " \
                                           f"int inputs {[x.name for x in ints]}"
    for x, bound in bounds:
        assert isinstance(bound, int) and bound >= 1
        shape = tuple(BATCH if isinstance(d, str) else d for d in x.shape)
        evaluate_values(g, arrays(g, {x.name: np.full(shape, bound - 1, np.int32)}))
        with pytest.raises(ArgumentError):
            evaluate_values(g, arrays(g, {x.name: np.full(shape, bound, np.int32)}))
    for x, bound in bounds:                     # what example and check inputs are drawn below
        assert label_bounds(g)[x.name] == bound


@pytest.mark.parametrize("name, ins, attrs, spec, text, latex", EXAMPLES, ids=IDS)
def test_spec_form_round_trips(name, ins, attrs, spec, text, latex):
    """The form error messages print is the spec language: it parses back to the same node."""
    op = REGISTRY[name]
    writable = op.public or type(op).spec_text is not OpDef.spec_text
    assert (spec is not None) == writable, f"{name}: the spec {'can' if writable else 'cannot'} write it"
    if spec is None:
        pytest.skip(f"the spec language has no form for {name}")
    g, v = example(name, ins, attrs)
    assert spec_form(v)[0] == spec
    parsed = graphc.parse_spec(SPEC_HEAD + f'[graph]\nJ = "sum({spec})"\n[outputs]\nloss = "J"\n')
    back = parsed.values["J"].node.inputs[0]
    assert back.node is not None and back.node.op is op
    assert back.node.attrs == v.node.attrs
    assert [x.name for x in back.node.inputs] == [x.name for x in v.node.inputs]
    assert spec_form(back)[0] == spec


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_op_lowers_to_kernel_records(name):
    """Every op reaches C: through its own `kernel` (a record of backend/kernels.py), its c_expr (a
    loop), as a static scalar, or by lowering into other ops first (composites)."""
    from graphc.backend.codegen import generate
    from graphc.backend.kernels import RECORDS
    op = REGISTRY[name]
    own = type(op).kernel is not OpDef.kernel
    composite = type(op).lower is not OpDef.lower
    assert own or op.c_expr is not None or op.static or composite, f"{name} has no way into C"
    _, ins, attrs, *_ = FIRST[name]
    g, v = example(name, ins, attrs)
    g.output("out", v)
    csrc = generate(g, dtype="float64")
    steps = csrc.functions[0].steps
    assert steps and all(isinstance(st, RECORDS) for st in steps), f"{name}: no kernel records"
    assert "int ex_forward(" in csrc.source


def test_no_op_is_named_outside_its_record():
    """explain, the spec form and the index bounds ask the op records; none tests an op's name."""
    sources = {
        "graphc/autodiff/explain.py": inspect.getsource(explain_module),
        "graphc/core/text.py": inspect.getsource(text_module),
        "label_bounds": inspect.getsource(label_bounds),
        "Scheduler._label_checks": inspect.getsource(Scheduler._label_checks),
    }
    found = [f"{where}: {name!r}" for where, src in sources.items() for name in REGISTRY
             if re.search(rf"""["']{name}["']""", src)]
    assert not found, "op names tested outside the op records:\n  " + "\n  ".join(found)
