"""The Poisson parts of the global Levenberg-Marquardt (:mod:`gradfit.optim.global_lm`): the
positivity edge as a constraint of the joint step, the second-order correction of a trial
that crossed it, and each fit's own damping.

A batch of low-count fits that share a parameter puts many fits on the edge (a zero count's
mean at 0 at the optimum). Three things were each needed for 3,000 such decays, which
stalled at k = 0.61 against the maximum's 0.80 without them (tests/test_global_poisson_edge.py):

- the edge as a linear constraint of each fit's local block, which adds a rank-one term to the
  Schur complement (:func:`on_edges`): a correction of the local step alone leaves the
  shared step computed as if those means could go on below 0;
- a second-order correction (:func:`corrected`) of a fit whose trial the model's curvature
  took through the edge, so that one fit does not reject the joint step;
- a damping of each fit's own (:func:`local_damping`) that leaves out the Fisher weight of
  zero counts held at the edge (:func:`damped`).
"""

from __future__ import annotations

from .batch_lm import LAMBDA_MAX
from .batch_solve import damped_solve
from .positive_step import STEP_BACK, edge_rows

__all__ = ["CORRECTIONS", "LAMBDA_MIN", "corrected", "damped", "fit_reductions", "local_damping", "on_edges"]

#: the smallest per-fit damping (per_fit_damping): below it a damping changes no step
LAMBDA_MIN = 1e-15
#: second-order corrections of a Poisson trial that took a zero count's mean through 0 (:func:`corrected`)
CORRECTIONS = 2


def local_damping(state, trial_local, chi2, finite, accept: bool, rounding2):
    """Each fit's damping after its trial (per-fit damping: a Poisson batch). A fit whose
    deviance fell by at least a quarter of its predicted reduction (rose by at most 1.75 times
    its predicted rise; within its rounding) has a good model: its damping falls tenfold if
    the joint step was taken, and stays if not; any other fit's damping rises tenfold. One
    damping for the whole batch would let the one fit out of thousands whose quadratic model
    is poor (a mean near the positivity edge) reject the joint step, and keep every other
    fit's damping high.

    A fit whose own step's part of the prediction is small beside the shared step's is not
    judged by it: the miss is the shared step's (the shared damping answers for it). Raising
    such a fit's damping froze its own parameters, so that it could follow the shared step
    still less: 400 low-count decays crept from k = 0.30 towards 0.50 by 1e-4 an iteration."""
    import torch

    actual = state.chi2 - chi2
    # the prediction for the trial as evaluated (a corrected fit's, a move onto the bounds)
    d_local, d_shared = trial_local - state.local, state.trial_shared - state.shared
    pred, own = fit_reductions(state, d_local, d_shared, own=True)
    pred, own = torch.nan_to_num(pred, nan=0.0), torch.nan_to_num(own, nan=0.0)
    # a change within a few times the deviance's rounding cannot be judged (a fit held on the
    # edge predicts almost nothing): it is not a bad model
    slack = 1e-12 * state.chi2.abs()
    if rounding2 is not None:
        slack = slack + 4.0 * (rounding2 * state.chi2.abs()).sqrt()
    # (a fit the shared step serves against its own deviance predicts a rise: its model is good
    # when the rise is as predicted, within 75%)
    good = finite & (actual >= pred - 0.75 * pred.abs() - slack)
    judged = own.abs() >= 0.25 * (pred - own).abs()
    lam = state.lam_local
    lam = torch.where(good | ~judged, lam * 0.1 if accept else lam, lam * 10.0)
    return lam.clamp(min=LAMBDA_MIN, max=10.0 * LAMBDA_MAX)


def fit_reductions(state, d_local, d_shared, *, own: bool = False):
    """(B,) each fit's reduction of its chi-square (or deviance) predicted by its part of the
    (undamped) quadratic model for the step (d_local (B, P_l), d_shared (P_s,)): g and A are
    half the gradient and the Gauss-Newton (Fisher) Hessian, so the reduction is
    -(2 g.d + d^T A d). ``own``: also the part of it that involves the fit's own step,
    -(2 g_l.d_l + d_l^T A d_l + 2 d_l^T C d_s)."""
    ad = (state.a @ d_local.unsqueeze(-1)).squeeze(-1)
    cd = state.c @ d_shared
    dd = state.d @ d_shared
    local = 2.0 * (state.g_local * d_local).sum(-1) + (d_local * ad).sum(-1) + 2.0 * (d_local * cd).sum(-1)
    total = -(local + 2.0 * (state.g_shared @ d_shared) + (dd * d_shared).sum(-1))
    return (total, -local) if own else total


def corrected(blocks, state, trial_local, chi2, full, gfull, edge, finite, free_local, box):
    """The trial with a second-order correction (Nocedal & Wright, Numerical Optimization,
    sec. 15.6) in each fit whose trial is not finite while it has a zero count whose mean went
    through 0. The step's linear model kept that mean above the edge (optim/positive_step.py),
    but the model's curvature took it below: a mean held near 0 (on the edge, at the fit's
    rounding level) crosses it on almost any step of a shared parameter. One such fit out of
    thousands would reject the joint step of all, and with it the fall of the damping. The
    correction moves the fit's local parameters by the least change in the damped metric
    (``A~^-1 r t / (r . A~^-1 r)``, r the point's partials at the trial) that puts that mean
    back at ``1 - STEP_BACK`` of its last value (at least the rounding level), and those fits
    alone are evaluated again (``blocks(local, shared, fits)``). Returns the trial's local
    parameters, chi2, blocks and edge points with those fits' rows replaced."""
    import torch

    fits, mu, jac, zero, floor, excess = edge
    bad = (state.included & ~finite)[fits]
    if not bool(bad.any()):
        return trial_local, chi2, full, gfull, edge
    rows = bad.nonzero().squeeze(-1)
    idx = fits[rows]
    pl = trial_local.shape[1]
    mu_k = torch.where(zero[rows], mu[rows], float("inf"))
    worst = mu_k.argmin(-1, keepdim=True)
    last = state.edge[1][rows].gather(-1, worst).squeeze(-1)  # the same fits and points: zero counts do not move
    level = torch.maximum(floor[rows], (1.0 - STEP_BACK) * last)
    r = jac[rows].gather(1, worst.unsqueeze(-1).expand(-1, 1, jac.shape[-1])).squeeze(1)[:, :pl]
    v, ok = damped_solve(damped(state, idx), -r, torch.zeros(idx.numel(), dtype=r.dtype, device=r.device),
                         free_local)
    den = (r * v).sum(-1)
    short = level - mu_k.gather(-1, worst).squeeze(-1)
    # only a mean below its level is moved up (a fit not finite for another reason, a positive
    # count's mean <= 0, is left to the rejection; NaN fails the test)
    use = ok & (den > 0) & torch.isfinite(den) & (short > 0)
    keep = use.nonzero().squeeze(-1)
    if keep.numel() == 0:
        return trial_local, chi2, full, gfull, edge
    rows, idx = rows[keep], idx[keep]
    local = trial_local[idx] + (short[keep] / den[keep]).unsqueeze(-1) * v[keep]
    if box is not None:
        local = torch.minimum(torch.maximum(local, box[0][idx]), box[1][idx])
    c2, n, g, again = blocks(local, state.trial_shared, idx)
    edge = edge._replace(mu=mu.index_copy(0, rows, again.mu), jac=jac.index_copy(0, rows, again.jac),
                         floor=floor.index_copy(0, rows, again.floor), excess=excess.index_copy(0, rows, again.excess))
    return (trial_local.index_copy(0, idx, local), chi2.index_copy(0, idx, c2), full.index_copy(0, idx, n),
            gfull.index_copy(0, idx, g), edge)


def damped(state, fits=None):
    """The local blocks with their damping, A + lam diag(A) (B, P_l, P_l) (the rows ``fits`` only,
    if given), where a Poisson fit's zero counts leave their Fisher weight above the cap out
    of diag(A) (optim/positive_step.edge_points)."""
    import torch

    a = state.a if fits is None else state.a[fits]
    diag = torch.diagonal(a, dim1=-2, dim2=-1)
    if state.edge is not None and state.edge.fits.numel():
        pl = a.shape[-1]
        excess = torch.zeros_like(state.g_local).index_copy(0, state.edge.fits, state.edge.excess[:, :pl])
        diag = diag - (excess if fits is None else excess[fits])
    lam = state.lam if state.lam_local is None else (state.lam_local if fits is None else state.lam_local[fits])
    lam = lam.unsqueeze(-1) if state.lam_local is not None else lam
    return a + torch.diag_embed(diag.clamp(min=0.0) * lam)


def on_edges(state, xu, schur, rhs, active, d_local, d_shared, moved, a_damped, lam_b, free_local,
              held_l, reduce):
    """The joint step (d_local (B, P_l), d_shared (P_s,)) solved again with, per fit, the first
    zero count that ``(d_local, d_shared)`` drives through the positivity edge as the linear
    constraint ``r . d_l + s . d_s = target`` (optim/positive_step.edge_rows). Eliminating d_l
    from the fit's constrained local problem gives d_l = u' - X' d_s with
    u' = u + v tau / den, X' = X + v w^T / den (v = A~^-1 r, den = r . v, w = s - X^T r,
    tau = target - r . u): the fit's term of the Schur complement gains w w^T / den and the
    right side w tau / den. One reduction (and sync) for the count and both sums; unchanged
    when no process has such a fit."""
    import torch

    ps = d_shared.shape[0]
    fits, r, s, target = edge_rows(d_local, d_shared, state.edge, state.included)
    x, u = xu[fits, :, :ps], xu[fits, :, ps]
    if moved is not None:  # the constraint is on the whole step: the part solved for is the rest of it
        target = target - (r * moved[1][fits]).sum(-1) - s @ moved[3]
    v, ok = damped_solve(a_damped[fits], -r, lam_b[fits], free_local, None if held_l is None else held_l[fits])
    den = (r * v).sum(-1)
    use = ok & (den > 0)  # a point that no free local parameter moves cannot be held by them
    den = torch.where(use, den, 1.0)
    w = s - (x.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1)
    if active is not None:
        w = torch.where(active, w, 0.0)
    w = torch.where(use[:, None], w, 0.0)
    tau = torch.where(use, target - (r * u).sum(-1), 0.0)
    count = torch.full((1,), float(fits.numel()), dtype=torch.float64, device=schur.device)
    sums = reduce(torch.cat([count, (w.unsqueeze(-1) * w.unsqueeze(-2) / den[:, None, None]).sum(0).flatten(),
                             (w * (tau / den)[:, None]).sum(0)]))
    if float(sums[0]) == 0:
        return d_local, d_shared
    factor, info = torch.linalg.cholesky_ex(schur + sums[1:1 + ps * ps].reshape(ps, ps))
    d_s = torch.cholesky_solve((rhs + sums[1 + ps * ps:]).unsqueeze(-1), factor).squeeze(-1)
    if bool((info != 0) | ~torch.isfinite(d_s).all()):  # cannot happen for a positive rank-one term
        return d_local, d_shared
    if active is not None:
        d_s = torch.where(active, d_s, 0.0)
    d_l = xu[:, :, ps] - xu[:, :, :ps] @ d_s
    nu = torch.where(use, (tau - w @ d_s) / den, 0.0)
    d_l = d_l.index_add(0, fits, nu.unsqueeze(-1) * v)
    if moved is not None:
        d_l, d_s = d_l + moved[1], d_s + moved[3]
    return d_l, d_s


