"""A zero-dose control: d(x**n)/dn = x**n log(x) is 0 at x = 0 (its limit for n > 0), not
0 * -inf = NaN. Dose-response fits with a control at dose 0 once ended not_finite."""

import numpy as np
import pytest

import gradfit as gf

optimize = pytest.importorskip("scipy.optimize")

DOSE = np.r_[0.0, np.logspace(-3, 1, 9)]
Y = 5 + 95 * DOSE / (0.05 + DOSE) + np.random.default_rng(0).normal(0, 1, DOSE.size)
HILL = "bottom + (top - bottom)*x**n/(ec50**n + x**n)"
START = {"bottom": 5.0, "top": 100.0, "n": 1.0, "ec50": 0.1}


def _reference():
    def f(x, bottom, top, n, ec50):
        return bottom + (top - bottom) * x**n / (ec50**n + x**n)

    with np.errstate(all="ignore"):
        popt, _ = optimize.curve_fit(f, DOSE, Y, p0=list(START.values()), xtol=1e-15, ftol=1e-15, gtol=1e-15)
    return dict(zip(START, popt))


def test_the_exponent_partial_of_a_power_is_zero_at_zero():
    import torch

    from gradfit.formula.compile import compile_tree
    from gradfit.formula.parse import parse_expression
    from gradfit.formula.symbolic import derivatives

    d = derivatives(parse_expression("a*x**n"), ("n",))["n"]
    x = np.array([0.0, 0.5, 2.0])
    expected = [0.0, 3 * 0.5**1.5 * np.log(0.5), 3 * 2.0**1.5 * np.log(2.0)]
    np.testing.assert_allclose(compile_tree(d, "numpy")({"x": x, "a": 3.0, "n": 1.5}), expected, rtol=1e-14)
    got = compile_tree(d, "torch")({"x": torch.tensor(x), "a": torch.tensor(3.0), "n": torch.tensor(1.5)})
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-14)


@pytest.mark.parametrize("model", ["hill", HILL])
def test_fit_with_a_zero_dose_control_matches_scipy(model):
    ref = _reference()
    r = gf.fit(model, x=DOSE, y=Y, init=None if model == "hill" else START)
    assert r.status == "converged"
    for name, value in ref.items():
        assert r.params[name] == pytest.approx(value, rel=1e-6)


def test_fit_many_with_a_zero_dose_control_matches_scipy():
    ref = _reference()
    r = gf.fit_many("hill", DOSE, np.stack([Y, Y]), init="guess", dtype="float64", tol=1e-12, max_iter=100)
    assert r.converged.all()
    for name, value in ref.items():
        np.testing.assert_allclose(r.params[name], value, rtol=1e-6)
