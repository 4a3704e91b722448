"""Multistart (gf.fit / gf.fit_many starts=K) and the data-driven start of formulas, checked
against global optima computed independently: a dense grid over a sine's frequency with the
amplitude and phase solved linearly, scipy.optimize.least_squares from the true parameters, and
the NIST StRD certified values."""

from pathlib import Path

import numpy as np
import torch
import pytest

import gradfit as gf
from gradfit import ConfigError
from gradfit.data.nist import lre, read_strd
from gradfit.models import resolve_model
from gradfit.models.starts import formula_start, linear_parameters, spread_starts, unit_design

scipy_optimize = pytest.importorskip("scipy.optimize")

NIST = Path(__file__).resolve().parents[1].parent / "shared" / "nist_strd"
needs_nist = pytest.mark.skipif(not NIST.is_dir(), reason="../shared/nist_strd is not present")

SINE = "a*sin(w*x + p)"
X = np.linspace(0.0, 10.0, 200)


def sine_data(w, seed=1):
    rng = np.random.default_rng(seed)
    return 2.0 * np.sin(w * X + 0.5) + rng.normal(0.0, 0.2, X.size)


def sine_global(y):
    """(chi-square, |w|, |a|) of the global least-squares sine: a grid over w (step 1e-3 on
    (0, 10]) with A sin(wx) + B cos(wx) solved linearly (2x2 normal equations per w), refined
    by scipy from the grid's best."""
    grid = np.arange(1e-3, 10.0, 1e-3)
    s, c = np.sin(grid[:, None] * X), np.cos(grid[:, None] * X)
    ss, cc, sc = (s * s).sum(1), (c * c).sum(1), (s * c).sum(1)
    sy, cy = s @ y, c @ y
    det = ss * cc - sc**2
    a_s, a_c = (cc * sy - sc * cy) / det, (ss * cy - sc * sy) / det
    chi2 = y @ y - (a_s * sy + a_c * cy)
    i = int(np.argmin(chi2))
    best = (chi2[i], (grid[i], (a_s[i], a_c[i])))
    w, (a_s, a_c) = best[1]
    start = [np.hypot(a_s, a_c), w, np.arctan2(a_c, a_s)]
    ref = scipy_optimize.least_squares(lambda q: q[0] * np.sin(q[1] * X + q[2]) - y, start, xtol=1e-15, ftol=1e-15,
                                       gtol=1e-15)
    return 2.0 * ref.cost, abs(ref.x[1]), abs(ref.x[0])


# -- gf.fit --------------------------------------------------------------------------------------
def test_sine_frequency_needs_multistart_and_reaches_the_global_optimum():
    y = sine_data(3.7)
    chi2_ref, w_ref, a_ref = sine_global(y)
    init = {"a": 1.0, "w": 1.0, "p": 0.0}
    one = gf.fit(SINE, x=X, y=y, init=init)
    assert one.stats["chisqr"] > 10 * chi2_ref  # one start ends in a local minimum
    r = gf.fit(SINE, x=X, y=y, init=init, starts=32)
    assert r.status == "converged"
    assert r.stats["chisqr"] == pytest.approx(chi2_ref, rel=1e-9)
    assert abs(r.params["w"]) == pytest.approx(w_ref, rel=1e-7)
    assert abs(r.params["a"]) == pytest.approx(a_ref, rel=1e-7)
    ms = r.multistart
    assert ms["starts"] == 32 and 1 <= ms["reached_best"] <= ms["converged"] <= 32
    assert ms["reached_best"] <= ms["converged"] and 2 <= ms["distinct_minima"] <= ms["converged"]
    assert set(ms["best_start"]) == {"a", "w", "p"}
    # the fit is finished by gf.fit itself: its usual uncertainties are there
    assert all(np.isfinite(v) and v > 0 for v in r.stderr.values())


def test_two_gaussians_from_a_bad_start():
    formula = "a1*exp(-(x-m1)**2/(2*s1**2)) + a2*exp(-(x-m2)**2/(2*s2**2))"
    x = np.linspace(0.0, 10.0, 150)
    true = [3.0, 2.0, 0.5, 2.0, 6.0, 0.8]

    def model(q):
        return q[0] * np.exp(-(x - q[1]) ** 2 / (2 * q[2] ** 2)) + q[3] * np.exp(-(x - q[4]) ** 2 / (2 * q[5] ** 2))

    y = model(true) + np.random.default_rng(3).normal(0.0, 0.05, x.size)
    ref = scipy_optimize.least_squares(lambda q: model(q) - y, true, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    bad = {"a1": 1.0, "m1": 8.0, "s1": 1.0, "a2": 1.0, "m2": 9.0, "s2": 1.0}
    assert gf.fit(formula, x=x, y=y, init=bad).stats["chisqr"] > 10 * 2 * ref.cost
    r = gf.fit(formula, x=x, y=y, init=bad, starts=32)
    assert r.status == "converged" and r.stats["chisqr"] == pytest.approx(2 * ref.cost, rel=1e-9)
    peaks = sorted([(r.params["m1"], r.params["a1"], abs(r.params["s1"])),
                    (r.params["m2"], r.params["a2"], abs(r.params["s2"]))])
    got = [v for peak in peaks for v in (peak[1], peak[0], peak[2])]
    np.testing.assert_allclose(got, ref.x * [1, 1, np.sign(ref.x[2]), 1, 1, np.sign(ref.x[5])], rtol=1e-6)


def test_the_given_start_is_one_of_the_starts():
    # from the certified optimum's neighbourhood every design keeps the optimum (start 0)
    y = sine_data(3.7)
    chi2_ref, w_ref, _ = sine_global(y)
    r = gf.fit(SINE, x=X, y=y, init={"a": 2.0, "w": 3.7, "p": 0.5}, starts=2)
    assert r.stats["chisqr"] == pytest.approx(chi2_ref, rel=1e-9) and r.params["w"] == pytest.approx(w_ref, rel=1e-7)


def test_seed_makes_the_design_reproducible():
    y = sine_data(3.7)
    a = gf.fit(SINE, x=X, y=y, init={"a": 1.0, "w": 1.0, "p": 0.0}, starts=8, seed=5)
    b = gf.fit(SINE, x=X, y=y, init={"a": 1.0, "w": 1.0, "p": 0.0}, starts=8, seed=5)
    c = gf.fit(SINE, x=X, y=y, init={"a": 1.0, "w": 1.0, "p": 0.0}, starts=8, seed=6)
    assert a.multistart == b.multistart and a.params == b.params
    center = np.array([[1.0, 1.0, 0.0]])
    box = np.full((1, 3), np.inf)
    d5 = spread_starts(center, -box, box, np.ones(3, bool), 8, seed=5)
    d6 = spread_starts(center, -box, box, np.ones(3, bool), 8, seed=6)
    assert np.array_equal(d5, spread_starts(center, -box, box, np.ones(3, bool), 8, seed=5))
    assert not np.allclose(d5[1:], d6[1:]) and c.multistart["starts"] == 8


def test_multistart_survives_save_and_load(tmp_path):
    r = gf.fit(SINE, x=X, y=sine_data(3.7), init={"a": 1.0, "w": 1.0, "p": 0.0}, starts=4)
    r.save(tmp_path / "m.json")
    assert gf.load(tmp_path / "m.json").multistart == r.multistart
    assert r.to_dict()["multistart"] == r.multistart
    assert gf.fit(SINE, x=X, y=sine_data(3.7), init={"a": 1.0, "w": 1.0, "p": 0.0}).multistart is None


def test_poisson_multistart_reaches_the_maximum_likelihood():
    x = np.linspace(0.0, 10.0, 80)
    mu = 20.0 + 15.0 * np.sin(2.9 * x + 0.3)
    counts = np.random.default_rng(4).poisson(mu).astype(float)

    def deviance(q):
        m = q[0] + q[1] * np.sin(q[2] * x + q[3])
        if np.any(m <= 0):
            return 1e300
        t = np.where(counts > 0, counts * np.log(np.where(counts > 0, counts, 1.0) / m), 0.0)
        return 2.0 * np.sum(t - (counts - m))

    ref = scipy_optimize.minimize(deviance, [20.0, 15.0, 2.9, 0.3], method="Nelder-Mead",
                                  options={"xatol": 1e-12, "fatol": 1e-13, "maxiter": 40_000, "maxfev": 40_000})
    init = {"c": 20.0, "a": 5.0, "w": 1.0, "p": 0.0}
    # w bounded below the sampling's alias (2 pi / 0.127 - w gives the same means at the points)
    r = gf.fit("c + a*sin(w*x + p)", x=x, y=counts, loss="poisson", init=init, bounds={"w": (0.1, 10.0)}, starts=32)
    assert r.status == "converged"
    assert r.stats["deviance"] == pytest.approx(ref.fun, rel=1e-7)
    assert abs(r.params["w"]) == pytest.approx(ref.x[2], rel=1e-5)


# -- NIST StRD with no init at all ---------------------------------------------------------------
def _nist_no_init(name, starts):
    p = read_strd(NIST / f"{name}.dat")
    r = gf.fit(p.formula, data=p.columns, dtype="float64", starts=starts)
    assert r.status == "converged", (r.status, r.message)
    for k in p.param_names:
        assert lre(r.params[k], p.certified[k]) >= 6.0, (k, r.params[k], p.certified[k], r.multistart)
    return p


@needs_nist
@pytest.mark.parametrize("name", ["Eckerle4", "BoxBOD", "Rat43", "Bennett5", "MGH10"])
def test_nist_without_init_reaches_the_certified_values(name):
    _nist_no_init(name, 16)


@needs_nist
def test_nist_thurber_one_start_fails_many_succeed():
    p = read_strd(NIST / "Thurber.dat")
    one = gf.fit(p.formula, data=p.columns, dtype="float64")
    assert min(lre(one.params[k], p.certified[k]) for k in p.param_names) < 2.0
    _nist_no_init("Thurber", 64)


@needs_nist
@pytest.mark.slow
@pytest.mark.parametrize("name", ["MGH09", "Kirby2", "Hahn1"])
def test_nist_without_init_slow(name):
    _nist_no_init(name, 64)


@needs_nist
@pytest.mark.slow
@pytest.mark.parametrize("name", ["MGH09", "Thurber", "BoxBOD", "Eckerle4", "Rat43", "Bennett5", "MGH10"])
def test_nist_hard_first_start_with_starts(name):
    p = read_strd(NIST / f"{name}.dat")
    r = gf.fit(p.formula, data=p.columns, init=p.starts[0], dtype="float64", starts=16)
    assert r.status == "converged"
    for k in p.param_names:
        assert lre(r.params[k], p.certified[k]) >= 6.0, (k, r.params[k], p.certified[k])


# -- gf.fit_many -----------------------------------------------------------------------------------
def test_fit_many_multistart_rescues_fits_that_fail_from_the_given_start(tmp_path):
    freqs = (0.9, 2.0, 3.7, 5.1)
    y = np.stack([sine_data(w, seed=i) for i, w in enumerate(freqs)])
    refs = [sine_global(row) for row in y]
    init = {"a": 1.0, "w": 1.0, "p": 0.0}
    one = gf.fit_many(SINE, X, y, init=init, dtype="float64")
    failed = [i for i, ref in enumerate(refs) if one.stats["chisqr"][i] > 1.01 * ref[0]]
    assert len(failed) >= 2
    r = gf.fit_many(SINE, X, y, init=init, dtype="float64", starts=32, tol=1e-8, max_iter=200)
    for i, (chi2, w, a) in enumerate(refs):
        assert r.converged[i]
        assert r.stats["chisqr"][i] == pytest.approx(chi2, rel=1e-7)
        assert abs(r.params["w"][i]) == pytest.approx(w, rel=1e-5)
    ms = r.multistart
    assert ms["starts"] == 32
    for key in ("converged", "reached_best", "distinct_minima"):
        assert ms[key].shape == (4,)
    assert np.all(ms["reached_best"] >= 1) and np.all(ms["reached_best"] <= ms["converged"])
    assert np.all(ms["distinct_minima"] >= 1) and np.all(ms["distinct_minima"] <= ms["converged"])
    r.save(tmp_path / "b.npz")
    back = gf.BatchResult.load(tmp_path / "b.npz")
    assert back.multistart["starts"] == 32
    for key in ("converged", "reached_best", "distinct_minima"):
        np.testing.assert_array_equal(back.multistart[key], ms[key])
    assert gf.fit_many(SINE, X, y, init=init, dtype="float64", starts=32, tol=1e-8, max_iter=200,
                       seed=0).multistart["reached_best"].tolist() == ms["reached_best"].tolist()


def test_fit_many_multistart_respects_bounds():
    y = np.stack([sine_data(3.7), sine_data(2.2, seed=2)])
    r = gf.fit_many(SINE, X, y, init={"a": 1.0, "w": 1.0, "p": 0.0}, bounds={"w": (0.1, 6.0), "a": (0.0, None)},
                    starts=32, dtype="float64", tol=1e-8, max_iter=200)
    assert np.all((r.params["w"] >= 0.1) & (r.params["w"] <= 6.0)) and np.all(r.params["a"] >= 0)
    np.testing.assert_allclose(r.params["w"], [sine_global(row)[1] for row in y], rtol=1e-5)


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -3, "x", 2.5, True])
def test_bad_starts_are_config_errors(bad):
    with pytest.raises(ConfigError, match="starts"):
        gf.fit(SINE, x=X, y=sine_data(3.7), starts=bad)
    with pytest.raises(ConfigError, match="starts"):
        gf.fit_many(SINE, X, sine_data(3.7)[None], init={"a": 1.0, "w": 1.0, "p": 0.0}, starts=bad)


def test_starts_refused_where_they_cannot_apply():
    y = sine_data(3.7)
    with pytest.raises(ConfigError, match="starts"):
        gf.fit("mlp", x=X, y=y, starts=4, epochs=1, hidden=(4,))
    with pytest.raises(ConfigError, match="starts"):
        gf.fit(SINE, x=X, y=y, loss="mae", starts=4, epochs=1)
    with pytest.raises(ConfigError, match="tie"):
        gf.fit("a*sin(w*x + p) + c", x=X, y=y, tie={"c": "a"}, starts=4)
    with pytest.raises(ConfigError, match="start_design"):
        gf.fit(SINE, x=X, y=y, starts=4, start_design="grid")
    with pytest.raises(ConfigError, match="shared"):
        gf.fit_many(SINE, X, np.stack([y, y]), init={"a": 1.0, "w": 1.0, "p": 0.0}, shared=["w"], starts=4)


# -- the designs -------------------------------------------------------------------------------------
def test_designs_respect_bounds_and_keep_the_start():
    center = np.array([[2.0, 5.0, 0.0, -3.0, 0.5, 7.0]])
    lower = np.array([[-np.inf, 1.0, -np.inf, -np.inf, 1e-6, 7.0]])
    upper = np.array([[np.inf, np.inf, np.inf, -1.0, 10.0, np.inf]])
    vary = np.array([True, True, True, True, True, False])
    for design in ("sobol", "lhs"):
        d = spread_starts(center, lower, upper, vary, 257, seed=3, design=design)[:, 0, :]
        np.testing.assert_array_equal(d[0], center[0])
        assert np.all(d >= lower) and np.all(d <= upper)
        assert np.all(d[:, 5] == 7.0)  # not varied
        assert np.all(d[1:, 1] > 1.0) and np.all(d[1:, 3] < -1.0)  # one-sided: on the bound's side
        # unbounded, start 2: magnitudes 2 * 10**U(-2, 2), a quarter of them negative
        assert np.all((np.abs(d[1:, 0]) >= 0.02 * 0.999) & (np.abs(d[1:, 0]) <= 200 * 1.001))
        assert 0.15 < np.mean(d[1:, 0] < 0) < 0.35
        assert 0.35 < np.mean(d[1:, 2] < 0) < 0.65  # a start at 0: symmetric
        # (1e-6, 10): log-uniform, so about half the points lie below 10**-2.5
        assert 0.4 < np.mean(d[1:, 4] < 10 ** -2.5) < 0.6


def test_latin_hypercube_has_one_point_per_slice():
    u = unit_design(50, 3, seed=2, design="lhs")
    for j in range(3):
        assert sorted(np.floor(u[:, j] * 50).astype(int).tolist()) == list(range(50))


# -- the data-driven formula start ---------------------------------------------------------------------
def test_formula_start_solves_the_linear_parameters_and_beats_all_ones():
    x = np.linspace(0.0, 5.0, 40)
    y = 300.0 * np.exp(-2.5 * x) + 4.0
    model = resolve_model("a*exp(-k*x) + c").bind(["x"])
    assert linear_parameters(model.parsed.rhs, model.param_names) == ("a", "c")
    ones = {"a": 1.0, "k": 1.0, "c": 1.0}
    start = formula_start(model, {"x": x}, y, None, ones, ["a", "k", "c"])
    assert start == formula_start(model, {"x": x}, y, None, ones, ["a", "k", "c"])  # deterministic
    # a and c are the least-squares values for the chosen k (an independent lstsq)
    basis = np.stack([np.exp(-start["k"] * x), np.ones_like(x)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    np.testing.assert_allclose([start["a"], start["c"]], coef, rtol=1e-6)

    def chi2(v):
        return float(np.sum((v["a"] * np.exp(-v["k"] * x) + v["c"] - y) ** 2))

    assert chi2(start) < 0.01 * chi2(ones)
    r = gf.fit("a*exp(-k*x) + c", x=x, y=y)  # no init: starts from the screen, ends at the truth
    np.testing.assert_allclose([r.params[k] for k in "akc"], [300.0, 2.5, 4.0], rtol=1e-8)
    assert r.settings["init"] == start


def test_given_init_and_bounds_are_kept_by_the_formula_start():
    x = np.linspace(0.0, 5.0, 40)
    y = 300.0 * np.exp(-2.5 * x) + 4.0
    r = gf.fit("a*exp(-k*x) + c", x=x, y=y, init={"k": 2.0}, bounds={"c": (0.0, 10.0)}, max_iter=1)
    assert r.settings["init"]["k"] == 2.0 and r.settings["init"]["c"] == 1.0  # bounded: the plain guess
    assert r.settings["init"]["a"] != 1.0


def test_builtins_keep_their_own_guess():
    x = np.linspace(-5, 5, 50)
    y = 3.0 * np.exp(-(x - 0.5) ** 2 / 2.0) + 0.1
    model = resolve_model("gaussian")
    r = gf.fit("gaussian", x=x, y=y, max_iter=1)
    assert r.settings["init"] == pytest.approx(model.guess({"x": x}, y))


# -- CLI -------------------------------------------------------------------------------------------
def test_cli_starts(tmp_path):
    import json

    from _cli import cli

    y = sine_data(3.7)
    np.savetxt(tmp_path / "d.csv", np.c_[X, y], delimiter=",", header="x,y", comments="")
    code, out, err = cli("fit", tmp_path / "d.csv", "y ~ a*sin(w*x + p)", "--init", "a=1,w=1,p=0", "--starts", "32",
                         "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["multistart"]["starts"] == 32
    assert abs(doc["params"]["w"]) == pytest.approx(sine_global(y)[1], rel=1e-7)
    np.save(tmp_path / "y.npy", np.stack([y, sine_data(2.0)]))
    code, out, err = cli("fit-many", tmp_path / "y.npy", SINE, "--x-values", ",".join(map(str, X)), "--init",
                         "a=1,w=1,p=0", "--starts", "16", "--seed", "1", "--dtype", "float64", "--json")
    assert code == 0, err
    assert json.loads(out)["multistart"]["starts"] == 16
    code, out, err = cli("fit", tmp_path / "d.csv", "y ~ a*sin(w*x + p)", "--starts", "0")
    assert code == 2 and "starts" in err


def test_fit_many_starts_formulas_from_their_data_without_init():
    # fit_many once needed init for formulas ("fit_many needs init") even with starts= or models=
    rng = np.random.default_rng(0)
    x = np.linspace(0, 4, 40)
    offset = np.where(np.arange(20) < 10, 0.0, 0.3)[:, None]
    y = 3 * np.exp(-0.8 * x) + offset + rng.normal(0, 0.05, (20, 40))
    r = gf.fit_many("a*exp(-k*x) + c", x, y, dtype="float64", tol=1e-10)
    assert r.converged.all()
    ref = gf.fit_many("a*exp(-k*x) + c", x, y, init={"a": 3.0, "k": 0.8, "c": 0.1}, dtype="float64", tol=1e-10)
    np.testing.assert_allclose(r.params["k"], ref.params["k"], rtol=1e-6)
    assert gf.fit_many("a*exp(-k*x)", x, y, starts=4).converged.all()
    chosen = gf.fit_many(models=["a*exp(-k*x)", "a*exp(-k*x) + c"], x=x, y=y)
    assert (chosen.model_index[10:] == 1).all()
    with pytest.raises(gf.ConfigError, match="needs init for a Python function"):
        gf.fit_many(lambda x, a, k: a * torch.exp(-k * x), x, y)


def test_the_report_names_the_users_start_and_the_multistart():
    rng = np.random.default_rng(1)
    x = np.linspace(0, 10, 200)
    y = 2 * np.sin(3.7 * x + 0.5) + rng.normal(0, 0.2, 200)
    r = gf.fit("a*sin(w*x + p)", x=x, y=y, init={"a": 1, "w": 1, "p": 0}, starts=32)
    assert r.settings["init"] == {"a": 1.0, "w": 1.0, "p": 0.0}
    line = next(ln for ln in r.report().splitlines() if ln.startswith("multistart"))
    assert line.startswith("multistart 32 starts:") and "reached the best" in line
    assert "(init 1)" in r.report()
