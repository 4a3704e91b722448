"""``fit``: the public entry point that wires data -> model -> loss -> optimizer -> loop ->
result. The numerical work lives in the modules it calls: first_order.py (train/) for
torch.optim training, least_squares.py (lsq/) for least squares."""

from __future__ import annotations

import dataclasses
import operator
from functools import lru_cache
from typing import Mapping, Sequence

from .._threads import choose_threads, intra_op_threads
from ..data.arrays import check_float32_range, prepare_arrays
from ..data.split import train_val_indices
from ..errors import ConfigError, DataError
from ..losses import resolve_loss
from ..lsq.likelihood import POISSON_REASON, PoissonProblem
from ..lsq.problem import LeastSquaresProblem, linear_reason
from ..models import resolve_model
from ..models.neural import MLPSpec
from ..options import FitOptions
from .crossval import cross_validate
from .first_order import module_objective, scalar_objective, tensors, train_first_order, working_dtype
from .keywords import FIT_KEYWORDS, options_from_keywords, options_from_values
from .least_squares import least_squares_fit, poisson_fit, with_poisson_uncertainty, with_uncertainty
from .multistart import best_start, check_starts
from .setup import FitSetup, make_checkpointer, parameter_space, resolve_device, resolve_dtype

__all__ = ["fit", "resolve_dtype", "resolve_device", "choose_method", "FitSetup"]

_DIRECT = ("lm", "linear")


@lru_cache(maxsize=8)
def _resolved(dtype: str, device: str) -> tuple:
    """(torch dtype, torch device) of the canonical names in TrainingOptions, once per pair."""
    return resolve_dtype(dtype), resolve_device(device)


def choose_method(optimizer: str, model, loss_fn, batch_size, space, training: str | None = None) -> tuple[str, str]:
    """Which optimizer runs, and why. "auto": a direct linear solve or Levenberg-Marquardt for
    least-squares problems that fit in memory, Levenberg-Marquardt on the deviance (Fisher
    scoring) for a likelihood loss ("poisson"), a first-order optimizer (adam) otherwise."""

    name = str(optimizer).lower()
    scalar = getattr(model, "scalar_params", False)
    likelihood = getattr(loss_fn, "likelihood", False)
    if name in _DIRECT:
        if not scalar:
            raise ConfigError(f"optimizer={name!r} needs a model with named scalar parameters, not a network")
        if likelihood and name == "linear":
            raise ConfigError(f"optimizer='linear' solves least squares directly; loss={loss_fn.name!r} is a "
                              "likelihood: use 'lm' (Fisher scoring) or 'auto'")
        if not (loss_fn.least_squares or likelihood):
            raise ConfigError(f"optimizer={name!r} minimises squared errors; loss={loss_fn.name!r} is not least "
                              "squares")
        if batch_size is not None:
            raise ConfigError(f"optimizer={name!r} uses all the data at once; drop batch_size")
        if training is not None:
            raise ConfigError(f"optimizer={name!r} solves plain least squares; {training} needs a first-order "
                              "optimizer (e.g. 'adam')")
        if name == "linear":
            why = linear_reason(model, space)
            if why is not None:
                raise ConfigError(f"optimizer='linear' needs a model linear in its parameters ({why}); use 'lm'")
        return name, POISSON_REASON if likelihood else "requested"
    if name != "auto":
        return name, "requested"
    if not scalar:
        return "adam", "neural network: first-order optimizer"
    if batch_size is not None:
        return "adam", "minibatches requested: first-order optimizer"
    if training is not None:
        return "adam", f"{training} requested: first-order optimizer"
    if likelihood:
        return "lm", POISSON_REASON
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
        checkpoint=None, resume: bool = False, threads: int | None = None, compile="auto",
        options: FitOptions | None = None, starts: int | None = None, start_design: str = "sobol"):
    """Estimate a model's parameters from input/output pairs.

    Parameters
    ----------
    model : formula ("t_c ~ w*t_u + b" or "w*x + b"), built-in name ("gaussian", "poly:3",
        "mlp"), a callable ``f(x, **params)`` written with torch operations, or a
        ``torch.nn.Module``. In a formula, a name that is a data column (or a key of x={...})
        is an input, every other name a parameter; ``pi`` is the number unless a column is
        called pi, and a bare ``e`` must be a column (write exp(1) for Euler's number). When
        columns were bound by name in a way that may surprise (two or more, or x left a
        parameter) a note lists the inputs and parameters. Built-in curves take any column
        name (x="Time (s)"); formulas need identifier names.
    x, y : inputs (array, tensor, or dict of named inputs) and targets. With ``data`` (a
        DataFrame or dict of columns) use a "response ~ expression" formula instead. ``data`` may be
        a path: Parquet (file, folder, glob) streamed when large (:class:`gradfit.ParquetData`), or a table file.
    init : starting values by name; missing ones come from the model's guess (built-in curves),
        or the best of 513 candidates by chi-square (a formula's parameter without bounds;
        :func:`gradfit.models.starts.formula_start`).
    starts, start_design : multistart: K starts ("sobol" or "lhs", seeded by ``seed``; see
        :mod:`gradfit.fitting.multistart`) as one batch; the fit finishes from the best, and
        ``result.multistart`` counts starts converged, reaching the best, and distinct minima.
    optimizer : "auto" (default: direct solve or Levenberg-Marquardt for least squares,
        adam otherwise), "lm", "linear", or any torch.optim name ("sgd", "adam", "lbfgs", ...).
        Full-batch "lbfgs" stops with status "converged" once an epoch ends on L-BFGS's own
        tolerances (tolerance_grad, tolerance_change).
    loss : "mse" (default, least squares), "mae", "huber", "log_cosh", "poisson" or a callable.
        "poisson": counts y >= 0 with model means mu > 0, fitted by maximum likelihood
        (Levenberg-Marquardt on the deviance, i.e. Fisher scoring, for scalar models under
        "auto"); weights= are frequency weights, sigma= is refused; standard errors are the
        Cramer-Rao bound (inverse Fisher information, never rescaled); ``stats`` holds the
        deviance, loglike, AIC/BIC from the likelihood and Pearson's chisqr (redchi = chisqr/dof).
    bounds, fixed, tie : ``{"w": (0, None)}``, ``["b"]`` (held at its init) or ``{"b": 0.5}`` (held
        at 0.5, over init), ``{"c": "2*a"}``.
    sigma, absolute_sigma : per-point standard deviations (weights 1/sigma^2); with
        absolute_sigma the covariance is not rescaled by the reduced chi-square.
    max_iter, tol : Levenberg-Marquardt's iteration limit (default 2000) and tolerance (default:
        near float64 rounding, 10 eps). A given tol stops at relative changes of the cost (and
        steps) below it, and "converged" then asks the end point's residual cosine with each
        Jacobian column to be below sqrt(tol) (at least 1e-6), the stationarity such a stop
        leaves; else "stalled".
    normalize : precondition the optimizer (see :mod:`gradfit.optim.precondition`); reported
        parameters keep the formula's meaning and units, at any input scale or offset.
    dtype : "float32" (default) or "float64" for first-order training (least squares always
        runs in float64). float32 becomes float64, with a note and ``settings["dtype"]``, when
        float32 cannot tell the data's values apart (millisecond timestamps, x in
        [1e9, 1e9 + 1e3]) or normalize's coordinates need more precision; a GradfitWarning
        says when even float64 cannot resolve the inputs (subtract an offset).
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
    threads : intra-op CPU threads for this fit (``torch.set_num_threads`` while it runs; the
        previous count is restored afterwards). None (default, "auto"): one thread when the
        widest tensor of a step (rows per step x the widest layer, input or parameter count)
        has fewer than :data:`gradfit._threads.SMALL_PROBLEM_ELEMENTS` elements, where extra
        threads only wait on each other (and on a busy machine make a small fit many times
        slower); otherwise the process's setting (torch's default or ``OMP_NUM_THREADS``)
        is kept, never raised. Set it when several fits or processes share the cores.
    compile : "auto" (default), True or False: Levenberg-Marquardt of a formula without bounds
        or ties as a native C kernel built by the system C compiler and cached on disk
        (:mod:`gradfit.optim.native_single`; the same algorithm and statuses as numpy's).
        "auto" uses a kernel already built and builds one once this formula's fits in the
        process have spent two builds' time (~0.7 s); True builds it now (~0.4 s, once per
        formula and machine: for a loop of many fits); False never. Without a C compiler the
        fit runs in numpy. ``result.settings["strategy"]`` ends in "; native kernel" when it ran.
    options : a :class:`gradfit.options.FitOptions` holding every option at once, for callers
        that build, store or reuse them (``FitOptions.from_dict(result.settings["options"])``
        replays a fit). It replaces the option keywords (loss ... resume above: the names in
        :data:`gradfit.fitting.keywords.FIT_KEYWORDS`); giving one of them a value other than its default
        as well is a ConfigError. Data and parameter keywords (x, y, data, init, weights, sigma,
        bounds, fixed, tie, callbacks, cv_groups) combine with it as usual.

    Returns
    -------
    FitResult
        ``settings`` holds ``options`` (:meth:`FitOptions.to_dict`) and what ran: method,
        method_reason, loss, dtype, device, weighted, init, bounds/fixed/tie and (least squares)
        strategy.

    Raises
    ------
    ConfigError
        for a bad option value (named in the message), or options= combined with option keywords.
    DataError, ModelError
        for unusable data or models.

    Examples
    --------
    >>> import gradfit as gf
    >>> r = gf.fit("w*x + b", x=[0.0, 1.0, 2.0], y=[1.0, 3.0, 5.2])
    >>> r.method, round(r.params["w"], 3), round(r.stderr["w"], 3)
    ('linear', 2.1, 0.058)
    """
    if isinstance(init, str):  # "guess", as fit_many and the CLI take it: the default start
        if init != "guess":
            raise ConfigError(f"init must be a dict of starting values or 'guess', got {init!r}")
        init = None
    if isinstance(data, str) or hasattr(data, "__fspath__"):  # a file, folder or glob: fitting/streamed.py
        from .streamed import fit_path

        return fit_path(fit, dict(locals()))
    values = (loss, optimizer, lr, epochs, batch_size, normalize, val_fraction, seed, gradient, dtype, device,
              log_every, progress, absolute_sigma, max_iter, optimizer_options, tol, nan_policy, hidden, activation,
              penalty, input_noise, early_stopping, schedule, cv, cv_split, checkpoint, resume, threads, compile)
    if options is None and all(map(operator.is_, values, _default_values())):
        options = _default_options()  # the common call: every option left at its default
    elif options is None:
        options = options_from_values(_OPTION_KEYWORDS, values)  # (remembered there for simple values)
    else:
        _refuse_keywords_with(options, dict(zip(_OPTION_KEYWORDS, values)))
    training = options.training
    loss_fn = resolve_loss(options.loss)
    if sigma is not None and loss_fn.likelihood:
        raise ConfigError(f"loss={loss_fn.name!r} takes no sigma: counts carry their own variance (the mean); "
                          "drop sigma= (weights= are frequency weights)")
    multistart = (check_starts(starts, start_design), start_design)
    _check_callbacks(callbacks)
    torch_dtype, dev = _resolved(training.dtype, training.device)
    spec = resolve_model(model, hidden=options.hidden, activation=options.activation)
    bound, arrays = prepare_arrays(spec, x, y, data=data, weights=weights, sigma=sigma, nan_policy=options.nan_policy)
    _check_range(arrays, torch_dtype)
    if loss_fn.likelihood:
        _check_counts(arrays)
    if training.normalize:
        _check_not_constant(arrays)
    with intra_op_threads(choose_threads(training.threads, _step_elements(bound, arrays, training.batch_size))):
        result = _fit_arrays(bound, arrays, options, loss_fn, torch_dtype, dev, init=init, bounds=bounds,
                             fixed=fixed, tie=tie, weighted=arrays.weights is not None, callbacks=callbacks,
                             checkpoint=checkpoint, cv_groups=cv_groups, multistart=multistart)
    if isinstance(y, str):  # the response column's name, for plot labels (a fresh dict: no copy needed)
        result.settings["response"] = y
    return result


def _fit_arrays(bound, arrays, options, loss_fn, torch_dtype, dev, *, init, bounds, fixed, tie, weighted, callbacks,
                checkpoint, cv_groups, multistart=(None, "sobol")):
    """The rest of :func:`fit` once the data are checked: split, fit, cross-validate."""
    training = options.training
    setup = FitSetup(loss_fn, torch_dtype, dev, init=init, bounds=bounds, fixed=fixed, tie=tie,
                     weighted=weighted, callbacks=tuple(callbacks),
                     checkpointer=make_checkpointer(checkpoint, options.checkpoint), multistart=multistart)
    train_arr, val_arr = arrays, None
    if training.val_fraction:
        train_idx, val_idx = train_val_indices(arrays.n, training.val_fraction, training.seed)
        train_arr, val_arr = arrays.take(train_idx), arrays.take(val_idx)
        if train_arr.weights is not None and not train_arr.weights.max() > 0:
            raise DataError("every training point has weight 0 (the points of positive weight all fell in the "
                            "validation split): lower val_fraction, change seed, or give more points a weight")
    result = _fit_split(bound, train_arr, val_arr, tuple(arrays.notes), options, setup)
    if options.cv is not None:
        result = dataclasses.replace(result, cv=cross_validate(bound, arrays, cv_groups, options, setup, _fit_split))
    return result


#: fit's option keywords, in the order fit() collects their values
_OPTION_KEYWORDS = ("loss", "optimizer", "lr", "epochs", "batch_size", "normalize", "val_fraction", "seed", "gradient",
                    "dtype", "device", "log_every", "progress", "absolute_sigma", "max_iter", "optimizer_options", "tol",
                    "nan_policy", "hidden", "activation", "penalty", "input_noise", "early_stopping", "schedule", "cv",
                    "cv_split", "checkpoint", "resume", "threads", "compile")


@lru_cache(maxsize=1)
def _default_values() -> tuple:
    """The default objects of fit's option keywords: a value that *is* one was left out."""
    return tuple(fit.__kwdefaults__[k] for k in _OPTION_KEYWORDS)


@lru_cache(maxsize=1)
def _default_options() -> FitOptions:
    return options_from_keywords()


def _check_callbacks(callbacks) -> None:
    """ConfigError for a callback without the hooks every fit calls (a plain function, say)."""
    for cb in callbacks or ():
        if not all(callable(getattr(cb, hook, None)) for hook in ("on_train_begin", "on_epoch_end", "on_train_end")):
            raise ConfigError(f"callbacks takes gradfit.Callback objects (e.g. gf.CSVLogger('log.csv')), got {cb!r}; "
                              "to run a function each epoch, subclass gf.Callback and call it from on_epoch_end")


def _refuse_keywords_with(options, keywords: dict) -> None:
    if not isinstance(options, FitOptions):
        raise ConfigError(f"options must be a FitOptions (gradfit.options), got {options!r}")
    given = [k for k, v in keywords.items() if not _same(v, FIT_KEYWORDS[k])]
    if given:
        raise ConfigError(f"options= already holds every option; drop {', '.join(given)} (or leave options= out "
                          "and pass keywords only)")


def _same(value, default) -> bool:
    try:
        return value is default or bool(value == default)
    except (TypeError, ValueError):  # e.g. an array compared elementwise
        return False


def _check_range(arrays, dtype) -> None:
    """float32 holds magnitudes up to 3.4e38: refuse data that would turn into inf."""
    if arrays.float32_safe or str(dtype) != "torch.float32":
        return
    check_float32_range({**arrays.inputs, "y": arrays.y})


def _check_counts(arrays) -> None:
    """Poisson counts are >= 0 at every used point (weight > 0); non-integer values are allowed."""
    import numpy as np

    y = arrays.y.reshape(arrays.n, -1)
    bad = (y < 0).any(axis=1)
    if arrays.weights is not None:
        bad &= arrays.weights > 0
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"count {y[i].min():g} at point {i} is negative: Poisson counts are >= 0; fix the data "
                        "(or give the point weight 0), or use a least-squares loss for signed data")


def _check_not_constant(arrays) -> None:
    import numpy as np

    for name, v in arrays.inputs.items():
        cols = v.reshape(len(v), -1)
        flat = np.ptp(cols, axis=0) == 0 if len(v) > 1 else np.ones(cols.shape[1], dtype=bool)
        if flat.any():
            which = f" (column {int(np.nonzero(flat)[0][0])})" if cols.shape[1] > 1 else ""
            raise DataError(f"input {name!r}{which} is constant ({cols[0, np.nonzero(flat)[0][0]]:g} everywhere): it "
                            "carries no information and cannot be normalized; drop it or fit without normalize")


def _fit_split(bound, train_arr, val_arr, notes, options: FitOptions, setup: FitSetup):
    """One fit on a given train/validation split (the body of fit, shared with cross-validation)."""
    training, loss_fn = options.training, setup.loss_fn
    settings = {"options": options.document(), "loss": loss_fn.name, "dtype": str(setup.dtype).removeprefix("torch."),
                "device": str(setup.device), "weighted": setup.weighted}
    common = dict(notes=notes, n_train=train_arr.n, n_val=0 if val_arr is None else val_arr.n)
    regularized = options.regularization.in_use
    scalar = getattr(bound, "scalar_params", True) and not _is_module_spec(bound)
    if not scalar:
        if training.gradient == "analytic":
            raise ConfigError("analytic gradients need a formula model; use gradient='autograd'")
        if setup.bounds or setup.fixed or setup.tie or setup.multistart[0]:
            raise ConfigError("bounds, fixed, tie and starts apply to named scalar parameters, not to networks")
        method, reason = choose_method(training.optimizer, bound, loss_fn, training.batch_size, None, regularized)
        dtype, extra = working_dtype(setup.dtype, train_arr)
        train, val = tensors(train_arr, val_arr, dtype, setup.device)
        objective, bound = module_objective(bound, train, val, loss_fn, training.normalize, training.seed,
                                            dtype, setup.device)
        settings.update(method=method, method_reason=reason, dtype=str(dtype).removeprefix("torch."))
        common["notes"] = notes + extra
        return train_first_order(objective, bound, method, options, setup, settings=settings, **common)
    if training.gradient == "analytic" and bound.expression is None:
        raise ConfigError("analytic gradients need a formula model; use gradient='autograd'")
    space = parameter_space(bound, train_arr, train_arr.n_used, setup.init, setup.bounds, setup.fixed, setup.tie)
    method, reason = choose_method(training.optimizer, bound, loss_fn, training.batch_size, space, regularized)
    init_values = dict(space.values)  # the start the user asked for (a multistart's winner is not it)
    if setup.multistart[0]:
        space, settings["multistart"] = best_start(bound, space, train_arr, loss_fn, setup.multistart[0],
                                                   seed=training.seed, design=setup.multistart[1],
                                                   compile=options.least_squares.compile)
    settings.update(method=method, method_reason=reason, init=init_values, **space.describe())
    if method in _DIRECT:
        # least squares runs in float64 on the CPU whatever dtype and device ask for training
        settings.update(dtype="float64", device="cpu")
        if loss_fn.likelihood:
            return poisson_fit(bound, space, train_arr, val_arr, options, settings=settings,
                               callbacks=setup.callbacks, **common)
        return least_squares_fit(bound, space, train_arr, val_arr, method, options, settings=settings,
                                 callbacks=setup.callbacks, **common)
    dtype, extra = working_dtype(setup.dtype, train_arr)
    objective, dtype, more = scalar_objective(bound, space, train_arr, val_arr, loss_fn, training.normalize,
                                              training.gradient, dtype, setup.device)
    settings["dtype"] = str(dtype).removeprefix("torch.")
    common["notes"] = notes + extra + more
    result = train_first_order(objective, bound, method, options, setup, settings=settings, **common)
    if loss_fn.least_squares and result.status != "diverged":
        problem = LeastSquaresProblem.from_arrays(bound, space, train_arr)
        result = with_uncertainty(result, problem, options.least_squares.absolute_sigma)
    elif loss_fn.likelihood and result.status != "diverged":
        result = with_poisson_uncertainty(result, PoissonProblem.from_arrays(bound, space, train_arr))
    return result


def _step_elements(model, arrays, batch_size) -> int:
    """Elements in the widest tensor of one step: rows per step x the widest of the input
    columns, targets, hidden layers (networks) or free parameters (a Jacobian's columns).
    What decides whether intra-op threads can help (gradfit._threads)."""
    rows = arrays.n if batch_size is None else min(arrays.n, batch_size)
    widths = [arrays.y.size // max(arrays.n, 1)]
    widths += [v.size // max(len(v), 1) for v in arrays.inputs.values()]
    if _is_module_spec(model):
        widths += model.hidden
    elif getattr(model, "module", None) is not None:  # a torch.nn.Module: its widest weight dimension
        widths += [max(p.shape) for p in model.module.parameters() if p.dim()]
    else:
        widths.append(len(getattr(model, "param_names", ())))
    return rows * max(widths)


def _is_module_spec(model) -> bool:
    return isinstance(model, MLPSpec)
