"""What a fit plot shows, decided from the result and the data (no matplotlib here): axis
labels, the x scale, which points were held out for validation, and how densely to draw."""

from __future__ import annotations

import numpy as np

__all__ = ["axis_names", "response_name", "x_scale", "curve_grid", "validation_mask", "point_style", "sigma_of", "data_columns",
           "DENSE_POINTS", "LOG_DECADES", "DOSE_RESPONSE"]

#: above this many points, markers shrink and fade (alpha ~ 1500/n) so density shows instead of a blob,
#: and error bars are left out (a per-point bar at 10k points is ink, not information)
DENSE_POINTS = 3000
#: positive x spanning more decades than this is drawn on a log axis
LOG_DECADES = 2.5
#: built-in curves whose x is a dose: drawn on a log axis when the doses are log-spaced
DOSE_RESPONSE = ("hill", "logistic")


def _name_of(value) -> str | None:
    """A pandas Series' or xarray DataArray's name, when it is a non-empty string."""
    name = getattr(value, "name", None)
    return name if isinstance(name, str) and name else None


def response_name(result) -> str | None:
    """The response's name: the data column the fit used as y (``settings["response"]``), or
    the left side of a "response ~ expression" formula."""
    stored = result.settings.get("response")
    if isinstance(stored, str) and stored:
        return stored
    spec = result.model.spec() if hasattr(result.model, "spec") else {}
    text = spec.get("formula") if isinstance(spec, dict) else None
    if isinstance(text, str) and "~" in text:
        return text.split("~", 1)[0].strip() or None
    return None


def axis_names(result, x, y, xlabel=None, ylabel=None) -> tuple[str, str]:
    """(input label, response label). Column names keep their units ("Time (s)"); a bare
    array falls back to the model's input name and "y"."""
    if xlabel is None:
        if isinstance(x, dict) and len(x) == 1:
            xlabel = str(next(iter(x)))
        else:
            xlabel = _name_of(x) or result.model.input_names[0]
    if ylabel is None:
        ylabel = _name_of(y) or response_name(result) or "y"
    return str(xlabel), str(ylabel)


def data_columns(result, data) -> tuple[dict, np.ndarray]:
    """(inputs, response) of a DataFrame or dict of columns, as the fit took them."""
    from ..data.arrays import as_float_array
    from ..errors import DataError, did_you_mean

    x = result._inputs_for(None, data)
    name = result.settings.get("response")
    cols = [str(c) for c in (data.columns if hasattr(data, "columns") else data.keys())]
    model = result.model
    if isinstance(name, str) and name in cols:
        return x, as_float_array(data[name], name)
    names = getattr(model, "response_names", None)
    if not names:
        raise DataError("which column is y? pass y= (the response) to the plot")
    missing = [n for n in names if n not in cols]
    if missing:
        raise DataError(f"no column {missing[0]!r} for the response{did_you_mean(missing[0], cols)}")
    columns = {n: as_float_array(data[n], n) for n in names}
    return x, np.asarray(model.response_numpy(columns), dtype=float).reshape(-1)


def _log_spaced(u: np.ndarray) -> bool:
    """Sorted distinct positive values spaced more evenly in log than in linear terms."""
    if len(u) < 3:
        return False
    lin, log = np.diff(u), np.diff(np.log(u))

    def spread(d):
        return float(np.std(d) / np.mean(d)) if np.mean(d) > 0 else np.inf

    return spread(log) < spread(lin)


def x_scale(result, xv: np.ndarray) -> tuple[str, float | None]:
    """("log", None), ("symlog", linthresh) or ("linear", None) for the data's x (``result``: a
    FitResult, or a model's text as BatchResult.model_text holds it).

    Log when positive x spans more than LOG_DECADES decades and a linear axis would squash half
    the points into its lowest tenth, or for a dose-response curve (DOSE_RESPONSE) on log-spaced
    (or squashed) doses spanning a decade or more. Uniform x from 0.001 to 10 stays linear. Zero doses (controls) keep
    a dose-response plot logarithmic: symlog, linear below the smallest positive dose.
    """
    v = xv[np.isfinite(xv)]
    if v.size < 2 or np.any(v < 0):
        return "linear", None
    pos = np.unique(v[v > 0])
    if pos.size < 2:
        return "linear", None
    decades = float(np.log10(pos[-1] / pos[0]))
    if isinstance(result, str):  # a fit_many result's model text
        dose = result in DOSE_RESPONSE
    else:
        spec = result.model.spec() if hasattr(result.model, "spec") else {}
        dose = isinstance(spec, dict) and spec.get("kind") == "builtin" and spec.get("name") in DOSE_RESPONSE
    # half the points in the lowest tenth of a linear axis: it would squash them against the left edge
    squashed = np.mean(v < v.min() + 0.1 * (v.max() - v.min())) >= 0.5
    wanted = (decades > LOG_DECADES and squashed) or (dose and decades >= 1 and (squashed or _log_spaced(pos)))
    if not wanted:
        return "linear", None
    if np.any(v == 0):
        return "symlog", float(pos[0])
    return "log", None


def curve_grid(xv: np.ndarray, scale: tuple, points: int = 400) -> np.ndarray:
    """x values to draw the fitted curve at: evenly spaced on the axis's own scale."""
    v = xv[np.isfinite(xv)]
    lo, hi = float(v.min()), float(v.max())
    kind, linthresh = scale
    if kind == "log":
        return np.geomspace(lo, hi, points)
    if kind == "symlog":
        return np.concatenate([np.linspace(0.0, linthresh, 20, endpoint=False),
                               np.geomspace(linthresh, hi, points)])
    return np.linspace(lo, hi, points)


def validation_mask(result, n: int, finite: np.ndarray) -> np.ndarray | None:
    """Which of the ``n`` rows passed were the fit's validation rows, or None (no split, or
    data that are not the fit's own). The split is recomputed as fit drew it: seeded
    :func:`gradfit.data.split.train_val_indices` over the finite rows."""
    from ..data.split import train_val_indices

    if not result.n_val:
        return None
    training = (result.settings.get("options") or {}).get("training") or {}
    fraction, seed = training.get("val_fraction"), training.get("seed", 0)
    rows = np.nonzero(finite)[0]
    if not fraction or len(rows) != result.n_train + result.n_val:
        return None
    _, val = train_val_indices(len(rows), float(fraction), int(seed))
    if len(val) != result.n_val:
        return None
    mask = np.zeros(n, dtype=bool)
    mask[rows[val]] = True
    return mask


def point_style(n: int) -> dict:
    """Marker size and alpha for ``n`` points: fading above DENSE_POINTS so density shows."""
    if n <= DENSE_POINTS:
        return {"ms": 4.0, "alpha": 0.9}
    return {"ms": 2.0, "alpha": float(np.clip(1500.0 / n, 0.02, 0.3))}


def sigma_of(sigma, shape: tuple) -> np.ndarray | None:
    """sigma (a number or one value per point) as an array of the data's shape, checked."""
    from ..data.arrays import as_float_array
    from ..errors import DataError

    if sigma is None:
        return None
    s = as_float_array(sigma, "sigma")
    if s.ndim == 0 or s.size == 1:
        s = np.full(shape, float(s.reshape(-1)[0]))
    if s.shape != shape:
        raise DataError(f"sigma must be one number or one value per point {shape}, got shape {s.shape}")
    if np.any(~(s > 0)):
        raise DataError("sigma must be positive and finite at every point")
    return s
