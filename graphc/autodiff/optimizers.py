"""The optimizers (SGD, Adam, AdamW): hyperparameters, checked once, and the per-parameter state they keep.

autodiff/train.py writes their updates in the IR (the train step as a graph); the backend
renders the same updates in C (templates/kernels/optimizer.c.j2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from graphc.core.errors import GraphcError


class OptimizerError(GraphcError, ValueError):
    """An optimizer hyperparameter is out of range."""


def _number(owner: str, name: str, value: Any, low: float, high: float = math.inf,
            low_open: bool = False, high_open: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OptimizerError(f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo = f"{'>' if low_open else '>='} {low:g}"
        hi = f" and {'<' if high_open else '<='} {high:g}" if math.isfinite(high) else ""
        raise OptimizerError(f"{owner}: {name}={value!r} is out of range; it must be {lo}{hi}",
                             hint="see torch.optim for the meaning of each hyperparameter")


@dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent as torch.optim.SGD (dampening 0, no Nesterov):
    g = dJ/dp + weight_decay p;  v = momentum v + g;  p -= lr v   (v = g without momentum)."""

    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0

    kind = "sgd"

    def __post_init__(self):
        _number("SGD", "lr", self.lr, 0.0, low_open=True)
        _number("SGD", "momentum", self.momentum, 0.0, 1.0, high_open=False)
        _number("SGD", "weight_decay", self.weight_decay, 0.0)

    def slots(self) -> tuple[str, ...]:
        """Per-parameter state buffers, each in the parameter's shape."""
        return ("momentum",) if self.momentum else ()

    def scalars(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class Adam:
    """Adam as torch.optim.Adam (L2 weight decay added to the gradient, not AdamW):
    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    kind = "adam"

    def __post_init__(self):
        _number("Adam", "lr", self.lr, 0.0, low_open=True)
        _number("Adam", "beta1", self.beta1, 0.0, 1.0)
        _number("Adam", "beta2", self.beta2, 0.0, 1.0)
        _number("Adam", "eps", self.eps, 0.0, low_open=True)
        _number("Adam", "weight_decay", self.weight_decay, 0.0)

    def slots(self) -> tuple[str, ...]:
        return ("m", "v")

    def scalars(self) -> tuple[str, ...]:
        return ("t",)       # the step count, int64


@dataclass(frozen=True)
class AdamW(Adam):
    """AdamW as torch.optim.AdamW: Adam whose weight decay is decoupled from the gradient,
    p *= 1 - lr weight_decay, then Adam's update of p from the moments of g = dJ/dp alone
    (Loshchilov & Hutter). Its defaults are torch's, weight_decay = 0.01."""

    weight_decay: float = 0.01

    kind = "adamw"

    def __post_init__(self):
        _number("AdamW", "lr", self.lr, 0.0, low_open=True)
        _number("AdamW", "beta1", self.beta1, 0.0, 1.0)
        _number("AdamW", "beta2", self.beta2, 0.0, 1.0)
        _number("AdamW", "eps", self.eps, 0.0, low_open=True)
        _number("AdamW", "weight_decay", self.weight_decay, 0.0)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def describe(opt) -> str:
    return f"{type(opt).__name__}(" + ", ".join(f"{f.name}={getattr(opt, f.name)!r}" for f in fields(opt)) + ")"


def run_time_hparams(opt) -> tuple[str, ...]:
    """The hyperparameters the C reads at run time (NAME_hparams, in this order); the others are
    0 in `opt` and their term is not in the C at all (SGD's momentum buffer, the decay of a
    plain SGD step fused into the gradient's GEMM, Adam's L2 term): to change one at run time,
    compile with it nonzero. AdamW's decoupled decay is always there."""
    if isinstance(opt, SGD):
        return ("lr",) + (("momentum",) if opt.momentum else ()) + (("weight_decay",) if opt.weight_decay else ())
    decay = ("weight_decay",) if opt.weight_decay or isinstance(opt, AdamW) else ()
    return ("lr", "beta1", "beta2", "eps") + decay


def check_optimizer(opt) -> None:
    if not isinstance(opt, (SGD, Adam)):
        raise GraphcError(f"optimizer must be graphc.SGD(...), graphc.Adam(...) or graphc.AdamW(...), got {opt!r}",
                          hint="e.g. optimizer=graphc.Adam(lr=1e-3)")
