"""Arguments of :func:`gradfit.curve_fit`, checked and normalised by scipy.optimize.curve_fit's
rules (same errors, same exception types, same defaults), so that :mod:`.scipy_compat` only
wires them to gradfit's least squares.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import ConfigError, DataError, GradfitError

__all__ = ["CurveFitTypeError", "optimize_warning", "CurveFitData", "parameter_names", "parse_bounds",
           "start_values", "choose_method", "prepare_data", "solver_keywords"]

METHODS = ("lm", "trf", "dogbox")
NAN_POLICIES = (None, "raise", "omit")
#: scipy keywords of leastsq / least_squares that gradfit's solver has no counterpart for
_UNSUPPORTED = ("loss", "f_scale", "x_scale", "diag", "epsfcn", "factor", "col_deriv", "diff_step", "tr_solver",
                "tr_options", "lsmr_tol", "jac_sparsity", "Dfun", "x0", "kwargs")


class CurveFitTypeError(GradfitError, TypeError):
    """A curve_fit call scipy refuses with TypeError (more parameters than data points, an
    unknown keyword)."""


@lru_cache(maxsize=1)
def optimize_warning() -> type[Warning]:
    """scipy.optimize.OptimizeWarning when scipy is installed (so filters written for scipy
    keep working), else a local UserWarning subclass of the same name."""
    try:
        from scipy.optimize import OptimizeWarning
    except ImportError:  # scipy is optional
        class OptimizeWarning(UserWarning):
            """Warning of gradfit.curve_fit (scipy.optimize.OptimizeWarning when scipy is installed)."""
    return OptimizeWarning


def parameter_names(f, p0) -> tuple[tuple[str, ...], np.ndarray | None]:
    """(parameter names, p0 as a 1-D float array or None). Without p0 the number of
    parameters is read from f's signature (everything after the input), as scipy does."""
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        params = []
    named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]
    if p0 is None:
        if not named:
            raise ConfigError("Unable to determine number of fit parameters. f must take the input first and the "
                              "parameters after it, f(x, a, b, ...), or pass p0 with one value per parameter")
        return tuple(named), None
    p0 = np.atleast_1d(np.asarray(p0, dtype=float))
    if p0.ndim != 1:
        raise ConfigError(f"p0 must be 1-D (one value per parameter), got shape {p0.shape}")
    if len(named) == p0.size:
        return tuple(named), p0
    return tuple(f"p{i}" for i in range(p0.size)), p0


def parse_bounds(bounds, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) float arrays of length n from a scipy.optimize.Bounds or a 2-tuple of
    scalars or arrays."""
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        lo, hi = bounds.lb, bounds.ub
    else:
        try:
            lo, hi = bounds
        except (TypeError, ValueError):
            raise ConfigError(f"bounds must be a scipy.optimize.Bounds or a 2-tuple (lower, upper), got {bounds!r}") \
                from None
    try:
        lo = np.broadcast_to(np.asarray(lo, dtype=float), (n,)).copy()
        hi = np.broadcast_to(np.asarray(hi, dtype=float), (n,)).copy()
    except ValueError:
        raise ConfigError(f"bounds must be scalars or have one value per parameter ({n})") from None
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise ConfigError("bounds must not be NaN; use -np.inf / np.inf for no bound")
    if not (lo < hi).all():
        j = int(np.nonzero(~(lo < hi))[0][0])
        raise ConfigError(f"Each lower bound must be strictly less than each upper bound (parameter {j}: "
                          f"[{lo[j]:g}, {hi[j]:g}])")
    return lo, hi


def start_values(f, names, p0, lo, hi) -> np.ndarray:
    """p0, or scipy's default start: ones, moved inside two-sided bounds (their midpoint)
    and one-sided bounds (one unit inside); defaults in f's signature come first."""
    if p0 is not None:
        outside = (p0 < lo) | (p0 > hi)
        if outside.any():
            j = int(np.nonzero(outside)[0][0])
            raise ConfigError(f"Initial guess is outside of provided bounds: p0[{j}] = {p0[j]:g} is not in "
                              f"[{lo[j]:g}, {hi[j]:g}]; move p0 inside the bounds")
        return p0
    start = np.ones(len(names))
    both, low, high = np.isfinite(lo) & np.isfinite(hi), np.isfinite(lo), np.isfinite(hi)
    start[both] = 0.5 * (lo[both] + hi[both])
    start[low & ~high] = lo[low & ~high] + 1.0
    start[high & ~low] = hi[high & ~low] - 1.0
    try:
        params = inspect.signature(f).parameters
    except (TypeError, ValueError):
        params = {}
    for j, name in enumerate(names):
        p = params.get(name)
        if p is not None and isinstance(p.default, (int, float)) and not isinstance(p.default, bool) \
                and lo[j] <= p.default <= hi[j]:
            start[j] = float(p.default)
    return start


def choose_method(method, bounded: bool) -> str:
    """scipy's rule: None is 'trf' with bounds and 'lm' without; 'lm' refuses bounds."""
    if method is None:
        return "trf" if bounded else "lm"
    if method not in METHODS:
        raise ConfigError(f"method must be 'trf', 'dogbox' or 'lm' (or None), got {method!r}")
    if method == "lm" and bounded:
        raise ConfigError("Method 'lm' only works for unconstrained problems. Use 'trf' or 'dogbox' instead.")
    return method


@dataclass
class CurveFitData:
    """xdata as f receives it, ydata (1-D float) and sigma after NaN handling."""

    xdata: object
    ydata: np.ndarray
    sigma: object


def prepare_data(xdata, ydata, sigma, check_finite, nan_policy) -> CurveFitData:
    """Convert and check the data by scipy's rules: ydata (and array-like xdata) become
    float64 arrays; check_finite (default: True unless nan_policy is given) refuses NaN and
    inf; nan_policy 'raise' refuses NaN, 'omit' drops every point where x or y is NaN (along
    xdata's last axis), with its row and column of a 2-D sigma."""
    if nan_policy == "propagate":
        raise ConfigError("`nan_policy='propagate'` is not supported by this function.")
    if nan_policy not in NAN_POLICIES:
        raise ConfigError(f"nan_policy must be one of {{None, 'raise', 'omit'}}, got {nan_policy!r}")
    if check_finite is None:
        check_finite = nan_policy is None
    y = _float_array(ydata, "ydata", check_finite)
    if isinstance(xdata, (list, tuple, np.ndarray)) or hasattr(xdata, "__array__"):
        xdata = _float_array(xdata, "xdata", check_finite)
    if y.size == 0:
        raise DataError("`ydata` must not be empty!")
    if y.ndim > 1:
        y = y.ravel()
    if not check_finite and nan_policy is not None:
        x_nan = np.isnan(xdata) if isinstance(xdata, np.ndarray) else np.zeros(y.shape, dtype=bool)
        y_nan = np.isnan(y)
        if (x_nan.any() or y_nan.any()) and nan_policy == "raise":
            raise DataError("The input contains nan values; remove them, or pass nan_policy='omit'")
        if nan_policy == "omit" and (x_nan.any() or y_nan.any()):
            drop = x_nan.any(axis=tuple(range(x_nan.ndim - 1))) if x_nan.ndim else np.zeros(y.shape, dtype=bool)
            drop = drop | y_nan
            keep = ~drop
            if isinstance(xdata, np.ndarray) and xdata.ndim:
                xdata = xdata[..., keep]
            y = y[keep]
            if sigma is not None:
                sigma = np.asarray(sigma, dtype=float)
                if sigma.ndim == 1 and sigma.size == keep.size:
                    sigma = sigma[keep]
                elif sigma.ndim == 2:
                    sigma = sigma[keep][:, keep]
            if y.size == 0:
                raise DataError("every point has a NaN: nothing is left to fit")
    return CurveFitData(xdata, y, sigma)


def _float_array(values, name: str, check_finite: bool) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise DataError(f"{name} must be numeric ({err})") from None
    if check_finite and not np.isfinite(out).all():
        raise DataError(f"{name} must not contain infs or NaNs; remove them, or pass nan_policy='omit'")
    return out


def solver_keywords(kwargs: dict) -> tuple[int | None, dict]:
    """(maxfev, gradfit fit keywords) from curve_fit's extra keywords: maxfev / max_nfev (a
    budget of calls to f), ftol / xtol / gtol (one tolerance, the smallest given), and
    gradfit's own max_iter and tol. 'args' is refused as scipy refuses it; scipy options
    gradfit has no counterpart for are a ConfigError, unknown ones a TypeError."""
    kwargs = dict(kwargs)
    if "args" in kwargs:
        raise ConfigError("'args' is not a supported keyword argument. f takes the input and the parameters only; "
                          "bind other arguments with a lambda or functools.partial")
    maxfev = kwargs.pop("max_nfev", None)
    fev = kwargs.pop("maxfev", None)
    maxfev = fev if maxfev is None else maxfev
    if maxfev is not None and (int(maxfev) != maxfev or maxfev < 1):
        raise ConfigError(f"maxfev must be a positive integer, got {maxfev!r}")
    tols = [kwargs.pop(k) for k in ("ftol", "xtol", "gtol") if kwargs.get(k) is not None]
    kwargs.pop("verbose", None)  # scipy's progress printing: gradfit's curve_fit is silent
    out = {}
    if tols:
        out["tol"] = float(min(tols))
    for key in ("max_iter", "tol"):
        if kwargs.get(key) is not None:
            out[key] = kwargs.pop(key)
    for key in ("ftol", "xtol", "gtol"):
        kwargs.pop(key, None)
    for key in kwargs:
        if key in _UNSUPPORTED:
            raise ConfigError(f"curve_fit option {key}= is not supported by gradfit (its Levenberg-Marquardt scales "
                              "parameters and chooses steps itself); leave it out")
        raise CurveFitTypeError(f"curve_fit() got an unexpected keyword argument {key!r}")
    return (None if maxfev is None else int(maxfev)), out
