"""``fit``, ``gradient`` and ``loss_value``: the public entry points that wire
data -> model -> loss -> optimizer -> loop -> result. The numerical work lives in the
modules they call: train/ for first-order training, lsq.py for least squares."""

from __future__ import annotations

import dataclasses
import math
import warnings
from functools import lru_cache
from typing import Mapping, Sequence

from ..data.arrays import as_float_array, prepare_arrays
from ..optim.precondition import jacobian, whitening
from .least_squares import least_squares_fit, with_uncertainty
from ..errors import did_you_mean
from ..data.split import train_val_indices
from ..errors import ConfigError, DataError, GradfitWarning, ModelError
from ..losses import resolve_loss
from ..lsq.problem import LeastSquaresProblem, linear_reason
from ..models import FormulaModel, resolve_model
from ..models.neural import MLPSpec, ModuleModel, build_mlp
from ..models.parameters import ParameterSpace, feasible_start
from ..optim.registry import make_optimizer
from ..results.fit_result import FitResult
from ..callbacks import LogCallback, ProgressCallback, wants_progress
from ..train.loop import LoopConfig, run_loop
from ..train.objective import ModuleObjective, ScalarObjective, TensorData

__all__ = ["fit", "gradient", "loss_value", "resolve_dtype", "resolve_device", "choose_method", "GradfitWarning"]

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
        result = dataclasses.replace(result, cv=_cross_validate(bound, arrays, cv, cv_groups, cv_split, opts))
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


def _cross_validate(bound, arrays, k, groups, split, opts) -> dict:
    """Fit each fold (training on the rest) and summarize validation losses and parameters."""
    import numpy as np

    from ..data.split import kfold_indices

    if split not in ("random", "grouped", "time"):
        raise ConfigError(f"cv_split must be 'random', 'grouped' or 'time', got {split!r}")
    if split == "grouped" and groups is None:
        raise ConfigError("cv_split='grouped' needs cv_groups (one group label per row)")
    folds = kfold_indices(arrays.n, k, opts["seed"], groups=groups if split == "grouped" else None,
                          time_ordered=split == "time")
    fold_opts = dict(opts, progress=False, log_every=0, callbacks=(), warn_overfitting=False)
    losses, params = [], []
    for tr, va in folds:
        r = _fit_split(bound, arrays.take(tr), arrays.take(va), (), fold_opts)
        losses.append(float(r.val_loss))
        params.append(dict(r.params))
    out = {"val_loss": losses, "mean": float(np.mean(losses)), "std": float(np.std(losses, ddof=1)),
           "params": params, "split": split, "folds": len(folds)}
    if params and params[0]:
        out["params_mean"] = {n: float(np.mean([p[n] for p in params])) for n in params[0]}
        out["params_std"] = {n: float(np.std([p[n] for p in params], ddof=1)) for n in params[0]}
    return out


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
        train, val = _tensors(train_arr, val_arr, torch_dtype, dev)
        objective, bound = _module_objective(bound, train, val, loss_fn, o["normalize"], o["seed"], torch_dtype, dev)
        settings.update(method=method, method_reason=reason)
        return _train(objective, bound, method, o, settings=settings, **common)
    if o["gradient"] == "analytic" and bound.expression is None:
        raise ConfigError("analytic gradients need a formula model; use gradient='autograd'")
    space = _parameter_space(bound, train_arr, train_arr.n, o["init"], o["bounds"], o["fixed"], o["tie"])
    method, reason = choose_method(o["optimizer"], bound, loss_fn, o["batch_size"], space, training)
    settings.update(method=method, method_reason=reason, init=dict(space.values), **space.describe())
    if method in _DIRECT:
        return least_squares_fit(bound, space, train_arr, val_arr, method, settings=settings,
                                 max_iter=o["max_iter"] or 2000, tol=o["tol"], absolute_sigma=o["absolute_sigma"],
                                 log_every=o["log_every"], progress=o["progress"], callbacks=o["callbacks"], **common)
    train, val = _tensors(train_arr, val_arr, torch_dtype, dev)
    objective = _scalar_objective(bound, space, train, val, loss_fn, o["normalize"], o["gradient"], torch_dtype, dev)
    result = _train(objective, bound, method, o, settings=settings, **common)
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


def _tensors(train_arr, val_arr, dtype, dev):
    train = TensorData.from_arrays(train_arr, dtype, dev)
    val = TensorData.from_arrays(val_arr, dtype, dev) if val_arr is not None else None
    return train, val


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


def _scalar_objective(model, space, train, val, loss_fn, normalize, gradient, dtype, dev):
    import torch

    precondition = None
    if normalize:
        inputs64 = {k: v.to(torch.float64) for k, v in train.inputs.items()}
        z0 = space.internal_start(torch.float64, dev)
        precondition = whitening(jacobian(model, inputs64, z0, space)).to(dtype)
    return ScalarObjective(model, train, val, loss_fn, space, dtype=dtype, device=dev, precondition=precondition,
                           gradient=gradient)


def _module_objective(spec, train, val, loss_fn, normalize, seed, dtype, dev):
    import torch

    x_train = next(iter(train.inputs.values())) if len(train.inputs) == 1 else torch.stack(
        list(train.inputs.values()), dim=-1)
    in_features = 1 if x_train.dim() == 1 else x_train.shape[-1]
    out_features = 1 if train.y.dim() == 1 else train.y.shape[-1]
    if isinstance(spec, MLPSpec):
        module = build_mlp(in_features, out_features, spec.hidden, spec.activation, seed)
        model = ModuleModel(module, mlp=spec, in_features=in_features, out_features=out_features,
                            input_names=tuple(train.inputs))
    else:
        model = spec
        model.in_features, model.out_features = in_features, out_features
        model.input_names = tuple(train.inputs)
    model.to(dev, dtype)
    scale = 1.0
    if normalize:
        model.standardize(x_train, train.y)
        with torch.no_grad():
            baseline = loss_fn(torch.zeros_like(train.y) + model.y_mean, train.y, train.weights)
        scale = float(baseline) if float(baseline) > 0 else 1.0
    return ModuleObjective(model, train, val, loss_fn, loss_scale=scale), model


def _train(objective, model, optimizer, o, *, settings, notes, n_train, n_val):
    import torch

    from ..train.loop import overfitting_signal
    from ..train.regularize import InputNoise, make_schedule, parse_penalty

    names = model.param_names if model.scalar_params else tuple(n for n, _ in model.module.named_parameters())
    penalty = parse_penalty(o["penalty"], names)
    noise = InputNoise.for_data(o["input_noise"], objective.train.inputs) if o["input_noise"] else None
    objective.regularize(penalty, noise, o["seed"])
    opt = make_optimizer(optimizer, objective.leaves, o["lr"], o["optimizer_options"],
                         prefer_fused=not model.scalar_params)
    scheduler = make_schedule(o["schedule"], opt, o["epochs"])
    cbs = list(o["callbacks"])
    if o["log_every"]:
        cbs.append(LogCallback(_check_int("log_every", o["log_every"], 0)))
    if wants_progress(o["progress"]):
        cbs.append(ProgressCallback())
    torch.manual_seed(o["seed"])  # anything stochastic inside torch.optim or the module
    config = LoopConfig(epochs=o["epochs"], batch_size=o["batch_size"], seed=o["seed"], tol=o["tol"],
                        early_stopping=o["early_stopping"])
    checkpointer = o.get("checkpoint")
    resume_state = None
    fingerprint = json_fingerprint(model, settings)
    if checkpointer is not None and o.get("resume"):
        from ..train.checkpoint import load_checkpoint

        resume_state = load_checkpoint(checkpointer.folder)
        if resume_state[1].get("fingerprint") != fingerprint:
            raise ConfigError(f"{checkpointer.folder}: the checkpoint belongs to a different fit (model, data size "
                              "or options differ); resume with the same command, or start afresh without --resume")
    if checkpointer is not None:
        checkpointer.fingerprint = fingerprint
    outcome = run_loop(objective, opt, config, cbs, scheduler=scheduler, checkpointer=checkpointer,
                       resume=resume_state)
    minibatch = o["batch_size"] is not None and o["batch_size"] < objective.train.n
    restored = outcome.best_epoch is not None
    if minibatch and outcome.history["train_loss"] and outcome.status != "diverged" and not restored:
        # As Keras reports it: the mean batch loss of the last epoch. A full extra pass over a
        # large training set would cost a third of an epoch.
        final_loss = outcome.history["train_loss"][-1]
    else:
        final_loss = objective.evaluate(objective.train)
    if not math.isfinite(final_loss) and outcome.status != "diverged":
        outcome.status, outcome.message = "diverged", "the loss at the final parameters is not finite"
    val_loss = objective.evaluate(objective.val) if objective.val is not None else None
    warning = overfitting_signal(outcome.history["train_loss"], outcome.history["val_loss"])
    if warning and outcome.status != "stopped_early" and o.get("warn_overfitting", True):
        warnings.warn(warning, GradfitWarning, stacklevel=3)
        notes = notes + (warning,)
    return FitResult(params=objective.param_values(), loss=final_loss, val_loss=val_loss, status=outcome.status,
                     epochs_run=outcome.epochs_run, history=outcome.history, model=model, message=outcome.message,
                     settings=settings, n_train=n_train, n_val=n_val, notes=notes, best_epoch=outcome.best_epoch)


def json_fingerprint(model, settings: dict) -> str:
    """What identifies a training run for resuming: the model and every option but the
    number of epochs (a resumed run may train longer)."""
    import hashlib
    import json

    doc = {"model": model.describe(), "settings": {k: v for k, v in settings.items() if k != "epochs"}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _scalar_problem(model, x, y, data, params, loss, weights, torch_dtype):
    """Shared set-up of gradient() and loss_value(): bound model, tensors, parameter space."""
    import torch

    loss_fn = resolve_loss(loss)
    bound, arrays = prepare_arrays(resolve_model(model), x, y, data=data, weights=weights)
    if not getattr(bound, "scalar_params", False) or _is_module_spec(bound):
        raise ModelError("this function takes models with named scalar parameters (formulas, built-ins, functions)")
    missing = [n for n in bound.param_names if n not in params]
    if missing:
        raise ConfigError(f"params is missing {', '.join(missing)}")
    data_t = TensorData.from_arrays(arrays, torch_dtype, torch.device("cpu"))
    space = ParameterSpace(bound.param_names, {n: float(params[n]) for n in bound.param_names})
    return bound, data_t, loss_fn, space


def loss_value(model, x=None, y=None, *, params: Mapping, data=None, loss="mse", dtype="float32",
               weights=None) -> float:
    """The loss of ``model`` at ``params`` (one forward pass, no training).

    >>> import gradfit as gf
    >>> gf.loss_value("w*x + b", x=[1.0, 2.0], y=[0.0, 0.0], params={"w": 1.0, "b": 0.0})
    2.5
    """
    import torch

    torch_dtype = resolve_dtype(dtype)
    bound, data_t, loss_fn, space = _scalar_problem(model, x, y, data, params, loss, weights, torch_dtype)
    return ScalarObjective(bound, data_t, None, loss_fn, space, dtype=torch_dtype,
                           device=torch.device("cpu")).evaluate(data_t)


def gradient(model, x=None, y=None, *, params: Mapping, data=None, loss="mse", method: str = "autograd",
             dtype="float32", weights=None) -> dict[str, float]:
    """Gradient of the loss with respect to each parameter at ``params``.

    method: "autograd", "analytic" (symbolic derivatives of a formula) or "finite"
    (central differences in float64, for checking).

    >>> import gradfit as gf
    >>> g = gf.gradient("w*x + b", x=[1.0, 2.0], y=[0.0, 0.0], params={"w": 1.0, "b": 0.0})
    >>> g["w"], g["b"]
    (5.0, 3.0)
    """
    import torch

    if method not in ("autograd", "analytic", "finite"):
        raise ConfigError(f"method must be 'autograd', 'analytic' or 'finite', got {method!r}")
    torch_dtype = torch.float64 if method == "finite" else resolve_dtype(dtype)
    bound, data_t, loss_fn, space = _scalar_problem(model, x, y, data, params, loss, weights, torch_dtype)
    p = torch.tensor([float(params[n]) for n in bound.param_names], dtype=torch_dtype)
    if method == "finite":
        return _finite_difference(bound, data_t, loss_fn, p)
    obj = ScalarObjective(bound, data_t, None, loss_fn, space, dtype=torch_dtype, device=torch.device("cpu"),
                          gradient=method)
    if method == "analytic":
        if bound.expression is None:
            raise ConfigError("analytic gradients need a formula model")
        obj._analytic_grad(data_t)
    else:
        obj.objective(data_t).backward()
    return dict(zip(bound.param_names, obj.theta.grad.double().tolist()))


def _finite_difference(model, data, loss_fn, p) -> dict[str, float]:
    import torch

    out = {}
    with torch.no_grad():
        for i, name in enumerate(model.param_names):
            h = 1e-6 * max(1.0, abs(float(p[i])))
            up, down = p.clone(), p.clone()
            up[i] += h
            down[i] -= h
            f_up = loss_fn(model.forward(data.inputs, dict(zip(model.param_names, up.unbind()))), data.y, data.weights)
            f_dn = loss_fn(model.forward(data.inputs, dict(zip(model.param_names, down.unbind()))), data.y, data.weights)
            out[name] = float((f_up - f_dn) / (2 * h))
    return out
