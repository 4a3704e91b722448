"""The measures behind Levenberg-Marquardt's stopping tests (optim/lm.py): the scaled
gradient (MINPACK's gtol cosine), the active set at box bounds, the default tolerances, and
the small vector norms every iteration needs."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["default_tolerances", "scaled_gradient", "active_set", "column_norms", "norm"]


def default_tolerances(dtype=np.float64) -> tuple[float, float, float]:
    """(ftol, xtol, gtol) for a dtype: a little above its rounding level."""
    eps = float(np.finfo(dtype).eps)
    return (10 * eps, 100 * eps, 10 * eps)


def scaled_gradient(jac: np.ndarray, r: np.ndarray, exempt=None, *, col_norms: np.ndarray | None = None,
                    r_norm: float | None = None, grad: np.ndarray | None = None) -> float:
    """max_j |J_j . r| / (||J_j|| ||r||): the cosine between the residual and each Jacobian
    column (MINPACK's gtol measure); 0 at a stationary point, scale-free. Columns flagged in
    ``exempt`` (parameters resting on a bound) are left out. ``col_norms``, ``r_norm`` and
    ``grad`` (J^T r) pass what the caller already has."""
    rn = norm(r) if r_norm is None else r_norm
    if rn == 0.0:
        return 0.0
    cn = (column_norms(jac) if col_norms is None else col_norms).tolist()
    g = (jac.T @ r if grad is None else grad).tolist()
    if exempt is None:
        cosines = [abs(gj) / (cj * rn) for gj, cj in zip(g, cn) if cj > 0]
    else:
        cosines = [abs(gj) / (cj * rn) for gj, cj, sj in zip(g, cn, map(bool, exempt)) if cj > 0 and not sj]
    if any(c != c for c in cosines):
        return math.nan  # a NaN in the Jacobian: never stationary
    return max(cosines) if cosines else 0.0


def column_norms(jac: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->j", jac, jac))


def norm(v: np.ndarray) -> float:
    """Euclidean norm of a vector, as numpy.linalg.norm computes it (sqrt of the dot
    product) without its Python overhead."""
    return math.sqrt(float(v @ v))


def active_set(x: np.ndarray, gradient: np.ndarray, box) -> np.ndarray | None:
    """Coordinates held by their bound: resting on it with the descent direction ``-gradient``
    pointing out of the box. A coordinate on a bound whose gradient points inward is free
    (the projected gradient of box-constrained optimization), so a fit stuck on a bound
    it should leave is never stationary."""
    if box is None:
        return None
    lo, hi = box
    return ((x <= lo) & (gradient > 0)) | ((x >= hi) & (gradient < 0))
