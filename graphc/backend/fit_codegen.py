"""NAME_fit in C: one epoch of training over a dataset in one call (templates/fit.c.j2).

In: the Emitter after NAME_train_step (train_codegen.py's `add_train_functions` calls `add_fit`
with the train step's Function and arguments). Out: one more C function in the model's source,
and the (role, name, C name) list of its arguments the Python Trainer passes.

NAME_fit(n_total, batch, [other dims], dataset, order, params, state, losses, workspace) walks
the rows in the order given, `batch` at a time (the last minibatch takes the rest): it gathers
each minibatch's rows of the batched inputs into staging buffers in the workspace (their sizes a
table of polynomials in the dims, gc_size_poly), checks the label ids in range once for the whole
dataset, and calls NAME_train_step (or, with gradient accumulation, NAME_accumulate and every
`accumulate` minibatches NAME_apply), writing each minibatch's loss to losses[].
"""
from __future__ import annotations

from graphc.backend.cprint import (c_any_null, c_long, c_name, c_named, c_param, c_poly, c_poly_table, c_signature,
                                   c_size_poly, c_wrap)
from graphc.backend.sizes import numel
from graphc.backend.templates import environment
from graphc.core.ir import Value
from graphc.core.names import fresh_name


def fresh_c_name(base: str, taken: set[str]) -> str:
    """A C identifier near `base` that no argument or local of the function uses. A name that
    starts with gc_ never collides with a spec name (c_name mangles those)."""
    plain = (base,) if c_name(base) == base else ()
    cand = fresh_name(taken.__contains__, (*plain, f"gc_{base}"), f"gc_{base}", start=2)
    taken.add(cand)
    return cand


def add_fit(em, graph, f, inputs, pargs, state_args, state_layout, out_args, outputs, loss_name, batched,
             taken, out_norm=None, accumulates=False, trained=()) -> list[tuple[str, str, str]]:

    ctype = em.ctype
    names = {a.cname for a in f.args}
    fit_taken = set(names) | set(em.dim_args)
    n_total, batch, order, losses = (fresh_c_name(x, fit_taken) for x in ("n_total", "batch", "order", "losses"))
    sym = graph.symbolic_dims[0]
    others = em.dim_args[1:]                  # the other run-time dims: as train_step takes them
    in_fit = dict(zip(graph.symbolic_dims, (batch, *others)))   # C names of the dims inside NAME_fit
    loss_c = c_name(loss_name)

    def row(v: Value) -> str:
        """The elements of one row (all but the batch axis), as C text in the fit function."""
        size = numel(v.shape[1:])
        return c_poly(size, in_fit) if size.is_const else f"({c_poly(size, in_fit)})"

    in_ctx = [dict(cname=a.cname, ctype=a.ctype, batched=a.value.name in batched, row=row(a.value),
                   size=numel(a.value.shape)) for a in inputs]
    checks = {c: bound for c, _count, bound in f.label_checks}
    label_checks = [dict(cname=x["cname"], row=x["row"], bound=c_named(checks[x["cname"]], em.dim_names))
                    for x in in_ctx if x["batched"] and x["cname"] in checks]
    for c in label_checks:
        times = "" if c["row"] == "1" else f" * {c['row']}" + ("L" if c["row"].isdigit() else "")
        c["test"] = f"!gc_ids_in_range({c['cname']}, {n_total}{times}, {c['bound']})"
    staging = [dict(cname=x["cname"], ctype=x["ctype"], size=x["size"],
                    doc=f"the rows of {x['cname']}") for x in in_ctx if x["batched"]]
    for a in out_args:
        staging.append(dict(cname=a.cname, ctype=a.ctype, size=numel(a.value.shape), doc=f"output {a.cname}"))
    table_dims = list(graph.symbolic_dims)
    rows = {s["cname"]: c_poly_table(s["size"], table_dims) for s in staging}
    terms = max(len(r) for r in rows.values())     # tables padded with zero terms to one length
    zero = "{ " + ", ".join(["0"] * (len(table_dims) + 1)) + " }"
    for s in staging:
        s["unit"] = f"sizeof({s['ctype']})"
        s["padded"] = "{ " + ", ".join(rows[s["cname"]] + [zero] * (terms - len(rows[s["cname"]]))) + " }"
    staged = {s["cname"] for s in staging}
    step_call = []
    for a in f.args:
        step_call.append(f"gc_s_{a.cname}" if a.cname in staged else a.cname)

    def doc(a) -> str:
        if a.role == "hparams":
            return f"hparams {a.shape_doc}"
        extra = "  int32" if a.ctype == "int32_t" else ""
        upd = "  (updated in place)" if a.role in ("param*", "state") else ""
        return f"{a.role:<7} {a.shape_doc}{extra}{upd}"

    sig = [c_long(n_total), c_long(batch)] + [c_long(d) for d in others]
    args_doc = [dict(cname=n_total, doc="rows of the dataset, >= 1"),
                dict(cname=batch, doc="rows per minibatch, >= 1 (the last minibatch takes the rest)")]
    args_doc += [dict(cname=c, doc=f"the run-time dim {d}, >= 1, the same for every row")
                 for d, c in zip(graph.symbolic_dims[1:], others)]
    fit_args: list[tuple[str, str, str]] = []
    for a, x in zip(inputs, in_ctx):
        sig.append(c_param(a.ctype, a.cname, True))
        if x["batched"]:
            shape = "[" + ", ".join([n_total] + [graph.dim_label(d) for d in a.value.shape[1:]]) + "]"
            args_doc.append(dict(cname=a.cname, doc=f"dataset {shape}{'  int32' if a.ctype == 'int32_t' else ''}, all rows"))
        else:
            args_doc.append(dict(cname=a.cname, doc="input   " + a.shape_doc + "  (the same for every minibatch)"))
        fit_args.append(("input", a.value.name, a.cname))
    sig.append(c_param("int64_t", order, True))
    args_doc.append(dict(cname=order, doc=f"[{n_total}] int64  a permutation of 0 .. {n_total}-1: the rows in the order trained"))
    fit_args.append(("order", "order", order))
    for a in pargs + state_args:
        sig.append(c_param(a.ctype, a.cname, a.const))
        args_doc.append(dict(cname=a.cname, doc=doc(a)))
    fit_args += [("param", a.value.name, a.cname) for a in pargs]
    fit_args += [("state", k, a.cname) for k, a in zip(state_layout, state_args)]
    fit_args += [("hparams", "hparams", a.cname) for a in state_args if a.role == "hparams"]
    sig.append(c_param(ctype, losses, False))
    args_doc.append(dict(cname=losses, doc=f"[ceil({n_total} / {batch})]  out: the loss (output `{loss_name}`) "
                                           f"of each minibatch"))
    fit_args.append(("losses", "losses", losses))
    sig.append("void *workspace")
    args_doc.append(dict(cname="workspace", doc=f"{em.graph.name}_fit_workspace_size({batch}) bytes, 64-byte aligned"))
    signature = c_signature(sig)
    null_checks = c_any_null(["workspace"] + [a.cname for a in inputs + pargs + state_args if a.role != "hparams"]
                             + [order, losses])
    dims = [batch, *others]
    acc_call = apply_call = None
    hp = next(a.cname for a in state_args if a.role == "hparams")
    if accumulates:
        fa = next(x for x in em.functions if x.name == "accumulate")
        acc_call = c_wrap(f"gc_status = {graph.name}_accumulate",
                          ["gc_rows", *others] + [f"gc_s_{a.cname}" if a.cname in staged else a.cname for a in fa.args]
                          + ["workspace"], ");")
        apply_names = [a.cname for a in pargs if a.value.name in trained] + [a.cname for a in state_args]
        apply_names += [f"gc_s_{out_norm.cname}"] if out_norm is not None else []
        apply_call = c_wrap(f"gc_status = {graph.name}_apply", apply_names, ");")
    ctx = dict(name=graph.name, ctype=ctype, signature=signature, args=args_doc, wrap=c_wrap,
               accumulate_call=acc_call, apply_call=apply_call, hp=hp, hparams=em.hparams["ctype"],
               wrapped=c_wrap(f"int {graph.name}_fit", sig),
               step_call=c_wrap(f"gc_status = {graph.name}_train_step", ["gc_rows", *others] + step_call + ["workspace"],
                                ");"),
               dims=dims, dim_params=[c_long(d) for d in dims], max_args=[f"max_{d}" for d in dims], others=list(others),
               wrapped_decl=c_wrap(f"int {graph.name}_fit", sig, ");"), inputs=in_ctx, label_checks=label_checks,
               staging=staging, terms=terms, width=len(table_dims) + 1, step_args=step_call, loss=loss_c, order=order,
               losses=losses, n_total=n_total, batch=batch, batch_dim=sym, null_checks=null_checks)
    for s in staging:
        s["size_expr"] = c_size_poly(s["size"], {d: f"max_{c}" for d, c in in_fit.items()})
    tpl = environment().get_template("fit.c.j2")
    em.extras.append(dict(source=tpl.render(ctx, part="source"), header=tpl.render(ctx, part="header"),
                          cdef=tpl.render(ctx, part="cdef")))
    return fit_args
