"""Self-contained HTML reports: one file with inline CSS and base64 PNG figures, and no
network references (no scripts, fonts, stylesheets or links to fetch), so it opens offline
and can be mailed or archived as it is.

A fit's report holds data and fit with residuals (when the data are passed), the loss curve,
the parameter table, statistics, correlations (a table coloured as a heatmap), warnings and
notes, the settings and the versions of gradfit, torch, numpy and Python. A batch report
holds the status counts, speed, parameter medians and ranges, histograms, example fits (with
the data), shared parameters and model choice. A tuning report holds the best trial, the
trial table and the study's plots.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import platform

import numpy as np

from .display import (BLOCK_CSS, batch_badge, batch_sections, figure_html, fmt_number, html_table, key_values_table,
                      notes_html, param_text, parameter_table, png_img, render_png, statistics_rows, status_badge)
from .plot import _pyplot, _save  # one Agg setup, one atomic PNG writer

__all__ = ["fit_report", "batch_report", "tune_report", "write_report", "versions"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;
color:#1f2328}
main{max-width:1060px;margin:0 auto;padding:16px 24px;background:white}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:22px}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
pre{background:#f6f8fa;padding:8px;overflow:auto;max-height:420px}
.gf-grid{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
footer{color:#666;font-size:12px;margin-top:24px}
"""

_MAX_SETTINGS = 20_000


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def versions() -> dict:
    """gradfit, torch, numpy, matplotlib and Python versions, and the platform."""
    import matplotlib
    import torch

    from .._version import __version__

    return {"gradfit": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "matplotlib": matplotlib.__version__, "python": platform.python_version(), "platform": platform.platform()}


def _page(title: str, sections: list, subtitle: str = "") -> str:
    """The whole document: a <section> per (id, heading, HTML body); no scripts, no links."""
    body = "".join(f'<section id="{_e(key)}"><h2>{_e(heading)}</h2>{content}</section>'
                   for key, heading, content in sections if content)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}{BLOCK_CSS}</style></head><body><main class=\"gradfit-result\">"
            f"<h1>{_e(title)}</h1>{subtitle}{body}"
            f"<footer>written by gradfit {_e(versions()['gradfit'])} on {stamp}</footer></main></body></html>\n")


def _settings_block(settings) -> str:
    text = json.dumps(settings, indent=1, sort_keys=True, default=str, allow_nan=True)
    if len(text) > _MAX_SETTINGS:
        text = text[:_MAX_SETTINGS] + "\n... (cut)"
    return f"<pre class=\"gf-settings\">{_e(text)}</pre>"


def _versions_block() -> str:
    return key_values_table(list(versions().items()), cls="gf-versions")


def correlation_table(names, corr) -> str:
    """The correlation matrix as a table whose cells are coloured by value (blue negative, red
    positive), or "" with fewer than two free parameters."""
    if corr is None or len(names) < 2:
        return ""
    corr = np.asarray(corr, dtype=float)
    head = "".join(f'<th style="padding:2px 8px;font-family:monospace">{_e(n)}</th>' for n in names)
    rows = []
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            c = corr[i, j]
            if math.isfinite(c):
                a = min(abs(c), 1.0)
                colour = f"rgba(200,40,40,{a:.2f})" if c > 0 else f"rgba(40,80,200,{a:.2f})"
                ink = "white" if a > 0.6 else "#1f2328"
                cells.append(f'<td style="background:{colour};color:{ink}">{c:+.3f}</td>')
            else:
                cells.append("<td>-</td>")
        rows.append(f'<tr><th style="padding:2px 8px;font-family:monospace;text-align:left">{_e(name)}</th>'
                    f'{"".join(cells)}</tr>')
    return (f'<table class="gf-correlations" style="border-collapse:collapse;font-size:13px"><thead><tr><th></th>{head}'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _residual_summary(result, x, y) -> str:
    """Mean, standard deviation and largest |residual| of the data passed, or ""."""
    from ..errors import GradfitError

    try:
        resid = np.asarray(y, dtype=float).ravel() - np.asarray(result.predict(x), dtype=float).ravel()
    except (GradfitError, ValueError, TypeError):
        return ""
    resid = resid[np.isfinite(resid)]
    if not resid.size:
        return ""
    return key_values_table([("points", str(resid.size)), ("mean residual", fmt_number(resid.mean())),
                             ("std. of residuals", fmt_number(resid.std())),
                             ("largest |residual|", fmt_number(np.abs(resid).max()))], cls="gf-residuals")


def _check_lengths(result, x, y) -> None:
    """DataError when the data passed for the report do not line up (the fit's prediction at x
    and y differ in length): a report of other data than the fit's is worse than none."""
    from ..errors import DataError

    n_y = len(np.atleast_1d(np.asarray(y, dtype=float)))
    n_x = len(np.asarray(next(iter(x.values())) if isinstance(x, dict) else x))
    if n_x != n_y:
        raise DataError(f"the report's x has {n_x} rows and y has {n_y}: pass the data the fit was made with")


def fit_report(result, x=None, y=None, sigma=None, *, title: str | None = None) -> str:
    """The HTML document of one fit (see the module docstring); ``x``, ``y`` (and ``sigma``)
    are the data, as :meth:`FitResult.plot_fit` takes them, for the data and residual plots."""
    from . import plot

    model = result.model.describe()
    subtitle = f"<p><code>{_e(model)}</code> {status_badge(result.status)}</p>"
    if x is not None and y is not None:
        _check_lengths(result, x, y)
        data = figure_html(result, x, y, sigma, width=None) + _residual_summary(result, x, y)
    else:
        data = "<p>No data were passed: <code>r.to_html(path, x=x, y=y)</code> adds the data, fit and residuals.</p>"
    history = result.history.get("train_loss") or ()
    if len(history) > 1:
        png, why = render_png(lambda path: plot.plot_loss(result, path))
        loss = png_img(png, "loss curve") if png else f"<p>{_e(why)}</p>"
    else:
        loss = f"<p>Solved directly ({_e(result.method or 'no iterations')}): no loss curve.</p>"
    params = parameter_table(result) if result.params else f"<p>{_e(_weights_text(result))}</p>"
    stats = key_values_table(statistics_rows(result))
    warnings = notes_html(result) or "<p>None.</p>"
    sections = [("parameters", "Parameters and statistics",
                 f'<div class="gf-grid"><div>{params}</div><div>{stats}</div></div>'),
                ("data", "Data, fit and residuals", data), ("loss", "Loss curve", loss),
                ("correlations", "Correlations", correlation_table(list(result.free), result.correlation)),
                ("warnings", "Status, warnings and notes",
                 f"<p>{status_badge(result.status)} {_e(result.message)}</p>{warnings}"),
                ("settings", "Settings", _settings_block(result.settings)), ("versions", "Versions", _versions_block())]
    return _page(title or "gradfit fit report", sections, subtitle)


def _weights_text(result) -> str:
    module = getattr(result.model, "module", None)
    count = sum(p.numel() for p in module.parameters()) if module is not None else 0
    return f"{count} network weights (in the saved model's safetensors file)"


def batch_report(result, x=None, y=None, *, title: str | None = None, examples: int = 6) -> str:
    """The HTML document of a fit_many result; with the data (``x`` (M,) or (B, M), ``y``
    (B, M)), a grid of ``examples`` fits with their curves."""
    subtitle = f"<p><code>{_e(result.model_text)}</code> {batch_badge(result)}</p>"
    sections = [(f"batch-{i}", heading, part) for i, (heading, part) in enumerate(batch_sections(result))]
    png, why = render_png(lambda path: _histograms(result, path))
    sections.append(("histograms", "Parameter distributions (converged fits)",
                     png_img(png, "parameter histograms") if png else f"<p>{_e(why)}</p>"))
    if x is not None and y is not None:
        png, why = render_png(lambda path: _examples(result, path, x, y, examples))
        sections.append(("examples", "Example fits", png_img(png, "example fits") if png else f"<p>{_e(why)}</p>"))
    sections.append(("correlations", "Correlations (median over converged fits)", _batch_correlations(result)))
    settings = {"loss": result.loss, "timings": result.timings, "criterion": result.criterion or None,
                "multistart": {"starts": result.multistart.get("starts")} if result.multistart else None}
    sections += [("settings", "Settings", _settings_block({k: v for k, v in settings.items() if v is not None})),
                 ("versions", "Versions", _versions_block())]
    return _page(title or "gradfit fit_many report", sections, subtitle)


def _batch_correlations(result) -> str:
    cov = result.covariance
    if cov is None or not result.converged.any():
        return ""
    cov = np.asarray(cov, dtype=float)[result.converged]
    sd = np.sqrt(np.einsum("bii->bi", cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / (sd[:, :, None] * sd[:, None, :])
    keep = [i for i, n in enumerate(result.param_names) if np.isfinite(corr[:, i, i]).any()]
    if len(keep) < 2:
        return ""
    with np.errstate(invalid="ignore"):
        med = np.nanmedian(corr[:, keep][:, :, keep], axis=0)
    return correlation_table([result.param_names[i] for i in keep], med)




def _histograms(result, path) -> None:
    """One histogram per fitted parameter over the converged fits."""
    names = [n for n in result.param_names if n not in result.shared]
    plt = _pyplot()
    cols = min(len(names), 3) or 1
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        v = np.asarray(result.params[name], dtype=float)[result.converged]
        v = v[np.isfinite(v)]
        if v.size:
            ax.hist(v, bins=min(40, max(5, int(np.sqrt(v.size)))), color="C0")
        ax.set_xlabel(name)
        ax.set_ylabel("fits")
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, path)


def _examples(result, path, x, y, count: int) -> None:
    """A grid of example fits: data and fitted curve of up to ``count`` fits spread over the batch."""
    import torch

    plt = _pyplot()
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    if y.ndim != 2 or y.shape[0] != len(result):
        raise ValueError(f"y has shape {y.shape}; example fits need ({len(result)}, points)")
    picks = np.unique(np.linspace(0, len(result) - 1, min(count, len(result))).round().astype(int))
    cols = min(len(picks), 3)
    rows = math.ceil(len(picks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    model = result.model if getattr(result.model, "input_names", None) and not result.models else None
    for ax, i in zip(axes.ravel(), picks):
        xi = x[i] if x.ndim == 2 else x
        ax.plot(xi, y[i], "o", ms=3, label="data")
        if model is not None and len(model.input_names) == 1 and np.isfinite(
                [result.params[n][i] for n in result.param_names]).all():
            grid = np.linspace(np.nanmin(xi), np.nanmax(xi), 200)
            params = {n: torch.tensor(float(result.params[n][i]), dtype=torch.float64) for n in result.param_names}
            with torch.no_grad():
                curve = model.forward({model.input_names[0]: torch.as_tensor(grid, dtype=torch.float64)}, params)
            ax.plot(grid, np.broadcast_to(np.asarray(curve, dtype=float), grid.shape), "-", label="fit")
        label = result.ids[i] if result.ids is not None else i
        ax.set_title(f"fit {label}: {result.status_text[i]}", fontsize=9)
    for ax in axes.ravel()[len(picks):]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, path)


def tune_report(best_params: dict, best_value, trials: list, *, study=None, best_fit=None, x=None, y=None,
                settings: dict | None = None, title: str | None = None) -> str:
    """The HTML document of a search: the best value and parameters, the trial table, the
    study's history and importance plots (when ``study`` is given) and the best fit's
    parameters (when ``best_fit`` is)."""
    best = key_values_table([("best value", fmt_number(best_value)),
                             *((k, param_text(v)) for k, v in best_params.items())], cls="gf-best")
    names = sorted({k for r in trials for k in r if k.startswith("param_")})
    rows = [[str(r.get("number")), str(r.get("state", "")), fmt_number(r.get("value")),
             *(param_text(r.get(k, "")) for k in names), str(r.get("epochs") or ""), str(r.get("error") or "")]
            for r in trials]
    table = html_table(["trial", "state", "value", *(n[len("param_"):] for n in names), "epochs run", "error"], rows,
                   cls="gf-trials")
    sections = [("best", "Best trial", best), ("trials", f"Trials ({len(trials)})", table)]
    if study is not None:
        sections.append(("plots", "Search history and importances", _study_plots(study)))
    if best_fit is not None and hasattr(best_fit, "model"):
        figure = figure_html(best_fit, x, y, width=None) if x is not None and y is not None else ""
        params = parameter_table(best_fit) if best_fit.params else f"<p>{_e(_weights_text(best_fit))}</p>"
        sections.append(("best-fit", "Best configuration, fitted again",
                         f"<p>{status_badge(best_fit.status)}</p>{figure}<div class=\"gf-grid\"><div>{params}</div>"
                         f"<div>{key_values_table(statistics_rows(best_fit))}</div></div>{notes_html(best_fit)}"))
    if settings:
        sections.append(("settings", "Settings", _settings_block(settings)))
    sections.append(("versions", "Versions", _versions_block()))
    return _page(title or "gradfit tuning report", sections)


def _study_plots(study) -> str:
    import tempfile
    from pathlib import Path

    from ..errors import GradfitError
    from .plot import plot_tuning

    try:
        with tempfile.TemporaryDirectory(prefix="gradfit-tune-plots-") as folder:
            return "".join(png_img(Path(p).read_bytes(), Path(p).stem) for p in plot_tuning(study, folder))
    except (GradfitError, ValueError) as exc:
        return f"<p>plots not drawn: {_e(exc)}</p>"


def write_report(path, text: str) -> None:
    """Write a report atomically (a reader never sees half a page)."""
    from .._files import atomic_write_text

    atomic_write_text(path, text)


class BatchDisplay:
    """The notebook display and report of :class:`~gradfit.results.batch_result.BatchResult`
    (a mixin, so that its module stays small): a one-line repr, HTML and Markdown blocks, and
    :meth:`to_html`."""

    def __repr__(self) -> str:
        from .display import batch_repr

        return batch_repr(self)

    def _repr_html_(self) -> str:
        from .display import batch_html

        return batch_html(self)

    def _repr_markdown_(self) -> str:
        from .display import batch_markdown

        return batch_markdown(self)

    def to_html(self, path, x=None, y=None, *, title: str | None = None) -> None:
        """Write a self-contained HTML report atomically: status counts, speed, parameter medians,
        ranges and histograms, shared parameters, model choice, median correlations, settings
        and versions; with the data (``x`` (M,) or (B, M), ``y`` (B, M)) a grid of example fits."""
        write_report(path, batch_report(self, x, y, title=title))
