"""Stage 6, the kernel library. In: its text (codegen's KernelSources: graphc_kernels.c and .h,
the same for every model), a compiler and the flags of a model build. Out: the path of its
compiled object (position-independent, hidden symbols), compiled once per compiler and flags
into cache_root()/kernels/KEY under an exclusive lock and published by atomic rename, which
native/build.py links into each model's extension (build_kernels for native/export.py)."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from graphc.core.errors import CompileError
from graphc.core import version
from graphc.core.paths import cache_root
from graphc.native.cache_entry import (LOG_TAIL, NO_SPACE, PROCESS_LOCK, Corrupt, compile_failure, discard,
                                       keep_failed, out_of_space, sha256_file)
from graphc.native.toolchain import builder_hash, compiler_version, find_compiler

_KERNELS_FLAGS = ["-fPIC", "-fvisibility=hidden"]   # the library object, beyond the model's own flags
_KERNELS: dict[tuple[str, str], Path] = {}   # (cache root, kernel library key) -> its checked object


@dataclass(frozen=True)
class KernelsJob:
    """The kernel library (graphc_kernels.c and .h, the same text for every model) for one compiler and
    set of flags; `key` hashes all of it. It is compiled to one position-independent object with
    hidden symbols: linked into a model's extension, it is that extension's own copy."""
    source: str
    header: str
    source_name: str
    header_name: str
    cc: str
    flags: list
    key: str

    @property
    def object_name(self) -> str:
        return Path(self.source_name).with_suffix(".o").name

    @property
    def command(self) -> list[str]:
        return [*shlex.split(self.cc), *self.flags, *_KERNELS_FLAGS, "-c", self.source_name, "-o", self.object_name]




def kernels_key(source: str, header: str, flags: Sequence[str], cc: str) -> str:
    """SHA-256 of the kernel library's text, its full compile command and the graphc/builder versions."""
    material = {
        "kernel library": source, "header": header, "flags": list(flags), "library_flags": _KERNELS_FLAGS,
        "compiler": cc, "compiler_version": compiler_version(cc),
        "graphc": version.__version__, "builder": builder_hash(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def build_kernels(kernels, flags: Sequence[str], cache_dir: str | os.PathLike | None = None) -> Path:
    """The kernel library (codegen's KernelSources) compiled with the compiler find_compiler() names and
    `flags` (the flags of a model build, as its manifest records them): the path of its cached object,
    compiled if the cache has none; in a temporary folder, with a warning, if the cache is not writable."""
    job = kernels_job(kernels, find_compiler(), flags)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    with PROCESS_LOCK:
        try:
            return kernels_cached(job, root)
        except OSError as error:
            where = Path(tempfile.mkdtemp(prefix="graphc-kernels-"))
            warnings.warn(f"graphc: the cache folder {root} is not writable ({error}); building the kernel library "
                          f"in {where} instead, which will not be reused", RuntimeWarning, stacklevel=2)
            return kernels_elsewhere(job, root, where)


def kernels_job(kernels, cc: str, flags: Sequence[str]) -> KernelsJob:
    flags = [*flags, *getattr(kernels, "defines", ())]
    return KernelsJob(kernels.source, kernels.header, kernels.source_name, kernels.header_name, cc, flags,
                       kernels_key(kernels.source, kernels.header, flags, cc))


def kernels_cached(job: KernelsJob, root: Path) -> Path:
    """The object of root/kernels/KEY, built under an exclusive lock and published by atomic rename if
    missing (the model builds of one process and of many share it)."""
    memo = (str(root), job.key)
    if memo in _KERNELS and _KERNELS[memo].is_file():
        return _KERNELS[memo]
    base = root / "kernels"
    final = base / job.key
    with contextlib.suppress(Corrupt):
        found = _kernels_entry(job, final)
        if found is not None:
            _KERNELS[memo] = found
            return found
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{job.key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = _kernels_entry(job, final)
        except Corrupt:
            discard(final)
            found = None
        if found is None:
            for stale in base.glob(f".tmp-{job.key}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{job.key}-", dir=base))
            try:
                _compile_kernels_into(job, tmp, failed=root / "failed" / f"kernels-{job.key}")
                os.chmod(tmp, 0o755)
                if not final.is_dir():
                    os.rename(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            try:
                found = _kernels_entry(job, final)
            except Corrupt as error:
                discard(final)
                raise CompileError(f"the kernel library compiled but its cache entry is unusable: {error}") from None
            if found is None:
                raise CompileError(f"the kernel library compiled but its cache entry {final} disappeared")
    _KERNELS[memo] = found
    return found


def kernels_elsewhere(job: KernelsJob | None, root: Path, where: Path) -> Path | None:
    """For a build outside the cache: the cache's object if it has a sound one, else one built in where/kernels."""
    if job is None:
        return None
    with contextlib.suppress(Corrupt, OSError):
        found = _kernels_entry(job, root / "kernels" / job.key)
        if found is not None:
            return found
    directory = where / "kernels"
    directory.mkdir(parents=True, exist_ok=True)
    _compile_kernels_into(job, directory, failed=directory)
    try:
        found = _kernels_entry(job, directory)
    except Corrupt as error:
        raise CompileError(f"the kernel library compiled but is unusable: {error}") from None
    if found is None:
        raise CompileError(f"the kernel library compiled but {directory} disappeared")
    return found


def _kernels_entry(job: KernelsJob, directory: Path) -> Path | None:
    """The entry's object; None if there is no entry; Corrupt if it is there but unusable."""
    if not directory.is_dir():
        return None
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        found = directory / manifest["object"]
        digest = sha256_file(found)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise Corrupt(f"unreadable manifest or object in {directory}: {error}") from None
    if manifest.get("key") != job.key:
        raise Corrupt(f"{directory}/manifest.json describes another build")
    if digest != manifest.get("object_sha256"):
        raise Corrupt(f"{found} does not match its recorded sha256 (truncated or corrupted)")
    return found


def _compile_kernels_into(job: KernelsJob, directory: Path, failed: Path) -> None:
    """Write the library's source and header into `directory`, compile its object there, write
    manifest.json last. A compiler that runs out of room raises OSError(ENOSPC), as the model build does."""
    (directory / job.source_name).write_text(job.source)
    (directory / job.header_name).write_text(job.header)
    log = directory / "build.log"
    log.write_text(f"graphc build of the kernel library (key {job.key})\ncompiler: {job.cc}\n"
                   f"  {compiler_version(job.cc).splitlines()[0]}\ncommand: {shlex.join(job.command)}\n\n")
    try:
        run = subprocess.run(job.command, cwd=directory, capture_output=True, text=True, errors="replace",
                             timeout=600)
    except (OSError, subprocess.SubprocessError) as error:
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            raise
        raise CompileError(f"cannot run the C compiler {job.cc!r} to build the kernel library: {error}",
                           hint="set CC to an installed compiler (CC=gcc)") from None
    with open(log, "a") as text:
        text.write(run.stdout + run.stderr)
    if run.returncode != 0 or not (directory / job.object_name).is_file():
        full = out_of_space(log)
        if full:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: the compiler, building in {directory}, "
                                        f"said {full!r}")
        output = run.stdout + run.stderr or f"(no output; exit status {run.returncode})"
        kept = keep_failed(directory, failed, job.source_name, job.source)
        tail = output[-LOG_TAIL:]
        raise compile_failure(f"the kernel library {job.object_name} (exit status {run.returncode})",
                              [f"command: {shlex.join(job.command)}   (in {directory})", kept],
                              tail.splitlines(), f" (last {LOG_TAIL} characters)" if tail != output else "",
                              hint=f"line numbers in the compiler output refer to {job.source_name}")
    manifest = {"key": job.key, "object": job.object_name,
                "object_sha256": sha256_file(directory / job.object_name), "command": job.command,
                "compiler": job.cc, "compiler_version": compiler_version(job.cc),
                "graphc": version.__version__, "pid": os.getpid()}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
