"""Train the one-layer network on scikit-learn's digits in Python, then hand it to C.

Writes into build/ (or the folder given as the first argument):
  one_layer.c, one_layer.h                 the model, standalone C (and graphc's own example main.c, Makefile)
  one_layer_params.c, one_layer_params.h   the trained weights as const arrays
  digits_test.txt                          the test images, one per line: label, then 64 pixels

Then `make` (in this folder) builds classify.c against those files and runs it on
the test images: the C program, with no Python, reports the accuracy Python saw.

Needs scikit-learn: pip install 'graphc[demo]'.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import graphc

HERE = Path(__file__).resolve().parent
SPEC = HERE.parent / "one_layer.toml"


def main(out: Path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)

    m = graphc.compile(SPEC, optimizer=graphc.Adam(lr=5e-3))
    state = m.train_state(graphc.init_params(m.graph, seed=0))
    history = m.fit(state, x=x_train, y=y_train, batch_size=32, epochs=10, seed=0, progress=False)
    probs = m.forward(x=x_test, y=y_test, **state.params)["probs"]
    accuracy = float(np.mean(probs.argmax(axis=1) == y_test))
    print(f"trained in C from Python: final loss {history[-1]:.4f}, test accuracy {accuracy:.4f}")

    for path in m.export(out, params=state.params):
        print(f"wrote {path}")
    rows = [f"{label} " + " ".join(f"{p:.9g}" for p in image) for image, label in zip(x_test, y_test)]
    (out / "digits_test.txt").write_text("\n".join(rows) + "\n")
    print(f"wrote {out / 'digits_test.txt'} ({len(rows)} images); now run: make")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "build")
