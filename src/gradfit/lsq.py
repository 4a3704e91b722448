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
from .optim.linear import solve_linear_least_squares
from .stats import RANK_TOL, covariance, covariance_from_svd, fit_statistics

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
    #: (s, vt, d): thin SVD of the scaled weighted design matrix, from a linear solve
    factor: tuple | None = None
    #: unweighted residuals (prediction - y) at the solution, when the solver has them
    residuals: np.ndarray | None = None


@dataclass
class Uncertainty:
    stderr: dict
    covariance: np.ndarray  # over the free parameters, in their order
    correlation: np.ndarray
    free: tuple
    stats: dict
    degenerate: tuple  # tuples of parameter names the data cannot separate


class LeastSquaresProblem:
    """A least-squares problem over float64 numpy data. Least squares always computes in
    float64 on the CPU (a single fit's dense algebra is small, and precision is the point);
    float64 CPU tensors, for models evaluated with torch, are made on first use."""

    def __init__(self, model, space, inputs: dict, y: np.ndarray, weights: np.ndarray | None = None):
        self.model, self.space = model, space
        self._numpy = (inputs, y, weights)
        self.n = len(y)
        self._tensors = None

    @classmethod
    def from_arrays(cls, model, space, arrays) -> "LeastSquaresProblem":
        return cls(model, space, arrays.inputs, arrays.y, arrays.weights)

    def numpy(self) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """(inputs, y, weights) as float64 numpy arrays."""
        return self._numpy

    def _tensor_data(self):
        if self._tensors is None:
            import torch

            inputs, y, w = self._numpy

            def t(a):
                return torch.as_tensor(a, dtype=torch.float64)

            self._tensors = ({k: t(v) for k, v in inputs.items()}, t(y), None if w is None else t(w))
        return self._tensors

    @property
    def inputs(self):
        return self._tensor_data()[0]

    @property
    def y(self):
        return self._tensor_data()[1]

    @property
    def weights(self):
        return self._tensor_data()[2]

    @property
    def numpy_ready(self) -> bool:
        """A formula model without ties: predictions and Jacobians can be done in numpy."""
        return getattr(self.model, "expression", None) is not None and not self.space.ties

    # -- residuals ------------------------------------------------------------------------
    def predict(self, params: dict):
        return self.model.forward(self.inputs, params)

    def residual(self, u):
        """Weighted residuals as a function of the free parameters in internal coordinates."""
        return self._weighted(self.predict(self.space.as_dict(u)) - self.y)

    def lm_functions(self):
        """(residual, jacobian) of the weighted residuals as float64 numpy functions of the free
        parameters' internal coordinates. Formula models are evaluated in numpy with their
        symbolic partials; other models (and tied parameters) in torch, with the Jacobian
        from torch.func.jacfwd."""
        space = self.space
        inputs, y, w = self._numpy
        sw = None if w is None else np.sqrt(w)
        if self.numpy_ready:
            model, free = self.model, space.free

            # No np.errstate here: callers run these under errstate(all="ignore") once (trial
            # steps may overflow; LM rejects them).
            def residual(u):
                r = model.forward_numpy(inputs, space.values_from_internal(u)) - y
                return r if sw is None else r * sw

            def jacobian(u):
                jac = model.jacobian_numpy(inputs, space.values_from_internal(u), free)
                if space.has_bounds:
                    jac = jac * np.asarray(space.internal_derivative_values(u))
                return jac if sw is None else jac * sw[:, None]

            return residual, jacobian
        import torch
        from torch.func import jacfwd

        def residual(u):
            with torch.no_grad():
                return self.residual(torch.as_tensor(u, dtype=self.y.dtype)).detach().cpu().numpy()

        jac_fn = jacfwd(self.residual)

        def jacobian(u):
            return jac_fn(torch.as_tensor(u, dtype=self.y.dtype)).detach().cpu().numpy()

        return residual, jacobian

    def _weighted(self, r):
        if self._numpy[2] is None:
            return r
        if getattr(self, "_sqrt_w", None) is None:
            self._sqrt_w = self.weights.sqrt()
        return r * self._sqrt_w

    def mean_loss(self, cost: float) -> float:
        """0.5*||r||^2 -> the weighted mean squared error the rest of gradfit reports."""
        w = self._numpy[2]
        return 2.0 * cost / (float(w.sum()) if w is not None else float(self.n))

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
    space, model = problem.space, problem.model
    inputs, y, w = problem.numpy()
    # The offset is the prediction with every free parameter at 0 (fixed ones at their value);
    # the design matrix holds the (constant) partial derivatives of the free parameters.
    at_zero = {n: (space.values[n] if n in space.fixed else 0.0) for n in space.names}
    design = model.jacobian_numpy(inputs, at_zero, space.free)
    offset = None if not space.fixed and model.vanishes_at_zero else model.forward_numpy(inputs, at_zero)
    coef, factor = solve_linear_least_squares(design, y if offset is None else y - offset, w)
    values = dict(space.values)
    values.update(zip(space.free, coef.tolist()))
    resid = design @ coef - y if offset is None else design @ coef + offset - y
    chi2 = float(resid @ resid if w is None else w @ (resid * resid))
    outcome = LSQOutcome(values, "converged", "solved directly (linear least squares)", 1, strategy="SVD",
                         factor=factor, residuals=resid)
    outcome.history = [chi2 / (float(np.sum(w)) if w is not None else problem.n)]
    return outcome


def chi_square(problem: LeastSquaresProblem, values: dict) -> float:
    """sum(w * (prediction - y)^2) at ``values``, in float64."""
    inputs, y, w = problem.numpy()
    r = _predict_numpy(problem.model, inputs, values) - y
    return float(r @ r if w is None else w @ (r * r))


def mean_squared_error(model, inputs: dict, y: np.ndarray, w: np.ndarray | None, values: dict) -> float:
    """Weighted mean squared error in float64 (numpy for formulas, torch otherwise)."""
    pred = _predict_numpy(model, inputs, values)
    r = pred - y
    return float(np.sum(r * r) / len(r) if w is None else np.sum(w * r * r) / np.sum(w))


def _predict_numpy(model, inputs: dict, values: dict) -> np.ndarray:
    if getattr(model, "expression", None) is not None:
        return model.forward_numpy(inputs, values)
    import torch

    t_in = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in inputs.items()}
    with torch.no_grad():
        return model.forward(t_in, {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}).numpy()


def _solve_lm(problem: LeastSquaresProblem, *, max_iter: int, tol: float | None, callback) -> LSQOutcome:
    from .optim.lm import LMOptions, robust_levenberg_marquardt

    _, y, w = problem.numpy()
    y_norm = float(np.linalg.norm(y if w is None else y * np.sqrt(w)))
    options = LMOptions(max_iter=max_iter, residual_floor=1e4 * np.finfo(np.float64).eps * y_norm,
                        **({"ftol": tol, "xtol": tol} if tol is not None else {}))
    lm_cb = None
    if callback is not None:
        def lm_cb(it, cost):
            return callback(it, problem.mean_loss(cost))
    residual, jacobian = problem.lm_functions()
    at_bound = problem.space.bound_mask if problem.space.has_bounds else None
    u0 = np.array(problem.space.internal_start_values(), dtype=np.float64)
    with np.errstate(all="ignore"):  # trial steps may overflow; LM rejects them
        out, strategy = robust_levenberg_marquardt(residual, u0, jacobian=jacobian, options=options,
                                                   callback=lm_cb, at_bound=at_bound)
    if problem.space.ties:
        import torch

        with torch.no_grad():
            full = problem.space.full(torch.as_tensor(out.x, dtype=torch.float64))
        values = dict(zip(problem.space.names, full.tolist()))
    else:
        values = problem.space.values_from_internal(out.x)
    return LSQOutcome(values, out.status, out.message, out.iterations,
                      [problem.mean_loss(c) for c in out.history], strategy)


def uncertainty(problem: LeastSquaresProblem, values: dict, *, absolute_sigma: bool = False,
                factor: tuple | None = None, residuals: np.ndarray | None = None) -> Uncertainty:
    """Covariance, standard errors, correlations and fit statistics at ``values``.
    ``factor`` = (s, vt, d) from a linear solve saves refactorizing the Jacobian."""
    space = problem.space
    inputs, y, w = problem.numpy()
    resid = residuals if residuals is not None else _predict_numpy(problem.model, inputs, values) - y
    rss = float(resid @ resid)
    chi2 = _precise_chi2(problem, values, rss if w is None else float(w @ (resid * resid)), y, w)
    stats = fit_statistics(resid, y, w, len(space.free), chisqr=chi2, rss=rss)
    dof = stats["dof"]
    scale = 1.0 if absolute_sigma else (chi2 / dof if dof > 0 else math.nan)
    if factor is not None and factor[0].size and factor[0][-1] > RANK_TOL * factor[0][0]:
        cov = covariance_from_svd(*factor, scale)
    else:
        jac = _free_jacobian(problem, values)
        if w is not None:
            jac = jac * np.sqrt(w)[:, None]
        cov = covariance(jac, scale)
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


def _safe_correlation(cov: np.ndarray, sd: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.outer(sd, sd)


def _free_jacobian(problem: LeastSquaresProblem, values: dict) -> np.ndarray:
    """d prediction / d free parameter (values, not internal coordinates), float64, (n, F)."""
    space = problem.space
    if problem.numpy_ready:
        return problem.model.jacobian_numpy(problem.numpy()[0], values, space.free)
    import torch
    from torch.func import jacfwd

    inputs64 = {k: torch.as_tensor(a, dtype=torch.float64) for k, a in problem.numpy()[0].items()}
    v = torch.tensor([values[n] for n in space.free], dtype=torch.float64)
    return jacfwd(lambda z: problem.model.forward(inputs64, space.as_dict(z, internal=False)))(v).detach().cpu().numpy()


def _precise_chi2(problem, values, chi2: float, y: np.ndarray, w) -> float:
    """Recompute chi-square in 40-digit arithmetic when float64 rounding dominates it
    (residuals within ~5 orders of magnitude of the data's rounding level)."""
    expr = getattr(problem.model, "expression", None)
    if expr is None or problem.n > 20_000:
        return chi2
    scale = float(y @ y if w is None else w @ (y * y))
    if chi2 > 1e-20 * scale:
        return chi2
    from .formula.precise import residuals_mp

    inputs, _, _ = problem.numpy()
    r = residuals_mp(expr, inputs, y, w, values)
    return float(r @ r)


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


def refine_residuals(problem: LeastSquaresProblem, values: dict, steps: int = 3) -> dict:
    """Gauss-Newton refinement with residuals in 40-digit arithmetic (mixed-precision
    iterative refinement). Only worth it when the residuals sit near float64 rounding."""
    from .formula.precise import residuals_mp

    expr = getattr(problem.model, "expression", None)
    if expr is None or problem.n > 20_000 or problem.space.has_bounds or problem.space.ties:
        return values
    space = problem.space
    inputs, y, w = problem.numpy()
    if chi_square(problem, values) > 1e-20 * float(y @ y if w is None else w @ (y * y)):
        return values  # residuals well above float64 rounding: nothing to gain
    current = dict(values)
    r = residuals_mp(expr, inputs, y, w, current)
    _, jacobian = problem.lm_functions()
    for _ in range(steps):
        v = np.array([current[n] for n in space.free])
        with np.errstate(all="ignore"):
            jac = jacobian(v)
        step = np.linalg.lstsq(jac, -r, rcond=None)[0]
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
        sub = LeastSquaresProblem(problem.model, sub_space, *problem.numpy())
        method = "linear" if sub.is_linear() and not sub_space.has_bounds else "lm"
        out = solve(sub, method)
        return chi_square(sub, out.values)

    return {n: profile_interval(refit, n, values[n], stderr[n], stats["chisqr"], delta) for n in names}
