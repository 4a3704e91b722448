"""The starts of a batch of fits: a free coordinate that starts on a bound where the model does
not depend on it is moved inside, as gf.fit moves it (:func:`gradfit.optim.box.off_flat_bounds`)."""

from __future__ import annotations

import numpy as np

from .end_points import weighted_at

__all__ = ["off_flat_starts"]


def off_flat_starts(model, names, fused, inputs, y, w, sl, theta0, lower, upper, free, device) -> np.ndarray:
    """This chunk's starts (k, P), with a free coordinate that starts on a bound where the model
    does not depend on it (a zero Jacobian column, such as ``c**2`` at ``c = 0``: a saddle no
    gradient step leaves) moved inside by ``START_STEP * max(1, |bound|)``, as gf.fit moves it
    (:func:`gradfit.optim.box.off_flat_bounds`). Evaluates the Jacobian only where a start is on
    a bound."""
    from ..optim.box import START_STEP

    start, lo, hi = theta0[sl], lower[sl], upper[sl]
    fr = np.asarray(free, dtype=bool)[None, :]
    on = fr & ((start <= lo) | (start >= hi)) & (lo < hi)
    todo = np.nonzero(on.any(axis=1))[0]
    if not todo.size:
        return start
    jac, _ = weighted_at(model, names, fused, inputs, y, w, sl.start + todo, start[todo], free, device)
    flat = np.zeros(on[todo].shape, dtype=bool)
    flat[:, np.nonzero(free)[0]] = ~np.any(jac != 0, axis=1)  # a zero column (NaN is not zero)
    sub, lo_s, hi_s = start[todo], lo[todo], hi[todo]
    at_lo, at_hi = on[todo] & flat & (sub <= lo_s), on[todo] & flat & (sub >= hi_s)
    with np.errstate(invalid="ignore"):  # infinite bounds, in the branches not taken
        new = np.where(at_lo, lo_s + START_STEP * np.maximum(1.0, np.abs(lo_s)),
                       np.where(at_hi, hi_s - START_STEP * np.maximum(1.0, np.abs(hi_s)), sub))
        inside = (new > lo_s) & (new < hi_s)
        moved = at_lo | at_hi
        new = np.where(moved & ~inside, 0.5 * (lo_s + hi_s), new)  # a box too narrow for the step
    start = start.copy()
    start[todo] = new
    return start
