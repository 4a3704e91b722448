"""Poisson maximum likelihood for one fit, on the least-squares machinery.

The counts' deviance is a sum of squares of the signed deviance residuals
``d_i = sign(mu_i - y_i) sqrt(w_i dev_i)`` (:func:`gradfit.likelihood.deviance_residuals`),
whose Jacobian ``factor_i * d mu_i / d theta`` gives the deviance's exact gradient. So
:class:`PoissonProblem` is a :class:`~gradfit.lsq.problem.LeastSquaresProblem` whose
residual functions are those, and the single-fit Levenberg-Marquardt (:mod:`gradfit.lsq.solve`)
minimizes the deviance unchanged: bounds, fixed and tied parameters, the stopping and
stationarity tests all carry over. Near the optimum its Gauss-Newton matrix is the Fisher
information (Fisher scoring). A trial step where a mean is not positive at a used point has
no likelihood: its residuals are NaN and Levenberg-Marquardt rejects it.

Uncertainties (:func:`poisson_uncertainty`) are the Cramer-Rao bound: the inverse Fisher
information ``(J^T diag(w/mu) J)^-1``, absolute (never scaled by a reduced chi-square), with
the rank tests of least squares on ``J sqrt(w/mu)``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import FitError, GradfitError
from ..likelihood import aic_bic, deviance_residuals, fisher_weights, poisson_deviance, poisson_log_likelihood
from .problem import LeastSquaresProblem, predict_numpy
from .uncertainty import Uncertainty, uncertainty

__all__ = ["PoissonProblem", "POISSON_REASON", "poisson_uncertainty", "poisson_statistics", "nonpositive_point",
           "positive_start", "mean_half_deviance", "fisher_polish"]

#: the method_reason of a Poisson fit under optimizer="auto"
POISSON_REASON = "Poisson maximum likelihood: Levenberg-Marquardt on the deviance (Fisher scoring)"


class PoissonProblem(LeastSquaresProblem):
    """The Poisson likelihood problem of one fit: counts ``y`` >= 0, frequency ``weights``
    (None for 1), means from ``model``. Its residual functions are the signed deviance
    residuals, so ``sum(r^2)`` is the deviance D and LM's cost ``D / 2`` is the negative
    log-likelihood up to terms free of the parameters. Points with weight 0 add nothing."""

    plain_residuals = False  # deviance residuals: never the native least-squares kernel

    def rows(self, start: int, stop: int) -> "PoissonProblem":
        part = super().rows(start, stop)
        return PoissonProblem(part.model, part.space, *part.numpy())

    def lm_functions(self, *, internal: bool = True):
        """(deviance residuals, their Jacobian) as float64 numpy functions of the free
        parameters (see :meth:`LeastSquaresProblem.lm_functions`). NaN residuals where a
        used mean is not positive (a failed trial for Levenberg-Marquardt)."""
        inputs, y, w = self._numpy
        # the unweighted problem gives mu - y and d mu / d theta (formulas in numpy, fused)
        plain = LeastSquaresProblem(self.model, self.space, inputs, y, None)
        residual, jacobian = plain.lm_functions(internal=internal)
        unused = None if w is None else ~(w > 0)
        last = {"at": None, "factor": None}

        def deviance_residual(u):
            d, factor = deviance_residuals(y, residual(u) + y, w)
            if unused is not None:  # a point without weight has no likelihood term, whatever its mean
                d, factor = np.where(unused, 0.0, d), np.where(unused, 0.0, factor)
            last["at"], last["factor"] = u.tobytes(), factor
            return d

        def deviance_jacobian(u):
            if last["at"] != u.tobytes():  # LM asks at its last accepted trial; anything else recomputes
                deviance_residual(u)
            return jacobian(u) * last["factor"][:, None]

        return deviance_residual, deviance_jacobian

    def mean_loss(self, cost: float) -> float:
        """LM's cost D/2 -> the weighted mean of the half deviance terms (the torch loss "poisson")."""
        return cost / self.weight_total()


def mean_half_deviance(y: np.ndarray, mu: np.ndarray, w: np.ndarray | None) -> float:
    """sum(w * dev_i) / (2 sum(w)): the loss "poisson" reports (inf where a used mean is not positive)."""
    return poisson_deviance(y, mu, w) / (2.0 * (float(np.sum(w)) if w is not None else float(len(y))))


def nonpositive_point(problem: LeastSquaresProblem, values: dict) -> tuple[int, float] | None:
    """(index, mean) of the first used point where the model's mean is not positive (or not
    finite) at ``values``, or None where every used mean is positive."""
    inputs, y, w = problem.numpy()
    with np.errstate(all="ignore"):
        mu = predict_numpy(problem.model, inputs, values)
    mu = np.broadcast_to(mu, y.shape)
    bad = ~(mu > 0) | ~np.isfinite(mu)
    if w is not None:
        bad &= w > 0
    if not bad.any():
        return None
    i = int(np.argmax(bad))
    return i, float(mu[i])


def positive_start(problem: PoissonProblem, *, max_iter: int, compile="auto") -> tuple[dict, tuple]:
    """Starting values where every used mean is positive, and notes on how they were found.

    The start itself when it qualifies; else the (frequency-weighted) least-squares fit from
    it, a good start for counts when its means are positive. Raises FitError naming the
    first point where neither is, and saying what to do."""
    from .solve import solve

    space = problem.space
    start = dict(space.values)
    bad = nonpositive_point(problem, start)
    if bad is None:
        return start, ()
    lsq = LeastSquaresProblem(problem.model, space, *problem.numpy())
    with np.errstate(all="ignore"):
        values = solve(lsq, "lm", max_iter=max_iter, compile=compile).values
    if nonpositive_point(problem, values) is None:
        i, mu = bad
        return values, (f"the model is not positive at point {i} (mean {mu:.6g}) at the starting values: the "
                        "Poisson fit started from the least-squares fit",)
    i, mu = bad
    inputs = problem.numpy()[0]
    where = ", ".join(f"{k} = {np.ravel(v)[i]:.6g}" for k, v in inputs.items() if np.ndim(v) and len(v) == problem.n)
    raise FitError(f"the model's mean is {mu:.6g} at point {i}{f' ({where})' if where else ''} for the starting "
                   "values, and a least-squares fit from them does not make it positive either: a Poisson mean must "
                   "be positive at every point with counts. Give init= where the model is positive at every point "
                   "(e.g. an offset > 0), or bound the parameters that keep it positive (bounds={'b': (1e-9, None)})")


def fisher_polish(problem: PoissonProblem, outcome, *, tol: float | None, max_iter: int):
    """``outcome`` of Levenberg-Marquardt on the deviance residuals, or, where that did not
    converge, the batched Fisher scoring's from the same start when it converges to a deviance
    no higher than LM's (the same outcome with its values, status and message; also when it
    ends singular there: all-zero counts, whose optimum mean 0 leaves a rate undetermined), or
    ends otherwise at a strictly lower deviance (its status then). (Not from LM's end point:
    that can sit on the edge, mu ~ 1e-17, where the Fisher weight w / mu pins it.)

    Why: where zero counts have means near 0 (a background or an amplitude on the positivity
    edge, :mod:`gradfit.optim.positive_step`), the deviance residuals sqrt(2 w mu) have
    Jacobians growing like 1 / sqrt(mu) and a Gauss-Newton model with half the Fisher
    curvature: the trust region shrinks onto the edge and LM stalls short of the optimum.
    Fisher scoring with steps that stop at the edge converges there. Tied parameters keep the
    LM outcome (the batched engine has no ties)."""
    from ..status import Status

    space = problem.space
    if outcome.status == Status.CONVERGED.value or space.ties or not outcome.values:
        return outcome
    inputs, y, w = problem.numpy()
    names = tuple(space.names)
    before = poisson_deviance(y, np.broadcast_to(predict_numpy(problem.model, inputs, outcome.values), y.shape), w)
    try:
        sol = _batched_poisson(problem, tol=tol if tol is not None else 1e-10, max_iter=max_iter)
    except GradfitError:  # a model the batched engine does not take: LM's outcome stands
        return outcome
    # singular: an optimum where a parameter is not determined (all-zero counts: an amplitude of 0
    # leaves its rate free), still the lower deviance, as LM's end reports it; a run that did not
    # converge either is taken where it got further (a long path along a curved edge: LM stalled
    # 0.76 below the maximum where Fisher scoring ran out of iterations 6e-5 below it)
    code = int(sol.status[0])
    ended = code in (Status.CONVERGED.code, Status.SINGULAR.code)
    if not (sol.chisqr[0] <= before if ended else sol.chisqr[0] < before) or not np.isfinite(sol.params[0]).all():
        return outcome
    values = {n: float(v) for n, v in zip(names, sol.params[0])}
    how = {Status.CONVERGED.code: "converged",
           Status.SINGULAR.code: "ended singular (a parameter is not determined there)",
           Status.MAX_ITERATIONS.code: "ran out of iterations, not converged (raise max_iter)"}.get(
        code, f"ended {Status.from_code(code).value}, not converged (start nearer the maximum)")
    message = (f"{how}: Fisher scoring with steps stopping at the positivity edge, from the start "
               f"(Levenberg-Marquardt on the deviance residuals had ended {outcome.status}, "
               f"{before / 2.0 - float(sol.chisqr[0]) / 2.0:.3g} lower in log-likelihood)")
    return dataclasses.replace(outcome, values=values, status=Status.from_code(code).value,
                               iterations=outcome.iterations + int(sol.iterations[0]), message=message, residuals=None)


def _batched_poisson(problem: PoissonProblem, *, tol: float, max_iter: int):
    """One fit by lsq/batched's Poisson Fisher scoring, float64 on the CPU, from the problem's
    start, with its bounds and fixed parameters."""
    import torch

    from .batched import solve_batched

    space = problem.space
    inputs, y, w = problem.numpy()
    names = tuple(space.names)

    def row(values: dict) -> np.ndarray:  # one fit's (1, P) row in the names' order
        return np.array([[float(values[n]) for n in names]])

    free = np.array([0.0 if n in space.fixed else 1.0 for n in names])
    with np.errstate(all="ignore"):
        return solve_batched(problem.model, names, {k: np.asarray(v, dtype=float) for k, v in inputs.items()},
                             y[None, :], (np.ones_like(y) if w is None else w)[None, :], row(space.values),
                             row(space.lower), row(space.upper), free, tol=tol, max_iter=max_iter,
                             dtype=torch.float64, device=torch.device("cpu"), compile=False, progress=False,
                             likelihood="poisson", restart=False)


def poisson_statistics(y: np.ndarray, mu: np.ndarray, w: np.ndarray | None, n_free: int) -> dict:
    """The statistics of a Poisson fit at means ``mu`` (points with weight 0 left out).

    n (points used), dof = n - k, deviance D, loglike (the full Poisson log-likelihood,
    log(y!) as lgamma(y + 1)), aic = 2k - 2 logL, bic = k ln(n) - 2 logL, chisqr (Pearson's
    sum w (y - mu)^2 / mu), redchi = chisqr / dof, r2 (the deviance R^2, 1 - D / D_null with
    D_null the deviance of the constant weighted mean), rss and rmse (unweighted)."""
    y = np.asarray(y, dtype=float)
    mu = np.broadcast_to(np.asarray(mu, dtype=float), y.shape)
    if w is not None:
        used = w > 0
        y, mu, w = y[used], mu[used], w[used]
    n = int(y.size)
    dof = n - n_free
    deviance = poisson_deviance(y, mu, w)
    loglike = poisson_log_likelihood(y, mu, w)
    aic, bic = aic_bic(loglike, n_free, n)
    ww = np.ones_like(y) if w is None else w
    with np.errstate(all="ignore"):
        r = mu - y
        pearson = float(np.sum(ww * r * r / mu)) if np.all(mu > 0) else math.inf
        mean = float(ww @ y) / float(ww.sum())
        null = poisson_deviance(y, np.full_like(y, mean), w) if mean > 0 else math.nan
        r2 = 1.0 - deviance / null if null > 0 else math.nan
        rss = float(r @ r)
    return {"n": n, "dof": dof, "deviance": deviance, "loglike": loglike, "aic": aic, "bic": bic,
            "chisqr": pearson, "redchi": pearson / dof if dof > 0 else math.nan, "r2": r2, "rss": rss,
            "rmse": math.sqrt(rss / n) if n else math.nan}


def poisson_uncertainty(problem: LeastSquaresProblem, values: dict) -> Uncertainty:
    """Cramer-Rao standard errors, correlations and :func:`poisson_statistics` at ``values``.

    The covariance is the inverse Fisher information ``(J^T diag(w/mu) J)^-1``: the
    least-squares covariance of the problem weighted by the Fisher weights w/mu, with
    absolute sigma (no reduced chi-square scaling), so the same rank and degeneracy tests
    apply. Where a used mean is not positive nothing is determined (NaN)."""
    inputs, y, w = problem.numpy()
    with np.errstate(all="ignore"):
        mu = np.broadcast_to(predict_numpy(problem.model, inputs, values), y.shape).astype(float)
        fw = fisher_weights(mu, w)
    if w is not None:
        fw = np.where(w > 0, fw, 0.0)
    stats = poisson_statistics(y, mu, w, len(problem.space.free))
    if not np.isfinite(fw).all():
        space = problem.space
        f = len(space.free)
        nan = np.full((f, f), math.nan)
        stderr = {n: (0.0 if n in space.fixed else math.nan) for n in space.names}
        return Uncertainty(stderr, nan, nan.copy(), space.free, stats, ())
    fisher = LeastSquaresProblem(problem.model, problem.space, inputs, y, fw)
    unc = uncertainty(fisher, values, absolute_sigma=True, residuals=mu - y)
    return dataclasses.replace(unc, stats=stats)

