"""The `graphc` command: show, explain, check, build, emit and demo a spec.

In: argv. Out: text on stdout, an exit status (0 ok, 1 check mismatch, 2 error).
A GraphcError never reaches the user as a traceback: its message goes to stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from graphc.core.errors import CheckError, GraphcError

DTYPES = ("float32", "float64")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphc", description="Compile a neural network's forward graph, "
                                "and the backward graph graphc derives, to C.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("show", help="print the forward and backward graphs")
    s.add_argument("spec", metavar="SPEC")
    s.add_argument("--passes", action="store_true", help="print the graph after each pass")
    s.add_argument("--optimizer", choices=("sgd", "adam", "none"), default="none",
                   help="print the train step instead of the backward graph: backward pass and update, in the IR")
    s.add_argument("--lr", type=float, default=None, help="learning rate (default 0.1 for sgd, 1e-3 for adam)")

    s = sub.add_parser("explain", help="the derivation: each delta, the identity used, the shape check")
    s.add_argument("spec", metavar="SPEC")
    s.add_argument("--format", choices=("text", "markdown", "latex"), default="text")

    s = sub.add_parser("check", help="C vs NumPy reference vs finite differences; exit 1 on mismatch")
    s.add_argument("spec", metavar="SPEC")
    s.add_argument("--dtype", choices=DTYPES, default="float64")
    s.add_argument("--batch", type=int, default=None, metavar="N")
    s.add_argument("--seed", type=int, default=0, metavar="S")

    s = sub.add_parser("build", help="NAME.c, NAME.h and the shared library in DIR")
    s.add_argument("spec", metavar="SPEC")
    s.add_argument("-o", "--out", required=True, metavar="DIR")
    s.add_argument("--dtype", choices=DTYPES, default="float32")
    s.add_argument("--threads", type=int, default=None, metavar="N")

    s = sub.add_parser("emit", help="standalone C (NAME.c, NAME.h, the kernel library graphc_kernels.c/.h, "
                                    "an example main.c, a Makefile) in DIR; runs no compiler")
    s.add_argument("spec", metavar="SPEC")
    s.add_argument("-o", "--out", required=True, metavar="DIR")
    s.add_argument("--dtype", choices=DTYPES, default="float32")
    s.add_argument("--optimizer", choices=("sgd", "adam", "none"), default="sgd",
                   help="the update compiled into NAME_train_step when the spec has [grad] (default sgd)")
    s.add_argument("--lr", type=float, default=None, help="learning rate (default 0.1 for sgd, 1e-3 for adam)")
    s.add_argument("--params", default=None, metavar="NPZ",
                   help="also write NAME_params.c/.h: these trained values (a state.save() file, "
                        "or an .npz of arrays named as the params) as const C arrays")
    s.add_argument("--amalgamate", action="store_true",
                   help="write one self-contained NAME.c (the kernel library, then the model: one translation "
                        "unit) instead of NAME.c and graphc_kernels.c/.h")

    s = sub.add_parser("demo", help="train the digits demo end to end")
    s.add_argument("--epochs", type=int, default=None, metavar="E")
    s.add_argument("--out", default=None, metavar="DIR")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:          # --help, or a usage error argparse already printed
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
    kwargs = {"dtype": args.dtype}
    if args.threads is not None:
        kwargs["threads"] = args.threads
    m = compile(_spec_path(args.spec), **kwargs)
    _print_files(m.export(args.out, standalone=False))
    print()
    print(m.memory_plan())
    return 0


def cmd_emit(args) -> int:
    """The C of graphc.compile(SPEC, dtype, optimizer), written as files: nothing is compiled."""
    from graphc.backend.codegen import generate
    from graphc.native.export import emit
    from graphc.native.runtime import default_threads
    g = _load(args.spec)
    grad_of, wrt = g.grad_spec or (None, None)
    optimizer = _optimizer(args) if g.grad_spec else None   # on-device training: train_step too
    csrc = generate(g, grad_of, list(wrt) if wrt else None, dtype=args.dtype, threads=default_threads(),
                    optimizer=optimizer)
    params = _load_params(args.params) if args.params else None
    _print_files(emit(csrc, Path(args.out), params=params, amalgamate=args.amalgamate))
    return 0


def _optimizer(args):
    """graphc.SGD or graphc.Adam from --optimizer and --lr; None for --optimizer none."""
    from graphc.autodiff.optimizers import SGD, Adam
    if args.optimizer == "none":
        return None
    if args.optimizer == "sgd":
        return SGD(lr=args.lr if args.lr is not None else 0.1)
    return Adam(lr=args.lr if args.lr is not None else 1e-3)


def _load_params(path: str) -> dict:
    """The params in an .npz: a TrainState file (keys param.NAME) or plain NAME keys."""
    from graphc.core.errors import ArgumentError
    from graphc.native.training import TrainState
    try:
        return TrainState.read(path)[1]
    except (OSError, ValueError) as e:
        raise ArgumentError(f"--params {path}: cannot read it as an .npz file ({e})",
                            hint="write it with state.save(path) or np.savez(path, W=..., b1=...)") from None


def cmd_demo(args) -> int:
    from graphc.tools import demo
    argv = []
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.out is not None:
        argv += ["--out", args.out]
    status = demo.main(argv)
    return int(status or 0)


COMMANDS = {"show": cmd_show, "explain": cmd_explain, "check": cmd_check, "build": cmd_build,
            "emit": cmd_emit, "demo": cmd_demo}


if __name__ == "__main__":
    sys.exit(main())
