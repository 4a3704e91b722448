"""Neural models: any torch.nn.Module, and the built-in MLP for when no formula is known."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import DataError, ModelError
from ..options import ACTIVATIONS  # the one list; FitOptions validates against it
from .base import Model

__all__ = ["ModuleModel", "MLPSpec", "build_mlp", "mlp_shapes", "mlp_layers", "MLPGradient", "ACTIVATIONS"]


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
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, device="meta"), acts[activation]()]
    layers.append(nn.Linear(sizes[-1], out_features, device="meta"))
    net = nn.Sequential(*layers).to_empty(device="cpu")
    # nn.Linear's own initialization (kaiming-uniform weights, uniform biases in +-1/sqrt(fan_in))
    # drawn from a private generator: seeding and drawing from the global one raced with other
    # threads' fits (torch.manual_seed elsewhere reset it mid-draw), so the same seed gave other
    # weights. Same seed, same numbers as the global generator gave.
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net[0::2]:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
            bound = 1.0 / math.sqrt(layer.in_features) if layer.in_features else 0.0
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return net


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


def _moments(v, weights):
    """Column means and standard deviations (n - 1 in the variance; sum(w) - 1 with weights)."""
    if weights is None:
        return v.mean(0), v.std(0)
    w = weights.reshape(-1, 1).to(v.dtype)
    total = w.sum()
    mean = (w * v).sum(0) / total
    var = (w * (v - mean) ** 2).sum(0) / (total - 1 if total > 1 else total)
    return mean, var.sqrt()


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

    def standardize(self, x, y, weights=None) -> None:
        """Record mean and std of training x (per column) and y; constant columns keep std 1.
        With ``weights`` the moments are weighted as frequencies (a point of weight 2 counts
        twice, weight 0 not at all), so weighting a point equals repeating it."""
        import torch

        self.x_mean, x_std = _moments(x.reshape(x.shape[0], -1), weights)
        self.x_std = torch.where(x_std > 0, x_std, torch.ones_like(self.x_mean))
        self.y_mean, y_std = _moments(y.reshape(y.shape[0], -1), weights)
        self.y_std = torch.where(y_std > 0, y_std, torch.ones_like(self.y_mean))
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

    def features(self, inputs: Mapping):
        """The module's input (n, d): the named inputs as columns, standardized when set."""
        x = inputs[self.input_names[0]] if len(self.input_names) == 1 else None
        if x is None:
            import torch

            x = torch.stack([inputs[n] for n in self.input_names], dim=-1)
        if x.dim() == 1:
            x = x.unsqueeze(-1)
        if self.in_features is not None and x.shape[-1] != self.in_features:
            many = len(self.input_names) > 1
            raise DataError(f"the network takes {self.in_features} input features, but its input{'s' * many} "
                            f"{', '.join(map(repr, self.input_names))} give{'' if many else 's'} {x.shape[-1]}; "
                            "pass " + ("one column per input" if many else f"an (n, {self.in_features}) array"))
        if self.x_mean is not None:
            x = (x - self.x_mean) / self.x_std
        return x

    def forward(self, inputs: Mapping, params: Mapping | None = None):
        x = self.features(inputs)
        if params is None:
            out = self.module(x)
        else:
            from torch.func import functional_call

            out = functional_call(self.module, dict(params), (x,))
        return self.outputs(out)

    def outputs(self, out):
        """The module's output (n, k) as predictions: (n,) for one output, in the user's units."""
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


#: activations whose derivative follows from their output h alone, so the explicit backward
#: of :class:`MLPGradient` keeps one tensor per layer; name -> torch's in-place form
_OUTPUT_DERIVATIVE = {"Tanh": "tanh_", "ReLU": "relu_", "Sigmoid": "sigmoid_"}


def mlp_layers(module) -> tuple | None:
    """``(linears, activations)`` when ``module`` is exactly an ``nn.Sequential`` of ``nn.Linear``
    layers with one Tanh, ReLU or Sigmoid between each two (:func:`build_mlp`'s form), every
    parameter trainable and no hooks; else None (anything else may compute something else).

    >>> import torch
    >>> linears, acts = mlp_layers(build_mlp(2, 1, (4,), "tanh"))
    >>> [tuple(m.weight.shape) for m in linears], acts
    ([(4, 2), (1, 4)], ('Tanh',))
    >>> mlp_layers(build_mlp(2, 1, (4,), "gelu")) is None
    True
    """
    from torch import nn
    from torch.nn.modules import module as torch_module

    if type(module) is not nn.Sequential or len(module) % 2 == 0:
        return None
    if any(getattr(torch_module, name, None) for name in
           ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")):
        return None
    children = list(module)
    linears, acts = children[0::2], children[1::2]
    if any(type(m) is not nn.Linear for m in linears):
        return None
    if any(type(a).__name__ not in _OUTPUT_DERIVATIVE or type(a).__module__ != nn.Tanh.__module__ for a in acts):
        return None
    for m in (module, *children):
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks:
            return None
    if not all(p.requires_grad for p in module.parameters()):
        return None
    # a layer (or a weight) used twice needs its gradients summed: autograd does that, the
    # hand-written backward writes each once
    slots = [p for _, p in module.named_parameters(remove_duplicate=False)]
    if len({id(p) for p in slots}) != len(slots):
        return None
    return tuple(linears), tuple(type(a).__name__ for a in acts)


class MLPGradient:
    """Forward and backward of an :func:`mlp_layers` network written out by hand: ``addmm`` into
    buffers kept between steps (one set per batch size), the activations' derivatives from
    their outputs (tanh' = 1 - h^2, relu' = [h > 0], sigmoid' = h (1 - h)), the gradients
    written into the parameters' own ``.grad`` tensors.

    Why: a step of a small network is dominated by per-op overhead, not arithmetic; autograd
    adds a graph, saved tensors and fresh allocations per op, and torch's weight gradient
    ``grad_out.T @ input`` is 4x slower for a wide-short result than its transpose (CPU).
    In float32 on CPU, tanh is computed as ``2 sigmoid(2z) - 1``: torch's tanh takes 164 us on
    1024 x 64 values, sigmoid 29 us, and the two differ by at most ~2e-7 (about float32's own
    rounding of values near 1; float64 keeps torch.tanh). The gradients are autograd's to
    ~1e-6 relative in float32 and to rounding in float64 (tests/test_minibatch_speedpath.py).

    >>> import torch
    >>> net = build_mlp(2, 1, (4,), "tanh", seed=0)
    >>> kernel = MLPGradient(*mlp_layers(net))
    >>> x = torch.randn(5, 2)
    >>> torch.allclose(kernel.forward(x), net(x))
    True
    """

    def __init__(self, linears, activations):
        self.linears, self.activations = tuple(linears), tuple(activations)
        self._buffers: dict = {}

    def _buffers_for(self, rows: int, like) -> list:
        buf = self._buffers.get(rows)
        if buf is None or buf[0].dtype != like.dtype or buf[0].device != like.device:
            import torch

            if len(self._buffers) >= 2:  # a minibatch epoch has two sizes: full batches and the last one
                self._buffers.clear()
            buf = [torch.empty(rows, m.out_features, dtype=like.dtype, device=like.device) for m in self.linears]
            buf += [torch.empty(rows, m.out_features, dtype=like.dtype, device=like.device) for m in self.linears[:-1]]
            self._buffers[rows] = buf
        return buf

    def forward(self, x):
        """The network's output (n, out) for ``x`` (n, in), keeping each layer's activation for
        :meth:`backward`. Runs without autograd; the returned tensor is a buffer, valid until
        the next call with as many rows."""
        import torch

        buf = self._buffers_for(x.shape[0], x)
        self._saved = [x]
        a = x
        with torch.no_grad():
            for i, m in enumerate(self.linears):
                out = buf[i]
                act = self.activations[i] if i < len(self.activations) else None
                # float32 tanh(z) on CPU as 2 sigmoid(2z) - 1, the 2z from addmm's own scale factors
                by_sigmoid = act == "Tanh" and out.dtype == torch.float32 and out.device.type == "cpu"
                k = 2.0 if by_sigmoid else 1.0
                if m.bias is None:
                    torch.mm(a, m.weight.t(), out=out)
                    if by_sigmoid:
                        out.mul_(k)
                else:
                    torch.addmm(m.bias, a, m.weight.t(), out=out, beta=k, alpha=k)
                if by_sigmoid:
                    out.sigmoid_().mul_(2.0).sub_(1.0)
                elif act is not None:
                    getattr(out, _OUTPUT_DERIVATIVE[act])()
                if act is not None:
                    self._saved.append(out)
                a = out
        return a

    def backward(self, grad_out) -> None:
        """Gradients of ``sum(grad_out * output)`` with respect to every parameter, written into
        their ``.grad`` (allocated on first use) after :meth:`forward`. Overwrites the saved
        activations."""
        import torch

        saved, buf = self._saved, self._buffers[grad_out.shape[0]]
        n_layers = len(self.linears)
        g = grad_out
        with torch.no_grad():
            for i in range(n_layers - 1, -1, -1):
                m, a = self.linears[i], saved[i]
                _weight_grad(m.weight, g, a)
                if m.bias is not None:
                    torch.sum(g, 0, out=_grad_of(m.bias))
                if i == 0:
                    break
                dh = buf[n_layers + i - 1]
                torch.mm(g, m.weight, out=dh)
                _times_derivative(dh, a, self.activations[i - 1])
                g = dh
        self._saved = []


def _grad_of(p):
    import torch

    if p.grad is None or p.grad.shape != p.shape:
        p.grad = torch.empty_like(p)
    return p.grad


def _weight_grad(weight, g, a) -> None:
    """``weight.grad = g.T @ a`` ((out, n) @ (n, in)). CPU GEMM takes ~4x longer for a result
    with more rows than columns (64x8: 77 us vs 18 us for 8x64), so that one is computed
    transposed and copied."""
    import torch

    grad = _grad_of(weight)
    if grad.shape[0] > grad.shape[1]:
        grad.copy_(torch.mm(a.t(), g).t())
    else:
        torch.mm(g.t(), a, out=grad)


def _times_derivative(dh, h, activation: str) -> None:
    """``dh *= f'(z)`` from the activation's output ``h = f(z)``, in place (``h`` is overwritten)."""
    if activation == "Tanh":
        dh.addcmul_(dh, h.mul_(h), value=-1.0)  # dh (1 - h^2)
    elif activation == "ReLU":
        dh.masked_fill_(h <= 0, 0.0)
    else:  # Sigmoid
        dh.mul_(h.addcmul_(h, h, value=-1.0))  # dh h (1 - h)
