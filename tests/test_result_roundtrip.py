"""Issue 11 (2.12 and 13): results survive save and load bit for bit (report, predict, ci);
ci() uses Student t at the fit's dof (z with absolute sigma), checked against values computed
independently; the report states its AIC/BIC and interval conventions; repr is short."""

import dataclasses
import json
import math
import sys
import warnings

import numpy as np
import pytest

import gradfit as gf
from gradfit.stats import _t_quantile_mpmath, t_quantile, z_quantile

scipy_stats = pytest.importorskip("scipy.stats")
scipy_optimize = pytest.importorskip("scipy.optimize")

RNG = np.random.default_rng(11)
X = np.linspace(0.0, 3.0, 30)
Y = 2.0 * np.exp(-1.7 * X) + 0.3 + RNG.normal(0, 0.02, X.shape)
SIGMA = 0.02 + 0.01 * X
F64 = dict(dtype="float64")

CASES = {
    "linear": ("a*x + b", dict(x=X, y=1.5 * X - 0.4 + RNG.normal(0, 0.05, X.shape)), F64),
    "bounded-lm": ("y ~ A*exp(-k*x) + c", dict(x=X, y=Y), dict(F64, init={"A": 1, "k": 0.5, "c": 0},
                                                            bounds={"k": (0, None), "A": (None, 10)})),
    "fixed-tie": ("A*exp(-k*x) + c + d", dict(x=X, y=Y), dict(F64, init={"A": 1, "k": 1, "c": 0.3, "d": 0},
                                                            fixed=["c"], tie={"d": "A/100"})),
    "weighted-sigma": ("A*exp(-k*x) + c", dict(x=X, y=Y, sigma=SIGMA), F64),
    "absolute-sigma": ("A*exp(-k*x) + c", dict(x=X, y=Y, sigma=SIGMA), dict(F64, absolute_sigma=True)),
    "mlp": ("mlp", dict(x=X, y=Y), dict(hidden=8, epochs=30, optimizer="adam", normalize=True, progress=False)),
    "validation-split": ("A*exp(-k*x) + c", dict(x=X, y=Y), dict(F64, val_fraction=0.3)),
}


@pytest.fixture(scope="module", params=list(CASES))
def saved(request, tmp_path_factory):
    model, data, opts = CASES[request.param]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = gf.fit(model, **data, **opts)
    path = tmp_path_factory.mktemp(request.param) / "fit.json"
    r.save(path)
    return request.param, r, gf.load(path), data


def test_loaded_result_reports_predicts_and_gives_ci_bit_for_bit(saved):
    case, r, again, data = saved
    assert again.report() == r.report()
    assert repr(again) == repr(r)
    x_new = np.linspace(-0.5, 3.5, 17)
    np.testing.assert_array_equal(again.predict(x_new), r.predict(x_new))
    assert again.stats == r.stats and again.stderr == r.stderr and again.free == r.free
    if r.stderr is None:
        assert case == "mlp"
        return
    np.testing.assert_array_equal(again.covariance, r.covariance)
    np.testing.assert_array_equal(again.correlation, r.correlation)
    for level in (0.5, 0.9, 0.95, 0.99):
        assert again.ci(level) == r.ci(level)  # tuples of floats: exact equality


def test_bounds_written_as_strings_report_after_load(tmp_path):
    """A document whose bounds hold "inf" strings (format 1, or edited by hand) loads with
    numeric bounds, so the report formats them (it crashed with "Unknown format code 'g'")."""
    from gradfit.results.persist import _checksum

    model, data, opts = CASES["bounded-lm"]
    r = gf.fit(model, **data, **opts)
    path = tmp_path / "fit.json"
    r.save(path)
    doc = json.loads(path.read_text())
    doc["settings"]["bounds"] = {"k": [0.0, "inf"], "A": ["-inf", 10.0]}
    doc["checksum"] = _checksum(doc)
    path.write_text(json.dumps(doc))
    loaded = gf.load(path)
    assert loaded.settings["bounds"] == {"k": [0.0, math.inf], "A": [-math.inf, 10.0]}
    assert loaded.report() == r.report()
    assert "bounds [0, inf]" in loaded.report() and "bounds [-inf, 10]" in loaded.report()


# -- ci(): Student t at dof = n - n_free, z with absolute sigma ----------------------------------
def _ols(x, y):
    """Independent OLS: coefficients, standard errors and dof (statsmodels' conf_int recipe)."""
    design = np.column_stack([x, np.ones_like(x)])
    coef, rss, *_ = np.linalg.lstsq(design, y, rcond=None)
    dof = len(y) - 2
    cov = rss[0] / dof * np.linalg.inv(design.T @ design)
    return coef, np.sqrt(np.diag(cov)), dof


@pytest.mark.parametrize("n", [4, 5, 8, 30])
def test_ci_of_a_line_is_the_ols_t_interval(n):
    x = np.linspace(0, 1, n)
    y = 0.7 * x + 0.2 + 0.05 * np.cos(11 * x)
    r = gf.fit("a*x + b", x=x, y=y, dtype="float64")
    coef, se, dof = _ols(x, y)
    assert r.stats["dof"] == dof
    for level in (0.68, 0.9, 0.95, 0.99):
        t = scipy_stats.t.ppf(0.5 + level / 2, dof)
        for name, c, s in zip("ab", coef, se):
            lo, hi = r.ci(level)[name]
            assert lo == pytest.approx(c - t * s, rel=1e-9, abs=1e-12)
            assert hi == pytest.approx(c + t * s, rel=1e-9, abs=1e-12)
    lo, hi = r.ci(0.95)["a"]
    z_width = 2 * 1.959963984540054 * se[0]
    assert hi - lo > z_width * (1.5 if n == 4 else 1.0)  # t(2) = 4.30 vs z = 1.96


def test_ci_of_a_nonlinear_fit_is_the_t_interval_of_curve_fit():
    def f(x, a, k, c):
        return a * np.exp(-k * x) + c

    x, y = X[:9], Y[:9]  # dof 6: t(0.975, 6) = 2.447 vs z = 1.960
    popt, pcov = scipy_optimize.curve_fit(f, x, y, p0=[1, 1, 0], xtol=1e-14, ftol=1e-14, gtol=1e-14)
    r = gf.fit("a*exp(-k*x) + c", x=x, y=y, dtype="float64", init={"a": 1, "k": 1, "c": 0})
    t = scipy_stats.t.ppf(0.975, len(x) - 3)
    for name, value, var in zip("akc", popt, np.diag(pcov)):
        lo, hi = r.ci(0.95)[name]
        assert (lo + hi) / 2 == pytest.approx(value, rel=1e-7)
        assert (hi - lo) / 2 == pytest.approx(t * math.sqrt(var), rel=1e-6)


def test_ci_with_absolute_sigma_uses_z():
    x, y, s = X[:6], Y[:6], SIGMA[:6]
    r = gf.fit("a*x + b", x=x, y=y, sigma=s, absolute_sigma=True, dtype="float64")
    design = np.column_stack([x, np.ones_like(x)]) / s[:, None]
    se = np.sqrt(np.diag(np.linalg.inv(design.T @ design)))
    for name, e in zip("ab", se):
        lo, hi = r.ci(0.9)[name]
        assert (hi - lo) / 2 == pytest.approx(scipy_stats.norm.ppf(0.95) * e, rel=1e-9)
    assert "ci(): value +/- z * stderr" in r.report()


def test_t_quantiles_against_scipy_and_the_mpmath_fallback(monkeypatch):
    for dof in (1, 2, 3, 4.5, 10, 100, 1e5):
        for p in (0.55, 0.8, 0.95, 0.975, 0.995, 0.9995, 0.025):
            expected = scipy_stats.t.ppf(p, dof)
            assert t_quantile(p, dof) == pytest.approx(expected, rel=1e-13)
            assert _t_quantile_mpmath(p, dof) == pytest.approx(expected, rel=1e-13)
    assert t_quantile(0.975, math.inf) == z_quantile(0.975)
    assert math.isnan(t_quantile(0.975, 0)) and t_quantile(0.5, 3) == 0.0
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # as without scipy
    assert t_quantile(0.975, 3) == _t_quantile_mpmath(0.975, 3)
    assert t_quantile(0.975, 3) == pytest.approx(3.182446305284263, rel=1e-14)  # tables: 3.18245
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_ci_with_no_degrees_of_freedom_is_nan():
    r = gf.fit("a*x + b", x=[0.0, 1.0], y=[1.0, 2.0], dtype="float64")
    assert r.stats["dof"] == 0
    assert all(math.isnan(v) for pair in r.ci().values() for v in pair)


# -- report conventions and repr ---------------------------------------------------------------------
def test_report_states_the_aic_bic_convention_with_its_numbers():
    model, data, opts = CASES["weighted-sigma"]
    r = gf.fit(model, **data, **opts)
    resid = (r.predict(X) - Y) / SIGMA
    chi2, n, k = float(resid @ resid), len(X), 3
    text = r.report()
    assert "AIC = n ln(chi2/n) + 2k, BIC = n ln(chi2/n) + k ln(n), k = 3 free parameters (lmfit's convention)" in text
    assert r.stats["aic"] == pytest.approx(n * math.log(chi2 / n) + 2 * k, rel=1e-9)
    assert r.stats["bic"] == pytest.approx(n * math.log(chi2 / n) + k * math.log(n), rel=1e-9)
    assert f"t(dof={n - k})" in text
    fixed = gf.fit(*CASES["fixed-tie"][:1], **CASES["fixed-tie"][1], **CASES["fixed-tie"][2])
    assert "k = 2 free parameters" in fixed.report()  # fixed c and tied d are not free


def test_repr_is_short_for_big_networks_long_histories_and_many_parameters():
    xs = RNG.uniform(-1, 1, (50, 2))
    r = gf.fit("mlp", x=xs, y=xs[:, 0], hidden=(100, 96), epochs=2, progress=False)
    assert sum(p.numel() for p in r.model.module.parameters()) > 10_000
    long = dataclasses.replace(r, history={k: list(np.linspace(1, 0, 5000)) for k in ("train_loss", "val_loss", "lr")},
                               message="m" * 5000, notes=("n" * 3000,) * 5)
    assert len(repr(long)) < 500 and "\n" not in repr(long) and "10" in repr(long)
    formula = " + ".join(f"c{i}*x**{i}" for i in range(25))
    with warnings.catch_warnings():  # 25 powers of x on 30 points are not separable: not under test here
        warnings.simplefilter("ignore")
        many = gf.fit(formula, x=X, y=Y, dtype="float64")
    text = repr(many)
    assert len(text) < 500 and "(19 more)" in text and str(many.status) in text
