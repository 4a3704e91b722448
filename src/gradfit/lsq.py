"""Least-squares fits: the residual problem, its solvers (direct linear, Levenberg-Marquardt),
and the uncertainties at the solution.

A :class:`LeastSquaresProblem` holds a scalar-parameter model, its :class:`ParameterSpace`
and the (training) data. Residuals are weighted, ``sqrt(w) * (f - y)`` with ``w = 1/sigma^2``
or the user's weights, so chi-square is ``sum(r^2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import FitError

__all__ = ["LeastSquaresProblem", "LSQOutcome", "Uncertainty", "solve", "uncertainty", "linear_reason",
           "profile_interval", "profile_intervals"]


@dataclass
class LSQOutcome:
    values: dict  # every parameter, float
    status: str  # converged | max_iterations | stalled
    message: str
    iterations: int
    history: list = field(default_factory=list)  # mean loss (chi2 / sum w) per iteration
    strategy: str = ""


@dataclass
class Uncertainty:
    stderr: dict
    covariance: np.ndarray  # over the free parameters, in their order
    correlation: np.ndarray
    free: tuple
    stats: dict
    degenerate: tuple  # tuples of parameter names the data cannot separate


class LeastSquaresProblem:
    def __init__(self, model, space, inputs: dict, y, weights=None):
        self.model, self.space = model, space
        self.inputs, self.y, self.weights = inputs, y, weights
        self.sqrt_w = None if weights is None else weights.sqrt()
        self.n = y.shape[0]

    # -- residuals ------------------------------------------------------------------------
    def predict(self, params: dict):
        return self.model.forward(self.inputs, params)

    def residual(self, u):
        """Weighted residuals as a function of the free parameters in internal coordinates."""
        r = self.predict(self.space.as_dict(u)) - self.y
        return r if self.sqrt_w is None else r * self.sqrt_w

    def residual_of_free_values(self, v):
        """Weighted residuals as a function of the free parameters' values (no transforms)."""
        r = self.predict(self.space.as_dict(v, internal=False)) - self.y
        return r if self.sqrt_w is None else r * self.sqrt_w

    def mean_loss(self, cost: float) -> float:
        """0.5*||r||^2 -> the weighted mean squared error the rest of gradfit reports."""
        total = float(self.sqrt_w.square().sum()) if self.sqrt_w is not None else float(self.n)
        return 2.0 * cost / total

    def is_linear(self) -> bool:
        return linear_reason(self.model, self.space) is None


def linear_reason(model, space) -> str | None:
    """None when the model can be solved directly as linear least squares, else why not."""
    if getattr(model, "expression", None) is None:
        return "the model is not a formula"
    if space.ties:
        return "tied parameters"
    if not model.linear_in_params:
        return "the model is nonlinear in its parameters"
    return None


def solve(problem: LeastSquaresProblem, method: str, *, max_iter: int = 2000, tol: float | None = None,
          callback=None) -> LSQOutcome:
    """Solve by "linear" (direct) or "lm"; returns parameter values and an honest status."""
    if method == "linear":
        return _solve_linear(problem)
    return _solve_lm(problem, max_iter=max_iter, tol=tol, callback=callback)


def _solve_linear(problem: LeastSquaresProblem) -> LSQOutcome:
    import torch

    from .optim.linear import solve_linear_least_squares

    space, model = problem.space, problem.model
    zeros = {n: torch.zeros((), dtype=torch.float64) for n in space.names}
    for n in space.fixed:
        zeros[n] = torch.tensor(space.values[n], dtype=torch.float64)
    inputs = {k: v.to(torch.float64) for k, v in problem.inputs.items()}
    with torch.no_grad():
        partials = model.partials(inputs, zeros)
        offset = model.forward(inputs, {n: (zeros[n] if n in space.fixed else torch.zeros((), dtype=torch.float64))
                                        for n in space.names})
    # fixed parameters stay in the offset; the free ones are the unknowns
    index = {n: i for i, n in enumerate(space.names)}
    design = torch.stack([partials[index[n]] for n in space.free], dim=1).numpy()
    target = (problem.y.to(torch.float64) - offset).numpy()
    w = None if problem.weights is None else problem.weights.to(torch.float64).numpy()
    coef = solve_linear_least_squares(design, target, w)
    values = dict(space.values)
    values.update(zip(space.free, (float(c) for c in coef)))
    outcome = LSQOutcome(values, "converged", "solved directly (linear least squares)", 1, strategy="QR")
    cost = _cost_at(problem, values)
    outcome.history = [problem.mean_loss(cost)]
    return outcome


def _cost_at(problem, values: dict) -> float:
    import torch

    v = torch.tensor([values[n] for n in problem.space.free], dtype=problem.y.dtype, device=problem.y.device)
    with torch.no_grad():
        r = problem.residual_of_free_values(v)
    return 0.5 * float(r @ r)


def _solve_lm(problem: LeastSquaresProblem, *, max_iter: int, tol: float | None, callback) -> LSQOutcome:
    import torch

    from .optim.lm import LMOptions, robust_levenberg_marquardt

    dtype, device = problem.y.dtype, problem.y.device
    u0 = problem.space.internal_start(dtype, device)
    y_norm = float(torch.linalg.vector_norm(problem.y if problem.sqrt_w is None else problem.y * problem.sqrt_w))
    floor = 1e4 * torch.finfo(dtype).eps * y_norm
    options = LMOptions(max_iter=max_iter, residual_floor=floor,
                        **({"ftol": tol, "xtol": tol} if tol is not None else {}))
    if dtype == torch.float32:
        options = LMOptions(max_iter=max_iter, residual_floor=floor, stationary=1e-3,
                            **({"ftol": tol, "xtol": tol} if tol is not None else {}))
    lm_cb = None
    if callback is not None:
        def lm_cb(it, cost):
            callback(it, problem.mean_loss(cost))
    out, strategy = robust_levenberg_marquardt(problem.residual, u0, options=options, callback=lm_cb)
    with torch.no_grad():
        full = problem.space.full(out.x)
    values = dict(zip(problem.space.names, full.double().tolist()))
    return LSQOutcome(values, out.status, out.message, out.iterations,
                      [problem.mean_loss(c) for c in out.history], strategy)


def uncertainty(problem: LeastSquaresProblem, values: dict, *, absolute_sigma: bool = False) -> Uncertainty:
    """Covariance, standard errors, correlations and fit statistics at ``values``."""
    import torch
    from torch.func import jacfwd

    from .stats import covariance, fit_statistics

    space = problem.space
    v = torch.tensor([values[n] for n in space.free], dtype=torch.float64)
    inputs64 = {k: t.to(torch.float64) for k, t in problem.inputs.items()}
    y64 = problem.y.to(torch.float64)
    sqrt_w = None if problem.sqrt_w is None else problem.sqrt_w.to(torch.float64)
    sub = LeastSquaresProblem(problem.model, space, inputs64, y64, None if sqrt_w is None else sqrt_w.square())
    with torch.no_grad():
        pred = sub.predict(space.as_dict(v, internal=False))
    jac = jacfwd(sub.residual_of_free_values)(v).detach().cpu().numpy()
    resid = (pred - y64).detach().cpu().numpy()
    w = None if sqrt_w is None else sqrt_w.square().cpu().numpy()
    chi2 = _precise_chi2(problem, values, float(np.sum((w if w is not None else 1.0) * resid * resid)), y64, w)
    stats = fit_statistics(resid, y64.cpu().numpy(), w, len(space.free), chisqr=chi2)
    dof = stats["dof"]
    scale = 1.0 if absolute_sigma else (chi2 / dof if dof > 0 else math.nan)
    cov = covariance(jac, scale)
    stderr = {n: float(math.sqrt(cov.matrix[i, i])) if cov.matrix[i, i] >= 0 else math.nan
              for i, n in enumerate(space.free)}
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.diag(cov.matrix))
        corr = cov.matrix / np.outer(sd, sd)
    for n in space.fixed:
        stderr[n] = 0.0
    if space.ties:
        stderr.update(_tied_stderr(space, v, cov.matrix))
    degenerate = tuple(tuple(space.free[i] for i in group) for group in cov.degenerate)
    return Uncertainty({n: stderr[n] for n in space.names}, cov.matrix, corr, space.free, stats, degenerate)


def _precise_chi2(problem, values, chi2: float, y64, w) -> float:
    """Recompute chi-square in 40-digit arithmetic when float64 rounding dominates it
    (residuals within ~5 orders of magnitude of the data's rounding level)."""
    expr = getattr(problem.model, "expression", None)
    if expr is None or problem.n > 20_000:
        return chi2
    y2 = y64.detach().cpu().numpy() ** 2
    scale = float(np.sum(y2 if w is None else w * y2))
    if chi2 > 1e-20 * scale:
        return chi2
    from .formula.precise import residuals_mp

    inputs = {k: t.detach().cpu().double().numpy() for k, t in problem.inputs.items()}
    r = residuals_mp(expr, inputs, y64.cpu().numpy(), w, values)
    return float(r @ r)


def _tied_stderr(space, v, cov: np.ndarray) -> dict:
    """Propagate the free parameters' covariance to tied ones: var = g^T C g."""
    from torch.func import jacfwd

    jac = jacfwd(lambda z: space.full(z, internal=False))(v).detach().cpu().numpy()  # (P, F)
    out = {}
    for t in space.ties:
        g = jac[space.names.index(t.name)]
        var = float(g @ cov @ g)
        out[t.name] = math.sqrt(var) if var >= 0 else math.nan
    return out


def refine_residuals(problem: LeastSquaresProblem, values: dict, steps: int = 3) -> dict:
    """Gauss-Newton refinement with residuals in 40-digit arithmetic (mixed-precision
    iterative refinement). Only worth it when the residuals sit near float64 rounding."""
    import torch
    from torch.func import jacfwd

    from .formula.precise import residuals_mp

    expr = getattr(problem.model, "expression", None)
    if expr is None or problem.n > 20_000 or problem.space.has_bounds or problem.space.ties:
        return values
    space = problem.space
    inputs = {k: t.detach().cpu().double().numpy() for k, t in problem.inputs.items()}
    y = problem.y.detach().cpu().double().numpy()
    w = None if problem.weights is None else problem.weights.detach().cpu().double().numpy()
    current = dict(values)
    r = residuals_mp(expr, inputs, y, w, current)
    for _ in range(steps):
        v = torch.tensor([current[n] for n in space.free], dtype=torch.float64)
        jac = jacfwd(problem.residual_of_free_values)(v.to(problem.y.dtype)).to(torch.float64)
        step = torch.linalg.lstsq(jac, -torch.from_numpy(r).unsqueeze(1), driver="gelsd").solution.squeeze(1)
        trial = dict(current)
        trial.update(zip(space.free, (v + step).tolist()))
        r_new = residuals_mp(expr, inputs, y, w, trial)
        if float(r_new @ r_new) >= float(r @ r):
            break
        current, r = trial, r_new
    return current


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

    from .models.parameters import ParameterSpace

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
        sub = LeastSquaresProblem(problem.model, sub_space, problem.inputs, problem.y, problem.weights)
        method = "linear" if sub.is_linear() and not sub_space.has_bounds else "lm"
        out = solve(sub, method)
        return 2.0 * _cost_at(sub, out.values)

    return {n: profile_interval(refit, n, values[n], stderr[n], stats["chisqr"], delta) for n in names}
