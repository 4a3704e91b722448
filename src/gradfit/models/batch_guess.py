"""Starting values for many fits at once (fit_many's init="guess").

Built-in curves have vectorized guesses for data shared on one x grid (the common case:
pixels, wells, sensors); anything else falls back to the single-fit guess, fit by fit.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

__all__ = ["batch_guess"]


def batch_guess(model, inputs: dict, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B, P) starting values for ``model`` on rows of ``y`` (weights 0 mark unused points)."""
    from .builtin import BuiltinModel

    if not isinstance(model, BuiltinModel):
        raise ConfigError("init='guess' needs a built-in model (gaussian, exp_decay, ...); pass init values")
    x = next(iter(inputs.values()))
    yy = np.where(w > 0, y, np.nan)
    vectorized = _VECTORIZED.get(model.name.split(":")[0])
    if x.ndim == 1 and vectorized is not None and np.isfinite(yy).all():
        values = vectorized(x, yy, model)
        return np.column_stack([np.nan_to_num(values[n], nan=1.0) for n in model.param_names])
    rows = []
    for b in range(y.shape[0]):
        xb = x if x.ndim == 1 else x[b]
        ok = w[b] > 0
        g = model.guess({"x": xb[ok]}, y[b][ok]) if ok.sum() >= 2 else {n: 1.0 for n in model.param_names}
        rows.append([g[n] for n in model.param_names])
    return np.asarray(rows, dtype=float)


def _edges(y: np.ndarray, frac: float = 0.1):
    k = max(1, int(y.shape[1] * frac))
    return y[:, :k].mean(axis=1), y[:, -k:].mean(axis=1)


def _peak(x, y):
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[:, order]
    lo, hi = _edges(y)
    c = np.minimum(lo, hi)
    i = np.argmax(y - c[:, None], axis=1)
    a = y[np.arange(len(y)), i] - c
    center = x[i]
    half = (y - c[:, None]) >= (a / 2)[:, None]
    spacing = (x.max() - x.min()) / max(len(x) - 1, 1)
    width = half.sum(axis=1) * spacing
    width = np.where(width > 0, width, spacing)
    return a, center, width, c


def _gaussian(x, y, model):
    a, mu, fwhm, c = _peak(x, y)
    return {"a": a, "mu": mu, "sigma": fwhm / 2.3548, "c": c}


def _lorentzian(x, y, model):
    a, x0, fwhm, c = _peak(x, y)
    return {"a": a, "x0": x0, "gamma": fwhm / 2.0, "c": c}


def _linear_family(x, y, model):
    names = model.param_names
    degree = len(names) - 1
    design = np.vander(x, degree + 1, increasing=True)
    coef, *_ = np.linalg.lstsq(design, y.T, rcond=None)  # one solve for every fit
    if model.name == "linear":
        return {"intercept": coef[0], "slope": coef[1]}
    return {f"c{i}": coef[i] for i in range(degree + 1)}


_VECTORIZED = {"gaussian": _gaussian, "lorentzian": _lorentzian, "linear": _linear_family, "poly": _linear_family}
