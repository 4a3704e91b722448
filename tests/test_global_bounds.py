"""Global fits (fit_many(shared=...)) whose optimum lies on a bound: a per-fit bound active in
some fits, a bound on the shared parameter, both, and a Poisson background on its bound.
optim/global_lm.py holds a coordinate that its step drives across a bound it rests next to and
solves the rest of the joint step on that face, so the bounded optimum is reached (and only
then reported converged). References are computed here from scratch: scipy.optimize
.least_squares with bounds on the stacked residuals, scipy.optimize.minimize (L-BFGS-B) of
the joint Poisson negative log-likelihood, both at tight tolerances."""

from __future__ import annotations

import numpy as np
import pytest

import gradfit as gf

scipy_opt = pytest.importorskip("scipy.optimize")

T = np.linspace(0, 10, 40)
AMPS = np.array([3.0, 8.0, 20.0, 50.0])
DECAY = "a*exp(-k*x) + b"


def _data(offsets, seed=7):
    rng = np.random.default_rng(seed)
    return AMPS[:, None] * np.exp(-0.5 * T) + np.asarray(offsets)[:, None] + rng.normal(0, 0.3, (len(AMPS), T.size))


def _stacked_reference(y, b_lo=-np.inf, k_bounds=(-np.inf, np.inf)):
    """The joint least-squares optimum by scipy's bounded trf on the stacked residuals:
    x = [a_1..a_B, b_1..b_B, k]."""
    n = len(y)

    def resid(x):
        a, b, k = x[:n, None], x[n:2 * n, None], x[-1]
        return (a * np.exp(-k * T) + b - y).ravel()

    def jac(x):
        a, k = x[:n, None], x[-1]
        e = np.exp(-k * T)[None, :].repeat(n, 0)
        j = np.zeros((n, T.size, 2 * n + 1))
        for i in range(n):
            j[i, :, i] = e[i]
            j[i, :, n + i] = 1.0
        j[:, :, -1] = -a * T * e
        return j.reshape(n * T.size, -1)

    lo = np.r_[np.full(n, -np.inf), np.full(n, b_lo), k_bounds[0]]
    hi = np.r_[np.full(n, np.inf), np.full(n, np.inf), k_bounds[1]]
    x0 = np.clip(np.r_[AMPS, np.full(n, 0.5), 0.6], lo + 1e-3, hi - 1e-3)
    sol = scipy_opt.least_squares(resid, x0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac",
                                  ftol=1e-15, xtol=1e-15, gtol=1e-15, max_nfev=10000)
    return sol.x[:n], sol.x[n:2 * n], sol.x[-1], 2.0 * sol.cost


def _global(y, k0=1.0, **kw):
    return gf.fit_many(DECAY, T, y, init={"a": 3, "k": k0, "b": 1}, dtype="float64", shared=["k"], **kw)


def test_local_bound_active_in_some_fits_reaches_the_bounded_optimum():
    # two fits want b < 0: before, the joint step stalled at the clipped unbounded solution
    # (chi2 13.9767, max_iterations); the bounded optimum is 12.6054
    y = _data([0.2, -0.3, 0.0, 0.5])
    a_ref, b_ref, k_ref, chi2_ref = _stacked_reference(y, b_lo=0.0)
    assert (b_ref < 1e-12).sum() == 2  # the bound really is active in two fits
    r = _global(y, bounds={"b": (0, None)})
    assert [r.status_names[s] for s in r.status] == ["converged"] * 4  # default max_iter
    assert r.joint_stats["chisqr"] == pytest.approx(chi2_ref, rel=1e-6)
    tight = _global(y, bounds={"b": (0, None)}, tol=1e-12)
    assert tight.shared["k"] == pytest.approx(k_ref, rel=1e-6)
    np.testing.assert_allclose(tight.params["a"], a_ref, rtol=1e-6)
    np.testing.assert_allclose(tight.params["b"], b_ref, atol=1e-7)
    assert (tight.params["b"] >= 0).all() and (tight.params["b"][b_ref < 1e-12] == 0).all()


def test_bound_on_the_shared_parameter_active():
    y = _data([0.2, 0.3, 0.1, 0.5], seed=3)
    a_ref, b_ref, k_ref, chi2_ref = _stacked_reference(y, k_bounds=(0.0, 0.45))
    assert k_ref == pytest.approx(0.45, abs=1e-12)  # the unbounded k is ~0.5: the bound is active
    r = _global(y, k0=0.3, bounds={"k": (0, 0.45)}, tol=1e-12)
    assert [r.status_names[s] for s in r.status] == ["converged"] * 4
    assert r.shared["k"] == 0.45
    assert r.joint_stats["chisqr"] == pytest.approx(chi2_ref, rel=1e-8)
    np.testing.assert_allclose(r.params["a"], a_ref, rtol=1e-6)
    np.testing.assert_allclose(r.params["b"], b_ref, rtol=1e-6, atol=1e-8)


def test_shared_and_local_bounds_active_together():
    y = _data([0.2, -0.3, -0.1, 0.5], seed=11)
    a_ref, b_ref, k_ref, chi2_ref = _stacked_reference(y, b_lo=0.0, k_bounds=(0.0, 0.47))
    assert k_ref == pytest.approx(0.47, abs=1e-12) and (b_ref < 1e-12).sum() >= 1
    r = _global(y, k0=0.3, bounds={"b": (0, None), "k": (0, 0.47)})
    assert [r.status_names[s] for s in r.status] == ["converged"] * 4
    assert r.joint_stats["chisqr"] == pytest.approx(chi2_ref, rel=1e-6)
    tight = _global(y, k0=0.3, bounds={"b": (0, None), "k": (0, 0.47)}, tol=1e-12)
    np.testing.assert_allclose(tight.params["a"], a_ref, rtol=1e-6)
    np.testing.assert_allclose(tight.params["b"], b_ref, atol=1e-7)


def _poisson_reference(y, b_lo=0.0):
    """The joint Poisson maximum likelihood by L-BFGS-B (analytic gradient) on the negative
    log-likelihood, x = [a_1..a_B, b_1..b_B, k]."""
    n = len(y)

    def nll(x):
        a, b, k = x[:n, None], x[n:2 * n, None], x[-1]
        e = np.exp(-k * T)
        mu = a * e + b
        if (mu <= 0).any():
            return np.inf, np.zeros_like(x)
        f = (mu - y * np.log(mu)).sum()
        dmu = 1.0 - y / mu
        grad = np.r_[(dmu * e).sum(1), dmu.sum(1), (dmu * (-a * T * e)).sum()]
        return f, grad

    x0 = np.r_[AMPS if n == len(AMPS) else np.full(n, 2.0), np.full(n, 0.5), 0.5]
    bounds = [(None, None)] * n + [(b_lo, None)] * n + [(None, None)]
    sol = scipy_opt.minimize(nll, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                             options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 20000, "maxcor": 30})
    return sol.x[:n], sol.x[n:2 * n], sol.x[-1], sol.fun


def test_poisson_background_on_its_bound():
    # before: converged at logL -219.8290 (k 0.5111) vs the optimum -219.8282 (k 0.5120)
    rng = np.random.default_rng(7)
    y = rng.poisson(AMPS[:, None] * np.exp(-0.5 * T)).astype(float)
    a_ref, b_ref, k_ref, nll_ref = _poisson_reference(y)
    assert (b_ref < 1e-9).any()
    r = gf.fit_many(DECAY, T, y, init={"a": 3, "k": 1, "b": 1}, loss="poisson", dtype="float64", shared=["k"],
                    bounds={"b": (0, None)}, tol=1e-12)
    assert [r.status_names[s] for s in r.status] == ["converged"] * 4
    assert r.shared["k"] == pytest.approx(k_ref, rel=1e-5)
    np.testing.assert_allclose(r.params["a"], a_ref, rtol=1e-5)
    np.testing.assert_allclose(r.params["b"], b_ref, atol=1e-5)
    mu = r.params["a"][:, None] * np.exp(-r.shared["k"] * T) + r.params["b"][:, None]
    assert (mu - y * np.log(mu)).sum() == pytest.approx(nll_ref, abs=1e-8)
    assert (r.params["b"] >= 0).all()


def test_poisson_global_all_zero_fit():
    z = np.zeros_like(T)
    y = np.vstack([np.random.default_rng(0).poisson(5 * np.exp(-0.5 * T)), z])
    r = gf.fit_many(DECAY, T, y, init={"a": 3, "k": 1, "b": 1}, loss="poisson", dtype="float64", shared=["k"])
    assert [r.status_names[s] for s in r.status] == ["converged"] * 2
    mu = r.params["a"][1] * np.exp(-r.shared["k"] * T) + r.params["b"][1]
    # the optimum is mean 0 everywhere; the joint test stops within tol of the total deviance
    # (~34 here): the zero fit's deviance 2 sum(mu) is below tol times one fit's share of it
    assert (mu >= 0).all() and 2.0 * mu.sum() < 1e-4 * r.chi2.sum() / 2
    r = gf.fit_many(DECAY, T, y, init={"a": 3, "k": 1, "b": 1}, loss="poisson", dtype="float64", shared=["k"],
                    tol=1e-10)
    mu = r.params["a"][1] * np.exp(-r.shared["k"] * T) + r.params["b"][1]
    assert r.converged.all() and (mu >= 0).all() and mu.sum() < 1e-8


def _p1_counts():
    """The report's counts: five decays sharing k, the last series all zero."""
    rng = np.random.default_rng(11)
    amps, backgrounds = np.array([4, 10, 25, 60, 0.0]), np.array([0.0, 0.5, 0.0, 1.0, 0.0])
    y = rng.poisson(amps[:, None] * np.exp(-0.4 * T) + backgrounds[:, None]).astype(float)
    y[4] = 0
    return y


def _joint_nll(x, y):
    """sum(mu - y log mu) over every fit, x = [a_1..a_B, b_1..b_B, k] (y = 0 adds mu; a count
    with a mean <= 0 adds y * 690, the log of 1e-300)."""
    n = len(y)
    mu = x[:n, None] * np.exp(-x[-1] * T) + x[n:2 * n, None]
    return float(np.sum(mu - np.where(y > 0, y * np.log(np.maximum(mu, 1e-300)), 0.0)))


def _edge_reference(y, a_lo=None, b_lo=None):
    """The joint Poisson optimum subject to mu >= 0 at every point (and the bounds), by SLSQP
    with analytic gradients at tight tolerances: x = [a_1..a_B, b_1..b_B, k]."""
    n = len(y)

    def parts(x):
        e = np.exp(-x[-1] * T)
        return e, x[:n, None] * e + x[n:2 * n, None]

    def grad(x):
        e, mu = parts(x)
        dmu = 1.0 - np.where(y > 0, y / np.maximum(mu, 1e-300), 0.0)
        return np.r_[(dmu * e).sum(1), dmu.sum(1), -(dmu * x[:n, None] * T * e).sum()]

    def cons_jac(x):
        e, _ = parts(x)
        j = np.zeros((n, T.size, 2 * n + 1))
        for i in range(n):
            j[i, :, i], j[i, :, n + i] = e, 1.0
        j[:, :, -1] = -x[:n, None] * T * e
        return j.reshape(n * T.size, -1)

    bounds = [(a_lo, None)] * n + [(b_lo, None)] * n + [(None, None)]
    x0 = np.r_[np.maximum(y[:, :3].mean(1), 0.5), np.full(n, 0.5), 0.3]
    with np.errstate(all="ignore"):  # SLSQP's trial points may overflow exp(-k t)
        sol = scipy_opt.minimize(_joint_nll, x0, args=(y,), jac=lambda x, y: grad(x), method="SLSQP", bounds=bounds,
                                 constraints=[{"type": "ineq", "fun": lambda x: parts(x)[1].ravel(), "jac": cons_jac}],
                                 options={"ftol": 1e-15, "maxiter": 5000})
    assert parts(sol.x)[1].min() > -1e-9
    return sol.x, _joint_nll(sol.x, y)


@pytest.mark.parametrize("bounds", [{}, {"b": (0, None)}, {"a": (0, None)}, {"a": (0, None), "b": (0, None)}])
def test_poisson_global_all_zero_series_reaches_mean_zero_and_the_joint_optimum(bounds):
    # before: with b >= 0 the all-zero series stopped 'converged' at a = -9.0e-5, b = 9.0e-5
    # (deviance 0.0055, joint logL -289.73727 vs the optimum -289.73454)
    y = _p1_counts()
    ref, nll_ref = _edge_reference(y, bounds.get("a", (None,))[0], bounds.get("b", (None,))[0])
    r = gf.fit_many(DECAY, T, y, init={"a": 5.0, "k": 0.3, "b": 1.0}, loss="poisson", dtype="float64",
                    shared=["k"], bounds=bounds, tol=1e-12)
    assert [r.status_names[s] for s in r.status] == ["converged"] * 5
    x = np.r_[r.params["a"], r.params["b"], r.shared["k"]]
    mu = r.params["a"][:, None] * np.exp(-r.shared["k"] * T) + r.params["b"][:, None]
    assert (mu >= 0).all() and mu[4].sum() < 1e-6  # the all-zero series: mean 0 everywhere
    assert _joint_nll(x, y) == pytest.approx(nll_ref, abs=1e-6)
    assert r.shared["k"] == pytest.approx(ref[-1], rel=1e-4)


def test_poisson_global_zero_counts_inside_fits_with_counts_reach_the_edge():
    # backgrounds free: the tails' zero counts pull b below 0 until the last mean reaches 0 in
    # two fits (the others stay inside)
    y = np.random.default_rng(1).poisson(np.array([20, 30, 40, 60.0])[:, None] * np.exp(-0.8 * T)).astype(float)
    ref, nll_ref = _edge_reference(y)
    r = gf.fit_many(DECAY, T, y, init={"a": 5.0, "k": 0.3, "b": 1.0}, loss="poisson", dtype="float64",
                    shared=["k"], tol=1e-12)
    assert [r.status_names[s] for s in r.status] == ["converged"] * 4
    n = len(y)
    mu = r.params["a"][:, None] * np.exp(-r.shared["k"] * T) + r.params["b"][:, None]
    ref_mu = ref[:n, None] * np.exp(-ref[-1] * T) + ref[n:2 * n, None]
    edge = ref_mu.min(1) < 1e-6
    assert edge.tolist() == [True, False, False, True] and (y[edge] > 0).any()  # edge fits with counts
    assert (mu >= 0).all() and (mu[edge].min(1) < 1e-6).all()
    assert _joint_nll(np.r_[r.params["a"], r.params["b"], r.shared["k"]], y) == pytest.approx(nll_ref, abs=1e-6)
    np.testing.assert_allclose(r.params["b"], ref[n:2 * n], atol=1e-4)


def test_poisson_global_single_count_fit_on_the_edge_at_its_rounding_level():
    # one count among zeros, b >= 0: the optimum has a = -b (mean 0 at x = 0, where a + b cancels
    # to the rounding level). Before: 'converged' 0.0058 above the optimal NLL (a = -0.0368 vs
    # -0.0331); in a batch of hundreds such fits, trials rounded that mean to 0 and the joint fit
    # crept to max_iterations
    y = _p1_counts()
    y[4, 22] = 1
    ref, nll_ref = _edge_reference(y, b_lo=0.0)
    r = gf.fit_many(DECAY, T, y, init={"a": 5.0, "k": 0.3, "b": 1.0}, loss="poisson", dtype="float64",
                    shared=["k"], bounds={"b": (0, None)}, tol=1e-12)
    assert [r.status_names[s] for s in r.status] == ["converged"] * 5
    assert _joint_nll(np.r_[r.params["a"], r.params["b"], r.shared["k"]], y) == pytest.approx(nll_ref, abs=1e-6)
    assert r.params["a"][4] == pytest.approx(ref[4], rel=1e-5)
    assert r.params["b"][4] == pytest.approx(-r.params["a"][4], rel=1e-12)


def test_poisson_global_batch_of_sparse_and_empty_fits_converges():
    # before: max_iterations (the joint step rejected in every other iteration: one fit's mean
    # at its rounding level rounded to 0 on the trial, and the damping rose for all 300)
    rng = np.random.default_rng(3)
    amp = rng.uniform(0, 5, 300)
    amp[::3] = 0
    y = rng.poisson(amp[:, None] * np.exp(-0.4 * T)).astype(float)
    r = gf.fit_many(DECAY, T, y, init={"a": 2.0, "k": 0.3, "b": 0.5}, loss="poisson", dtype="float64",
                    shared=["k"], bounds={"b": (0, None)})
    assert set(r.status_names[s] for s in r.status) == {"converged"}
    mu = r.params["a"][:, None] * np.exp(-r.shared["k"] * T) + r.params["b"][:, None]
    assert (mu > 0).all() and mu[y.sum(1) == 0].sum(1).max() < 1e-6
    # the joint optimum itself: an all-zero fit's best is a mean of 0 whatever k, so the rest decide
    # k. scipy's L-BFGS-B on their likelihood stops short here (means near 0 at sparse fits): the
    # joint fit must reach a likelihood at least as high, and k near the truth (0.4)
    counted = y.sum(1) > 0
    _, _, k_ref, nll_ref = _poisson_reference(y[counted])
    nll = (mu - y * np.log(mu))[counted].sum()
    assert nll <= nll_ref + 1e-6 and abs(r.shared["k"] - 0.4) < 0.06
