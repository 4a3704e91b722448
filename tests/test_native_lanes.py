"""fit_many's whole batch in C (lsq/native_many.py, optim/native_batch.py) with its fits across
SIMD lanes (optim/native_lanes.py): against scipy's least_squares at tight tolerances (never
gradfit's own output), against the chunked per-fit kernel (the same algorithm; sums in another
order), statuses, masks, weights, per-fit inputs, fixed parameters, bounds (the per-fit loop), long
data (no lanes), batches that leave lanes empty, and thread counts."""

from __future__ import annotations

import numpy as np
import pytest

import gradfit as gf
from gradfit import _native
from gradfit.lsq import batched

pytestmark = pytest.mark.skipif(_native.compiler() is None, reason="no C compiler")
scipy_optimize = pytest.importorskip("scipy.optimize")

RNG = np.random.default_rng(2026)
F = "a*exp(-(x-c)**2/(2*w**2)) + o"


@pytest.fixture
def whole_batch_runs(monkeypatch):
    """Counts the calls of optim/native_batch.run_many (fit_many's whole batch in C)."""
    from gradfit.optim import native_batch

    calls = []
    original = native_batch.run_many
    monkeypatch.setattr(native_batch, "run_many", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def _params(r) -> np.ndarray:
    return np.column_stack([r.params[k] for k in r.param_names])


def _stderr(r) -> np.ndarray:
    return np.column_stack([r.stderr[k] for k in r.param_names])


def _scipy_fit(fn, x, y, p0, sigma=None):
    """The least-squares minimizer and its standard errors (curve_fit's scaling) by scipy at tight
    tolerances, over the finite points."""
    ok = np.isfinite(y)
    args = (x[..., ok] if np.ndim(x) and np.shape(x)[-1] == len(y) else x)
    sw = 1.0 if sigma is None else 1.0 / sigma[ok]
    sol = scipy_optimize.least_squares(lambda p: (fn(args, *p) - y[ok]) * sw, p0, method="lm", xtol=1e-15,
                                       ftol=1e-15, gtol=1e-15, max_nfev=20000)
    jac = sol.jac
    dof = ok.sum() - len(p0)
    cov = np.linalg.inv(jac.T @ jac) * (sol.fun @ sol.fun) / dof
    return sol.x, np.sqrt(np.diag(cov))


def _gaussian_batch(n, m=32, seed=0, noise=2.0):
    rng = np.random.default_rng(seed)
    x = np.arange(m, dtype=np.float64)
    truth = np.column_stack([rng.uniform(200, 1000, n), 15.5 + rng.uniform(-4, 4, n), rng.uniform(2, 4, n),
                             rng.uniform(10, 100, n)])
    a, c, w, o = (truth[:, i:i + 1] for i in range(4))
    y = a * np.exp(-(x - c) ** 2 / (2 * w**2)) + o + noise * rng.standard_normal((n, m))
    return x, y, truth


def _gauss(x, a, c, w, o):
    return a * np.exp(-(x - c) ** 2 / (2 * w**2)) + o


@pytest.mark.parametrize("n", [1, 5, 37])  # fewer fits than lanes, and a partly filled last round
def test_gaussians_equal_scipy_in_float64(n, whole_batch_runs):
    x, y, truth = _gaussian_batch(n, seed=n)
    init = truth * 1.1
    r = gf.fit_many("a*exp(-(x-c)**2/(2*w**2)) + o", x, y, init={k: init[:, j] for j, k in enumerate("acwo")},
                    dtype="float64", tol=1e-12, compile=True, progress=False)
    assert whole_batch_runs
    assert (r.status == gf.Status.CONVERGED.code).all()
    for i in range(n):
        p, se = _scipy_fit(_gauss, x, y[i], init[i])
        np.testing.assert_allclose(_params(r)[i], p, rtol=1e-8)
        np.testing.assert_allclose(_stderr(r)[i], se, rtol=1e-5)


def test_float32_batch_agrees_with_float64_scipy_to_float32_accuracy(whole_batch_runs):
    x, y, truth = _gaussian_batch(64, seed=3)
    init = truth * 0.9
    r = gf.fit_many("a*exp(-(x-c)**2/(2*w**2)) + o", x, y.astype(np.float32),
                    init={k: init[:, j] for j, k in enumerate("acwo")}, compile=True, progress=False)
    assert whole_batch_runs and r.timings["native"]
    assert r.converged.all()
    for i in range(0, 64, 7):
        p, se = _scipy_fit(_gauss, x, y[i].astype(np.float32).astype(float), init[i])
        # float32 sums at the default tol=1e-4: within a small fraction of a standard error
        assert np.all(np.abs(_params(r)[i] - p) < 0.05 * se)


def test_masks_weights_per_fit_inputs_and_fixed_parameters(whole_batch_runs):
    n, m = 21, 25
    x = np.sort(RNG.uniform(0, 4, (n, m)), axis=1)  # per-fit inputs
    a, k = RNG.uniform(1, 3, n), RNG.uniform(0.5, 2, n)
    sigma = RNG.uniform(0.01, 0.05, (n, m))
    y = a[:, None] * np.exp(-k[:, None] * x) + 0.3 + sigma * RNG.standard_normal((n, m))
    y[2, 5] = np.nan
    y[4, :3] = np.nan
    r = gf.fit_many("a*exp(-k*x) + c", x, y, sigma=sigma, init={"a": 1.0, "k": 1.0, "c": 0.3}, fixed={"c": 0.3},
                    dtype="float64", tol=1e-12, compile=True, progress=False)
    assert whole_batch_runs
    assert (r.status == gf.Status.CONVERGED.code).all()
    assert (r.stderr["c"] == 0).all() and (r.params["c"] == 0.3).all()
    for i in range(n):
        def f(xx, aa, kk):
            return aa * np.exp(-kk * xx) + 0.3
        p, se = _scipy_fit(f, x[i], y[i], [1.0, 1.0], sigma=sigma[i])
        np.testing.assert_allclose([r.params["a"][i], r.params["k"][i]], p, rtol=1e-8)
        np.testing.assert_allclose([r.stderr["a"][i], r.stderr["k"][i]], se, rtol=1e-5)
    assert r.stats["n"][2] == m - 1 and r.stats["n"][4] == m - 3


def test_two_inputs_one_parameter_and_seven_parameters(whole_batch_runs):
    n, m = 19, 40
    x, z = RNG.uniform(0, 2, m), RNG.uniform(-1, 1, m)
    s = RNG.uniform(0.5, 2, n)
    y = s[:, None] * x * z + 0.01 * RNG.standard_normal((n, m))
    r = gf.fit_many("s*x*z", {"x": x, "z": z}, y, init={"s": 1.0}, dtype="float64", tol=1e-12, compile=True,
                    progress=False)
    expected = (y @ (x * z)) / ((x * z) @ (x * z))  # linear in s: the closed form
    # chi2 stops changing by 1e-12 of itself within ~1e-6 standard errors of the optimum
    assert np.all(np.abs(r.params["s"] - expected) < 1e-5 * r.stderr["s"])
    formula = "a1*exp(-(t-c1)**2/(2*s1**2)) + a2*exp(-(t-c2)**2/(2*s2**2)) + o"  # two peaks: 7 parameters
    names = ("a1", "c1", "s1", "a2", "c2", "s2", "o")
    t = np.linspace(0, 10, 80)
    truth = np.array([3.0, 3.0, 0.8, 2.0, 6.5, 1.2, 0.5])

    def f(tt, a1, c1, s1, a2, c2, s2, o):
        return a1 * np.exp(-(tt - c1) ** 2 / (2 * s1**2)) + a2 * np.exp(-(tt - c2) ** 2 / (2 * s2**2)) + o
    y7 = np.stack([f(t, *truth) + 0.02 * RNG.standard_normal(t.size) for _ in range(18)])
    start = truth * 1.05
    r7 = gf.fit_many(formula, {"t": t}, y7, init=dict(zip(names, start)), dtype="float64", tol=1e-12, compile=True,
                     progress=False)
    assert len(whole_batch_runs) == 2 and r7.converged.all()
    for i in range(0, 18, 5):
        p, se = _scipy_fit(f, t, y7[i], start)
        np.testing.assert_allclose(_params(r7)[i], p, rtol=1e-7)
        np.testing.assert_allclose(_stderr(r7)[i], se, rtol=1e-5)


def test_lanes_agree_with_the_chunked_per_fit_kernel(monkeypatch):
    """The same algorithm in both: float64 fits end at the same optimum to rounding, with the same
    statuses; bounded fits take the per-fit loop in both, so they agree bit for bit."""
    x, y, truth = _gaussian_batch(300, seed=11)
    init = {k: truth[:, j] * 1.15 for j, k in enumerate("acwo")}
    capped = np.arange(300) % 3 == 0
    init["w"] = np.where(capped, 2.0, init["w"])
    bounds = {"w": (0.0, np.where(capped, 2.5, np.inf))}  # a third bounded (most of those actively)
    kw = dict(init=init, bounds=bounds, dtype="float64", tol=1e-12, compile=True, progress=False)
    whole = gf.fit_many("a*exp(-(x-c)**2/(2*w**2)) + o", x, y, **kw)
    monkeypatch.setattr(batched, "solve_native", lambda *a, **k: None)
    chunked = gf.fit_many("a*exp(-(x-c)**2/(2*w**2)) + o", x, y, **kw)
    assert whole.timings["chunk_size"] == 300 and chunked.timings["native"]
    np.testing.assert_array_equal(whole.status, chunked.status)
    np.testing.assert_allclose(_params(whole), _params(chunked), rtol=1e-9)
    np.testing.assert_allclose(_stderr(whole), _stderr(chunked), rtol=1e-6)
    bounded = np.arange(300) % 3 == 0
    np.testing.assert_array_equal(_params(whole)[bounded], _params(chunked)[bounded])
    assert (whole.params["w"][bounded] <= 2.5).all()


def test_statuses_as_the_chunked_kernel(monkeypatch):
    """max_iterations, too_few_points, not_finite (an overflowing start) and singular (a product
    of two parameters) come out as the per-fit kernel says."""
    x = np.linspace(0, 4, 12)
    y = np.stack([2.0 * np.exp(-1.3 * x) + 0.01 * RNG.standard_normal(12) for _ in range(40)])
    y[3, 2:] = np.nan  # two points for three parameters
    k0 = np.ones(40)
    k0[7] = -400.0  # exp(400 x) overflows at the start
    cases = [("a*exp(-k*x) + c", dict(init={"a": 1.0, "k": k0, "c": 0.0}, max_iter=50)),
             ("a*exp(-k*x) + c", dict(init={"a": 1.0, "k": 1.0, "c": 0.0}, max_iter=2)),
             ("a*b*exp(-k*x)", dict(init={"a": 1.0, "b": 1.0, "k": 1.0}))]
    for formula, kw in cases:
        whole = gf.fit_many(formula, x, y, compile=True, progress=False, dtype="float64", **kw)
        with monkeypatch.context() as mp:
            mp.setattr(batched, "solve_native", lambda *a, **k: None)
            chunked = gf.fit_many(formula, x, y, compile=True, progress=False, dtype="float64", **kw)
        np.testing.assert_array_equal(whole.status, chunked.status)
        np.testing.assert_array_equal(whole.iterations, chunked.iterations)
    codes = {int(c) for c in whole.status}
    assert gf.Status.SINGULAR.code in codes
    first = gf.fit_many("a*exp(-k*x) + c", x, y, compile=True, progress=False, **cases[0][1])
    assert first.status[3] == gf.Status.TOO_FEW_POINTS.code and first.status[7] == gf.Status.NOT_FINITE.code
    capped = gf.fit_many("a*exp(-k*x) + c", x, y, compile=True, progress=False, **cases[1][1])
    assert (capped.status[np.arange(40) != 3] == gf.Status.MAX_ITERATIONS.code).all()


def test_long_data_takes_the_per_fit_loop(whole_batch_runs):
    m = 5000  # above LANES_MAX_POINTS: each fit's loop vectorizes over its points instead
    x = np.linspace(0, 5, m)
    y = np.stack([a * np.exp(-k * x) + 0.01 * RNG.standard_normal(m) for a, k in [(2.0, 1.1), (1.5, 0.7), (3.0, 2.0)]])
    r = gf.fit_many("a*exp(-k*x)", x, y, init={"a": 1.0, "k": 1.0}, dtype="float64", tol=1e-12, compile=True,
                    progress=False)
    assert whole_batch_runs
    for i in range(3):
        p, se = _scipy_fit(lambda xx, a, k: a * np.exp(-k * xx), x, y[i], [1.0, 1.0])
        np.testing.assert_allclose(_params(r)[i], p, rtol=1e-9)
        np.testing.assert_allclose(_stderr(r)[i], se, rtol=1e-5)


def test_threads_progress_and_chunks_change_no_fit():
    x, y, truth = _gaussian_batch(2000, seed=5)
    init = {k: truth[:, j] * 1.1 for j, k in enumerate("acwo")}
    runs = [gf.fit_many("a*exp(-(x-c)**2/(2*w**2)) + o", x, y.astype(np.float32), init=init, threads=t,
                        compile=True, progress=False) for t in (1, 2)]
    from gradfit.lsq import native_many

    old = native_many.SLAB
    native_many.SLAB = 300  # slabs between progress updates
    try:
        runs.append(gf.fit_many("a*exp(-(x-c)**2/(2*w**2)) + o", x, y.astype(np.float32), init=init, compile=True,
                                progress=True))
    finally:
        native_many.SLAB = old
    chunked = gf.fit_many("a*exp(-(x-c)**2/(2*w**2)) + o", x, y.astype(np.float32), init=init, compile=True,
                          chunk_size=7, progress=False)
    assert chunked.timings["native"] and chunked.timings["chunk_size"] == 7  # the user's chunks, in C too
    runs.append(chunked)
    for other in runs[1:]:
        np.testing.assert_array_equal(_params(runs[0]), _params(other))
        np.testing.assert_array_equal(runs[0].status, other.status)


def test_compile_false_and_no_compiler_never_run_it(monkeypatch, whole_batch_runs):
    x, y, truth = _gaussian_batch(20, seed=9)
    init = {k: truth[:, j] * 1.1 for j, k in enumerate("acwo")}
    r = gf.fit_many("a*exp(-(x-c)**2/(2*w**2)) + o", x, y, init=init, compile=False, progress=False)
    monkeypatch.setenv("GRADFIT_CC", "")
    r2 = gf.fit_many("a*exp(-(x-c)**2/(2*w**2)) + o", x, y, init=init, compile=True, progress=False)
    assert not whole_batch_runs and not r.timings["native"] and not r2.timings["native"]
    assert r.converged.all()


def _counts(n, amplitude, offset, seed):
    """Gpufit's workload as counts: Gaussian peaks plus an offset, Poisson noise."""
    rng = np.random.default_rng(seed)
    x = np.arange(32.0)
    truth = np.column_stack([rng.uniform(*amplitude, n), 15.5 + rng.uniform(-4, 4, n), rng.uniform(2, 4, n),
                             rng.uniform(*offset, n)])
    mean = truth[:, :1] * np.exp(-(x - truth[:, 1:2]) ** 2 / (2 * truth[:, 2:3] ** 2)) + truth[:, 3:]
    return x, rng.poisson(mean).astype(np.float64), truth


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_poisson_fits_in_lanes_equal_the_torch_kernel(dtype, whole_batch_runs):
    """Fisher scoring of the deviance in C (lanes_sums_poisson) against batch_lm's in torch: the same
    statuses, parameters to rounding, and the float64 deviance, Pearson chi-square and
    log-likelihood (gf_poisson_statistics against likelihood.batch_poisson_statistics)."""
    x, y, truth = _counts(200, (200, 1000), (10, 100), seed=4)
    assert not (y == 0).any()
    init = {k: truth[:, j] * 1.1 for j, k in enumerate("acwo")}
    kw = dict(init=init, loss="poisson", dtype=dtype, tol=1e-10 if dtype == "float64" else 1e-4, progress=False)
    native = gf.fit_many(F, x, y, compile=True, **kw)
    eager = gf.fit_many(F, x, y, compile=False, **kw)
    assert whole_batch_runs and native.timings["native"] and "deferred" not in native.timings
    np.testing.assert_array_equal(native.status, eager.status)
    ok = native.converged
    assert ok.mean() > 0.95
    scale = _stderr(eager)[ok]
    assert np.all(np.abs(_params(native)[ok] - _params(eager)[ok]) <= (1e-6 if dtype == "float64" else 0.05) * scale)
    np.testing.assert_allclose(_stderr(native)[ok], scale, rtol=1e-6 if dtype == "float64" else 2e-3)
    for key in ("deviance", "chisqr", "loglike"):
        np.testing.assert_allclose(native.stats[key][ok], eager.stats[key][ok], rtol=1e-9 if dtype == "float64" else 1e-4)


def test_poisson_fits_with_zero_counts_or_bounds_go_to_the_torch_kernel(monkeypatch):
    """A zero count (the positivity edge's steps, optim/positive_step.py) or a finite bound: those fits
    run in torch, the others in C, each as its kernel alone gives them."""
    from gradfit.lsq import compiled

    monkeypatch.setattr(compiled, "spent_enough", lambda *a: True)  # compile="auto" with the kernel built
    x, y, truth = _counts(300, (10, 50), (1, 5), seed=6)
    zero = (y == 0).any(axis=1)
    assert 30 < zero.sum() < 290
    init = {k: truth[:, j] * 1.1 for j, k in enumerate("acwo")}
    kw = dict(init=init, loss="poisson", dtype="float64", tol=1e-10, progress=False)
    mixed = gf.fit_many(F, x, y, **kw)
    eager = gf.fit_many(F, x, y, compile=False, **kw)
    assert mixed.timings["native"] and mixed.timings["deferred"] == zero.sum()
    np.testing.assert_array_equal(mixed.status, eager.status)
    np.testing.assert_array_equal(_params(mixed)[zero], _params(eager)[zero])  # the same torch loop
    ok = mixed.converged & ~zero
    assert np.all(np.abs(_params(mixed)[ok] - _params(eager)[ok]) <= 1e-6 * _stderr(eager)[ok])
    bounded = gf.fit_many(F, x[:], y[~zero][:20], init={k: v[~zero][:20] for k, v in init.items()},
                          bounds={"o": (0.0, None)}, loss="poisson", dtype="float64", progress=False)
    assert bounded.timings["deferred"] == 20
    # compile=True builds the native kernel; the few deferred fits run eagerly ("auto"), never
    # waiting for a torch.compile that only many such fits would pay for
    import torch

    compiles = []
    monkeypatch.setattr(torch, "compile", lambda fn, **k: compiles.append(fn) or fn)
    r = gf.fit_many(F, x, y[:40], init={k: v[:40] for k, v in init.items()}, loss="poisson", compile=True,
                    progress=False)
    assert r.timings["native"] and r.timings["deferred"] == zero[:40].sum() and not compiles
    assert not r.timings["compiled"]


def _gauss_and_jacobian(x, p):
    a, c, w, o = p
    e = np.exp(-(x - c) ** 2 / (2 * w**2))
    return a * e + o, np.column_stack([e, a * e * (x - c) / w**2, a * e * (x - c) ** 2 / w**3, np.ones_like(x)])


def test_poisson_lanes_against_scipy_and_the_fisher_information():
    """Independent references for the native Poisson path: scipy's minimum of the negative
    log-likelihood sum(mu - y log mu), the Cramer-Rao errors sqrt(diag(F^-1)) with
    F = J^T diag(1/mu) J from the analytic Jacobian, and the deviance, Pearson chi-square and
    log-likelihood (lgamma from scipy.special) at gradfit's parameters."""
    from scipy.special import gammaln

    x, y, truth = _counts(12, (200, 1000), (10, 100), seed=9)
    start = truth * 1.05
    r = gf.fit_many(F, x, y, init={k: start[:, j] for j, k in enumerate("acwo")}, loss="poisson", dtype="float64",
                    tol=1e-12, compile=True, progress=False)
    assert r.timings["native"] and r.converged.all()
    for i in range(len(y)):
        def nll(p, yi=y[i]):
            mu, jac = _gauss_and_jacobian(x, p)
            return float(np.sum(mu - yi * np.log(mu))), jac.T @ (1.0 - yi / mu)
        ref = scipy_optimize.minimize(nll, start[i], jac=True, method="BFGS", options={"gtol": 1e-9, "maxiter": 10000})
        mu, jac = _gauss_and_jacobian(x, ref.x)
        se = np.sqrt(np.diag(np.linalg.inv(jac.T @ (jac / mu[:, None]))))
        assert np.all(np.abs(_params(r)[i] - ref.x) < 1e-4 * se)
        np.testing.assert_allclose(_stderr(r)[i], se, rtol=1e-5)
        mu = _gauss_and_jacobian(x, _params(r)[i])[0]
        yi = y[i]
        deviance = 2 * np.sum(np.where(yi > 0, yi * np.log(np.where(yi > 0, yi, 1) / mu), 0.0) - (yi - mu))
        np.testing.assert_allclose(r.stats["deviance"][i], deviance, rtol=1e-10)
        np.testing.assert_allclose(r.stats["chisqr"][i], np.sum((yi - mu) ** 2 / mu), rtol=1e-10)
        np.testing.assert_allclose(r.stats["loglike"][i], np.sum(yi * np.log(mu) - mu - gammaln(yi + 1)), rtol=1e-12)
