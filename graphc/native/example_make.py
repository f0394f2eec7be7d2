"""Building an exported standalone folder (m.export(dir, standalone=True), `graphc emit`) with its
own Makefile, the kernel library compiled once for many folders.

graphc_kernels.c is the same text for every model of one graphc version, and compiling it is most of
a standalone build (about 1.7 of its 2 CPU-seconds under gcc at -O2). `make_example(folder, cc,
cflags, objects=KernelObjects(...))` compiles it by the Makefile's own rule (`make
graphc_kernels.o`) the first time, keeps the object, and builds the other folders with
`make KERNELS=that.o`: only their model's files are compiled.

Kept honest: an object is reused only for a folder whose graphc_kernels.c and .h are the same bytes
and whose rule compiles it by the same command (`make -n`: CC, CFLAGS, CPPFLAGS, ISA,
KERNEL_TYPES), by the same compiler binary; any difference compiles that folder's own library. The
program's own -D flags (`defines`: main.c's BATCH and DIM_*) are left out of the library's command
only when the library's text does not name them.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path


class KernelObjects:
    """A folder of compiled kernel libraries, keyed by what compiled them (module docstring);
    `directory` None: a temporary one for this process, removed at exit. `compiled` and `reused`
    count the builds that compiled the library and those that linked a kept object."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self._directory = Path(directory) if directory is not None else None
        self.compiled = 0
        self.reused = 0

    @property
    def directory(self) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="graphc-kernel-objects-"))
            atexit.register(shutil.rmtree, self._directory, True)
        self._directory.mkdir(parents=True, exist_ok=True)
        return self._directory


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def make_example(directory: str | os.PathLike, cc: str, cflags: str, defines: str = "",
                 objects: KernelObjects | None = None, targets: tuple[str, ...] = (),
                 timeout: float = 600) -> subprocess.CompletedProcess:
    """`make -s CC=cc CFLAGS="cflags defines" targets...` in an exported folder; with `objects`,
    the kernel library is linked from a kept object when one was compiled from the same bytes by
    the same command (else compiled by the Makefile's rule and kept). Returns the completed make
    (of the library's compile when that one failed or warned)."""
    directory = Path(directory)
    program = ["make", "-s", f"CC={cc}", f"CFLAGS={f'{cflags} {defines}'.strip()}"]
    text = (directory / "Makefile").read_text()
    library = re.search(r"^KERNELS \?= (\S+)\.c$", text, re.M)
    if objects is None or library is None:          # amalgamated: one translation unit
        return _run([*program, *targets], directory, timeout)
    stem = library.group(1)
    source, header = (directory / f"{stem}.c").read_bytes(), (directory / f"{stem}.h").read_bytes()
    named = [d for d in re.findall(r"-D(\w+)", defines) if re.search(rb"\b%s\b" % d.encode(), source + header)]
    lib_flags = f"{cflags} {' '.join(f'-D{d}' for d in named)}".strip() if named else cflags
    library_make = ["make", f"CC={cc}", f"CFLAGS={lib_flags}"]
    command = _run([*library_make, "-n", "-B", f"{stem}.o"], directory, timeout)
    if command.returncode:
        return command
    compiler = shutil.which(cc) or cc
    key = hashlib.sha256(b"\0".join([compiler.encode(), command.stdout.encode(), source, header])).hexdigest()[:24]
    kept = objects.directory / f"{stem}-{key}.o"
    if kept.exists():
        objects.reused += 1
    else:
        built = _run([*library_make, "-s", f"{stem}.o"], directory, timeout)
        if built.returncode or built.stderr.strip():
            return built
        partial = kept.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(directory / f"{stem}.o", partial)
        os.replace(partial, kept)                   # whole, or not there: another process may share the folder
        (directory / f"{stem}.o").unlink()
        objects.compiled += 1
    return _run([*program, f"KERNELS={kept}", *targets], directory, timeout)
