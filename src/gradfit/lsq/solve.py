"""Solvers for one least-squares problem: the direct linear solve (SVD) and
Levenberg-Marquardt (optim/lm.py), plus mixed-precision refinement of a converged solution."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..models.jacobian import jacobian, strategy as model_strategy
from ..status import Status
from ..optim.linear import solve_linear_least_squares
from ..stats import batch_range_cosine, range_cosine_from_gram, residual_floor, scaled_gram_eigh, stationary_threshold
from ..optim.lm import LMOptions, robust_levenberg_marquardt
from ..optim.native_single import kernel, loaded_kernel
from .chunked import Reducer, not_finite_report, use_chunks
from .compiled import add_eager_seconds, spent_enough
from .problem import LeastSquaresProblem, chi_square

__all__ = ['LSQOutcome', 'solve', 'refine_residuals']

_EPS64 = float(np.finfo(np.float64).eps)


@dataclass
class LSQOutcome:
    values: dict  # every parameter, float
    status: str  # converged | max_iterations | stalled | not_finite
    message: str
    iterations: int
    history: list = field(default_factory=list)  # mean loss (chi2 / sum w) per iteration
    strategy: str = ""
    #: (s, vt, d): thin SVD of the scaled weighted design matrix, from a linear solve
    factor: tuple | None = None
    #: unweighted residuals (prediction - y) at the solution, when the solver has them
    residuals: np.ndarray | None = None
    #: the weighted Jacobian (n, F) over the free parameters at the solution, when the solver has it
    #: (a chunked fit's reduced (F+1, F) one: the same J^T J, :mod:`gradfit.lsq.chunked`)
    jacobian: np.ndarray | None = None
    #: :func:`gradfit.stats.scaled_gram_eigh` of that Jacobian, when the end-point test made it
    gram_eigh: tuple | None = None
    #: chi-square (weighted) at the solution, when the solver has it
    chisqr: float | None = None


def solve(problem: LeastSquaresProblem, method: str, *, max_iter: int = 2000, tol: float | None = None,
          callback=None, compile="auto") -> LSQOutcome:
    """Solve by "linear" (direct) or "lm"; returns parameter values and an honest status.
    ``compile`` ("auto", True, False): whether "lm" runs the native kernel (see :func:`_native_run`)."""
    if method == "linear":
        return _solve_linear(problem)
    return _solve_lm(problem, max_iter=max_iter, tol=tol, callback=callback, compile=compile)


def _solve_linear(problem: LeastSquaresProblem) -> LSQOutcome:
    space, model = problem.space, problem.model
    inputs, y, w = problem.numpy()
    # The offset is the prediction with every free parameter at 0 (fixed ones at their value);
    # the design matrix holds the (constant) partial derivatives of the free parameters.
    at_zero = {n: (space.values[n] if n in space.fixed else 0.0) for n in space.names}
    with np.errstate(all="ignore"):  # a term not finite at some point is reported below
        design = jacobian(model, inputs, at_zero, space.free)
        offset = None if not space.fixed and model.vanishes_at_zero else model.forward_numpy(inputs, at_zero)
    try:
        with np.errstate(all="ignore"):  # (a term not finite at a point of weight 0: NaN, reported below)
            coef, factor = solve_linear_least_squares(design, y if offset is None else y - offset, w)
    except np.linalg.LinAlgError:  # LAPACK refuses NaN and inf
        return _not_finite_linear(space, design, offset)
    resid = design @ coef - y if offset is None else design @ coef + offset - y
    chi2 = float(resid @ resid if w is None else w @ (resid * resid))
    if not math.isfinite(chi2):  # checked once on the answer instead of on every term up front
        return _not_finite_linear(space, design, offset)
    values = dict(space.values)
    values.update(zip(space.free, coef.tolist()))
    outcome = LSQOutcome(values, Status.CONVERGED, "solved directly (linear least squares)", 1, strategy="SVD",
                         factor=factor, residuals=resid)
    outcome.history = [chi2 / (float(np.sum(w)) if w is not None else problem.n)]
    return outcome


def _not_finite_linear(space, design: np.ndarray, offset) -> LSQOutcome:
    """A linear model whose terms are not finite at some data points: nothing to solve."""
    from ..optim.lm import not_finite_message

    terms = design if offset is None else np.column_stack([design, np.broadcast_to(offset, len(design))])
    message = not_finite_message(terms, "for any parameter values", "change the formula, or leave out those rows")
    return LSQOutcome(dict(space.values), Status.NOT_FINITE, message, 0, strategy="SVD")


def _solve_lm(problem: LeastSquaresProblem, *, max_iter: int, tol: float | None, callback,
              compile="auto") -> LSQOutcome:
    w = problem.numpy()[2]
    y_norm = math.sqrt(problem.data_squared())  # ||sqrt(w) y||
    # a stop at a relative cost change tol leaves a residual cosine with the Jacobian's columns of
    # ~sqrt(tol): a given tol asks that much stationarity (before: tol=1e-4 ended 21 of 30 decays
    # "stalled" at the optimum, the test wanting 1e-6 whatever tol)
    loose = {"ftol": tol, "xtol": tol, "stationary": max(LMOptions.stationary, math.sqrt(tol))} if tol is not None else {}
    options = LMOptions(max_iter=max_iter, residual_floor=residual_floor(_EPS64) * y_norm, **loose)
    lm_cb = None
    if callback is not None:
        def lm_cb(it, cost):
            return callback(it, problem.mean_loss(cost))
    space = problem.space
    # Bounds are a box for Levenberg-Marquardt in the parameters themselves (no transform: a
    # start on a bound has the model's own slope there); steps are reflected off a bound or
    # stop short of it, and a converged point moves onto the bounds it pushes against
    # (gradfit.optim.box).
    bounds = None
    if space.has_bounds:
        bounds = (np.array([space.lower[n] for n in space.free]), np.array([space.upper[n] for n in space.free]))
    # A Jacobian too large to hold: the exact reduced problem, built in chunks (lsq/chunked.py)
    chunked = use_chunks(problem)
    reducer = Reducer(problem) if chunked else None
    native, key = (None, None)
    if compile is not False and bounds is None and not chunked and callback is None:
        native, key = _native_run(problem, build=compile is True)
    if native is None:
        residual, jacobian = reducer.functions() if chunked else problem.lm_functions(internal=False)
    else:  # made only if a strategy needs them (a start the native kernel leaves to lm.py)
        made = []  # (a list, not functools.cache: wrapping a function costs microseconds per fit)

        def functions():
            if not made:
                made.extend(problem.lm_functions(internal=False))
            return made

        def residual(u):
            return functions()[0](u)

        def jacobian(u):
            return functions()[1](u)
    u0 = np.array([space.values[n] for n in space.free], dtype=np.float64)
    started = time.perf_counter()
    if native is not None:  # (lm.py runs under its own errstate where the kernel leaves a start to it)
        out, strategy = robust_levenberg_marquardt(residual, u0, jacobian=jacobian, options=options, run=native)
    else:
        with np.errstate(all="ignore"):  # trial steps may overflow; LM rejects them
            out, strategy = robust_levenberg_marquardt(residual, u0, jacobian=jacobian, options=options,
                                                       callback=lm_cb, bounds=bounds)
    if key is not None and native is None:  # what the native kernel would have saved (tiering)
        add_eager_seconds(key, time.perf_counter() - started)
    elif out.native:  # (not where the kernel left a start that is not finite to lm.py)
        strategy += "; native kernel"
    if chunked:
        strategy += f"; chunked ({'QR' if reducer.qr else 'Gram'})"
        if out.status == Status.NOT_FINITE and out.iterations == 0:  # name data rows, not reduced ones
            out.message = not_finite_report(problem, out.x)
    gram_eigh = _final_stationarity(out, bounds, options, stationary_threshold(tol))
    if space.ties:
        import torch

        with torch.no_grad():
            full = space.full(torch.as_tensor(out.x, dtype=torch.float64), internal=False)
        values = dict(zip(space.names, full.tolist()))
    else:
        values = dict(space.values)
        values.update(zip(space.free, out.x.tolist()))
    # The residuals at these very values are what the statistics would recompute: hand them on
    # (unweighted: divided by sqrt(w), to rounding, where no weight is near underflow)
    residuals = None
    if problem.numpy_ready and not space.ties and not chunked:
        residuals = out.residuals if w is None else _unweighted(out.residuals, w, problem.plain_residuals)
    return LSQOutcome(values, out.status, out.message, out.iterations, [problem.mean_loss(c) for c in out.history],
                      strategy,
                      residuals=residuals,
                      jacobian=out.jacobian if not space.ties else None, gram_eigh=gram_eigh,
                      chisqr=2.0 * out.cost)


def _unweighted(residuals: np.ndarray | None, w: np.ndarray, plain: bool) -> np.ndarray | None:
    """f - y from the weighted residuals sqrt(w) (f - y), or None (not plain residuals, or a
    weight of 0 or below 1e-300 that the division cannot undo: the statistics evaluate the model)."""
    if residuals is None or not plain:
        return None
    sw = np.sqrt(w)
    if not float(sw.min()) > 1e-150:
        return None
    return residuals / sw


def _native_run(problem: LeastSquaresProblem, *, build: bool = False):
    """(run, key): the native kernel's Levenberg-Marquardt run for this unbounded fit
    (:mod:`gradfit.optim.native_single`) or None, and the key of its eager time in
    :data:`gradfit.lsq.compiled.EAGER_SECONDS` (None when no kernel covers it). As fit_many's
    compile="auto": a kernel already built (in this process or the disk cache) runs at once;
    one is built once the torch-free eager loop has spent more on this model in this process
    than two builds would cost (a JIT's tiering), so a single fit never waits for a build;
    ``build=True`` (compile=True) builds it now."""
    model, space = problem.model, problem.space
    expression = getattr(model, "expression", None)
    if expression is None or space.ties or not problem.plain_residuals or model_strategy(model) != "symbolic":
        return None, None
    inputs, y, weights = problem.numpy()
    n = problem.n
    if not all(isinstance(v, np.ndarray) and v.shape == (n,) for v in inputs.values()):
        return None, None
    names, columns = tuple(space.names), tuple(inputs)
    key = ("single", expression, names, columns)
    found = loaded_kernel(model, names, columns)
    if found is None:
        found, _ = kernel(model, names, columns, build=build or build_single_now(key, len(names)))
    if found is None:
        return None, key
    return found.runner(inputs, y, weights, space.values, tuple(space.free)), key


def build_single_now(key, n_params: int) -> bool:
    """Whether to build the single-fit kernel of ``key`` now (tests force it)."""
    return spent_enough(key, n_params, "single")


def _final_stationarity(out, bounds, options, threshold: float) -> tuple | None:
    """The end-point stationarity test fit_many uses too (:func:`gradfit.stats.batch_range_cosine`:
    the residuals' cosine with the Jacobian's range, projected at active bounds): a converged
    run above the threshold is stalled. In place. Returns the eigendecomposition of the
    column-scaled Gram matrix when the test used it (the covariance reuses it), else None."""
    if out.status != Status.CONVERGED or out.jacobian is None or math.sqrt(2.0 * out.cost) <= options.residual_floor:
        return None
    jac, r = out.jacobian, out.residuals
    held = None
    eig = measure = None
    if bounds is None and out.gram_eigh is not None:  # the native kernel's, at this very point
        eig, measure = out.gram_eigh, out.range_cosine  # (no J^T r needed)
    else:
        g = jac.T @ r
        if bounds is not None:
            held = ((out.x <= bounds[0]) & (g > 0)) | ((out.x >= bounds[1]) & (g < 0))
    if eig is None and (held is None or not held.any()):
        # one P x P eigendecomposition of J^T J (the solver's last, for long data) instead of
        # the SVD route; None when the Gram matrix does not serve
        eig = scaled_gram_eigh(jac.T @ jac if out.gram is None else out.gram)
        measure = range_cosine_from_gram(eig, g, math.sqrt(2.0 * out.cost))
    if measure is None:
        measure = float(batch_range_cosine(jac[None], r[None], None if held is None else held[None])[0])
    if not measure <= threshold:
        out.status = Status.STALLED
        out.message = (f"stopped at a point that is not stationary (the residuals' cosine with the Jacobian's "
                       f"range is {measure:.2e} > {threshold:.0e}); try another starting point")
    return eig


def refine_residuals(problem: LeastSquaresProblem, values: dict, steps: int = 3, *,
                     chisqr: float | None = None) -> dict:
    """Gauss-Newton refinement with residuals in 40-digit arithmetic (mixed-precision
    iterative refinement). Only worth it when the residuals sit near float64 rounding.
    ``chisqr``: chi-square at ``values`` when the caller has it (saves evaluating the model)."""
    expr = getattr(problem.model, "expression", None)
    if expr is None or problem.n > 20_000 or problem.space.ties:
        return values
    space = problem.space
    inputs, y, w = problem.numpy()
    chi2 = chi_square(problem, values) if chisqr is None else chisqr
    if not math.isfinite(chi2) or chi2 > 1e-20 * problem.data_squared():
        return values  # not finite, or residuals well above float64 rounding: nothing to gain
    from ..formula.precise import residuals_mp
    current = dict(values)
    lower = np.array([space.lower[n] for n in space.free])
    upper = np.array([space.upper[n] for n in space.free])
    _, jacobian = problem.lm_functions(internal=False)
    try:
        r = residuals_mp(expr, inputs, y, w, current)
        for _ in range(steps):
            v = np.array([current[n] for n in space.free])
            with np.errstate(all="ignore"):
                jac = jacobian(v)
            if not (np.isfinite(jac).all() and np.isfinite(r).all()):
                break
            step = np.linalg.lstsq(jac, -r, rcond=None)[0]
            new = v + step
            if not ((lower <= new) & (new <= upper)).all():  # refinement never leaves the box
                break
            trial = dict(current)
            trial.update(zip(space.free, new.tolist()))
            r_new = residuals_mp(expr, inputs, y, w, trial)
            if not float(r_new @ r_new) < float(r @ r):  # NaN (the model undefined at the trial) too
                break
            current, r = trial, r_new
    except (ArithmeticError, TypeError, ValueError, np.linalg.LinAlgError):
        # mpmath or LAPACK refusing a point where the model is undefined: keep what we have
        pass
    return current
