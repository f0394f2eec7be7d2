"""Training in C, the compile-time half: the C functions NAME_train_step and NAME_fit (the
optimizers are graphc/autodiff/optimizers.py; graphc/native/training.py has the Python half:
TrainState and the Trainer of a loaded model).

In: the forward graph, its backward graph and an optimizer (backend/codegen.py's `generate`
calls `add_train_functions`). Out: two more C functions in the model's source, and a
TrainLayout (backend/functions.py; the train_step Function's `train_layout`) telling the
Python side how to call them.

- NAME_train_step(n, inputs, params, optimizer state, outputs, workspace): the
  value_and_grad computation with every gradient in the workspace, then the update of
  each parameter in place (templates/kernels/optimizer.c.j2), all in one C call. With
  plain SGD a weight whose gradient one GEMM computes is updated by that GEMM instead, as
  it writes the gradient (gc_gemm_epilogue's update), and the gradient is never stored.
- NAME_fit(n_total, batch, dataset, order, params, state, losses, workspace): one epoch;
  each minibatch is gathered into the workspace and passed to NAME_train_step
  (backend/fit_codegen.py, templates/fit.c.j2).

The recipe (optimizers.py: schedule, max_norm, accumulate), when the optimizer has it: the train
step starts with a RecipeBegin (the run-time values checked, GRAPHC_ERR_HPARAMS; under a schedule
t += 1 and this step's lr, gc_lr, which every update and the fused SGD GEMMs read); with clipping a
GradNorm after the gradients (their global norm, written to the output grad_norm, and the scale the
updates apply), and no update fused into a GEMM; with accumulation NAME_accumulate (the train
graph scheduled with AccumulateGrad records instead of the updates) and NAME_apply
(templates/apply.c.j2: the same update records reading the accumulators, times 1 / rows).

Hyperparameters are run-time values: a NAME_hparams struct the caller passes (NULL: the
values compiled in, NAME_HPARAMS_DEFAULT), so a program changes the learning rate between
steps without regenerating the C; the spec decides which terms exist (optimizers.py's
run_time_hparams). Optimizer state (momentum buffers, Adam's moments and step count) lives
in caller-owned arrays: a `TrainState` in Python.
"""
from __future__ import annotations

from dataclasses import replace


from graphc.autodiff.optimizers import SGD, Adam, Constant, check_optimizer, describe, flat_hparams, run_time_hparams
from graphc.backend.cprint import c_any_null, c_count, c_name, c_param, c_signature, c_wrap
from graphc.backend.fit_codegen import add_fit, fresh_c_name
from graphc.backend.functions import Arg, TrainLayout, output_args
from graphc.autodiff.train import train_graph
from graphc.backend.kernels import (AccumulateGrad, AdamStepCount, AdamUpdate, GradNorm, OptimizerUpdates, ParamUpdate,
                                    RecipeBegin, SgdUpdate, worth_parallel)
from graphc.backend.lower import lower
from graphc.backend.sizes import numel
from graphc.backend.templates import environment
from graphc.core.errors import GraphcError
from graphc.core.ir import FLOAT, INT, Graph, TensorType, Value


# ====================================================================== C generation
HPARAM_DOC = {"lr": "learning rate", "momentum": "SGD momentum", "beta1": "decay of the first moment m",
              "beta2": "decay of the second moment v", "eps": "added to sqrt(v) / sqrt(1 - beta2^t)",
              "weight_decay": "weight decay",
              "step_size": "StepLR: lr *= gamma every step_size steps, >= 1", "gamma": "StepLR: the factor, >= 0",
              "warmup": "warmup steps (lr rises linearly to lr), >= 0",
              "total": "steps to the end of the cosine decay, >= warmup, >= 1",
              "min_lr": "learning rate at and after step total, >= 0",
              "max_norm": "clip the gradients' global 2-norm to this, > 0",
              "accumulate": "fit: micro-batches per optimizer step, >= 1"}
INT_HPARAMS = ("step_size", "warmup", "total", "accumulate")


def _literal(x: float) -> str:
    return repr(float(x))


def _loss_output(graph: Graph, grad_of: str) -> str | None:
    """The output that is the loss: the one grad_of names, or one holding the value grad_of names."""
    if grad_of in graph.outputs:
        return grad_of
    target = graph.values.get(grad_of)
    for k, v in graph.outputs.items():
        if v is target:
            return k
    return None


def add_train_functions(em, graph: Graph, grad_of: str, wrt: list[str], optimizer) -> None:
    """Add NAME_train_step (and NAME_fit when every batched input has the batch dim first)."""
    check_optimizer(optimizer)
    params = [w for w in graph.params if w in wrt]
    if not params:
        raise GraphcError(f"compile: the optimizer has nothing to update: wrt={wrt} names no param of {graph.name}",
                          hint=f"the params are {', '.join(graph.params)}")
    loss_name, fwd = _loss_output(graph, grad_of), graph
    if loss_name is None:    # the loss is no output: train_step returns it as one ("loss", or its name)
        loss_name = "loss" if "loss" not in graph.values and "loss" not in graph.outputs else grad_of
        fwd, _ = graph.copy()
        fwd.output(loss_name, fwd.values[grad_of])

    # ---- train_step: the train step as a graph (autodiff/train.py: the backward graph, then the
    # optimizer's update of each param written with ordinary ops), scheduled with the optimizer's
    # records: its update nodes get no kernels of their own, the records run last and update the
    # params and the state in place, and the gradients live in the workspace until then.
    tg = train_graph(fwd, grad_of, params, optimizer)
    low = lower(tg)
    state_inputs = {tg.updates[key][0] for key in tg.updates if key not in params and key not in tg.states}
    state_inputs |= {tg.recipe["lr"]} if "lr" in tg.recipe else set()     # the C computes it from t
    scheduled = not isinstance(optimizer.schedule, Constant)
    clipped, accumulates = optimizer.max_norm is not None, optimizer.accumulate > 1

    # state arguments: names no argument, buffer or value of the function has
    own = state_inputs | set(tg.recipe.values())       # no C value of their own: their names are free
    taken = {c_name(k) for k in list(low.values) + list(low.outputs) if k not in own}
    taken |= {"n", "workspace", "ws", "pack"} | set(em.dim_args)
    state_args: list[Arg] = []
    state_layout: dict[str, tuple[tuple, str]] = {}
    slot_c: dict[tuple[str, str], str] = {}
    slot_doc = {"momentum": "SGD momentum buffer v of", "m": "Adam first moment m of", "v": "Adam second moment v of"}
    pshape = {w: em.shape_doc(low.params[w]) for w in params}
    for slot in optimizer.slots():
        for w in params:
            cname = fresh_c_name(f"{c_name(w)}_{slot}", taken)
            slot_c[(slot, w)] = cname
            state_args.append(Arg(cname, "state", low.params[w], em.ctype, False,
                                  f"{pshape[w]}  {slot_doc[slot]} {w}, zeros at the start"))
            state_layout[f"{slot}/{w}"] = (tuple(low.params[w].shape), em.dtype)
    t_c = None
    if "t" in optimizer.scalars():
        adam = isinstance(optimizer, Adam)
        t_c = fresh_c_name("adam_t" if adam else "sgd_t", taken)
        tv = Value(graph, "t", TensorType((1,), FLOAT), None, "state")
        state_args.append(Arg(t_c, "state", tv, "int64_t", False,
                              f"[1] int64  {'Adam' if adam else 'the schedule'} step count t, 0 at the start"))
        state_layout["t"] = ((1,), "int64")
    # gradient accumulation: a sum of each param's micro-batch gradients (times their rows) and the rows
    acc_args: list[Arg] = []
    acc_c: dict[str, str] = {}
    if accumulates:
        for w in params:
            acc_c[w] = fresh_c_name(f"{c_name(w)}_acc", taken)
            acc_args.append(Arg(acc_c[w], "state", low.params[w], em.ctype, False,
                                f"{pshape[w]}  the sum of d_{w} times the rows of each micro-batch, zeros at the start"))
        rows_c = fresh_c_name("acc_rows", taken)
        rv = Value(graph, "acc_rows", TensorType((1,), FLOAT), None, "state")
        acc_args.append(Arg(rows_c, "state", rv, "int64_t", False, "[1] int64  rows accumulated, 0 at the start"))
    acc_layout = {**{f"acc/{w}": (tuple(low.params[w].shape), em.dtype) for w in acc_c},
                  **({"acc_rows": ((1,), "int64")} if accumulates else {})}

    # the hyperparameters: a struct the caller passes (NULL: the spec's values), read at run time
    hp_c = fresh_c_name("hparams", taken)
    fields = run_time_hparams(optimizer)
    values = flat_hparams(optimizer)
    hp_type = f"{graph.name}_hparams"
    hp_arg = Arg(hp_c, "hparams", None, hp_type, True,
                 f"NULL for the values compiled in ({graph.name.upper()}_HPARAMS_DEFAULT), or your own")
    recipe = scheduled or clipped or accumulates
    # the update functions take the step's learning rate when they read it (Adam's is in step_size)
    lr_arg = recipe and optimizer.kind in ("sgd", "adamw")
    em.hparams = dict(ctype=hp_type, macro=f"{graph.name.upper()}_HPARAMS_DEFAULT", optimizer=describe(optimizer),
                      fields=[(k, str(int(values[k])) if k in INT_HPARAMS else _literal(values[k]), HPARAM_DOC[k],
                               "int64_t" if k in INT_HPARAMS else "double") for k in fields],
                      define=dict(kind=optimizer.kind, momentum="momentum" in fields,
                                  wd="weight_decay" in fields, hparams=hp_type, recipe=lr_arg,
                                  scaled=clipped or accumulates, schedule=optimizer.schedule.kind, clip=clipped,
                                  check=recipe, accumulate=accumulates))
    em.hparams["recipe"] = _recipe_doc(graph.name, optimizer)
    lr_c = "gc_lr" if scheduled else "gc_hp->lr"

    # the optimizer's records, one per param (plus Adam's step count and bias corrections first)
    first: tuple = ()
    if isinstance(optimizer, Adam):
        first = (AdamStepCount("Adam step count", (), (), t_c, counted=scheduled, lr=lr_c),)
    prologue = (RecipeBegin("the run-time hyperparameters; the schedule", (), (), check=recipe,
                            t=t_c if scheduled else None),) if recipe else ()
    grads = {w: low.outputs[f"d_{w}"] for w in params}
    counts = {w: c_count(low.params[w].shape, em.dim_names) for w in params}
    norm = None
    out_norm: Arg | None = None
    if clipped:
        norm_name = fresh_c_name("grad_norm", taken | {c_name(k) for k in fwd.outputs})
        out_norm = Arg(norm_name, "output", Value(graph, norm_name, TensorType((), FLOAT), None, "output"),
                       em.ctype, False, "[1] (a scalar)  out: the gradients' 2-norm before clipping")
        norm = GradNorm("clip_grad_norm_", (), tuple(grads.values()), counts=tuple(counts[w] for w in params),
                        out=norm_name)
    updates = []
    for w in params:
        pv, gv = low.params[w], low.outputs[f"d_{w}"]
        common = dict(param=c_name(w), grad=c_name(gv.name), count=counts[w],
                      lr=lr_c, parallel=worth_parallel(numel(pv.shape)), recipe=lr_arg,
                      gscale=("gc_gscale" if clipped else "(gc_real)1") if clipped or accumulates else None)
        comment, uses = f"update {w} from d_{w}", (gv, pv)
        if isinstance(optimizer, SGD):
            record = SgdUpdate(comment, (), uses, buf=slot_c.get(("momentum", w)), **common)
        else:
            record = AdamUpdate(comment, (), uses, m=slot_c[("m", w)], v=slot_c[("v", w)], **common)
        updates.append(ParamUpdate(pv, gv, c_name(w), record))
    split = {u.record.parallel for u in updates}
    if len(split) > 1:
        updates = [replace(u, record=replace(u.record, mixed=True)) for u in updates]
    em.hparams["define"]["parallel"] = "some" if len(split) > 1 else "all" if split == {True} else "none"
    # plain SGD updates a weight in its gradient's GEMM, so the gradient is never stored; clipping
    # needs every gradient's norm before the first update: then they are stored, and updated last
    plain_sgd = isinstance(optimizer, SGD) and not optimizer.momentum and not optimizer.weight_decay and not clipped
    plan = OptimizerUpdates(tuple(updates), first, norm, f"(gc_real){lr_c}" if plain_sgd else None,
                            "SGD, as torch.optim.SGD: {w} -= lr d_{w}")

    doc = (f"one training step of {describe(optimizer)}: the outputs, the gradients of the loss {grad_of} "
           f"with respect to {', '.join(params)} (in the workspace), then {', '.join(params)} updated in place")
    states = {k: tg.updates[k][1] for k in tg.states if k in tg.updates}    # state -> its new value's output
    if states:
        doc += f"; the model state {', '.join(states)} updated in place"
    if clipped:
        doc += f"; {out_norm.cname} is the gradients' global 2-norm before clipping to max_norm"
    f = em.add_function("train_step", doc, tg, output_args(fwd), updated=set(params) | set(states), lowered=low,
                        updates=plan, writes=states)
    f.prologue = prologue
    inputs = [a for a in f.args if a.role == "input" and a.value.name not in state_inputs]
    pargs = [a for a in f.args if a.role in ("param", "param*")]
    out_args = [a for a in f.args if a.role == "output"] + ([out_norm] if out_norm else [])
    # signature: inputs, params, optimizer state, hyperparameters, outputs, workspace
    f.args = inputs + pargs + state_args + [hp_arg] + out_args

    step_args = [("input", a.value.name, a.cname) for a in inputs]
    step_args += [("param", a.value.name, a.cname) for a in pargs]
    step_args += [("state", k, a.cname) for k, a in zip(state_layout, state_args)]
    step_args.append(("hparams", "hparams", hp_c))
    out_names = {c_name(k): k for k in fwd.outputs}
    if out_norm is not None:
        out_names[out_norm.cname] = out_norm.cname
    outputs = [(out_names[a.cname], a.cname) for a in out_args]
    out_types = {k: (tuple(v.shape), v.dtype == INT) for k, v in fwd.outputs.items()}
    if out_norm is not None:
        out_types[out_norm.cname] = ((), False)
    step_args += [("output", k, c) for k, c in outputs]
    acc_layout_args = [("state", k, a.cname) for k, a in zip(acc_layout, acc_args)]
    accumulate_args, apply_args = [], []
    if accumulates:
        accumulate_args, apply_args = _add_accumulation(em, graph, tg, low, fwd, params, states, state_inputs, grads,
                                                        counts, updates, first, prologue, pargs, state_args,
                                                        state_layout, acc_args, acc_layout_args, hp_arg, out_norm,
                                                        clipped)
    state_layout.update(acc_layout)

    # ---- fit: only when the batch dim exists and leads every input that has it
    sym = graph.symbolic_dims
    batched = [k for k, v in graph.inputs.items() if sym and sym[0] in v.shape]
    fit_ok = bool(sym) and all(graph.inputs[k].shape[0] == sym[0] and sym[0] not in graph.inputs[k].shape[1:]
                               for k in batched) and bool(batched)
    fit_args: list[tuple[str, str, str]] = []
    if fit_ok:
        fit_args = add_fit(em, graph, f, inputs, pargs, state_args + acc_args + [hp_arg], state_layout, out_args,
                            outputs, loss_name, batched, taken, out_norm, accumulates, params)
    f.train_layout = TrainLayout(optimizer, params, step_args, state_layout, loss_name, outputs, out_types,
                                 fit_ok, fit_args, batched, fields, hp_type,
                                 tuple(k for k in fields if k in INT_HPARAMS), out_norm.cname if out_norm else None,
                                 accumulate_args, apply_args)


def _recipe_doc(name: str, optimizer) -> list[str]:
    """The header's paragraphs on the schedule, clipping and accumulation compiled in."""
    out = []
    kind = optimizer.schedule.kind
    if kind != "constant":
        rule = ("lr gamma^floor((t - 1) / step_size), as torch.optim.lr_scheduler.StepLR" if kind == "step" else
                "lr (t / warmup) while t <= warmup, then min_lr + (lr - min_lr) (1 + cos(pi (t - 1 - warmup) / "
                "(total - warmup))) / 2, and min_lr from step total + 1 on (linear warmup, cosine decay)")
        out.append(f"Schedule: step t (1, 2, ...: the step count {'Adam keeps' if isinstance(optimizer, Adam) else 'the state keeps'}, "
                   f"counted by {name}_train_step) runs at the learning rate {rule}; lr is the peak.")
    if optimizer.max_norm is not None:
        out.append(f"Clipping, as torch.nn.utils.clip_grad_norm_: the 2-norm of every gradient together, norm, is "
                   f"written to grad_norm, and when max_norm / (norm + 1e-6) < 1 the gradients are scaled by it "
                   f"before the update (so {name}_train_step stores every gradient first).")
    if optimizer.accumulate > 1:
        out.append(f"Accumulation: {name}_accumulate adds a micro-batch's gradients (times its rows) to the "
                   f"accumulators and {name}_apply makes one step from their mean, as one train step on the "
                   f"micro-batches together would; {name}_fit steps every `accumulate` minibatches.")
    return out


def _add_accumulation(em, graph, tg, low, fwd, params, states, state_inputs, grads, counts, updates, first, prologue,
                      pargs, state_args, state_layout, acc_args, acc_layout_args, hp_arg, out_norm, clipped):
    """NAME_accumulate (a micro-batch's forward and backward pass, its gradients added to the
    accumulators weighted by its rows) and NAME_apply (one optimizer step from their mean)."""
    acc = {w: a.cname for w, a in zip(params, acc_args)}
    rows_c = acc_args[-1].cname
    records = tuple(ParamUpdate(low.params[w], grads[w], c_name(w),
                                AccumulateGrad(f"{acc[w]} += n d_{w}", (), (grads[w],), acc=acc[w],
                                               grad=c_name(grads[w].name), count=counts[w], weight="(gc_real)n"))
                    for w in params)
    plan = OptimizerUpdates(records, (AccumulateGrad("the rows accumulated", (), (), acc=rows_c, weight="n"),))
    doc = (f"one micro-batch of gradient accumulation: the outputs, and the gradients of the loss with respect to "
           f"{', '.join(params)} added to {', '.join(acc.values())} times the rows n (the loss is a mean over the "
           f"rows: {graph.name}_apply divides by the rows accumulated, {rows_c})")
    if states:
        doc += f"; the model state {', '.join(states)} updated in place"
    fa = em.add_function("accumulate", doc, tg, output_args(fwd), updated=set(states), lowered=low, updates=plan,
                         writes=states)
    inputs = [a for a in fa.args if a.role == "input" and a.value.name not in state_inputs]
    fpargs = [a for a in fa.args if a.role in ("param", "param*")]
    out_args = [a for a in fa.args if a.role == "output"]
    fa.args = inputs + fpargs + acc_args + out_args
    accumulate_args = [("input", a.value.name, a.cname) for a in inputs]
    accumulate_args += [("param", a.value.name, a.cname) for a in fpargs]
    accumulate_args += acc_layout_args
    out_names = {c_name(k): k for k in fwd.outputs}
    accumulate_args += [("output", out_names[a.cname], a.cname) for a in out_args]

    # NAME_apply: hand-written around the train step's own update records, reading the accumulators
    mean = "gc_mean"
    norm = GradNorm("the mean of the accumulated gradients", (), (), grads=tuple(acc[w] for w in params),
                    counts=tuple(counts[w] for w in params), out=out_norm.cname if out_norm else None, mean=mean,
                    clip=clipped)
    steps = list(prologue) + list(first) + [norm] + [replace(u.record, grad=acc[u.param.name], gscale="gc_gscale")
                                                      for u in updates]
    from graphc.backend.templates import render_kernel
    body = "\n".join(render_kernel(st, em.dim_names).strip("\n") for st in steps)
    trained = [a for a in pargs if a.value.name in params]
    args = trained + state_args + acc_args + [hp_arg] + ([out_norm] if out_norm else [])
    sig = [c_param(a.ctype, a.cname, a.const) for a in args]
    ctx = dict(name=graph.name, hp=hp_arg.cname, hparams=em.hparams["ctype"],
               wrapped=c_wrap(f"int {graph.name}_apply", sig), wrapped_decl=c_wrap(f"int {graph.name}_apply", sig, ");"),
               signature=c_signature(sig), null_checks=c_any_null([a.cname for a in args if a.role != "hparams"]),
               rows=rows_c, mean=mean, body=body, accumulators=[(acc[w], counts[w]) for w in params],
               args=[dict(cname=a.cname, doc=(f"{a.role:<7} " if a.role != "hparams" else "hparams ") + a.shape_doc
                          + ("  (updated in place)" if a.role in ("param*", "state") else "")) for a in args])
    tpl = environment().get_template("apply.c.j2")
    em.extras.append(dict(source=tpl.render(ctx, part="source"), header=tpl.render(ctx, part="header"),
                          cdef=tpl.render(ctx, part="cdef")))
    apply_args = [("param", a.value.name, a.cname) for a in trained]
    apply_args += [("state", k, a.cname) for k, a in zip(state_layout, state_args)]
    apply_args += acc_layout_args + [("hparams", "hparams", hp_arg.cname)]
    apply_args += [("output", out_norm.cname, out_norm.cname)] if out_norm else []
    return accumulate_args, apply_args


__all__ = ["add_train_functions"]
