"""`graphc demo`: train the notes' one-layer network (or a CNN) on scikit-learn's 8x8 digits, in C.

Loads the digits (1797 images, 64 pixels scaled to [0, 1]), splits them 75/25 with a fixed
seed, compiles examples/one_layer.toml (--model digits_cnn: examples/digits_cnn.toml, conv +
batch norm + relu + pool blocks and a dense head with dropout, on 1x8x8 images) in float32
with Adam, trains it with `fit` (an epoch per C call), prints the loss and time of each epoch
and the train/test accuracy (predict: batch norm by its running statistics), times the same
training elsewhere (one_layer: plain NumPy, the closed forms of the notes; digits_cnn: PyTorch
eager, when installed; the same init, batch order and optimizer), and writes the standalone C
(NAME.c, NAME.h, main.c, Makefile) to a folder. With --plot FILE, also draws the train and
test loss of each epoch to FILE (a PNG, or any format matplotlib writes). Needs scikit-learn
(and matplotlib for --plot): pip install 'graphc[demo]'.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from graphc.tools.demo_peers import compare_peers, numpy_accuracy, numpy_fit, torch_fit  # noqa: F401
from graphc.tools.examples import example_path

SPEC_NAME = "one_layer.toml"
# The spec the demo trains, for an installed graphc without the examples folder (the same
# network is also built with the Python API in `build_graph`).
SPEC_TEXT = '''\
name = "one_layer"

[dims]
Dx = 64
Dh = 128
Nc = 10
N  = "batch"

[inputs]
x = ["N", "Dx"]
y = { shape = ["N"], dtype = "int32" }

[params]
W  = { shape = ["Dh", "Dx"], init = "he" }
b1 = ["Dh"]
U  = { shape = ["Nc", "Dh"], init = "xavier" }
b2 = ["Nc"]

[graph]
z     = "x @ W.T + b1"
h     = "relu(z)"
theta = "h @ U.T + b2"
J     = "cross_entropy(theta, y)"

[outputs]
loss  = "J"
probs = "softmax(theta)"

[grad]
of  = "J"
wrt = ["W", "b1", "U", "b2"]
'''


# examples/digits_cnn.toml, for an installed graphc without the examples folder
CNN_TEXT = '''\
# A small convolutional network for scikit-learn's 8x8 digits (NCHW: 1 channel of 8x8 pixels):
# two blocks of convolution, batch norm, relu and max pooling, then a dense head with dropout.
# `graphc demo --model digits_cnn` trains it in C (6,138 parameters).
name = "digits_cnn"

[dims]
N  = "batch"
Nc = 10

[inputs]
x = ["N", 1, 8, 8]
y = { shape = ["N"], dtype = "int32" }

[params]
w1 = { shape = [16, 1, 3, 3], init = "he" }
g1 = [16]
b1 = [16]
w2 = { shape = [32, 16, 3, 3], init = "he" }
g2 = [32]
b2 = [32]
U  = ["Nc", 128]
c  = ["Nc"]

[state]
mean1 = [16]
var1  = [16]
mean2 = [32]
var2  = [32]

[graph]
h1    = "max_pool2d(relu(batch_norm(conv2d(x, w1, padding=1), mean1, var1, g1, b1)), 2)"
h2    = "max_pool2d(relu(batch_norm(conv2d(h1, w2, padding=1), mean2, var2, g2, b2)), 2)"
theta = "dropout(flatten(h2), 0.25) @ U.T + c"
J     = "cross_entropy(theta, y)"

[outputs]
loss  = "J"
probs = "softmax(theta)"

[grad]
of  = "J"
wrt = ["w1", "g1", "b1", "w2", "g2", "b2", "U", "c"]
'''

# --model: (spec file, its text, image shape, learning rate, epochs, the peer timed beside graphc)
MODELS = {"one_layer": (SPEC_NAME, SPEC_TEXT, (64,), 5e-3, 10, "NumPy (closed forms)"),
          "digits_cnn": ("digits_cnn.toml", CNN_TEXT, (1, 8, 8), 2e-3, 20, "PyTorch eager")}


def spec_path(name: str = SPEC_NAME) -> Path | None:
    """examples/NAME (tools/examples.py), else None (the copies above)."""
    return example_path(name)


def build_graph():
    """The one-layer network of the notes, built with the Python API (as the spec declares it)."""
    from graphc.core.ir import Graph
    from graphc.frontend.functions import cross_entropy, relu, softmax
    g = Graph("one_layer", {"Dx": 64, "Dh": 128, "Nc": 10, "N": None})
    x = g.input("x", ("N", "Dx"))
    y = g.input("y", ("N",), dtype="int32")
    W, b1 = g.param("W", ("Dh", "Dx")), g.param("b1", ("Dh",))
    U, b2 = g.param("U", ("Nc", "Dh")), g.param("b2", ("Nc",))
    g.param_init = {"W": "he", "U": "xavier"}
    theta = relu(x @ W.T + b1) @ U.T + b2
    g.output("loss", cross_entropy(theta, y))
    g.output("probs", softmax(theta))
    g.grad_spec = ("loss", ["W", "b1", "U", "b2"])
    return g


def load_graph(model: str = "one_layer"):
    from graphc.frontend.spec import load, parse_spec
    name, text = MODELS[model][:2]
    path = spec_path(name)
    if path is not None:
        return load(path)
    return build_graph() if model == "one_layer" else parse_spec(text, name)


def load_data(seed: int = 0):
    """(X_train, X_test, y_train, y_test): digits scaled to [0, 1], 25% held out, fixed split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    return train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)


def accuracy(model, params, X, Y) -> float:
    probs = model.predict(x=X, **params)["probs"]
    return float(np.mean(np.argmax(probs, axis=1) == Y))


def _figure():
    """matplotlib's Figure (no pyplot, so no GUI backend and no global state), or a GraphcError."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from graphc.core.errors import GraphcError
        raise GraphcError("graphc demo --plot needs matplotlib, which is not installed",
                          hint="pip install 'graphc[demo]' (or pip install matplotlib)") from None
    return Figure


def plot_losses(path: str | Path, train: list[float], test: list[float], title: str) -> Path:
    """Draw the train and test loss after each epoch (index 0: before training) to `path` with
    matplotlib; the format follows the suffix (.png, .svg, .pdf)."""
    from matplotlib.ticker import MaxNLocator
    fig = _figure()(figsize=(6.4, 4.2), dpi=100)
    ax = fig.subplots()
    ax.plot(range(len(train)), train, marker="o", label="train")
    ax.plot(range(len(test)), test, marker="s", label="test (held out)")
    ax.set_xlabel("epoch (0: before training)")
    ax.set_ylabel("loss: mean cross-entropy over the set (log scale)")
    ax.set_yscale("log")    # the first epoch drops the loss tenfold; the train/test gap is after it
    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def run(epochs: int | None = None, out: str | Path = "graphc-demo", batch_size: int = 32, lr: float | None = None,
        seed: int = 0, compare: bool = True, write=print, plot: str | Path | None = None,
        model_name: str = "one_layer") -> dict:
    """Train, report and export; returns the figures it printed (accuracies, losses, timings).
    model_name: "one_layer" (the notes' network; compared with NumPy) or "digits_cnn" (compared
    with PyTorch eager when installed); epochs and lr default to the model's (10 and 5e-3, 20 and
    2e-3). plot: a file to draw the train and test loss per epoch to (matplotlib): the loss on
    the whole train and test sets before training and after each epoch (outside the timed
    span), also returned as train_losses and test_losses (epochs + 1 numbers each)."""
    from graphc.autodiff.optimizers import Adam
    from graphc.native.runtime import compile
    from graphc.native.training import init_params
    spec_name, _text, image, default_lr, default_epochs, peer_name = MODELS[model_name]
    lr = default_lr if lr is None else lr
    epochs = default_epochs if epochs is None else epochs
    if plot is not None:
        _figure()     # a missing matplotlib is an error before the training, not after it
    t0 = time.perf_counter()
    X_train, X_test, y_train, y_test = (a.reshape((-1,) + image) if a.dtype != np.int32 else a
                                        for a in load_data(seed))
    graph = load_graph(model_name)
    write(f"digits: {len(X_train)} training and {len(X_test)} test images of 8x8 pixels, 10 classes")
    write(f"model: {graph.name} ({'examples/' + spec_name if spec_path(spec_name) else 'built in'}), "
          f"float32, Adam(lr={lr}), batch {batch_size}, {epochs} epochs, seed {seed}")

    t = time.perf_counter()
    optimizer = Adam(lr=lr)
    # one thread: at 32 rows a minibatch is too small to share between cores
    model = compile(graph, dtype="float32", optimizer=optimizer, threads=1)
    write(f"compiled to C in {time.perf_counter() - t:.2f} s ({'cached' if model.built.cached else 'built'})")

    init = init_params(graph, seed=seed)
    state = model.train_state(init)
    curves = {"train_losses": [], "test_losses": []}   # for --plot: the loss on each whole set

    def evaluate():
        for key, X, Y in (("train_losses", X_train, y_train), ("test_losses", X_test, y_test)):
            curves[key].append(float(model.forward(x=X, y=Y, **state.params)["loss"]))

    if plot is not None:
        evaluate()     # before training: epoch 0
    clock, c_times = [time.perf_counter()], []

    def progress(epoch, loss):
        c_times.append(time.perf_counter() - clock[0])
        write(f"  epoch {epoch:>3}  loss {loss:.4f}  {c_times[-1] * 1e3:7.2f} ms  "
              f"{len(X_train) / c_times[-1]:>12,.0f} rows/s")
        if plot is not None:    # with this epoch's params, outside the timed span
            evaluate()
        clock[0] = time.perf_counter()

    write("training in C (one fit call per epoch):")
    losses = model.fit(state, x=X_train, y=y_train, batch_size=batch_size, epochs=epochs, seed=seed,
                       progress=progress)
    c_times = np.array(c_times)
    train_acc = accuracy(model, state.params, X_train, y_train)
    test_acc = accuracy(model, state.params, X_test, y_test)
    write(f"train accuracy: {train_acc:.4f}")
    write(f"test accuracy: {test_acc:.4f}")
    result = dict(losses=losses, train_accuracy=train_acc, test_accuracy=test_acc,
                  c_epoch_seconds=[float(s) for s in c_times])
    if plot is not None:
        title = f"graphc demo: {graph.name} on the digits, Adam(lr={lr}), batch {batch_size}, seed {seed}"
        result.update(curves, plot=str(plot_losses(plot, curves["train_losses"], curves["test_losses"], title)))
        write(f"train and test loss per epoch drawn to {plot}")

    if compare and epochs > 0:
        result.update(compare_peers(model_name, peer_name, graph, init, (X_train, X_test, y_train, y_test),
                                    batch_size, epochs, seed, lr, (c_times, losses[-1], test_acc), write))

    out = Path(out)
    try:
        files = model.export(out, standalone=True)
    except ImportError:      # a graphc without export: the model's C and header alone
        out.mkdir(parents=True, exist_ok=True)
        files = [out / f"{model.name}.c", out / f"{model.name}.h"]
        files[0].write_text(model.source)
        files[1].write_text(model.header)
    write("")
    write(f"standalone C written to {out}/: {', '.join(p.relative_to(out).as_posix() for p in files)}"
          f"{' (make && ./' + model.name + '_example; make mcu-run: on a Cortex-M4F under QEMU)' if any(p.name == 'Makefile' for p in files) else ''}")
    write(f"total {time.perf_counter() - t0:.1f} s")
    result["files"] = [str(p) for p in files]
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="graphc demo", description=__doc__.splitlines()[0])
    from graphc.tools.demo_text import TEXT_MODELS
    p.add_argument("--model", choices=sorted(MODELS) + sorted(TEXT_MODELS), default="one_layer",
                   help="one_layer: the notes' network (default); digits_cnn: a CNN with batch norm and dropout; "
                        "char_gpt, gru: character language models trained on the standard library's source, "
                        "then sampled by the emitted C")
    p.add_argument("--epochs", type=int, default=None, metavar="E", help="default: 10 (one_layer), 20 (digits_cnn)")
    p.add_argument("--out", default="graphc-demo", metavar="DIR", help="where to write the standalone C")
    p.add_argument("--batch-size", type=int, default=None, help="default: 32 (digits), 16 (text)")
    p.add_argument("--steps", type=int, default=None, metavar="S",
                   help="char_gpt and gru: training steps (default 600)")
    p.add_argument("--lr", type=float, default=None, help="Adam's learning rate; default 5e-3 (one_layer), 2e-3 (digits_cnn)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-numpy", "--no-compare", action="store_true",
                   help="skip the timing comparison (NumPy, or PyTorch for digits_cnn)")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="draw the train and test loss per epoch to FILE, e.g. loss.png (needs matplotlib)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if (args.epochs is not None and args.epochs < 0) or (args.batch_size is not None and args.batch_size < 1) \
            or (args.steps is not None and args.steps < 1):
        print("graphc demo: --epochs must be >= 0, --batch-size and --steps >= 1", file=sys.stderr)
        return 2
    from graphc.core.errors import GraphcError
    if args.model in TEXT_MODELS:
        from graphc.tools.demo_text import run as run_text
        try:
            run_text(args.model, args.steps, args.batch_size, args.out, args.seed)
        except GraphcError as e:
            print(f"graphc demo: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("graphc demo needs scikit-learn for the digits data set: pip install 'graphc[demo]'",
              file=sys.stderr)
        return 2
    try:
        run(args.epochs, args.out, args.batch_size or 32, args.lr, args.seed, compare=not args.no_numpy, plot=args.plot,
            model_name=args.model)
    except GraphcError as e:
        print(f"graphc demo: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
