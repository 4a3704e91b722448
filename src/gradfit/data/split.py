"""Seeded train/validation splits."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["train_val_indices", "kfold_indices"]


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


def kfold_indices(n: int, k: int, seed: int, *, groups=None, time_ordered: bool = False):
    """(train, val) index pairs for k-fold cross-validation.

    Random folds (seeded); ``groups`` keeps each group's rows in one fold (grouped k-fold);
    ``time_ordered`` validates each fold on the rows that follow the ones it trained on
    (forward chaining: train on folds 1..i, validate on fold i+1; k-1 splits).

    >>> [len(v) for _, v in kfold_indices(10, 5, seed=0)]
    [2, 2, 2, 2, 2]
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"cv must be an integer >= 2, got {k!r}")
    if time_ordered and groups is not None:
        raise ConfigError("choose grouped or time-ordered folds, not both")
    if time_ordered:
        bounds = np.linspace(0, n, k + 1).round().astype(int)
        if np.any(np.diff(bounds) < 1):
            raise DataError(f"{n} rows are too few for {k} time-ordered folds")
        return [(np.arange(0, bounds[i]), np.arange(bounds[i], bounds[i + 1])) for i in range(1, k)]
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise DataError(f"cv_groups must have one label per row ({n}), got shape {g.shape}")
        labels = np.unique(g)
        if len(labels) < k:
            raise DataError(f"{len(labels)} groups are too few for {k} grouped folds")
        order = np.random.default_rng(seed).permutation(len(labels))
        fold_of_label = {labels[j]: i % k for i, j in enumerate(order)}
        fold = np.array([fold_of_label[v] for v in g])
    else:
        if n < k:
            raise DataError(f"{n} rows are too few for {k} folds")
        fold = np.empty(n, dtype=int)
        fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return [(np.nonzero(fold != i)[0], np.nonzero(fold == i)[0]) for i in range(k)]
