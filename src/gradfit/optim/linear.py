"""Direct least squares for models linear in their parameters: one factorization, exact.

``min_b || W^(1/2) (X b - t) ||`` is solved through the thin SVD of the column-scaled,
weighted design matrix in float64 (rank deficiency shows directly in the singular values),
followed, when the columns are nearly dependent, by Björck's iterative refinement of the
augmented system ``[I A; A^T 0][r; b] = [t; 0]`` with residuals accumulated in extended
precision (numpy longdouble, 80-bit on x86-64). The refinement is what takes the NIST
polynomial problems Filip and Wampler5 (condition numbers ~1e15 after scaling) from 5-6 to
7+ correct digits; where longdouble is plain double it is a harmless no-op.
"""

from __future__ import annotations

import numpy as np

from .trust_region import thin_svd

__all__ = ["solve_linear_least_squares"]

REFINEMENT_STEPS = 4
#: singular values below RANK_TOL * largest count as zero (rank deficiency)
RANK_TOL = 1e-13
#: smallest/largest singular value above which refinement is skipped
WELL_CONDITIONED = 1e-2


def solve_linear_least_squares(design: np.ndarray, target: np.ndarray, weights: np.ndarray | None = None,
                               refine: int = REFINEMENT_STEPS) -> tuple[np.ndarray, tuple]:
    """Coefficients b minimising sum(w * (design @ b - target)^2), and the factorization.

    The second value is the thin SVD of the column-scaled weighted design matrix
    ``X D^-1 = U S V^T`` as (s, vt, d), from which the caller forms
    ``(X^T W X)^-1 = D^-1 V S^-2 V^T D^-1`` without another factorization.

    >>> X = np.column_stack([np.ones(4), np.arange(4.0)])
    >>> np.round(solve_linear_least_squares(X, 1.0 + 2.0 * np.arange(4.0))[0], 12)
    array([1., 2.])
    """
    x = np.asarray(design, dtype=float)
    t = np.asarray(target, dtype=float)
    if weights is not None:
        sw = np.sqrt(np.asarray(weights, dtype=float))
        x = x * sw[:, None]
        t = t * sw
    norms = np.sqrt(np.einsum("ij,ij->j", x, x))
    # p-vectors (norms, singular values) are tested as Python floats: for a handful of
    # parameters that is several times cheaper than numpy reductions.
    d = norms if all(norms.tolist()) else np.where(norms > 0, norms, 1.0)
    a = x / d
    u, s, vt = thin_svd(a)  # (numpy's gufunc without the public function's checks; LinAlgError as it)
    factor = (s, vt, d)
    s_max, s_min = (float(s[0]), float(s[-1])) if s.size else (0.0, 0.0)
    if not s_min > RANK_TOL * s_max:  # singular values come sorted, largest first
        # Rank-deficient: the minimum-norm solution over the directions the data determine
        # (the caller reports which parameters the data cannot separate).
        keep = s > RANK_TOL * s[0] if s.size and s[0] > 0 else np.zeros(s.shape, dtype=bool)
        inv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
        return (vt.T @ (inv * (u.T @ t))) / d, factor
    coef = vt.T @ ((u.T @ t) / s)
    if s_min > WELL_CONDITIONED * s_max:
        # Columns far from dependent: the solution is accurate to ~cond^2 * eps, well past
        # 10 digits, and refinement would only cost time.
        return coef / d, factor
    # Björck's refinement of [I A; A^T 0][r; b] = [t; 0] with A = U S V^T: the correction
    # (dr, db) for residuals (f, g) is db = V S^-1 (U^T f - h), dr = U h + f - U U^T f,
    # where h = S^-1 V^T g. Residuals are accumulated in extended precision.
    resid = t - a @ coef
    ext = np.longdouble
    a_ext, t_ext = a.astype(ext), t.astype(ext)
    for _ in range(refine):
        f = (t_ext - resid.astype(ext) - a_ext @ coef.astype(ext)).astype(float)
        g = (-(a_ext.T @ resid.astype(ext))).astype(float)
        h = (vt @ g) / s
        uf = u.T @ f
        coef = coef + vt.T @ ((uf - h) / s)
        resid = resid + u @ (h - uf) + f
    return coef / d, factor
