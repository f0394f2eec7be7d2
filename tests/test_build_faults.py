"""Build faults at the graphc.compile level. tests/test_build_cache.py covers graphc.build on a
tiny module (missing $CC, empty PATH, syntax errors, unwritable cache, truncated or foreign
entries, racing builders); this file covers what it does not: the whole compile path with a
compiler that fails, a library that passes its digest but cannot load, a cache entry made by
another graphc version, a builder killed mid-compile, eight processes compiling one spec, and a
cache folder whose disk fills up (ENOSPC) at each step of a build. (The kernel library, compiled
first and cached apart in cache/kernels, meets each fault before the model does.)"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.core.errors import CompileError

REPO = Path(__file__).resolve().parents[1]

SPEC = """
name = "{name}"
[dims]
N = "batch"
D = 6
C = 3
[inputs]
x = ["N", "D"]
y = {{ shape = ["N"], dtype = "int32" }}
[params]
W = ["C", "D"]
[graph]
t = "tanh(x @ W.T)"
J = "cross_entropy(t, y)"
[outputs]
loss = "J"
[grad]
of = "J"
wrt = ["W"]
"""

CHILD = """
import json, os, sys
import numpy as np
import graphc
if len(sys.argv) > 2 and sys.argv[2] == "other-version":
    import graphc.core.version
    graphc.core.version.__version__ = "0.0.0-another-graphc"
m = graphc.compile(graphc.parse_spec(sys.argv[1], "faults.toml"), dtype="float64")
x = np.linspace(-1, 1, 12).reshape(2, 6); W = np.linspace(-1, 1, 18).reshape(3, 6)
out, grads = m.value_and_grad(x=x, y=np.array([0, 2], dtype=np.int32), W=W)
print(json.dumps({"cached": m.built.cached, "directory": str(m.built.directory), "pid": os.getpid(),
                  "loss": float(out["loss"]), "grad": grads["W"].tolist()}))
"""


def spec(tag: str) -> str:
    return SPEC.format(name=f"faults_{tag}")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(root))
    return root


def child(text: str, cache: Path, *extra: str, session: bool = False) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRAPHC_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-c", CHILD, text, *extra], env=env, start_new_session=session,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=180)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def leftovers(cache: Path) -> list[str]:
    """Anything half-written: scratch build folders or entries moved aside."""
    return sorted(p.name for p in cache.iterdir() if p.name.startswith((".tmp-", ".trash-")))


def test_compile_with_missing_compiler_names_it(cache, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/bin/cc")
    with pytest.raises(CompileError, match="/nonexistent/bin/cc"):
        graphc.compile(graphc.parse_spec(spec("nocc")))


def test_compile_with_a_failing_compiler_reports_its_stderr_and_the_kept_source(cache, monkeypatch, tmp_path):
    fake = tmp_path / "fake-cc"
    fake.write_text("#!/bin/sh\n"
                    'if [ "$1" = "--version" ]; then echo "fake-cc 1.0"; exit 0; fi\n'
                    'echo "fake-cc: internal compiler error: out of cheese" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(CompileError) as caught:
        graphc.compile(graphc.parse_spec(spec("failcc")))
    message = str(caught.value)
    assert "out of cheese" in message and str(fake) in message
    # the kernel library is compiled first (the model links it): its failure is the one reported
    assert "the kernel library graphc_kernels.o" in message and f"command: {fake} " in message
    kept = Path(re.search(r"plain copy: (\S+\.c)\)", message).group(1))
    assert kept.name == "graphc_kernels.c" and "gc_gemm_ex_T(" in kept.read_text()
    numbered = Path(re.search(r"source kept at (\S+\.numbered\.c)", message).group(1))
    assert numbered.is_file() and numbered.parent == kept.parent
    assert not [p for p in cache.iterdir() if len(p.name) == 64]   # no loadable entry was published
    assert not [p for p in (cache / "kernels").iterdir() if len(p.name) == 64]
    assert leftovers(cache) == [] and leftovers(cache / "kernels") == []


def test_compile_with_an_unusable_cache_folder_warns_and_works(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    with pytest.warns(RuntimeWarning, match="not writable"):
        m = graphc.compile(graphc.parse_spec(spec("unwritable")), dtype="float64")
    out = m.forward(x=np.ones((2, 6)), W=np.zeros((3, 6)), y=np.zeros(2, np.int32))
    assert np.isclose(out["loss"], np.log(3))


def test_compile_rebuilds_a_library_that_passes_its_digest_but_cannot_load(cache):
    first = result(child(spec("unloadable"), cache))
    entry = Path(first["directory"])
    manifest = json.loads((entry / "manifest.json").read_text())
    library = entry / manifest["library"]
    library.write_bytes(b"\x7fELF but not really a shared library" * 10)
    manifest["library_sha256"] = hashlib.sha256(library.read_bytes()).hexdigest()   # consistent, yet broken
    (entry / "manifest.json").write_text(json.dumps(manifest))
    second = result(child(spec("unloadable"), cache))
    assert not second["cached"] and second["directory"] == first["directory"]
    assert second["loss"] == first["loss"] and second["grad"] == first["grad"]
    assert json.loads((entry / "manifest.json").read_text())["pid"] == second["pid"]
    assert leftovers(cache) == []


def test_compile_never_uses_an_entry_from_another_graphc_version(cache):
    ours = result(child(spec("versions"), cache))
    theirs = result(child(spec("versions"), cache, "other-version"))
    assert not theirs["cached"] and theirs["directory"] != ours["directory"]
    assert theirs["loss"] == ours["loss"]
    again = result(child(spec("versions"), cache))
    assert again["cached"] and again["directory"] == ours["directory"]


@pytest.mark.parametrize("killed", ["model", "kernel library"])
def test_compile_after_a_builder_killed_mid_compile_leaves_nothing_half_written(killed, cache, tmp_path, monkeypatch):
    """The builder and its compiler killed while compiling the model's module, or the kernel library
    (graphc_kernels.c, compiled first into cache/kernels): no entry a later run could load, and the
    next build removes the scratch folder and publishes whole entries."""
    # one compiler command for both runs (it is part of the cache key): it hangs while `hang` exists,
    # so the first builder is caught mid-compile, then it is the real compiler
    real = os.environ.get("CC") or "cc"
    wrapper = tmp_path / "maybe-slow-cc"
    pattern = "*_graphc_*.c" if killed == "model" else "*graphc_kernels*.c"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do case "$a" in {pattern})\n'
                       f'  if [ -e {tmp_path}/hang ]; then touch {tmp_path}/started; sleep 60; fi;; esac; done\n'
                       f'exec {real} "$@"\n')
    wrapper.chmod(0o755)
    (tmp_path / "hang").touch()
    monkeypatch.setenv("CC", str(wrapper))
    victim = child(spec("killed"), cache, session=True)   # its own process group: we kill just that
    deadline = time.time() + 60
    while not (tmp_path / "started").exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.1)
    assert (tmp_path / "started").exists(), "the build never reached the compiler"
    os.killpg(victim.pid, signal.SIGKILL)             # the builder and the compiler it runs
    victim.communicate()
    where = cache if killed == "model" else cache / "kernels"
    assert leftovers(where)                           # the killed build left its scratch folder ...
    assert not [p for p in cache.iterdir() if len(p.name) == 64]   # ... and no entry a later run could load
    if killed == "kernel library":                    # no kernel entry either: only the scratch folder, the lock
        assert not [p for p in where.iterdir() if not p.name.startswith(".") and p.suffix != ".lock"]
    (tmp_path / "hang").unlink()
    done = result(child(spec("killed"), cache))       # the next build removes it and publishes a whole entry
    assert not done["cached"] and leftovers(where) == [] and leftovers(cache) == []
    assert result(child(spec("killed"), cache))["cached"]


def test_compile_eight_processes_at_once_all_succeed_with_one_build(cache):
    text = spec("eight")
    results = [result(p) for p in [child(text, cache) for _ in range(8)]]
    assert len({r["directory"] for r in results}) == 1
    assert len({(r["loss"], json.dumps(r["grad"])) for r in results}) == 1
    assert sum(not r["cached"] for r in results) == 1
    assert leftovers(cache) == []
    entry = Path(results[0]["directory"])
    assert json.loads((entry / "manifest.json").read_text())["pid"] in {r["pid"] for r in results}


# ---------------------------------------------------------------- a cache folder that fills up
class FullDisk:
    """The cache folder's disk fills up at one step of a build: that write and every later one under
    the cache root fail with ENOSPC (a partly written manifest.json first writes half its text).
    Steps: the generated source, build.log, the compiler's output (a compiler wrapper, which sees
    a marker file, writes half a library and says what ld says), manifest.json, the publishing
    rename; "compiler error": the compiler fails for a real reason just as the disk fills up.
    `also` is another folder (the temporary one) that is full from the start."""

    def __init__(self, root: Path, step: str, tmp: Path, also: Path | None = None):
        self.root, self.step, self.also = root.resolve(), step, also
        self.marker, self.compiler_step = tmp / "disk-is-full", tmp / f"fill-at-{step}"
        self.compiler_step.touch()

    def under(self, path) -> bool:
        path = Path(path).resolve()
        return any(place is not None and path.is_relative_to(place) for place in (self.root, self.also))

    def full(self, path, hit: bool = False) -> bool:
        if self.also is not None and Path(path).resolve().is_relative_to(self.also):
            return True
        if hit and self.under(path):
            self.marker.touch()
        return self.marker.exists() and self.under(path)

    def error(self, path) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def install(self, monkeypatch):
        write_text, rename, copytree = Path.write_text, os.rename, shutil.copytree
        steps = {"source": lambda p: p.suffix == ".c", "build.log": lambda p: p.name == "build.log",
                 "manifest": lambda p: p.name == "manifest.json"}

        def full_write_text(path, data, *args, **kwargs):
            if self.full(path, hit=steps.get(self.step, lambda p: False)(path)):
                if path.name == "manifest.json":
                    write_text(path, data[:len(data) // 2], *args, **kwargs)
                raise self.error(path)
            return write_text(path, data, *args, **kwargs)

        def full_rename(src, dst, *args, **kwargs):
            if self.full(dst, hit=self.step == "publish" and Path(src).name.startswith(".tmp-")):
                raise self.error(dst)
            return rename(src, dst, *args, **kwargs)

        def full_copytree(src, dst, *args, **kwargs):
            if self.full(dst):
                raise self.error(dst)
            return copytree(src, dst, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", full_write_text)
        monkeypatch.setattr(os, "rename", full_rename)
        monkeypatch.setattr(shutil, "copytree", full_copytree)

    def free(self, monkeypatch):
        monkeypatch.undo()
        self.marker.unlink(missing_ok=True)
        self.compiler_step.unlink()


def full_disk_compiler(tmp_path: Path, root: Path) -> Path:
    """The real compiler, except while a fill-at-compiler* marker exists and it runs in the cache
    folder: then, like a compiler on a full disk, it writes half its output and fails."""
    real = os.environ.get("CC") or "cc"
    wrapper = tmp_path / "full-disk-cc"
    wrapper.write_text(f"""#!/bin/sh
here=$(pwd -P)
case "$here" in {root.resolve()}*)
  if [ -e {tmp_path}/fill-at-compiler ]; then
    touch {tmp_path}/disk-is-full
    out=""; prev=""
    for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
    [ -n "$out" ] && head -c 3000 {sys.executable} > "$out"
    echo "/usr/bin/ld: final link failed: No space left on device" >&2
    echo "collect2: error: ld returned 1 exit status" >&2
    exit 1
  fi
  if [ -e "{tmp_path}/fill-at-compiler error" ]; then
    touch {tmp_path}/disk-is-full
    echo "faults.c:1:1: error: out of cheese" >&2
    exit 1
  fi;;
esac
exec {real} "$@"
""")
    wrapper.chmod(0o755)
    return wrapper


def cache_entries(cache: Path) -> list[str]:
    """Entries a later build would try to load (root/KEY; cache/"kernels" for the kernel library's)
    and scratch or trash folders."""
    if not cache.is_dir():
        return []
    return sorted(p.name for p in cache.iterdir() if len(p.name) == 64 or p.name.startswith((".tmp-", ".trash-")))


def works(m) -> None:
    out = m.forward(x=np.ones((2, 6)), W=np.zeros((3, 6)), y=np.zeros(2, np.int32))
    assert np.isclose(out["loss"], np.log(3))


@pytest.mark.parametrize("step", ["source", "build.log", "compiler", "manifest", "publish"])
def test_compile_with_a_cache_folder_that_fills_up_warns_builds_in_a_temporary_folder_and_leaves_nothing(
        step, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(full_disk_compiler(tmp_path, cache)))
    text = spec(f"full_{step.replace('.', '_')}")
    disk = FullDisk(cache, step, tmp_path)
    with pytest.MonkeyPatch.context() as patches:
        disk.install(patches)
        with pytest.warns(RuntimeWarning, match="No space left on device") as warned:
            m = graphc.compile(graphc.parse_spec(text), dtype="float64")
        assert disk.marker.exists(), "the disk never filled up: the test missed its step"
    assert "not writable" in str(warned[0].message) and str(cache) in str(warned[0].message)
    works(m)
    assert cache.resolve() not in m.built.directory.resolve().parents      # a temporary build ...
    assert cache_entries(cache) == [] and cache_entries(cache / "kernels") == []   # ... nothing half-written kept
    disk.free(monkeypatch)
    first = result(child(text, cache))                                      # room again: a whole entry,
    assert not first["cached"] and np.isfinite(first["loss"])
    assert cache_entries(cache) == [Path(first["directory"]).name]          # built, not loaded from debris
    assert len(cache_entries(cache / "kernels")) == 1                       # and the kernel library's
    assert result(child(text, cache))["cached"]


def test_compile_with_a_full_cache_folder_and_a_compiler_error_keeps_the_source_elsewhere(cache, tmp_path, monkeypatch):
    """A real compiler error just as the cache fills up: the CompileError still names a kept source."""
    monkeypatch.setenv("CC", str(full_disk_compiler(tmp_path, cache)))
    disk = FullDisk(cache, "compiler error", tmp_path)
    with pytest.MonkeyPatch.context() as patches:
        disk.install(patches)
        with pytest.raises(CompileError) as caught:
            graphc.compile(graphc.parse_spec(spec("full_error")), dtype="float64")
    message = str(caught.value)
    assert "out of cheese" in message
    kept = Path(re.search(r"plain copy: (\S+\.c)\)", message).group(1))
    assert kept.is_file() and "gc_gemm_ex_T(" in kept.read_text()     # the kernel library, compiled first
    assert cache.resolve() not in kept.resolve().parents
    assert cache_entries(cache) == [] and cache_entries(cache / "kernels") == []


def test_compile_with_full_cache_and_temporary_folders_is_a_compile_error_naming_the_source(
        cache, tmp_path, monkeypatch):
    """No room anywhere: a CompileError naming both folders and the source path, never a bare OSError."""
    monkeypatch.setenv("CC", str(full_disk_compiler(tmp_path, cache)))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    disk = FullDisk(cache, "source", tmp_path, also=temp)
    with pytest.MonkeyPatch.context() as patches:
        disk.install(patches)
        with pytest.raises(CompileError) as caught, pytest.warns(RuntimeWarning):
            graphc.compile(graphc.parse_spec(spec("full_everywhere")), dtype="float64")
    message = str(caught.value)
    assert str(cache) in message and str(temp) in message and "No space left on device" in message
    assert re.search(rf"{re.escape(str(temp))}/graphc-faults_full_everywhere-\S+/faults_full_everywhere\.c", message)
    assert cache_entries(cache) == []
