"""Confidence and prediction bands of a fitted curve, by the delta method.

At new inputs x the fitted curve f(x; p) has variance ``var_f = diag(J C J^T)``, with J the exact
Jacobian d f / d p of the free parameters at the fitted values (:mod:`gradfit.models.jacobian`:
symbolic for formulas and built-ins, ``torch.func.jacfwd`` for torch functions, finite
differences for numpy-only models; fixed parameters have no column, tied ones enter by the chain
rule) and C the fit's covariance of those parameters. The band is ``f +/- q sqrt(var)``:

* ``kind="confidence"``: var = var_f, where the true curve lies;
* ``kind="prediction"``: var = var_f + the variance of one new observation, where a new point
  falls. Least squares with an estimated scale: ``redchi * sigma^2`` (``sigma`` 1 for an
  unweighted fit; a weighted fit needs ``sigma`` at the new points, in the units of the fit's:
  statsmodels' WLS ``get_prediction(X, weights=1/sigma**2)`` and its ``obs`` interval). With
  ``absolute_sigma=True``: ``sigma^2`` (sigma required when the fit had sigma). Poisson fits:
  ``mu``, the fitted mean, the normal approximation of a count's variance (poor for means below
  ~10, where the band should be read as a rough guide).

``q`` is the Student t quantile ``t(0.5 + level/2, dof)`` when the scale is estimated from the
residuals (as ``FitResult.ci`` and statsmodels' OLS/WLS), the normal quantile z when the
covariance is absolute (``absolute_sigma=True`` and Poisson fits).

For a batch (:func:`batch_band`, ``fit_many`` results) each fit's covariance is the one its
batched Levenberg-Marquardt kernel held at the end (``BatchResult.covariance``, in the working
precision), rescaled to the reported standard errors (which the float64 end-point checks may
have recomputed): its correlations with ``stderr`` as the scale. A global fit's (``shared=``)
is fit b's block of the joint covariance over (its local parameters, the shared ones), cross
block included; its noise estimate (prediction bands) and t quantile are the joint fit's
redchi and dof.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, DataError, ModelError
from ..stats import t_quantile, z_quantile

__all__ = ["KINDS", "fit_band", "batch_band"]

#: what a band describes
KINDS = ("confidence", "prediction")
_NEEDS_COVARIANCE = ("bands need a least-squares or likelihood fit of a model with named parameters "
                     "(formulas, built-ins, functions): this result has no parameter covariance")


def _check(level, kind) -> float:
    """The probability of the upper quantile, 0.5 + level / 2."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ConfigError(f"level must be between 0 and 1, got {level!r}")
    if kind not in KINDS:
        raise ConfigError(f"kind must be 'confidence' or 'prediction', got {kind!r}")
    return 0.5 + float(level) / 2.0


def _sigma_array(sigma, shape) -> np.ndarray:
    """sigma as a positive float64 array broadcast to ``shape``."""
    try:
        s = np.broadcast_to(np.asarray(sigma, dtype=float), shape)
    except (TypeError, ValueError):
        raise DataError(f"sigma must be one positive value per new point (shape {shape}), got shape "
                        f"{np.shape(sigma)}") from None
    if not (np.isfinite(s) & (s > 0)).all():
        raise DataError("sigma must be positive and finite at every new point")
    return s


# -- one fit ----------------------------------------------------------------------------------------
def fit_band(result, inputs: dict, level: float = 0.95, kind: str = "confidence", *, sigma=None):
    """(lower, upper) float64 arrays of a FitResult's band at ``inputs`` (name -> (n,) arrays,
    as ``FitResult._inputs_for`` returns them); see the module docstring and
    :meth:`gradfit.FitResult.band`."""
    p = _check(level, kind)
    model = result.model
    if not getattr(model, "scalar_params", False) or result.covariance is None:
        raise ConfigError(_NEEDS_COVARIANCE)
    inputs = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in inputs.items()}
    n = len(next(iter(inputs.values())))
    if any(v.shape != (n,) for v in inputs.values()):
        raise DataError("the new inputs must be 1-D arrays of one length")
    if n == 0:  # as predict([]) gives []
        return np.zeros(0), np.zeros(0)
    from ..likelihood import LIKELIHOODS

    poisson = result.settings.get("loss") in LIKELIHOODS
    absolute = result.absolute_sigma
    weighted = bool(result.settings.get("weighted", False))
    f = np.asarray(result.predict(inputs), dtype=float).reshape(n)
    var = _fit_variance(result, inputs, n)
    if kind == "prediction":
        var = var + _observation_variance(result, f, sigma, poisson, absolute, weighted)
    elif sigma is not None:
        raise ConfigError("sigma= is for prediction bands (the new points' noise); drop it for a confidence band")
    dof = (result.stats or {}).get("dof", math.nan)
    q = z_quantile(p) if absolute else t_quantile(p, dof)
    with np.errstate(invalid="ignore"):
        half = q * np.sqrt(var)
    return f - half, f + half


def _fit_variance(result, inputs: dict, n: int) -> np.ndarray:
    """diag(J C J^T) at the new inputs, J over the fit's free parameters (ties by the chain rule)."""
    from ..models.jacobian import free_jacobian
    from ..models.parameters import ParameterSpace

    cov = np.asarray(result.covariance, dtype=float)
    settings = result.settings
    space = ParameterSpace(result.model.param_names, result.params, bounds=settings.get("bounds"),
                           fixed=settings.get("fixed") or (), tie=settings.get("tie"))
    if tuple(space.free) != tuple(result.free) or cov.shape != (len(space.free),) * 2:
        raise ConfigError(f"the covariance is over {list(result.free)}, but the settings make "
                          f"{list(space.free)} free; the result was edited")
    if not space.free:
        return np.zeros(n)
    z = np.array([result.params[k] for k in space.free], dtype=float)
    with np.errstate(all="ignore"):
        jac = np.asarray(free_jacobian(result.model, space, inputs, internal=False)(z), dtype=float).reshape(n, -1)
        return np.einsum("nf,fg,ng->n", jac, cov, jac)


def _observation_variance(result, f, sigma, poisson: bool, absolute: bool, weighted: bool):
    """The variance of one new observation (module docstring)."""
    if poisson:
        if sigma is not None:
            raise ConfigError("a Poisson fit's new counts have variance mu, the fitted mean: drop sigma=")
        return f
    if sigma is None:
        if weighted:
            raise ConfigError("the fit was weighted: pass sigma= at the new points (their noise, in the units of "
                              "the fit's sigma) for a prediction band")
        s2 = 1.0
    else:
        if not weighted and not absolute:
            raise ConfigError("the fit was not weighted, so its reduced chi-square is the noise variance of every "
                              "point: drop sigma= (or fit with sigma= to weight the points)")
        s2 = _sigma_array(sigma, f.shape) ** 2
    return s2 if absolute else (result.stats or {}).get("redchi", math.nan) * s2


# -- a batch of fits ----------------------------------------------------------------------------------
def batch_band(result, x, level: float = 0.95, kind: str = "confidence", *, sigma=None, model=None):
    """(lower, upper), each (B, M) float64: the band of every fit of a ``fit_many`` result.

    Parameters
    ----------
    result : a :class:`~gradfit.results.batch_result.BatchResult` with ``covariance``.
    x : the new inputs, (M,) for every fit or (B, M) per fit; a dict name -> such arrays for
        several inputs.
    level, kind : as :meth:`gradfit.FitResult.band`.
    sigma : prediction bands of least-squares fits: the new points' sigma (a number, (M,) or
        (B, M)); the variance added is ``redchi * sigma^2`` (default sigma 1: an unweighted fit,
        or a weighted one whose sigma is relative). Poisson fits add ``mu`` and take no sigma.
    model : the fitted model, needed only for a loaded result of a Python-function model
        (formulas and built-ins are rebuilt from ``model_text``).

    Raises
    ------
    ConfigError
        Bad level or kind, no covariance (a table or an older file), or a model that cannot
        be rebuilt.
    DataError
        Inputs of the wrong shape or a bad sigma.
    """
    import torch

    from ..models.jacobian import batch_residual_and_jacobian

    p = _check(level, kind)
    names = tuple(result.param_names)
    cov = _batch_covariance(result, names)
    b = len(result)
    inputs = _batch_inputs(x, b)
    model = _batch_model(result, model, list(inputs))
    if None in inputs:
        if len(model.input_names) != 1:
            raise DataError(f"the model has inputs {', '.join(model.input_names)}: pass x as a dict of them")
        inputs = {model.input_names[0]: inputs[None]}
    missing = [n for n in model.input_names if n not in inputs]
    if missing:
        raise DataError(f"missing input {missing[0]!r}; the model's inputs are {', '.join(model.input_names)}")
    inputs = {n: inputs[n] for n in model.input_names}
    m = next(iter(inputs.values())).shape[-1]
    theta = np.stack([np.asarray(result.params[n], dtype=float) for n in names], axis=1)
    t_in = {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float64) for k, v in inputs.items()}
    zeros = torch.zeros((b, m), dtype=torch.float64)
    fused = getattr(model, "expression", None) is not None
    fn = batch_residual_and_jacobian(model, names, t_in, zeros, fused=fused)
    with torch.no_grad():
        f, jac = fn(torch.as_tensor(np.where(np.isfinite(theta), theta, 0.0), dtype=torch.float64))
    f = f.numpy()
    f = np.where(np.isfinite(theta).all(axis=1)[:, None], f, np.nan)
    jac = np.stack([j.numpy() for j in jac], axis=-1)  # (B, M, P)
    with np.errstate(all="ignore"):
        var = np.einsum("bmp,bpq,bmq->bm", jac, cov, jac)
    poisson = result.loss == "poisson"
    if kind == "prediction":
        if poisson:
            if sigma is not None:
                raise ConfigError("a Poisson fit's new counts have variance mu, the fitted mean: drop sigma=")
            var = var + f
        else:
            s2 = 1.0 if sigma is None else _sigma_array(sigma, (b, m)) ** 2
            var = var + _per_fit(result, "redchi", b)[:, None] * s2
    elif sigma is not None:
        raise ConfigError("sigma= is for prediction bands (the new points' noise); drop it for a confidence band")
    q = np.full(b, z_quantile(p)) if poisson else _t_quantiles(p, _per_fit(result, "dof", b))
    with np.errstate(invalid="ignore"):
        half = q[:, None] * np.sqrt(var)
    return f - half, f + half


def _per_fit(result, key: str, b: int) -> np.ndarray:
    """(B,) redchi or dof of the noise estimate behind each fit's covariance: the fit's own, or
    for a global fit (shared=) the joint fit's, which scales every block of its covariance."""
    if result.shared:
        return np.full(b, float(result.joint_stats.get(key, math.nan)))
    return np.asarray(result.stats[key], dtype=float)


def _t_quantiles(p: float, dof: np.ndarray) -> np.ndarray:
    """t(p, dof) for every fit (one quantile per distinct dof)."""
    out = np.full(dof.shape, math.nan)
    for d in np.unique(dof[np.isfinite(dof)]):
        out[dof == d] = t_quantile(p, float(d))
    return out


def _batch_covariance(result, names) -> np.ndarray:
    """(B, P, P) float64 covariance: the stored one's correlations, scaled to ``stderr``."""
    cov = result.covariance
    b, k = len(result), len(names)
    if cov is None and getattr(result, "models", None):
        raise ConfigError("bands of a fit_many(models=...) result are not built: each fit has its own candidate; "
                          "fit the chosen candidate's fits with gf.fit_many(model, ...) for their bands")
    if cov is None and getattr(result, "shared", None):
        raise ConfigError("this global fit (shared=) has no per-fit covariance (it was read from a table or saved "
                          "by an older version): refit for its bands")
    if cov is None:
        raise ConfigError("this fit_many result has no per-fit covariance (it was read from a .csv/.parquet table "
                          "or an older .npz file): refit, or save and load it as .npz with this version")
    cov = np.asarray(cov, dtype=float)
    if cov.shape != (b, k, k):
        raise ConfigError(f"the covariance has shape {cov.shape}, not ({b}, {k}, {k}); the result was edited")
    se = np.stack([np.asarray(result.stderr[n], dtype=float) for n in names], axis=1)
    d = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(d > 0, se / d, np.where(se == 0, 0.0, np.nan))
    return cov * scale[:, :, None] * scale[:, None, :]


def _batch_inputs(x, b: int) -> dict:
    """name (None for a bare array) -> (M,) or (B, M) float64 arrays, checked."""
    from ..data.arrays import as_float_array

    raw = {str(k): v for k, v in x.items()} if isinstance(x, dict) else {None: x}
    out = {}
    for k, v in raw.items():
        a = as_float_array(v, "x" if k is None else k)
        if a.ndim == 0:
            a = a.reshape(1)
        if a.ndim == 2 and a.shape[0] == 1:
            a = a[0]
        if not (a.ndim == 1 or (a.ndim == 2 and a.shape[0] == b)):
            raise DataError(f"input {k or 'x'!r} has shape {a.shape}; pass (M,) points for every fit or ({b}, M)")
        out[k] = a
    lengths = {a.shape[-1] for a in out.values()}
    if len(lengths) != 1:
        raise DataError("the new inputs must have one number of points")
    return out


def _batch_model(result, model, given: list):
    """The fitted model bound to the inputs passed (renaming the single unnamed input ``None``)."""
    from ..models import resolve_model
    from ..models.formula import FormulaModel

    model = model if model is not None else result.model
    if model is None:
        try:
            model = resolve_model(result.model_text)
        except (ModelError, ValueError) as exc:
            raise ConfigError(f"cannot rebuild the model {result.model_text!r} ({exc}); pass model=") from None
    else:
        model = resolve_model(model)
    if isinstance(model, FormulaModel) and not model.bound:
        names = [n for n in given if n is not None]
        if not names:
            names = [n for n in model.parsed.rhs.names() if n not in result.param_names] or ["x"]
        model = model.bind(names)
    if tuple(model.param_names) != tuple(result.param_names):
        raise ConfigError(f"the model's parameters {list(model.param_names)} are not the result's "
                          f"{list(result.param_names)}; pass the fitted model as model=")
    return model
