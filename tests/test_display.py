"""Notebook display (gradfit.results.display): one-line reprs, HTML and Markdown blocks.

References are independent: scipy's curve_fit for the parameters and errors, numpy for the
medians and percentiles of a batch, the Poisson deviance written out from its definition.
"""

import base64
import dataclasses
import io
import re
import warnings
from html.parser import HTMLParser

import numpy as np
import pytest

import gradfit as gf
from gradfit.results.display import FitView, value_pm

RNG = np.random.default_rng(7)
X = np.linspace(0, 5, 40)
Y = 3 * np.exp(-0.8 * X) + 0.33 + RNG.normal(0, 0.05, X.size)
MODEL = "a*exp(-k*x) + c"


def _exp(x, a, k, c):
    return a * np.exp(-k * x) + c


@pytest.fixture(scope="module")
def fitted():
    return gf.fit(MODEL, x=X, y=Y, dtype="float64")


@pytest.fixture(scope="module")
def reference():
    optimize = pytest.importorskip("scipy.optimize")
    popt, pcov = optimize.curve_fit(_exp, X, Y, p0=[1, 1, 0], xtol=1e-14, ftol=1e-14, gtol=1e-14)
    return dict(zip("akc", popt)), dict(zip("akc", np.sqrt(np.diag(pcov)))), float(np.sum((Y - _exp(X, *popt)) ** 2))


class _Cells(HTMLParser):
    """Text of every <td>/<th> cell, per table class, and every tag seen."""

    def __init__(self):
        super().__init__()
        self.tables, self.tags, self._table, self._cell = {}, [], None, None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("class") or "", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._table is not None:
            self._table[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _parse(text):
    parser = _Cells()
    parser.feed(text)
    return parser


def _pm(text, name):
    """(value, error) of ``name=V±E`` in a repr."""
    m = re.search(rf"\b{name}=([-0-9.e+]+)±([0-9.e+-]+)", text)
    return float(m.group(1)), float(m.group(2))


def test_value_pm_rounds_the_error_to_two_digits_and_the_value_to_match():
    assert value_pm(3.00995, 0.0213) == "3.010±0.021"
    assert value_pm(0.82737, 0.01646) == "0.827±0.016"
    assert value_pm(12345.6, 123.4) == "12346±123"
    assert value_pm(2.5e-9, 1.3e-11) == "2.5e-09±1.3e-11"
    assert value_pm(1.5, float("nan")) == "1.5" and value_pm(1.5, None) == "1.5" and value_pm(1.5, 0.0) == "1.5"
    assert value_pm(float("nan"), 0.1) == "nan"


def test_fit_repr_is_one_line_with_values_errors_and_chi2_from_scipy(fitted, reference):
    params, errors, chi2 = reference
    text = repr(fitted)
    assert text.startswith(f"FitResult('{MODEL}', converged, chi2=") and "\n" not in text and len(text) < 200
    assert float(re.search(r"chi2=([0-9.e+-]+)", text).group(1)) == pytest.approx(chi2, rel=1e-3)
    for name in "akc":
        value, err = _pm(text, name)
        # shown to the error's second significant digit: within half a unit of that digit
        unit = 10.0 ** (np.floor(np.log10(errors[name])) - 1)
        assert abs(value - params[name]) <= 0.5 * unit + 1e-9 * abs(params[name])
        assert abs(err - errors[name]) <= 0.5 * unit + 1e-12


def test_fit_repr_of_poisson_fit_shows_the_deviance():
    x = np.linspace(0, 4, 30)
    y = np.random.default_rng(3).poisson(20 * np.exp(-0.5 * x)).astype(float)
    r = gf.fit("a*exp(-k*x)", x=x, y=y, loss="poisson", dtype="float64")
    mu = r.params["a"] * np.exp(-r.params["k"] * x)
    with np.errstate(divide="ignore", invalid="ignore"):
        deviance = 2 * np.sum(np.where(y > 0, y * np.log(y / mu), 0.0) - (y - mu))
    assert float(re.search(r"deviance=([0-9.e+-]+)", repr(r)).group(1)) == pytest.approx(deviance, rel=1e-3)
    cells = dict(tuple(row) for row in _parse(r._repr_html_()).tables["gf-stats"])
    assert float(cells["deviance"]) == pytest.approx(deviance, rel=1e-5)
    assert {"log-likelihood", "Pearson chi-square", "AIC", "BIC", "degrees of freedom"} <= set(cells)


def test_network_repr_counts_weights_and_many_parameters_are_abbreviated():
    r = gf.fit("mlp", x=X, y=Y, hidden=(8,), epochs=20, progress=False)
    text = repr(r)
    assert re.search(r", (\d+) weights\)$", text).group(1) == str(1 * 8 + 8 + 8 * 1 + 1)
    assert "max_epochs" in text and "loss=" in text
    formula = " + ".join(f"c{i}*x**{i}" for i in range(10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        many = gf.fit(formula, x=X, y=Y, dtype="float64")
    text = repr(many)
    assert "(4 more)" in text and text.count("=") == 1 + 6 and len(text) < 300


def test_fixed_parameters_say_so_in_repr_and_table():
    r = gf.fit(MODEL, x=X, y=Y, fixed={"c": 0.33}, dtype="float64")
    assert "c=0.33 (fixed)" in repr(r)
    rows = {row[0]: row for row in _parse(r._repr_html_()).tables["gf-params"][1:]}
    assert rows["c"][1:] == ["0.33", "", "", "fixed"]


def test_html_block_has_the_parameter_table_statistics_and_status(fitted, reference):
    params, errors, chi2 = reference
    page = _parse(fitted._repr_html_())
    table = page.tables["gf-params"]
    assert table[0] == ["parameter", "value", "std. error", "rel. error", ""]
    for row in table[1:]:
        name = row[0]
        assert float(row[1]) == pytest.approx(params[name], rel=1e-5)
        assert float(row[2].lstrip("± ")) == pytest.approx(errors[name], rel=1e-3)
        assert float(row[3].rstrip("%")) == pytest.approx(100 * errors[name] / abs(params[name]), abs=0.006)
    stats = dict(tuple(row) for row in page.tables["gf-stats"])
    assert float(stats["chi-square"]) == pytest.approx(chi2, rel=1e-5)
    r2 = 1 - chi2 / np.sum((Y - Y.mean()) ** 2)
    assert float(stats["R²"]) == pytest.approx(r2, rel=1e-6) and stats["degrees of freedom"] == "37"
    badge = [a for t, a in page.tags if t == "span" and a.get("class") == "gf-status"]
    assert badge and "#1a7f37" in badge[0]["style"]
    # a Levenberg-Marquardt fit without data has no figure; with_data adds the fit plot
    assert not [t for t, _ in page.tags if t == "img"]
    assert "r.with_data(x, y)" in fitted._repr_html_()


def _images(text):
    return [a for t, a in _parse(text).tags if t == "img"]


def test_with_data_draws_the_fit_and_training_draws_the_loss_curve(fitted):
    import matplotlib.image

    view = fitted.with_data(X, Y)
    assert isinstance(view, FitView) and repr(view) == repr(fitted)
    (img,) = _images(view._repr_html_())
    assert img["alt"] == "data and fit" and img["src"].startswith("data:image/png;base64,")
    png = base64.b64decode(img["src"].split(",", 1)[1])
    pixels = matplotlib.image.imread(io.BytesIO(png))
    assert pixels.shape[0] > 200 and pixels[..., :3].std() > 0.05
    trained = gf.fit(MODEL, x=X, y=Y, optimizer="adam", lr=0.05, epochs=30, progress=False)
    (img,) = _images(trained._repr_html_())
    assert img["alt"] == "loss curve"


def test_display_keeps_the_notebook_backend():
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("svg")
    try:
        gf.fit(MODEL, x=X, y=Y).with_data(X, Y)._repr_html_()
        assert matplotlib.get_backend().lower() == "svg"
    finally:
        plt.switch_backend(before)


class _Renamed:
    """A fitted model whose description holds HTML metacharacters."""

    def __init__(self, model, text):
        self._model, self._text = model, text

    def describe(self):
        return self._text

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_every_user_text_is_escaped(fitted):
    evil = dataclasses.replace(fitted, model=_Renamed(fitted.model, "y < a & b > <script>alert(1)</script>"),
                               notes=("<img src=x onerror=alert(2)> & more",), status="stalled",
                               message="<b>bold</b>")
    for text in (evil._repr_html_(), evil.with_data(X, Y)._repr_html_()):
        tags = {t for t, _ in _parse(text).tags}
        assert "script" not in tags and "b" in tags  # <b> is ours (the header), the message's is text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "y &lt; a &amp; b &gt;" in text
        assert "&lt;img src=x onerror=alert(2)&gt; &amp; more" in text and "&lt;b&gt;bold&lt;/b&gt;" in text
        assert [a.get("alt") for t, a in _parse(text).tags if t == "img"] in ([], ["data and fit"])
    assert "\\|" in __import__("gradfit.results.display", fromlist=["_md"])._md("a|b")


def test_markdown_block_lists_every_parameter(fitted, reference):
    params, errors, _ = reference
    text = fitted._repr_markdown_()
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "parameter" not in line]
    assert [r[0].strip() for r in rows] == ["a", "k", "c"]
    for name, value, err in ((r[0].strip(), float(r[1]), float(r[2])) for r in rows):
        assert value == pytest.approx(params[name], rel=1e-5) and err == pytest.approx(errors[name], rel=1e-3)


# -- BatchResult ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(11)
    k = rng.uniform(0.5, 1.0, 24)
    y = 3 * np.exp(-k[:, None] * X) + 0.3 + rng.normal(0, 0.02, (24, X.size))
    return gf.fit_many(MODEL, x=X, y=y, init={"a": 1.0, "k": 1.0, "c": 0.0}, dtype="float64")


def test_batch_repr_is_one_line_with_counts_and_medians(batch):
    ok = batch.converged
    expected = ", ".join(f"{n}={np.median(batch.params[n][ok]):.4g}" for n in "akc")
    assert repr(batch) == f"BatchResult('{MODEL}', 24 fits: {int(ok.sum())} converged, median {expected})"


def test_batch_html_has_counts_speed_and_parameter_ranges(batch):
    ok = batch.converged
    page = _parse(batch._repr_html_())
    rows = {row[0]: row for row in page.tables["gf-params"][1:]}
    for name in "akc":
        v = batch.params[name][ok]
        assert float(rows[name][1]) == pytest.approx(np.median(v), rel=1e-5)
        assert float(rows[name][2]) == pytest.approx(np.percentile(v, 2.5), rel=1e-3)
        assert float(rows[name][3]) == pytest.approx(np.percentile(v, 97.5), rel=1e-3)
        assert float(rows[name][4]) == pytest.approx(np.median(batch.stderr[name][ok]), rel=1e-3)
        assert rows[name][5] == str(int(ok.sum()))
    text = batch._repr_html_()
    assert f"{len(batch)} fits:" in text and "fits/s on cpu" in text
    stats = dict(tuple(r) for r in page.tables["gf-stats"][1:])
    assert float(stats["chisqr"]) == pytest.approx(np.median(batch.stats["chisqr"][ok]), rel=1e-5)
    md = batch._repr_markdown_()
    assert md.count("\n| ") == 4 and f"{len(batch)} fits" in md


def test_batch_display_of_a_global_fit_and_a_model_choice():
    rng = np.random.default_rng(5)
    amps = rng.uniform(1, 3, 6)
    y = amps[:, None] * np.exp(-0.7 * X) + rng.normal(0, 0.01, (6, X.size))
    shared = gf.fit_many("a*exp(-k*x)", x=X, y=y, init={"a": 1.0, "k": 1.0}, shared=["k"], dtype="float64")
    text = repr(shared)
    assert "shared k=" in text and _pm(text, "k")[0] == pytest.approx(shared.shared["k"], abs=1e-3)
    rows = _parse(shared._repr_html_()).tables["gf-shared"]
    assert rows[1][0] == "k" and rows[1][1].startswith(f"{shared.shared['k']:.3f}"[:4])
    chosen = gf.fit_many(models=["a*exp(-k*x)", "a + k*x"], x=X, y=y, init={"a": 1.0, "k": 1.0}, dtype="float64")
    counts = {row[0]: int(row[1]) for row in _parse(chosen._repr_html_()).tables["gf-models"][1:]}
    assert counts == {m: int((chosen.model_index == j).sum()) for j, m in enumerate(chosen.models)} | {
        "none converged": int((chosen.model_index < 0).sum())}
    assert f"chosen {counts['a*exp(-k*x)']} a*exp(-k*x)" in repr(chosen)


def test_tune_result_display_without_a_study():
    from gradfit.tuning import TuneResult

    trials = [{"number": i, "state": s, "value": v, "param_lr": lr}
              for i, (s, v, lr) in enumerate([("COMPLETE", 0.5, 0.1), ("COMPLETE", 0.25, 0.01), ("PRUNED", 0.9, 1.0)])]
    r = TuneResult({"lr": 0.01}, 0.25, None, trials=trials)
    assert repr(r) == "TuneResult(best=0.25 at lr=0.01; 3 trials: 2 complete, 1 pruned)"
    rows = _parse(r._repr_html_()).tables["gf-trials"]
    assert rows == [["trial", "value", "lr"], ["1", "0.25", "0.01"], ["0", "0.5", "0.1"]]
