"""Multistart: K starts per fit, run as one batch of K x B fits, the best kept per fit.

``gf.fit(..., starts=K)`` and ``gf.fit_many(..., starts=K)`` call this module. Data flow
(forward hops only): the fit's start, bounds and free mask -> K starts per fit
(:func:`gradfit.models.starts.spread_starts`: start 0 is the given one, the others a scrambled
Sobol or Latin hypercube design over the bounds, log-spread around the start where a bound is
missing) -> one :func:`gradfit.lsq.batched.solve_batched` call over the K x B problems (the data
tiled K times) -> per fit, the converged start of lowest chi-square (the deviance for
loss="poisson"; among all starts when none converged; of the starts within the tolerance
below of it, the first, so the given start wins when it reached the best) -> the summary below.

**The summary** (``r.multistart``): ``starts`` (K), ``converged`` (starts that converged),
``reached_best`` (converged starts whose criterion is within ``rtol * best + floor`` of the
best, ``rtol = max(1e-6, 10 * tol)``: a start that stopped on the tolerance ``tol`` can sit
about tol above the minimum it found, and ``floor`` is 1e-14 of the weighted sum of y^2 so
that exact data's rounding-level minima agree), and ``distinct_minima`` (clusters of converged
starts: the same minimum when the criteria agree as above and every free parameter agrees
within the larger of its standard error and 1e-3 of its magnitude). Symmetric parameterizations
(a sine's a -> -a, p -> p + pi) count as distinct minima of the same chi-square.

gf.fit runs the batch in float64 with a tight tolerance (:data:`FIT_TOL`) and then finishes
the winner with its own single-fit machinery (statistics, statuses, uncertainties).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers

import numpy as np

from ..errors import ConfigError, GradfitError
from ..lsq.batched import BatchedSolution, solve_batched
from ..models.starts import DESIGNS, spread_starts
from ..status import Status

__all__ = ["FIT_MAX_ITER", "FIT_TOL", "best_start", "check_starts", "solve_multistart", "summarize"]

#: gf.fit's batch of starts: the relative chi-square change that ends a start (the winner is
#: then finished by gf.fit, so this only has to tell minima apart)
FIT_TOL = 1e-10
#: ... and its iteration cap per start
FIT_MAX_ITER = 500
#: chi-square floor relative to sum(w y^2): exact data's minima differ only by rounding
_FLOOR = 1e-14
#: parameters agree within this fraction of their magnitude (or their standard error)
_PARAM_RTOL = 1e-3


def check_starts(starts, design: str = "sobol") -> int | None:
    """``starts`` as an int >= 1 (None stays None: one start); ConfigError otherwise, or for a
    design other than "sobol" or "lhs"."""
    if design not in DESIGNS:
        raise ConfigError(f"start_design must be one of {', '.join(map(repr, DESIGNS))}, got {design!r}")
    if starts is None:
        return None
    if isinstance(starts, bool) or not isinstance(starts, numbers.Integral) or starts < 1:
        raise ConfigError(f"starts must be a whole number of starts >= 1 (e.g. starts=16), got {starts!r}")
    return int(starts)


def solve_multistart(model, names, inputs: dict, y: np.ndarray, w: np.ndarray, theta0: np.ndarray,
                     lower: np.ndarray, upper: np.ndarray, free: np.ndarray, *, starts: int, seed: int = 0,
                     design: str = "sobol", first=None, **solve_kw) -> tuple[BatchedSolution, dict]:
    """Fit every row of ``y`` from ``starts`` starts in one :func:`solve_batched` call.

    Arguments are those of :func:`solve_batched` (``theta0`` (B, P) is start 0 of each fit);
    ``solve_kw`` passes tol, max_iter, dtype, device and the rest through. ``first``, if
    given, is start 0's end point found elsewhere (gf.fit's own solver): (criterion (B,),
    params (B, P), converged (B,)), used in place of the batch's.

    Returns
    -------
    (BatchedSolution, dict)
        the winning start's solution per fit (B rows; ``timings`` of the whole K x B batch), and
        the summary: starts (int), converged, reached_best, distinct_minima ((B,) int arrays)
        best_start ((B, P) float: the design point the winner started from) and best_index
        ((B,) the winning start).
    """
    n_fits, p = theta0.shape
    k = starts
    thetas = spread_starts(theta0, lower, upper, np.asarray(free) > 0, k, seed=seed, design=design)
    tiled = {n: (np.tile(v, (k, 1)) if v.ndim == 2 else v) for n, v in inputs.items()}
    rows = (np.tile(a, (k, 1)) for a in (y, w, lower, upper))
    y_k, w_k, lo_k, hi_k = rows
    sol = solve_batched(model, names, tiled, y_k, w_k, thetas.reshape(k * n_fits, p), lo_k, hi_k, free, **solve_kw)
    chi2 = sol.chisqr.reshape(k, n_fits)
    converged = sol.status.reshape(k, n_fits) == Status.CONVERGED.code
    params, stderr = sol.params.reshape(k, n_fits, p).copy(), sol.stderr.reshape(k, n_fits, p).copy()
    if first is not None:
        chi2, converged = chi2.copy(), converged.copy()
        chi2[0], params[0], converged[0] = first
        stderr[0] = np.nan
    floor = _FLOOR * np.nansum(np.where(w > 0, w * np.nan_to_num(y) ** 2, 0.0), axis=1)
    rtol = max(1e-6, 10.0 * float(solve_kw.get("tol", 1e-4)))
    info = summarize(chi2, params, stderr, converged,
                     np.asarray(free) > 0, rtol=rtol, floor=floor)
    pick = info["best_index"]
    idx = pick * n_fits + np.arange(n_fits)
    info["best_start"] = thetas[pick, np.arange(n_fits)]
    winners = _rows(sol, idx)
    winners.timings = {**sol.timings, "starts": k}
    return winners, info


def _rows(sol: BatchedSolution, idx: np.ndarray) -> BatchedSolution:
    """The solution's rows ``idx`` (every per-problem array field, and dicts of them)."""
    n = len(sol.chisqr)

    def take(v):
        if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == n:
            return v[idx]
        if isinstance(v, dict) and v and all(isinstance(a, np.ndarray) and a.shape[:1] == (n,) for a in v.values()):
            return {key: a[idx] for key, a in v.items()}
        return v

    return dataclasses.replace(sol, **{f.name: take(getattr(sol, f.name)) for f in dataclasses.fields(sol)})


def summarize(chi2: np.ndarray, params: np.ndarray, stderr: np.ndarray, converged: np.ndarray, free: np.ndarray, *,
              rtol: float, floor: np.ndarray) -> dict:
    """Per fit, from K starts' end points ((K, B) criteria and convergence, (K, B, P)
    parameters and standard errors): the winner's index (``best_index``, (B,)), and the counts
    ``converged``, ``reached_best``, ``distinct_minima`` ((B,) ints), as the module says."""
    k = chi2.shape[0]
    ok = converged & np.isfinite(chi2)
    # the lowest converged criterion wins; with none converged, the lowest finite one
    ranked = np.where(ok, chi2, np.inf)
    fallback = np.where(np.isfinite(chi2), chi2, np.inf)
    best_index = np.where(ok.any(axis=0), np.argmin(ranked, axis=0), np.argmin(fallback, axis=0))
    best = np.min(ranked, axis=0)
    tol = rtol * np.abs(np.where(np.isfinite(best), best, 0.0)) + floor
    at_best = ok & (ranked <= best + tol)
    reached = at_best.sum(axis=0)
    # among starts at the best minimum the first wins: the given start (0) when it got there,
    # so an equivalent optimum (a sign symmetry) never replaces the one the user started in
    best_index = np.where(reached > 0, np.argmax(at_best, axis=0), best_index)
    # distinct minima: greedy clustering of the converged starts in order of their criterion
    order = np.argsort(ranked, axis=0, kind="stable")
    b_idx = np.arange(chi2.shape[1])
    reps_chi = np.full((k, chi2.shape[1]), np.nan)
    reps_par = np.full((k, *params.shape[1:]), np.nan)
    count = np.zeros(chi2.shape[1], dtype=np.int64)
    with np.errstate(invalid="ignore"):
        for pos in range(k):
            j = order[pos]
            c, th, se = chi2[j, b_idx], params[j, b_idx], stderr[j, b_idx]
            live = ok[j, b_idx]
            scale = np.fmax(np.abs(se), _PARAM_RTOL * np.fmax(np.abs(th)[None], np.abs(reps_par)))
            same_p = ((np.abs(reps_par - th[None]) <= np.fmax(scale, 1e-12)) | ~free[None, None, :]).all(axis=-1)
            same = same_p & (np.abs(reps_chi - c[None]) <= (rtol * np.abs(c) + floor)[None])
            new = live & ~same.any(axis=0)
            reps_chi[count[new], b_idx[new]] = c[new]
            reps_par[count[new], b_idx[new]] = th[new]
            count += new
    return {"starts": k, "converged": ok.sum(axis=0), "reached_best": reached, "distinct_minima": count,
            "best_index": best_index}


def best_start(model, space, arrays, loss_fn, starts: int, *, seed: int = 0,
               design: str = "sobol", compile="auto") -> tuple:
    """gf.fit's multistart: (a copy of ``space`` starting at the best of ``starts`` starts, the
    summary as JSON values: starts, converged, reached_best, distinct_minima (ints) and
    best_start {name: value}). The K starts run as one float64 batch on the CPU.

    Raises ConfigError for tied parameters, data that are not one column per input, or a loss
    other than least squares or "poisson"."""
    import torch

    if not (loss_fn.least_squares or loss_fn.likelihood):
        raise ConfigError(f"starts= compares starts by chi-square or the Poisson deviance; loss={loss_fn.name!r} is "
                          "neither: use loss='mse' (or 'poisson')")
    likelihood = "poisson" if loss_fn.likelihood else None

    if space.ties:
        raise ConfigError("starts= does not combine with tie; substitute the tie into the formula, or fix it")
    y = np.asarray(arrays.y, dtype=float)
    if y.ndim != 1 or any(np.ndim(v) != 1 for v in arrays.inputs.values()):
        raise ConfigError("starts= needs one value per point in y and in each input (a single-output model)")
    names = tuple(space.names)
    w = np.ones_like(y) if arrays.weights is None else np.asarray(arrays.weights, dtype=float)
    theta0 = np.array([[space.values[n] for n in names]])
    lower = np.array([[space.lower[n] for n in names]])
    upper = np.array([[space.upper[n] for n in names]])
    free = np.array([1.0 if n in space.free else 0.0 for n in names])
    single = None if likelihood else _single_fit(model, space, arrays, compile)
    first = None if single is None else (np.array([single[0]]), np.array([[single[1][n] for n in names]]),
                                         np.array([single[2]]))
    solution, info = solve_multistart(model, names, dict(arrays.inputs), y[None], w[None], theta0, lower, upper, free,
                                      starts=starts, seed=seed, design=design, first=first, tol=FIT_TOL,
                                      max_iter=FIT_MAX_ITER,
                                      dtype=torch.float64, device=torch.device("cpu"), compile=False, progress=False,
                                      likelihood=likelihood)
    out = copy.copy(space)
    values = first[1][0] if first is not None and info["best_index"][0] == 0 else solution.params[0]
    if np.all(np.isfinite(values)):
        out.values = {n: float(v) if n in space.free else space.values[n] for n, v in zip(names, values)}
    summary = {"starts": starts, "converged": int(info["converged"][0]), "reached_best": int(info["reached_best"][0]),
               "distinct_minima": int(info["distinct_minima"][0]),
               "best_start": {n: float(v) for n, v in zip(names, info["best_start"][0])}}
    return out, summary


def _single_fit(model, space, arrays, compile="auto") -> tuple | None:
    """Start 0 fitted by gf.fit's own Levenberg-Marquardt (float64): (chi-square, values,
    converged), so multistart never ends worse than the fit without it (the batched solver
    may leave a basin that the single-fit solver stays in)."""
    from ..lsq.problem import LeastSquaresProblem, chi_square
    from ..lsq.solve import solve

    problem = LeastSquaresProblem.from_arrays(model, space, arrays)
    try:
        outcome = solve(problem, "lm", max_iter=FIT_MAX_ITER, compile=compile)
    except (ArithmeticError, ValueError, RuntimeError, GradfitError):
        return None
    chi2 = chi_square(problem, outcome.values) if outcome.chisqr is None else outcome.chisqr
    if not math.isfinite(chi2):
        return None
    return chi2, outcome.values, outcome.status == "converged"
