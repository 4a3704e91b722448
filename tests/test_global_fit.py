"""fit_many(shared=[...]): global fitting, checked against an independent joint
scipy.optimize.least_squares on the stacked residuals (dense analytic Jacobian, tight
tolerances) and standard errors from numpy's inverse of J^T J of that stacked problem."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gradfit as gf
from gradfit.errors import ConfigError

scipy_opt = pytest.importorskip("scipy.optimize")

DECAY = "a*exp(-k*x) + o"


@pytest.fixture(params=["torch", "native"])
def both_kernels(request, monkeypatch):
    """Run the test with the torch loop (optim/global_lm.py) and with the native C loop
    (optim/native_global.py), which must give the same answers."""
    from _kernels import kernel_variant

    from gradfit.lsq import global_fit
    from gradfit.optim.native_global import NativeGlobal

    yield from kernel_variant(request.param, monkeypatch, [(global_fit, "_worth_building")], NativeGlobal)


GAUSS = "a*exp(-(x-c)**2/(2*s**2)) + o"


def _decay(x, p):
    e = np.exp(-p["k"] * x)
    return p["a"] * e + p["o"], {"a": e, "k": -p["a"] * x * e, "o": np.ones_like(x)}


def _gauss(x, p):
    d = x - p["c"]
    g = np.exp(-d**2 / (2 * p["s"] ** 2))
    return p["a"] * g + p["o"], {"a": g, "c": p["a"] * g * d / p["s"] ** 2, "s": p["a"] * g * d**2 / p["s"] ** 3,
                                 "o": np.ones_like(x)}


def _reference(model, x, y, w, local0: dict, shared0: dict, *, fixed=(), bounds=None, method="lm"):
    """The stacked problem solved by scipy: (local (B,) arrays by name, shared by name, stderr
    of both from inv(J^T J) * chi2 / dof, chi2)."""
    n_fits = y.shape[0]
    loc = [n for n in local0 if n not in fixed]
    sh = [n for n in shared0 if n not in fixed]
    used = (w > 0) & np.isfinite(y)
    sw = np.sqrt(np.where(used, w, 0.0))
    yz = np.where(used, y, 0.0)

    def unpack(v):
        p = {n: np.full(n_fits, float(shared0[n])) for n in shared0}
        p.update({n: np.asarray(local0[n], dtype=float).copy() for n in local0})
        for i, n in enumerate(sh):
            p[n] = np.full(n_fits, v[i])
        for i, n in enumerate(loc):
            p[n] = v[len(sh) + i * n_fits: len(sh) + (i + 1) * n_fits]
        return {n: v[:, None] for n, v in p.items()}

    def fun(v):
        f, _ = model(x, unpack(v))
        return (sw * (f - yz)).ravel()

    def jac(v):
        _, d = model(x, unpack(v))
        cols = [(sw * d[n]).ravel() for n in sh]
        for n in loc:
            block = np.zeros((n_fits, y.shape[1], n_fits))
            block[np.arange(n_fits), :, np.arange(n_fits)] = sw * d[n]
            cols.extend(block.reshape(n_fits * y.shape[1], n_fits).T)
        return np.stack(cols, axis=1)

    v0 = np.concatenate([[shared0[n] for n in sh], *[np.asarray(local0[n], dtype=float) for n in loc]])
    kw = dict(xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=20000)
    if bounds is not None:
        def side(n, i):
            v = bounds.get(n, (None, None))[i]
            return (-np.inf, np.inf)[i] if v is None else float(v)

        lo = np.concatenate([[side(n, 0) for n in sh], *[np.full(n_fits, side(n, 0)) for n in loc]])
        hi = np.concatenate([[side(n, 1) for n in sh], *[np.full(n_fits, side(n, 1)) for n in loc]])
        sol = scipy_opt.least_squares(fun, v0, jac=jac, bounds=(lo, hi), method="trf", **kw)
    else:
        sol = scipy_opt.least_squares(fun, v0, jac=jac, method=method, **kw)
    j = jac(sol.x)
    chi2 = float(sol.fun @ sol.fun)
    dof = int(used.sum()) - len(sol.x)
    se = np.sqrt(np.diag(np.linalg.inv(j.T @ j)) * chi2 / dof)
    p, s = unpack(sol.x), unpack(se)
    return ({n: p[n][:, 0] for n in loc}, {n: p[n][0, 0] for n in sh}, {n: s[n][:, 0] for n in loc},
            {n: s[n][0, 0] for n in sh}, chi2)


def _decays(n_fits=20, m=32, seed=1, k=0.8, noise=0.05):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 5, m)
    a = rng.uniform(2, 5, n_fits)
    o = rng.uniform(0, 1, n_fits)
    y = a[:, None] * np.exp(-k * x) + o[:, None] + rng.normal(0, noise, (n_fits, m))
    return x, y, a, o


def _check(r, ref, rtol_p=1e-6, rtol_se=1e-4):
    loc, sh, se_loc, se_sh, chi2 = ref
    for n, v in sh.items():
        np.testing.assert_allclose(r.shared[n], v, rtol=rtol_p)
        np.testing.assert_allclose(r.params[n], v, rtol=rtol_p)
        np.testing.assert_allclose(r.shared_stderr[n], se_sh[n], rtol=rtol_se)
    for n, v in loc.items():
        np.testing.assert_allclose(r.params[n], v, rtol=rtol_p, atol=1e-9)
        np.testing.assert_allclose(r.stderr[n], se_loc[n], rtol=rtol_se)
    np.testing.assert_allclose(r.joint_stats["chisqr"], chi2, rtol=1e-9)


@pytest.mark.usefixtures("both_kernels")
def test_decays_sharing_a_rate_match_joint_scipy():
    x, y, a, o = _decays()
    init = {"a": 3.0, "k": 0.5, "o": 0.5}
    r = gf.fit_many(DECAY, x, y, init=init, shared=["k"], dtype="float64", tol=1e-12)
    assert r.converged.all()
    _check(r, _reference(_decay, x, y, np.ones_like(y), {"a": np.full(20, 3.0), "o": np.full(20, 0.5)}, {"k": 0.5}))
    js = r.joint_stats
    assert (js["n"], js["n_params"], js["dof"]) == (640, 41, 599)
    assert js["aic"] == pytest.approx(640 * np.log(js["chisqr"] / 640) + 2 * 41)
    # per-fit statistics count the fit's own parameters
    np.testing.assert_array_equal(r.stats["dof"], np.full(20, 30))


@pytest.mark.usefixtures("both_kernels")
def test_gaussians_sharing_a_width_match_joint_scipy():
    rng = np.random.default_rng(3)
    x = np.arange(32.0)
    n_fits = 20
    a, c, o = rng.uniform(50, 150, n_fits), rng.uniform(12, 20, n_fits), rng.uniform(5, 15, n_fits)
    y = a[:, None] * np.exp(-(x - c[:, None]) ** 2 / (2 * 3.0**2)) + o[:, None] + rng.normal(0, 2, (n_fits, 32))
    init = {"a": a * 0.9, "c": c + 0.5, "s": 2.5, "o": o * 1.1}
    r = gf.fit_many(GAUSS, x, y, init=init, shared="s", dtype="float64", tol=1e-12)
    assert r.converged.all()
    _check(r, _reference(_gauss, x, y, np.ones_like(y), {"a": a * 0.9, "c": c + 0.5, "o": o * 1.1}, {"s": 2.5}))


@pytest.mark.usefixtures("both_kernels")
def test_recovers_the_truth():
    x, y, a, o = _decays(n_fits=300, seed=7, noise=0.1)
    r = gf.fit_many(DECAY, x, y, init={"a": 3.0, "k": 0.5, "o": 0.5}, shared=["k"])
    assert r.converged.all()
    assert abs(r.shared["k"] - 0.8) < 4 * r.shared_stderr["k"]
    assert r.shared_stderr["k"] < 0.01
    # the local errors are honest: standardized deviations from the truth have unit spread
    z = (r.params["a"] - a) / r.stderr["a"]
    assert 0.85 < np.std(z) < 1.15
    assert r.joint_stats["redchi"] == pytest.approx(0.01, rel=0.1)


@pytest.mark.usefixtures("both_kernels")
def test_sigma_and_nan_padding_match_scipy():
    x, y, a, o = _decays(seed=4)
    rng = np.random.default_rng(5)
    sigma = rng.uniform(0.02, 0.1, y.shape)
    y = y + rng.normal(0, 1, y.shape) * sigma
    y[3, 20:] = np.nan  # ragged: fit 3 has 20 points
    y[8, ::3] = np.nan
    r = gf.fit_many(DECAY, x, y, init={"a": 3.0, "k": 0.5, "o": 0.5}, shared=["k"], sigma=sigma, dtype="float64",
                    tol=1e-12)
    assert r.converged.all()
    w = np.where(np.isfinite(y), 1 / sigma**2, 0.0)
    _check(r, _reference(_decay, x, y, w, {"a": np.full(20, 3.0), "o": np.full(20, 0.5)}, {"k": 0.5}))
    assert r.stats["n"][3] == 20


@pytest.mark.usefixtures("both_kernels")
def test_fixed_local_parameter_matches_scipy():
    x, y, a, o = _decays(seed=6)
    init = {"a": 3.0, "k": 0.5, "o": o}  # the offsets known exactly, held per fit
    r = gf.fit_many(DECAY, x, y, init=init, shared=["k"], fixed=["o"], dtype="float64", tol=1e-12)
    assert r.converged.all()
    np.testing.assert_array_equal(r.params["o"], o)
    np.testing.assert_array_equal(r.stderr["o"], 0.0)
    _check(r, _reference(_decay, x, y, np.ones_like(y), {"a": np.full(20, 3.0), "o": o}, {"k": 0.5}, fixed=("o",)))
    assert r.joint_stats["n_params"] == 21


def test_shared_parameter_bounded_away_from_its_optimum_ends_on_the_bound():
    x, y, a, o = _decays(seed=8)
    init = {"a": 3.0, "k": 0.5, "o": 0.5}
    r = gf.fit_many(DECAY, x, y, init=init, shared=["k"], bounds={"k": (0.1, 0.7)}, dtype="float64", tol=1e-12)
    assert r.converged.all()
    assert r.shared["k"] == 0.7  # exactly on the bound, as the optimum is
    loc, sh, *_ = _reference(_decay, x, y, np.ones_like(y), {"a": np.full(20, 3.0), "o": np.full(20, 0.5)},
                             {"k": 0.5}, bounds={"k": (0.1, 0.7)})
    assert sh["k"] == pytest.approx(0.7, rel=1e-6)
    for n in ("a", "o"):
        np.testing.assert_allclose(r.params[n], loc[n], rtol=1e-6, atol=1e-9)


def test_local_bounds_active_in_some_fits_match_scipy():
    x, y, a, o = _decays(seed=12)
    init = {"a": 3.0, "k": 0.5, "o": 0.5}
    bounds = {"o": (0.4, None), "a": (0.0, 10.0)}
    r = gf.fit_many(DECAY, x, y, init=init, shared=["k"], bounds=bounds, dtype="float64", tol=1e-12)
    assert r.converged.all()
    on = r.params["o"] == 0.4
    assert 3 <= on.sum() < 20  # the fits whose offset is below 0.4 end exactly on the bound
    loc, sh, *_ = _reference(_decay, x, y, np.ones_like(y), {"a": np.full(20, 3.0), "o": np.full(20, 0.5)},
                             {"k": 0.5}, bounds=bounds)
    assert r.shared["k"] == pytest.approx(sh["k"], rel=1e-6)
    for n in ("a", "o"):
        np.testing.assert_allclose(r.params[n], loc[n], rtol=1e-6, atol=1e-9)


@pytest.mark.usefixtures("both_kernels")
def test_fixed_shared_parameter_is_a_constant():
    x, y, a, o = _decays(seed=13)
    r = gf.fit_many(DECAY, x, y, init={"a": 3.0, "k": 0.8, "o": 0.5}, shared=["k"], fixed=["k"], dtype="float64",
                    tol=1e-12)
    free = gf.fit_many(DECAY, x, y, init={"a": 3.0, "k": 0.8, "o": 0.5}, fixed=["k"], dtype="float64", tol=1e-12)
    assert r.converged.all() and r.shared["k"] == 0.8 and r.shared_stderr["k"] == 0.0
    np.testing.assert_allclose(r.params["a"], free.params["a"], rtol=1e-7)
    assert r.joint_stats["n_params"] == 40


@pytest.mark.usefixtures("both_kernels")
def test_a_fit_without_points_is_left_out_and_others_unchanged():
    x, y, a, o = _decays(seed=9)
    y_bad = y.copy()
    y_bad[5] = np.nan
    init = {"a": 3.0, "k": 0.5, "o": 0.5}
    r = gf.fit_many(DECAY, x, y_bad, init=init, shared=["k"], dtype="float64", tol=1e-12)
    assert r.status_text[5] == "too_few_points"
    assert np.isnan(r.stderr["a"][5])
    keep = np.arange(20) != 5
    r2 = gf.fit_many(DECAY, x, y[keep], init=init, shared=["k"], dtype="float64", tol=1e-12)
    assert r.shared["k"] == pytest.approx(r2.shared["k"], rel=1e-10)
    np.testing.assert_allclose(r.params["a"][keep], r2.params["a"], rtol=1e-9)
    assert r.converged[keep].all()


@pytest.mark.usefixtures("both_kernels")
def test_a_singular_or_not_finite_fit_leaves_the_joint_problem():
    """A fit whose local block is singular (a parameter it does not depend on) ends singular,
    one whose start is not finite ends not_finite; the rest is the fit without them."""
    x, y, a, o = _decays(seed=10)
    z = np.ones_like(y)
    z[2] = 0.0  # fit 2 does not depend on b
    xs = np.broadcast_to(x, y.shape).copy()
    xs[6] = -1.0  # sqrt(-1): fit 6 is not finite at its start
    model = "a*exp(-k*x) + o + b*z*sqrt(x + 1e-300)"
    init = {"a": 3.0, "k": 0.5, "o": 0.5, "b": 0.0}
    r = gf.fit_many(model, {"x": xs, "z": z}, y, init=init, shared=["k"], dtype="float64", tol=1e-12)
    assert r.status_text[2] == "singular" and r.status_text[6] == "not_finite"
    assert np.isnan(r.stderr["a"][2]) and np.isnan(r.stderr["a"][6])
    keep = ~np.isin(np.arange(20), [2, 6])
    r2 = gf.fit_many(model, {"x": xs[keep], "z": z[keep]}, y[keep], init=init, shared=["k"], dtype="float64",
                     tol=1e-12)
    assert r.converged[keep].all()
    assert r.shared["k"] == pytest.approx(r2.shared["k"], rel=1e-9)
    assert r.shared_stderr["k"] == pytest.approx(r2.shared_stderr["k"], rel=1e-6)
    np.testing.assert_allclose(r.params["a"][keep], r2.params["a"], rtol=1e-8)


def test_chunks_of_fits_give_the_same_fit():
    x, y, a, o = _decays(seed=14)
    init = {"a": 3.0, "k": 0.5, "o": 0.5}
    whole = gf.fit_many(DECAY, x, y, init=init, shared=["k"], dtype="float64", tol=1e-12)
    chunked = gf.fit_many(DECAY, x, y, init=init, shared=["k"], dtype="float64", tol=1e-12, chunk_size=7)
    assert chunked.shared["k"] == pytest.approx(whole.shared["k"], rel=1e-12)
    np.testing.assert_allclose(chunked.stderr["a"], whole.stderr["a"], rtol=1e-10)


@pytest.mark.usefixtures("both_kernels")
def test_float32_evaluation_agrees_with_float64():
    x, y, a, o = _decays(seed=2)
    init = {"a": 3.0, "k": 0.5, "o": 0.5}
    r32 = gf.fit_many(DECAY, x, y, init=init, shared=["k"], dtype="float32")
    r64 = gf.fit_many(DECAY, x, y, init=init, shared=["k"], dtype="float64")
    assert r32.converged.all()
    assert r32.shared["k"] == pytest.approx(r64.shared["k"], rel=1e-4)


def test_report_and_npz_round_trip(tmp_path):
    x, y, a, o = _decays(seed=3)
    r = gf.fit_many(DECAY, x, y, init={"a": 3.0, "k": 0.5, "o": 0.5}, shared=["k"])
    text = r.report()
    assert "shared parameters" in text and f"{r.shared['k']:.8g} +/- {r.shared_stderr['k']:.3g}" in text
    r.save(tmp_path / "g.npz")
    back = gf.BatchResult.load(tmp_path / "g.npz")
    assert back.shared == r.shared and back.shared_stderr == r.shared_stderr
    assert back.joint_stats == r.joint_stats
    np.testing.assert_array_equal(back.params["k"], r.params["k"])


def test_cli_shared(tmp_path):
    from _cli import cli

    x, y, a, o = _decays(seed=3)
    np.save(tmp_path / "y.npy", y)
    code, out, err = cli("fit-many", tmp_path / "y.npy", DECAY, "--x-values", ",".join(map(str, x)),
                         "--init", "a=3,k=0.5,o=0.5", "--shared", "k", "--out", tmp_path / "r.npz")
    assert code == 0, err
    r = gf.fit_many(DECAY, x, y, init={"a": 3.0, "k": 0.5, "o": 0.5}, shared=["k"])
    back = gf.BatchResult.load(tmp_path / "r.npz")
    assert back.shared["k"] == pytest.approx(r.shared["k"], rel=1e-12)
    assert "shared" in out


@pytest.mark.parametrize("kwargs, match", [
    (dict(shared=["kk"]), "did you mean 'k'"),
    (dict(shared=["a", "k", "o"]), "every parameter"),
    (dict(shared=["k"], init={"a": 3.0, "k": np.linspace(0.4, 0.6, 20), "o": 0.5}), "init differs between fits"),
    (dict(shared=["k"], bounds={"k": (np.zeros(20), np.linspace(1, 2, 20))}), "upper bound differs"),
    (dict(shared=["k"], tie={"o": "2*a"}), "does not support tie"),
])
def test_bad_input(kwargs, match):
    x, y, a, o = _decays()
    kwargs = {"init": {"a": 3.0, "k": 0.5, "o": 0.5}, **kwargs}
    with pytest.raises(ConfigError, match=match):
        gf.fit_many(DECAY, x, y, **kwargs)


SCRIPT = Path(__file__).with_name("_torchrun_fit_many.py")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["global", "global_poisson"])
def test_two_processes_match_one(tmp_path, mode):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    p1 = subprocess.run([sys.executable, str(SCRIPT), str(one), mode], capture_output=True, text=True,
                        timeout=300, env=env)
    assert p1.returncode == 0, p1.stderr[-2000:]
    p2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         str(SCRIPT), str(two), mode], capture_output=True, text=True, timeout=300, env=env)
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert "world=2 fits=41" in p2.stdout
    a, b = gf.BatchResult.load(one), gf.BatchResult.load(two)
    # a Poisson fit on the edge holds a mean at its rounding level (~1e-13): its Fisher weight
    # w / mu, and so its standard errors, carry the sums' order in their 7th digit
    se_rtol, cov_rtol = (1e-9, 1e-8) if mode == "global" else (1e-6, 1e-5)
    assert b.shared["k"] == pytest.approx(a.shared["k"], rel=1e-12)
    assert b.shared_stderr["k"] == pytest.approx(a.shared_stderr["k"], rel=se_rtol)
    for n in ("a", "o"):
        np.testing.assert_allclose(b.params[n], a.params[n], rtol=1e-10)
        np.testing.assert_allclose(b.stderr[n], a.stderr[n], rtol=se_rtol)
    np.testing.assert_array_equal(a.status, b.status)
    assert a.joint_stats["dof"] == b.joint_stats["dof"]
    np.testing.assert_allclose(b.covariance, a.covariance, rtol=cov_rtol, atol=1e-15)  # each fit's band block


@pytest.mark.slow
@pytest.mark.parametrize("n_fits", [10_000, 30_000, 100_000])
def test_linear_cost_in_the_number_of_fits(n_fits):
    """1 shared + 3 local parameters, 32 points: finishes and converges (times printed for
    BENCHMARKS.md, never asserted)."""
    rng = np.random.default_rng(0)
    x = np.linspace(0, 5, 32)
    a, o, d = rng.uniform(2, 5, n_fits), rng.uniform(0, 1, n_fits), rng.uniform(-0.05, 0.05, n_fits)
    y = a[:, None] * np.exp(-0.8 * x) + o[:, None] + d[:, None] * x + rng.normal(0, 0.02, (n_fits, 32))
    t0 = time.perf_counter()
    r = gf.fit_many("a*exp(-k*x) + o + d*x", x, y, init={"a": 3.0, "k": 0.6, "o": 0.5, "d": 0.0}, shared=["k"],
                    dtype="float64")
    elapsed = time.perf_counter() - t0
    print(f"\nglobal fit B={n_fits}: {elapsed:.2f} s, {r.timings['iterations']} iterations")
    assert r.converged.mean() > 0.99
    assert abs(r.shared["k"] - 0.8) < 5 * r.shared_stderr["k"]


# -- loss="poisson": joint Poisson maximum likelihood --------------------------------------------
# references: scipy.optimize.minimize of the joint negative log-likelihood over the stacked
# vector [k, a_1..a_B, o_1..o_B] (analytic gradient and Hessian, trust-exact), the inverse
# joint Fisher information as a dense numpy matrix, and scipy.stats.poisson

def _counts(n_fits=12, m=40, seed=5, k=0.9, a=(20, 60), o=(1, 4), t_max=4.0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, t_max, m)
    amp, off = rng.uniform(*a, n_fits), rng.uniform(*o, n_fits)
    return t, rng.poisson(amp[:, None] * np.exp(-k * t) + off[:, None]).astype(float)


def _poisson_reference(t, y, k0, a0, o0):
    """(k, a (B,), o (B,)) minimizing sum(mu - y log mu) jointly, and the standard errors
    sqrt(diag(F^-1)) of [k, a, o] with F = J^T diag(1/mu) J (dense, (2B+1)^2)."""
    n_fits = y.shape[0]

    def parts(v):
        k, a, o = v[0], v[1:1 + n_fits, None], v[1 + n_fits:, None]
        e = np.exp(-k * t)[None, :]
        return k, a, e, a * e + o

    def nll(v):
        mu = parts(v)[3]
        return np.inf if (mu <= 0).any() else float((mu - y * np.log(mu)).sum())

    def grad(v):
        _, a, e, mu = parts(v)
        f = 1.0 - y / mu
        return np.concatenate([[(f * -a * t * e).sum()], (f * e).sum(1), f.sum(1)])

    def jac(v):
        _, a, e, mu = parts(v)
        j = np.zeros((n_fits, t.size, 2 * n_fits + 1))
        rows = np.arange(n_fits)
        j[:, :, 0] = -a * t * e
        j[rows, :, 1 + rows] = e
        j[rows, :, 1 + n_fits + rows] = 1.0
        return j.reshape(-1, 2 * n_fits + 1), mu.ravel()

    def hess(v):
        _, a, e, mu = parts(v)
        j, m = jac(v)
        h = j.T @ (j * (y.ravel() / m**2)[:, None])
        f = 1.0 - y / mu  # the second derivatives of mu: d2/dk2 = a t^2 e, d2/dk da_b = -t e
        h[0, 0] += (f * a * t**2 * e).sum()
        cross = (f * -t * e).sum(1)
        h[0, 1:1 + n_fits] += cross
        h[1:1 + n_fits, 0] += cross
        return h

    v0 = np.concatenate([[k0], np.broadcast_to(a0, n_fits), np.broadcast_to(o0, n_fits)]).astype(float)
    v = scipy_opt.minimize(nll, v0, jac=grad, hess=hess, method="trust-exact", options={"gtol": 1e-11}).x
    for _ in range(3):  # Newton polish past the rounding of the function values trust-exact compares
        v = v - np.linalg.solve(hess(v), grad(v))
    assert np.abs(np.linalg.solve(hess(v), grad(v))).max() < 1e-10 * (1.0 + np.abs(v).max())
    j, mu = jac(v)
    se = np.sqrt(np.diag(np.linalg.inv(j.T @ (j / mu[:, None]))))
    return (v[0], v[1:1 + n_fits], v[1 + n_fits:]), (se[0], se[1:1 + n_fits], se[1 + n_fits:])


def test_poisson_decays_sharing_a_rate_match_joint_scipy_likelihood():
    t, y = _counts()
    r = gf.fit_many(DECAY, t, y, init={"a": 30.0, "k": 0.5, "o": 2.0}, shared=["k"], loss="poisson",
                    dtype="float64", tol=1e-12)
    assert r.converged.all() and r.loss == "poisson"
    (k, a, o), (se_k, se_a, se_o) = _poisson_reference(t, y, 0.5, 30.0, 2.0)
    assert r.shared["k"] == pytest.approx(k, rel=1e-6)
    np.testing.assert_allclose(r.params["k"], k, rtol=1e-6)
    np.testing.assert_allclose(r.params["a"], a, rtol=1e-6)
    np.testing.assert_allclose(r.params["o"], o, rtol=1e-6)
    # Cramer-Rao: the inverse joint Fisher information, not scaled by the deviance
    assert r.shared_stderr["k"] == pytest.approx(se_k, rel=1e-5)
    np.testing.assert_allclose(r.stderr["a"], se_a, rtol=1e-5)
    np.testing.assert_allclose(r.stderr["o"], se_o, rtol=1e-5)


def test_poisson_joint_statistics_match_scipy_stats():
    poisson = pytest.importorskip("scipy.stats").poisson
    t, y = _counts(seed=6)
    r = gf.fit_many(DECAY, t, y, init={"a": 30.0, "k": 0.5, "o": 2.0}, shared=["k"], loss="poisson",
                    dtype="float64", tol=1e-12)
    mu = r.params["a"][:, None] * np.exp(-r.shared["k"] * t) + r.params["o"][:, None]
    loglike = poisson.logpmf(y, mu).sum(1)
    deviance = 2.0 * (poisson.logpmf(y, y) - poisson.logpmf(y, mu)).sum(1)
    pearson = ((y - mu) ** 2 / mu).sum(1)
    js, n, k = r.joint_stats, y.size, 2 * 12 + 1
    assert (js["n"], js["n_params"], js["dof"]) == (n, k, n - k)
    assert js["loglike"] == pytest.approx(loglike.sum(), rel=1e-10)
    assert js["deviance"] == pytest.approx(deviance.sum(), rel=1e-9)
    assert js["aic"] == pytest.approx(2 * k - 2 * loglike.sum(), rel=1e-10)
    assert js["bic"] == pytest.approx(k * np.log(n) - 2 * loglike.sum(), rel=1e-10)
    assert js["chisqr"] == pytest.approx(pearson.sum(), rel=1e-9)
    assert js["redchi"] == pytest.approx(pearson.sum() / (n - k), rel=1e-9)
    # per fit, as independent Poisson fits: its own points and free (local) parameters
    np.testing.assert_allclose(r.stats["loglike"], loglike, rtol=1e-10)
    np.testing.assert_allclose(r.stats["deviance"], deviance, rtol=1e-9)
    np.testing.assert_allclose(r.stats["aic"], 2 * 2 - 2 * loglike, rtol=1e-10)
    np.testing.assert_array_equal(r.stats["dof"], np.full(12, 40 - 2))
    text = r.report()
    assert f"deviance {js['deviance']:.6g}, log-likelihood {js['loglike']:.6g}" in text


def test_poisson_infeasible_start_restarts_from_least_squares():
    t, y = _counts(seed=7)
    init = {"a": 1.0, "k": 0.5, "o": -3.0}  # every mean negative: no likelihood at the start
    r = gf.fit_many(DECAY, t, y, init=init, shared=["k"], loss="poisson", dtype="float64", tol=1e-12)
    assert r.converged.all() and r.timings["restarted"] == 12
    (k, a, o), _ = _poisson_reference(t, y, 0.5, 30.0, 2.0)
    assert r.shared["k"] == pytest.approx(k, rel=1e-6)
    np.testing.assert_allclose(r.params["a"], a, rtol=1e-6)
    np.testing.assert_allclose(r.params["o"], o, rtol=1e-6)


def test_poisson_fit_infeasible_everywhere_leaves_the_joint_fit_with_a_warning():
    t, y = _counts(seed=8)
    n_fits = y.shape[0]
    # fit 3 is bounded to negative means (a <= 1, o <= -5): no start has a likelihood for it
    a_hi = np.full(n_fits, np.inf)
    a_hi[3] = 1.0
    o_lo, o_hi, o_0 = np.full(n_fits, -np.inf), np.full(n_fits, np.inf), np.full(n_fits, 2.0)
    o_lo[3], o_hi[3], o_0[3] = -10.0, -5.0, -6.0
    a_0 = np.full(n_fits, 30.0)
    a_0[3] = 0.5
    with pytest.warns(UserWarning, match=r"1 fit\(s\) \(fit 3\).*not_finite"):
        r = gf.fit_many(DECAY, t, y, init={"a": a_0, "k": 0.5, "o": o_0}, shared=["k"], loss="poisson",
                        dtype="float64", tol=1e-12, bounds={"a": (None, a_hi), "o": (o_lo, o_hi)})
    keep = np.arange(n_fits) != 3
    assert r.status_counts() == {"converged": n_fits - 1, "not_finite": 1} and not r.converged[3]
    assert np.isnan(r.stderr["a"][3]) and np.isnan(r.stats["deviance"][3])
    (k, a, o), (se_k, _, _) = _poisson_reference(t, y[keep], 0.5, 30.0, 2.0)
    assert r.shared["k"] == pytest.approx(k, rel=1e-6)
    assert r.shared_stderr["k"] == pytest.approx(se_k, rel=1e-5)
    np.testing.assert_allclose(r.params["a"][keep], a, rtol=1e-6)
    assert r.joint_stats["n_params"] == 2 * (n_fits - 1) + 1


def test_poisson_trial_into_negative_means_is_rejected_and_the_fit_converges(monkeypatch):
    import torch

    import gradfit.likelihood as likelihood

    kernel, infeasible = likelihood.batch_poisson_deviance, []

    def spy(y, mu, w, **kw):
        dev, fisher = kernel(y, mu, w, **kw)
        infeasible.append(int((~torch.isfinite(dev)).sum()))
        return dev, fisher

    monkeypatch.setattr(likelihood, "batch_poisson_deviance", spy)
    # offsets near 0 (0.05..0.3) and a start that overshoots the rate fourfold: some trials have
    # means <= 0 (with each fit's own damping, a start at k = 3 no longer makes one)
    t, y = _counts(seed=7, a=(5, 20), o=(0.05, 0.3), k=1.2, t_max=6.0)
    r = gf.fit_many(DECAY, t, y, init={"a": 30.0, "k": 5.0, "o": 0.05}, shared=["k"], loss="poisson",
                    dtype="float64", tol=1e-14)  # offsets near 0: a tighter tol for 1e-6 relative
    assert infeasible[0] == 0 and sum(infeasible) > 0  # a feasible start, infeasible trials later
    assert r.converged.all() and "restarted" not in r.timings
    (k, a, o), _ = _poisson_reference(t, y, 1.0, 10.0, 0.2)
    assert r.shared["k"] == pytest.approx(k, rel=1e-6)
    np.testing.assert_allclose(r.params["o"], o, rtol=1e-6)


def test_poisson_refuses_negative_counts_and_sigma():
    from gradfit.errors import DataError

    t, y = _counts()
    init = {"a": 30.0, "k": 0.5, "o": 2.0}
    bad = y.copy()
    bad[2, 5] = -1.0
    with pytest.raises(DataError, match="counts >= 0: fit 2, point 5"):
        gf.fit_many(DECAY, t, bad, init=init, shared=["k"], loss="poisson")
    with pytest.raises(ConfigError, match="takes no sigma"):
        gf.fit_many(DECAY, t, y, init=init, shared=["k"], loss="poisson", sigma=np.ones_like(y))


def test_cli_shared_poisson(tmp_path):
    from _cli import cli

    t, y = _counts()
    np.save(tmp_path / "y.npy", y)
    code, out, err = cli("fit-many", tmp_path / "y.npy", DECAY, "--x-values", ",".join(map(str, t)),
                         "--init", "a=30,k=0.5,o=2", "--shared", "k", "--loss", "poisson", "--out", tmp_path / "r.npz")
    assert code == 0, err
    r = gf.fit_many(DECAY, t, y, init={"a": 30.0, "k": 0.5, "o": 2.0}, shared=["k"], loss="poisson")
    back = gf.BatchResult.load(tmp_path / "r.npz")
    assert back.loss == "poisson" and back.shared["k"] == pytest.approx(r.shared["k"], rel=1e-12)
    assert back.joint_stats["deviance"] == pytest.approx(r.joint_stats["deviance"], rel=1e-12)


def test_a_guessed_shared_parameter_starts_at_the_median_guess():
    # init="guess" gives every fit its own guess; a shared parameter takes their median
    rng = np.random.default_rng(1)
    x = np.linspace(0, 5, 32)
    a, o = rng.uniform(2, 5, (20, 1)), rng.uniform(0, 1, (20, 1))
    y = a * np.exp(-0.8 * x) + o + rng.normal(0, 0.05, (20, 32))
    guessed = gf.fit_many("exp_decay", x, y, init="guess", shared=["k"], tol=1e-12, dtype="float64")
    given = gf.fit_many("exp_decay", x, y, init={"k": 0.5}, shared=["k"], tol=1e-12, dtype="float64")
    assert guessed.converged.all()
    assert guessed.shared["k"] == pytest.approx(given.shared["k"], rel=1e-8)
    with pytest.raises(ConfigError, match="differs between fits"):  # values the user gave are still judged
        gf.fit_many("exp_decay", x, y, init={"k": np.linspace(0.5, 0.9, 20)}, shared=["k"])
