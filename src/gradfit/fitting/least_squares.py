"""fit() for least-squares problems: solve (linear or Levenberg-Marquardt), then attach
uncertainties and statistics, and build the FitResult. Poisson likelihood fits run the same
Levenberg-Marquardt on the deviance residuals (:mod:`gradfit.lsq.likelihood`)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import warn_user
from ..stats import undetermined
from ..lsq.likelihood import PoissonProblem, fisher_polish, mean_half_deviance, poisson_uncertainty, positive_start
from ..lsq.problem import LeastSquaresProblem, mean_squared_error, predict_numpy
from ..lsq.solve import refine_residuals, solve
from ..lsq.uncertainty import uncertainty
from ..results.fit_result import FitResult
from ..callbacks import LogCallback, ProgressCallback, wants_progress

__all__ = ["least_squares_fit", "poisson_fit", "with_uncertainty", "with_poisson_uncertainty", "uncertainty_fields",
           "warn_degenerate"]


def least_squares_fit(model, space, train_arr, val_arr, method, options, *, settings, callbacks, notes, n_train,
                      n_val):
    """Solve by ``method`` ("linear" or "lm") under ``options`` (:class:`~gradfit.options.FitOptions`:
    its least_squares group, and the training group's log_every and progress) and build the
    FitResult. dtype/device apply to first-order training; least squares is float64 on the CPU."""
    lsq = options.least_squares
    max_iter = lsq.max_iter
    problem = LeastSquaresProblem.from_arrays(model, space, train_arr)
    solver = problem.well_scaled()  # (weights far from 1 divided by their largest: the same minimizer)
    cbs, on_iteration = _iteration_callbacks(callbacks, options, method, "least squares")
    outcome = solve(solver, method, max_iter=max_iter, tol=lsq.tol, callback=on_iteration, compile=lsq.compile)
    values = outcome.values
    if method == "lm" and outcome.status == "converged":
        values = refine_residuals(solver, values, chisqr=outcome.chisqr)
    for cb in cbs:
        cb.on_train_end(outcome.status, outcome.iterations)
    val_loss = None
    if val_arr is not None:
        val_loss = mean_squared_error(model, val_arr.inputs, val_arr.y, val_arr.weights, values)
    fields = dict(params=values, loss=float("nan"), val_loss=val_loss, status=outcome.status,
                  epochs_run=outcome.iterations, history={"train_loss": outcome.history, "val_loss": []},
                  model=model, message=outcome.message, settings={**settings, "strategy": outcome.strategy},
                  n_train=n_train, n_val=n_val, notes=notes)
    # not refined and not rescaled: the solver's residuals, Jacobian and factorization hold
    same = values is outcome.values and solver is problem
    fields.update(uncertainty_fields(fields, problem, lsq.absolute_sigma, set_loss=True,
                                     factor=outcome.factor if same else None,
                                     residuals=outcome.residuals if same else None,
                                     jacobian=outcome.jacobian if same else None,
                                     gram_eigh=outcome.gram_eigh if same else None))
    return FitResult(**fields)


def _iteration_callbacks(callbacks, options, method: str, what: str) -> tuple[list, object]:
    """The callbacks of a least-squares run (the caller's, a log and a progress display),
    begun, and the per-iteration hook for the solver (None without callbacks)."""
    training = options.training
    cbs = list(callbacks)
    if training.log_every:
        cbs.append(LogCallback(training.log_every, unit="iteration"))
    if method == "lm" and wants_progress(training.progress):
        # iterations of at most max_iter (most fits stop far earlier): time elapsed, not an ETA
        cbs.append(ProgressCallback(what, eta=False))
    for cb in cbs:
        cb.on_train_begin(options.least_squares.max_iter)

    def on_iteration(it, mean_loss):
        stop = False
        for cb in cbs:
            stop = bool(cb.on_epoch_end(it, {"train_loss": mean_loss, "val_loss": None})) or stop
        return stop

    return cbs, (on_iteration if cbs else None)


def poisson_fit(model, space, train_arr, val_arr, options, *, settings, callbacks, notes, n_train, n_val):
    """Poisson maximum likelihood by Levenberg-Marquardt on the deviance residuals (Fisher
    scoring; :mod:`gradfit.lsq.likelihood`), with Cramer-Rao standard errors and the
    likelihood statistics, as a FitResult. A start where the model is not positive at a used
    point starts from the least-squares fit instead (FitError when that is not positive
    either). The loss is the weighted mean half deviance, the torch loss "poisson"."""
    lsq = options.least_squares
    problem = PoissonProblem.from_arrays(model, space, train_arr)
    start, more = positive_start(problem, max_iter=lsq.max_iter, compile=lsq.compile)
    if more:
        space = _space_at(space, start)
        problem = PoissonProblem.from_arrays(model, space, train_arr)
    cbs, on_iteration = _iteration_callbacks(callbacks, options, "lm", "Poisson fit")
    outcome = solve(problem, "lm", max_iter=lsq.max_iter, tol=lsq.tol, callback=on_iteration)
    outcome = fisher_polish(problem, outcome, tol=lsq.tol, max_iter=lsq.max_iter)  # an optimum at the edge
    for cb in cbs:
        cb.on_train_end(outcome.status, outcome.iterations)
    values = outcome.values
    val_loss = None
    if val_arr is not None:
        with np.errstate(all="ignore"):
            mu = predict_numpy(model, val_arr.inputs, values)
        val_loss = mean_half_deviance(val_arr.y, np.broadcast_to(mu, val_arr.y.shape), val_arr.weights)
    fields = dict(params=values, loss=float("nan"), val_loss=val_loss, status=outcome.status,
                  epochs_run=outcome.iterations, history={"train_loss": outcome.history, "val_loss": []},
                  model=model, message=outcome.message, settings={**settings, "strategy": outcome.strategy},
                  n_train=n_train, n_val=n_val, notes=notes + more)
    fields.update(uncertainty_fields(fields, problem, True, unc=poisson_uncertainty(problem, values)))
    fields["loss"] = fields["stats"]["deviance"] / (2.0 * problem.weight_total())
    return FitResult(**fields)


def _space_at(space, values: dict):
    """``space`` with every parameter's start moved to ``values`` (bounds, fixed and ties kept)."""
    from ..models.parameters import ParameterSpace

    bounds = {n: (space.lower[n], space.upper[n]) for n in space.names
              if np.isfinite(space.lower[n]) or np.isfinite(space.upper[n])}
    return ParameterSpace(space.names, values, bounds=bounds, fixed=list(space.fixed),
                          tie={t.name: t.text for t in space.ties})


def with_poisson_uncertainty(result, problem: PoissonProblem):
    """A copy of ``result`` (a first-order Poisson fit) with Cramer-Rao standard errors,
    correlations and the likelihood statistics."""
    fields = {"params": result.params, "status": result.status, "message": result.message, "notes": result.notes}
    return dataclasses.replace(result, **uncertainty_fields(fields, problem, True,
                                                            unc=poisson_uncertainty(problem, result.params)))


def with_uncertainty(result, problem: LeastSquaresProblem, absolute_sigma: bool):
    """A copy of ``result`` with covariance, standard errors, correlations and statistics."""
    fields = {"params": result.params, "status": result.status, "message": result.message, "notes": result.notes}
    return dataclasses.replace(result, **uncertainty_fields(fields, problem, absolute_sigma))


def uncertainty_fields(fields: dict, problem: LeastSquaresProblem, absolute_sigma: bool, *,
                       set_loss: bool = False, factor: tuple | None = None, residuals=None, jacobian=None,
                       gram_eigh=None, unc=None) -> dict:
    """FitResult fields for covariance, standard errors, correlations, statistics, and status
    "singular" (plus a warning naming the parameters) for rank-deficient problems. With
    ``set_loss`` the training loss is taken from the statistics (chi2 / sum of weights).
    ``unc``: an :class:`~gradfit.lsq.uncertainty.Uncertainty` already computed (a Poisson fit's)."""
    if unc is None:
        unc = uncertainty(problem, fields["params"], absolute_sigma=absolute_sigma, factor=factor,
                          residuals=residuals, jacobian=jacobian, gram_eigh=gram_eigh)
    status, message = fields["status"], fields["message"]
    if unc.degenerate:
        text = warn_degenerate(unc.degenerate)
        if status in ("converged", "max_epochs", "max_iterations"):
            status = "singular"
        message = f"{message}; {text}" if message else text
    free_se = [unc.stderr[n] for n in unc.free]
    if status == "converged" and unc.stats["dof"] > 0 and not all(map(math.isfinite, free_se)):
        # undetermined errors are never "converged" (the same rule as fit_many)
        status = "singular"
        text = "the standard errors are not finite at the end point (the Jacobian is numerically singular)"
        message = f"{message}; {text}" if message else text
    if status == "converged" and unc.free and isinstance(problem, PoissonProblem):
        # a Cramer-Rao error that dwarfs its parameter (counts give it an absolute scale; least
        # squares' errors scale with the user's units)
        values = [fields["params"][n] for n in unc.free]
        loose = undetermined(np.array(free_se), np.array(values), np.array([problem.space.values[n] for n in unc.free]))
        if loose.any():  # a finite error that dwarfs the parameter: the data do not determine it
            status = "singular"
            named = ", ".join(f"{n} ({s:.2g} against a value of {v:.4g})"
                              for n, s, v, bad in zip(unc.free, free_se, values, loose) if bad)
            text = (f"the data do not determine {named}: its standard error exceeds 2^26 times its size; fix it, "
                    "or give data that depend on it")
            message = f"{message}; {text}" if message else text
    notes = fields["notes"]
    if unc.stats["dof"] == 0 and not absolute_sigma and not all(map(math.isfinite, free_se)):
        # as many points as free parameters: chi-square is 0 to rounding and says nothing of the
        # noise (scipy warns "Covariance of the parameters could not be estimated")
        text = ("no degrees of freedom (as many points as free parameters): the standard errors are undetermined; "
                "give sigma= with absolute_sigma=True, or more points")
        warn_user(text)
        notes = notes + (text,)
    # e.g. "finite-difference Jacobian: f is not written with torch" from a numpy-written function
    notes = notes + tuple(n for n in getattr(problem.model, "notes", ()) if n not in notes)
    at_bound = problem.space.at_bound(fields["params"]) if problem.space.has_bounds else ()
    if at_bound:
        notes = notes + (f"parameter(s) {', '.join(at_bound)} at a bound (the bound is active): their standard "
                         "errors assume it is not",)
    changes = dict(status=status, message=message, stderr=unc.stderr, covariance=unc.covariance,
                   correlation=unc.correlation, free=unc.free, stats=unc.stats, notes=notes)
    if set_loss:
        changes["loss"] = unc.stats["chisqr"] / problem.weight_total()
    return changes


def warn_degenerate(groups) -> str:
    """The warning text for parameters the data cannot separate; also issues the warning."""
    names = "; ".join(", ".join(g) for g in groups)
    text = (f"the data cannot determine parameters {names} separately (the Jacobian is rank-deficient: "
            "they appear only in combination, or not at all); fix one of them or reparametrize")
    warn_user(text)
    return text
