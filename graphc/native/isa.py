"""The instruction set the kernel library's GEMMs run on: GRAPHC_ISA=avx512|avx2|neon|portable (or
isa= of graphc.compile, --isa of graphc build/emit, ISA= of an emitted Makefile).

"auto" (the default) lets graphc_kernels.c take the best the CPU has, per call. Any other name
caps that choice with -DGC_GEMM_ISA_CAP (and, for a build with -march=native on an AVX-512
machine, -mno-avx512f, so that the model's own loops do not use AVX-512 either): the AVX2
kernels can then be built and timed on an AVX-512 machine. An instruction set the CPU lacks is
refused rather than silently replaced. `CompiledModel.isa` reads back the one that runs.

In: a name (or None: $GRAPHC_ISA, else "auto"). Out: compiler flags; the name of gc_kernels_isa()'s
value. NEON is AArch64's (part of its base architecture: "auto" takes it there, "portable" turns
it off); the x86 instruction sets are x86-64's.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

from graphc.core.errors import ArgumentError

ISAS = ("auto", "avx512", "avx2", "neon", "portable")
CAP = {"avx512": 2, "avx2": 1, "neon": 1, "portable": 0}     # graphc_kernels.c's GC_GEMM_ISA_CAP
NAME = {2: "avx512", 1: "avx2", 3: "neon", 0: "portable"}    # gc_kernels_isa()'s value -> name


def resolve(isa: str | None, this_cpu: bool = True) -> str:
    """The instruction set asked for: `isa`, else $GRAPHC_ISA, else "auto"; checked against this
    machine's CPU when the build runs here (this_cpu; not for emitted C, built elsewhere)."""
    where = "isa"
    if isa is None:
        isa, where = os.environ.get("GRAPHC_ISA", "").strip() or "auto", "GRAPHC_ISA"
    name = str(isa).lower()
    if name not in ISAS:
        raise ArgumentError(f"{where}={isa!r} is not an instruction set graphc knows",
                            hint=f"one of {', '.join(ISAS)}")
    if this_cpu and name in ("avx512", "avx2", "neon"):
        have = cpu_isas()
        if have is not None and name not in have:
            raise ArgumentError(f"{where}={isa!r}, but this CPU ({platform.machine()}) has "
                                f"{', '.join(sorted(have)) or 'none of AVX2, AVX-512 and NEON'}",
                                hint="choose one the CPU has, 'portable', or 'auto'")
    return name


def cpu_isas() -> set[str] | None:
    """{"avx512", "avx2"} as far as an x86-64 CPU has them (Linux /proc/cpuinfo), {"neon"} on
    AArch64, or None when unknown."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return {"neon"}
    if machine not in ("x86_64", "amd64"):
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
