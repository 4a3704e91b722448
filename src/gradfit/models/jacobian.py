"""The one place a model becomes a Jacobian: d prediction / d parameter.

Three strategies, chosen by what the model offers (:func:`strategy`):

* ``"symbolic"`` for formula models (``model.expression`` is a tree): sympy differentiates
  the formula and :func:`sympy.cse` turns the value and the partial derivatives into one
  straight-line program in which common subexpressions are computed once
  (:func:`formula_program`). It is evaluated with numpy (float64 least squares) or torch
  (training, preconditioning, and whole batches of fits by broadcasting). Functions numpy
  lacks (erf) are evaluated with torch.
* ``"jacfwd"`` for models written with torch operations (Python functions, modules):
  :func:`torch.func.jacfwd`, and ``vmap`` over it for batches.
* ``"finite"`` for models that only evaluate in numpy (``model.numpy_only`` is True and
  ``model.forward_numpy(inputs, params)`` returns the (n,) prediction): the model's own
  Jacobian when it supplies one (``model.jacobian_numpy(inputs, params)``, (n, P) over
  ``model.param_names``: a user's ``jac`` callable), else finite differences of the scheme
  ``model.finite_scheme`` (:func:`finite_differences`: "3-point" central differences by
  default, "2-point" forward, "cs" complex step).

A model whose backend is only known once it has seen data (a Python function may be written
with numpy or with torch) offers ``resolve_backend(inputs, params)``; the builders call it
with the fit's inputs and starting values before choosing (:func:`strategy`).

Every builder returns a function, so that the work of choosing a strategy and compiling a
program happens once per fit and not once per iteration.

>>> import numpy as np
>>> from gradfit.models import resolve_model
>>> m = resolve_model("a*exp(-k*x)").bind(["x"])
>>> jacobian(m, {"x": np.array([0.0, 1.0])}, {"a": 2.0, "k": 0.0}, ("a", "k")).tolist()
[[1.0, -0.0], [1.0, -2.0]]
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Mapping

import numpy as np

from ..formula.compile import compile_tree, numpy_supported
from ..formula.tree import Node

__all__ = ["strategy", "finite_differences", "FINITE_SCHEMES",
           "formula_program", "partials_are_constant", "partials", "jacobian", "free_jacobian",
           "batch_residual_and_jacobian", "free_values", "torch_to_numpy", "symbolic_value_and_jacobian"]

_EPS = float(np.finfo(np.float64).eps)
#: relative step of central differences: eps**(1/3) balances truncation (h^2) and rounding (eps/h)
FINITE_STEP = _EPS ** (1.0 / 3.0)
#: relative step of each finite-difference scheme (scipy's names; the steps of
#: scipy.optimize.least_squares, except complex steps, which have no rounding error to balance)
FINITE_SCHEMES = {"2-point": _EPS ** 0.5, "3-point": FINITE_STEP, "cs": 1e-20, "auto": FINITE_STEP}


def strategy(model, inputs: Mapping | None = None, params: Mapping | None = None) -> str:
    """How ``model`` is differentiated: "symbolic", "jacfwd" or "finite" (module docstring).

    With ``inputs`` and ``params`` (every parameter's start value), a model that decides its
    backend from data (``resolve_backend``) decides it first."""
    if getattr(model, "expression", None) is not None:
        return "symbolic"
    if inputs is not None and params is not None and hasattr(model, "resolve_backend"):
        model.resolve_backend(inputs, params)
    if getattr(model, "numpy_only", False):
        return "finite"
    return "jacfwd"


@lru_cache(maxsize=512)
def formula_program(node: Node, wrt: tuple[str, ...], backend: str = "numpy", with_value: bool = False):
    """The partial derivatives of ``node`` with respect to ``wrt`` (preceded by the value
    itself when ``with_value``) as a function ``env -> [outputs]`` in ``backend`` ("numpy" or
    "torch"); ``env`` maps every input and parameter name to a value. Outputs may be Python
    floats where a derivative is constant. Returns None for the numpy backend when the
    formula uses a function numpy lacks.

    Common subexpressions are computed once (the program comes from
    :func:`gradfit.formula.symbolic.partials_program`), which matters for fit_many, where
    every operation runs over millions of points.
    """
    from ..formula.symbolic import partials_program, value_and_partials_program

    program = value_and_partials_program if with_value else partials_program
    assignments, outputs = program(node, wrt)
    if backend == "numpy" and not all(numpy_supported(t) for t in (*(t for _, t in assignments), *outputs)):
        return None
    steps = tuple((name, compile_tree(tree, backend)) for name, tree in assignments)
    outs = tuple(compile_tree(tree, backend) for tree in outputs)

    def run(env):
        env = dict(env)
        for name, fn in steps:
            env[name] = fn(env)
        return [fn(env) for fn in outs]

    return run


@lru_cache(maxsize=512)
def partials_are_constant(node: Node, wrt: tuple[str, ...]) -> bool:
    """True when no partial derivative of ``node`` depends on a name in ``wrt`` (the model
    is linear in those parameters and its Jacobian is constant)."""
    from ..formula.symbolic import partials_program

    assignments, outputs = partials_program(node, wrt)
    varying = set(wrt)
    for name, tree in assignments:  # temporaries in order: each sees the ones before it
        if tree.names() & varying:
            varying.add(name)
    return not any(tree.names() & varying for tree in outputs)


def partials(model, inputs: Mapping, params: Mapping, wrt: tuple[str, ...] | None = None) -> list:
    """Torch partial derivatives d prediction / d p of a formula model, for each name in
    ``wrt`` (default: every parameter), each broadcast to the shape of the inputs.

    ``inputs`` and ``params`` map names to tensors (parameters 0-d).
    """
    import torch

    names = tuple(model.param_names)
    values = formula_program(model.expression, names, "torch")(_env(inputs, params))
    if wrt is not None and tuple(wrt) != names:
        values = [values[names.index(n)] for n in wrt]
    ref = next(iter(inputs.values()))
    out = []
    for v in values:
        if not isinstance(v, torch.Tensor) or v.shape != ref.shape:
            v = torch.as_tensor(v, dtype=ref.dtype, device=ref.device).expand(ref.shape)
        out.append(v)
    return out


def jacobian(model, inputs: Mapping, params: Mapping, wrt: tuple[str, ...]) -> np.ndarray:
    """(n, len(wrt)) float64 matrix of d prediction / d parameter at ``params`` (every
    parameter's value, floats), for the parameters ``wrt`` in that order; ``inputs`` are
    float64 numpy arrays of length n.

    The matrix is Fortran-ordered (each column contiguous): LAPACK factors it without a
    copy, and column norms, scaling and products with it run at full memory speed.
    """
    kind = strategy(model, inputs, params)
    wrt = tuple(wrt)
    if kind == "symbolic":
        return _symbolic_numpy(model, wrt)(inputs, params)
    z = np.array([params[n] for n in wrt], dtype=np.float64)
    if kind == "finite":
        if getattr(model, "jacobian_numpy", None) is not None:
            full = model.jacobian_numpy(inputs, params)
            return np.asfortranarray(full[:, [list(model.param_names).index(n) for n in wrt]])

        def predict(v):
            return model.forward_numpy(inputs, {**params, **dict(zip(wrt, v.tolist()))})

        return finite_differences(predict, z, getattr(model, "finite_scheme", "auto"))
    import torch
    from torch.func import jacfwd

    t_in = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in inputs.items()}
    t_par = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in params.items()}
    jac = jacfwd(lambda v: model.forward(t_in, {**t_par, **dict(zip(wrt, v.unbind()))}))(torch.as_tensor(z))
    return np.asfortranarray(jac.detach().cpu().numpy())


def free_jacobian(model, space, inputs: Mapping, *, internal: bool = True, backend: str = "numpy") -> Callable:
    """A function ``z -> d prediction / d z``, (n, F), over the free parameters of a
    :class:`~gradfit.models.parameters.ParameterSpace`, in its internal (unbounded)
    coordinates or, with ``internal=False``, their values.

    With ``backend="numpy"`` inputs are float64 arrays and ``z`` and the result numpy (the
    least-squares kernels); with ``backend="torch"`` inputs are tensors and so are ``z`` and
    the result (the optimizer's preconditioner). Fixed parameters keep their values; bounds
    enter by the chain rule; tied parameters are followed through
    :meth:`~gradfit.models.parameters.ParameterSpace.full` with torch.func.
    """
    kind = strategy(model, inputs, space.values)
    if kind == "symbolic" and not space.ties:
        return _symbolic_free(model, space, inputs, internal, backend)
    if kind == "finite":
        return _finite_free(model, space, inputs, internal, backend)
    import torch
    from torch.func import jacfwd

    if backend == "numpy":
        t_in = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in inputs.items()}
        jac_fn = jacfwd(lambda z: model.forward(t_in, space.as_dict(z, internal=internal)))
        return lambda z: jac_fn(torch.as_tensor(z, dtype=torch.float64)).detach().cpu().numpy()
    return jacfwd(lambda z: model.forward(inputs, space.as_dict(z, internal=internal)))


def batch_residual_and_jacobian(model, names: tuple[str, ...], inputs: Mapping, y, *, fused: bool) -> Callable:
    """For a batch of B fits of one model: a function ``theta (B, P) -> (f - y (B, M), [J_j
    (B, M) for each parameter])``. ``inputs`` map names to (M,) or (B, M) tensors.

    ``fused`` (formula models): the value and partials program of
    ``model.value_and_partials()``, evaluated with broadcasting over (B, 1) parameters.
    Otherwise ``vmap`` over ``jacfwd`` of ``model.forward`` for one fit.
    """
    if fused:
        program = model.value_and_partials()  # built here, outside any torch.compile trace

        def fn(theta):
            params = {n: theta[:, j:j + 1] for j, n in enumerate(names)}
            f, derivs = program({**params, **inputs})
            return _full(f, y) - y, [_full(p, y) for p in derivs]

        return fn
    from torch.func import jacfwd, vmap

    keys = list(inputs)

    def single(theta, *xs):
        return model.forward(dict(zip(keys, xs)), dict(zip(names, theta.unbind())))

    in_dims = (0, *[(0 if inputs[k].dim() == 2 else None) for k in keys])
    value = vmap(single, in_dims=in_dims)
    jac = vmap(jacfwd(single), in_dims=in_dims)

    def fn(theta):
        xs = [inputs[k] for k in keys]
        return value(theta, *xs) - y, list(jac(theta, *xs).unbind(-1))

    return fn


def torch_to_numpy(fn: Callable, inputs: Mapping, params: Mapping):
    """Evaluate the torch function ``fn(inputs, params)`` on float64 numpy data; returns a
    numpy array (or a list of them when ``fn`` returns a list)."""
    import torch

    t_in = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in inputs.items()}
    t_par = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in params.items()}
    with torch.no_grad():
        out = fn(t_in, t_par)
    if isinstance(out, list):
        return [o.numpy() for o in out]
    return out.numpy()


def free_values(space, z: np.ndarray, internal: bool = True) -> dict:
    """Every parameter's value (floats) from the free vector ``z`` (numpy) of a
    ParameterSpace: internal coordinates, or with ``internal=False`` the values themselves."""
    if space.ties:
        import torch

        full = space.full(torch.as_tensor(z, dtype=torch.float64), internal=internal)
        return dict(zip(space.names, full.tolist()))
    if internal:
        return space.values_from_internal(z)
    out = dict(space.values)
    out.update(zip(space.free, z.tolist()))
    return out


# -- the strategies -----------------------------------------------------------------------

def _env(inputs: Mapping, params: Mapping) -> dict:
    env = dict(params)
    env.update(inputs)
    return env


@lru_cache(maxsize=512)
def _symbolic_numpy(model, wrt: tuple[str, ...]) -> Callable:
    """A function (inputs, params) -> (n, len(wrt)) Fortran-ordered float64 partials (one
    per bound formula model and ``wrt``: models are immutable once bound)."""
    names = tuple(model.param_names)
    rows = [names.index(n) for n in wrt]
    run = formula_program(model.expression, names, "numpy")

    def jac(inputs: Mapping, params: Mapping) -> np.ndarray:
        if run is None:  # numpy lacks a function: torch evaluates the same program
            derivs = torch_to_numpy(lambda i, p: partials(model, i, p), inputs, params)
        else:
            derivs = run(_env(inputs, params))
        out = np.empty((len(rows), len(next(iter(inputs.values())))))
        for j, row in enumerate(rows):
            out[j] = derivs[row]  # constants broadcast along the row
        return out.T

    return jac


@lru_cache(maxsize=512)
def symbolic_value_and_jacobian(model, wrt: tuple[str, ...]) -> Callable | None:
    """For a bound formula model: a function (inputs, params) -> (prediction, (n, len(wrt))
    Fortran-ordered partials) from one program, so the subexpressions the value and its
    partials share (``exp(-k*x)`` in ``a*exp(-k*x) + c``) are computed once; None when numpy
    lacks one of the formula's functions. The prediction may be a number where the formula
    does not depend on its inputs."""
    names = tuple(model.param_names)
    rows = [names.index(n) + 1 for n in wrt]
    run = formula_program(model.expression, names, "numpy", with_value=True)
    if run is None:
        return None

    def value_and_jacobian(inputs: Mapping, params: Mapping):
        outs = run(_env(inputs, params))
        out = np.empty((len(rows), len(next(iter(inputs.values())))))
        for j, row in enumerate(rows):
            v = outs[row]
            if type(v) is not float and (type(v) is not np.ndarray or v.dtype != np.float64) and np.iscomplexobj(v):
                # a negative base to a fractional power in parameter terms
                v = np.where(np.imag(v) == 0, np.real(v), np.nan)
            out[j] = v  # constants broadcast along the row
        return outs[0], out.T

    return value_and_jacobian


def _symbolic_free(model, space, inputs: Mapping, internal: bool, backend: str) -> Callable:
    free = space.free
    chain = internal and space.has_bounds
    if backend == "numpy":
        jac_of = _symbolic_numpy(model, free)

        def jac_numpy(z):
            jac = jac_of(inputs, free_values(space, z, internal))
            return jac * np.asarray(space.internal_derivative_values(z)) if chain else jac

        return jac_numpy
    import torch

    def jac_torch(z):
        with torch.no_grad():
            params = dict(zip(space.names, z.unbind())) if space.is_plain else space.as_dict(z, internal=internal)
            jac = torch.stack(partials(model, inputs, params, free), dim=1)
            if chain:
                jac = jac * torch.tensor(space.internal_derivative_values(z), dtype=jac.dtype, device=jac.device)
            return jac

    return jac_torch


def _finite_free(model, space, inputs: Mapping, internal: bool, backend: str) -> Callable:
    """Finite differences over the free coordinates (bounds and ties included), or the
    model's own Jacobian with the chain rule through the bounds' transforms."""
    np_inputs = inputs
    if backend != "numpy":
        np_inputs = {k: v.detach().cpu().double().numpy() for k, v in inputs.items()}
    scheme = getattr(model, "finite_scheme", "auto")
    if getattr(model, "jacobian_numpy", None) is not None and not space.ties:
        columns = [list(model.param_names).index(n) for n in space.free]
        chain = internal and space.has_bounds

        def jac_numpy(z):
            jac = model.jacobian_numpy(np_inputs, free_values(space, z, internal))[:, columns]
            return jac * np.asarray(space.internal_derivative_values(z)) if chain else jac
    else:
        def jac_numpy(z):
            return finite_differences(lambda v: model.forward_numpy(np_inputs, free_values(space, v, internal)), z,
                                      scheme)

    if backend == "numpy":
        return jac_numpy
    import torch

    def jac_torch(z):
        jac = jac_numpy(z.detach().cpu().double().numpy())
        return torch.as_tensor(jac, dtype=z.dtype, device=z.device)

    return jac_torch


def finite_differences(predict: Callable, z, scheme: str = "auto") -> np.ndarray:
    """(n, len(z)) Fortran-ordered finite-difference Jacobian of ``predict`` (float64 (n,)
    arrays) at ``z``, by ``scheme``:

    * "2-point": forward differences, step ``sqrt(eps) * max(1, |z_j|)`` (n*P extra calls);
    * "3-point": central differences, step ``eps**(1/3) * max(1, |z_j|)`` (2nP), about 1e-10
      relative for parameters whose effect varies on the scale of their own size;
    * "auto" (the default): central differences at both steps, ``eps**(1/3)`` and
      ``sqrt(eps)`` (4nP); a column keeps the larger step where the two agree to within the
      smaller step's rounding error, else the smaller step. A parameter that acts on a scale
      far below its size (a peak at x=574 with width 0.004) needs the small step; every other
      keeps 1e-10 accuracy. The worst case is ``sqrt(eps)`` level, as forward differences;
    * "cs": complex step (``predict`` must accept complex parameters and be analytic in them),
      exact to rounding.

    >>> finite_differences(lambda v: np.array([v[0] ** 2, 3 * v[0]]), [2.0], "cs").ravel().tolist()
    [4.0, 3.0]
    """
    if scheme not in FINITE_SCHEMES:
        raise ValueError(f"finite-difference scheme must be one of {sorted(FINITE_SCHEMES)}, got {scheme!r}")
    z = np.array(z, dtype=np.float64)
    base = np.asarray(predict(z), dtype=np.float64) if scheme == "2-point" else None
    cols = []
    for j in range(z.size):
        size = max(1.0, abs(float(z[j])))
        if scheme == "cs":
            h = FINITE_SCHEMES["cs"] * size
            zc = z.astype(np.complex128)
            zc[j] += 1j * h
            cols.append(np.imag(np.asarray(predict(zc))) / h)
        elif scheme == "2-point":
            up = z.copy()
            up[j] += FINITE_SCHEMES["2-point"] * size
            cols.append((np.asarray(predict(up), dtype=np.float64) - base) / (up[j] - z[j]))  # the step taken
        elif scheme == "3-point":
            cols.append(_central(predict, z, j, FINITE_STEP * size)[0])
        else:
            large, _ = _central(predict, z, j, FINITE_STEP * size)
            small, noise = _central(predict, z, j, _EPS ** 0.5 * size)
            cols.append(large if np.all(np.abs(large - small) <= 10.0 * noise) else small)
    return np.asfortranarray(np.array(cols).T)


def _central(predict: Callable, z: np.ndarray, j: int, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Central difference of column j with step h, and a bound on its rounding error."""
    up, down = z.copy(), z.copy()
    up[j] += h
    down[j] -= h
    f_up = np.asarray(predict(up), dtype=np.float64)
    f_down = np.asarray(predict(down), dtype=np.float64)
    step = up[j] - down[j]  # the steps actually taken (z + h is rounded), not 2h
    noise = 2.0 * _EPS * (np.abs(f_up) + np.abs(f_down)) / step + np.finfo(np.float64).tiny
    return (f_up - f_down) / step, noise


def _full(v, like):
    """A value of the formula as a (B, M) tensor (constants and (B, 1) columns broadcast)."""
    import torch

    if not isinstance(v, torch.Tensor):
        return torch.full_like(like, float(v))
    return v if v.shape == like.shape else v.expand_as(like)
