"""NAME_generate: a language model's sampling loop in C (the spec's [generate]; Graph.generate_from).

In: the Emitter after its forward and predict functions; the graph's `generation` (the int32
token input [N, T] and the logits output [N, T, V]). Out: one more C function in the model's
source (templates/generate.c.j2) and what Python needs to call it (`GenerateLayout`).

NAME_generate(prompt, prompt_len, count, context, temperature, seed, params..., out, workspace)
appends `count` tokens to the prompt, one per call of the model's predict function (forward when
that needs nothing else) at batch 1 on the last `context` tokens: the next token is drawn from
softmax(logits at the last position / temperature) by the kernel library's gc_sample, keyed by
(seed, the token's position), so a run is reproducible bit for bit (native/generate.py's
reference draws the same tokens in NumPy). When the sequence length is a run-time dim the model
runs on exactly the window; when it is fixed (T = 64), the window is padded on the right with
token 0 to T, which leaves the logits at the window's last position unchanged for a causal model
(one whose position t reads only positions <= t, as a GPT's masked attention does).
"""
from __future__ import annotations

from dataclasses import dataclass

from graphc.backend.cprint import c_name, c_param, c_poly, c_size_poly, c_wrap
from graphc.backend.sizes import numel
from graphc.core.arguments import dim_bounds
from graphc.core.errors import GraphcError
from graphc.core.ir import Graph


@dataclass(frozen=True)
class GenerateLayout:
    """How native/generate.py calls NAME_generate."""
    params: tuple            # the param names passed, in order
    context: int | None      # the fixed sequence length, or the largest run-time one (None: unbounded)
    fixed: bool              # the sequence length is fixed (the window is padded to it)
    vocabulary: int


def add_generate(em, graph: Graph) -> GenerateLayout | None:
    """Render NAME_generate into em.extras when the graph declares [generate]."""
    if graph.generation is None:
        return None
    ids, logits = graph.generation
    f = next((f for f in em.functions if f.name in ("predict", "forward")
              and [a.value.name for a in f.args if a.role == "input"] == [ids]
              and any(a.role == "output" and a.cname == c_name(logits) for a in f.args)), None)
    if f is None:
        raise GraphcError(f"{graph.name}: [generate] needs an output {logits!r} that the token input {ids!r} "
                          f"and the params alone compute", hint="the logits must not need the targets or other data")
    x = graph.inputs[ids]
    seq, vocab = x.shape[-1], int(graph.outputs[logits].shape[-1])
    batch = x.shape[0] if x.rank == 2 else None
    dims = dict(em.c_dims)              # symbolic dim -> its C argument
    runtime = [d for d in dims if d not in (batch, seq)]
    if runtime or isinstance(batch, int) and batch != 1:
        raise GraphcError(f"{graph.name}: [generate] runs the model on one sequence; it has "
                          f"{'run-time dims ' + ', '.join(runtime) if runtime else f'a batch of {batch}'} besides it",
                          hint="the token input [N, T] with N the batch (or 1) and T the sequence")
    longest, fixed = context_bound(graph)

    def at(window: str) -> list[str]:
        """Each dim's C argument when the model runs on one sequence of `window` tokens."""
        return [("1" if d == batch else window) for d in dims] or ["1"]

    outs = [a for a in f.args if a.role == "output"]
    params = [a for a in f.args if a.role == "param"]
    in_context = dict(zip(dims, at("(context)")))     # each count as an expression of `context`

    # the called function's own workspace: the packing share, then its arena alone (not a train
    # step's, which the model's workspace size holds): no larger than the model's for any context
    def own(args: dict) -> str:     # in the dims' values `args` (dim -> C text)
        pack = ", ".join([args[d] for d in dims] or ["1"])
        return (f"(({c_size_poly(f.sched.arena, args or '1')} + {graph.name}_PACK_ELEMS({pack}, GC_MAX_THREADS))"
                f" * sizeof({em.ctype}) + 64)")
    ctx = dict(
        name=graph.name, ctype=em.ctype, sample="gc_sample_" + ("d" if em.ctype == "double" else "f"),
        fname=f"{graph.name}_{f.name}",
        ids=c_name(ids), logits=c_name(logits), vocab=vocab,
        fixed=longest if fixed else None, bound=None if fixed else longest,
        outputs=[dict(cname=a.cname, count=c_poly(numel(a.value.shape), in_context), logits=a.cname == c_name(logits))
                 for a in outs],
        params=[dict(decl=c_param(a.ctype, a.cname, True), cname=a.cname) for a in params],
        call=c_wrap(f"gc_status = {graph.name}_{f.name}", at("gc_w") + ["gc_window"] + [a.cname for a in params]
                    + [f"gc_o_{a.cname}" for a in outs] + ["gc_ws"], ");"),
        size_call=f"{graph.name}_workspace_size({', '.join(at('context'))})", own_bytes=own(in_context),
        wrapped=c_wrap(f"int {graph.name}_generate", _signature(em, params), ")"),
        wrapped_decl=c_wrap(f"int {graph.name}_generate", _signature(em, params), ");"),
        signature=", ".join(_signature(em, params)),
    )
    from graphc.backend.templates import environment
    tpl = environment().get_template("generate.c.j2")
    em.extras.append(dict(source=tpl.render(ctx, part="source"), header=tpl.render(ctx, part="header"),
                          cdef=tpl.render(ctx, part="cdef")))
    return GenerateLayout(tuple(a.value.name for a in params), longest, fixed, vocab)


def context_bound(graph: Graph) -> tuple[int | None, bool]:
    """The longest window NAME_generate takes, and whether it is the only one: the token input's
    fixed sequence length (True), else the largest run-time one a node bounds (x[:T] of a positional
    table of 64 rows: 64), else None (any length)."""
    seq = graph.inputs[graph.generation[0]].shape[-1]
    if isinstance(seq, int):
        return seq, True
    return dim_bounds(graph).get(seq, (None,))[0], False


def _signature(em, params) -> list[str]:
    return (["const int32_t *prompt", "long prompt_len", "long count", "long context", "double temperature",
             "unsigned long seed"] + [c_param(p.ctype, p.cname, True) for p in params]
            + ["int32_t *out", "void *workspace"])
