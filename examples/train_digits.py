"""Train the one-layer network of the notes on scikit-learn's 8x8 digits, in C.

    python examples/train_digits.py            (needs scikit-learn: pip install 'graphc[demo]')

The same as `graphc demo`, written out step by step: compile the spec with an optimizer,
initialise the parameters, train with `fit` (one C call per epoch), evaluate, save a
checkpoint, and write the standalone C.
"""
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import graphc

HERE = Path(__file__).resolve().parent

# 1797 images of 8x8 pixels in 0..16, scaled to [0, 1]; a fixed 75/25 split.
digits = load_digits()
X = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int32)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)

# The spec: x @ W.T + b1 -> relu -> @ U.T + b2 -> cross-entropy, with Dx = 64 inputs.
# With an optimizer, the C also gets one_layer_train_step and one_layer_fit.
model = graphc.compile(HERE / "one_layer.toml", dtype="float32", optimizer=graphc.Adam(lr=5e-3), threads=1)

# Parameters: W by the spec's init = "he", U by "xavier", the biases zero; seeded.
params = graphc.init_params(model.graph, seed=0)
state = model.train_state(params)          # float32 copies, updated in place by the C


def accuracy(X, y):
    probs = model.forward(x=X, y=y, **state.params)["probs"]
    return np.mean(probs.argmax(axis=1) == y)


def report(epoch, loss):
    print(f"epoch {epoch:2d}  loss {loss:.4f}  test accuracy {accuracy(X_test, y_test):.3f}")


# Ten epochs of minibatches of 32 rows, shuffled by np.random.default_rng(0).
history = model.fit(state, x=X_train, y=y_train, batch_size=32, epochs=10, seed=0, progress=report)
print(f"train accuracy {accuracy(X_train, y_train):.4f}, test accuracy {accuracy(X_test, y_test):.4f}")

# A checkpoint holds the parameters, Adam's moments and its step count: training resumes exactly.
state.save("digits_ckpt.npz")
state = model.load_state("digits_ckpt.npz")

# The C to build into another program: one_layer.c/.h, an example main.c and a Makefile.
files = model.export("digits_c", standalone=True)
print("standalone C:", ", ".join(str(f) for f in files))
