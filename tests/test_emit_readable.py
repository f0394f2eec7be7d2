"""The emitted model file reads like hand-written C (issue 15 item 2; compare llm.c's train_gpt2.c):
at most 500 lines with its train step and fit, named dims and GEMM flags, one check function,
the forward pass written once, buffers that say whose memory they reuse, wrapped prototypes.
What the C computes is checked elsewhere (test_training, test_updates, test_c_strict); these
tests check its shape, and fail when a change brings back what they forbid."""
from __future__ import annotations

import re

import pytest

import graphc
from graphc.backend.codegen import generate
from graphc.backend.sizes import peval

from conftest import EXAMPLES_DIR

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.toml"))
OPTIMIZERS = {"sgd": graphc.SGD(lr=0.1), "momentum": graphc.SGD(lr=0.05, momentum=0.9, weight_decay=1e-4),
              "adam": graphc.Adam(weight_decay=1e-2), "adamw": graphc.AdamW()}
ENTRY = ("forward", "predict", "value_and_grad", "train_step")
LIMIT_ATTENTION = 1150     # char_gpt (2 attentions): 2,715 lines with adamw since attention's block products are GEMM calls


def emitted(spec, opt="adamw", dtype="float32"):
    g = graphc.load(spec)
    return g, generate(g, *g.grad_spec, dtype=dtype, optimizer=OPTIMIZERS[opt])


def body(source: str, name: str) -> str:
    """The text of the C function `name`, from its signature to its closing brace."""
    start = re.search(rf"^(?:static )?\w+ {re.escape(name)}\(", source, re.M)
    assert start, name
    end = source.index("\n}\n", start.start())
    return source[start.start():end + 2]


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_emit_model_file_with_train_step_and_fit_is_at_most_500_lines(spec, opt):
    g, c = emitted(spec, opt)
    assert f"{c.name}_train_step(" in c.source
    assert (f"{c.name}_fit(" in c.source) == bool(g.symbolic_dims)      # fit needs a batch dim
    lines = c.source.count("\n")
    # (a convolutional model is longer: each convolution, with its batch norm and pooling, is a few
    # loops or calls in the forward pass, the backward pass and the predict pass that inference runs
    # on its own; at most 700 lines per convolution more (digits_cnn 1,832 lines for 2, kws_dscnn
    # about 4,200 and resnet8 4,000 for 9), which catches a lowering that writes a call per group, as a
    # depthwise convolution by GEMMs once did: 11,120 lines for kws_dscnn)
    # (a scan is its body's kernels twice: in the forward that forward and predict share
    # (NAME_forward_rest), and in the training functions' backward pass: the forward that saves what
    # the backward reads and the backward scan; examples/gru.toml is about 980 lines, 1,090 when
    # predict ran its own scan)
    # (a transformer block is two layer norms (a row pass each, and one for both gradients of each),
    # a strided copy per head group, attention and an MLP, in the forward and backward
    # passes: char_gpt is about 3,480 lines for 2 (4,480 before the layer norm was one row kernel and
    # the head split one strided copy; 3,300 then, and 2,900 once forward and predict shared their
    # forward pass, before attention's products went by register tiles of four rows by 16 keys,
    # written out in each pass, about 275 lines per attention, and its train step applied each
    # update as soon as its gradient is complete, which cuts its Adam workspace at n = 1 from 490 KB
    # to 99 KB but shares fewer backward kernels with value_and_grad; 2,715 once attention's block
    # products were calls of the library's GEMM)
    convs = sum(n.op.name in ("conv2d", "conv1d") for n in g.nodes)
    scans = len({id(n.attrs["body"]) for n in g.nodes if n.op.name == "scan"})
    attentions = sum(n.op.name == "scaled_dot_product_attention" for n in g.nodes)
    limit = 500 + 700 * convs + 500 * scans + LIMIT_ATTENTION * attentions
    assert lines <= limit, f"{c.name}.c with {opt} has {lines} lines"


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_emit_dims_and_flags_have_names(spec):
    g, c = emitted(spec)
    sizes = [v for v in g.dims.values() if v is not None]
    unique = {k: v for k, v in g.dims.items() if v is not None and sizes.count(v) == 1 and v > 1}
    enum = re.search(r"enum \{ ([^}]*) \};", c.header)
    assert enum, "the header has no enum of the dims"
    assert enum.group(1) == ", ".join(f"{g.name}_{k} = {v}" for k, v in unique.items())
    calls = re.findall(r"gc_gemm\w*\(([^;]*)\);", c.source)
    assert calls
    for call in calls:
        flags = [a.strip() for a in call.split(",")[:2]]
        assert set(flags) <= {"GC_TRANS", "GC_NO_TRANS"}, call
        dims = [a.strip() for a in call.split(",")[2:5]]
        for d in dims:      # M, N, K: the batch n (or rows of it: n * 64 output pixels), a dim's
            # name, a size no single dim has, or the pixels of a chunk (a 1x1 weight gradient's gc_k,
            # a block of columns of a convolution's product per image: gc_cols; attention's blocks
            # of query rows and keys: gc_ni, gc_nj)
            assert re.fullmatch(r"(\d+ \* )?n( \* (\d+|[A-Za-z_]\w*))*", d) or d.startswith(f"{g.name}_") \
                or d in ("gc_k", "gc_cols", "gc_ni", "gc_nj") \
                or int(d) not in unique.values(), call
    assert not re.search(r"gc_gemm_bias_act\([^;]*, [01]\);", c.source)     # the activation is named too


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_emit_entry_points_share_one_check_and_one_forward_pass(spec):
    g, c = emitted(spec)
    names = [f.name for f in c.functions]
    assert c.source.count(f"static int {g.name}_check(") == 1
    assert c.source.count(f"static void {g.name}_forward_pass(") == 1
    for f in names:
        text = body(c.source, f"{g.name}_{f}")
        assert text.count(f"{g.name}_check(") == 1, f
        assert text.count(f"{g.name}_forward_pass(") == 1, f
        assert "GRAPHC_ERR_NULL" not in text and "GRAPHC_ERR_LABEL" not in text, f     # only in the check
    # value_and_grad and train_step share their backward pass too (but in the column model, where
    # value_and_grad writes d_theta into its output d_b2, the same value under two names)
    if {"value_and_grad", "train_step"} <= set(names) and g.name != "one_layer_column":
        assert "_backward_pass" in body(c.source, f"{g.name}_value_and_grad")
        assert "_backward_pass" in body(c.source, f"{g.name}_train_step")
    # no kernel is written twice: each spec-line comment with the kernel after it (to the next blank
    # line) appears once; but a model with modes (batch_norm, dropout) runs its own forward pass in
    # predict (inference), which repeats the kernels both modes have (a convolution's patches)
    source = c.source
    if any(n.op.name in ("batch_norm", "dropout") for n in g.nodes):
        source = source.replace(body(source, f"{g.name}_predict"), "")
    kernels = re.findall(r"/\* (\w+ = \"[^\"]*\")\s+\[[^\n]*\n(.*?)\n\n", source, re.S)
    assert kernels and len(kernels) == len(set(kernels)), sorted(k for k in kernels if kernels.count(k) > 1)


@pytest.mark.parametrize("spec", [EXAMPLES_DIR / "gru.toml", EXAMPLES_DIR / "lstm.toml", EXAMPLES_DIR / "digits_cnn.toml"],
                         ids=lambda p: p.stem)
def test_emit_the_rest_of_the_forward_pass_forward_shares_is_written_once(spec):
    """Past the steps all four entry points share, forward runs the rest alike with predict (a scan:
    the training functions run their own, which keeps its states) or with value_and_grad and
    train_step (batch norm: predict runs it on the running statistics): one NAME_forward_rest."""
    g, c = emitted(spec)
    rest = f"{g.name}_forward_rest("
    assert c.source.count(f"static void {rest}") == 1
    callers = [f for f in ENTRY if rest in body(c.source, f"{g.name}_{f}")]
    scans = [n for n in g.nodes if n.op.name == "scan"]
    if scans:
        assert callers == ["forward", "predict"]
        # each forward scan once in forward_rest and once in the training functions' shared pass
        forward_scans = re.findall(r"/\* scan (\w+): t = 0 to", c.source)
        assert len(forward_scans) == 2 * len(scans), forward_scans
        for f in ("forward", "predict"):    # the check and three calls: no kernel of its own
            assert len(body(c.source, f"{g.name}_{f}").splitlines()) < 30, f
    else:
        assert callers == ["forward", "value_and_grad", "train_step"]


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("spec", [EXAMPLES_DIR / "gru.toml", EXAMPLES_DIR / "lstm.toml"], ids=lambda p: p.stem)
def test_emit_accumulate_calls_the_backward_pass_value_and_grad_and_train_step_share(spec, opt):
    """With gradient accumulation, NAME_accumulate runs the same training forward scan and backward
    scan as value_and_grad: it calls their shared backward pass rather than holding a copy, so the
    model file has each scan as often as without accumulation (its values: test_recipe)."""
    g = graphc.load(spec)
    optimizer = (graphc.SGD(lr=0.1, accumulate=2) if opt == "sgd" else graphc.Adam(accumulate=2))
    c = generate(g, *g.grad_spec, dtype="float32", optimizer=optimizer)
    shared = set(re.findall(rf"\b({g.name}_backward_pass\w*)\(", body(c.source, f"{g.name}_value_and_grad")))
    assert shared and shared == set(re.findall(rf"\b({g.name}_backward_pass\w*)\(", body(c.source, f"{g.name}_accumulate")))
    scans = [n for n in g.nodes if n.op.name == "scan"]
    assert len(re.findall(r"/\* scan \w+: t = 0 to", c.source)) == 2 * len(scans)
    assert len(re.findall(r"/\* scan \w+: t = T-1 down to 0", c.source)) == len(scans)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_emit_each_buffer_over_another_says_whose_memory_it_reuses(spec, opt):
    """The planner puts a buffer over others whose lives ended: its comment names each of them,
    and no buffer claims another it does not overlap."""
    _, c = emitted(spec, opt)
    seen = 0
    for f in c.functions:
        bufs = list(f.sched.buffers.values())
        docs = {b["name"]: b["doc"] for b in f.buffers}
        for b in bufs:
            over = [o.name for o in bufs if o is not b and o.last < b.first and any(
                peval(o.offset, n) < peval(b.offset, n) + peval(b.size, n)
                and peval(b.offset, n) < peval(o.offset, n) + peval(o.size, n) for n in (1, 2, 3, 64))]
            claimed = re.search(r", over ([\w, ]+) \(", docs[b.name])
            assert (claimed.group(1).split(", ") if claimed else []) == over, (f.name, b.name, docs[b.name])
            seen += bool(over)
            # ... and those in whose gap it lives (memory.recompute_late_reads: computed again later)
            inside = [o.name for o in bufs if o is not b and any(g0 <= b.first and b.last <= g1 for g0, g1 in o.gaps)
                      and any(peval(o.offset, n) < peval(b.offset, n) + peval(b.size, n)
                              and peval(b.offset, n) < peval(o.offset, n) + peval(o.size, n) for n in (1, 2, 3, 64))]
            claimed = re.search(r", in the gap of ([\w, ]+) \(", docs[b.name])
            assert (claimed.group(1).split(", ") if claimed else []) == inside, (f.name, b.name, docs[b.name])
            line = f"gc_real *const {b.name} = ws + "
            assert line in c.source and docs[b.name] in c.source
    assert seen, "no buffer reuses another's memory: the test checks nothing"


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_emit_prototypes_are_wrapped(spec):
    g, c = emitted(spec)
    for text in (c.source, c.header):
        for m in re.finditer(rf"^(?:static )?(?:int|void) {g.name}_\w+\((?:[^)]*)\)", text, re.M):
            for line in m.group(0).splitlines():
                assert len(line) <= 100, line


def test_emit_window_classifier_gathers_into_e_and_scatters_into_d_E_once():
    """GATHER_INTO_CONCAT, SCATTER_FROM_SLICE, SCATTER_SUM: no copy of an embedding or of a slice
    of d_e, and d_E is zeroed once and summed into by the scatters of its three uses."""
    _, c = emitted(EXAMPLES_DIR / "window_classifier.toml", "sgd")
    assert "e__0" not in c.source and "d_e__0" not in c.source
    assert c.source.count("memset(d_E, 0") == 1
    assert re.search(r"d_E\[\(long\)w0\[i\] \* window_classifier_De \+ j\] \+= d_e\[", c.source)
