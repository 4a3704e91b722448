"""Seeded train/validation splits."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["train_val_indices"]


def train_val_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random seeded split of ``range(n)``; returns (train, val) index arrays, each sorted.

    >>> tr, va = train_val_indices(10, 0.2, seed=0)
    >>> len(tr), len(va)
    (8, 2)
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return np.arange(n), np.arange(0)
    n_val = max(1, int(round(n * val_fraction)))
    if n - n_val < 1:
        raise DataError(f"{n} rows are too few to hold out {val_fraction:.0%} for validation")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
