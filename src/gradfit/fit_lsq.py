"""fit() for least-squares problems: solve (linear or Levenberg-Marquardt), then attach
uncertainties and statistics, and build the FitResult."""

from __future__ import annotations

import dataclasses

__all__ = ["least_squares_fit", "with_uncertainty"]


def least_squares_fit(model, space, train, val, loss_fn, method, *, settings, max_iter, tol, absolute_sigma,
                      log_every, progress, callbacks, notes, n_train, n_val):
    import torch

    from .lsq import LeastSquaresProblem, refine_residuals, solve
    from .result import FitResult
    from .train.callbacks import LogCallback, ProgressCallback, wants_progress

    problem = LeastSquaresProblem(model, space, train.inputs, train.y, train.weights)
    cbs = list(callbacks)
    if log_every:
        cbs.append(LogCallback(int(log_every), unit="iteration"))
    if method == "lm" and wants_progress(progress):
        cbs.append(ProgressCallback("least squares"))
    for cb in cbs:
        cb.on_train_begin(max_iter)

    def on_iteration(it, mean_loss):
        stop = False
        for cb in cbs:
            stop = bool(cb.on_epoch_end(it, {"train_loss": mean_loss, "val_loss": None})) or stop
        return stop

    outcome = solve(problem, method, max_iter=max_iter, tol=tol, callback=on_iteration if cbs else None)
    values = outcome.values
    if method == "lm" and train.y.dtype == torch.float64 and outcome.status == "converged":
        values = refine_residuals(problem, values)
    for cb in cbs:
        cb.on_train_end(outcome.status, outcome.iterations)
    result = FitResult(params=values, loss=_loss_at(problem, loss_fn, train, values),
                       val_loss=_loss_at(problem, loss_fn, val, values) if val is not None else None,
                       status=outcome.status, epochs_run=outcome.iterations,
                       history={"train_loss": outcome.history, "val_loss": []}, model=model,
                       message=outcome.message, settings={**settings, "strategy": outcome.strategy},
                       n_train=n_train, n_val=n_val, notes=notes)
    return with_uncertainty(result, model, space, train, absolute_sigma)


def _loss_at(problem, loss_fn, data, values) -> float:
    import torch

    params = {k: torch.tensor(v, dtype=data.y.dtype, device=data.y.device) for k, v in values.items()}
    with torch.no_grad():
        return float(loss_fn(problem.model.forward(data.inputs, params), data.y, data.weights))


def with_uncertainty(result, model, space, train, absolute_sigma: bool):
    """A copy of ``result`` with covariance, standard errors, correlations, statistics, and
    status "singular" (plus a warning naming the parameters) for rank-deficient problems."""
    from .fitting import warn_degenerate
    from .lsq import LeastSquaresProblem, uncertainty

    problem = LeastSquaresProblem(model, space, train.inputs, train.y, train.weights)
    unc = uncertainty(problem, result.params, absolute_sigma=absolute_sigma)
    status, message = result.status, result.message
    if unc.degenerate:
        text = warn_degenerate(unc.degenerate)
        if status in ("converged", "max_epochs", "max_iterations"):
            status = "singular"
        message = f"{message}; {text}" if message else text
    at_bound = space.at_bound(result.params)
    notes = result.notes
    if at_bound:
        notes = notes + (f"parameter(s) {', '.join(at_bound)} at a bound: their standard errors assume the "
                         "bound is not active",)
    return dataclasses.replace(result, status=status, message=message, stderr=unc.stderr,
                               covariance=unc.covariance, correlation=unc.correlation, free=unc.free,
                               stats=unc.stats, notes=notes, _problem=(problem, absolute_sigma))
