"""gf.bootstrap and FitResult.ci(method="bootstrap"): the resampled refits as one fit_many batch.

References are independent of gradfit: simulated coverage against the true parameter, the
analytic OLS / WLS / heteroscedasticity-robust (HC0) standard errors written out with numpy,
scipy's curve_fit covariance, and the Cramer-Rao bound of a Poisson model at scipy's maximum
likelihood estimate.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradfit as gf
from gradfit.errors import ConfigError, DataError, FitError, GradfitWarning

A_TRUE, K_TRUE, NOISE = 2.0, 0.8, 0.05
X_DECAY = np.linspace(0.0, 4.0, 50)


def _decay_data(seed: int):
    rng = np.random.default_rng(seed)
    return A_TRUE * np.exp(-K_TRUE * X_DECAY) + NOISE * rng.standard_normal(X_DECAY.size)


def _coverage(datasets: int, resamples: int):
    """(share of 95% percentile intervals of k holding the true k, mean interval width)."""
    hits, widths = 0, []
    for i in range(datasets):
        y = _decay_data(1000 + i)
        r = gf.fit("a*exp(-k*x)", x=X_DECAY, y=y, init={"a": 1.0, "k": 1.0})
        lo, hi = r.ci(0.95, method="bootstrap", x=X_DECAY, y=y, n=resamples, seed=i)["k"]
        hits += lo < K_TRUE < hi
        widths.append(hi - lo)
    return hits / datasets, float(np.mean(widths))


def _curve_fit_width():
    """2 * 1.96 * the curve_fit standard error of k, averaged over a few datasets."""
    from scipy.optimize import curve_fit

    se = []
    for i in range(10):
        _, pcov = curve_fit(lambda x, a, k: a * np.exp(-k * x), X_DECAY, _decay_data(1000 + i), p0=[1.0, 1.0])
        se.append(np.sqrt(pcov[1, 1]))
    return 2 * 1.96 * float(np.mean(se))


def test_percentile_intervals_cover_and_match_the_asymptotic_width():
    coverage, width = _coverage(datasets=100, resamples=200)
    assert 0.88 <= coverage <= 0.99  # a looser margin at 100 datasets (binomial error 2.4 points)
    assert width == pytest.approx(_curve_fit_width(), rel=0.15)


@pytest.mark.slow
def test_percentile_coverage_is_nominal_over_1000_datasets():
    # percentile intervals cover ~94.2% here (2,000 datasets: 94.4% at 50 points, 94.1% at 100;
    # the t interval 95%): they ignore that the noise scale is estimated. 1,000 datasets put
    # the binomial error at 0.7 points, so the 2-point margin is a real test of that
    coverage, _ = _coverage(datasets=1000, resamples=500)
    assert abs(coverage - 0.95) <= 0.02


def _line(n=200, seed=3, hetero=False):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 10.0, n)
    # heteroscedastic: noisy at both ends, where the slope's leverage is
    sd = 0.1 + 0.08 * (x - 5.0) ** 2 if hetero else np.full(n, 0.5)
    return x, 1.5 * x - 2.0 + sd * rng.standard_normal(n), sd


def test_residual_bootstrap_sd_of_a_slope_equals_the_ols_standard_error():
    x, y, _ = _line()
    r = gf.fit("a*x + b", x=x, y=y)
    boot = gf.bootstrap(r, x=x, y=y, n=4000, seed=0)
    X = np.column_stack([x, np.ones_like(x)])
    beta, rss = np.linalg.lstsq(X, y, rcond=None)[:2]
    s2 = rss[0] / (len(x) - 2)
    se_slope = np.sqrt(s2 * np.linalg.inv(X.T @ X)[0, 0])
    assert boot.std["a"] == pytest.approx(se_slope, rel=0.04)
    assert np.mean(boot.samples[:, 0]) == pytest.approx(beta[0], abs=0.1 * se_slope)


def test_weighted_residual_bootstrap_matches_the_wls_standard_error():
    x, y, sd = _line(hetero=True)
    r = gf.fit("a*x + b", x=x, y=y, sigma=sd)
    boot = gf.bootstrap(r, x=x, y=y, sigma=sd, n=4000, seed=1)
    X, w = np.column_stack([x, np.ones_like(x)]), 1.0 / sd**2
    cov = np.linalg.inv(X.T @ (w[:, None] * X))
    beta = cov @ X.T @ (w * y)
    s2 = np.sum(w * (y - X @ beta) ** 2) / (len(x) - 2)
    assert boot.std["a"] == pytest.approx(np.sqrt(s2 * cov[0, 0]), rel=0.04)


def test_pairs_bootstrap_matches_the_robust_hc0_standard_error():
    # heteroscedastic noise fitted without weights: resampling pairs estimates the sandwich
    # (White HC0) error, which the residual bootstrap (constant variance) does not
    x, y, _ = _line(n=300, seed=5, hetero=True)
    r = gf.fit("a*x + b", x=x, y=y)
    pairs = gf.bootstrap(r, x=x, y=y, n=3000, seed=2, kind="pairs")
    residual = gf.bootstrap(r, x=x, y=y, n=3000, seed=2)
    X = np.column_stack([x, np.ones_like(x)])
    bread = np.linalg.inv(X.T @ X)
    e = y - X @ (bread @ X.T @ y)
    hc0 = bread @ (X.T @ (e[:, None] ** 2 * X)) @ bread
    ols = e @ e / (len(x) - 2) * bread
    assert np.sqrt(hc0[0, 0]) > 1.3 * np.sqrt(ols[0, 0])  # the two errors differ here
    assert pairs.std["a"] == pytest.approx(np.sqrt(hc0[0, 0]), rel=0.06)
    assert residual.std["a"] == pytest.approx(np.sqrt(ols[0, 0]), rel=0.06)
    assert pairs.kind == "pairs" and pairs.samples.shape == (3000, 2)


def test_poisson_parametric_bootstrap_matches_the_cramer_rao_errors():
    from scipy.optimize import minimize

    rng = np.random.default_rng(7)
    x = np.linspace(0.0, 5.0, 100)
    counts = rng.poisson(400.0 * np.exp(-0.5 * x) + 30.0).astype(float)
    r = gf.fit("a*exp(-k*x) + c", x=x, y=counts, loss="poisson", init={"a": 300.0, "k": 0.4, "c": 20.0})
    boot = gf.bootstrap(r, x=x, y=counts, n=2000, seed=0)
    assert boot.kind == "parametric"

    def nll(p):
        mu = p[0] * np.exp(-p[1] * x) + p[2]
        return np.sum(mu - counts * np.log(mu))

    a, k, c = minimize(nll, [300.0, 0.4, 20.0], method="Nelder-Mead",
                       options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}).x
    mu = a * np.exp(-k * x) + c
    J = np.column_stack([np.exp(-k * x), -a * x * np.exp(-k * x), np.ones_like(x)])
    cramer_rao = np.sqrt(np.diag(np.linalg.inv(J.T @ (J / mu[:, None]))))
    for name, expected in zip(("a", "k", "c"), cramer_rao):
        assert boot.std[name] == pytest.approx(expected, rel=0.10)


def test_a_seed_reproduces_the_intervals_and_another_seed_differs():
    y = _decay_data(11)
    r = gf.fit("a*exp(-k*x)", x=X_DECAY, y=y, init={"a": 1.0, "k": 1.0})
    first = r.ci(0.9, method="bootstrap", x=X_DECAY, y=y, n=100, seed=42)
    again = r.ci(0.9, method="bootstrap", x=X_DECAY, y=y, n=100, seed=42)
    other = r.ci(0.9, method="bootstrap", x=X_DECAY, y=y, n=100, seed=43)
    assert first == again
    assert first["k"] != other["k"]
    # 95% percentile inside the 99% one; basic reflects the percentile quantiles about the estimate
    boot = gf.bootstrap(r, x=X_DECAY, y=y, n=300, seed=0)
    lo95, hi95 = boot.ci(0.95)["k"]
    lo99, hi99 = boot.ci(0.99)["k"]
    assert lo99 < lo95 < r.params["k"] < hi95 < hi99
    q_lo, q_hi = np.quantile(boot.samples[:, 1], [0.025, 0.975])
    assert boot.ci(0.95, "basic")["k"] == pytest.approx((2 * r.params["k"] - q_hi, 2 * r.params["k"] - q_lo))


def test_bca_needs_the_jackknife_and_stays_near_the_percentile_interval():
    y = _decay_data(12)
    r = gf.fit("a*exp(-k*x)", x=X_DECAY, y=y, init={"a": 1.0, "k": 1.0})
    plain = gf.bootstrap(r, x=X_DECAY, y=y, n=400, seed=0)
    with pytest.raises(ConfigError, match="bca=True"):
        plain.ci(0.95, "bca")
    boot = gf.bootstrap(r, x=X_DECAY, y=y, n=400, seed=0, bca=True)
    lo, hi = boot.ci(0.95, "bca")["k"]
    p_lo, p_hi = boot.ci(0.95)["k"]
    assert lo < r.params["k"] < hi
    assert hi - lo == pytest.approx(p_hi - p_lo, rel=0.25)
    assert abs(boot.acceleration["k"]) < 0.1  # nearly symmetric problem


def test_refits_that_do_not_converge_are_dropped_counted_and_warned():
    y = _decay_data(13)
    r = gf.fit("a*exp(-k*x)", x=X_DECAY, y=y, init={"a": 1.0, "k": 1.0})
    with pytest.warns(GradfitWarning, match="did not converge"):
        boot = gf.bootstrap(r, x=X_DECAY, y=y, n=200, seed=0, max_iter=4)
    assert boot.n_failed > 10
    assert len(boot.samples) + boot.n_failed == 200
    assert sum(boot.failed_status.values()) == boot.n_failed
    assert set(boot.failed_status) <= {"max_iterations", "stalled", "singular"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none with enough iterations
        assert gf.bootstrap(r, x=X_DECAY, y=y, n=200, seed=0).n_failed == 0


def test_bounds_and_fixed_parameters_carry_over_to_the_refits():
    y = _decay_data(14)
    r = gf.fit("a*exp(-k*x) + c", x=X_DECAY, y=y, init={"a": 1.0, "k": 1.0, "c": 0.0}, fixed=["c"],
               bounds={"k": (0.79, 5.0)})
    boot = gf.bootstrap(r, x=X_DECAY, y=y, n=100, seed=0)
    assert boot.names == ("a", "k")
    assert boot.samples[:, 1].min() >= 0.79


@pytest.mark.parametrize("kwargs, error, match", [
    ({"n": 5}, ConfigError, "n must be"),
    ({"kind": "jackknife"}, ConfigError, "kind must be"),
    ({"interval": "studentized"}, ConfigError, "interval must be"),
])
def test_bad_options_are_refused(kwargs, error, match):
    y = _decay_data(15)
    r = gf.fit("a*exp(-k*x)", x=X_DECAY, y=y, init={"a": 1.0, "k": 1.0})
    with pytest.raises(error, match=match):
        r.ci(0.95, method="bootstrap", x=X_DECAY, y=y, **kwargs)


def test_missing_or_foreign_data_and_unsupported_fits_are_refused():
    y = _decay_data(16)
    r = gf.fit("a*exp(-k*x)", x=X_DECAY, y=y, init={"a": 1.0, "k": 1.0})
    with pytest.raises(ConfigError, match="need the fit's data"):
        r.ci(0.95, method="bootstrap")
    with pytest.raises(DataError):
        gf.bootstrap(r, x=X_DECAY, y=y + 0.3)
    counts = np.random.default_rng(0).poisson(5.0, 30).astype(float)
    p = gf.fit("c + b*x", x=np.arange(30.0), y=counts, loss="poisson", init={"c": 5.0, "b": 0.0})
    with pytest.raises(ConfigError, match="parametric"):
        gf.bootstrap(p, x=np.arange(30.0), y=counts, kind="residual")
    net = gf.fit("mlp", x=X_DECAY, y=y, epochs=2, hidden=(4,))
    with pytest.raises((ConfigError, FitError)):
        net.ci(0.95, method="bootstrap", x=X_DECAY, y=y)
    with pytest.raises(ConfigError, match="scalar-parameter"):
        gf.bootstrap(net, x=X_DECAY, y=y)


def test_each_refit_equals_curve_fit_on_the_same_resample():
    # the resampling written out independently (centred residuals scaled by sqrt(m/(m-k)), the
    # same Generator calls), each resample refitted by scipy with tight tolerances
    from scipy.optimize import curve_fit

    y = _decay_data(17)
    r = gf.fit("a*exp(-k*x)", x=X_DECAY, y=y, init={"a": 1.0, "k": 1.0})
    boot = gf.bootstrap(r, x=X_DECAY, y=y, n=30, seed=4)
    mu = r.params["a"] * np.exp(-r.params["k"] * X_DECAY)
    e = (y - mu) - np.mean(y - mu)
    e *= np.sqrt(len(y) / (len(y) - 2))
    rows = np.random.default_rng(4).integers(0, len(y), size=(30, len(y)))
    for i, ystar in enumerate(mu + e[rows]):
        p, _ = curve_fit(lambda x, a, k: a * np.exp(-k * x), X_DECAY, ystar, p0=[r.params["a"], r.params["k"]],
                         xtol=1e-14, ftol=1e-14, gtol=1e-14)
        np.testing.assert_allclose(boot.samples[i], p, rtol=1e-6)


def test_a_loaded_result_bootstraps_and_without_gradfit_fitting_says_what_to_call(tmp_path):
    import subprocess
    import sys

    y = _decay_data(18)
    r = gf.fit("a*exp(-k*x)", x=X_DECAY, y=y, init={"a": 1.0, "k": 1.0})
    path = tmp_path / "fit.json"
    r.save(path)
    again = gf.load(path).ci(0.95, method="bootstrap", x=X_DECAY, y=y, n=50, seed=3)
    assert again == r.ci(0.95, method="bootstrap", x=X_DECAY, y=y, n=50, seed=3)
    code = ("import sys\nfrom gradfit.results.fit_result import load\nfrom gradfit.errors import ConfigError\n"
            f"try:\n    load({str(path)!r}).ci(0.95, method='bootstrap', x=[0.0], y=[0.0])\n"
            "except ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert "gf.bootstrap(r, x=..., y=...)" in out.stdout, out.stderr
    # gf.load in a fresh process registers the refitting methods itself
    fresh = ("import gradfit as gf\n"
             f"print(gf.load({str(path)!r}).ci(0.95, method='bootstrap', x={X_DECAY.tolist()!r}, "
             f"y={y.tolist()!r}, n=50, seed=3)['k'])\n")
    out = subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True, timeout=120, check=False)
    assert out.stdout.strip() == str(again["k"]), out.stderr


def test_fit_many_with_per_fit_x_over_several_chunks():
    # the pairs kind's inputs are (resamples, points): each chunk must see its own rows of x
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 10.0, (50, 20))
    y = 2.0 * x + 1.0 + 0.1 * rng.standard_normal(x.shape)
    r = gf.fit_many("a*x + b", x, y, init={"a": 1.0, "b": 0.0}, chunk_size=16, dtype="float64",
                    tol=1e-12)
    expected = [np.polyfit(xi, yi, 1) for xi, yi in zip(x, y)]
    np.testing.assert_allclose(np.column_stack([r.params["a"], r.params["b"]]), expected, rtol=1e-7)
