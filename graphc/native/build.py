"""Stage 6. In: generated C text (source, header, cffi declarations), the kernel library's text
(graphc_kernels.c/.h) and compiler options.
Out: a loaded cffi extension (BuiltModule), compiled once per content hash and cached on disk; the
kernel library is compiled once per compiler and flags into the same cache (native/kernel_library.py),
and each model's extension links it. The compiler and flags are native/toolchain.py's, the entry
checks and failure reports native/cache_entry.py's. Must not know anything about graphs, shapes or
ops: it only ever sees text."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import cffi

from graphc.core.errors import CompileError
from graphc.core import version
from graphc.core.paths import cache_root
from graphc.native.cache_entry import (LOG_TAIL, NO_SPACE, PROCESS_LOCK, Corrupt, compile_failure, discard,
                                       keep_failed, out_of_space, sha256_file)
from graphc.native.kernel_library import KernelsJob, kernels_cached, kernels_elsewhere, kernels_job
# native/fastload.py reads find_compiler, build_flags and toolchain as build.X
from graphc.native.toolchain import build_flags, compiler_version, find_compiler, toolchain

_LOADED: dict[str, "BuiltModule"] = {}   # key -> module: an .so may be imported once per process


@dataclass
class BuiltModule:
    ffi: object          # the module's cffi FFI instance
    lib: object          # the module's lib (C functions)
    directory: Path      # the cache entry: NAME.c, NAME.h, the .so, build.log, manifest.json
    key: str             # hex sha256 cache key
    cached: bool         # True when loaded from cache without compiling
    seconds: float       # wall time of build (or of load when cached)
    library: Path        # path of the compiled extension (.so)




@dataclass(frozen=True)
class _Job:
    """Everything one build needs; `key` hashes all of it."""
    name: str
    source: str
    header: str
    cdef: str
    cc: str
    flags: list
    link_args: list
    key: str
    kernels: KernelsJob | None = None

    @property
    def module(self) -> str:
        return f"_graphc_{re.sub(r'[^A-Za-z0-9_]', '_', self.name)}_{self.key[:16]}"




def cache_key(name: str, source: str, header: str, cdef: str, flags: Sequence[str],
              link_args: Sequence[str], cc: str, kernels: str | None = None) -> str:
    """SHA-256 over the inputs, the full compiler command, the ABI, and the cffi/graphc/builder versions;
    `kernels` is the key of the kernel library the module links (kernels_key), or None."""
    material = {
        "name": name, "source": source, "header": header, "cdef": cdef, "kernels": kernels,
        "flags": list(flags), "link_args": list(link_args), "libraries": ["m"], **toolchain(cc),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def build(name: str, source: str, header: str, cdef: str, *, kernels=None, extra_compile_args: Sequence[str] = (),
          native: bool = True, openmp: bool | None = None, isa: str = "auto", defines: Sequence[str] = (),
          cache_dir: str | os.PathLike | None = None) -> BuiltModule:
    """Compile `source` (which includes NAME.h) as a cffi module, or load it from the cache.

    kernels: the kernel library `source` calls (an object with the texts `source` and `header`, the
    file names `source_name` and `header_name` and optionally `defines`, codegen's KernelSources), or
    None; it is compiled with the same compiler and flags (and its defines), once per cache
    (root/kernels/KEY), and linked into the module.
    openmp: None uses it when the compiler supports it. isa: a resolved instruction set
    (native/isa.py), whose flags join the others. cache_dir: overrides cache_root().
    defines: -D flags for the model's source only (GC_MAX_THREADS=T), not the kernel library.
    """
    start = time.perf_counter()
    if not name or name.startswith(".") or any(c in name for c in '/\\"\0'):
        raise ValueError(f"build name {name!r} must be a plain file name (it names NAME.c and NAME.h)")
    cc = find_compiler()
    flags, link_args = build_flags(native, isa, cc, openmp, extra_compile_args)
    library = kernels_job(kernels, cc, flags) if kernels is not None else None
    flags = flags + list(defines)
    job = _Job(name, source, header, cdef, cc, flags, link_args,
               cache_key(name, source, header, cdef, flags, link_args, cc, library.key if library else None), library)
    with PROCESS_LOCK:
        if job.key in _LOADED:
            return replace(_LOADED[job.key], cached=True, seconds=time.perf_counter() - start)
        root = Path(cache_dir) if cache_dir is not None else cache_root()
        try:
            built = _build_cached(job, root)
        except OSError as error:
            try:
                where = Path(tempfile.mkdtemp(prefix=f"graphc-{name}-"))
            except OSError as temp_error:
                raise CompileError(f"nowhere to build {name}: the cache folder {root} is not writable "
                                   f"({error}), nor is the temporary folder ({temp_error})") from None
            warnings.warn(f"graphc: the cache folder {root} is not writable ({error}); building {name} "
                          f"in {where} instead, which will not be reused", RuntimeWarning, stacklevel=2)
            try:
                _compile_into(job, where, failed=where, kernels=kernels_elsewhere(job.kernels, root, where))
            except OSError as temp_error:    # full too: say so, with the source's path, never a bare OSError
                source = where / f"{name}.c"
                raise CompileError(
                    f"nowhere to build {name}: the cache folder {root} is not writable ({error}), nor is the "
                    f"temporary folder {where} ({temp_error}); the generated source "
                    + (f"is at {source}" if source.is_file() else f"could not be written to {source}"),
                    hint="free some disk space, or point GRAPHC_CACHE_DIR (and TMPDIR) at a folder with room") from None
            built = _load_fresh(job, where)
        built.seconds = time.perf_counter() - start
        _LOADED[job.key] = built
        return built


def load_cached(name: str, key: str, module: str, cache_dir: str | os.PathLike | None = None) -> BuiltModule | None:
    """The cache entry of a build whose key is already known (native/fastload.py's index), loaded
    with the checks of a cache hit of build() (manifest, sha256 of the library); None when it is
    missing or fails them (then build() as usual). Compiles nothing and runs no compiler."""
    start = time.perf_counter()
    job = _Job(name, "", "", "", "", [], [], key)     # _load_entry reads only the key and module name
    if job.module != module:
        return None
    with PROCESS_LOCK:
        if key in _LOADED:
            return replace(_LOADED[key], cached=True, seconds=time.perf_counter() - start)
        root = Path(cache_dir) if cache_dir is not None else cache_root()
        try:
            built = _load_entry(job, root / key)
        except Corrupt:
            return None
        if built is None:
            return None
        built.seconds = time.perf_counter() - start
        _LOADED[key] = built
        return built


def _build_cached(job: _Job, root: Path) -> BuiltModule:
    """Load root/KEY, or build it under an exclusive lock and publish it by atomic rename."""
    final = root / job.key
    with contextlib.suppress(Corrupt):      # lock-free fast path: entries only appear whole
        module = _load_entry(job, final)
        if module is not None:
            return module
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{job.key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)     # released when the file closes
        try:
            module = _load_entry(job, final)  # another process may have built it while we waited
            if module is not None:
                return module
        except Corrupt:
            discard(final)
        for stale in root.glob(f".tmp-{job.key}-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        kernels = kernels_cached(job.kernels, root) if job.kernels is not None else None
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{job.key}-", dir=root))
        try:
            _compile_into(job, tmp, failed=root / "failed" / job.key, kernels=kernels)
            os.chmod(tmp, 0o755)             # mkdtemp made it private; a cache entry is readable
            if not final.is_dir():           # it can exist only where flock is a no-op: then theirs wins
                os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            return _load_fresh(job, final)
        except CompileError:
            discard(final)                  # never leave an entry that cannot load
            raise


def _load_entry(job: _Job, directory: Path) -> BuiltModule | None:
    """The entry's module; None if there is no entry; Corrupt if it is there but unusable."""
    start = time.perf_counter()
    if not directory.is_dir():
        return None
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        library = directory / manifest["library"]
        digest = sha256_file(library)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise Corrupt(f"unreadable manifest or library in {directory}: {error}") from None
    if manifest.get("key") != job.key or manifest.get("module") != job.module:
        raise Corrupt(f"{directory}/manifest.json describes another build")
    if digest != manifest.get("library_sha256"):
        raise Corrupt(f"{library} does not match its recorded sha256 (truncated or corrupted)")
    try:
        module = _import(job.module, library)
    except Exception as error:
        raise Corrupt(f"{library} does not import: {error}") from None
    return BuiltModule(module.ffi, module.lib, directory, job.key, True, time.perf_counter() - start, library)


def _load_fresh(job: _Job, directory: Path) -> BuiltModule:
    """Load a library just built; failing here is a build failure, not a corrupt cache."""
    try:
        built = _load_entry(job, directory)
        if built is None:
            raise Corrupt(f"{directory} disappeared")
    except Corrupt as error:
        raise CompileError(f"{job.name} compiled but cannot be loaded: {error}") from None
    return replace(built, cached=False)


def _compile_into(job: _Job, directory: Path, failed: Path, kernels: Path | None = None) -> None:
    """Write NAME.c and NAME.h (and the kernel library's header) into `directory`, compile the cffi
    module there, linking the kernel library object `kernels`, and write manifest.json last."""
    (directory / f"{job.name}.c").write_text(job.source)
    (directory / f"{job.name}.h").write_text(job.header)
    if job.kernels is not None:
        (directory / job.kernels.header_name).write_text(job.kernels.header)
    log = directory / "build.log"
    log.write_text(f"graphc build of {job.name} (key {job.key})\ncompiler: {job.cc}\n"
                   f"  {compiler_version(job.cc).splitlines()[0]}\nflags: {shlex.join(job.flags)}\n\n")
    ffi = cffi.FFI()
    try:
        ffi.cdef(job.cdef)
        # Including NAME.c rather than pasting it keeps the compiler's line numbers those of NAME.c.
        from cffi.recompiler import make_c_source   # (with pycparser: only a build needs it)
        wrapper = directory / f"{job.module}.c"     # cffi's C of the extension, which includes NAME.h
        preamble = (f'#include "{job.kernels.header_name}"\n' if job.kernels is not None else "") + \
            f'#include "{job.name}.h"\n'
        make_c_source(ffi, job.module, preamble, str(wrapper))
        library = directory / f"{job.module}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
        _run_compilers(extension_commands(job, wrapper.name, library.name, directory, kernels), directory, log)
        if not library.is_file():
            raise FileNotFoundError(f"the compiler reported success but wrote no {library.name}")
    except Exception as error:   # cffi and the compiler fail in many ways; report them all alike
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            raise                    # cffi could not write its wrapper: a full folder, as below
        full = out_of_space(log)
        if full:                     # the compiler or linker could not write: the folder is full, the C is fine
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: the compiler, building in {directory}, "
                                        f"said {full!r}") from None
        raise _compile_error(job, directory, failed, error) from None
    for intermediate in [directory / f"{job.module}.c", *directory.glob("*.o")]:
        intermediate.unlink(missing_ok=True)
    manifest = {"key": job.key, "name": job.name, "module": job.module, "library": library.name,
                "library_sha256": sha256_file(library), "flags": job.flags, "link_args": job.link_args,
                "compiler": job.cc, "compiler_version": compiler_version(job.cc),
                "kernels": job.kernels.key if job.kernels is not None else None,
                "graphc": version.__version__, "pid": os.getpid()}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def extension_commands(job: _Job, wrapper: str, library: str, directory: Path,
                       kernels: Path | None) -> list[list[str]]:
    """The compiler runs that build the extension module `library`: NAME.c with our flags and cffi's
    C of the extension (`wrapper`: argument conversion, no model code) at -O1, both at once, then
    one link with the kernel library's object and libm. What setuptools' build_ext would run, without
    importing setuptools, and with the wrapper (most of the text, Python.h included) at a cheaper
    optimisation level: together about half of a first build's time. -DNDEBUG and -fPIC as Python
    builds extensions."""
    paths = sysconfig.get_paths()
    cc = shlex.split(job.cc)
    includes = [f"-I{d}" for d in dict.fromkeys([str(directory), paths["include"], paths["platinclude"]])]
    model = f"{job.name}.o"
    shared = ["-bundle", "-undefined", "dynamic_lookup"] if sys.platform == "darwin" else ["-shared"]
    return [[*cc, "-DNDEBUG", "-fPIC", f"-I{directory}", *job.flags, "-c", f"{job.name}.c", "-o", model],
            [*cc, "-DNDEBUG", "-fPIC", *includes, *job.flags, "-O1", "-c", wrapper, "-o", f"{Path(wrapper).stem}.o"],
            [*cc, f"{Path(wrapper).stem}.o", model, *([str(kernels)] if kernels is not None else []), *shared,
             *job.link_args, "-lm", "-o", library]]


def _run_compilers(commands: list[list[str]], directory: Path, log: Path) -> None:
    """Run the compile commands (all but the last) at once, then the link (the last), in `directory`,
    each command and its output appended to `log`; CompileError at the first that fails."""
    def finish(started):
        for command, process in started:
            out, _ = process.communicate(timeout=600)
            with open(log, "a") as text:
                text.write(f"command: {shlex.join(command)}\n{out}")
            if process.returncode != 0:
                for _, other in started:
                    other.kill()
                    other.wait()
                raise CompileError(f"the compiler exited with status {process.returncode}")

    for group in (commands[:-1], commands[-1:]):
        started = []
        try:
            for command in group:
                started.append((command, subprocess.Popen(command, cwd=directory, stdout=subprocess.PIPE,
                                                          stderr=subprocess.STDOUT, text=True, errors="replace")))
        except BaseException:
            for _, process in started:
                process.kill()
                process.wait()
            raise
        finish(started)


def _compile_error(job: _Job, directory: Path, failed: Path, error: Exception) -> CompileError:
    """A CompileError naming the command, the compiler's output and a kept, line-numbered source."""
    output = (directory / "build.log").read_text(errors="replace")
    kept = keep_failed(directory, failed, f"{job.name}.c", job.source)
    tail = output[-LOG_TAIL:]
    return compile_failure(f"{job.name} ({type(error).__name__}: {error})",
                           [f"compiler: {job.cc}   compile flags: {shlex.join(job.flags)}   "
                            f"link flags: {shlex.join([*job.link_args, '-lm'])} (the commands are in the output)", kept],
                           tail.splitlines(), f" (last {LOG_TAIL} characters)" if tail != output else "",
                           hint=f"line numbers in the compiler output refer to {job.name}.c")


def _import(module_name: str, library: Path):
    """Import the extension at `library` without touching sys.path or sys.modules."""
    spec = importlib.util.spec_from_file_location(module_name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"{library} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
