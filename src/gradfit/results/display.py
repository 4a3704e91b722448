"""Notebook display of results: one-line reprs, compact HTML blocks and Markdown.

Pure functions of a result (plus the data where a plot needs it); the result classes call
them from ``__repr__``, ``_repr_html_`` and ``_repr_markdown_``. Every text that comes from
the user (model text, parameter names, notes, settings) is escaped with :func:`html.escape`:
a model may contain ``<`` and ``&``.

Plots: a :class:`FitResult` holds no data, so its HTML block draws the fit only through
:class:`FitView` (``r.with_data(x, y)``); without data a first-order fit shows its loss
curve, and a direct or Levenberg-Marquardt solve shows no figure.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["value_pm", "fit_repr", "batch_repr", "tune_repr", "fit_html", "fit_markdown", "batch_html",
           "batch_markdown", "tune_html", "FitView", "render_png", "png_img", "figure_html", "status_badge",
           "batch_badge", "parameter_table", "statistics_rows", "batch_sections", "notes_html", "html_table",
           "key_values_table", "fmt_number", "param_text", "STATUS_COLOURS", "BLOCK_CSS"]

#: parameters a one-line repr names before it says how many more there are
REPR_PARAMS = 6
#: characters of model text in a repr
REPR_MODEL = 60
#: status -> colour of its badge (anything else: amber)
STATUS_COLOURS = {"converged": "#1a7f37", "singular": "#b42318", "diverged": "#b42318", "not_finite": "#b42318",
                  "too_few_points": "#b42318", "stalled": "#b42318"}
_AMBER = "#b25e09"
#: the CSS of the blocks, scoped to .gradfit-result (one <style> per block, no inline repeats)
BLOCK_CSS = (".gradfit-result{font-family:system-ui,sans-serif;font-size:13px}"
             ".gradfit-result table{border-collapse:collapse;margin:4px 0;font-size:13px}"
             ".gradfit-result th{padding:2px 8px;border-bottom:2px solid #999;text-align:right}"
             ".gradfit-result td{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
             ".gradfit-result td.gf-name{text-align:left;font-family:monospace}"
             ".gradfit-result .gf-status{color:white;padding:1px 7px;border-radius:9px;font-size:12px}"
             ".gradfit-result .gf-notes{margin:4px 0;color:#7a4b00}"
             ".gradfit-result .gf-row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}"
             ".gradfit-result .gf-title{font-weight:600;margin-top:6px}")
_DIRECT = ("linear", "lm")


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _short(text, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finite(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))


def fmt_number(v, spec: str = ".6g") -> str:
    return format(float(v), spec) if _finite(v) else ("-" if v is None else str(v))


def value_pm(value, err=None, sep: str = "±") -> str:
    """``value`` and its standard error, the error to 2 significant digits and the value to
    the same decimal place: ``value_pm(3.00995, 0.0213) == '3.010±0.021'``. Very large or
    small numbers use exponents; without a finite positive error, the value alone (6 digits).
    """
    if not _finite(value):
        return fmt_number(value)
    value = float(value)
    if not _finite(err) or float(err) <= 0:
        return f"{value:.6g}"
    err = float(err)
    decimals = max(1 - math.floor(math.log10(err)), 0)
    if decimals > 8 or abs(value) >= 1e7 or err >= 1e7:
        return f"{value:.4g}{sep}{err:.2g}"
    return f"{value:.{decimals}f}{sep}{err:.{decimals}f}"


# -- one-line reprs ------------------------------------------------------------------------------
def _main_statistic(result) -> str:
    """chi2 (least squares), deviance (Poisson) or the loss (and validation loss)."""
    st = result.stats or {}
    if "deviance" in st:
        return f"deviance={fmt_number(st['deviance'], '.4g')}"
    if "chisqr" in st:
        return f"chi2={fmt_number(st['chisqr'], '.4g')}"
    text = f"loss={fmt_number(result.loss, '.4g')}"
    return text + (f", val_loss={fmt_number(result.val_loss, '.4g')}" if result.val_loss is not None else "")


def _weights(model) -> int:
    module = getattr(model, "module", None)
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def fit_repr(result) -> str:
    """``FitResult('a*exp(-k*x) + c', converged, chi2=0.0575, a=3.010±0.021, ...)``: one line,
    at most ~300 characters (the first REPR_PARAMS parameters, then how many more; networks
    say how many weights)."""
    parts = [repr(_short(result.model.describe(), REPR_MODEL)), str(result.status), _main_statistic(result)]
    if result.params:
        fixed = set(result.settings.get("fixed") or ())
        stderr = result.stderr or {}
        shown = list(result.params.items())[:REPR_PARAMS]
        for name, v in shown:
            text = f"{_short(name, 20)}={value_pm(v, None if name in fixed else stderr.get(name))}"
            parts.append(text + (" (fixed)" if name in fixed else ""))
        if len(result.params) > len(shown):
            parts.append(f"... ({len(result.params) - len(shown)} more)")
    else:
        parts.append(f"{_weights(result.model)} weights")
    return f"FitResult({', '.join(parts)})"


def batch_repr(result) -> str:
    """``BatchResult('a*exp(-k*x) + c', 3 fits: 3 converged, median a=3.01, ...)``: one line;
    medians over the converged fits, shared values of a global fit, how many fits chose each
    candidate (``models=``)."""
    counts = ", ".join(f"{n} {name}" for name, n in result.status_counts().items())
    parts = [repr(_short(result.model_text, REPR_MODEL)), f"{len(result)} fits: {counts or 'none'}"]
    if result.models:
        parts.append("chosen " + ", ".join(f"{int((result.model_index == j).sum())} {_short(m, 30)}"
                                           for j, m in enumerate(result.models[:4])))
    if result.shared:
        parts.append("shared " + ", ".join(f"{_short(n, 20)}={value_pm(v, result.shared_stderr.get(n))}"
                                           for n, v in list(result.shared.items())[:REPR_PARAMS]))
    medians = []
    for name in [n for n in result.param_names if n not in result.shared]:
        v = _converged_values(result, name)
        if v.size:
            medians.append(f"{_short(name, 20)}={np.median(v):.4g}")
    if medians:
        more = len(medians) - REPR_PARAMS
        parts.append("median " + ", ".join(medians[:REPR_PARAMS]) + (f", ... ({more} more)" if more > 0 else ""))
    return f"BatchResult({', '.join(parts)})"


def tune_repr(result) -> str:
    """``TuneResult(best=0.0123 at lr=0.0071, optimizer='adam'; 20 trials: 18 complete, 2 pruned)``."""
    states: dict = {}
    for row in result.trials:
        state = str(row.get("state", "?")).lower()
        states[state] = states.get(state, 0) + 1
    best = ", ".join(f"{_short(k, 20)}={_short(param_text(v), 24)}" for k, v in list(result.best_params.items())[:4])
    more = len(result.best_params) - 4
    best += f", ... ({more} more)" if more > 0 else ""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items(), key=lambda t: -t[1]))
    fit = getattr(result, "best_fit", None)
    tail = f"; best fit {fit.status}" if fit is not None and hasattr(fit, "status") else ""
    return (f"TuneResult(best={fmt_number(result.best_value, '.4g')} at {best or 'defaults'}; "
            f"{len(result.trials)} trials: {counts or 'none'}{tail})")


def param_text(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else repr(v)


def _converged_values(result, name: str) -> np.ndarray:
    v = np.asarray(result.params[name], dtype=float)
    return v[result.converged & np.isfinite(v)]  # NaN: not in the chosen model (models=)


# -- HTML pieces (shared with the report) ---------------------------------------------------------
def status_badge(status, text: str | None = None) -> str:
    """A badge coloured by ``status`` (green converged, red failures, amber the rest)."""
    colour = STATUS_COLOURS.get(str(status), _AMBER)
    return f'<span class="gf-status" style="background:{colour}">{_e(status if text is None else text)}</span>'


def batch_badge(result) -> str:
    """A badge saying k/n converged: green when every fit converged, red when none did, else amber."""
    n, ok = len(result), int(result.converged.sum())
    status = "converged" if ok == n and n else ("diverged" if ok == 0 else "partial")  # partial: amber
    return status_badge(status, f"{ok}/{n} converged")


def html_table(header: list, rows: list, first_left: bool = True, cls: str = "") -> str:
    """An HTML table; cells are escaped here (pass plain text)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    def cell(i, c):
        return f'<td class="gf-name">{_e(c)}</td>' if first_left and i == 0 else f"<td>{_e(c)}</td>"

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def parameter_table(result) -> str:
    """name | value | ± stderr | relative error % | note (fixed, tie, bounds)."""
    s = result.settings
    fixed, tie, bounds = set(s.get("fixed") or ()), s.get("tie") or {}, s.get("bounds") or {}
    stderr = result.stderr or {}
    rows = []
    for name, v in result.params.items():
        err = stderr.get(name)
        note = "fixed" if name in fixed else (f"= {tie[name]}" if name in tie else "")
        if name in bounds and isinstance(bounds[name], (list, tuple)) and len(bounds[name]) == 2:
            lo, hi = (side if b is None else fmt_number(b, "g") for b, side in zip(bounds[name], ("-inf", "inf")))
            note = (note + " " if note else "") + f"bounds [{lo}, {hi}]"
        if name in fixed or err is None:
            rows.append([name, f"{v:.8g}", "", "", note])
            continue
        rel = f"{abs(err / v) * 100:.2f}%" if _finite(err) and v != 0 else "-"
        rows.append([name, f"{v:.8g}", f"± {err:.4g}" if _finite(err) else "undetermined", rel, note])
    return html_table(["parameter", "value", "std. error", "rel. error", ""], rows, cls="gf-params")


def statistics_rows(result) -> list:
    """(label, text) pairs: points, dof, chi-square, reduced chi-square, R², AIC, BIC (Poisson:
    deviance and log-likelihood too); losses for fits without statistics."""
    st = result.stats or {}
    rows = []
    if st:
        rows.append(("points", st.get("n")))
        rows.append(("degrees of freedom", st.get("dof")))
        if "deviance" in st:
            rows += [("deviance", st["deviance"]), ("log-likelihood", st.get("loglike")),
                     ("Pearson chi-square", st.get("chisqr"))]
        else:
            rows.append(("chi-square", st.get("chisqr")))
        rows += [("reduced chi-square", st.get("redchi")), ("R²", st.get("r2")), ("AIC", st.get("aic")),
                 ("BIC", st.get("bic"))]
    rows.append(("loss", result.loss))
    if result.val_loss is not None:
        rows.append(("validation loss", result.val_loss))
    rows.append(("method", f"{result.method} after {result.epochs_run} "
                           f"{'iterations' if result.method in _DIRECT else 'epochs'}"))
    return [(k, v if isinstance(v, str) else fmt_number(v)) for k, v in rows if v is not None]


def key_values_table(rows: list, cls: str = "gf-stats") -> str:
    body = "".join(f'<tr><td class="gf-name">{_e(k)}</td><td>{_e(v)}</td></tr>' for k, v in rows)
    return f'<table class="{cls}"><tbody>{body}</tbody></table>'


def notes_html(result) -> str:
    """The status message (when it is not a plain convergence) and the notes, as a list."""
    items = []
    if result.message and str(result.status) != "converged":
        items.append(result.message)
    items += list(result.notes)
    if not items:
        return ""
    return '<ul class="gf-notes">' + "".join(
        f"<li>{_e(_short(t, 400))}</li>" for t in items) + "</ul>"


def render_png(draw) -> tuple[bytes | None, str]:
    """(PNG bytes, "") from ``draw(path)`` (a :mod:`gradfit.results.plot` function writing a
    PNG), or (None, why) when it cannot be drawn. The pyplot backend in use (a notebook's
    inline backend) is restored afterwards: the plot module switches to Agg."""
    from ..errors import GradfitError

    import matplotlib

    before = matplotlib.get_backend()
    try:
        with tempfile.TemporaryDirectory(prefix="gradfit-figure-") as folder:
            path = Path(folder) / "figure.png"
            draw(path)
            return path.read_bytes(), ""
    except (GradfitError, ValueError) as exc:
        return None, f"figure not drawn: {exc}"
    finally:
        if matplotlib.get_backend() != before:
            import matplotlib.pyplot as plt

            try:
                plt.switch_backend(before)
            except (ImportError, ValueError, RuntimeError):  # a backend that cannot come back
                pass


def png_img(png: bytes, alt: str, width: int | None = None) -> str:
    """An <img> holding the PNG inline (base64 data URI)."""
    size = f' width="{width}"' if width else ""
    return (f'<img class="gf-figure" alt="{_e(alt)}"{size} style="max-width:100%" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


def figure_html(result, x=None, y=None, sigma=None, *, width: int | None = 480) -> str:
    """The fit plot (with data), else the loss curve of a trained fit, else ""."""
    from . import plot

    if x is not None and y is not None:
        png, why = render_png(lambda path: plot.plot_fit(result, path, x, y, sigma=sigma))
        alt = "data and fit"
    elif len(result.history.get("train_loss") or ()) > 1 and result.method not in _DIRECT:
        png, why = render_png(lambda path: plot.plot_loss(result, path))
        alt = "loss curve"
    else:
        return ""
    return png_img(png, alt, width) if png else f'<p class="gf-notes">{_e(why)}</p>'


# -- the notebook blocks ---------------------------------------------------------------------------
def _header(kind: str, model_text: str, badge: str) -> str:
    return f'<div style="margin-bottom:4px"><b>{_e(kind)}</b> <code>{_e(_short(model_text, 200))}</code> {badge}</div>'


def fit_html(result, x=None, y=None, sigma=None, *, figure: bool = True) -> str:
    """The compact HTML block of a fit: header and status, parameter table, statistics,
    notes and (``figure``) the fit plot when the data are given, else the loss curve."""
    params = parameter_table(result) if result.params else (
        f'<p>{_weights(result.model)} network weights</p>')
    picture = figure_html(result, x, y, sigma) if figure else ""
    hint = "" if picture or not result.params or x is not None else (
        '<p style="color:#666">r.with_data(x, y) shows the fit plot</p>')
    left = f"{params}{notes_html(result)}{key_values_table(statistics_rows(result))}{hint}"
    return _block(_header("FitResult", result.model.describe(), status_badge(result.status))
                  + f'<div class="gf-row"><div>{left}</div><div>{picture}</div></div>')


def _block(inner: str) -> str:
    return f'<div class="gradfit-result"><style>{BLOCK_CSS}</style>{inner}</div>'


def fit_markdown(result) -> str:
    """Markdown: model, status, the parameter table and the main statistic."""
    lines = [f"**FitResult** `{_short(result.model.describe(), 200).replace('`', '')}`: {result.status}, "
             f"{_main_statistic(result)}", ""]
    if result.params:
        stderr = result.stderr or {}
        lines += ["| parameter | value | std. error |", "|---|---:|---:|"]
        for name, v in result.params.items():
            err = stderr.get(name)
            lines.append(f"| {_md(name)} | {v:.8g} | {fmt_number(err, '.4g') if err is not None else ''} |")
    else:
        lines.append(f"{_weights(result.model)} network weights")
    return "\n".join(lines)


def _md(text) -> str:
    return html.escape(str(text)).replace("|", "\\|")


def batch_parameter_rows(result) -> list:
    """name, median, 2.5%, 97.5%, median stderr, fits: over the converged fits."""
    rows = []
    for name in result.param_names:
        if name in result.shared:
            continue
        has = result.converged & np.isfinite(np.asarray(result.params[name], dtype=float))
        v, se = np.asarray(result.params[name], dtype=float)[has], np.asarray(result.stderr[name], dtype=float)[has]
        if not v.size:
            rows.append([name, "-", "-", "-", "-", "0"])
            continue
        se = se[np.isfinite(se)]
        rows.append([name, f"{np.median(v):.6g}", f"{np.percentile(v, 2.5):.4g}", f"{np.percentile(v, 97.5):.4g}",
                     f"{np.median(se):.4g}" if se.size else "-", str(v.size)])
    return rows


def batch_sections(result) -> list:
    """(title, HTML) sections of a batch: status counts, speed, model choice, shared
    parameters, per-parameter medians and ranges, median statistics."""
    counts = "".join(f"{status_badge(name)} {n} &nbsp;" for name, n in result.status_counts().items())
    t = result.timings or {}
    speed = (f"{t['fits_per_s']:,.0f} fits/s on {t.get('device', '?')} ({t.get('path', '?')} path"
             f"{', compiled' if t.get('compiled') else ''}; warm-up {t.get('warmup_s', 0.0):.2f} s, fitting "
             f"{t.get('fit_s', 0.0):.3f} s)") if _finite(t.get("fits_per_s")) else ""
    out = [("fits", f'<p class="gf-counts">{len(result)} fits: {counts}</p>'
                    + (f'<p class="gf-speed">{_e(speed)}</p>' if speed else ""))]
    if result.models:
        rows = [[m, str(int((result.model_index == j).sum()))] for j, m in enumerate(result.models)]
        rows.append(["none converged", str(int((result.model_index < 0).sum()))])
        out.append((f"model chosen by {result.criterion.upper()}",
                    html_table(["model", "fits"], rows, cls="gf-models")))
    if result.shared:
        rows = [[n, value_pm(v, result.shared_stderr.get(n), " ± ")] for n, v in result.shared.items()]
        js = result.joint_stats
        keys = ("n", "dof", "chisqr", "redchi", "deviance", "aic", "bic")
        joint = ", ".join(f"{k} {fmt_number(js[k])}" for k in keys if k in js)
        out.append(("shared parameters (one value for every fit)",
                    html_table(["parameter", "value"], rows, cls="gf-shared") + f"<p>joint fit: {_e(joint)}</p>"))
    out.append(("parameters (converged fits)",
                html_table(["parameter", "median", "2.5%", "97.5%", "median std. error", "fits"],
                       batch_parameter_rows(result), cls="gf-params")))
    ok = result.converged
    if ok.any():
        keys = [k for k in ("n", "dof", "chisqr", "redchi", "deviance", "aic", "bic") if k in result.stats]
        rows = [[k, fmt_number(np.nanmedian(np.asarray(result.stats[k], dtype=float)[ok]))] for k in keys]
        out.append(("statistics (median over converged fits)",
                    html_table(["statistic", "median"], rows, cls="gf-stats")))
    return out


def batch_html(result) -> str:
    """The compact HTML block of a fit_many result."""
    body = "".join(f'<div><div class="gf-title">{_e(title)}</div>{part}</div>'
                   for title, part in batch_sections(result))
    return _block(_header("BatchResult", result.model_text, batch_badge(result)) + body)


def batch_markdown(result) -> str:
    lines = [f"**BatchResult** `{_short(result.model_text, 200).replace('`', '')}`: {len(result)} fits, "
             + ", ".join(f"{n} {k}" for k, n in result.status_counts().items()), "",
             "| parameter | median | 2.5% | 97.5% | median std. error | fits |", "|---|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join([_md(r[0]), *r[1:]]) + " |" for r in batch_parameter_rows(result)]
    return "\n".join(lines)


def tune_html(result, *, max_trials: int = 10) -> str:
    """Best value and parameters, the best trials, and the best fit's block."""
    best = key_values_table([(k, param_text(v)) for k, v in result.best_params.items()], cls="gf-best")
    done = [r for r in result.trials if _finite(r.get("value")) and str(r.get("state")) == "COMPLETE"]
    done.sort(key=lambda r: r["value"])
    names = sorted({k for r in result.trials for k in r if k.startswith("param_")})
    rows = [[str(r.get("number")), fmt_number(r["value"]), *(param_text(r.get(k, "")) for k in names)]
            for r in done[:max_trials]]
    trials = html_table(["trial", "value", *(n[len("param_"):] for n in names)], rows, cls="gf-trials")
    fit = result.best_fit
    fit_block = fit_html(fit, figure=False) if fit is not None and hasattr(fit, "model") else ""
    return _block(f'<b>TuneResult</b> best value {_e(fmt_number(result.best_value))} over '
                  f'{len(result.trials)} trials{best}'
                  f'<div class="gf-title">best {min(len(done), max_trials)} trials</div>{trials}{fit_block}')


class FitView:
    """A fit shown with its data: ``r.with_data(x, y)`` in a notebook draws the fit plot in
    the HTML block; :meth:`to_html` writes the report with the data plots."""

    def __init__(self, result, x, y, sigma=None):
        self.result, self.x, self.y, self.sigma = result, x, y, sigma

    def __repr__(self) -> str:
        return repr(self.result)

    def _repr_html_(self) -> str:
        return fit_html(self.result, self.x, self.y, self.sigma)

    def _repr_markdown_(self) -> str:
        return fit_markdown(self.result)

    def to_html(self, path) -> None:
        """The report of :meth:`FitResult.to_html`, with this view's data."""
        self.result.to_html(path, x=self.x, y=self.y, sigma=self.sigma)
