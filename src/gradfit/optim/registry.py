"""torch.optim optimizers by name, with their own options."""

from __future__ import annotations

from typing import Iterable

from ..errors import ConfigError
from ..options import TORCH_OPTIMIZERS

__all__ = ["make_optimizer", "optimizer_names"]

_NAMES = TORCH_OPTIMIZERS


def optimizer_names() -> tuple[str, ...]:
    return tuple(_NAMES)


def make_optimizer(name: str, leaves: Iterable, lr: float, options: dict | None = None, *, prefer_fused: bool = False,
                   capturable: bool = False):
    """Build ``torch.optim.<Name>(leaves, lr=lr, **options)``; bad values become ConfigError.

    ``prefer_fused`` asks for torch's fused implementation when the optimizer has one and the
    caller set neither ``fused`` nor ``foreach`` (worth it for networks, not for 2 scalars).
    ``capturable`` (CUDA leaves only) asks for ``capturable=True`` where the optimizer has it
    and the caller did not set it, so that its step can be captured in a CUDA graph
    (train/loop.py).

    >>> import torch
    >>> p = torch.zeros(2, requires_grad=True)
    >>> type(make_optimizer("sgd", [p], 0.1, {"momentum": 0.9})).__name__
    'SGD'
    """
    import torch

    key = str(name).lower()
    if key not in _NAMES:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(_NAMES)}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
    cls = getattr(torch.optim, _NAMES[key])
    opts = dict(options or {})
    if key == "lbfgs":
        # Strong-Wolfe line search makes L-BFGS robust at lr=1, torch's default lr for it.
        opts.setdefault("line_search_fn", "strong_wolfe")
    leaves = list(leaves)
    if capturable and "capturable" in _init_params(cls):
        opts.setdefault("capturable", True)
    if prefer_fused and "fused" not in opts and "foreach" not in opts and "fused" in _init_params(cls):
        # One fused kernel per step instead of a handful of ops per tensor: ~20% faster
        # minibatch training of small networks on CPU. Falls back where unsupported.
        try:
            return cls(leaves, lr=lr, fused=True, **opts)
        except (RuntimeError, TypeError, ValueError):
            pass
    try:
        return cls(leaves, lr=lr, **opts)
    except TypeError as exc:
        raise ConfigError(f"bad option for optimizer {name!r}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"optimizer {name!r}: {exc}") from None


def _init_params(cls) -> tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(cls.__init__).parameters)
