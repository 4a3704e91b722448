"""k-fold cross-validation on top of a fit (random, grouped or time-ordered folds)."""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ['cross_validate']


def cross_validate(bound, arrays, groups, options, setup, fit_split) -> dict:
    """Fit each of ``options.cv.folds`` folds with ``fit_split(bound, train, val, notes, options,
    setup)`` (training on the rest) and summarize validation losses and parameters. Folds run
    quiet (:meth:`FitOptions.for_fold`: no progress, logging or overfitting warnings), without
    the caller's callbacks and checkpoints.

    Raises
    ------
    ConfigError
        split "grouped" without ``groups`` (one label per row).
    """
    import numpy as np

    from ..data.split import kfold_indices

    cv = options.cv
    if cv.split == "grouped" and groups is None:
        raise ConfigError("cv_split='grouped' needs cv_groups (one group label per row)")
    folds = kfold_indices(arrays.n, cv.folds, options.training.seed, groups=groups if cv.split == "grouped" else None,
                          time_ordered=cv.split == "time")
    fold_options, fold_setup = options.for_fold(), setup.for_fold()
    losses, params = [], []
    for tr, va in folds:
        r = fit_split(bound, arrays.take(tr), arrays.take(va), (), fold_options, fold_setup)
        losses.append(float(r.val_loss))
        params.append(dict(r.params))
    out = {"val_loss": losses, "mean": float(np.mean(losses)), "std": float(np.std(losses, ddof=1)),
           "params": params, "split": cv.split, "folds": len(folds)}
    if params and params[0]:
        out["params_mean"] = {n: float(np.mean([p[n] for p in params])) for n in params[0]}
        out["params_std"] = {n: float(np.std([p[n] for p in params], ddof=1)) for n in params[0]}
    return out
