"""The internal coordinates of bounded parameters: the MINUIT/lmfit transforms that map an
unbounded u to a parameter inside its bounds (see :mod:`gradfit.models.parameters`).

* two-sided bounds: ``p = lo + (hi - lo) * (sin(u) + 1) / 2``
* lower bound only: ``p = lo - 1 + sqrt(u^2 + 1)``; upper only: ``p = hi + 1 - sqrt(u^2 + 1)``

Source: F. James, MINUIT Reference Manual (CERN D506), sec. "Parameter limits"; lmfit's
bounds implementation.
"""

from __future__ import annotations

import math

__all__ = ["MIN_SLOPE", "U_MAX", "U_MIN", "from_internal", "from_internal_float", "to_internal"]

#: smallest slope dp/du (relative to the slope far from the bounds) a start keeps: the
#: transforms are flat exactly on a bound, so a start there (or closer than ~1e-3 of the
#: transform's scale) is moved just inside, where the gradient can move it (first-order
#: training; least squares handles bounds as a box and needs no transform)
MIN_SLOPE = 0.05
U_MIN = MIN_SLOPE / math.sqrt(1.0 - MIN_SLOPE**2)  # one-sided: u/sqrt(u^2+1) = MIN_SLOPE
U_MAX = math.acos(MIN_SLOPE)  # two-sided: cos(u) = MIN_SLOPE


def to_internal(v: float, lo: float, hi: float) -> float:
    """Parameter value -> internal coordinate, kept where the slope is at least MIN_SLOPE."""
    if math.isfinite(lo) and math.isfinite(hi):
        u = math.asin(max(-1.0, min(1.0, 2.0 * (v - lo) / (hi - lo) - 1.0)))
        return max(-U_MAX, min(U_MAX, u))
    if math.isfinite(lo):
        return max(U_MIN, math.sqrt(max((v - lo + 1.0) ** 2 - 1.0, 0.0)))
    if math.isfinite(hi):
        return max(U_MIN, math.sqrt(max((hi - v + 1.0) ** 2 - 1.0, 0.0)))
    return v


def from_internal(u, lo: float, hi: float, lib=None):
    """Internal coordinate -> parameter value; ``lib`` is math (floats) or torch (tensors)."""
    if lib is None:
        import torch as lib
    if math.isfinite(lo) and math.isfinite(hi):
        return lo + (hi - lo) * (lib.sin(u) + 1.0) / 2.0
    if math.isfinite(lo):
        return lo - 1.0 + lib.sqrt(u * u + 1.0)
    if math.isfinite(hi):
        return hi + 1.0 - lib.sqrt(u * u + 1.0)
    return u


def from_internal_float(u: float, lo: float, hi: float) -> float:
    """:func:`from_internal` for one float."""
    return from_internal(u, lo, hi, math)
