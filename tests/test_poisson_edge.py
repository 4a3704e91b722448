"""Poisson fits whose optimum lies on the positivity edge: zero counts whose best mean is 0 (a
background or an amplitude with no bound to stop at). gf.fit and gf.fit_many converge there
(optim/positive_step.py, lsq/likelihood.fisher_polish) and agree with scipy.optimize.minimize
of the Poisson negative log-likelihood, written here from scratch, at tight tolerances."""

from __future__ import annotations

import numpy as np
import pytest

import gradfit as gf

scipy_opt = pytest.importorskip("scipy.optimize")

X = np.linspace(0, 5, 33)
DECAY = "a*exp(-k*x) + b"


def _nll(mean, y):
    """sum(mu - y log mu) as a function of the parameters; +huge outside mu >= 0 (y = 0 points
    may sit at mu = 0, whose likelihood is 1)."""
    def objective(p):
        mu = mean(p)
        if np.any(mu < 0) or np.any((mu <= 0) & (y > 0)):
            return 1e300
        return float(np.sum(mu - np.where(y > 0, y * np.log(np.where(mu > 0, mu, 1.0)), 0.0)))

    return objective


def _decay_counts(seed, background=0.0):
    rng = np.random.default_rng(seed)
    return rng.poisson(30 * np.exp(-2 * X) + background).astype(float)


def _decay_on_edge_reference(y):
    """(a, k, b) with the mean 0 at the last point, b = -a exp(-k x_max): the optimum over (a, k)
    on that edge by Nelder-Mead then BFGS (tight), checked to be feasible and the edge to be
    the constrained optimum (SLSQP with mu >= 0 at every point finds the same objective)."""
    def mean(p):
        return p[0] * np.exp(-p[1] * X) + p[2]

    def on_edge(q):
        return mean([q[0], q[1], -q[0] * np.exp(-q[1] * X[-1])])

    objective = _nll(on_edge, y)
    q = scipy_opt.minimize(objective, [25.0, 2.0], method="Nelder-Mead",
                           options={"xatol": 1e-13, "fatol": 1e-15, "maxiter": 20000}).x
    q = scipy_opt.minimize(objective, q, method="BFGS", options={"gtol": 1e-12}).x
    p = np.array([q[0], q[1], -q[0] * np.exp(-q[1] * X[-1])])
    assert mean(p).min() > -1e-12
    free = scipy_opt.minimize(_nll(mean, y), [25.0, 2.0, 0.01], method="SLSQP",
                              constraints=[{"type": "ineq", "fun": mean}], options={"ftol": 1e-15, "maxiter": 2000})
    assert abs(free.fun - objective(q)) < 1e-7 * abs(free.fun)  # the edge is where the optimum is
    assert free.x[2] < 0  # a background below 0: only the positivity edge stops it
    return p


def _interior_reference(y):
    p = scipy_opt.minimize(_nll(lambda p: p[0] * np.exp(-p[1] * X) + p[2], y), [25.0, 2.0, 0.5],
                           method="Nelder-Mead", options={"xatol": 1e-13, "fatol": 1e-15, "maxiter": 40000}).x
    return scipy_opt.minimize(_nll(lambda p: p[0] * np.exp(-p[1] * X) + p[2], y), p, method="BFGS",
                              options={"gtol": 1e-12}).x


def _assert_params(params, ref, rtol=1e-6):
    np.testing.assert_allclose([params["a"], params["k"]], ref[:2], rtol=rtol)
    np.testing.assert_allclose(params["b"], ref[2], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_fit_background_on_the_positivity_edge_matches_scipy(seed):
    y = _decay_counts(seed)
    ref = _decay_on_edge_reference(y)
    r = gf.fit(DECAY, x=X, y=y, init={"a": 25.0, "k": 2.0, "b": 0.01}, loss="poisson")
    assert r.status == "converged"
    _assert_params(r.params, ref)
    mu = r.params["a"] * np.exp(-r.params["k"] * X) + r.params["b"]
    assert 0 < mu.min() < 1e-6  # on the edge, inside the feasible set


def test_fit_many_mixes_edge_and_interior_fits_and_matches_scipy():
    edge = [_decay_counts(s) for s in range(5)]
    interior = [_decay_counts(10 + s, background=1.0) for s in range(3)]
    y = np.stack(edge + interior)
    r = gf.fit_many(DECAY, X, y, init={"a": 25.0, "k": 2.0, "b": 0.01}, loss="poisson", dtype="float64", tol=1e-12)
    assert (r.status_text == "converged").all()
    for i, counts in enumerate(y):
        ref = _decay_on_edge_reference(counts) if i < 5 else _interior_reference(counts)
        _assert_params({n: r.params[n][i] for n in ("a", "k", "b")}, ref)


def _edge_at_parameter_zero(mean, y, p0):
    """The optimum when the edge is a parameter at 0 (a mean linear in it, minimum over x at
    that parameter): L-BFGS-B with that bound, tight."""
    return scipy_opt.minimize(_nll(mean, y), p0, method="L-BFGS-B", bounds=[(0, None), (0, None)],
                              options={"ftol": 1e-15, "gtol": 1e-13, "maxiter": 10000}).x


@pytest.mark.parametrize("case", ["line", "parabola"])
def test_zero_counts_where_the_best_mean_is_zero_single_and_many(case):
    """A line through the origin's counts (zero at small x) and a parabola's (zero around its
    vertex): the best mean is 0 at x = 0 / the vertex, with b unbounded in gradfit."""
    x = np.linspace(0, 5, 33)
    rngs = [np.random.default_rng(seed) for seed in range(3)]
    if case == "line":
        text, ys = "a*x + b", [np.r_[np.zeros(16), g.poisson(0.8 * x[16:])].astype(float) for g in rngs]

        def mean(p, x=x):
            return p[0] * x + p[1]
    else:
        text, ys = "a*(x - 2.5)**2 + b", [g.poisson(1.2 * (x - 2.5) ** 2).astype(float) for g in rngs]

        def mean(p, x=x):
            return p[0] * (x - 2.5) ** 2 + p[1]
    init = {"a": 1.0, "b": 0.5}
    many = gf.fit_many(text, x, np.stack(ys), init=init, loss="poisson", dtype="float64", tol=1e-12)
    assert (many.status_text == "converged").all()
    for i, y in enumerate(ys):
        ref = _edge_at_parameter_zero(mean, y, [1.0, 0.5])
        assert ref[1] == 0.0  # the edge binds
        one = gf.fit(text, x=x, y=y, init=init, loss="poisson")
        assert one.status == "converged"
        for params in (one.params, {n: many.params[n][i] for n in ("a", "b")}):
            np.testing.assert_allclose(params["a"], ref[0], rtol=1e-6)
            assert 0 <= params["b"] < 1e-7


def test_global_poisson_fit_with_backgrounds_on_the_edge_matches_scipy():
    """fit_many(shared=["k"], loss="poisson"): four decays sharing k, each background on its
    positivity edge (b_i = -a_i exp(-k x_max)); the joint optimum over (k, a_1..a_4) on those
    edges by scipy, checked against SLSQP over all nine parameters with mu >= 0 everywhere."""
    y = np.stack([_decay_counts(s) for s in range(4)])
    n = len(y)

    def on_edges(q):
        k, a = q[0], np.asarray(q[1:])
        return a[:, None] * (np.exp(-k * X) - np.exp(-k * X[-1]))

    def objective(q):
        mu = on_edges(q)
        if np.any(mu < 0):
            return 1e300
        return float(np.sum(mu - np.where(y > 0, y * np.log(np.where(mu > 0, mu, 1.0)), 0.0)))

    q = scipy_opt.minimize(objective, [2.0] + [25.0] * n, method="Nelder-Mead",
                           options={"xatol": 1e-12, "fatol": 1e-15, "maxiter": 40000, "maxfev": 40000}).x
    q = scipy_opt.minimize(objective, q, method="BFGS", options={"gtol": 1e-11}).x

    def means(v):
        return v[1:1 + n, None] * np.exp(-v[0] * X) + v[1 + n:, None]

    def joint(v):
        mu = means(v)
        if np.any(mu < 0):
            return 1e300
        return float(np.sum(mu - np.where(y > 0, y * np.log(np.where(mu > 0, mu, 1.0)), 0.0)))

    free = scipy_opt.minimize(joint, np.r_[2.0, [25.0] * n, [0.01] * n], method="SLSQP",
                              constraints=[{"type": "ineq", "fun": lambda v: means(v).ravel()}],
                              options={"ftol": 1e-15, "maxiter": 3000})
    assert abs(free.fun - objective(q)) < 1e-7 * abs(free.fun)  # every background is on its edge
    r = gf.fit_many(DECAY, X, y, init={"a": 25.0, "k": 2.0, "b": 0.01}, shared=["k"], loss="poisson",
                    dtype="float64", tol=1e-12)
    assert (r.status_text == "converged").all()
    np.testing.assert_allclose(r.shared["k"], q[0], rtol=1e-6)
    np.testing.assert_allclose(r.params["a"], q[1:], rtol=1e-6)
    np.testing.assert_allclose(r.params["b"], -q[1:] * np.exp(-q[0] * X[-1]), rtol=1e-5)


# all counts zero: the optimum is mean 0 at every point (deviance 0, analytic). The end-point
# tests measure a zero deviance against one count per point (before: fit_many ended
# max_iterations at deviance 1e-76), and the step stops at the zero count it drives through 0
# first (before: gf.fit crept along the edge to a = -0.097, b = 0.097, deviance 6.8).
ZEROS = np.zeros(40)
T40 = np.linspace(0, 10, 40)


@pytest.mark.parametrize("formula, init, status", [("a*exp(-0.5*t) + b", {"a": 3, "b": 1}, "converged"),
                                                   # the rate of an amplitude that is 0: not determined
                                                   ("a*exp(-k*t) + b", {"a": 3, "k": 1, "b": 1}, "singular")])
def test_single_fit_of_all_zero_counts_reaches_mean_zero(formula, init, status):
    r = gf.fit(formula, x={"t": T40}, y=ZEROS, init=init, loss="poisson")
    assert r.status == status
    mu = r.predict({"t": T40})
    assert mu.min() >= 0 and mu.sum() < 1e-9
    assert r.stats["deviance"] < 1e-9
    assert min(r.params["a"], r.params["b"]) > -1e-12  # no negative amplitude on the way


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fit_many_of_all_zero_counts_converges_at_mean_zero(dtype):
    y = np.vstack([np.random.default_rng(0).poisson(5 * np.exp(-0.5 * T40)), ZEROS, ZEROS])
    f64 = dtype == "float64"
    m = gf.fit_many("a*exp(-0.5*x) + b", T40, y, init={"a": 3, "b": 1}, loss="poisson", dtype=dtype,
                    tol=1e-12 if f64 else None)
    assert [m.status_names[s] for s in m.status] == ["converged"] * 3
    mu = m.params["a"][1:, None] * np.exp(-0.5 * T40) + m.params["b"][1:, None]
    assert mu.min() >= 0 and mu.sum(1).max() < (1e-9 if f64 else 1e-5)
    # the fit with counts is unaffected: scipy's optimum of its likelihood
    ref = scipy_opt.minimize(_nll(lambda p: p[0] * np.exp(-0.5 * T40) + p[1], y[0]), [3.0, 0.5],
                             method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 20000}).x
    np.testing.assert_allclose([m.params["a"][0], m.params["b"][0]], ref, rtol=1e-6 if f64 else 1e-2)


def test_a_fit_on_a_curved_edge_reaches_the_maximum():
    # a new user's decay: its best last mean is 0, and that edge moves with the rate. Linear
    # steps along it crossed it on its curvature, every such trial was rejected, and gf.fit and
    # fit_many ended stalled 1.97 and 0.85 above the maximum. The reference: scipy's SLSQP with
    # every mean >= 0, polished by Nelder-Mead
    from scipy import optimize

    x = np.arange(32) * 0.25
    y = np.array([2, 1, 0, 3, 3, 0, 3, 1, 0, 0, 1, 3, 2, 1, 0, 0, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0])

    def nll(p):
        m = p[0] * np.exp(-p[1] * x) + p[2]
        if np.any(m[y > 0] <= 0) or np.any(m < -1e-12):
            return 1e300
        return m.sum() - (y[y > 0] * np.log(m[y > 0])).sum()

    cons = {"type": "ineq", "fun": lambda p: p[0] * np.exp(-p[1] * x) + p[2]}
    ref = optimize.minimize(nll, [5.0, 0.3, 0.1], method="SLSQP", constraints=[cons], options=dict(ftol=1e-14))
    ref = optimize.minimize(nll, ref.x, method="Nelder-Mead", options=dict(xatol=1e-10, fatol=1e-12, maxiter=20000))
    init = {"a": 5.0, "k": 0.3, "o": 0.1}
    r = gf.fit("a*exp(-k*x) + o", x={"x": x}, y=y, init=init, loss="poisson")
    assert str(r.status) == "converged"
    assert nll([r.params[n] for n in "ako"]) - ref.fun < 1e-6
    np.testing.assert_allclose([r.params[n] for n in "ako"], ref.x, rtol=1e-3)
    rm = gf.fit_many("a*exp(-k*x) + o", x, y[None, :], init=init, loss="poisson", dtype="float64")
    assert rm.converged.all()
    assert nll([rm.params[n][0] for n in "ako"]) - ref.fun < 1e-3  # fit_many's default tol, 1e-4 of the deviance


# low-count decays (amplitude 2-8 counts, their own rate and background: rows 7, 23, 55, 62 and
# 111 of a 200-decay batch) whose maximum lies on or near the positivity edge of the last means
EDGE_X = np.arange(32) * 0.25
EDGE_COUNTS = np.array([
    [2, 4, 9, 5, 7, 4, 2, 7, 3, 2, 3, 2, 3, 6, 2, 4, 1, 3, 6, 5, 3, 6, 4, 7, 3, 6, 4, 7, 4, 5, 3, 2],
    [5, 7, 7, 6, 4, 3, 8, 5, 8, 4, 6, 4, 4, 4, 4, 1, 2, 4, 3, 5, 3, 4, 1, 6, 2, 2, 4, 2, 3, 0, 0, 4],
    [1, 2, 1, 2, 0, 2, 3, 4, 0, 5, 1, 1, 2, 1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 3, 0, 0, 0, 1],
    [0, 3, 2, 3, 2, 0, 1, 3, 0, 2, 0, 0, 1, 3, 1, 4, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    [4, 4, 3, 1, 3, 2, 1, 1, 0, 0, 2, 0, 2, 2, 2, 1, 1, 0, 0, 0, 2, 1, 1, 1, 0, 0, 2, 0, 0, 0, 0, 0]], dtype=float)


def _edge_nll(p, y):
    m = p[0] * np.exp(-p[1] * EDGE_X) + p[2]
    if np.any(m[y > 0] <= 0) or np.any(m < -1e-12):
        return 1e300
    return m.sum() - (y[y > 0] * np.log(m[y > 0])).sum()


def _edge_maximum(y):
    """scipy's best of SLSQP (every mean >= 0) from three starts, each polished by Nelder-Mead."""
    from scipy import optimize

    cons = {"type": "ineq", "fun": lambda p: p[0] * np.exp(-p[1] * EDGE_X) + p[2]}
    best = np.inf
    with np.errstate(all="ignore"):  # SLSQP's trial steps may overflow the exponential
        for start in ([5.0, 0.3, 0.1], [3.0, 0.2, 0.2], [6.0, 0.5, 0.05]):
            s = optimize.minimize(_edge_nll, start, args=(y,), method="SLSQP", constraints=[cons],
                                  options=dict(ftol=1e-14, maxiter=1000))
            s2 = optimize.minimize(_edge_nll, s.x, args=(y,), method="Nelder-Mead",
                                   options=dict(xatol=1e-10, fatol=1e-12, maxiter=20000))
            best = min(best, s.fun, s2.fun)
    return best


def test_low_count_fits_reach_the_maximum_along_the_edge():
    # before: a zero count held at the edge (mu ~ 1e-13) has Fisher weight w/mu ~ 1e13, and
    # Marquardt's damping, scaled by diag(A), froze every parameter its mean depends on: gf.fit
    # ended stalled 1.46 below the maximum on row 62; fit_many's loop stopped on a small change
    # of the deviance long before the gradient test passed (rows 7, 23, 55, 62 ended stalled,
    # row 111 "converged" 0.014 below the maximum)
    ref = np.array([_edge_maximum(y) for y in EDGE_COUNTS])
    init = {"a": 5.0, "k": 0.3, "o": 0.1}
    for y, best in zip(EDGE_COUNTS, ref):
        r = gf.fit("a*exp(-k*x) + o", x={"x": EDGE_X}, y=y, init=init, loss="poisson")
        assert str(r.status) == "converged"
        assert _edge_nll([r.params[n] for n in "ako"], y) - best < 1e-6
    for dtype in ("float64", "float32"):
        rm = gf.fit_many("a*exp(-k*x) + o", EDGE_X, EDGE_COUNTS, init=init, loss="poisson", dtype=dtype, max_iter=200)
        assert rm.converged.all(), rm.status_text
        gaps = [_edge_nll(p, y) for p, y in zip(np.column_stack([rm.params[n] for n in "ako"]), EDGE_COUNTS)] - ref
        assert gaps.max() < 0.01  # the default tol: 1e-4 of a deviance of ~40
    rm = gf.fit_many("a*exp(-k*x) + o", EDGE_X, EDGE_COUNTS, init=init, loss="poisson", dtype="float64", max_iter=200,
                     tol=1e-10)
    assert rm.converged.all()
    gaps = [_edge_nll(p, y) for p, y in zip(np.column_stack([rm.params[n] for n in "ako"]), EDGE_COUNTS)] - ref
    assert np.abs(gaps).max() < 1e-6


def test_a_long_path_along_the_edge_is_taken_as_far_as_it_goes():
    # the maximum (a = 15.4, k = 0.040, o = -11.3, last mean 0) lies far along the edge from the
    # start: Levenberg-Marquardt on the deviance residuals stalled 0.76 below it; Fisher scoring
    # creeps along the edge and runs out of iterations 1e-4 below it, and that end is reported,
    # not converged
    y = np.array([2, 6, 2, 3, 2, 3, 5, 4, 3, 3, 3, 4, 5, 2, 2, 2, 1, 1, 0, 2, 4, 2, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0.0])
    r = gf.fit("a*exp(-k*x) + o", x={"x": EDGE_X}, y=y, init={"a": 5.0, "k": 0.3, "o": 0.1}, loss="poisson")
    assert str(r.status) != "converged" and "not converged" in r.message
    assert _edge_nll([r.params[n] for n in "ako"], y) - _edge_maximum(y) < 1e-3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_rate_left_undetermined_by_all_zero_counts_is_singular(dtype):
    # all counts 0: the maximum is mean 0 everywhere (a = o = 0), whatever k. Before, gf.fit and
    # fit_many in float64 (also with shared k) said "converged" with k's standard error 4e11,
    # float32 said singular
    x = np.linspace(0, 5, 20)
    init = {"a": 3.0, "k": 0.5, "o": 0.5}
    if dtype == "float64":
        r = gf.fit("y ~ a*exp(-k*x) + o", x={"x": x}, y=np.zeros(20), init=init, loss="poisson")
        assert r.status == "singular" and "not determined" in r.message
        assert abs(r.params["a"]) < 1e-9 and abs(r.params["o"]) < 1e-9
    m = gf.fit_many("a*exp(-k*x) + o", x, np.zeros((3, 20)), init=init, loss="poisson", dtype=dtype)
    assert list(m.status_text) == ["singular"] * 3
    m = gf.fit_many("a*exp(-k*x) + o", x, np.zeros((3, 20)), init=init, loss="poisson", dtype=dtype, shared=["k"])
    assert list(m.status_text) == ["singular"] * 3
    # a determined fit in the same batch keeps its status
    y = np.vstack([np.random.default_rng(3).poisson(20 * np.exp(-0.7 * x) + 1), np.zeros(20)])
    m = gf.fit_many("a*exp(-k*x) + o", x, y, init=init, loss="poisson", dtype=dtype)
    assert list(m.status_text) == ["converged", "singular"]


def test_a_shared_fit_without_any_usable_point_leaves_the_shared_value_nan():
    # before: the shared value was the init (0.5) with dof -1, silently
    x = np.linspace(0, 5, 20)
    for loss in ("mse", "poisson"):
        with pytest.warns(gf.GradfitWarning, match="no fit has a usable point"):
            m = gf.fit_many("a*exp(-k*x) + o", x, np.full((3, 20), np.nan), init={"a": 3.0, "k": 0.5, "o": 0.5},
                            shared=["k"], loss=loss)
        assert list(m.status_text) == ["too_few_points"] * 3
        assert np.isnan(m.shared["k"]) and np.isnan(m.shared_stderr["k"]) and np.isnan(m.params["k"]).all()
        assert m.joint_stats["n"] == 0 and np.isnan(m.joint_stats["dof"])
