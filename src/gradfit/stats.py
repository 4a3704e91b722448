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

__all__ = ["Covariance", "covariance", "covariance_from_svd", "fit_statistics", "normal_interval", "RANK_TOL"]

#: singular values of the scaled Jacobian below RANK_TOL * largest count as zero
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
    norms = np.sqrt(np.einsum("ij,ij->j", jac, jac))
    d = np.where(norms > 0, norms, 1.0)
    _, s, vt = np.linalg.svd(jac / d, full_matrices=False)
    top = s[0] if s.size and s[0] > 0 else 1.0
    keep = s > rank_tol * top
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
    loglike_term = n * math.log(chi2 / n) if chi2 > 0 else -math.inf
    return {
        "n": n, "dof": dof, "chisqr": chi2, "redchi": chi2 / dof if dof > 0 else math.nan,
        "rss": rss, "rmse": math.sqrt(rss / n), "r2": 1.0 - chi2 / tss if tss > 0 else math.nan,
        "aic": loglike_term + 2 * n_params, "bic": loglike_term + math.log(n) * n_params,
    }


def normal_interval(value: float, stderr: float, level: float) -> tuple[float, float]:
    """value ± z * stderr, z the two-sided normal quantile for ``level``."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return value - z * stderr, value + z * stderr
