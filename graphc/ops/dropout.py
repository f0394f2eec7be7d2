"""Dropout, with torch.nn.functional's name and arguments: dropout(x, p).

In training each element of x is kept with probability 1 − p and scaled by 1/(1 − p), else
zeroed; in inference (NAME_predict) dropout is the identity. The mask comes from a counter-based
generator keyed by the node's seed, the model's step count and the element's index (the kernel
library's gc_random_bits; `random_bits` of graphc/core/random.py is the same function in NumPy), so a training run
is reproducible bit for bit, in the reference and in C, on any thread count.

The step count is model state: a scalar `dropout_step` that every dropout of the graph reads,
which graphc declares with the first dropout (init 0) and train_step advances by one. forward
and value_and_grad use the mask of the current step, the one train_step uses next.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import SpecError
from graphc.core.ir import TensorType
from graphc.core.opdef import OpDef, register, require_float
from graphc.core.random import random_bits
from graphc.core.text import ATOM

STEP = "dropout_step"          # the name of the graph's step count
def threshold(p: float) -> int:
    """An element is kept when its bits are >= this: p · 2^32 (p < 1, so it fits 32 bits)."""
    return int(p * 4294967296.0)


def keep_scaled(seed: int, step: float, p: float, shape: tuple) -> np.ndarray:
    """The mask times 1/(1 − p): 1/(1 − p) where an element is kept, else 0."""
    bits = random_bits(seed, int(step), np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64))
    return np.where(bits >= threshold(p), 1.0 / (1.0 - p), 0.0).reshape(shape)


def _step_value(step: np.ndarray) -> int:
    """The step count as the C reads it: truncated, and 0 for a value outside [0, 2^32) or NaN
    (which C could not convert to unsigned)."""
    s = float(np.asarray(step).reshape(-1)[0])
    return int(s) if 0 <= s < 4294967296.0 else 0


def _check_p(p) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise SpecError(f"dropout probability p must be a number in [0, 1), got {p!r}",
                        hint="p is the probability of zeroing an element: e.g. dropout(x, 0.1)")


@register
class Dropout(OpDef):
    """dropout(x, p=0.5): x ∘ m / (1 − p), m_i ∈ {0, 1} kept with probability 1 − p; identity in
    inference. `seed` tells the dropouts of one graph apart (by default their order in it).

    Backward, identity (4): an elementwise product with a constant mask, dJ/dx = δ ∘ m / (1 − p)."""

    name = "dropout"
    arity = 1                    # as written; `bind` adds the step count
    attrs = {"p": 0.5, "seed": -1}
    positional = ("input", "p", "seed")
    input_names = ("input",)
    state_inputs = (1,)
    shared_state = True          # the graph's one step count, advanced once per train step
    input_init = {1: "zeros"}
    identity = "4"

    def bind(self, graph, inputs, attrs):
        if attrs.get("seed", -1) == -1:
            attrs = {**attrs, "seed": sum(n.op.name == "dropout" for n in graph.nodes)}
        if len(inputs) != 1:
            return inputs, attrs             # the step count given (a test, a pass)
        step = graph.states.get(STEP)
        if step is None:
            if STEP in graph.values:
                raise SpecError(f"dropout needs the name {STEP!r} for its step count, but it is a "
                                f"{graph.values[STEP].kind} of the graph", hint=f"rename {STEP}")
            step = graph.state(STEP, (), init="zeros")
        return inputs + (step,), attrs

    def check_attrs(self, inputs, attrs):
        return super().check_attrs(inputs[:1], attrs)

    def shape(self, x, step, p=0.5, seed=-1):
        require_float(x)
        _check_p(p)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
            raise SpecError(f"dropout seed must be an integer in [0, 2^32), got {seed!r}")
        if step.shape != ():
            raise SpecError(f"dropout's step count must be a scalar, got shape {step.shape}")
        return TensorType(x.shape)

    def reference(self, x, step, p=0.5, seed=0):
        return x * keep_scaled(seed, _step_value(step), p, x.shape) if p else x.copy()

    def _mask(self, b, node):
        x, step = node.inputs
        return b.apply("dropout_mask", step, shape=tuple(x.shape), p=node.attrs["p"], seed=node.attrs["seed"])

    def lower(self, b, node):
        return b.mul(node.inputs[0], self._mask(b, node)) if node.attrs["p"] else node.inputs[0]

    def vjp(self, b, node, d):
        with b.because(node, "4"):
            return [b.mul(d, self._mask(b, node)) if node.attrs["p"] else d, None]

    def inference(self, b, node):
        return node.inputs[0]

    def positive_inputs(self, node):
        return [node.inputs[1]]          # a step count (example data: a count, not a negative float)

    def state_updates(self, b, node):
        return {1: b.add(node.inputs[1], 1.0)}

    def spec_text(self, node, arg):
        return f"dropout({arg(node.inputs[0])}, {node.attrs['p']!r}, seed={node.attrs['seed']})", ATOM

    def notation(self, p, node, x, _step):
        return p.call("dropout", [x])


@register
class DropoutMask(OpDef):
    """m / (1 − p) of a dropout: the scaled mask of `shape` at the step count (a scalar input).
    No gradient: it depends on the step, not on any trained value."""

    name = "dropout_mask"
    attrs = {"shape": (), "p": 0.5, "seed": 0}
    tuple_attrs = ("shape",)
    public = False
    leafy = True

    def shape(self, step, shape, p, seed):
        return TensorType(tuple(shape))

    def reference(self, step, shape, p, seed):
        return keep_scaled(seed, _step_value(step), p, tuple(shape))

    def kernel(self, k, node):
        return k.elementwise(node)

    def c_code(self, k, node):
        # {{IDX}}: the flat index of the element, filled in with the loop's indices (kernels.py)
        a = node.attrs
        # the step as unsigned, 0 outside [0, 2^32) (a negative or NaN float has no unsigned value in C)
        step = "({0} >= 0 && {0} < 4294967296.0 ? (unsigned long){0} : 0UL)"
        return (f"(gc_random_bits({a['seed']}UL, {step}, (unsigned long)({{{{IDX}}}})) >= "
                f"{threshold(a['p'])}UL ? {k.real(1.0 / (1.0 - a['p']))} : {k.real(0.0)})")

    def vjp(self, b, node, d):
        return [None]

    def notation(self, p, node, _step):
        return p.call("mask", [])
