"""Stage 6, the toolchain. In: $CC (or PATH), the build's options (native, ISA, OpenMP, extra flags).
Out: the C compiler's command (find_compiler), its version (compiler_version), whether it has
OpenMP (openmp_supported), the flags of a build (compile_flags, build_flags) and what a cache key
hashes besides the build's own text (toolchain, builder_hash). The compiler is run only to ask
its version and to probe OpenMP, and both answers are memoised on disk: native/kernel_library.py
and native/build.py compile; native/fastload.py's key reads toolchain() too."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Sequence

import cffi

from graphc.core.errors import CompileError
from graphc.core import version
from graphc.core.paths import cache_root
from graphc.native.isa import flags as isa_flags

_OPENMP_PROBE = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def find_compiler() -> str:
    """$CC (which must name an executable; it may carry arguments), else cc, gcc or clang on PATH."""
    if os.environ.get("CC", "").strip():
        words = shlex.split(os.environ["CC"])
        exe = shutil.which(words[0])
        if exe is None:
            raise CompileError(f"the C compiler {words[0]!r} named by $CC does not exist or is not executable",
                               hint="set CC to an installed compiler (CC=gcc), or unset it to search PATH")
        return shlex.join([exe, *words[1:]])
    for candidate in ("cc", "gcc", "clang"):
        exe = shutil.which(candidate)
        if exe is not None:
            return exe
    raise CompileError(f"no C compiler found: none of cc, gcc, clang is on PATH ({os.environ.get('PATH', '')!r})",
                       hint="install gcc or clang, or set CC to a compiler's full path")


@functools.lru_cache(maxsize=None)
def compiler_version(cc: str) -> str:
    """The first lines of `cc --version` (part of the cache key).

    Memoised per process and under cache_root()/probes, keyed by the command and the identity of
    the executable it runs (its resolved path, size, inode and modification time): running the
    compiler costs 5-20 ms, which a cache hit in a fresh process must not pay. A replaced or
    upgraded compiler is another file (or the same one with a new time), so it is asked again."""
    memo = None
    with contextlib.suppress(OSError, ValueError, IndexError, TypeError):
        exe = os.path.realpath(shutil.which(shlex.split(cc)[0]) or "")
        st = os.stat(exe)
        tag = hashlib.sha256(f"{cc}\n{exe}\n{st.st_size}\n{st.st_ino}\n{st.st_mtime_ns}\n{st.st_ctime_ns}"
                             .encode()).hexdigest()[:24]
        memo = cache_root() / "probes" / f"cc-{tag}.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return str(json.loads(memo.read_text())["version"])
    try:
        run = subprocess.run([*shlex.split(cc), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        raise CompileError(f"cannot run the C compiler {cc!r}: {error}") from None
    text = (run.stdout.strip() or run.stderr.strip() or f"unknown (exit status {run.returncode})")
    text = "\n".join(text.splitlines()[:2])
    if memo is not None and run.returncode == 0:
        with contextlib.suppress(OSError):   # an unwritable cache only costs the run next time
            memo.parent.mkdir(parents=True, exist_ok=True)
            scratch = memo.with_name(f"{memo.name}.{os.getpid()}")
            scratch.write_text(json.dumps({"compiler": cc, "version": text}))
            os.replace(scratch, memo)
    return text


@functools.lru_cache(maxsize=None)
def openmp_supported(cc: str) -> bool:
    """Whether `cc -fopenmp` compiles and links a tiny OpenMP program.

    Memoised per process and, keyed by compiler path and version, under cache_root()/probes:
    the probe costs ~250 ms, which a cache hit in a fresh process must not pay."""
    tag = hashlib.sha256(f"{cc}\n{compiler_version(cc)}".encode()).hexdigest()[:16]
    memo = cache_root() / "probes" / f"openmp-{tag}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return bool(json.loads(memo.read_text())["openmp"])
    try:
        tmp = tempfile.TemporaryDirectory(prefix="graphc-openmp-")
        (Path(tmp.name) / "probe.c").write_text(_OPENMP_PROBE)
    except OSError:          # a full or unwritable temporary folder: no OpenMP this time, and no memo
        return False
    with tmp:
        try:
            ok = subprocess.run([*shlex.split(cc), "-fopenmp", "probe.c", "-o", "probe"], cwd=tmp.name,
                                capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    with contextlib.suppress(OSError):   # an unwritable cache only costs the probe next time
        memo.parent.mkdir(parents=True, exist_ok=True)
        scratch = memo.with_name(f"{memo.name}.{os.getpid()}")
        scratch.write_text(json.dumps({"compiler": cc, "openmp": ok}))
        os.replace(scratch, memo)
    return ok


def compile_flags(native: bool, openmp: bool) -> list[str]:
    """Our flags; never -ffast-math, which would break the NaN/inf behaviour checks rely on.
    -fno-math-errno only stops sqrt from setting errno (nothing reads it), which lets GCC
    vectorize it: Adam's update of the digits network ran 2.5x faster, with the same bits."""
    return (["-O3", "-std=c99", "-ffp-contract=fast", "-fno-math-errno"]
            + ["-march=native"] * native + ["-fopenmp"] * openmp)


def toolchain(cc: str) -> dict:
    """What cache_key hashes besides the build's own text and flags: the compiler, Python's build
    configuration, $CFLAGS/$CPPFLAGS/$LDFLAGS and the cffi, graphc and builder versions (shared
    with native/fastload.py's key, which must change whenever this does)."""
    return {
        "compiler": cc, "compiler_version": compiler_version(cc),
        "python": [sysconfig.get_config_var(v) for v in ("EXT_SUFFIX", "CFLAGS", "LDSHARED")],
        "environment": [os.environ.get(v, "") for v in ("CFLAGS", "CPPFLAGS", "LDFLAGS")],
        "cffi": cffi.__version__, "graphc": version.__version__, "builder": builder_hash(),
    }


def build_flags(native: bool, isa: str, cc: str, openmp: bool | None = None,
                extra_compile_args: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(compile flags, link flags) of a build: ours, the ISA's, OpenMP's when the compiler has it."""
    if openmp is None:
        openmp = openmp_supported(cc)
    flags = compile_flags(native, openmp) + isa_flags(isa, native) + list(extra_compile_args)
    return flags, (["-fopenmp"] if openmp else [])


_BUILDER = ("toolchain.py", "cache_entry.py", "kernel_library.py", "build.py")   # the builder's files


@functools.lru_cache(maxsize=None)
def builder_hash() -> str:
    """The hash of the builder's files (this one and the others _BUILDER names): changing the
    builder invalidates every cache entry."""
    digest = hashlib.sha256()
    for name in _BUILDER:
        digest.update(Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()
