"""Stage 1: the spec parser on well-formed specs: every example loads, the graph prints
readably, and each spec feature builds the graph it says."""
from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.core.ir import FLOAT, INT

HEADER = '''
name = "tiny"

[dims]
Dx = 4
Dh = 3
N  = "batch"

[inputs]
x = ["N", "Dx"]
y = { shape = ["N"], dtype = "int32" }

[params]
W  = { shape = ["Dh", "Dx"], init = "he" }
b1 = ["Dh"]
'''


def parse(text: str, tmp_path=None, name="spec.toml"):
    if tmp_path is None:
        return graphc.parse_spec(text, name)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return graphc.load(path)


def _line_of(path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


# ------------------------------------------------------------------ the examples
def test_spec_every_example_loads(example_spec):
    g = graphc.load(example_spec)
    g.verify()
    assert g.outputs
    assert g.grad_spec is not None
    of, wrt = g.grad_spec
    assert g[of].shape == ()
    assert all(w in g.params or w in g.inputs for w in wrt)
    assert g.source_file == str(example_spec)


def test_spec_every_example_prints_each_value_and_shape(example_spec):
    g = graphc.load(example_spec)
    text = str(g)
    assert text.startswith(f"graph {g.name}")
    by_name = {}    # "  input   x  (N, Dx=64)" and "  z  = add(z__1, b1)  (N, Dh=128)  # ..."
    for ln in text.splitlines()[1:]:
        words = ln.split()
        by_name.setdefault(words[1] if words[0] in ("input", "param", "state") else words[0], ln.split("#")[0])
    for v in [*g.inputs.values(), *g.params.values(), *(n.output for n in g.nodes)]:
        assert v.name in by_name, f"{v.name} missing from\n{text}"
        assert g.format_shape(v.shape) in by_name[v.name], (v.name, by_name[v.name])
    for k in g.outputs:
        assert f"output  {k} = " in text


def test_spec_every_example_differentiates(example_spec):
    g = graphc.load(example_spec)
    of, wrt = g.grad_spec
    bwd = graphc.grad(g, of=of, wrt=wrt)
    for w in wrt:
        assert bwd.outputs[f"d_{w}"].shape == g.values[w].shape


def test_spec_one_layer_example_structure(examples_dir):
    g = graphc.load(examples_dir / "one_layer.toml")
    assert g.name == "one_layer"
    assert g.dims == {"Dx": 64, "Dh": 128, "Nc": 10, "N": None}
    assert g.symbolic_dims == ["N"]
    assert g.inputs["x"].shape == ("N", 64) and g.inputs["y"].dtype == INT
    assert g.params["W"].shape == (128, 64) and g.params["W"].dtype == FLOAT
    assert g.param_init == {"W": "he", "U": "xavier"}
    assert [n.op.name for n in g.nodes] == ["transpose", "matmul", "add", "relu", "transpose", "matmul", "add",
                                            "cross_entropy", "softmax"]
    assert {"z", "h", "theta", "J"} <= set(g.values)
    assert g["z"].shape == ("N", 128) and g["theta"].shape == ("N", 10)
    assert g.outputs["loss"] is g["J"]
    assert g.grad_spec == ("J", ["W", "b1", "U", "b2"])
    z = g["z"].node
    assert z.origin.text == 'z = "x @ W.T + b1"'
    line = _line_of(examples_dir / "one_layer.toml", 'z     = "x @ W.T + b1"')
    assert z.origin.location.line == line and z.origin.location.key == "graph.z"
    assert z.origin.where == f"one_layer.toml:{line}"


def test_spec_str_shows_dims_labels_and_origins(examples_dir):
    text = str(graphc.load(examples_dir / "one_layer.toml"))
    assert "dims    Dx=64, Dh=128, Nc=10, N=batch" in text
    assert "(N, Dx=64)" in text and "int32" in text
    line = _line_of(examples_dir / "one_layer.toml", 'z     = "x @ W.T + b1"')
    assert f'# z = "x @ W.T + b1"  [one_layer.toml:{line}]' in text


# ------------------------------------------------------------------ spec features
def test_spec_load_from_file_and_default_name(tmp_path):
    text = HEADER.replace('name = "tiny"\n', "") + '[outputs]\nz = "x @ W.T + b1"\n'
    g = parse(text, tmp_path, name="my-model.toml")
    assert g.name == "my_model"
    assert g.outputs["z"].shape == ("N", 3)


def test_spec_inline_comments_and_quoted_keys(tmp_path):
    text = HEADER + '[graph]\n"z" = "x @ W.T + b1"   # a comment\n[outputs]\nout = "relu(z)"\n'
    g = parse(text, tmp_path)
    loc = g["z"].node.origin.location
    assert (loc.line, loc.col) == (text.splitlines().index('"z" = "x @ W.T + b1"   # a comment') + 1, 7)


def test_spec_alias_keeps_both_names():
    g = parse(HEADER + '[graph]\nzeta = "relu(x @ W.T)"\nz = "zeta"\nout = "zeta + z"\n[outputs]\no = "out"\n')
    assert g["z"] is g["zeta"]
    assert g["out"].node.inputs == (g["zeta"], g["zeta"])
    out = graphc.evaluate(g, x=np.ones((2, 4)), y=[0, 0], W=np.ones((3, 4)), b1=np.zeros(3))["o"]
    np.testing.assert_array_equal(out, np.full((2, 3), 8.0))


def test_spec_graph_lines_in_any_order():
    g = parse(HEADER + '[graph]\nJ = "cross_entropy(theta, y)"\ntheta = "relu(z)"\nz = "x @ W.T + b1"\n'
              '[outputs]\nloss = "J"\n')
    assert [n.output.name for n in g.nodes][-1] == "J"
    assert g["J"].shape == ()


def test_spec_output_expressions_and_temporaries():
    g = parse(HEADER + '[graph]\nz = "x @ W.T + b1"\n[outputs]\nprobs = "softmax(2 * z - 1)"\n')
    names = [n.output.name for n in g.nodes]
    assert "probs" in names and any(n.startswith("probs__") for n in names)
    assert g.outputs["probs"].shape == ("N", 3)


def test_spec_operators_and_constants():
    g = parse(HEADER + '[graph]\nz = "-(x / 2.0) ** 2 + +x * 3 - 1e-3"\n[outputs]\no = "z"\n')
    x = np.arange(8.0).reshape(2, 4)
    out = graphc.evaluate(g, x=x, y=[0, 1], W=np.zeros((3, 4)), b1=np.zeros(3))["o"]
    np.testing.assert_allclose(out, -(x / 2.0) ** 2 + x * 3 - 1e-3)


def test_spec_keywords_and_shape_literals():
    g = parse(HEADER + '[graph]\ns = "sum(x, axis=1, keepdims=True)"\nm = "mean(x, 0)"\n'
              'r = "reshape(x, (N, 2, 2))"\n[outputs]\no = "s"\np = "m"\nq = "r"\n')
    assert g["s"].shape == ("N", 1) and g["m"].shape == (4,) and g["r"].shape == ("N", 2, 2)
    assert g["s"].node.attrs == {"axis": 1, "keepdims": True}


def test_spec_column_form_and_real_targets():
    g = parse('''
[dims]
Dx = 4
Nc = 3
[inputs]
x = ["Dx"]
y = ["Nc"]
[params]
W = ["Nc", "Dx"]
[graph]
J = "cross_entropy(W @ x, y)"
[outputs]
loss = "J"
[grad]
of = "loss"
wrt = "W"
''')
    assert g.grad_spec == ("loss", ["W"])
    assert g["J"].node.inputs[0].shape == (3,)


def test_spec_dtype_aliases_and_integer_dims():
    g = parse('[inputs]\nx = [3, 2]\nids = { shape = [5], dtype = "int" }\n[params]\n'
              'E = { shape = [7, 2], dtype = "float64" }\n[outputs]\ne = "embedding(E, ids)"\n')
    assert g.inputs["x"].shape == (3, 2)
    assert g.inputs["ids"].dtype == INT and g.params["E"].dtype == FLOAT
    assert g.outputs["e"].shape == (5, 2)


def test_spec_unicode_in_comments_and_strings_is_fine(tmp_path):
    g = parse('# modèle à une couche — ŷ = softmax(θ)\n' + HEADER + '[outputs]\nz = "x @ W.T"  # θ\n', tmp_path)
    assert g.outputs["z"].shape == ("N", 3)


def test_spec_parse_is_deterministic():
    text = HEADER + '[graph]\nz = "x @ W.T + b1"\nh = "relu(z)"\n[outputs]\nout = "h"\n'
    assert str(parse(text)) == str(parse(text))
