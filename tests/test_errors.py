"""Malformed specs: each raises the right GraphcError subclass, names the section.key, carries a
Location whose file and line are right, and puts a caret under the offending column."""
from __future__ import annotations

import re

import pytest

import graphc
from graphc.core.errors import DTypeError, GraphcError, Location, ShapeError, SpecError

HEADER = '''name = "bad"

[dims]
Dx = 4
Dh = 3
N  = "batch"

[inputs]
x = ["N", "Dx"]
y = { shape = ["N"], dtype = "int32" }

[params]
W  = ["Dh", "Dx"]
b1 = ["Dh"]
'''


def expr_spec(expr: str, key: str = "z") -> str:
    """HEADER plus one graph line `key = "expr"` and an output reading it."""
    return HEADER + f'\n[graph]\n{key} = "{expr}"\n\n[outputs]\nout = "x"\n'


def load_error(tmp_path, text: str, cls=GraphcError) -> GraphcError:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(cls) as info:
        graphc.load(path)
    err = info.value
    assert isinstance(err, GraphcError)
    assert err.location is not None and err.location.file == str(path), str(err)
    return err


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line of `text` containing needle."""
    return next(i for i, ln in enumerate(text.splitlines(), 1) if needle in ln)


def caret_target(err: GraphcError) -> str:
    """The text from the caret on: the rendered message shows the expression, then '^' under the culprit."""
    lines = str(err).splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.strip() == "^")
    return lines[i - 1][lines[i].index("^"):]


# (id, spec text, error class, key, message regex, text on the reported line, text under the caret or None)
E = expr_spec
CASES = [
    ("toml-syntax", HEADER + "\n[graph\nz = \"x\"\n", SpecError, None, r"not valid TOML", "[graph", None),
    ("toml-duplicate-key", HEADER + '\n[graph]\nz = "x"\nz = "relu(x)"\n\n[outputs]\nout = "z"\n', SpecError,
     "graph.z", r"^graph\.z is defined twice \(lines 17 and 18\)$", 'z = "relu(x)"', None),
    ("toml-duplicate-quoted-key", HEADER.replace('b1 = ["Dh"]', 'b1 = ["Dh"]\n"W" = ["Dx"]'), SpecError,
     "params.W", r"^params\.W is defined twice \(lines 13 and 15\)$", '"W" = ["Dx"]', None),
    ("toml-duplicate-section", HEADER + '\n[graph]\nz = "x"\n\n[outputs]\nout = "z"\n\n[ graph ]\nh = "z"\n',
     SpecError, "graph", r"^\[graph\] is declared twice \(lines 16 and 22\)$", "[ graph ]", None),
    ("name-not-identifier", HEADER.replace('name = "bad"', 'name = "a b"') + '\n[outputs]\nout = "x"\n',
     SpecError, "name", r"not a plain identifier", 'name = "a b"', None),
    ("expression-syntax", E("x @ (W"), SpecError, "graph.z", r"syntax error", 'z = "', "(W"),
    ("expression-syntax-operator", E("x @@ W"), SpecError, "graph.z", r"syntax error", 'z = "', "@ W"),
    ("unknown-op", E("rleu(x @ W.T)"), SpecError, "graph.z", r"unknown op 'rleu'", 'z = "', "rleu("),
    ("unknown-name", E("x @ Wt.T + b1"), SpecError, "graph.z", r"unknown name 'Wt'", 'z = "', "Wt.T"),
    ("op-used-as-value", E("relu + x"), SpecError, "graph.z", r"relu is an op; call it", 'z = "', "relu +"),
    ("arity-too-many", E("relu(x, x)"), SpecError, "graph.z", r"relu takes 1 argument, got 2", 'z = "', "relu("),
    ("arity-too-few", E("cross_entropy(x @ W.T)"), SpecError, "graph.z", r"takes 2 arguments, got 1", 'z = "',
     "cross_entropy("),
    ("unknown-keyword", E("sum(x, axes=1)"), SpecError, "graph.z", r"unknown keyword 'axes'", 'z = "', None),
    ("keyword-not-literal", E("sum(x, axis=x)"), SpecError, "graph.z", r"keyword values", 'z = "', "x)"),
    ("dim-zero", HEADER.replace("Dh = 3", "Dh = 0"), SpecError, "dims.Dh", r"positive integer", "Dh = 0", None),
    ("dim-negative", HEADER.replace("Dh = 3", "Dh = -3"), SpecError, "dims.Dh", r"positive integer", "Dh = -3",
     None),
    ("dim-float", HEADER.replace("Dh = 3", "Dh = 3.5"), SpecError, "dims.Dh", r"positive integer", "Dh = 3.5", None),
    ("dim-bool", HEADER.replace("Dh = 3", "Dh = true"), SpecError, "dims.Dh", r"positive integer", "Dh = true",
     None),
    ("dim-string", HEADER.replace("Dh = 3", 'Dh = "big"'), SpecError, "dims.Dh", r"positive integer", 'Dh = "big"',
     None),
    ("dim-unknown-in-shape", HEADER.replace('x = ["N", "Dx"]', 'x = ["N", "Dz"]'), SpecError, "inputs.x",
     r"unknown dim 'Dz'", 'x = ["N", "Dz"]', None),
    ("dim-zero-in-shape", HEADER.replace('b1 = ["Dh"]', "b1 = [0]"), ShapeError, "params.b1",
     r"positive integer", "b1 = [0]", None),
    ("dim-float-in-shape", HEADER.replace('b1 = ["Dh"]', "b1 = [2.5]"), SpecError, "params.b1",
     r"list of dim names and integers", "b1 = [2.5]", None),
    ("param-symbolic-dim", HEADER.replace('W  = ["Dh", "Dx"]', 'W  = ["N", "Dx"]'), SpecError, "params.W",
     r"param 'W' has shape \(N, Dx=4\) with the symbolic dim 'N': params must have fixed dims", 'W  = ["N"', None),
    ("param-symbolic-dim-in-table", HEADER.replace('b1 = ["Dh"]', 'b1 = { shape = ["N"], init = "zeros" }'),
     SpecError, "params.b1", r"params must have fixed dims", "b1 = {", None),
    ("two-batch-dims", HEADER.replace("Dh = 3", 'Dh = "batch"'), SpecError, "dims", r"at most one batch dim",
     "[dims]", None),
    ("dim-used-as-value", E("x * Dx"), SpecError, "graph.z", r"Dx is a dim, not a value", 'z = "', "Dx"),
    ("attribute-access", E("x.shape"), SpecError, "graph.z", r"attribute access '\.shape'", 'z = "', "x.shape"),
    ("dunder-import", E("__import__('os')"), SpecError, "graph.z", r"unknown op '__import__'", 'z = "',
     "__import__"),
    ("lambda", E("lambda: x"), SpecError, "graph.z", r"Lambda is not allowed", 'z = "', "lambda"),
    ("subscript-batch", E("x[0]"), SpecError, "graph.z", r"cannot slice the batch dim N", 'z = "', "0"),
    ("subscript-range", E("x[:, 800]"), SpecError, "graph.z", r"slice: x is \(N, Dx=4\): index 800 is out of range for axis 1 \(size 4\)",
     'z = "', "800"),
    ("subscript-step", E("x[:, ::-1]"), SpecError, "graph.z", r"only positive steps", 'z = "', "::-1"),
    ("comparison", E("x < x"), SpecError, "graph.z", r"Compare is not allowed", 'z = "', "x < x"),
    ("power-3", E("x ** 3"), SpecError, "graph.z", r"only '\*\* 2' is supported", 'z = "', "3"),
    ("string-constant", E("x + 'a'"), SpecError, "graph.z", r"only numbers", 'z = "', "'a'"),
    ("bool-constant", E("x + True"), SpecError, "graph.z", r"only numbers", 'z = "', "True"),
    ("infinite-constant", E("x * 1e999"), SpecError, "graph.z", r"not a finite float", 'z = "', "1e999"),
    ("starred", E("relu(*x)"), SpecError, "graph.z", r"Starred is not allowed", 'z = "', "*x"),
    ("call-of-call", E("relu(x)(x)"), SpecError, "graph.z", r"only calls of graphc ops", 'z = "', "relu("),
    ("duplicate-input-and-value", E("relu(x)", key="x"), SpecError, "graph.x",
     r"'x' is declared as an input/param and again", 'x = "relu', None),
    ("duplicate-output-and-input", HEADER + '\n[outputs]\nx = "relu(x)"\n', SpecError, "outputs.x",
     r"already the name of an input", 'x = "relu', None),
    ("cycle", HEADER + '\n[graph]\na = "c + 1"\nc = "a * 2"\n\n[outputs]\nout = "a"\n', SpecError, None,
     r"cycle: (a -> c -> a|c -> a -> c)", None, None),
    ("self-reference", E("z + 1"), SpecError, "graph.z", r"refers to itself", 'z = "', None),
    ("reserved-gradient-name", E("x + 1", key="d_x"), SpecError, "graph.d_x", r"starts with 'd_'", 'd_x = "', None),
    ("reserved-temporary-name", E("x + 1", key="x__1"), SpecError, "graph.x__1", r"contains '__'", 'x__1 = "', None),
    ("c-keyword-name", E("x + 1", key="int"), SpecError, "graph.int", r"'int' is reserved", 'int = "', None),
    ("python-keyword-name", HEADER.replace("b1 = [", "lambda = ["), SpecError, "params.lambda", r"reserved",
     "lambda = [", None),
    ("gc-prefix-name", E("x + 1", key="gc_tmp"), SpecError, "graph.gc_tmp", r"reserved", 'gc_tmp = "', None),
    ("unknown-section", HEADER + '\n[graf]\nz = "x"\n\n[outputs]\nout = "x"\n', SpecError, "graf",
     r"unknown section or key 'graf'", "[graf]", None),
    ("unknown-top-level-key", "version = 2\n" + HEADER + '\n[outputs]\nout = "x"\n', SpecError, "version",
     r"unknown section or key 'version'", "version = 2", None),
    ("name-not-string", HEADER.replace('name = "bad"', "name = 3") + '\n[outputs]\nout = "x"\n', SpecError,
     "name", r"name must be a string", "name = 3", None),
    ("no-outputs", HEADER, SpecError, "outputs", r"no \[outputs\]", None, None),
    ("expression-not-string", HEADER + "\n[graph]\nz = 3\n\n[outputs]\nout = \"z\"\n", SpecError, "graph.z",
     r"must be an expression string", "z = 3", None),
    ("declaration-unknown-field", HEADER.replace('dtype = "int32" }', 'dtyp = "int32" }'), SpecError, "inputs.y",
     r"unknown field 'dtyp'", "y = {", None),
    ("unknown-dtype", HEADER.replace('dtype = "int32"', 'dtype = "float16"'), DTypeError, "inputs.y",
     r"unknown dtype 'float16'", "y = {", None),
    ("int-param", HEADER.replace('b1 = ["Dh"]', 'b1 = { shape = ["Dh"], dtype = "int32" }'), DTypeError,
     "params.b1", r"must be real", "b1 = {", None),
    ("int-labels-into-relu", E("relu(y)"), DTypeError, "graph.z", r"int32", 'z = "', "relu("),
    ("shape-mismatch-add", E("x + b1"), ShapeError, "graph.z", r"cannot broadcast", 'z = "', "x + b1"),
    ("shape-mismatch-nested", E("relu(x @ W.T) @ W.T"), ShapeError, "graph.z", r"inner dims 3 and 4 differ",
     'z = "', "relu("),
    ("grad-of-non-scalar", HEADER + '\n[graph]\nz = "x @ W.T"\n\n[outputs]\nout = "z"\n\n[grad]\nof = "z"\n'
     'wrt = ["W"]\n', SpecError, "grad.of", r"must be a scalar loss", 'of = "z"', None),
    ("grad-of-unknown", HEADER + '\n[graph]\nJ = "sum(x @ W.T)"\n\n[outputs]\nloss = "J"\n\n[grad]\nof = "j"\n'
     'wrt = ["W"]\n', SpecError, "grad.of", r"of = 'j' is not an output", 'of = "j"', None),
    ("grad-wrt-unknown", HEADER + '\n[graph]\nJ = "sum(x @ W.T)"\n\n[outputs]\nloss = "J"\n\n[grad]\nof = "J"\n'
     'wrt = ["Wx"]\n', SpecError, "grad.wrt", r"wrt names 'Wx'", 'wrt = ["Wx"]', None),
    ("grad-unknown-key", HEADER + '\n[graph]\nJ = "sum(x @ W.T)"\n\n[outputs]\nloss = "J"\n\n[grad]\nof = "J"\n'
     'wrt = ["W"]\nlr = 1\n', SpecError, "grad", r"unknown key 'lr'", "[grad]", None),
    ("unicode-value-name", E("x + 1", key='"zé"'), SpecError, "graph.zé", r"'zé' is not a plain identifier",
     '"zé" = "', None),
    ("unicode-input-name", HEADER.replace('b1 = ["Dh"]', '"b₁" = ["Dh"]'), SpecError, "params.b₁",
     r"not a plain identifier", '"b₁" = ', None),
    ("unicode-in-expression", E("x + β"), SpecError, "graph.z", r"unknown name 'β'", 'z = "', "β"),
]


@pytest.mark.parametrize("text, cls, key, message, line_text, caret",
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_errors_malformed_spec(tmp_path, text, cls, key, message, line_text, caret):
    err = load_error(tmp_path, text, cls)
    assert type(err) is cls, f"{type(err).__name__}: {err}"
    assert re.search(message, err.message), err.message
    if key is not None:
        assert err.location.key == key
        assert f" in {key}:" in str(err)                   # the rendered message names section.key
    if line_text is not None:
        assert err.location.line == line_of(text, line_text), str(err)
        assert str(err).startswith(f"{err.location.file}:{err.location.line}:")
    if caret is not None:
        assert caret_target(err).startswith(caret), str(err)
        # the column points into the file: the caret's character sits at that column of the line
        src_line = text.splitlines()[err.location.line - 1]
        assert src_line[err.location.col - 1:].startswith(caret), (src_line, err.location.col)


def test_errors_cover_at_least_twenty_malformed_specs():
    assert len({c[0] for c in CASES}) >= 20


def test_errors_unknown_op_suggests_the_close_one(tmp_path):
    err = load_error(tmp_path, E("sigmod(x)"), SpecError)
    assert err.hint.startswith("did you mean sigmoid? the ops are: ")
    assert "hint: did you mean sigmoid?" in str(err)


def test_errors_unknown_name_suggests_the_close_one(tmp_path):
    err = load_error(tmp_path, E("x @ Wt.T + b1"), SpecError)
    assert err.hint == "did you mean 'W'?"
    err = load_error(tmp_path, HEADER.replace('x = ["N", "Dx"]', 'x = ["N", "Dhh"]'), SpecError)
    assert err.hint == "did you mean 'Dh'?"


def test_errors_matmul_mismatch_names_both_shapes_and_hints_transpose(tmp_path):
    text = HEADER.replace("Dx = 4", "Dx = 784").replace("Dh = 3", "Dh = 128") + \
        '\n[graph]\nz = "x @ W + b1"\n\n[outputs]\nout = "z"\n'
    err = load_error(tmp_path, text, ShapeError)
    assert "x is (N, Dx=784)" in err.message and "W is (Dh=128, Dx=784)" in err.message
    assert ".T" in err.hint
    assert err.location.key == "graph.z" and err.location.line == line_of(text, 'z = "x @ W + b1"')
    assert caret_target(err).startswith("x @ W")
    assert f"bad.toml:{err.location.line}:{err.location.col}: ShapeError in graph.z" in str(err)


def test_errors_column_form_mismatch_hints_transpose_of_the_left_operand(tmp_path):
    text = HEADER.replace('x = ["N", "Dx"]', 'x = ["Dh"]') + '\n[graph]\nz = "W @ x"\n\n[outputs]\nout = "z"\n'
    err = load_error(tmp_path, text, ShapeError)
    assert "W is (Dh=3, Dx=4)" in err.message and "x is (Dh=3,)" in err.message
    assert "W.T" in err.hint


@pytest.mark.parametrize("expr", ["(" * 5000 + "x" + ")" * 5000, "x + " * 20000 + "x", "x + " * 4900 + "x",
                                  "-" * 10000 + "x", "relu(" * 1000 + "x" + ")" * 1000, "x" + ".T" * 9000])
def test_errors_huge_expressions_are_spec_errors(tmp_path, expr):
    err = load_error(tmp_path, E(expr), SpecError)
    assert err.location.key == "graph.z"
    assert err.location.line == line_of(E(expr), "z = ")


def test_errors_long_chain_of_lines_in_reverse_order_builds(tmp_path):
    """Ordering the [graph] lines must not recurse once per line."""
    n = 2500
    lines = "\n".join(f'a{i} = "a{i + 1} * 1"' for i in range(n)) + f'\na{n} = "x"\n'
    path = tmp_path / "chain.toml"
    path.write_text(HEADER + "\n[graph]\n" + lines + '\n[outputs]\nout = "a0"\n')
    g = graphc.load(path)
    assert g.outputs["out"].shape == ("N", 4)


def test_errors_cycle_location_is_a_line_of_the_cycle(tmp_path):
    text = HEADER + '\n[graph]\na = "c + 1"\nc = "a * 2"\n\n[outputs]\nout = "a"\n'
    err = load_error(tmp_path, text, SpecError)
    assert "cycle" in err.message
    assert err.location.key in ("graph.a", "graph.c")
    assert err.location.line in (line_of(text, 'a = "c'), line_of(text, 'c = "a'))


def test_errors_parse_spec_without_file_uses_the_given_name():
    with pytest.raises(SpecError) as e:
        graphc.parse_spec(E("x ** 3"), "inline.toml")
    assert e.value.location.file == "inline.toml"
    assert str(e.value).startswith("inline.toml:")


def test_errors_unreadable_spec_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        graphc.load(tmp_path / "missing.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(SpecError, match="cannot read spec"):
        graphc.load(bad)


def test_errors_render_location_and_hint():
    err = ShapeError("inner dims differ", Location("m.toml", "graph.z", 17, 9, "x @ W + b1", 0),
                     hint="did you mean x @ W.T?")
    assert str(err) == ("m.toml:17:9: ShapeError in graph.z: inner dims differ\n    x @ W + b1\n    ^\n"
                        "  hint: did you mean x @ W.T?")
    assert str(ShapeError("plain")) == "ShapeError: plain"
    assert isinstance(err, ValueError) and isinstance(DTypeError("d"), TypeError)


def test_errors_long_expressions_render_a_window_around_the_caret(tmp_path):
    err = load_error(tmp_path, E("(" * 5000 + "x" + ")" * 5000), SpecError)
    assert len(str(err)) < 400
    err = load_error(tmp_path, E("x + " * 30 + "x ** 3"), SpecError)
    assert caret_target(err).startswith("3")
    assert "..." in str(err) and len(str(err)) < 400


@pytest.mark.parametrize("text, line", [('[graph]\nz', 2), ('name = "x', 1), ("[dims]\nN = [1, 2", 2),
                                        ("[dims]\nA = 1\n\n[graph", 4)])
def test_errors_toml_errors_carry_a_line_even_at_end_of_file(text, line):
    with pytest.raises(SpecError, match="not valid TOML") as e:
        graphc.parse_spec(text, "eof.toml")
    assert e.value.location.line == line
    assert "(at " not in e.value.message


# ------------------------------------------------------------------ operands named as written
SUBEXPR_SPEC = '''name = "sub"

[dims]
N  = "batch"
Dx = 5
Dh = 8
Dq = 6
Nc = 3

[inputs]
x = ["N", "Dx"]

[params]
W  = ["Dh", "Dx"]
b1 = ["Dh"]
U  = ["Nc", "Dq"]

[graph]
h     = "relu(x @ W.T + b1)"
theta = "{theta}"

[outputs]
out = "theta"
'''

TEMPORARY_NAME = re.compile(r"__|\bt\d+\b")


@pytest.mark.parametrize("theta, operands", [
    ("h @ U.T", ["h is (N, Dh=8)", "U.T is (Dq=6, Nc=3)"]),
    ("relu(x @ W.T + b1) @ U.T", ["relu(x @ W.T + b1) is (N, Dh=8)", "U.T is (Dq=6, Nc=3)"]),
    ("(h * 2) @ (U.T)", ["h * 2 is (N, Dh=8)", "U.T is (Dq=6, Nc=3)"]),
    ("relu(x@W.T+b1) @ U.T", ["relu(x@W.T+b1) is (N, Dh=8)"]),        # the spec's own text, as typed
])
def test_errors_spec_names_a_subexpression_operand_by_its_text(tmp_path, theta, operands):
    err = load_error(tmp_path, SUBEXPR_SPEC.format(theta=theta), ShapeError)
    assert err.location.key == "graph.theta"
    for operand in operands:
        assert operand in err.message, err.message
    assert not TEMPORARY_NAME.search(err.message), err.message


def _builder_graph():
    g = graphc.Graph("sub", {"N": None, "Dx": 5, "Dh": 8, "Dq": 6, "Nc": 3})
    x = g.input("x", ("N", "Dx"))
    W, b1, U = g.param("W", ("Dh", "Dx")), g.param("b1", ("Dh",)), g.param("U", ("Nc", "Dq"))
    return g, x, W, b1, U


def test_errors_builder_names_a_temporary_operand_by_its_expression():
    g, x, W, b1, U = _builder_graph()
    h = g.input("h", ("N", "Dh"))
    with pytest.raises(ShapeError) as e:
        h @ U.T
    assert "h is (N, Dh=8), U.T is (Dq=6, Nc=3)" in e.value.message, e.value.message
    assert not TEMPORARY_NAME.search(str(e.value)), str(e.value)
    with pytest.raises(ShapeError) as e:
        graphc.relu(x @ W.T + b1) @ U.T
    assert "relu(x @ W.T + b1) is (N, Dh=8), U.T is (Dq=6, Nc=3)" in e.value.message, e.value.message
    with pytest.raises(ShapeError) as e:
        -(x @ W.T) / 2 @ U
    assert "-(x @ W.T) / 2 is (N, Dh=8), U is (Nc=3, Dq=6)" in e.value.message, e.value.message
    with pytest.raises(ShapeError) as e:
        graphc.sum(x, axis=1) + b1
    assert "sum(x, axis=1) is (N,)" in e.value.message, e.value.message


def test_errors_builder_elides_a_long_operand_and_keeps_its_outer_op():
    g, x, W, b1, U = _builder_graph()
    deep = x @ W.T
    for _ in range(12):
        deep = graphc.tanh(deep + b1)
    with pytest.raises(ShapeError) as e:
        deep @ U
    operand = e.value.message.split(": ")[1].split(" is ")[0]
    assert operand.startswith("tanh(") and "..." in operand and len(operand) <= 48, e.value.message
    assert not TEMPORARY_NAME.search(e.value.message), e.value.message


def test_errors_int_argument_is_named_by_its_expression(tmp_path):
    err = load_error(tmp_path, E("relu(y)").replace('out = "x"', 'out = "z"'), DTypeError)
    assert "argument 1 (y)" in err.message
    g, x, W, b1, U = _builder_graph()
    with pytest.raises(DTypeError) as e:
        graphc.embedding(U, x @ W.T)
    assert "argument 2 (x @ W.T) must be int32" in e.value.message, e.value.message


def test_errors_builder_rejects_a_param_with_a_symbolic_dim():
    g = graphc.Graph("p", {"N": None, "D": 4})
    with pytest.raises(SpecError, match=r"param 'W' has shape \(N, D=4\) with the symbolic dim 'N': "
                                        r"params must have fixed dims"):
        g.param("W", ("N", "D"))
    with pytest.raises(SpecError, match="params must have fixed dims"):
        g.param("V", ("B", 3))                  # a fresh name would become a symbolic dim
    assert g.params == {} and "W" not in g.values and "B" not in g.dims
    assert g.param("W", ("D", 2)).shape == (4, 2)   # the name is still free


def test_errors_matmul_hint_writes_the_fix_with_the_operands_as_written(tmp_path):
    """U declared as (Dh, Nc): in `h @ U.T` the fix is to drop the .T, and the hint says so."""
    text = SUBEXPR_SPEC.format(theta="h @ U.T").replace('U  = ["Nc", "Dq"]', 'U  = ["Dh", "Nc"]')
    err = load_error(tmp_path, text, ShapeError)
    assert "U.T is (Nc=3, Dh=8)" in err.message, err.message
    assert err.hint == "U is (Dh=8, Nc=3); did you mean h @ U?"
    g, x, W, b1, U = _builder_graph()
    with pytest.raises(ShapeError) as e:
        (x + 1) @ W
    assert e.value.hint == "W.T is (Dx=5, Dh=8); did you mean (x + 1) @ W.T?"


def test_errors_unknown_op_lists_the_ops_that_exist():
    spec = 'name = "a"\n[inputs]\nx = [3]\n[graph]\nz = "rellu(x)"\n[outputs]\nz_out = "z"\n'
    with pytest.raises(SpecError) as e:
        graphc.parse_spec(spec)
    hint = e.value.hint
    assert hint.startswith("did you mean relu?")
    listed = hint.split("the ops are: ")[1].split(", ")
    assert {"relu", "softmax", "cross_entropy", "matmul"} <= set(listed) and "onehot" not in listed   # public only


def test_errors_unknown_name_far_from_any_lists_the_names_declared():
    spec = 'name = "a"\n[inputs]\nx = [3]\n[params]\nW = [2, 3]\n[graph]\nz = "W @ zzzz"\n[outputs]\nz_out = "z"\n'
    with pytest.raises(SpecError) as e:
        graphc.parse_spec(spec)
    assert "unknown name 'zzzz'" in str(e.value) and "the names so far: x, W" in e.value.hint
