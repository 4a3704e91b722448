"""The end-point checks of fit_many's fits, after the batched Levenberg-Marquardt loop.

:func:`clear_end_points` certifies, from the working-precision normal equations the kernel
already holds, the fits that pass every test with a wide margin; :func:`check_end_points`
runs :func:`gradfit.stats.end_point_checks` (the one definition gf.fit uses too) on the
float64 Jacobian of the others: not_finite, singular (rank or a vanishing column), stalled
(the residual's cosine with the Jacobian's range above the threshold), and float64
standard errors.

For a Poisson fit (``likelihood="poisson"``) the same tests run on the Fisher-weighted
Jacobian and Pearson residuals, sqrt(w/mu) J and sqrt(w/mu) (mu - y) at the end point (the
deviance is stationary exactly where these residuals are orthogonal to the Jacobian's range),
and the standard errors are sqrt(diag(F^-1)) with F the Fisher information, unscaled;
:func:`likelihood_statistics` gives the float64 deviance, Pearson chi-square and
log-likelihood at the end points.
"""

from __future__ import annotations

import numpy as np

from ..models.jacobian import batch_residual_and_jacobian
from ..status import Status
from ..stats import end_point_checks, stationary_threshold, undetermined
from .compiled import COMPILE_FAILED, COMPILED, is_compile_failure, quiet

__all__ = ["clear_end_points", "check_end_points", "finish", "finish_chunk", "likelihood_statistics", "undetermined_fits",
           "weighted_at"]


def clear_end_points(state, full_rank, values: np.ndarray, start: np.ndarray, lower: np.ndarray,
                      upper: np.ndarray, y: np.ndarray, w: np.ndarray, free, *, eps: float,
                      threshold: float, good: np.ndarray | None = None) -> np.ndarray:
    """(B,) bool: fits whose working-precision normal equations already pass every end-point
    test of :func:`gradfit.stats.end_point_checks` with a wide margin, so the float64 re-check
    cannot change their status (a healthy batch then pays almost nothing for it).

    The range cosine is sqrt(g^T A^-1 g / chi2) from the normal matrix A = J^T W J and gradient
    g = J^T W r the kernel already holds (the same quantity as ||U^T r|| / ||r||, with error
    ~eps * cond(A) for a full-rank A, which ``full_rank`` bounds); it must be below half the
    threshold. Columns must be clearly above the vanishing limit, and no parameter may sit on a
    bound (the projected test is left to float64). ``good``: the range-cosine test already
    computed (the native kernel's finish), else computed here."""
    import torch

    from ..optim.batch_solve import damped_solve
    from ..stats import VANISH_FACTOR

    with torch.no_grad():
        if good is None:
            d, ok = damped_solve(state.a, state.g, torch.zeros_like(state.chi2), free)
            q = -(state.g * d).sum(-1)
            cos = torch.sqrt(torch.clamp(q, min=0.0) / state.chi2)
            good = (ok & torch.isfinite(cos) & (cos < 0.5 * threshold)).cpu().numpy()
        diag = torch.diagonal(state.a, dim1=-2, dim2=-1).double().cpu().numpy()
    cols = np.asarray(free, dtype=bool)
    size = np.maximum(np.maximum(np.abs(values), np.abs(start)), 1.0)
    ww = np.asarray(w, dtype=float)
    data_norm2 = np.einsum("bm,bm->b", np.where(ww > 0, y, 0.0) ** 2, ww)
    with np.errstate(over="ignore", invalid="ignore"):
        # ten times the vanishing limit, on squares: |J_j| size > 10 VANISH eps ||sqrt(w) y||
        strong = (diag * size * size > (10.0 * VANISH_FACTOR * eps) ** 2 * data_norm2[:, None])[:, cols].all(axis=1)
    interior = ((values > lower) & (values < upper))[:, cols].all(axis=1)
    return good & full_rank.cpu().numpy() & strong & interior


def check_end_points(model, names, fused, inputs, y, w, sl, params, stderr, chisqr, status, free, device, *,
                      start, box, tol: float, eps: float, clear: np.ndarray | None = None,
                      likelihood: str | None = None, absolute_sigma: bool = False) -> None:
    """Finish this chunk's converged and max_iterations fits, in place, by the end-point tests
    :func:`gradfit.fit` uses (:func:`gradfit.stats.end_point_checks`, on the float64 Jacobian
    at the end point): not_finite where the parameters or chi-square are not finite;
    singular where the Jacobian is rank-deficient (the SVD test, or a negligible column);
    a converged fit whose scaled (projected) gradient is above
    :func:`gradfit.stats.stationary_threshold` of ``tol`` becomes stalled; and a converged fit
    whose standard errors are not finite is singular. Standard errors come from the float64
    Jacobian (with a ``likelihood``: the Fisher-weighted ones, unscaled, see the module
    docstring; ``chisqr`` then holds deviances and is not changed; with ``absolute_sigma`` not
    scaled by chi2 / dof either)."""
    st = status[sl]
    ended = (st == Status.CONVERGED.code) | (st == Status.MAX_ITERATIONS.code)
    finite = np.isfinite(params[sl]).all(axis=1) & np.isfinite(chisqr[sl])
    st[ended & ~finite] = Status.NOT_FINITE.code
    # fits the working-precision normal equations already certify keep their status and
    # standard errors (see _clear_end_points)
    todo = np.nonzero(ended & finite & (True if clear is None else ~clear))[0]
    if todo.size:
        rows = sl.start + todo
        cols = np.nonzero(free)[0]
        jac, r, ww = _weighted_at(model, names, fused, inputs, y, w, rows, params[rows], free, device, likelihood)
        lower, upper = (b[todo][:, cols] for b in box)
        values = params[rows][:, cols]
        g = np.einsum("bmp,bm->bp", jac, r)
        held = ((values <= lower) & (g > 0)) | ((values >= upper) & (g < 0))
        if likelihood:  # the Pearson scale sum(w y^2 / mu) ~ sum(w y), a zero count as one (all zeros: a scale)
            data_norm = np.sqrt(np.einsum("bm,bm->b", np.where(w[rows] > 0, np.maximum(y[rows], 1.0), 0.0), w[rows]))
        else:
            yw = np.where(ww > 0, y[rows], 0.0) * np.sqrt(ww)
            data_norm = np.sqrt(np.einsum("bm,bm->b", yw, yw))
        check = end_point_checks(np.where(np.isfinite(jac), jac, 0.0), r, values, start[todo][:, cols], data_norm,
                                 eps=eps, held=held)
        sub = st[todo]
        sub[check.deficient] = Status.SINGULAR.code
        moving = (sub == Status.CONVERGED.code) & ~(check.gradient <= stationary_threshold(tol))
        sub[moving] = Status.STALLED.code
        dof = (w[rows] > 0).sum(axis=1) - len(cols)
        with np.errstate(divide="ignore", invalid="ignore"):
            unscaled = likelihood is not None or absolute_sigma
            scale = np.ones(len(rows)) if unscaled else np.where(dof > 0, chisqr[rows] / dof, np.nan)
            se = np.sqrt(check.var_unit * scale[:, None])
        stderr[rows[:, None], cols[None, :]] = se
        # undetermined standard errors are never "converged"
        sub[(sub == Status.CONVERGED.code) & ((dof > 0) | unscaled)
            & ~np.isfinite(se).all(axis=1)] = Status.SINGULAR.code
        st[todo] = sub
    status[sl] = st


def weighted_at(model, names, fused, inputs, y, w, rows, theta, free, device):
    """The weighted float64 Jacobian of the free parameters (k, M, F) and weighted residuals
    (k, M) at ``theta`` (k, P) for the fits ``rows`` (masked points are zero)."""
    jac, res, _ = _weighted_at(model, names, fused, inputs, y, w, rows, theta, free, device)
    return jac, res


def _weighted_at(model, names, fused, inputs, y, w, rows, theta, free, device, likelihood=None):
    """weighted_at, and the weights (k, M) applied: ``w``, or for a Poisson fit the Fisher
    weights w / mu at ``theta`` (0 where mu <= 0)."""
    import torch

    def t(a):
        return torch.as_tensor(np.require(a, None, "CW"), dtype=torch.float64, device=device)

    sub_inputs = {k: t(v[rows] if v.ndim == 2 else v) for k, v in inputs.items()}
    used = w[rows] > 0
    y_rows = np.where(used, y[rows], 0.0)
    fn = batch_residual_and_jacobian(model, names, sub_inputs, t(y_rows), fused=fused)
    with torch.no_grad():
        res, jac = fn(t(theta))
    cols = [j for j, f in enumerate(free) if f]
    jac = torch.stack([jac[j] for j in cols], dim=-1).cpu().numpy()  # (k, M, F)
    ww = np.asarray(w[rows], dtype=float)
    res = np.where(used, res.cpu().numpy(), 0.0)
    if likelihood == "poisson":
        mu = res + y_rows
        with np.errstate(divide="ignore", invalid="ignore"):
            ww = np.where(used & (mu > 0), ww / mu, 0.0)
    sw = np.sqrt(ww)
    return np.where(used[:, :, None], jac, 0.0) * sw[:, :, None], res * sw, ww


def likelihood_statistics(model, names, fused, inputs, y, w, sl, params, device) -> dict:
    """The float64 Poisson statistics of the fits ``sl`` at ``params[sl]``: (k,) arrays
    deviance, pearson (sum w (y - mu)^2 / mu) and loglike (:func:`gradfit.likelihood.
    batch_poisson_statistics`; NaN where the parameters or a used mean are not finite or the
    mean is not positive)."""
    import torch

    from ..likelihood import batch_poisson_statistics

    rows = np.arange(sl.start, sl.stop)
    theta = params[sl]
    ok = np.isfinite(theta).all(axis=1)

    def t(a):
        return torch.as_tensor(np.require(a, None, "CW"), dtype=torch.float64, device=device)

    sub_inputs = {k: t(v[rows] if v.ndim == 2 else v) for k, v in inputs.items()}
    w_t = t(w[rows])
    y_t = torch.where(w_t > 0, t(y[rows]), 0.0)
    theta_t = t(np.where(ok[:, None], theta, 0.0))
    with torch.no_grad():
        if fused:  # the value alone, broadcast over (k, 1) parameters: no partials needed here
            mu = torch.broadcast_to(model.forward(sub_inputs, {n: theta_t[:, j:j + 1] for j, n in enumerate(names)}),
                                    y_t.shape)
        else:
            mu = batch_residual_and_jacobian(model, names, sub_inputs, y_t, fused=False)(theta_t)[0] + y_t
        mu = torch.where(t(ok)[:, None] > 0, mu, float("nan"))
        return batch_poisson_statistics(y_t, mu, w_t)


def finish(a, chi2, n_used, free, floor: float, likelihood=None, absolute_sigma: bool = False):
    """Standard errors (B, P), per fit whether the working-precision normal matrix proves
    the Jacobian full rank, and the covariance (B, P, P) (optim/batch_solve.covariance_matrices).

    With M = D^-1 A D^-1 over the F free parameters (unit diagonal), lambda_max(M) <= trace(M)
    = F and lambda_min(M) >= 1 / trace(M^-1), and diag(M^-1) = diag(A^-1) * diag(A). So
    F * trace(M^-1) < 1 / floor proves lambda_min / lambda_max > floor >= RANK_TOL**2 (the
    rank test on singular values, squared), while the floor, far above the rounding level,
    keeps the computed inverse accurate enough for the bound to hold.
    """
    import torch

    from ..optim.batch_lm import standard_errors
    from ..optim.batch_solve import covariance_matrices, inverse_diagonal

    var_unit, ok = inverse_diagonal(a, free)
    se = standard_errors(a, chi2, n_used, free, (var_unit, ok), likelihood=likelihood, absolute_sigma=absolute_sigma)
    n_free = float(sum(free))
    diag = torch.diagonal(a, dim1=-2, dim2=-1)
    trace_inv = (var_unit * diag).sum(-1)
    full_rank = ok & torch.isfinite(trace_inv) & (n_free * trace_inv < 1.0 / floor)
    return se, full_rank, covariance_matrices(a, chi2, n_used, free, likelihood=likelihood,
                                              absolute_sigma=absolute_sigma)


def finish_chunk(use_compile: bool, state, n_used, free, floor: float, likelihood=None, absolute_sigma: bool = False):
    """Standard errors and the full-rank screen of one chunk (compiled when the step is; eager
    when torch.compile fails on it)."""
    if use_compile and "finish" not in COMPILE_FAILED:
        try:
            return _compiled_finish()(state.a, state.chi2, n_used, free, floor, likelihood, absolute_sigma)
        except Exception as exc:
            if not is_compile_failure(exc):
                raise
            COMPILE_FAILED["finish"] = type(exc).__name__
    return finish(state.a, state.chi2, n_used, free, floor, likelihood, absolute_sigma)


def _compiled_finish():
    """:func:`finish` torch.compile'd, once per process."""
    fn = COMPILED.get("finish")
    if fn is None:
        import torch

        fn = COMPILED["finish"] = quiet(torch.compile(finish, dynamic=True))
    return fn


def undetermined_fits(status, stderr, params, start, sl, eps: float) -> None:
    """Converged Poisson fits of ``sl`` with a parameter whose Cramer-Rao error dwarfs it
    (:func:`gradfit.stats.undetermined`, ``eps`` of the working precision) become singular, in
    place (gf.fit's rule; counts give the errors an absolute scale, which least squares' units
    do not)."""
    with np.errstate(invalid="ignore"):
        loose = undetermined(stderr[sl], params[sl], start[sl], eps).any(axis=1)
    st = status[sl]
    st[loose & (st == Status.CONVERGED.code)] = Status.SINGULAR.code
    status[sl] = st
