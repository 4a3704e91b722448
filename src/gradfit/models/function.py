"""Models given as Python callables ``f(x, a, b, ...)``, written with torch or with numpy.

A function written with torch operations is differentiated exactly (torch.func.jacfwd). One
written with numpy (``np.exp(-k * x)``, as every scipy user writes it) cannot be: it is
evaluated in numpy and its Jacobian comes from finite differences (or from a ``jac``
function the user supplies), and the model says so in :attr:`FunctionModel.notes`. Which
of the two a function is can only be told by calling it on the fit's data, so the model
decides once, at the fit's start (:meth:`FunctionModel.resolve_backend`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Callable

import numpy as np

from ..errors import ModelError
from .base import Model

__all__ = ["FunctionModel", "JAC_SCHEMES"]

#: ``jac=`` strings and what they mean (scipy.optimize.least_squares's names)
JAC_SCHEMES = {"2-point": "forward", "3-point": "central", "cs": "complex-step"}
#: backends that evaluate the function with numpy values (no autograd)
_VALUE_BACKENDS = ("numpy", "torch-values")


class FunctionModel(Model):
    """Wrap ``f(x, a, b, ...)``: the first argument is the input, the rest are parameters.

    Defaults in the signature become initial values. ``jac`` chooses the Jacobian: None (exact
    from autograd when f is written with torch, else "auto" central differences), a
    finite-difference scheme ("2-point", "3-point", "cs", see
    :func:`gradfit.models.jacobian.finite_differences`), or a callable ``jac(x, *params)``
    returning the (n, P) matrix d f / d params (``positional=True``) or ``jac(x, **params)``.

    >>> import torch
    >>> m = FunctionModel(lambda x, a=2.0, k=0.5: a * torch.exp(-k * x))
    >>> m.param_names
    ('a', 'k')
    """

    kind = "function"

    def __init__(self, func: Callable, param_names: tuple[str, ...] | None = None, *, positional: bool = False,
                 jac=None):
        if not callable(func):
            raise ModelError(f"model must be callable, got {type(func).__name__}")
        if not (jac is None or callable(jac) or jac in JAC_SCHEMES):
            raise ModelError(f"jac must be None, a callable or one of {', '.join(map(repr, JAC_SCHEMES))}; got {jac!r}")
        self.func = func
        self.positional = positional
        self.jac = jac
        #: None until resolve_backend: "torch" (autograd), "numpy" or "torch-values" (f runs on
        #: tensors but autograd cannot differentiate it)
        self.backend: str | None = None
        self._why = ""
        self._memo = {}
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            sig = None
        if param_names is None:
            if sig is None:
                raise ModelError("cannot read the callable's signature; pass param_names=(...)")
            args = [p for p in sig.parameters.values()
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            if len(args) < 2:
                raise ModelError("a model function takes the input first and at least one parameter: f(x, a, ...)")
            self.input_names = (args[0].name,)
            param_names = tuple(p.name for p in args[1:])
            self._defaults = {p.name: float(p.default) for p in args[1:]
                              if p.default is not inspect.Parameter.empty and isinstance(p.default, (int, float))}
        else:
            self._defaults = {}
            self.input_names = ("x",)
        self.param_names = tuple(param_names)

    # -- what the Jacobian builder (models/jacobian.py) reads ---------------------------------
    @property
    def numpy_only(self) -> bool:
        """True when the model is evaluated without autograd (numpy, or a jac given)."""
        return self.jac is not None or self.backend in _VALUE_BACKENDS

    @property
    def finite_scheme(self) -> str:
        return self.jac if isinstance(self.jac, str) else "auto"

    @property
    def jacobian_error(self) -> float:
        """Worst-case relative error of this model's Jacobian: 0 when exact (autograd or the
        user's jac), else the finite-difference scheme's (sqrt(eps) for "2-point" and "auto",
        eps**(2/3) for "3-point", eps for "cs"). A solver cannot certify stationarity much below
        this times the Jacobian's condition number."""
        eps = float(np.finfo(np.float64).eps)
        if callable(self.jac) or not self.numpy_only:
            return 0.0
        return {"2-point": eps ** 0.5, "3-point": eps ** (2 / 3), "cs": eps, "auto": eps ** 0.5}[self.finite_scheme]

    @property
    def jacobian_numpy(self) -> Callable | None:
        """``(inputs, params) -> (n, P)`` from the user's ``jac`` callable, or None."""
        return self._user_jacobian if callable(self.jac) else None

    @property
    def notes(self) -> tuple[str, ...]:
        """What a fit with this model should tell the user about its derivatives."""
        if callable(self.jac):
            return ("the Jacobian comes from the jac function you supplied",)
        if isinstance(self.jac, str):
            return (f"the Jacobian is approximated by {JAC_SCHEMES[self.jac]} finite differences "
                    f"(jac={self.jac!r})",)
        if self.backend in _VALUE_BACKENDS:
            return (f"the Jacobian is approximated by finite differences (central) because {self._why}; write f with "
                    "torch operations (torch.exp, ...) for exact derivatives",)
        return ()

    def resolve_backend(self, inputs: Mapping, params: Mapping) -> str:
        """Decide once, on the fit's inputs at its start values, how f is evaluated and
        differentiated: "torch" when torch.func.jacfwd differentiates it and agrees with
        finite differences (a function that turns parameters into Python floats, e.g. with
        ``math.exp`` or ``float()``, silently loses their derivatives), else "numpy" (f
        evaluated on numpy arrays), or "torch-values" when f only runs on tensors."""
        if self.backend is not None:
            return self.backend
        np_inputs = {k: _as_numpy(v) for k, v in inputs.items()}
        values = {n: float(params[n]) for n in self.param_names}
        why = "" if self.jac is not None else _autograd_problem(self, np_inputs, values)
        if not why:
            if self.jac is None:
                self.backend = "torch"
                return self.backend
        self._why = why
        first_error = None
        for backend in _VALUE_BACKENDS:  # numpy first; then tensors for f written with torch only
            self.backend = backend
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.forward_numpy(np_inputs, values)  # remembered: the solver's first call reuses it
                break
            except Exception as err:  # noqa: BLE001 - try the next backend; else report f's own error
                self._memo.clear()
                first_error = first_error or err
        else:
            self.backend = None
            raise first_error
        return self.backend

    # -- evaluation -----------------------------------------------------------------------
    def bind(self, available):
        return self

    def _call(self, x, params: Mapping):
        if self.positional:
            return self.func(x, *(params[n] for n in self.param_names))
        return self.func(x, **{n: params[n] for n in self.param_names})

    def forward(self, inputs: Mapping, params: Mapping):
        if self.backend in _VALUE_BACKENDS:
            import torch

            if any(getattr(v, "requires_grad", False) for v in params.values()):
                raise ModelError(self._no_autograd_message())
            ref = next(iter(inputs.values()))
            out = self.forward_numpy({k: _as_numpy(v) for k, v in inputs.items()},
                                     {n: float(params[n]) for n in self.param_names})
            out = np.asarray(out)
            if not out.flags.writeable:  # e.g. np.broadcast_to: torch warns on read-only arrays
                out = out.copy()
            return torch.as_tensor(out, dtype=getattr(ref, "dtype", torch.float64), device=getattr(ref, "device", None))
        x = next(iter(inputs.values())) if len(inputs) == 1 else inputs
        try:
            return self._call(x, params)
        except (RuntimeError, TypeError) as err:
            if self.backend == "torch":  # verified on torch tensors: f's own error
                raise
            raise ModelError(f"{self._no_autograd_message()} (evaluating it on torch tensors failed: {err})") from err

    def forward_numpy(self, inputs: Mapping, params: Mapping) -> np.ndarray:
        """The (n,) prediction as a numpy array (float64, or complex for complex steps).
        The last evaluation is remembered: asking again at the same point (a solver's start,
        the statistics at its end point) does not call f again."""
        key = tuple(params[n] for n in self.param_names)
        x = next(iter(inputs.values())) if len(inputs) == 1 else inputs
        memo = self._memo.get("value")
        if memo is not None and memo[0] is x and memo[1] == key:
            return memo[2]
        values = dict(zip(self.param_names, key))
        if self.backend == "torch-values":
            out = _call_on_tensors(self, x, values)
        else:
            out = self._call(_numpy_input(inputs), values)
        out = _as_float_output(out)
        out.flags.writeable = False
        self._memo["value"] = (x, key, out)
        return out

    def _user_jacobian(self, inputs: Mapping, params: Mapping) -> np.ndarray:
        key = tuple(float(params[n]) for n in self.param_names)
        x = next(iter(inputs.values())) if len(inputs) == 1 else inputs
        memo = self._memo.get("jac")
        if memo is not None and memo[0] is x and memo[1] == key:
            return memo[2]
        values = dict(zip(self.param_names, key))
        xin = _numpy_input(inputs)
        raw = self.jac(xin, *key) if self.positional else self.jac(xin, **values)
        jac = np.asarray(raw, dtype=np.float64)
        if jac.ndim == 1 and len(key) == 1:
            jac = jac[:, None]
        if jac.ndim != 2 or jac.shape[1] != len(key):
            raise ModelError(f"jac returned shape {jac.shape}; it must return (n, {len(key)}): one row per data "
                             "point, one column per parameter")
        jac = np.asfortranarray(jac)
        jac.flags.writeable = False
        self._memo["jac"] = (x, key, jac)
        return jac

    def _no_autograd_message(self) -> str:
        return (f"the model function {self.describe()!r} is not written with torch operations, so autograd cannot "
                "differentiate it: fit it by least squares (gf.fit with optimizer='lm', the default for functions, "
                "or gf.curve_fit), or write it with torch functions (torch.exp, ...) for gradient-based optimizers "
                "and fit_many")

    def guess(self, inputs, y) -> dict[str, float]:
        return {name: self._defaults.get(name, 1.0) for name in self.param_names}

    def spec(self) -> dict:
        return {"kind": "function", "name": getattr(self.func, "__qualname__", "function"),
                "params": list(self.param_names)}

    def describe(self) -> str:
        return getattr(self.func, "__name__", "function")


def _as_numpy(v):
    if hasattr(v, "detach"):
        return v.detach().cpu().numpy()
    return v


def _numpy_input(inputs: Mapping):
    return next(iter(inputs.values())) if len(inputs) == 1 else dict(inputs)


def _as_float_output(out) -> np.ndarray:
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    out = np.asarray(out)
    if not np.iscomplexobj(out):
        out = out.astype(np.float64, copy=False)
    return np.atleast_1d(out).ravel()


def _call_on_tensors(model: FunctionModel, x, values: Mapping):
    import torch

    def t(v):
        return torch.as_tensor(v, dtype=torch.complex128 if np.iscomplexobj(v) else torch.float64)

    xt = {k: t(v) for k, v in x.items()} if isinstance(x, Mapping) else t(x)
    with torch.no_grad():
        return model._call(xt, {n: t(v) for n, v in values.items()})


def _autograd_problem(model: FunctionModel, inputs: Mapping, values: Mapping) -> str:
    """Why torch.func.jacfwd cannot be trusted to differentiate the model at ``values``
    (an empty string when it can): f fails on tensors, returns something else, or its
    derivatives disagree with central differences."""
    import torch
    from torch.func import jacfwd

    from .jacobian import finite_differences

    names = model.param_names
    x = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in inputs.items()}
    xin = next(iter(x.values())) if len(x) == 1 else x
    z = torch.tensor([values[n] for n in names], dtype=torch.float64)

    def on_tensors(v):
        out = model._call(xin, dict(zip(names, v.unbind())))
        if not isinstance(out, torch.Tensor):
            raise TypeError("f returned a non-tensor")
        return out

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            jac = jacfwd(on_tensors)(z).detach().reshape(-1, len(names)).numpy()
            with torch.no_grad():
                fd = finite_differences(lambda v: on_tensors(torch.as_tensor(v)).reshape(-1).numpy(),
                                        z.numpy(), "auto")
                level = float(np.nanmax(np.abs(on_tensors(z).numpy()), initial=0.0))
    except Exception:  # noqa: BLE001 - any failure means: not differentiable by torch
        return "f is not written with torch operations"
    if not (np.isfinite(jac).all() and np.isfinite(fd).all()):
        return ""  # not finite at the start: the solver reports it; nothing to compare
    steps = np.maximum(1.0, np.abs(z.numpy()))
    for j in range(len(names)):
        scale = max(float(np.abs(jac[:, j]).max(initial=0.0)), float(np.abs(fd[:, j]).max(initial=0.0)))
        noise = 1e3 * np.finfo(np.float64).eps * (level + 1.0) / (np.finfo(np.float64).eps ** 0.5 * steps[j])
        if float(np.abs(jac[:, j] - fd[:, j]).max(initial=0.0)) > 1e-4 * scale + noise:
            return (f"autograd's derivative with respect to {names[j]!r} disagrees with finite differences (f may "
                    "turn parameters into Python numbers, e.g. with math.exp or float(), or not be differentiable "
                    "at the start)")
    return ""
