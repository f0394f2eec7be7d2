"""The `graphc` command, run in-process: show, explain and the error paths.

check/build/emit/demo need the compiler stages and are covered where those are tested.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from graphc.tools.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ONE_LAYER = str(EXAMPLES / "one_layer.toml")


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_show_prints_forward_then_backward(capsys):
    status, out, err = run(capsys, "show", ONE_LAYER)
    assert status == 0 and not err
    assert out.count("graph one_layer") == 2
    forward, backward = out.split("# backward", 1)
    assert "h        = relu(z)" in forward and "d_W" not in forward
    assert "output  d_W = d_W" in backward and "identity (7)" in backward


def test_cli_show_without_grad_section_prints_only_the_forward_graph(capsys, tmp_path):
    spec = tmp_path / "fwd.toml"
    spec.write_text('name = "fwd"\n[inputs]\nx = [3]\n[params]\nW = [2, 3]\n[graph]\nz = "W @ x"\n'
                    '[outputs]\nz_out = "z"\n')
    status, out, err = run(capsys, "show", str(spec))
    assert status == 0 and out.count("graph fwd") == 1 and "# backward" not in out


def test_cli_show_passes_prints_each_stage(capsys):
    status, out, err = run(capsys, "show", ONE_LAYER, "--passes")
    assert status == 0, err
    assert "# after autodiff (forward + backward)\ngraph one_layer" in out
    assert "# after lower composites + simplify" in out
    assert "# after schedule (kernels, fusion, arena)" in out and "arena plan" in out


def test_cli_explain_text(capsys):
    status, out, err = run(capsys, "explain", ONE_LAYER)
    assert status == 0 and not err
    assert "δ2 = ∂J/∂z = δ1 U ∘ sgn(h)" in out and "identities (2),(4)" in out
    assert "∂J/∂W" in out and "(Dh×Dx) = (Dh×N)(N×Dx)" in out


@pytest.mark.parametrize("fmt, marker", [("markdown", "|---|"), ("latex", r"\begin{align*}")])
def test_cli_explain_formats(capsys, fmt, marker):
    status, out, err = run(capsys, "explain", str(EXAMPLES / "mlp.toml"), "--format", fmt)
    assert status == 0 and marker in out


def test_cli_missing_spec_is_a_message_not_a_traceback(capsys, tmp_path):
    missing = str(tmp_path / "nope.toml")
    for command in ("show", "explain", "check", "build", "emit"):
        extra = ["-o", str(tmp_path / "out")] if command in ("build", "emit") else []
        status, out, err = run(capsys, command, missing, *extra)
        assert status == 2, command
        assert "nope.toml" in err and "does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize("text, expect", [
    ('name = "bad"\n[graph\nz = "x"\n', "TOML"),                                  # not TOML
    ('[inputs]\nx = [3]\n[graph]\nz = "x @@ x"\n[outputs]\no = "z"\n', "graph.z"),  # bad expression
    ('[inputs]\nx = [3]\n[params]\nW = [2, 4]\n[graph]\nz = "W @ x"\n[outputs]\no = "z"\n', "ShapeError"),
])
def test_cli_malformed_spec_exits_2_with_the_error_on_stderr(capsys, tmp_path, text, expect):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    for command in ("show", "explain"):
        status, out, err = run(capsys, command, str(spec))
        assert status == 2 and not out
        assert expect in err and "bad.toml" in err and "Traceback" not in err


def test_cli_explain_without_grad_section_is_an_error(capsys, tmp_path):
    spec = tmp_path / "fwd.toml"
    spec.write_text('[inputs]\nx = [3]\n[params]\nW = [2, 3]\n[graph]\nz = "W @ x"\n[outputs]\nz_out = "z"\n')
    status, out, err = run(capsys, "explain", str(spec))
    assert status == 2 and "[grad]" in err


def test_cli_usage_errors_exit_2(capsys):
    assert run(capsys, "explain", ONE_LAYER, "--format", "html")[0] == 2
    assert run(capsys)[0] == 2
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "--help")[0] == 0


# ---- check and build: exit codes and what they write ------------------------------------------
def test_cli_check_passes_with_exit_0(capsys):
    status, out, err = run(capsys, "check", ONE_LAYER, "--batch", "3")
    assert status == 0 and out.rstrip().endswith("PASS") and "FAIL" not in out


def test_cli_check_exits_1_on_a_wrong_gradient_and_says_where(capsys, monkeypatch):
    from graphc.ops.elementwise import Relu
    monkeypatch.setattr(Relu, "derivative", lambda self, b, x, y: b.mul(b.apply("sign", y), 2.0))
    status, out, err = run(capsys, "check", ONE_LAYER, "--batch", "3")
    text = out + err
    assert status == 1 and "FAIL" in text
    assert "finite differences n=3: d_W: at index [" in text and "identity (5)" in text


def test_cli_build_writes_sources_libraries_and_the_workspace(capsys, tmp_path):
    status, out, err = run(capsys, "build", ONE_LAYER, "-o", str(tmp_path))
    assert status == 0, err
    for name in ("one_layer.c", "one_layer.h", "libone_layer.so"):
        assert (tmp_path / name).is_file() and f"wrote {tmp_path / name}" in out
    size = int(re.search(r"workspace at batch 64: (\d+) bytes", out).group(1))
    assert size > 0 and "arena plan" not in out
    status, out, err = run(capsys, "build", ONE_LAYER, "-o", str(tmp_path), "--report", "--batch", "64")
    assert status == 0, err
    assert f"workspace of one_layer at n=64: {size} bytes" in out and "bytes per batch row" in out
    assert "value_and_grad" in out and "peak" in out
    # the same figure as the header's one_layer_WORKSPACE_BYTES(64): the arena plus the packing
    arena, pack = map(int, re.search(r"= arena (\d+) \+ GEMM packing (\d+) \+ 64", out).groups())
    assert arena + pack + 64 == size and arena > 0 and pack > 0


def test_cli_build_of_a_model_without_batch_dim_reports_its_one_batch_size(capsys, tmp_path):
    """one_layer_column runs at n = 1 only: build reports that workspace (not 0 bytes at --batch),
    and --report the same figure."""
    spec = str(Path(ONE_LAYER).parent / "one_layer_column.toml")
    status, out, err = run(capsys, "build", spec, "-o", str(tmp_path), "--batch", "64")
    assert status == 0, err
    size = int(re.search(r"workspace at batch 1: (\d+) bytes", out).group(1))
    assert size > 64
    status, out, err = run(capsys, "build", spec, "-o", str(tmp_path), "--report")
    assert status == 0, err
    assert f"workspace of one_layer_column at n=1: {size} bytes" in out


def test_cli_version_and_every_option_has_help(capsys):
    import graphc
    from graphc.tools.cli import _parser
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"graphc {graphc.__version__}"
    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"graphc {name} {'/'.join(action.option_strings) or action.dest} has no help"


def test_cli_show_prints_constants_as_numbers_and_aligns_the_columns(capsys):
    """CSE merges the 1 of tanh's 1 - h**2 with the seed dJ/dJ = 1: it must print as 1.0, not as
    d_J; and the shape and origin columns line up within each graph."""
    status, out, err = run(capsys, "show", str(Path(ONE_LAYER).parent / "mlp.toml"))
    assert status == 0, err
    assert "sub(1.0, " in out and "sub(d_J," not in out
    for block in out.split("\n\n"):
        nodes = [line for line in block.splitlines() if " = " in line and "#" in line and "output" not in line]
        assert nodes and len({line.index("    #") for line in nodes}) == 1, block


def test_cli_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`graphc show ... | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "graphc", "show", ONE_LAYER], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()                 # the reader is gone before graphc writes a line
    err = proc.stderr.read().decode()
    status = proc.wait(timeout=120)
    assert status == 0 and "Traceback" not in err and "BrokenPipe" not in err, (status, err)


def test_cli_short_output_into_a_closed_pipe_ends_quietly():
    """Output that fits in stdout's buffer is written at the flush, after the command returns:
    that flush too must meet the closed pipe inside graphc, not in the interpreter's exit."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "graphc", "--version"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    status = proc.wait(timeout=120)
    assert status == 0 and "Traceback" not in err and "BrokenPipe" not in err, (status, err)


# ---- emit: files only, no compiler ----------------------------------------------------------------
def test_cli_emit_writes_the_model_and_the_kernel_library_without_running_a_compiler(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "/bin/false")         # any compile would fail
    monkeypatch.setattr("graphc.native.build.build", lambda *a, **k: pytest.fail("emit compiled"))
    status, out, err = run(capsys, "emit", ONE_LAYER, "-o", str(tmp_path / "split"))
    assert status == 0, err
    names = {"one_layer.c", "one_layer.h", "graphc_kernels.c", "graphc_kernels.h", "main.c", "Makefile",
             "one_layer_checkpoint.c", "one_layer_checkpoint.h",    # a train step: its checkpoint read/write
             "one_layer_mpi_update.c", "one_layer_mpi_update.h",    # ... and its update for `make MPI=1`
             "mcu/startup.c", "mcu/mps2_an386.ld"}     # mcu/: `make mcu`'s start-up code and linker script
    assert {p.relative_to(tmp_path / "split").as_posix() for p in (tmp_path / "split").rglob("*") if p.is_file()} == names
    assert all(f"wrote {tmp_path / 'split' / n}" in out for n in names)
    source = (tmp_path / "split" / "one_layer.c").read_text()
    assert '#include "graphc_kernels.h"' in source and "gc_gemm_micro_kernel" not in source
    assert "one_layer_train_step(" in source                     # sgd by default, as before
    status, out, err = run(capsys, "emit", ONE_LAYER, "-o", str(tmp_path / "one"), "--amalgamate", "--dtype", "float64")
    assert status == 0, err
    assert {p.name for p in (tmp_path / "one").iterdir()} == {"one_layer.c", "one_layer.h", "main.c", "Makefile", "mcu",
                                                              "one_layer_checkpoint.c", "one_layer_checkpoint.h",
                                                              "one_layer_mpi_update.c", "one_layer_mpi_update.h"}
    whole = (tmp_path / "one" / "one_layer.c").read_text()
    assert '#include "graphc_kernels' not in whole and "gc_gemm_ex_d(" in whole
    assert "SOURCES = main.c one_layer.c one_layer_checkpoint.c\n" in (tmp_path / "one" / "Makefile").read_text()


def test_cli_fuzz_is_the_fuzzers_command(capsys):
    """`graphc fuzz ...` passes every option on to python -m graphc.fuzz (its --help too)."""
    status, out, err = run(capsys, "fuzz", "--help")
    assert status == 0 and "python -m graphc.fuzz" in out and "--cases" in out and "--jobs" in out
    status, out, err = run(capsys, "fuzz", "--cases", "two")
    assert status == 2 and "--cases" in err
