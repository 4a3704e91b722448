"""The native kernel of fit_many (optim/native_lm.py, formula/c_code.py, _native.py): the C model
and partials against torch, whole fits against the eager kernel and scipy, the compile rules,
the fallbacks (no compiler, foreign cache files) and the disk cache."""

from __future__ import annotations

import ctypes
import os
import stat

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit import _native
from gradfit.formula.c_code import PRELUDE, c_supported, model_source
from gradfit.formula.functions import FUNCTIONS
from gradfit.formula.parse import parse_formula
from gradfit.models.formula import FormulaModel
from gradfit.optim import native_common

pytestmark = pytest.mark.skipif(_native.compiler() is None, reason="no C compiler")

RNG = np.random.default_rng(7)


def _eval_library(formula: str, inputs: tuple, params: tuple):
    """A test library around gf_columns: gf_eval(n, in (NIN, n), p, out (P+1, n)) in double."""
    node = parse_formula(formula).rhs
    wrapper = f"""
void gf_eval(long n, const real *in, const real *p, real *out) {{
    real h[GF_NH];
    gf_invariants(p, h);
    const real *xs[{max(len(inputs), 1)}];
    long offs[{max(len(inputs), 1)}];
    for (int q = 0; q < {len(inputs)}; q++) {{ xs[q] = in + q * n; offs[q] = 0; }}
    gf_columns(n, xs, offs, h, out);
}}
"""
    source = "typedef double real;\n" + PRELUDE + model_source(node, inputs, params) + wrapper
    lib, reason = _native.load(source, None)
    assert lib is not None, reason
    return lib.gf_eval


def _c_values(formula, inputs: dict, params: dict):
    fn = _eval_library(formula, tuple(inputs), tuple(params))
    xin = np.ascontiguousarray(np.stack(list(inputs.values())), dtype=np.float64)  # (NIN, n)
    p = np.asarray(list(params.values()), dtype=np.float64)
    out = np.empty((len(params) + 1, xin.shape[1]))
    fn(ctypes.c_long(xin.shape[1]), xin.ctypes.data_as(ctypes.c_void_p), p.ctypes.data_as(ctypes.c_void_p),
       out.ctypes.data_as(ctypes.c_void_p))
    return out.T  # (n, P + 1)


def _torch_values(formula, inputs: dict, params: dict):
    """The value and the partials by autograd of gradfit's torch formula model (float64)."""
    model = FormulaModel(formula).bind(tuple(inputs))
    t_in = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in inputs.items()}
    t_par = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    f = model.forward(t_in, t_par)
    cols = [f.detach().numpy()]
    for k in params:
        cols.append(np.array([torch.autograd.grad(fi, t_par[k], retain_graph=True, allow_unused=True)[0].item()
                              if torch.autograd.grad(fi, t_par[k], retain_graph=True, allow_unused=True)[0] is not None
                              else 0.0 for fi in f]))
    return np.column_stack(cols)


# every user function of the language, in a formula whose derivative uses it
FORMULAS = {
    "exp": "a*exp(-k*x)", "log": "a*log(k*x + 2)", "log10": "a*log10(k*x + 2)", "sqrt": "a*sqrt(k*x + 2)",
    "abs": "a*abs(x - k)", "sin": "a*sin(k*x)", "cos": "a*cos(k*x)", "tan": "a*tan(k*x/4)",
    "arcsin": "a*arcsin(k*x/8)", "arccos": "a*arccos(k*x/8)", "arctan": "a*arctan(k*x)",
    "sinh": "a*sinh(k*x)", "cosh": "a*cosh(k*x)", "tanh": "a*tanh(k*x)", "sigmoid": "a*sigmoid(k*x - 1)",
    "erf": "a*erf(k*x - 1)", "minimum": "minimum(a*x, k)", "maximum": "maximum(a*x, k)",
    "power": "a*x**k + x**3 - x**-2 + (k*x)**0.5 + x**1.7",
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_c_model_and_partials_equal_torch(name):
    x = np.linspace(0.3, 2.9, 23)
    params = {"a": 1.7, "k": 0.8}
    c = _c_values(FORMULAS[name], {"x": x}, params)
    t = _torch_values(FORMULAS[name], {"x": x}, params)
    np.testing.assert_allclose(c, t, rtol=1e-12, atol=1e-12)


def test_every_function_has_a_c_form():
    assert all(f.c is not None for f in FUNCTIONS.values())
    assert c_supported(parse_formula("a*erf(x) + abs(x)").rhs)


def test_c_helpers_keep_torch_semantics_at_special_values():
    x = np.array([0.0, -1.0, np.nan, np.inf, 2.0])
    out = _c_values("minimum(x, a) + maximum(x, k)", {"x": x}, {"a": 0.5, "k": 1.0})
    ref = _torch_values("minimum(x, a) + maximum(x, k)", {"x": x}, {"a": 0.5, "k": 1.0})
    np.testing.assert_array_equal(np.isnan(out[:, 0]), np.isnan(ref[:, 0]))
    np.testing.assert_allclose(out[~np.isnan(ref[:, 0]), 0], ref[~np.isnan(ref[:, 0]), 0])
    # 1/0 and log(0) are IEEE inf, not an error
    out = _c_values("a/x + log(x)", {"x": np.array([0.0, 1.0])}, {"a": 1.0})
    assert out[0, 0] == np.inf or np.isnan(out[0, 0])
    assert out[1, 0] == 1.0


def test_two_inputs_and_parameter_free_subexpressions():
    x, z = np.linspace(0, 1, 9), np.linspace(1, 3, 9)
    formula = "a*exp(-x/t)*z**2 + b/(t*t) + c*x*z"
    params = {"a": 2.0, "t": 0.7, "b": 0.3, "c": -1.2}
    c = _c_values(formula, {"x": x, "z": z}, params)
    t = _torch_values(formula, {"x": x, "z": z}, params)
    np.testing.assert_allclose(c, t, rtol=1e-12, atol=1e-13)


# -- whole fits ---------------------------------------------------------------------------------
def _gauss(n, m=32, seed=0):
    rng = np.random.default_rng(seed)
    x = np.arange(m, dtype=float)
    truth = np.column_stack([rng.uniform(200, 1000, n), 15.5 + rng.uniform(-4, 4, n), rng.uniform(2, 4, n),
                             rng.uniform(10, 100, n)])
    a, c, w, o = (truth[:, i:i + 1] for i in range(4))
    y = rng.poisson(a * np.exp(-(x - c) ** 2 / (2 * w**2)) + o).astype(float)
    init = truth * (1 + rng.choice([-1, 1], truth.shape) * rng.uniform(0.1, 0.2, truth.shape))
    return x, y, dict(zip("acwo", init.T))


GAUSS = "a*exp(-(x-c)**2/(2*w**2)) + o"


def test_native_equals_eager_float64_and_scipy():
    from scipy.optimize import curve_fit

    x, y, init = _gauss(300)
    eager = gf.fit_many(GAUSS, x, y, init=init, dtype="float64", compile=False)
    native = gf.fit_many(GAUSS, x, y, init=init, dtype="float64", compile=True)
    assert native.timings["native"] and not eager.timings["native"]
    np.testing.assert_array_equal(native.status, eager.status)
    np.testing.assert_array_equal(native.iterations, eager.iterations)
    for k in "acwo":
        np.testing.assert_allclose(native.params[k], eager.params[k], rtol=1e-9)
        np.testing.assert_allclose(native.stderr[k], eager.stderr[k], rtol=1e-6)
    np.testing.assert_allclose(native.chi2, eager.chi2, rtol=1e-10)

    def f(xx, a, c, w, o):
        return a * np.exp(-(xx - c) ** 2 / (2 * w**2)) + o

    for i in range(0, 300, 37):  # an independent reference: scipy at tight tolerances
        p0 = [init[k][i] for k in "acwo"]
        ref, _ = curve_fit(f, x, y[i], p0=p0, xtol=1e-14, ftol=1e-14, gtol=1e-14, maxfev=10000)
        se = np.array([native.stderr[k][i] for k in "acwo"])
        got = np.array([native.params[k][i] for k in "acwo"])
        assert np.all(np.abs(got - ref) < 1e-3 * se), (i, got, ref)


def test_native_float32_agrees_with_eager_on_the_gpufit_workload():
    x, y, init = _gauss(3000, seed=1)
    kw = dict(init=init, dtype="float32", tol=1e-4, max_iter=25)
    eager = gf.fit_many(GAUSS, x, y.astype(np.float32), compile=False, **kw)
    native = gf.fit_many(GAUSS, x, y.astype(np.float32), compile=True, **kw)
    assert native.timings["native"]
    assert (native.status == eager.status).mean() > 0.998
    both = native.converged & eager.converged
    assert both.mean() > 0.99
    for k in "acwo":  # float32 sums in another order: differences far below the standard error
        d = np.abs(native.params[k] - eager.params[k])[both] / eager.stderr[k][both]
        assert np.max(d) < 0.05, k


def test_weights_masks_per_fit_inputs_and_fixed_parameters():
    rng = np.random.default_rng(3)
    n, m = 40, 25
    xb = np.sort(rng.uniform(0, 4, (n, m)), axis=1)  # a different x per fit
    a, k = rng.uniform(1, 3, n), rng.uniform(0.5, 1.5, n)
    sigma = rng.uniform(0.01, 0.05, (n, m))
    y = a[:, None] * np.exp(-k[:, None] * xb) + 0.2 + rng.normal(0, 1, (n, m)) * sigma
    y[::5, 3] = np.nan  # missing points
    kw = dict(init={"a": 2.0, "k": 1.0, "c": 0.2}, sigma=sigma, fixed=["c"], dtype="float64", tol=1e-12)
    eager = gf.fit_many("a*exp(-k*x) + c", xb, y, compile=False, **kw)
    native = gf.fit_many("a*exp(-k*x) + c", xb, y, compile=True, **kw)
    assert native.timings["native"]
    np.testing.assert_array_equal(native.status, eager.status)
    for name in "ak":
        np.testing.assert_allclose(native.params[name], eager.params[name], rtol=1e-8)
        np.testing.assert_allclose(native.stderr[name], eager.stderr[name], rtol=1e-6)
    np.testing.assert_array_equal(native.params["c"], 0.2)
    from scipy.optimize import curve_fit

    for i in (0, 5, 17, 39):  # an independent reference: scipy with the same sigma, the NaN point dropped
        ok = np.isfinite(y[i])
        ref, cov = curve_fit(lambda xx, a_, k_: a_ * np.exp(-k_ * xx) + 0.2, xb[i][ok], y[i][ok], p0=[2.0, 1.0],
                             sigma=sigma[i][ok], xtol=1e-14, ftol=1e-14, gtol=1e-14)
        np.testing.assert_allclose([native.params["a"][i], native.params["k"][i]], ref, rtol=1e-7)
        np.testing.assert_allclose([native.stderr["a"][i], native.stderr["k"][i]], np.sqrt(np.diag(cov)), rtol=1e-4)


def test_statuses_singular_and_not_finite_as_eager():
    x = np.linspace(0, 1, 20)
    y = np.tile(2 * np.exp(-x), (3, 1))
    kw = dict(dtype="float64")
    # b does not enter the model where it multiplies zero: a zero column (singular)
    for compile_ in (False, True):
        r = gf.fit_many("a*exp(-x) + b*0*x", x, y, init={"a": 1.0, "b": 1.0}, compile=compile_, **kw)
        assert list(r.status_text) == ["singular"] * 3
    starts = {"a": 1.0, "k": np.array([1.0, -1000.0, 1.0])}  # exp(1000) overflows: not_finite
    eager = gf.fit_many("a*exp(-k*x)", x, y, init=starts, compile=False, **kw)
    native = gf.fit_many("a*exp(-k*x)", x, y, init=starts, compile=True, **kw)
    np.testing.assert_array_equal(native.status, eager.status)
    assert native.converged[[0, 2]].all() and native.status_text[1] == "not_finite"


def test_threads_split_the_batch_without_changing_any_fit():
    x, y, init = _gauss(600, seed=2)
    one = gf.fit_many(GAUSS, x, y, init=init, dtype="float64", compile=True, threads=1)
    two = gf.fit_many(GAUSS, x, y, init=init, dtype="float64", compile=True, threads=2)
    for k in "acwo":
        np.testing.assert_array_equal(one.params[k], two.params[k])
    np.testing.assert_array_equal(one.status, two.status)


# -- the compile rules and the fallbacks --------------------------------------------------------
def test_auto_builds_only_when_the_eager_rest_pays_for_it(monkeypatch, tmp_path):
    from gradfit.lsq import compiled

    monkeypatch.setenv("GRADFIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_LOADED", {})
    monkeypatch.setattr(native_common, "_KERNELS", {})  # (kernels of this process, whatever the folder)
    x, y, init = _gauss(200, seed=4)
    small = gf.fit_many(GAUSS, x, y, init=init, dtype="float64")  # ~ms of eager work: no build
    assert not small.timings["native"]
    assert not (tmp_path / "native").exists() or not list((tmp_path / "native").glob("*.so"))
    monkeypatch.setattr(compiled, "native_build_seconds", lambda p, kind="many": 0.0)  # every run pays: built after one iteration
    built = gf.fit_many(GAUSS, x, y, init=init, dtype="float64")
    assert built.timings["native"]
    assert len(list((tmp_path / "native").glob("*.so"))) == 1
    for k in "acwo":
        np.testing.assert_allclose(built.params[k], small.params[k], rtol=1e-8)
    monkeypatch.setattr(compiled, "native_build_seconds", lambda p, kind="many": 1e9)  # built already: used from the start
    again = gf.fit_many(GAUSS, x, y, init=init, dtype="float64")
    assert again.timings["native"]


def test_no_compiler_runs_eagerly(monkeypatch):
    monkeypatch.setenv("GRADFIT_CC", "")
    monkeypatch.setattr(_native, "_LOADED", {})
    monkeypatch.setattr(native_common, "_KERNELS", {})  # (kernels of this process, whatever the folder)
    x, y, init = _gauss(50, seed=5)
    r = gf.fit_many(GAUSS, x, y, init=init, dtype="float64", compile="auto")
    assert not r.timings["native"] and r.converged.mean() > 0.9
    monkeypatch.setenv("GRADFIT_CC", "/no/such/compiler")
    assert _native.load("int f(void) { return 1; }", None)[0] is None


def test_a_broken_compiler_is_a_note_not_an_error(monkeypatch, tmp_path):
    from gradfit.lsq import compiled

    monkeypatch.setattr(compiled, "native_build_seconds", lambda p, kind="many": 0.0)  # "auto" tries to build (and fails)
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'simulated compiler failure' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GRADFIT_CC", str(fake))
    monkeypatch.setattr(_native, "_LOADED", {})
    monkeypatch.setattr(native_common, "_KERNELS", {})  # (kernels of this process, whatever the folder)
    x, y, init = _gauss(50, seed=6)
    r = gf.fit_many(GAUSS, x, y, init=init, dtype="float64")
    assert not r.timings["native"]
    assert "simulated compiler failure" in r.timings["native_kernel"]
    assert r.converged.mean() > 0.9


def test_bounds_and_poisson_run_native_as_the_torch_kernel(monkeypatch):
    from gradfit.lsq import compiled

    monkeypatch.setattr(compiled, "native_build_seconds", lambda p, kind="many": 0.0)  # would build for any eligible batch
    x, y, init = _gauss(300, seed=8)
    init = {**init, "w": np.clip(init["w"], 2.6, 3.4), "c": np.clip(init["c"], 14.1, 16.9)}
    bounds = {"w": (2.5, 3.5), "c": (14.0, 17.0)}
    eager = gf.fit_many(GAUSS, x, y, init=init, bounds=bounds, dtype="float64", compile=False)
    r = gf.fit_many(GAUSS, x, y, init=init, bounds=bounds, dtype="float64", compile=True)
    assert r.timings["native"] and not eager.timings["native"]
    np.testing.assert_array_equal(r.status, eager.status)
    for k in "acwo":  # the box rules as batch_lm's: the same fits end on the same bounds
        np.testing.assert_allclose(r.params[k], eager.params[k], rtol=1e-8)
    on = (r.params["w"] == 2.5) | (r.params["w"] == 3.5) | (r.params["c"] == 14.0) | (r.params["c"] == 17.0)
    assert 10 < on.sum() < 290
    # Poisson without bounds runs in C too (Fisher scoring across lanes), as the torch kernel does
    kw = dict(init={k: v[:30] for k, v in init.items()}, loss="poisson", dtype="float64", tol=1e-10)
    native, eager = gf.fit_many(GAUSS, x, y[:30], **kw), gf.fit_many(GAUSS, x, y[:30], compile=False, **kw)
    assert native.timings["native"] and not eager.timings["native"] and native.converged.mean() > 0.9
    np.testing.assert_array_equal(native.status, eager.status)
    for k in "acwo":
        np.testing.assert_allclose(native.params[k], eager.params[k], rtol=1e-7)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX ownership")
def test_the_cache_loads_only_private_libraries(monkeypatch, tmp_path):
    source = "int gf_answer(void) { return 42; }\n"
    lib, _ = _native.load(source, tmp_path)
    assert lib.gf_answer() == 42
    so = next((tmp_path / "native").glob("*.so"))
    assert (tmp_path / "native" / so.name.replace(".so", ".c")).read_text() == source
    assert _native.is_built(source, tmp_path)
    # a library others may write is not trusted: rebuilt in a private folder, the file untouched
    monkeypatch.setattr(_native, "_LOADED", {})
    monkeypatch.setattr(native_common, "_KERNELS", {})  # (kernels of this process, whatever the folder)
    so.chmod(so.stat().st_mode | stat.S_IWOTH)
    assert not _native.is_built(source, tmp_path)
    lib, _ = _native.load(source, tmp_path)
    assert lib.gf_answer() == 42
    # a damaged library (one never loaded in this process) is rebuilt in place
    other = "int gf_answer(void) { return 43; }\n"
    damaged = tmp_path / "native" / f"{_native._key(other, _native.compiler(), _native.LEVEL)}.so"
    damaged.write_bytes(b"not a library")
    damaged.chmod(0o644)
    lib, _ = _native.load(other, tmp_path)
    assert lib.gf_answer() == 43 and damaged.stat().st_size > 100


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_finish_equals_the_torch_finish(dtype):
    """Standard errors, covariance, the full-rank screen and the range-cosine screen in C against
    lsq/end_points.finish and clear_end_points, on healthy, singular, non-finite and
    too-few-points fits, with a fixed parameter."""
    from gradfit.lsq.end_points import finish
    from gradfit.optim.batch_lm import BatchState
    from gradfit.optim.native_lm import kernel

    rng = np.random.default_rng(11)
    b, m, p = 64, 12, 3
    jac = rng.normal(size=(b, m, p))
    jac[5, :, 1] = jac[5, :, 0]  # a rank-deficient Jacobian
    jac[6, :, 1] = 1e-9 * jac[6, :, 0] + jac[6, :, 2]  # nearly so
    r = rng.normal(size=(b, m))
    a = np.einsum("bmi,bmj->bij", jac, jac)
    g = np.einsum("bmi,bm->bi", jac, r) * np.where(np.arange(b) % 3 == 0, 1e-4, 1.0)[:, None]
    chi2 = (r * r).sum(1)
    chi2[7] = np.nan
    a[8] = np.nan
    n_used = np.full(b, float(m))
    n_used[9] = 2.0  # dof < 1
    free = (1.0, 1.0, 0.0) if dtype == torch.float32 else (1.0, 1.0, 1.0)
    t = lambda v: torch.as_tensor(v, dtype=dtype)  # noqa: E731
    state = BatchState(t(np.zeros((b, p))), t(np.zeros((b, p))), t(np.zeros(b)), t(chi2), t(a), t(g),
                       torch.zeros(b, dtype=torch.int64), torch.zeros(b, dtype=torch.int32))
    lm, reason = kernel(FormulaModel("a*x + k*x**2 + c").bind(("x",)), ("a", "k", "c"), ("x",), dtype)
    assert lm is not None, reason
    floor, threshold = 1e-10, 1e-3
    se, full_rank, cov, good = lm.finish(state, t(n_used), free, floor, threshold)
    se_t, full_rank_t, cov_t = finish(state.a, state.chi2, t(n_used), free, floor)
    rtol = 1e-10 if dtype == torch.float64 else 2e-4
    np.testing.assert_allclose(se.numpy(), se_t.numpy(), rtol=rtol, equal_nan=True)
    np.testing.assert_allclose(cov.numpy(), cov_t.numpy(), rtol=rtol, atol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(full_rank.numpy(), full_rank_t.numpy())
    assert not full_rank[5] and not full_rank[8] and full_rank[0]
    from gradfit.optim.batch_solve import damped_solve

    d, ok = damped_solve(state.a, state.g, torch.zeros_like(state.chi2), free)
    cos = torch.sqrt(torch.clamp(-(state.g * d).sum(-1), min=0.0) / state.chi2)
    np.testing.assert_array_equal(good, (ok & torch.isfinite(cos) & (cos < 0.5 * threshold)).numpy())
    assert good.any() and not good.all()


def test_many_small_calls_build_the_kernel_once_their_torch_time_pays_for_it(monkeypatch, tmp_path):
    """compile="auto" tiering: a call too small to pay for a build runs in torch, but its time
    counts; once the model's torch time exceeds NATIVE_MARGIN builds the next call builds it
    (independent fits and global fits alike)."""
    from gradfit.lsq import batched, compiled, global_fit

    monkeypatch.setenv("GRADFIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_native, "_LOADED", {})
    monkeypatch.setattr(native_common, "_KERNELS", {})  # (kernels of this process, whatever the folder)
    monkeypatch.setattr(compiled, "EAGER_SECONDS", {})
    monkeypatch.setattr(batched, "worth_building", lambda *a: False)  # no single call pays
    monkeypatch.setattr(global_fit, "_worth_building", lambda *a: False)
    monkeypatch.setattr(compiled, "native_build_seconds", lambda p, kind="many": 1e-9)  # ... but any torch time adds up
    x, y, init = _gauss(40, seed=9)
    first = gf.fit_many(GAUSS, x, y, init=init, dtype="float64")
    second = gf.fit_many(GAUSS, x, y, init=init, dtype="float64")
    assert not first.timings["native"] and second.timings["native"]
    xs = np.linspace(0, 5, 32)
    ys = 3.0 * np.exp(-0.8 * xs) + np.random.default_rng(1).normal(0, 0.01, (10, 32))
    kw = dict(init={"a": 3.0, "k": 0.5}, shared=["k"], dtype="float64")
    first = gf.fit_many("a*exp(-k*x)", xs, ys, **kw)
    second = gf.fit_many("a*exp(-k*x)", xs, ys, **kw)
    assert not first.timings["native"] and second.timings["native"]
    assert second.shared["k"] == pytest.approx(first.shared["k"], rel=1e-10)


def test_many_parameters_and_two_inputs_as_eager():
    """14 parameters (above the torch kernel's unrolled solve: LAPACK there, unrolled here) and
    a model of two inputs give the eager kernel's answers."""
    rng = np.random.default_rng(12)
    x = np.linspace(-1, 1, 40)
    terms = " + ".join(f"c{i}*x**{i}" for i in range(14))
    coef = rng.normal(size=14)
    y = np.polynomial.polynomial.polyval(x, coef)[None, :] + rng.normal(0, 0.01, (6, 40))
    init = {f"c{i}": 0.0 for i in range(14)}
    eager = gf.fit_many(terms, x, y, init=init, dtype="float64", compile=False)
    native = gf.fit_many(terms, x, y, init=init, dtype="float64", compile=True)
    assert native.timings["native"]
    np.testing.assert_array_equal(native.status, eager.status)
    for k in init:
        np.testing.assert_allclose(native.params[k], eager.params[k], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(native.stderr[k], eager.stderr[k], rtol=1e-5)
    exact = np.linalg.lstsq(np.vander(x, 14, increasing=True), y.T, rcond=None)[0].T  # linear: the exact optimum
    got, se = (np.column_stack([r[k] for k in init]) for r in (native.params, native.stderr))
    assert np.max(np.abs(got - exact) / se) < 0.01  # within a hundredth of a standard error (tol 1e-4)
    # two inputs, one of them per fit
    z = rng.uniform(1, 2, (6, 40))
    y2 = 2.0 * np.exp(-0.5 * x) * z + 0.3 * z**2 + rng.normal(0, 0.01, (6, 40))
    kw = dict(init={"a": 1.0, "k": 1.0, "b": 0.0}, dtype="float64")
    eager = gf.fit_many("a*exp(-k*x)*z + b*z**2", {"x": x, "z": z}, y2, compile=False, **kw)
    native = gf.fit_many("a*exp(-k*x)*z + b*z**2", {"x": x, "z": z}, y2, compile=True, **kw)
    assert native.timings["native"] and native.converged.all()
    for k in "akb":
        np.testing.assert_allclose(native.params[k], eager.params[k], rtol=1e-9)
    from scipy.optimize import least_squares

    for i in range(6):  # scipy on the same two-input model
        ref = least_squares(lambda p: p[0] * np.exp(-p[1] * x) * z[i] + p[2] * z[i] ** 2 - y2[i], [1.0, 1.0, 0.0],
                            xtol=1e-15, ftol=1e-15, gtol=1e-15).x
        np.testing.assert_allclose([native.params[k][i] for k in "akb"], ref, rtol=1e-7)


def test_umask_002_keeps_the_cache_usable(monkeypatch, tmp_path):
    """A group-writable umask must not make every process rebuild: libraries are written 0755."""
    source = "int gf_umask(void) { return 7; }\n"
    old = os.umask(0o002)
    try:
        lib, _ = _native.load(source, tmp_path)
    finally:
        os.umask(old)
    assert lib.gf_umask() == 7
    so = next((tmp_path / "native").glob("*.so"))
    assert not so.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    monkeypatch.setattr(_native, "_LOADED", {})
    monkeypatch.setattr(native_common, "_KERNELS", {})  # (kernels of this process, whatever the folder)
    assert _native.is_built(source, tmp_path)  # a later process loads it without the compiler


def test_an_unwritable_cache_builds_privately_and_leaves_no_temporary_folder(monkeypatch, tmp_path):
    import glob
    import tempfile

    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "gradfit-native-*")))
    (tmp_path / "native").write_text("a file where the folder should be")  # the cache cannot be made
    lib, reason = _native.load("int gf_ro(void) { return 5; }\n", tmp_path)
    assert lib is not None and lib.gf_ro() == 5, reason
    real = _native._compile

    def refuse_cache(source, key, cc, folder, level):  # an existing cache folder that refuses writes
        if folder == tmp_path / "cache" / "native":
            raise PermissionError(13, "Permission denied", str(folder))
        return real(source, key, cc, folder, level)

    monkeypatch.setattr(_native, "_compile", refuse_cache)
    lib, reason = _native.load("int gf_ro2(void) { return 6; }\n", tmp_path / "cache")
    assert lib is not None and lib.gf_ro2() == 6, reason
    lib, reason = _native.load("int gf_ro3(void) { return 8; }\n", None)  # no cache at all
    assert lib.gf_ro3() == 8
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "gradfit-native-*"))) == before


def test_a_failing_compiler_is_run_once_per_process(monkeypatch, tmp_path):
    log = tmp_path / "calls"
    fake = tmp_path / "cc"
    fake.write_text(f"#!/bin/sh\necho x >> {log}\necho 'boom' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GRADFIT_CC", str(fake))
    monkeypatch.setattr(_native, "_LOADED", {})
    monkeypatch.setattr(native_common, "_KERNELS", {})  # (kernels of this process, whatever the folder)
    monkeypatch.setattr(_native, "_BROKEN", {})
    for k in range(3):
        lib, reason = _native.load(f"int gf_f{k}(void) {{ return {k}; }}\n", tmp_path)
        assert lib is None and "boom" in reason
    assert len(log.read_text().split()) == len(_native.VARIANTS)  # one build's variants, not three builds'


def test_a_global_fit_says_why_its_native_kernel_did_not_run(monkeypatch, tmp_path):
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'simulated failure' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GRADFIT_CC", str(fake))
    monkeypatch.setattr(_native, "_LOADED", {})
    monkeypatch.setattr(native_common, "_KERNELS", {})  # (kernels of this process, whatever the folder)
    xs = np.linspace(0, 5, 32)
    ys = 3.0 * np.exp(-0.8 * xs) + np.random.default_rng(2).normal(0, 0.01, (10, 32))
    r = gf.fit_many("a*exp(-k*x)", xs, ys, init={"a": 3.0, "k": 0.5}, shared=["k"], compile=True)
    assert not r.timings["native"] and "simulated failure" in r.timings["native_kernel"]
    assert r.converged.all() and r.shared["k"] == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize("shared", [[], ["--shared", "k"]])
def test_cli_compile_yes_runs_the_native_kernel_and_says_so(tmp_path, shared):
    import json
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from _cli import cli

    rng = np.random.default_rng(0)
    lines = ["well,time,signal"]
    for w in range(4):
        for t in np.linspace(0, 5, 12):
            lines.append(f"w{w},{t},{(2 + w) * np.exp(-0.7 * t) + rng.normal(0, 0.01)}")
    (tmp_path / "long.csv").write_text("\n".join(lines) + "\n")
    args = ["fit-many", tmp_path / "long.csv", "a*exp(-k*time)", "--id-column", "well", "--x", "time", "--y", "signal",
            "--init", "a=1,k=1", "--json", *shared]
    results = {}
    for flag in ("yes", "no"):
        code, out, err = cli(*args, "--compile", flag)
        assert code == 0, err
        results[flag] = json.loads(out)
    assert results["yes"]["native"] is True and results["no"]["native"] is False
    assert results["yes"]["converged_fraction"] == results["no"]["converged_fraction"] == 1.0


def test_range_cosine_with_held_columns_by_the_gram_matrix_equals_the_svd():
    """stats.batch_range_cosine leaves held columns out through the Gram matrix (identity in
    their row and column) instead of an SVD; the cosine is the SVD's of the kept columns."""
    from gradfit.stats import batch_range_cosine

    rng = np.random.default_rng(0)
    jac, r = rng.normal(size=(60, 30, 4)), rng.normal(size=(60, 30))
    held = rng.random((60, 4)) < 0.3
    held[0] = True  # every column held: nothing left, cosine 0
    got = batch_range_cosine(jac, r, held)
    for b in range(60):
        kept = jac[b][:, ~held[b]]
        if not kept.shape[1]:
            assert got[b] == 0.0
            continue
        u, _, _ = np.linalg.svd(kept / np.linalg.norm(kept, axis=0), full_matrices=False)
        assert got[b] == pytest.approx(np.linalg.norm(u.T @ r[b]) / np.linalg.norm(r[b]), abs=1e-13)



def test_auto_counts_the_later_chunks_of_the_call():
    """compile="auto" projects the whole call from its first eager iteration: a chunk too small
    to pay for a build alone builds when the chunks after it (run in C once built) make up the
    difference (300k Gaussians used to stay eager, one 32k-fit chunk at a time)."""
    from gradfit.lsq.compiled import native_build_seconds, worth_building

    cost = 2.0 * native_build_seconds(4)
    per_iteration = 0.8 * cost / 8  # this chunk's rest alone: 80% of what it takes
    assert not worth_building(per_iteration, 25, 4)
    assert worth_building(per_iteration, 25, 4, later_chunks=1.0)
    assert not worth_building(per_iteration, 2, 4, later_chunks=0.05)  # max_iter caps the projection


def test_each_kernel_kind_has_its_own_build_cost():
    # measured (lsq/compiled.py): one fit's kernel builds in ~0.4 s, fit_many's with its lanes in
    # ~0.8 s at 4 parameters: 1 s of eager single fits pays for the first, not for the second
    from gradfit.lsq import compiled

    key = ("test-kind", "a*x", ("a",), "float64")
    compiled.EAGER_SECONDS[key] = 1.0
    try:
        assert compiled.spent_enough(key, 4, "single") and not compiled.spent_enough(key, 4, "many")
        assert compiled.native_build_seconds(4, "single") < compiled.native_build_seconds(4, "global") \
            < compiled.native_build_seconds(4, "many")
    finally:
        del compiled.EAGER_SECONDS[key]
