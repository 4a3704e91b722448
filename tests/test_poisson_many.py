"""fit_many(loss="poisson"): batched Poisson maximum likelihood with Cramer-Rao standard errors.

Every reference is independent of gradfit: scipy.optimize.minimize of the Poisson negative
log-likelihood (analytic gradient, tight tolerances), the Fisher information J^T diag(w/mu) J
from the analytic Jacobian in numpy, and simulated data for the bias comparison.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gradfit as gf
from gradfit.errors import ConfigError, DataError

FORMULA = "a*exp(-(x-c)**2/(2*w**2)) + o"
X = np.arange(32.0)


def gaussian_and_jacobian(theta, x=X):
    """Model means (M,) and their Jacobian (M, 4) for theta = (a, c, w, o)."""
    a, c, w, o = theta
    e = np.exp(-(x - c) ** 2 / (2 * w**2))
    jac = np.column_stack([e, a * e * (x - c) / w**2, a * e * (x - c) ** 2 / w**3, np.ones_like(x)])
    return a * e + o, jac


def workload(n, seed, amplitude=(10, 50), offset=(1, 5)):
    """bench/fit_many.py's workload at low counts: truth, Poisson counts, init truth*(1 +- 10-20%)."""
    rng = np.random.default_rng(seed)
    truth = np.column_stack([rng.uniform(*amplitude, n), 15.5 + rng.uniform(-4, 4, n), rng.uniform(2, 4, n),
                             rng.uniform(*offset, n)])
    mu = np.stack([gaussian_and_jacobian(t)[0] for t in truth])
    y = rng.poisson(mu).astype(float)
    init = truth * (1 + rng.choice([-1.0, 1.0], truth.shape) * rng.uniform(0.10, 0.20, truth.shape))
    return y, truth, init


def scipy_mle(y, start, w=None, bounds=None, fixed=None, x=X):
    """The Poisson MLE by scipy.optimize.minimize of sum w (mu - y log mu), analytic gradient.
    ``fixed``: {index: value} held out of the optimization."""
    from scipy.optimize import minimize

    w = np.ones_like(y) if w is None else w
    free = [j for j in range(4) if not fixed or j not in fixed]

    def full(z):
        theta = np.array(start, dtype=float)
        theta[free] = z
        for j, v in (fixed or {}).items():
            theta[j] = v
        return theta

    def nll(z):
        mu, jac = gaussian_and_jacobian(full(z), x)
        if np.any(mu[w > 0] <= 0):
            return np.inf, np.zeros(len(z))
        value = np.sum(w * (mu - y * np.log(mu)))
        grad = (w * (1 - y / mu)) @ jac
        return value, grad[free]

    z0 = np.asarray(start, dtype=float)[free]
    if bounds is None:
        res = minimize(nll, z0, jac=True, method="BFGS", options={"gtol": 1e-11, "maxiter": 10_000})
    else:
        res = minimize(nll, z0, jac=True, method="L-BFGS-B", bounds=[bounds[j] for j in free],
                       options={"ftol": 1e-16, "gtol": 1e-12, "maxiter": 10_000, "maxcor": 30})
    theta = full(res.x)
    mu, jac = gaussian_and_jacobian(theta, x)
    fisher = (jac[:, free] * (w / mu)[:, None]).T @ jac[:, free]
    se = np.zeros(4)
    se[free] = np.sqrt(np.diag(np.linalg.inv(fisher)))
    return theta, se


def stacked(r):
    return np.column_stack([r.params[n] for n in "acwo"]), np.column_stack([r.stderr[n] for n in "acwo"])


def test_matches_scipy_mle_and_cramer_rao_errors():
    y, _, init = workload(10, seed=11)
    r = gf.fit_many(FORMULA, X, y, init=init, loss="poisson", dtype="float64", tol=1e-15, max_iter=200)
    assert r.loss == "poisson" and r.converged.all(), r.status_counts()
    params, se = stacked(r)
    for i in range(len(y)):
        ref, ref_se = scipy_mle(y[i], init[i])
        np.testing.assert_allclose(params[i], ref, rtol=1e-6)
        np.testing.assert_allclose(se[i], ref_se, rtol=1e-5)
        mu = gaussian_and_jacobian(ref)[0]
        # statistics from the reference means: deviance, Pearson chi-square, log-likelihood with lgamma
        from scipy.special import gammaln, xlogy

        dev = 2 * np.sum(xlogy(y[i], y[i] / mu) - (y[i] - mu))
        loglike = np.sum(xlogy(y[i], mu) - mu - gammaln(y[i] + 1))
        np.testing.assert_allclose(r.stats["deviance"][i], dev, rtol=1e-8)
        np.testing.assert_allclose(r.stats["loglike"][i], loglike, rtol=1e-10)
        np.testing.assert_allclose(r.stats["chisqr"][i], np.sum((y[i] - mu) ** 2 / mu), rtol=1e-6)
        np.testing.assert_allclose(r.stats["aic"][i], 8 - 2 * loglike, rtol=1e-10)
        np.testing.assert_allclose(r.stats["bic"][i], 4 * np.log(32) - 2 * loglike, rtol=1e-10)
    assert (r.stats["dof"] == 28).all()
    np.testing.assert_allclose(r.stats["redchi"], r.stats["chisqr"] / 28)


def test_float32_default_agrees_with_float64():
    y, _, init = workload(50, seed=5)
    r64 = gf.fit_many(FORMULA, X, y, init=init, loss="poisson", dtype="float64", tol=1e-10, max_iter=100)
    r32 = gf.fit_many(FORMULA, X, y, init=init, loss="poisson")
    both = r64.converged & r32.converged
    assert both.mean() > 0.9
    p64, se64 = stacked(r64)
    p32, se32 = stacked(r32)
    # within a fraction of a standard error (the float32 fit stops at a deviance change of 1e-4)
    z = np.abs(p32[both] - p64[both]) / se64[both]
    assert z.max() < 0.25 and np.median(z) < 0.01
    np.testing.assert_allclose(se32[both], se64[both], rtol=3e-2)


def test_weights_masks_nan_padding_fixed():
    y, _, init = workload(6, seed=21)
    rng = np.random.default_rng(3)
    weights = rng.integers(1, 4, size=y.shape).astype(float)  # frequency weights
    mask = np.ones_like(y, dtype=bool)
    mask[1, 5:9] = False
    y_nan = y.copy()
    y_nan[2, 26:] = np.nan  # ragged: fit 2 has 26 points
    kw = {"init": init, "loss": "poisson", "dtype": "float64", "tol": 1e-15, "max_iter": 200}
    rw = gf.fit_many(FORMULA, X, y, weights=weights, **kw)
    rm = gf.fit_many(FORMULA, X, y_nan, mask=mask, **kw)
    rf = gf.fit_many(FORMULA, X, y, fixed=["o"], **kw)
    for r in (rw, rm, rf):
        assert r.converged.all(), r.status_counts()
    for i in range(len(y)):
        ref, ref_se = scipy_mle(y[i], init[i], w=weights[i])
        np.testing.assert_allclose(stacked(rw)[0][i], ref, rtol=1e-6)
        np.testing.assert_allclose(stacked(rw)[1][i], ref_se, rtol=1e-5)
        ref, ref_se = scipy_mle(y[i], init[i], fixed={3: init[i, 3]})
        np.testing.assert_allclose(stacked(rf)[0][i], ref, rtol=1e-6)
        np.testing.assert_allclose(stacked(rf)[1][i], ref_se, rtol=1e-5, atol=0)
    used = mask[1]
    ref, ref_se = scipy_mle(y[1][used], init[1], x=X[used])
    np.testing.assert_allclose(stacked(rm)[0][1], ref, rtol=1e-6)
    np.testing.assert_allclose(stacked(rm)[1][1], ref_se, rtol=1e-5)
    ref, ref_se = scipy_mle(y[2][:26], init[2], x=X[:26])
    np.testing.assert_allclose(stacked(rm)[0][2], ref, rtol=1e-6)
    np.testing.assert_allclose(stacked(rm)[1][2], ref_se, rtol=1e-5)
    assert rm.stats["n"][1] == 28 and rm.stats["n"][2] == 26 and rm.stats["dof"][2] == 22
    assert (rf.stderr["o"] == 0).all()


def test_optimum_on_a_bound():
    y, _, init = workload(5, seed=8)
    free_mle = np.array([scipy_mle(y[i], init[i])[0] for i in range(len(y))])
    cap = 0.8 * free_mle[:, 3]  # below every free optimum: the bounded optimum has o on its bound
    start = init.copy()
    start[:, 3] = np.minimum(start[:, 3], 0.9 * cap)
    r = gf.fit_many(FORMULA, X, y, init=start, bounds={"o": (0.01, cap)}, loss="poisson", dtype="float64",
                    tol=1e-15, max_iter=300)
    assert r.converged.all(), r.status_counts()
    np.testing.assert_array_equal(r.params["o"], cap)
    for i in range(len(y)):
        ref, _ = scipy_mle(y[i], start[i], bounds=[(None, None), (None, None), (None, None), (0.01, cap[i])])
        np.testing.assert_allclose(stacked(r)[0][i], ref, rtol=1e-6)


def test_infeasible_start_restarts_from_least_squares():
    y, _, init = workload(4, seed=2)
    start = init.copy()
    start[1, 3] = -2.0  # the tails' mean is about -2 where there are counts: no likelihood there
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = gf.fit_many(FORMULA, X, y, init=start, loss="poisson", dtype="float64", tol=1e-15, max_iter=200)
    assert r.converged.all(), r.status_counts()
    assert r.timings["restarted"] == 1
    for i in range(len(y)):
        ref, ref_se = scipy_mle(y[i], init[i])
        np.testing.assert_allclose(stacked(r)[0][i], ref, rtol=1e-6)
        np.testing.assert_allclose(stacked(r)[1][i], ref_se, rtol=1e-5)


def test_no_feasible_start_is_not_finite_with_a_warning():
    # fit 1: a line through counts that are 0 up to x = 5 has no interior MLE; its start and
    # its least-squares fit are negative at x = 0 (b < 0), so it cannot start
    x = np.arange(8.0)
    y = np.array([[1.0, 2, 2, 4, 5, 5, 7, 8], [0, 0, 0, 0, 0, 0, 10, 20]])
    with pytest.warns(UserWarning, match=r"1 fit\(s\) \(fit 1\) start where the model's mean is <= 0"):
        r = gf.fit_many("a*x + b", x, y, init={"a": 1.0, "b": [1.0, -1.0]}, loss="poisson", dtype="float64")
    assert r.status_text.tolist() == ["converged", "not_finite"]
    assert np.isfinite(r.params["a"][0]) and np.isfinite(r.stderr["a"][0]) and np.isfinite(r.stats["deviance"][0])
    assert np.isnan(r.stats["deviance"][1]) and np.isnan(r.stats["loglike"][1])


def test_trials_with_nonpositive_means_are_rejected_and_the_fit_goes_on(monkeypatch):
    # a narrow, tall start on a small offset: early Fisher steps reach negative means at the
    # tails; such trials are rejected (damping up) and every fit still reaches the MLE (steps
    # stop at the positivity edge of the linearized means, optim/positive_step.py, so only the
    # model's curvature still carries a few trials past it)
    import torch

    from gradfit import likelihood

    infeasible = []
    kernel = likelihood.batch_poisson_deviance

    def spy(y, mu, w, **kw):
        dev, fw = kernel(y, mu, w, **kw)
        infeasible.append(torch.isinf(dev).numpy())
        return dev, fw

    monkeypatch.setattr(likelihood, "batch_poisson_deviance", spy)
    y, _, init = workload(4, seed=2)
    far = init.copy()
    far[:, 0], far[:, 2], far[:, 3] = 80.0, 1.0, 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = gf.fit_many(FORMULA, X, y, init=far, loss="poisson", dtype="float64", tol=1e-15, max_iter=300)
    assert sum(int(v.sum()) for v in infeasible) >= 1  # rejected trials did happen
    assert r.converged.all(), r.status_counts()
    for i in range(len(y)):
        np.testing.assert_allclose(stacked(r)[0][i], scipy_mle(y[i], init[i])[0], rtol=1e-6)


def test_kernel_rejects_a_trial_with_a_negative_mean():
    """One batch_lm step: a trial whose mean is negative at a used point is not taken, and the
    damping rises tenfold; where that point is masked, the same trial is taken."""
    import torch

    from gradfit.optim.batch_lm import RUNNING, init, residual_floor2, step

    x = torch.arange(4.0, dtype=torch.float64)
    y = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 2, dtype=torch.float64)
    w = torch.ones_like(y)
    w[1, 0] = 0.0  # fit 1 does not use x = 0

    def rj(theta):  # mu = a*x + b
        mu = theta[:, :1] * x + theta[:, 1:]
        return mu - y, [x.expand_as(y), torch.ones_like(y)]

    theta0 = torch.tensor([[1.0, 2.0]] * 2, dtype=torch.float64)
    state = init(theta0, torch.full((2,), RUNNING))
    free, inf = (1.0, 1.0), torch.full_like(theta0, float("inf"))
    kw = {"bounded": False, "likelihood": "poisson", "floor2": residual_floor2(y.sqrt(), w)}
    state = step(rj, state, y, w, -inf, inf, free, 1e-10, **kw)  # the first evaluation, accepted
    lam = state.lam.clone()
    state.trial = torch.tensor([[2.0, -0.5], [2.0, -0.5]], dtype=torch.float64)  # mu(0) = -0.5
    after = step(rj, state, y, w, -inf, inf, free, 1e-10, **kw)
    assert after.theta[0].tolist() == [1.0, 2.0] and after.lam[0] == lam[0] * 10
    assert after.theta[1].tolist() == [2.0, -0.5] and after.lam[1] == lam[1] / 10
    assert (after.status == RUNNING).all() and torch.isfinite(after.chi2).all()


def test_data_and_option_errors():
    y, _, init = workload(3, seed=1)
    bad = y.copy()
    bad[2, 7] = -1.0
    with pytest.raises(DataError, match=r"fit 2, point 7 has y = -1"):
        gf.fit_many(FORMULA, X, bad, init=init, loss="poisson")
    masked = np.ones_like(y, dtype=bool)
    masked[2, 7] = False  # a negative value at a masked point is not used: no error
    r = gf.fit_many(FORMULA, X, bad, init=init, loss="poisson", mask=masked)
    assert r.stats["n"].tolist() == [32, 32, 31]
    with pytest.raises(ConfigError, match="takes no sigma"):
        gf.fit_many(FORMULA, X, y, init=init, loss="poisson", sigma=np.ones(32))
    with pytest.raises(ConfigError, match="loss='poisson'"):
        gf.fit_many(FORMULA, X, y, init=init, loss="huber")


def test_result_round_trip_and_report(tmp_path):
    y, _, init = workload(5, seed=4)
    r = gf.fit_many(FORMULA, X, y, init=init, loss="poisson")
    assert "loss       poisson" in r.report() and "deviance" in r.report()
    import importlib.util

    tables = (".parquet",) if importlib.util.find_spec("pyarrow") and importlib.util.find_spec("pandas") else ()
    for suffix in (".npz", ".csv", *tables):
        r.save(tmp_path / f"r{suffix}")
        back = gf.BatchResult.load(tmp_path / f"r{suffix}")
        assert back.loss == "poisson"
        np.testing.assert_allclose(back.stats["deviance"], r.stats["deviance"])
        np.testing.assert_allclose(back.stats["loglike"], r.stats["loglike"])
    assert "deviance" in r.columns() and gf.fit_many("a*x", X, X[None] * 2, init={"a": 1}).loss == "mse"
    doc = dict(np.load(tmp_path / "r.npz"))
    doc["loss"] = np.asarray("huber")
    np.savez(tmp_path / "edited.npz", **doc)
    with pytest.raises(gf.errors.PersistError, match="unknown loss 'huber'"):
        gf.BatchResult.load(tmp_path / "edited.npz")


def test_cli_fit_many_poisson(tmp_path):
    import json

    from _cli import cli

    y, _, _ = workload(8, seed=6)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "fits.csv"
    code, stdout, stderr = cli("fit-many", str(tmp_path / "y.npy"), FORMULA, "--loss", "poisson", "--init",
                               "a=30,c=15.5,w=3,o=3", "--out", str(out), "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["loss"] == "poisson" and doc["status"] == {"converged": 8} and 15 < doc["median_deviance"] < 60
    table = gf.BatchResult.load(out)
    assert table.loss == "poisson" and np.isfinite(table.stats["deviance"]).all()


@pytest.mark.slow
def test_smaller_median_bias_than_least_squares_at_low_counts():
    """Gpufit's workload at amplitudes 10-50 over offsets 1-5, 4,000 fits: the median relative
    bias of amplitude and width is smaller by maximum likelihood than by least squares (0.6-0.8x
    over six seeds), and the offset's far smaller than least squares weighted by 1/y."""
    y, truth, init = workload(4000, seed=12)

    def bias(r):
        est, _ = stacked(r)
        ok = r.converged
        return np.median((est[ok] - truth[ok]) / truth[ok], axis=0)

    ml = bias(gf.fit_many(FORMULA, X, y, init=init, loss="poisson"))
    ls = bias(gf.fit_many(FORMULA, X, y, init=init))
    neyman = bias(gf.fit_many(FORMULA, X, y, init=init, sigma=np.sqrt(np.maximum(y, 1.0))))
    assert abs(ml[0]) < abs(ls[0]) and abs(ml[2]) < 0.85 * abs(ls[2])
    assert abs(ml[0]) + abs(ml[2]) < 0.85 * (abs(ls[0]) + abs(ls[2]))
    assert abs(ml[3]) < 0.1 * abs(neyman[3])


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs CUDA")
def test_cpu_and_cuda_agree():
    y, _, init = workload(2000, seed=9)
    kw = {"init": init, "loss": "poisson", "dtype": "float64", "tol": 1e-10, "max_iter": 100}
    cpu = gf.fit_many(FORMULA, X, y, device="cpu", **kw)
    gpu = gf.fit_many(FORMULA, X, y, device="cuda", **kw)
    np.testing.assert_array_equal(cpu.status, gpu.status)
    ok = cpu.converged
    assert ok.mean() > 0.99
    np.testing.assert_allclose(stacked(gpu)[0][ok], stacked(cpu)[0][ok], rtol=1e-7)
    np.testing.assert_allclose(stacked(gpu)[1][ok], stacked(cpu)[1][ok], rtol=1e-6)
    np.testing.assert_allclose(gpu.stats["deviance"][ok], cpu.stats["deviance"][ok], rtol=1e-9)
    g32 = gf.fit_many(FORMULA, X, y, init=init, loss="poisson", device="cuda")
    assert g32.converged.mean() > 0.99
