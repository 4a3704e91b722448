"""Uncertainties and goodness of fit for least-squares results. Pure functions of arrays.

The covariance is ``s^2 (J^T J)^-1`` with J the Jacobian of the *weighted* residuals at the
solution, computed through the SVD of the column-scaled Jacobian ``J D^-1`` (D = column
norms) so that parameters in very different units do not ruin the conditioning, and so that
rank deficiency is detected on a scale-free basis. ``s^2`` is the reduced chi-square unless
sigma is absolute (curve_fit's ``absolute_sigma``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Covariance", "covariance", "covariance_from_svd", "fit_statistics", "batch_statistics",
           "rank_deficient", "batch_inverse_diagonal", "normal_interval", "RANK_TOL"]

#: singular values of the column-scaled Jacobian below RANK_TOL * largest count as zero (the
#: one rank test of gradfit: one fit, and every fit of fit_many)
RANK_TOL = 1e-10


@dataclass(frozen=True)
class Covariance:
    matrix: np.ndarray  # (P, P); NaN rows/columns for parameters in a rank-deficient group
    rank: int
    #: groups of parameter indices that the data cannot separate (null-space directions)
    degenerate: tuple[tuple[int, ...], ...]


def covariance_from_svd(s: np.ndarray, vt: np.ndarray, d: np.ndarray, scale: float) -> Covariance:
    """``scale * (J^T J)^-1`` from the thin SVD ``J D^-1 = U S V^T`` (full rank)."""
    root = vt.T / (d[:, None] * s)  # D^-1 V S^-1, so (J^T J)^-1 = root @ root.T
    return Covariance((root @ root.T) * scale, len(s), ())


def covariance(jac: np.ndarray, scale: float, *, rank_tol: float = RANK_TOL) -> Covariance:
    """``scale * (J^T J)^-1`` via the SVD of the column-scaled Jacobian.

    >>> J = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    >>> np.round(covariance(J, 1.0).matrix, 6)
    array([[ 0.833333, -0.5     ],
           [-0.5     ,  0.5     ]])
    """
    jac = np.asarray(jac, dtype=float)
    p = jac.shape[1]
    norms, d, s, vt, keep = _scaled_svd(jac, rank_tol)
    rank = int(keep.sum())
    if rank == p:
        return covariance_from_svd(s, vt, d, scale)
    inv = np.where(keep, 1.0 / np.where(keep, s, 1.0) ** 2, 0.0)
    cov = (vt.T * inv) @ vt / np.outer(d, d) * scale
    null = vt[~keep]  # rows spanning the null space (in scaled coordinates)
    weight = np.sqrt((null**2).sum(axis=0))
    involved = tuple(int(i) for i in np.nonzero(weight > 1e-3)[0])
    zero_cols = tuple(int(i) for i in np.nonzero(norms == 0)[0])
    group = involved or zero_cols
    mask = np.zeros(p, dtype=bool)
    mask[list(group)] = True
    cov[mask, :] = np.nan
    cov[:, mask] = np.nan
    return Covariance(cov, rank, (group,))


def _scaled_svd(jac: np.ndarray, rank_tol: float):
    """Column norms, the scaling D, and the SVD ``J D^-1 = U S V^T`` of one Jacobian (M, P) or
    a stack (B, M, P); ``keep`` marks the singular values above ``rank_tol`` * the largest."""
    norms = np.sqrt(np.einsum("...ij,...ij->...j", jac, jac))
    d = np.where(norms > 0, norms, 1.0)
    _, s, vt = np.linalg.svd(jac / d[..., None, :], full_matrices=False)
    top = s[..., :1]
    keep = s > rank_tol * np.where(top > 0, top, 1.0)
    return norms, d, s, vt, keep


def rank_deficient(jac: np.ndarray, *, rank_tol: float = RANK_TOL) -> np.ndarray:
    """Per fit: is the Jacobian (B, M, P) rank-deficient by the test of :func:`covariance`?

    The columns are scaled to unit norm (so units do not matter) and a singular value below
    ``rank_tol`` times the largest counts as zero; an all-zero column is always deficient.
    Returns a (B,) bool array. ``jac`` should already carry the weights (sqrt(w) * J).

    >>> J = np.array([[[1.0, 2.0], [2.0, 4.0]], [[1.0, 0.0], [0.0, 1.0]]])
    >>> rank_deficient(J).tolist()
    [True, False]
    """
    return batch_inverse_diagonal(jac, rank_tol=rank_tol)[0]


def batch_inverse_diagonal(jac: np.ndarray, *, rank_tol: float = RANK_TOL) -> tuple[np.ndarray, np.ndarray]:
    """For a stack of Jacobians (B, M, P): (rank-deficient (B,) bool, diag((J^T J)^-1) (B, P)),
    by the SVD of the column-scaled Jacobian as in :func:`covariance`. The diagonal is NaN
    for rank-deficient fits; times the chi-square scale it gives the variances."""
    jac = np.asarray(jac, dtype=float)
    if jac.shape[0] == 0:
        return np.zeros(0, dtype=bool), np.zeros((0, jac.shape[-1]))
    _, d, s, vt, keep = _scaled_svd(jac, rank_tol)
    deficient = keep.sum(axis=-1) < jac.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        root = vt / (s[..., :, None] * d[..., None, :])  # rows: S^-1 V^T D^-1
        diag = (root**2).sum(axis=-2)
    return deficient, np.where(deficient[:, None], np.nan, diag)


def fit_statistics(residuals: np.ndarray, y: np.ndarray, weights: np.ndarray | None, n_params: int,
                   chisqr: float | None = None, rss: float | None = None) -> dict:
    """n, dof, chi-square, reduced chi-square, RSS, RMSE, R², AIC, BIC.

    ``residuals`` are unweighted (prediction - y); chi-square uses the weights (1/sigma²),
    RSS does not. AIC/BIC follow lmfit: n*log(chi2/n) + 2k and n*log(chi2/n) + log(n)*k.
    ``chisqr`` overrides the float64 sum (e.g. one computed in extended precision); ``rss``
    passes a sum of squared residuals the caller already has.
    """
    r = np.asarray(residuals, dtype=float)
    y = np.asarray(y, dtype=float)
    n = r.size
    rss = float(r @ r) if rss is None else rss
    if weights is None:
        chi2 = rss if chisqr is None else float(chisqr)
        dev = y - float(np.add.reduce(y)) / n
        tss = float(dev @ dev)
    else:
        w = np.asarray(weights, dtype=float)
        chi2 = float(w @ (r * r)) if chisqr is None else float(chisqr)
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
    chi2 = np.asarray(chisqr, dtype=float)
    chi2 = np.where(np.isfinite(chi2), chi2, np.nan)
    n = np.asarray(n).astype(np.int64)
    dof = n - int(n_params)
    with np.errstate(divide="ignore", invalid="ignore"):
        nf = n.astype(float)
        loglike_term = np.where(chi2 > 0, nf * np.log(chi2 / nf), np.where(chi2 == 0, -np.inf, np.nan))
        return {"n": n, "dof": dof, "chisqr": chi2, "redchi": np.where(dof > 0, chi2 / dof, np.nan),
                "aic": loglike_term + 2 * n_params, "bic": loglike_term + np.log(nf) * n_params}


def normal_interval(value: float, stderr: float, level: float) -> tuple[float, float]:
    """value ± z * stderr, z the two-sided normal quantile for ``level``."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return value - z * stderr, value + z * stderr
