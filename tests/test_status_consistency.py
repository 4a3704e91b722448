"""One status vocabulary: degenerate inputs end with the same status through gf.fit (Levenberg-
Marquardt, float64) and gf.fit_many (float64 and its default float32), or are refused with the
same error."""

import warnings

import numpy as np
import pytest

import gradfit as gf
from gradfit import ConfigError, DataError
from gradfit.status import Status

X = np.arange(32.0)
GAUSS = "a*exp(-(x-c)**2/(2*w**2)) + o"
PEAK = 500 * np.exp(-(X - 15.5) ** 2 / (2 * 3.0**2)) + 50


def _fit_status(formula, x, y, init):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gf.fit(formula, x, y, init=init, optimizer="lm", dtype="float64").status


def _many_status(formula, x, y, init, dtype, **kwargs):
    r = gf.fit_many(formula, x, y, init=init, dtype=dtype, **kwargs)
    return Status.from_code(r.status[0]), r


CASES = {
    # the start is a flat line: the peak sits between grid points, narrower than their
    # spacing, so a, c and w change nothing
    "flat-line end point": (GAUSS, X, PEAK, {"a": 500.0, "c": 15.5, "w": 0.01, "o": 50.0}, "singular"),
    # only the product a*b is determined
    "duplicate parameters": ("a*b*x + c", X, 2 * X + 1, {"a": 1.0, "b": 1.0, "c": 0.0}, "singular"),
    # a parameter the model does not depend on
    "unused parameter": ("a*x + b + 0*c", X, 2 * X + 1, {"a": 1.0, "b": 0.0, "c": 1.0}, "singular"),
    "well posed": ("a*x + b", X, 2 * X + 1 + 0.01 * np.sin(X), {"a": 1.0, "b": 0.0}, "converged"),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_degenerate_inputs_same_status(case, dtype):
    formula, x, y, init, expected = CASES[case]
    assert _fit_status(formula, x, y, init) == expected
    status, r = _many_status(formula, x, y, init, dtype)
    assert status == expected
    if expected == "singular":
        assert not np.isfinite(r.stderr["a"][0])


def test_too_few_points_nothing_fitted():
    # one fit refuses outright; in a batch that fit alone is marked and left unfitted
    x, y = X[:3], np.array([1.0, 2.0, 1.0])
    init = {"a": 1.0, "c": 1.0, "w": 1.0, "o": 0.0}
    with pytest.raises(DataError, match="cannot determine"):
        gf.fit(GAUSS, x, y, init=init, optimizer="lm", dtype="float64")
    status, r = _many_status(GAUSS, x, y, init, "float64")
    assert status == "too_few_points" and r.params["a"][0] == 1.0


@pytest.mark.parametrize("init", [{"a": float("nan"), "b": 0.0}, {"a": float("inf"), "b": 0.0}])
def test_non_finite_start_value_refused_alike(init):
    with pytest.raises(ConfigError) as one:
        gf.fit("a*x + b", X, 2 * X, init=init, optimizer="lm", dtype="float64")
    with pytest.raises(ConfigError) as many:
        gf.fit_many("a*x + b", X, 2 * X, init=init, dtype="float64")
    assert str(one.value) == str(many.value)


def test_model_not_finite_at_start():
    init = {"a": 1.0, "c": 100.0}
    assert _many_status("a*log(x - c)", X, np.log(X + 1), init, "float64")[0] == "not_finite"
    assert _fit_status("a*log(x - c)", X, np.log(X + 1), init) == "not_finite"


X4 = np.array([-1.0, 1.0, 2.0, 3.0])
X_OVERFLOW = np.linspace(0.0, 3.0, 13)
NOT_FINITE_CASES = {
    # log of a negative x: NaN in row 1 whatever the parameters
    "log of a negative input": ("a*log(x) + b", X4, np.array([0.0, 1.0, 2.0, 3.0]), {"a": 1.0, "b": 1.0}, "1"),
    # finite at x = 0 and 0.25 and 0.5, inf from x = 0.75 (row 4) on
    "overflow": ("exp(exp(exp(exp(a*x))))", X_OVERFLOW, np.ones(13), {"a": 1.0}, "4, 5, 6, 7, 8, 9, 10, 11 ..."),
}


@pytest.mark.parametrize("case", list(NOT_FINITE_CASES))
@pytest.mark.parametrize("optimizer", ["lm", "auto"])
def test_model_not_finite_at_start_names_rows_on_every_path(case, optimizer):
    formula, x, y, init, rows = NOT_FINITE_CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warnings, no tracebacks: a status and a message
        r = gf.fit(formula, x, y, init=init, optimizer=optimizer, dtype="float64")
    assert r.status == Status.NOT_FINITE
    assert f"data row(s): {rows} (1-based)" in r.message and "nothing was fitted" in r.message
    assert r.params == init and all(np.isnan(r.stderr[n]) for n in init)
    assert np.isnan(r.loss) and np.isnan(r.stats["chisqr"]) and np.isnan(r.stats["aic"])
    assert "not_finite" in r.report()
    for dtype in ("float64", "float32"):
        status, many = _many_status(formula, x, y[None, :], init, dtype)
        assert status == r.status
        assert all(many.params[n][0] == init[n] for n in init)


def test_lm_kernel_reports_a_start_that_is_not_finite():
    from gradfit.optim.lm import levenberg_marquardt, robust_levenberg_marquardt

    calls = []

    def residual(p):
        calls.append(1)
        return np.array([1.0, np.nan, np.inf, 2.0]) * p[0]

    out = levenberg_marquardt(residual, np.array([1.0]), jacobian=lambda p: np.ones((4, 1)))
    assert out.status == Status.NOT_FINITE and out.iterations == 0
    assert "2 of 4 data row(s): 2, 3 (1-based)" in out.message
    calls.clear()
    out, _ = robust_levenberg_marquardt(residual, np.array([1.0]), jacobian=lambda p: np.ones((4, 1)))
    assert out.status == Status.NOT_FINITE and len(calls) == 1  # the same start for every strategy


def test_extended_precision_skips_values_that_are_not_finite():
    from gradfit.formula.precise import residuals_mp
    from gradfit.lsq.problem import LeastSquaresProblem
    from gradfit.lsq.uncertainty import _precise_chi2
    from gradfit.models import resolve_model
    from gradfit.models.parameters import ParameterSpace

    model = resolve_model("a*log(x) + b").bind(["x"])
    r = residuals_mp(model.expression, {"x": X4}, np.zeros(4), None, {"a": 1.0, "b": 0.0})
    assert np.isnan(r[0]) and np.allclose(r[1:], np.log(X4[1:]))  # log(-1) is complex in mpmath
    space = ParameterSpace(model.param_names, {"a": 1.0, "b": 0.0})
    problem = LeastSquaresProblem(model, space, {"x": X4}, np.zeros(4))
    assert np.isnan(_precise_chi2(problem, {"a": 1.0, "b": 0.0}, float("nan"), 0.0))


def test_float32_overflow_refused_alike():
    y = PEAK.copy()
    y[3] = 1e39
    init = {"a": 500.0, "c": 15.5, "w": 3.0, "o": 50.0}
    with pytest.raises(DataError, match="beyond float32's range") as one:
        gf.fit(GAUSS, X, y, init=init, optimizer="lm", dtype="float32")
    with pytest.raises(DataError, match="beyond float32's range") as many:
        gf.fit_many(GAUSS, X, y, init=init, dtype="float32")
    assert "dtype='float64'" in str(one.value) and "dtype='float64'" in str(many.value)
    assert len(gf.fit_many(GAUSS, X, y, init=init, dtype="float64")) == 1  # float64 holds it


@pytest.mark.parametrize("dtype,max_iter", [("float32", None), ("float64", None), ("float64", 200)])
def test_runaway_to_a_flat_line_is_not_converged(dtype, max_iter):
    # started far too wide, the batched LM flattens the peak away (w -> huge): the end point
    # cannot determine c and w, so it must not be reported as converged
    init = {"a": 500.0, "c": 15.5, "w": 40.0, "o": 50.0}
    r = gf.fit_many(GAUSS, X, PEAK, init=init, dtype=dtype, max_iter=max_iter)
    ok = r.converged[0]
    assert not ok or all(np.isfinite(r.stderr[n][0]) for n in r.param_names)
    if not ok:
        assert Status.from_code(r.status[0]) in ("singular", "not_finite", "stalled", "max_iterations")


def test_converged_fits_have_finite_errors():
    rng = np.random.default_rng(3)
    truth = np.column_stack([rng.uniform(200, 1000, 300), 15.5 + rng.uniform(-4, 4, 300), rng.uniform(2, 4, 300),
                             rng.uniform(10, 100, 300)])
    y = rng.poisson(truth[:, :1] * np.exp(-(X - truth[:, 1:2]) ** 2 / (2 * truth[:, 2:3] ** 2)) + truth[:, 3:4])
    init = truth * rng.uniform(0.5, 1.5, truth.shape)
    init[::7, 2] = 40.0  # some runaways
    r = gf.fit_many(GAUSS, X, y.astype(float), init=init)
    se = np.column_stack([r.stderr[n] for n in r.param_names])
    assert np.isfinite(se[r.converged]).all()
    assert r.converged.mean() > 0.5
