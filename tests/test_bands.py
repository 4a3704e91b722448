"""Confidence and prediction bands (results/bands.py): equal to statsmodels for linear models, to an
independent delta-method computation (scipy's fit, analytic Jacobian) for a nonlinear one, and
covering the true curve at the nominal rate over simulated datasets."""

import numpy as np
import pytest

import gradfit as gf
from gradfit.errors import ConfigError, DataError

sm = pytest.importorskip("statsmodels.api")
scipy_stats = pytest.importorskip("scipy.stats")
from scipy.optimize import curve_fit  # noqa: E402  (after the importorskip of scipy)

RTOL = 1e-8
X_NEW = np.array([-2.0, 0.0, 1.3, 4.9, 7.5, 12.0])


def _same_band(band, reference, rtol=RTOL):
    """Centres and half-widths agree to ``rtol`` (bounds near zero make a relative test of the
    bounds themselves meaningless)."""
    lo, hi = band
    ref = np.asarray(reference)
    ref_lo, ref_hi = ref[:, 0], ref[:, 1]
    np.testing.assert_allclose((lo + hi) / 2, (ref_lo + ref_hi) / 2, rtol=rtol, atol=rtol * np.abs(ref).max())
    np.testing.assert_allclose((hi - lo) / 2, (ref_hi - ref_lo) / 2, rtol=rtol)


def _data(seed=0, n=25):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0.0, 8.0, n))
    sigma = rng.uniform(0.3, 2.0, n)
    return rng, x, sigma


@pytest.mark.parametrize("formula, design", [
    ("a*x + b", lambda x: np.column_stack([x, np.ones_like(x)])),
    ("a*x**2 + b*x + c", lambda x: np.column_stack([x * x, x, np.ones_like(x)])),
])
def test_ols_bands_equal_statsmodels(formula, design):
    rng, x, _ = _data(1)
    y = 0.4 * x * x - 1.5 * x + 2.0 + rng.normal(0.0, 1.0, x.size)
    r = gf.fit(formula, x=x, y=y)
    pred = sm.OLS(y, design(x)).fit().get_prediction(design(X_NEW))
    for level in (0.95, 0.683):
        _same_band(r.band(X_NEW, level), pred.conf_int(alpha=1 - level))
        _same_band(r.band(X_NEW, level, kind="prediction"), pred.conf_int(obs=True, alpha=1 - level))


@pytest.mark.parametrize("formula, design", [
    ("a*x + b", lambda x: np.column_stack([x, np.ones_like(x)])),
    ("a*x**2 + b*x + c", lambda x: np.column_stack([x * x, x, np.ones_like(x)])),
])
def test_wls_bands_equal_statsmodels(formula, design):
    rng, x, sigma = _data(2)
    y = 0.4 * x * x - 1.5 * x + 2.0 + rng.normal(0.0, sigma)
    r = gf.fit(formula, x=x, y=y, sigma=sigma)
    sigma_new = np.linspace(0.5, 1.5, X_NEW.size)
    pred = sm.WLS(y, design(x), weights=1 / sigma**2).fit().get_prediction(design(X_NEW), weights=1 / sigma_new**2)
    _same_band(r.band(X_NEW), pred.conf_int())
    frame = pred.summary_frame(alpha=0.05)
    _same_band(r.band(X_NEW, kind="prediction", sigma=sigma_new), frame[["obs_ci_lower", "obs_ci_upper"]].to_numpy())


def test_absolute_sigma_uses_z_and_sigma():
    rng, x, sigma = _data(3)
    y = 2.0 * x + 1.0 + rng.normal(0.0, sigma)
    r = gf.fit("a*x + b", x=x, y=y, sigma=sigma, absolute_sigma=True)
    X = np.column_stack([x, np.ones_like(x)]) / sigma[:, None]
    cov = np.linalg.inv(X.T @ X)  # known scale: no chi-square factor
    Xn = np.column_stack([X_NEW, np.ones_like(X_NEW)])
    f = Xn @ np.linalg.solve(X.T @ X, X.T @ (y / sigma))
    var = np.einsum("ij,jk,ik->i", Xn, cov, Xn)
    z = scipy_stats.norm.ppf(0.975)
    _same_band(r.band(X_NEW), np.column_stack([f - z * np.sqrt(var), f + z * np.sqrt(var)]))
    s_new = np.full(X_NEW.size, 0.8)
    half = z * np.sqrt(var + s_new**2)
    _same_band(r.band(X_NEW, kind="prediction", sigma=s_new), np.column_stack([f - half, f + half]))


def _decay(x, a, k, c):
    return a * np.exp(-k * x) + c


def _decay_jacobian(x, a, k, c):
    e = np.exp(-k * x)
    return np.column_stack([e, -a * x * e, np.ones_like(x)])


def test_nonlinear_band_equals_independent_delta_method():
    rng = np.random.default_rng(4)
    x = np.linspace(0.0, 5.0, 30)
    y = _decay(x, 3.0, 0.8, 0.5) + rng.normal(0.0, 0.08, x.size)
    r = gf.fit("a*exp(-k*x) + c", x=x, y=y, init={"a": 1.0, "k": 1.0, "c": 0.0}, tol=1e-14)
    p, cov = curve_fit(_decay, x, y, p0=[1.0, 1.0, 0.0], xtol=1e-15, ftol=1e-15, gtol=1e-15)
    jac = _decay_jacobian(X_NEW, *p)
    var = np.einsum("ij,jk,ik->i", jac, cov, jac)
    resid = y - _decay(x, *p)
    s2 = resid @ resid / (x.size - 3)
    t = scipy_stats.t.ppf(0.975, x.size - 3)
    f = _decay(X_NEW, *p)
    _same_band(r.band(X_NEW), np.column_stack([f - t * np.sqrt(var), f + t * np.sqrt(var)]), rtol=1e-6)
    half = t * np.sqrt(var + s2)
    _same_band(r.band(X_NEW, kind="prediction"), np.column_stack([f - half, f + half]), rtol=1e-6)


def test_fixed_and_tied_parameters_match_the_substituted_formula():
    rng = np.random.default_rng(5)
    x = np.linspace(0.0, 5.0, 30)
    y = _decay(x, 3.0, 0.8, 0.5) + rng.normal(0.0, 0.08, x.size)
    start = {"a": 1.0, "k": 1.0, "c": 0.5}
    fixed = gf.fit("a*exp(-k*x) + c", x=x, y=y, init=start, fixed=["c"], tol=1e-14)
    plain = gf.fit("a*exp(-k*x) + 0.5", x=x, y=y, init={"a": 1.0, "k": 1.0}, tol=1e-14)
    _same_band(fixed.band(X_NEW), np.column_stack(plain.band(X_NEW)), rtol=1e-7)
    tied = gf.fit("a*exp(-k*x) + c", x=x, y=y, init=start, tie={"c": "a/6"}, tol=1e-14)
    substituted = gf.fit("a*exp(-k*x) + a/6", x=x, y=y, init={"a": 1.0, "k": 1.0}, tol=1e-14)
    _same_band(tied.band(X_NEW), np.column_stack(substituted.band(X_NEW)), rtol=1e-7)


def test_function_models_give_the_formula_band():
    import torch

    rng = np.random.default_rng(6)
    x = np.linspace(0.0, 5.0, 30)
    y = _decay(x, 3.0, 0.8, 0.5) + rng.normal(0.0, 0.08, x.size)
    init = {"a": 1.0, "k": 1.0, "c": 0.0}
    formula = gf.fit("a*exp(-k*x) + c", x=x, y=y, init=init, tol=1e-14)

    def torch_decay(x, a, k, c):  # jacfwd
        return a * torch.exp(-k * x) + c

    expected = np.column_stack(formula.band(X_NEW))
    _same_band(gf.fit(torch_decay, x=x, y=y, init=init, tol=1e-14).band(X_NEW), expected, rtol=1e-6)
    # a numpy-only function: finite differences (central, ~1e-10 relative)
    _same_band(gf.fit(_decay, x=x, y=y, init=init, tol=1e-14).band(X_NEW), expected, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:The Identity link function")
def test_poisson_band_equals_statsmodels_glm():
    rng = np.random.default_rng(7)
    x = np.linspace(0.0, 10.0, 40)
    counts = rng.poisson(5.0 + 3.0 * x)
    r = gf.fit("a*x + b", x=x, y=counts, init={"a": 1.0, "b": 1.0}, loss="poisson", tol=1e-14)
    X = np.column_stack([x, np.ones_like(x)])
    glm = sm.GLM(counts, X, family=sm.families.Poisson(link=sm.families.links.Identity())).fit(tol=1e-14)
    xn = X_NEW[X_NEW >= 0]
    _same_band(r.band(xn), glm.get_prediction(np.column_stack([xn, np.ones_like(xn)])).conf_int(), rtol=1e-6)
    # prediction: the count's own variance mu added, normal quantile
    lo, hi = r.band(xn)
    mu = (lo + hi) / 2
    half_c = (hi - lo) / 2
    z = scipy_stats.norm.ppf(0.975)
    plo, phi = r.band(xn, kind="prediction")
    np.testing.assert_allclose((phi - plo) / 2, np.sqrt(half_c**2 + z * z * mu), rtol=1e-10)


def _batch_data(n_fits, seed, n=20):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 4.0, n)
    truth = _decay(x, 2.0, 0.9, 0.3)
    return x, truth + rng.normal(0.0, 0.1, (n_fits, n))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_confidence_band_covers_the_true_curve(dtype):
    # 2,000 datasets fit in one fit_many call (well under a second): the binomial standard
    # error of a coverage is 0.5 points, so 1.5 points is three of them
    x, y = _batch_data(2000, seed=8)
    xn = np.array([0.2, 1.5, 3.0, 4.5])
    b = gf.fit_many("a*exp(-k*x) + c", x, y, init={"a": 1.0, "k": 1.0, "c": 0.0}, dtype=dtype)
    assert b.converged.mean() > 0.99
    lo, hi = b.band(xn, 0.95)
    inside = (lo <= _decay(xn, 2.0, 0.9, 0.3)) & (_decay(xn, 2.0, 0.9, 0.3) <= hi)
    coverage = inside[b.converged].mean(axis=0)
    assert np.all(np.abs(coverage - 0.95) <= 0.015), coverage


def test_batch_band_equals_fit_band_per_fit():
    x, y = _batch_data(3, seed=9)
    sigma = np.linspace(0.05, 0.15, x.size)
    init = {"a": 1.0, "k": 1.0, "c": 0.0}
    b = gf.fit_many("a*exp(-k*x) + c", x, y, init=init, sigma=sigma, dtype="float64", tol=1e-12)
    s_new = np.full(X_NEW.size, 0.1)
    for kind, extra in (("confidence", {}), ("prediction", {"sigma": s_new})):
        lo, hi = b.band(X_NEW, 0.9, kind, **extra)
        assert lo.shape == hi.shape == (3, X_NEW.size)
        for i in range(3):
            r = gf.fit("a*exp(-k*x) + c", x=x, y=y[i], init=init, sigma=sigma, tol=1e-14)
            _same_band((lo[i], hi[i]), np.column_stack(r.band(X_NEW, 0.9, kind, **extra)), rtol=1e-6)
    # float32 fits: the same bands to float32's precision
    lo32, hi32 = gf.fit_many("a*exp(-k*x) + c", x, y, init=init, sigma=sigma).band(X_NEW, 0.9)
    lo, hi = b.band(X_NEW, 0.9)
    np.testing.assert_allclose(hi32 - lo32, hi - lo, rtol=1e-3)


def test_batch_band_survives_npz_and_per_fit_inputs(tmp_path):
    from gradfit.results.batch_result import BatchResult

    x, y = _batch_data(2, seed=10)
    b = gf.fit_many("a*exp(-k*x) + c", x, y, init={"a": 1.0, "k": 1.0, "c": 0.0}, dtype="float64")
    b.save(tmp_path / "r.npz")
    loaded = BatchResult.load(tmp_path / "r.npz")
    np.testing.assert_array_equal(loaded.covariance, b.covariance)
    np.testing.assert_array_equal(loaded.band(X_NEW)[1], b.band(X_NEW)[1])
    per_fit = np.stack([X_NEW, X_NEW[::-1]])
    lo, _ = b.band({"x": per_fit})
    np.testing.assert_array_equal(lo[1], b.band(X_NEW[::-1])[0][1])
    b.save(tmp_path / "r.csv")
    with pytest.raises(ConfigError, match="no per-fit covariance"):
        BatchResult.load(tmp_path / "r.csv").band(X_NEW)


def test_bad_input():
    rng, x, sigma = _data(11)
    y = 2.0 * x + 1.0 + rng.normal(0.0, sigma)
    r = gf.fit("a*x + b", x=x, y=y)
    with pytest.raises(ConfigError, match="level"):
        r.band(X_NEW, 1.5)
    with pytest.raises(ConfigError, match="kind"):
        r.band(X_NEW, kind="credible")
    with pytest.raises(ConfigError, match="drop sigma"):
        r.band(X_NEW, kind="prediction", sigma=1.0)
    with pytest.raises(ConfigError, match="confidence band"):
        r.band(X_NEW, sigma=1.0)
    weighted = gf.fit("a*x + b", x=x, y=y, sigma=sigma)
    with pytest.raises(ConfigError, match="pass sigma="):
        weighted.band(X_NEW, kind="prediction")
    with pytest.raises(DataError, match="positive"):
        weighted.band(X_NEW, kind="prediction", sigma=-np.ones(X_NEW.size))
    with pytest.raises(DataError):
        weighted.band(X_NEW, kind="prediction", sigma=np.ones(3))
    poisson = gf.fit("a*x + b", x=x, y=np.round(np.abs(y)), init={"a": 1.0, "b": 1.0}, loss="poisson")
    with pytest.raises(ConfigError, match="mu"):
        poisson.band(X_NEW, kind="prediction", sigma=1.0)
    net = gf.fit("mlp", x=x, y=y, hidden=(4,), epochs=3, progress=False)
    with pytest.raises(ConfigError, match="least-squares or likelihood fit"):
        net.band(X_NEW)


def test_plot_fit_draws_the_confidence_band(tmp_path, monkeypatch):
    from matplotlib.collections import PolyCollection

    import gradfit.results.plot as plot

    drawn = []
    real_save = plot._save
    monkeypatch.setattr(plot, "_save", lambda fig, path: (drawn.append(fig), real_save(fig, path)))
    rng, x, _ = _data(12)
    y = 2.0 * x + 1.0 + rng.normal(0.0, 1.0, x.size)
    r = gf.fit("a*x + b", x=x, y=y)
    r.plot_fit(tmp_path / "fit.png", x, y)
    r.plot_fit(tmp_path / "plain.png", x, y, band_level=None)
    assert (tmp_path / "fit.png").read_bytes()[:4] == b"\x89PNG"
    with_band, without = (fig.axes[0] for fig in drawn)
    bands = [c for c in with_band.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1 and bands[0].get_label() == "95% confidence band"
    assert not [c for c in without.collections if isinstance(c, PolyCollection)]
    # the shaded region spans exactly the band on the plotted grid
    grid = np.linspace(x.min(), x.max(), 400)
    lo, hi = r.band(grid)
    ys = bands[0].get_paths()[0].vertices[:, 1]
    np.testing.assert_allclose([ys.min(), ys.max()], [lo.min(), hi.max()], rtol=1e-12)


def test_fit_band_after_load_and_with_two_inputs(tmp_path):
    rng = np.random.default_rng(13)
    u, v = rng.uniform(0.0, 2.0, (2, 40))
    z = 1.5 * u - 0.7 * v + 0.3 + rng.normal(0.0, 0.1, u.size)
    r = gf.fit("z ~ a*u + b*v + c", data={"u": u, "v": v, "z": z})
    new = {"u": np.array([0.0, 1.0, 3.0]), "v": np.array([2.0, 0.5, -1.0])}
    X = np.column_stack([u, v, np.ones_like(u)])
    pred = sm.OLS(z, X).fit().get_prediction(np.column_stack([new["u"], new["v"], np.ones(3)]))
    _same_band(r.band(new), pred.conf_int())
    r.save(tmp_path / "fit.json")
    loaded = gf.load(tmp_path / "fit.json")
    np.testing.assert_array_equal(np.array(loaded.band(new, kind="prediction")),
                                  np.array(r.band(new, kind="prediction")))


def test_bands_at_no_points_and_of_results_that_have_none():
    x = np.linspace(0, 4, 40)
    y = 3 * np.exp(-0.8 * x) + 0.3 + np.random.default_rng(0).normal(0, 0.05, 40)
    r = gf.fit("a*exp(-k*x) + c", x=x, y=y, init={"a": 1, "k": 1, "c": 0})
    lo, hi = r.band([])
    assert lo.shape == hi.shape == (0,)
    b = gf.fit_many(models=["a*exp(-k*x)", "a*exp(-k*x) + c"], x=x, y=np.stack([y, y]))
    with pytest.raises(gf.ConfigError, match="models="):
        b.band([1.0])
