"""Weights at their edges (a new user's trial, issue 13's ninth session): weights far from 1,
points of weight 0, sigma's checks and messages. Reference values come from scipy's curve_fit
at tight tolerances with the exact Jacobian, and from the statistics' definitions; behaviour
that is defined as "the same as the rows dropped" is compared with that fit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit

import gradfit as gf

X = np.linspace(0, 5, 30)
Y = 3 * np.exp(-0.7 * X) + 0.5 + 0.05 * np.cos(13 * X)
F = "a*exp(-k*x)+c"
INIT = {"a": 2.0, "k": 1.0, "c": 0.1}
W = np.random.default_rng(1).uniform(0.5, 2.0, X.size)


def _decay(x, a, k, c):
    return a * np.exp(-k * x) + c


def _decay_jac(x, a, k, c):
    e = np.exp(-k * x)
    return np.column_stack([e, -a * x * e, np.ones_like(x)])


def _scipy(x, y, sigma, absolute_sigma=False):
    """curve_fit at tight tolerances with the exact Jacobian: the reference."""
    return curve_fit(_decay, x, y, p0=[2.0, 1.0, 0.1], sigma=sigma, absolute_sigma=absolute_sigma, jac=_decay_jac,
                     ftol=1e-15, xtol=1e-15, gtol=1e-15)


def _statistics(x, y, w, params):
    """n, dof, chisqr, redchi, rss, rmse, r2, aic, bic of a weighted fit at ``params``, from their
    definitions (lmfit's AIC/BIC), over the points of weight > 0."""
    used = w > 0
    r = _decay(x, *params) - y
    n, k = int(used.sum()), 3
    chi2 = float(np.sum(w * r * r))
    rss = float(np.sum(r[used] ** 2))
    mean = np.sum(w * y) / np.sum(w)
    like = n * np.log(chi2 / n)
    return {"n": n, "dof": n - k, "chisqr": chi2, "redchi": chi2 / (n - k), "rss": rss, "rmse": np.sqrt(rss / n),
            "r2": 1 - chi2 / np.sum(w * (y - mean) ** 2), "aic": like + 2 * k, "bic": like + np.log(n) * k}


@pytest.mark.parametrize("scale", [1e-200, 1e-250, 1e-300, 1e200, 1e300])
@pytest.mark.parametrize("compile_", [False, True])
@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_weights_far_from_one(scale, compile_, absolute_sigma):
    # weights of 1e-200 made numpy's trust region divide by zero. The reference: scipy on the
    # same weights divided by their largest (the same minimizer), whose absolute covariance
    # scales by 1/largest; the statistics from their definitions at the fitted parameters
    w = W * scale
    r = gf.fit(F, x=X, y=Y, init=INIT, weights=w, compile=compile_, absolute_sigma=absolute_sigma)
    assert r.status == "converged"
    p, cov = _scipy(X, Y, 1 / np.sqrt(W / W.max()), absolute_sigma)
    if absolute_sigma:
        cov = cov / w.max()
    params = [r.params[k] for k in "akc"]
    assert params == pytest.approx(p, rel=1e-8)
    assert [r.stderr[k] for k in "akc"] == pytest.approx(np.sqrt(np.diag(cov)), rel=1e-7)
    want = _statistics(X, Y, w, params)
    for key in ("chisqr", "redchi", "rss", "r2"):
        assert r.stats[key] == pytest.approx(want[key], rel=1e-10), key
    for key in ("aic", "bic"):  # (n log(chi2 / n) is ~ -20,000 at 1e-300: compared absolutely)
        assert r.stats[key] == pytest.approx(want[key], abs=1e-8), key
    assert r.loss == pytest.approx(want["chisqr"] / np.sum(w), rel=1e-10)


@pytest.mark.parametrize("compile_", [False, True])
def test_zero_weights_are_points_left_out(compile_):
    w = W.copy()
    w[[1, 4, 9]] = 0.0
    kept = w > 0
    y = Y.copy()
    y[4] = 1e3  # far off, and of weight 0: in no statistic
    r = gf.fit(F, x=X, y=y, init=INIT, weights=w, compile=compile_)
    p, cov = _scipy(X[kept], y[kept], 1 / np.sqrt(w[kept]))  # the rows dropped
    params = [r.params[k] for k in "akc"]
    assert params == pytest.approx(p, rel=1e-8)
    assert [r.stderr[k] for k in "akc"] == pytest.approx(np.sqrt(np.diag(cov)), rel=1e-7)
    want = _statistics(X, y, w, params)
    assert (r.stats["n"], r.stats["dof"]) == (want["n"], want["dof"]) == (27, 24)
    for key in ("chisqr", "redchi", "rss", "rmse", "r2", "aic", "bic"):
        assert r.stats[key] == pytest.approx(want[key], rel=1e-10), key


@pytest.mark.parametrize("kw, message", [
    ({"weights": np.zeros(30)}, "every weight is 0"),
    ({"sigma": np.full(30, np.inf)}, "sigma is inf at every point"),
    ({"sigma": np.r_[np.ones(3), 0.0, np.ones(26)]}, r"sigma must be positive: 0 at row 4"),
    ({"sigma": np.r_[np.ones(29), -2.0]}, r"sigma must be positive: -2 at row 30"),
    ({"sigma": np.ones(29)}, r"sigma must have one value per point \(30\)"),
    ({"sigma": np.ones((30, 2))}, "sigma must be one value per point"),
    ({"sigma": np.r_[np.nan, np.ones(29)]}, r"NaN or inf in 1 data row\(s\): 1 "),
])
def test_weight_errors_say_what_and_where(kw, message):
    with pytest.raises(gf.DataError, match=message):
        gf.fit(F, x=X, y=Y, init=INIT, **kw)


def test_a_nan_sigma_row_is_dropped_with_omit():
    sigma = np.full(30, 0.05)
    sigma[7] = np.nan
    keep = np.arange(30) != 7
    r = gf.fit(F, x=X, y=Y, init=INIT, sigma=sigma, nan_policy="omit")
    ref = gf.fit(F, x=X[keep], y=Y[keep], init=INIT, sigma=sigma[keep])
    assert r.stats["n"] == 29 and "dropped 1 row(s)" in r.notes[0]
    assert [r.params[k] for k in "akc"] == pytest.approx([ref.params[k] for k in "akc"], rel=1e-12)


@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_one_sigma_for_every_point(absolute_sigma):
    r = gf.fit(F, x=X, y=Y, init=INIT, sigma=0.05, absolute_sigma=absolute_sigma)
    ref = gf.fit(F, x=X, y=Y, init=INIT, sigma=np.full(30, 0.05), absolute_sigma=absolute_sigma)
    assert r.stderr == pytest.approx(ref.stderr, rel=1e-12)
    p, cov = _scipy(X, Y, np.full(30, 0.05), absolute_sigma)
    assert [r.stderr[k] for k in "akc"] == pytest.approx(np.sqrt(np.diag(cov)), rel=1e-7)


def test_profile_intervals_of_a_fit_with_zero_weights():
    w = W.copy()
    w[[2, 11]] = 0.0
    kept = w > 0
    r = gf.fit(F, x=X, y=Y, init=INIT, weights=w)
    ref = gf.fit(F, x=X[kept], y=Y[kept], init=INIT, weights=w[kept])
    got = r.ci(0.95, method="profile", x=X, y=Y, weights=w)["k"]
    want = ref.ci(0.95, method="profile", x=X[kept], y=Y[kept], weights=w[kept])["k"]
    assert got == pytest.approx(want, rel=1e-6)


def test_profile_intervals_take_one_sigma_for_all():
    r = gf.fit(F, x=X, y=Y, init=INIT, sigma=0.05)
    ref = gf.fit(F, x=X, y=Y, init=INIT, sigma=np.full(30, 0.05))
    assert r.ci(0.95, method="profile", x=X, y=Y, sigma=0.05)["k"] == pytest.approx(
        ref.ci(0.95, method="profile", x=X, y=Y, sigma=np.full(30, 0.05))["k"], rel=1e-9)


def test_chunked_statistics_leave_zero_weights_out(monkeypatch):
    from gradfit.lsq import chunked

    w = np.ones(30)
    w[4] = 0.0
    y = Y.copy()
    y[4] = 1e3  # far off, and left out
    monkeypatch.setattr(chunked, "CHUNKED_BYTES", 0)
    monkeypatch.setattr(chunked, "CHUNK_ROWS", 7)
    r = gf.fit(F, x=X, y=y, init=INIT, weights=w)
    assert "chunked" in r.settings["strategy"]
    want = _statistics(X, y, w, [r.params[k] for k in "akc"])
    assert r.stats["n"] == want["n"] == 29
    for key in ("rss", "rmse", "chisqr", "aic"):
        assert r.stats[key] == pytest.approx(want[key], rel=1e-10), key


def test_a_weight_the_rescaling_takes_to_zero_stays_a_point():
    w = np.full(30, 1e150)
    w[5] = 1e-200  # 1e-350 after dividing by the largest: below float64's range
    assert gf.fit(F, x=X, y=Y, init=INIT, weights=w).stats["n"] == 30


def test_no_positive_weight_left_for_training():
    from gradfit.data.split import train_val_indices

    w = np.zeros(30)
    w[[0, 1]] = 1.0
    seed = next(s for s in range(1000) if not {0, 1} & set(train_val_indices(30, 0.5, s)[0].tolist()))
    with pytest.raises(gf.DataError, match="every training point has weight 0"):
        gf.fit(F, x=X, y=Y, init=INIT, weights=w, val_fraction=0.5, seed=seed)


@pytest.mark.parametrize("call, message", [
    (lambda: gf.fit(F, x=X, y=Y, init=INIT, sigma=0.0), "sigma must be positive: 0 for every point"),
    (lambda: gf.fit(F, x=X, y=Y, init=INIT, sigma=np.r_[np.ones(5), np.nan, np.ones(24)]),
     r"data row\(s\): 6 \(1-based\), in sigma"),
    (lambda: gf.fit_many(F, X, np.vstack([Y, Y]), init=INIT, sigma=np.r_[np.nan, np.ones(29)]),
     "sigma is NaN at fit 0, point 0"),
])
def test_sigma_messages_name_sigma(call, message):
    with pytest.raises(gf.DataError, match=message):
        call()


def test_too_few_points_of_positive_weight():
    w = np.zeros(30)
    w[:2] = 1.0  # two points for three parameters, as if the other rows were dropped
    with pytest.raises(gf.DataError, match=r"2 training points cannot determine 3 parameters .*weight 0 do not count"):
        gf.fit(F, x=X, y=Y, init=INIT, weights=w)


def test_negative_weight_named():
    w = np.ones(30)
    w[6] = -1.0
    with pytest.raises(gf.DataError, match="weights must be non-negative: -1 at row 7"):
        gf.fit(F, x=X, y=Y, init=INIT, weights=w)


def test_profile_refuses_a_rise_below_rounding():
    # sigma understated 1e7-fold with absolute_sigma: chi-square ~1e16, a rise of 3.84 is noise
    sigma = np.full(30, 0.05 * 1e-7)
    r = gf.fit(F, x=X, y=Y, init=INIT, sigma=sigma, absolute_sigma=True)
    with pytest.raises(gf.FitError, match="below what float64 resolves.*absolute_sigma=False"):
        r.ci(0.95, method="profile", x=X, y=Y, sigma=sigma)
    # a sigma that fits the scatter profiles as before: its interval brackets the Wald one's centre
    sigma = np.full(30, 0.05)
    r = gf.fit(F, x=X, y=Y, init=INIT, sigma=sigma, absolute_sigma=True)
    lo, hi = r.ci(0.95, method="profile", x=X, y=Y, sigma=sigma)["k"]
    assert lo < r.params["k"] < hi


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("compile_", [False, True])
def test_profile_of_noisy_data_is_an_honest_error(compile_):
    # trial fits far out overflowed Python floats in the trust region (OverflowError from
    # x ** 2) and flooded numpy's overflow warnings; the interval is unbounded, and says so
    rng = np.random.default_rng(0)
    x = np.linspace(0, 5, 40)
    y = 2 * np.exp(-0.8 * x) + 0.3 + 3.0 * rng.standard_normal(40)
    r = gf.fit(F, x=x, y=y, init={"a": 1.0, "k": 1.0, "c": 0.0}, compile=compile_)
    with pytest.raises(gf.FitError, match="does not reach the confidence level"):
        r.ci(0.95, method="profile", x=x, y=y)


def test_trust_region_norms_overflow_to_inf():
    from gradfit.optim.trust_region import Subproblem

    jac = np.array([[1.0, 0.0], [0.0, 1e-160], [1.0, 1.0]])
    r = np.array([1e160, 1e160, 0.0])
    sub = Subproblem(jac, r, np.ones(2))  # Gauss-Newton step ~1e320: beyond float64
    assert sub.gn_norm == np.inf
    assert sub.norm(1.0) == np.inf  # (raised OverflowError before)
    lam = 1e170  # a damping that brings the step back into range
    assert sub.norm(lam) == pytest.approx(float(np.linalg.norm(sub.step(lam))), rel=1e-12)
    assert sub.predicted_norm2(lam) == pytest.approx(float(np.sum((jac @ sub.step(lam)) ** 2)), rel=1e-9)


@pytest.mark.filterwarnings("error")
def test_model_not_finite_at_a_point_of_weight_zero():
    x = np.linspace(0, 5, 30)
    r = gf.fit("a*log(x) + c", x=x, y=2 * np.log(x + 0.1) + 1, weights=np.r_[0.0, np.ones(29)])
    assert r.status == "not_finite" and "row(s): 1" in r.message
    assert np.isnan(r.stats["rss"]) and np.isnan(r.stats["chisqr"])
