"""The least-squares problem of one fit: a scalar-parameter model, its
:class:`~gradfit.models.parameters.ParameterSpace` and the (training) data.

Residuals are weighted, ``sqrt(w) * (f - y)`` with ``w = 1/sigma^2`` or the user's weights,
so chi-square is ``sum(r^2)``. Least squares always computes in float64 on the CPU.
"""

from __future__ import annotations

import numpy as np

from ..models.jacobian import free_jacobian, free_values, strategy, symbolic_value_and_jacobian

__all__ = ['LeastSquaresProblem', 'linear_reason', 'chi_square', 'mean_squared_error', 'predict_numpy']


class LeastSquaresProblem:
    """A least-squares problem over float64 numpy data. Least squares always computes in
    float64 on the CPU (a single fit's dense algebra is small, and precision is the point);
    float64 CPU tensors, for models evaluated with torch, are made on first use."""

    #: the residuals are sqrt(w) (f - y), as the native kernel computes them
    #: (:mod:`gradfit.optim.native_single`); a subclass with other residuals sets False
    plain_residuals = True

    def __init__(self, model, space, inputs: dict, y: np.ndarray, weights: np.ndarray | None = None):
        self.model, self.space = model, space
        self._numpy = (inputs, y, weights)
        self.n = len(y)
        self._tensors = None
        self._data_squared = None
        self._weight_total = None
        self._well_scaled = None

    @classmethod
    def from_arrays(cls, model, space, arrays) -> "LeastSquaresProblem":
        return cls(model, space, arrays.inputs, arrays.y, arrays.weights)

    def rows(self, start: int, stop: int) -> "LeastSquaresProblem":
        """The same problem on data rows ``start:stop`` (views, no copies): one chunk of a
        fit too long to hold its Jacobian (:mod:`gradfit.lsq.chunked`)."""
        inputs, y, w = self._numpy
        part = {k: (v[start:stop] if np.ndim(v) and len(v) == self.n else v) for k, v in inputs.items()}
        return LeastSquaresProblem(self.model, self.space, part, y[start:stop], None if w is None else w[start:stop])

    def numpy(self) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """(inputs, y, weights) as float64 numpy arrays."""
        return self._numpy

    def data_squared(self) -> float:
        """||sqrt(w) y||^2, the data's weighted sum of squares: the scale of chi-square's
        rounding (asked by the solver, the refinement and the statistics; computed once)."""
        if self._data_squared is None:
            _, y, w = self.numpy()
            self._data_squared = float(np.vdot(y, y) if w is None else np.vdot(w, y * y))
        return self._data_squared

    def well_scaled(self) -> "LeastSquaresProblem":
        """This problem, or, when its largest weight is below 1e-100 or above 1e100, the same
        problem with the weights divided by their largest: the same minimizer, with chi-square
        and its derivatives away from float64's underflow and overflow (the trust region's
        algebra takes their cubes: weights of 1e-200 made a numpy fit divide by zero)."""
        if self._well_scaled is None:  # (asked by the solver and the statistics: made once)
            w = self._numpy[2]
            top = 1.0 if w is None else float(w.max())
            if 1e-100 <= top <= 1e100 or not top > 0:
                self._well_scaled = False  # (not self: a reference to itself would wait for the GC)
            else:
                scaled = w / top
                # a positive weight the division takes to 0 stays a point of the fit (n counts w > 0)
                scaled[(scaled == 0) & (w > 0)] = np.finfo(np.float64).tiny
                self._well_scaled = type(self)(self.model, self.space, self._numpy[0], self._numpy[1], scaled)
        return self._well_scaled or self

    def weight_total(self) -> float:
        """The sum of the weights (the number of points when unweighted): what a mean loss
        divides by (asked for every history entry; computed once)."""
        if self._weight_total is None:
            w = self.numpy()[2]
            self._weight_total = float(w.sum()) if w is not None else float(self.n)
        return self._weight_total

    def _tensor_data(self):
        if self._tensors is None:
            import torch

            inputs, y, w = self._numpy

            def t(a):
                return torch.as_tensor(a, dtype=torch.float64)

            self._tensors = ({k: t(v) for k, v in inputs.items()}, t(y), None if w is None else t(w))
        return self._tensors

    @property
    def inputs(self):
        return self._tensor_data()[0]

    @property
    def y(self):
        return self._tensor_data()[1]

    @property
    def weights(self):
        return self._tensor_data()[2]

    @property
    def numpy_ready(self) -> bool:
        """Residuals are evaluated in numpy: a formula model without ties, or a model that
        only evaluates in numpy."""
        kind = strategy(self.model)
        return kind == "finite" or (kind == "symbolic" and not self.space.ties)

    # -- residuals ------------------------------------------------------------------------
    def predict(self, params: dict):
        return self.model.forward(self.inputs, params)

    def residual(self, u, *, internal: bool = True):
        """Weighted residuals as a function of the free parameters in internal coordinates
        (or, with ``internal=False``, their values)."""
        return self._weighted(self.predict(self.space.as_dict(u, internal=internal)) - self.y)

    def lm_functions(self, *, internal: bool = True):
        """(residual, jacobian) of the weighted residuals as float64 numpy functions of the free
        parameters' internal coordinates (or, with ``internal=False``, their values: the
        bounded Levenberg-Marquardt works on the box itself). Formula models are evaluated in
        numpy; other models (and tied parameters) in torch. The Jacobian comes from
        :func:`gradfit.models.jacobian.free_jacobian` (symbolic partials, torch.func.jacfwd or
        finite differences, by the kind of model). Both always return real float64 arrays: a
        complex model value (a negative base to a fractional power) is NaN there."""
        from ..optim.lm import as_real

        space = self.space
        inputs, y, w = self._numpy
        sw = None if w is None else np.sqrt(w)
        prediction_jacobian = free_jacobian(self.model, space, inputs, internal=internal)
        n, n_free = len(y), len(space.free)

        def raw_jacobian(u):
            try:
                return as_real(prediction_jacobian(u))
            except ArithmeticError:  # Python-scalar parameter terms overflow or divide by 0
                return np.full((n, n_free), np.nan)

        if sw is None:
            jacobian = raw_jacobian
        else:
            def jacobian(u):
                return raw_jacobian(u) * sw[:, None]

        if self.numpy_ready:
            model = self.model
            if space.ties or not internal:  # ties are evaluated in torch
                def values_of(u):
                    return free_values(space, u, internal)
            else:
                values_of = space.values_from_internal

            # No np.errstate here: callers run these under errstate(all="ignore") once (trial
            # steps may overflow; LM rejects them).
            def residual(u):
                try:
                    r = as_real(model.forward_numpy(inputs, values_of(u))) - y
                except ArithmeticError:  # Python-scalar parameter terms overflow or divide by 0:
                    return np.full(n, np.nan)  # not finite there, like any failed trial
                return r if sw is None else r * sw

            fused = None
            if strategy(model) == "symbolic" and not space.ties and not (internal and space.has_bounds):
                fused = symbolic_value_and_jacobian(model, space.free)
            if fused is not None:
                return _fused_functions(fused, residual, jacobian, inputs, y, sw, values_of)
            return residual, jacobian
        import torch

        def residual(u):
            with torch.no_grad():
                out = self.residual(torch.as_tensor(u, dtype=self.y.dtype), internal=internal)
                return as_real(out.detach().cpu().numpy())

        return residual, jacobian

    def _weighted(self, r):
        if self._numpy[2] is None:
            return r
        if getattr(self, "_sqrt_w", None) is None:
            self._sqrt_w = self.weights.sqrt()
        return r * self._sqrt_w

    def mean_loss(self, cost: float) -> float:
        """0.5*||r||^2 -> the weighted mean squared error the rest of gradfit reports."""
        return 2.0 * cost / self.weight_total()

    def is_linear(self) -> bool:
        return linear_reason(self.model, self.space) is None


def _fused_functions(fused, residual, jacobian, inputs: dict, y: np.ndarray, sw, values_of):
    """(residual, jacobian) that evaluate the prediction and its partials in one program
    (``fused``, :func:`~gradfit.models.jacobian.symbolic_value_and_jacobian`) while
    Levenberg-Marquardt's steps are being accepted: the Jacobian it then asks for at the same
    point is already there. After a rejected trial (a residual not followed by a Jacobian
    there) the next residual is evaluated alone, so failing trials cost no partials."""
    from ..optim.lm import as_real

    n = len(y)
    state = {"fuse": True, "at": None, "jac": None, "last": None}

    def fused_residual(u):
        key = u.tolist()
        if not state["fuse"]:  # the last trial failed: the value only
            state["last"], state["at"], state["jac"] = key, None, None
            return residual(u)
        state["fuse"], state["last"] = False, key
        try:
            value, jac = fused(inputs, values_of(u))
            value = as_real(value)
        except ArithmeticError:  # Python-scalar parameter terms overflow or divide by 0
            state["at"], state["jac"] = None, None
            return np.full(n, np.nan)
        if value.shape != (n,):  # a formula that ignores its inputs still predicts n values
            value = np.broadcast_to(value, (n,))
        state["at"], state["jac"] = key, jac
        r = value - y
        return r if sw is None else r * sw

    def fused_jacobian(u):
        key = u.tolist()
        state["fuse"] = key == state["last"]  # a Jacobian where the last trial was: accepted
        if state["at"] == key:
            jac, state["at"], state["jac"] = as_real(state["jac"]), None, None
            return jac if sw is None else jac * sw[:, None]
        return jacobian(u)

    return fused_residual, fused_jacobian


def linear_reason(model, space) -> str | None:
    """None when the model can be solved directly as linear least squares, else why not."""
    if getattr(model, "expression", None) is None:
        return "the model is not a formula"
    if space.ties:
        return "tied parameters"
    if not model.linear_in_params:
        return "the model is nonlinear in its parameters"
    return None


def chi_square(problem: LeastSquaresProblem, values: dict) -> float:
    """sum(w * (prediction - y)^2) at ``values``, in float64 (inf where it overflows, NaN where
    the model is not finite: no warning, the caller rules on the value)."""
    inputs, y, w = problem.numpy()
    with np.errstate(all="ignore"):
        r = predict_numpy(problem.model, inputs, values) - y
        return float(r @ r if w is None else w @ (r * r))


def mean_squared_error(model, inputs: dict, y: np.ndarray, w: np.ndarray | None, values: dict) -> float:
    """Weighted mean squared error in float64 (numpy for formulas, torch otherwise)."""
    pred = predict_numpy(model, inputs, values)
    r = pred - y
    return float(np.sum(r * r) / len(r) if w is None else np.sum(w * r * r) / np.sum(w))


def predict_numpy(model, inputs: dict, values: dict) -> np.ndarray:
    """The (n,) float64 prediction at ``values`` (numpy where the model offers it, else torch)."""
    if strategy(model) != "jacfwd":
        from ..optim.lm import as_real

        try:
            return as_real(model.forward_numpy(inputs, values))
        except ArithmeticError:  # Python-scalar parameter terms overflow or divide by 0
            return np.full(len(next(iter(inputs.values()))) if inputs else 1, np.nan)
    import torch

    t_in = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in inputs.items()}
    with torch.no_grad():
        return model.forward(t_in, {k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}).numpy()
