"""Model selection: gf.compare, fit_many(models=...) and ``gradfit compare``.

References are independent of gradfit: the criteria are recomputed here from their textbook
formulas and checked against statsmodels (OLS, WLS and a Poisson GLM fitted by statsmodels
itself); selection rates are checked against the exact F-distribution probability that a
nested model's extra parameter lowers the criterion (Hurvich & Tsai 1989; the likelihood
ratio n ln(RSS0/RSS1) = n ln(1 + F/(n-k1)) for nested linear models).
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
import pytest

import gradfit as gf
from _cli import cli
from gradfit.errors import FitError, MissingDependencyError

sm = pytest.importorskip("statsmodels.api")
stats = pytest.importorskip("scipy.stats")

N = 40
X = np.linspace(0.0, 4.0, N)
INIT = {"a": 2.0, "k": 1.0, "c": 0.0}
EXP, EXP_C = "a*exp(-k*x)", "a*exp(-k*x) + c"


def _data(seed=0, offset=0.5, noise=0.02):
    return 3.0 * np.exp(-0.8 * X) + offset + np.random.default_rng(seed).normal(0.0, noise, N)


def _lmfit_criteria(chi2, n, k):
    """lmfit's AIC/BIC (n ln(chi2/n) + 2k, n ln(chi2/n) + k ln n) and AICc (Hurvich & Tsai)."""
    aic = n * math.log(chi2 / n) + 2 * k
    return {"aic": aic, "bic": n * math.log(chi2 / n) + math.log(n) * k, "aicc": aic + 2 * k * (k + 1) / (n - k - 1)}


# -- the criteria ---------------------------------------------------------------------------------
def test_criteria_equal_statsmodels_ols_and_the_formulas():
    y = _data(1)
    c = gf.compare(["linear", "poly:2", "poly:3"], X, y)
    rows = {row["model"]: row for row in c.rows()}
    const = N * (1.0 + math.log(2.0 * math.pi))  # statsmodels keeps the Gaussian constant; lmfit drops it
    for label, degree in [("linear", 1), ("poly:2", 2), ("poly:3", 3)]:
        ols = sm.OLS(y, np.vander(X, degree + 1)).fit()
        k = degree + 1
        row = rows[label]
        assert (row["k"], row["n"], row["dof"]) == (k, N, N - k)
        assert row["chisqr"] == pytest.approx(ols.ssr, rel=1e-9)
        assert row["aic"] == pytest.approx(ols.aic - const, rel=1e-9, abs=1e-9)
        assert row["bic"] == pytest.approx(ols.bic - const, rel=1e-9, abs=1e-9)
        from statsmodels.tools.eval_measures import aicc

        assert row["aicc"] == pytest.approx(aicc(ols.llf, N, k) - const, rel=1e-9, abs=1e-9)
        for key, value in _lmfit_criteria(ols.ssr, N, k).items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-9)


def test_weighted_criteria_use_the_weighted_chi_square():
    rng = np.random.default_rng(3)
    sigma = 0.02 + 0.05 * rng.random(N)
    y = 1.0 - 0.3 * X + 0.02 * X**2 + rng.normal(0.0, sigma)
    c = gf.compare(["linear", "poly:2"], X, y, sigma=sigma)
    for row in c.rows():
        k = int(row["k"])
        wls = sm.WLS(y, np.vander(X, k), weights=1.0 / sigma**2).fit()
        assert row["chisqr"] == pytest.approx(wls.ssr, rel=1e-9)
        for key, value in _lmfit_criteria(wls.ssr, N, k).items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-9)


def test_poisson_criteria_equal_a_statsmodels_glm():
    rng = np.random.default_rng(5)
    y = rng.poisson(np.exp(3.0 - 0.6 * X))
    c = gf.compare(["exp(b0 + b1*x)", "exp(b0 + b1*x + b2*x**2)"], X, y, loss="poisson",
                   init={"b0": 1.0, "b1": 0.0, "b2": 0.0})
    rows = {row["model"]: row for row in c.rows()}
    for label, degree in [("exp(b0 + b1*x)", 1), ("exp(b0 + b1*x + b2*x**2)", 2)]:
        glm = sm.GLM(y, np.vander(X, degree + 1, increasing=True), family=sm.families.Poisson()).fit(tol=1e-12)
        k = degree + 1
        row = rows[label]
        assert row["chisqr"] == pytest.approx(glm.deviance, rel=1e-6)  # the deviance, for loss="poisson"
        assert row["aic"] == pytest.approx(2 * k - 2 * glm.llf, rel=1e-7)
        assert row["bic"] == pytest.approx(k * math.log(N) - 2 * glm.llf, rel=1e-7)
        assert row["aicc"] == pytest.approx(2 * k - 2 * glm.llf + 2 * k * (k + 1) / (N - k - 1), rel=1e-7)


def test_akaike_weights_and_deltas():
    c = gf.compare([EXP, EXP_C, "linear"], X, _data(2, offset=0.05, noise=0.05), init=INIT, criterion="aic")
    rows = c.rows()
    aic = np.array([row["aic"] for row in rows])
    assert list(aic) == sorted(aic) and c.labels == tuple(row["model"] for row in rows)
    delta = aic - aic.min()
    weight = np.exp(-delta / 2) / np.exp(-delta / 2).sum()
    np.testing.assert_allclose([row["delta"] for row in rows], delta, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose([row["weight"] for row in rows], weight, rtol=1e-12)
    assert sum(c.weights.values()) == pytest.approx(1.0, abs=1e-12)
    assert c.best is c.results[rows[0]["model"]] and c.best_label == rows[0]["model"]


def test_table_and_report():
    pytest.importorskip("pandas")
    c = gf.compare([EXP, EXP_C, "linear"], X, _data(0), init=INIT)
    t = c.table
    assert list(t.columns) == ["model", "k", "n", "dof", "chisqr", "aic", "aicc", "bic", "delta", "weight",
                               "status"]
    assert t["model"].tolist() == [EXP_C, EXP, "linear"]  # the offset is real: AICc ranks it first
    assert t["aicc"].is_monotonic_increasing and t["delta"].iloc[0] == 0.0
    assert t["k"].tolist() == [3, 2, 2]
    lines = c.report().splitlines()
    assert lines[0] == "model comparison by AICC (3 candidates)"
    assert [line.split()[0] for line in lines[2:]] == ["a*exp(-k*x)", "a*exp(-k*x)", "linear"]
    assert lines[2].split()[-1] == "converged" and "+ c" in lines[2]
    assert "best='a*exp(-k*x) + c'" in repr(c)


def test_failed_fits_are_listed_last_with_nan_criteria(monkeypatch):
    import gradfit.fitting.fit as fit_module

    import functools

    real = fit_module.fit

    @functools.wraps(real)  # the same signature: compare checks its keywords against it
    def fit(model, *args, **kwargs):
        if model == "gaussian":
            raise FitError("the model's mean is -1 at point 0")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(fit_module, "fit", fit)
    c = gf.compare([("a*exp(-k*x) + c", {"init": INIT}), "gaussian", ("linear", {})], X, _data(0),
                   max_iter=2)
    rows = c.rows()
    assert [row["model"] for row in rows] == ["linear", "a*exp(-k*x) + c", "gaussian"]
    assert rows[0]["weight"] == 1.0 and rows[0]["status"] == "converged"
    assert rows[1]["status"] == "max_iterations" and math.isnan(rows[1]["aicc"]) and rows[1]["weight"] == 0.0
    assert rows[2]["status"] == "error" and math.isnan(rows[2]["aic"]) and "mean is -1" in c.errors["gaussian"]
    assert rows[1]["k"] == 3 and rows[1]["n"] == N  # known even when the fit failed


def test_best_raises_when_nothing_converged():
    c = gf.compare([EXP, EXP_C], X, _data(0), init=INIT, max_iter=1)
    assert c.best_label is None and all(math.isnan(w) for w in c.weights.values())
    with pytest.raises(FitError, match="no candidate model converged"):
        _ = c.best


def test_table_without_pandas_names_the_extra(monkeypatch):
    import sys

    c = gf.compare(["linear", "poly:2"], X, _data(0))
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if not installed
    with pytest.raises(MissingDependencyError, match=r'pip install "gradfit\[pandas\]"'):
        _ = c.table
    assert len(c.rows()) == 2 and "linear" in c.report()  # what needs no pandas still works


def test_shared_init_goes_to_the_candidates_that_use_each_name():
    import torch

    def decay(x, a, k):
        return a * torch.exp(-k * x)

    c = gf.compare({"exp": EXP, "exp+c": (EXP_C, {"init": {"c": 0.4}}), "fn": decay}, X, _data(0),
                   init={"a": 2.0, "k": 1.0, "c": 0.0}, fixed=["c"])
    assert c.results["exp+c"].params["c"] == 0.4  # its own init, held fixed
    assert c.results["exp+c"].stats["dof"] == N - 2
    assert c.results["fn"].params["k"] == pytest.approx(c.results["exp"].params["k"], rel=1e-6)


@pytest.mark.parametrize("call, match", [
    (lambda: gf.compare([EXP, EXP_C], X, _data(0), criterion="aicx"), "must be one of aic, aicc, bic"),
    (lambda: gf.compare([], X, _data(0)), "models is empty"),
    (lambda: gf.compare([EXP, " a*exp(-k*x) "], X, _data(0)), "two candidates are labelled"),
    (lambda: gf.compare(EXP, X, _data(0)), "must be a list"),
    (lambda: gf.compare([(EXP, {"sigma": 1.0})], X, _data(0)), "own keywords"),
    (lambda: gf.compare([EXP], X, _data(0), init={"q": 1.0}), "no candidate model uses"),
    (lambda: gf.compare([EXP], X, _data(0), tolerance=1e-3), "has no 'tolerance'"),
    (lambda: gf.compare([EXP], X, _data(0), loss="huber"), "need a likelihood"),
    (lambda: gf.compare([EXP, "a*exp(-k*z)"], X, _data(0)), "candidate 'a\\*exp\\(-k\\*z\\)'"),
    (lambda: gf.fit_many(EXP, X, _data(0)[None], models=[EXP]), "not both"),
    (lambda: gf.fit_many(EXP, X, _data(0)[None], init=INIT, criterion="aic"), "pass the candidate models"),
    (lambda: gf.fit_many(models=[EXP], x=X, y=_data(0)[None], init=INIT, shared=["k"]), "cannot be combined"),
    (lambda: gf.fit_many(models=[EXP, lambda x, a, k, c: a * torch.exp(-k * x) + c], x=X, y=_data(0)[None],
                         init={"a": 1.0, "k": 1.0}), "init is missing c"),
])
def test_bad_input(call, match):
    with pytest.raises(gf.GradfitError, match=match):
        call()


# -- one choice per fit -----------------------------------------------------------------------------
def test_fit_many_choice_equals_compare_row_by_row(tmp_path):
    rng = np.random.default_rng(7)
    truth = np.stack([3.0 * np.exp(-0.8 * X) + (0.1 * i % 0.3) for i in range(6)])
    y = truth + rng.normal(0.0, 0.03, truth.shape)
    y[5] = np.nan  # no usable point: every candidate fails
    cands = [EXP, EXP_C, "linear"]
    r = gf.fit_many(models=cands, x=X, y=y, init=INIT, dtype="float64", criterion="aicc")
    assert r.models == tuple(cands) and r.criteria.shape == (6, 3) and r.criterion == "aicc"
    assert r.param_names == ("a", "k", "c", "slope", "intercept")
    for i in range(5):
        c = gf.compare(cands, X, y[i], init=INIT)
        rows = {row["model"]: row for row in c.rows()}
        assert r.models[r.model_index[i]] == c.best_label
        np.testing.assert_allclose(r.criteria[i], [rows[m]["aicc"] for m in cands], rtol=1e-7)
        best = c.best.params
        for name in r.param_names:
            expected = best.get(name, np.nan)
            np.testing.assert_allclose(r.params[name][i], expected, rtol=1e-5)  # fit_many's looser tol
        assert r.stats["chisqr"][i] == pytest.approx(c.best.stats["chisqr"], rel=1e-7)
    assert r.model_index[5] == -1 and not r.converged[5] and np.isnan(r.params["a"][5])
    assert r.status_text[5] == "too_few_points" and np.isnan(r.criteria[5]).all()
    assert "chosen     by AICC:" in r.report() and "1 none" in r.report()
    path = tmp_path / "choice.npz"
    r.save(path)
    back = gf.BatchResult.load(path)
    assert back.models == r.models and back.criterion == "aicc"
    np.testing.assert_array_equal(back.model_index, r.model_index)
    np.testing.assert_array_equal(back.criteria, r.criteria)
    np.testing.assert_array_equal(back.params["c"], r.params["c"])
    table = r.columns()
    assert table["model"].tolist()[:5] == [r.models[i] for i in r.model_index[:5]] and table["model"][5] == ""


def test_true_model_is_selected_when_the_candidates_differ():
    rng = np.random.default_rng(11)
    cands = [EXP, EXP_C, "linear"]
    truths = {1: 3.0 * np.exp(-0.8 * X) + 0.5, 2: 2.0 - 0.4 * X}
    for index, mean in truths.items():
        r = gf.fit_many(models=cands, x=X, y=mean + rng.normal(0.0, 0.05, (200, N)), init=INIT)
        assert (r.model_index == index).mean() >= 0.97, (cands[index], np.bincount(r.model_index + 1))


def _rate_bigger(criterion: str, n: int, k0: int, k1: int) -> float:
    """P(the criterion prefers the nested model with k1 > k0 parameters when the smaller is true):
    exact for linear models, n ln(1 + F/(n-k1)) > penalty with F ~ F(k1-k0, n-k1)."""
    penalty = {"aic": 2.0 * (k1 - k0), "bic": math.log(n) * (k1 - k0),
               "aicc": 2.0 * (k1 - k0) + 2 * k1 * (k1 + 1) / (n - k1 - 1) - 2 * k0 * (k0 + 1) / (n - k0 - 1)}[criterion]
    return float(stats.f.sf((n - k1) * math.expm1(penalty / n), k1 - k0, n - k1))


@pytest.mark.parametrize("criterion", ["aic", "aicc", "bic"])
def test_nested_selection_rate_matches_theory(criterion):
    """When the smaller model is true, AIC picks the bigger one ~16% of the time (chi2_1 > 2),
    at n = 40 exactly 17.7% (F test); AICc 14.4%, BIC 6.7%."""
    rng = np.random.default_rng({"aic": 1, "aicc": 2, "bic": 3}[criterion])
    fits = 2000
    expected = _rate_bigger(criterion, N, 2, 3)
    linear = gf.fit_many(models=["linear", "poly:2"], x=X, y=1.0 - 0.3 * X + rng.normal(0, 0.05, (fits, N)),
                         criterion=criterion, dtype="float64")
    curve = gf.fit_many(models=[EXP, EXP_C], x=X, y=3.0 * np.exp(-0.8 * X) + rng.normal(0, 0.05, (fits, N)),
                        init=INIT, criterion=criterion, dtype="float64")
    for r in (linear, curve):  # 4 standard errors of a binomial rate at 2,000 fits: <= 0.034
        assert (r.model_index >= 0).all()
        assert abs((r.model_index == 1).mean() - expected) < 0.035, ((r.model_index == 1).mean(), expected)
    assert {"aic": 0.177, "aicc": 0.144, "bic": 0.067}[criterion] == pytest.approx(expected, abs=5e-4)


# -- the command ---------------------------------------------------------------------------------------
@pytest.fixture
def decay_csv(tmp_path):
    t = np.linspace(0.0, 4.0, 40)
    y = 3.0 * np.exp(-0.8 * t) + 0.5 + np.random.default_rng(0).normal(0.0, 0.02, 40)
    path = tmp_path / "decay.csv"
    path.write_text("t,signal\n" + "\n".join(f"{a:.17g},{b:.17g}" for a, b in zip(t, y)) + "\n")
    return path, t, y


def test_cli_prints_the_ranked_table(decay_csv):
    path, t, y = decay_csv
    code, out, err = cli("compare", path, "signal ~ a*exp(-k*t)", "signal ~ a*exp(-k*t) + c", "poly:2",
                         "--init", "a=2,k=1,c=0")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("model comparison by AICC")
    ranked = [line.split("  ")[0].strip() for line in lines[2:5]]
    assert ranked == ["signal ~ a*exp(-k*t) + c", "poly:2", "signal ~ a*exp(-k*t)"]
    assert lines[-1].startswith("best: signal ~ a*exp(-k*t) + c  (a=")
    ref = gf.compare(["signal ~ a*exp(-k*t)", "signal ~ a*exp(-k*t) + c", "poly:2"], data={"t": t, "signal": y},
                     x="t", y="signal", init=INIT)
    assert f"{ref.rows()[0]['aicc']:.6g}" in lines[2]


def test_cli_json_and_criterion(decay_csv):
    path, t, y = decay_csv
    code, out, _ = cli("compare", path, "a*exp(-k*t)", "linear", "--y", "signal", "--x", "t", "--criterion", "bic",
                       "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["criterion"] == "bic" and doc["best"] == "a*exp(-k*t)"
    assert [m["model"] for m in doc["models"]] == ["a*exp(-k*t)", "linear"]
    ols = sm.OLS(y, np.vander(t, 2)).fit()
    assert doc["models"][1]["bic"] == pytest.approx(ols.bic - 40 * (1 + math.log(2 * math.pi)), rel=1e-8)
    assert sum(m["weight"] for m in doc["models"]) == pytest.approx(1.0)


def test_cli_exit_codes(decay_csv):
    path, _, _ = decay_csv
    code, out, err = cli("compare", path, "signal ~ a*exp(-k*t)", "signal ~ a*exp(-k*t) + c", "--max-iter", "1")
    assert code == 3 and "no candidate model converged" in err and "max_iterations" in out
    code, _, err = cli("compare", path, "signal ~ a*exp(-k*t)", "--criterion", "aicx")
    assert code == 2 and "invalid choice" in err
    code, _, err = cli("compare", path, "poly:2", "--y", "sgnal")
    assert code == 2 and err.count("\n") == 1 and "did you mean 'signal'" in err
    code, _, err = cli("compare", path, "signal ~ a*t", "signal ~ a*t", "--init", "a=1")
    assert code == 2 and "two candidates are labelled" in err


def test_cli_starts_finds_the_global_minimum_of_a_candidate(tmp_path):
    """A sine's frequency from a far start lands in a local minimum, where poly:2 wins; with
    --starts 16 over the bounds the sine reaches scipy's fit from the true start and wins."""
    from scipy.optimize import curve_fit

    t = np.linspace(0.0, 4.0, 60)
    y = 2.0 * np.sin(3.0 * t) + np.random.default_rng(0).normal(0.0, 0.05, 60)
    path = tmp_path / "sine.csv"
    path.write_text("t,signal\n" + "\n".join(f"{a:.17g},{b:.17g}" for a, b in zip(t, y)) + "\n")
    args = ("compare", path, "signal ~ a*sin(w*t)", "poly:2", "--init", "a=1,w=1", "--bounds", "w=0.5:5", "--json")
    code, out, err = cli(*args)
    assert code == 0, err
    assert json.loads(out)["best"] == "poly:2"  # one start: the sine stops in a local minimum
    code, out, err = cli(*args, "--starts", "16")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["best"] == "signal ~ a*sin(w*t)"
    popt, _ = curve_fit(lambda t, a, w: a * np.sin(w * t), t, y, p0=[2.0, 3.0])
    got = doc["params"]["signal ~ a*sin(w*t)"]
    np.testing.assert_allclose([got["a"], got["w"]], popt, rtol=1e-6)
    chi2, n, k = float(np.sum((popt[0] * np.sin(popt[1] * t) - y) ** 2)), 60, 2
    aicc = n * math.log(chi2 / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)
    assert doc["models"][0]["aicc"] == pytest.approx(aicc, rel=1e-6)


def test_the_comparison_plot_draws_every_converged_candidate_ranked(tmp_path, monkeypatch):
    import gradfit.results.plot as plot

    figures = []
    monkeypatch.setattr(plot, "_save", lambda fig, path: figures.append(fig))
    rng = np.random.default_rng(0)
    x = np.linspace(0, 4, 40)
    y = 3 * np.exp(-0.8 * x) + 0.3 + rng.normal(0, 0.05, 40)
    c = gf.compare(["a*exp(-k*x)", "a*exp(-k*x) + c", "poly:2"], x, y, init={"a": 2, "k": 1, "c": 0})
    c.plot(tmp_path / "c.png", x, y)
    top = figures[0].axes[0]
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert labels[0] == "data" and labels[1].startswith("a*exp(-k*x) + c  (delta AICC 0.00, weight 1.00)")
    assert [lab.split("  (")[0] for lab in labels[1:]] == list(c.labels)
    assert len(top.collections) >= 1  # the winner's confidence band
    c.plot(tmp_path / "c.png", x, y)  # and a real file
    monkeypatch.undo()
    c.plot(tmp_path / "real.png", x, y)
    assert (tmp_path / "real.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
