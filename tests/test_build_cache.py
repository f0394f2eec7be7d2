"""graphc/native/build.py (with toolchain.py, kernel_library.py and cache_entry.py): compile once per
content hash, load from cache, fail loudly and usefully."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from graphc.native import build as builder
from graphc.native import kernel_library, toolchain
from graphc.core.errors import CompileError

REPO = Path(__file__).resolve().parents[1]
HEADER = "int add_ints(int a, int b);\n"

# A fresh interpreter builds the adder given as JSON in argv[1] and prints one JSON line.
CHILD = """
import json, os, sys
from graphc.native import build as builder
if sys.argv[2] == "forbid-compile":
    def forbidden(*args, **kwargs):
        raise AssertionError("the compiler ran on a cache hit")
    builder._compile_into = forbidden
module = builder.build(*json.loads(sys.argv[1]))
print(json.dumps({"cached": module.cached, "sum": module.lib.add_ints(40, 2), "pid": os.getpid(),
                  "directory": str(module.directory), "library": str(module.library)}))
"""


def adder(tag: str, body: str = "return a + b;") -> tuple[str, str, str, str]:
    """name, source, header, cdef of a one-function module; `tag` keeps each test's key its own."""
    source = f'/* {tag} */\n#include "adder.h"\n\nint add_ints(int a, int b)\n{{\n    {body}\n}}\n'
    return "adder", source, HEADER, HEADER


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(root))
    return root


def child(inputs, cache: Path, mode: str = "build") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRAPHC_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(inputs), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def run_child(inputs, cache: Path, mode: str = "build") -> dict:
    return result(child(inputs, cache, mode))


def entries(cache: Path) -> list[str]:
    """Names in the cache root other than lock files and the openmp probe memo."""
    return sorted(p.name for p in cache.iterdir() if p.suffix != ".lock" and p.name != "probes")


def test_build_compiles_loads_and_fills_the_cache_entry(cache):
    module = builder.build(*adder("fills"))
    assert module.lib.add_ints(2, 3) == 5
    assert not module.cached
    assert module.directory == cache / module.key
    names = {p.name for p in module.directory.iterdir()}
    assert {"adder.c", "adder.h", "build.log", "manifest.json", module.library.name} == names
    manifest = json.loads((module.directory / "manifest.json").read_text())
    assert manifest["key"] == module.key and manifest["library"] == module.library.name
    assert entries(cache) == [module.key]            # no .tmp-* or .trash-* left behind
    again = builder.build(*adder("fills"))           # same process: the module already loaded
    assert again.cached and again.lib is module.lib


def test_build_second_process_loads_from_cache_without_compiling(cache):
    first = run_child(adder("second"), cache)
    log = Path(first["directory"]) / "build.log"
    stamps = log.stat().st_mtime_ns, Path(first["library"]).stat().st_mtime_ns
    second = run_child(adder("second"), cache, mode="forbid-compile")
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["sum"] == 42 and second["directory"] == first["directory"]
    assert (log.stat().st_mtime_ns, Path(first["library"]).stat().st_mtime_ns) == stamps


def test_build_key_changes_with_source_flags_compiler_and_versions(monkeypatch):
    from graphc.core import version
    cc = toolchain.find_compiler()
    name, source, header, cdef = adder("key")
    base = builder.cache_key(name, source, header, cdef, ["-O3"], [], cc)
    assert base == builder.cache_key(name, source, header, cdef, ["-O3"], [], cc)
    changed = [
        builder.cache_key(name, source + "\n", header, cdef, ["-O3"], [], cc),
        builder.cache_key(name, source, header + "\n", cdef, ["-O3"], [], cc),
        builder.cache_key(name, source, header, cdef, ["-O2"], [], cc),
        builder.cache_key(name, source, header, cdef, ["-O3"], ["-fopenmp"], cc),
        builder.cache_key(name, source, header, cdef, ["-O3"], [], cc + " -m64"),
    ]
    monkeypatch.setattr(version, "__version__", "999.0")
    changed.append(builder.cache_key(name, source, header, cdef, ["-O3"], [], cc))
    monkeypatch.undo()
    monkeypatch.setattr(toolchain, "builder_hash", lambda: "an edited builder")
    changed.append(builder.cache_key(name, source, header, cdef, ["-O3"], [], cc))
    assert len({base, *changed}) == 1 + len(changed)


def test_build_compile_flags_are_exact_and_never_fast_math():
    assert toolchain.compile_flags(False, False) == ["-O3", "-std=c99", "-ffp-contract=fast", "-fno-math-errno"]
    assert toolchain.compile_flags(True, True)[4:] == ["-march=native", "-fopenmp"]
    assert not any("fast-math" in flag for flag in toolchain.compile_flags(True, True))


def test_build_edited_source_and_extra_flags_make_new_entries(cache):
    one = builder.build(*adder("edit"))
    two = builder.build(*adder("edit", body="return a + b + 1;"))
    three = builder.build(*adder("edit"), extra_compile_args=["-DUNUSED=1"])
    assert len({one.key, two.key, three.key}) == 3
    assert (one.lib.add_ints(1, 1), two.lib.add_ints(1, 1), three.lib.add_ints(1, 1)) == (2, 3, 2)
    assert sorted(entries(cache)) == sorted([one.key, two.key, three.key])


@pytest.mark.parametrize("processes", [2, 8])
def test_build_concurrent_processes_all_succeed_and_compile_once(cache, processes):
    inputs = adder(f"race-{processes}")
    results = [result(p) for p in [child(inputs, cache) for _ in range(processes)]]
    assert all(r["sum"] == 42 for r in results)
    builders = [r for r in results if not r["cached"]]
    assert len(builders) == 1                         # the others waited on the lock, then loaded
    directory = Path(builders[0]["directory"])
    assert json.loads((directory / "manifest.json").read_text())["pid"] == builders[0]["pid"]
    assert entries(cache) == [directory.name]


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "delete manifest"])
def test_build_corrupt_entry_is_detected_and_rebuilt(cache, damage):
    first = run_child(adder(f"corrupt-{damage}"), cache)
    library, directory = Path(first["library"]), Path(first["directory"])
    data = library.read_bytes()
    if damage == "truncate":
        library.write_bytes(data[: len(data) // 2])
    elif damage == "overwrite":
        library.write_bytes(data[:1000] + b"\xff" * 64 + data[1064:])
    else:
        (directory / "manifest.json").unlink()
    second = run_child(adder(f"corrupt-{damage}"), cache)
    assert not second["cached"] and second["sum"] == 42
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["pid"] == second["pid"]
    assert entries(cache) == [directory.name]        # the corrupt entry is gone, not kept aside


def test_build_manifest_of_another_build_is_not_trusted(cache):
    first = run_child(adder("foreign"), cache)
    manifest_path = Path(first["directory"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(key="0" * 64, graphc="0.0.1-other")
    manifest_path.write_text(json.dumps(manifest))
    second = run_child(adder("foreign"), cache)
    assert not second["cached"] and second["sum"] == 42
    assert json.loads(manifest_path.read_text())["key"] == Path(first["directory"]).name


def test_build_missing_compiler_in_CC_is_named(cache, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(CompileError, match="/nonexistent/cc") as caught:
        builder.build(*adder("no-cc"))
    assert "CC" in str(caught.value)


def test_build_no_compiler_on_empty_PATH(cache, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(CompileError, match="no C compiler found"):
        builder.build(*adder("no-path"))


def test_build_syntax_error_reports_compiler_output_and_keeps_numbered_source(cache):
    name, source, header, cdef = adder("syntax", body="return a + b")   # missing ';'
    with pytest.raises(CompileError) as caught:
        builder.build(name, source, header, cdef)
    message = str(caught.value)
    assert "adder.c:6" in message and "error" in message           # the compiler's own words
    assert "-O3" in message and toolchain.find_compiler() in message
    numbered = Path(re.search(r"source kept at (\S+\.numbered\.c)", message).group(1))
    assert numbered.is_file() and "    6      return a + b" in numbered.read_text()
    assert (numbered.parent / "adder.c").read_text() == source
    assert entries(cache) == ["failed"]               # nothing a later run could load


def test_build_cdef_without_definition_fails_at_load_and_leaves_no_entry(cache):
    name, source, header, _ = adder("undefined")
    # gcc 12 only warns about the implicit declaration, so the load fails (undefined symbol);
    # newer compilers reject it while compiling. Either way no entry stays in the cache.
    with pytest.raises(CompileError, match="missing_function"):
        builder.build(name, source, header, HEADER + "int missing_function(int x);\n")
    assert entries(cache) in ([], ["failed"])


@pytest.mark.parametrize("how", ["path under a file", "read-only directory"])
def test_build_unwritable_cache_warns_and_builds_in_a_temporary_folder(tmp_path, monkeypatch, how):
    if how == "path under a file":
        (tmp_path / "afile").write_text("not a directory")
        root = tmp_path / "afile" / "cache"
    else:
        root = tmp_path / "readonly"
        root.mkdir()
        root.chmod(0o500)
        if os.access(root, os.W_OK):                  # root ignores permission bits
            pytest.skip("permission bits do not stop this user from writing")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(root))
    try:
        with pytest.warns(RuntimeWarning, match="not writable"):
            module = builder.build(*adder(f"unwritable-{how}"))
        assert module.lib.add_ints(2, 2) == 4 and not module.cached
        assert module.library.is_file() and root not in module.directory.parents
    finally:
        if root.is_dir():
            root.chmod(0o700)
    shutil.rmtree(module.directory, ignore_errors=True)


# ---------------------------------------------------------------- the kernel library
# A stand-in for codegen's KernelSources (the real library takes seconds to compile): the same
# file names, a tiny text. Modules include its header and call it, as model files do.
class Kernels:
    source_name, header_name = "graphc_kernels.c", "graphc_kernels.h"

    def __init__(self, tag: str, body: str = "return 2 * a;"):
        self.header = "int twice(int a);\n"
        self.source = f'/* {tag} */\n#include "graphc_kernels.h"\nint twice(int a)\n{{\n    {body}\n}}\n'


def user(tag: str) -> tuple[str, str, str, str]:
    """A module calling the library: quad(a) = twice(twice(a))."""
    header = "int quad(int a);\n"
    source = (f'/* {tag} */\n#include "user.h"\n#include "graphc_kernels.h"\n\n'
              "int quad(int a)\n{\n    return twice(twice(a));\n}\n")
    return "user", source, header, header


KERNELS_CHILD = """
import json, sys
from graphc.native import build as builder
from graphc.native import kernel_library
compiled = []
real = kernel_library._compile_kernels_into
def counting(*args, **kwargs):
    compiled.append(1)
    return real(*args, **kwargs)
kernel_library._compile_kernels_into = counting
sys.path.insert(0, sys.argv[3])
from test_build_cache import Kernels, user
module = builder.build(*user(sys.argv[1]), kernels=Kernels(sys.argv[2]))
print(json.dumps({"quad": module.lib.quad(5), "cached": module.cached, "kernels_compiled": len(compiled)}))
"""


def kernels_child(model_tag: str, kernels_tag: str, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRAPHC_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-c", KERNELS_CHILD, model_tag, kernels_tag, str(Path(__file__).parent)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kernel_entries(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "kernels").iterdir() if p.suffix != ".lock")


def test_build_kernel_library_compiles_once_and_every_module_links_it(cache):
    kernels = Kernels("once")
    one = builder.build(*user("one"), kernels=kernels)
    two = builder.build(*user("two"), kernels=kernels)
    assert (one.lib.quad(5), two.lib.quad(3)) == (20, 12)
    assert kernel_entries(cache) == [kernel_library.kernels_key(kernels.source, kernels.header, toolchain.compile_flags(
        True, toolchain.openmp_supported(toolchain.find_compiler())), toolchain.find_compiler())]
    entry = cache / "kernels" / kernel_entries(cache)[0]
    assert {p.name for p in entry.iterdir()} == {"graphc_kernels.c", "graphc_kernels.h", "graphc_kernels.o",
                                                 "build.log", "manifest.json"}
    assert "-fvisibility=hidden" in json.loads((entry / "manifest.json").read_text())["command"]
    assert (one.directory / "graphc_kernels.h").read_text() == kernels.header   # the model's entry is whole
    assert json.loads((one.directory / "manifest.json").read_text())["kernels"] == entry.name


def test_build_kernel_library_is_reused_by_other_processes_and_models(cache):
    first = result(kernels_child("a", "reuse", cache))
    second = result(kernels_child("b", "reuse", cache))            # a new model, the same library
    third = result(kernels_child("b", "reuse", cache))             # a cached model: the library is not read
    assert (first["kernels_compiled"], second["kernels_compiled"], third["kernels_compiled"]) == (1, 0, 0)
    assert (first["cached"], second["cached"], third["cached"]) == (False, False, True)
    assert first["quad"] == second["quad"] == 20 and len(kernel_entries(cache)) == 1


def test_build_concurrent_processes_compile_the_kernel_library_once(cache):
    results = [result(p) for p in [kernels_child(f"race{i}", "race", cache) for i in range(4)]]
    assert all(r["quad"] == 20 for r in results)
    assert sum(r["kernels_compiled"] for r in results) == 1
    assert len(kernel_entries(cache)) == 1
    assert not [p for p in (cache / "kernels").iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def test_build_key_of_a_module_follows_its_kernel_library(cache):
    cc = toolchain.find_compiler()
    k1, k2 = Kernels("key"), Kernels("key", body="return a + a;")
    base = kernel_library.kernels_key(k1.source, k1.header, ["-O3"], cc)
    assert base == kernel_library.kernels_key(k1.source, k1.header, ["-O3"], cc)
    assert len({base, kernel_library.kernels_key(k2.source, k1.header, ["-O3"], cc),
                kernel_library.kernels_key(k1.source, k1.header + "\n", ["-O3"], cc),
                kernel_library.kernels_key(k1.source, k1.header, ["-O2"], cc)}) == 4
    name, source, header, cdef = user("key")
    assert builder.cache_key(name, source, header, cdef, ["-O3"], [], cc, base) != \
        builder.cache_key(name, source, header, cdef, ["-O3"], [], cc, "another library")
    one = builder.build(*user("key"), kernels=k1)
    two = builder.build(*user("key"), kernels=k2)                  # same module text, another library
    assert one.key != two.key and one.lib.quad(5) == two.lib.quad(5) == 20
    assert len(kernel_entries(cache)) == 2


@pytest.mark.parametrize("damage", ["truncate", "delete manifest"])
def test_build_corrupt_kernel_library_is_detected_and_rebuilt(cache, damage):
    first = result(kernels_child("c1", f"corrupt-{damage}", cache))
    entry = cache / "kernels" / kernel_entries(cache)[0]
    if damage == "truncate":
        obj = entry / "graphc_kernels.o"
        obj.write_bytes(obj.read_bytes()[:100])
    else:
        (entry / "manifest.json").unlink()
    second = result(kernels_child("c2", f"corrupt-{damage}", cache))
    assert (first["kernels_compiled"], second["kernels_compiled"]) == (1, 1)
    assert second["quad"] == 20 and kernel_entries(cache) == [entry.name]


def test_build_kernel_library_error_names_the_kept_source_and_the_command(cache):
    with pytest.raises(CompileError) as caught:
        builder.build(*user("broken"), kernels=Kernels("broken", body="return 2 * a"))   # missing ';'
    message = str(caught.value)
    assert "the kernel library graphc_kernels.o" in message and "graphc_kernels.c:5" in message
    assert "-fvisibility=hidden" in message and "-c graphc_kernels.c -o graphc_kernels.o" in message
    numbered = Path(re.search(r"source kept at (\S+\.numbered\.c)", message).group(1))
    assert numbered.is_file() and "    5      return 2 * a" in numbered.read_text()
    assert numbered.parent.parent == cache / "failed"
    assert not [p for p in (cache / "kernels").iterdir() if len(p.name) == 64 or p.name.startswith(".tmp-")]
    assert entries(cache) == ["failed", "kernels"]
