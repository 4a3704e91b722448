"""Fighting overfitting: penalty terms, input noise, learning-rate schedules.

Pure functions of tensors plus two small classes that hold configuration; the training loop
asks them for values, nothing here trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..options import SCHEDULE_NAMES

__all__ = ["Penalty", "parse_penalty", "penalty_value", "add_input_noise", "make_schedule", "sized_by_epochs"]


@dataclass(frozen=True)
class Penalty:
    """Coefficients of l1 and l2 penalties: None = off; a float = every parameter; a dict =
    those parameters (names of formula parameters or of module weights)."""

    l1: float | dict | None = None
    l2: float | dict | None = None

    @property
    def active(self) -> bool:
        return bool(self.l1) or bool(self.l2)

    def describe(self) -> dict:
        return {k: v for k, v in (("l1", self.l1), ("l2", self.l2)) if v}


def parse_penalty(spec, names) -> Penalty | None:
    """{"l2": 1e-3} or {"l2": {"w": 1e-3}, "l1": 1e-4} -> Penalty; unknown names are errors."""
    from ..errors import did_you_mean

    if spec is None or spec == {}:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError('penalty must be a dict like {"l2": 1e-3} or {"l2": {"w": 1e-3}}')
    out = {}
    for kind, value in spec.items():
        if kind not in ("l1", "l2"):
            raise ConfigError(f"unknown penalty {kind!r}; use 'l1' and/or 'l2'")
        if isinstance(value, Mapping):
            for n, c in value.items():
                if n not in names:
                    raise ConfigError(f"penalty {kind} names unknown parameter {n!r}{did_you_mean(n, names)}")
                _check_coef(kind, c)
            out[kind] = {str(n): float(c) for n, c in value.items()}
        else:
            _check_coef(kind, value)
            out[kind] = float(value)
    return Penalty(**out)


def _check_coef(kind, c) -> None:
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0:
        raise ConfigError(f"penalty {kind} coefficient must be a number >= 0, got {c!r}")


def penalty_value(penalty: Penalty, params: Mapping):
    """sum_j l2_j * p_j^2 + sum_j l1_j * |p_j| over named tensors (scalars or weight tensors)."""
    total = 0.0
    for kind, fn in (("l2", lambda t: (t * t).sum()), ("l1", lambda t: t.abs().sum())):
        coef = getattr(penalty, kind)
        if not coef:
            continue
        if isinstance(coef, dict):
            for name, c in coef.items():
                total = total + c * fn(params[name])
        else:
            for t in params.values():
                total = total + coef * fn(t)
    return total


@dataclass
class InputNoise:
    """Gaussian noise on training inputs: sigma times each input's standard deviation."""

    sigma: float
    scale: dict = field(default_factory=dict)  # input name -> std on the training data

    @staticmethod
    def for_data(sigma: float, inputs: Mapping) -> "InputNoise":
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or sigma < 0:
            raise ConfigError(f"input_noise must be a number >= 0 (relative to each input's std), got {sigma!r}")
        return InputNoise(float(sigma), {k: v.std(0, keepdim=False) for k, v in inputs.items()})


def add_input_noise(noise: InputNoise, inputs: Mapping, generator) -> dict:
    """New inputs with noise drawn from ``generator`` (fresh every call)."""
    import torch

    out = {}
    for k, v in inputs.items():
        eps = torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        out[k] = v + eps * (noise.sigma * noise.scale[k])
    return out


#: schedule name -> the option that :func:`make_schedule` derives from the total epoch count
_EPOCH_SIZED = {"step": "step_size", "exponential": "gamma", "cosine": "T_max"}


def sized_by_epochs(spec) -> bool:
    """True when the learning-rate curve of schedule ``spec`` depends on the run's total epochs
    (step, exponential or cosine without their own step_size, gamma or T_max), so a run resumed
    with another epoch count would bend it; "plateau" and no schedule do not.

    >>> sized_by_epochs("cosine"), sized_by_epochs({"name": "cosine", "T_max": 50}), sized_by_epochs("plateau")
    (True, False, False)
    """
    if spec is None:
        return False
    opts = dict(spec) if isinstance(spec, Mapping) else {"name": spec}
    option = _EPOCH_SIZED.get(str(opts.get("name", "")).lower())
    return option is not None and option not in opts


def make_schedule(spec, optimizer, epochs: int):
    """A torch.optim.lr_scheduler from a name or {"name": ..., options}: step (step_size =
    epochs // 3, gamma 0.1), exponential (gamma such that lr falls 100x over the run), cosine
    (T_max = epochs), plateau (factor 0.5, patience 10, on validation loss if there is one)."""
    import torch

    if spec is None:
        return None
    opts = dict(spec) if isinstance(spec, Mapping) else {"name": spec}
    name = str(opts.pop("name", "")).lower()
    sched = torch.optim.lr_scheduler
    try:
        if name == "step":
            opts.setdefault("step_size", max(1, epochs // 3))
            opts.setdefault("gamma", 0.1)
            return sched.StepLR(optimizer, **opts)
        if name == "exponential":
            opts.setdefault("gamma", 0.01 ** (1.0 / max(epochs, 1)))
            return sched.ExponentialLR(optimizer, **opts)
        if name == "cosine":
            opts.setdefault("T_max", epochs)
            return sched.CosineAnnealingLR(optimizer, **opts)
        if name == "plateau":
            opts.setdefault("factor", 0.5)
            opts.setdefault("patience", 10)
            return sched.ReduceLROnPlateau(optimizer, **opts)
    except TypeError as exc:
        raise ConfigError(f"bad option for schedule {name!r}: {exc}") from None
    raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}")
