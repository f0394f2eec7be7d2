"""Export: a compiled model's C as files to build without Python.

In: a CompiledModel (its rendered C, the signature of each C function, its built library), or
for `graphc emit` only the rendered C (emit(): no compiler runs).
Out: NAME.c and NAME.h in a folder with the kernel library they call (graphc_kernels.c/.h; or,
amalgamated, one NAME.c holding both), plus shared libraries (`graphc build`: libNAME.so for C
programs, and the Python extension graphc loaded) or an example main.c and a Makefile (`graphc
emit`; with NAME_mpi_update.c/.h for main.c's MPI build, `make MPI=1`: native/mpi_emit.py), and
optionally trained parameters as const C arrays (NAME_params.c/.h). It renders no
model C of its own (codegen did, and that text is portable); the only thing it compiles is
libNAME.so, from the NAME.c it wrote and the cached kernel library.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np

from graphc.core.arguments import param_arrays
from graphc.core.errors import CompileError, GraphcError
from graphc.core.ir import INT, Graph, Value
from graphc.backend.schedule import c_name

EXAMPLE_BATCH = 4       # rows main.c passes when the model has a batch dim
EXAMPLE_LENGTH = 5      # ... and the size of each other run-time dim (a sequence length): main.c's DIM_<name>
EXAMPLE_FUNCTIONS = ("forward", "predict", "value_and_grad", "train_step")   # the calls main.c makes, in order
TRAIN_STEPS = 3         # train_step calls main.c makes when the model was compiled with an optimizer
GENERATE_PROMPT = (1, 2, 3)     # a language model's main.c then samples GENERATE_TOKENS after these ids
GENERATE_TOKENS = 32            # (NAME_generate, temperature 1, seed 0) on windows of its context,
EXAMPLE_CONTEXT = 16            # or of EXAMPLE_CONTEXT tokens when the model sets no bound
INPUT_SCALE = 1.0       # the amplitude of main.c's deterministic inputs ...
PARAM_SCALE = 0.1       # ... and params (see example_arrays)
SUMMARY_VALUES = 4      # leading values main.c prints of each array, after its checksums
SUMMARY_WEIGHTS = 7     # the weighted checksum weighs element i by 1 + i % SUMMARY_WEIGHTS
CONST_VALUES = 1 << 18  # main.c's params that no call writes are const arrays (flash) up to this many values

def label_bounds(graph: Graph) -> dict[str, int]:
    """Each int32 input's exclusive upper bound (classes, table rows or one-hot depth), the
    smallest over the ops that index with it (each op's `index_bounds`); an int input read by
    no such op gets 1 (all zeros)."""
    bounds = {name: None for name, v in graph.inputs.items() if v.dtype == INT}
    for node in graph.nodes:
        for v, bound in node.op.index_bounds(node):
            if v.name in bounds and graph.inputs.get(v.name) is v:
                bound = int(bound)
                bounds[v.name] = bound if bounds[v.name] is None else min(bounds[v.name], bound)
    return {k: 1 if b is None else b for k, b in bounds.items()}


def distribution_inputs(graph: Graph) -> dict[str, int]:
    """Real inputs some op reads as probability rows (cross-entropy's targets; each op's
    `distribution_inputs`), with their row length: main.c fills them with valid rows."""
    out = {}
    for node in graph.nodes:
        for v in node.op.distribution_inputs(node):
            if graph.inputs.get(v.name) is v and v.shape:
                last = v.shape[-1]
                out[v.name] = last if isinstance(last, int) else 1
    return out


def positive_values(graph: Graph) -> set[str]:
    """Inputs and params some op needs positive (a running variance): filled in [1, 2]."""
    return {v.name for node in graph.nodes for v in node.op.positive_inputs(node) if v.node is None}


def example_batch(graph: Graph) -> int:
    """The batch size main.c uses: EXAMPLE_BATCH, or 1 for a model without a batch dim."""
    return EXAMPLE_BATCH if graph.symbolic_dims else 1


def example_dims(graph: Graph, n: int | None = None) -> dict[str, int]:
    """The size main.c gives each symbolic dim: the batch n (example_batch by default), the others
    EXAMPLE_LENGTH (main.c's DIM_<C name>, cc -DDIM_T=9L ... for another)."""
    sym = graph.symbolic_dims
    return {d: (example_batch(graph) if n is None else n) if i == 0 else EXAMPLE_LENGTH for i, d in enumerate(sym)}


def _filled(graph: Graph) -> list[tuple[str, Value, float, float]]:
    """The arrays main.c fills, in the order that numbers them (k): (name, value, offset, scale);
    a value some op needs positive (positive_values: a running variance) offset 1.5, scale 0.5."""
    positive = positive_values(graph)
    arrays = [(name, v, INPUT_SCALE) for name, v in graph.inputs.items()]
    arrays += [(name, v, PARAM_SCALE) for name, v in graph.params.items()]
    return [(name, v, *((1.5, 0.5) if name in positive else (0.0, scale))) for name, v, scale in arrays]


def example_arrays(graph: Graph, dtype="float64", n: int | None = None,
                   dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """The inputs and params main.c fills, reproduced in NumPy, at batch n and the other run-time
    dims' sizes `dims` (example_dims' by default: main.c's).

    Array k (inputs then params, in graph order, k from 0), element i (row-major):
    real: offset + scale * sin(0.7 i + 1.3 k + 0.5), computed in double then cast, scale
    INPUT_SCALE for inputs and PARAM_SCALE for params, offset 0; for a value an op needs
    positive (positive_values: a running variance) offset 1.5 and scale 0.5;
    int32: (3 i + k) % bound (see label_bounds);
    probability rows (distribution_inputs: cross-entropy's real targets): 1.5 + sin(0.7 i +
    1.3 k + 0.5), each row of the last axis divided by its sum (in double), then cast.
    """
    at = {**example_dims(graph, n), **(dims or {})}
    bounds = label_bounds(graph)
    rows = distribution_inputs(graph)
    real = np.dtype(dtype)
    out = {}
    for k, (name, v, offset, scale) in enumerate(_filled(graph)):
        shape = tuple(at[d] if isinstance(d, str) else d for d in v.shape)
        i = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
        if v.dtype == INT:
            out[name] = ((3 * i + k) % bounds[name]).astype(np.int32).reshape(shape)
        elif name in rows:
            raw = (1.5 + np.sin(0.7 * i + 1.3 * k + 0.5)).reshape(-1, rows[name])
            out[name] = (raw / raw.sum(axis=1, keepdims=True)).astype(real).reshape(shape)
        else:
            out[name] = (offset + scale * np.sin(0.7 * i + 1.3 * k + 0.5)).astype(real).reshape(shape)
    return out


def example_summary(values) -> np.ndarray:
    """What main.c prints of an array (after FUNCTION NAME COUNT), from the array: its sum, the sum
    of its absolute values, the sum weighted by 1 + i % SUMMARY_WEIGHTS (element i, row-major:
    it moves when values swap places) and its first SUMMARY_VALUES values, all in double."""
    flat = np.asarray(values).astype(np.float64).ravel()
    weights = 1.0 + np.arange(flat.size) % SUMMARY_WEIGHTS
    return np.concatenate([[flat.sum(), np.abs(flat).sum(), (weights * flat).sum()], flat[:SUMMARY_VALUES]])


def parse_example_output(text: str) -> dict[tuple[str, str], np.ndarray]:
    """main.c's printout as {(function, name): its summary}; a line is `FUNCTION NAME COUNT SUM
    ABS_SUM WEIGHTED_SUM v0 v1 ...` (example_summary gives the same numbers from an array)."""
    results = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[2].isdigit() and len(words) == 6 + min(int(words[2]), SUMMARY_VALUES):
            results[(words[0], words[1])] = np.array([float(w) for w in words[3:]])
    return results


def summary_close(got: np.ndarray, want: np.ndarray, rtol: float) -> bool:
    """Two summaries agree to rtol, relative to the array's size (its sum of absolute values, at
    least 1): a sum of values that cancel is only as exact as its terms."""
    scale = max(1.0, abs(float(want[1])))
    return got.shape == want.shape and bool(np.all(np.abs(got - want) <= rtol * scale))


def _example_context(model) -> dict:
    """What main.c.j2 prints: one static array per distinct C argument, and the calls."""
    graph: Graph = model.graph
    n = example_batch(graph)
    c_dims = dict(zip(graph.symbolic_dims, model.csrc.dim_args))      # dim -> its C argument
    macro = {d: "BATCH" if i == 0 else f"DIM_{c}" for i, (d, c) in enumerate(c_dims.items())}
    bounds = label_bounds(graph)
    prob_rows = distribution_inputs(graph)
    ctype = "double" if model.dtype == np.float64 else "float"
    fills = {}
    for k, (name, v, offset, scale) in enumerate(_filled(graph)):
        fills[c_name(name)] = dict(k=k, scale=repr(scale), offset=repr(offset), bound=bounds.get(name),
                                   row=prob_rows.get(name))
    labels = {c_name(k): k for k in graph.outputs}            # print outputs and gradients by
    labels.update({c_name(f"d_{w}"): f"d_{w}" for w in model.wrt})   # their graph names
    arrays: dict[str, dict] = {}
    functions, skipped = [], []
    for f in model.csrc.functions:
        if f.name not in EXAMPLE_FUNCTIONS or any(a.value is None and a.role != "hparams" for a in f.args):
            skipped.append(f.name)  # not a call main.c knows how to make (or to size)
            continue
        for a in f.args:
            if a.role == "hparams":
                continue        # main.c passes NULL: the hyperparameters compiled in
            fixed = int(np.prod([d for d in a.value.shape if not isinstance(d, str)], dtype=np.int64))
            runtime = [macro[d] for d in a.value.shape if isinstance(d, str)]
            count = " * ".join(runtime + [str(fixed)] * (fixed != 1 or not runtime))
            entry = arrays.setdefault(a.cname, dict(
                cname=a.cname, var=f"arr_{a.cname}", ctype=a.ctype, count=count, shape_doc=a.shape_doc,
                role=a.role, label=labels.get(a.cname, a.cname),
                fill=fills.get(a.cname) if a.role in ("input", "param", "param*") else None))
            if entry["count"] != count or entry["ctype"] != a.ctype:
                raise GraphcError(f"export: argument {a.cname} has different shapes in different functions")
        printed = [arrays[a.cname] for a in f.args if a.role in ("output", "grad")]
        if f.name == "train_step":
            printed = [p for p in printed if p["count"] == "1"]
        checks = {ids for ids, _count, _bound in f.label_checks}
        functions.append(dict(name=f.name, args=["NULL" if a.role == "hparams" else arrays[a.cname]["var"]
                                                  for a in f.args], printed=printed,
                              checks_labels=sorted(checks),
                              trained=[arrays[a.cname] for a in f.args if a.role == "param*"]))
    # -DGRAPHC_TRAIN_ONLY (a training firmware): main.c calls train_step alone, and declares only its arrays
    trained = {v for f in functions if f["name"] == "train_step" for v in f["args"]}
    for a in arrays.values():
        a["train_only_skip"] = bool(trained) and a["var"] not in trained
    for f in functions:
        f["train_only_skip"] = bool(trained) and f["name"] != "train_step"
    filled = [a for a in arrays.values() if a["fill"] is not None]
    ints = [a for a in filled if a["ctype"] == "int32_t"]
    _constant_params(model, arrays, functions)
    filled = [a for a in filled if "values" not in a]
    gen = model.csrc.generation      # a language model: main.c samples GENERATE_TOKENS after training
    generate = None if gen is None else dict(
        params=[arrays[c_name(p)]["var"] for p in gen.params], context=gen.context or EXAMPLE_CONTEXT,
        prompt=[i % gen.vocabulary for i in GENERATE_PROMPT], tokens=GENERATE_TOKENS)
    others = [(d, macro[d], EXAMPLE_LENGTH) for d in graph.symbolic_dims[1:]]
    return dict(name=model.name, ctype=ctype, n=n, batch_dim=(graph.symbolic_dims or [None])[0], others=others,
                dim_call=", ".join(["n"] + [m for _, m, _ in others]),
                dim_sizes=", ".join(["BATCH"] + [m for _, m, _ in others]),
                arrays=list(arrays.values()), declared=[a for a in arrays.values() if "values" not in a], filled=filled, functions=functions, skipped=skipped,
                has_ints=bool(ints), has_reals=any(a["ctype"] != "int32_t" and not a["fill"]["row"] for a in filled),
                has_rows=bool(prob_rows), bad=ints[0] if ints else None,
                trains=any(f["name"] == "train_step" for f in functions), train_steps=TRAIN_STEPS, generate=generate,
                input_scale=INPUT_SCALE, param_scale=PARAM_SCALE,
                summary_values=SUMMARY_VALUES, summary_weights=SUMMARY_WEIGHTS)


def _constant_params(model, arrays: dict[str, dict], functions: list[dict]) -> None:
    """Give each param that no call of main.c writes (not trained by train_step: not in wrt, not
    state) its values as C literals ("values": rows of text), so that main.c declares it `static
    const` and a microcontroller keeps it in flash, not RAM: the numbers fill_all would compute
    (example_arrays), so every build prints what it did. Only real params of fixed size and at
    most CONST_VALUES values in all (the rest are filled at run time, as before)."""
    written = {a.cname for f in model.csrc.functions if f.name in {g["name"] for g in functions}
               for a in f.args if a.role not in ("input", "param", "hparams")}
    frozen = [a for a in arrays.values() if a["role"] == "param" and a["cname"] not in written
              and a["fill"] is not None and a["ctype"] != "int32_t" and not a["fill"]["row"] and a["count"].isdigit()]
    if not frozen or sum(int(a["count"]) for a in frozen) > CONST_VALUES:
        return
    names = {c_name(name): name for name in model.graph.params}
    values = example_arrays(model.graph, model.dtype)
    ctype = "double" if model.dtype == np.float64 else "float"
    for a in frozen:
        literals = [_c_literal(x, ctype) for x in values[names[a["cname"]]].ravel()]
        a["values"] = [", ".join(literals[i:i + VALUES_PER_LINE]) + "," for i in range(0, len(literals), VALUES_PER_LINE)]


VALUES_PER_LINE = 6


def _c_literal(x, ctype: str) -> str:
    """A C constant that reads back as exactly x (9 significant digits for float, 17 for double)."""
    if ctype == "float":
        text = f"{float(np.float32(x)):.9g}"
        return text + ("f" if any(c in text for c in ".e") else ".0f")
    text = f"{float(x):.17g}"
    return text if any(c in text for c in ".e") else text + ".0"


def params_context(model, params) -> dict:
    """What params.c.j2 / params.h.j2 print: every param of the model as a const array."""
    graph: Graph = model.graph
    ctype = "double" if model.dtype == np.float64 else "float"
    docs = {a.value.name: a.shape_doc for f in model.csrc.functions for a in f.args
            if a.role.startswith("param") and a.value is not None}
    out = []
    for name, arr in param_arrays(graph, params, "export").items():
        flat = arr.astype(model.dtype).ravel()
        if not np.all(np.isfinite(flat)):
            bad = int(np.flatnonzero(~np.isfinite(flat))[0])
            raise GraphcError(f"export: param {name!r} holds {flat[bad]} at flat index {bad}; "
                              "a trained model's parameters must be finite",
                              hint="check the training loss for divergence (a smaller learning rate)")
        literals = [_c_literal(x, ctype) for x in flat]
        rows = [", ".join(literals[i:i + VALUES_PER_LINE]) + "," for i in range(0, len(literals), VALUES_PER_LINE)]
        out.append(dict(cname=c_name(name), var=f"{model.name}_param_{c_name(name)}", count=max(1, flat.size),
                        shape_doc=docs.get(name, ""), rows=rows or ["0"]))
    return dict(name=model.name, ctype=ctype, params=out, guard=f"GRAPHC_{model.name.upper()}_PARAMS_H",
                source=Path(graph.source_file).name if graph.source_file else "")


class _Unbuilt:
    """What export() reads of a CompiledModel, from the rendered C alone (emit() builds nothing)."""

    def __init__(self, csrc):
        self.csrc, self.name, self.graph = csrc, csrc.name, csrc.forward_graph
        self.dtype, self.wrt, self.built = np.dtype(csrc.dtype), list(csrc.grad_names), None


def emit(csrc, directory: Path, params=None, amalgamate: bool = False, isa: str = "auto") -> list[Path]:
    """`graphc emit`: the standalone files of export(..., standalone=True) from codegen's CSource,
    without compiling anything. isa: the Makefile's default ISA (native/isa.py)."""
    return export(_Unbuilt(csrc), Path(directory), True, params, amalgamate, isa)


def export(model, directory: Path, standalone: bool, params=None, amalgamate: bool = False,
           isa: str = "auto") -> list[Path]:
    """Write NAME.c, NAME.h and the kernel library they call, graphc_kernels.c and .h, into
    `directory` (created if needed); return the files written.

    standalone=False also writes libNAME.so and copies the Python extension; standalone=True adds
    main.c, an example that runs every function on deterministic data and prints the results, and
    a Makefile (`make MPI=1`: main.c trained over MPI ranks, with NAME_mpi_update.c/.h). amalgamate=True writes one self-contained NAME.c (the library, then the model)
    instead of NAME.c and graphc_kernels.c/.h. params (name -> array, e.g. state.params) adds
    NAME_params.c/.h: the values as const arrays. isa: the Makefile's default for `make ISA=...`
    (auto, avx512, avx2 or portable: which GEMM kernels the program may run)."""
    from graphc.backend.codegen import amalgamate as amalgamated, render_template
    from graphc.native.checkpoint import c_context as checkpoint_context
    from graphc.native.isa import CAP
    context = params_context(model, params) if params is not None else None   # check before writing
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = model.name
    written = []

    def write(filename: str, text: str) -> None:
        path = directory / filename
        path.write_text(text)
        written.append(path)

    # The rendered text is portable: ISA-specific GEMM kernels are chosen by the preprocessor
    # (__AVX2__, __AVX512F__) from the flags the user's compiler gets, never baked in here.
    kernels = model.csrc.kernels
    write(f"{name}.c", amalgamated(model.csrc) if amalgamate else model.csrc.source)
    write(f"{name}.h", model.csrc.header)
    if not amalgamate:
        write(kernels.source_name, kernels.source)
        write(kernels.header_name, kernels.header)
    has_checkpoint = any(f.name == "train_step" for f in model.csrc.functions)
    if has_checkpoint:       # the training state as a file both sides read: native/checkpoint.py
        ckpt = checkpoint_context(model.csrc)
        write(f"{name}_checkpoint.h", render_template("checkpoint.h.j2", **ckpt))
        write(f"{name}_checkpoint.c", render_template("checkpoint.c.j2", **ckpt))
    if context is not None:
        write(f"{name}_params.h", render_template("params.h.j2", **context))
        write(f"{name}_params.c", render_template("params.c.j2", **context))
    if standalone:
        from graphc.backend.templates import MCU_FILES, mcu_dir
        from graphc.native.mpi_emit import mpi_parts
        example = _example_context(model)
        mpi, mpi_files = mpi_parts(model, example, example_arrays, amalgamate)   # make MPI=1: main.c trained over MPI ranks
        for filename, text in mpi_files.items():
            write(filename, text)
        write("main.c", render_template("main.c.j2", **example, mpi=mpi))
        (directory / "mcu").mkdir(exist_ok=True)
        for filename in MCU_FILES:     # `make mcu`: the firmware's start-up code and linker script
            write(f"mcu/{filename}", (mcu_dir() / filename).read_text())
        write("Makefile", render_template("Makefile.j2", name=name, amalgamated=amalgamate,
                                          ctype="double" if model.dtype == np.float64 else "float",
                                          kernels_source=kernels.source_name, kernels_header=kernels.header_name,
                                          kernel_defines=" ".join(kernels.defines), isa=isa,
                                          checkpoint=has_checkpoint, mpi_update=mpi["companion"] if mpi_files else None,
                                          isa_caps=sorted(CAP.items())))
    else:
        written.append(c_library(model, directory, amalgamate))
        library = Path(model.built.library)   # the Python extension: graphc's own loaded build
        target = directory / library.name
        shutil.copyfile(library, target)
        written.append(target)
    return written


def c_library(model, directory: Path, amalgamated: bool = False) -> Path:
    """Compile directory/NAME.c into directory/libNAME.so: the model as a shared library a C
    program links with (cc main.c -L. -lNAME -lm), built with the flags of graphc's own build and
    linked with the kernel library graphc compiled with them (whose symbols it does not export);
    an amalgamated NAME.c holds the library already."""
    from graphc.native.cache_entry import compile_failure
    from graphc.native.kernel_library import build_kernels
    from graphc.native.toolchain import compile_flags, find_compiler, openmp_supported
    cc = find_compiler()
    try:     # the flags of the build graphc loaded, as its cache entry records them
        manifest = json.loads((Path(model.built.directory) / "manifest.json").read_text())
        flags, link = list(manifest["flags"]), list(manifest["link_args"])
    except (OSError, ValueError, KeyError, TypeError):
        openmp = openmp_supported(cc)
        flags, link = compile_flags(False, openmp), ["-fopenmp"] * openmp
    # the library was compiled without the model's own defines (GC_MAX_THREADS)
    library_flags = [f for f in flags if not f.startswith("-DGC_MAX_THREADS=")]
    objects = [] if amalgamated else [str(build_kernels(model.csrc.kernels, library_flags))]
    target = directory / f"lib{model.name}.so"
    scratch = directory / f".lib{model.name}.so.tmp"
    command = [*shlex.split(cc), *flags, "-shared", "-fPIC", f"{model.name}.c", *objects, "-o", scratch.name, "-lm",
               *link]
    try:
        run = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as error:
        raise CompileError(f"cannot run the C compiler to build {target}: {error}",
                           hint=f"the source is {directory / (model.name + '.c')}") from None
    if run.returncode != 0:
        scratch.unlink(missing_ok=True)
        raise compile_failure(str(target), [f"command: {shlex.join(command)}",
                                            f"source: {directory / (model.name + '.c')}"],
                              (run.stderr or run.stdout).splitlines()[-40:])
    scratch.replace(target)       # atomic: a half-written library is never left under its name
    return target
