"""Bands of global fits (fit_many(shared=...)): each fit's band from its block of the joint
covariance, cross block with the shared parameters included, checked against an independent
reference: scipy.optimize.least_squares on the stacked residuals (dense analytic Jacobian),
the dense joint covariance inv(J^T J) * chi2 / dof, and the delta method in numpy."""

from __future__ import annotations

import numpy as np
import pytest

import gradfit as gf

scipy_opt = pytest.importorskip("scipy.optimize")
scipy_stats = pytest.importorskip("scipy.stats")

X_NEW = np.linspace(-0.5, 6.0, 9)


def _data(n_fits=6, m=24, seed=3, k=0.7, noise=0.05):
    from test_global_fit import _decays  # the same decays with a shared rate

    return _decays(n_fits, m, seed, k, noise)[:2]


def _joint_reference(x, y, o_fixed=None):
    """Stacked vector v = (k, a_1..a_B, o_1..o_B) (o left out when fixed): the fitted values and
    the dense covariance inv(J^T J) * chi2 / dof."""
    b, m = y.shape
    fit_o = o_fixed is None

    def split(v):
        k, a = v[0], v[1:1 + b]
        o = v[1 + b:] if fit_o else np.full(b, o_fixed)
        return k, a, o

    def fun(v):
        k, a, o = split(v)
        return (a[:, None] * np.exp(-k * x) + o[:, None] - y).ravel()

    def jac(v):
        k, a, _ = split(v)
        e = np.exp(-k * x)
        cols = [(-a[:, None] * x * e).ravel()]
        for which in ([e, np.ones_like(x)] if fit_o else [e]):
            block = np.zeros((b, m, b))
            block[np.arange(b), :, np.arange(b)] = which
            cols.extend(block.reshape(b * m, b).T)
        return np.stack(cols, axis=1)

    v0 = np.concatenate([[0.5], np.full(b, 3.0)] + ([np.full(b, 0.5)] if fit_o else []))
    sol = scipy_opt.least_squares(fun, v0, jac=jac, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15,
                                  max_nfev=20000)
    j = jac(sol.x)
    chi2 = float(sol.fun @ sol.fun)
    dof = b * m - sol.x.size
    return sol.x, np.linalg.inv(j.T @ j) * chi2 / dof, chi2 / dof, dof


def _reference_band(x, y, level, kind, o_fixed=None):
    """(lower, upper) (B, M) by the delta method over each fit's (a_i, k, o_i) block."""
    v, cov, redchi, dof = _joint_reference(x, y, o_fixed)
    b = y.shape[0]
    q = scipy_stats.t.ppf(0.5 + level / 2, dof)
    lower, upper = np.empty((b, X_NEW.size)), np.empty((b, X_NEW.size))
    for i in range(b):
        k, a = v[0], v[1 + i]
        o = v[1 + b + i] if o_fixed is None else o_fixed
        e = np.exp(-k * X_NEW)
        idx = [0, 1 + i] + ([1 + b + i] if o_fixed is None else [])
        jac = np.stack([-a * X_NEW * e, e] + ([np.ones_like(X_NEW)] if o_fixed is None else []), axis=1)
        var = np.einsum("nf,fg,ng->n", jac, cov[np.ix_(idx, idx)], jac)
        if kind == "prediction":
            var = var + redchi
        f = a * e + o
        lower[i], upper[i] = f - q * np.sqrt(var), f + q * np.sqrt(var)
    return lower, upper


@pytest.mark.parametrize("kind", ["confidence", "prediction"])
def test_global_bands_match_the_joint_covariance_by_the_delta_method(kind):
    x, y = _data()
    r = gf.fit_many("a*exp(-k*x) + o", x, y, init={"a": 3.0, "k": 0.5, "o": 0.5}, shared=["k"],
                    dtype="float64", tol=1e-12)
    assert (r.status_text == "converged").all()
    lower, upper = r.band(X_NEW, level=0.9, kind=kind)
    ref_lower, ref_upper = _reference_band(x, y, 0.9, kind)
    np.testing.assert_allclose(lower, ref_lower, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(upper, ref_upper, rtol=1e-6, atol=1e-9)


def test_the_cross_block_with_the_shared_parameter_matters():
    """Leaving the (local, shared) cross block out changes the band: the reference with a
    block-diagonal covariance differs from gradfit's band, the full one agrees."""
    x, y = _data(n_fits=4)
    r = gf.fit_many("a*exp(-k*x) + o", x, y, init={"a": 3.0, "k": 0.5, "o": 0.5}, shared=["k"],
                    dtype="float64", tol=1e-12)
    _, cov, _, _ = _joint_reference(x, y)
    b = y.shape[0]
    # the stored block of fit 0 is the dense reference's (a_0, k, o_0) block, in the model's order
    idx = {"a": 1, "k": 0, "o": 1 + b}
    order = [idx[n] for n in r.param_names]
    np.testing.assert_allclose(r.covariance[0], cov[np.ix_(order, order)], rtol=1e-6, atol=1e-14)
    ka = r.covariance[0][r.param_names.index("k"), r.param_names.index("a")]
    assert abs(ka) > 1e-3 * np.sqrt(cov[0, 0] * cov[1, 1])  # a real correlation, not a rounding


def test_global_band_with_a_fixed_local_parameter():
    x, y = _data(n_fits=5, seed=8)
    o_fixed = 0.4
    r = gf.fit_many("a*exp(-k*x) + o", x, y, init={"a": 3.0, "k": 0.5, "o": o_fixed}, fixed=["o"], shared=["k"],
                    dtype="float64", tol=1e-12)
    lower, upper = r.band(X_NEW, kind="confidence")
    ref_lower, ref_upper = _reference_band(x, y, 0.95, "confidence", o_fixed=o_fixed)
    np.testing.assert_allclose(lower, ref_lower, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(upper, ref_upper, rtol=1e-6, atol=1e-9)


def test_global_band_survives_the_npz_round_trip(tmp_path):
    x, y = _data(n_fits=3)
    r = gf.fit_many("a*exp(-k*x) + o", x, y, init={"a": 3.0, "k": 0.5, "o": 0.5}, shared=["k"], dtype="float64")
    r.save(tmp_path / "g.npz")
    loaded = gf.BatchResult.load(tmp_path / "g.npz")
    np.testing.assert_allclose(loaded.band(X_NEW)[0], r.band(X_NEW)[0], rtol=1e-12)
