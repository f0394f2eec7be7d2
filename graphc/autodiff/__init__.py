"""Layer 5, autodiff: the backward graph by the identities (grad.py), the optimizers and the
train step as a graph (optimizers.py, train.py), and the derivation in the notes' notation
(explain.py)."""
