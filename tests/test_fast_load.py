"""native/fastload.py: a spec compiled before loads in a new process without rendering C, and
never loads a library that a changed spec, option, compiler or graphc would not have built."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.native import toolchain
from graphc.native import fastload

from conftest import one_layer_spec

REPO = Path(__file__).resolve().parents[1]

# A fresh interpreter compiles argv[1] (as a spec path, with SGD when argv[2] == "sgd"), runs it on
# fixed arrays and prints what it loaded and computed as one JSON line.
CHILD = """
import json, sys
import numpy as np
import graphc
opt = graphc.SGD(lr=0.1) if sys.argv[2] == "sgd" else None
m = graphc.compile(sys.argv[1], optimizer=opt, threads=1)
lazy = type(m.csrc).__name__
heavy = sorted(k for k in sys.modules if k == "jinja2" or k.startswith(("graphc.backend.codegen", "graphc.autodiff.grad")))
rng = np.random.default_rng(0)
p = {k: rng.standard_normal(v.shape).astype(np.float32) * 0.1 for k, v in m.graph.params.items()}
x = rng.standard_normal((3, m.graph.params["W"].shape[1])).astype(np.float32)
y = np.array([0, 1, 2], np.int32)
out = {"lazy": lazy, "heavy": heavy, "probs": m.forward(x=x, **p)["probs"].tolist(),
       "dW": m.value_and_grad(x=x, y=y, **p)[1]["W"].sum().item()}
if opt is not None:
    st = m.train_state(p)
    out["step"] = [float(m.train_step(st, x=x, y=y)["loss"]) for _ in range(3)]
out["source"] = m.source == open(sys.argv[3]).read() if len(sys.argv) > 3 else None
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastload-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAPHC_CACHE_DIR", str(root))
        yield root


def run_child(spec: Path, cache: Path, optimizer: str = "none", source: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRAPHC_CACHE_DIR": str(cache)}
    args = [sys.executable, "-c", CHILD, str(spec), optimizer] + ([str(source)] if source else [])
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def loaded(recipe: fastload.Recipe, threads: int = 1) -> graphc.CompiledModel:
    """The model of a recipe's index entry, as graphc.compile makes it on a hit."""
    from graphc.native import runtime
    source, built = recipe.load(lambda g: runtime.render(g, None, None, "float32", threads, None))
    return runtime.CompiledModel(source, built, threads, functions=source.light_functions)


def write_spec(tmp_path: Path, name: str = "fast", **dims) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(one_layer_spec(name, **{"dx": 12, "dh": 16, "nc": 3, **dims}))
    return path


def test_a_new_process_loads_a_compiled_spec_without_rendering_and_computes_the_same(cache, tmp_path):
    spec = write_spec(tmp_path)
    first = run_child(spec, cache, "sgd")
    assert first["lazy"] == "CSource"              # the first compile renders the C
    source = tmp_path / "source.c"
    source.write_text(graphc.compile(str(spec), optimizer=graphc.SGD(lr=0.1), threads=1).source)
    second = run_child(spec, cache, "sgd", source)
    assert second["lazy"] == "LazySource" and second["heavy"] == []   # neither Jinja nor autodiff ran
    for k in ("probs", "dW", "step"):
        assert second[k] == first[k], k                # the same library, called the same way
    assert second["source"] is True                    # the C rendered on demand is the built C


def test_processes_compiling_a_new_spec_at_once_all_work_and_leave_one_loadable_entry(cache, tmp_path):
    spec = write_spec(tmp_path, "racing", dh=11)
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRAPHC_CACHE_DIR": str(cache)}
    runs = [subprocess.Popen([sys.executable, "-c", CHILD, str(spec), "sgd"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["probs"] == results[0]["probs"] and r["step"] == results[0]["step"] for r in results)
    later = run_child(spec, cache, "sgd")
    assert later["lazy"] == "LazySource" and later["step"] == results[0]["step"]
    assert not [p for p in (cache / "models").iterdir() if p.name.startswith(".")]   # no scratch files left


def test_the_recipe_key_follows_every_input(cache, tmp_path, monkeypatch):
    spec = write_spec(tmp_path)
    base = dict(grad_of=None, wrt=None, dtype="float32", optimizer=None, threads=1, native=True, isa="auto",
                cache_dir=None)

    def key(path=spec, **changes):
        recipe = fastload.Recipe.of(path, **{**base, **changes})
        assert recipe is not None
        return recipe.key

    first = key()
    assert first == key()
    other = tmp_path / "other"
    other.mkdir()
    (other / spec.name).write_text(spec.read_text())
    changed = [key(path=other / spec.name), key(dtype="float64"), key(threads=2), key(native=False),
               key(isa="portable"), key(optimizer=graphc.SGD(lr=0.1)), key(optimizer=graphc.SGD(lr=0.2)),
               key(grad_of="J"), key(wrt=["W"])]
    spec.write_text(spec.read_text().replace("Dh = 16", "Dh = 17"))
    changed.append(key())
    spec.write_text(spec.read_text().replace("Dh = 17", "Dh = 16"))
    assert key() == first
    monkeypatch.setenv("CFLAGS", "-O1")
    changed.append(key())
    monkeypatch.delenv("CFLAGS")
    monkeypatch.setenv("CC", f"{toolchain.find_compiler()} -m64")
    changed.append(key())
    monkeypatch.delenv("CC")
    monkeypatch.setattr(graphc.core.version, "__version__", "999.0")
    changed.append(key())
    monkeypatch.undo()
    monkeypatch.setattr(fastload, "source_digest", lambda: "an edited graphc")
    changed.append(key())
    monkeypatch.undo()
    monkeypatch.setattr(toolchain, "compiler_version", lambda cc: "another compiler 1.0")
    changed.append(key())
    assert len({first, *changed}) == 1 + len(changed)


def test_the_source_digest_covers_the_code_and_the_templates(tmp_path):
    import shutil
    shutil.copytree(REPO / "graphc", tmp_path / "graphc", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    before = fastload.tree_digest(tmp_path / "graphc")
    assert before == fastload.source_digest()
    seen = {before}
    for edited in (tmp_path / "templates" / "model.c.j2", tmp_path / "graphc" / "backend" / "codegen.py"):
        edited.write_bytes(edited.read_bytes() + b"\n")
        seen.add(fastload.tree_digest(tmp_path / "graphc"))
    (tmp_path / "graphc" / "ops" / "new_op.py").write_text("")
    seen.add(fastload.tree_digest(tmp_path / "graphc"))
    assert len(seen) == 4


def test_a_spec_edited_in_place_is_compiled_again_not_loaded(cache, tmp_path):
    spec = write_spec(tmp_path, "edited")
    assert graphc.compile(str(spec), threads=1).graph.params["W"].shape == (16, 12)
    spec.write_text(spec.read_text().replace("Dh = 16", "Dh = 9"))
    m = graphc.compile(str(spec), threads=1)
    assert m.graph.params["W"].shape == (9, 12) and type(m.csrc).__name__ == "CSource"
    x = np.ones((2, 12), np.float32)
    p = {k: np.full(v.shape, 0.1, np.float32) for k, v in m.graph.params.items()}
    assert m.forward(x=x, **p)["probs"].shape == (2, 3)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign", "library gone"])
def test_a_damaged_index_entry_is_a_miss_and_is_rewritten(cache, tmp_path, damage):
    spec = write_spec(tmp_path, "damaged", dh=5)
    built = graphc.compile(str(spec), threads=1)
    recipe = fastload.Recipe.of(spec, None, None, "float32", None, 1, True, graphc.native.isa.resolve(None), None)
    assert recipe.entry.is_file() and recipe.load(None) is not None   # (render: not needed to load)
    data = recipe.entry.read_bytes()
    if damage == "truncated":
        recipe.entry.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        recipe.entry.write_bytes(b"not a pickle")
    elif damage == "foreign":                    # another recipe's entry under this name
        record = pickle.loads(data)
        record["recipe"] = "0" * 64
        recipe.entry.write_bytes(pickle.dumps(record))
    else:                                        # the index names a key the build cache lacks
        record = pickle.loads(data)
        record["key"] = "f" * 64
        record["module"] = f"_graphc_damaged_{'f' * 16}"
        recipe.entry.write_bytes(pickle.dumps(record))
    assert recipe.load(None) is None
    again = graphc.compile(str(spec), threads=1)
    assert type(again.csrc).__name__ == "CSource" and again.built.key == built.built.key
    assert recipe.load(None) is not None         # the ordinary path wrote the entry anew


def test_a_fast_loaded_model_has_the_full_source_memory_plan_and_export(cache, tmp_path):
    spec = write_spec(tmp_path, "whole")
    slow = graphc.compile(str(spec), threads=1)
    recipe = fastload.Recipe.of(spec, None, None, "float32", None, 1, True, graphc.native.isa.resolve(None), None)
    fast = loaded(recipe)
    assert type(fast.csrc).__name__ == "LazySource"
    # every attribute of the functions and their arguments, recorded or rendered on demand
    for name, f in slow.functions.items():
        light = fast.functions[name]
        assert light.label_checks == f.label_checks and light.doc == f.doc
        assert [(a.cname, a.role, a.ctype, a.const) for a in light.args] == [(a.cname, a.role, a.ctype, a.const) for a in f.args]
        assert [None if a.value is None else (a.value.name, tuple(a.value.shape), a.value.dtype) for a in light.args] == \
            [None if a.value is None else (a.value.name, tuple(a.value.shape), a.value.dtype) for a in f.args]
    assert fast.source == slow.source and fast.header == slow.header
    assert fast.memory_plan(4) == slow.memory_plan(4)
    written = fast.export(tmp_path / "out", standalone=False)
    assert (tmp_path / "out" / "whole.c").read_text() == slow.source
    assert {p.name for p in written} >= {"whole.c", "whole.h"}


def test_a_rendered_source_that_differs_from_the_build_is_refused(cache, tmp_path):
    spec = write_spec(tmp_path, "refused", dh=7)
    graphc.compile(str(spec), threads=1)
    recipe = fastload.Recipe.of(spec, None, None, "float32", None, 1, True, graphc.native.isa.resolve(None), None)
    record = pickle.loads(recipe.entry.read_bytes())
    record["source_sha256"] = "0" * 64
    recipe.entry.write_bytes(pickle.dumps(record))
    model = loaded(recipe)
    with pytest.raises(graphc.GraphcError, match="differs from the cached build"):
        model.source


def test_compiler_version_is_asked_again_when_the_compiler_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "cache"))
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\necho 'fakecc 1.0'\n")
    fake.chmod(0o755)
    toolchain.compiler_version.cache_clear()
    try:
        assert toolchain.compiler_version(str(fake)) == "fakecc 1.0"
        assert list((tmp_path / "cache" / "probes").glob("cc-*.json"))   # remembered for new processes
        toolchain.compiler_version.cache_clear()
        assert toolchain.compiler_version(str(fake)) == "fakecc 1.0"
        fake.write_text("#!/bin/sh\necho 'fakecc 2.0 (upgraded)'\n")     # a new size and time
        toolchain.compiler_version.cache_clear()
        assert toolchain.compiler_version(str(fake)) == "fakecc 2.0 (upgraded)"
    finally:
        toolchain.compiler_version.cache_clear()
