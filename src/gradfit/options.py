"""Typed options of a fit: frozen groups that validate in their constructors and round-trip to JSON.

:class:`FitOptions` (loss, NaN policy, network shape) composes :class:`TrainingOptions`,
:class:`LeastSquaresOptions`, :class:`RegularizationOptions` (with :class:`EarlyStoppingOptions`),
:class:`CheckpointOptions` and :class:`CrossValidationOptions`. Each checks its values in
``__post_init__`` and raises :class:`~gradfit.errors.ConfigError` naming the bad value, as
``torch.optim`` constructors do, and stores them in one canonical form ("double" becomes "float64",
tuples in option dicts become lists), so ``from_dict(to_dict())`` gives back an equal object, also
through JSON. dtype and device stay strings that the fitting code resolves to torch objects; names
only a higher layer knows (optimizer, loss, activation) are checked where they are resolved.
``gradfit.fit(**keywords)`` builds a FitOptions (fitting/keywords.py), or takes ``options=``.

>>> opts = FitOptions(training=TrainingOptions(optimizer="adam", lr=0.05, epochs=200))
>>> FitOptions.from_dict(opts.to_dict()) == opts
True
>>> TrainingOptions(lr=-1)
Traceback (most recent call last):
...
gradfit.errors.ConfigError: learning rate lr must be a positive number, got -1
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

from ._checks import (check_choice, check_flag, check_integer, check_known, check_mapping, check_name,
                      check_nonnegative, check_plain, check_positive, is_real)
from ._threads import check_threads
from .errors import ConfigError, did_you_mean

__all__ = ["TrainingOptions", "LeastSquaresOptions", "EarlyStoppingOptions", "RegularizationOptions",
           "CheckpointOptions", "CrossValidationOptions", "FitOptions", "SCHEDULE_NAMES", "CV_SPLITS",
           "dtype_name", "device_name"]

GRADIENTS = ("autograd", "analytic")
#: torch.optim optimizers by gradfit name -> class name (every one but SparseAdam, which needs
#: sparse gradients); optim/registry.py builds them from this table
TORCH_OPTIMIZERS = {
    "sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad",
    "adadelta": "Adadelta", "adamax": "Adamax", "nadam": "NAdam", "radam": "RAdam", "asgd": "ASGD",
    "rprop": "Rprop", "lbfgs": "LBFGS",
}
#: what TrainingOptions.optimizer accepts
OPTIMIZERS = ("auto", "lm", "linear", *TORCH_OPTIMIZERS)
#: the built-in losses (losses.py defines them under these names)
LOSS_NAMES = ("mse", "mae", "huber", "log_cosh", "poisson")
#: activations of the built-in MLP (models/neural.py maps them to torch modules)
ACTIVATIONS = ("tanh", "relu", "gelu", "silu", "sigmoid", "elu", "softplus")
DTYPES = {"float32": "float32", "float": "float32", "float64": "float64", "double": "float64"}
NAN_POLICIES = ("raise", "omit")
SCHEDULE_NAMES = ("step", "exponential", "cosine", "plateau")
CV_SPLITS = ("random", "grouped", "time")
PENALTY_KINDS = ("l1", "l2")
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu)(:\d+)?")


# -- value checks: each returns the value in canonical form or raises ConfigError naming it. Each
# starts with a fast path for the plain Python type, since gf.fit builds options on every call.
def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # the canonical form, inside a frozen dataclass's __post_init__


# -- the shared base: JSON round trip --------------------------------------------------------------
class _Options:
    """to_dict / from_dict for the frozen option dataclasses below. A field whose metadata names
    a ``group`` holds a nested option object (or None) and is written as a nested dict."""

    def to_dict(self) -> dict:
        """The options as JSON-able data (nested groups as nested dicts, tuples as lists); a new
        dict on every call."""
        return _copy(self.document())

    def document(self) -> dict:
        """The same data as :meth:`to_dict`, built once and shared: read-only by contract (results
        keep it as their settings; copy it with :meth:`to_dict` before changing anything)."""
        doc = self.__dict__.get("_doc")
        if doc is None:
            doc = self._document()
            object.__setattr__(self, "_doc", doc)
        return doc

    def _document(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, _Options):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, (dict, list)):
                v = check_plain(f.name, v)  # a copy: the caller may change it
            elif f.name == "loss" and callable(v):  # a custom loss is written by its name
                v = getattr(v, "name", None) or getattr(v, "__name__", None) or "custom"
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, doc: Mapping):
        """Rebuild from :meth:`to_dict` output; missing keys take their defaults.

        Raises
        ------
        ConfigError
            ``doc`` is not a dict, names an unknown option (with a did-you-mean hint), or holds a
            bad value.
        """
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{cls.__name__}.from_dict takes a dict, got {doc!r}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in doc.items():
            if key not in known:
                raise ConfigError(f"{cls.__name__} has no option {key!r}{did_you_mean(str(key), known)}; "
                                  f"options are {', '.join(known)}")
            group = known[key].metadata.get("group")
            kwargs[key] = group.from_dict(value) if group is not None and value is not None else value
        return cls(**kwargs)


_CONTAINERS = (dict, list)


def _copy(value):
    """A copy of a JSON document (plain dicts and lists), faster than copy.deepcopy."""
    if type(value) is list:
        return [_copy(v) if type(v) in _CONTAINERS else v for v in value]
    out = value.copy()
    for k, v in value.items():
        if type(v) in _CONTAINERS:
            out[k] = _copy(v)
    return out


def _group(cls, label: str, value, *, optional: bool = False):
    if value is None and optional:
        return None
    if not isinstance(value, cls):
        raise ConfigError(f"{label} must be a {cls.__name__} (build one with {cls.__name__}(...) or "
                          f"{cls.__name__}.from_dict(...)), got {value!r}")
    return value


# -- the groups --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingOptions(_Options):
    """How first-order training runs, and the choices every fit shares (split, seed, progress).

    Parameters
    ----------
    optimizer : "auto", "lm", "linear" or a torch.optim name ("adam", "sgd", "lbfgs", ...).
    lr : learning rate, > 0.
    epochs : passes over the training data, >= 1.
    batch_size : minibatch size (>= 1), or None for full-batch steps.
    normalize : precondition the optimizer (standardized inputs/targets for networks).
    val_fraction : share of the rows held out for validation, in [0, 1).
    seed : seed of the split, minibatch order, input noise and network initialization, >= 0.
    gradient : "autograd" or "analytic" (symbolic derivatives of a formula).
    dtype : "float32" or "float64" ("float" and "double" are accepted and stored canonically).
    device : "auto", "cpu", "cuda", "cuda:N", "mps" or "xpu".
    tol : stop as converged once the relative loss change stays below tol, or None.
    optimizer_options : extra keyword arguments of the torch.optim constructor (JSON data).
    log_every : log every this many epochs (0: never).
    progress : show a progress bar (None: when the output is a terminal).
    warn_overfitting : warn when the validation loss rises as the training loss falls (not in CV folds).
    threads : intra-op CPU threads during the fit (>= 1), or None: one thread for small
        problems, the process's setting otherwise (see :mod:`gradfit._threads`).

    Raises
    ------
    ConfigError
        for any value outside the ranges above, naming it.
    """

    optimizer: str = "auto"
    lr: float = 1e-2
    epochs: int = 1000
    batch_size: int | None = None
    normalize: bool = False
    val_fraction: float = 0.0
    seed: int = 0
    gradient: str = "autograd"
    dtype: str = "float32"
    device: str = "auto"
    tol: float | None = None
    optimizer_options: dict | None = None
    log_every: int = 0
    progress: bool | None = None
    warn_overfitting: bool = True
    threads: int | None = None

    def __post_init__(self):
        _set(self, "optimizer", check_known("optimizer", check_name("optimizer", self.optimizer), OPTIMIZERS))
        _set(self, "lr", check_positive("learning rate lr", self.lr))
        _set(self, "epochs", check_integer("epochs", self.epochs, 1))
        _set(self, "batch_size", check_integer("batch_size", self.batch_size, 1, optional=True))
        _set(self, "normalize", check_flag("normalize", self.normalize))
        if not is_real(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be a number in [0, 1), got {self.val_fraction!r}")
        _set(self, "val_fraction", float(self.val_fraction))
        _set(self, "seed", check_integer("seed", self.seed, 0))
        _set(self, "gradient", check_choice("gradient", self.gradient, GRADIENTS))
        _set(self, "dtype", dtype_name(self.dtype))
        _set(self, "device", device_name(self.device))
        _set(self, "tol", check_positive("tol", self.tol, optional=True))
        _set(self, "optimizer_options", check_mapping("optimizer_options", self.optimizer_options))
        _set(self, "log_every", check_integer("log_every", self.log_every, 0))
        _set(self, "progress", check_flag("progress", self.progress, optional=True))
        _set(self, "warn_overfitting", check_flag("warn_overfitting", self.warn_overfitting))
        _set(self, "threads", check_threads(self.threads))


def dtype_name(value) -> str:
    """The canonical name ('float32' or 'float64') of a dtype name, alias or torch dtype; ConfigError otherwise."""
    text = str(value).removeprefix("torch.") if type(value).__module__ == "torch" else value
    key = text.lower() if isinstance(text, str) else None
    if key not in DTYPES:
        raise ConfigError(f"dtype must be 'float32' or 'float64', got {value!r}")
    return DTYPES[key]


def device_name(value) -> str:
    """A device as a string ('auto' for None, 'cuda:0' for torch.device('cuda', 0)); ConfigError when malformed."""
    text = "auto" if value is None else str(value) if type(value).__module__ == "torch" else value
    if text == "auto" or isinstance(text, str) and _DEVICE.fullmatch(text):
        return text
    raise ConfigError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or 'xpu', got {value!r}")


@dataclass(frozen=True)
class LeastSquaresOptions(_Options):
    """How the direct least-squares solvers ("linear", "lm") run.

    Parameters
    ----------
    max_iter : Levenberg-Marquardt iteration budget, >= 1.
    tol : convergence tolerance on the relative change in chi-square or in the parameters
        (None: the solver's default).
    absolute_sigma : sigma is absolute: the covariance is not rescaled by the reduced chi-square.
    compile : "auto" (default), True or False: whether Levenberg-Marquardt runs as a native C
        kernel (:mod:`gradfit.optim.native_single`; formulas without bounds or ties). "auto" uses
        a kernel already built (this process or the disk cache) and builds one once the
        formula's fits in the process have spent two builds' time; True builds it now (~0.5 s,
        once per formula and machine); False never (numpy). "yes"/"no" are accepted.

    Raises
    ------
    ConfigError
        for a bad value, naming it.
    """

    max_iter: int = 2000
    tol: float | None = None
    absolute_sigma: bool = False
    compile: bool | str = "auto"

    def __post_init__(self):
        _set(self, "max_iter", check_integer("max_iter", self.max_iter, 1))
        _set(self, "tol", check_positive("tol", self.tol, optional=True))
        _set(self, "absolute_sigma", check_flag("absolute_sigma", self.absolute_sigma))
        _set(self, "compile", compile_choice(self.compile))


def compile_choice(value) -> bool | str:
    """``compile=``: True, False or "auto" (also "yes"/"no", None for False; ConfigError otherwise),
    for gf.fit and fit_many alike."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy's True and False
        value = value.item()
    if value is True or (isinstance(value, str) and value in ("yes", "true")):
        return True
    if value is False or value is None or (isinstance(value, str) and value in ("no", "false")):
        return False
    if isinstance(value, str) and value == "auto":
        return "auto"
    raise ConfigError(f"compile must be 'auto', True or False, got {value!r}")


@dataclass(frozen=True)
class EarlyStoppingOptions(_Options):
    """Stop once the validation loss has not improved by ``min_delta`` for ``patience`` epochs,
    and restore the best epoch.

    Raises
    ------
    ConfigError
        patience is not an integer >= 1, or min_delta is not a number >= 0.
    """

    patience: int = 20
    min_delta: float = 0.0

    def __post_init__(self):
        _set(self, "patience", check_integer("early_stopping patience", self.patience, 1))
        _set(self, "min_delta", check_nonnegative("early_stopping min_delta", self.min_delta))


@dataclass(frozen=True)
class RegularizationOptions(_Options):
    """What first-order training adds against overfitting (any of them rules out the direct
    least-squares solvers).

    Parameters
    ----------
    penalty : ``{"l2": 1e-3}`` or ``{"l2": {"w": 1e-3}, "l1": 1e-4}``: coefficients >= 0 for
        every parameter or by name (names are checked against the model when training starts).
    input_noise : Gaussian noise on training inputs relative to each input's std, >= 0.
    early_stopping : an :class:`EarlyStoppingOptions`, or None.
    schedule : learning-rate schedule: "step", "exponential", "cosine", "plateau", or
        ``{"name": ..., **torch keyword arguments}``.

    Raises
    ------
    ConfigError
        for an unknown penalty kind or schedule, a negative coefficient or noise, naming it.
    """

    penalty: dict | None = None
    input_noise: float = 0.0
    early_stopping: EarlyStoppingOptions | None = field(default=None, metadata={"group": EarlyStoppingOptions})
    schedule: str | dict | None = None

    def __post_init__(self):
        _set(self, "penalty", _penalty(self.penalty))
        _set(self, "input_noise", check_nonnegative("input_noise", self.input_noise))
        _group(EarlyStoppingOptions, "early_stopping", self.early_stopping, optional=True)
        _set(self, "schedule", _schedule(self.schedule))

    @cached_property  # options are immutable; gf.fit asks on every call
    def in_use(self) -> str | None:
        """The first regularization switched on, in words ("a penalty", ...), or None."""
        for on, words in ((self.penalty, "a penalty"), (self.input_noise, "input noise"),
                          (self.early_stopping, "early stopping"), (self.schedule, "a learning-rate schedule")):
            if on:
                return words
        return None


def _penalty(spec) -> dict | None:
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f'penalty must be a dict like {{"l2": 1e-3}} or {{"l2": {{"w": 1e-3}}}}, got {spec!r}')
    out = {}
    for kind, value in spec.items():
        if kind not in PENALTY_KINDS:
            raise ConfigError(f"unknown penalty {kind!r}{did_you_mean(str(kind), PENALTY_KINDS)}; use 'l1' and/or 'l2'")
        if isinstance(value, Mapping):
            out[kind] = {str(n): check_nonnegative(f"penalty {kind} coefficient of {n!r}", c) for n, c in value.items()}
        else:
            out[kind] = check_nonnegative(f"penalty {kind} coefficient", value)
    return out or None


def _schedule(spec):
    if spec is None:
        return None
    if not isinstance(spec, str) and not (isinstance(spec, Mapping) and "name" in spec):
        raise ConfigError(f"schedule must be a name ({', '.join(SCHEDULE_NAMES)}) or a dict with a 'name', "
                          f"got {spec!r}")
    doc = {"name": spec} if isinstance(spec, str) else check_plain("schedule", spec)
    name = doc["name"].lower() if isinstance(doc["name"], str) else doc["name"]
    if name not in SCHEDULE_NAMES:
        hint = did_you_mean(name, SCHEDULE_NAMES) if isinstance(name, str) else ""
        raise ConfigError(f"unknown schedule {doc['name']!r}{hint}; choose one of {', '.join(SCHEDULE_NAMES)}")
    return name if isinstance(spec, str) else {**doc, "name": name}


@dataclass(frozen=True)
class CheckpointOptions(_Options):
    """Where first-order training saves its complete state, how often, and whether it resumes.

    Parameters
    ----------
    folder : the folder of checkpoint.json and checkpoint.safetensors (str or path).
    every_epochs : save every this many epochs (>= 1), or None.
    every_seconds : save when this many seconds have passed since the last save (> 0), or None.
    resume : continue from the checkpoint in ``folder`` (it must belong to the same fit).

    Raises
    ------
    ConfigError
        for an empty folder or a bad interval, naming it.
    """

    folder: str
    every_epochs: int | None = None
    every_seconds: float | None = 60.0
    resume: bool = False

    def __post_init__(self):
        folder = os.fspath(self.folder) if isinstance(self.folder, os.PathLike) else self.folder
        if not isinstance(folder, str) or not folder:
            raise ConfigError(f"checkpoint folder must be a path, got {self.folder!r}")
        _set(self, "folder", folder)
        _set(self, "every_epochs", check_integer("checkpoint every_epochs", self.every_epochs, 1, optional=True))
        _set(self, "every_seconds", check_positive("checkpoint every_seconds", self.every_seconds, optional=True))
        _set(self, "resume", check_flag("resume", self.resume))


@dataclass(frozen=True)
class CrossValidationOptions(_Options):
    """k-fold cross-validation on top of the fit.

    Parameters
    ----------
    folds : number of folds, >= 2.
    split : "random", "grouped" (needs one group label per row: ``cv_groups``) or "time"
        (forward chaining: each fold validates on rows after its training rows).

    Raises
    ------
    ConfigError
        for a bad fold count or split, naming it.
    """

    folds: int
    split: str = "random"

    def __post_init__(self):
        _set(self, "folds", check_integer("cv (the number of folds)", self.folds, 2))
        _set(self, "split", check_choice("cv_split", self.split, CV_SPLITS))


@dataclass(frozen=True)
class FitOptions(_Options):
    """Every option of one fit. Compose the groups; anything left out takes its default.

    Parameters
    ----------
    loss : "mse", "mae", "huber", "log_cosh", "poisson", or a callable ``f(pred, target)``. A callable is
        written to JSON by its name, so ``from_dict`` gives back the name, not the callable.
    nan_policy : "raise" (name the rows holding NaN/inf) or "omit" (drop them).
    hidden, activation : hidden layer widths (each >= 1; an int is one layer: 32 -> (32,)) and
        activation of a built-in "mlp" network.
    training, least_squares, regularization : the option groups (defaults when left out).
    checkpoint : a :class:`CheckpointOptions`, or None.
    cv : a :class:`CrossValidationOptions`, or None.

    Raises
    ------
    ConfigError
        for a bad value, naming it, or early stopping without a validation split.

    Examples
    --------
    >>> opts = FitOptions(loss="huber", training=TrainingOptions(optimizer="adam", val_fraction=0.2),
    ...                   regularization=RegularizationOptions(early_stopping=EarlyStoppingOptions(patience=5)))
    >>> opts.to_dict()["regularization"]["early_stopping"]
    {'patience': 5, 'min_delta': 0.0}
    """

    loss: str | Callable = "mse"
    nan_policy: str = "raise"
    hidden: tuple = (64,)
    activation: str = "tanh"
    training: TrainingOptions = field(default_factory=TrainingOptions, metadata={"group": TrainingOptions})
    least_squares: LeastSquaresOptions = field(default_factory=LeastSquaresOptions,
                                               metadata={"group": LeastSquaresOptions})
    regularization: RegularizationOptions = field(default_factory=RegularizationOptions,
                                                  metadata={"group": RegularizationOptions})
    checkpoint: CheckpointOptions | None = field(default=None, metadata={"group": CheckpointOptions})
    cv: CrossValidationOptions | None = field(default=None, metadata={"group": CrossValidationOptions})

    def __post_init__(self):
        if isinstance(self.loss, str):
            _set(self, "loss", check_known("loss", check_name("loss", self.loss).replace("-", "_"), LOSS_NAMES))
        elif not callable(self.loss):
            raise ConfigError(f"loss must be a name ('mse', 'mae', 'huber', 'log_cosh', 'poisson') or a callable, got {self.loss!r}")
        _set(self, "nan_policy", check_choice("nan_policy", self.nan_policy, NAN_POLICIES))
        _set(self, "hidden", _hidden(self.hidden))
        _set(self, "activation", check_known("activation", check_name("activation", self.activation), ACTIVATIONS))
        _group(TrainingOptions, "training", self.training)
        _group(LeastSquaresOptions, "least_squares", self.least_squares)
        _group(RegularizationOptions, "regularization", self.regularization)
        _group(CheckpointOptions, "checkpoint", self.checkpoint, optional=True)
        _group(CrossValidationOptions, "cv", self.cv, optional=True)
        if self.regularization.early_stopping is not None and self.training.val_fraction == 0:
            raise ConfigError("early_stopping watches the validation loss: set val_fraction (e.g. 0.2)")

    def for_fold(self) -> "FitOptions":
        """The options of one cross-validation fold: no progress bar, logging, overfitting
        warnings, checkpoints or nested folds."""
        quiet = dataclasses.replace(self.training, progress=False, log_every=0, warn_overfitting=False)
        return dataclasses.replace(self, training=quiet, checkpoint=None, cv=None)


def _hidden(value) -> tuple:
    sizes = (value,) if isinstance(value, numbers.Integral) else value
    if not isinstance(sizes, (list, tuple)) or not sizes or any(
            isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in sizes):
        raise ConfigError(f"hidden must be layer sizes (integers >= 1), got {value!r}")
    return tuple(int(h) for h in sizes)
