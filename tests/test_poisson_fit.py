"""gf.fit(loss="poisson"): Poisson maximum likelihood by Levenberg-Marquardt on the deviance,
checked against independent references: scipy.optimize.minimize of the negative
log-likelihood, the analytic Fisher information, simulation, scipy.stats.poisson."""

from __future__ import annotations

import math

import numpy as np
import pytest

import gradfit as gf
from gradfit.errors import ConfigError, DataError, FitError

scipy_optimize = pytest.importorskip("scipy.optimize")
scipy_stats = pytest.importorskip("scipy.stats")
from scipy.special import xlogy  # noqa: E402

DECAY = "a*exp(-k*x) + b"
PEAK = "a*exp(-(x - m)**2/(2*s**2)) + b"


def _decay(p, x):
    a, k, b = p
    e = np.exp(-k * x)
    return a * e + b, np.column_stack([e, -a * x * e, np.ones_like(x)])


def _peak(p, x):
    a, m, s, b = p
    g = np.exp(-(x - m) ** 2 / (2 * s**2))
    return a * g + b, np.column_stack([g, a * g * (x - m) / s**2, a * g * (x - m) ** 2 / s**3, np.ones_like(x)])


def _scipy_mle(model, p0, x, y, w=None):
    """The Poisson MLE by BFGS on the negative log-likelihood with its analytic gradient."""
    w = np.ones_like(y) if w is None else w

    def nll(p):
        mu, _ = model(p, x)
        if not np.all(mu > 0):
            return np.inf
        return float(np.sum(w * (mu - xlogy(y, mu))))

    def grad(p):
        mu, jac = model(p, x)
        return jac.T @ (w * (1.0 - y / mu))

    res = scipy_optimize.minimize(nll, p0, jac=grad, method="BFGS", options={"gtol": 1e-11, "maxiter": 10_000})
    return res.x


def _fisher_stderr(model, p, x, w=None):
    mu, jac = model(p, x)
    w = np.ones_like(mu) if w is None else w
    info = jac.T @ (jac * (w / mu)[:, None])
    return np.sqrt(np.diag(np.linalg.inv(info)))


def _decay_data(seed=0, n=60):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 5, n)
    return x, rng.poisson(40 * np.exp(-0.7 * x) + 3).astype(float)


def _peak_data(seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(-4, 4, 81)
    return x, rng.poisson(30 * np.exp(-(x - 0.3) ** 2 / (2 * 0.8**2)) + 2).astype(float)


# -- 1. the estimate is the maximum-likelihood one ----------------------------------------------
@pytest.mark.parametrize("case", ["decay", "peak", "builtin", "function"])
def test_equals_scipy_minimize_of_the_negative_log_likelihood(case):
    if case == "decay":
        x, y = _decay_data()
        r = gf.fit(DECAY, x=x, y=y, init={"a": 30.0, "k": 1.0, "b": 1.0}, loss="poisson")
        names, model, p0 = ("a", "k", "b"), _decay, [30.0, 1.0, 1.0]
    elif case == "peak":
        x, y = _peak_data()
        r = gf.fit(PEAK, x=x, y=y, init={"a": 20.0, "m": 0.0, "s": 1.0, "b": 1.0}, loss="poisson")
        names, model, p0 = ("a", "m", "s", "b"), _peak, [20.0, 0.0, 1.0, 1.0]
    elif case == "builtin":  # "gaussian": a*exp(-(x - mu)**2/(2*sigma**2)) + c, its own data-driven start
        x, y = _peak_data(1)
        r = gf.fit("gaussian", x=x, y=y, loss="poisson")
        names, model, p0 = ("a", "mu", "sigma", "c"), _peak, [20.0, 0.0, 1.0, 1.0]
    else:
        x, y = _decay_data(2)

        def decay(x, a, k, b):
            import torch

            return a * torch.exp(-k * x) + b

        r = gf.fit(decay, x=x, y=y, init={"a": 30.0, "k": 1.0, "b": 1.0}, loss="poisson")
        names, model, p0 = ("a", "k", "b"), _decay, [30.0, 1.0, 1.0]
    assert r.status == "converged" and r.method == "lm"
    ref = _scipy_mle(model, p0, x, y)
    got = np.array([r.params[n] for n in names])
    if case == "builtin":
        got[2] = abs(got[2])  # sigma enters squared
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    # the result says which estimator ran, and why
    assert r.settings["loss"] == "poisson" and r.settings["method"] == "lm"
    assert r.method_reason.startswith("Poisson maximum likelihood")


def test_explicit_lm_and_refused_linear():
    x, y = _decay_data()
    r = gf.fit("b + c*x", x=x, y=y + 1, loss="poisson", optimizer="lm")
    assert r.method == "lm" and r.status == "converged"
    with pytest.raises(ConfigError, match="likelihood"):
        gf.fit("b + c*x", x=x, y=y + 1, loss="poisson", optimizer="linear")


# -- 2. Cramer-Rao standard errors -----------------------------------------------------------------
def test_stderr_is_the_inverse_fisher_information():
    x, y = _peak_data()
    r = gf.fit(PEAK, x=x, y=y, init={"a": 20.0, "m": 0.0, "s": 1.0, "b": 1.0}, loss="poisson")
    p = [r.params[n] for n in ("a", "m", "s", "b")]
    np.testing.assert_allclose([r.stderr[n] for n in ("a", "m", "s", "b")], _fisher_stderr(_peak, p, x), rtol=1e-6)
    # absolute (Cramer-Rao): not scaled by the reduced chi-square, and intervals use z
    assert r.absolute_sigma
    lo, hi = r.ci(0.95)["a"]
    assert (hi - lo) / 2 / r.stderr["a"] == pytest.approx(1.959963985, rel=1e-8)


def _spread(repeats: int):
    rng = np.random.default_rng(7)
    x = np.linspace(0, 5, 40)
    truth = (200.0, 0.7, 20.0)
    mu = _decay(truth, x)[0]
    est = []
    for _ in range(repeats):
        y = rng.poisson(mu).astype(float)
        r = gf.fit(DECAY, x=x, y=y, init={"a": 150.0, "k": 1.0, "b": 10.0}, loss="poisson")
        assert r.status == "converged"
        est.append([r.params[n] for n in ("a", "k", "b")])
    return np.std(est, axis=0, ddof=1), _fisher_stderr(_decay, truth, x)


@pytest.mark.slow
def test_cramer_rao_errors_match_the_spread_of_2000_repeats():
    empirical, bound = _spread(2000)
    np.testing.assert_allclose(empirical, bound, rtol=0.05)


def test_cramer_rao_errors_match_the_spread_of_300_repeats():
    empirical, bound = _spread(300)  # the spread's own sampling error is ~4% here
    np.testing.assert_allclose(empirical, bound, rtol=0.15)


# -- 3. frequency weights -----------------------------------------------------------------------
def test_weight_two_equals_a_duplicated_point():
    x, y = _decay_data(3, n=30)
    w = np.where(np.arange(30) % 3 == 0, 2.0, 1.0)
    init = {"a": 30.0, "k": 1.0, "b": 1.0}
    weighted = gf.fit(DECAY, x=x, y=y, weights=w, init=init, loss="poisson")
    dup = np.arange(30) % 3 == 0
    xd, yd = np.concatenate([x, x[dup]]), np.concatenate([y, y[dup]])
    duplicated = gf.fit(DECAY, x=xd, y=yd, init=init, loss="poisson")
    for n in init:
        assert weighted.params[n] == pytest.approx(duplicated.params[n], rel=1e-7)
        assert weighted.stderr[n] == pytest.approx(duplicated.stderr[n], rel=1e-6)
    assert weighted.stats["deviance"] == pytest.approx(duplicated.stats["deviance"], rel=1e-8)
    np.testing.assert_allclose([weighted.params[n] for n in init], _scipy_mle(_decay, [30, 1, 1], x, y, w), rtol=1e-6)


# -- 4. bad input and non-positive means -------------------------------------------------------
def test_negative_counts_are_refused_naming_the_point():
    x, y = _decay_data()
    y[4] = -1.0
    with pytest.raises(DataError, match="point 4"):
        gf.fit(DECAY, x=x, y=y, loss="poisson")
    # a point with weight 0 is not used, whatever its count
    w = np.ones_like(y)
    w[4] = 0.0
    r = gf.fit(DECAY, x=x, y=y, weights=w, init={"a": 30.0, "k": 1.0, "b": 1.0}, loss="poisson")
    assert r.status == "converged" and r.stats["n"] == len(x) - 1


def test_sigma_is_refused_and_non_integer_counts_allowed():
    x, y = _decay_data()
    with pytest.raises(ConfigError, match="sigma"):
        gf.fit(DECAY, x=x, y=y, sigma=np.sqrt(y + 1), loss="poisson")
    r = gf.fit(DECAY, x=x, y=y + 0.5, init={"a": 30.0, "k": 1.0, "b": 1.0}, loss="poisson")
    ref = _scipy_mle(_decay, [30, 1, 1], x, y + 0.5)
    np.testing.assert_allclose([r.params[n] for n in ("a", "k", "b")], ref, rtol=1e-6)


def test_a_start_with_non_positive_means_starts_from_least_squares():
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 40)
    y = rng.poisson(20 - 17 * x).astype(float)
    r = gf.fit("a + b*x", x=x, y=y, init={"a": -5.0, "b": 1.0}, loss="poisson")  # mean -5 at x = 0
    assert r.status == "converged"
    assert any("least-squares fit" in n for n in r.notes)
    ref = _scipy_mle(lambda p, x: (p[0] + p[1] * x, np.column_stack([np.ones_like(x), x])), [20, -17], x, y)
    np.testing.assert_allclose([r.params["a"], r.params["b"]], ref, rtol=1e-6)


def test_a_model_that_cannot_be_positive_is_a_clear_error():
    x = np.linspace(-1, 1, 21)
    y = np.full(21, 3.0)
    with pytest.raises(FitError, match=r"point 0 \(x = -1\).*init="):
        gf.fit("a*x", x=x, y=y, init={"a": 1.0}, loss="poisson")


def test_steps_into_non_positive_means_are_rejected(monkeypatch):
    import gradfit.lsq.likelihood as lik

    seen = {"non_positive": 0}
    original = lik.deviance_residuals

    def counting(y, mu, w=None):
        seen["non_positive"] += int(not np.all(mu > 0))
        return original(y, mu, w)

    monkeypatch.setattr(lik, "deviance_residuals", counting)
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 40)
    y = rng.poisson(20 - 17 * x).astype(float)
    r = gf.fit("a + b*x", x=x, y=y, init={"a": 40.0, "b": 0.0}, loss="poisson")
    assert seen["non_positive"] >= 1  # a trial went below zero at x = 1 ...
    assert r.status == "converged"  # ... was rejected, and the fit still found the maximum
    ref = _scipy_mle(lambda p, x: (p[0] + p[1] * x, np.column_stack([np.ones_like(x), x])), [20, -17], x, y)
    np.testing.assert_allclose([r.params["a"], r.params["b"]], ref, rtol=1e-6)


# -- 5. statistics, files, CLI --------------------------------------------------------------------
def test_statistics_match_their_definitions():
    x, y = _decay_data()
    r = gf.fit(DECAY, x=x, y=y, init={"a": 30.0, "k": 1.0, "b": 1.0}, loss="poisson")
    mu = _decay([r.params[n] for n in ("a", "k", "b")], x)[0]
    st, n, k = r.stats, len(x), 3
    loglike = float(scipy_stats.poisson.logpmf(y, mu).sum())
    assert st["n"] == n and st["dof"] == n - k
    assert st["deviance"] == pytest.approx(2 * np.sum(xlogy(y, y / mu) - (y - mu)), rel=1e-10)
    assert st["loglike"] == pytest.approx(loglike, rel=1e-10)
    assert st["aic"] == pytest.approx(2 * k - 2 * loglike, rel=1e-10)
    assert st["bic"] == pytest.approx(k * math.log(n) - 2 * loglike, rel=1e-10)
    assert st["chisqr"] == pytest.approx(np.sum((y - mu) ** 2 / mu), rel=1e-10)
    assert st["redchi"] == pytest.approx(st["chisqr"] / (n - k), rel=1e-12)
    assert r.loss == pytest.approx(st["deviance"] / (2 * n), rel=1e-12)


def test_profile_interval_is_the_likelihood_ratio_interval():
    x, y = _decay_data()
    r = gf.fit(DECAY, x=x, y=y, init={"a": 30.0, "k": 1.0, "b": 1.0}, loss="poisson")
    lo, hi = r.ci(0.95, method="profile", x=x, y=y)["k"]

    def profile_deviance(k):  # minimize over a and b with k held (scipy), as a deviance
        def model(p, x):
            mu, jac = _decay([p[0], k, p[1]], x)
            return mu, jac[:, [0, 2]]

        a, b = _scipy_mle(model, [r.params["a"], r.params["b"]], x, y)
        mu = _decay([a, k, b], x)[0]
        return 2 * np.sum(xlogy(y, y / mu) - (y - mu))

    q = scipy_stats.chi2.ppf(0.95, 1)
    assert profile_deviance(lo) - r.stats["deviance"] == pytest.approx(q, rel=1e-4)
    assert profile_deviance(hi) - r.stats["deviance"] == pytest.approx(q, rel=1e-4)


def test_save_load_round_trip_and_report(tmp_path):
    x, y = _decay_data()
    r = gf.fit(DECAY, x=x, y=y, init={"a": 30.0, "k": 1.0, "b": 1.0}, loss="poisson")
    r.save(tmp_path / "m.json")
    back = gf.load(tmp_path / "m.json")
    assert back.stats == r.stats and back.stderr == r.stderr and back.absolute_sigma
    text = back.report()
    assert f"deviance {r.stats['deviance']:.6g}" in text and "Fisher information" in text


def test_cli_fit_with_poisson_loss(tmp_path):
    from _cli import cli

    x, y = _decay_data()
    path = tmp_path / "counts.csv"
    path.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in zip(x, y)))
    code, out, err = cli("fit", path, "y ~ a*exp(-k*x) + b", "--loss", "poisson", "--init", "a=30,k=1,b=1")
    assert code == 0, err
    ref = _scipy_mle(_decay, [30, 1, 1], x, y)
    mu = _decay(ref, x)[0]
    assert f"deviance {2 * np.sum(xlogy(y, y / mu) - (y - mu)):.6g}" in out
    assert "Poisson maximum likelihood" in out


# -- 6. networks and first-order optimizers --------------------------------------------------------
def test_first_order_poisson_matches_the_likelihood_fit():
    x, y = _decay_data()
    r = gf.fit("a*exp(-k*x) + b", x=x, y=y, init={"a": 30.0, "k": 1.0, "b": 1.0}, loss="poisson",
               optimizer="adam", lr=0.05, epochs=3000, dtype="float64")
    ref = _scipy_mle(_decay, [30, 1, 1], x, y)
    np.testing.assert_allclose([r.params[n] for n in ("a", "k", "b")], ref, rtol=2e-2)
    assert "deviance" in r.stats  # Cramer-Rao errors at the end point
    np.testing.assert_allclose([r.stderr[n] for n in ("a", "k", "b")],
                               _fisher_stderr(_decay, [r.params[n] for n in ("a", "k", "b")], x), rtol=1e-6)


def test_a_network_trains_on_the_poisson_loss():
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 200)
    mu = 5 + 20 * np.exp(-4 * x**2)
    y = rng.poisson(mu).astype(float)
    reference = float(np.mean(xlogy(y, y / mu) - (y - mu)))  # the loss at the true means
    # normalize=True starts the network's output at the mean count (a positive mean)
    r = gf.fit("mlp", x=x, y=y, loss="poisson", hidden=(16,), epochs=300, lr=0.03, seed=0, normalize=True)
    first, last = r.history["train_loss"][0], r.loss
    assert first > 3 * reference
    assert last < 1.1 * reference


def test_low_counts_with_the_background_on_its_bound():
    # amplitude 10 over 0.5 background: the likelihood puts the background on its bound 0
    rng = np.random.default_rng(3)
    x = np.linspace(-3, 3, 25)
    for _ in range(32):  # the 32nd draw once stalled a rounding-level step short of the bound
        y = rng.poisson(10 * np.exp(-x**2 / 2) + 0.5).astype(float)
    r = gf.fit(PEAK, x=x, y=y, init={"a": 8.0, "m": 0.1, "s": 1.2, "b": 1.0}, loss="poisson", bounds={"b": (0, None)})
    assert r.status == "converged" and r.params["b"] == 0.0

    def no_background(p, x):
        mu, jac = _peak([*p, 0.0], x)
        return mu, jac[:, :3]

    ref = _scipy_mle(no_background, [8.0, 0.1, 1.2], x, y)
    np.testing.assert_allclose([r.params[n] for n in ("a", "m", "s")], ref, rtol=1e-6, atol=1e-7)


def test_first_order_poisson_fits_train_through_zero_counts():
    # a zero count once made the loss's gradient NaN (xlogy(y, y/mu) at y = 0): the fit
    # "diverged" at epoch 2 and returned its start
    import torch

    from gradfit.losses import poisson

    mu = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0.0, 2.0, 5.0], dtype=torch.float64)
    poisson(mu, y).backward()
    np.testing.assert_allclose(mu.grad.numpy(), (1 - y.numpy() / mu.detach().numpy()) / 3, rtol=1e-12)
    t = np.linspace(0, 6, 30)
    counts = np.random.default_rng(4).poisson(20 * np.exp(-0.6 * t) + 1)
    assert (counts == 0).any()
    lm = gf.fit("a*exp(-k*t) + b", x={"t": t}, y=counts, init={"a": 15, "k": 0.5, "b": 1}, loss="poisson")
    adam = gf.fit("a*exp(-k*t) + b", x={"t": t}, y=counts, init={"a": 15, "k": 0.5, "b": 1}, loss="poisson",
                  optimizer="adam", lr=0.2, epochs=300, seed=0)
    assert adam.status != "diverged"
    assert adam.params["k"] == pytest.approx(lm.params["k"], rel=5e-3)
