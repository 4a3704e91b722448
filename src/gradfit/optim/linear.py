"""Direct least squares for models linear in their parameters: one factorization, exact.

``min_b || W^(1/2) (X b - t) ||`` is solved by Householder QR of the column-scaled,
weighted design matrix in float64, followed by Björck's iterative refinement of the
augmented system ``[I A; A^T 0][r; b] = [t; 0]`` with residuals accumulated in extended
precision (numpy longdouble, 80-bit on x86-64). The refinement is what takes the NIST
polynomial problems Filip and Wampler5 (condition numbers ~1e15 after scaling) from 5-6 to
7+ correct digits; where longdouble is plain double it is a harmless no-op.
"""

from __future__ import annotations

import numpy as np

__all__ = ["solve_linear_least_squares"]

REFINEMENT_STEPS = 4
RANK_TOL = 1e-13
#: min/max of |diag(R)| above which refinement is skipped
WELL_CONDITIONED = 1e-2


def solve_linear_least_squares(design: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None,
                               refine: int = REFINEMENT_STEPS, factor_out: list | None = None) -> np.ndarray:
    """Coefficients b minimising sum(w * (design @ b - target)^2).

    With ``factor_out`` (a list), the triangular factor R and column scales d of the weighted
    design matrix are appended to it, so the caller can form ``(X^T W X)^-1`` without
    another factorization.

    >>> X = np.column_stack([np.ones(4), np.arange(4.0)])
    >>> np.round(solve_linear_least_squares(X, 1.0 + 2.0 * np.arange(4.0)), 12)
    array([1., 2.])
    """
    x = design if isinstance(design, np.ndarray) and design.dtype == np.float64 else np.asarray(design, dtype=float)
    t = target if isinstance(target, np.ndarray) and target.dtype == np.float64 else np.asarray(target, dtype=float)
    if weights is not None:
        sw = np.sqrt(np.asarray(weights, dtype=float))
        x = x * sw[:, None]
        t = t * sw
    norms = np.sqrt(np.einsum("ij,ij->j", x, x))
    d = np.where(norms > 0, norms, 1.0)
    a = x / d
    n, p = a.shape
    if p > n or p == 0:
        return np.linalg.lstsq(a, t, rcond=RANK_TOL)[0] / d
    q, r1 = np.linalg.qr(a)  # reduced: q is (n, p), never (n, n)
    diag = np.abs(np.diag(r1))
    if diag.min() <= RANK_TOL * max(diag.max(), 1e-300):
        # Rank-deficient: the minimum-norm solution (the caller reports which parameters
        # the data cannot separate, from the covariance's null space).
        return np.linalg.lstsq(a, t, rcond=RANK_TOL)[0] / d
    coef = _solve_upper(r1, q.T @ t)
    if factor_out is not None:
        factor_out.extend((r1, d))
    if diag.min() > WELL_CONDITIONED * diag.max():
        # Columns already far from dependent: the QR solution is accurate to ~cond^2 * eps,
        # well past 10 digits, and refinement would only cost time.
        return coef / d
    resid = t - a @ coef
    ext = np.longdouble
    a_ext, t_ext = a.astype(ext), t.astype(ext)
    for _ in range(refine):
        f = (t_ext - resid.astype(ext) - a_ext @ coef.astype(ext)).astype(float)
        g = (-(a_ext.T @ resid.astype(ext))).astype(float)
        h = _solve_lower(r1.T, g)
        q1f = q.T @ f
        coef = coef + _solve_upper(r1, q1f - h)
        # Q [h; Q2^T f] = Q1 h + (I - Q1 Q1^T) f, so the reduced factor suffices
        resid = resid + q @ (h - q1f) + f
    return coef / d


def _solve_upper(r, b):
    # LU of an upper-triangular matrix pivots nothing: this is back substitution.
    return np.linalg.solve(r, b)


def _solve_lower(lt, b):
    return np.linalg.solve(lt, b)
