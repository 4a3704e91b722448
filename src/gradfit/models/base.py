"""What every model offers the rest of gradfit.

A model is a *function* of named inputs and named parameters: ``forward(inputs, params)``.
It owns no parameter values; the training loop does. That keeps one model object usable
for one fit, a batch of fits (parameters with a leading batch dimension) or torch.func
transforms (jacfwd, vmap) without copies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping

__all__ = ["Model"]


class Model(ABC):
    """Base class. Subclasses set ``param_names`` and ``input_names`` and implement ``forward``.

    ``scalar_params`` is True for models whose parameters are named scalars (formulas,
    built-ins, Python functions) and False for neural networks whose parameters are tensors.
    """

    kind: str = "model"
    param_names: tuple[str, ...] = ()
    input_names: tuple[str, ...] = ("x",)
    scalar_params: bool = True
    #: for formula models: the symbolic right-hand side (enables analytic gradients)
    expression = None

    @abstractmethod
    def forward(self, inputs: Mapping, params: Mapping):
        """Predictions for named inputs (tensors) at named parameters (tensors)."""

    def guess(self, inputs: Mapping, y) -> dict[str, float]:
        """Initial parameter values from the data (numpy arrays). Default: 1.0 each, as
        scipy's curve_fit does; built-in curves override this with data-driven guesses."""
        return {name: 1.0 for name in self.param_names}

    def spec(self) -> dict:
        """A JSON-able description from which :func:`gradfit.load` rebuilds the model."""
        return {"kind": self.kind}

    def describe(self) -> str:
        return self.kind
