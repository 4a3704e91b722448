"""``curve_fit``: scipy.optimize.curve_fit's interface on gradfit's least squares.

Same call, same returns, same errors: ``popt, pcov = curve_fit(f, xdata, ydata, p0, sigma,
absolute_sigma, check_finite, bounds, method, jac, full_output=..., nan_policy=...)``.
Arguments are checked by scipy's rules in :mod:`.curve_fit_args`; the fit itself is
:func:`gradfit.fit` with Levenberg-Marquardt (bounds by smooth transforms) on the whitened
problem ``T (f(xdata, *p) - ydata)``, ``T = 1/sigma`` or ``L^-1`` for a covariance
``sigma = L L^T``. ``f`` may be written with torch (exact Jacobian by autograd) or numpy
(finite differences, as scipy; see :mod:`gradfit.models.function`).

Differences from scipy (documented, deliberate): every ``method`` runs gradfit's
Levenberg-Marquardt; a rank-deficient problem gets an all-inf ``pcov`` for every method (scipy's
'trf' returns a pseudo-inverse that gives undetermined parameters finite variances);
``maxfev`` is checked after each iteration; a fit that does not converge (stalled, iteration
budget used) raises RuntimeError as scipy does for its failures.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..callbacks import Callback
from ..errors import DataError, FitError, GradfitWarning, warn_user
from ..models.function import FunctionModel
from ..models.jacobian import jacobian as model_jacobian
from .curve_fit_args import (CurveFitTypeError, choose_method, optimize_warning, parameter_names, parse_bounds,
                             prepare_data, solver_keywords, start_values)

__all__ = ["curve_fit"]

_COVARIANCE_WARNING = "Covariance of the parameters could not be estimated"


def curve_fit(f, xdata, ydata, p0=None, sigma=None, absolute_sigma=False, check_finite=None,
              bounds=(-np.inf, np.inf), method=None, jac=None, *, full_output=False, nan_policy=None, **kwargs):
    """Fit ``f(xdata, *params)`` to ``ydata`` by least squares, as scipy.optimize.curve_fit.

    Parameters
    ----------
    f : callable ``f(x, p1, p2, ...)`` returning (M,) values, written with torch (exact
        Jacobian) or numpy (finite differences; the notes in ``infodict`` say so).
    xdata : passed to f unchanged apart from conversion of arrays, lists and tuples to float64
        (any shape: (M,), (k, M), ..., or None).
    ydata : (M,) data (or a scalar that f's output broadcasts against).
    p0 : starting values; default ones (inside the bounds: midpoint, or one unit inside a
        one-sided bound), or the defaults in f's signature.
    sigma : None, a scalar or (M,) standard deviations, or an (M, M) covariance matrix
        (residuals ``L^-1 (f - y)`` with the Cholesky factor ``sigma = L L^T``).
    absolute_sigma : True: pcov is not rescaled by the reduced chi-square.
    check_finite : refuse NaN/inf in the data (default True unless nan_policy is given).
    bounds : a scipy.optimize.Bounds or a 2-tuple of scalars or arrays.
    method : 'lm' (no bounds), 'trf', 'dogbox' or None; all run gradfit's Levenberg-Marquardt.
    jac : None (exact for torch-written f, else "3-point"), '2-point', '3-point', 'cs', or a
        callable ``jac(x, *params)`` returning the (M, P) Jacobian.
    full_output : also return ``infodict`` (nfev: every call to f; fvec: weighted residuals at popt;
        status and notes; fjac, ipvt, qtf for 'lm'), ``mesg`` and ``ier`` (1-4).
    nan_policy : None, 'raise' or 'omit'.
    **kwargs : maxfev / max_nfev (budget of calls to f), ftol / xtol / gtol, and gradfit's
        max_iter and tol.

    Returns
    -------
    popt : (P,) array
    pcov : (P, P) array; all inf (with an OptimizeWarning) when it cannot be estimated.

    Raises
    ------
    ValueError
        (gradfit ConfigError/DataError) for bad arguments or data, as scipy.
    TypeError
        for more parameters than data points, or an unknown keyword.
    RuntimeError
        (gradfit FitError) when the fit does not converge.

    Examples
    --------
    >>> x = np.linspace(0, 4, 20)
    >>> popt, pcov = curve_fit(lambda x, a, k: a * np.exp(-k * x), x, 2.5 * np.exp(-1.3 * x))
    >>> np.round(popt, 6)
    array([2.5, 1.3])
    """
    from .fit import fit

    maxfev, keywords = solver_keywords(kwargs)
    names, p0 = parameter_names(f, p0)
    lo, hi = parse_bounds(bounds, len(names))
    bounded = bool(np.isfinite(lo).any() or np.isfinite(hi).any())
    method = choose_method(method, bounded)
    start = start_values(f, names, p0, lo, hi)
    data = prepare_data(xdata, ydata, sigma, check_finite, nan_policy)
    problem = _Whitened(f, data, start, jac)
    if len(names) > problem.m and data.ydata.size != 1:
        raise CurveFitTypeError(f"The number of func parameters={len(names)} must not exceed the number of data "
                                f"points={problem.m}")
    model = FunctionModel(problem.value, names, positional=True, jac=problem.jacobian)
    init = dict(zip(names, start.tolist()))
    limits = {n: (a if np.isfinite(a) else None, b if np.isfinite(b) else None)
              for n, a, b in zip(names, lo, hi) if np.isfinite(a) or np.isfinite(b)}
    budget = _CallBudget(problem, maxfev)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = fit(model, x=problem.index, y=problem.y, init=init, bounds=limits or None, optimizer="lm",
                progress=False, absolute_sigma=absolute_sigma, callbacks=[budget], **keywords)
    degenerate = _replay(caught)
    if budget.exhausted and r.status == "stopped":
        raise FitError(f"Optimal parameters not found: Number of calls to function has reached maxfev = {maxfev}.")
    if r.status not in ("converged", "singular"):
        raise FitError(f"Optimal parameters not found: {r.status}: {r.message}")
    popt = np.array([r.params[n] for n in names])
    pcov = np.array(r.covariance, dtype=float)
    if degenerate or r.status == "singular" or not np.isfinite(pcov).all():
        pcov = np.full((len(names), len(names)), np.inf)
        warn_user(_COVARIANCE_WARNING, optimize_warning())
    if not full_output:
        return popt, pcov
    fvec = problem.residual(model, r.params)
    infodict = {"fvec": fvec, "status": str(r.status), "notes": tuple(dict.fromkeys((*r.notes, *model.notes)))}
    if method == "lm":
        infodict.update(_qr_info(model_jacobian(model, {"x": problem.index}, r.params, names), fvec))
    infodict["nfev"] = problem.calls  # every call curve_fit made, these last ones included
    return popt, pcov, infodict, str(r.message), _ier(str(r.message))


class _Whitened:
    """The weighted problem ``T (f(xdata, *p) - y)`` as a model of a row index, so that
    gradfit's fit sees plain (M,) data whatever shape xdata has. ``value(index, *p)`` runs in
    torch (tensors in, tensor out) or numpy, by the type of the parameters; ``calls`` counts
    calls to f."""

    def __init__(self, f, data, start: np.ndarray, jac):
        self.f, self.x, self.calls = f, data.xdata, 0
        self._x_torch = None
        y = data.ydata
        first = None
        if y.size == 1:  # a scalar ydata broadcasts against f's output: its size sets M
            first = _as_vector(self._call_numpy(start))
            y = np.broadcast_to(y.ravel(), first.shape).copy()
        self.m = y.size
        self.index = np.arange(self.m, dtype=np.float64)
        self.scale, self.factor = _transform(data.sigma, self.m)
        self.y = self._whiten(y)
        self.jacobian = jac
        if callable(jac):
            user_jac = jac

            def jacobian(_index, *p):
                out = np.asarray(user_jac(self.x, *p), dtype=np.float64)
                return self._whiten(out.reshape(self.m, -1))

            self.jacobian = jacobian

    def _call_numpy(self, p):
        self.calls += 1
        return self.f(self.x, *p)

    def value(self, index, *p):
        if hasattr(index, "detach"):  # torch
            import torch

            if self._x_torch is None:
                x = self.x
                self._x_torch = torch.as_tensor(x, dtype=torch.float64) if isinstance(x, np.ndarray) else x
            self.calls += 1
            out = self.f(self._x_torch, *p)
            out = torch.as_tensor(out, dtype=p[0].dtype if hasattr(p[0], "dtype") else torch.float64)
            return self._whiten_torch(_fit_size(out.reshape(-1), self.m, torch))
        return self._whiten(_fit_size(_as_vector(self._call_numpy(p)), self.m, np))

    def _whiten(self, v):
        if self.factor is not None:
            return _solve_lower(self.factor, v)
        if self.scale is not None:
            return v * (self.scale if v.ndim == 1 else self.scale[:, None])
        return v

    def _whiten_torch(self, v):
        import torch

        if self.factor is not None:
            lower = torch.as_tensor(self.factor, dtype=v.dtype)
            return torch.linalg.solve_triangular(lower, v.reshape(-1, 1), upper=False).reshape(-1)
        if self.scale is not None:
            return v * torch.as_tensor(self.scale, dtype=v.dtype)
        return v

    def residual(self, model, params) -> np.ndarray:
        """The weighted residuals at ``params`` (scipy's infodict['fvec'])."""
        with np.errstate(all="ignore"):
            if model.backend == "torch":
                import torch

                with torch.no_grad():
                    pred = model.forward({"x": torch.as_tensor(self.index)},
                                         {n: torch.tensor(v, dtype=torch.float64) for n, v in params.items()}).numpy()
            else:
                pred = model.forward_numpy({"x": self.index}, params)
        return np.asarray(pred, dtype=np.float64) - self.y


def _as_vector(out) -> np.ndarray:
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    out = np.asarray(out)
    return (out if np.iscomplexobj(out) else out.astype(np.float64, copy=False)).ravel()


def _fit_size(v, m: int, lib):
    if v.shape[0] == m:
        return v
    if v.shape[0] == 1:
        return lib.broadcast_to(v, (m,))
    raise DataError(f"f returned {v.shape[0]} values but ydata has {m}: f must return one value per data point")


def _transform(sigma, m: int):
    """(1/sigma as an (m,) array, None) for scalar or 1-D sigma, (None, L) for an (m, m)
    covariance sigma = L L^T, (None, None) without sigma."""
    if sigma is None:
        return None, None
    sigma = np.asarray(sigma, dtype=float)
    if sigma.size == 1 or sigma.shape == (m,):
        sigma = np.broadcast_to(sigma.ravel(), (m,))
        if not (np.isfinite(sigma).all() and (sigma != 0).all()):
            raise DataError("sigma must be finite and nonzero (standard deviations of ydata)")
        return 1.0 / sigma, None
    if sigma.shape == (m, m):
        try:
            return None, np.linalg.cholesky(sigma)
        except np.linalg.LinAlgError:
            raise DataError("`sigma` must be positive definite. A 2-D sigma is the covariance matrix of ydata") \
                from None
    raise DataError(f"`sigma` has incorrect shape {sigma.shape}: give a scalar, ({m},) standard deviations or an "
                    f"({m}, {m}) covariance matrix")


def _solve_lower(lower: np.ndarray, v: np.ndarray) -> np.ndarray:
    try:
        from scipy.linalg import solve_triangular
    except ImportError:  # scipy is optional: a general solve gives the same answer
        return np.linalg.solve(lower, v)
    return solve_triangular(lower, v, lower=True)


class _CallBudget(Callback):
    """Stops the fit once f has been called ``maxfev`` times (checked after each iteration)."""

    def __init__(self, problem: _Whitened, maxfev: int | None):
        self.problem, self.maxfev, self.exhausted = problem, maxfev, False

    def on_epoch_end(self, epoch: int, logs: dict) -> bool:
        self.exhausted = self.maxfev is not None and self.problem.calls >= self.maxfev
        return self.exhausted


def _replay(caught) -> bool:
    """Re-issue the warnings gradfit's fit raised (at the user's line); returns True when one
    said the Jacobian is rank-deficient (curve_fit reports that as an all-inf pcov with
    scipy's OptimizeWarning instead)."""
    degenerate = False
    for w in caught:
        if issubclass(w.category, GradfitWarning) and "rank-deficient" in str(w.message):
            degenerate = True
            continue
        warn_user(str(w.message), w.category)
    return degenerate


def _qr_info(jac: np.ndarray, fvec: np.ndarray) -> dict:
    """MINPACK's fjac, ipvt and qtf for the final Jacobian: J P = Q R (column pivoting);
    fjac.T[:P] holds R (as scipy's leastsq returns it), ipvt the 1-based permutation,
    qtf = (Q^T fvec)[:P]."""
    n = jac.shape[1]
    try:
        from scipy.linalg import qr

        q, r, perm = qr(jac, mode="economic", pivoting=True)
    except ImportError:  # without scipy: no pivoting
        q, r = np.linalg.qr(jac)
        perm = np.arange(n)
    fjac = np.zeros((n, jac.shape[0]))
    fjac[:, :n] = r.T
    return {"fjac": fjac, "ipvt": perm.astype(np.int32) + 1, "qtf": q.T @ fvec}


def _ier(message: str) -> int:
    """scipy's integer flag for a successful fit: 1 (cost), 2 (step), 4 (gradient)."""
    if "xtol" in message or "step" in message:
        return 2
    if "gtol" in message or "gradient" in message:
        return 4
    return 1
