"""Uncertainties at a least-squares solution: covariance, standard errors, correlations
(tied parameters by propagation) and goodness-of-fit statistics (stats.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..models.jacobian import free_jacobian
from ..stats import (RANK_TOL, covariance, covariance_from_gram, covariance_from_svd, fit_statistics, scaled_gram_eigh,
                     vanishing_columns)
from .chunked import reduced_jacobian, residual_sums, use_chunks
from .problem import LeastSquaresProblem, predict_numpy

__all__ = ['Uncertainty', 'uncertainty']


@dataclass
class Uncertainty:
    stderr: dict
    covariance: np.ndarray  # over the free parameters, in their order
    correlation: np.ndarray
    free: tuple
    stats: dict
    degenerate: tuple  # tuples of parameter names the data cannot separate


#: float64's machine epsilon (np.finfo is slow to ask on every fit)
_EPS64 = float(np.finfo(np.float64).eps)


def uncertainty(problem: LeastSquaresProblem, values: dict, *, absolute_sigma: bool = False,
                factor: tuple | None = None, residuals: np.ndarray | None = None,
                jacobian: np.ndarray | None = None, gram_eigh: tuple | None = None) -> Uncertainty:
    """Covariance, standard errors, correlations and fit statistics at ``values``.
    ``factor`` = (s, vt, d) from a linear solve saves refactorizing the Jacobian;
    ``jacobian``, the weighted Jacobian (n, F) at ``values`` (the solver's last), recomputing it;
    ``gram_eigh``, :func:`gradfit.stats.scaled_gram_eigh` of that Jacobian (the solver's
    end-point test made it), factorizing its Gram matrix again. Weights far from 1 (below
    1e-100 or above 1e100) are divided by their largest first and the results scaled back
    (:meth:`LeastSquaresProblem.well_scaled`; the solver's arrays are then not reused)."""
    scaled = problem.well_scaled()
    if scaled is not problem:
        top = float(problem.numpy()[2].max())
        return _scaled_back(uncertainty(scaled, values, absolute_sigma=absolute_sigma), top, absolute_sigma)
    space = problem.space
    inputs, y, w = problem.numpy()
    chunked = use_chunks(problem)  # data too long to hold its Jacobian: sums and J^T J in chunks
    if residuals is None and not chunked:
        with np.errstate(all="ignore"):  # a model not finite somewhere is handled below
            residuals = predict_numpy(problem.model, inputs, values) - y
    resid = residuals
    if resid is not None and w is None:  # (vdot raises no floating-point flags: no errstate)
        rss = wrss = float(np.vdot(resid, resid))
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is not finite: below
            if resid is None:
                rss, wrss = residual_sums(problem, values)
            else:
                rss = float(np.vdot(resid, resid))
                wrss = float(np.vdot(w, resid * resid))
    if not math.isfinite(rss) and (resid is None or not np.isfinite(resid).all()):
        return _undetermined(space, resid, y, w)
    data_squared = problem.data_squared()  # ||sqrt(w) y||^2
    chi2 = _precise_chi2(problem, values, wrss, data_squared)
    stats = fit_statistics(resid, y, w, len(space.free), chisqr=chi2, rss=rss)
    dof = stats["dof"]
    scale = 1.0 if absolute_sigma else (chi2 / dof if dof > 0 else math.nan)
    # (lists: P Python floats; vanishing_columns takes them as they are)
    free_values = [float(values[n]) for n in space.free]
    start = [float(space.values[n]) for n in space.free]
    data_norm = math.sqrt(data_squared)
    eps = _EPS64
    vanish = None
    if factor is not None:  # a linear solve: d holds the weighted design matrix's column norms
        vanish = vanishing_columns(factor[2], free_values, start, data_norm, eps)
    if factor is not None and factor[0].size and factor[0][-1] > RANK_TOL * factor[0][0] and not _any(vanish):
        cov = covariance_from_svd(*factor, scale)
    else:
        if jacobian is not None:
            jac = jacobian
        elif chunked:  # the reduced (F+1, F) Jacobian: the same J^T J, weights included
            with np.errstate(all="ignore"):
                jac = reduced_jacobian(problem, values)
        else:
            with np.errstate(all="ignore"):
                jac = _free_jacobian(problem, values)
            if w is not None:
                jac = jac * np.sqrt(w)[:, None]
        # derivatives not finite at the end point: undetermined (a Gram factorization proves them finite)
        if gram_eigh is None and not np.isfinite(jac).all():
            jac = np.where(np.isfinite(jac), jac, 0.0)
        # the one rank test of fit and fit_many (stats.end_point_checks): negligible columns
        # and the SVD of the column-scaled Jacobian (its Gram matrix when that proves full
        # rank by a wide margin, for long data)
        long = jac.shape[0] >= 4 * jac.shape[1]
        if not long:
            norms = np.sqrt(np.einsum("ij,ij->j", jac, jac))
        elif gram_eigh is None:
            gram = jac.T @ jac
            norms = np.sqrt(np.diagonal(gram))
        else:  # the solver's factorization of this very Jacobian's Gram matrix
            norms = gram_eigh[0]
        vanish = vanishing_columns(norms, free_values, start, data_norm, eps)
        cov = None
        if long and not _any(vanish):
            cov = covariance_from_gram(gram_eigh if gram_eigh is not None else scaled_gram_eigh(gram), scale)
        if cov is None:
            cov = covariance(jac, scale, vanishing=vanish)
    diag = cov.matrix.diagonal().tolist()
    sd = [math.sqrt(v) if v >= 0 else math.nan for v in diag]  # NaN for degenerate parameters
    stderr = dict(zip(space.free, sd))
    sd_arr = np.array(sd)
    if all(v > 0 for v in sd):
        corr = cov.matrix / sd_arr[:, None] / sd_arr
    else:
        corr = _safe_correlation(cov.matrix, sd_arr)
    for n in space.fixed:
        stderr[n] = 0.0
    if space.ties:
        stderr.update(_tied_stderr(space, values, cov.matrix))
    degenerate = tuple(tuple(space.free[i] for i in group) for group in cov.degenerate)
    return Uncertainty({n: stderr[n] for n in space.names}, cov.matrix, corr, space.free, stats, degenerate)


def _scaled_back(unc: Uncertainty, top: float, absolute_sigma: bool) -> Uncertainty:
    """``unc`` of a problem whose weights were divided by ``top``, for the weights themselves:
    chi-square (and its reduced form, AIC, BIC) times top; with absolute_sigma the covariance
    (J^T W J)^-1 over top and the standard errors over sqrt(top) (without it they are the
    same: the reduced chi-square scales the other way)."""
    stats = dict(unc.stats)
    if stats["chisqr"] > 0:  # n log(chi2 / n) moves by n log(top) (0 and NaN keep their -inf and NaN)
        shift = stats["n"] * math.log(top)
        stats.update(aic=stats["aic"] + shift, bic=stats["bic"] + shift)
    stats.update(chisqr=stats["chisqr"] * top, redchi=stats["redchi"] * top)
    if not absolute_sigma:
        return Uncertainty(unc.stderr, unc.covariance, unc.correlation, unc.free, stats, unc.degenerate)
    root = math.sqrt(top)
    stderr = {k: v / root for k, v in unc.stderr.items()}
    return Uncertainty(stderr, unc.covariance / top, unc.correlation, unc.free, stats, unc.degenerate)


def _undetermined(space, resid: np.ndarray, y: np.ndarray, w) -> Uncertainty:
    """Where the model is not finite nothing about the fit is determined: NaN errors,
    covariance and statistics (standard errors 0 for fixed parameters, as always)."""
    f = len(space.free)
    nan = np.full((f, f), math.nan)
    stats = fit_statistics(resid, y, w, f, chisqr=math.nan, rss=math.nan)
    stderr = {n: (0.0 if n in space.fixed else math.nan) for n in space.names}
    return Uncertainty(stderr, nan, nan.copy(), space.free, stats, ())


def _safe_correlation(cov: np.ndarray, sd: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.outer(sd, sd)


def _free_jacobian(problem: LeastSquaresProblem, values: dict) -> np.ndarray:
    """d prediction / d free parameter (values, not internal coordinates), float64, (n, F)."""
    space = problem.space
    z = np.array([values[n] for n in space.free], dtype=np.float64)
    return free_jacobian(problem.model, space, problem.numpy()[0], internal=False)(z)


def _any(flags: np.ndarray) -> bool:
    """Whether any of a few booleans is set (numpy's any() costs ~1 us through its wrappers)."""
    return True in flags.tolist()


def _precise_chi2(problem, values, chi2: float, data_squared: float) -> float:
    """Recompute chi-square in 40-digit arithmetic when float64 rounding dominates it
    (residuals within ~5 orders of magnitude of the data's rounding level ``data_squared``,
    the weighted sum of squares of y)."""
    expr = getattr(problem.model, "expression", None)
    if expr is None or problem.n > 20_000:
        return chi2
    if not chi2 <= 1e-20 * data_squared:  # NaN and inf too: nothing for extended precision to do
        return chi2
    from ..formula.precise import residuals_mp

    inputs, y, w = problem.numpy()
    r = residuals_mp(expr, inputs, y, w, values)
    precise = float(r @ r)
    return precise if math.isfinite(precise) else chi2


def _tied_stderr(space, values: dict, cov: np.ndarray) -> dict:
    """Propagate the free parameters' covariance to tied ones: var = g^T C g."""
    import torch
    from torch.func import jacfwd

    v = torch.tensor([values[n] for n in space.free], dtype=torch.float64)
    jac = jacfwd(lambda z: space.full(z, internal=False))(v).detach().cpu().numpy()  # (P, F)
    out = {}
    for t in space.ties:
        g = jac[space.names.index(t.name)]
        var = float(g @ cov @ g)
        out[t.name] = math.sqrt(var) if var >= 0 else math.nan
    return out
