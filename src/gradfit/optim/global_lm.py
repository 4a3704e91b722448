"""Global Levenberg-Marquardt: many fits that share some parameters, solved as one problem.

Shaped like :mod:`gradfit.optim.batch_lm`: :func:`init` builds the explicit
:class:`GlobalState`, :func:`step` maps a state to the next one; the caller owns the loop.

Fit b has local parameters l_b (P_l,) of its own and every fit has the shared parameters s
(P_s,). The joint normal matrix has a block-arrow structure::

    [ A_1          C_1 ]        A_b = J_l,b^T W J_l,b    (P_l, P_l)
    [      ...     ... ]        C_b = J_l,b^T W J_s,b    (P_l, P_s)
    [          A_B C_B ]        D   = sum_b J_s,b^T W J_s,b
    [ C_1^T ... C_B^T D]        g_l,b = J_l,b^T W r_b,   g_s = sum_b J_s,b^T W r_b

One iteration (a single damping ``lam``, one accept/reject on the total chi-square):

1. evaluate the residuals and both Jacobians at the trial point; per fit, chi-square and the
   blocks (:func:`gradfit.optim.batch_lm.normal_equations` over the local then the shared
   columns);
2. accept the trial if the total chi-square did not rise (lam / 10), else keep the last point
   (lam * 10); converged when an accepted step changed the total by less than tol * chi2 / B
   and the next step predicts a reduction below that as well (batch_lm's test, with tol
   relative to the mean chi-square of one fit: relative to the total, a large batch would stop
   many standard errors from its optimum), or the residuals are at the rounding level;
3. the damped step by the Schur complement: A~_b = A_b + lam diag(A_b) (the batched damped
   solve of batch_lm), S = D~ - sum_b C_b^T A~_b^-1 C_b, d_s = S^-1 (-g_s + sum_b C_b^T
   A~_b^-1 g_l,b), d_l,b = A~_b^-1 (-g_l,b - C_b d_s). The cost is O(B P_l^3 + P_s^3): the
   dense (B P_l + P_s)^2 matrix is never formed. Fixed coordinates, and coordinates resting
   on a bound that the gradient pushes outward, are held (identity rows, zero right side);
   a coordinate whose step crosses a bound stops ``STEP_BACK`` of the way to it, and where it
   was already next to that bound (closer than ``NEAR`` of its step, as in batch_lm, but
   without batch_lm's second condition that its own 1-D minimum lie beyond the bound: in the
   joint problem a local coordinate's 1-D curvature ignores the shared step that drives it
   there), it is held there and the rest of the joint step is solved again on that face, given its move
   (the gradient g + H m; :func:`_rest_of_step`). Without that, the shared step, computed as
   if a local coordinate on its bound went on across it, is wrong for as long as the bound is
   active: the joint fit stalls at the clipped unbounded solution. The predicted reduction
   -g.d of the convergence test is that of the step on the face, so the test is a KKT test:
   small only where the free coordinates' gradient vanishes and the held ones' points out of
   the box (a coordinate held on its bound whose gradient points inward has a full step that
   moves it inward, not across, so it is free again in the next step); in a Poisson
   fit, the first zero count's mean that a fit's joint step would take through 0 stops short of
   the edge instead: a linear constraint in the fit's block, a rank-one term of the Schur
   complement (:func:`gradfit.optim.global_poisson.on_edges`, :mod:`gradfit.optim.positive_step`); the fit's own step
   stops short of any other, and the predicted reduction is that of the constrained step
   before it stops short (a KKT test at the edge, which a step cut short by another zero
   count would pass while the deviance can still drop);
4. at convergence, a coordinate whose one-dimensional Gauss-Newton minimum lies on or beyond
   a bound is moved onto it (the move is the next trial; accepted, the fit runs on from
   there with that coordinate held; rejected, the convergence stands), at most
   ``MAX_SNAPS`` times, so an optimum on a bound is reached exactly.

Poisson batches (``per_fit_damping``) add three things (:mod:`gradfit.optim.global_poisson`):
each fit's own damping of its local block (``lam`` damps the shared block and decides
acceptance), a second-order correction of a trial that took a zero count's mean through 0,
and a damping that leaves out the Fisher weight of zero counts held at the edge.

Sums over fits go through ``reduce`` (identity in one process; ``torch.distributed``
all_reduce under torchrun), so every rank holding a block of fits takes the same shared
step and the same decisions. All the blocks are float64, whatever the evaluation dtype.

A fit that cannot take part leaves the joint problem and gets its own status: a first
evaluation that is not finite (not_finite), a local block whose damped Cholesky fails (a
parameter this fit does not depend on: singular). The others go on without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..status import Status
from .batch_lm import LAMBDA0, LAMBDA_MAX, MAX_SNAPS, NEAR, held_mask, stop_short
from .batch_solve import damped_solve
from .global_poisson import CORRECTIONS, LAMBDA_MIN, corrected, damped, local_damping, on_edges
from .positive_step import stop_at_edges

__all__ = ["RUNNING", "GlobalState", "init", "normal_blocks", "step"]

RUNNING = -1
CONVERGED = Status.CONVERGED.code
STALLED = Status.STALLED.code
SINGULAR = Status.SINGULAR.code
NOT_FINITE = Status.NOT_FINITE.code


@dataclass
class GlobalState:
    local: object  # (B, P_l) accepted local parameters
    shared: object  # (P_s,) accepted shared parameters
    trial_local: object  # (B, P_l) evaluated next
    trial_shared: object  # (P_s,)
    lam: float
    chi2: object  # (B,) float64 chi-square of each fit at the accepted point (inf before the first)
    a: object  # (B, P_l, P_l) float64
    c: object  # (B, P_l, P_s)
    d: object  # (B, P_s, P_s) each fit's part of D
    g_local: object  # (B, P_l)
    g_shared: object  # (B, P_s) each fit's part of g_s
    included: object  # (B,) bool: the fit takes part in the joint problem
    fit_status: object  # (B,) int: RUNNING, or the code of a fit that left the joint problem
    status: int = RUNNING  # the joint problem's status
    iterations: int = 0
    snaps: int = 0
    probing: bool = False  # the trial is a move onto the bounds of a converged point
    total: float = float("inf")  # total chi-square at the accepted point
    #: Poisson: the fits with a zero count, their means, partials, zero counts and rounding levels
    #: at the accepted point (optim/positive_step.edge_points), or None
    edge: object = None
    #: (B,) float64 each fit's own damping of its local block (None: ``lam`` for every fit)
    lam_local: object = None


def init(local0, shared0, status0, *, per_fit_damping: bool = False) -> GlobalState:
    """The state before the first step: local starts (B, P_l), shared starts (P_s,), per-fit
    statuses (B,) (RUNNING, or a final code for fits that cannot take part).
    ``per_fit_damping``: each fit's local block has a damping of its own (:func:`step`)."""
    import torch

    b, pl = local0.shape
    ps = shared0.shape[0]
    z = dict(dtype=torch.float64, device=local0.device)
    return GlobalState(local=local0.clone(), shared=shared0.clone(), trial_local=local0.clone(),
                       trial_shared=shared0.clone(), lam=LAMBDA0, chi2=torch.full((b,), float("inf"), **z),
                       a=torch.zeros(b, pl, pl, **z), c=torch.zeros(b, pl, ps, **z), d=torch.zeros(b, ps, ps, **z),
                       g_local=torch.zeros(b, pl, **z), g_shared=torch.zeros(b, ps, **z),
                       included=status0 == RUNNING, fit_status=status0.clone(),
                       lam_local=torch.full((b,), LAMBDA0, **z) if per_fit_damping else None)


def _identity(t):
    return t


def step(blocks, state: GlobalState, box, free_local, free_shared, tol: float, *, floor2: float = 0.0,
         reduce=None, rounding2=None) -> GlobalState:
    """One global LM iteration (see the module docstring).

    Parameters
    ----------
    blocks : ``(local (B, P_l), shared (P_s,)) -> (chi2 (B,), N (B, P, P), g (B, P))``, each
        fit's chi-square, normal matrix J^T W J and gradient J^T W r over the local then the
        shared parameters (:func:`normal_blocks` of an evaluation; the caller may build them
        in chunks of fits). Any per-fit objective on the chi-square scale may stand for chi2
        (the Poisson deviance, with the Fisher-scoring blocks): a value that is not finite
        on a later trial rejects the joint step (the damping rises; the fit stays in). A
        Poisson ``blocks`` adds a fourth element, :func:`gradfit.optim.positive_step.edge_points`
        over the same columns: the local step then stops a zero count's mean short of 0.
    box : (lower_l, upper_l (B, P_l), lower_s, upper_s (P_s,)) bounds (None: no bound at all).
    free_local, free_shared : (P_l,), (P_s,) 1.0 for parameters that vary, 0.0 for fixed ones.
    floor2 : the total squared residual floor (an exact fit converges there).
    rounding2 : None, or (B,) float64: per fit, the squared relative rounding of its model
        values times their mean square, ``(4 eps)^2 sum(w y^2) / n`` in the evaluation dtype.
        The total chi-square is then known only to about ``sqrt(sum_b rounding2_b chi2_b)``
        (float32 model values carry ~1e-7 of |y|, not of the residual): a trial within that of
        the last total is not a rise, and a change below it is as converged as one below tol.
    reduce : sums a float64 tensor over every process's fits (in place or returned); None in
        one process.
    """
    import torch

    reduce = reduce or _identity
    pl = state.local.shape[1]
    trial_local = state.trial_local
    chi2, full, gfull, *edge = blocks(trial_local, state.trial_shared)
    first = state.total == float("inf")
    included, fit_status = state.included, state.fit_status
    old = torch.zeros_like(chi2) if first else state.chi2
    finite = None
    correctable = bool(edge and not first)  # Poisson: a trial can take a zero count's mean through 0
    if correctable:
        with_zero = torch.zeros_like(included).index_fill(0, edge[0].fits, True)
    for attempt in range(1 + CORRECTIONS * correctable):
        if attempt:
            trial_local, chi2, full, gfull, edge[0] = corrected(blocks, state, trial_local, chi2, full, gfull,
                                                                 edge[0], finite, free_local, box)
        # one pass: a NaN or inf anywhere in a fit's blocks makes this sum not finite
        finite = torch.isfinite(chi2 + full.sum((1, 2)) + gfull.sum(-1))
        if first:  # a fit whose start is not finite cannot take part
            fit_status = torch.where(included & ~finite, NOT_FINITE, fit_status)
            included = included & finite
        # per fit: chi-square at the trial and at the accepted point, not finite, taking part, the
        # rounding level and (Poisson) not finite with a zero count: summed over the fits taking
        # part (in every process) with one sync
        per_fit = [chi2, old, (~finite).double(), torch.ones_like(chi2)]
        if rounding2 is not None and not first:
            per_fit.append(rounding2 * old)
        if correctable:
            per_fit.append((~finite & with_zero).double())
        totals = reduce(torch.where(included[:, None], torch.stack(per_fit, 1), 0.0).sum(0)).tolist()
        trial_total, old_total, n_bad, n_fits = totals[:4]
        if n_bad == 0 or (correctable and totals[-1] == 0):  # nothing a correction could mend
            break
    noise = totals[4] ** 0.5 if rounding2 is not None and not first else 0.0
    # tol is relative to one fit's chi-square (the total over the fits): the joint problem then
    # converges as close to its optimum, in standard errors, as one fit does with that tol
    tol = tol / max(n_fits, 1.0)
    old_total = float("inf") if first else old_total
    # (a trial chi-square that is NaN never passes "<=")
    accept = n_bad == 0 and trial_total <= old_total + noise
    lam = state.lam * 0.1 if accept else state.lam * 10.0
    if state.lam_local is not None:  # the shared block's damping, floored as each fit's
        lam = max(lam, LAMBDA_MIN)
    s = state
    lam_local = s.lam_local
    if lam_local is not None and not first:
        lam_local = local_damping(s, trial_local, chi2, finite, accept, rounding2)
    if accept:
        acc = dict(local=trial_local, shared=s.trial_shared, chi2=chi2, a=full[:, :pl, :pl], c=full[:, :pl, pl:],
                   d=full[:, pl:, pl:], g_local=gfull[:, :pl], g_shared=gfull[:, pl:], total=trial_total,
                   edge=edge[0] if edge else None)
    else:
        acc = dict(local=s.local, shared=s.shared, chi2=s.chi2, a=s.a, c=s.c, d=s.d, g_local=s.g_local,
                   g_shared=s.g_shared, total=old_total, edge=s.edge)
    new = GlobalState(trial_local=acc["local"], trial_shared=acc["shared"], lam=lam, included=included,
                      fit_status=fit_status, status=RUNNING, iterations=s.iterations + 1, snaps=s.snaps,
                      lam_local=lam_local, **acc)
    if s.probing and not accept:  # the move onto the bounds raised chi-square: the convergence stands
        new.status = CONVERGED
        return new
    settled = accept and not first
    small = settled and abs(old_total - trial_total) < max(tol * trial_total, noise)
    at_floor = settled and trial_total <= floor2

    d_local, d_shared, predicted, ok = _joint_step(new, box, free_local, free_shared, reduce)
    if ok and box is not None:  # a coordinate next to a bound the step crosses: solve the rest again
        d_local, d_shared, predicted, ok = _rest_of_step(new, d_local, d_shared, predicted, box, free_local,
                                                         free_shared, reduce)
    if not ok:
        new.status = SINGULAR
        return new
    # (with per-fit damping the predicted reduction is already scaled fit by fit: _reduction)
    scale = 1.0 if new.lam_local is not None else 1.0 + lam
    converged = at_floor or (small and predicted * scale <= max(tol * new.total, noise))
    if converged:
        snap = _snap(new, box, free_local, free_shared, reduce) if box is not None and not at_floor else None
        if snap is None or new.snaps >= MAX_SNAPS:
            new.status = CONVERGED
            return new
        new.trial_local, new.trial_shared = snap
        new.snaps, new.probing = new.snaps + 1, True
        return new
    if lam > LAMBDA_MAX:
        new.status = STALLED
        return new
    new.trial_local, new.trial_shared = _stopped(new, d_local, d_shared, box)
    return new


def normal_blocks(r, jac, w, *, unit_weights: bool = False):
    """(chi2 (B,), J^T W J (B, P, P), J^T W r (B, P)) in float64 from residuals r (B, M) and the
    Jacobian's columns (local ones first), all three from one batched product of the bordered
    matrix [J r]^T W [J r] (one kernel where the column products cost P(P+1)/2 + P + 1; the
    products in the evaluation dtype, as :func:`gradfit.optim.batch_lm.normal_equations`).
    Points with weight 0 add nothing, whatever the model gives there (``unit_weights``: every
    weight is 1, nothing to mask)."""
    import torch

    p = len(jac)
    jr = torch.stack([*jac, r], dim=1)  # (B, P + 1, M): rows are the summed-over points' columns
    if unit_weights:
        n = jr @ jr.transpose(1, 2)
    else:
        wb = w.unsqueeze(1)
        jr = torch.where(wb > 0, jr, 0.0)
        n = (jr * wb) @ jr.transpose(1, 2)
    n = n.double()
    return n[:, p, p], n[:, :p, :p], n[:, :p, p]


def _joint_step(state: GlobalState, box, free_local, free_shared, reduce, moved=None):
    """The damped joint step (d_local (B, P_l), d_shared (P_s,)), its predicted reduction of
    the total chi-square, and whether the Schur complement could be factored. Fits whose local
    block fails are marked singular and leave the joint problem (in ``state``).

    ``moved``: None, or (mask_l (B, P_l), m_l (B, P_l), mask_s (P_s,), m_s (P_s,)): the masked
    coordinates move by m (zero elsewhere in m) and are held there; the others take the damped step
    of the quadratic model given that move (the gradient g + H m), which is added to m."""
    import torch

    b = state.local.shape[0]
    ps = state.shared.shape[0]
    lam_b = torch.full((b,), state.lam, dtype=torch.float64, device=state.a.device)
    held_l = held_s = None
    g_local, g_shared = state.g_local, state.g_shared
    if moved is not None:  # the first-order change of each fit's gradient by the move: H m
        mask_l, m_l, mask_s, m_s = moved
        g_local = g_local + (state.a @ m_l.unsqueeze(-1)).squeeze(-1) + state.c @ m_s
        g_shared = g_shared + (state.c.transpose(1, 2) @ m_l.unsqueeze(-1)).squeeze(-1) + state.d @ m_s
    if box is not None:
        lo_l, hi_l, lo_s, hi_s = box
        g_s_total = reduce(torch.where(state.included[:, None], state.g_shared, 0.0).sum(0))
        held_l = held_mask(state.local, state.g_local, lo_l, hi_l)
        held_s = held_mask(state.shared, g_s_total, lo_s, hi_s)
        if moved is not None:
            held_l, held_s = held_l | mask_l, held_s | mask_s
    # e = [C, g_l]; one factorization of each A~ for its P_s + 1 columns: [X, u] = A~^-1 [C, -g_l]
    # (damped_solve solves A~ d = -rhs, with fixed and held coordinates held: their rows are 0)
    e = torch.cat([state.c, g_local.unsqueeze(-1)], dim=-1)
    sign = torch.ones(ps + 1, dtype=e.dtype, device=e.device)
    sign[:ps] = -1.0
    a_damped = state.a
    if state.lam_local is not None:  # Poisson: each fit's own damping, without the edge's spring
        a_damped, lam_b = damped(state), torch.zeros_like(lam_b)
    xu, good = damped_solve(a_damped, e * sign, lam_b, free_local, held_l)
    ok = state.included & good
    newly = state.included & ~ok
    if bool(newly.any()):  # a local block that cannot be factored: the fit leaves the joint problem
        state.fit_status = torch.where(newly, SINGULAR, state.fit_status)
        state.included = ok
    inc = state.included
    d, g_s = state.d, g_shared
    if not bool(inc.all()):  # the sums below are over the fits in the joint problem
        xu = torch.where(inc[:, None, None], xu, 0.0)
        e = torch.where(inc[:, None, None], e, 0.0)
        d = torch.where(inc[:, None, None], d, 0.0)
        g_s = torch.where(inc[:, None], g_s, 0.0)
    # every sum over fits in one reduction: D, g_s and e^T [X, u] = [[C^T X, C^T u], [g_l^T X, g_l.u]]
    # (and, Poisson, the zero counts' Fisher weight above the cap in diag D, left out of its damping)
    parts = [d.sum(0).flatten(), g_s.sum(0), (e.transpose(1, 2) @ xu).sum(0).flatten()]
    edge = state.edge
    if edge is not None:
        parts.append(torch.where(inc[edge.fits, None], edge.excess[:, state.local.shape[1]:], 0.0).sum(0))
    sums = reduce(torch.cat(parts))
    d_tot = sums[:ps * ps].reshape(ps, ps)
    g_s = sums[ps * ps:ps * ps + ps]
    m = sums[ps * ps + ps:ps * ps + ps + (ps + 1) ** 2].reshape(ps + 1, ps + 1)
    ctx, ctu, xtg, gu = m[:ps, :ps], m[:ps, ps], m[ps, :ps], m[ps, ps]
    damping = torch.diagonal(d_tot)
    if edge is not None:
        damping = (damping - sums[ps * ps + ps + (ps + 1) ** 2:]).clamp(min=0.0)
    # S d_s = rhs, with S = D~ - sum C^T A~^-1 C and rhs = -g_s + sum C^T A~^-1 g_l = -g_s - sum C^T u
    schur = d_tot - ctx + torch.diag(damping * state.lam)
    rhs = -g_s - ctu
    active = None
    if held_s is not None or not all(free_shared):
        active = torch.as_tensor([bool(v) for v in free_shared], device=schur.device)
        if held_s is not None:
            active = active & ~held_s
        eye = torch.eye(ps, dtype=schur.dtype, device=schur.device)
        schur = torch.where(active[:, None] & active[None, :], schur, eye)
        rhs = torch.where(active, rhs, 0.0)
    factor, info = torch.linalg.cholesky_ex(schur)
    d_s = torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)
    # one sync for the factorization's verdict and the predicted reduction
    # -(g_l.d_l + g_s.d_s) = -(g_l.u - (X^T g_l).d_s + g_s.d_s), with d_l = u - X d_s
    predicted = -(gu - xtg @ d_s + g_s @ d_s)
    verdict = torch.stack([info.double(), torch.isfinite(schur).all().double(), predicted]).tolist()
    if verdict[0] != 0 or verdict[1] != 1.0:
        return None, None, 0.0, False
    if active is not None:
        d_s = torch.where(active, d_s, 0.0)
    d_l = xu[:, :, ps] - xu[:, :, :ps] @ d_s
    if moved is not None:
        d_l, d_s = d_l + m_l, d_s + m_s
    predicted, unstopped = verdict[2], d_l
    if state.edge is not None:  # Poisson: a zero count's mean driven through 0 lands short of it
        d_l, d_s = on_edges(state, xu, schur, rhs, active, d_l, d_s, moved, a_damped, lam_b, free_local, held_l,
                             reduce)
        unstopped = d_l
        d_l = stop_at_edges(d_l, d_s, state.edge, state.included)
    # a step on a bound's face or the positivity edge: -g.d of that step (before it stops short
    # of another zero count's edge, which would predict little where the deviance still drops);
    # in every Poisson step, whether or not this process corrected one: reduce is collective
    if moved is not None or state.edge is not None:
        predicted = _reduction(state, unstopped, d_s, reduce)
    return d_l, d_s, predicted, True


def _reduction(state: GlobalState, d_local, d_shared, reduce):
    """-g.d of a joint step over the fits taking part: the convergence test's predicted reduction."""
    import torch

    local, shared = (state.g_local * d_local).sum(-1), state.g_shared @ d_shared
    if state.lam_local is not None:  # a damped step predicts little where the undamped one would not
        local, shared = local * (1.0 + state.lam_local), shared * (1.0 + state.lam)
    gd = torch.where(state.included, local + shared, 0.0).sum()
    return -float(reduce(gd.reshape(1))[0])


def _rest_of_step(state: GlobalState, d_local, d_shared, predicted, box, free_local, free_shared, reduce):
    """The joint step with every free coordinate that crosses a bound while next to it (closer
    than ``NEAR`` of its step: resting on it, or approaching it) stopped ``STEP_BACK`` of the
    way there and held, and the others' step solved again given that move (batch_lm's
    ``_box_step``, on the block-arrow system): the step on the bound's face, instead of the
    part of a step that assumed the stopped coordinates would go on; with its predicted
    reduction -g.d of the total (one more sync). Unchanged (one sync) when no coordinate
    of any process is such."""
    import torch

    lo_l, hi_l, lo_s, hi_s = box
    crossed_l = _next_to_crossed(state.local, d_local, lo_l, hi_l, free_local) & state.included[:, None]
    crossed_s = _next_to_crossed(state.shared, d_shared, lo_s, hi_s, free_shared)
    count = reduce(torch.stack([crossed_l.sum().double(), crossed_s.sum().double()]))
    if float(count.sum()) == 0:
        return d_local, d_shared, predicted, True
    m_l = torch.where(crossed_l, stop_short(state.local, state.local + d_local, lo_l, hi_l)[0] - state.local, 0.0)
    m_s = torch.where(crossed_s, stop_short(state.shared, state.shared + d_shared, lo_s, hi_s)[0] - state.shared, 0.0)
    d_l, d_s, face_predicted, ok = _joint_step(state, box, free_local, free_shared, reduce,
                                               moved=(crossed_l, m_l, crossed_s, m_s))
    if not ok:  # the face's Schur complement does not factor: the plain stopped step stands
        return d_local, d_shared, predicted, True
    return d_l, d_s, face_predicted, True


def _next_to_crossed(theta, d, lower, upper, free):
    """Free coordinates whose step ``d`` crosses a bound that is closer than ``NEAR`` of it."""
    import torch

    freem = torch.as_tensor([bool(v) for v in free], device=theta.device)
    target = theta + d
    dist = torch.where(target < lower, theta - lower, torch.where(target > upper, upper - theta, float("inf")))
    return freem & (dist <= NEAR * d.abs())


def _stopped(state: GlobalState, d_local, d_shared, box):
    """The next trial: the accepted point plus the step (zero for the fits outside the joint
    problem, :func:`_joint_step`), stopped short of the bounds."""
    local = state.local + d_local
    shared = state.shared + d_shared
    if box is None:
        return local, shared
    lo_l, hi_l, lo_s, hi_s = box
    return stop_short(state.local, local, lo_l, hi_l)[0], stop_short(state.shared, shared, lo_s, hi_s)[0]


def _snap(state: GlobalState, box, free_local, free_shared, reduce):
    """At convergence: the point with every free coordinate whose one-dimensional Gauss-Newton
    minimum theta_i - g_i / H_ii lies on or beyond a bound moved onto it, or None when there
    is none (in any process)."""
    import torch

    lo_l, hi_l, lo_s, hi_s = box
    d_diag = reduce(torch.where(state.included[:, None, None], state.d, 0.0).sum(0).diagonal().clone())
    g_s = reduce(torch.where(state.included[:, None], state.g_shared, 0.0).sum(0))
    to_lo_l, to_hi_l = _pushing(state.local, state.g_local, state.a.diagonal(dim1=-2, dim2=-1), lo_l, hi_l,
                                free_local)
    to_lo_l, to_hi_l = to_lo_l & state.included[:, None], to_hi_l & state.included[:, None]
    to_lo_s, to_hi_s = _pushing(state.shared, g_s, d_diag, lo_s, hi_s, free_shared)
    count = reduce(torch.stack([(to_lo_l | to_hi_l).sum().double(), (to_lo_s | to_hi_s).sum().double()]))
    if float(count.sum()) == 0:
        return None
    local = torch.where(to_lo_l, lo_l, torch.where(to_hi_l, hi_l, state.local))
    shared = torch.where(to_lo_s, lo_s, torch.where(to_hi_s, hi_s, state.shared))
    return local, shared


def _pushing(theta, g, diag, lower, upper, free):
    """Masks of the free coordinates inside the box whose 1-D Gauss-Newton minimum lies on or
    beyond the lower, and the upper bound."""
    import torch

    theta64 = theta.double()
    reach = g.abs() / torch.where(diag > 0, diag, torch.full_like(diag, float("inf")))
    freem = torch.as_tensor([bool(v) for v in free], device=theta.device)
    lo, hi = lower.double(), upper.double()
    to_lo = freem & (theta64 > lo) & (g > 0) & (theta64 - lo <= reach)
    to_hi = freem & (theta64 < hi) & (g < 0) & (hi - theta64 <= reach)
    return to_lo, to_hi
