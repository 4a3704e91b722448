"""Losses: pure functions of (prediction, target, weights) -> scalar tensor.

Each built-in loss also has its derivative with respect to the prediction, so formula models
can be trained with fully analytic gradients (symbolic model partials x this derivative)
without building an autograd graph. With weights, losses are weighted means:
``sum(w * l(r)) / sum(w)``. "poisson" is a likelihood for counts (its weights are
frequency weights); for scalar-parameter models gf.fit solves it by Fisher scoring
(:mod:`gradfit.lsq.likelihood`) rather than with these torch functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .errors import ConfigError

__all__ = ["Loss", "resolve_loss", "LOSSES", "POISSON_MEAN_FLOOR"]

HUBER_DELTA = 1.0


def _per_element(weights, like):
    """Per-point weights (n,) spread over the outputs of a (n, k) prediction: a point's weight
    applies to each of its outputs, so the weighted mean runs over all n*k elements."""
    if weights.dim() < like.dim() and weights.shape[0] == like.shape[0]:
        return weights.reshape(weights.shape + (1,) * (like.dim() - weights.dim())).expand_as(like)
    return weights


def _reduce(elementwise, weights):
    if weights is None:
        return elementwise.mean()
    weights = _per_element(weights, elementwise)
    return (elementwise * weights).sum() / weights.sum()


def _scale(residual, weights):
    """d(mean)/d(element): 1/n without weights, w/sum(w) with them."""
    if weights is None:
        return 1.0 / residual.numel()
    weights = _per_element(weights, residual)
    return weights / weights.sum()


def mse(pred, target, weights=None):
    """Mean squared error; written as the worked example writes it, so float32 results match."""
    return _reduce((pred - target) ** 2, weights)


def _mse_grad(pred, target, weights=None):
    return 2.0 * (pred - target) * _scale(pred, weights)


def _mse_value_and_grad(pred, target, weights=None):
    """(loss, g, c) with d loss / d pred = c * g. Keeping the constant c apart lets the caller
    apply it to the P-vector gradient instead of the n-vector (fewer passes over the data)."""
    import torch

    r = pred - target
    if weights is None:
        n = r.numel()
        return torch.dot(r.reshape(-1), r.reshape(-1)).div_(n), r, 2.0 / n
    scale = _scale(r, weights)
    return (r**2 * scale).sum(), r * scale, 2.0


def mae(pred, target, weights=None):
    """Mean absolute error."""
    return _reduce((pred - target).abs(), weights)


def _mae_grad(pred, target, weights=None):
    return (pred - target).sign() * _scale(pred, weights)


def huber(pred, target, weights=None):
    """Huber loss with delta = 1: quadratic for |r| <= 1, linear beyond."""
    r = (pred - target).abs()
    quadratic = r.clamp(max=HUBER_DELTA)
    return _reduce(0.5 * quadratic**2 + HUBER_DELTA * (r - quadratic), weights)


def _huber_grad(pred, target, weights=None):
    return (pred - target).clamp(-HUBER_DELTA, HUBER_DELTA) * _scale(pred, weights)


def log_cosh(pred, target, weights=None):
    """log(cosh(r)), computed without overflow as |r| + softplus(-2|r|) - log 2."""
    import torch

    r = (pred - target).abs()
    return _reduce(r + torch.nn.functional.softplus(-2.0 * r) - math.log(2.0), weights)


def _log_cosh_grad(pred, target, weights=None):
    return (pred - target).tanh() * _scale(pred, weights)


#: below this mean the "poisson" loss continues linearly (with its slope there), so a network or
#: first-order fit whose prediction is not positive still gets a finite loss and a gradient
#: pointing back to positive means (the deviance itself has no value at mu <= 0)
POISSON_MEAN_FLOOR = 1e-6


def _poisson_half_deviance(pred, target):
    """Per element dev_i / 2 = y log(y/mu) - (y - mu), continued linearly below the floor."""
    import torch

    mu = pred.clamp(min=POISSON_MEAN_FLOOR)
    # y log y - y log mu, not xlogy(y, y/mu): the latter's gradient at y = 0 is 0/0 (NaN) and
    # zero counts are the usual case
    half = torch.xlogy(target, target) - torch.xlogy(target, mu) - (target - mu)
    below = pred < POISSON_MEAN_FLOOR
    return torch.where(below, half + (1.0 - target / POISSON_MEAN_FLOOR) * (pred - POISSON_MEAN_FLOOR), half)


def poisson(pred, target, weights=None):
    """Poisson loss for counts: the weighted mean of half the deviance terms,
    ``y log(y/mu) - (y - mu)`` (0 for a perfect fit), which is the negative log-likelihood
    per point up to terms free of the model. ``pred`` is the mean mu; see
    :data:`POISSON_MEAN_FLOOR` for mu <= 0. A network should start at positive means: train it
    with normalize=True (its output then starts at the mean count)."""
    return _reduce(_poisson_half_deviance(pred, target), weights)


def _poisson_grad(pred, target, weights=None):
    return (1.0 - target / pred.clamp(min=POISSON_MEAN_FLOOR)) * _scale(pred, weights)


@dataclass(frozen=True)
class Loss:
    """A loss by name: ``value(pred, target, weights)`` and, when known, ``grad_pred``."""

    name: str
    value: Callable
    grad_pred: Callable | None = None
    least_squares: bool = False
    #: a likelihood estimator (gradfit.likelihood): scalar models are solved by Fisher scoring
    likelihood: bool = False
    #: optional fused (value, d value / d pred), saving a pass over the data
    value_and_grad: Callable | None = None

    def __call__(self, pred, target, weights=None):
        return self.value(pred, target, weights)


LOSSES = {
    "mse": Loss("mse", mse, _mse_grad, least_squares=True, value_and_grad=_mse_value_and_grad),
    "mae": Loss("mae", mae, _mae_grad),
    "huber": Loss("huber", huber, _huber_grad),
    "log_cosh": Loss("log_cosh", log_cosh, _log_cosh_grad),
    "poisson": Loss("poisson", poisson, _poisson_grad, likelihood=True),
}


def resolve_loss(spec) -> Loss:
    """A loss name ('mse', 'mae', 'huber', 'log_cosh', 'poisson'), a :class:`Loss`, or a callable
    ``f(pred, target) -> scalar`` (weights are then not supported)."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_")
        if key not in LOSSES:
            raise ConfigError(f"unknown loss {spec!r}; choose one of {', '.join(LOSSES)} or pass a callable")
        return LOSSES[key]
    if callable(spec):
        def value(pred, target, weights=None, _f=spec):
            if weights is not None:
                raise ConfigError("a custom loss callable cannot take weights; fold them into the callable")
            return _f(pred, target)

        return Loss(getattr(spec, "__name__", "custom"), value, None)
    raise ConfigError(f"loss must be a name or a callable, got {type(spec).__name__}")
