"""fit_many(absolute_sigma=True): standard errors and covariance not scaled by each fit's
reduced chi-square, on every path (torch chunks, the C kernel, the joint fit), against
scipy.optimize.curve_fit(absolute_sigma=True) and the analytic inverse of J^T W J."""

import warnings

import numpy as np
import pytest
from scipy import optimize

import gradfit as gf

X = np.linspace(0.0, 4.0, 12)
RNG = np.random.default_rng(3)
A, K = RNG.uniform(2, 5, 6), RNG.uniform(0.4, 0.9, 6)
SIGMA = 0.05 + 0.1 * RNG.uniform(size=(6, 12))
Y = A[:, None] * np.exp(-K[:, None] * X) + SIGMA * RNG.standard_normal((6, 12))


def _curve_fit(absolute):
    p, se, cov = [], [], []
    for y, s in zip(Y, SIGMA):
        popt, pcov = optimize.curve_fit(lambda x, a, k: a * np.exp(-k * x), X, y, p0=(3.0, 0.5), sigma=s,
                                        absolute_sigma=absolute, xtol=1e-14, ftol=1e-14, gtol=1e-14)
        p.append(popt), se.append(np.sqrt(np.diag(pcov))), cov.append(pcov)
    return np.array(p), np.array(se), np.array(cov)


@pytest.mark.parametrize("compile_", [False, True])
def test_absolute_sigma_matches_curve_fit(compile_):
    p, se_abs, cov_abs = _curve_fit(True)
    _, se_rel, _ = _curve_fit(False)
    assert np.abs(se_abs / se_rel - 1).max() > 0.05  # the two differ on this data: the test can tell
    r = gf.fit_many("a*exp(-k*x)", X, Y, sigma=SIGMA, init={"a": 3.0, "k": 0.5}, dtype="float64", tol=1e-12,
                    absolute_sigma=True, compile=compile_)
    assert r.converged.all() and r.timings["native"] == compile_
    np.testing.assert_allclose(np.column_stack([r.params["a"], r.params["k"]]), p, rtol=1e-7)
    np.testing.assert_allclose(np.column_stack([r.stderr["a"], r.stderr["k"]]), se_abs, rtol=1e-6)
    np.testing.assert_allclose(r.covariance, cov_abs, rtol=1e-5, atol=1e-14)
    default = gf.fit_many("a*exp(-k*x)", X, Y, sigma=SIGMA, init={"a": 3.0, "k": 0.5}, dtype="float64", tol=1e-12,
                          compile=compile_)
    np.testing.assert_allclose(np.column_stack([default.stderr["a"], default.stderr["k"]]), se_rel, rtol=1e-6)


def test_absolute_sigma_gives_errors_without_degrees_of_freedom():
    # two points, two parameters, sigma 0.5 and 0.25: cov = (J^T W J)^-1 with J = [[1, 0], [1, 1]]
    j = np.array([[1.0, 0.0], [1.0, 1.0]])
    cov = np.linalg.inv(j.T @ np.diag([4.0, 16.0]) @ j)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no degrees of freedom" warning: these errors exist
        r = gf.fit_many("b + a*x", np.array([0.0, 1.0]), np.array([[1.0, 3.0]]), sigma=np.array([[0.5, 0.25]]),
                        dtype="float64", absolute_sigma=True)
    np.testing.assert_allclose([r.stderr["b"][0], r.stderr["a"][0]], np.sqrt(np.diag(cov)), rtol=1e-9)
    assert r.converged.all()


def test_absolute_sigma_in_a_shared_fit_matches_least_squares():
    # the joint problem: scipy least_squares on the stacked weighted residuals; absolute errors
    # sqrt(diag((J^T J)^-1)) of the weighted Jacobian, without the chi2/dof factor
    def resid(v):
        k, a = v[0], v[1:]
        return ((a[:, None] * np.exp(-k * X) - Y) / SIGMA).ravel()

    def jac(v):
        k, a = v[0], v[1:]
        e = np.exp(-k * X)
        j = np.zeros((6, 12, 7))
        j[:, :, 0] = -a[:, None] * X * e / SIGMA
        j[np.arange(6), :, 1 + np.arange(6)] = e / SIGMA
        return j.reshape(-1, 7)

    ls = optimize.least_squares(resid, np.r_[0.6, np.full(6, 3.0)], jac=jac, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    cov = np.linalg.inv(jac(ls.x).T @ jac(ls.x))
    for compile_ in (False, True):
        r = gf.fit_many("a*exp(-k*x)", X, Y, sigma=SIGMA, init={"a": 3.0, "k": 0.6}, shared=["k"], dtype="float64",
                        tol=1e-12, absolute_sigma=True, compile=compile_)
        assert r.converged.all()
        assert r.shared["k"] == pytest.approx(ls.x[0], rel=1e-7)
        assert r.shared_stderr["k"] == pytest.approx(np.sqrt(cov[0, 0]), rel=1e-6)
        np.testing.assert_allclose(r.stderr["a"], np.sqrt(np.diag(cov))[1:], rtol=1e-6)


def test_absolute_sigma_must_be_a_bool():
    with pytest.raises(gf.ConfigError, match="absolute_sigma must be True or False"):
        gf.fit_many("a*x", X, Y, absolute_sigma="yes")
