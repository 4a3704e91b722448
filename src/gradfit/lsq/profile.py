"""Profile-likelihood confidence intervals: refit with one parameter held at trial values
until chi-square (a Poisson fit's deviance) rises by the level's threshold.

A result does not keep its training data, so :func:`rebuild_problem` makes the least-squares
problem again from the model, the fit's settings (bounds, fixed, ties, validation split)
and the data the caller passes; it checks that the data is the fit's own.
"""

from __future__ import annotations

import math

import numpy as np

from ..data.arrays import weights_from_sigma
from ..errors import ConfigError, DataError, FitError
from ..stats import t_quantile, z_quantile
from ..likelihood import LIKELIHOODS, poisson_deviance
from .likelihood import PoissonProblem
from .problem import LeastSquaresProblem, chi_square, predict_numpy
from .solve import solve

__all__ = ['profile_interval', 'profile_intervals', 'rebuild_problem']

#: relative difference in chi-square above which passed data is not the fit's data
_SAME_DATA_RTOL = 1e-6


def profile_interval(refit, name: str, value: float, stderr: float, chi2_min: float, delta: float,
                     max_steps: int = 60) -> tuple[float, float]:
    """Profile-likelihood interval: where chi2 minimised over the other parameters, with
    ``name`` held at v, rises by ``delta`` above ``chi2_min``. ``refit(name, v) -> chi2``."""
    if not (math.isfinite(stderr) and stderr > 0):
        raise FitError(f"no standard error for {name!r}; a profile interval needs one to start from")

    def excess(v):
        return refit(name, v) - chi2_min - delta

    bounds = []
    for sign in (-1.0, 1.0):
        inner, step = value, stderr
        outer = value + sign * step
        tries = 0
        while excess(outer) < 0:
            inner, step = outer, step * 2.0
            outer = value + sign * step
            tries += 1
            if tries > 30:
                raise FitError(f"profile of {name!r} does not reach the confidence level; the interval is unbounded")
        lo, hi = inner, outer
        for _ in range(max_steps):
            mid = 0.5 * (lo + hi)
            if excess(mid) < 0:
                lo = mid
            else:
                hi = mid
            if abs(hi - lo) <= 1e-10 * max(abs(value), stderr):
                break
        bounds.append(0.5 * (lo + hi))
    return bounds[0], bounds[1]


#: the smallest chi-square rise, relative to chi-square, a profile resolves
_RESOLVED_RISE = 1e-10


def profile_intervals(problem: LeastSquaresProblem, values: dict, stderr: dict, stats: dict, level: float,
                      absolute_sigma: bool, names, compile="auto") -> dict:
    """Profile-likelihood intervals for ``names`` (see FitResult.ci); ``compile`` as the fit's
    (its refits may run the native kernel)."""
    from ..models.parameters import ParameterSpace

    # the same quantile as the Wald interval, so the two agree exactly for a linear model:
    # z^2 with a known scale; t_dof^2 * redchi (lmfit's F(1, dof) test) with an estimated one
    p = 0.5 + level / 2.0
    q = z_quantile(p) if absolute_sigma else t_quantile(p, stats["dof"])
    scale = 1.0 if absolute_sigma else stats["redchi"]
    delta = q * q * scale
    floor = stats.get("deviance", stats["chisqr"])
    if not delta > _RESOLVED_RISE * abs(floor):
        # the refits' chi-square carries ~1e-14 of its size in rounding and stopping: a rise far
        # below that comes out as noise (too narrow an interval, or "unbounded")
        raise FitError(f"the profile's rise of {delta:.3g} in chi-square is below what float64 resolves at "
                       f"chi-square {floor:.3g}" + (f" (reduced chi-square {stats['redchi']:.3g}: the given sigma "
                       "understates the scatter; fit with absolute_sigma=False)" if absolute_sigma else "")
                       + "; use r.ci(level) (Wald) instead")
    space = problem.space
    # a Poisson fit profiles its deviance (-2 log-likelihood up to a constant): the likelihood
    # ratio interval, where the deviance rises by the chi-square(1) quantile z^2
    poisson = isinstance(problem, PoissonProblem)

    def refit(name, v):
        start = dict(values)
        start[name] = v
        bounds = {n: (space.lower[n], space.upper[n]) for n in space.names
                  if n != name and (math.isfinite(space.lower[n]) or math.isfinite(space.upper[n]))}
        sub_space = ParameterSpace(space.names, start, bounds=bounds, fixed=[*space.fixed, name],
                                   tie={t.name: t.text for t in space.ties})
        sub = type(problem)(problem.model, sub_space, *problem.numpy())
        method = "linear" if not poisson and sub.is_linear() and not sub_space.has_bounds else "lm"
        with np.errstate(all="ignore"):  # trial fits far out may overflow: their chi-square says so
            out = solve(sub, method, compile=compile)
        return _objective(sub, out.values)

    best = stats["deviance"] if poisson else stats["chisqr"]
    return {n: profile_interval(refit, n, values[n], stderr[n], best, delta) for n in names}


def _objective(problem: LeastSquaresProblem, values: dict) -> float:
    """What a profile holds: the deviance of a Poisson problem, else chi-square."""
    if isinstance(problem, PoissonProblem):
        inputs, y, w = problem.numpy()
        with np.errstate(all="ignore"):
            mu = predict_numpy(problem.model, inputs, values)
        return poisson_deviance(y, np.broadcast_to(mu, y.shape), w)
    return chi_square(problem, values)


def rebuild_problem(model, values: dict, settings: dict, stats: dict, *, x=None, y=None, data=None, sigma=None,
                    weights=None) -> LeastSquaresProblem:
    """The least-squares problem of a finished fit, from its model, parameter ``values``,
    ``settings`` (bounds, fixed, tie and weighted, and in ``settings["options"]`` the NaN
    policy and validation split) and statistics, and the data it was fitted to.

    Parameters
    ----------
    model : the fitted scalar-parameter model (bound to its inputs).
    values : {name: value} at the solution; the starting point of every refit.
    x, y, data, sigma, weights : the data as passed to :func:`gradfit.fit`; the validation
        split recorded in ``settings`` is drawn again, so pass all of it.

    Returns
    -------
    LeastSquaresProblem over the training points, in float64.

    Raises
    ------
    ConfigError
        No data was passed, or sigma/weights were passed for an unweighted fit or left out
        for a weighted one.
    DataError
        The data does not have the fit's inputs, its number of points, or its chi-square
        at ``values`` (it is not the data the fit was made with).
    """
    from ..data.arrays import prepare_arrays
    from ..data.split import train_val_indices
    from ..models.parameters import ParameterSpace
    from ..options import FitOptions

    if x is None and data is None:
        raise ConfigError("profile intervals refit the model, so they need the fit's data: pass it, e.g. "
                          "r.ci(0.95, method='profile', x=x, y=y) or data=df, with sigma= or weights= if the "
                          "fit had them")
    named = isinstance(sigma, str) or isinstance(weights, str)  # a column of data=, resolved there
    w = None if named else weights_from_sigma(weights, sigma)  # (the fit's own rules)
    if "weighted" in settings and bool(settings["weighted"]) != (named or w is not None):
        raise ConfigError("the fit was weighted: pass the same sigma= or weights=" if settings["weighted"] else
                          "the fit was not weighted: drop sigma= / weights=")
    options = FitOptions.from_dict(settings.get("options") or {})
    _, arrays = prepare_arrays(model, x, y, data=data, weights=weights if named else w,
                               sigma=sigma if named else None, nan_policy=options.nan_policy)
    missing = [n for n in model.input_names if n not in arrays.inputs]
    if missing:
        raise DataError(f"the data has no input {missing[0]!r}; the fit's inputs are {', '.join(model.input_names)}")
    if options.training.val_fraction:
        arrays = arrays.take(train_val_indices(arrays.n, options.training.val_fraction, options.training.seed)[0])
    space = ParameterSpace(model.param_names, values, bounds=settings.get("bounds"),
                           fixed=settings.get("fixed") or (), tie=settings.get("tie"))
    kind = PoissonProblem if settings.get("loss") in LIKELIHOODS else LeastSquaresProblem
    problem = kind(model, space, {n: arrays.inputs[n] for n in model.input_names}, arrays.y, arrays.weights)
    if arrays.n_used != stats["n"]:  # (points of weight 0 are not among the fit's points)
        raise DataError(f"the data has {arrays.n_used} training points but the fit used {stats['n']}; "
                        "pass the data the fit was made with")
    _check_same_data(problem, values, stats["deviance"] if kind is PoissonProblem else stats["chisqr"])
    return problem


def _check_same_data(problem: LeastSquaresProblem, values: dict, chisqr: float) -> None:
    here = _objective(problem, values)
    _, y, w = problem.numpy()
    # chi-square at rounding level (exact fits) is compared on the data's own scale
    scale = max(abs(chisqr), 1e-12 * float(y @ y if w is None else w @ (y * y)))
    if not abs(here - chisqr) <= _SAME_DATA_RTOL * scale:
        raise DataError(f"this data gives chi-square {here:.6g} at the fitted parameters, but the fit had "
                        f"{chisqr:.6g}; pass the data (and sigma/weights) the fit was made with")
