"""Models: formulas, built-in curves, Python functions and torch modules behind one interface."""

from __future__ import annotations

from functools import lru_cache

from ..errors import ModelError
from .base import Model
from .builtin import BUILTIN_NAMES, BuiltinModel, builtin_model
from .formula import FormulaModel
from .function import FunctionModel

__all__ = ["Model", "FormulaModel", "BuiltinModel", "FunctionModel", "builtin_model", "resolve_model",
           "BUILTIN_NAMES", "is_builtin_name"]


def is_builtin_name(text: str) -> bool:
    key = text.strip().lower()
    return key == "mlp" or key.startswith("poly:") or key in BUILTIN_NAMES


@lru_cache(maxsize=256)
def _formula_model(text: str) -> FormulaModel:
    # Unbound formula models are immutable apart from lazily compiled derivatives, so one
    # instance per text serves every fit (parsing and compiling once).
    return FormulaModel(text)


def resolve_model(spec, *, hidden=(64,), activation="tanh"):
    """Turn what the user passed as ``model`` into a model object.

    Strings are built-in names (``"gaussian"``, ``"poly:3"``, ``"mlp"``) or formulas;
    ``torch.nn.Module`` instances and Python callables are wrapped. The MLP is returned as
    an :class:`~gradfit.models.neural.MLPSpec` because its size depends on the data.
    """
    if isinstance(spec, Model):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "mlp":
            from .neural import MLPSpec

            return MLPSpec(hidden=hidden, activation=activation)
        if key.startswith("poly:") or key in BUILTIN_NAMES:
            return builtin_model(key)
        if key.isidentifier():
            import difflib

            close = difflib.get_close_matches(key, [*BUILTIN_NAMES[:-1], "mlp"], n=1, cutoff=0.75)
            if close:
                raise ModelError(f"{spec!r} is not a built-in model (did you mean {close[0]!r}?) and, as a formula, "
                                 "has no input")
        return _formula_model(spec)
    from .neural import MLPSpec

    if isinstance(spec, MLPSpec):
        return spec
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None
    if torch is not None and isinstance(spec, torch.nn.Module):
        from .neural import ModuleModel

        return ModuleModel(spec)
    if callable(spec):
        return FunctionModel(spec)
    raise ModelError(f"model must be a formula, built-in name, callable or torch.nn.Module; got {type(spec).__name__}")
