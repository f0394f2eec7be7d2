"""The MPI build of `graphc emit`'s example program (`make MPI=1`): main.c trained data-parallel.

In: the model's rendered C (codegen's CSource) and what main.c.j2 prints (export's example
context). Out: the C of the companion model NAME_mpi_update (data_parallel.update_graph: the
optimizer's update from given gradients, the same design as Python's comm= path) and the context
of templates/main_mpi.c.j2, the part of main.c compiled with -DGRAPHC_MPI: each rank calls the
model's functions on its shard of main.c's rows, the shards' outputs and gradients are summed by
MPI_Allreduce (weighted by rows where a value is a mean over them), and every rank applies the
same update. When a model cannot train this way, `reason` says why and main.c's MPI build stops
at an #error carrying it; the build without MPI never reads any of this.
"""
from __future__ import annotations

import numpy as np

from graphc.backend.cprint import c_name
from graphc.core.errors import GraphcError
from graphc.native.data_parallel import batch_weighting, check_stateless, update_graph

MPI_TYPES = {"float": "MPI_FLOAT", "double": "MPI_DOUBLE"}


def update_name(name: str) -> str:
    """The companion model's name, and so the stem of its files: NAME_mpi_update.c/.h."""
    return f"{name}_mpi_update"


def _refusal(model, example: dict) -> str | None:
    """Why the model's example program cannot train over MPI (an error's text, its hint on a line of its
    own), or None."""
    train = next((f for f in model.csrc.functions if f.name == "train_step"), None)
    if train is None or not example["trains"]:
        return "the model has no train step: emit it with an optimizer (graphc emit --optimizer adam)"
    if not model.graph.symbolic_dims:
        return "the model has no batch dim: there are no rows to split over the ranks"
    if not any(f["name"] == "value_and_grad" for f in example["functions"]):
        return "main.c does not call value_and_grad, which each rank runs on its rows"
    try:
        check_stateless(model.graph, "MPI", "the build without MPI (make) trains it in one process")
    except GraphcError as e:
        return str(e)
    return None


def _shard(a, var: str) -> tuple[str, int | None]:
    """The C pointer to this rank's rows of argument `a` (its array `var`) and the elements per
    row; (var, None) for an argument without the batch dim (params, gradients, a loss)."""
    shape = a.value.shape
    batched = [i for i, d in enumerate(shape) if isinstance(d, str)]
    if not batched:
        return var, None
    if batched != [0]:
        raise GraphcError(f"{a.cname} has the batch dim at axis {batched[0]}: a rank's rows are not contiguous")
    row = int(np.prod(shape[1:], dtype=np.int64))
    return (f"{var} + shard_start" + (f" * {row}" if row != 1 else "")), row


def mpi_parts(model, example: dict, example_arrays, amalgamate: bool = False) -> tuple[dict, dict[str, str]]:
    """What templates/main_mpi.c.j2 needs, and the companion's files (filename -> text; none when
    the model cannot train over MPI: the context's `reason` says why). example_arrays: export's,
    main.c's data in NumPy (passed in: export imports this module)."""
    from graphc.backend.codegen import amalgamate as amalgamated, generate
    ctx = dict(reason=_refusal(model, example), companion=update_name(model.name), mpi_type=MPI_TYPES[example["ctype"]])
    if ctx["reason"] is not None:
        return ctx, {}
    layout = next(f for f in model.csrc.functions if f.name == "train_step").train_layout
    update = generate(update_graph(model.graph, layout.wrt), "J", list(layout.wrt), dtype=model.csrc.dtype,
                      optimizer=layout.optimizer)
    try:
        ctx.update(_context(model, example, layout, update, example_arrays(model.graph, "float64", 3)))
    except GraphcError as e:
        ctx["reason"] = str(e)      # main_mpi.c.j2 writes each line as a C string (filter c_string)
        return ctx, {}
    return ctx, {f"{update.name}.c": amalgamated(update) if amalgamate else update.source,
                 f"{update.name}.h": update.header}


def _context(model, example: dict, layout, update, data: dict) -> dict:
    """The data-parallel calls, the update call and how each printed value is combined over the
    ranks; a GraphcError when the model cannot train over MPI."""
    graph = model.graph
    arrays = {a["cname"]: a for a in example["arrays"]}
    weighting = batch_weighting(graph, [k for k, v in graph.outputs.items()
                                        if not any(isinstance(d, str) for d in v.shape)], data)
    loss_weighting = weighting.get(layout.loss)
    if loss_weighting is None:
        raise GraphcError(f"the loss {layout.loss!r} is not an output that is a mean or a sum over the batch rows"
                          if layout.loss in graph.outputs else f"the loss {layout.loss!r} is no output of the spec")
    by_name = {f.name: f for f in model.csrc.functions}
    calls, unprinted = [], []
    for f in example["functions"]:
        if f["name"] == "train_step":
            continue
        args, combine = [], []
        for a in by_name[f["name"]].args:
            if a.role == "hparams":
                args.append("NULL")
                continue
            entry = arrays[a.cname]
            pointer, row = _shard(a, entry["var"])
            args.append(pointer)
            if a.role == "grad":
                combine.append(dict(entry, how=loss_weighting, row=None))
            elif a.role == "output":
                how = "rows" if row is not None else weighting.get(entry["label"])
                if how is None:
                    unprinted.append(f"{f['name']} {entry['label']}")
                combine.append(dict(entry, how=how, row=row))
        printed = [p for p in f["printed"] if f"{f['name']} {p['label']}" not in unprinted]
        calls.append(dict(name=f["name"], args=args, combine=combine, printed=printed))
    # a train step prints its scalar outputs as value_and_grad combines them (the loss at least)
    combined = {a["cname"]: a for c in calls if c["name"] == "value_and_grad" for a in c["combine"]}
    step = next(f for f in example["functions"] if f["name"] == "train_step")
    missing = [p["label"] for p in step["printed"] if p["cname"] not in combined]
    if missing:
        raise GraphcError(f"train_step prints {', '.join(missing)}, which value_and_grad does not compute")
    step_printed = [p for p in step["printed"] if combined[p["cname"]]["how"] is not None]
    # the companion's train step on the model's arrays: params and optimizer state by name, its
    # gradient inputs grad_P the model's gradients d_P (summed over the ranks), its loss discarded
    own = {(role, key): arrays[cname]["var"] for role, key, cname in layout.step_args if cname in arrays}
    update_args = []
    for role, key, _cname in next(f for f in update.functions if f.name == "train_step").train_layout.step_args:
        if role == "input":
            update_args.append(arrays[c_name(model.csrc.grad_names[key[len("grad_"):]])]["var"])
        else:
            update_args.append({"hparams": "NULL", "output": "&update_loss"}.get(role) or own[(role, key)])
    return dict(calls=calls, uses={a["how"] for c in calls for a in c["combine"]}, unprinted=unprinted,
                loss_weighting=loss_weighting, loss_var=arrays[c_name(layout.loss)]["var"],
                step_printed=step_printed, update_args=update_args)
