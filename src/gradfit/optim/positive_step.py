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
corrects for the zero count of smallest mean at the last point (its rows are kept from the
evaluation, before the step is known). Once there, the point's Fisher
weight w / mu pins it, and the usual tests (a small change of the deviance and
a small predicted reduction of the feasible step: the projected gradient, KKT at the edge)
converge the fit.
"""

from __future__ import annotations

from .batch_solve import damped_solve

__all__ = ["edge_correction", "edge_rows", "positive_step"]

#: where a step stops on its way to the edge (as a bound's step back, scipy trf's theta)
STEP_BACK = 0.995


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

    full = _full_columns(mu, jac)
    # the zero count the step drives through the edge first (the smallest mu_i / -J_i d): with
    # every count zero, the one of smallest mean is rarely it, and a step stopped for that one
    # takes another mean through 0 (rejected: the fit creeps along the edge, amplitudes < 0)
    jd = sum(j * d.unsqueeze(-1) for j, d in zip(full, delta.unbind(-1)))
    ratio = torch.where(zero & (jd < 0), mu / -jd, float("inf"))
    first = ratio.argmin(-1, keepdim=True)
    smallest = mu.gather(-1, first).squeeze(-1)
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


def edge_rows(mu, jac, zero):
    """(smallest (B,), row (B, P)): per fit, the smallest mean of a zero count (inf where the
    fit has none) and the means' partial derivatives at that point: the one a step drives
    through the edge (two passes over the points; a crossing elsewhere makes the trial
    infeasible, and it is rejected with the damping raised, as before)."""
    import torch

    smallest, first = torch.where(zero, mu, float("inf")).min(-1)
    at = first.unsqueeze(-1)
    full = _full_columns(mu, jac)
    return smallest, torch.stack([j.gather(-1, at) for j in full], dim=-1).squeeze(1)


def _full_columns(mu, jac):
    """The Jacobian's columns, each (B, M) like ``mu`` (a constant column broadcast)."""
    import torch

    return [j if isinstance(j, torch.Tensor) and j.shape == mu.shape
            else torch.as_tensor(j, dtype=mu.dtype, device=mu.device).expand_as(mu) for j in jac]


def edge_correction(delta, jd, smallest, row, a, lam, free, hold=None, among=None):
    """``delta`` (B, P) with the rank-one correction of the module docstring where ``jd`` (B,),
    the step's change of the mean ``smallest`` (B,), takes it below ``1 - STEP_BACK`` of
    itself: J_i d = -STEP_BACK mu_i, with J_i = ``row`` (B, P) over the coordinates of
    ``delta`` and A, lam, free, hold the damped system over them. ``among`` (B,) bool: the
    fits that may be corrected (None: all)."""
    import torch

    crossing = jd < -STEP_BACK * smallest
    if among is not None:
        crossing = crossing & among
    if not bool(crossing.any()):  # one sync: most iterations of most batches stay clear of the edge
        return delta
    # only the crossing fits (few, in a few iterations) solve for v = A~^-1 J_i^T
    idx = crossing.nonzero().squeeze(-1)
    row = row[idx]
    v, ok = damped_solve(a[idx], -row, lam[idx], free, None if hold is None else hold[idx])
    den = (row * v).sum(-1)
    fix = ok & (den > 0)
    nu = torch.where(fix, (-STEP_BACK * smallest[idx] - jd[idx]) / torch.where(fix, den, 1.0), 0.0)
    return delta.index_add(0, idx, nu.unsqueeze(-1) * v)
