"""``curve_fit``: scipy.optimize.curve_fit's interface on gradfit's least squares.

Same call, same return shapes: ``popt, pcov = curve_fit(f, xdata, ydata, p0, sigma,
absolute_sigma, bounds)``. Differences: ``f`` must be written with torch operations (so its
Jacobian is exact, from autograd, instead of finite differences), and every ``method``
runs gradfit's Levenberg-Marquardt (bounds by smooth transforms).
"""

from __future__ import annotations

import inspect
import math
import warnings

import numpy as np

from ..errors import ConfigError
from ..models.function import FunctionModel
from ..models.parameters import feasible_start

__all__ = ["curve_fit"]


def _param_names(f, p0) -> tuple[str, ...]:
    sig = inspect.signature(f)
    params = list(sig.parameters.values())
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        if p0 is None:
            raise ConfigError("f takes *args: pass p0 so the number of parameters is known")
        return tuple(f"p{i}" for i in range(len(np.atleast_1d(p0))))
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][1:]
    if not names:
        raise ConfigError("f must take the input first and at least one parameter: f(x, a, ...)")
    if p0 is not None and len(np.atleast_1d(p0)) != len(names):
        raise ConfigError(f"p0 has {len(np.atleast_1d(p0))} values but f has {len(names)} parameters")
    return tuple(names)


def _bounds(bounds, names) -> dict:
    lo, hi = bounds
    lo = np.broadcast_to(np.asarray(lo, dtype=float), (len(names),))
    hi = np.broadcast_to(np.asarray(hi, dtype=float), (len(names),))
    out = {}
    for n, a, b in zip(names, lo, hi):
        if math.isfinite(a) or math.isfinite(b):
            out[n] = (a if math.isfinite(a) else None, b if math.isfinite(b) else None)
    return out


def curve_fit(f, xdata, ydata, p0=None, sigma=None, absolute_sigma=False, check_finite=None,
              bounds=(-np.inf, np.inf), method=None, jac=None, *, full_output=False, nan_policy=None, **kw):
    """Fit ``f(x, *params)`` to data by least squares; returns ``(popt, pcov)``.

    Parameters follow scipy.optimize.curve_fit. ``p0`` defaults to ones (or the defaults in
    f's signature); ``sigma`` is 1-D (per-point standard deviations); ``bounds`` is a
    2-tuple of scalars or arrays. Extra keywords go to :func:`gradfit.fit` (e.g.
    ``max_iter``); the default dtype is float64, like scipy. ``jac`` is ignored: the Jacobian
    is always exact.

    >>> import torch
    >>> x = np.linspace(0, 4, 20)
    >>> popt, pcov = curve_fit(lambda x, a, k: a * torch.exp(-k * x), x, 2.5 * np.exp(-1.3 * x))
    >>> np.round(popt, 6)
    array([2.5, 1.3])
    """
    from .fit import fit

    if method not in (None, "lm", "trf", "dogbox"):
        raise ConfigError(f"method must be None, 'lm', 'trf' or 'dogbox', got {method!r}")
    names = _param_names(f, p0)
    x = np.asarray(xdata, dtype=float)
    func = f
    if x.ndim == 2:
        # scipy passes (k, M) inputs to f unchanged; gradfit stores one row per point
        def func(xx, *p, _f=f):
            return _f(xx.T, *p)
        x = x.T
    model = FunctionModel(func, names, positional=True)
    if p0 is not None:
        init = dict(zip(names, (float(v) for v in np.atleast_1d(p0))))
    else:
        init = FunctionModel(f).guess({}, None) if not _variadic(f) else {n: 1.0 for n in names}
        init = feasible_start({n: init.get(n, 1.0) for n in names}, _bounds(bounds, names))
    keywords = {"dtype": "float64", **kw}
    if nan_policy in ("omit", "raise"):
        keywords["nan_policy"] = nan_policy
    r = fit(model, x=x, y=ydata, init=init, sigma=sigma, absolute_sigma=absolute_sigma, bounds=_bounds(bounds, names),
            optimizer="lm", progress=False, **keywords)
    popt = np.array([r.params[n] for n in names])
    pcov = np.array(r.covariance, dtype=float)
    if not np.isfinite(pcov).all():
        warnings.warn("Covariance of the parameters could not be estimated", RuntimeWarning, stacklevel=2)
        pcov = np.where(np.isfinite(pcov), pcov, np.inf)
    if r.status not in ("converged", "singular"):
        warnings.warn(f"curve_fit: {r.status}: {r.message}", RuntimeWarning, stacklevel=2)
    if full_output:
        pred = r.predict(x)
        infodict = {"nfev": r.epochs_run, "fvec": pred - np.asarray(ydata, dtype=float)}
        ier = 1 if r.status in ("converged", "singular") else 5
        return popt, pcov, infodict, r.message, ier
    return popt, pcov


def _variadic(f) -> bool:
    return any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(f).parameters.values())
