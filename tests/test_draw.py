"""Pictures (graphc/tools/draw.py, `graphc show --format`, `graphc demo --plot`): the DOT text has
a node per graph node, the identity labels and the colours; the SVG parses and holds the labels;
the PNGs have the PNG signature and a plausible size; a missing `dot` program, graphviz package or
matplotlib is a GraphcError that says what to install; the core install imports none of them."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import graphc
from graphc.core.errors import GraphcError
from graphc.tools.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ONE_LAYER = EXAMPLES / "one_layer.toml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# the colours the pictures promise (graphc/tools/draw.py STYLE): params blue, gradients orange
PARAM_FILL, GRADIENT_FILL, GRADIENT_OUT_FILL = "#c6dbef", "#fdd0a2", "#fdae6b"
FORWARD_FILL, BACKWARD_FILL = "#ffffff", "#fff5d6"

graphviz = pytest.importorskip("graphviz", reason="the graphviz Python package is not installed "
                               "(pip install 'graphc[draw]'); it is in the test extra")
from graphc.tools.draw import draw, to_dot  # noqa: E402

needs_dot = pytest.mark.skipif(shutil.which("dot") is None,
                               reason="Graphviz's dot program is not installed (apt-get install graphviz; "
                                      ".ci/run installs it when it can)")


def nodes_of(dot: str) -> dict[str, str]:
    """DOT node statements: node id (unquoted) -> its attribute text."""
    out = {}
    for m in re.finditer(r'^\s*("(?:[^"\\]|\\.)*"|\w+) \[(.*)\]$', dot, re.M):
        name = m.group(1).strip('"')
        if name not in ("graph", "node", "edge"):
            assert name not in out, f"node {name} declared twice"
            out[name] = m.group(2)
    return out


def edges_of(dot: str) -> list[tuple[str, str]]:
    return [(a.strip('"'), b.strip('"'))
            for a, b in re.findall(r'^\s*("[^"]*"|\w+) -> ("[^"]*"|\w+)', dot, re.M)]


def cluster(dot: str, name: str) -> str:
    m = re.search(r"subgraph %s \{\n(.*?)\n\t\}" % name, dot, re.S)
    assert m, f"no {name} in the DOT text"
    return m.group(1)


def fill(attrs: str) -> str | None:
    m = re.search(r'fillcolor="([^"]*)"', attrs)
    return m.group(1) if m else None


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (the first chunk, right after the signature)."""
    assert data[:8] == PNG_SIGNATURE, data[:8]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def one_layer():
    return graphc.load(str(ONE_LAYER))


@pytest.fixture(scope="module")
def backward(one_layer):
    of, wrt = one_layer.grad_spec
    return graphc.grad(one_layer, of, wrt)


# ------------------------------------------------------------------ DOT text
def test_forward_dot_has_a_node_per_graph_node_and_an_edge_per_operand(one_layer):
    dot = to_dot(one_layer)
    nodes = nodes_of(dot)
    expected = (set(one_layer.inputs) | set(one_layer.params) | {n.output.name for n in one_layer.nodes}
                | {f"out.{k}" for k in one_layer.outputs})
    assert set(nodes) == expected
    edges = edges_of(dot)
    assert sorted(edges) == sorted([(v.name, n.output.name) for n in one_layer.nodes for v in n.inputs]
                                   + [(v.name, f"out.{k}") for k, v in one_layer.outputs.items()])
    # labelled as the IR printer writes the node: call, then the shape with named dims
    assert nodes["z__1"].startswith(r'label="z__1 = matmul(x, z__0)\n(N, Dh=128)"')
    assert nodes["y"].startswith(r'label="input y\n(N,) int32"')
    assert nodes["W"].startswith(r'label="param W\n(Dh=128, Dx=64)"')
    assert nodes["out.loss"].startswith(r'label="output loss\n()"')
    # inputs, params, ops and outputs each have a shape of their own
    shapes = {k: re.search(r"shape=(\w+)", nodes[k]).group(1) for k in ("x", "W", "z", "out.loss")}
    assert len(set(shapes.values())) == 4, shapes
    assert "cluster" not in dot and "identity" not in dot     # a forward graph alone: no backward box


def test_backward_dot_has_every_node_identity_labels_and_colours(one_layer, backward):
    dot = to_dot(one_layer, backward=True)
    assert dot == to_dot(backward).replace("label=one_layer ", 'label="one_layer: forward and backward, '
                                            'dJ/d(W, b1, U, b2)" ', 1)
    nodes = nodes_of(dot)
    assert set(nodes) == (set(backward.inputs) | set(backward.params) | {n.output.name for n in backward.nodes}
                          | {f"out.{k}" for k in backward.outputs})
    assert len([n for n in nodes if not n.startswith("out.")]) == (
        len(backward.inputs) + len(backward.params) + len(backward.nodes))

    # every backward node names the identity that made it and the forward node it differentiates
    made_by_vjp = [n for n in backward.nodes if n.origin.identity]
    assert len(made_by_vjp) >= 12
    for n in made_by_vjp:
        assert f"identity ({n.origin.identity}) of {n.origin.forward.output.name}" in nodes[n.output.name]
    assert r"d_W = matmul(d_z__0__0, x)\n(Dh=128, Dx=64)\nidentity (5) of z__1" in nodes["d_W"]
    assert r"d_theta = mul(d_J__4, d_J__1)\n(N, Nc=10)\nidentity (7) of J" in nodes["d_theta"]
    assert r"identity (4) of h" in nodes["d_z"] and r"identity (3) of z" in nodes["d_b1"]
    # the seed dJ/dJ = 1 reads as the number it is, not as d_J
    assert nodes["d_J"].startswith("label=1.0 ")

    # forward and backward in boxes of their own
    fwd, bwd = cluster(dot, "cluster_forward"), cluster(dot, "cluster_backward")
    assert "\t\tz__1 [" in fwd and "\t\td_W [" in bwd and "\t\td_W [" not in fwd and "\t\tz__1 [" not in bwd

    # colours: params blue, gradients (the d_W outputs and the nodes computing them) orange
    assert len({PARAM_FILL, GRADIENT_FILL, GRADIENT_OUT_FILL, FORWARD_FILL, BACKWARD_FILL}) == 5
    for p in backward.params:
        assert fill(nodes[p]) == PARAM_FILL
        assert fill(nodes[f"d_{p}"]) == GRADIENT_FILL
        assert fill(nodes[f"out.d_{p}"]) == GRADIENT_OUT_FILL
    for name in ("z", "h", "theta", "J"):
        assert fill(nodes[name]) == FORWARD_FILL
    for name in ("d_theta", "d_z", "d_h"):
        assert fill(nodes[name]) == BACKWARD_FILL
    assert fill(nodes["out.loss"]) not in (PARAM_FILL, GRADIENT_FILL, GRADIENT_OUT_FILL)
    others = {k for k, v in nodes.items() if fill(v) in (PARAM_FILL, GRADIENT_FILL, GRADIENT_OUT_FILL)}
    assert others == set(backward.params) | {f"d_{p}" for p in backward.params} | {
        f"out.d_{p}" for p in backward.params}


def test_dot_is_deterministic(tmp_path):
    texts = {to_dot(graphc.load(str(EXAMPLES / "mlp.toml")), backward=True) for _ in range(2)}
    assert len(texts) == 1
    a, b = tmp_path / "a.dot", tmp_path / "b.dot"
    draw(graphc.load(str(EXAMPLES / "mlp.toml")), a, backward=True)
    assert main(["show", str(EXAMPLES / "mlp.toml"), "--backward", "--format", "dot", "-o", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes() == texts.pop().encode()


def test_gradient_sums_and_shared_constants_sit_in_the_backward_box():
    """window_classifier: dJ/dE sums three embedding gradients (the sums carry no identity, only their
    origin: the sum over E's uses); mlp: tanh's 1 - h**2 shares the constant 1 with the seed."""
    g = graphc.load(str(EXAMPLES / "window_classifier.toml"))
    bwd = graphc.grad(g, *g.grad_spec)
    dot = to_dot(g, backward=True)
    back = cluster(dot, "cluster_backward")
    sums = [n.output.name for n in bwd.nodes if n.op.name == "add" and not n.origin.identity
            and "the sum over the uses of E" in (n.origin.text or "")]
    assert len(sums) == 2, "expected the two sums of d_E, stamped with their origin"
    for name in sums + ["d_E"]:
        assert f"\t\t{name} [" in back
    assert "\t\td_E [" not in cluster(dot, "cluster_forward")
    mlp = to_dot(graphc.load(str(EXAMPLES / "mlp.toml")), backward=True)
    assert r'label="d_h1__2 = sub(1.0, d_h1__0)' in mlp


def test_cli_show_format_dot_prints_and_writes(capsys, tmp_path):
    assert main(["show", str(ONE_LAYER), "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out == to_dot(graphc.load(str(ONE_LAYER)))
    path = tmp_path / "g.dot"
    assert main(["show", str(ONE_LAYER), "--backward", "-o", str(path)]) == 0   # format from the suffix
    assert f"wrote {path}" in capsys.readouterr().out
    assert path.read_text() == to_dot(graphc.load(str(ONE_LAYER)), backward=True)


def test_cli_show_drawing_errors(capsys, tmp_path):
    assert main(["show", str(ONE_LAYER), "--format", "png"]) == 2
    assert "needs -o FILE" in capsys.readouterr().err
    assert main(["show", str(ONE_LAYER), "-o", str(tmp_path / "g.pdf")]) == 2
    assert "'pdf' is not one of dot, svg, png" in capsys.readouterr().err
    spec = tmp_path / "fwd.toml"
    spec.write_text('name = "fwd"\n[inputs]\nx = [3]\n[params]\nW = [2, 3]\n[graph]\nz = "W @ x"\n'
                    '[outputs]\nz_out = "z"\n')
    assert main(["show", str(spec), "--backward", "--format", "dot"]) == 2
    assert "no [grad] section" in capsys.readouterr().err
    assert main(["show", str(spec), "--format", "dot"]) == 0
    assert "z = matmul(W, x)" in capsys.readouterr().out
    assert not list(tmp_path.glob("g.*"))


# ------------------------------------------------------------------ SVG and PNG through dot
@needs_dot
def test_svg_parses_and_holds_the_labels(one_layer, backward, tmp_path):
    path = draw(one_layer, tmp_path / "one_layer.svg", backward=True)
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    for label in ("param W", "input x", "output d_W", "z__1 = matmul(x, z__0)", "(N, Dh=128)",
                  "d_W = matmul(d_z__0__0, x)", "identity (5) of z__1", "identity (7) of J", "1.0",
                  "forward", "backward (the notes' identities)"):
        assert label in texts, label
    titles = {t.text for t in root.iter("{http://www.w3.org/2000/svg}title")}
    assert {n.output.name for n in backward.nodes} <= titles     # one SVG group per graph node
    assert PARAM_FILL in path.read_text() and GRADIENT_FILL in path.read_text()


@needs_dot
def test_png_has_the_signature_and_a_plausible_size(one_layer, tmp_path, capsys):
    forward = draw(one_layer, tmp_path / "forward.png")
    fw, fh = png_size(forward.read_bytes())
    assert 300 < fw < 3000 and 400 < fh < 3000, (fw, fh)
    path = tmp_path / "both.png"
    assert main(["show", str(ONE_LAYER), "--format", "png", "--backward", "-o", str(path)]) == 0
    bw, bh = png_size(path.read_bytes())
    assert fw < bw < 6000 and fh < bh < 6000, (bw, bh)      # the backward graph is the larger picture
    assert len(path.read_bytes()) > 20_000


def test_missing_dot_program_says_how_to_install_it(one_layer, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for fmt in ("svg", "png"):
        with pytest.raises(GraphcError) as e:
            draw(one_layer, tmp_path / f"g.{fmt}")
        text = str(e.value)
        assert "`dot` program" in text and "apt-get install graphviz" in text and "brew install graphviz" in text
        assert not (tmp_path / f"g.{fmt}").exists()
    assert main(["show", str(ONE_LAYER), "--backward", "-o", str(tmp_path / "g.svg")]) == 2
    err = capsys.readouterr().err
    assert "apt-get install graphviz" in err and "Traceback" not in err
    # the DOT text needs no dot program
    assert main(["show", str(ONE_LAYER), "--backward", "-o", str(tmp_path / "g.dot")]) == 0
    assert (tmp_path / "g.dot").read_text().startswith("digraph one_layer {")


def test_missing_graphviz_package_says_how_to_install_it(one_layer, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "graphviz", None)
    with pytest.raises(GraphcError) as e:
        to_dot(one_layer)
    assert "pip install 'graphc[draw]'" in str(e.value)
    assert main(["show", str(ONE_LAYER), "--format", "dot"]) == 2
    assert "pip install 'graphc[draw]'" in capsys.readouterr().err


def test_drawing_stays_optional():
    """The core install is numpy, jinja2, cffi: importing graphc and its tools loads neither
    graphviz nor matplotlib, and they come only with the extras."""
    code = ("import sys, graphc, graphc.tools.draw, graphc.tools.demo, graphc.tools.cli; "
            "print(sorted(m for m in ('graphviz', 'matplotlib') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "graphviz" not in core and "matplotlib" not in core
    extras = {k: " ".join(v) for k, v in project["optional-dependencies"].items()}
    assert "graphviz" in extras["draw"] and "matplotlib" in extras["demo"]
    assert "graphviz" in extras["test"] and "matplotlib" in extras["test"]


# ------------------------------------------------------------------ graphc demo --plot
def test_demo_plot_draws_train_and_test_loss(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="scikit-learn (the demo's data) is not installed: pip install 'graphc[demo]'")
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: pip install 'graphc[demo]'")
    path = tmp_path / "loss.png"
    assert main(["demo", "--epochs", "2", "--out", str(tmp_path / "c"), "--plot", str(path)]) == 0
    assert f"train and test loss per epoch drawn to {path}" in capsys.readouterr().out
    assert png_size(path.read_bytes()) == (640, 420)     # figsize 6.4 x 4.2 inches at 100 dpi
    assert len(path.read_bytes()) > 10_000


def test_demo_plot_curves_and_labels(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn (the demo's data) is not installed: pip install 'graphc[demo]'")
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is not installed: pip install 'graphc[demo]'")
    from graphc.tools import demo
    r = demo.run(epochs=2, out=tmp_path / "c", compare=False, write=lambda line: None, plot=tmp_path / "loss.png")
    assert png_size((tmp_path / "loss.png").read_bytes()) == (640, 420) and r["plot"] == str(tmp_path / "loss.png")
    train, test = r["train_losses"], r["test_losses"]
    assert len(train) == len(test) == 3                  # before training, after epochs 1 and 2
    assert train[0] > 1.5 and train[2] < train[1] < train[0] and test[2] < test[0]
    # the picture's words: the same plot as SVG with its text kept as text
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        svg = demo.plot_losses(tmp_path / "loss.svg", train, test, "the title")
    texts = " ".join(t.text or "" for t in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}text"))
    for words in ("epoch", "loss", "train", "test (held out)", "the title"):
        assert words in texts, (words, texts)


def test_demo_plot_without_matplotlib_says_how_to_install_before_training(tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn", reason="scikit-learn (the demo's data) is not installed: pip install 'graphc[demo]'")
    from graphc.tools import demo
    for name in ("matplotlib", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    assert demo.main(["--epochs", "1", "--out", str(tmp_path / "c"), "--plot", str(tmp_path / "loss.png")]) == 2
    out, err = capsys.readouterr()
    assert "pip install 'graphc[demo]'" in err and "matplotlib" in err
    assert "epoch" not in out and not (tmp_path / "loss.png").exists()
