"""Likelihood estimators for counts: the Poisson deviance, its Fisher information, and the
information criteria of a likelihood fit. Pure kernels in numpy (one fit, float64) and torch
(a batch of fits, any dtype), shared by :func:`gradfit.fit` and :func:`gradfit.fit_many`.

For counts y_i with model means mu_i > 0 and frequency weights w_i (1 unless given), the
Poisson negative log-likelihood, up to terms free of the parameters, is half the deviance

    D = 2 * sum_i w_i * (y_i * log(y_i / mu_i) - (y_i - mu_i))     (y log y = 0 at y = 0),

which is zero for a perfect fit and about chi-square distributed with n - k degrees of
freedom for a correct model (McCullagh & Nelder, *Generalized Linear Models*, 2nd ed., 1989,
§2.3, §6.2). Gpufit's MLE estimator minimizes the same quantity (Przybylski et al., PLoS ONE
12(10), 2017; Laurence & Chromy, Nature Methods 7, 2010).

Its gradient is sum_i w_i (1 - y_i/mu_i) d mu_i/d theta, and its expected Hessian (the
Fisher information, times 2) is J^T diag(w/mu) J with J the Jacobian of the means. So
Fisher scoring is a weighted least-squares step with the weights w/mu and the residuals
mu - y: :func:`fisher_weights`. For a residual-vector solver the same problem is written
with the signed *deviance residuals* d_i = sign(mu_i - y_i) sqrt(w_i dev_i), whose sum of
squares is D and whose Jacobian (:func:`deviance_residuals`) gives the exact gradient; near
the optimum its Gauss-Newton matrix is the Fisher information to leading order.

A mean mu_i <= 0 at a used point (weight > 0) has no likelihood: the deviance is +inf there,
so a solver rejects such a trial step; a start there is refused with the point named.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LIKELIHOODS", "aic_bic", "deviance_residuals", "fisher_weights", "poisson_deviance",
           "poisson_deviance_terms", "poisson_log_likelihood", "batch_poisson_deviance", "batch_poisson_statistics",
           "batch_poisson_fit_statistics"]

#: the likelihood estimators by name (``loss=`` of gf.fit and gf.fit_many)
LIKELIHOODS = ("poisson",)


# -- one fit, float64 numpy -------------------------------------------------------------------
def poisson_deviance_terms(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Per point 2 * (y log(y/mu) - (y - mu)) >= 0, +inf where mu <= 0 (or is not finite).

    Written as 2 y (t - log1p(t)) with t = (mu - y)/y for y > 0, which keeps its relative
    accuracy where mu is close to y; 2 mu for y = 0."""
    y = np.asarray(y, dtype=float)
    mu = np.asarray(mu, dtype=float)
    with np.errstate(all="ignore"):
        pos = y > 0
        t = np.where(pos, (mu - y) / np.where(pos, y, 1.0), 0.0)
        terms = np.where(pos, 2.0 * y * (t - np.log1p(t)), 2.0 * mu)
    bad = ~(mu > 0) | ~np.isfinite(mu)
    return np.where(bad, np.inf, np.maximum(terms, 0.0))


def poisson_deviance(y: np.ndarray, mu: np.ndarray, w: np.ndarray | None = None) -> float:
    """The deviance D = sum w * terms (points with weight 0 ignored; +inf if a used mean is
    not positive)."""
    terms = poisson_deviance_terms(y, mu)
    if w is None:
        return float(terms.sum())
    used = w > 0
    return float((w[used] * terms[used]).sum())


def deviance_residuals(y: np.ndarray, mu: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(d, factor): signed deviance residuals d (n,) with sum(d^2) = D, and the factor (n,)
    with d d_i / d theta = factor_i * d mu_i / d theta.

    factor = sqrt(w) |1 - y/mu| / sqrt(dev_i); where dev_i vanishes (mu = y) its limit
    sqrt(w / mu) is used (dev_i ~ (mu - y)^2 / mu there). Not finite where mu <= 0."""
    y = np.asarray(y, dtype=float)
    mu = np.asarray(mu, dtype=float)
    terms = poisson_deviance_terms(y, mu)
    sw = 1.0 if w is None else np.sqrt(w)
    with np.errstate(all="ignore"):
        root = np.sqrt(terms)
        d = np.sign(mu - y) * root * sw
        # below ~1e-8 relative the deviance term is pure rounding: use the analytic limit
        small = terms <= 1e-16 * np.maximum(np.abs(y), 1.0)
        factor = np.where(small, sw / np.sqrt(mu), sw * np.abs(1.0 - y / mu) / np.where(small, 1.0, root))
    bad = ~np.isfinite(terms)
    return np.where(bad, np.nan, d), np.where(bad, np.nan, factor)


def fisher_weights(mu: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """w / mu (n,): the weights of the Fisher-scoring least-squares step, whose normal matrix
    J^T diag(w/mu) J is the Fisher information of the Poisson likelihood (its inverse is the
    Cramer-Rao covariance). NaN where mu <= 0."""
    mu = np.asarray(mu, dtype=float)
    with np.errstate(all="ignore"):
        out = (1.0 if w is None else w) / mu
    return np.where(mu > 0, out, np.nan)


def poisson_log_likelihood(y: np.ndarray, mu: np.ndarray, w: np.ndarray | None = None) -> float:
    """sum w * (y log mu - mu - log(y!)) (log(y!) as lgamma(y + 1), so non-integer counts
    work); -inf where a used mean is not positive."""
    y = np.asarray(y, dtype=float)
    mu = np.asarray(mu, dtype=float)
    ww = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    used = ww > 0
    y, mu, ww = y[used], mu[used], ww[used]
    if not np.all(mu > 0) or not np.all(np.isfinite(mu)):
        return -math.inf
    import torch

    log_fact = torch.lgamma(torch.as_tensor(y + 1.0, dtype=torch.float64)).numpy()
    with np.errstate(all="ignore"):
        ylogmu = np.where(y > 0, y * np.log(mu), 0.0)
    return float((ww * (ylogmu - mu - log_fact)).sum())


def aic_bic(log_likelihood, n_params: int, n) -> tuple:
    """(AIC, BIC) = (2k - 2 logL, k ln n - 2 logL) (Akaike 1974; Schwarz 1978), scalars or
    arrays (n: points used)."""
    aic = 2.0 * n_params - 2.0 * np.asarray(log_likelihood, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        bic = np.log(np.asarray(n, dtype=float)) * n_params - 2.0 * np.asarray(log_likelihood, dtype=float)
    if np.ndim(aic) == 0:
        return float(aic), float(bic)
    return aic, bic


# -- a batch of fits, torch ---------------------------------------------------------------------
def batch_poisson_deviance(y, mu, w, *, unit_weights: bool = False):
    """(deviance (B,), fisher weights (B, M)) for counts y, means mu and weights w (B, M),
    torch tensors of one dtype. A fit with a used point (w > 0) whose mean is not positive (or
    not finite) gets deviance +inf; its Fisher weights are 0 there. Points with w = 0 add
    nothing, whatever their mean.

    Written for the batched LM's inner loop (about a dozen passes over (B, M)): the term
    r - y log1p(r / y) with r = mu - y, which is y (t - log1p t) for t = r / y (the form of
    :func:`poisson_deviance_terms`, with the same rounding) and mu itself at y = 0 (where 1
    stands for y in the quotient); a used mean <= 0 or NaN is caught by one comparison, and a
    term that is not finite makes the deviance +inf as well."""
    import torch

    r = mu - y
    terms = r - y * torch.log1p(r / torch.where(y > 0, y, 1.0))
    ok = mu > 0  # False for NaN
    if unit_weights:
        infeasible = ~ok.all(-1)
        total = terms.sum(-1)
        fw = torch.where(ok, mu.reciprocal(), 0.0)
    else:
        used = w > 0
        infeasible = (used & ~ok).any(-1)
        total = torch.where(used, w * terms, 0.0).sum(-1)
        fw = torch.where(used & ok, w / mu, 0.0)
    dev = 2.0 * total
    dev = torch.where(infeasible | torch.isnan(dev), torch.full_like(dev, float("inf")), dev)
    return dev, fw


def batch_poisson_statistics(y, mu, w) -> dict:
    """Float64 statistics of B Poisson fits from counts y, means mu and weights w (B, M), torch
    tensors: (B,) numpy arrays deviance, pearson (sum w (y - mu)^2 / mu, Pearson's chi-square)
    and loglike (sum w (y log mu - mu - lgamma(y + 1))). Points with w = 0 add nothing; a fit
    with a used mean that is not positive or not finite gets NaN."""
    import torch

    used = w > 0
    ok = ~(used & ~((mu > 0) & torch.isfinite(mu))).any(-1)
    ww = torch.where(used, w, 0.0)
    y = torch.where(used, y, 0.0)
    mu = torch.where(used & (mu > 0) & torch.isfinite(mu), mu, 1.0)
    r = mu - y
    deviance = 2.0 * (ww * (r - y * torch.log1p(r / torch.where(y > 0, y, 1.0)))).sum(-1)
    pearson = (ww * r * r / mu).sum(-1)
    loglike = (ww * (torch.xlogy(y, mu) - mu - torch.lgamma(y + 1.0))).sum(-1)
    return {k: torch.where(ok, v, float("nan")).cpu().numpy()
            for k, v in (("deviance", deviance), ("pearson", pearson), ("loglike", loglike))}


def batch_poisson_fit_statistics(deviance, pearson, loglike, n, n_params: int) -> dict:
    """BatchResult.stats of Poisson fits ((B,) arrays): n, dof, deviance, loglike, aic and bic
    (2k - 2 logL, k ln n - 2 logL), chisqr (Pearson's) and redchi = chisqr / dof (NaN where
    dof < 1 or the fit has no likelihood)."""
    n = np.asarray(n).astype(np.int64)
    dof = n - int(n_params)
    loglike = np.asarray(loglike, dtype=float)
    pearson = np.asarray(pearson, dtype=float)
    aic, bic = aic_bic(loglike, int(n_params), np.maximum(n, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        redchi = np.where(dof > 0, pearson / dof, np.nan)
    return {"n": n, "dof": dof, "chisqr": pearson, "redchi": redchi, "aic": np.asarray(aic, dtype=float),
            "bic": np.asarray(bic, dtype=float), "deviance": np.asarray(deviance, dtype=float), "loglike": loglike}
