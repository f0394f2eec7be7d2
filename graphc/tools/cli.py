"""The `graphc` command: show, explain, check, build, emit, import and demo.

In: argv. Out: text on stdout, an exit status (0 ok, 1 check mismatch, 2 error).
A GraphcError never reaches the user as a traceback: its message goes to stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from graphc.core.errors import CheckError, GraphcError
from graphc.core.version import __version__
from graphc.native.isa import ISAS

DTYPES = ("float32", "float64")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphc", description="Compile a neural network's forward graph, "
                                "and the backward graph graphc derives, to C.")
    p.add_argument("--version", action="version", version=f"graphc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    spec_help = "the model spec, a .toml file (see examples/)"
    dtype_help = "element type of the C: float32 (the default for building) or float64"

    s = sub.add_parser("show", help="print the forward and backward graphs")
    s.add_argument("spec", metavar="SPEC", help=spec_help)
    s.add_argument("--passes", action="store_true", help="print the graph after each pass")
    s.add_argument("--optimizer", choices=("sgd", "adam", "adamw", "none"), default="none",
                   help="print the train step instead of the backward graph: backward pass and update, in the IR")
    s.add_argument("--lr", type=float, default=None, help="learning rate (default 0.1 for sgd, 1e-3 for adam and adamw)")
    s.add_argument("--format", choices=("dot", "svg", "png"), default=None, dest="draw_format",
                   help="draw the graph instead of printing it, through Graphviz: DOT text (stdout without -o), "
                        "or SVG or PNG (need Graphviz's dot program); default: from the suffix of -o")
    s.add_argument("--backward", action="store_true",
                   help="draw the forward and backward graph of the spec's [grad] (default: the forward graph)")
    s.add_argument("-o", "--out", default=None, metavar="FILE", help="the picture's file (.dot, .svg or .png)")

    s = sub.add_parser("fuzz", help="the differential fuzzer: random specs, every check (docs/fuzzing.md)",
                       add_help=False)
    s.add_argument("options", nargs=argparse.REMAINDER, help="python -m graphc.fuzz's options (--help lists them)")

    s = sub.add_parser("explain", help="the derivation: each delta, the identity used, the shape check")
    s.add_argument("spec", metavar="SPEC", help=spec_help)
    s.add_argument("--format", choices=("text", "markdown", "latex"), default="text",
                   help="plain text with the notes' symbols (default), Markdown, or LaTeX")

    s = sub.add_parser("check", help="C vs NumPy reference vs finite differences; exit 1 on mismatch")
    s.add_argument("spec", metavar="SPEC", help=spec_help)
    s.add_argument("--dtype", choices=DTYPES, default="float64",
                   help="element type of the C checked (default float64, whose tolerances are tight)")
    s.add_argument("--batch", type=int, default=None, metavar="N", help="rows of the random inputs (default 3)")
    s.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random inputs and params (default 0)")

    s = sub.add_parser("build", help="NAME.c, NAME.h and the shared library in DIR")
    s.add_argument("spec", metavar="SPEC", help=spec_help)
    s.add_argument("-o", "--out", required=True, metavar="DIR", help="the folder to write into (made if missing)")
    s.add_argument("--dtype", choices=DTYPES, default="float32", help=dtype_help)
    s.add_argument("--threads", type=int, default=None, metavar="N",
                   help="most threads a call may use (default: $GRAPHC_NUM_THREADS, else the cores this process may use)")
    s.add_argument("--isa", choices=ISAS, default=None,
                   help="the instruction set of the GEMM kernels (default: $GRAPHC_ISA, else auto: the best the CPU has)")
    s.add_argument("--report", action="store_true",
                   help="also print the memory plan of each C function: buffers, offsets, lifetimes, peak bytes")
    s.add_argument("--batch", type=int, default=64, metavar="N", help="the batch size the report's bytes are for (default 64)")

    s = sub.add_parser("emit", help="standalone C (NAME.c, NAME.h, the kernel library graphc_kernels.c/.h, "
                                    "an example main.c, a Makefile) in DIR; runs no compiler")
    s.add_argument("spec", metavar="SPEC", help=spec_help)
    s.add_argument("-o", "--out", required=True, metavar="DIR", help="the folder to write into (made if missing)")
    s.add_argument("--dtype", choices=DTYPES, default="float32", help=dtype_help)
    s.add_argument("--optimizer", choices=("sgd", "adam", "adamw", "none"), default="sgd",
                   help="the update compiled into NAME_train_step when the spec has [grad] (default sgd)")
    s.add_argument("--lr", type=float, default=None, help="learning rate (default 0.1 for sgd, 1e-3 for adam and adamw)")
    _recipe_options(s)
    s.add_argument("--wrt", default=None, metavar="NAMES",
                   help="the params NAME_train_step trains, comma-separated (default: the spec's [grad] wrt), "
                        "e.g. the last layers only to fine-tune on a device; 'none': inference only "
                        "(forward and predict)")
    s.add_argument("--params", default=None, metavar="NPZ",
                   help="also write NAME_params.c/.h: these trained values (a state.save() file, "
                        "or an .npz of arrays named as the params) as const C arrays")
    s.add_argument("--isa", choices=ISAS, default=None,
                   help="the Makefile's default ISA (make ISA=...), the GEMM kernels the program may run "
                        "(default: $GRAPHC_ISA, else auto)")
    s.add_argument("--amalgamate", action="store_true",
                   help="write one self-contained NAME.c (the kernel library, then the model: one translation "
                        "unit) instead of NAME.c and graphc_kernels.c/.h")

    s = sub.add_parser("demo", help="train a demo model end to end in C (the digits; or text: char_gpt, gru)")
    s.add_argument("--model", choices=["one_layer", "digits_cnn", "char_gpt", "gru"], default=None,
                   help="one_layer: the notes' network (default); digits_cnn: a CNN with batch norm and dropout; "
                        "char_gpt, gru: character language models on the standard library's source, sampled by the C")
    s.add_argument("--epochs", type=int, default=None, metavar="E",
                   help="epochs to train (default 10; digits_cnn 20)")
    s.add_argument("--steps", type=int, default=None, metavar="S", help="char_gpt and gru: training steps (default 600)")
    s.add_argument("--out", default=None, metavar="DIR", help="where to write the standalone C (default graphc-demo)")
    s.add_argument("--plot", default=None, metavar="FILE",
                   help="also draw the train and test loss per epoch to FILE, e.g. loss.png (needs matplotlib)")

    s = sub.add_parser("import", help="an ONNX model -> a spec (.toml) and its params (.npz)")
    s.add_argument("model", metavar="MODEL", help="the ONNX model, an .onnx file (needs pip install 'graphc[onnx]')")
    s.add_argument("-o", "--out", required=True, metavar="SPEC", help="the spec to write, e.g. model.toml")
    s.add_argument("--params", default=None, metavar="NPZ",
                   help="where to write the initializers as an .npz of arrays named as the params, which "
                        "graphc emit --params reads (default: SPEC with the suffix _params.npz)")
    return p


def _recipe_options(s) -> None:
    """emit's training recipe: weight decay, schedule, clipping, accumulation (each a run-time field of
    NAME_hparams, its value here the default compiled in)."""
    r = s.add_argument_group("training recipe (each value is a field of NAME_hparams, read at run time; "
                             "the option compiles the term in)")
    r.add_argument("--weight-decay", type=float, default=None, metavar="X",
                   help="weight decay (default 0; adamw: 0.01, decoupled as torch.optim.AdamW)")
    r.add_argument("--schedule", choices=("constant", "step", "warmup_cosine"), default="constant",
                   help="the learning rate per step: constant (default); step: lr * gamma^floor((t-1)/step_size), "
                        "as torch's StepLR; warmup_cosine: linear warmup to lr over --warmup steps, then cosine "
                        "decay to --min-lr at step --total")
    r.add_argument("--step-size", type=int, default=None, metavar="N", help="step: steps between decays (default 1)")
    r.add_argument("--gamma", type=float, default=None, metavar="X", help="step: the factor (default 0.1)")
    r.add_argument("--warmup", type=int, default=None, metavar="N", help="warmup_cosine: warmup steps (default 0)")
    r.add_argument("--total", type=int, default=None, metavar="N",
                   help="warmup_cosine: the step the decay ends at, counting the warmup (default 1000)")
    r.add_argument("--min-lr", type=float, default=None, metavar="X",
                   help="warmup_cosine: the learning rate at and after --total (default 0)")
    r.add_argument("--max-norm", type=float, default=None, metavar="X",
                   help="clip the gradients' global 2-norm to X before each update, as "
                        "torch.nn.utils.clip_grad_norm_ (train_step then writes the norm, grad_norm)")
    r.add_argument("--accumulate", type=int, default=None, metavar="K",
                   help="gradient accumulation: adds NAME_accumulate and NAME_apply, and NAME_fit makes an "
                        "optimizer step every K minibatches")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        status = _run(argv)
        sys.stdout.flush()           # short output meets a closed pipe here, not at the interpreter's exit
        return status
    except BrokenPipeError:          # `graphc demo | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the interpreter's final flush does not fail again
        return 0


def _run(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["fuzz"]:         # every option after it is the fuzzer's own (--help included)
        from graphc.tools.fuzz import main as fuzz_main
        try:
            return fuzz_main(argv[1:])
        except SystemExit as e:      # its --help, or a usage error its parser printed
            return e.code if isinstance(e.code, int) else 2
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:          # --help, --version, or a usage error argparse already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        return COMMANDS[args.command](args)
    except CheckError as e:
        print(str(e), file=sys.stderr)
        return 1
    except GraphcError as e:
        print(str(e), file=sys.stderr)
        return 2


def _spec_path(spec: str) -> str:
    """The spec's path, or a GraphcError saying what is wrong with it (no traceback from open())."""
    path = Path(spec)
    if not path.is_file():
        what = "is a directory, not a spec file" if path.is_dir() else "does not exist"
        raise GraphcError(f"spec file {spec!r} {what}",
                          hint="pass the path of a .toml spec, e.g. examples/one_layer.toml")
    return spec


def _load(spec: str):
    from graphc.frontend.spec import load
    return load(_spec_path(spec))


def cmd_show(args) -> int:
    from graphc.autodiff.grad import grad
    if args.draw_format or args.out or args.backward:
        return _draw(args)
    g = _load(args.spec)
    print(g)
    optimizer = _optimizer(args)
    if g.grad_spec is not None and optimizer is not None:
        from graphc.autodiff.train import train_graph
        of, wrt = g.grad_spec
        print()
        print(f"# train step: d{of}/d({', '.join(wrt)}), then the update of {type(optimizer).__name__}"
              f"(lr={optimizer.lr:g}); next_* are the values NAME_train_step writes back in place")
        print(train_graph(g, of, wrt, optimizer))
    elif g.grad_spec is not None:
        of, wrt = g.grad_spec
        print()
        print(f"# backward: d{of}/d({', '.join(wrt)})")
        print(grad(g, of, wrt))
    if args.passes:
        from graphc.backend.pipeline import stages
        for name, graph in stages(g):
            print(f"\n# after {name}")
            print(graph)
    return 0


def _draw(args) -> int:
    """graphc show --format/--backward/-o: the graph as a picture (graphc/tools/draw.py)."""
    from graphc.tools.draw import draw, to_dot
    if args.passes or args.optimizer != "none":
        raise GraphcError("show: --passes and --optimizer print text and are not drawn",
                          hint="drop them to draw, or drop --format/--backward/-o to print")
    if args.out is None:
        if args.draw_format != "dot":
            what = f"--format {args.draw_format}" if args.draw_format else "--backward"
            raise GraphcError(f"show: {what} draws a picture, which needs -o FILE",
                              hint="e.g. graphc show SPEC --format svg --backward -o graph.svg "
                                   "(--format dot without -o prints the DOT text)")
        print(to_dot(_load(args.spec), backward=args.backward), end="")
        return 0
    print(f"wrote {draw(_load(args.spec), args.out, args.draw_format, backward=args.backward)}")
    return 0


def cmd_explain(args) -> int:
    from graphc.autodiff.explain import explain
    g = _load(args.spec)
    if g.grad_spec is None:
        raise GraphcError(f"{args.spec}: the spec has no [grad] section, so there is nothing to explain",
                          hint='add [grad] with of = "J" and wrt = ["W", ...]')
    of, wrt = g.grad_spec
    print(explain(g, of, wrt, format=args.format), end="")
    return 0


def cmd_check(args) -> int:
    from graphc.tools.check import check
    report = check(_spec_path(args.spec), dtype=args.dtype, batch=args.batch, seed=args.seed)
    print(report)
    return 0 if report.ok else 1


def _print_files(files) -> None:
    for f in files or []:
        print(f"wrote {f}")


def cmd_build(args) -> int:
    from graphc.native.runtime import compile
    kwargs = {"dtype": args.dtype, "isa": args.isa}
    if args.threads is not None:
        kwargs["threads"] = args.threads
    m = compile(_spec_path(args.spec), **kwargs)
    _print_files(m.export(args.out, standalone=False))
    if args.batch < 1:
        raise GraphcError(f"build: --batch must be >= 1, got {args.batch}")
    batch = args.batch if m.graph.symbolic_dims else 1     # a model without a batch dim: n = 1
    if m.threads > 1:   # libNAME.so's products may use m.threads threads, each with packing scratch
        print(f"lib{m.name}.so is compiled with -DGC_MAX_THREADS={m.threads}: compile C files that size "
              f"the workspace with {m.name}_WORKSPACE_BYTES with the same flag (or call {m.name}_workspace_size)")
    if args.report:
        print()
        print(m.memory_plan(batch))
    else:
        values = [batch] * len(m.csrc.dim_args)       # every run-time dim at the batch size
        size = getattr(m.lib, f"{m.name}_workspace_size")(*values)
        at = ", ".join(map(str, values))
        print(f"workspace at {'batch' if len(values) == 1 else 'every run-time dim'} {batch}: {size} bytes "
              f"({m.name}_workspace_size({at}) = {m.name}_WORKSPACE_BYTES({at}); --report for the plan)")
    return 0


def cmd_emit(args) -> int:
    """The C of graphc.compile(SPEC, dtype, optimizer), written as files: nothing is compiled."""
    from graphc.backend.codegen import generate
    from graphc.native.export import emit
    from graphc.native.runtime import default_threads
    g = _load(args.spec)
    grad_of, wrt = g.grad_spec or (None, None)
    if args.wrt is not None:
        wrt = [w.strip() for w in args.wrt.split(",") if w.strip()] if args.wrt != "none" else None
        if wrt and grad_of is None:
            from graphc.core.errors import SpecError
            raise SpecError(f"--wrt {args.wrt}: {args.spec} has no [grad] section naming the loss",
                            hint='add [grad] with of = "J"')
    optimizer = _optimizer(args) if wrt else None    # on-device training: train_step too
    csrc = generate(g, grad_of if wrt else None, list(wrt) if wrt else None, dtype=args.dtype, threads=default_threads(),
                    optimizer=optimizer)
    params = _load_params(args.params) if args.params else None
    from graphc.native.isa import resolve as resolve_isa
    _print_files(emit(csrc, Path(args.out), params=params, amalgamate=args.amalgamate,
                      isa=resolve_isa(args.isa, this_cpu=False)))
    return 0


def _optimizer(args):
    """graphc.SGD, graphc.Adam or graphc.AdamW from --optimizer and --lr; None for --optimizer none."""
    from graphc.autodiff.optimizers import OPTIMIZERS
    if args.optimizer == "none":
        return None
    from graphc.autodiff.optimizers import SCHEDULES
    from graphc.core.errors import ArgumentError
    kind = OPTIMIZERS[args.optimizer]
    values = dict(lr=args.lr if args.lr is not None else (0.1 if args.optimizer == "sgd" else 1e-3))
    schedule_name = getattr(args, "schedule", "constant")
    fields = {"step": ("step_size", "gamma"), "warmup_cosine": ("warmup", "total", "min_lr")}
    given = {k: getattr(args, k, None) for names in fields.values() for k in names}
    stray = [k for k, v in given.items() if v is not None and k not in fields.get(schedule_name, ())]
    if stray:
        raise ArgumentError(f"--{stray[0].replace('_', '-')} is a value of another schedule than "
                            f"--schedule {schedule_name}",
                            hint=f"--schedule {'step' if stray[0] in fields['step'] else 'warmup_cosine'}")
    values["schedule"] = SCHEDULES[schedule_name](**{k: v for k, v in given.items() if v is not None})
    for k in ("weight_decay", "max_norm", "accumulate"):
        if getattr(args, k, None) is not None:
            values[k] = getattr(args, k)
    return kind(**values)


def _load_params(path: str) -> dict:
    """The params in an .npz: a TrainState file (keys param.NAME) or plain NAME keys."""
    from graphc.core.errors import ArgumentError
    from graphc.native.train_state import TrainState
    try:
        return TrainState.read(path)[1]
    except (OSError, ValueError) as e:
        raise ArgumentError(f"--params {path}: cannot read it as an .npz file ({e})",
                            hint="write it with state.save(path) or np.savez(path, W=..., b1=...)") from None


def cmd_demo(args) -> int:
    from graphc.tools import demo
    argv = []
    if args.model is not None:
        argv += ["--model", args.model]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    if args.out is not None:
        argv += ["--out", args.out]
    if args.plot is not None:
        argv += ["--plot", args.plot]
    status = demo.main(argv)
    return int(status or 0)


COMMANDS = {"show": cmd_show, "explain": cmd_explain, "check": cmd_check, "build": cmd_build,
            "emit": cmd_emit, "demo": cmd_demo}


def cmd_import(args) -> int:
    """graphc import MODEL -o SPEC [--params NPZ]: the spec text generated from the imported graph."""
    import json
    import numpy as np
    from graphc.frontend.onnx import read_onnx
    from graphc.frontend.spec_writer import to_spec
    g, params, names = read_onnx(args.model)
    out = Path(args.out)
    npz = Path(args.params) if args.params else out.with_name(out.stem + "_params.npz")
    renamed = {k: v for k, v in names.items() if k != v}
    notes = [f"imported from {Path(args.model).name} by graphc import (graphc {__version__}); "
             f"the params' values are in {npz.name}",
             "no [grad] section: add a loss and [grad] to train it (see README, From ONNX)"]
    if renamed:
        notes += ["", "ONNX names that are not graphc names, and the names they became:"]
        notes += [f"  {json.dumps(k)} -> {v}" for k, v in renamed.items()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(to_spec(g, notes), encoding="utf-8")
        with open(npz, "wb") as f:
            np.savez(f, **params)
    except OSError as e:
        raise GraphcError(f"import: cannot write {e.filename or out}: {e.strerror or e}") from None
    print(f"wrote {out}: {len(g.inputs)} inputs, {len(g.nodes)} nodes, outputs {', '.join(g.outputs)}")
    print(f"wrote {npz}: {len(params)} params")
    return 0


COMMANDS["import"] = cmd_import



if __name__ == "__main__":
    sys.exit(main())
