"""Bounds in least squares: a start on, near or far from a bound reaches the optimum, an
active bound is reported, and a fit stuck on a bound it should leave is not "converged".

Right values come from scipy.optimize.least_squares(method="trf") with tight tolerances, or
from the analytic optimum (exact data)."""

import math

import numpy as np
import pytest

import gradfit as gf

scipy_optimize = pytest.importorskip("scipy.optimize")

X = np.linspace(0.0, 3.0, 30)
Y = 2.0 * np.exp(-1.7 * X)  # exact: A = 2, k = 1.7
RNG = np.random.default_rng(11)
Y_NOISY = 2.0 * np.exp(-1.7 * X) + 0.02 * RNG.standard_normal(X.size)


def _scipy(y, k0, lo, hi, sign=-1.0):
    def res(p):
        return p[0] * np.exp(sign * p[1] * X) - y

    out = scipy_optimize.least_squares(res, [1.0, min(max(k0, lo + 1e-12 if math.isfinite(lo) else k0),
                                                     hi - 1e-12 if math.isfinite(hi) else k0)],
                                       bounds=([-np.inf, lo], [np.inf, hi]), method="trf", xtol=1e-15,
                                       ftol=1e-15, gtol=1e-15, max_nfev=20000)
    return out.x


@pytest.mark.parametrize("k0", [0.0, 1e-12, 1e-9, 1e-3, 5.0, 100.0])
@pytest.mark.parametrize("y", [Y, Y_NOISY], ids=["exact", "noisy"])
def test_start_on_near_or_far_from_a_lower_bound(k0, y):
    r = gf.fit("y ~ A*exp(-k*x)", x=X, y=y, init={"A": 1, "k": k0}, bounds={"k": (0, None)})
    ref = _scipy(y, k0, 0.0, np.inf)
    assert r.status == "converged"
    np.testing.assert_allclose([r.params["A"], r.params["k"]], ref, rtol=1e-8)
    assert not any("at a bound" in n for n in r.notes)


@pytest.mark.parametrize("k0", [0.0, 1e-9, 5.0, 10.0 - 1e-9, 10.0])
def test_start_on_either_end_of_two_sided_bounds(k0):
    r = gf.fit("y ~ A*exp(-k*x)", x=X, y=Y_NOISY, init={"A": 1, "k": k0}, bounds={"k": (0, 10)})
    assert r.status == "converged"
    np.testing.assert_allclose([r.params["A"], r.params["k"]], _scipy(Y_NOISY, k0, 0.0, 10.0), rtol=1e-8)


@pytest.mark.parametrize("k0", [0.0, -1e-9, -5.0, -100.0])
def test_start_on_an_upper_bound(k0):
    r = gf.fit("y ~ A*exp(k*x)", x=X, y=Y_NOISY, init={"A": 1, "k": k0}, bounds={"k": (None, 0)})
    assert r.status == "converged"
    np.testing.assert_allclose([r.params["A"], r.params["k"]], _scipy(Y_NOISY, k0, -np.inf, 0.0, sign=1.0),
                               rtol=1e-8)


@pytest.mark.parametrize("bounds,k_expected", [((2.0, None), 2.0), ((0.5, 1.2), 1.2), ((None, 1.0), 1.0)])
@pytest.mark.parametrize("k0", ["on", "inside"])
def test_an_active_bound_is_reached_and_reported(bounds, k_expected, k0):
    lo = -np.inf if bounds[0] is None else bounds[0]
    hi = np.inf if bounds[1] is None else bounds[1]
    start = k_expected if k0 == "on" else (min(lo + 0.5, 0.5 * (lo + hi)) if math.isfinite(lo) else hi - 0.5)
    r = gf.fit("y ~ A*exp(-k*x)", x=X, y=Y_NOISY, init={"A": 1, "k": start}, bounds={"k": bounds})
    ref = _scipy(Y_NOISY, start, lo, hi)
    assert ref[1] == pytest.approx(k_expected, abs=1e-9)  # scipy agrees the bound is active
    assert r.status == "converged"
    assert r.params["k"] == k_expected
    assert r.params["A"] == pytest.approx(ref[0], rel=1e-8)
    assert any("k at a bound" in n for n in r.notes)


def test_bounded_fit_with_first_order_optimizer_leaves_a_bound_start():
    # the transform's slope vanishes exactly on the bound: the start is moved inside
    r = gf.fit("y ~ A*exp(-k*x)", x=X, y=Y, init={"A": 1, "k": 0.0}, bounds={"k": (0, None)}, optimizer="adam",
               lr=0.05, epochs=1500, dtype="float64")
    assert r.params["k"] == pytest.approx(1.7, rel=0.05)


def test_stuck_on_a_bound_with_an_inward_gradient_is_not_stationary():
    from gradfit.optim.lm import LMOptions, levenberg_marquardt

    def res(p):
        return p[0] * np.exp(-p[1] * X) - Y

    def jac(p):
        e = np.exp(-p[1] * X)
        return np.column_stack([e, -p[0] * X * e])

    # max_iter=1 from the bound: whatever the status, it is not "converged" at k=0
    out = levenberg_marquardt(res, np.array([0.41, 0.0]), jacobian=jac, options=LMOptions(max_iter=1),
                              bounds=([-np.inf, 0.0], [np.inf, np.inf]))
    assert not (out.status == "converged" and out.x[1] == 0.0)
    out = levenberg_marquardt(res, np.array([1.0, 0.0]), jacobian=jac, bounds=([-np.inf, 0.0], [np.inf, np.inf]))
    assert out.status == "converged"
    np.testing.assert_allclose(out.x, [2.0, 1.7], rtol=1e-10)


@pytest.mark.parametrize("k0", [0.0, 1e-9, 5.0])
def test_fit_many_from_the_same_bound_starts(k0):
    yy = np.stack([Y_NOISY, Y])
    r = gf.fit_many("A*exp(-k*x)", X, yy, init={"A": 1.0, "k": k0}, bounds={"k": (0, None)}, dtype="float64",
                    max_iter=200, tol=1e-12)
    assert r.status.tolist() == [0, 0]
    np.testing.assert_allclose(r.params["k"], [_scipy(Y_NOISY, k0, 0, np.inf)[1], 1.7], rtol=1e-6)
