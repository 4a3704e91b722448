"""``fit``: the public entry point that wires data -> model -> loss -> optimizer -> loop ->
result. The numerical work lives in the modules it calls: first_order.py (train/) for
torch.optim training, least_squares.py (lsq/) for least squares."""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Mapping, Sequence

from ..data.arrays import as_float_array, prepare_arrays
from ..data.split import train_val_indices
from ..errors import ConfigError, DataError, ModelError, did_you_mean
from ..losses import resolve_loss
from ..lsq.problem import LeastSquaresProblem, linear_reason
from ..models import FormulaModel, resolve_model
from ..models.neural import MLPSpec
from ..models.parameters import ParameterSpace, feasible_start
from .crossval import cross_validate
from .first_order import module_objective, scalar_objective, tensors, train_first_order
from .least_squares import least_squares_fit, with_uncertainty

__all__ = ["fit", "resolve_dtype", "resolve_device", "choose_method"]

_GRADIENTS = ("autograd", "analytic")
_DIRECT = ("lm", "linear")


def resolve_dtype(dtype):
    import torch

    table = {"float32": torch.float32, "float64": torch.float64, "double": torch.float64, "float": torch.float32}
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float64):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in table:
        return table[dtype.lower()]
    raise ConfigError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


@lru_cache(maxsize=1)
def _auto_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device):
    import torch

    if device in (None, "auto"):
        return _auto_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was requested but no CUDA GPU is available; use device='auto' or 'cpu'")
    return dev


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def choose_method(optimizer: str, model, loss_fn, batch_size, space, training: str | None = None) -> tuple[str, str]:
    """Which optimizer runs, and why. "auto": a direct linear solve or Levenberg-Marquardt for
    least-squares problems that fit in memory, a first-order optimizer (adam) otherwise."""

    name = str(optimizer).lower()
    scalar = getattr(model, "scalar_params", False)
    if name in _DIRECT:
        if not scalar:
            raise ConfigError(f"optimizer={name!r} needs a model with named scalar parameters, not a network")
        if not loss_fn.least_squares:
            raise ConfigError(f"optimizer={name!r} minimises squared errors; loss={loss_fn.name!r} is not least squares")
        if batch_size is not None:
            raise ConfigError(f"optimizer={name!r} uses all the data at once; drop batch_size")
        if training is not None:
            raise ConfigError(f"optimizer={name!r} solves plain least squares; {training} needs a first-order "
                              "optimizer (e.g. 'adam')")
        if name == "linear":
            why = linear_reason(model, space)
            if why is not None:
                raise ConfigError(f"optimizer='linear' needs a model linear in its parameters ({why}); use 'lm'")
        return name, "requested"
    if name != "auto":
        return name, "requested"
    if not scalar:
        return "adam", "neural network: first-order optimizer"
    if batch_size is not None:
        return "adam", "minibatches requested: first-order optimizer"
    if training is not None:
        return "adam", f"{training} requested: first-order optimizer"
    if not loss_fn.least_squares:
        return "adam", f"loss {loss_fn.name!r} is not least squares: first-order optimizer"
    why = linear_reason(model, space)
    if why is None and not space.has_bounds:
        return "linear", "linear in its parameters: solved directly (SVD)"
    return "lm", f"nonlinear least squares ({why or 'bounds'}): Levenberg-Marquardt"


def fit(model, x=None, y=None, *, data=None, init: Mapping | None = None, loss="mse", optimizer: str = "auto",
        lr: float = 1e-2, epochs: int = 1000, batch_size: int | None = None, normalize: bool = False,
        val_fraction: float = 0.0, seed: int = 0, gradient: str = "autograd", dtype="float32", device="auto",
        log_every: int = 0, progress: bool | None = None, weights=None, sigma=None, absolute_sigma: bool = False,
        bounds: Mapping | None = None, fixed: Sequence[str] = (), tie: Mapping[str, str] | None = None,
        max_iter: int | None = None, optimizer_options: Mapping | None = None, tol: float | None = None,
        callbacks: Sequence = (), nan_policy: str = "raise", hidden: Sequence[int] = (64,),
        activation: str = "tanh", penalty: Mapping | None = None, input_noise: float = 0.0,
        early_stopping=None, schedule=None, cv: int | None = None, cv_groups=None, cv_split: str = "random",
        checkpoint=None, resume: bool = False):
    """Estimate a model's parameters from input/output pairs.

    Parameters
    ----------
    model : formula ("t_c ~ w*t_u + b" or "w*x + b"), built-in name ("gaussian", "poly:3",
        "mlp"), a callable ``f(x, **params)`` written with torch operations, or a
        ``torch.nn.Module``.
    x, y : inputs (array, tensor, or dict of named inputs) and targets. With ``data`` (a
        DataFrame or dict of columns) use a "response ~ expression" formula instead.
    init : starting values by name; missing ones come from the model's guess (1.0 for
        formulas, data-driven for built-in curves).
    optimizer : "auto" (default: direct solve or Levenberg-Marquardt for least squares,
        adam otherwise), "lm", "linear", or any torch.optim name ("sgd", "adam", "lbfgs", ...).
    bounds, fixed, tie : ``{"w": (0, None)}``, ``["b"]``, ``{"c": "2*a"}``.
    sigma, absolute_sigma : per-point standard deviations (weights 1/sigma^2); with
        absolute_sigma the covariance is not rescaled by the reduced chi-square.
    normalize : precondition the optimizer (see :mod:`gradfit.optim.precondition`); reported
        parameters keep the formula's meaning and units.
    gradient : "autograd" or "analytic" (symbolic derivatives, formula models only).
    penalty : {"l2": 1e-3} or {"l2": {"w": 1e-3}, "l1": 1e-4} added to the training loss.
    input_noise : Gaussian noise on training inputs, relative to each input's std, fresh
        every epoch.
    early_stopping : patience (int) or {"patience": 20, "min_delta": 0.0}; needs validation;
        restores the best epoch (status "stopped_early", ``best_epoch``).
    schedule : learning-rate schedule: "step", "exponential", "cosine", "plateau" or
        {"name": ..., options}.
    cv, cv_groups, cv_split : k-fold cross-validation on top of the fit ("random", "grouped"
        with cv_groups labels, or "time" for forward chaining); results in ``result.cv``.
    checkpoint, resume : a :class:`gradfit.train.checkpoint.Checkpointer` (or a folder) that
        saves the complete training state as it runs; with resume=True training continues from
        the checkpoint in that folder, bit-for-bit on CPU with the same seed.

    Returns
    -------
    FitResult

    Examples
    --------
    >>> import gradfit as gf
    >>> r = gf.fit("w*x + b", x=[0.0, 1.0, 2.0], y=[1.0, 3.0, 5.2])
    >>> r.method, round(r.params["w"], 3), round(r.stderr["w"], 3)
    ('linear', 2.1, 0.058)
    """
    epochs = _check_int("epochs", epochs, 1)
    if batch_size is not None:
        batch_size = _check_int("batch_size", batch_size, 1)
    if max_iter is not None:
        max_iter = _check_int("max_iter", max_iter, 1)
    if gradient not in _GRADIENTS:
        raise ConfigError(f"gradient must be one of {', '.join(_GRADIENTS)}, got {gradient!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ConfigError(f"tol must be a positive number, got {tol!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
    weights = _weights_from_sigma(weights, sigma)
    loss_fn = resolve_loss(loss)
    torch_dtype, dev = resolve_dtype(dtype), resolve_device(device)
    spec = resolve_model(model, hidden=hidden, activation=activation)
    bound, arrays = prepare_arrays(spec, x, y, data=data, weights=weights, nan_policy=nan_policy)
    _check_range(arrays, torch_dtype)
    if normalize:
        _check_not_constant(arrays)
    opts = dict(init=init, loss_fn=loss_fn, optimizer=optimizer, lr=lr, epochs=epochs, batch_size=batch_size,
                normalize=normalize, seed=seed, gradient=gradient, dtype=torch_dtype, device=dev,
                log_every=log_every, progress=progress, absolute_sigma=absolute_sigma, bounds=bounds, fixed=fixed,
                tie=tie, max_iter=max_iter, optimizer_options=optimizer_options, tol=tol, callbacks=callbacks,
                penalty=penalty, input_noise=input_noise, early_stopping=_early_stopping(early_stopping),
                schedule=schedule, weighted=weights is not None, val_fraction=val_fraction,
                checkpoint=_checkpointer(checkpoint), resume=bool(resume))
    train_arr, val_arr = arrays, None
    if val_fraction != 0:
        train_idx, val_idx = train_val_indices(arrays.n, float(val_fraction), seed)
        train_arr, val_arr = arrays.take(train_idx), arrays.take(val_idx)
    if opts["early_stopping"] is not None and val_arr is None:
        raise ConfigError("early_stopping watches the validation loss: set val_fraction (e.g. 0.2)")
    result = _fit_split(bound, train_arr, val_arr, tuple(arrays.notes), opts)
    if cv is not None:
        result = dataclasses.replace(result, cv=cross_validate(bound, arrays, cv, cv_groups, cv_split, opts, _fit_split))
    return result


def _checkpointer(spec):
    if spec is None:
        return None
    from ..train.checkpoint import Checkpointer

    return spec if isinstance(spec, Checkpointer) else Checkpointer(spec)


def _check_range(arrays, dtype) -> None:
    """float32 holds magnitudes up to 3.4e38: refuse data that would turn into inf."""
    import numpy as np
    import torch

    if dtype != torch.float32 or arrays.float32_safe:
        return
    limit = float(torch.finfo(torch.float32).max)
    for name, v in [*arrays.inputs.items(), ("y", arrays.y)]:
        big = np.abs(v) > limit
        if big.any():
            row = int(np.nonzero(big.reshape(len(v), -1).any(axis=1))[0][0]) + 1
            raise DataError(f"{name!r} has values beyond float32's range (e.g. row {row}: "
                            f"{float(v.reshape(len(v), -1)[row - 1].max()):.3g}); use dtype='float64' (--dtype float64)")


def _check_not_constant(arrays) -> None:
    import numpy as np

    for name, v in arrays.inputs.items():
        cols = v.reshape(len(v), -1)
        flat = np.ptp(cols, axis=0) == 0 if len(v) > 1 else np.ones(cols.shape[1], dtype=bool)
        if flat.any():
            which = f" (column {int(np.nonzero(flat)[0][0])})" if cols.shape[1] > 1 else ""
            raise DataError(f"input {name!r}{which} is constant ({cols[0, np.nonzero(flat)[0][0]]:g} everywhere): it "
                            "carries no information and cannot be normalized; drop it or fit without normalize")


def _early_stopping(spec):
    if spec is None or spec is False:
        return None
    if isinstance(spec, bool) or isinstance(spec, int):
        patience, min_delta = (20 if spec is True else spec), 0.0
    elif isinstance(spec, Mapping):
        unknown = set(spec) - {"patience", "min_delta"}
        if unknown:
            raise ConfigError(f"early_stopping takes patience and min_delta, not {', '.join(sorted(unknown))}")
        patience, min_delta = spec.get("patience", 20), spec.get("min_delta", 0.0)
    else:
        raise ConfigError(f"early_stopping must be a patience (int) or a dict, got {spec!r}")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ConfigError(f"early_stopping patience must be an integer >= 1, got {patience!r}")
    if not isinstance(min_delta, (int, float)) or min_delta < 0:
        raise ConfigError(f"early_stopping min_delta must be >= 0, got {min_delta!r}")
    return int(patience), float(min_delta)


def _fit_split(bound, train_arr, val_arr, notes, o):
    """One fit on a given train/validation split (the body of fit, shared with cross-validation)."""
    loss_fn, torch_dtype, dev = o["loss_fn"], o["dtype"], o["device"]
    settings = {"optimizer": str(o["optimizer"]).lower(), "lr": o["lr"], "loss": loss_fn.name, "epochs": o["epochs"],
                "batch_size": o["batch_size"], "normalize": bool(o["normalize"]), "val_fraction": o["val_fraction"],
                "seed": o["seed"], "gradient": o["gradient"], "dtype": str(torch_dtype).replace("torch.", ""),
                "device": str(dev), "absolute_sigma": bool(o["absolute_sigma"]), "weighted": o["weighted"]}
    for key in ("optimizer_options", "penalty", "schedule"):
        if o[key]:
            settings[key] = o[key] if not isinstance(o[key], Mapping) else dict(o[key])
    if o["input_noise"]:
        settings["input_noise"] = o["input_noise"]
    if o["early_stopping"]:
        settings["early_stopping"] = {"patience": o["early_stopping"][0], "min_delta": o["early_stopping"][1]}
    common = dict(notes=notes, n_train=train_arr.n, n_val=0 if val_arr is None else val_arr.n)
    training = _training_extras(o)
    scalar = getattr(bound, "scalar_params", True) and not _is_module_spec(bound)
    if not scalar:
        if o["gradient"] == "analytic":
            raise ConfigError("analytic gradients need a formula model; use gradient='autograd'")
        if o["bounds"] or o["fixed"] or o["tie"]:
            raise ConfigError("bounds, fixed and tie apply to named scalar parameters, not to networks")
        method, reason = choose_method(o["optimizer"], bound, loss_fn, o["batch_size"], None, training)
        train, val = tensors(train_arr, val_arr, torch_dtype, dev)
        objective, bound = module_objective(bound, train, val, loss_fn, o["normalize"], o["seed"], torch_dtype, dev)
        settings.update(method=method, method_reason=reason)
        return train_first_order(objective, bound, method, o, settings=settings, **common)
    if o["gradient"] == "analytic" and bound.expression is None:
        raise ConfigError("analytic gradients need a formula model; use gradient='autograd'")
    space = _parameter_space(bound, train_arr, train_arr.n, o["init"], o["bounds"], o["fixed"], o["tie"])
    method, reason = choose_method(o["optimizer"], bound, loss_fn, o["batch_size"], space, training)
    settings.update(method=method, method_reason=reason, init=dict(space.values), **space.describe())
    if method in _DIRECT:
        return least_squares_fit(bound, space, train_arr, val_arr, method, settings=settings,
                                 max_iter=o["max_iter"] or 2000, tol=o["tol"], absolute_sigma=o["absolute_sigma"],
                                 log_every=o["log_every"], progress=o["progress"], callbacks=o["callbacks"], **common)
    train, val = tensors(train_arr, val_arr, torch_dtype, dev)
    objective = scalar_objective(bound, space, train, val, loss_fn, o["normalize"], o["gradient"], torch_dtype, dev)
    result = train_first_order(objective, bound, method, o, settings=settings, **common)
    if loss_fn.least_squares and result.status != "diverged":
        problem = LeastSquaresProblem.from_arrays(bound, space, train_arr)
        result = with_uncertainty(result, problem, o["absolute_sigma"])
    return result


def _training_extras(o) -> str | None:
    """Why a least-squares solver cannot be used (regularized training), or None."""
    for key, why in (("penalty", "a penalty"), ("input_noise", "input noise"),
                     ("early_stopping", "early stopping"), ("schedule", "a learning-rate schedule")):
        if o[key]:
            return why
    return None


def _weights_from_sigma(weights, sigma):
    if sigma is None:
        return weights
    if weights is not None:
        raise ConfigError("pass either sigma or weights, not both (weights = 1/sigma**2)")

    s = as_float_array(sigma, "sigma")
    if s.ndim != 1:
        raise DataError(f"sigma must be one value per point, got shape {s.shape}")
    if (s <= 0).any() or not (s == s).all():
        raise DataError("sigma must be positive for every point")
    return 1.0 / s**2


def _is_module_spec(model) -> bool:
    return isinstance(model, MLPSpec)


@lru_cache(maxsize=256)
def _default_formula_space(model) -> ParameterSpace:
    """The parameter space of a formula fit without init, bounds, fixed or ties: it depends
    only on the (cached, immutable) bound model, so it is built once per formula and inputs."""
    return ParameterSpace(model.param_names, model.guess(None, None))


def _parameter_space(model, train_arr, n_train, init, bounds, fixed, tie):
    if not model.param_names:
        raise ModelError("the model has no parameters to fit; every name in the formula is a data column")
    if not (init or bounds or fixed or tie) and type(model) is FormulaModel:
        space = _default_formula_space(model)
    else:
        space = _configured_space(model, train_arr, init, bounds, fixed, tie)
    if n_train < len(space.free):
        raise DataError(f"{n_train} training points cannot determine {len(space.free)} parameters "
                        f"({', '.join(space.free)}); add data or fix parameters")
    return space


def _configured_space(model, train_arr, init, bounds, fixed, tie) -> ParameterSpace:
    values = feasible_start(model.guess(train_arr.inputs, train_arr.y),
                            {k: v for k, v in (bounds or {}).items() if k in model.param_names})
    for name, v in (init or {}).items():
        if name not in model.param_names:
            raise ConfigError(f"init names unknown parameter {name!r}{did_you_mean(name, model.param_names)}; "
                              f"parameters are {', '.join(model.param_names)}")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ConfigError(f"init value for {name!r} must be a finite number, got {v!r}")
        values[name] = float(v)
    if isinstance(fixed, str):
        fixed = [fixed]
    return ParameterSpace(model.param_names, values, bounds=bounds, fixed=list(fixed or ()), tie=tie)
