"""Quantiles and Wald intervals for :meth:`FitResult.ci`, and the conventions reports state.

With the noise scale estimated from the residuals (the default), a parameter's
``(estimate - true) / stderr`` follows Student's t with ``dof = n - n_free`` degrees of freedom
for a linear model with Gaussian noise (and approximately for a nonlinear one), so the interval
is ``value +/- t_{dof}(0.5 + level/2) * stderr``, as statsmodels' ``conf_int`` gives for OLS and
NLS. With ``absolute_sigma=True`` the scale is known and the quantile is the normal z; so it is
for a Poisson likelihood fit (its Cramer-Rao covariance is absolute).

t quantiles (:func:`gradfit.stats.t_quantile`) come from ``scipy.stats.t.ppf`` when scipy is installed, otherwise from mpmath
(installed with sympy) by Newton's method on the regularized incomplete beta function at 40
significant digits, rounded to float64.
"""

from __future__ import annotations

import math

from ..stats import t_quantile, z_quantile

__all__ = ["t_quantile", "z_quantile", "wald_interval", "CI_CONVENTION", "IC_CONVENTION", "LIKELIHOOD_CI_CONVENTION",
           "LIKELIHOOD_IC_CONVENTION"]

#: how the report states the information criteria of :func:`gradfit.stats.fit_statistics`
#: (chi2 is the weighted sum of squared residuals, the RSS without weights)
IC_CONVENTION = "AIC = n ln(chi2/n) + 2k, BIC = n ln(chi2/n) + k ln(n), k = {k} free parameters (lmfit's convention)"
#: how the report states the standard errors and ci(method="normal"), by absolute_sigma
CI_CONVENTION = {
    False: "stderr = sqrt(diag(s^2 (J^T W J)^-1)), s^2 = reduced chi-square; ci(): value +/- t(dof={dof}) * stderr",
    True: "stderr = sqrt(diag((J^T W J)^-1)) (absolute sigma); ci(): value +/- z * stderr",
}


#: the same for a Poisson (likelihood) fit: its covariance is the inverse Fisher information,
#: absolute like a known sigma, so its intervals use z (FitResult.absolute_sigma is True)
LIKELIHOOD_IC_CONVENTION = ("AIC = 2k - 2 ln L, BIC = k ln(n) - 2 ln L, L the Poisson likelihood, k = {k} free "
                            "parameters; reduced chi-square = Pearson chi-square / dof")
LIKELIHOOD_CI_CONVENTION = ("stderr = sqrt(diag(I^-1)), I = J^T diag(w/mu) J the Fisher information (Cramer-Rao "
                            "bound, not rescaled); ci(): value +/- z * stderr")


def wald_interval(value: float, stderr: float, level: float, dof, absolute_sigma: bool) -> tuple[float, float]:
    """``value +/- q * stderr`` with q the two-sided quantile for ``level``: Student t with
    ``dof`` degrees of freedom, or the normal z when ``absolute_sigma`` (known scale)."""
    p = 0.5 + level / 2.0
    q = z_quantile(p) if absolute_sigma else t_quantile(p, math.nan if dof is None else dof)
    return value - q * stderr, value + q * stderr
