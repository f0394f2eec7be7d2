"""Spec fuzzing: whatever text a user feeds graphc, it answers with a GraphcError or a Graph,
and every Graph it accepts compiles to C that gcc accepts and that agrees with the reference.

Bounded for CI (GRAPHC_FUZZ_EXAMPLES examples per test, 60 by default; compiled specs scale
with it). A long run: GRAPHC_FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz_spec.py
(see docs/robustness.md).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import string
import subprocess
import sysconfig
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st

import graphc

from conftest import private_cache_dir
from graphc.backend.codegen import generate
from graphc.core.errors import GraphcError, SpecError
from graphc.core.ir import C_KEYWORDS, FLOAT, INT
from graphc.backend.cprint import C_RESERVED, c_name

EXAMPLES = int(os.environ.get("GRAPHC_FUZZ_EXAMPLES", "60"))
COMPILES = max(4, EXAMPLES // 10)            # each costs a real build (~1-2 s)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 60, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large])
GCC = shutil.which("gcc") or shutil.which("cc")
CXX = shutil.which("g++")
PYINC = sysconfig.get_paths()["include"]


_cache_dir = pytest.fixture(scope="module", autouse=True)(private_cache_dir)


def parse(text: str):
    """parse_spec, allowing nothing but GraphcError to escape."""
    try:
        return graphc.parse_spec(text, "fuzz.toml")
    except GraphcError as error:
        assert str(error)                      # renders: file, key, message
        return None


# ---------------------------------------------------------------- TOML out of Python values
def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return repr(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"


def toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def toml_doc(doc: dict) -> str:
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_key(k)}]")
            lines += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- strategies
SECTIONS = ["name", "dims", "inputs", "params", "graph", "outputs", "grad"]
RESERVED_POOL = sorted(C_KEYWORDS | {"n", "i", "j", "exp", "relu", "softmax", "sum", "row", "out", "max",
                                     "total", "d_x", "gc_x", "NAN", "EOF", "SIZE_MAX", "GRAPHC_OK", "m_forward",
                                     "m_workspace_size", "exp_v", "n_v", "x__0", "stdin", "M_PI", "class",
                                     "uintptr_t", "PRId32", "st_atime", "new", "lambda", "None"})
plain_names = st.one_of(st.sampled_from(RESERVED_POOL), st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,6}", fullmatch=True))
names = st.one_of(plain_names, st.text(min_size=1, max_size=6))
# accepted, though each collides with something in the C: mangled to NAME_v
ALLOWED_POOL = ["n", "i", "j", "k", "exp", "expf", "relu", "softmax", "sum", "row", "out", "max", "total", "target",
                "src", "NAN", "EOF", "SIZE_MAX", "GRAPHC_OK", "GRAPHC_M_H", "GC_PACK_ELEMS", "m_forward",
                "m_workspace_size", "exp_v", "n_v", "n_v_v", "stdin", "M_PI", "uintptr_t", "PRId32", "st_atime",
                "new", "this", "ws", "pack", "workspace", "memset", "size_t", "INFINITY", "EIO"]
scalars = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.booleans(), st.text(max_size=12),
                    st.sampled_from(["batch", "float32", "float64", "int32", "x @ W.T", "relu(x)", "N", "D"]))
toml_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(names, inner, max_size=4)),
                           max_leaves=12)


@FUZZ
@given(st.text(max_size=400))
def test_fuzz_any_text_raises_only_graphc_errors(text):
    parse(text)


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(SECTIONS), names),
                       st.one_of(toml_values, st.dictionaries(names, toml_values, max_size=5)), max_size=7))
def test_fuzz_random_toml_structure_raises_only_graphc_errors(doc):
    parse(toml_doc(doc))


# Expressions: trees over the declared names, whitelisted ops and a few things outside the whitelist.
UNARY = ["relu", "tanh", "sigmoid", "exp", "log", "sqrt", "softmax", "log_softmax", "sum", "mean", "sign",
         "square", "norm2", "abs", "max", "print", "__import__", "eval"]
BINARY = ["+", "-", "*", "/", "@", "**", "%", "//", "<", "and", "==", "|"]
LEAVES = ["x", "W", "b", "y", "V", "N", "D", "1", "2.5", "0", "1e-3", "'s'", "None", "True", "x.T", "W.T",
          "x.shape", "x[0]", "[x]", "{x}", "lambda: x", "...", "relu", "zz", "ẋ", "1e999", "-x"]


def expressions(depth: int = 4):
    leaf = st.sampled_from(LEAVES)
    return st.recursive(leaf, lambda inner: st.one_of(
        st.builds(lambda f, a: f"{f}({a})", st.sampled_from(UNARY), inner),
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(BINARY), inner),
        st.builds(lambda a, b: f"cross_entropy({a}, {b})", inner, st.sampled_from(["y", "x", "V"])),
        st.builds(lambda a, k: f"sum({a}, axis={k})", inner, st.sampled_from(["0", "1", "-1", "2", "N", "x", "1.5"])),
        st.builds(lambda a, b: f"concat({a}, {b})", inner, inner),
        st.builds(lambda a: f"{a}.T", inner),
        st.builds(lambda a: f"-{a}", inner),
    ), max_leaves=depth * 3)


def structured_spec(dims: dict, exprs: dict, outputs: dict, grad: dict | None) -> str:
    doc = {"name": "m", "dims": {"N": "batch", **dims},
           "inputs": {"x": ["N", "D"], "y": {"shape": ["N"], "dtype": "int32"}},
           "params": {"W": ["C", "D"], "b": ["C"], "V": {"shape": ["D"], "dtype": "float64"}},
           "graph": exprs, "outputs": outputs}
    if grad:
        doc["grad"] = grad
    return toml_doc(doc)


@FUZZ
@given(st.fixed_dictionaries({"D": st.one_of(st.integers(-2, 9), st.sampled_from(["batch", "x", 2.5])),
                              "C": st.integers(1, 5)}),
       st.dictionaries(st.sampled_from(["z", "h", "t", "J", "relu", "exp", "n", "row", "for", "d_W"]),
                       expressions(), min_size=1, max_size=4),
       st.dictionaries(st.sampled_from(["loss", "out", "z", "x", "probs", "NAN"]),
                       st.sampled_from(["z", "h", "t", "J", "relu", "softmax(z)", "x", "sum(z)"]), max_size=3),
       st.one_of(st.none(), st.fixed_dictionaries({"of": st.sampled_from(["J", "loss", "z", "nope"]),
                                                   "wrt": st.sampled_from([["W"], ["W", "b"], ["x"], ["y"], "b",
                                                                           [], ["Q"]])})))
def test_fuzz_generated_expressions_raise_only_graphc_errors(dims, exprs, outputs, grad):
    g = parse(structured_spec(dims, exprs, outputs, grad))
    event("loads" if g is not None else "rejected")
    if g is None:
        return
    # what loads also evaluates in the reference and differentiates, or says why not
    rng = np.random.default_rng(0)
    sizes = {"N": 3, **{k: v for k, v in g.dims.items() if v is not None}}
    args = {}
    for name, v in {**g.inputs, **g.params}.items():
        shape = [sizes[d] if isinstance(d, str) else d for d in v.shape]
        args[name] = (rng.integers(0, g.dims.get("C") or 1, size=shape).astype(np.int32) if v.dtype == "int32"
                      else rng.standard_normal(shape))
    try:
        graphc.evaluate(g, **args)
        if g.grad_spec:
            bwd = graphc.grad(g, *g.grad_spec)
            graphc.evaluate(bwd, **args)
        csrc = generate(g, *(g.grad_spec or (None, None)), dtype="float64")
    except GraphcError:
        return
    strict_syntax_check(csrc.source, csrc.header, g.name)     # what generates must be C gcc accepts


# Expressions that mostly type-check (whitelisted ops over declared names), so that a good share of
# the generated graphs load and their C is checked: about 17 of 60 examples in the CI run.
LEAVES_TYPED = ["x", "V", "(x @ W.T)", "b", "1", "2.5", "x.T.T", "(x * V)"]
UNARY_TYPED = ["relu", "tanh", "sigmoid", "exp", "square", "softmax", "log_softmax", "abs", "sign", "sqrt"]


def typed_expressions():
    return st.recursive(st.sampled_from(LEAVES_TYPED), lambda inner: st.one_of(
        st.builds(lambda f, a: f"{f}({a})", st.sampled_from(UNARY_TYPED), inner),
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, st.sampled_from(["+", "-", "*", "/"]), inner),
        st.builds(lambda a: f"({a} @ W.T)", inner),
        st.builds(lambda a, k: f"sum({a}, axis={k})", inner, st.sampled_from(["0", "1", "-1"])),
        st.builds(lambda a: f"-{a}", inner)), max_leaves=8)


@FUZZ
@given(typed_expressions(), typed_expressions(),
       st.sampled_from(["cross_entropy(z, y)", "mean(square(z))", "sum(h)", "mean(h) + sum(z)"]),
       st.sampled_from(["float32", "float64"]), st.booleans())
def test_fuzz_generated_expressions_that_load_give_c_that_gcc_accepts_strictly(z, h, loss, dtype, with_grad):
    g = parse(structured_spec({"D": 4, "C": 3}, {"z": z, "h": h, "J": loss}, {"loss": "J", "out": "z"},
                              {"of": "J", "wrt": ["W", "b", "V"]} if with_grad else None))
    event("loads" if g is not None else "rejected")
    if g is None:
        return
    try:
        csrc = generate(g, *(g.grad_spec or (None, None)), dtype=dtype)
    except GraphcError as error:          # e.g. a gradient graphc cannot take: said, not crashed
        event(f"generate refused: {type(error).__name__}")
        return
    event("syntax-checked")
    strict_syntax_check(csrc.source, csrc.header, g.name)


PATHOLOGICAL = {
    "10000 parentheses": "(" * 5000 + "x" + ")" * 5000,
    "3000 nested calls": "relu(" * 3000 + "x" + ")" * 3000,
    "10000 minus signs": "-" * 10000 + "x",
    "chain of 4000 sums": "x + " * 4000 + "x",
    "over the length limit": "x + " * 6000 + "x",
    "huge integer constant": "x * 1" + "0" * 400,
    "infinite constant": "x * 1e999",
    "import": "__import__('os').system('echo pwned')",
    "lambda": "(lambda: 0)()",
    "walrus": "(q := x)",
    "NUL byte": "x\x00",
    "unicode name": "ẋ + 1",
    "dunder attribute": "x.__class__",
    "starred": "relu(*x)",
    "empty": "",
    "comment only": "# nothing",
}


@pytest.mark.parametrize("expr", list(PATHOLOGICAL.values()), ids=list(PATHOLOGICAL))
def test_fuzz_pathological_expressions_are_spec_errors(expr):
    text = structured_spec({"D": 4, "C": 3}, {"z": expr}, {"out_": "z"}, None)
    with pytest.raises(SpecError) as caught:
        graphc.parse_spec(text, "fuzz.toml")
    assert "graph.z" in str(caught.value)           # the message names the key


@FUZZ
@given(st.integers(1, 20000), st.sampled_from(["({})", "relu({})", "-{}", "{} + x", "x * {}", "({}).T.T"]))
def test_fuzz_deep_nesting_is_a_graph_or_a_spec_error(depth, wrap):
    expr = "x"
    for _ in range(min(depth, 20000 // len(wrap))):
        expr = wrap.format(expr)
    assume(len(expr) <= 2 * 20000)
    parse(structured_spec({"D": 4, "C": 3}, {"z": expr}, {"out_": "z"}, None))


# ---------------------------------------------------------------- names and the C they become
STRICT = ["-fsyntax-only", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def write_kernel_header(folder: Path) -> None:
    """The shared kernel library's header, which every model file includes."""
    from graphc.backend.codegen import kernel_library
    lib = kernel_library()
    (folder / lib.header_name).write_text(lib.header)


def strict_syntax_check(source: str, header: str, name: str) -> None:
    """gcc -fsyntax-only -std=c99 -Wall -Wextra -Werror -pedantic accepts the C (about 0.15 s)."""
    with tempfile.TemporaryDirectory(prefix="graphc-syntax-") as tmp:
        (Path(tmp) / f"{name}.c").write_text(source)
        (Path(tmp) / f"{name}.h").write_text(header)
        write_kernel_header(Path(tmp))
        run = subprocess.run([GCC, *STRICT, f"{name}.c"], cwd=tmp, capture_output=True, text=True)
    assert run.returncode == 0, f"gcc {' '.join(STRICT)} {name}.c:\n{run.stderr[-3000:]}"


def syntax_check(source: str, header: str, name: str, tmp_path) -> None:
    """gcc accepts the C strictly, and as cffi compiles it (after Python.h); g++ accepts the header."""
    (tmp_path / f"{name}.c").write_text(source)
    (tmp_path / f"{name}.h").write_text(header)
    write_kernel_header(tmp_path)
    (tmp_path / "cxx.cc").write_text(f'#include "{name}.h"\nint main() {{ return 0; }}\n')
    runs = [[GCC, "-fsyntax-only", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", f"{name}.c"],
            [GCC, "-fsyntax-only", "-std=c99", "-fopenmp", "-I", PYINC, "-include", "Python.h", f"{name}.c"]]
    if CXX:
        runs.append([CXX, "-fsyntax-only", "-Wall", "-Werror", "cxx.cc"])
    for cmd in runs:
        run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, f"{' '.join(cmd)}:\n{run.stderr[-3000:]}"


def names_spec(inp: str, label: str, param: str, value: str, out: str, model: str = "m") -> str:
    return (f'name = "{model}"\n[dims]\nN = "batch"\nD = 4\nC = 3\n'
            f'[inputs]\n{toml_key(inp)} = ["N", "D"]\n{toml_key(label)} = {{ shape = ["N"], dtype = "int32" }}\n'
            f'[params]\n{toml_key(param)} = ["C", "D"]\n'
            f'[graph]\n{toml_key(value)} = "relu({inp} @ {param}.T)"\n'
            f'J = "cross_entropy({value}, {label})"\n'
            f'[outputs]\nloss = "J"\n{toml_key(out)} = "softmax({value}) + 1"\n'
            f'[grad]\nof = "J"\nwrt = ["{param}", "{inp}"]\n')


@settings(max_examples=max(8, EXAMPLES // 4), deadline=None, derandomize=EXAMPLES <= 60, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(ALLOWED_POOL), min_size=5, max_size=5, unique=True),
       st.one_of(st.none(), names), st.integers(0, 4), st.sampled_from(["m", "gc", "NAN", "exp", "n", "m2"]))
def test_fuzz_names_are_rejected_or_mangled_into_valid_c(tmp_path_factory, picked, other, where, model):
    if other is not None and other not in picked:   # one name from anywhere: keywords, unicode, ...
        picked[where] = other
    try:
        g = graphc.parse_spec(names_spec(*picked, model=model), "names.toml")
    except GraphcError as error:
        assert str(error)
        event(f"rejected: {type(error).__name__}")
        return
    event("accepted and syntax-checked")
    csrc = generate(g, *g.grad_spec, dtype="float32")
    cnames = [c_name(k) for k in [*g.inputs, *g.params, *g.outputs]]
    assert len(set(cnames)) == len(cnames)                  # mangling never merges two names
    assert not set(cnames) & C_RESERVED
    syntax_check(csrc.source, csrc.header, g.name, tmp_path_factory.mktemp("names"))


@pytest.mark.parametrize("name", ["int", "for", "double", "main", "while", "NULL", "errno", "true", "d_x",
                                  "gc_x", "x__0", "lambda", "None", "ẋ", "1x", "a-b", "a b"])
@pytest.mark.parametrize("role", ["input", "param", "value", "output"])
def test_fuzz_c_keywords_and_graphc_prefixes_are_rejected_clearly(name, role):
    names = dict(inp="x", label="y", param="W", value="z", out="probs")
    names[{"input": "inp", "param": "param", "value": "value", "output": "out"}[role]] = name
    with pytest.raises(SpecError) as caught:
        graphc.parse_spec(names_spec(**names), "names.toml")
    message = str(caught.value)
    assert re.search(r"reserve[sd]|not a plain identifier|syntax error|unknown name|not an identifier", message), message


MANGLED = ["n", "i", "exp", "relu", "row", "out", "max", "sum", "total", "NAN", "EOF", "SIZE_MAX", "GRAPHC_OK",
           "m_workspace_size", "exp_v", "uintptr_t", "M_PI", "stdin", "new", "class_"]


def test_fuzz_reserved_names_are_mangled_and_the_model_matches_the_reference(tmp_path):
    """One model whose every name collides with something in its C; compiled for real, then run."""
    spec = (
        'name = "m"\n[dims]\nN = "batch"\nD = 4\nC = 3\n'
        '[inputs]\nn = ["N", "D"]\nrow = { shape = ["N"], dtype = "int32" }\nNAN = ["N", "D"]\n'
        '[params]\nexp = ["C", "D"]\nexp_v = ["C"]\nmax = ["D"]\nuintptr_t = ["D"]\n'
        '[graph]\ni = "n * max + NAN * uintptr_t"\nrelu = "relu(i @ exp.T + exp_v)"\nsum = "exp(relu)"\n'
        'out = "softmax(sum)"\ntotal = "cross_entropy(sum, row)"\nm_workspace_size = "out * 2"\n'
        '[outputs]\nEOF = "total"\nM_PI = "out"\nstdin = "m_workspace_size"\nGRAPHC_OK = "sum"\n'
        '[grad]\nof = "total"\nwrt = ["exp", "exp_v", "max", "uintptr_t", "n"]\n')
    g = graphc.parse_spec(spec, "reserved.toml")
    m = graphc.compile(g, dtype="float64")
    for name in ("n", "NAN", "exp", "exp_v", "max", "uintptr_t", "EOF", "M_PI", "stdin", "GRAPHC_OK"):
        assert f"*{c_name(name)}" in m.header and c_name(name) != name
    syntax_check(m.source, m.header, "m", tmp_path)
    rng = np.random.default_rng(1)
    args = dict(n=rng.standard_normal((5, 4)), NAN=rng.standard_normal((5, 4)),
                row=rng.integers(0, 3, 5).astype(np.int32), exp=rng.standard_normal((3, 4)) * 0.3,
                exp_v=rng.standard_normal(3) * 0.1, max=rng.standard_normal(4), uintptr_t=rng.standard_normal(4))
    ref = graphc.evaluate(graphc.grad(g, *g.grad_spec), **args)
    outs, grads = m.value_and_grad(**args)
    for k, v in outs.items():
        np.testing.assert_allclose(v, ref[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for k, v in grads.items():
        np.testing.assert_allclose(v, ref[f"d_{k}"], rtol=1e-9, atol=1e-12, err_msg=k)
    fwd = m.forward(**args)
    np.testing.assert_allclose(fwd["M_PI"], ref["M_PI"], rtol=1e-12)


# ---------------------------------------------------------------- valid specs, compiled for real
UNARY_SAFE = ["relu({})", "tanh({})", "sigmoid({})", "square({})", "-{}", "({} * 0.5)", "({} + b)", "({} - b)",
              "({} * b)", "exp({} * 0.1)", "softmax({})", "log_softmax({})", "({} / (1 + square({})))"]


@st.composite
def valid_specs(draw):
    D, C, H = draw(st.integers(1, 6)), draw(st.integers(2, 5)), draw(st.integers(1, 7))
    pool = ["z", "h", "a1", "relu", "exp", "n", "row", "sum", "NAN", "out", "Q"]
    chain_names = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))
    graph, prev = {"z0": "x @ W.T"}, "z0"
    for name in chain_names:
        op = draw(st.sampled_from(UNARY_SAFE))
        graph[name] = op.replace("{}", prev)
        prev = name
    graph["theta"] = f"{prev} @ U.T + c"
    loss = draw(st.sampled_from(["cross_entropy(theta, y)", "mean(square(theta))", "sum(log_softmax(theta)) * -0.1"]))
    graph["J"] = loss
    outputs = {"loss": "J", "probs": "softmax(theta)"}
    if draw(st.booleans()):
        outputs["hidden"] = prev
    doc = {"name": "fz", "dims": {"N": "batch", "D": D, "C": C, "H": H},
           "inputs": {"x": ["N", "D"], "y": {"shape": ["N"], "dtype": "int32"}},
           "params": {"W": ["H", "D"], "b": ["H"], "U": ["C", "H"], "c": ["C"]},
           "graph": graph, "outputs": outputs, "grad": {"of": "J", "wrt": ["W", "b", "U", "c", "x"]}}
    return toml_doc(doc)


def generated_specs(count: int) -> list[str]:
    """`count` distinct valid_specs() texts, the same on every run (derandomized): the generated
    specs that tests/test_sanitizers.py and tests/test_native_safety.py run natively."""
    found: list[str] = []

    @settings(max_examples=20 * count, derandomize=True, database=None, deadline=None, phases=[Phase.generate])
    @given(valid_specs())
    def collect(text):
        if len(found) < count and text not in found and len(text) > 380:   # past hypothesis' smallest ones
            found.append(text)

    collect()
    return found


@settings(max_examples=COMPILES, deadline=None, derandomize=EXAMPLES <= 60, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(valid_specs(), st.integers(1, 9))
def test_fuzz_valid_specs_compile_and_match_the_reference(text, batch):
    g = graphc.parse_spec(text, "valid.toml")      # valid by construction: must load
    m = graphc.compile(g, dtype="float64")
    rng = np.random.default_rng(batch)
    args = {k: rng.standard_normal([batch if isinstance(d, str) else d for d in v.shape]) * 0.5
            for k, v in {**g.inputs, **g.params}.items() if v.dtype != "int32"}
    args["y"] = rng.integers(0, g.dims["C"], batch).astype(np.int32)
    ref = graphc.evaluate(graphc.grad(g, *g.grad_spec), **args)
    fwd = m.forward(**args)
    outs, grads = m.value_and_grad(**args)
    for k in g.outputs:
        np.testing.assert_allclose(fwd[k], ref[k], rtol=1e-9, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(outs[k], ref[k], rtol=1e-9, atol=1e-12, err_msg=k)
    for k, v in grads.items():
        np.testing.assert_allclose(v, ref[f"d_{k}"], rtol=1e-8, atol=1e-11, err_msg=f"d_{k}")


# ---------------------------------------------------------------- random dtypes
# Declared dtypes drawn from the three graphc knows, names it does not (NumPy's, C's, near misses,
# unicode look-alikes), arbitrary text and non-strings: each either loads or is a GraphcError.
KNOWN_DTYPES = ["float32", "float64", "int32"]
JUNK_DTYPES = ["float16", "int64", "uint8", "int8", "bool", "complex128", "double", "float", "int", "f4", "<f8",
               "Float32", "FLOAT64", "float32 ", " float64", "", "ｆloat32", "float３２", "object", "None",
               "float32\x00", "int32; DROP", "d_x"]
junk_dtypes = st.one_of(st.sampled_from(JUNK_DTYPES), st.text(max_size=8),
                        st.sampled_from([32, 64.0, True, ["float32"], {"name": "float32"}]))
real_dtypes = st.sampled_from(["float32", "float64"])
any_dtypes = st.sampled_from(["float32", "float64"] * 2 + ["int32", "junk"]).flatmap(   # one in six is junk
    lambda d: junk_dtypes if d == "junk" else st.just(d))


@st.composite
def typed_specs(draw, dtypes=any_dtypes, label_dtypes=any_dtypes):
    """valid_specs' networks, with every input's and parameter's dtype drawn from `dtypes` (the
    labels' from `label_dtypes`), labels of shape [N] (class ids) or [N, C] (targets) and losses
    that use them either way."""
    D, C, H = draw(st.integers(1, 5)), draw(st.integers(2, 4)), draw(st.integers(1, 6))
    graph, prev = {"z0": "x @ W.T"}, "z0"
    for name in draw(st.lists(st.sampled_from(["z", "h", "a1", "relu", "NAN"]), max_size=2, unique=True)):
        graph[name] = draw(st.sampled_from(UNARY_SAFE)).replace("{}", prev)
        prev = name
    graph["theta"] = f"{prev} @ U.T + c"
    graph["J"] = draw(st.sampled_from(["cross_entropy(theta, y)", "mean(square(theta - y))",
                                       "mean(square(theta)) + mean(y)", "sum(softmax(theta) * y) * -0.5"]))
    def decl(shape, of=dtypes):
        return {"shape": shape, "dtype": draw(of)}
    doc = {"name": "ty", "dims": {"N": "batch", "D": D, "C": C, "H": H},
           "inputs": {"x": decl(["N", "D"]), "y": decl(draw(st.sampled_from([["N"], ["N", "C"]])), label_dtypes)},
           "params": {"W": decl(["H", "D"]), "b": decl(["H"]), "U": decl(["C", "H"]), "c": ["C"]},
           "graph": graph, "outputs": {"loss": "J", "probs": "softmax(theta)"},
           "grad": {"of": "J", "wrt": draw(st.sampled_from([["W", "b", "U", "c"], ["W", "c", "x"]]))}}
    return toml_doc(doc)


def arrays_for(g, batch: int, seed: int, real=np.float64) -> dict[str, np.ndarray]:
    """Arguments of the declared shapes; int32 ones are valid class ids, the others `real`."""
    rng = np.random.default_rng(seed)
    args = {}
    for k, v in {**g.inputs, **g.params}.items():
        shape = [batch if isinstance(d, str) else d for d in v.shape]
        args[k] = (rng.integers(0, g.dims["C"], shape).astype(np.int32) if v.dtype == "int32"
                   else (rng.standard_normal(shape) * 0.5).astype(real))
    return args


@FUZZ
@given(typed_specs())
def test_fuzz_random_dtypes_load_or_raise_graphc_errors(text):
    g = parse(text)
    event("loads" if g is not None else "rejected")
    if g is None:
        return
    declared = [v.dtype for v in {**g.inputs, **g.params}.values()]
    assert set(declared) <= {FLOAT, INT}, declared     # no junk dtype is ever taken (the model's dtype sets the width)
    event("declared: " + " ".join(sorted(set(declared))))
    args = arrays_for(g, 3, 0)
    try:                                  # what loads also evaluates, differentiates and generates, or says why not
        graphc.evaluate(graphc.grad(g, *g.grad_spec), **args)
        generate(g, *g.grad_spec, dtype="float32")
    except GraphcError as error:
        event(f"refused after loading: {type(error).__name__}")


@settings(max_examples=COMPILES, deadline=None, derandomize=EXAMPLES <= 60, database=None,
          phases=[Phase.explicit, Phase.generate, Phase.shrink],    # explain would recompile hundreds
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(typed_specs(real_dtypes, st.sampled_from(KNOWN_DTYPES)), st.sampled_from(["float32", "float64"]), st.integers(1, 9))
def test_fuzz_random_dtypes_compile_or_raise_graphc_errors_and_match_the_reference(text, dtype, batch):
    g = parse(text)
    assume(g is not None)                # the rejections are the test above's; compiles are the cost here
    try:
        m = graphc.compile(g, dtype=dtype)
    except GraphcError as error:
        event(f"compile refused: {type(error).__name__}")
        assert str(error)
        return
    event(f"compiled {dtype}")
    args = arrays_for(g, batch, batch, real=np.dtype(dtype))
    ref = graphc.evaluate(graphc.grad(g, *g.grad_spec), **args)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == "float64" else dict(rtol=2e-3, atol=2e-4)
    outs, grads = m.value_and_grad(**args)
    for k in g.outputs:
        np.testing.assert_allclose(outs[k], ref[k], **tol, err_msg=k)
    for k, v in grads.items():
        np.testing.assert_allclose(v, ref[f"d_{k}"], **tol, err_msg=f"d_{k}")
