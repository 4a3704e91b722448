"""Goodness-of-fit statistics of least-squares fits: n, dof, chi-square, reduced chi-square,
RSS, RMSE, R², AIC and BIC (lmfit's conventions), for one fit from its residuals and for a
batch of fits from their chi-squares. Re-exported by
:mod:`gradfit.stats`."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fit_statistics", "batch_statistics"]


def fit_statistics(residuals: np.ndarray, y: np.ndarray, weights: np.ndarray | None, n_params: int,
                   chisqr: float | None = None, rss: float | None = None) -> dict:
    """n, dof, chi-square, reduced chi-square, RSS, RMSE, R², AIC, BIC.

    ``residuals`` are unweighted (prediction - y); chi-square uses the weights (1/sigma²),
    RSS does not. AIC/BIC follow lmfit: n*log(chi2/n) + 2k and n*log(chi2/n) + log(n)*k.
    ``chisqr`` overrides the float64 sum (e.g. one computed in extended precision); ``rss``
    passes a sum of squared residuals the caller already has. With weights, n counts the points
    of weight > 0: a point of weight 0 carries no information and is not one of the fit's
    points (R's ``lm`` and gradfit's fit_many count so), so n, dof, RSS, RMSE, AIC and BIC are
    those of the fit with such points left out.
    """
    y = np.asarray(y, dtype=float)
    n = y.size  # (``residuals`` may be None when ``rss`` and ``chisqr`` are given: a chunked fit)
    if weights is not None:
        used = np.asarray(weights) > 0
        n_used = int(np.count_nonzero(used))
        if n_used < n:
            n = n_used
            if residuals is not None and rss == rss:  # the RSS of the points used (a left-out point may be
                # far off; a NaN RSS, nothing determined, stays NaN)
                kept = np.asarray(residuals)[used]
                rss = float(np.vdot(kept, kept))
    rss = float(np.dot(residuals, residuals)) if rss is None else rss
    if weights is None:
        chi2 = rss if chisqr is None else float(chisqr)
        dev = y - float(np.add.reduce(y)) / n
        tss = float(dev @ dev)
    else:
        w = np.asarray(weights, dtype=float)
        chi2 = float(w @ np.square(residuals)) if chisqr is None else float(chisqr)
        dev = y - float(w @ y) / float(w.sum())
        tss = float(w @ (dev * dev))
    dof = n - n_params
    if chi2 > 0:
        loglike_term = n * math.log(chi2 / n)
    else:  # a perfect fit; NaN (the model not finite) stays NaN
        loglike_term = -math.inf if chi2 == 0 else math.nan
    return {
        "n": n, "dof": dof, "chisqr": chi2, "redchi": chi2 / dof if dof > 0 else math.nan,
        "rss": rss, "rmse": math.sqrt(rss / n), "r2": 1.0 - chi2 / tss if tss > 0 else math.nan,
        "aic": loglike_term + 2 * n_params, "bic": loglike_term + math.log(n) * n_params,
    }


def batch_statistics(chisqr: np.ndarray, n: np.ndarray, n_params: int) -> dict:
    """The statistics of :func:`fit_statistics` that need no residuals, for (B,) fits.

    Same key names and formulas: n, dof, chisqr, redchi (NaN where dof < 1), aic and bic
    (lmfit's n*log(chi2/n) + 2k and n*log(chi2/n) + log(n)*k; -inf where chi2 = 0, NaN where
    n = 0). ``chisqr`` is (B,) float (inf/NaN for fits that did not run become NaN); ``n``
    is (B,) points used; ``n_params`` the number of free parameters. Returns a dict of (B,)
    arrays (n and dof int64).

    >>> s = batch_statistics(np.array([2.0, 0.0]), np.array([10, 3]), 2)
    >>> s["dof"].tolist(), s["redchi"].tolist()
    ([8, 1], [0.25, 0.0])
    """
    # few (B,) temporaries: at a million fits each is 8 MB of fresh memory (~10 ms of page faults)
    chi2 = np.array(chisqr, dtype=float)
    chi2[~np.isfinite(chi2)] = np.nan
    n = np.asarray(n, dtype=np.int64)
    dof = n - int(n_params)
    with np.errstate(divide="ignore", invalid="ignore"):
        nf = n.astype(float)
        # n log(chi2 / n) is already -inf at chi2 = 0 (n > 0) and NaN at n = 0 or chi2 NaN
        aic = np.divide(chi2, nf)
        np.log(aic, out=aic)
        aic *= nf
        redchi = np.divide(chi2, dof)
        redchi[dof <= 0] = np.nan
        bic = np.log(nf, out=nf)
        bic *= n_params
        bic += aic
        aic += 2 * n_params
        return {"n": n, "dof": dof, "chisqr": chi2, "redchi": redchi, "aic": aic, "bic": bic}
