"""Profile-likelihood confidence intervals: refit with one parameter held at trial values
until chi-square rises by the level's threshold."""

from __future__ import annotations

import math

from ..errors import FitError
from .problem import LeastSquaresProblem, chi_square
from .solve import solve

__all__ = ['profile_interval', 'profile_intervals']


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


def profile_intervals(problem: LeastSquaresProblem, values: dict, stderr: dict, stats: dict, level: float,
                      absolute_sigma: bool, names) -> dict:
    """Profile-likelihood intervals for ``names`` (see FitResult.ci)."""
    from statistics import NormalDist

    from ..models.parameters import ParameterSpace

    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    scale = 1.0 if absolute_sigma else stats["redchi"]
    delta = z * z * scale
    space = problem.space

    def refit(name, v):
        start = dict(values)
        start[name] = v
        bounds = {n: (space.lower[n], space.upper[n]) for n in space.names
                  if n != name and (math.isfinite(space.lower[n]) or math.isfinite(space.upper[n]))}
        sub_space = ParameterSpace(space.names, start, bounds=bounds, fixed=[*space.fixed, name],
                                   tie={t.name: t.text for t in space.ties})
        sub = LeastSquaresProblem(problem.model, sub_space, *problem.numpy())
        method = "linear" if sub.is_linear() and not sub_space.has_bounds else "lm"
        out = solve(sub, method)
        return chi_square(sub, out.values)

    return {n: profile_interval(refit, n, values[n], stderr[n], stats["chisqr"], delta) for n in names}
