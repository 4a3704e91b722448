"""k-fold cross-validation on top of a fit (random, grouped or time-ordered folds)."""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ['cross_validate']


def cross_validate(bound, arrays, k, groups, split, opts, fit_split) -> dict:
    """Fit each fold with ``fit_split(bound, train, val, notes, opts)`` (training on the rest)
    and summarize validation losses and parameters."""
    import numpy as np

    from ..data.split import kfold_indices

    if split not in ("random", "grouped", "time"):
        raise ConfigError(f"cv_split must be 'random', 'grouped' or 'time', got {split!r}")
    if split == "grouped" and groups is None:
        raise ConfigError("cv_split='grouped' needs cv_groups (one group label per row)")
    folds = kfold_indices(arrays.n, k, opts["seed"], groups=groups if split == "grouped" else None,
                          time_ordered=split == "time")
    fold_opts = dict(opts, progress=False, log_every=0, callbacks=(), warn_overfitting=False)
    losses, params = [], []
    for tr, va in folds:
        r = fit_split(bound, arrays.take(tr), arrays.take(va), (), fold_opts)
        losses.append(float(r.val_loss))
        params.append(dict(r.params))
    out = {"val_loss": losses, "mean": float(np.mean(losses)), "std": float(np.std(losses, ddof=1)),
           "params": params, "split": split, "folds": len(folds)}
    if params and params[0]:
        out["params_mean"] = {n: float(np.mean([p[n] for p in params])) for n in params[0]}
        out["params_std"] = {n: float(np.std([p[n] for p in params], ddof=1)) for n in params[0]}
    return out
