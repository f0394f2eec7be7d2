"""Packaging: the wheel ships the templates, and an installed graphc renders C from them."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: use the installed setuptools, no download in tests
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{r.stdout}\n{r.stderr}")
    wheels = list(out.glob("graphc-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_contains_every_template(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"graphc/templates/" + p.relative_to(ROOT / "templates").as_posix()
                for pattern in ("*.j2", "*.c", "*.h") for p in (ROOT / "templates").rglob(pattern)}
    assert {"graphc/templates/graphc_kernels.c", "graphc/templates/graphc_kernels.h"} <= expected
    assert expected, "no templates found in the source tree"
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    # the microcontroller start-up files graphc emit copies (examples/mcu/ as graphc/mcu)
    mcu = {"graphc/mcu/" + p.name for p in (ROOT / "examples" / "mcu").iterdir() if p.suffix in (".c", ".ld", ".md")}
    assert {"graphc/mcu/startup.c", "graphc/mcu/mps2_an386.ld"} <= mcu <= names, sorted(mcu - names)


def test_installed_wheel_renders_c_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import graphc, graphc.backend.codegen as c, graphc.backend.templates as t; "
            "assert str(t.templates_dir()).startswith(%r), t.templates_dir(); "
            "g = graphc.load(%r); "
            "s = c.generate(g, 'J', ['W', 'b1', 'U', 'b2']); assert 'gc_gemm_ex_f(' in s.kernels.header; "
            "print(len(s.source))") % (str(target), str(ROOT / "examples" / "one_layer.toml"))
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) > 1000


def test_import_graphc_loads_no_c_toolchain_until_it_compiles(tmp_path):
    """`import graphc` is light: cffi and jinja2 (the C side) load on the first compile, not before;
    jinja2 only when C is rendered (graphc.compile itself does not import it)."""
    code = ("import sys, graphc; g = graphc.load(%r); graphc.grad(g, *g.grad_spec); "
            "print('cffi' in sys.modules, 'jinja2' in sys.modules); "
            "print(callable(graphc.compile), 'jinja2' in sys.modules); "
            "graphc.compile(g); print('cffi' in sys.modules, 'jinja2' in sys.modules)"
            ) % str(ROOT / "examples" / "one_layer.toml")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), GRAPHC_CACHE_DIR=str(tmp_path / "cache")))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "True", "False", "True", "True"]


def test_import_graphc_loads_neither_autodiff_nor_onnx_import_until_called():
    """The reference, the backward pass, explain and the ONNX importer load on first use (PEP 562);
    every public name is still there (dir lists them) and imports as before."""
    code = ("import sys, graphc; before = sorted(m for m in ('graphc.autodiff.grad', 'graphc.autodiff.explain', "
            "'graphc.frontend.onnx', 'graphc.core.reference') if m in sys.modules); "
            "from graphc import grad, explain, from_onnx, evaluate, train_graph; "
            "print(before, all(n in dir(graphc) for n in ('grad', 'compile', 'from_onnx', 'relu')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] True"


def test_compiled_templates_are_kept_in_the_cache_and_a_broken_one_is_skipped(tmp_path):
    """A new process renders with the templates compiled by an earlier one (cache_root()/jinja); an
    entry that is garbage, or a cache folder that cannot be written, only costs a recompile."""
    code = ("import graphc; from graphc.backend.codegen import generate; "
            "g = graphc.load(%r); print(len(generate(g, *g.grad_spec).source))") % str(ROOT / "examples" / "one_layer.toml")
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRAPHC_CACHE_DIR=str(tmp_path / "cache"))
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    entries = sorted((tmp_path / "cache" / "jinja").iterdir())
    assert entries, "no compiled template was kept"
    stamps = {e: e.stat().st_mtime_ns for e in entries}
    reused = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert reused.returncode == 0 and reused.stdout == first.stdout, reused.stderr
    # loaded, not compiled again: Jinja writes an entry only when it had to compile its template
    assert {e: e.stat().st_mtime_ns for e in entries} == stamps
    for entry in entries:
        entry.write_bytes(b"garbage")
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and again.stdout == first.stdout, again.stderr
    assert all(e.read_bytes() != b"garbage" for e in entries)        # compiled and written anew
    (tmp_path / "ro").write_text("a file where the cache folder should be")
    blocked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(env, GRAPHC_CACHE_DIR=str(tmp_path / "ro")))
    assert blocked.returncode == 0 and blocked.stdout == first.stdout, blocked.stderr


def test_import_graphc_imports_no_numpy_and_every_public_name_resolves_on_first_use():
    """`import graphc` loads the errors and the version only (PEP 562 for the rest): no NumPy.
    Every name dir(graphc) lists resolves, `from graphc import *` gets the public API, and the
    layers' packages are reachable as attributes as when `import graphc` imported them."""
    code = ("import sys, graphc; print('numpy' in sys.modules, 'graphc.core.ir' in sys.modules); "
            "names = [n for n in dir(graphc) if not n.startswith('_')]; "
            "print([n for n in names if getattr(graphc, n, None) is None]); "
            "from graphc import Graph, load, relu, SGD, compile, GraphcError; ns = {}; exec('from graphc import *', ns); "
            "print(graphc.core.ir.Graph is Graph, callable(graphc.native.runtime.compile), "
            "all(n in ns for n in ('relu', 'compile', 'Adam', 'ShapeError', 'evaluate')), 'numpy' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["False False", "[]", "True True True True"]
