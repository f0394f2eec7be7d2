"""Sampling text from a language model: `m.generate` calls the emitted C's NAME_generate
(backend/sampling.py, templates/generate.c.j2); `generate_reference` draws the same tokens with
the NumPy reference, one evaluation of the prediction graph per token and core/random.py's
sample_index, the twin of the kernel library's gc_sample.
"""
from __future__ import annotations

import numpy as np

from graphc.core.errors import ArgumentError, GraphcError, ShapeError
from graphc.core.random import sample_index
from graphc.native.calls import aligned_empty


def _layout(model):
    layout = getattr(model.csrc, "generation", None)
    if layout is None:
        raise GraphcError(f"{model.name} has no generate function: its spec declares no language model",
                          hint='add [generate] with ids = "<token input>" and logits = "<logits output>"')
    return layout


def _prompt(prompt, vocabulary: int) -> np.ndarray:
    ids = np.ascontiguousarray(np.asarray(prompt).reshape(-1))
    if ids.size == 0:
        raise ArgumentError("generate: the prompt is empty", hint="give at least one token id")
    if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= vocabulary:
        raise ArgumentError(f"generate: the prompt must hold int token ids in [0, {vocabulary})",
                            hint="encode the text with the model's vocabulary first")
    return ids.astype(np.int32)


def _context(longest: int | None, fixed: bool, context, prompt_len: int, count: int) -> int:
    """The window's length: `context` checked, or by default the longest the model takes (backend/
    sampling.py's context_bound), or the whole sequence when none bounds it."""
    if context is None:
        context = longest if longest is not None else prompt_len + count
    context = int(context)
    if fixed and context != longest:
        raise ArgumentError(f"generate: context={context}, but the model's sequence length is fixed at {longest}",
                            hint=f"leave context out (it is then {longest})")
    if context < 1 or (longest is not None and context > longest):
        raise ArgumentError(f"generate: context={context} is outside [1, {longest or 'any'}]",
                            hint="the model reads at most that many positions (its positional table)")
    return context


def generate(model, params: dict, prompt, count: int, temperature: float = 1.0, seed: int = 0,
             context: int | None = None) -> np.ndarray:
    """`count` token ids after `prompt`, sampled by the C (NAME_generate): see CompiledModel.generate."""
    layout = _layout(model)
    ids = _prompt(prompt, layout.vocabulary)
    count = int(count)
    if count < 0:
        raise ArgumentError(f"generate: count={count} must be >= 0")
    context = _context(layout.context, layout.fixed, context, len(ids), count)
    arrays = []
    for name in layout.params:
        want = tuple(int(d) for d in model.graph.params[name].shape)
        if name not in params:
            raise ArgumentError(f"generate: the param {name!r} is missing", hint=f"pass every param: {', '.join(layout.params)}")
        a = np.ascontiguousarray(params[name], dtype=model.dtype)
        if a.shape != want:
            raise ShapeError(f"generate: param {name!r} has shape {a.shape}, the model's is {want}")
        arrays.append(a)
    size = getattr(model.lib, f"{model.name}_generate_workspace_size")(context)
    if size == 0:
        raise ArgumentError(f"generate: no workspace for context={context}")
    workspace = aligned_empty(size)
    out = np.zeros(count, dtype=np.int32)
    ffi = model.ffi
    real = "double[]" if np.dtype(model.dtype) == np.float64 else "float[]"
    status = getattr(model.lib, f"{model.name}_generate")(
        ffi.from_buffer("int32_t[]", ids), len(ids), count, context, float(temperature), int(seed) & 0xFFFFFFFF,
        *(ffi.from_buffer(real, a, require_writable=False) for a in arrays), ffi.from_buffer("int32_t[]", out), ffi.from_buffer(workspace))
    if status != 0:
        raise GraphcError(f"{model.name}_generate returned {status}",
                          hint="a token id outside the model's tables, or a context it cannot take")
    return out


def generate_reference(graph, params: dict, prompt, count: int, temperature: float = 1.0, seed: int = 0,
                       context: int | None = None) -> np.ndarray:
    """The same tokens as NAME_generate, by the NumPy reference (float64): for each new token, the
    prediction graph on the last `context` tokens (padded on the right with 0 to a fixed sequence
    length), then sample_index of the logits at the window's last position."""
    from graphc.backend.codegen import prediction_graph
    from graphc.backend.sampling import context_bound
    from graphc.core.reference import evaluate
    if graph.generation is None:
        raise GraphcError(f"{graph.name} declares no language model ([generate])")
    ids_name, logits_name = graph.generation
    pred = prediction_graph(graph) or graph
    x = graph.inputs[ids_name]
    seq = x.shape[-1]
    fixed = isinstance(seq, int)
    vocab = int(graph.outputs[logits_name].shape[-1])
    tokens = list(_prompt(prompt, vocab))
    start = len(tokens)
    context = _context(*context_bound(graph), context, len(tokens), int(count))
    for _ in range(int(count)):
        w = min(len(tokens), context)
        window = tokens[-w:] + ([0] * (seq - w) if fixed else [])
        feed = np.asarray(window, dtype=np.int32).reshape((1, -1) if x.rank == 2 else (-1,))
        logits = np.asarray(evaluate(pred, **{ids_name: feed}, **params)[logits_name])
        row = logits.reshape(-1, vocab)[w - 1]
        tokens.append(sample_index(row, temperature, seed, len(tokens)))
    return np.asarray(tokens[start:], dtype=np.int32)
