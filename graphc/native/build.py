"""Stage 6. In: generated C text (source, header, cffi declarations), the kernel library's text
(graphc_kernels.c/.h) and compiler options.
Out: a loaded cffi extension (BuiltModule), compiled once per content hash and cached on disk; the
kernel library is compiled once per compiler and flags into the same cache, and each model's
extension links it. Must not know anything about graphs, shapes or ops: it only ever sees text."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
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
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import cffi

from graphc.core.errors import CompileError
from graphc.core import version
from graphc.core.paths import cache_root
from graphc.native.isa import flags as isa_flags

_LOG_TAIL = 4000               # characters of compiler output quoted in a CompileError
_LOADED: dict[str, "BuiltModule"] = {}   # key -> module: an .so may be imported once per process
_PROCESS_LOCK = threading.Lock()         # cffi chdirs, and we redirect fds 1/2 and set $CC
_OPENMP_PROBE = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"
_KERNELS_FLAGS = ["-fPIC", "-fvisibility=hidden"]   # the library object, beyond the model's own flags
_KERNELS: dict[tuple[str, str], Path] = {}   # (cache root, kernel library key) -> its checked object


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
class _KernelsJob:
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
    kernels: _KernelsJob | None = None

    @property
    def module(self) -> str:
        return f"_graphc_{re.sub(r'[^A-Za-z0-9_]', '_', self.name)}_{self.key[:16]}"


class _Corrupt(Exception):
    """A cache entry exists but cannot be trusted."""


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


def cache_key(name: str, source: str, header: str, cdef: str, flags: Sequence[str],
              link_args: Sequence[str], cc: str, kernels: str | None = None) -> str:
    """SHA-256 over the inputs, the full compiler command, the ABI, and the cffi/graphc/builder versions;
    `kernels` is the key of the kernel library the module links (kernels_key), or None."""
    material = {
        "name": name, "source": source, "header": header, "cdef": cdef, "kernels": kernels,
        "flags": list(flags), "link_args": list(link_args), "libraries": ["m"], **toolchain(cc),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def toolchain(cc: str) -> dict:
    """What cache_key hashes besides the build's own text and flags: the compiler, Python's build
    configuration, $CFLAGS/$CPPFLAGS/$LDFLAGS and the cffi, graphc and builder versions (shared
    with native/fastload.py's key, which must change whenever this does)."""
    return {
        "compiler": cc, "compiler_version": compiler_version(cc),
        "python": [sysconfig.get_config_var(v) for v in ("EXT_SUFFIX", "CFLAGS", "LDSHARED")],
        "environment": [os.environ.get(v, "") for v in ("CFLAGS", "CPPFLAGS", "LDFLAGS")],
        "cffi": cffi.__version__, "graphc": version.__version__, "builder": _builder_hash(),
    }


def build_flags(native: bool, isa: str, cc: str, openmp: bool | None = None,
                extra_compile_args: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(compile flags, link flags) of a build: ours, the ISA's, OpenMP's when the compiler has it."""
    if openmp is None:
        openmp = openmp_supported(cc)
    flags = compile_flags(native, openmp) + isa_flags(isa, native) + list(extra_compile_args)
    return flags, (["-fopenmp"] if openmp else [])


def kernels_key(source: str, header: str, flags: Sequence[str], cc: str) -> str:
    """SHA-256 of the kernel library's text, its full compile command and the graphc/builder versions."""
    material = {
        "kernel library": source, "header": header, "flags": list(flags), "library_flags": _KERNELS_FLAGS,
        "compiler": cc, "compiler_version": compiler_version(cc),
        "graphc": version.__version__, "builder": _builder_hash(),
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
    library = _kernels_job(kernels, cc, flags) if kernels is not None else None
    flags = flags + list(defines)
    job = _Job(name, source, header, cdef, cc, flags, link_args,
               cache_key(name, source, header, cdef, flags, link_args, cc, library.key if library else None), library)
    with _PROCESS_LOCK:
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
                _compile_into(job, where, failed=where, kernels=_kernels_elsewhere(job.kernels, root, where))
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
    with _PROCESS_LOCK:
        if key in _LOADED:
            return replace(_LOADED[key], cached=True, seconds=time.perf_counter() - start)
        root = Path(cache_dir) if cache_dir is not None else cache_root()
        try:
            built = _load_entry(job, root / key)
        except _Corrupt:
            return None
        if built is None:
            return None
        built.seconds = time.perf_counter() - start
        _LOADED[key] = built
        return built


def build_kernels(kernels, flags: Sequence[str], cache_dir: str | os.PathLike | None = None) -> Path:
    """The kernel library (codegen's KernelSources) compiled with the compiler find_compiler() names and
    `flags` (the flags of a model build, as its manifest records them): the path of its cached object,
    compiled if the cache has none; in a temporary folder, with a warning, if the cache is not writable."""
    job = _kernels_job(kernels, find_compiler(), flags)
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    with _PROCESS_LOCK:
        try:
            return _kernels_cached(job, root)
        except OSError as error:
            where = Path(tempfile.mkdtemp(prefix="graphc-kernels-"))
            warnings.warn(f"graphc: the cache folder {root} is not writable ({error}); building the kernel library "
                          f"in {where} instead, which will not be reused", RuntimeWarning, stacklevel=2)
            return _kernels_elsewhere(job, root, where)


def _kernels_job(kernels, cc: str, flags: Sequence[str]) -> _KernelsJob:
    flags = [*flags, *getattr(kernels, "defines", ())]
    return _KernelsJob(kernels.source, kernels.header, kernels.source_name, kernels.header_name, cc, flags,
                       kernels_key(kernels.source, kernels.header, flags, cc))


def _kernels_cached(job: _KernelsJob, root: Path) -> Path:
    """The object of root/kernels/KEY, built under an exclusive lock and published by atomic rename if
    missing (the model builds of one process and of many share it)."""
    memo = (str(root), job.key)
    if memo in _KERNELS and _KERNELS[memo].is_file():
        return _KERNELS[memo]
    base = root / "kernels"
    final = base / job.key
    with contextlib.suppress(_Corrupt):
        found = _kernels_entry(job, final)
        if found is not None:
            _KERNELS[memo] = found
            return found
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{job.key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = _kernels_entry(job, final)
        except _Corrupt:
            _discard(final)
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
            except _Corrupt as error:
                _discard(final)
                raise CompileError(f"the kernel library compiled but its cache entry is unusable: {error}") from None
            if found is None:
                raise CompileError(f"the kernel library compiled but its cache entry {final} disappeared")
    _KERNELS[memo] = found
    return found


def _kernels_elsewhere(job: _KernelsJob | None, root: Path, where: Path) -> Path | None:
    """For a build outside the cache: the cache's object if it has a sound one, else one built in where/kernels."""
    if job is None:
        return None
    with contextlib.suppress(_Corrupt, OSError):
        found = _kernels_entry(job, root / "kernels" / job.key)
        if found is not None:
            return found
    directory = where / "kernels"
    directory.mkdir(parents=True, exist_ok=True)
    _compile_kernels_into(job, directory, failed=directory)
    try:
        found = _kernels_entry(job, directory)
    except _Corrupt as error:
        raise CompileError(f"the kernel library compiled but is unusable: {error}") from None
    if found is None:
        raise CompileError(f"the kernel library compiled but {directory} disappeared")
    return found


def _kernels_entry(job: _KernelsJob, directory: Path) -> Path | None:
    """The entry's object; None if there is no entry; _Corrupt if it is there but unusable."""
    if not directory.is_dir():
        return None
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        found = directory / manifest["object"]
        digest = _sha256_file(found)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _Corrupt(f"unreadable manifest or object in {directory}: {error}") from None
    if manifest.get("key") != job.key:
        raise _Corrupt(f"{directory}/manifest.json describes another build")
    if digest != manifest.get("object_sha256"):
        raise _Corrupt(f"{found} does not match its recorded sha256 (truncated or corrupted)")
    return found


def _compile_kernels_into(job: _KernelsJob, directory: Path, failed: Path) -> None:
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
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            raise
        raise CompileError(f"cannot run the C compiler {job.cc!r} to build the kernel library: {error}",
                           hint="set CC to an installed compiler (CC=gcc)") from None
    with open(log, "a") as text:
        text.write(run.stdout + run.stderr)
    if run.returncode != 0 or not (directory / job.object_name).is_file():
        full = _out_of_space(log)
        if full:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: the compiler, building in {directory}, "
                                        f"said {full!r}")
        output = run.stdout + run.stderr or f"(no output; exit status {run.returncode})"
        kept = _keep_failed(directory, failed, job.source_name, job.source)
        tail = output[-_LOG_TAIL:]
        raise compile_failure(f"the kernel library {job.object_name} (exit status {run.returncode})",
                              [f"command: {shlex.join(job.command)}   (in {directory})", kept],
                              tail.splitlines(), f" (last {_LOG_TAIL} characters)" if tail != output else "",
                              hint=f"line numbers in the compiler output refer to {job.source_name}")
    manifest = {"key": job.key, "object": job.object_name,
                "object_sha256": _sha256_file(directory / job.object_name), "command": job.command,
                "compiler": job.cc, "compiler_version": compiler_version(job.cc),
                "graphc": version.__version__, "pid": os.getpid()}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _build_cached(job: _Job, root: Path) -> BuiltModule:
    """Load root/KEY, or build it under an exclusive lock and publish it by atomic rename."""
    final = root / job.key
    with contextlib.suppress(_Corrupt):      # lock-free fast path: entries only appear whole
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
        except _Corrupt:
            _discard(final)
        for stale in root.glob(f".tmp-{job.key}-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        kernels = _kernels_cached(job.kernels, root) if job.kernels is not None else None
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
            _discard(final)                  # never leave an entry that cannot load
            raise


def _load_entry(job: _Job, directory: Path) -> BuiltModule | None:
    """The entry's module; None if there is no entry; _Corrupt if it is there but unusable."""
    start = time.perf_counter()
    if not directory.is_dir():
        return None
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        library = directory / manifest["library"]
        digest = _sha256_file(library)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _Corrupt(f"unreadable manifest or library in {directory}: {error}") from None
    if manifest.get("key") != job.key or manifest.get("module") != job.module:
        raise _Corrupt(f"{directory}/manifest.json describes another build")
    if digest != manifest.get("library_sha256"):
        raise _Corrupt(f"{library} does not match its recorded sha256 (truncated or corrupted)")
    try:
        module = _import(job.module, library)
    except Exception as error:
        raise _Corrupt(f"{library} does not import: {error}") from None
    return BuiltModule(module.ffi, module.lib, directory, job.key, True, time.perf_counter() - start, library)


def _load_fresh(job: _Job, directory: Path) -> BuiltModule:
    """Load a library just built; failing here is a build failure, not a corrupt cache."""
    try:
        built = _load_entry(job, directory)
        if built is None:
            raise _Corrupt(f"{directory} disappeared")
    except _Corrupt as error:
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
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            raise                    # cffi could not write its wrapper: a full folder, as below
        full = _out_of_space(log)
        if full:                     # the compiler or linker could not write: the folder is full, the C is fine
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: the compiler, building in {directory}, "
                                        f"said {full!r}") from None
        raise _compile_error(job, directory, failed, error) from None
    for intermediate in [directory / f"{job.module}.c", *directory.glob("*.o")]:
        intermediate.unlink(missing_ok=True)
    manifest = {"key": job.key, "name": job.name, "module": job.module, "library": library.name,
                "library_sha256": _sha256_file(library), "flags": job.flags, "link_args": job.link_args,
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
    kept = _keep_failed(directory, failed, f"{job.name}.c", job.source)
    tail = output[-_LOG_TAIL:]
    return compile_failure(f"{job.name} ({type(error).__name__}: {error})",
                           [f"compiler: {job.cc}   compile flags: {shlex.join(job.flags)}   "
                            f"link flags: {shlex.join([*job.link_args, '-lm'])} (the commands are in the output)", kept],
                           tail.splitlines(), f" (last {_LOG_TAIL} characters)" if tail != output else "",
                           hint=f"line numbers in the compiler output refer to {job.name}.c")


def _keep_failed(directory: Path, failed: Path, filename: str, source: str) -> str:
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


def _import(module_name: str, library: Path):
    """Import the extension at `library` without touching sys.path or sys.modules."""
    spec = importlib.util.spec_from_file_location(module_name, library)
    if spec is None or spec.loader is None:
        raise ImportError(f"{library} is not a loadable extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _discard(entry: Path) -> None:
    """Move a corrupt entry aside (atomically), then delete it."""
    trash = entry.with_name(f".trash-{entry.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(entry, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def _out_of_space(log: Path) -> str | None:
    """The line of the build log in which the compiler or linker said the disk is full, if any."""
    words = [os.strerror(e) for e in _NO_SPACE]
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if any(w in line for w in words):
                return line.strip()
    return None


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@functools.lru_cache(maxsize=None)
def _builder_hash() -> str:
    """The hash of this file: changing the builder invalidates every cache entry."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
