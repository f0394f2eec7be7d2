"""The exported Makefile's KERNELS variable and graphc/native/example_make.py: the kernel library
compiled once by the Makefile's own rule and linked into other folders' programs, but only when
those folders' graphc_kernels.c/.h are the same bytes and the rule compiles them the same way."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import graphc
from graphc.native.example_make import KernelObjects, make_example
from graphc.native.export import export, parse_example_output

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                                reason="needs gcc and make")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FLAGS = "-O1 -std=c99 -Wall -Wextra -Werror -pedantic"


def folder(tmp_path: Path, name: str, spec: str = "one_layer.toml") -> Path:
    m = graphc.compile(graphc.load(EXAMPLES / spec), dtype="float64")
    out = tmp_path / name
    m.export(out, standalone=True)
    return out


def test_makefile_builds_the_kernel_object_by_its_rule_and_links_it_through_kernels(tmp_path):
    """make graphc_kernels.o compiles the library alone; make KERNELS=that.o builds the program
    without compiling graphc_kernels.c again (make -n shows no such command), and it prints the
    numbers of the program built from the source."""
    a = folder(tmp_path, "a")
    plain = subprocess.run(["make", "-s", "CC=gcc", f"CFLAGS={FLAGS}"], cwd=a, capture_output=True, text=True,
                           timeout=300)
    assert plain.returncode == 0 and not plain.stderr, plain.stderr
    subprocess.run(["make", "-s", "clean"], cwd=a, check=True, timeout=60)
    rule = subprocess.run(["make", "-s", "CC=gcc", f"CFLAGS={FLAGS}", "graphc_kernels.o"], cwd=a,
                          capture_output=True, text=True, timeout=300)
    assert rule.returncode == 0 and not rule.stderr and (a / "graphc_kernels.o").exists(), rule.stderr
    dry = subprocess.run(["make", "-n", "CC=gcc", f"CFLAGS={FLAGS}", "KERNELS=graphc_kernels.o"], cwd=a,
                         capture_output=True, text=True, timeout=60).stdout
    assert "graphc_kernels.o" in dry and "graphc_kernels.c" not in dry
    linked = subprocess.run(["make", "-s", "CC=gcc", f"CFLAGS={FLAGS}", "KERNELS=graphc_kernels.o"], cwd=a,
                            capture_output=True, text=True, timeout=300)
    assert linked.returncode == 0 and not linked.stderr, linked.stderr
    assert parse_example_output(linked.stdout).keys() == parse_example_output(plain.stdout).keys()
    assert linked.stdout == plain.stdout


def test_make_example_compiles_the_library_once_and_again_for_other_bytes_or_flags(tmp_path):
    """Two models' folders share one object; a folder whose graphc_kernels.c differs by one line,
    or whose flags differ, compiles its own: the line, a warning under -Werror, fails that build
    (the folder's own file is what is compiled), and the object built for it is not kept."""
    objects = KernelObjects(tmp_path / "objects")
    a, b = folder(tmp_path, "a"), folder(tmp_path, "b", "mlp.toml")
    for f, count in ((a, (1, 0)), (b, (1, 1))):
        run = make_example(f, "gcc", FLAGS, "-DBATCH=3L", objects)
        assert run.returncode == 0 and not run.stderr, run.stderr
        assert ("forward", "loss") in parse_example_output(run.stdout)
        assert (objects.compiled, objects.reused) == count
    assert len(list((tmp_path / "objects").glob("*.o"))) == 1
    run = make_example(b, "gcc", FLAGS.replace("-O1", "-O0"), "", objects)         # other flags: compiled
    assert run.returncode == 0 and not run.stderr and (objects.compiled, objects.reused) == (2, 1), run.stderr
    c = folder(tmp_path, "c")
    with open(c / "graphc_kernels.c", "a") as f:
        f.write("static int graphc_unused_by_anyone;\n")                         # -Wunused-variable
    run = make_example(c, "gcc", FLAGS, "", objects)
    assert run.returncode != 0 and "graphc_unused_by_anyone" in run.stderr
    assert (objects.compiled, objects.reused) == (2, 1)
    assert len(list((tmp_path / "objects").glob("*.o"))) == 2


def test_make_example_without_objects_or_amalgamated_runs_the_plain_make(tmp_path):
    """An amalgamated folder has no KERNELS: make_example runs its make as it is."""
    m = graphc.compile(graphc.load(EXAMPLES / "one_layer.toml"), dtype="float64")
    export(m, tmp_path, standalone=True, amalgamate=True)
    assert "KERNELS" not in (tmp_path / "Makefile").read_text()
    objects = KernelObjects(tmp_path / "objects")
    run = make_example(tmp_path, "gcc", FLAGS, "", objects)
    assert run.returncode == 0 and not run.stderr, run.stderr
    assert (objects.compiled, objects.reused) == (0, 0)
