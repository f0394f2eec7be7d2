"""`graphc demo --model char_gpt|gru`: a character-level language model trained in C on the
standard library's own source text (graphc/tools/corpus.py; nothing is downloaded).

The model (examples/char_gpt.toml: a 2-layer GPT; examples/gru.toml: a GRU) is compiled in
float32 with AdamW, linear warmup then cosine decay and gradient clipping at 1.0, all evaluated
in C at every step. Each step trains on a minibatch of windows at random offsets of the first
90 % of the text (x = ids[s:s+T], targets ids[s+1:s+T+1]); every `interval` steps the demo
prints the mean training loss since the last report and the loss on fixed windows of the
held-out 10 %, beside the unigram baseline (each character predicted by its frequency). Then it
samples text from the trained model with the emitted C's generate function (temperature and
seed are its arguments) and writes the standalone C, whose main.c trains and samples too.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

# --model: (spec file, steps, batch, context (characters per training window), peak learning rate, warmup steps)
TEXT_MODELS = {"char_gpt": ("char_gpt.toml", 600, 16, 64, 3e-3, 60),
               "gru": ("gru.toml", 600, 16, 64, 1e-2, 30)}


def _graph(model_name: str):
    from graphc.frontend.spec import load
    from graphc.tools.examples import example_path
    path = example_path(TEXT_MODELS[model_name][0])
    if path is None:
        from graphc.core.errors import GraphcError
        raise GraphcError(f"examples/{TEXT_MODELS[model_name][0]} is not found beside graphc or in the current folder",
                          hint="run the demo from a checkout of graphc (the sequence examples are spec files)")
    return load(path)


def _io_names(graph) -> tuple[str, str]:
    """(token input, target input) of a language model spec: [generate]'s ids, and the other int32 input."""
    from graphc.core.errors import GraphcError
    if graph.generation is None:
        raise GraphcError(f"{graph.name}: the text demo needs a language model spec ([generate])")
    ids = graph.generation[0]
    targets = [k for k, v in graph.inputs.items() if k != ids and v.dtype == "int32"]
    if len(targets) != 1:
        raise GraphcError(f"{graph.name}: a language model spec needs one int32 input of targets besides {ids!r}")
    return ids, targets[0]


def run(model_name: str = "char_gpt", steps: int | None = None, batch_size: int | None = None,
        out: str | Path = "graphc-demo", seed: int = 0, interval: int = 100, sample_chars: int = 300,
        temperature: float = 0.8, write=print) -> dict:
    """Train, report, sample and export; returns the figures it printed."""
    from graphc.autodiff.optimizers import AdamW, WarmupCosine
    from graphc.native.runtime import compile
    from graphc.native.training import init_params
    from graphc.tools import corpus
    _spec, default_steps, default_batch, context, lr, warmup = TEXT_MODELS[model_name]
    steps = default_steps if steps is None else steps
    batch = default_batch if batch_size is None else batch_size
    t0 = time.perf_counter()
    ids = corpus.encode(corpus.stdlib_text())
    train, val = corpus.split(ids)
    graph = _graph(model_name)
    tok, tgt = _io_names(graph)
    baseline = corpus.unigram_loss(train, val)
    write(f"text: the standard library's source, {len(train):,} characters to train on, {len(val):,} held out; "
          f"vocabulary {len(corpus.VOCAB)}")
    schedule = WarmupCosine(warmup=warmup, total=max(steps, warmup + 1), min_lr=lr / 10)
    optimizer = AdamW(lr=lr, weight_decay=0.1, schedule=schedule, max_norm=1.0)
    t = time.perf_counter()
    model = compile(graph, dtype="float32", optimizer=optimizer, threads=1)
    write(f"model: {graph.name}, {sum(int(np.prod(v.shape)) for v in graph.params.values()):,} parameters, "
          f"context {context}, batch {batch}; AdamW(lr={lr}, weight_decay=0.1), warmup {warmup} steps then "
          f"cosine to {lr / 10:g} at step {steps}, gradients clipped at norm 1.0")
    write(f"compiled to C in {time.perf_counter() - t:.2f} s ({'cached' if model.built.cached else 'built'})")
    state = model.train_state(init_params(graph, seed=seed))
    rng = np.random.default_rng(seed)
    val_x, val_y = corpus.windows(val, context, 4 * batch, np.random.default_rng(seed + 1))

    def val_loss() -> float:
        return float(np.mean([model.forward(**{tok: val_x[i:i + batch], tgt: val_y[i:i + batch]}, **state.params)["loss"]
                              for i in range(0, len(val_x), batch)]))

    write(f"unigram baseline on the held-out text: {baseline:.3f} nats per character")
    write(f"{'step':>6} {'train loss':>11} {'val loss':>9} {'tokens/s':>10}")
    history, seen, c_seconds = [], [], 0.0
    first = val_loss()
    write(f"{0:>6} {'':>11} {first:>9.3f}")
    history.append((0, None, first))
    for step in range(1, steps + 1):
        x, y = corpus.windows(train, context, batch, rng)
        t = time.perf_counter()
        outs = model.train_step(state, **{tok: x, tgt: y})
        c_seconds += time.perf_counter() - t
        seen.append(float(outs["loss"]))
        if step % interval == 0 or step == steps:
            v = val_loss()
            rate = len(seen) * batch * context / c_seconds
            write(f"{step:>6} {np.mean(seen):>11.3f} {v:>9.3f} {rate:>10,.0f}")
            history.append((step, float(np.mean(seen)), v))
            seen, c_seconds = [], 0.0
    prompt = corpus.encode("def ")
    sample = model.generate(state.params, prompt, sample_chars, temperature=temperature, seed=seed, context=context)
    text = corpus.decode(np.concatenate([prompt, sample]))
    write(f"\nsampled by the emitted C (temperature {temperature}, seed {seed}):\n" + "-" * 60)
    write(text)
    write("-" * 60)
    out = Path(out)
    files = model.export(out, standalone=True, params=state.params)
    write(f"standalone C written to {out}/: {', '.join(p.relative_to(out).as_posix() for p in files)}")
    write(f"total {time.perf_counter() - t0:.1f} s")
    return dict(history=history, baseline=baseline, sample=text, files=[str(p) for p in files])
