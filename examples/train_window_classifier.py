"""Train the CS224n word-window classifier (window_classifier.toml) on a synthetic tagging task.

    python examples/train_window_classifier.py

Each example is a window of three word ids (left, centre, right) and the label of the centre
word: O, PER, LOC, ORG or MISC. The vocabulary of 200 ids is made so that the label needs the
context as well as the word:

    ids   0..79    names with a fixed type: 0..19 PER, 20..39 LOC, 40..59 ORG, 60..79 MISC
    ids 100..139   ambiguous words: PER after "Mr." (180..184), LOC after "in" (185..189),
                   ORG before "Inc." (195..199), otherwise O
    ids 180..199   the trigger words above; everything else is an ordinary word (O)

The embedding table E and the classifier are trained together in C (the embedding gradient
is a scatter-add into the workspace); the script prints the test accuracy after each epoch.
"""
from pathlib import Path

import numpy as np

import graphc

HERE = Path(__file__).resolve().parent
V = 200
O, PER, LOC, ORG, MISC = range(5)
MR, IN, INC = (180, 185), (185, 190), (195, 200)


def make_windows(n: int, rng: np.random.Generator):
    """n windows (w0, w1, w2) and their labels y, by the rules above."""
    w0 = rng.integers(0, V, n)
    w2 = rng.integers(0, V, n)
    kind = rng.choice(3, size=n, p=[0.3, 0.45, 0.25])        # name, ambiguous, ordinary centre word
    w1 = np.where(kind == 0, rng.integers(0, 80, n),
                  np.where(kind == 1, rng.integers(100, 140, n), rng.integers(80, 180, n)))
    w1 = np.where((kind == 2) & (w1 >= 100) & (w1 < 140), w1 + 40, w1)   # ordinary words are not ambiguous
    # ambiguous centres often get a trigger on the left or right
    amb = kind == 1
    trig = rng.choice(4, size=n)                             # 0: Mr., 1: in, 2: Inc., 3: none
    w0 = np.where(amb & (trig == 0), rng.integers(*MR, n), w0)
    w0 = np.where(amb & (trig == 1), rng.integers(*IN, n), w0)
    w2 = np.where(amb & (trig == 2), rng.integers(*INC, n), w2)
    y = np.full(n, O)
    y = np.where(w1 < 80, 1 + w1 // 20, y)                  # names: their type
    left_mr = (w0 >= MR[0]) & (w0 < MR[1])
    left_in = (w0 >= IN[0]) & (w0 < IN[1])
    right_inc = (w2 >= INC[0]) & (w2 < INC[1])
    y = np.where(amb & right_inc, ORG, y)
    y = np.where(amb & left_in & ~right_inc, LOC, y)
    y = np.where(amb & left_mr & ~right_inc, PER, y)
    return [a.astype(np.int32) for a in (w0, w1, w2, y)]


rng = np.random.default_rng(0)
train = make_windows(3000, rng)
test = make_windows(2000, rng)
print("label counts (O, PER, LOC, ORG, MISC):", np.bincount(train[3], minlength=5))

model = graphc.compile(HERE / "window_classifier.toml", dtype="float32", optimizer=graphc.Adam(lr=2e-3), threads=1)
state = model.train_state(graphc.init_params(model.graph, seed=0))   # E ~ N(0, 0.1^2) (spec: init = "normal")


def accuracy(data, where=None):
    w0, w1, w2, y = data
    hit = model.forward(w0=w0, w1=w1, w2=w2, y=y, **state.params)["probs"].argmax(axis=1) == y
    return np.mean(hit if where is None else hit[where])


ambiguous = (test[1] >= 100) & (test[1] < 140)     # test windows whose label needs the context


print(f"before training: test accuracy {accuracy(test):.3f} (always O would score {np.mean(test[3] == O):.3f})")
for epoch in range(1, 11):
    w0, w1, w2, y = train
    (loss,) = model.fit(state, w0=w0, w1=w1, w2=w2, y=y, batch_size=100, epochs=1, seed=epoch)
    print(f"epoch {epoch:2d}  loss {loss:.4f}  train accuracy {accuracy(train):.3f}  "
          f"test accuracy {accuracy(test):.3f} (ambiguous words {accuracy(test, ambiguous):.3f})")
