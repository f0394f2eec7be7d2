"""The instruction set the kernel library's GEMMs run on: GRAPHC_ISA=avx512|avx2|portable (or
isa= of graphc.compile, --isa of graphc build/emit, ISA= of an emitted Makefile).

"auto" (the default) lets graphc_kernels.c take the best the CPU has, per call. Any other name
caps that choice with -DGC_GEMM_ISA_CAP (and, for a build with -march=native on an AVX-512
machine, -mno-avx512f, so that the model's own loops do not use AVX-512 either): the AVX2
kernels can then be built and timed on an AVX-512 machine. An instruction set the CPU lacks is
refused rather than silently replaced. `CompiledModel.isa` reads back the one that runs.

In: a name (or None: $GRAPHC_ISA, else "auto"). Out: compiler flags; the name of gc_kernels_isa()'s
value. NEON (aarch64) has no kernels of its own yet: "neon" is refused with that reason.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

from graphc.core.errors import ArgumentError

ISAS = ("auto", "avx512", "avx2", "portable")
CAP = {"avx512": 2, "avx2": 1, "portable": 0}           # graphc_kernels.c's GC_GEMM_ISA_CAP
NAME = {v: k for k, v in CAP.items()}                    # gc_kernels_isa()'s value -> name


def resolve(isa: str | None, this_cpu: bool = True) -> str:
    """The instruction set asked for: `isa`, else $GRAPHC_ISA, else "auto"; checked against this
    machine's CPU when the build runs here (this_cpu; not for emitted C, built elsewhere)."""
    where = "isa"
    if isa is None:
        isa, where = os.environ.get("GRAPHC_ISA", "").strip() or "auto", "GRAPHC_ISA"
    name = str(isa).lower()
    if name == "neon":
        raise ArgumentError(f"{where}={isa!r}: graphc's kernel library has no NEON kernels yet "
                            f"(aarch64 builds use its portable C)", hint="use 'portable' or 'auto'")
    if name not in ISAS:
        raise ArgumentError(f"{where}={isa!r} is not an instruction set graphc knows",
                            hint=f"one of {', '.join(ISAS)}")
    if this_cpu and name in ("avx512", "avx2"):
        have = cpu_isas()
        if have is not None and name not in have:
            raise ArgumentError(f"{where}={isa!r}, but this CPU ({platform.machine()}) has "
                                f"{', '.join(sorted(have)) or 'neither AVX2 nor AVX-512'}",
                                hint="choose one the CPU has, 'portable', or 'auto'")
    return name


def cpu_isas() -> set[str] | None:
    """{"avx512", "avx2"} as far as the CPU has them (Linux /proc/cpuinfo), or None when unknown."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(line.split(":", 1)[-1].split())
    have = set()
    if "avx512f" in flags:
        have.add("avx512")
    if {"avx2", "fma"} <= flags:
        have.add("avx2")
    return have


def flags(isa: str, native: bool) -> list[str]:
    """The compiler flags of a build (model and kernel library alike) for a resolved `isa`."""
    if isa == "auto":
        return []
    out = [f"-DGC_GEMM_ISA_CAP={CAP[isa]}"]
    if native and isa != "avx512" and "avx512" in (cpu_isas() or ()):
        out.append("-mno-avx512f")
    return out
