"""Stage 6, what the kernel library's build (native/kernel_library.py) and the model extension's
(native/build.py) share about a cache entry. In: an entry's folder, its build log, a failed
build's folder and source. Out: the entry's checks and clean-up (Corrupt, sha256_file, discard),
a full disk recognised in a compiler's output (out_of_space), and the CompileError of a failed
compile with a kept, line-numbered copy of its source (compile_failure, keep_failed). Also the
lock that serialises the builds of one process (PROCESS_LOCK). Runs no compiler."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from graphc.core.errors import CompileError

LOG_TAIL = 4000               # characters of compiler output quoted in a CompileError
PROCESS_LOCK = threading.Lock()         # cffi chdirs, and we redirect fds 1/2 and set $CC


class Corrupt(Exception):
    """A cache entry exists but cannot be trusted."""


def keep_failed(directory: Path, failed: Path, filename: str, source: str) -> str:
    """Keep the failed build folder (sources, cffi's wrapper, log) at `failed`, or, when that is full or
    read-only, in a temporary folder, plus a line-numbered copy of `source`; say where."""
    kept = None
    stem = Path(filename).stem
    for place in (failed, None):
        try:
            if place is None:
                place = Path(tempfile.mkdtemp(prefix=f"graphc-failed-{stem}-"))
                shutil.copytree(directory, place, dirs_exist_ok=True)
            elif place != directory:
                shutil.rmtree(place, ignore_errors=True)
                shutil.copytree(directory, place)
            numbered = place / f"{stem}.numbered.c"
            numbered.write_text("".join(f"{i:5d}  {line}\n" for i, line in enumerate(source.splitlines(), 1)))
            kept = f"line-numbered source kept at {numbered} (plain copy: {place / filename})"
            break
        except OSError as keep_error:
            if place == failed and failed != directory:
                shutil.rmtree(failed, ignore_errors=True)      # no half copy
            kept = kept or f"could not keep a copy of the source in {failed}: {keep_error}"
    return kept


def compile_failure(what: str, details: Sequence[str], output: Sequence[str], cut: str = "",
                    hint: str | None = None) -> CompileError:
    """The CompileError of a compile that failed: "the C compiler failed to build WHAT", a line
    per detail (the command, where the source is), then the compiler's output lines, indented;
    `cut` says which part of the output they are."""
    return CompileError(f"the C compiler failed to build {what}\n" + "".join(f"  {line}\n" for line in details)
                        + f"  compiler output{cut}:\n" + "".join(f"    {line}\n" for line in output), hint=hint)


def discard(entry: Path) -> None:
    """Move a corrupt entry aside (atomically), then delete it."""
    trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(entry, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def out_of_space(log: Path) -> str | None:
    """The line of the build log in which the compiler or linker said the disk is full, if any."""
    words = [os.strerror(e) for e in NO_SPACE]
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if any(w in line for w in words):
                return line.strip()
    return None


def sha256_file(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
