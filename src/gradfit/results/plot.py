"""Matplotlib figures (Agg backend, no display): fit with residuals, loss curves, model
comparisons, learning-rate finder and tuning studies. Each ``*_figure`` function returns the
Figure (notebooks, reports and tests read it); each ``plot_*`` saves one as a PNG. What a fit
plot shows (labels, scale, validation rows, density) is decided in :mod:`.plot_data`; fit_many's
figures are in :mod:`.plot_batch`."""

from __future__ import annotations

import io

import numpy as np

from .plot_data import (DENSE_POINTS, axis_names, curve_grid, data_columns, point_style, sigma_of,
                        validation_mask, x_scale)

__all__ = ["plot_fit", "fit_figure", "loss_figure", "plot_loss", "plot_histories", "plot_lr_finder", "plot_tuning"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    from .._files import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_fit(result, path, x=None, y=None, band_level: float | None = 0.95, *, sigma=None, data=None,
             xlabel: str | None = None, ylabel: str | None = None) -> None:
    """PNG of :func:`fit_figure` (the arguments are the same)."""
    _save(fit_figure(result, x, y, band_level, sigma=sigma, data=data, xlabel=xlabel, ylabel=ylabel), path)


def fit_figure(result, x=None, y=None, band_level: float | None = 0.95, *, sigma=None, data=None,
               xlabel: str | None = None, ylabel: str | None = None):
    """A matplotlib Figure: data and fitted curve (single input) or predicted vs observed
    (several inputs), with residuals underneath.

    - Axes are labelled with the data's names: the input column and the response (a
      "response ~ ..." formula's left side, the column passed as ``y=``, a named pandas Series),
      units included as the column names carry them ("Time (s)"); ``xlabel``/``ylabel`` override.
    - ``sigma`` (one number or one per point) draws error bars and normalizes the residuals
      ("residual / sigma").
    - Validation rows (a fit with ``val_fraction``, plotted with its own data) get their own
      marker and colour; the split is recomputed from the fit's seed.
    - Above :data:`~gradfit.results.plot_data.DENSE_POINTS` points, markers fade so density shows.
    - Dose-response built-ins (hill, logistic) on log-spaced doses, and positive x spanning
      more than 2.5 decades, get a log x axis (symlog when a zero dose is present).
    - A single-input fit with a covariance shows its ``band_level`` confidence band
      (:meth:`FitResult.band`; None leaves it out). Networks have no band.

    ``data`` (a DataFrame or dict of columns) replaces x and y: the inputs and the response
    are taken from it by name.
    """
    from ..errors import DataError

    plt = _pyplot()
    if data is not None:
        x, y_data = data_columns(result, data)
        y = y if y is not None else y_data
    if x is None or y is None:
        raise DataError("plot_fit needs the data: plot_fit(path, x, y) or plot_fit(path, data=table)")
    in_name, out_name = axis_names(result, x, y, xlabel, ylabel)
    y = np.asarray(y, dtype=float)
    x = {k: np.asarray(v, dtype=float) for k, v in x.items()} if isinstance(x, dict) else np.asarray(x, dtype=float)
    sig = sigma_of(sigma, y.shape)
    pred = np.asarray(result.predict(x), dtype=float).reshape(y.shape)
    resid = y - pred
    if sig is not None:
        resid = resid / sig
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=False,
                                      gridspec_kw={"height_ratios": [3, 1.2]})
    names = result.model.input_names
    first = next(iter(x.values())) if isinstance(x, dict) else x
    single = (not isinstance(x, dict) or len(x) == 1) and np.ndim(first) == 1 and y.ndim == 1
    finite = np.isfinite(y).reshape(len(y), -1).all(axis=1) if y.ndim else np.ones(1, bool)
    val = validation_mask(result, len(y), finite) if y.ndim else None
    style = point_style(y.size)
    if single:
        xv = first
        scale = x_scale(result, xv)
        grid = curve_grid(xv, scale)
        at = {names[0]: grid} if len(names) == 1 else grid
        band = _confidence_band(result, at, band_level) if band_level else None
        if band is not None:
            top.fill_between(grid, band[0], band[1], color="C1", alpha=0.25, lw=0,
                             label=f"{band_level:.0%} confidence band")
        _points(top, xv, y, val, style, sig if y.size <= DENSE_POINTS else None)
        top.plot(grid, result.predict(at), "-", color="C1", lw=2, label="fit")
        _points(bottom, xv, resid, val, style, None, legend=False)
        for ax in (top, bottom):
            _set_x_scale(ax, scale)
            ax.set_xlabel(in_name)
        top.set_ylabel(out_name)
    else:
        _points(top, y.ravel(), pred.ravel(), _rows_to_values(val, y), style, None)
        lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
        top.plot([lo, hi], [lo, hi], "-", color="grey", label="ideal")
        top.set_xlabel(f"observed {out_name}")
        top.set_ylabel(f"predicted {out_name}")
        _points(bottom, pred.ravel(), resid.ravel(), _rows_to_values(val, y), style, None, legend=False)
        bottom.set_xlabel(f"predicted {out_name}")
    bottom.axhline(0, color="grey", lw=1)
    bottom.set_ylabel("residual / sigma" if sig is not None else "residual")
    status = str(result.status)
    # a fit that is not a solution says so on the figure itself: it may be pasted anywhere
    top.set_title(result.model.describe() + ("" if status == "converged" else f"  [{status}: not a solution]"),
                  fontsize=10, color="black" if status == "converged" else "firebrick")
    top.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _rows_to_values(val, y):
    """A row mask repeated over a multi-output row's values (so it matches ``y.ravel()``)."""
    if val is None or y.ndim == 1:
        return val
    return np.repeat(val, y.size // len(y))


def _points(ax, xv, yv, val, style, sigma, legend: bool = True) -> None:
    """Data points: train and validation with distinct markers and colours, error bars when
    sigma is given."""
    groups = [("data" if val is None else "train", np.ones(len(xv), bool) if val is None else ~val, "o", "C0")]
    if val is not None:
        groups.append(("validation", val, "s", "C2"))
    for label, mask, marker, color in groups:
        kw = dict(ms=style["ms"], alpha=style["alpha"], color=color, mew=0,
                  label=label if legend else None)
        if sigma is not None:
            ax.errorbar(xv[mask], yv[mask], yerr=sigma[mask], fmt=marker, elinewidth=0.8, capsize=0, **kw)
        else:
            ax.plot(xv[mask], yv[mask], marker, ls="none", **kw)


def _set_x_scale(ax, scale) -> None:
    kind, linthresh = scale
    if kind == "symlog":
        ax.set_xscale("symlog", linthresh=linthresh)
    elif kind == "log":
        ax.set_xscale("log")


def plot_comparison(path, x, y, candidates, criterion: str) -> None:
    """Candidate models over the same data: every converged candidate's curve labelled with its
    criterion difference and Akaike weight (the best drawn boldest, with its confidence band),
    and each one's residuals underneath. ``candidates``: (label, FitResult, delta, weight),
    best first. Single-input data draw curves on a grid; several inputs draw predicted vs
    observed."""
    from ..errors import DataError

    plt = _pyplot()
    if x is None or y is None:
        raise DataError("plotting a comparison needs the data: c.plot(path, x, y)")
    y = np.asarray(y, dtype=float)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.8, 6.0), gridspec_kw={"height_ratios": [3, 1.4]})
    single = (not isinstance(x, dict) or len(x) == 1) and y.ndim == 1
    xv = np.asarray(next(iter(x.values())) if isinstance(x, dict) else x, dtype=float) if single else None
    if single and xv.ndim == 1:
        top.plot(xv, y, "o", ms=4, color="black", alpha=0.6, label="data")
        grid = np.linspace(xv.min(), xv.max(), 400)
    else:
        single = False
        lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
        top.plot([lo, hi], [lo, hi], "-", color="grey", label="ideal")
    bottom.axhline(0, color="grey", lw=1)
    for i, (label, result, delta, weight) in enumerate(candidates):
        text = f"{label}  (delta {criterion.upper()} {delta:.2f}, weight {weight:.2f})"
        names = result.model.input_names
        resid = y - np.asarray(result.predict(x), dtype=float).reshape(y.shape)
        if single:
            at = {names[0]: grid} if len(names) == 1 else grid
            if i == 0:
                band = _confidence_band(result, at, 0.95)
                if band is not None:
                    top.fill_between(grid, band[0], band[1], color="C0", alpha=0.2, lw=0)
            top.plot(grid, result.predict(at), "-", lw=2.4 if i == 0 else 1.2, color=f"C{i}", label=text)
            bottom.plot(xv, resid, "o", ms=3, color=f"C{i}", alpha=0.8 if i == 0 else 0.5)
        else:
            top.plot(y.ravel(), np.asarray(result.predict(x)).ravel(), "o", ms=3, color=f"C{i}", label=text)
            bottom.plot(y.ravel(), resid.ravel(), "o", ms=3, color=f"C{i}", alpha=0.6)
    top.set_title(f"model comparison by {criterion.upper()}", fontsize=10)
    top.legend(fontsize=8)
    if single:
        top.set_xlabel(names[0] if candidates else "x")
        bottom.set_xlabel(names[0] if candidates else "x")
    else:
        top.set_xlabel("observed")
        top.set_ylabel("predicted")
        bottom.set_xlabel("observed")
    bottom.set_ylabel("residual")
    fig.tight_layout()
    _save(fig, path)


def _confidence_band(result, grid, level: float):
    """(lower, upper) on the grid, or None where the fit has no band (no covariance) or it is
    undetermined (not finite anywhere)."""
    if not getattr(result.model, "scalar_params", False) or result.covariance is None:
        return None
    from ..errors import GradfitError

    try:
        lower, upper = result.band(grid, level)
    except GradfitError:
        return None
    return (lower, upper) if np.isfinite(lower).any() else None


def plot_loss(result, path) -> None:
    """PNG of :func:`loss_figure`."""
    _save(loss_figure(result), path)


#: what the loss plot says instead of drawing one point: the solve took no iterations
DIRECT_SOLVE_TEXT = "solved directly (linear least squares): no iterations to plot"


def loss_figure(result):
    """Training and validation loss per epoch (per iteration for Levenberg-Marquardt; log
    scale when all losses are positive). A direct linear solve has no iterations: the figure
    says so (:data:`DIRECT_SOLVE_TEXT`, with the final loss) instead of drawing empty axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    train = np.asarray(result.history.get("train_loss", []), dtype=float)
    val = np.asarray(result.history.get("val_loss", []) or [], dtype=float)
    ax.set_title(f"{result.model.describe()}: {result.status}", fontsize=10)
    if result.method == "linear" or len(train) <= 1:
        text = DIRECT_SOLVE_TEXT if result.method == "linear" else "one evaluation: no iterations to plot"
        loss = f"{result.loss:.6g}" if isinstance(result.loss, (int, float)) else str(result.loss)
        ax.text(0.5, 0.5, f"{text}\nloss ({result.settings.get('loss', 'loss')}) = {loss}", ha="center",
                va="center", transform=ax.transAxes, fontsize=11)
        ax.set_axis_off()
        fig.tight_layout()
        return fig
    ax.plot(np.arange(1, len(train) + 1), train, label="train", color="C0")
    if len(val):
        ax.plot(np.arange(1, len(val) + 1), val, label="validation", color="C2", ls="--")
    if result.best_epoch is not None:
        ax.axvline(result.best_epoch, color="grey", ls=":", lw=1, label=f"best epoch {result.best_epoch}")
    both = np.concatenate([train, val]) if len(val) else train
    if len(both) and np.all(both[np.isfinite(both)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration" if result.method == "lm" else "epoch")
    ax.set_ylabel(f"loss ({result.settings.get('loss', 'loss')})")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_histories(path, curves: dict, title: str = "training loss") -> None:
    """Several loss curves (label -> per-epoch values) on one log-scale plot."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, values in curves.items():
        v = np.asarray(values, dtype=float)
        ax.plot(np.arange(1, len(v) + 1), v, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_lr_finder(result, path) -> None:
    """Loss against learning rate (log x axis), with the suggested rate marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(result.lrs, result.losses)
    ax.axvline(result.suggestion, color="grey", ls="--", label=f"suggested lr {result.suggestion:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_tuning(study, folder) -> list:
    """Optimization history and parameter importances of an Optuna study, as PNGs
    (importances: :func:`gradfit.results.importance.param_importances`, fANOVA over complete and
    pruned trials on the log objective; the plot's label says which evaluator ran)."""
    from pathlib import Path

    from ..errors import require
    from .importance import param_importances

    require("optuna", extra="tune", feature="plot_tuning")

    plt = _pyplot()
    folder = Path(folder)
    written = []
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not trials:
        return written
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    values = [t.value for t in trials]
    ax.plot([t.number for t in trials], values, "o", ms=4, label="trial")
    ax.plot([t.number for t in trials], np.minimum.accumulate(values), "-", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    if all(v > 0 for v in values):
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    _save(fig, folder / "history.png")
    written.append(folder / "history.png")
    importances, how = param_importances(study)
    if importances:
        _save(importance_figure(importances, how), folder / "importance.png")
        written.append(folder / "importance.png")
    return written


def importance_figure(importances: dict, how: str = ""):
    """Horizontal bars of parameter importances, largest on top, each labelled with its value."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 0.8 + 0.5 * len(importances)))
    names = sorted(importances, key=importances.get)
    bars = ax.barh(names, [importances[n] for n in names], color="C0")
    ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)
    ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
    ax.set_xlabel(f"importance ({how})" if how else "importance")
    fig.tight_layout()
    return fig
