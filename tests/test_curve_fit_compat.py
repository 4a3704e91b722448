"""gradfit.curve_fit against scipy.optimize.curve_fit run with tight settings (ftol = xtol =
gtol = 1e-15 and analytic Jacobians), for model functions written with numpy and with torch;
its scipy-compatible arguments, errors and outputs; and numpy-written functions in gf.fit.
scipy's own suite is tests/peer/test_scipy_curve_fit.py."""

import math
import warnings

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit import curve_fit
from gradfit.errors import GradfitError, ModelError
from gradfit.models.function import FunctionModel
from gradfit.models.jacobian import finite_differences

scipy_optimize = pytest.importorskip("scipy.optimize")
TIGHT = {"ftol": 1e-15, "xtol": 1e-15, "gtol": 1e-15}
RNG = np.random.default_rng(20261130)


def _reference(f, jac, x, y, p0, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scipy_optimize.curve_fit(f, x, y, p0, jac=jac, **TIGHT, **kw)


# -- model classes: (numpy f, torch f, analytic jacobian, x, true parameters, p0, sigma) ------------------
def _decay():
    x = np.linspace(0, 4, 40)
    return (lambda x, a, k: a * np.exp(-k * x), lambda x, a, k: a * torch.exp(-k * x),
            lambda x, a, k: np.column_stack([np.exp(-k * x), -a * x * np.exp(-k * x)]), x, (2.5, 1.3), (1, 1), None)


def _gaussian():
    x = np.linspace(-3, 5, 60)

    def jac(x, a, c, w):
        g = np.exp(-(x - c) ** 2 / (2 * w**2))
        return np.column_stack([g, a * g * (x - c) / w**2, a * g * (x - c) ** 2 / w**3])

    return (lambda x, a, c, w: a * np.exp(-(x - c) ** 2 / (2 * w**2)),
            lambda x, a, c, w: a * torch.exp(-(x - c) ** 2 / (2 * w**2)), jac, x, (3.0, 1.2, 0.8), (2, 1, 1), None)


def _power():
    x = np.linspace(1, 10, 30)
    return (lambda x, a, b: a * np.power(x, b), lambda x, a, b: a * x**b,
            lambda x, a, b: np.column_stack([x**b, a * x**b * np.log(x)]), x, (1.7, 0.6), (1, 1), 0.05 * x)


def _two_inputs():
    x = np.vstack([np.linspace(0, 2, 25), np.linspace(1, 3, 25) ** 2])  # (k, M) = (2, 25)

    def jac(x, a, b, c):
        e = np.exp(-b * x[0])
        return np.column_stack([e, -a * x[0] * e, x[1]])

    return (lambda x, a, b, c: a * np.exp(-b * x[0]) + c * x[1], lambda x, a, b, c: a * torch.exp(-b * x[0]) + c * x[1],
            jac, x, (2.0, 0.7, 0.3), (1, 1, 1), None)


def _full_covariance():
    f_np, f_t, jac, x, true, p0, _ = _decay()
    idx = np.arange(x.size)
    cov = 0.02**2 * 0.6 ** np.abs(idx[:, None] - idx[None, :])  # correlated (AR(1)) errors
    return f_np, f_t, jac, x, true, p0, cov


CASES = {"exp_decay": _decay, "gaussian": _gaussian, "power_law": _power, "two_inputs": _two_inputs,
         "full_covariance": _full_covariance}


def _data(case):
    f_np, f_t, jac, x, true, p0, sigma = CASES[case]()
    y = f_np(x, *true)
    if sigma is None:
        y = y + 0.02 * RNG.standard_normal(y.shape)
    elif np.ndim(sigma) == 1:
        y = y + sigma * RNG.standard_normal(y.shape)
    else:
        y = y + np.linalg.cholesky(sigma) @ RNG.standard_normal(y.shape)
    return f_np, f_t, jac, x, y, p0, sigma


@pytest.mark.parametrize("absolute_sigma", [False, True])
@pytest.mark.parametrize("written", ["numpy", "torch"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_scipy_converged_tightly(case, written, absolute_sigma):
    f_np, f_t, jac, x, y, p0, sigma = _data(case)
    ref_p, ref_c = _reference(f_np, jac, x, y, p0, sigma=sigma, absolute_sigma=absolute_sigma)
    popt, pcov, info, _, ier = curve_fit(f_np if written == "numpy" else f_t, x, y, p0, sigma=sigma,
                                         absolute_sigma=absolute_sigma, full_output=True)
    np.testing.assert_allclose(popt, ref_p, rtol=1e-8)
    # exact Jacobians (torch) agree to rounding; numpy-written f uses finite differences
    rtol = 1e-9 if written == "torch" else 1e-6
    np.testing.assert_allclose(pcov, ref_c, rtol=rtol, atol=rtol * np.abs(ref_c).max())
    assert ier in (1, 2, 3, 4) and info["status"] == "converged"
    fd_note = any("finite differences" in n for n in info["notes"])
    assert fd_note == (written == "numpy")


@pytest.mark.parametrize("jac", ["2-point", "3-point", "cs", "callable"])
def test_jac_schemes_and_callable_agree_with_scipy(jac):
    f_np, _, j, x, y, p0, _ = _data("gaussian")
    ref_p, ref_c = _reference(f_np, j, x, y, p0)
    popt, pcov = curve_fit(f_np, x, y, p0, jac=j if jac == "callable" else jac)
    np.testing.assert_allclose(popt, ref_p, rtol=1e-8)
    rtol = 1e-9 if jac in ("cs", "callable") else 1e-5
    np.testing.assert_allclose(pcov, ref_c, rtol=rtol, atol=rtol * np.abs(ref_c).max())


def test_gh4555b_against_tightly_converged_scipy():
    """scipy's test_gh4555b with the reference from scipy converged tightly (see the peer suite)."""
    rng = np.random.default_rng(408113519974467917)

    def func(x, a, b, c):
        return a * np.exp(-b * x) + c

    def jac(x, a, b, c):
        e = np.exp(-b * x)
        return np.column_stack([e, -a * x * e, np.ones_like(x)])

    x = np.linspace(0, 4, 50)
    y = func(x, 2.5, 1.3, 0.5) + 0.2 * rng.normal(size=x.size)
    ref = _reference(func, jac, x, y, None)[1]
    np.testing.assert_allclose(curve_fit(func, x, y)[1], ref, rtol=1e-7)
    np.testing.assert_allclose(curve_fit(lambda x, a, b, c: a * torch.exp(-b * x) + c, x, y)[1], ref, rtol=1e-9)


def test_full_output_counts_calls_and_returns_weighted_residuals():
    f_np, _, _, x, y, p0, _ = _data("exp_decay")
    sigma = 0.01 + 0.02 * x
    calls = []

    def f(x, a, k):
        calls.append((a, k))
        return f_np(x, a, k)

    popt, _, info, mesg, ier = curve_fit(f, x, y, p0, sigma=sigma, full_output=True)
    assert info["nfev"] == len(calls)
    np.testing.assert_allclose(info["fvec"], (f_np(x, *popt) - y) / sigma, rtol=1e-12, atol=1e-14)
    assert {"fjac", "ipvt", "qtf"} <= set(info) and isinstance(mesg, str) and ier in (1, 2, 3, 4)
    # MINPACK's layout: R of J P = Q R in fjac.T, so that R^T R = P^T J^T J P
    jac = np.column_stack([np.exp(-popt[1] * x), -popt[0] * x * np.exp(-popt[1] * x)]) / sigma[:, None]
    r = np.triu(info["fjac"].T[:2])
    perm = info["ipvt"] - 1
    np.testing.assert_allclose(r.T @ r, (jac.T @ jac)[np.ix_(perm, perm)], rtol=1e-6)


def test_full_covariance_residuals_are_whitened_by_the_cholesky_factor():
    f_np, _, _, x, y, p0, cov = _data("full_covariance")
    popt, _, info, _, _ = curve_fit(f_np, x, y, p0, sigma=cov, full_output=True)
    np.testing.assert_allclose(info["fvec"], np.linalg.solve(np.linalg.cholesky(cov), f_np(x, *popt) - y),
                               rtol=1e-10, atol=1e-12)


def test_xdata_shapes_tuple_and_none():
    f_np, _, _, x, y, p0, _ = _data("two_inputs")
    p_array = curve_fit(f_np, x, y, p0)[0]
    np.testing.assert_allclose(curve_fit(f_np, (x[0], x[1]), y, p0)[0], p_array, rtol=1e-12)
    np.testing.assert_allclose(curve_fit(lambda _, a: a * np.arange(5.0), None, 3 * np.arange(5.0))[0], [3.0])


def test_bounds_object_tuple_and_scalars_agree():
    f_np, _, _, x, y, p0, _ = _data("exp_decay")
    lo, hi = [0.0, 0.0], [2.0, 10.0]  # the optimum's a = 2.5 is outside: a ends on its bound
    a = curve_fit(f_np, x, y, bounds=scipy_optimize.Bounds(lo, hi))[0]
    b = curve_fit(f_np, x, y, bounds=(lo, hi))[0]
    ref = _reference(f_np, None, x, y, None, bounds=(lo, hi))[0]
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(a, ref, rtol=1e-6)
    assert a[0] == pytest.approx(2.0, rel=1e-9)
    np.testing.assert_allclose(curve_fit(f_np, x, y, bounds=(0, 10))[0], _reference(f_np, None, x, y, None)[0],
                               rtol=1e-8)


def test_bounded_hyperbola_reaches_scipys_answer():
    def hyperbola(x, s_1, s_2, o_x, o_y, c):
        return o_y + (s_2 - s_1) / 2 * (x - o_x) + (s_1 + s_2) / 2 * np.sqrt((x - o_x) ** 2 + c**2 / 4)

    x = np.array([-32, -16, -8, 4, 4, 8, 16, 32], dtype=float)
    y = hyperbola(x, -2, .4, -1, -5, 9.5)
    bounds = ([-3.0, 0.0, -2.0, -10.0, 0.0], [0.0, 3.0, 3.0, 0.0, 10.0])
    popt = curve_fit(hyperbola, x, y, p0=[-2.5 / 3.0, 4 / 3.0, 1.0, -4.0, 0.5], bounds=bounds)[0]
    np.testing.assert_allclose(popt, [-2, .4, -1, -5, 9.5], rtol=1e-6)


def test_rank_deficient_pcov_is_inf_with_optimize_warning_for_every_method():
    x = np.arange(6.0)
    y = np.array([1, 2, 3, 4, 5.5, 6])
    for method in ("lm", "trf", "dogbox"):
        with pytest.warns(scipy_optimize.OptimizeWarning, match="Covariance of the parameters"):
            _, pcov = curve_fit(lambda x, a, b: a * x, x, y, method=method)
        assert np.isinf(pcov).all()


def test_maxfev_stops_the_fit_like_scipy():
    f_np, _, _, x, y, _, _ = _data("gaussian")
    with pytest.raises(RuntimeError, match="maxfev = 5"):
        curve_fit(f_np, x, y, p0=(1, 0, 3), maxfev=5)
    with pytest.raises(RuntimeError, match="max_nfev|maxfev"):
        curve_fit(f_np, x, y, p0=(1, 0, 3), max_nfev=5, method="trf")


@pytest.mark.parametrize("call, error", [
    (dict(method="lm", bounds=(0, 5)), ValueError),
    (dict(method="newton"), ValueError),
    (dict(nan_policy="propagate"), ValueError),
    (dict(nan_policy="ignore"), ValueError),
    (dict(args=(1,)), ValueError),
    (dict(loss="soft_l1"), ValueError),
    (dict(not_an_option=1), TypeError),
    (dict(p0=[10.0, 1.0], bounds=([0, 0], [5, 5])), ValueError),
    (dict(sigma=-np.ones((40, 40))), ValueError),
    (dict(sigma=np.ones(7)), ValueError),
    (dict(bounds=(1, 0)), ValueError),
])
def test_argument_errors_have_scipys_types(call, error):
    f_np, _, _, x, y, _, _ = _data("exp_decay")
    with pytest.raises(error) as info:
        curve_fit(f_np, x, y, **call)
    assert isinstance(info.value, GradfitError)  # typed gradfit errors that say what to do


def test_too_many_parameters_is_a_type_error():
    with pytest.raises(TypeError, match="The number of func parameters=3") as info:
        curve_fit(lambda x, a, b, c: a + b * x + c * x**2, [1.0, 2.0], [1.0, 2.0])
    assert isinstance(info.value, GradfitError)


def test_nan_policy_omit_drops_points_where_x_or_y_is_nan():
    f_np, _, _, x, y, p0, _ = _data("exp_decay")
    xn, yn = x.copy(), y.copy()
    xn[3], yn[10] = np.nan, np.nan
    keep = np.ones(x.size, bool)
    keep[[3, 10]] = False
    np.testing.assert_allclose(curve_fit(f_np, xn, yn, p0, nan_policy="omit")[0],
                               curve_fit(f_np, x[keep], y[keep], p0)[0], rtol=1e-13)
    with pytest.raises(ValueError, match="nan"):
        curve_fit(f_np, xn, yn, p0, nan_policy="raise")
    with pytest.raises(ValueError):
        curve_fit(f_np, xn, yn, p0)  # check_finite defaults to True


def test_default_start_is_ones_or_the_signature_defaults():
    x = np.linspace(0, 4, 30)
    y = 2.5 * np.exp(-1.3 * x)
    calls = []

    def f(x, a, k=1.5):
        calls.append((a, k))
        return a * np.exp(-k * x)

    curve_fit(f, x, y)
    assert calls[0] == (1.0, 1.5)


# -- numpy-written functions in gf.fit ---------------------------------------------------------------
def test_fit_accepts_a_numpy_written_function():
    f_np, _, jac, x, y, p0, _ = _data("exp_decay")
    ref_p, ref_c = _reference(f_np, jac, x, y, p0)
    r = gf.fit(lambda x, a, k: a * np.exp(-k * x), x=x, y=y, init={"a": 1.0, "k": 1.0})
    assert r.status == "converged"
    np.testing.assert_allclose([r.params["a"], r.params["k"]], ref_p, rtol=1e-8)
    np.testing.assert_allclose(r.covariance, ref_c, rtol=1e-6)
    assert r.model.backend == "numpy"
    assert any("finite differences" in n and "not written with torch" in n for n in r.model.notes)
    np.testing.assert_allclose(r.predict(x[:3]), f_np(x[:3], *ref_p), rtol=1e-8)


def test_fit_result_notes_say_the_jacobian_is_finite_difference():
    x = np.linspace(0, 4, 30)
    r = gf.fit(lambda x, a, k: a * np.exp(-k * x), x=x, y=2 * np.exp(-x), init={"a": 1.0, "k": 1.0})
    assert any("finite differences" in n for n in r.notes)


def test_torch_written_function_keeps_exact_jacobian():
    x = np.linspace(0, 4, 30)
    r = gf.fit(lambda x, a, k: a * torch.exp(-k * x), x=x, y=2 * np.exp(-x), init={"a": 1.0, "k": 2.0})
    assert r.model.backend == "torch" and r.model.notes == ()


def test_python_floats_inside_a_torch_function_fall_back_to_finite_differences():
    """math.exp(k) turns k into a Python float: autograd silently loses d/dk."""
    x = np.linspace(0, 4, 30)
    y = 2.0 * math.exp(-0.5) * np.exp(-0.5 * (x - 1))
    r = gf.fit(lambda x, a, k: a * math.exp(-k) * torch.exp(-k * (x - 1)), x=x, y=y, init={"a": 1.0, "k": 1.0})
    assert r.model.backend == "torch-values" and "disagrees with finite differences" in r.model.notes[0]
    assert r.params["a"] == pytest.approx(2.0, rel=1e-9) and r.params["k"] == pytest.approx(0.5, rel=1e-9)


def test_numpy_function_with_a_gradient_optimizer_says_what_to_do():
    x = np.linspace(0, 4, 30)
    with pytest.raises(ModelError, match="not written with torch"):
        gf.fit(lambda x, a, k: a * np.exp(-k * x), x=x, y=2 * np.exp(-x), optimizer="adam", epochs=2)


def test_function_model_rejects_an_unknown_jac():
    with pytest.raises(ModelError, match="jac must be"):
        FunctionModel(lambda x, a: a * x, jac="4-point")


@pytest.mark.parametrize("scheme, rtol", [("2-point", 1e-6), ("3-point", 1e-9), ("auto", 1e-9), ("cs", 1e-14)])
def test_finite_difference_schemes(scheme, rtol):
    x = np.linspace(0, 3, 20)
    z = np.array([1.3, 0.4])

    def predict(v):
        return v[0] * np.exp(-v[1] * x)

    exact = np.column_stack([np.exp(-z[1] * x), -z[0] * x * np.exp(-z[1] * x)])
    np.testing.assert_allclose(finite_differences(predict, z, scheme), exact, rtol=rtol, atol=rtol * 1e-2)


def test_auto_steps_resolve_a_narrow_peak_far_from_zero():
    """A peak at 574 of width 0.004: a step relative to 574 must be small (scipy's regression 2639)."""
    x = np.linspace(574.14, 574.25, 12)
    z = np.array([574.19, 0.004])

    def predict(v):
        return np.exp(-(x - v[0]) ** 2 / (2 * v[1] ** 2))

    g = predict(z)
    exact = np.column_stack([g * (x - z[0]) / z[1] ** 2, g * (x - z[0]) ** 2 / z[1] ** 3])
    scale = np.abs(exact).max(axis=0)
    assert (np.abs(finite_differences(predict, z, "auto") - exact).max(axis=0) < 1e-5 * scale).all()
    assert (np.abs(finite_differences(predict, z, "3-point") - exact).max(axis=0) > 1e-3 * scale).any()


def test_fit_many_with_a_numpy_function_says_what_to_do():
    x = np.linspace(0, 4, 30)
    y = np.vstack([2 * np.exp(-x), 3 * np.exp(-x)])
    with pytest.raises(ModelError, match="not written with torch"):
        gf.fit_many(lambda x, a, k: a * np.exp(-k * x), x=x, y=y, init={"a": 1.0, "k": 1.0})


def test_starts_on_or_next_to_a_bound_reach_scipys_answer():
    x = np.linspace(0, 3, 30)
    y = 2 * np.exp(-1.7 * x)
    for p0 in ([1.0, 0.0], [1.0, 1e-9], [1.0, 5.0]):
        np.testing.assert_allclose(curve_fit(lambda x, a, k: a * np.exp(-k * x), x, y, p0=p0,
                                             bounds=([0, 0], [np.inf, 5]))[0], [2.0, 1.7], rtol=1e-9)


def test_non_numeric_data_is_a_value_error():
    with pytest.raises(ValueError, match="xdata must be numeric"):
        curve_fit(lambda x, a: a * x, ["a", "b"], [1.0, 2.0])


def test_gh4555_with_exact_derivatives():
    """scipy's test_gh4555 assertions, for the same data and model written with torch, from a
    start off the model's (a, b) <-> (c, d) symmetry (see the peer suite's docstring)."""
    from scipy import linalg

    rng = np.random.default_rng(408113519974467917)
    x = np.arange(100)
    y = np.linspace(2, 7, 100) + rng.random(100)

    def f(x, a, b, c, d, e):
        return a * torch.log(x + 1 + b) + c * torch.log(x + 1 + d) + e

    p, cov = curve_fit(f, x, y, p0=[1, 2, 1, 1, 1])
    assert np.all(np.diag(cov) > 0)
    assert np.all(linalg.eigh(cov)[0] > -1e-2)
    np.testing.assert_allclose(cov, cov.T)
    cost = np.sum((f(torch.as_tensor(x, dtype=torch.float64), *map(float, p)).numpy() - y) ** 2)
    assert cost < 7.4332276  # scipy: 7.4332288 (defaults), 7.4332275 (ftol = xtol = gtol = 1e-15)
