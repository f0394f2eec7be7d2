"""The fast path of graphc.compile for a spec compiled before: load its library without rendering C.

In: a spec file's text and every compile option. Out: a CompiledModel whose library comes from the
build cache, with no parsing, autodiff, scheduling or Jinja rendering, and without importing
the backend, jinja2 or the compiler (a fresh process loads a cached model in a few milliseconds
beyond `import graphc`).

How it stays correct. build() keys a library by the C text it is made from (build.cache_key);
that text is a function of the spec's text and file name, the compile options, and graphc's own
code (the Python and the templates). After a build, an index entry (cache_root()/models/RECIPE)
records the build's key and what the Python side needs to call the C (the graphs, each C
function's arguments, the train step's layout), where RECIPE hashes all of those inputs plus
everything build.cache_key hashes besides the text (the compiler and its version, the flags, ISA,
OpenMP, Python's build configuration, $CFLAGS..., the cffi, NumPy and graphc versions).
Any change to any of them is another RECIPE, hence a miss and the ordinary path. A hit loads the
entry through build.load_cached (manifest and sha256 checks, as a cache hit of build() does);
anything missing, unreadable or mismatched is a miss, never an error. What the index does not keep
(the C text, the schedules, the kernel library) is rendered on first use (LazySource), and checked
against the recorded source hash.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import threading
from pathlib import Path
from types import SimpleNamespace

FORMAT = 1           # of the index entries: bump when what they hold changes
_ROLES_IN = ("input", "param", "param*", "state")


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """SHA-256 of graphc's code: tree_digest of this package."""
    return tree_digest(Path(__file__).resolve().parent.parent)


def tree_digest(package: Path) -> str:
    """SHA-256 of every file of `package` and of the templates folder (the wheel's
    graphc/templates, or templates/ beside graphc/ in a checkout), names and bytes."""
    tops = [package] + [d for d in (package.parent / "templates",) if (d / "model.c.j2").is_file()]
    digest = hashlib.sha256()
    for top in tops:
        for root, dirs, files in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if name.endswith((".pyc", ".pyo")):
                    continue
                path = os.path.join(root, name)
                with open(path, "rb") as file:
                    digest.update(f"{os.path.relpath(path, top.parent)}\0".encode())
                    digest.update(file.read())
                    digest.update(b"\0")
    return digest.hexdigest()


class Recipe:
    """One graphc.compile of a spec file: its text and options, and the index key they make."""

    def __init__(self, path, text: str, options: dict, root: Path, key: str):
        self.path, self.text, self.options, self.root, self.key = path, text, options, root, key

    @classmethod
    def of(cls, path, grad_of, wrt, dtype: str, optimizer, threads: int, native: bool, isa: str,
           cache_dir) -> "Recipe | None":
        """The recipe of compiling spec file `path`, or None when it has no stable key (an unreadable
        file: the ordinary path reports it; an optimizer without a repr that names its values; no
        compiler: the ordinary path says so)."""
        from graphc.core.errors import CompileError
        from graphc.core.paths import cache_root
        from graphc.native import build
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, TypeError):
            return None
        described = None if optimizer is None else [type(optimizer).__module__, type(optimizer).__qualname__,
                                                      repr(optimizer)]
        if described is not None and " at 0x" in described[2]:
            return None
        try:
            cc = build.find_compiler()
            flags, link_args = build.build_flags(native, isa, cc)
            toolchain = build.toolchain(cc)
        except CompileError:
            return None
        import numpy
        options = {"grad_of": grad_of, "wrt": None if wrt is None else list(wrt), "dtype": dtype,
                   "optimizer": described, "threads": threads, "native": native, "isa": isa}
        material = {"format": FORMAT, "spec": hashlib.sha256(text.encode()).hexdigest(), "file": str(path),
                    **options, "flags": flags, "link_args": link_args, **toolchain, "numpy": numpy.__version__,
                    "sources": source_digest()}
        try:
            key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
        except (TypeError, ValueError):     # an option that is not plain data
            return None
        root = Path(cache_dir) if cache_dir is not None else cache_root()
        return cls(path, text, options, root, key)

    @property
    def entry(self) -> Path:
        return self.root / "models" / f"{self.key}.pickle"

    def graph(self):
        """The spec's graph, parsed from the text the key was made of (as frontend.spec.load does)."""
        from graphc.frontend.spec import parse_spec
        return parse_spec(self.text, str(self.path), default_name=Path(self.path).stem)

    def load(self, render):
        """(LazySource, BuiltModule) from the index and the build cache, or None (a miss).
        render(graph) -> CSource: how compile renders the C, for what the index does not keep."""
        from graphc.native import build
        try:
            with open(self.entry, "rb") as file:
                record = pickle.load(file)
            if record.get("format") != FORMAT or record.get("recipe") != self.key:
                return None
            built = build.load_cached(record["name"], record["key"], record["module"], self.root)
            if built is None:
                return None
            return LazySource(self, record, render), built
        except Exception:      # noqa: BLE001  (a missing, truncated or foreign entry: the ordinary path)
            return None

    def save(self, model) -> None:
        """Record a model just compiled (or loaded by build()) from this recipe; failures are silent:
        without an entry the next compile takes the ordinary path."""
        csrc = model.csrc
        try:
            record = {"format": FORMAT, "recipe": self.key, "name": csrc.name, "key": model.built.key,
                      "module": model.built.library.name.split(".")[0],
                      "source_sha256": hashlib.sha256(csrc.source.encode()).hexdigest(),
                      "dtype": csrc.dtype, "grad_names": dict(csrc.grad_names), "dim_args": tuple(csrc.dim_args),
                      "forward_graph": csrc.forward_graph, "predict_graph": csrc.predict_graph,
                      "functions": [_light_record(f) for f in csrc.functions]}
            data = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
            self.entry.parent.mkdir(parents=True, exist_ok=True)
            scratch = self.entry.with_name(f".{self.entry.name}.{os.getpid()}.{threading.get_ident()}")
            scratch.write_bytes(data)
            os.replace(scratch, self.entry)
        except Exception:      # noqa: BLE001  (an unpicklable graph, a full or read-only cache)
            with contextlib.suppress(OSError, UnboundLocalError):
                scratch.unlink(missing_ok=True)


def _light_record(f) -> dict:
    """What calling C function f from Python needs, as plain data (no backend classes)."""
    layout = f.train_layout
    return {"name": f.name, "label_checks": [tuple(c) for c in f.label_checks],
            "args": [(a.cname, a.role, None if a.value is None else
                      (a.value.name, tuple(a.value.shape), a.value.dtype)) for a in f.args],
            "train_layout": None if layout is None else dict(vars(layout))}


class _Recorded:
    """The attributes the index recorded, at once; any other is `rendered()`'s (the object of the
    rendered CSource it stands for), looked up on first use."""

    def __init__(self, rendered, **recorded):
        self.__dict__.update(recorded)
        self._rendered = rendered

    def __getattr__(self, attr: str):
        if attr.startswith("__") or attr == "_rendered":
            raise AttributeError(attr)
        return getattr(self._rendered(), attr)


class LightFunction:
    """A C function as the Python calls need it (name, args, label_checks, train_layout); any other
    attribute (sched, doc, ...), of it or of its args (ctype, const, ...), is the rendered
    Function's, from LazySource.full()."""

    def __init__(self, owner: "LazySource", record: dict):
        self._owner, self.name = owner, record["name"]
        self.label_checks = record["label_checks"]
        self.args = [self._arg(i, c, r, v) for i, (c, r, v) in enumerate(record["args"])]
        lay = record["train_layout"]
        self.train_layout = None if lay is None else SimpleNamespace(**lay)

    def _arg(self, i: int, cname: str, role: str, v):
        def arg():
            return self._rendered().args[i]
        value = None if v is None else _Recorded(lambda: arg().value, name=v[0], shape=v[1], dtype=v[2])
        return _Recorded(arg, cname=cname, role=role, value=value)

    def _rendered(self):
        return next(f for f in self._owner.full().functions if f.name == self.name)

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._rendered(), attr)


class LazySource:
    """A CSource as the index recorded it: the graphs, names and C function records at once; the C
    text and everything else of the CSource rendered on first use (the same text as at the build:
    checked by its hash)."""

    def __init__(self, recipe: Recipe, record: dict, render):
        self._recipe, self._record, self._render, self._full = recipe, record, render, None
        self.name, self.dtype = record["name"], record["dtype"]
        self.forward_graph, self.predict_graph = record["forward_graph"], record["predict_graph"]
        self.grad_names, self.dim_args = record["grad_names"], record["dim_args"]
        self.light_functions = [LightFunction(self, f) for f in record["functions"]]

    def full(self):
        """The CSource, rendered from the recipe's spec text as graphc.compile renders it."""
        if self._full is None:
            from graphc.core.errors import GraphcError
            csrc = self._render(self._recipe.graph())
            if hashlib.sha256(csrc.source.encode()).hexdigest() != self._record["source_sha256"]:
                raise GraphcError(f"{self.name}: the C rendered again differs from the cached build's "
                                  f"({self._recipe.entry}); remove that file and compile again")
            self._full = csrc
        return self._full

    def __getattr__(self, attr: str):
        if attr.startswith("__") or attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.full(), attr)
