"""Bugs the differential fuzzer (graphc/tools/fuzz.py, docs/fuzzing.md) found, each as the
smallest spec that showed it, checked against the NumPy reference."""
from __future__ import annotations

import numpy as np
import pytest

import graphc

from conftest import private_cache_dir

_cache_dir = pytest.fixture(scope="module", autouse=True)(private_cache_dir)


def build(spec: str, name: str, optimizer=None):
    """The spec's graph and its model compiled for float64 (with `optimizer`)."""
    g = graphc.parse_spec(spec, f"{name}.toml")
    return g, graphc.compile(g, dtype="float64", optimizer=optimizer)


def against_reference(g, m, data: dict, rtol: float = 1e-14, grad_rtol: float = 1e-13) -> dict:
    """m's forward outputs and value_and_grad's outputs and gradients against graphc.evaluate of g's
    [grad] backward graph, entry by entry (rtol for the outputs, grad_rtol for the gradients: tighter
    than the fuzzer's `compare`, whose tolerance is a share of each array's largest magnitude).
    Returns the reference."""
    of, wrt = g.grad_spec
    reference = graphc.evaluate(graphc.grad(g, of, wrt), **data)
    forward = m.forward(**data)
    assert set(forward) == set(g.outputs)
    outs, grads = m.value_and_grad(**data)
    for k, v in [*forward.items(), *outs.items()]:
        np.testing.assert_allclose(v, reference[k], rtol=rtol, err_msg=k)
    assert set(grads) == set(wrt)
    for w, v in grads.items():
        np.testing.assert_allclose(v, reference[f"d_{w}"], rtol=grad_rtol, err_msg=f"d_{w}")
    return reference


def train_against_reference(m, g, optimizer, params: dict, batch: dict, steps: int, rtol: float) -> list[dict]:
    """`steps` train steps from `params` (optimizer state at zero) against graphc.train_graph
    evaluated along its own trajectory: each step's outputs and updated params and state. Returns
    the C's outputs of each step."""
    of, wrt = g.grad_spec
    tg = graphc.train_graph(g, of, wrt, optimizer)
    state = m.train_state(params)
    current = {inp: (np.asarray(params[key]) if key in params else np.zeros(tg.inputs[inp].shape))
               for key, (inp, _out) in tg.updates.items()}
    frozen = {k: v for k, v in params.items() if k not in tg.updates}
    seen = []
    for _ in range(steps):
        outs = m.train_step(state, **batch)
        ref = graphc.evaluate(tg, **batch, **frozen, **current)
        for k, v in outs.items():
            np.testing.assert_allclose(v, ref[k], rtol=rtol, err_msg=k)
        for key, (_inp, out) in tg.updates.items():
            got = state.params[key] if key in state.params else state.buffers[key]
            np.testing.assert_allclose(got, np.reshape(ref[out], np.shape(got)), rtol=rtol, err_msg=key)
        current = {inp: ref[out] for _key, (inp, out) in tg.updates.items()}
        seen.append(outs)
    return seen

PARAMS_ONLY = """
name = "pn"
[dims]
N = "batch"
D = 3
C = 2
[inputs]
x = ["N", "D"]
t = ["N", "C"]
[params]
W = ["C", "D"]
[graph]
z = "x @ W.T"
J = "mse(z, t)"
[outputs]
loss = "J"
wn = "norm2(W)"
[grad]
of = "J"
wrt = ["W"]
"""


def test_forward_of_an_output_of_the_params_alone_needs_no_data():
    """Issue 20's known case: forward(W=...) asks only for norm2(W), which reads no row. It runs
    NAME_predict with n = 1 (nothing it computes has the batch dim), on the checked call and on
    the fast path of the next, and the full forward still takes the data."""
    g, m = build(PARAMS_ONLY, "params_only")
    W = np.random.default_rng(0).standard_normal((2, 3))
    for _ in range(2):                                 # the second call reuses the CallPlan
        out = m.forward(W=W)
        assert set(out) == {"wn"}
        np.testing.assert_allclose(out["wn"], np.linalg.norm(W, axis=-1), rtol=1e-14)
    against_reference(g, m, dict(x=np.ones((5, 3)), t=np.zeros((5, 2)), W=W), rtol=1e-13)



UNUSED_BATCH = """
name = "un"
[dims]
N = "batch"
D = 3
C = 2
[inputs]
x = ["D"]
[params]
W = ["C", "D"]
[graph]
J = "mean(tanh(W @ x))"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["W"]
"""


def test_a_declared_batch_dim_no_argument_uses_is_called_with_one_row():
    """The same root: a batch dim declared but carried by no input (a column-vector model)
    left forward, value_and_grad and train_step unable to say n."""
    a = dict(x=np.array([0.5, -1.0, 2.0]), W=np.random.default_rng(1).standard_normal((2, 3)))
    g, m = build(UNUSED_BATCH, "unused_batch", graphc.SGD(lr=0.1))
    reference = against_reference(g, m, a)
    state = m.train_state({"W": a["W"]})
    m.train_step(state, x=a["x"])
    np.testing.assert_allclose(state.params["W"], a["W"] - 0.1 * reference["d_W"], rtol=1e-13)


ALIASED_LOSS = """
name = "al"
[dims]
N = "batch"
D = 3
[inputs]
x = ["N", "D"]
[params]
w = ["D"]
[graph]
v1 = "sum(x * tanh(w))"
J = "v1"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["w"]
"""


def test_a_loss_that_aliases_another_line_differentiates_and_trains():
    """`J = "v1"` only names v1 again; the spec loaded, but grad resolved `of` in a copy of the
    graph, which has no aliases: grad, compile, check and train_graph all raised GradientError."""
    a = dict(x=np.random.default_rng(2).standard_normal((4, 3)), w=np.array([0.3, -0.2, 0.9]))
    g, m = build(ALIASED_LOSS, "aliased_loss", graphc.SGD(lr=0.1))
    reference = against_reference(g, m, a)
    np.testing.assert_allclose(reference["d_w"], a["x"].sum(0) * (1 - np.tanh(a["w"]) ** 2), rtol=1e-13)
    train_against_reference(m, g, graphc.SGD(lr=0.1), {"w": a["w"]}, {"x": a["x"]}, steps=1, rtol=1e-14)
    assert graphc.check(g).ok
GRADIENT_IS_AN_OUTPUT = {
    "the same value": """
name = "go"
[dims]
N = "batch"
D = 3
[inputs]
x = ["N", "D"]
[params]
w = []
[graph]
s = "tanh(mean(x))"
J = "s * w"
[outputs]
loss = "J"
s_out = "s"
[grad]
of = "J"
wrt = ["w"]
""",
    "a line merged with it": """
name = "go"
[dims]
N = "batch"
D = 3
[inputs]
x = ["N", "D"]
[params]
w = []
[graph]
m = "mean(x)"
s = "tanh(m)"
s2 = "tanh(m)"
J = "s * w"
[outputs]
loss = "J"
s_out = "s2"
[grad]
of = "J"
wrt = ["w"]
""",
}


@pytest.mark.parametrize("optimizer", [graphc.SGD(lr=0.1), graphc.SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
                                       graphc.Adam(lr=0.01, weight_decay=0.01)], ids=["sgd", "momentum", "adam"])
@pytest.mark.parametrize("spec", list(GRADIENT_IS_AN_OUTPUT))
def test_a_gradient_that_is_also_an_output_is_read_from_the_output_by_the_update(spec, optimizer):
    """J = s * w with w a scalar: dJ/dw is s itself, which an output holds (the same value, or a
    line CSE merged with it). train_step computes s into the output argument; the update read
    it under the value's own name, undeclared in the C (`'s_v' undeclared`): the build failed."""
    g, m = build(GRADIENT_IS_AN_OUTPUT[spec], "gradient_output", optimizer)
    x = np.random.default_rng(3).standard_normal((4, 3))
    for outs in train_against_reference(m, g, optimizer, {"w": np.array(0.7)}, {"x": x}, steps=3, rtol=1e-13):
        np.testing.assert_allclose(outs["s_out"], np.tanh(x.mean()), rtol=1e-14)


DOT_PATH = """
name = "dk"
[dims]
M = {rows}
K = {depth}
H = 3
[inputs]
x = ["M", "K"]
[params]
W = ["H", "K"]
[outputs]
z = "x @ W.T"
"""


@pytest.mark.parametrize("rows, depth", [(1, 64), (2, 48), (7, 80), (1, 17)])
def test_the_dot_product_path_of_a_small_gemm_compiles_warning_free_under_gcc_O2(rows, depth, tmp_path):
    """x Wᵀ with a few rows takes the GEMM's dot-product path: 16 partial sums, then the rest
    of K. Where the kernel library is pasted into the model file (export with amalgamate,
    graphc emit --amalgamate) gcc -O2 sees K, could not bound the rest's loop for K a multiple
    of 16 past 32, and warned 'iteration 16 invokes undefined behavior'
    (-Waggressive-loop-optimizations): the export failed `make` under -Werror. The numbers
    were and are the reference's."""
    import shutil
    import subprocess
    from graphc.native.export import export, parse_example_output
    g, m = build(DOT_PATH.format(rows=rows, depth=depth), "dot_path")
    rng = np.random.default_rng(4)
    a = dict(x=rng.standard_normal((rows, depth)), W=rng.standard_normal((3, depth)))
    np.testing.assert_allclose(m.forward(**a)["z"], a["x"] @ a["W"].T, rtol=1e-13)
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("needs gcc and make")
    export(m, tmp_path, True, None, True)                   # one dk.c: the library, then the model
    for flags in ("-O2", "-O3 -march=native"):
        run = subprocess.run(["make", "-s", "CC=gcc", f"CFLAGS={flags} -std=c99 -Wall -Wextra -Werror -pedantic"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and not run.stderr, run.stderr[-2000:]
        assert ("forward", "z") in parse_example_output(run.stdout)
        subprocess.run(["make", "-s", "clean"], cwd=tmp_path, capture_output=True, timeout=60)


SCAN_DX = """
name = "sdx"
[dims]
N = "batch"
T = "symbolic"
D = 3
O = 1
[inputs]
x = ["N", "T", "D"]
[params]
W = ["O", "D"]
[scan.rnn]
init  = { h = { shape = ["N", "O"], value = 0.0 } }
xs    = { x_t = "x" }
axis  = 1
carry = { h = "h_new" }
ys    = { hs = "h_new" }
[scan.rnn.body]
h_new = "x_t @ W.T + h"
[graph]
J = "mean(hs)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["W", "x"]
"""


@pytest.mark.parametrize("n, t", [(1, 1), (3, 4), (2, 33)])
def test_a_scans_gradient_of_its_batch_first_sequence_is_not_overwritten_inside_the_backward_body(n, t):
    """The backward scan writes d_x at step t into d_x [N, T, D] by a strided copy after the
    body's kernels; the body's memory plan did not see that read, and gave d_x_t's buffer to d_W's
    GEMM, which ran before the copy: d_x held d_W's step term (the fuzzer's sequence entries found
    it, at any N and T). h_t = Σ_{s ≤ t} x_s Wᵀ, J = mean(h): dJ/dx_s = W (T − s) / (N T)."""
    g, m = build(SCAN_DX, "scan_dx")
    rng = np.random.default_rng(1)
    a = dict(x=rng.standard_normal((n, t, 3)), W=rng.standard_normal((1, 3)))
    against_reference(g, m, a, rtol=1e-12, grad_rtol=1e-12)
    _, grads = m.value_and_grad(**a)
    steps_after = (t - np.arange(t)) / (n * t)
    want = np.broadcast_to(steps_after[None, :, None] * a["W"][0][None, None, :], (n, t, 3))
    np.testing.assert_allclose(grads["x"], want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["W"], (a["x"] * steps_after[None, :, None]).sum(axis=(0, 1))[None, :], rtol=1e-12)


SCAN_FLOAT32 = """
name = "sf"
[dims]
N = "batch"
[inputs]
x = ["N", 3, 2]
[params]
wx = [2, 2]
wh = [2, 2]
[scan.rnn]
init  = { h = { shape = ["N", 2], value = 0.0 } }
xs    = { x_t = "x" }
axis  = 1
carry = { h = "h_new" }
final = { h_last = "h" }
[scan.rnn.body]
h_new = "tanh(x_t @ wx.T + h @ wh.T)"
[graph]
J = "mean(h_last)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["wx", "wh"]
"""


def test_the_reference_evaluates_a_scans_backward_in_float32():
    """The float32 check found it: graphc.evaluate(..., _dtype=float32) of a scan's backward
    started its params' gradient sums (wx__grad) at float64 zeros, which the float32 body then
    refused (DTypeError). They start in the evaluation's dtype, and agree with float64."""
    g = graphc.parse_spec(SCAN_FLOAT32, "scan_float32.toml")
    bwd = graphc.grad(g, "J", ["wx", "wh"])
    rng = np.random.default_rng(0)
    a = dict(x=rng.standard_normal((4, 3, 2)), wx=rng.standard_normal((2, 2)), wh=rng.standard_normal((2, 2)))
    r64 = graphc.evaluate(bwd, **a)
    r32 = graphc.evaluate(bwd, _dtype=np.float32, **{k: v.astype(np.float32) for k, v in a.items()})
    for k in ("loss", "d_wx", "d_wh"):
        assert r32[k].dtype == np.float32
        np.testing.assert_allclose(r32[k], r64[k], rtol=1e-5, atol=1e-6)


def test_an_mpi_refusal_of_two_lines_leaves_main_c_compiling(tmp_path):
    """A campaign found it (seed 7): a model whose MPI build is refused with a ShapeError and its
    hint (two lines) put both lines in main.c's `#error "..."`; the string left open broke even
    the build without MPI (an unterminated string is an error in a skipped #if branch too). Each
    line of the reason is an #error of its own now, a C string literal (the templates' filter
    c_string), the hint kept; the standalone example builds with gcc under -Werror and prints what
    the extension computes."""
    from pathlib import Path

    from graphc.tools.fuzz_case import Case
    from graphc.tools.fuzz_checks import run_case
    path = Path(__file__).parent / "specs" / "fuzz" / "mpi_refusal_of_two_lines.toml"
    result = run_case(Case.parse(path.read_text()), workdir=tmp_path, only="standalone", compilers=("gcc",))
    assert result.checks["standalone gcc"] == 1, result.checks
    g = graphc.parse_spec(Case.parse(path.read_text()).spec, "fz.toml")
    graphc.compile(g, dtype="float64", optimizer=graphc.SGD(lr=0.05)).export(tmp_path / "c", standalone=True)
    main_c = (tmp_path / "c" / "main.c").read_text()
    lines = main_c.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("#error") and "does not train over MPI" in line)
    assert "ShapeError" in lines[first] and lines[first].endswith('"'), lines[first]
    assert lines[first + 1].startswith('#error "  hint: ') and lines[first + 1].endswith('"'), lines[first + 1]


NASTY_REASON = 'ShapeError: argument "x" at C:\\specs\\a.toml ??/ wants [N, 3] (é)\n  hint: write "x.T" \\ or ??= both'


def test_an_mpi_refusal_with_quotes_backslashes_and_two_lines_leaves_main_c_compiling(tmp_path):
    """Any text of a refusal (quotes, backslashes, a trigraph's ??/ and ??=, non-ASCII, two lines):
    main_mpi.c.j2 writes each line as an #error with a C string literal, so the build without MPI
    skips it cleanly under gcc -std=c99 -Werror -pedantic (trigraphs on) and the MPI build stops
    at it, printing both lines."""
    import shutil
    import subprocess

    from graphc.backend.templates import render_template
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    part = render_template("main_mpi.c.j2", name="m", mpi={"reason": NASTY_REASON})
    assert part.count("#error") == 2, part
    source = tmp_path / "main.c"
    source.write_text(f"#ifdef GRAPHC_MPI\n{part}#endif\nint main(void)\n{{\n    return 0;\n}}\n")
    command = ["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c", str(source), "-o",
               str(tmp_path / "main.o")]
    plain = subprocess.run(command, capture_output=True, text=True)
    assert plain.returncode == 0 and not plain.stderr, plain.stderr
    mpi = subprocess.run(command + ["-DGRAPHC_MPI"], capture_output=True, text=True)
    assert mpi.returncode != 0, mpi.stderr
    errors = [line for line in mpi.stderr.splitlines() if "#error" in line and "error:" in line]
    assert len(errors) == 2, mpi.stderr
    assert 'm does not train over MPI: ShapeError: argument \\"x\\" at C:\\\\specs' in errors[0], errors[0]
    assert "hint: write" in errors[1], errors[1]
    assert "trigraph" not in mpi.stderr, mpi.stderr


EMBEDDING_TWICE = """
name = "et"
[dims]
N = "batch"
V = 5
D = 3
[inputs]
x = ["N", "D"]
ids = { shape = ["N"], dtype = "int32" }
[params]
E = ["V", "D"]
[graph]
a = "embedding(E, ids)"
b = "embedding(E, ids)"
J = "mean(a * x) + mean(b * x)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["E"]
"""


@pytest.mark.parametrize("optimizer", [None, graphc.SGD(lr=0.1)], ids=["value_and_grad", "train_step"])
def test_two_identical_embeddings_of_one_table_give_both_their_gradients(optimizer):
    """a and b are the same lookup with the same adjoint, so the backward graph's two scatters are
    merged into one value s (passes/simplify.py's cse) and dJ/dE = s + s: the fused scatter-sum
    (fusion.py's SCATTER_SUM) took s + s for a tree of two scatters and ran the scatter once, half
    the gradient, in float32 and float64 (found by the fuzzer, float32, seed 5)."""
    rng = np.random.default_rng(5)
    data = dict(x=rng.standard_normal((6, 3)), ids=np.array([0, 4, 4, 1, 0, 4], np.int32),
                E=rng.standard_normal((5, 3)))
    g, m = build(EMBEDDING_TWICE, "embedding_twice", optimizer)
    reference = against_reference(g, m, data)
    assert np.abs(reference["d_E"]).max() > 0.1
    if optimizer is not None:
        train_against_reference(m, g, optimizer, {"E": data["E"]}, {k: data[k] for k in ("x", "ids")}, steps=2,
                                rtol=1e-13)
