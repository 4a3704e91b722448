"""The engine behind ``fit_many(..., shared=[...])``: one joint least-squares (or Poisson
likelihood) problem.

Data flow: validated numpy arrays (fits as the leading dimension) -> tensors for the whole
batch (every iteration needs every fit: no chunks) -> ``global_lm.init`` / ``global_lm.step``
until the joint problem finishes -> the joint covariance -> a :class:`GlobalSolution` of numpy
arrays.

The residuals and Jacobian come from :func:`gradfit.models.jacobian.batch_residual_and_jacobian`
with the shared parameters' values broadcast to every fit; the evaluation runs in the working
dtype, the normal-equation blocks, the Schur sums and the parameters in float64.

Covariance (the inverse of the undamped joint normal matrix, by blocks, times chi2 / dof):
the shared block is S0^-1 with S0 = D - sum_b C_b^T A_b^-1 C_b; fit b's local block is
A_b^-1 + A_b^-1 C_b S0^-1 C_b^T A_b^-1, its cross block with the shared ones -A_b^-1 C_b S0^-1:
together fit b's (P, P) covariance, which its bands need (f_b depends on (local_b, shared)
only). dof = sum of the points used - (fits x free local parameters + free shared
parameters). A fit whose local block is rank-deficient at the end (the rank test of
lsq/batched on its scaled normal matrix) is reported singular and left out of S0.

``likelihood="poisson"`` (joint Poisson maximum likelihood, as lsq/batched for independent
fits): with r = mu - y, each fit's blocks are those of the Fisher weights w / mu
(:func:`gradfit.likelihood.batch_poisson_deviance`): A = J^T diag(w/mu) J is the Fisher
information, g = J^T diag(w/mu) (mu - y) half the deviance's gradient, and the per-fit
deviance takes chi-square's place in every test of global_lm.step. A local step that would
take a zero count's mean through 0 stops short of that edge (optim/positive_step.py: an
optimum there, a background or amplitude of 0, is reached); any other trial with a mean <= 0
at a used point has deviance +inf, so the joint step is rejected and the damping rises; the
floor and the rounding level are on the Pearson scale sqrt(y). The start: when the given one
has such a mean in any fit (any process), every fit starts from the joint least-squares fit
from it (one rule for all, so the shared values stay one); a fit still infeasible there
leaves the joint problem as not_finite. The covariance is the inverse joint Fisher
information by the same blocks, not scaled (the Cramer-Rao bound); the joint statistics are
the deviance, loglike, AIC/BIC (2k - 2 logL, k ln n - 2 logL), Pearson's chisqr and
redchi = chisqr / dof.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..models.jacobian import batch_residual_and_jacobian
from ..models.parameters import any_finite_bound
from ..optim.batch_lm import residual_floor2
from ..stats import RANK_TOL, batch_statistics, undetermined
from ..status import Status
from .compiled import NATIVE_MARGIN, add_eager_seconds, native_build_seconds, spent_enough

__all__ = ["DEFAULT_MAX_ITER", "GlobalSolution", "solve_global"]

#: iterations of the joint problem when the caller gives none (one iteration moves every fit)
DEFAULT_MAX_ITER = 200


@dataclass
class GlobalSolution:
    """What the engine found (numpy): per fit as in :class:`~gradfit.lsq.batched.BatchedSolution`
    (params and stderr (B, P) with the shared columns repeated), plus the shared values and
    errors by name and the statistics of the joint fit (scalars)."""

    params: np.ndarray
    stderr: np.ndarray
    chisqr: np.ndarray
    n_used: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    shared: dict
    shared_stderr: dict
    joint_stats: dict
    timings: dict = field(default_factory=dict)
    #: likelihood="poisson": float64 deviance, pearson, loglike (B,) at params (NaN where none)
    likelihood: dict | None = None
    #: (B, P, P) each fit's block of the joint covariance over its parameters (local and shared, in
    #: the model's order; 0 for fixed, NaN for fits outside the joint problem): its bands
    covariance: np.ndarray | None = None


def solve_global(model, names, shared, inputs: dict, y: np.ndarray, w: np.ndarray, theta0: np.ndarray,
                 lower: np.ndarray, upper: np.ndarray, free: np.ndarray, *, tol: float, max_iter: int, dtype, device,
                 reduce=None, chunk_size: int | None = None, likelihood: str | None = None,
                 compile="auto", absolute_sigma: bool = False) -> GlobalSolution:
    """Fit ``model`` to every row of ``y`` jointly, the parameters named in ``shared`` taking one
    value for all fits (this process's fits; ``reduce`` sums float64 tensors over every
    process's fits under torchrun, None in one process).

    ``theta0``, ``lower``, ``upper`` are (B, P) (the shared columns equal in every row), ``free``
    (P,) 1.0 for varying parameters; ``chunk_size`` fits are evaluated at a time (default: near
    the CPU caches, the whole batch on a GPU). ``likelihood="poisson"``: joint Poisson maximum
    likelihood (see the module docstring). ``compile``: "auto" runs the native C kernel
    (optim/native_global.py) for a formula without bounds, least squares, on the CPU in one
    process, when its library is already built (in the disk cache), or when the projected torch
    loop pays for building it; True builds it whenever it applies; False keeps the torch loop.
    Other arguments as :func:`gradfit.lsq.batched.solve_batched`.
    """
    import torch

    from ..likelihood import batch_poisson_deviance
    from ..optim.global_lm import RUNNING, init, normal_blocks, step
    from ..optim.positive_step import EdgePoints, edge_points

    reduce = reduce or _no_reduce
    names = tuple(names)
    i_s = [names.index(n) for n in shared]
    i_l = [j for j in range(len(names)) if j not in i_s]
    order = i_l + i_s
    n_fits = y.shape[0]
    n_used = (w > 0).sum(axis=1)
    free_l = tuple(float(free[j]) for j in i_l)
    free_s = tuple(float(free[j]) for j in i_s)
    n_free_l = int(sum(free_l))
    status0 = np.where(n_used < max(n_free_l, 1), Status.TOO_FEW_POINTS.code, RUNNING)
    fused = getattr(model, "expression", None) is not None
    bounded = any_finite_bound(lower, upper, free)

    native = None  # the whole loop in C (optim/native_global.py) where it applies
    native_key = t_torch = native_note = None
    if compile is not False and not likelihood and not bounded and reduce is _no_reduce and fused \
            and device.type == "cpu":
        from ..optim.native_global import global_kernel

        native_key = ("global", model.expression, names, tuple(shared), str(dtype))
        build = compile is True or _worth_building(n_fits, y.shape[1], len(names)) or spent_enough(
            native_key, len(names), "global")
        native, why = global_kernel(model, tuple(names[j] for j in order), len(i_s), tuple(inputs), dtype,
                                    build=build)
        if native is None:  # the torch loop's time counts towards building the kernel (lsq/compiled.py)
            t_torch = time.perf_counter()
            native_note = why if build else None
    if native is not None:  # numpy in, numpy out: none of the torch loop's set-up
        t0 = time.perf_counter()
        state = _run_native(native, theta0[:, i_l], theta0[0, i_s], status0, inputs, y, w, free_l, free_s, dtype,
                            n_used, tol=tol, max_iter=max_iter)
        return _solution(model, names, shared, inputs, y, w, fused, dtype, device, state, time.perf_counter() - t0,
                         status0, n_used, free_l, free_s, i_l, i_s, order, reduce, likelihood=None, native=native,
                         restarted=0, ls_iterations=0, native_note=None, native_key=None, t_torch=None,
                         absolute_sigma=absolute_sigma, start=theta0)

    def t(a, dt=dtype):
        return torch.as_tensor(np.require(a, None, "CW"), dtype=dt, device=device)

    y_t = t(y)
    y_t = torch.nan_to_num(y_t, nan=0.0, posinf=0.0, neginf=0.0)  # NaN points have weight 0
    w_t = t(w)
    zero_t = (y_t == 0) & (w_t > 0) if likelihood else None  # Poisson: the counts whose mean may reach 0
    inputs_t = {k: t(v) for k, v in inputs.items()}
    from .batched import CPU_CHUNK_BYTES

    unit_weights = bool((w == 1).all())  # no weights to apply, no point to mask
    # evaluations by chunks of fits near the CPU caches (as lsq/batched), the whole batch on a GPU
    itemsize = torch.finfo(dtype).bits // 8
    size = n_fits if device.type != "cpu" else max(1024, CPU_CHUNK_BYTES // (max(y.shape[1], 1) * itemsize))
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        size = int(chunk_size)
    chunks = []
    for lo in range(0, n_fits, size):
        sl = slice(lo, min(lo + size, n_fits))
        x_sl = {k: (v[sl] if v.dim() == 2 else v) for k, v in inputs_t.items()}
        chunks.append((sl, batch_residual_and_jacobian(model, names, x_sl, y_t[sl], fused=fused)))

    # the parameters in the model's order from [local, shared] (None: that order already)
    back = None if order == sorted(order) else torch.as_tensor(np.argsort(order), device=device)

    def poisson_blocks(r, cols, rows, offset=0):
        # Fisher scoring: the weights w / mu, the deviance in chi-square's place, the positivity edge
        dev, fisher = batch_poisson_deviance(y_t[rows], r + y_t[rows], w_t[rows])
        _, n, g = normal_blocks(r, cols, fisher)
        return dev.double(), n, g, edge_points(r + y_t[rows], cols, zero_t[rows], offset, fisher)

    def make_blocks(poisson: bool):
        def blocks(local, shared_values, fits=None):
            theta = torch.cat([local, shared_values.expand(local.shape[0], len(i_s))], 1)
            theta = (theta if back is None else theta.index_select(1, back)).to(dtype)
            if fits is not None:  # these fits alone (global_lm's second-order correction; Poisson)
                x_k = {k: (v[fits] if v.dim() == 2 else v) for k, v in inputs_t.items()}
                r, jac = batch_residual_and_jacobian(model, names, x_k, y_t[fits], fused=fused)(theta)
                return poisson_blocks(r, [jac[j] for j in order], fits)
            parts = []
            for sl, rj in chunks:
                r, jac = rj(theta[sl])
                cols = [jac[j] for j in order]
                if poisson:
                    parts.append(poisson_blocks(r, cols, sl, sl.start))
                else:
                    parts.append(normal_blocks(r, cols, w_t[sl], unit_weights=unit_weights))
            if len(parts) == 1:
                return parts[0]
            out = [torch.cat(p) for p in list(zip(*parts))[:3]]
            return (*out, EdgePoints(*(torch.cat(p) for p in zip(*(q[3] for q in parts))))) if poisson else tuple(out)

        return blocks

    status0_t = torch.as_tensor(status0, dtype=torch.int64, device=device)
    box = None
    if bounded:
        box = (t(lower[:, i_l], torch.float64), t(upper[:, i_l], torch.float64), t(lower[0, i_s], torch.float64),
               t(upper[0, i_s], torch.float64))
    eps = float(torch.finfo(dtype).eps)
    n_used_t = torch.as_tensor(np.maximum(n_used, 1), dtype=torch.float64, device=device)

    def run(local0, shared0, poisson: bool):
        # on the Pearson scale sqrt(y) for the deviance (as lsq/batched): the floor of an exact
        # fit (deviance 0 lies below it) and the rounding of the means (eps mu / sqrt(mu)); a zero
        # count counts as one (all-zero counts: a deviance of 0 still has a scale to reach)
        scale = torch.sqrt(y_t.clamp(min=1.0)) if poisson else y_t
        floor2 = torch.where(status0_t == RUNNING, residual_floor2(scale, w_t).double(), 0.0).sum()
        floor2 = float(reduce(floor2.reshape(1))[0])
        # the rounding of the model values in the evaluation dtype (global_lm.step's rounding2)
        rounding2 = (4.0 * eps) ** 2 * (w_t * scale * scale).double().sum(-1) / n_used_t
        state = init(local0, shared0, status0_t, per_fit_damping=poisson)
        blocks = make_blocks(poisson)
        for _ in range(max_iter):
            state = step(blocks, state, box, free_l, free_s, tol, floor2=floor2, reduce=reduce, rounding2=rounding2)
            if state.status != RUNNING:
                break
        return state

    local0, shared0 = t(theta0[:, i_l], torch.float64), t(theta0[0, i_s], torch.float64)
    t0 = time.perf_counter()
    restarted, ls_iterations = 0, 0
    if likelihood:  # an infeasible start anywhere: every fit starts from the joint least-squares fit
        dev0 = make_blocks(True)(local0, shared0)[0]
        restarted = int(reduce(((status0_t == RUNNING) & ~torch.isfinite(dev0)).sum().double().reshape(1))[0])
        if restarted:
            ls = run(local0, shared0, False)
            local0, shared0, ls_iterations = ls.local.clone(), ls.shared.clone(), ls.iterations
    state = run(local0, shared0, bool(likelihood))
    return _solution(model, names, shared, inputs, y, w, fused, dtype, device, state, time.perf_counter() - t0,
                     status0, n_used, free_l, free_s, i_l, i_s, order, reduce, likelihood=likelihood, native=None,
                     restarted=restarted, ls_iterations=ls_iterations, native_note=native_note, native_key=native_key,
                     t_torch=t_torch, absolute_sigma=absolute_sigma, start=theta0)


def _run_native(native, local0, shared0, status0, inputs: dict, y, w, free_l, free_s, dtype, n_used, *, tol: float,
                max_iter: int):
    """The joint loop in C (optim/native_global.py) from numpy data: y with NaN points 0 (their
    weight is 0), both in the evaluation dtype; the residual floor and the rounding allowance of
    the torch loop (global_lm.step), computed the same way in numpy."""
    from ..optim.batch_lm import EPS64, RESIDUAL_FLOOR
    from ..optim.global_lm import RUNNING

    real = np.float32 if str(dtype) == "torch.float32" else np.float64
    y64 = np.asarray(y, dtype=np.float64)
    if not np.isfinite(y64).all():  # (one pass proves the common case clean; a copy only otherwise)
        y64 = np.where(np.isfinite(y64), y64, 0.0)
    eps = float(np.finfo(real).eps)
    # w y^2 per fit in float64 (the torch loop forms it in the evaluation dtype: the same to rounding)
    wyy = np.einsum("bm,bm,bm->b", w, y64, y64)
    # (batch_lm.residual_floor2, summed over the fits in the problem)
    floor2 = max(RESIDUAL_FLOOR * EPS64, 100.0 * eps) ** 2 * float(wyy[status0 == RUNNING].sum())
    rounding2 = (4.0 * eps) ** 2 * wyy / np.maximum(n_used, 1)
    unit = bool((w == 1).all())
    return native.run(np.asarray(local0, dtype=np.float64), np.asarray(shared0, dtype=np.float64), status0,
                      {k: np.ascontiguousarray(v, dtype=real) for k, v in inputs.items()},
                      y64.astype(real, copy=False), None if unit else np.ascontiguousarray(w, dtype=real),
                      free_l, free_s, tol=tol, max_iter=max_iter, floor2=floor2, rounding2=rounding2)


def _solution(model, names, shared, inputs, y, w, fused, dtype, device, state, elapsed: float, status0, n_used,
              free_l, free_s, i_l, i_s, order, reduce, *, likelihood, native, restarted: int, ls_iterations: int,
              native_note, native_key, t_torch, absolute_sigma: bool = False, start) -> GlobalSolution:
    """The GlobalSolution of a finished joint loop (native or torch): the covariance and the
    results in the names' order."""
    import torch

    from ..optim.global_lm import RUNNING
    from .end_points import likelihood_statistics

    n_fits = y.shape[0]

    def t(a, dt=dtype):
        return torch.as_tensor(np.require(a, None, "CW"), dtype=dt, device=device)

    if t_torch is not None:
        add_eager_seconds(native_key, time.perf_counter() - t_torch)
    joint = Status.MAX_ITERATIONS.code if state.status == RUNNING else state.status
    extra = None
    if likelihood:  # float64 statistics at the end point (lsq/end_points); chisqr is the deviance
        at = np.empty((n_fits, len(names)))
        at[:, i_l], at[:, i_s] = state.local.cpu().numpy(), state.shared.cpu().numpy()[None, :]
        extra = likelihood_statistics(model, names, fused, inputs, y, w, slice(0, n_fits), at, device)
        state.chi2 = torch.where(torch.isfinite(state.chi2), t(np.nan_to_num(extra["deviance"], nan=np.inf),
                                                               torch.float64), state.chi2)
    if native is not None and not likelihood:
        se_l, se_s, singular, stats, cov_ls = native.covariance(
            state, free_l, free_s, n_used, RANK_TOL,
            lambda d_tot, ctx, n_inc, n_pts, chi2: _joint_scale(d_tot, ctx, n_inc, n_pts, chi2, free_l, free_s,
                                                                absolute_sigma=absolute_sigma))
    else:
        se_l, se_s, singular, stats, cov_ls = _covariance(state, free_l, free_s, n_used, reduce, extra,
                                                          absolute_sigma)
    if stats.get("n", 1) == 0:  # no fit has a usable point: nothing determines the shared parameters
        from ..errors import warn_user

        warn_user("no fit has a usable point (every fit ends too_few_points): the shared parameters are "
                  "undetermined (NaN)")
        state.shared = torch.full_like(state.shared, float("nan"))
        se_s = np.full(len(free_s), np.nan)
        stats = {k: (v if k in ("n", "n_params") else float("nan")) for k, v in stats.items()}
    included = state.included.cpu().numpy() & ~singular
    fit_status = state.fit_status.cpu().numpy()
    status = np.where(included, joint, np.where(singular, Status.SINGULAR.code, fit_status)).astype(np.int8)
    params = np.empty((n_fits, len(names)))
    params[:, i_l] = state.local.cpu().numpy()
    params[:, i_s] = state.shared.cpu().numpy()[None, :]
    stderr = np.full((n_fits, len(names)), np.nan)
    stderr[:, i_l] = np.where(included[:, None], se_l, np.nan)
    stderr[:, i_s] = se_s[None, :]
    if likelihood:  # a Cramer-Rao error that dwarfs its parameter: not determined (gf.fit's rule)
        with np.errstate(invalid="ignore"):
            loose = undetermined(stderr, params, start, float(torch.finfo(dtype).eps))
        loose = loose[:, i_l].any(axis=1) | loose[:, i_s].any()
        status = np.where(loose & (status == Status.CONVERGED.code), Status.SINGULAR.code, status).astype(np.int8)
    back_np = np.argsort(order)  # from (local, shared) back to names' order; NaN outside the joint fit
    covariance = np.asarray(cov_ls, dtype=np.float64)[:, back_np[:, None], back_np[None, :]]
    covariance[~included] = np.nan
    chisqr = np.where(np.isfinite(state.chi2.cpu().numpy()), state.chi2.cpu().numpy(), np.nan)
    iterations = np.where(status0 == RUNNING, state.iterations + ls_iterations, 0).astype(np.int32)
    timings = {"fit_s": elapsed, "warmup_s": 0.0, "fits": n_fits, "fits_per_s": n_fits / max(elapsed, 1e-12),
               "path": ("fused" if fused else "general") + ", global", "compiled": False, "native": native is not None,
               "device": str(device),
               "iterations": state.iterations + ls_iterations}
    if restarted:
        timings["restarted"] = restarted
    if native_note:
        timings["native_kernel"] = native_note
    shared_values = state.shared.cpu().numpy().tolist()
    return GlobalSolution(params, stderr, chisqr, n_used, status, iterations, dict(zip(shared, shared_values)),
                          dict(zip(shared, np.asarray(se_s, dtype=float).tolist())), stats, timings, extra, covariance)


def _no_reduce(t):
    """The sum over processes in one process: the tensor itself."""
    return t


def _worth_building(n_fits: int, n_points: int, n_params: int) -> bool:
    """compile="auto": build the native global kernel when the torch loop is projected to take
    longer than NATIVE_MARGIN builds (lsq/compiled.py): ~10 us per fit and iteration at
    4 parameters and 32 points (the torch loop's measured cost at 1,000-100,000 fits: 1.3 ms
    per iteration of 1,000 fits, mostly fixed cost; ~3.7 us per fit at 100k), ~8 iterations."""
    projected = 8 * (1.3e-3 + 0.45e-6 * n_fits * n_points * n_params / 128)
    return projected > NATIVE_MARGIN * native_build_seconds(n_params, "global")


def _joint_scale(d_tot, ctx, n_inc, n_pts, chi2, free_l, free_s, likelihood=None, totals=(),
                 absolute_sigma: bool = False):
    """The joint statistics and the shared block of the joint covariance from the sums over the
    fits in the joint problem: (stats, scale, S0^-1 (P_s, P_s) numpy with zero rows and columns
    for fixed shared parameters, or None, factored). S0 = D - sum C^T A^-1 C (the Schur complement
    at lam = 0); ``scale`` is chi2 / dof (1 for a likelihood: the Cramer-Rao bound); S0^-1 is None
    where S0 does not factor (``factored`` False) or the scale is not finite."""
    ps = d_tot.shape[0]
    active = np.array([bool(v) for v in free_s])
    both = active[:, None] & active[None, :]
    s0 = np.where(both, d_tot - ctx, np.eye(ps))
    k = round(n_inc) * int(sum(free_l)) + int(sum(free_s))
    if likelihood is not None:  # Cramer-Rao: the inverse Fisher information, absolute
        from ..likelihood import batch_poisson_fit_statistics

        joint = batch_poisson_fit_statistics(*(np.array([v]) for v in totals), np.array([round(n_pts)]), k)
    else:
        joint = batch_statistics(np.array([chi2]), np.array([round(n_pts)]), k)
    stats = {key: v[0].item() for key, v in joint.items()}
    stats["n_params"] = k
    dof = stats["dof"]
    scale = 1.0 if likelihood is not None or absolute_sigma else chi2 / dof if dof > 0 else float("nan")
    if ps == 1:  # one shared parameter (the common case): numpy.linalg's checks cost more than the algebra
        s00 = float(s0[0, 0])
        if not (s00 > 0 and math.isfinite(s00)):
            return stats, scale, None, False
        if not math.isfinite(scale):
            return stats, scale, None, True
        return stats, scale, np.where(both, 1.0 / s00, 0.0), True
    try:
        factor = np.linalg.cholesky(s0) if np.isfinite(s0).all() else None
    except np.linalg.LinAlgError:
        factor = None
    if factor is None or not np.isfinite(factor).all():
        return stats, scale, None, False
    if not np.isfinite(scale):
        return stats, scale, None, True
    inv_factor = np.linalg.inv(factor)
    return stats, scale, np.where(both, inv_factor.T @ inv_factor, 0.0), True


def _covariance(state, free_l, free_s, n_used, reduce, likelihood=None, absolute_sigma: bool = False):
    """Standard errors of the local (B, P_l) and shared (P_s,) parameters from the joint
    covariance, the fits found singular, and the joint statistics. ``likelihood``: the per-fit
    float64 deviance, pearson and loglike of a Poisson fit (its normal matrix is the Fisher
    information: the covariance is its inverse, unscaled; the statistics are the likelihood's)."""
    import torch

    from ..optim.batch_solve import damped_solve

    a, c, inc = state.a, state.c, state.included
    b, pl = state.local.shape
    ps = state.shared.shape[0]
    zero_lam = torch.zeros(b, dtype=torch.float64, device=a.device)
    # one factorization of each local block for [I, C]: A^-1 (its diagonal) and A^-1 C
    # (damped_solve solves A d = -g; fixed parameters get zero rows)
    eye_l = torch.eye(pl, dtype=torch.float64, device=a.device).expand(b, pl, pl)
    both, ok = damped_solve(a, -torch.cat([eye_l, c], dim=-1), zero_lam, free_l)
    var_l = torch.diagonal(both[:, :, :pl], dim1=-2, dim2=-1)
    # the rank screen of lsq/batched: F * trace(M^-1) < 1 / RANK_TOL^2 for the scaled block M
    trace_inv = (var_l * torch.diagonal(a, dim1=-2, dim2=-1)).sum(-1)
    ok = ok & torch.isfinite(trace_inv) & (sum(free_l) * trace_inv < 1.0 / RANK_TOL**2)
    singular = inc & ~ok
    inc = inc & ok
    x, cm, d = both[:, :, pl:], c, state.d  # A^-1 C, C, D over the fits in the joint problem
    if not bool(inc.all()):
        x, cm, d = (torch.where(inc[:, None, None], v, 0.0) for v in (x, cm, d))
    keys = ("deviance", "pearson", "loglike") if likelihood is not None else ()
    # per fit: 1, points, chi2 (and the likelihood's sums), summed over the fits in the joint problem
    per_fit = torch.stack([torch.ones_like(state.chi2), torch.as_tensor(n_used, dtype=torch.float64, device=a.device),
                           state.chi2, *(torch.as_tensor(likelihood[key], dtype=torch.float64, device=a.device)
                                         for key in keys)], 1)
    parts = [d.sum(0).flatten(), (cm.transpose(1, 2) @ x).sum(0).flatten(),
             torch.where(inc[:, None], per_fit, 0.0).sum(0)]
    sums = reduce(torch.cat(parts))
    d_tot, ctx = sums[:ps * ps].reshape(ps, ps).cpu().numpy(), sums[ps * ps:2 * ps * ps].reshape(ps, ps).cpu().numpy()
    n_inc, n_pts, chi2, *totals = sums[2 * ps * ps:].tolist()
    stats, scale, s_inv, factored = _joint_scale(d_tot, ctx, n_inc, n_pts, chi2, free_l, free_s, likelihood, totals,
                                                 absolute_sigma)
    if s_inv is None:
        nan_l = np.full((b, pl), np.nan)
        return nan_l, np.where(np.array(free_s) > 0, np.nan, 0.0), singular.cpu().numpy() | (
            inc.cpu().numpy() if not factored else False), stats, np.full((b, pl + ps, pl + ps), np.nan)
    s_inv = torch.as_tensor(s_inv, dtype=torch.float64, device=a.device)
    # fit b's block of the joint covariance over (local_b, shared), all a band needs:
    # [[A^-1 + X S0^-1 X^T, -X S0^-1], [-S0^-1 X^T, S0^-1]] * scale, with X = A^-1 C
    xs = x @ s_inv
    cov = torch.empty((b, pl + ps, pl + ps), dtype=torch.float64, device=a.device)
    cov[:, :pl, :pl] = both[:, :, :pl] + xs @ x.transpose(1, 2)
    cov[:, :pl, pl:] = -xs
    cov[:, pl:, :pl] = -xs.transpose(1, 2)
    cov[:, pl:, pl:] = s_inv
    cov = torch.where(inc[:, None, None], cov * scale, float("nan"))
    var_s = torch.diagonal(s_inv) * scale
    var_loc = (var_l + (xs * x).sum(-1)) * scale
    se_l = torch.sqrt(torch.clamp(var_loc, min=0.0)).cpu().numpy()
    se_l = np.where(np.array(free_l)[None, :] > 0, se_l, 0.0)
    se_s = torch.sqrt(torch.clamp(var_s, min=0.0)).cpu().numpy()
    return se_l, se_s, singular.cpu().numpy(), stats, cov.cpu().numpy()
