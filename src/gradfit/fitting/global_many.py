"""fit_many with ``shared=[...]``: the parameters named there take one value for the whole batch.

Data flow (forward hops only): fit_many (fitting/many.py) has validated the data and built the
(B, P) starts and bounds -> the shared names are checked here (known, not every parameter,
one start and one box per shared name) -> this process's block of fits under torchrun
(fitting/parallel.py, whose ``sum_across`` the engine uses for every sum over fits) -> the
joint engine (lsq/global_fit.py over optim/global_lm.py) -> a BatchResult whose ``shared``,
``shared_stderr`` and ``joint_stats`` describe the joint fit, gathered across processes.
With ``likelihood="poisson"`` the joint problem is Poisson maximum likelihood.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

__all__ = ["check_shared", "fit_shared"]


def check_shared(shared, names, theta0: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[str, ...]:
    """The shared names as a tuple, validated: each a parameter (a typo gets a hint), not every
    parameter, one starting value and one pair of bounds for the whole batch.

    Raises
    ------
    ConfigError saying what to change.
    """
    from ..errors import did_you_mean

    if isinstance(shared, str):
        shared = [s.strip() for s in shared.split(",") if s.strip()]
    shared = tuple(dict.fromkeys(str(s) for s in shared))
    for s in shared:
        if s not in names:
            raise ConfigError(f"shared names unknown parameter {s!r}{did_you_mean(s, names)}; parameters are "
                              f"{', '.join(names)}")
    if len(shared) == len(names):
        raise ConfigError(f"every parameter ({', '.join(names)}) is shared: that is one fit to all the data; "
                          "use gf.fit on the stacked data, or leave some parameters per fit")
    for s in shared:
        j = names.index(s)
        for what, values in (("init", theta0[:, j]), ("lower bound", lower[:, j]), ("upper bound", upper[:, j])):
            if values.size and not np.all(values == values[0]):
                b = int(np.nonzero(values != values[0])[0][0])
                raise ConfigError(f"shared parameter {s!r} takes one value for every fit, but its {what} differs "
                                  f"between fits ({values[0]:g} for fit 0, {values[b]:g} for fit {b}); give one "
                                  f"number for {s!r}")
    return shared


def shared_guess(theta0: np.ndarray, names, shared, init, fixed) -> np.ndarray:
    """theta0 with each shared parameter that was guessed per fit (init="guess", or a dict
    without it, for a built-in model) started at the median of its guesses, one value for
    the batch; values the user gave are left for :func:`check_shared` to judge."""
    from collections.abc import Mapping

    if isinstance(shared, str):
        shared = [s.strip() for s in shared.split(",") if s.strip()]
    given = set(init) if isinstance(init, Mapping) else set() if isinstance(init, str) else set(names)
    given |= set(fixed) if isinstance(fixed, (Mapping, list, tuple)) else {fixed} if fixed else set()
    theta0 = np.array(theta0, dtype=float)
    for s in shared:
        if s in names and s not in given:
            j = names.index(s)
            finite = theta0[:, j][np.isfinite(theta0[:, j])]
            if finite.size:
                theta0[:, j] = np.median(finite)
    return theta0


def fit_shared(model, names, shared, inputs: dict, y: np.ndarray, w: np.ndarray, theta0: np.ndarray,
               lower: np.ndarray, upper: np.ndarray, free: np.ndarray, *, tol: float, max_iter: int, dtype, device,
               threads=None, chunk_size=None, likelihood: str | None = None, compile="auto",
               absolute_sigma: bool = False):
    """The joint fit of fit_many(shared=...): a BatchResult (gathered on every rank).

    ``likelihood="poisson"``: joint Poisson maximum likelihood (lsq/global_fit.py). When the
    start has a model mean <= 0 (or not finite) at a point with data in any fit, every fit
    starts from the joint least-squares fit; fits still infeasible there end not_finite,
    outside the joint problem, with a warning naming them."""
    import time

    from .._threads import choose_threads, intra_op_threads
    from ..lsq.global_fit import solve_global
    from ..results.batch_result import BatchResult
    from ..stats import batch_statistics
    from .parallel import gather_result, reducer, shard_range

    names = tuple(names)
    shared = check_shared(shared, names, theta0, lower, upper)
    start, stop = shard_range(len(y))
    block = slice(start, stop)
    local = {k: (v[block] if v.ndim == 2 else v) for k, v in inputs.items()}
    t0 = time.perf_counter()
    elements = len(y) * y.shape[-1] * len(names)
    import torch

    # inference mode: no autograd bookkeeping on the hundreds of small tensor ops per iteration
    # (10% of a 1,000-fit global fit)
    with intra_op_threads(choose_threads(threads, elements) if device.type == "cpu" else threads), \
            torch.inference_mode():
        sol = solve_global(model, names, shared, local, y[block], w[block], theta0[block], lower[block], upper[block],
                           free, tol=tol, max_iter=max_iter, dtype=dtype, device=device, reduce=reducer(),
                           chunk_size=chunk_size, likelihood=likelihood, compile=compile,
                           absolute_sigma=absolute_sigma)
    n_free_local = int(sum(free[j] for j, n in enumerate(names) if n not in shared))
    # per fit: its own chi-square and points, counting its own free (local) parameters; the
    # joint fit's statistics (the shared parameters counted once) are in joint_stats
    if likelihood:
        from ..likelihood import batch_poisson_fit_statistics

        lk = sol.likelihood
        stats = batch_poisson_fit_statistics(lk["deviance"], lk["pearson"], lk["loglike"], sol.n_used, n_free_local)
        _warn_infeasible(sol, start)
    else:
        stats = batch_statistics(sol.chisqr, sol.n_used, n_free_local)
    result = BatchResult(param_names=names, params={n: sol.params[:, j] for j, n in enumerate(names)},
                         stderr={n: sol.stderr[:, j] for j, n in enumerate(names)}, stats=stats, status=sol.status,
                         iterations=sol.iterations, model_text=model.describe(), timings=sol.timings,
                         shared=sol.shared, shared_stderr=sol.shared_stderr, joint_stats=sol.joint_stats,
                         loss="poisson" if likelihood else "mse", covariance=sol.covariance, model=model)
    result = gather_result(result, len(y))
    result.timings["total_s"] = time.perf_counter() - t0
    return result


def _warn_infeasible(sol, offset: int) -> None:
    """Poisson fits left out of the joint problem because their start (the joint least-squares
    fit, when the given start was infeasible) has a mean <= 0 or not finite at a point with data."""
    from ..errors import warn_user
    from ..status import Status

    # by status alone: a fit left out at the start may have finite means at the final shared
    # values (its chi-square finite), and it is still not fitted
    bad = np.nonzero(sol.status == Status.NOT_FINITE.code)[0]
    if bad.size:
        first = ", ".join(str(int(i) + offset) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
        warn_user(f"fit_many(loss='poisson', shared=...): {bad.size} fit(s) (fit {first}) have a model mean <= 0 "
                  "or not finite at a point with data, at the start and at the joint least-squares fit; they are "
                  "left out of the joint fit and end not_finite. Start them where the model is positive (e.g. a "
                  "positive offset), or bound it positive")
