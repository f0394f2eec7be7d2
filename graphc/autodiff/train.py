"""Optimizer updates in the IR: the train step as a graph.

In: a forward Graph, the loss, the params to train and an optimizer (graphc.SGD, graphc.Adam).
Out: a Graph whose inputs are the forward inputs, the params and the optimizer state, and
whose outputs are the forward outputs, the updated params (`next_W`) and the updated state
(`next_m_W`, ..., Adam's step count `next_adam_t`). It is the backward graph of graphc.grad
followed by the update written with ordinary ops, so `print` shows it, graphc.evaluate runs
it, and the C of NAME_train_step (templates/kernels/optimizer.c.j2) is tested against it.
It never emits C.

State inputs: `momentum_W` (SGD), `m_W` and `v_W` (Adam), `adam_t` (Adam's step count, a
scalar; `sgd_t` for SGD under a schedule), each with a `_1`, `_2`, ... suffix should the model use
the name already. `graph.updates` maps each trained param and state key of TrainState.buffers
("m/W", "t") to its (input name, output name) pair.

The recipe: under a schedule (optimizer.schedule not Constant) the learning rate of the step is a
scalar input `lr` (the schedule's value at this step, optimizer.lr_at(t): the IR has no cos or
floor; the C computes it from t); with max_norm, the gradients are scaled as
torch.nn.utils.clip_grad_norm_ does before the update (scale = max_norm / (norm + 1e-6) when less
than 1; norm the 2-norm of every gradient together), and the output `grad_norm` is that norm.
`graph.recipe` names these values: {"lr": input name, "grad_norm": output name} (those present).
"""
from __future__ import annotations

import math

from graphc.core.errors import GraphcError
from graphc.core.ir import Graph, Origin, Value, fresh_name


def _fresh(g: Graph, base: str) -> str:
    """`base`, else base_1, base_2, ...: a name no value or output of g has."""
    return fresh_name(g.has_name, (base,), f"{base}_", start=1)


def train_graph(graph: Graph, grad_of: str, wrt: list[str], optimizer) -> Graph:
    """The forward pass, the backward pass and `optimizer`'s update of `wrt`, as one Graph."""
    from graphc.autodiff.grad import grad
    from graphc.autodiff.optimizers import Adam, AdamW, Constant, SGD, check_optimizer

    check_optimizer(optimizer)
    params = [w for w in graph.params if w in wrt]
    if not params:
        raise GraphcError(f"train_graph: wrt={wrt} names no param of {graph.name}",
                          hint=f"the params are {', '.join(graph.params)}")
    bwd = grad(graph, grad_of, params)
    g, _ = bwd.copy(f"{graph.name}_train_step")
    state = {(w, slot): g.input(_fresh(g, f"{slot}_{w}"), graph.params[w].shape) for slot in optimizer.slots()
             for w in params}
    updated: dict[str, Value] = {}      # param name or state key ("m/W", "t") -> its new value
    inputs: dict[str, Value] = {w: g.params[w] for w in params}
    inputs.update({f"{slot}/{w}": v for (w, slot), v in state.items()})

    def const(x: float) -> Value:
        return g.apply("const", value=float(x))

    decoupled = isinstance(optimizer, AdamW)
    recipe: dict[str, str] = {}
    scheduled = not isinstance(optimizer.schedule, Constant)
    lr = g.input(_fresh(g, "lr"), ()) if scheduled else None
    if lr is not None:
        recipe["lr"] = lr.name

    def rate() -> Value:
        return lr if lr is not None else const(optimizer.lr)

    scale = None
    if optimizer.max_norm is not None:
        with g.origin(Origin("clip_grad_norm_: norm = sqrt(sum of d_p^2 over every param); "
                             "scale = min(1, max_norm / (norm + 1e-6))")):
            with g.naming("clip"):
                squares = [g.apply("sum", g.apply("square", g.outputs[f"d_{w}"])) for w in params]
                total = squares[0]
                for sq in squares[1:]:
                    total = total + sq
                norm = g.rename(g.apply("sqrt", total), _fresh(g, "grad_norm"))
                ratio = const(optimizer.max_norm) / (norm + const(1e-6))
                # min(1, ratio) = 1 - relu(1 - ratio): exactly 1 when ratio >= 1 (no clipping)
                scale = g.rename(const(1.0) - g.apply("relu", const(1.0) - ratio), _fresh(g, "clip_scale"))
        recipe["grad_norm"] = norm.name

    def gradient(w: str) -> Value:
        d = g.outputs[f"d_{w}"]
        if scale is not None:
            d = scale * d
        return d + const(optimizer.weight_decay) * g.params[w] if optimizer.weight_decay and not decoupled else d

    def decayed(w: str) -> Value:
        """AdamW's decoupled decay, p (1 - lr weight_decay), before the Adam step."""
        if not decoupled:
            return g.params[w]
        if lr is None:
            return g.params[w] * const(1.0 - optimizer.lr * optimizer.weight_decay)
        return g.params[w] * (const(1.0) - lr * const(optimizer.weight_decay))

    names = {key: _fresh(g, f"next_{v.name}") for key, v in inputs.items()}
    names["t"] = _fresh(g, "next_adam_t") if isinstance(optimizer, Adam) else None
    if isinstance(optimizer, SGD) and optimizer.counts_steps:
        inputs["t"] = t_sgd = g.input(_fresh(g, "sgd_t"), ())
        names["t"] = _fresh(g, f"next_{t_sgd.name}")

    def define(key: str, build) -> Value:
        """updated[key] = build(), its temporaries named next_X__0, ... and the result next_X."""
        with g.naming(names[key]):
            value = build()
        if value.node is not None and value.name != names[key]:
            g.rename(value, names[key])
        updated[key] = value
        return value

    if isinstance(optimizer, SGD) and "t" in inputs:
        with g.origin(Origin("the step count the schedule reads: t += 1")):
            define("t", lambda: inputs["t"] + const(1.0))
    if isinstance(optimizer, SGD):
        for w in params:
            with g.origin(Origin(f"SGD update of {w}: {_sgd_text(optimizer)}")):
                if optimizer.momentum:
                    step = define(f"momentum/{w}", lambda w=w: const(optimizer.momentum) * state[(w, "momentum")]
                                  + gradient(w))
                    define(w, lambda w=w, step=step: g.params[w] - rate() * step)
                else:
                    define(w, lambda w=w: g.params[w] - rate() * gradient(w))
    elif isinstance(optimizer, Adam):
        inputs["t"] = t = g.input(_fresh(g, "adam_t"), ())
        b1, b2 = optimizer.beta1, optimizer.beta2
        with g.origin(Origin("Adam: t += 1; step_size = lr / (1 - beta1^t); bc2_sqrt = sqrt(1 - beta2^t)")):
            t_next = define("t", lambda: t + const(1.0))
            with g.naming("adam"):
                # beta^t = exp(t ln beta): the IR has no pow; the C computes pow(beta, t) in double
                power1 = g.apply("exp", t_next * const(math.log(b1))) if b1 > 0 else const(0.0)
                power2 = g.apply("exp", t_next * const(math.log(b2))) if b2 > 0 else const(0.0)
                step_size = g.rename(rate() / (const(1.0) - power1), _fresh(g, "adam_step_size"))
                bc2_sqrt = g.rename(g.apply("sqrt", const(1.0) - power2), _fresh(g, "adam_bc2_sqrt"))
        for w in params:
            with g.origin(Origin(f"{type(optimizer).__name__} update of {w}")):
                with g.naming(f"g_{w}"):
                    gw = gradient(w)
                m = define(f"m/{w}", lambda w=w, gw=gw: const(b1) * state[(w, "m")] + const(1.0 - b1) * gw)
                v = define(f"v/{w}", lambda w=w, gw=gw: const(b2) * state[(w, "v")]
                           + const(1.0 - b2) * g.apply("square", gw))
                define(w, lambda w=w, m=m, v=v: decayed(w) - step_size * m
                       / (g.apply("sqrt", v) / bc2_sqrt + const(optimizer.eps)))
    # the model state (batch_norm's running statistics, dropout's step count): by its ops' rules
    # (grad above refuses state in wrt)
    from graphc.autodiff.modes import state_updates
    with g.origin(Origin("the model state's update")):
        news = state_updates(g)
    for sname, value in news.items():
        names[sname] = _fresh(g, f"next_{sname}")
        inputs[sname] = g.params[sname]
        if value.node is not None and value.name != names[sname]:
            g.rename(value, names[sname])
        updated[sname] = value
    g.updates = {}          # the copy carried bwd's (none): these are the train step's own
    for key, value in updated.items():
        g.output(names[key], value)
        g.updates[key] = (inputs[key].name, names[key])
    if "grad_norm" in recipe:
        g.output(recipe["grad_norm"], g.values[recipe["grad_norm"]])
    g.recipe = recipe
    return g


def _sgd_text(opt) -> str:
    g = "g = dJ/dp" + (" + weight_decay p" if opt.weight_decay else "")
    return g + ("; v = momentum v + g; p -= lr v" if opt.momentum else "; p -= lr g")
