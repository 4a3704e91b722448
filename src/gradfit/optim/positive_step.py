"""Poisson steps that keep every used mean positive: the positivity edge as a constraint.

A count of zero adds w * mu to the negative log-likelihood: it pulls its mean down by a
constant at every iteration, so where the best mean is 0 (a background or an amplitude on
the positivity edge, with no bound to stop at) the optimum lies on the edge mu_i = 0 of the
feasible set. Fisher scoring overshoots it: its model of the linear term has curvature
w / mu, which the other zero counts' pulls overwhelm. Rejecting the step (the damping rises)
approaches the edge by a few percent per two evaluations, and scaling the whole step back
slows every other parameter as much.

:func:`positive_step` treats the zero count that the step drives through the edge first (the
smallest mu_i / -J_i d: with every count zero, not the one of smallest mean) as an active
linear constraint instead: the damped step of the quadratic model subject to
``J_i d = -STEP_BACK mu_i`` (one rank-one correction, ``d + v (c - J_i d) / (J_i v)`` with
``v = A~^-1 J_i``), so that point lands ``1 - STEP_BACK`` of the way from the edge while the
other parameters take their constrained Newton step along it; if that step still takes
another zero count's mean through 0, the whole step stops ``STEP_BACK`` of the way to the first
such edge (a feasible trial, not a rejected one: all-zero counts reach mean 0 geometrically
instead of creeping along the edge to negative amplitudes). The global engine (optim/global_lm.py)
adds the same constraint to the joint problem: per fit, the first zero count that the joint step
(its own and the shared parameters' change) drives through the edge (:func:`edge_rows`) becomes a
linear constraint in the fit's local block, which adds a rank-one term to the Schur complement.
A correction of the local step alone, with the shared step as it was, leaves the shared step
computed as if those means could go on below 0: with many fits on the edge the joint fit then
stalls far from its optimum (k = 0.61 against 0.80 on 3,000 decays). The fit's own step then
stops short of any other zero count's edge (:func:`stop_at_edges`). Its points are kept from the
evaluation (:func:`edge_points`, only the fits with a zero count). There the corrected point
stays at or above its rounding level (``ROUNDING`` eps of the fit's largest mean): below it, a
mean whose terms cancel (a + b with b = -a) rounds to 0
on the trial, which rejects the joint step of every fit. Once there, the point's Fisher
weight w / mu pins it, and the usual tests (a small change of the deviance and
a small predicted reduction of the feasible step: the projected gradient, KKT at the edge)
converge the fit.
"""

from __future__ import annotations

from typing import NamedTuple

from .batch_solve import damped_solve

__all__ = ["EdgePoints", "capped_weights", "edge_correction", "edge_points", "edge_return", "edge_rows", "positive_step",
           "stop_at_edges"]

#: where a step stops on its way to the edge (as a bound's step back, scipy trf's theta)
STEP_BACK = 0.995
#: the global step keeps a zero count's mean at or above this many eps of the fit's largest
#: mean: a mean at the rounding level of its terms (a + b with b = -a) rounds to <= 0 otherwise
ROUNDING = 16.0


def positive_step(delta, mu, jac, zero, a, lam, free, hold=None):
    """(B, P) the damped Poisson step ``delta`` made feasible (see the module docstring).

    Parameters
    ----------
    delta : (B, P) the step solving (A + lam diag A) d = -g.
    mu : (B, M) the means at the current point (positive at used points).
    jac : P tensors (B, M) (or broadcastable): the means' partial derivatives there.
    zero : (B, M) bool the used points with a count of zero: the only ones whose mean may go
        to 0 (elsewhere the deviance grows without bound there, and a step through zero is a
        poor quadratic model: it is rejected and the damping rises, as before).
    a, lam, free, hold : the damped system's A (B, P, P), damping (B,), free mask (P,) and
        held coordinates (B, P) or None, as :func:`gradfit.optim.batch_solve.damped_solve`.
    """
    import torch

    full = jac  # (B, M) columns, as models/jacobian.batch_residual_and_jacobian gives them
    # the zero count the step drives through the edge first (the smallest mu_i / -J_i d): with
    # every count zero, the one of smallest mean is rarely it, and a step stopped for that one
    # takes another mean through 0 (rejected: the fit creeps along the edge, amplitudes < 0)
    jd = sum(j * d.unsqueeze(-1) for j, d in zip(full, delta.unbind(-1)))
    ratio = torch.where(zero & (jd < 0), mu / -jd, float("inf"))
    first = ratio.argmin(-1, keepdim=True)
    # (no zero count's mean falling: argmin names point 0, whatever it is; inf leaves it alone)
    smallest = torch.where(torch.isfinite(ratio.gather(-1, first)), mu.gather(-1, first), float("inf")).squeeze(-1)
    row = torch.stack([j.gather(-1, first) for j in full], dim=-1).squeeze(1)
    out = edge_correction(delta, (row * delta).sum(-1), smallest, row, a, lam, free, hold)
    if out is delta:
        return delta
    # a zero count the corrected step still takes through the edge: the whole step stops short of
    # it (the fraction to the boundary: a feasible trial, every mean of a zero count positive)
    jd = sum(j * d.unsqueeze(-1) for j, d in zip(full, out.unbind(-1)))
    reach = torch.where(zero & (jd < 0), mu / -jd, float("inf")).amin(-1)
    scale = torch.clamp(STEP_BACK * reach, max=1.0)
    return out * torch.where(torch.isfinite(scale), scale, 1.0).unsqueeze(-1)


def edge_return(trial, theta, mu, jac, zero, a, lam, free, hold=None):
    """(trial (B, P), use (B,) bool): a second-order correction (Nocedal & Wright, Numerical
    Optimization, sec. 15.6) of each fit whose ``trial`` the model's curvature took through the
    positivity edge. A step whose linear model stops a zero count's mean short of 0 can still
    cross it where the edge is curved (a decay whose last mean is 0 moves with its rate): the
    trial has no likelihood and is rejected, and the next damped step from ``theta`` meets the
    same edge; the fit crept along it and ended stalled short of the maximum. The failed trial
    is moved back instead, by the least change in the damped metric that puts its most negative
    zero-count mean at ``1 - STEP_BACK`` of where the linear model put it (at least its rounding
    level): ``trial + v t / (J_i v)``, ``v = A~^-1 J_i^T`` with J_i that point's partials at the
    trial. ``mu``, ``jac`` are the means and partials at the trial, ``zero`` the used zero
    counts; a, lam, free, hold the damped system (:func:`gradfit.optim.batch_solve.damped_solve`).
    """
    import torch

    mu_z = torch.where(zero & torch.isfinite(mu), mu, float("inf"))
    worst = mu_z.argmin(-1, keepdim=True)
    m = mu_z.gather(-1, worst).squeeze(-1)
    row = torch.stack([torch.broadcast_to(j, mu.shape).gather(-1, worst).squeeze(-1) for j in jac], dim=-1)
    # where the linear model put the point (its mean before the step, plus the step's change)
    planned = m - (row * (trial - theta)).sum(-1)
    floor = ROUNDING * torch.finfo(mu.dtype).eps * torch.where(torch.isfinite(mu), mu.abs(), 0.0).amax(-1)
    level = torch.maximum(floor, (1.0 - STEP_BACK) * planned.clamp(min=0.0))
    v, ok = damped_solve(a, -row, lam, free, hold)
    den = (row * v).sum(-1)
    use = (m <= 0) & ok & (den > 0) & torch.isfinite(den)
    move = torch.where(use, (level - m) / torch.where(use, den, 1.0), 0.0)
    return trial + move.unsqueeze(-1) * v, use


def edge_correction(delta, jd, smallest, row, a, lam, free, hold=None):
    """``delta`` (B, P) with the rank-one correction of the module docstring where ``jd`` (B,),
    the step's change of the mean ``smallest`` (B,), takes it below ``1 - STEP_BACK`` of
    itself: J_i d = -STEP_BACK mu_i, with J_i = ``row`` (B, P) over the coordinates of
    ``delta`` and A, lam, free, hold the damped system over them."""
    import torch

    target = -STEP_BACK * smallest
    crossing = jd < target
    if not bool(crossing.any()):  # one sync: most iterations of most batches stay clear of the edge
        return delta
    # only the crossing fits (few, in a few iterations) solve for v = A~^-1 J_i^T
    idx = crossing.nonzero().squeeze(-1)
    row = row[idx]
    v, ok = damped_solve(a[idx], -row, lam[idx], free, None if hold is None else hold[idx])
    den = (row * v).sum(-1)
    fix = ok & (den > 0)
    nu = torch.where(fix, (target[idx] - jd[idx]) / torch.where(fix, den, 1.0), 0.0)
    return delta.index_add(0, idx, nu.unsqueeze(-1) * v)


def capped_weights(fisher, zero):
    """(B, M) the Fisher weights ``fisher`` with each used zero count's (``zero``) capped at the
    fit's largest weight elsewhere (uncapped where the fit has no other weight): the part of
    the normal matrix Marquardt's damping may scale. A zero count's deviance 2 w mu is linear
    in its mean, and its weight w / mu grows without bound at the positivity edge (the global
    fit's :func:`edge_points` and the independent fits' batch_lm.damping_share)."""
    import torch

    cap = torch.where(zero, 0.0, fisher).amax(-1, keepdim=True)  # fisher is 0 at unused points
    return torch.where(zero & (cap > 0), torch.minimum(fisher, cap), fisher)


class EdgePoints(NamedTuple):
    """The fits of a Poisson batch with a used count of zero, at one point of the parameters
    (:func:`edge_points`); tensors over those K fits, float64 where they hold numbers."""

    fits: object  # (K,) the fits' indices in the batch
    mu: object  # (K, M) their means
    jac: object  # (K, M, P) the means' partial derivatives
    zero: object  # (K, M) bool: the used counts of zero
    floor: object  # (K,) the rounding level of the means (ROUNDING eps of the largest)
    excess: object  # (K, P) the part of diag(A) from zero counts' Fisher weights above the cap


def edge_points(mu, jac, zero, offset=0, fisher=None) -> EdgePoints:
    """The :class:`EdgePoints` of a batch: the fits (numbered from ``offset``) with a used count
    of zero, their means, the means' partial derivatives (float64), those counts, the rounding
    level of their means (``ROUNDING`` eps of the largest: a mean the step takes below it may
    round to <= 0, an infeasible trial) and, from the Fisher weights ``fisher`` (B, M), the
    part of each diagonal entry of A that comes from zero counts' weights above the largest
    weight of the fit's nonzero counts: what :func:`edge_rows`, :func:`stop_at_edges` and the
    damping of optim/global_lm need once the step is known.

    A zero count's deviance 2 w mu is linear in its mean: its Fisher weight w / mu is a spring
    the data do not have, and it grows without bound as the mean nears the edge. It rightly
    holds the point there, but a damping scaled by diag(A) (Marquardt's) then scales with the
    spring too and freezes the fit's other parameters: the shared parameter of a global fit
    stalls. The damping leaves that excess out."""
    import torch

    fits = zero.any(-1).nonzero().squeeze(-1)
    jac_k = torch.stack([j[fits] for j in jac], dim=-1).double()
    mu_k = mu[fits]
    zero_k = zero[fits]
    floor = ROUNDING * torch.finfo(mu.dtype).eps * torch.where(torch.isfinite(mu_k), mu_k.abs(), 0.0).amax(-1)
    if fisher is None:
        excess = torch.zeros(jac_k.shape[0], jac_k.shape[2], dtype=torch.float64, device=jac_k.device)
    else:
        fw = fisher[fits].double()
        over = fw - capped_weights(fw, zero_k)
        excess = (over.unsqueeze(-1) * jac_k * jac_k).sum(1)
    return EdgePoints(fits + offset, mu_k.double(), jac_k, zero_k, floor.double(), excess)


def edge_rows(d_local, d_shared, edge, among=None):
    """The zero counts that a joint step drives through the positivity edge, as linear
    constraints for :func:`gradfit.optim.global_lm` (see the module docstring).

    Parameters
    ----------
    d_local, d_shared : (B, P_l), (P_s,) the joint damped step.
    edge : :func:`edge_points` at the current point over the local then the shared columns.
    among : (B,) bool, the fits that take part (None: all).

    Returns
    -------
    (fits (K,), r (K, P_l), s (K, P_s), target (K,)): per fit whose step takes the mean of a
    zero count below ``1 - STEP_BACK`` of itself (or below the fit's rounding level), the first
    such point's partial derivatives over the local and the shared parameters and the change of
    its mean that the constrained step must make, ``r . d_l + s . d_s = target`` (float64).
    """
    import torch

    fits, mu, jac, zero, floor, _ = edge
    pl = d_local.shape[1]
    jd = (jac[..., :pl] @ d_local[fits].unsqueeze(-1)).squeeze(-1) + jac[..., pl:] @ d_shared  # (K, M)
    ratio = torch.where(zero & (jd < 0), mu / -jd, float("inf"))
    first = ratio.argmin(-1, keepdim=True)
    row = jac.gather(1, first.unsqueeze(-1).expand(-1, 1, jac.shape[-1])).squeeze(1)
    smallest = mu.gather(-1, first).squeeze(-1)
    target = torch.maximum(-STEP_BACK * smallest, floor - smallest)
    # (no zero count's mean falling: argmin names point 0, whatever it is, which is no edge)
    crossing = (jd.gather(-1, first).squeeze(-1) < target) & torch.isfinite(ratio.gather(-1, first)).squeeze(-1)
    if among is not None:
        crossing = crossing & among[fits]
    keep = crossing.nonzero().squeeze(-1)
    return fits[keep], row[keep, :pl], row[keep, pl:], target[keep]


def stop_at_edges(d_local, d_shared, edge, among=None):
    """``d_local`` (B, P_l) with each fit's own step stopped where the first zero count's mean
    reaches ``1 - STEP_BACK`` of itself, the shared step ``d_shared`` (P_s,) as it is (a mean
    that the shared step alone takes below that stops the own step at 0: that trial may be
    rejected). Fits outside ``among`` (B,) bool keep their step."""
    import torch

    fits, mu, jac, zero, _, _ = edge
    if fits.numel() == 0:
        return d_local
    pl = d_local.shape[1]
    own = d_local[fits]
    shared_jd = jac[..., pl:] @ d_shared
    own_jd = (jac[..., :pl] @ own.unsqueeze(-1)).squeeze(-1)
    limit = torch.where(zero & (own_jd < 0), (STEP_BACK * mu + shared_jd).clamp(min=0.0) / -own_jd,
                        float("inf")).amin(-1)
    scale = limit.clamp(max=1.0)
    if among is not None:
        scale = torch.where(among[fits], scale, 1.0)
    return d_local.index_copy(0, fits, own * scale.unsqueeze(-1))
