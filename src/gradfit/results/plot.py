"""Matplotlib figures (Agg backend, no display): fit with residuals, and loss curves."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["plot_fit", "plot_loss", "plot_histories", "plot_lr_finder", "plot_tuning"]


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


def plot_fit(result, path, x, y, band_level: float | None = 0.95) -> None:
    """Data and fitted curve (single input) or predicted vs observed (several inputs),
    with residuals underneath. A single-input fit with a parameter covariance (least squares
    or a likelihood, named parameters) shows its ``band_level`` confidence band (shaded;
    :meth:`FitResult.band`); ``band_level=None`` leaves it out. Networks have no band."""
    from ..errors import DataError

    plt = _pyplot()
    if x is None or y is None:
        raise DataError("plot_fit needs the data: plot_fit(path, x, y)")
    y = np.asarray(y, dtype=float)
    pred = result.predict(x)
    resid = y - pred.reshape(y.shape)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=False,
                                      gridspec_kw={"height_ratios": [3, 1.2]})
    names = result.model.input_names
    single = (not isinstance(x, dict) or len(x) == 1) and np.ndim(next(iter(x.values())) if isinstance(x, dict) else x) == 1
    if single and y.ndim == 1:
        xv = np.asarray(next(iter(x.values())) if isinstance(x, dict) else x, dtype=float)
        grid = np.linspace(xv.min(), xv.max(), 400)
        curve = result.predict({names[0]: grid} if len(names) == 1 else grid)
        band = _confidence_band(result, {names[0]: grid} if len(names) == 1 else grid, band_level) if band_level \
            else None
        if band is not None:
            top.fill_between(grid, band[0], band[1], color="C1", alpha=0.25, lw=0,
                             label=f"{band_level:.0%} confidence band")
        top.plot(xv, y, "o", ms=4, label="data")
        top.plot(grid, curve, "-", lw=2, label="fit")
        top.set_xlabel(names[0])
        bottom.axhline(0, color="grey", lw=1)
        bottom.plot(xv, resid, "o", ms=3)
        bottom.set_xlabel(names[0])
    else:
        top.plot(y.ravel(), pred.ravel(), "o", ms=3, label="points")
        lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
        top.plot([lo, hi], [lo, hi], "-", color="grey", label="ideal")
        top.set_xlabel("observed")
        top.set_ylabel("predicted")
        bottom.axhline(0, color="grey", lw=1)
        bottom.plot(pred.ravel(), resid.ravel(), "o", ms=3)
        bottom.set_xlabel("predicted")
    top.set_title(result.model.describe(), fontsize=10)
    top.legend()
    bottom.set_ylabel("residual")
    fig.tight_layout()
    _save(fig, path)


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
    """Training and validation loss per epoch (log scale when all losses are positive)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    train = np.asarray(result.history.get("train_loss", []), dtype=float)
    val = np.asarray(result.history.get("val_loss", []) or [], dtype=float)
    epochs = np.arange(1, len(train) + 1)
    ax.plot(epochs, train, label="train")
    if len(val):
        ax.plot(np.arange(1, len(val) + 1), val, label="validation")
    both = np.concatenate([train, val]) if len(val) else train
    if len(both) and np.all(both[np.isfinite(both)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss ({result.settings.get('loss', 'loss')})")
    ax.legend()
    ax.set_title(f"{result.model.describe()}: {result.status}", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


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
    """Optimization history and parameter importances of an Optuna study, as PNGs."""
    from pathlib import Path

    from ..errors import require

    optuna = require("optuna", extra="tune", feature="plot_tuning")

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
    if len(trials) >= 2 and trials[0].params:
        import warnings

        try:
            with warnings.catch_warnings():  # optuna's notes on few trials are not the user's concern
                warnings.simplefilter("ignore", UserWarning)
                importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError, ZeroDivisionError):
            importances = {}
        if importances:
            fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.5 * len(importances)))
            names = list(importances)[::-1]
            ax.barh(names, [importances[n] for n in names])
            ax.set_xlabel("importance (fANOVA)")
            fig.tight_layout()
            _save(fig, folder / "importance.png")
            written.append(folder / "importance.png")
    return written
