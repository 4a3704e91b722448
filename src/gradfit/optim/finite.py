"""A model's values as the least-squares kernels need them: real float64 arrays, and what to
tell the user when they are not finite."""

from __future__ import annotations

import numpy as np

__all__ = ["as_real", "not_finite_message"]


def as_real(values) -> np.ndarray:
    """``values`` as a float64 array without ever casting complex to real: a complex result
    (a negative base raised to a fractional power in Python scalars) is NaN wherever its
    imaginary part is not zero, so a trial step there fails like any non-finite one and no
    ComplexWarning escapes."""
    if type(values) is np.ndarray and values.dtype == np.float64:
        return values  # the common case, on every residual evaluation
    arr = np.asarray(values)
    if np.iscomplexobj(arr):
        return np.where(arr.imag == 0, arr.real, np.nan).astype(np.float64)
    return np.asarray(arr, dtype=np.float64)


def not_finite_message(values: np.ndarray, where: str = "at the starting values",
                       fix: str = "change the starting values (init), the bounds or the formula so that it "
                                  "is defined there") -> str:
    """What to tell the user when the model (through its residuals or terms, one row per data
    point: ``values`` (n,) or (n, k)) is not finite ``where``: the first rows, 1-based."""
    bad = ~np.isfinite(np.asarray(values).reshape(len(values), -1)).all(axis=1)
    rows = np.nonzero(bad)[0]
    shown = ", ".join(str(i + 1) for i in rows[:8]) + (" ..." if len(rows) > 8 else "")
    return (f"the model is not finite {where} in {len(rows)} of {len(bad)} data row(s): {shown} (1-based); "
            f"nothing was fitted: {fix}")
