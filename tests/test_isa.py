"""The ISA switch (issue 18 item 1): GRAPHC_ISA / compile(isa=) / graphc build --isa / emit --isa
and make ISA= really select the GEMM kernels that run; an instruction set the CPU lacks is refused."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.native import isa as isa_mod

ROOT = Path(__file__).resolve().parent.parent
ONE_LAYER = ROOT / "examples" / "one_layer.toml"


def test_isa_resolve_reads_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv("GRAPHC_ISA", raising=False)
    assert isa_mod.resolve(None) == "auto"
    monkeypatch.setenv("GRAPHC_ISA", "portable")
    assert isa_mod.resolve(None) == "portable"
    assert isa_mod.resolve("auto") == "auto"          # the argument wins over the environment
    monkeypatch.setenv("GRAPHC_ISA", "sse9")
    with pytest.raises(graphc.GraphcError, match="GRAPHC_ISA='sse9'.*not an instruction set") as err:
        isa_mod.resolve(None)
    assert "avx512, avx2, neon, portable" in str(err.value)


def test_isa_the_cpu_lacks_is_refused_for_this_machine_only(monkeypatch):
    monkeypatch.setattr(isa_mod, "cpu_isas", lambda: {"avx2"})
    with pytest.raises(graphc.GraphcError, match="isa='avx512', but this CPU .* has avx2"):
        isa_mod.resolve("avx512")
    assert isa_mod.resolve("avx512", this_cpu=False) == "avx512"     # emitted C is built elsewhere
    assert isa_mod.resolve("avx2") == "avx2"
    with pytest.raises(graphc.GraphcError, match="isa='neon', but this CPU"):
        isa_mod.resolve("neon")                                      # NEON is AArch64's
    monkeypatch.setattr(isa_mod, "cpu_isas", lambda: {"neon"})
    assert isa_mod.resolve("neon") == "neon"


def test_isa_flags_cap_the_dispatch_and_drop_avx512_from_native_builds(monkeypatch):
    monkeypatch.setattr(isa_mod, "cpu_isas", lambda: {"avx512", "avx2"})
    assert isa_mod.flags("auto", native=True) == []
    assert isa_mod.flags("avx2", native=True) == ["-DGC_GEMM_ISA_CAP=1", "-mno-avx512f"]
    assert isa_mod.flags("avx2", native=False) == ["-DGC_GEMM_ISA_CAP=1"]
    assert isa_mod.flags("avx512", native=True) == ["-DGC_GEMM_ISA_CAP=2"]
    assert isa_mod.flags("portable", native=True) == ["-DGC_GEMM_ISA_CAP=0", "-mno-avx512f"]


def test_isa_compile_portable_runs_the_portable_kernels_and_agrees(monkeypatch):
    monkeypatch.delenv("GRAPHC_ISA", raising=False)
    best = graphc.compile(ONE_LAYER, dtype="float64", threads=1)
    plain = graphc.compile(ONE_LAYER, dtype="float64", threads=1, isa="portable")
    have = isa_mod.cpu_isas() or set()
    assert best.isa == ("avx512" if "avx512" in have else "avx2" if "avx2" in have
                        else "neon" if "neon" in have else "portable")
    assert plain.isa == "portable"
    assert plain.built.key != best.built.key                      # a build of its own
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 64))
    y = rng.integers(0, 10, 37).astype(np.int32)
    params = graphc.init_params(best, seed=0)
    a, ga = best.value_and_grad(x=x, y=y, **params)
    b, gb = plain.value_and_grad(x=x, y=y, **params)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-13)
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], rtol=1e-11, atol=1e-13)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_isa_emitted_makefile_selects_the_kernels(tmp_path):
    from graphc.tools.cli import main
    assert main(["emit", str(ONE_LAYER), "-o", str(tmp_path), "--isa", "avx2"]) == 0
    text = (tmp_path / "Makefile").read_text()
    assert "ISA ?= avx2" in text and "$(ISA_FLAGS_$(ISA))" in text
    flags = {line.split(" = ")[0][len("ISA_FLAGS_"):]: line.split(" = ")[1]
             for line in text.splitlines() if line.startswith("ISA_FLAGS_")}
    assert set(flags) == {"avx512", "avx2", "neon", "portable"}
    probe = tmp_path / "probe.c"
    probe.write_text('#include <stdio.h>\n#include "graphc_kernels.h"\n'
                     'int main(void) { printf("%d\\n", gc_kernels_isa()); return 0; }\n')
    have = isa_mod.cpu_isas() or set()
    for name, expected in (("portable", 0), ("avx2", 1 if "avx2" in have else 0)):
        exe = tmp_path / f"probe_{name}"
        subprocess.run(["gcc", "-O0", "-std=c99", *flags[name].split(), "-DGC_KERNELS_DOUBLE=0", "-o", str(exe),
                        str(probe), str(tmp_path / "graphc_kernels.c"), "-lm"], check=True, cwd=tmp_path)
        assert subprocess.run([str(exe)], capture_output=True, text=True).stdout.strip() == str(expected), name
