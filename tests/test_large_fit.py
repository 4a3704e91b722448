"""Long single fits solved chunked (gradfit.lsq.chunked): the exact reduced problem gives the
whole-array fit's parameters, standard errors and statistics; routing by Jacobian size."""

import math
import types
import warnings

import numpy as np
import pytest

import gradfit as gf
from gradfit.lsq import chunked
from gradfit.lsq.problem import LeastSquaresProblem

N = 50_000


def _fit(force: bool, monkeypatch, **kw):
    """gf.fit on the whole-array path, or forced chunked in 4096-row chunks; both on lm.py (the
    native kernel of single fits, which chunked fits never run, sums in another order)."""
    with monkeypatch.context() as m:
        m.setenv("GRADFIT_CC", "")
        m.setattr(chunked, "CHUNKED_BYTES", 0 if force else 1 << 60)
        m.setattr(chunked, "CHUNK_ROWS", 4096)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gf.fit(**kw)


def _rel(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) / abs(b[k]) if b[k] else abs(a[k]) for k in b)


def _same(monkeypatch, kind: str, *, params=1e-10, stderr=1e-10, chisqr=1e-10, **kw):
    whole, parts = _fit(False, monkeypatch, **kw), _fit(True, monkeypatch, **kw)
    assert "chunked" not in whole.settings["strategy"]
    assert parts.settings["strategy"].endswith(f"chunked ({kind})")
    assert str(parts.status) == str(whole.status) == "converged"
    assert _rel(parts.params, whole.params) <= params
    assert _rel(parts.stderr, whole.stderr) <= stderr
    for key in ("chisqr", "rss", "redchi", "rmse"):
        assert parts.stats[key] == pytest.approx(whole.stats[key], rel=chisqr)
    for key in ("r2", "aic", "bic"):
        assert parts.stats[key] == pytest.approx(whole.stats[key], rel=1e-12, abs=1e-9)
    assert parts.stats["n"] == whole.stats["n"] == N and parts.loss == pytest.approx(whole.loss, rel=chisqr)
    np.testing.assert_allclose(parts.covariance, whole.covariance, rtol=10 * stderr, atol=0)
    return whole, parts


def _decay(seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 10.0, N)
    return x, 3.0 * np.exp(-0.4 * x) + 1.0 + 0.05 * rng.standard_normal(N)


def test_well_conditioned_decay_matches_whole_array(monkeypatch):
    x, y = _decay()
    _same(monkeypatch, "Gram", model="a*exp(-k*x) + c", x=x, y=y, init={"a": 1, "k": 1, "c": 0})


def test_sigma_weights_match(monkeypatch):
    x, y = _decay(1)
    _same(monkeypatch, "Gram", model="a*exp(-k*x) + c", x=x, y=y, sigma=0.05 * (1.0 + x),
          init={"a": 1, "k": 1, "c": 0})


def test_active_bound_matches(monkeypatch):
    x, y = _decay(2)
    whole, parts = _same(monkeypatch, "Gram", model="a*exp(-k*x) + c", x=x, y=y, init={"a": 1, "k": 1, "c": 1.5},
                         bounds={"c": (1.1, 5.0)})
    assert parts.params["c"] == whole.params["c"] == 1.1  # moved onto the bound it pushes against
    assert parts.notes == whole.notes


def test_ill_conditioned_double_exponential_uses_qr(monkeypatch):
    # close rates: the column-scaled Jacobian's condition number ~5e2..1e3, Gram ratio below GRAM_CONDITION
    rng = np.random.default_rng(3)
    x = np.linspace(0.0, 10.0, N)
    y = 2.0 * np.exp(-0.5 * x) + 1.5 * np.exp(-0.8 * x) + 0.01 * rng.standard_normal(N)
    # (chi-square is flat to ftol over ~1e-9 of these parameters: each path stops somewhere
    # in that floor, 1e-12 to 8e-10 from a tight scipy least_squares reference)
    _same(monkeypatch, "QR", model="a1*exp(-k1*x) + a2*exp(-k2*x)", x=x, y=y,
          init={"a1": 1, "k1": 0.3, "a2": 1, "k2": 1}, params=2e-9, stderr=2e-9)


def test_polynomial_far_from_origin_uses_qr(monkeypatch):
    # cond(J D^-1) ~ 6e5: the Gram matrix would square it. Evaluating a + b*x + c*x**2 at
    # x ~ 1000 cancels ~6 digits, so chi-square is flat to rounding over ~1e-9 of the
    # parameters: both paths land within 1e-5 standard errors of each other.
    rng = np.random.default_rng(4)
    x = np.linspace(1000.0, 1010.0, N)
    y = 1.0 + 0.5 * (x - 1005) - 0.02 * (x - 1005) ** 2 + 0.01 * rng.standard_normal(N)
    whole, parts = _same(monkeypatch, "QR", params=1e-8, stderr=1e-9, model="a + b*x + c*x**2", x=x, y=y,
                         optimizer="lm")
    assert all(abs(parts.params[k] - whole.params[k]) < 1e-5 * whole.stderr[k] for k in "abc")


def test_not_finite_start_names_the_same_rows(monkeypatch):
    x = np.linspace(0.0, 10.0, N)
    y = 1.0 / (x + 1.0)
    kw = dict(model="a/(x - s)", x=x, y=y, init={"a": 1.0, "s": float(x[12345])})
    whole, parts = _fit(False, monkeypatch, **kw), _fit(True, monkeypatch, **kw)
    assert str(parts.status) == str(whole.status) == "not_finite"
    assert parts.message == whole.message and "12346" in parts.message


def test_routing_by_jacobian_size(monkeypatch):
    def problem(n, n_free):
        space = types.SimpleNamespace(free=tuple(f"p{i}" for i in range(n_free)))
        return LeastSquaresProblem(None, space, {}, np.broadcast_to(0.0, (n,)))

    limit = chunked.CHUNKED_BYTES // (8 * 3)
    assert chunked.use_chunks(problem(limit + 1, 3)) and not chunked.use_chunks(problem(limit, 3))
    assert not chunked.use_chunks(problem(10 * limit, 0))  # nothing to fit
    # end to end: a threshold between 40k and 50k points of a 3-parameter fit
    x, y = _decay(5)
    monkeypatch.setattr(chunked, "CHUNKED_BYTES", 45_000 * 3 * 8)
    kw = dict(model="a*exp(-k*x) + c", init={"a": 1, "k": 1, "c": 0})
    assert "chunked" in gf.fit(x=x, y=y, **kw).settings["strategy"]
    assert "chunked" not in gf.fit(x=x[:40_000], y=y[:40_000], **kw).settings["strategy"]


def test_spans_cover_the_rows():
    assert chunked.spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunked.spans(0, 4) == []


def test_chunked_decay_matches_scipy_and_its_own_covariance(monkeypatch):
    """An independent reference: scipy's least_squares at tight tolerances, and the standard
    errors sqrt(diag(s^2 (J^T J)^-1)) from the analytic Jacobian at scipy's optimum."""
    least_squares = pytest.importorskip("scipy.optimize").least_squares
    x, y = _decay(3)

    def residuals(p):
        return p[0] * np.exp(-p[1] * x) + p[2] - y

    def jac(p):
        e = np.exp(-p[1] * x)
        return np.column_stack([e, -p[0] * x * e, np.ones_like(x)])

    ref = least_squares(residuals, [1.0, 1.0, 0.0], jac=jac, method="lm", ftol=1e-15, xtol=1e-15, gtol=1e-15)
    j = jac(ref.x)
    s2 = ref.fun @ ref.fun / (N - 3)
    sd = np.sqrt(np.diag(s2 * np.linalg.inv(j.T @ j)))
    parts = _fit(True, monkeypatch, model="a*exp(-k*x) + c", x=x, y=y, init={"a": 1, "k": 1, "c": 0})
    assert parts.settings["strategy"].endswith("chunked (Gram)")
    mine = np.array([parts.params[k] for k in "akc"])
    # scipy stops ~2e-9 short along the valley's flat direction; gradfit's point is no worse
    np.testing.assert_allclose(mine, ref.x, rtol=1e-8)
    assert math.fsum(residuals(mine) ** 2) <= math.fsum(ref.fun**2) * (1 + 1e-15)
    np.testing.assert_allclose([parts.stderr[k] for k in "akc"], sd, rtol=1e-6)
    assert parts.stats["chisqr"] == pytest.approx(math.fsum(residuals(mine) ** 2), rel=1e-12)
