"""What float32 can hold: values beyond its range (which a float32 fit would turn into inf) and
columns whose values it cannot tell apart (timestamps, offsets far from zero). Re-exported by
:mod:`gradfit.data.arrays`."""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np

from ..errors import DataError

__all__ = ["BLAS_THREADED", "FLOAT32_MAX", "FLOAT32_RESOLUTION", "check_float32_range", "float32_lossy",
           "float32_lossy_rows", "within_float32_range"]

#: the largest magnitude float32 holds
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: its square: one sum of squares below it bounds every value of an array
FLOAT32_MAX_SQUARED = FLOAT32_MAX**2


#: above this many values, OpenBLAS runs a dot product on its worker threads, which then spin for
#: a while on a core the fit needs (the global fit of 1,000 x 32 float64 values ran up to 1.4x
#: slower on two cores): larger arrays are checked by their minimum and maximum instead
BLAS_THREADED = 8192


def within_float32_range(v: np.ndarray) -> bool:
    """True when every value of the float array ``v`` is finite and within float32's range
    (False for NaN and inf): one sum of squares (a BLAS dot, which bounds every value) for
    small arrays, the minimum and maximum above :data:`BLAS_THREADED` values."""
    if v.size <= BLAS_THREADED:
        # vdot flattens and, unlike matmul, sets no floating-point flags (an overflow to inf
        # needs no errstate, ~1 us a call: this runs on every array of every fit)
        return float(np.vdot(v, v)) <= FLOAT32_MAX_SQUARED
    flat = v.reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(-FLOAT32_MAX <= flat.min() and flat.max() <= FLOAT32_MAX)


def check_float32_range(arrays: Mapping[str, np.ndarray], *, batch: bool = False) -> None:
    """DataError for a finite value beyond float32's range (3.4e38) in any named array, which
    a float32 fit would turn into inf. One fit names the row (1-based); a batch (arrays with
    fits as the leading dimension) names the fit and point (0-based). inf and NaN are left to
    the NaN policy.
    """
    for name, v in arrays.items():
        if v.dtype == np.float32 or v.size == 0:
            continue  # a float32 array holds nothing beyond the range but inf
        with np.errstate(over="ignore", invalid="ignore"):
            if v.dtype.kind == "f" and within_float32_range(v):
                continue
            big = np.abs(v) > FLOAT32_MAX
        if not big.any():
            continue
        big &= np.isfinite(v)
        if not big.any():
            continue
        if batch and v.ndim == 2:
            b, m = (int(i[0]) for i in np.nonzero(big))
            where, value = f"fit {b}, point {m}", float(v[b, m])
        else:
            rows = big.reshape(len(v), -1)
            row = int(np.nonzero(rows.any(axis=1))[0][0])
            where, value = f"row {row + 1}", float(np.abs(v.reshape(len(v), -1)[row]).max())
        raise DataError(f"{name!r} has values beyond float32's range (e.g. {where}: {value:.3g}); "
                        "use dtype='float64' (--dtype float64)")


#: float32 rounding larger than this fraction of a column's range counts as losing its values
FLOAT32_RESOLUTION = 1e-5


def float32_lossy(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the arrays whose values float32 cannot tell apart: rounding to float32 moves
    some value by more than :data:`FLOAT32_RESOLUTION` of its column's range.

    float32 keeps 24 bits: millisecond timestamps (~1.7e12) round to multiples of 131072, so
    a few minutes of data collapse to a handful of distinct values, and x in
    [1e9, 1e9 + 1e3] to steps of 64. Columns that are constant, or already float32, never
    count. One pass over each array (no sort).

    >>> t = 1.7e12 + np.arange(1000.0)                  # one second of millisecond timestamps
    >>> float32_lossy({"t": t, "y": np.sin(t - 1.7e12)})
    ['t']
    >>> len(np.unique(t.astype(np.float32)))
    1
    """
    out = []
    for name, v in arrays.items():
        if v.dtype != np.float64 or v.size < 2:
            continue
        flat = v.reshape(len(v), -1)
        with np.errstate(invalid="ignore", over="ignore"):
            span = np.ptp(flat, axis=0)
            err = np.abs(flat - flat.astype(np.float32)).max(axis=0)
            if np.any((span > 0) & (err > FLOAT32_RESOLUTION * span)):
                out.append(name)
    return out


def float32_lossy_rows(v: np.ndarray, rows: np.ndarray) -> bool:
    """Whether float32 cannot tell apart the values of some fit ``rows`` of a batch array ``v``
    ((B, M), or (M,) shared by every fit): rounding moves a value by more than
    :data:`FLOAT32_RESOLUTION` of that fit's range (a large offset, such as y ~ 1e6 + 5 sin x).
    float32 arrays never count.

    >>> float32_lossy_rows(1e6 + np.sin(np.arange(8.0)), np.array([0]))
    True
    """
    if v.dtype != np.float64 or v.size < 2:
        return False
    part = v[None, :] if v.ndim == 1 else v[rows]
    part = np.where(np.isfinite(part), part, np.nan)  # (missing points and inf count for nothing)
    with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a fit of NaN only: nanmax's all-NaN slice
        span = np.nanmax(part, axis=1) - np.nanmin(part, axis=1)
        err = np.nanmax(np.abs(part - part.astype(np.float32)), axis=1)
    return bool(np.any((span > 0) & (err > FLOAT32_RESOLUTION * span)))
