"""What fit_many tells the user about fits that failed for a reason they can act on: Poisson
starts without a likelihood, float32 too coarse for the data or the tolerance, fits without
degrees of freedom (GradfitWarnings naming the fits and the remedy)."""

from __future__ import annotations

import numpy as np

__all__ = ["FLOAT32_TOL", "warn_float32_limits", "warn_float32_shared_tol", "warn_infeasible_starts", "warn_no_dof"]


def warn_infeasible_starts(solution, offset: int) -> None:
    """A Poisson fit whose start and least-squares fit both have no likelihood (a model mean
    <= 0 or not finite at a used point) ends not_finite: say which, and what to do."""
    from ..errors import warn_user
    from ..status import Status

    bad = np.nonzero((solution.status == Status.NOT_FINITE.code) & np.isinf(solution.chisqr))[0]
    if bad.size:
        first = ", ".join(str(int(i) + offset) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
        warn_user(f"fit_many(loss='poisson'): {bad.size} fit(s) (fit {first}) start where the model's mean is <= 0 "
                  "or not finite at a point with data, and so does their least-squares fit; they end not_finite. "
                  "Start them where the model is positive (e.g. a positive offset), or bound it positive")


def warn_float32_limits(solution, arrays: dict, tol: float, offset: int) -> None:
    """float32 fits that ended singular, stalled or at max_iter because of float32 itself: the
    values of their data round by more than 1e-5 of their range (a large offset), or ``tol``
    asks for chi-square changes below what float32 sums resolve (a warning naming the remedy,
    as gf.fit's notes do; nothing is checked when every fit converged)."""
    from ..data.float32 import float32_lossy_rows
    from ..errors import warn_user
    from ..status import Status

    failed = np.isin(solution.status, [Status.SINGULAR.code, Status.STALLED.code, Status.MAX_ITERATIONS.code])
    if not failed.any():
        return
    rows = np.nonzero(failed)[0]
    first = ", ".join(str(int(i) + offset) for i in rows[:5]) + (", ..." if rows.size > 5 else "")
    lossy = [name for name, v in arrays.items() if float32_lossy_rows(v, rows)]
    if lossy:
        warn_user(f"fit_many: {rows.size} fit(s) (fit {first}) ended singular, stalled or at max_iter, and float32 "
                  f"cannot tell apart the values of {', '.join(lossy)} there (rounding exceeds 1e-5 of a fit's range, "
                  "e.g. a large offset); use dtype='float64' (--dtype float64) or subtract the offset")
    elif tol < FLOAT32_TOL and (solution.status == Status.MAX_ITERATIONS.code).any():
        warn_user(f"fit_many: tol={tol:g} asks for chi-square changes below what float32 sums resolve (~{FLOAT32_TOL:g} "
                  f"of chi-square); {int((solution.status == Status.MAX_ITERATIONS.code).sum())} fit(s) ran to max_iter. "
                  "Use dtype='float64' (--dtype float64) for a tighter tol")


#: below this relative change of chi-square, float32 sums over a fit's points are rounding
FLOAT32_TOL = 1e-6


def warn_float32_shared_tol(tol: float) -> None:
    """A float32 global fit (``shared=``) with ``tol`` below what float32 sums resolve: the joint
    test then stops at the rounding level of the total chi-square, not at ``tol`` (a warning
    naming the remedy; the independent fits warn when they run to max_iter instead)."""
    from ..errors import warn_user

    if tol < FLOAT32_TOL:
        warn_user(f"fit_many: tol={tol:g} asks for chi-square changes below what float32 sums resolve (~{FLOAT32_TOL:g} "
                  "of chi-square); the shared fit stops at float32's rounding level instead. Use dtype='float64' "
                  "(--dtype float64) for a tighter tol")


def warn_no_dof(solution, n_free: int, offset: int) -> None:
    """Fits with as many points as free parameters: their standard errors are undetermined
    (NaN), as gf.fit warns for one fit."""
    from ..errors import warn_user
    from ..status import Status

    none = np.nonzero((solution.n_used == n_free) & (solution.status == Status.CONVERGED.code))[0]
    if none.size:
        first = ", ".join(str(int(i) + offset) for i in none[:5]) + (", ..." if none.size > 5 else "")
        warn_user(f"fit_many: {none.size} fit(s) (fit {first}) have no degrees of freedom (as many points as free "
                  "parameters): their standard errors are undetermined (NaN); fit more points per fit, or fix a "
                  "parameter")
