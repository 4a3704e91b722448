"""Least squares: method choice, Levenberg-Marquardt, linear solves, bounds, fixed and tied
parameters, weights, uncertainties and statistics, checked against scipy and closed forms."""

import math

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit import ConfigError, DataError
from gradfit.optim.lm import LMOptions, levenberg_marquardt

scipy_optimize = pytest.importorskip("scipy.optimize")
scipy_stats = pytest.importorskip("scipy.stats")

RNG = np.random.default_rng(7)
X = np.linspace(0, 10, 60)
Y = 3.0 * np.exp(-0.4 * X) + 1.0 + 0.05 * RNG.standard_normal(60)
SIG = 0.05 + 0.02 * RNG.random(60)


def np_decay(x, a, k, c):
    return a * np.exp(-k * x) + c


def test_auto_chooses_and_explains():
    assert gf.fit("poly:3", x=X, y=Y).method == "linear"
    r = gf.fit("a*exp(-k*x) + c", x=X, y=Y)
    assert r.method == "lm" and "nonlinear" in r.method_reason
    assert gf.fit("a*x + b", x=X, y=Y, loss="mae", epochs=5).method == "adam"
    assert gf.fit("a*x + b", x=X, y=Y, batch_size=8, epochs=1).method == "adam"
    assert gf.fit("mlp", x=X, y=Y, epochs=1, hidden=(4,)).method == "adam"
    assert gf.fit("a*x + b", x=X, y=Y, bounds={"a": (0, None)}).method == "lm"
    with pytest.raises(ConfigError, match="not least squares"):
        gf.fit("a*x + b", x=X, y=Y, loss="mae", optimizer="lm")
    with pytest.raises(ConfigError, match="linear in its parameters"):
        gf.fit("a*exp(-k*x) + c", x=X, y=Y, optimizer="linear")


def test_lm_matches_scipy_parameters_and_covariance():
    r = gf.fit("a*exp(-k*x) + c", x=X, y=Y, sigma=SIG, dtype="float64")
    popt, pcov = scipy_optimize.curve_fit(np_decay, X, Y, p0=[1, 1, 1], sigma=SIG)
    assert r.status == "converged"
    np.testing.assert_allclose([r.params[k] for k in "akc"], popt, rtol=1e-7)
    np.testing.assert_allclose(r.covariance, pcov, rtol=1e-5)
    np.testing.assert_allclose([r.stderr[k] for k in "akc"], np.sqrt(np.diag(pcov)), rtol=1e-5)
    assert np.allclose(np.diag(r.correlation), 1.0) and np.allclose(r.correlation, r.correlation.T)


def test_absolute_sigma():
    rel = gf.fit("a*exp(-k*x) + c", x=X, y=Y, sigma=SIG, dtype="float64")
    ab = gf.fit("a*exp(-k*x) + c", x=X, y=Y, sigma=SIG, absolute_sigma=True, dtype="float64")
    _, pcov = scipy_optimize.curve_fit(np_decay, X, Y, p0=[1, 1, 1], sigma=SIG, absolute_sigma=True)
    np.testing.assert_allclose(ab.covariance, pcov, rtol=1e-5)
    np.testing.assert_allclose(rel.covariance, ab.covariance * rel.stats["redchi"], rtol=1e-10)


def test_linear_solve_is_exact_and_matches_lm():
    lin = gf.fit("c0 + c1*x + c2*x**2", x=X, y=Y, dtype="float64")
    lm = gf.fit("c0 + c1*x + c2*x**2", x=X, y=Y, dtype="float64", optimizer="lm")
    ref = np.polynomial.polynomial.polyfit(X, Y, 2)
    np.testing.assert_allclose([lin.params[f"c{i}"] for i in range(3)], ref, rtol=1e-10)
    np.testing.assert_allclose([lm.params[f"c{i}"] for i in range(3)], ref, rtol=1e-8)
    np.testing.assert_allclose(lin.covariance, lm.covariance, rtol=1e-6)
    assert lin.epochs_run == 1


def test_linear_solve_with_parameter_free_terms_and_fixed_parameters():
    # "w*x + x**2" has a term without parameters (an offset the solve must subtract);
    # "c0 + c1*x + c2*x**2" with c0 fixed has an offset from the fixed parameter.
    from gradfit.models import resolve_model

    assert resolve_model("w*x + b").bind(["x"]).vanishes_at_zero
    assert not resolve_model("w*x + x**2").bind(["x"]).vanishes_at_zero
    r = gf.fit("w*x + x**2", x=X, y=Y, dtype="float64")
    assert r.method == "linear"
    w_ref = float(np.linalg.lstsq(X[:, None], Y - X**2, rcond=None)[0][0])
    assert r.params["w"] == pytest.approx(w_ref, rel=1e-12)
    f = gf.fit("c0 + c1*x + c2*x**2", x=X, y=Y, fixed=["c0"], init={"c0": 0.5}, dtype="float64")
    assert f.method == "linear" and f.params["c0"] == 0.5 and f.stderr["c0"] == 0.0
    ref = np.linalg.lstsq(np.column_stack([X, X**2]), Y - 0.5, rcond=None)[0]
    np.testing.assert_allclose([f.params["c1"], f.params["c2"]], ref, rtol=1e-10)
    assert f.stats["chisqr"] == pytest.approx(float(np.sum((0.5 + ref[0] * X + ref[1] * X**2 - Y) ** 2)), rel=1e-12)


def test_default_parameter_space_is_shared_without_leaking_settings():
    a = gf.fit("w*x + b", x=X, y=Y, init={"w": 5.0}, optimizer="lm")
    b = gf.fit("w*x + b", x=X, y=Y)
    c = gf.fit("w*x + b", x=X, y=Y)
    assert a.settings["init"] == {"w": 5.0, "b": 1.0}
    assert b.settings["init"] == c.settings["init"] == {"w": 1.0, "b": 1.0}
    assert b.params == c.params and b.stderr == c.stderr


def test_lm_subproblem_from_gram_matches_svd_and_falls_back_when_ill_conditioned():
    from gradfit.optim.lm import _Subproblem

    rng = np.random.default_rng(3)
    jac = np.asfortranarray(rng.standard_normal((200, 3)))
    r = rng.standard_normal(200)
    d = np.array([1.0, 2.0, 0.5])

    def reference(j):
        u, s, vt = np.linalg.svd(j / d, full_matrices=False)
        return s, [-(vt.T @ (s / (s * s + lam) * (u.T @ r))) for lam in (1e-3, 0.1, 10.0)]

    nearly_dependent = np.column_stack([jac[:, 0], jac[:, 1], jac[:, 0] + 1e-6 * rng.standard_normal(200)])
    for j, rtol in ((jac, 1e-10), (nearly_dependent, 1e-8)):  # cond ~ 1e6: the SVD path
        sub = _Subproblem(j, r, d)
        s, steps = reference(j)
        np.testing.assert_allclose(sub.s, s, rtol=rtol)
        for lam, step in zip((1e-3, 0.1, 10.0), steps):
            np.testing.assert_allclose(sub.step(lam), step, rtol=rtol, atol=1e-12 * np.abs(step).max())


def test_formula_jacobian_shares_subexpressions_and_is_exact():
    from gradfit.models import resolve_model
    from gradfit.models.jacobian import jacobian

    m = resolve_model("a*exp(-k*x) + c").bind(["x"])
    jac = jacobian(m, {"x": X}, {"a": 3.0, "k": 0.4, "c": 1.0}, ("k", "a", "c"))
    e = np.exp(-0.4 * X)
    np.testing.assert_allclose(jac, np.column_stack([-3.0 * X * e, e, np.ones_like(X)]), rtol=1e-15)
    assert jac.flags["F_CONTIGUOUS"]


def test_statistics_closed_forms():
    r = gf.fit("a*x + b", x=X, y=Y, dtype="float64")
    resid = r.predict(X) - Y
    n, k = 60, 2
    rss = float(resid @ resid)
    st = r.stats
    assert st["n"] == n and st["dof"] == n - k
    assert st["chisqr"] == pytest.approx(rss) and st["redchi"] == pytest.approx(rss / (n - k))
    assert st["rmse"] == pytest.approx(math.sqrt(rss / n))
    assert st["r2"] == pytest.approx(1 - rss / np.sum((Y - Y.mean()) ** 2))
    assert st["aic"] == pytest.approx(n * math.log(rss / n) + 2 * k)
    assert st["bic"] == pytest.approx(n * math.log(rss / n) + math.log(n) * k)
    assert r.loss == pytest.approx(rss / n)


def test_confidence_intervals_normal_and_profile():
    r = gf.fit("a*x + b", x=X, y=Y, dtype="float64")
    normal = r.ci(0.95)
    profile = r.ci(0.95, method="profile", x=X, y=Y)
    for k in "ab":
        lo, hi = normal[k]
        # Student t at dof = n - 2 (the scale is estimated), as statsmodels' conf_int
        t = scipy_stats.t.ppf(0.975, len(X) - 2)
        assert (hi - lo) / 2 == pytest.approx(t * r.stderr[k], rel=1e-6)
        # for a linear model the profile interval equals the normal one
        assert profile[k][0] == pytest.approx(lo, rel=1e-6) and profile[k][1] == pytest.approx(hi, rel=1e-6)
    nl = gf.fit("a*exp(-k*x) + c", x=X, y=Y, dtype="float64")
    prof = nl.ci(0.95, method="profile", x=X, y=Y)["k"]
    assert prof[0] < nl.params["k"] < prof[1]


def test_bounds_fixed_and_tied():
    r = gf.fit("a*exp(-k*x) + c", x=X, y=Y, bounds={"k": (0.0, 0.3)}, dtype="float64")
    assert r.status == "converged" and r.params["k"] == pytest.approx(0.3, abs=1e-9)
    assert any("at a bound" in n for n in r.notes)
    popt, _ = scipy_optimize.curve_fit(np_decay, X, Y, p0=[1, 0.2, 1], bounds=([-np.inf, 0, -np.inf], [np.inf, 0.3, np.inf]))
    np.testing.assert_allclose([r.params[k] for k in "akc"], popt, rtol=1e-6)
    f = gf.fit("a*exp(-k*x) + c", x=X, y=Y, fixed=["c"], init={"c": 1.0}, dtype="float64")
    assert f.params["c"] == 1.0 and f.stderr["c"] == 0.0 and f.free == ("a", "k")
    popt, pcov = scipy_optimize.curve_fit(lambda x, a, k: np_decay(x, a, k, 1.0), X, Y, p0=[1, 1])
    np.testing.assert_allclose([f.params["a"], f.params["k"]], popt, rtol=1e-6)
    t = gf.fit("a*exp(-k*x) + c", x=X, y=Y, tie={"c": "a/3"}, dtype="float64")
    popt, pcov = scipy_optimize.curve_fit(lambda x, a, k: np_decay(x, a, k, a / 3), X, Y, p0=[1, 1])
    np.testing.assert_allclose([t.params["a"], t.params["k"]], popt, rtol=1e-6)
    assert t.params["c"] == pytest.approx(t.params["a"] / 3)
    assert t.stderr["c"] == pytest.approx(math.sqrt(pcov[0, 0]) / 3, rel=1e-4)


def test_bounds_also_work_with_first_order_optimizers():
    r = gf.fit("a*x + b", x=X, y=Y, bounds={"a": (0.0, None)}, optimizer="adam", lr=0.05, epochs=500)
    assert r.params["a"] >= 0.0


@pytest.mark.parametrize("kwargs,match", [
    ({"bounds": {"k": (2, 1)}}, "greater than max"),
    ({"bounds": {"q": (0, 1)}}, "unknown parameter 'q'"),
    ({"tie": {"c": "2*zz"}}, "unknown parameter 'zz'"),
    ({"tie": {"c": "a", "a": "c"}}, "cycle"),
    ({"tie": {"c": "c + 1"}}, "itself"),
    ({"init": {"k": 5.0}, "bounds": {"k": (0, 1)}}, "outside its bounds"),
    ({"fixed": ["a", "k", "c"]}, "nothing left to fit"),
    ({"sigma": np.ones(60), "weights": np.ones(60)}, "either sigma or weights"),
])
def test_bad_parameter_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        gf.fit("a*exp(-k*x) + c", x=X, y=Y, **kwargs)


def test_bad_data_for_least_squares():
    with pytest.raises(DataError, match="sigma must be positive"):
        gf.fit("a*x + b", x=X, y=Y, sigma=np.zeros(60))
    with pytest.raises(DataError, match="cannot determine 3 parameters"):
        gf.fit("a*exp(-k*x) + c", x=[1.0, 2.0], y=[1.0, 2.0])


def test_rank_deficiency_gives_status_and_names_parameters():
    with pytest.warns(gf.GradfitWarning, match="a, b"):
        r = gf.fit("a*b*x + c", x=X, y=Y, dtype="float64")
    assert r.status == "singular" and "a, b" in r.message
    assert math.isnan(r.stderr["a"]) and not math.isnan(r.stderr["c"])
    assert r.params["a"] * r.params["b"] == pytest.approx(gf.fit("s*x + c", x=X, y=Y, dtype="float64").params["s"])

    def ignores_b(x, a, b):
        return a * x

    with pytest.warns(gf.GradfitWarning, match="parameters b"):
        r = gf.fit(ignores_b, x=X, y=Y, dtype="float64")
    assert r.status == "singular"


def test_lm_kernel_rosenbrock_and_honest_failures():
    def rosen(p):
        return np.array([10 * (p[1] - p[0] ** 2), 1 - p[0]])

    def rosen_jac(p):
        return np.array([[-20 * p[0], 10.0], [-1.0, 0.0]])

    out = levenberg_marquardt(rosen, np.array([-1.2, 1.0]), jacobian=rosen_jac)
    assert out.status == "converged" and np.allclose(out.x, 1.0, atol=1e-10)
    # minimum at infinity: must not be called converged
    out = levenberg_marquardt(lambda p: np.exp(-p), np.array([0.0]), jacobian=lambda p: -np.exp(-p)[:, None],
                              options=LMOptions(max_iter=50))
    assert out.status != "converged"
    # max_iter respected and reported
    r = gf.fit("a*exp(-k*x) + c", x=X, y=Y, max_iter=2, dtype="float64")
    assert r.status == "max_iterations" and r.epochs_run <= 2 * 4


def test_curve_fit_matches_scipy():
    popt, pcov = gf.curve_fit(lambda x, a, k, c: a * torch.exp(-k * x) + c, X, Y, sigma=SIG)
    ref, rcov = scipy_optimize.curve_fit(np_decay, X, Y, sigma=SIG)
    assert popt.shape == (3,) and pcov.shape == (3, 3)
    np.testing.assert_allclose(popt, ref, rtol=1e-7)
    np.testing.assert_allclose(pcov, rcov, rtol=1e-5)
    popt, _ = gf.curve_fit(lambda x, *p: p[0] * torch.exp(-p[1] * x) + p[2], X, Y, p0=[2, 0.5, 0.5])
    ref, _ = scipy_optimize.curve_fit(np_decay, X, Y, p0=[2, 0.5, 0.5])
    np.testing.assert_allclose(popt, ref, rtol=1e-7)
    popt, _ = gf.curve_fit(lambda x, a, k, c: a * torch.exp(-k * x) + c, X, Y, bounds=([0, 0, 0], [10, 0.3, 5]))
    ref, _ = scipy_optimize.curve_fit(np_decay, X, Y, bounds=([0, 0, 0], [10, 0.3, 5]))
    np.testing.assert_allclose(popt, ref, rtol=1e-6)


def test_curve_fit_two_dimensional_x():
    xy = np.stack([X, np.sqrt(X) + RNG.random(60)])
    z = 2.0 * xy[0] - 0.5 * xy[1] + 1.0
    popt, _ = gf.curve_fit(lambda v, a, b, c: a * v[0] + b * v[1] + c, xy, z)
    np.testing.assert_allclose(popt, [2.0, -0.5, 1.0], atol=1e-6)


def test_first_order_fit_reports_uncertainties_too():
    r = gf.fit("a*x + b", x=X, y=Y, optimizer="lbfgs", lr=1, epochs=50, dtype="float64")
    lin = gf.fit("a*x + b", x=X, y=Y, dtype="float64")
    assert r.stderr["a"] == pytest.approx(lin.stderr["a"], rel=1e-5)
