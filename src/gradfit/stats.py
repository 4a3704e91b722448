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
from typing import NamedTuple

import numpy as np

from .goodness_of_fit import batch_statistics, fit_statistics  # noqa: F401 (re-exported)
from .optim.trust_region import GRAM_COVARIANCE, RANGE_GRAM_COND, symmetric_eigh

__all__ = ["Covariance", "covariance", "covariance_from_svd", "fit_statistics", "batch_statistics",
           "rank_deficient", "batch_inverse_diagonal", "t_quantile", "z_quantile", "RANK_TOL", "VANISH_FACTOR",
           "STATIONARY", "RESIDUAL_FLOOR", "covariance_from_gram", "GRAM_COVARIANCE", "residual_floor", "vanishing_columns", "batch_range_cosine", "stationary_threshold", "batch_scaled_gradient", "EndPoint",
           "end_point_checks", "scaled_gram_eigh", "range_cosine_from_gram", "undetermined"]

#: singular values of the column-scaled Jacobian below RANK_TOL * largest count as zero (fit and fit_many)
RANK_TOL = 1e-10
#: a Jacobian column whose parameter, moved by its whole size, changes the (weighted) model by
#: less than VANISH_FACTOR * eps * ||sqrt(w) y|| is negligible: it counts as rank deficiency
#: (the scale-free SVD test cannot see a column that vanishes as a whole, e.g. k in
#: a*exp(-k*x) + c when a -> 0)
VANISH_FACTOR = 100.0
#: residuals with ||sqrt(w) r|| <= residual_floor(eps) * ||sqrt(w) y|| are at the working
#: precision's rounding level: such a point is stationary to within rounding, and a fit that
#: reaches it has converged (fit and fit_many): RESIDUAL_FLOOR float64 units, or 100 units of
#: a coarser working precision (float32), whichever is larger
RESIDUAL_FLOOR = 1e4
_EPS64 = float(np.finfo(np.float64).eps)


def residual_floor(eps: float) -> float:
    """The relative residual floor for working precision ``eps`` (see :data:`RESIDUAL_FLOOR`):
    2.2e-12 in float64, 1.2e-5 in float32."""
    return max(RESIDUAL_FLOOR * _EPS64, 100.0 * eps)
#: the residuals' cosine with the Jacobian's range (:func:`batch_range_cosine`) below which an end point is
#: stationary at the default tolerance: a Gauss-Newton step could remove at most STATIONARY**2 = 1e-6 of chi-square
#: (:func:`stationary_threshold`); loose enough for finite-difference Jacobians, tight enough for a long valley.
STATIONARY = 1e-3


class Covariance(NamedTuple):
    """A covariance matrix with its rank (a named tuple: made on every fit, where a frozen
    dataclass's constructor costs microseconds)."""

    matrix: np.ndarray  # (P, P); NaN rows/columns for parameters in a rank-deficient group
    rank: int
    #: groups of parameter indices that the data cannot separate (null-space directions)
    degenerate: tuple[tuple[int, ...], ...]


def covariance_from_svd(s: np.ndarray, vt: np.ndarray, d: np.ndarray, scale: float) -> Covariance:
    """``scale * (J^T J)^-1`` from the thin SVD ``J D^-1 = U S V^T`` (full rank)."""
    root = vt.T / (d[:, None] * s)  # D^-1 V S^-1, so (J^T J)^-1 = root @ root.T
    return Covariance((root @ root.T) * scale, len(s), ())


def scaled_gram_eigh(gram: np.ndarray) -> tuple | None:
    """(column norms D, ascending eigenvalues, eigenvectors) of ``D^-1 J^T J D^-1`` from ``gram`` = J^T J (None
    when not finite or a column is zero), for the end-point test and the covariance alike."""
    diag = gram.diagonal().tolist()  # finite and positive: so is every |G_ij| <= sqrt(G_ii G_jj)
    if not (diag and 0.0 < min(diag) and math.isfinite(sum(diag))):
        return None
    norms = np.sqrt(gram.diagonal())
    lam, vec = symmetric_eigh(gram / (norms[:, None] * norms))  # (LinAlgError if not finite after all)
    return norms, lam, vec


def covariance_from_gram(eig: tuple | None, scale: float) -> Covariance | None:
    """``scale * (J^T J)^-1`` from :func:`scaled_gram_eigh` of a Jacobian full rank by a wide
    margin (scaled eigenvalues above :data:`GRAM_COVARIANCE` times the largest: the SVD test of
    :func:`covariance` would keep them all); None otherwise (use :func:`covariance`). ``eig`` may
    carry the unscaled inverse as a fourth element (the native single-fit kernel computes it where
    that test passes)."""
    if eig is None:
        return None
    norms, lam, vec = eig[:3]
    if len(eig) == 4:  # the native kernel's (J^T J)^-1, made only where the test below passes
        return Covariance(eig[3] * scale, len(lam), ())
    if not lam[0] > GRAM_COVARIANCE * lam[-1]:
        return None
    root = vec / (norms[:, None] * np.sqrt(lam))  # D^-1 V L^-1/2, so (J^T J)^-1 = root @ root.T
    return Covariance((root @ root.T) * scale, len(lam), ())


def vanishing_columns(col_norms: np.ndarray, values: np.ndarray, start: np.ndarray, data_norm, eps: float) -> np.ndarray:
    """Per parameter: is its (weighted) Jacobian column negligible? The column times the
    parameter's size (the largest of its value, its start and 1: a parameter near zero is
    moved by a unit) is compared with the data's rounding level
    ``VANISH_FACTOR * eps * ||sqrt(w) y||`` (``eps`` of the working precision); an all-zero
    column is always negligible. Arrays (..., P) (``data_norm`` (...,); one fit may pass
    ``values`` and ``start`` as lists); returns a bool
    array of the same shape. The one definition for fit and fit_many.

    >>> vanishing_columns(np.array([1e-42, 1.0]), np.array([1.0, 0.0]), np.array([1.0, 0.0]), 10.0, 2.2e-16).tolist()
    [True, False]
    """
    if getattr(col_norms, "ndim", None) == 1 and isinstance(data_norm, float):  # one fit: P Python floats are faster
        limit = VANISH_FACTOR * eps * float(data_norm)
        values, start = (a if type(a) is list else np.asarray(a).tolist() for a in (values, start))
        return np.array([c == 0 or c * max(abs(v), abs(s), 1.0) <= limit
                         for c, v, s in zip(col_norms.tolist(), values, start)], dtype=bool)
    size = np.maximum(np.maximum(np.abs(values), np.abs(start)), 1.0)
    limit = VANISH_FACTOR * eps * np.asarray(data_norm, dtype=float)[..., None]
    with np.errstate(invalid="ignore", over="ignore"):
        return (col_norms == 0) | (col_norms * size <= limit)


def undetermined(stderr, values, start, eps: float = _EPS64) -> np.ndarray:
    """Per parameter: is its standard error beyond 1 / sqrt(``eps``) (the working precision's;
    2^26 in float64) times its size (the largest of its value, its start and 1, as
    :func:`vanishing_columns`)? Moving it by its whole size then changes chi-square (or the
    deviance) by less than ``eps``: its value is not determined by the data, finite error or not
    (all-zero counts leave a rate that way: the amplitude sits at 0 to rounding, and the rate's
    Fisher information with it). For likelihood fits (Cramer-Rao errors, on the counts' absolute
    scale): a least-squares error scales with the data's units, and a parameter near 0 in large
    units would be flagged. Arrays (..., P); NaN is False (undetermined errors are ruled on
    elsewhere).

    >>> undetermined(np.array([4.2e11, 0.1]), np.array([0.486, 3.0]), np.array([0.5, 1.0])).tolist()
    [True, False]
    """
    size = np.maximum(np.maximum(np.abs(values), np.abs(start)), 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(stderr, dtype=float) > eps ** -0.5 * size


def stationary_threshold(tol: float | None) -> float:
    """The end-point stationarity threshold for a convergence tolerance ``tol`` on the
    relative cost change: a range cosine g leaves ~g**2 of the cost to gain, so sqrt(tol),
    and never below :data:`STATIONARY` (the default for ``tol=None``)."""
    return STATIONARY if tol is None else max(STATIONARY, math.sqrt(tol))


def batch_scaled_gradient(jac: np.ndarray, r: np.ndarray, held: np.ndarray | None = None) -> np.ndarray:
    """max_j |J_j . r| / (||J_j|| ||r||) per fit for (B, M, P) Jacobians and (B, M) residuals
    (as :func:`gradfit.optim.lm.scaled_gradient`); ``held`` (B, P) marks parameters resting
    on a bound with the gradient pointing out of the box (skipped: the projected gradient).
    0 where r = 0; NaN where anything is not finite."""
    g = np.einsum("bmp,bm->bp", jac, r)
    norms = np.sqrt(np.einsum("bmp,bmp->bp", jac, jac))
    rn = np.sqrt(np.einsum("bm,bm->b", r, r))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.abs(g) / (norms * rn[:, None])
    skip = norms == 0
    if held is not None:
        skip = skip | held
    cos = np.where(skip, 0.0, cos)
    out = cos.max(axis=1) if cos.shape[1] else np.zeros(len(cos))
    return np.where(rn == 0, 0.0, out)


def batch_range_cosine(jac: np.ndarray, r: np.ndarray, held: np.ndarray | None = None, *,
                       rank_tol: float = RANK_TOL) -> np.ndarray:
    """The cosine between the residuals and the range of the Jacobian, per fit: ||U^T r|| / ||r||
    with U the left singular vectors of the column-scaled Jacobian (B, M, P) whose singular
    values are above ``rank_tol`` times the largest. Its square is the fraction of chi-square
    a Gauss-Newton step would remove, so it is 0 at a stationary point and, unlike the
    largest column cosine (:func:`batch_scaled_gradient`, which it bounds from above), it
    sees a long valley in an ill-conditioned problem. Columns flagged in ``held`` (B, P) are
    left out (the projected gradient at a bound). 0 where r = 0; NaN where not finite."""
    jac = np.asarray(jac, dtype=float)
    if held is not None:
        jac = np.where(held[:, None, :], 0.0, jac)
    if len(jac) == 1:  # one fit (gf.fit's end point): 2-D BLAS calls, no batched einsum overhead
        return np.array([_range_cosine_one(jac[0], np.asarray(r[0], dtype=float), rank_tol)])
    rn = np.sqrt(np.einsum("bm,bm->b", r, r))
    out = np.zeros(len(jac))
    good = np.isfinite(jac).all(axis=(1, 2)) & np.isfinite(r).all(axis=1) & (rn > 0)
    out[~(np.isfinite(jac).all(axis=(1, 2)) & np.isfinite(r).all(axis=1))] = np.nan
    if good.any() and jac.shape[2]:
        idx = np.nonzero(good)[0]
        norms = np.sqrt(np.einsum("bmp,bmp->bp", jac[idx], jac[idx]))
        a = jac[idx] / np.where(norms > 0, norms, 1.0)[:, None, :]
        rg = r[idx]
        # well-conditioned fits (cond < 1e5, the bound optim/lm uses too) through the P x P Gram
        # matrix: ||U^T r||^2 = (a^T r)^T (a^T a)^-1 (a^T r), accurate to ~eps*cond of ||r||, far
        # below any stationarity threshold, and an M x P SVD cheaper; the rest by the SVD
        g = np.einsum("bmp,bm->bp", a, rg)
        gram = np.einsum("bmp,bmq->bpq", a, a)
        if held is not None:  # a held column is left out: the identity in its row and column (g is 0 there)
            gram = np.where(held[idx][:, :, None] | held[idx][:, None, :], np.eye(gram.shape[-1]), gram)
        lam, vec = np.linalg.eigh(gram)
        easy = lam[:, 0] > RANGE_GRAM_COND ** -2 * np.maximum(lam[:, -1], 1e-300)
        if easy.any():
            c = np.einsum("bpk,bp->bk", vec[easy], g[easy]) / np.sqrt(lam[easy])
            out[idx[easy]] = np.sqrt(np.einsum("bk,bk->b", c, c)) / rn[idx[easy]]
        hard = ~easy
        if hard.any():
            u, sv, _ = np.linalg.svd(a[hard], full_matrices=False)
            keep = sv > rank_tol * np.maximum(sv[:, :1], 1e-300)
            c = np.where(keep, np.einsum("bmk,bm->bk", u, rg[hard]), 0.0)
            out[idx[hard]] = np.sqrt(np.einsum("bk,bk->b", c, c)) / rn[idx[hard]]
    return out


def _range_cosine_one(jac: np.ndarray, r: np.ndarray, rank_tol: float) -> float:
    """:func:`batch_range_cosine` of one (M, P) Jacobian and (M,) residual."""
    if not (np.isfinite(jac).all() and np.isfinite(r).all()):
        return math.nan
    rn = math.sqrt(float(np.vdot(r, r)))  # (inf on overflow, without a warning)
    if rn == 0 or not jac.shape[1]:
        return 0.0
    norms = np.sqrt(np.einsum("mp,mp->p", jac, jac))
    a = jac / np.where(norms > 0, norms, 1.0)
    g = a.T @ r
    lam, vec = np.linalg.eigh(a.T @ a)
    if lam[0] > RANGE_GRAM_COND ** -2 * max(lam[-1], 1e-300):
        c = (vec.T @ g) / np.sqrt(lam)
    else:
        u, sv, _ = np.linalg.svd(a, full_matrices=False)
        c = np.where(sv > rank_tol * max(sv[0], 1e-300), u.T @ r, 0.0)
    return math.sqrt(float(c @ c)) / rn


def range_cosine_from_gram(eig: tuple | None, jtr: np.ndarray, r_norm: float) -> float | None:
    """:func:`batch_range_cosine` of one fit (no held columns) from :func:`scaled_gram_eigh` and J^T r,
    when the Gram matrix serves (cond < 1e5, as there); else None."""
    if eig is None or not r_norm > 0 or not math.isfinite(r_norm):
        return None
    norms, lam, vec = eig[:3]
    if not lam[0] > RANGE_GRAM_COND ** -2 * max(lam[-1], 1e-300):
        return None
    c = (vec.T @ (jtr / norms)) / np.sqrt(lam)
    return math.sqrt(float(c @ c)) / r_norm


@dataclass
class EndPoint:
    """The end-point checks of :func:`end_point_checks`, per fit (B,) or (B, P)."""

    deficient: np.ndarray  # rank-deficient, by the SVD test or a vanishing column
    vanishing: np.ndarray  # (B, P) negligible columns
    var_unit: np.ndarray  # (B, P) diag((J^T W J)^-1), NaN where deficient
    gradient: np.ndarray  # residual's cosine with the Jacobian's range (projected where ``held``)


def end_point_checks(jac: np.ndarray, r: np.ndarray, values: np.ndarray, start: np.ndarray, data_norm: np.ndarray,
                     *, eps: float, held: np.ndarray | None = None, rank_tol: float = RANK_TOL) -> EndPoint:
    """The one set of end-point tests of a least-squares fit (fit and fit_many alike), on
    weighted float64 Jacobians (B, M, P) and residuals (B, M) at the end points ``values``
    (B, P) reached from ``start`` (B, P); ``data_norm`` (B,) is ||sqrt(w) y||, ``eps`` the
    working precision's rounding unit.

    Rank deficiency: a negligible column (:func:`vanishing_columns`), or a singular value of
    the column-scaled Jacobian below ``rank_tol`` times the largest (as :func:`covariance`).
    Fits whose float64 Gram matrix proves full rank by a wide margin skip the SVD.
    Stationarity: :func:`batch_range_cosine`, 0 where the residuals are at the rounding
    level (``||r|| <= residual_floor(eps) * data_norm``); compare it with
    :func:`stationary_threshold`.
    """
    jac = np.asarray(jac, dtype=float)
    r = np.asarray(r, dtype=float)
    b, _, p = jac.shape
    jt = jac.transpose(0, 2, 1)
    with np.errstate(all="ignore"):
        gram = np.matmul(jt, jac)  # J^T J (B, P, P): one BLAS pass over the data
        jtr = np.matmul(jt, r[:, :, None])[..., 0]  # J^T r (B, P)
    norms = np.sqrt(np.maximum(np.diagonal(gram, axis1=1, axis2=2), 0.0))
    vanish = vanishing_columns(norms, values, start, data_norm, eps)
    rn = np.sqrt(np.einsum("bm,bm->b", r, r))
    at_floor = rn <= residual_floor(eps) * np.asarray(data_norm, dtype=float)
    deficient = vanish.any(axis=1)
    var_unit = np.full((b, p), np.nan)
    gradient = np.full(b, np.nan)
    sure = np.zeros(b, dtype=bool)
    rows = np.nonzero(~deficient)[0]
    if rows.size and p:
        d = norms[rows]
        with np.errstate(all="ignore"):
            m = gram[rows] / (d[:, :, None] * d[:, None, :])  # the column-scaled Gram matrix
            finite = np.isfinite(m).all(axis=(1, 2))
            eig = np.linalg.eigvalsh(np.where(finite[:, None, None], m, 0.0))
        # the Gram matrix is accurate to ~eps64 * its largest eigenvalue: far above that, its
        # eigenvalues (the squared singular values) settle the rank test without an SVD
        floor = max(rank_tol**2, 1e3 * float(np.finfo(np.float64).eps))
        ok = finite & (eig[:, 0] > floor * eig[:, -1])
        if ok.any():
            inv = np.linalg.inv(m[ok])
            good = rows[ok]
            var_unit[good] = np.diagonal(inv, axis1=1, axis2=2) / d[ok] ** 2
            free_rows = np.ones(len(good), dtype=bool) if held is None else ~held[good].any(axis=1)
            # ||U^T r||^2 = (A^T r)^T (A^T A)^-1 (A^T r) with A = J D^-1, from the same inverse
            gs = jtr[good] / d[ok]
            with np.errstate(all="ignore"):
                quad = np.sqrt(np.maximum(np.einsum("bi,bij,bj->b", gs, inv, gs), 0.0)) / rn[good]
            gradient[good[free_rows]] = quad[free_rows]
            sure[good[free_rows]] = True
        rest = rows[~ok]
        if rest.size:
            jz = np.where(vanish[rest][:, None, :], 0.0, jac[rest])
            bad, diag = batch_inverse_diagonal(np.where(np.isfinite(jz), jz, 0.0), rank_tol=rank_tol)
            deficient[rest] = bad
            var_unit[rest] = diag
    todo = np.nonzero(~sure)[0]
    if todo.size:
        jz = np.where(vanish[todo][:, None, :], 0.0, jac[todo])
        gradient[todo] = batch_range_cosine(jz, r[todo], None if held is None else held[todo], rank_tol=rank_tol)
    gradient = np.where(at_floor | (rn == 0), 0.0, gradient)
    return EndPoint(deficient, vanish, var_unit, gradient)


def covariance(jac: np.ndarray, scale: float, *, rank_tol: float = RANK_TOL,
               vanishing: np.ndarray | None = None) -> Covariance:
    """``scale * (J^T J)^-1`` via the SVD of the column-scaled Jacobian; columns flagged in
    ``vanishing`` (see :func:`vanishing_columns`) count as zero.

    >>> J = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    >>> np.round(covariance(J, 1.0).matrix, 6)
    array([[ 0.833333, -0.5     ],
           [-0.5     ,  0.5     ]])
    """
    jac = np.asarray(jac, dtype=float)
    if vanishing is not None and np.any(vanishing):  # negligible columns: rank deficiency
        jac = np.where(vanishing[None, :], 0.0, jac)
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
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        root = vt / (s[..., :, None] * d[..., None, :])  # rows: S^-1 V^T D^-1
        diag = (root**2).sum(axis=-2)
    return deficient, np.where(deficient[:, None], np.nan, diag)


def z_quantile(p: float) -> float:
    """The standard normal quantile at probability ``p`` (0 < p < 1).

    >>> round(z_quantile(0.975), 6)
    1.959964
    """
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def t_quantile(p: float, dof: float) -> float:
    """Student t quantile at probability ``p`` (0 < p < 1) for ``dof`` > 0 degrees of freedom
    (NaN for dof <= 0 or NaN; ``z_quantile(p)`` for dof = inf).

    Raises
    ------
    ValueError
        p outside (0, 1).

    Examples
    --------
    >>> round(t_quantile(0.975, 1), 6), round(t_quantile(0.975, 10), 6)
    (12.706205, 2.228139)
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be between 0 and 1, got {p}")
    dof = float(dof)
    if math.isnan(dof) or dof <= 0:
        return math.nan
    if math.isinf(dof):
        return z_quantile(p)
    try:
        from scipy.stats import t as student_t
    except ImportError:
        return _t_quantile_mpmath(p, dof)
    return float(student_t.ppf(p, dof))


def _t_quantile_mpmath(p: float, dof: float) -> float:
    """t quantile by Newton's method on the exact CDF, at 40 digits (the fallback without scipy)."""
    import mpmath

    if p == 0.5:
        return 0.0
    with mpmath.workdps(40):
        q = mpmath.mpf(min(p, 1.0 - p))  # the lower tail: t < 0
        nu = mpmath.mpf(dof)
        half = mpmath.mpf(1) / 2

        def lower_tail(t):  # P(T <= t) for t < 0
            return half * mpmath.betainc(nu / 2, half, 0, nu / (nu + t * t), regularized=True)

        def density(t):
            return mpmath.exp(mpmath.loggamma((nu + 1) / 2) - mpmath.loggamma(nu / 2)
                              - (nu + 1) / 2 * mpmath.log1p(t * t / nu)) / mpmath.sqrt(nu * mpmath.pi)

        # bracket the root in [lo, 0], then Newton steps kept inside the bracket (bisection otherwise)
        lo, hi = mpmath.mpf(-1), mpmath.mpf(0)
        while lower_tail(lo) > q:
            lo *= 2
        t = (lo + hi) / 2
        for _ in range(200):
            f = lower_tail(t) - q
            if f > 0:
                hi = t
            else:
                lo = t
            step = f / density(t)
            new = t - step
            if not lo < new < hi:
                new = (lo + hi) / 2
            if abs(new - t) <= mpmath.mpf(10) ** -35 * max(1, abs(new)):
                t = new
                break
            t = new
        value = float(t)
    return value if p < 0.5 else -value
