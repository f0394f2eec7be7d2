"""The optimizers (SGD, Adam, AdamW) and the recipe around them: hyperparameters, checked once, the
per-parameter state they keep, learning-rate schedules (Constant, StepLR, WarmupCosine), clipping by
the global gradient norm (max_norm) and gradient accumulation (accumulate).

autodiff/train.py writes their updates in the IR (the train step as a graph); the backend
renders the same updates in C (templates/kernels/optimizer.c.j2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass, replace
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


def _count(owner: str, name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise OptimizerError(f"{owner}: {name}={value!r} is out of range; it must be an integer >= {low}")


# ---------------------------------------------------------------------------------- schedules
# The learning rate of optimizer step t (t = 1, 2, ...: Adam's step count, kept for SGD too when a
# schedule is used) is schedule.lr_at(lr, t); its parameters are run-time values of NAME_hparams, as lr
# is. Step t is torch's scheduler epoch t - 1: for t in steps: optimizer.step(); scheduler.step().
@dataclass(frozen=True)
class Constant:
    """The learning rate lr at every step (the default)."""

    kind = "constant"

    def lr_at(self, lr: float, t: int) -> float:
        return float(lr)


@dataclass(frozen=True)
class StepLR:
    """lr gamma^floor((t - 1) / step_size) at step t, as torch.optim.lr_scheduler.StepLR: the rate is
    multiplied by gamma every step_size steps."""

    step_size: int = 1
    gamma: float = 0.1

    kind = "step"

    def __post_init__(self):
        _count("StepLR", "step_size", self.step_size, 1)
        _number("StepLR", "gamma", self.gamma, 0.0)

    def lr_at(self, lr: float, t: int) -> float:
        return float(lr) * float(self.gamma) ** ((int(t) - 1) // int(self.step_size))


@dataclass(frozen=True)
class WarmupCosine:
    """Linear warmup then cosine decay, as llm.c and nanoGPT train: at step t (e = t - 1 steps before
    it), lr (e + 1) / warmup while e < warmup; then min_lr + (lr - min_lr) (1 + cos(pi r)) / 2 with
    r = (e - warmup) / (total - warmup); min_lr from e = total on. torch: SequentialLR of
    LinearLR(start_factor=1/warmup, total_iters=warmup - 1) and CosineAnnealingLR(T_max=total - warmup,
    eta_min=min_lr) at milestone warmup, up to step total."""

    warmup: int = 0
    total: int = 1000
    min_lr: float = 0.0

    kind = "warmup_cosine"

    def __post_init__(self):
        _count("WarmupCosine", "warmup", self.warmup, 0)
        _count("WarmupCosine", "total", self.total, 1)
        if self.total < self.warmup:
            raise OptimizerError(f"WarmupCosine: total={self.total!r} is less than warmup={self.warmup!r}; "
                                 f"total counts the warmup steps too", hint=f"e.g. total={self.warmup + 1000}")
        _number("WarmupCosine", "min_lr", self.min_lr, 0.0)

    def lr_at(self, lr: float, t: int) -> float:
        e = int(t) - 1
        if e < self.warmup:
            return float(lr) * (e + 1) / self.warmup
        if e >= self.total:
            return float(self.min_lr)
        r = (e - self.warmup) / (self.total - self.warmup)
        return float(self.min_lr) + (float(lr) - float(self.min_lr)) * 0.5 * (1.0 + math.cos(math.pi * r))


SCHEDULES = {"constant": Constant, "step": StepLR, "warmup_cosine": WarmupCosine}


class _Recipe:
    """What every optimizer takes besides its own hyperparameters (dataclass fields of each):
    schedule, max_norm (clip the gradients to this global 2-norm, as torch.nn.utils.clip_grad_norm_;
    None: no clipping) and accumulate (micro-batches whose gradients fit sums per optimizer step;
    m.accumulate and m.apply exist when it is > 1)."""

    def _check_recipe(self, owner: str) -> None:
        if not isinstance(self.schedule, (Constant, StepLR, WarmupCosine)):
            raise OptimizerError(f"{owner}: schedule must be graphc.Constant(), graphc.StepLR(...) or "
                                 f"graphc.WarmupCosine(...), got {self.schedule!r}")
        if self.max_norm is not None:
            _number(owner, "max_norm", self.max_norm, 0.0, low_open=True)
        _count(owner, "accumulate", self.accumulate, 1)

    def lr_at(self, t: int) -> float:
        """The learning rate of optimizer step t (1, 2, ...)."""
        return self.schedule.lr_at(self.lr, t)

    @property
    def counts_steps(self) -> bool:
        """Whether the C keeps the step count t (Adam always; SGD under a schedule)."""
        return "t" in self.scalars()


@dataclass(frozen=True)
class SGD(_Recipe):
    """Stochastic gradient descent as torch.optim.SGD (dampening 0, no Nesterov):
    g = dJ/dp + weight_decay p;  v = momentum v + g;  p -= lr v   (v = g without momentum)."""

    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: Any = Constant()
    max_norm: float | None = None
    accumulate: int = 1

    kind = "sgd"

    def __post_init__(self):
        _number("SGD", "lr", self.lr, 0.0, low_open=True)
        _number("SGD", "momentum", self.momentum, 0.0, 1.0, high_open=False)
        _number("SGD", "weight_decay", self.weight_decay, 0.0)
        self._check_recipe("SGD")

    def slots(self) -> tuple[str, ...]:
        """Per-parameter state buffers, each in the parameter's shape."""
        return ("momentum",) if self.momentum else ()

    def scalars(self) -> tuple[str, ...]:
        return ("t",) if not isinstance(self.schedule, Constant) else ()    # the step count the schedule reads


@dataclass(frozen=True)
class Adam(_Recipe):
    """Adam as torch.optim.Adam (L2 weight decay added to the gradient, not AdamW):
    m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  p -= lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps)."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: Any = Constant()
    max_norm: float | None = None
    accumulate: int = 1

    kind = "adam"

    def __post_init__(self):
        _number("Adam", "lr", self.lr, 0.0, low_open=True)
        _number("Adam", "beta1", self.beta1, 0.0, 1.0)
        _number("Adam", "beta2", self.beta2, 0.0, 1.0)
        _number("Adam", "eps", self.eps, 0.0, low_open=True)
        _number("Adam", "weight_decay", self.weight_decay, 0.0)
        self._check_recipe("Adam")

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
        self._check_recipe("AdamW")


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def describe(opt) -> str:
    """SGD(lr=0.1, ...): the fields that differ from the recipe's defaults (no schedule, no clipping, no
    accumulation) are shown."""
    quiet = {"schedule": Constant(), "max_norm": None, "accumulate": 1}
    return f"{type(opt).__name__}(" + ", ".join(f"{f.name}={getattr(opt, f.name)!r}" for f in fields(opt)
                                                if f.name not in quiet or getattr(opt, f.name) != quiet[f.name]) + ")"


def flat_hparams(opt) -> dict[str, Any]:
    """Every hyperparameter by name, the schedule's fields among them (without `schedule` itself)."""
    out = {f.name: getattr(opt, f.name) for f in fields(opt) if f.name != "schedule"}
    out.update({f.name: getattr(opt.schedule, f.name) for f in fields(opt.schedule)})
    return out


def with_hparams(opt, values: dict[str, Any]):
    """opt with some hyperparameters changed (flat names: a schedule's fields too; or schedule=...),
    each checked as the optimizer checks it (OptimizerError)."""
    values = dict(values)
    schedule = values.pop("schedule", opt.schedule)
    own = {f.name for f in fields(schedule)} if is_dataclass(schedule) else set()
    mine = {k: values.pop(k) for k in list(values) if k in own}
    if mine:
        schedule = replace(schedule, **mine)
    return replace(opt, schedule=schedule, **values)


def hparam_names(opt) -> set[str]:
    return {f.name for f in fields(opt)} | {f.name for f in fields(opt.schedule)}


def run_time_hparams(opt) -> tuple[str, ...]:
    """The hyperparameters the C reads at run time (NAME_hparams, in this order); the others are
    0 in `opt` and their term is not in the C at all (SGD's momentum buffer, the decay of a
    plain SGD step fused into the gradient's GEMM, Adam's L2 term): to change one at run time,
    compile with it nonzero. AdamW's decoupled decay is always there."""
    if isinstance(opt, SGD):
        own = ("lr",) + (("momentum",) if opt.momentum else ()) + (("weight_decay",) if opt.weight_decay else ())
    else:
        own = ("lr", "beta1", "beta2", "eps") + (("weight_decay",) if opt.weight_decay or isinstance(opt, AdamW) else ())
    recipe = tuple(f.name for f in fields(opt.schedule))
    recipe += ("max_norm",) if opt.max_norm is not None else ()
    recipe += ("accumulate",) if opt.accumulate > 1 else ()
    return own + recipe


def check_optimizer(opt) -> None:
    if not isinstance(opt, (SGD, Adam)):
        raise GraphcError(f"optimizer must be graphc.SGD(...), graphc.Adam(...) or graphc.AdamW(...), got {opt!r}",
                          hint="e.g. optimizer=graphc.Adam(lr=1e-3)")
