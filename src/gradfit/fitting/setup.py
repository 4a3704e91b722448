"""What a fit is set up with besides its options: the device, the live hooks (callbacks, a
Checkpointer) and the parameter space of a scalar model. gf.fit (fitting/fit.py) and a fit on
streamed data (fitting/streamed.py) share them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

from ..errors import ConfigError, DataError, ModelError
from ..models import FormulaModel
from ..models.parameters import ParameterSpace, ParameterSpec, refuse_inputs_as_parameters
from ..models.starts import formula_start_space
from ..options import device_name, dtype_name

__all__ = ["FitSetup", "resolve_device", "resolve_dtype", "make_checkpointer", "parameter_space"]


@lru_cache(maxsize=1)
def _auto_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype):
    """The torch dtype of "float32"/"float64" (or their aliases, or a torch dtype); ConfigError otherwise."""
    import torch

    return getattr(torch, dtype_name(dtype))


def resolve_device(device):
    """The torch device of "auto" (CUDA when available), "cpu", "cuda", ...; ConfigError when
    the device is malformed or CUDA was asked for but is missing."""
    import torch

    name = device_name(device)
    if name == "auto":
        return _auto_device()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was requested but no CUDA GPU is available; use device='auto' or 'cpu'")
    return dev


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs microseconds per fit
class FitSetup:
    """What one fit needs besides its :class:`~gradfit.options.FitOptions`: the resolved loss,
    dtype and device, the parameter settings (init, bounds, fixed, tie), whether the data are
    weighted, and live hooks that are not option data (callbacks, a Checkpointer)."""

    loss_fn: Any
    dtype: Any
    device: Any
    init: Mapping | None = None
    bounds: Mapping | None = None
    fixed: Sequence[str] = ()
    tie: Mapping | None = None
    weighted: bool = False
    callbacks: tuple = ()
    checkpointer: Any = None
    multistart: tuple = (None, "sobol")  # (starts, design): gf.fit(starts=K)

    def for_fold(self) -> "FitSetup":
        """Cross-validation folds run without the caller's callbacks and checkpoints."""
        return dataclasses.replace(self, callbacks=(), checkpointer=None)


def make_checkpointer(keyword, options):
    """The live Checkpointer: the one passed as ``checkpoint=`` (a signal handler may hold it),
    or a new one built from the checkpoint options."""
    if options is None:
        return None
    from ..train.checkpoint import Checkpointer

    if isinstance(keyword, Checkpointer):
        return keyword
    return Checkpointer(options.folder, every_epochs=options.every_epochs, every_seconds=options.every_seconds)


@lru_cache(maxsize=256)
def _default_formula_space(model) -> ParameterSpace:
    """The parameter space of a formula fit without init, bounds, fixed or ties: it depends
    only on the (cached, immutable) bound model, so it is built once per formula and inputs."""
    return ParameterSpace(model.param_names, model.guess(None, None))


@lru_cache(maxsize=256)
def _init_formula_space(model, init_items: tuple) -> ParameterSpace:
    """The parameter space of a formula fit with only ``init`` (floats): a formula's guess does
    not look at the data, so it is built once per formula, inputs and start values (a refused
    init raises and is not cached)."""
    init = dict(init_items)
    refuse_inputs_as_parameters(model, init, None, (), None)
    spec = ParameterSpec.create(model.param_names, init=init)
    return ParameterSpace.from_spec(spec, spec.start(model.guess(None, None)))


def parameter_space(model, train_arr, n_train, init, bounds, fixed, tie):
    if not model.param_names:
        raise ModelError("the model has no parameters to fit; every name in the formula is a data column")
    if not (init or bounds or fixed or tie) and type(model) is FormulaModel:
        space = _default_formula_space(model)
    elif (type(model) is FormulaModel and type(init) is dict and not (bounds or fixed or tie)
          and all(type(v) is float for v in init.values())):
        space = _init_formula_space(model, tuple(init.items()))
    else:
        space = _configured_space(model, train_arr, init, bounds, fixed, tie)
    if type(model) is FormulaModel and not model.linear_in_params:
        space = formula_start_space(model, space, train_arr, init, bounds)
    if n_train < len(space.free):
        zeros = " (points of weight 0 do not count)" if n_train < train_arr.n else ""
        raise DataError(f"{n_train} training points cannot determine {len(space.free)} parameters "
                        f"({', '.join(space.free)}){zeros}; add data or fix parameters")
    return space


def _configured_space(model, train_arr, init, bounds, fixed, tie) -> ParameterSpace:
    if isinstance(fixed, str):
        fixed = [fixed]
    refuse_inputs_as_parameters(model, init, bounds, fixed, tie)
    spec = ParameterSpec.create(model.param_names, init=init, bounds=bounds, fixed=fixed, tie=tie)
    values = spec.start(model.guess(train_arr.inputs, train_arr.y))
    return ParameterSpace.from_spec(spec, values)
