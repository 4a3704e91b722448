"""Batched Levenberg-Marquardt: one iteration for every fit of a batch at once.

Shaped like an optax transformation: :func:`init` builds the explicit :class:`BatchState`
from the starting parameters, and :func:`step` maps a state to the next one (pure functions
of tensors; the caller owns the loop, so it can compact, checkpoint or stop between steps).
``initial_state`` and ``lm_iteration`` are the same functions under their earlier names.

Each fit b has parameters theta[b] (P,), data y[b] (M,) with weights w[b] (0 masks a point).
An iteration is one pass over the data and a tiny P x P solve per fit, all as tensor math
over the batch (no Python loop over fits), in the scheme Gpufit uses:

1. at the trial parameters, evaluate residuals r, the Jacobian J (B, M, P), chi-square, and
   the normal equations A = J^T W J, g = J^T W r;
2. a fit accepts the trial if its chi-square did not rise (keeping A, g from step 1) and divides its
   damping by 10, otherwise multiplies the damping by 10 and keeps its last accepted point;
3. an accepted step converges the fit when |delta chi2| < tol * chi2, or when the residuals
   are at the working precision's rounding level (||sqrt(w) r|| <= floor * ||sqrt(w) y||,
   :func:`gradfit.stats.residual_floor`: 2.2e-12 in float64 as in :func:`gradfit.fit`,
   1.2e-5 in float32) and the next step predicts a relative reduction below tol;
4. the next trial solves (A + lam * diag(A)) d = -g by an unrolled Cholesky, with the
   coordinates resting on a bound that the gradient pushes outward held (the active set of
   :func:`gradfit.optim.lm.active_set`); a coordinate that would cross a box bound stops
   ``STEP_BACK`` of the way to it, and, where the stopped coordinate was already next to
   its bound (closer than ``NEAR`` of its step) and pushed there by its own gradient, the other
   coordinates' step is solved again with it fixed where it stopped
   (:func:`gradfit.optim.box.rest_of_step`). Iterates
   are never projected onto a bound during the run: the model can be flat there, a saddle no
   step leaves;
5. a fit that passes the convergence test with a coordinate whose one-dimensional
   Gauss-Newton minimum ``theta_i - g_i / A_ii`` lies on or beyond a bound
   (:func:`gradfit.optim.box.pushing`) is moved onto that bound instead
   (:func:`gradfit.optim.box.onto_bounds`): the move is the next trial; accepted (chi-square
   not higher) the fit runs on from the bound, where that coordinate is now held; rejected,
   the convergence at the last point stands (at most ``MAX_SNAPS`` moves per fit). So an
   optimum on a bound is reached exactly, as :func:`gradfit.fit` reaches it.

Every box rule is elementwise over the batch (masks and ``torch.where``, no Python branch per
fit), and with no bound crossed or active it takes exactly the unconstrained steps.

Fits that converged (or failed) are frozen: their parameters no longer change, so one fit's
trouble never disturbs another. Everything is written with broadcasting torch ops, so the
same function runs eagerly or under torch.compile.

Statuses are :class:`gradfit.status.Status` codes (``Status.code``): a first evaluation that is
not finite ends the fit as not_finite; a damping so large that no step can lower chi-square
ends it as stalled; a normal matrix whose damped Cholesky fails (a zero column: a parameter
the model does not depend on) ends it as singular. The caller checks converged fits for
finiteness and rank (lsq/batched.py), as :func:`gradfit.fit` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..status import Status
from .batch_solve import UNROLL_MAX, damped_solve, inverse_diagonal

__all__ = [
    "RUNNING",
    "STATUS",
    "BatchState",
    "damped_solve",
    "damping_share",
    "init",
    "initial_state",
    "inverse_diagonal",
    "lm_iteration",
    "normal_equations",
    "residual_floor2",
    "standard_errors",
    "step",
]

#: status code -> name, for every status (BatchResult.status holds these codes)
STATUS = {s.code: s.value for s in Status}
RUNNING = -1
CONVERGED = Status.CONVERGED.code
STALLED = Status.STALLED.code
SINGULAR = Status.SINGULAR.code
NOT_FINITE = Status.NOT_FINITE.code
#: initial damping: 0.1 converged more fits (99.98% vs 99.94% at Gpufit's 1e-3) in fewer
#: iterations on the Gaussian benchmark workload
LAMBDA0 = 0.1
#: the residual floor of gradfit.stats.residual_floor (optim/ sits above stats in the layers)
RESIDUAL_FLOOR = 1e4
EPS64 = 2.220446049250313e-16
#: fraction of the way to a bound that a step crossing it goes (scipy trf's theta)
STEP_BACK = 0.995
#: damping beyond which no step can lower chi-square any more (the fit is stalled)
LAMBDA_MAX = 1e15
#: how many times one fit is moved onto its bounds at convergence (as optim/lm.py's MAX_SNAPS)
MAX_SNAPS = 5
#: a coordinate closer to the bound it crosses than this fraction of its step is 'next to' it
NEAR = 0.1


@dataclass
class BatchState:
    theta: object  # (B, P) accepted parameters
    trial: object  # (B, P) parameters evaluated next
    lam: object  # (B,)
    chi2: object  # (B,) chi-square at theta (inf before the first evaluation)
    a: object  # (B, P, P) normal matrix at theta
    g: object  # (B, P) gradient J^T W r at theta
    status: object  # (B,) int: RUNNING or a Status code
    iterations: object  # (B,) int
    snaps: object = None  # (B,) int: moves onto the bounds so far (step 5)
    probing: object = None  # (B,) bool: ``trial`` is a move onto the bounds of a converged point
    #: (B, P) Poisson: the share of diag(A) that the damping scales at theta (1 less the zero
    #: counts' Fisher weight above the fit's largest other weight, :func:`damping_share`); None:
    #: all of it
    damping: object = None


def init(theta0, status0, likelihood: str | None = None) -> BatchState:
    """The state before the first step: parameters ``theta0`` (B, P), statuses ``status0`` (B,)
    (RUNNING, or a final code for fits that cannot start). The first evaluation is always
    accepted. ``likelihood="poisson"``: with the step's per-coordinate damping share (all of
    diag(A) until the first evaluation), so that every state has one shape (torch.compile)."""
    import torch

    b, p = theta0.shape
    return BatchState(theta=theta0.clone(), trial=theta0.clone(),
                      lam=torch.full((b,), LAMBDA0, dtype=theta0.dtype, device=theta0.device),
                      chi2=torch.full((b,), float("inf"), dtype=theta0.dtype, device=theta0.device),
                      a=torch.zeros(b, p, p, dtype=theta0.dtype, device=theta0.device),
                      g=torch.zeros(b, p, dtype=theta0.dtype, device=theta0.device),
                      status=status0.clone(), iterations=torch.zeros(b, dtype=torch.int32, device=theta0.device),
                      snaps=torch.zeros(b, dtype=torch.int32, device=theta0.device),
                      probing=torch.zeros(b, dtype=torch.bool, device=theta0.device),
                      damping=torch.ones_like(theta0) if likelihood == "poisson" else None)


def step(residual_and_jacobian, state: BatchState, y, w, lower, upper, free, tol: float, *,
         bounded: bool = True, unit_weights: bool = False, constants: tuple = (), floor2=None,
         likelihood: str | None = None) -> BatchState:
    """One batched LM iteration (see the module docstring). ``residual_and_jacobian(theta)``
    returns (f - y) (B, M) and the Jacobian as a list of P tensors (B, M) at ``theta``;
    ``free`` (P,) is 1.0 for parameters that vary and 0.0 for fixed ones. ``bounded=False``
    (a Python constant for the whole batch: every bound infinite) skips the box rules, which
    then change nothing, and their cost.

    Facts about the whole batch, as Python constants, let the kernel skip work that would
    change nothing: ``unit_weights`` (every weight is 1: no point masked, no weighting),
    ``constants`` ((j, c) pairs: the partial derivative j is the number c everywhere, so its
    products with the other columns are plain sums), ``floor2`` (the (B,) squared residual
    floor of step 3, computed once per batch by :func:`residual_floor2`), ``likelihood``
    (None: least squares; "poisson": Fisher scoring of the Poisson deviance, below).

    With ``likelihood="poisson"`` the residuals are mu - y (mu the model means) and the step
    is the same with the Fisher weights w / mu in place of w
    (:func:`gradfit.likelihood.batch_poisson_deviance`): A = J^T diag(w/mu) J is the Fisher
    information and g = J^T diag(w/mu) (mu - y) half the deviance's gradient, and the
    deviance takes chi-square's place in every test (acceptance, convergence, damping). A
    step that would take a zero count's mean through 0 stops short of it
    (:mod:`gradfit.optim.positive_step`); any other trial with a non-positive mean at a used
    point has deviance +inf: it is rejected and the damping rises; a *first* evaluation there
    ends the fit as not_finite (an infeasible start). ``floor2`` should then be
    :func:`residual_floor2` of sqrt(y) (the Pearson scale).

    The normal equations are sums over points and the P x P solve is an unrolled Cholesky,
    all elementwise over the batch, so torch.compile fuses an iteration into a few loops;
    above ``UNROLL_MAX`` parameters, a batched matrix product and batched LAPACK Cholesky.
    """
    import torch

    r, jac = residual_and_jacobian(state.trial)
    if likelihood == "poisson":
        from ..likelihood import batch_poisson_deviance

        chi2, fisher = batch_poisson_deviance(y, r + y, w, unit_weights=unit_weights)
        # every point used (unit weights): no masks to apply (a non-positive mean is rejected)
        pearson, a, g = normal_equations(r, jac, fisher, constants=constants, masked=not unit_weights)
        zero = (y == 0) if unit_weights else (y == 0) & (w > 0)
        share = damping_share(a, fisher, jac, zero)
    else:
        chi2, a, g = normal_equations(r, jac, w, unit_weights=unit_weights, constants=constants)
    if floor2 is None:
        floor2 = residual_floor2(y, w)
    running = state.status == RUNNING
    finite = torch.isfinite(torch.cat([chi2.unsqueeze(-1), g, a.flatten(1)], dim=-1)).all(-1)
    # "<=": at the optimum, rounding makes every further step cost the same or a hair more;
    # a step that does not raise chi-square is taken (and then converges the fit)
    accept = running & finite & (chi2 <= state.chi2)
    first = torch.isinf(state.chi2)
    # relative to chi-square (scale-free: data in small units converge like any other), or
    # residuals at the rounding level (an exact fit)
    settled = accept & ~first
    small = settled & ((state.chi2 - chi2).abs() < tol * chi2)
    at_floor = settled & (chi2 <= floor2)

    acc1 = accept.unsqueeze(-1)
    theta = torch.where(acc1, state.trial, state.theta)
    a_new = torch.where(acc1.unsqueeze(-1), a, state.a)
    g_new = torch.where(acc1, g, state.g)
    chi2_new = torch.where(accept, chi2, state.chi2)
    lam = torch.where(accept, state.lam * 0.1, torch.where(running, state.lam * 10.0, state.lam))
    if likelihood == "poisson":  # the damping of each coordinate at theta (a (B, P) lam)
        share_new = torch.where(acc1, share, torch.ones_like(theta) if state.damping is None else state.damping)
        lam_d = lam.unsqueeze(-1) * share_new
    else:
        share_new, lam_d = state.damping, lam
    status = state.status
    # a fit whose first evaluation is already not finite cannot start; a rejected move onto
    # the bounds leaves the convergence at the last point standing
    status = torch.where(running & first & ~finite, NOT_FINITE, status)
    status = torch.where(running & state.probing & ~accept, CONVERGED, status)

    if bounded:
        step_box, ok = _box_step(theta, a_new, g_new, lam_d, lower, upper, free)
        delta_theta = step_box - theta
    else:
        delta_theta, ok = damped_solve(a_new, g_new, lam_d, free)
        step_box = theta + delta_theta
    if likelihood == "poisson":  # a step through the positivity edge stops at it (optim/positive_step.py)
        from .positive_step import edge_return, positive_step

        hold = held_mask(theta, g_new, lower, upper) if bounded else None
        feasible = positive_step(delta_theta, r + y, jac, zero, a_new, lam_d, free, hold)
        take = accept if not bounded else accept & ((theta + feasible >= lower) & (theta + feasible <= upper)).all(-1)
        delta_theta = torch.where(take.unsqueeze(-1), feasible, delta_theta)
        # a trial rejected because the edge's curvature took a zero count's mean through 0: the
        # next trial is that trial moved back onto the feasible side (its means and partials are
        # the ones just evaluated), not a shorter step that meets the same edge
        back, fix = edge_return(state.trial, theta, r + y, jac, zero, a_new, lam_d, free, hold)
        fix = fix & running & ~accept & ~first & ~finite
        if bounded:
            fix = fix & ((back >= lower) & (back <= upper)).all(-1)
        delta_theta = torch.where(fix.unsqueeze(-1), back - theta, delta_theta)
        step_box = theta + delta_theta
    # converged: a small chi-square change, and the next (projected, nearly Gauss-Newton) step
    # predicts a relative reduction below tol as well (the end-point test of
    # gradfit.stats.end_point_checks, in the kernel: a long valley is not convergence)
    # (scaled by 1 + lam: a heavily damped step predicts little although the undamped one,
    # which decides stationarity, would predict much more)
    predicted = -(g_new * delta_theta).sum(-1) * (1.0 + lam)
    still_running = status == RUNNING
    small_step = predicted <= tol * chi2_new
    if likelihood == "poisson":
        # ... and the step's predicted reduction is small on the Pearson scale as well, with the
        # margin of the end-point test's screen (lsq/end_points.clear_end_points: half its
        # threshold max(1e-3, sqrt(tol)) on the range cosine, whose square this is): along a
        # curved positivity edge the deviance changes little per step long before the
        # gradient test passes, and a fit stopped there ended stalled
        small_step = small_step & (predicted <= 0.25 * max(tol, 1e-6) * pearson)
    converged = still_running & (at_floor | (small & ok & small_step))
    # ... unless a coordinate's own minimum lies on or beyond a bound: try the point on it first
    if bounded:
        to_lo, to_hi = _pushing(theta, g_new, a_new, lower, upper, free)
        snap = converged & ~at_floor & (to_lo | to_hi).any(-1) & (state.snaps < MAX_SNAPS)
        converged = converged & ~snap
    else:
        snap = torch.zeros_like(converged)
    status = torch.where(converged, CONVERGED, status)
    # damping so large that no step can be taken: the fit is stuck where it is; a normal
    # matrix whose damped Cholesky fails: singular
    still_running = still_running & ~converged
    status = torch.where(still_running & (lam > LAMBDA_MAX), STALLED, status)
    status = torch.where((status == RUNNING) & ~ok & ~snap, SINGULAR, status)
    still = (status == RUNNING).unsqueeze(-1)
    if bounded:
        onto = torch.where(to_lo, lower, torch.where(to_hi, upper, theta))
        step_box = torch.where(snap.unsqueeze(-1), onto, step_box)
    trial = torch.where(still, step_box, theta)
    iterations = state.iterations + running.to(state.iterations.dtype)
    snaps = state.snaps + snap.to(state.snaps.dtype) if bounded else state.snaps
    return BatchState(theta, trial, lam, chi2_new, a_new, g_new, status, iterations, snaps, snap, share_new)


def damping_share(a, fisher, jac, zero):
    """(B, P) the share of each diagonal entry of the Poisson normal matrix ``a`` (B, P, P) that
    Marquardt's damping scales: 1 less the part from zero counts' Fisher weights above the
    fit's largest weight elsewhere (``fisher`` (B, M), ``jac`` P columns (B, M), ``zero`` (B, M)
    the used zero counts; :func:`gradfit.optim.positive_step.capped_weights`, as the global
    fit's damping). A zero count held at the positivity edge has a Fisher
    weight w / mu of ~1e13 that rightly pins its mean there, but a damping scaled by it would
    freeze every parameter that mean depends on: the fit stalls on the edge short of its
    maximum."""
    import torch

    from .positive_step import capped_weights

    # the kept part summed directly (1 - excess / diag loses it to rounding where the spring
    # dominates, as in float32)
    kept_w = capped_weights(fisher, zero)
    kept = torch.stack([(kept_w * j * j).sum(-1) for j in jac], dim=-1)
    diag = torch.diagonal(a, dim1=-2, dim2=-1)
    share = kept / torch.where(diag > 0, diag, 1.0)
    return torch.where(torch.isfinite(share) & (diag > 0), share.clamp(0.0, 1.0), 1.0)


def residual_floor2(y, w):
    """(B,) the squared residual floor of step 3: ``max(RESIDUAL_FLOOR * EPS64, 100 eps)^2 *
    sum(w y^2)`` in the working dtype (a constant of each fit: compute it once per batch)."""
    import torch

    eps = torch.finfo(y.dtype).eps
    return max(RESIDUAL_FLOOR * EPS64, 100.0 * eps) ** 2 * (w * y * y).sum(-1)


def normal_equations(r, jac, w, *, unit_weights: bool = False, constants: tuple = (), masked: bool = True):
    """chi-square (B,), the normal matrix A = J^T W J (B, P, P) and the gradient g = J^T W r
    (B, P) from the residuals r (B, M) and the Jacobian's columns ``jac`` (P tensors (B, M)).

    Points with weight 0 contribute nothing, whatever the model gives there (NaN included).
    With ``unit_weights`` (every weight 1) the weights are not applied at all; ``masked=False``
    (no weight is 0) applies them without masking. A column listed
    in ``constants`` as (j, c) is the number c at every point: its entries are c times a sum
    (and c^2 sum(w) on the diagonal) instead of a product summed over the points. Every
    product of two columns is formed once (A is symmetric)."""
    import torch

    p = len(jac)
    const = dict(constants)
    if masked and not unit_weights:
        used = w > 0
        r = torch.where(used, r, 0.0)
        jac = [j if k in const else torch.where(used, j, 0.0) for k, j in enumerate(jac)]
    if p > UNROLL_MAX:  # a batched matrix product: P separate sums cost P^2 kernels
        jm = torch.stack(jac, dim=-1)  # (B, M, P)
        wjm = jm if unit_weights else w.unsqueeze(-1) * jm
        a = wjm.transpose(-1, -2) @ jm
        a = 0.5 * (a + a.transpose(-1, -2))
        wr = r if unit_weights else w * r
        return (wr * r).sum(-1), a, (wjm * r.unsqueeze(-1)).sum(-2)
    wr = r if unit_weights else w * r
    chi2 = (wr * r).sum(-1)
    wj = [None if k in const else (j if unit_weights else w * j) for k, j in enumerate(jac)]
    weight_sum = None
    if const:
        weight_sum = (float(r.shape[-1]) if unit_weights else w.sum(-1))
    column_sums = {}  # sum(w J_k) over the points, for products with a constant column

    def column_sum(k):
        if k not in column_sums:
            column_sums[k] = wj[k].sum(-1)
        return column_sums[k]

    def entry(i, k):
        if i in const and k in const:
            return torch.full_like(chi2, const[i] * const[k]) * weight_sum
        if i in const:
            return const[i] * column_sum(k)
        if k in const:
            return const[k] * column_sum(i)
        return (wj[i] * jac[k]).sum(-1)

    low = {(i, k): entry(i, k) for i in range(p) for k in range(i + 1)}
    a = torch.stack([low[max(i, k), min(i, k)] for i in range(p) for k in range(p)], dim=-1)
    a = a.unflatten(-1, (p, p))
    wr_sum = wr.sum(-1) if const else None
    g = torch.stack([const[i] * wr_sum if i in const else (wj[i] * r).sum(-1) for i in range(p)], dim=-1)
    return chi2, a, g


def held_mask(theta, g, lower, upper):
    """(B, P) coordinates resting on a bound with the descent direction -g pointing out of the
    box (:func:`gradfit.optim.lm.active_set`): the step leaves them where they are."""
    return ((theta <= lower) & (g > 0)) | ((theta >= upper) & (g < 0))


def _pushing(theta, g, a, lower, upper, free):
    """Masks (B, P) of the free coordinates inside the box whose one-dimensional Gauss-Newton
    minimum theta_i - g_i / A_ii lies on or beyond the lower, and the upper bound
    (:func:`gradfit.optim.box.pushing`)."""
    import torch

    diag = torch.diagonal(a, dim1=-2, dim2=-1)
    reach = g.abs() / torch.where(diag > 0, diag, torch.full_like(diag, float("inf")))
    freem = torch.tensor([bool(v) for v in free], device=theta.device)
    to_lo = freem & (theta > lower) & (g > 0) & (theta - lower <= reach)
    to_hi = freem & (theta < upper) & (g < 0) & (upper - theta <= reach)
    return to_lo, to_hi


def stop_short(theta, target, lower, upper):
    """``target`` with the coordinates beyond a bound stopped STEP_BACK of the way to it (one
    resting on that bound stays there), and the mask of those coordinates."""
    import torch

    below, above = target < lower, target > upper
    new = torch.where(below, theta + STEP_BACK * (lower - theta),
                      torch.where(above, theta + STEP_BACK * (upper - theta), target))
    return torch.minimum(torch.maximum(new, lower), upper), below | above


def _box_step(theta, a, g, lam, lower, upper, free):
    """The next trial point (B, P) from ``theta`` inside the box, and ok (B,) (False where
    the damped Cholesky fails): the damped step with the active coordinates held; where it
    crosses a bound, the crossing coordinates stop short of it and the others' step is solved
    again with them fixed there (the first-order term of the stopped move is added to the
    gradient: g + A m). With no bound active or crossed it is theta + the unconstrained step."""
    import torch

    held = held_mask(theta, g, lower, upper)
    delta, ok = damped_solve(a, g, lam, free, held)
    first, crossed = stop_short(theta, theta + delta, lower, upper)
    # solved again only for a coordinate already next to the bound it crosses (closer than
    # NEAR of the step) and whose own gradient drives it there (its 1-D Gauss-Newton minimum
    # lies on or beyond it): a first long step across a bound keeps the plain stop-short step
    # (a rejected one raises the damping, where solving the others again can jump to another
    # basin)
    to_lo, to_hi = _pushing(theta, g, a, lower, upper, free)
    dist = torch.where(to_lo, theta - lower, upper - theta)
    crossed = crossed & (to_lo | to_hi) & (dist <= NEAR * delta.abs())
    moved = torch.where(crossed, first - theta, torch.zeros_like(theta))
    g2 = g + (a * moved.unsqueeze(-2)).sum(-1)
    delta2, ok2 = damped_solve(a, g2, lam, free, held | crossed)
    second, _ = stop_short(theta, theta + torch.where(crossed, moved, delta2), lower, upper)
    any_crossed = crossed.any(-1)
    return torch.where(any_crossed.unsqueeze(-1), second, first), ok & (ok2 | ~any_crossed)


def standard_errors(a, chi2, n_points, free, inverse=None, *, likelihood: str | None = None,
                    absolute_sigma: bool = False):
    """sqrt(diag(A^-1) * chi2 / dof) per fit (NaN where A is singular or dof < 1); fixed
    parameters get 0. ``inverse``: the (diag, ok) of :func:`inverse_diagonal` if already at hand.
    With a ``likelihood`` A is the Fisher information and the errors are sqrt(diag(A^-1)), the
    Cramer-Rao bound, not scaled by the deviance (NaN only where A is singular or the fit's
    deviance is not finite); so are they with ``absolute_sigma`` (the weights 1/sigma^2 are
    the data's true variances, scipy's curve_fit(absolute_sigma=True))."""
    import torch

    var_unit, ok = inverse_diagonal(a, free) if inverse is None else inverse
    if likelihood is not None or absolute_sigma:
        se = torch.sqrt(torch.clamp(var_unit, min=0.0))
        bad = ~ok | ~torch.isfinite(chi2)
        return torch.where(bad.unsqueeze(-1), torch.full_like(se, float("nan")), se)
    dof = n_points - float(sum(free))
    scale = chi2 / dof
    se = torch.sqrt(torch.clamp(var_unit * scale.unsqueeze(-1), min=0.0))
    bad = ~ok | (dof < 1) | ~torch.isfinite(scale)
    return torch.where(bad.unsqueeze(-1), torch.full_like(se, float("nan")), se)


#: the earlier names of :func:`init` and :func:`step`
initial_state = init
lm_iteration = step
