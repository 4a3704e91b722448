"""Neural models: any torch.nn.Module, and the built-in MLP for when no formula is known."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import ModelError
from ..options import ACTIVATIONS  # the one list; FitOptions validates against it
from .base import Model

__all__ = ["ModuleModel", "MLPSpec", "build_mlp", "mlp_shapes", "ACTIVATIONS"]


@dataclass(frozen=True)
class MLPSpec:
    """An MLP to be built once the number of input and output columns is known.

    ``hidden`` holds the widths of the hidden layers; an int is one layer (32 -> (32,)).
    """

    hidden: tuple[int, ...] = (64,)
    activation: str = "tanh"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ModelError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        sizes = (self.hidden,) if isinstance(self.hidden, numbers.Integral) else self.hidden
        if (not isinstance(sizes, (list, tuple)) or not sizes
                or any(isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1 for h in sizes)):
            raise ModelError(f"hidden sizes must be positive integers, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in sizes))


def build_mlp(in_features: int, out_features: int, hidden: Sequence[int], activation: str, seed: int | None = None):
    """An ``nn.Sequential`` of Linear layers with ``activation`` between them, seeded."""
    import torch
    from torch import nn

    acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid,
            "elu": nn.ELU, "softplus": nn.Softplus}
    sizes = [in_features, *[int(h) for h in hidden]]
    layers: list = []
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), acts[activation]()]
        layers.append(nn.Linear(sizes[-1], out_features))
        return nn.Sequential(*layers)


def mlp_shapes(in_features: int, out_features: int, hidden: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of :func:`build_mlp`'s network, computed without building it.

    A model file's layer sizes are checked against its weights' own shapes with this before
    anything is allocated.

    Returns
    -------
    dict
        ``{"0.weight": (h1, in_features), "0.bias": (h1,), "2.weight": ..., ...}``; Linear
        layers sit at even indices, activations between them.

    Examples
    --------
    >>> mlp_shapes(1, 1, (4,))
    {'0.weight': (4, 1), '0.bias': (4,), '2.weight': (1, 4), '2.bias': (1,)}
    """
    sizes = [int(in_features), *[int(h) for h in hidden], int(out_features)]
    shapes: dict[str, tuple[int, ...]] = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"{2 * i}.weight"] = (b, a)
        shapes[f"{2 * i}.bias"] = (b,)
    return shapes


class ModuleModel(Model):
    """Fit the parameters of a ``torch.nn.Module`` mapping x of shape (n, d) to (n,) or (n, k).

    With standardization set (see :meth:`standardize`), inputs are standardized before the
    module and outputs mapped back to the user's units after it, so ``predict`` and the
    reported loss are always in the user's units.
    """

    kind = "module"
    scalar_params = False

    def __init__(self, module, *, mlp: MLPSpec | None = None, in_features: int | None = None,
                 out_features: int | None = None, input_names: tuple[str, ...] = ("x",)):
        import torch

        if not isinstance(module, torch.nn.Module):
            raise ModelError(f"expected a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.mlp = mlp
        self.in_features = in_features
        self.out_features = out_features
        self.input_names = tuple(input_names)
        self.param_names = tuple(name for name, _ in module.named_parameters())
        self.x_mean = self.x_std = self.y_mean = self.y_std = None

    def standardize(self, x, y) -> None:
        """Record mean and std of training x (per column) and y; constant columns keep std 1."""
        import torch

        x2 = x.reshape(x.shape[0], -1)
        self.x_mean = x2.mean(0)
        self.x_std = torch.where(x2.std(0) > 0, x2.std(0), torch.ones_like(self.x_mean))
        y2 = y.reshape(y.shape[0], -1)
        self.y_mean = y2.mean(0)
        self.y_std = torch.where(y2.std(0) > 0, y2.std(0), torch.ones_like(self.y_mean))
        if y.dim() == 1:
            self.y_mean, self.y_std = self.y_mean[0], self.y_std[0]

    @property
    def normalized(self) -> bool:
        return self.x_mean is not None

    def to(self, device, dtype) -> "ModuleModel":
        self.module.to(device=device, dtype=dtype)
        for attr in ("x_mean", "x_std", "y_mean", "y_std"):
            v = getattr(self, attr)
            if v is not None:
                setattr(self, attr, v.to(device=device, dtype=dtype))
        return self

    def forward(self, inputs: Mapping, params: Mapping | None = None):
        x = inputs[self.input_names[0]] if len(self.input_names) == 1 else None
        if x is None:
            import torch

            x = torch.stack([inputs[n] for n in self.input_names], dim=-1)
        if x.dim() == 1:
            x = x.unsqueeze(-1)
        if self.x_mean is not None:
            x = (x - self.x_mean) / self.x_std
        if params is None:
            out = self.module(x)
        else:
            from torch.func import functional_call

            out = functional_call(self.module, dict(params), (x,))
        if self.out_features == 1 or (self.out_features is None and out.shape[-1] == 1):
            out = out.squeeze(-1)
        if self.y_mean is not None:
            out = out * self.y_std + self.y_mean
        return out

    def spec(self) -> dict:
        spec: dict = {"kind": "mlp" if self.mlp else "module", "class": type(self.module).__name__,
                      "in_features": self.in_features, "out_features": self.out_features,
                      "input_names": list(self.input_names)}
        if self.mlp:
            spec.update(hidden=list(self.mlp.hidden), activation=self.mlp.activation)
        if self.normalized:
            spec["normalization"] = {k: _to_list(getattr(self, k)) for k in ("x_mean", "x_std", "y_mean", "y_std")}
        return spec

    def describe(self) -> str:
        if self.mlp:
            return f"mlp({', '.join(str(h) for h in self.mlp.hidden)}; {self.mlp.activation})"
        return type(self.module).__name__


def _to_list(t):
    return t.detach().cpu().double().tolist()
