"""``gradient`` and ``loss_value``: the loss and its gradient at given parameters, no training."""

from __future__ import annotations

from typing import Mapping

from ..data.arrays import prepare_arrays
from ..errors import ConfigError, ModelError
from ..losses import resolve_loss
from ..models import resolve_model
from ..models.parameters import ParameterSpace
from ..train.objective import ScalarObjective, TensorData
from .fit import _is_module_spec, resolve_dtype

__all__ = ['gradient', 'loss_value']


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
        obj.analytic_gradient(data_t)
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
