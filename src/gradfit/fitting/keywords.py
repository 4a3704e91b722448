"""The keyword front of ``gradfit.fit``: its option keywords, their defaults, and the typed
:class:`~gradfit.options.FitOptions` they stand for (with the shorthands ``fit`` accepts)."""

from __future__ import annotations

import dataclasses
import numbers
import operator
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from ..errors import ConfigError, did_you_mean
from ..options import (CheckpointOptions, CrossValidationOptions, EarlyStoppingOptions, FitOptions,
                       LeastSquaresOptions, RegularizationOptions, TrainingOptions)

__all__ = ["FIT_KEYWORDS", "options_from_keywords", "early_stopping_from_spec", "checkpoint_from_spec"]

#: the option keywords of :func:`gradfit.fit` and their defaults; its other keywords are data and
#: parameter settings (x, y, data, init, weights, sigma, bounds, fixed, tie, callbacks, cv_groups)
FIT_KEYWORDS: dict = dict(
    loss="mse", optimizer="auto", lr=1e-2, epochs=1000, batch_size=None, normalize=False, val_fraction=0.0, seed=0,
    gradient="autograd", dtype="float32", device="auto", log_every=0, progress=None, absolute_sigma=False,
    max_iter=None, optimizer_options=None, tol=None, nan_policy="raise", hidden=(64,), activation="tanh",
    penalty=None, input_noise=0.0, early_stopping=None, schedule=None, cv=None, cv_split="random", checkpoint=None,
    resume=False, threads=None, compile="auto")


def options_from_keywords(**keywords: Any) -> FitOptions:
    """The :class:`FitOptions` of :func:`gradfit.fit`'s option keywords (defaults for the rest).

    ``tol`` sets both the training and the least-squares tolerance; ``max_iter=None`` keeps the
    least-squares default; ``early_stopping`` and ``checkpoint``/``resume`` take the shorthands
    of :func:`early_stopping_from_spec` and :func:`checkpoint_from_spec`; ``cv`` is the number of
    folds and ``cv_split`` their kind.

    Raises
    ------
    ConfigError
        for an unknown keyword (with a did-you-mean hint) or a bad value (named).

    >>> options_from_keywords(optimizer="adam", lr=0.1, tol=1e-6).least_squares.tol
    1e-06
    """
    key = _cache_key(keywords)
    return _cached_options(key) if key is not None else _build(keywords)


def options_from_values(names: tuple, values: tuple) -> FitOptions:
    """:func:`options_from_keywords` of the option keywords ``names`` with ``values`` (gf.fit
    collects them so). A loop of fits passes the very same objects on every call:
    when each value *is* the previous call's, and those were all immutable (the scalars and int
    tuples :func:`_cache_key` accepts), the previous options are those options (~3 us a call)."""
    last = _LAST_OPTIONS[0]
    if last is not None and all(map(operator.is_, values, last[0])):
        return last[1]
    keywords = dict(zip(names, values))
    key = _cache_key(keywords)
    if key is None:
        return _build(keywords)
    options = _cached_options(key)
    _LAST_OPTIONS[0] = (values, options)  # (one tuple: a concurrent reader sees a whole pair)
    return options


#: the option values of the last cacheable call and their options
_LAST_OPTIONS: list = [None]


def _build(keywords: Mapping) -> FitOptions:
    unknown = [k for k in keywords if k not in FIT_KEYWORDS]
    if unknown:
        raise ConfigError(f"unknown fit option {unknown[0]!r}{did_you_mean(unknown[0], FIT_KEYWORDS)}")
    kw = {**FIT_KEYWORDS, **keywords}
    training = TrainingOptions(
        optimizer=kw["optimizer"], lr=kw["lr"], epochs=kw["epochs"], batch_size=kw["batch_size"],
        normalize=kw["normalize"], val_fraction=kw["val_fraction"], seed=kw["seed"], gradient=kw["gradient"],
        dtype=kw["dtype"], device=kw["device"], tol=kw["tol"], optimizer_options=kw["optimizer_options"],
        log_every=kw["log_every"], progress=kw["progress"], threads=kw["threads"])
    least_squares = LeastSquaresOptions(tol=kw["tol"], absolute_sigma=kw["absolute_sigma"], compile=kw["compile"],
                                        **({} if kw["max_iter"] is None else {"max_iter": kw["max_iter"]}))
    regularization = RegularizationOptions(penalty=kw["penalty"], input_noise=kw["input_noise"],
                                           early_stopping=early_stopping_from_spec(kw["early_stopping"]),
                                           schedule=kw["schedule"])
    cv = None if kw["cv"] is None else CrossValidationOptions(kw["cv"], kw["cv_split"])
    return FitOptions(loss=kw["loss"], nan_policy=kw["nan_policy"], hidden=kw["hidden"], activation=kw["activation"],
                      training=training, least_squares=least_squares, regularization=regularization,
                      checkpoint=checkpoint_from_spec(kw["checkpoint"], kw["resume"]), cv=cv)


def early_stopping_from_spec(spec) -> EarlyStoppingOptions | None:
    """``early_stopping=``: None/False (off), True (patience 20), a patience (int),
    ``{"patience": 20, "min_delta": 0.0}``, or an :class:`EarlyStoppingOptions`."""
    if spec is None or spec is False:
        return None
    if isinstance(spec, EarlyStoppingOptions):
        return spec
    if spec is True:
        return EarlyStoppingOptions()
    if isinstance(spec, numbers.Integral):
        return EarlyStoppingOptions(patience=spec)
    if isinstance(spec, Mapping):
        return EarlyStoppingOptions.from_dict(spec)
    raise ConfigError(f"early_stopping must be a patience (int) or a dict like {{'patience': 20}}, got {spec!r}")


def checkpoint_from_spec(spec, resume: bool = False) -> CheckpointOptions | None:
    """``checkpoint=``/``resume=``: None, a folder, a :class:`CheckpointOptions`, or a
    :class:`gradfit.train.checkpoint.Checkpointer` (its folder and intervals are read)."""
    from ..train.checkpoint import Checkpointer

    if spec is None:
        if resume:
            raise ConfigError("resume=True continues from a checkpoint: pass checkpoint=FOLDER as well")
        return None
    if isinstance(spec, CheckpointOptions):
        return dataclasses.replace(spec, resume=spec.resume or resume)
    if isinstance(spec, Checkpointer):
        return CheckpointOptions(str(spec.folder), spec.every_epochs, spec.every_seconds, resume)
    return CheckpointOptions(spec, resume=resume)


_CACHEABLE = frozenset((type(None), bool, int, float, str, tuple))


def _cache_key(keywords: Mapping) -> tuple | None:
    """A key for keywords made only of scalars (and int tuples), with their types (1 == 1.0 ==
    True, but only one of them is a valid epoch count); None when a value is not cacheable."""
    values = tuple(keywords.values())
    types = tuple(map(type, values))
    if not _CACHEABLE.issuperset(types):
        return None
    if tuple in types and not all(type(h) is int for v in values if type(v) is tuple for h in v):
        return None
    return tuple(keywords), values, types


@lru_cache(maxsize=256)
def _cached_options(key: tuple) -> FitOptions:
    # options are immutable: gf.fit calls with equal scalar keywords share one validated object
    return _build(dict(zip(key[0], key[1])))
