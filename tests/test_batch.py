"""fit_many: batched least squares against scipy, masks, bounds, failures, persistence."""

import dataclasses

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit import ConfigError, DataError

scipy_optimize = pytest.importorskip("scipy.optimize")
RNG = np.random.default_rng(11)


def _scipy_fits(f, x, y, init, sigma=None):
    out = []
    for i in range(len(y)):
        ok = np.isfinite(y[i])
        p, _ = scipy_optimize.curve_fit(f, x[ok], y[i][ok], p0=init[i], maxfev=20000)
        out.append(p)
    return np.array(out)


def _gauss_data(n, m=32, noise=True):
    x = np.arange(m, dtype=float)
    truth = np.column_stack([RNG.uniform(200, 1000, n), 15.5 + RNG.uniform(-4, 4, n), RNG.uniform(2, 4, n),
                             RNG.uniform(10, 100, n)])
    clean = truth[:, :1] * np.exp(-(x - truth[:, 1:2]) ** 2 / (2 * truth[:, 2:3] ** 2)) + truth[:, 3:4]
    y = RNG.poisson(clean).astype(float) if noise else clean
    init = truth * (1 + RNG.choice([-1, 1], truth.shape) * RNG.uniform(0.1, 0.2, truth.shape))
    return x, y, truth, init


def gauss_np(x, a, mu, sigma, c):
    return a * np.exp(-(x - mu) ** 2 / (2 * sigma**2)) + c


def test_gaussian_builtin_with_guess_matches_scipy():
    x, y, truth, init = _gauss_data(300)
    r = gf.fit_many("gaussian", x, y, init="guess", dtype="float64", tol=1e-10, max_iter=200)
    assert r.converged.mean() >= 0.99
    ref = _scipy_fits(gauss_np, x, y, init)
    got = np.column_stack([r.params[n] for n in ("a", "mu", "sigma", "c")])
    ok = r.converged
    np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("formula,np_f,truth_fn", [
    ("a*exp(-k*x) + c", lambda x, a, k, c: a * np.exp(-k * x) + c,
     lambda n: np.column_stack([RNG.uniform(2, 5, n), RNG.uniform(0.2, 0.8, n), RNG.uniform(0, 1, n)])),
    ("c + L/(1 + exp(-k*(x - x0)))", lambda x, c, L, k, x0: c + L / (1 + np.exp(-k * (x - x0))),
     lambda n: np.column_stack([RNG.uniform(0, 1, n), RNG.uniform(2, 4, n), RNG.uniform(1, 2, n),
                                RNG.uniform(4, 6, n)])),
    ("a*exp(-(x-m)**2/(2*s**2)) + b*x + c", lambda x, a, m, s, b, c: a * np.exp(-(x - m) ** 2 / (2 * s**2)) + b * x + c,
     lambda n: np.column_stack([RNG.uniform(2, 4, n), RNG.uniform(4, 6, n), RNG.uniform(0.8, 1.5, n),
                                RNG.uniform(-0.1, 0.1, n), RNG.uniform(0, 1, n)])),
])
def test_formulas_match_scipy(formula, np_f, truth_fn):
    n, x = 200, np.linspace(0, 10, 40)
    truth = truth_fn(n)
    y = np.array([np_f(x, *p) for p in truth]) + 0.01 * RNG.standard_normal((n, len(x)))
    init = truth * (1 + 0.1 * RNG.choice([-1, 1], truth.shape))
    r = gf.fit_many(formula, x, y, init=init, dtype="float64", tol=1e-12, max_iter=300)
    ref = _scipy_fits(np_f, x, y, init)
    names = r.param_names
    got = np.column_stack([r.params[k] for k in names])
    assert r.converged.mean() >= 0.99
    np.testing.assert_allclose(got[r.converged], ref[r.converged], rtol=1e-5, atol=1e-7)
    # standard errors agree with scipy's covariance on a few fits
    for i in range(3):
        _, pcov = scipy_optimize.curve_fit(np_f, x, y[i], p0=init[i])
        np.testing.assert_allclose([r.stderr[k][i] for k in names], np.sqrt(np.diag(pcov)), rtol=1e-3)


def test_torch_callable_general_path_matches_fused():
    x, y, truth, init = _gauss_data(200)

    def f(xx, a, c, w, o):
        return a * torch.exp(-(xx - c) ** 2 / (2 * w**2)) + o

    fused = gf.fit_many("a*exp(-(x-c)**2/(2*w**2)) + o", x, y, init=init, dtype="float64")
    general = gf.fit_many(f, x, y, init=init, dtype="float64")
    assert general.timings["path"] == "general" and fused.timings["path"] == "fused"
    for k in "acwo":
        np.testing.assert_allclose(general.params[k], fused.params[k], rtol=1e-9)
    np.testing.assert_array_equal(general.status, fused.status)


@pytest.mark.parametrize("path", ["fused", "general"])
def test_engine_uses_the_one_batch_jacobian_builder(monkeypatch, path):
    """fit_many's residuals and Jacobians come from models/jacobian.py, not a private copy."""
    from gradfit.lsq import batched
    from gradfit.models import jacobian

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs["fused"])
        return jacobian.batch_residual_and_jacobian(*args, **kwargs)

    monkeypatch.setattr(batched, "batch_residual_and_jacobian", spy)
    x, y, truth, init = _gauss_data(20)
    model = "a*exp(-(x-c)**2/(2*w**2)) + o"
    if path == "general":
        def model(xx, a, c, w, o):
            return a * torch.exp(-(xx - c) ** 2 / (2 * w**2)) + o
    r = gf.fit_many(model, x, y, init=init, dtype="float64", compile=False)
    assert r.timings["path"] == path
    assert calls and set(calls) == {path == "fused"}
    assert r.converged.mean() > 0.9


def test_ragged_data_by_nan_padding_and_masks():
    x, y, truth, init = _gauss_data(50, noise=True)
    lengths = RNG.integers(20, 33, 50)
    ragged = y.copy()
    for i, m in enumerate(lengths):
        ragged[i, m:] = np.nan
    r = gf.fit_many("gaussian", x, ragged, init=init, dtype="float64", tol=1e-12, max_iter=200)
    np.testing.assert_array_equal(r.n_points, lengths)
    ref = _scipy_fits(gauss_np, x, ragged, init)
    got = np.column_stack([r.params[n] for n in ("a", "mu", "sigma", "c")])
    np.testing.assert_allclose(got[r.converged], ref[r.converged], rtol=1e-5)
    mask = np.isfinite(ragged)
    r2 = gf.fit_many("gaussian", x, np.nan_to_num(ragged, nan=1e6), mask=mask, init=init, dtype="float64",
                     tol=1e-12, max_iter=200)
    np.testing.assert_allclose(r2.params["a"], r.params["a"], rtol=1e-10)


def test_per_fit_bounds_and_fixed():
    x, y, truth, init = _gauss_data(20, noise=False)
    upper_w = np.where(np.arange(20) % 2 == 0, 2.0, np.inf)  # binding for half the fits
    init[:, 2] = np.minimum(init[:, 2], 1.9)
    r = gf.fit_many("gaussian", x, y, init=init, bounds={"sigma": (0.5, upper_w)}, dtype="float64", max_iter=100)
    even = np.arange(20) % 2 == 0
    assert np.all(r.params["sigma"][even] <= 2.0 + 1e-12)
    np.testing.assert_allclose(r.params["sigma"][~even], truth[~even, 2], rtol=1e-6)
    f = gf.fit_many("gaussian", x, y, init=truth * [1.1, 1.0, 1.1, 1.1], fixed=["mu"], dtype="float64")
    np.testing.assert_array_equal(f.params["mu"], truth[:, 1])
    assert np.all(f.stderr["mu"] == 0.0)
    np.testing.assert_allclose(f.params["a"], truth[:, 0], rtol=1e-6)


def test_failures_stay_local():
    x, y, truth, init = _gauss_data(10, noise=True)
    bad = y.copy()
    bad[3] = RNG.poisson(50.0, 32)  # background only: no peak to find
    bad[7] = np.nan  # no data at all
    bad[8, 2:] = np.nan  # too few points
    r = gf.fit_many("gaussian", x, bad, init=init, dtype="float64")
    alone = gf.fit_many("gaussian", x, y[[0, 1, 2, 4, 5, 6, 9]], init=init[[0, 1, 2, 4, 5, 6, 9]], dtype="float64")
    others = [0, 1, 2, 4, 5, 6, 9]
    for k in r.param_names:
        np.testing.assert_array_equal(r.params[k][others], alone.params[k])
    assert r.status_text[3] in r.status_names.values()
    assert r.status_text[7] == "too_few_points" and r.status_text[8] == "too_few_points"
    assert r.converged[others].all()


def test_batch_of_one_and_shapes():
    x, y, truth, init = _gauss_data(1, noise=False)
    r = gf.fit_many("gaussian", x, y[0], init=init[0], dtype="float64")
    assert len(r) == 1 and r.converged[0]
    np.testing.assert_allclose(r.params["a"], truth[:, 0], rtol=1e-6)
    per_fit_x = np.tile(x, (3, 1)) + np.arange(3)[:, None]
    yy = np.array([gauss_np(per_fit_x[i], *truth[0]) for i in range(3)])
    r = gf.fit_many("gaussian", per_fit_x, yy, init=np.tile(init[0], (3, 1)), dtype="float64")
    np.testing.assert_allclose(r.params["mu"], truth[0, 1], rtol=1e-6)


@pytest.mark.parametrize("kwargs,err,match", [
    ({"y": np.zeros((2, 3, 4))}, DataError, "shape"),
    ({"init": np.zeros((5, 2))}, DataError, "init must have shape"),
    ({"init": {"a": 1, "mu": 1, "sigma": 1, "c": 1, "zz": 1}}, ConfigError, "unknown parameter 'zz'"),
    ({"bounds": {"q": (0, 1)}}, ConfigError, "unknown parameter 'q'"),
    ({"x": np.arange(7.0)}, DataError, "input 'x' has shape"),
    ({"loss": "mae"}, ConfigError, "least squares"),
    ({"init": "guessing"}, ConfigError, "guess"),
])
def test_bad_input(kwargs, err, match):
    args = {"x": np.arange(8.0), "y": np.ones((2, 8)), "init": np.ones((2, 4))}
    args.update(kwargs)
    with pytest.raises(err, match=match):
        gf.fit_many("gaussian", args.pop("x"), args.pop("y"), **args)


def test_result_table_and_files(tmp_path):
    x, y, truth, init = _gauss_data(5)
    r = gf.fit_many("gaussian", x, y, init=init)
    df = r.to_pandas()
    assert list(df.columns[:5]) == ["fit", "a", "mu", "sigma", "c"] and len(df) == 5
    assert set(df["status"]) <= set(r.status_names.values())
    r.save(tmp_path / "r.npz")
    with np.load(tmp_path / "r.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["param__a"], r.params["a"])
        assert list(z["param_names"]) == ["a", "mu", "sigma", "c"]
    r.save(tmp_path / "r.parquet")
    import pandas as pd

    back = pd.read_parquet(tmp_path / "r.parquet")
    np.testing.assert_allclose(back["sigma"], r.params["sigma"])
    r.save(tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("fit,a,mu,sigma,c,a_stderr")
    with pytest.raises(ConfigError):
        r.save(tmp_path / "r.txt")
    assert "converged" in r.summary()


@pytest.mark.slow
def test_compiled_path_matches_eager(monkeypatch):
    monkeypatch.setenv("GRADFIT_CC", "")  # torch.compile, not the native kernel (tests/test_native_kernel.py)
    x, y, truth, init = _gauss_data(500)
    eager = gf.fit_many("gaussian", x, y, init=init, compile=False)
    compiled = gf.fit_many("gaussian", x, y, init=init, compile=True)
    assert compiled.timings["compiled"]
    np.testing.assert_allclose(compiled.params["a"], eager.params["a"], rtol=1e-4)
    assert (compiled.status == eager.status).mean() > 0.99


def test_chunking_gives_identical_results():
    x, y, truth, init = _gauss_data(50)
    whole = gf.fit_many("gaussian", x, y, init=init, dtype="float64")
    chunked = gf.fit_many("gaussian", x, y, init=init, dtype="float64", chunk_size=7)
    assert chunked.timings["chunk_size"] == 7
    for k in whole.param_names:
        np.testing.assert_array_equal(whole.params[k], chunked.params[k])
        np.testing.assert_array_equal(whole.stderr[k], chunked.stderr[k])
    np.testing.assert_array_equal(whole.status, chunked.status)


def test_statistics_match_one_fit():
    x, y, truth, init = _gauss_data(3)
    r = gf.fit_many("gaussian", x, y, init=init, dtype="float64", tol=1e-12, max_iter=200)
    assert set(r.stats) == {"n", "dof", "chisqr", "redchi", "aic", "bic"}
    np.testing.assert_array_equal(r.chi2, r.stats["chisqr"])
    with pytest.raises(AttributeError):
        r.chi2 = r.chi2  # read-only alias
    for i in range(3):
        one = gf.fit("gaussian", x, y[i], init=dict(zip(r.param_names, init[i])), optimizer="lm", dtype="float64")
        for key in r.stats:
            np.testing.assert_allclose(r.stats[key][i], one.stats[key], rtol=1e-6, err_msg=key)
        for n in r.param_names:
            np.testing.assert_allclose(r.stderr[n][i], one.stderr[n], rtol=1e-4)


def test_save_load_round_trip_every_field(tmp_path):
    x, y, truth, init = _gauss_data(6)
    y[2, 5:] = np.nan
    r = gf.fit_many("gaussian", x, y, init=init, fixed=["c"], dtype="float64")
    r = dataclasses.replace(r, ids=np.array(["w1", "w2", "w3", "w4", "w5", "w6"]))
    r.save(tmp_path / "r.npz")
    back = gf.BatchResult.load(tmp_path / "r.npz")
    assert back.param_names == r.param_names and back.model_text == r.model_text
    assert back.timings == r.timings
    np.testing.assert_array_equal(back.ids, r.ids)
    for k in r.param_names:
        np.testing.assert_array_equal(back.params[k], r.params[k])
        np.testing.assert_array_equal(back.stderr[k], r.stderr[k])
    assert set(back.stats) == set(r.stats)
    for k in r.stats:
        np.testing.assert_array_equal(back.stats[k], r.stats[k])
        assert back.stats[k].dtype == r.stats[k].dtype
    for k in ("status", "iterations"):
        np.testing.assert_array_equal(getattr(back, k), getattr(r, k))
        assert getattr(back, k).dtype == getattr(r, k).dtype
    assert back.report() == r.report()
    with pytest.raises(gf.PersistError):
        gf.BatchResult.load(tmp_path / "missing.npz")


def test_report_mirrors_fit_report():
    x, y, truth, init = _gauss_data(20)
    y[0] = np.nan
    text = gf.fit_many("gaussian", x, y, init=init, dtype="float64").report()
    assert text.splitlines()[0].startswith("model")
    assert "19 converged" in text and "1 too_few_points" in text
    assert "chi-square" in text and "AIC" in text
    assert "mu" in text and "median" in text and "stderr median" in text


def test_parameter_rules_shared_with_fit():
    x, y, truth, init = _gauss_data(4, noise=False)
    bad = [({"bounds": {"mu": (3.0, 3.0)}}, "min equals max"), ({"bounds": {"mu": (np.nan, 3.0)}}, "NaN"),
           ({"bounds": {"mu": (5.0, 1.0)}}, "greater than max"), ({"fixed": ["mue"]}, "did you mean 'mu'"),
           ({"bounds": {"mu": (0.0, 1.0)}}, "outside its bounds")]
    names = ("a", "mu", "sigma", "c")
    for kwargs, needle in bad:
        with pytest.raises(ConfigError, match=needle) as many:
            gf.fit_many("gaussian", x, y, init=init, dtype="float64", **kwargs)
        with pytest.raises(ConfigError, match=needle) as one:
            gf.fit("gaussian", x, y[0], init=dict(zip(names, init[0])), optimizer="lm", **kwargs)
        if needle != "outside its bounds":  # the batch also names the fit
            assert str(many.value) == str(one.value)
    with pytest.raises(ConfigError, match="tie"):
        gf.fit_many("gaussian", x, y, init=init, tie={"c": "2*a"})
    with pytest.raises(DataError, match="sigma must be positive"):
        gf.fit_many("gaussian", x, y, init=init, sigma=np.zeros(32))


def test_guesses_move_inside_bounds():
    x, y, truth, init = _gauss_data(5, noise=False)
    r = gf.fit_many("gaussian", x, y, init="guess", bounds={"sigma": (5.0, 9.0)}, dtype="float64")
    assert np.all((r.params["sigma"] >= 5.0) & (r.params["sigma"] <= 9.0))


def test_nan_inputs_mask_points():
    x, y, truth, init = _gauss_data(3, noise=False)
    xs = np.tile(x, (3, 1))
    xs[1, :4] = np.nan
    r = gf.fit_many("gaussian", xs, y, init=init, dtype="float64")
    assert r.n_points.tolist() == [32, 28, 32] and r.converged.all()


def test_long_table_with_ids():
    pd = pytest.importorskip("pandas")
    x, y, truth, init = _gauss_data(3, noise=False)
    rows = [(well, xv, yv) for well, row in zip(["B2", "A1", "C3"], y) for xv, yv in zip(x[:30], row[:30])]
    df = pd.DataFrame(rows, columns=["well", "dose", "signal"])
    r = gf.fit_many("gaussian", data=df, id="well", x="dose", y="signal", init="guess", dtype="float64",
                    max_iter=100)
    assert len(r) == 3 and sorted(r.ids.tolist()) == ["A1", "B2", "C3"]
    for i, well in enumerate(r.ids):
        j = ["B2", "A1", "C3"].index(well)
        np.testing.assert_allclose(r.params["mu"][i], truth[j, 1], rtol=1e-6)


def test_partial_init_is_guessed_and_solver_options_validated_like_fit():
    """A dict init may leave names out for built-in models (guessed, as in gf.fit); max_iter and tol
    are checked by the same LeastSquaresOptions as gf.fit, with the same messages."""
    x, y, truth, init = _gauss_data(4, noise=False)
    r = gf.fit_many("gaussian", x, y, init={"sigma": truth[:, 2]}, dtype="float64", max_iter=100)
    assert r.converged.all()
    np.testing.assert_allclose(r.params["mu"], truth[:, 1], rtol=1e-6)
    for bad, match in ((dict(max_iter=0), "max_iter must be an integer >= 1, got 0"), (dict(tol=-1.0), "tol")):
        with pytest.raises(gf.ConfigError, match=match):
            gf.fit_many("gaussian", x, y, init="guess", **bad)
        with pytest.raises(gf.ConfigError, match=match):
            gf.fit("gaussian", x=x, y=y[0], **bad)


def test_long_table_formula_in_the_column_names_and_short_repr():
    pd = pytest.importorskip("pandas")
    dose = np.logspace(-2, 2, 9)
    rows = [(w, d, 100 * d / (e + d)) for w, e in (("W1", 0.5), ("W2", 2.0)) for d in dose]
    df = pd.DataFrame(rows, columns=["well", "dose", "signal"])
    r = gf.fit_many("top*dose/(ec50 + dose)", data=df, id="well", x="dose", y="signal",
                    init={"top": 90.0, "ec50": 1.0}, dtype="float64", max_iter=100)
    np.testing.assert_allclose(r.params["ec50"], [0.5, 2.0], rtol=1e-6)
    assert repr(r) == "BatchResult('top*dose/(ec50 + dose)', 2 fits: 2 converged, median top=100, ec50=1.25)"
    with pytest.raises(gf.PersistError, match="reads the .npz files"):
        gf.BatchResult.load("fits.csv")


def test_partial_init_without_a_guess_names_the_missing_parameters():
    # a Python function has no start of its own: the missing name is named
    with pytest.raises(gf.ConfigError, match="init is missing b"):
        gf.fit_many(lambda x, a, b: a * x + b, np.arange(8.0), np.ones((2, 8)), init={"a": 1.0})
    # a formula's missing parameters start from the data, as in gf.fit
    x = np.arange(8.0)
    r = gf.fit_many("a*x + b", x, np.stack([2 * x + 1, -x + 3]), init={"a": 1.0}, dtype="float64", tol=1e-12)
    np.testing.assert_allclose(r.params["b"], [1.0, 3.0], atol=1e-9)


def test_normal_equations_shortcuts_match_the_products():
    """unit weights and constant columns (the offset's 1) skip work, not terms: chi2, A and g
    equal J^T W J and J^T W r formed in float64, and masked points (NaN there) add nothing."""
    from gradfit.optim.batch_lm import normal_equations

    rng = np.random.default_rng(3)
    r = rng.normal(size=(5, 7))
    cols = [rng.normal(size=(5, 7)), np.ones((5, 7)), rng.normal(size=(5, 7))]
    w = rng.uniform(0.5, 2.0, size=(5, 7))
    w[0, 3] = 0.0
    for weights, unit in ((w, False), (np.ones_like(w), True)):
        jm = np.stack(cols, axis=-1)
        want_a = np.einsum("bmi,bm,bmj->bij", jm, weights, jm)
        want_g = np.einsum("bmi,bm,bm->bi", jm, weights, r)
        want_chi2 = (weights * r * r).sum(-1)
        r_t = torch.tensor(r)
        if not unit:
            r_t[0, 3] = float("nan")  # a masked point: whatever the model gives there
        chi2, a, g = normal_equations(r_t, [torch.tensor(c) for c in cols], torch.tensor(weights),
                                      unit_weights=unit, constants=((1, 1.0),))
        np.testing.assert_allclose(chi2.numpy(), want_chi2, rtol=1e-12)
        np.testing.assert_allclose(a.numpy(), want_a, rtol=1e-12)
        np.testing.assert_allclose(g.numpy(), want_g, rtol=1e-12)
