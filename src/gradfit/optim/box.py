"""Box bounds for Levenberg-Marquardt (optim/lm.py): where a trial step that leaves the box
lands, a start moved off a bound where the model is flat, and the final move onto the
bounds that are active.

Iterates stay strictly inside the box, as in the trust-region reflective method of Branch,
Coleman & Li (1999, scipy's ``trf``): a step that crosses a bound is never projected onto it,
because a bound reached by projection can be a point where the model's derivative in that
parameter vanishes (a model symmetric about its bound, such as ``c**2`` or
``sqrt(x**2 + c**2)`` at ``c = 0``): the gradient there is zero, and no gradient method
leaves it although the optimum is inside. Instead a crossing coordinate is first reflected
off the bound (the step of the folded problem: for a model symmetric about the bound, exactly
the unconstrained step), and, when the reflection is rejected, stops short of the bound, a
fraction :func:`step_back` (at least ``THETA``, tending to 1 near a solution) of the way, while
the other coordinates' step is solved again on that face (:func:`rest_of_step`). Only when the
run has converged are coordinates next to a bound, with the gradient pointing out of the box,
moved onto it (:func:`onto_bounds`): accepted if the cost does not rise, so an optimum that lies
on a bound is reached exactly and reported as active.
"""

from __future__ import annotations

import numpy as np

from .finite import as_real

__all__ = ["START_STEP", "THETA", "off_flat_bounds", "onto_bounds", "pushing", "rest_of_step", "step_back",
           "toward_bounds", "trial_point"]

#: fraction of the way to a bound that a truncated step goes (scipy trf's lower limit)
THETA = 0.995
#: relative distance a start on a bound where the model is flat is moved inside (scipy's
#: make_strictly_feasible)
START_STEP = 1e-10


def off_flat_bounds(x: np.ndarray, col_norms: np.ndarray, box) -> np.ndarray | None:
    """``x`` with the coordinates that rest on a bound where the model's derivative in them
    vanishes (a zero Jacobian column) moved inside by ``START_STEP * max(1, |bound|)``, or
    None when there are none. Such a start is a stationary point of every gradient method."""
    lo, hi = box
    flat = col_norms == 0
    at_lo, at_hi = flat & (x <= lo) & (lo < hi), flat & (x >= hi) & (lo < hi)
    if not (at_lo.any() or at_hi.any()):
        return None
    new = x.copy()
    new[at_lo] = lo[at_lo] + START_STEP * np.maximum(1.0, np.abs(lo[at_lo]))
    new[at_hi] = hi[at_hi] - START_STEP * np.maximum(1.0, np.abs(hi[at_hi]))
    return _inside(new, x, lo, hi)


def _inside(new: np.ndarray, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``new`` where it is strictly inside, else the midpoint of a box too narrow for it."""
    bad = (new <= lo) | (new >= hi)
    return np.where(bad & (lo < hi), 0.5 * (lo + hi), np.where(bad, x, new))


def trial_point(x: np.ndarray, dx: np.ndarray, box, reflect: bool, theta: float = THETA) -> tuple[np.ndarray, object]:
    """Where the step ``dx`` from ``x`` (inside the box, or on a bound) lands, and how:
    ``(x + dx, None)`` inside the box; ``(point, "reflected")`` when ``reflect`` and every
    coordinate that crosses a bound overshoots it by less than its distance to it, so that
    reflected off the bound it still moves the way the step sends it; else ``(point, mask)``
    with the crossing coordinates (``mask``) stopped ``theta`` of the way to their bound (one
    resting on that bound stays there). ``x``, ``dx``: (P,); ``box``: (lower, upper) (P,).

    >>> box = (np.array([0.0]), np.array([np.inf]))
    >>> trial_point(np.array([0.5]), np.array([-0.8]), box, True)
    (array([0.3]), 'reflected')
    >>> trial_point(np.array([0.5]), np.array([-2.0]), box, True, 0.9)
    (array([0.05]), array([ True]))
    """
    lo, hi = box
    target = x + dx
    below, above = target < lo, target > hi
    if not (below.any() or above.any()):
        return target, None
    if reflect:
        back = np.where(below, 2.0 * lo - target, np.where(above, 2.0 * hi - target, target))
        if ((back <= x) | ~below).all() and ((back >= x) | ~above).all():
            return np.minimum(np.maximum(back, lo), hi), "reflected"
    new = np.where(below, x + theta * (lo - x), np.where(above, x + theta * (hi - x), target))
    return np.minimum(np.maximum(new, lo), hi), below | above


def rest_of_step(subproblem, jac: np.ndarray, r: np.ndarray, d: np.ndarray, lam: float, x: np.ndarray,
                 x_new: np.ndarray, stopped: np.ndarray, keep, box, theta: float = THETA) -> np.ndarray:
    """The trial point with the step of the coordinates that did not cross a bound solved
    again, the ``stopped`` ones (a mask) fixed where they stopped and the same damping
    ``lam``: the Levenberg-Marquardt step on that face, instead of the part of a step that
    assumed the stopped coordinates would go on. ``subproblem`` is
    :class:`gradfit.optim.trust_region.Subproblem`; ``keep`` None or the indices the step may
    move. A coordinate the new step takes across a bound stops short of it too."""
    free = ~stopped if keep is None else (~stopped & np.isin(np.arange(x.size), keep))
    if not free.any():
        return x_new
    moved = x_new - x
    sub = subproblem(jac[:, free], r + jac[:, stopped] @ moved[stopped], d[free])
    dx = np.where(stopped, moved, 0.0)
    dx[free] = sub.step(lam) / d[free]
    new, _ = trial_point(x, dx, box, False, theta)
    return new


def toward_bounds(x: np.ndarray, gradient: np.ndarray, col_norms: np.ndarray, box) -> np.ndarray | None:
    """``x`` with the coordinates whose Gauss-Newton minimum along that coordinate alone,
    ``x_i - g_i / ||J_i||^2``, lies on or beyond a bound moved onto that bound, or None when
    there are none (``gradient`` = J^T r, ``col_norms`` = ||J_i||). The caller keeps the point
    only if the cost does not rise."""
    to_lo, to_hi = pushing(x, gradient, col_norms, box)
    if not (to_lo.any() or to_hi.any()):
        return None
    return np.where(to_lo, box[0], np.where(to_hi, box[1], x))


def step_back(x: np.ndarray, gradient: np.ndarray, col_norms: np.ndarray, r_norm: float, exempt, box) -> float:
    """The fraction of the way to a bound that a step crossing it goes: ``max(THETA, 1 - m)``
    with ``m`` the largest cosine ``|g_i| / (||J_i|| ||r||)`` over the coordinates not
    ``exempt``, each shrunk by ``sqrt(distance / reach)`` when the Gauss-Newton step along it
    alone (length ``reach``) would cross its bound: a scale-free form of Coleman & Li's
    scaling (scipy trf's ``theta = max(0.995, 1 - ||g_h||)``). Near a solution it tends to 1,
    so an active bound is approached superlinearly."""
    if r_norm == 0:
        return 1.0 - _EPS
    lo, hi = box
    cn = np.where(col_norms > 0, col_norms, np.inf)
    cosine = np.abs(gradient) / (cn * r_norm)
    reach = np.abs(gradient) / cn**2
    dist = np.where(gradient > 0, x - lo, hi - x)
    shrink = np.sqrt(np.minimum(1.0, np.divide(dist, reach, out=np.ones_like(dist), where=reach > 0)))
    measure = cosine * shrink
    if exempt is not None:
        measure = np.where(exempt, 0.0, measure)
    m = float(measure.max()) if measure.size else 0.0
    return min(1.0 - _EPS, max(THETA, 1.0 - m)) if m == m else THETA


_EPS = float(np.finfo(np.float64).eps)


def pushing(x: np.ndarray, gradient: np.ndarray, col_norms: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the coordinates inside the box whose Gauss-Newton minimum along that
    coordinate alone lies on or beyond the lower bound, and the upper bound."""
    lo, hi = box
    reach = np.abs(gradient) / np.where(col_norms > 0, col_norms, np.inf) ** 2
    return (x > lo) & (gradient > 0) & (x - lo <= reach), (x < hi) & (gradient < 0) & (hi - x <= reach)


def onto_bounds(residual, jacobian, x, gradient, col_norms, fnorm: float, box):
    """Move a converged point onto the bounds :func:`toward_bounds` picks, when that does not
    raise the residual norm ``fnorm``. Returns ((x, residuals, Jacobian) at the new point, or
    None) and the numbers of residual and Jacobian evaluations spent."""
    x_new = toward_bounds(x, gradient, col_norms, box)
    if x_new is None:
        return None, 0, 0
    r_new = as_real(residual(x_new))
    # a rise at rounding level is no rise: the same model values evaluated by another program
    # (a fused value-and-Jacobian one, say) can differ in the last bit
    if not float(np.sqrt(r_new @ r_new)) <= fnorm * (1.0 + 16.0 * _EPS):  # NaN too
        return None, 1, 0
    jac = as_real(jacobian(x_new))
    return ((x_new, r_new, jac) if np.isfinite(jac).all() else None), 1, 1
