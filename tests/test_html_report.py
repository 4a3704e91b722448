"""HTML reports (gradfit.results.html_report): one self-contained file, its content checked
against independent references, the CLI's --report, and the page rendered in a real
headless Chromium (skipped, saying why, when no Chromium can be had).
"""

import base64
import io
import os
import platform
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

import gradfit as gf
from _cli import cli

RNG = np.random.default_rng(21)
X = np.linspace(0, 5, 40)
Y = 3 * np.exp(-0.8 * X) + 0.33 + RNG.normal(0, 0.05, X.size)
MODEL = "a*exp(-k*x) + c"


class _Page(HTMLParser):
    """Tags with their attributes, table cells per table class, section ids, and style text."""

    def __init__(self):
        super().__init__()
        self.tags, self.tables, self.sections, self.styles = [], {}, [], []
        self._table, self._cell, self._in_style = None, None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self.sections.append(attrs.get("id"))
        elif tag == "style":
            self._in_style = True
        elif tag == "table":
            self._table = self.tables.setdefault(attrs.get("class") or "", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False
        elif tag in ("td", "th") and self._table is not None:
            self._table[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)
        if self._cell is not None:
            self._cell += data


def _parse(text):
    page = _Page()
    page.feed(text)
    return page


def _exp(x, a, k, c):
    return a * np.exp(-k * x) + c


@pytest.fixture(scope="module")
def fitted():
    return gf.fit(MODEL, x=X, y=Y, dtype="float64")


@pytest.fixture(scope="module")
def report(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "fit.html"
    fitted.to_html(path, x=X, y=Y)
    return path, path.read_text(encoding="utf-8")


def _assert_self_contained(text):
    """No scripts, stylesheets, frames or links; every image inline PNG; no URL anywhere."""
    import matplotlib.image

    page = _parse(text)
    tags = {t for t, _ in page.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed", "base", "a", "form"}
    assert not [a for _, a in page.tags if "href" in a or "srcset" in a or "action" in a]
    bare = re.sub(r'src="data:image/png;base64,[A-Za-z0-9+/=]+"', "", text)  # base64 holds "//"
    assert not re.search(r"https?:|//[a-z]|url\(|@import|@font-face|data:(?!image/png)", bare, re.IGNORECASE)
    images = [a["src"] for t, a in page.tags if t == "img"]
    for src in images:
        assert src.startswith("data:image/png;base64,")
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels[..., :3].std() > 0.03
    return page, len(images)


def test_fit_report_is_one_self_contained_file_with_every_section(report, fitted):
    import torch

    path, text = report
    assert text.startswith("<!DOCTYPE html>") and text.endswith("</html>\n")
    assert os.listdir(path.parent) == ["fit.html"]  # written atomically: no temporary left behind
    page, images = _assert_self_contained(text)
    assert page.sections == ["parameters", "data", "loss", "correlations", "warnings", "settings", "versions"]
    assert images == 2  # data, fit and residuals; the Levenberg-Marquardt loss curve
    alts = [a["alt"] for t, a in page.tags if t == "img"]
    assert alts == ["data and fit", "loss curve"]
    versions = dict(tuple(r) for r in page.tables["gf-versions"])
    assert versions["gradfit"] == gf.__version__ and versions["torch"] == torch.__version__
    assert versions["numpy"] == np.__version__ and versions["python"] == platform.python_version()


def test_fit_report_numbers_match_scipy(report):
    optimize = pytest.importorskip("scipy.optimize")
    popt, pcov = optimize.curve_fit(_exp, X, Y, p0=[1, 1, 0], xtol=1e-14, ftol=1e-14, gtol=1e-14)
    page = _parse(report[1])
    rows = {r[0]: r for r in page.tables["gf-params"][1:]}
    perr = np.sqrt(np.diag(pcov))
    for i, name in enumerate("akc"):
        assert float(rows[name][1]) == pytest.approx(popt[i], rel=1e-6)
        assert float(rows[name][2].lstrip("± ")) == pytest.approx(perr[i], rel=1e-3)
    corr = pcov / np.outer(perr, perr)
    table = page.tables["gf-correlations"]
    assert table[0] == ["", "a", "k", "c"]
    np.testing.assert_allclose([[float(v) for v in row[1:]] for row in table[1:]], corr, atol=2e-3)
    resid = Y - _exp(X, *popt)
    summary = dict(tuple(r) for r in page.tables["gf-residuals"])
    assert float(summary["std. of residuals"]) == pytest.approx(resid.std(), rel=1e-4)
    assert float(summary["largest |residual|"]) == pytest.approx(np.abs(resid).max(), rel=1e-4)
    stats = dict(tuple(r) for r in page.tables["gf-stats"])
    assert float(stats["chi-square"]) == pytest.approx(np.sum(resid ** 2), rel=1e-5)


def test_report_without_data_and_of_a_direct_solve(tmp_path):
    r = gf.fit("a*x + b", x=X, y=2 * X + 1 + RNG.normal(0, 0.1, X.size))
    r.to_html(tmp_path / "line.html")
    text = (tmp_path / "line.html").read_text()
    page, images = _assert_self_contained(text)
    assert images == 0 and "r.to_html(path, x=x, y=y)" in text and "Solved directly (linear)" in text
    assert [row[0] for row in page.tables["gf-params"][1:]] == ["a", "b"]


def test_report_escapes_user_text_and_lists_warnings(fitted, tmp_path):
    import dataclasses

    odd = dataclasses.replace(fitted, notes=("<script>alert(1)</script> & co",), status="max_iterations",
                              message="stopped <early>", settings={**fitted.settings, "note": "</pre><script>"})
    odd.to_html(tmp_path / "odd.html", title="a < b & c")
    text = (tmp_path / "odd.html").read_text()
    page, _ = _assert_self_contained(text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in text and "stopped &lt;early&gt;" in text
    assert "<title>a &lt; b &amp; c</title>" in text and "&lt;/pre&gt;&lt;script&gt;" in text
    badge = [a for t, a in page.tags if t == "span" and a.get("class") == "gf-status"][0]
    assert "#b25e09" in badge["style"]  # max_iterations: amber


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(4)
    y = 3 * np.exp(-rng.uniform(0.5, 1.0, 12)[:, None] * X) + 0.3 + rng.normal(0, 0.02, (12, X.size))
    return gf.fit_many(MODEL, x=X, y=y, init={"a": 1.0, "k": 1.0, "c": 0.0}, dtype="float64"), y


def test_batch_report_with_and_without_the_data(batch, tmp_path):
    r, y = batch
    r.to_html(tmp_path / "with.html", x=X, y=y)
    r.to_html(tmp_path / "without.html")
    page, images = _assert_self_contained((tmp_path / "with.html").read_text())
    assert images == 2 and "examples" in page.sections and "histograms" in page.sections
    ok = r.converged
    rows = {row[0]: row for row in page.tables["gf-params"][1:]}
    for name in "akc":
        assert float(rows[name][1]) == pytest.approx(np.median(r.params[name][ok]), rel=1e-5)
    corr = np.median([c / np.outer(np.sqrt(np.diag(c)), np.sqrt(np.diag(c))) for c in r.covariance[ok]], axis=0)
    np.testing.assert_allclose([[float(v) for v in row[1:]] for row in page.tables["gf-correlations"][1:]], corr,
                               atol=2e-3)
    page, images = _assert_self_contained((tmp_path / "without.html").read_text())
    assert images == 1 and "examples" not in page.sections


def test_tune_result_report(fitted, tmp_path):
    from gradfit.tuning import TuneResult

    trials = [{"number": 0, "state": "COMPLETE", "value": 0.5, "param_lr": 0.1},
              {"number": 1, "state": "FAIL", "value": float("nan"), "param_lr": 3.0, "error": "<diverged>"}]
    TuneResult({"lr": 0.1}, 0.5, fitted, trials=trials, study_name="s1").to_html(tmp_path / "t.html", x=X, y=Y)
    text = (tmp_path / "t.html").read_text()
    page, images = _assert_self_contained(text)
    assert images == 1 and page.tables["gf-trials"][2][-1] == "<diverged>"  # escaped in the file, text here
    assert [r[0] for r in page.tables["gf-params"][1:]] == ["a", "k", "c"]


# -- the command line ---------------------------------------------------------------------------------
def test_cli_fit_and_fit_many_write_reports(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("t,signal\n" + "".join(f"{a},{b}\n" for a, b in zip(X, Y)))
    code, out, err = cli("fit", data, "signal ~ a*exp(-k*t) + c", "--report", tmp_path / "fit.html")
    assert code == 0, err
    assert out.strip().endswith(f"wrote {tmp_path / 'fit.html'}")
    page, images = _assert_self_contained((tmp_path / "fit.html").read_text())
    assert images == 2 and [r[0] for r in page.tables["gf-params"][1:]] == ["a", "k", "c"]
    rows = np.stack([3 * np.exp(-k * X) + 0.3 for k in (0.5, 0.8, 1.1)])
    np.save(tmp_path / "m.npy", rows)
    code, out, err = cli("fit-many", tmp_path / "m.npy", MODEL, "--init", "a=1,k=1,c=0", "--x-values",
                         ",".join(map(str, X)), "--report", tmp_path / "many.html", "--json")
    assert code == 0, err
    page, images = _assert_self_contained((tmp_path / "many.html").read_text())
    assert images == 2 and '"report":' in out
    ks = [float(r[1]) for r in page.tables["gf-params"][1:] if r[0] == "k"]
    assert ks == [pytest.approx(0.8, rel=1e-4)]  # the median of 0.5, 0.8, 1.1
    code, _, err = cli("fit", data, "signal ~ a*exp(-k*t) + c", "--report", tmp_path)
    assert code == 2 and "--report" in err and "is a folder" in err


def test_cli_fit_many_report_of_a_long_table(tmp_path):
    wells = [("W1", 0.5), ("W2", 2.0), ("W3", 1.0)]
    dose = np.logspace(-2, 2, 9)
    (tmp_path / "assay.csv").write_text("well,dose,signal\n" + "".join(
        f"{w},{d},{100 * d / (e + d)}\n" for w, e in wells for d in dose))
    code, out, err = cli("fit-many", tmp_path / "assay.csv", "top*dose/(ec50 + dose)", "--id-column", "well", "--x",
                         "dose", "--y", "signal", "--init", "top=90,ec50=1", "--dtype", "float64", "--report",
                         tmp_path / "assay.html")
    assert code == 0, err
    text = (tmp_path / "assay.html").read_text()
    page, images = _assert_self_contained(text)
    assert images == 1 and "examples" not in page.sections and "figure not drawn" not in text  # histograms only
    assert dict((r[0], float(r[1])) for r in page.tables["gf-params"][1:])["ec50"] == pytest.approx(1.0, rel=1e-6)
    assert "3/3 converged" in text


def test_cli_tune_writes_a_report(tmp_path):
    pytest.importorskip("optuna")
    data = tmp_path / "d.csv"
    data.write_text("t,signal\n" + "".join(f"{a},{b}\n" for a, b in zip(X, Y)))
    code, out, err = cli("tune", data, "signal ~ a*exp(-k*t) + c", "--space", "lr=log:1e-3:1e-1", "--trials", "2",
                         "--optimizer", "adam", "--epochs", "10", "--out", tmp_path / "t", "--report",
                         tmp_path / "tune.html", "--no-progress")
    assert code == 0, err
    page, images = _assert_self_contained((tmp_path / "tune.html").read_text())
    assert len(page.tables["gf-trials"]) == 1 + 2 and images >= 1
    best = dict(tuple(r) for r in page.tables["gf-best"])
    assert float(best["lr"]) == pytest.approx(float(re.search(r"best value \S+ with lr=(\S+)", out).group(1)),
                                              rel=1e-3)
    shown = _settings((tmp_path / "tune.html").read_text())
    assert shown["fit options"]["optimizer"] == "adam" and shown["fit options"]["epochs"] == 10
    assert shown["space"] == ["lr=log:1e-3:1e-1"] and shown["metric"] == "val_loss"
    assert "val_fraction" not in shown["fit options"]  # the default split is tune's, not a fixed option


def _settings(text: str) -> dict:
    """The JSON of a report's settings block."""
    import html
    import json

    block = re.search(r'<pre class="gf-settings">(.*?)</pre>', text, re.S).group(1)
    return json.loads(html.unescape(block))


def test_tune_report_lists_the_fixed_fit_options(tmp_path):
    pytest.importorskip("optuna")
    x = np.linspace(0, 1, 40)
    r = gf.tune("a*x + b", x=x, y=2 * x + 1, space={"lr": ("log", 1e-3, 1e-1)}, trials=2, optimizer="adam",
                epochs=15, val_fraction=0.25, bounds={"a": (0, None)}, callbacks=[gf.CSVLogger(tmp_path / "l.csv")])
    r.to_html(tmp_path / "t.html")
    shown = _settings((tmp_path / "t.html").read_text())
    assert shown["fit options"] == {"bounds": {"a": [0, None]}, "epochs": 15, "optimizer": "adam",
                                    "val_fraction": 0.25}
    assert shown["space"] == "lr=log:0.001:0.1" and shown["metric"] == "val_loss"


# -- a real browser -----------------------------------------------------------------------------------
def _chromium_path():
    names = [os.environ.get("GRADFIT_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
             "google-chrome-stable"]
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


def _chromium(browser, profile, url, *flags):
    """(exit code, stderr) of one headless Chromium run; console messages go to stderr."""
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           "--disable-background-networking", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", *flags, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def _console_errors(stderr):
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A working headless Chromium, proven able to catch a console error (else a skip)."""
    path = _chromium_path()
    if path is None:
        pytest.skip("no Chromium found: install the Debian package 'chromium' (apt-get install chromium; .ci/run "
                    "does) or set GRADFIT_CHROMIUM to a Chromium/Chrome binary")
    folder = tmp_path_factory.mktemp("chromium")
    bad = folder / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p>x</p><script>notDefinedAnywhere();</script></body></html>')
    code, _, err = _chromium(path, folder / "profile", bad.as_uri(), f"--screenshot={folder / 'bad.png'}",
                             "--window-size=300,200")
    if code != 0 or not (folder / "bad.png").exists():
        pytest.skip(f"Chromium at {path} cannot render here (exit {code}): {err.strip()[-300:]}")
    # the detector works: a page that throws is caught
    assert any("notDefinedAnywhere is not defined" in line for line in _console_errors(err)), err[-2000:]
    return path, folder


def _check_in_browser(browser, page_path, expected_cells):
    import matplotlib.image

    path, folder = browser
    shot = folder / (page_path.stem + ".png")
    code, _, err = _chromium(path, folder / "profile", page_path.as_uri(), f"--screenshot={shot}",
                             "--window-size=1200,2000")
    assert code == 0 and not _console_errors(err), err[-2000:]
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.var() > 0.005  # not one flat colour
    assert (pixels.min(axis=2) < 0.8).mean() > 0.01  # text, tables and lines drawn: a blank page has none
    assert (np.ptp(pixels, axis=2) > 0.3).mean() > 0.002  # coloured pixels: the plots' markers and curves
    code, dom, err = _chromium(path, folder / "profile", page_path.as_uri(), "--dump-dom")
    assert code == 0 and not _console_errors(err), err[-2000:]
    page = _parse(dom)
    for table, cells in expected_cells.items():
        for row in cells:
            assert row in page.tables[table], (table, row)
    return page


def test_fit_report_renders_in_chromium(report, fitted, browser):
    path, _ = report
    rows = [[n, f"{v:.8g}", f"± {fitted.stderr[n]:.4g}"] for n, v in fitted.params.items()]
    page = _check_in_browser(browser, path, {})
    got = {r[0]: r[:3] for r in page.tables["gf-params"][1:]}
    assert [got[r[0]] for r in rows] == rows
    assert len([a for t, a in page.tags if t == "img"]) == 2


def test_batch_report_renders_in_chromium(batch, browser, tmp_path):
    r, y = batch
    r.to_html(tmp_path / "batch.html", x=X, y=y)
    medians = [[n, f"{np.median(r.params[n][r.converged]):.6g}"] for n in "akc"]
    page = _check_in_browser(browser, tmp_path / "batch.html", {})
    assert [row[:2] for row in page.tables["gf-params"][1:]] == medians


def test_a_report_of_data_that_do_not_line_up_is_refused(tmp_path):
    r = gf.fit(MODEL, x=X, y=Y, init={"a": 1, "k": 1, "c": 0})
    with pytest.raises(gf.DataError, match="x has 40 rows and y has 39"):
        r.to_html(tmp_path / "r.html", x=X, y=Y[:-1])
    assert not (tmp_path / "r.html").exists()
