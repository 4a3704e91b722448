"""What the plots show: labels, scales, error bars, artists and values, read from the Figure
(captured before it is saved), not only that a PNG exists."""

import math

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

import gradfit as gf
import gradfit.results.plot as plot_module
from gradfit.results.plot import DIRECT_SOLVE_TEXT, fit_figure, importance_figure, loss_figure
from gradfit.results.plot_batch import batch_figure

from _cli import cli


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture
def saved(monkeypatch):
    """The figures the plot functions save, by file name (nothing is written)."""
    figures = {}
    monkeypatch.setattr(plot_module, "_save", lambda fig, path: figures.__setitem__(str(path).rsplit("/", 1)[-1], fig))
    return figures


def _data_lines(ax):
    return {line.get_label(): line for line in ax.lines if line.get_linestyle() in ("None", "none", "")}


def _hill(x, bottom, top, n, ec50):
    return bottom + (top - bottom) * x**n / (ec50**n + x**n)


def test_labels_come_from_column_names_with_units(saved, tmp_path):
    pd = pytest.importorskip("pandas")
    t = np.linspace(0, 5, 40)
    df = pd.DataFrame({"Time (s)": t, "Counts": 100 * np.exp(-1.3 * t) + 5 + np.sin(7 * t)})
    r = gf.fit("exp_decay", data=df, x="Time (s)", y="Counts")
    r.plot_fit(tmp_path / "fit.png", data=df)
    top, bottom = saved["fit.png"].axes
    assert (top.get_xlabel(), top.get_ylabel(), bottom.get_xlabel()) == ("Time (s)", "Counts", "Time (s)")
    assert bottom.get_ylabel() == "residual"
    # the response column's name is kept in the result (and its file), so x, y arrays label too
    assert r.settings["response"] == "Counts"
    top = fit_figure(r, df["Time (s)"].to_numpy(), df["Counts"].to_numpy()).axes[0]
    assert (top.get_xlabel(), top.get_ylabel()) == ("Time (s)", "Counts")

    # a formula's response and input; named inputs without data
    r = gf.fit("signal ~ a*dose + b", x={"dose": t}, y=3 * t + 1)
    top = fit_figure(r, {"dose": t}, 3 * t + 1).axes[0]
    assert (top.get_xlabel(), top.get_ylabel()) == ("dose", "signal")
    # explicit labels win
    top = fit_figure(r, {"dose": t}, 3 * t + 1, xlabel="dose (mM)", ylabel="signal (AU)").axes[0]
    assert (top.get_xlabel(), top.get_ylabel()) == ("dose (mM)", "signal (AU)")


def test_hill_on_log_spaced_doses_gets_a_log_axis():
    dose = np.logspace(-3, 2, 10)
    y = _hill(dose, 1.0, 10.0, 1.0, 0.5) + np.array([1, -1, 2, -2, 0, 1, -1, 2, -2, 0]) * 0.05
    r = gf.fit("hill", x=dose, y=y)
    top, bottom = fit_figure(r, dose, y).axes
    assert top.get_xscale() == "log" and bottom.get_xscale() == "log"
    # the curve is drawn evenly in log x: it reaches the smallest dose and resolves the midpoint
    curve = top.get_lines()[-1]
    assert curve.get_label() == "fit" and np.isclose(curve.get_xdata()[0], 1e-3)
    ratios = np.diff(np.log(curve.get_xdata()))
    assert np.allclose(ratios, ratios[0])
    # hill on doses spanning only 1.3 decades but log-spaced: still log
    d2 = np.geomspace(0.1, 2.0, 8)
    r2 = gf.fit("hill", x=d2, y=_hill(d2, 0.0, 5.0, 2.0, 0.6) + np.linspace(-0.01, 0.01, 8))
    assert fit_figure(r2, d2, _hill(d2, 0.0, 5.0, 2.0, 0.6)).axes[0].get_xscale() == "log"
    # a zero dose (control) keeps the axis logarithmic above the smallest positive dose
    d0 = np.concatenate([[0.0], dose])
    y0 = _hill(d0, 1.0, 10.0, 1.0, 0.5) + np.linspace(-0.05, 0.05, 11)
    assert fit_figure(gf.fit("hill", x=d0, y=y0), d0, y0).axes[0].get_xscale() == "symlog"


def test_x_spanning_decades_is_log_but_uniform_x_stays_linear():
    x = np.logspace(0, 4, 30)
    r = gf.fit("a*x + b", x=x, y=2 * x + 1 + np.sin(x))
    assert fit_figure(r, x, 2 * x + 1).axes[0].get_xscale() == "log"
    # uniform on [0.001, 10]: 4 decades between its ends, but a log axis would squash it, not help
    u = np.concatenate([[0.001], np.linspace(0.1, 10, 50)])
    r = gf.fit("a*x + b", x=u, y=3 * u)
    assert fit_figure(r, u, 3 * u).axes[0].get_xscale() == "linear"
    # a linear model on a narrow range: linear
    v = np.linspace(1, 5, 20)
    assert fit_figure(gf.fit("a*x + b", x=v, y=v), v, v).axes[0].get_xscale() == "linear"


def test_sigma_draws_error_bars_and_normalizes_residuals(saved, tmp_path):
    rng = np.random.default_rng(1)
    x = np.linspace(0, 4, 25)
    sigma = 0.1 + 0.05 * x
    y = 2.0 * x - 1.0 + rng.normal(0, sigma)
    r = gf.fit("a*x + b", x=x, y=y, sigma=sigma)
    r.plot_fit(tmp_path / "fit.png", x, y, sigma=sigma)
    top, bottom = saved["fit.png"].axes
    bars = [c for c in top.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1
    segments = bars[0].lines[2][0].get_segments()
    half = np.array([abs(s[1][1] - s[0][1]) / 2 for s in segments])
    np.testing.assert_allclose(half, sigma, rtol=1e-12)
    assert bottom.get_ylabel() == "residual / sigma"
    # the residual points against an independent weighted line (numpy's polyfit, w = 1/sigma)
    slope, intercept = np.polyfit(x, y, 1, w=1 / sigma)
    expected = (y - (slope * x + intercept)) / sigma
    points, = [line for line in bottom.lines if line.get_linestyle() == "None"]
    np.testing.assert_allclose(np.sort(points.get_ydata()), np.sort(expected), atol=1e-8)
    # one number for every point works too; without sigma: no bars, plain residuals
    assert any(isinstance(c, ErrorbarContainer) for c in fit_figure(r, x, y, sigma=0.2).axes[0].containers)
    plain = fit_figure(r, x, y)
    assert not plain.axes[0].containers and plain.axes[1].get_ylabel() == "residual"
    with pytest.raises(gf.DataError, match="sigma"):
        fit_figure(r, x, y, sigma=np.ones(3))


@pytest.mark.filterwarnings("ignore:validation loss rose")
def test_train_and_validation_points_are_distinct():
    x = np.linspace(0, 10, 40)
    y = 3.0 * x + 2.0 + np.sin(3 * x)
    r = gf.fit("a*x + b", x=x, y=y, optimizer="adam", lr=0.1, epochs=300, val_fraction=0.25, seed=3)
    top, bottom = fit_figure(r, x, y).axes
    points = _data_lines(top)
    train, val = points["train"], points["validation"]
    assert train.get_marker() != val.get_marker() and train.get_color() != val.get_color()
    assert (len(train.get_xdata()), len(val.get_xdata())) == (r.n_train, r.n_val) == (30, 10)
    # the points marked validation are the ones the fit validated on: their MSE is its val_loss
    xv, yv = val.get_xdata(), val.get_ydata()
    mse = np.mean((yv - r.predict(xv)) ** 2)
    assert math.isclose(mse, r.val_loss, rel_tol=1e-4)
    assert set(np.round(xv, 9)).isdisjoint(np.round(train.get_xdata(), 9))
    # residuals keep the same two groups (unlabelled, same markers)
    assert {line.get_marker() for line in bottom.lines if line.get_linestyle() == "None"} == {"o", "s"}
    # other data than the fit's (a different row count): no split is guessed
    assert "validation" not in _data_lines(fit_figure(r, x[:20], y[:20]).axes[0])


def test_dense_data_fade_and_drop_error_bars():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 10_000)
    y = 3 * x + rng.normal(0, 3, x.size)
    r = gf.fit("a*x + b", x=x, y=y)
    top, bottom = fit_figure(r, x, y, sigma=3.0).axes
    data = _data_lines(top)["data"]
    assert data.get_alpha() <= 0.3 and data.get_markersize() <= 2
    assert not [c for c in top.containers if isinstance(c, ErrorbarContainer)]
    assert all(line.get_alpha() <= 0.3 for line in bottom.lines if line.get_linestyle() == "None")
    few = fit_figure(r, x[:100], y[:100]).axes[0]
    assert _data_lines(few)["data"].get_alpha() > 0.5


def test_loss_plot_says_solved_directly_for_a_linear_solve(saved, tmp_path):
    r = gf.fit("a*x + b", x=[0.0, 1.0, 2.0, 3.0], y=[1.0, 3.1, 4.9, 7.2])
    assert r.method == "linear"
    r.plot_loss(tmp_path / "loss.png")
    ax = saved["loss.png"].axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 1 and texts[0].startswith(DIRECT_SOLVE_TEXT)
    assert DIRECT_SOLVE_TEXT == "solved directly (linear least squares): no iterations to plot"
    assert not ax.lines and not ax.axison
    lm = gf.fit("a*exp(-k*x)", x=np.linspace(0, 3, 20), y=2 * np.exp(-1.5 * np.linspace(0, 3, 20)))
    ax = loss_figure(lm).axes[0]
    assert lm.method == "lm" and ax.get_xlabel() == "iteration" and len(ax.lines[0].get_xdata()) == lm.epochs_run
    adam = gf.fit("a*x + b", x=np.arange(10.0), y=np.arange(10.0), optimizer="adam", epochs=30, val_fraction=0.2)
    ax = loss_figure(adam).axes[0]
    assert ax.get_xlabel() == "epoch" and {line.get_label() for line in ax.lines} == {"train", "validation"}
    np.testing.assert_allclose(ax.lines[0].get_ydata(), adam.history["train_loss"])


def _gaussian(x, a, mu, sigma, c):
    return a * np.exp(-(x - mu) ** 2 / (2 * sigma**2)) + c


def test_fit_many_histograms_and_example_grid(saved, tmp_path):
    rng = np.random.default_rng(0)
    x = np.arange(32.0)
    a, mu = rng.uniform(300, 700, (40, 1)), rng.uniform(12, 20, (40, 1))
    y = _gaussian(x, a, mu, 3.0, 50.0) + rng.normal(0, 5, (40, 32))
    b = gf.fit_many("gaussian", x=x, y=y, init={"a": 500.0, "mu": 16.0, "sigma": 3.0, "c": 50.0})
    b.plot(tmp_path / "batch.png", x, y)
    fig = saved["batch.png"]
    hist_fig, examples_fig = fig.subfigs
    assert len(hist_fig.axes) == len(b.param_names) == 4
    n_ok = int(b.converged.sum())
    for ax, name in zip(hist_fig.axes, b.param_names):
        assert ax.get_xlabel() == name
        assert sum(p.get_height() for p in ax.patches) == n_ok  # one count per converged fit
    assert len(examples_fig.axes) == 9
    # each example's curve is its own fit's parameters through the model (independent numpy form)
    for ax in examples_fig.axes:
        i = int(ax.get_title().split()[1].rstrip(":"))
        curve = [line for line in ax.lines if line.get_label() == "fit"][0]
        p = [b.params[n][i] for n in ("a", "mu", "sigma", "c")]
        np.testing.assert_allclose(curve.get_ydata(), _gaussian(curve.get_xdata(), *p), rtol=1e-10)
        np.testing.assert_allclose(ax.lines[0].get_ydata(), y[i])
    # fewer fits than the grid: as many panels as fits; no data: histograms only
    small = batch_figure(gf.fit_many("gaussian", x=x, y=y[:4], init={"a": 500.0, "mu": 16.0, "sigma": 3.0,
                                                                       "c": 50.0}), x, y[:4])
    assert len(small.subfigs[1].axes) == 4
    assert all(ax.get_xscale() == "linear" for ax in small.subfigs[1].axes)
    # dose-response batches on log-spaced doses: log x in every example
    dose = np.logspace(-2, 2, 8)
    yd = 100 * dose / (np.array([[0.5], [1.0], [2.0]]) + dose) + np.linspace(-0.5, 0.5, 8)
    fig = batch_figure(gf.fit_many("hill", x=dose, y=yd, init="guess"), dose, yd)
    assert [ax.get_xscale() for ax in fig.subfigs[1].axes] == ["log"] * 3
    assert len(batch_figure(b).axes) == 4


def _study(values_of, n_complete=30, pruned=(), complete_lr=(-4, -1)):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "epochs": IntDistribution(20, 200),
             "l2": FloatDistribution(1e-6, 1e-1, log=True)}
    rng = np.random.default_rng(0)
    study = optuna.create_study()
    for k in range(n_complete + len(pruned)):
        params = {"lr": float(10 ** rng.uniform(*complete_lr)), "epochs": int(rng.integers(20, 201)),
                  "l2": float(10 ** rng.uniform(-6, -1))}
        if k >= n_complete:
            params["lr"] = pruned[k - n_complete]
            study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.PRUNED,
                                         intermediate_values={5: values_of(params)}))
        else:
            study.add_trial(create_trial(params=params, distributions=dists, value=values_of(params)))
    return study


def test_importance_finds_the_parameter_that_dominates():
    pytest.importorskip("sklearn")
    from gradfit.results.importance import param_importances

    # lr changes the loss 100x over its range; epochs and l2 barely move it
    def loss(p):
        return 10 ** (2 * (math.log10(p["lr"]) + 4) / 3) * (1 + 0.01 * p["epochs"] / 200) * (1 + 0.01 * math.log10(
            p["l2"]) / 6)

    imp, how = param_importances(_study(loss))
    assert max(imp, key=imp.get) == "lr" and imp["lr"] > 0.5
    assert math.isclose(sum(imp.values()), 1.0) and how.startswith("fANOVA on the log objective")
    # deterministic (seeded evaluator)
    assert param_importances(_study(loss)) == (imp, how)
    fig = importance_figure(imp, how)
    bars = fig.axes[0].patches
    assert {t.get_text(): b.get_width() for t, b in zip(fig.axes[0].get_yticklabels(), bars)} == pytest.approx(imp)
    assert fig.axes[0].get_xlabel() == f"importance ({how})"


def test_importance_counts_pruned_trials(saved, tmp_path):
    """The reported bug: the median pruner stops the trials with bad settings, so the complete
    ones all have good lr and lr looked unimportant. Pruned trials count at their last value."""
    pytest.importorskip("sklearn")
    from gradfit.results.importance import param_importances

    def loss(p):  # good lr (>= 0.01) reaches ~13 whatever else; bad lr sits near 1300
        return (13.0 if p["lr"] >= 0.01 else 1300.0) * (1 + 0.2 * p["epochs"] / 200)

    lrs = list(np.geomspace(1e-4, 5e-3, 12))
    study = _study(loss, n_complete=10, pruned=lrs, complete_lr=(-2, -1))
    imp, how = param_importances(study)
    assert max(imp, key=imp.get) == "lr" and imp["lr"] > 0.5 and how.endswith("22 trials")
    # the study's importance.png (gradfit tune --out) draws these values
    written = plot_module.plot_tuning(study, tmp_path)
    assert [p.name for p in written] == ["history.png", "importance.png"]
    ax = saved["importance.png"].axes[0]
    drawn = {t.get_text(): b.get_width() for t, b in zip(ax.get_yticklabels(), ax.patches)}
    assert drawn == pytest.approx(imp) and ax.get_yticklabels()[-1].get_text() == "lr"


def test_importance_without_scikit_learn_uses_ped_anova(monkeypatch):
    import sys

    from gradfit.results.importance import param_importances

    monkeypatch.setitem(sys.modules, "sklearn", None)
    imp, how = param_importances(_study(lambda p: 10 ** (2 * (math.log10(p["lr"]) + 4) / 3)))
    assert how.startswith("PED-ANOVA") and max(imp, key=imp.get) == "lr"


def test_cli_fit_plots_use_columns_sigma_and_say_solved_directly(saved, tmp_path):
    x = np.linspace(1, 10, 30)
    s = 0.2 + 0.02 * x
    y = 1.5 * x + 0.5 + np.where(np.arange(30) % 2, 1, -1) * s * 0.5
    path = tmp_path / "d.csv"
    path.write_text("Time (s),Height (m),err\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(x, y, s)))
    code, out, err = cli("fit", path, "linear", "--x", "Time (s)", "--y", "Height (m)", "--sigma", "err",
                         "--out", tmp_path / "run")
    assert code == 0, err
    top, bottom = saved["fit.png"].axes
    assert (top.get_xlabel(), top.get_ylabel(), bottom.get_ylabel()) == ("Time (s)", "Height (m)", "residual / sigma")
    bars = [c for c in top.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and len(bars[0].lines[2][0].get_segments()) == 30
    assert saved["loss.png"].axes[0].texts[0].get_text().startswith(DIRECT_SOLVE_TEXT)


def test_cli_fit_many_plot(saved, tmp_path):
    rng = np.random.default_rng(2)
    x = np.arange(20.0)
    k = rng.uniform(0.1, 0.3, (12, 1))
    y = 5 * np.exp(-k * x) + 1 + rng.normal(0, 0.02, (12, 20))
    np.savez(tmp_path / "b.npz", x=x, y=y)
    code, out, err = cli("fit-many", tmp_path / "b.npz", "exp_decay", "--init", "guess", "--plot", tmp_path / "b.png")
    assert code == 0, err
    assert out.splitlines()[-1] == f"wrote {tmp_path / 'b.png'}"
    hist_fig, examples_fig = saved["b.png"].subfigs
    assert [ax.get_xlabel() for ax in hist_fig.axes] == ["a", "k", "c"] and len(examples_fig.axes) == 9


def test_a_fit_that_is_not_a_solution_says_so_in_its_title(saved, tmp_path):
    x = np.linspace(-1, 5, 20)
    y = 2 * np.log(np.abs(x) + 0.1) + 1
    r = gf.fit("a*log(x) + b", x=x, y=y, init={"a": 1, "b": 1})  # log of negative x: no fit
    assert r.status != "converged"
    r.plot_fit(tmp_path / "fit.png", x, y)
    title = saved["fit.png"].axes[0].get_title()
    assert title.startswith("a*log(x) + b") and f"[{r.status}: not a solution]" in title
    good = gf.fit("a*x + b", x=x, y=2 * x + 1)
    good.plot_fit(tmp_path / "good.png", x, 2 * x + 1)
    assert saved["good.png"].axes[0].get_title() == "a*x + b"


@pytest.mark.parametrize("center, spread", [(0.8, 1e-6), (0.8, 1e-4), (1234.5, 0.01), (50.0, 1e-7), (3e-5, 1e-9)])
def test_a_parameter_that_barely_varies_gets_few_short_ticks_that_do_not_overlap(center, spread):
    # without an axis offset the ticks would read 50.0000001, 50.0000002, ... and overlap
    rng = np.random.default_rng(1)
    x = np.arange(32.0)
    y = _gaussian(x, rng.uniform(300, 700, (30, 1)), 16.0, 3.0, 50.0)
    b = gf.fit_many("gaussian", x=x, y=y, init={"a": 500.0, "mu": 16.0, "sigma": 3.0, "c": 50.0})
    b.params["c"] = center + spread * rng.standard_normal(len(b))
    fig = batch_figure(b)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        low, high = sorted(ax.get_xlim())
        labels = [t for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if t.get_text() and low <= v <= high]
        assert 2 <= len(labels) <= 6
        assert all(len(t.get_text()) <= 8 for t in labels), [t.get_text() for t in labels]
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda bb: bb.x0)
        assert all(left.x1 <= right.x0 for left, right in zip(boxes, boxes[1:]))  # no overlap
