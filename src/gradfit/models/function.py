"""Models given as Python callables ``f(x, **params)`` written with torch operations."""

from __future__ import annotations

import inspect
from typing import Callable, Mapping

from ..errors import ModelError
from .base import Model

__all__ = ["FunctionModel"]


class FunctionModel(Model):
    """Wrap ``f(x, a, b, ...)``: the first argument is the input, the rest are parameters.

    Defaults in the signature become initial values.

    >>> import torch
    >>> m = FunctionModel(lambda x, a=2.0, k=0.5: a * torch.exp(-k * x))
    >>> m.param_names
    ('a', 'k')
    """

    kind = "function"

    def __init__(self, func: Callable, param_names: tuple[str, ...] | None = None, *, positional: bool = False):
        if not callable(func):
            raise ModelError(f"model must be callable, got {type(func).__name__}")
        self.func = func
        self.positional = positional
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            sig = None
        if param_names is None:
            if sig is None:
                raise ModelError("cannot read the callable's signature; pass param_names=(...)")
            positional = [p for p in sig.parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            if len(positional) < 2:
                raise ModelError("a model function takes the input first and at least one parameter: f(x, a, ...)")
            self.input_names = (positional[0].name,)
            param_names = tuple(p.name for p in positional[1:])
            self._defaults = {p.name: float(p.default) for p in positional[1:]
                              if p.default is not inspect.Parameter.empty and isinstance(p.default, (int, float))}
        else:
            self._defaults = {}
            self.input_names = ("x",)
        self.param_names = tuple(param_names)

    def bind(self, available):
        return self

    def forward(self, inputs: Mapping, params: Mapping):
        x = next(iter(inputs.values())) if len(inputs) == 1 else inputs
        if self.positional:
            return self.func(x, *(params[n] for n in self.param_names))
        return self.func(x, **params)

    def guess(self, inputs, y) -> dict[str, float]:
        return {name: self._defaults.get(name, 1.0) for name in self.param_names}

    def spec(self) -> dict:
        return {"kind": "function", "name": getattr(self.func, "__qualname__", "function"),
                "params": list(self.param_names)}

    def describe(self) -> str:
        return getattr(self.func, "__name__", "function")
