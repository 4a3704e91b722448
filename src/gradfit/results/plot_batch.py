"""Figures of a fit_many batch: parameter histograms over the converged fits, and a grid of
example fits (data and curve) drawn at random (seeded)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["batch_figure", "plot_batch", "example_indices"]


def plot_batch(batch, path, x=None, y=None, *, examples: int = 9, seed: int = 0, bins: int = 30) -> None:
    """PNG of :func:`batch_figure`."""
    from .plot import _save

    _save(batch_figure(batch, x, y, examples=examples, seed=seed, bins=bins), path)


def example_indices(batch, examples: int, seed: int) -> np.ndarray:
    """Up to ``examples`` fits drawn without replacement (seeded), converged fits first, sorted."""
    rng = np.random.default_rng(seed)
    converged = np.nonzero(batch.converged)[0]
    others = np.nonzero(~batch.converged)[0]
    pick = rng.permutation(converged)[:examples]
    if len(pick) < examples:
        pick = np.concatenate([pick, rng.permutation(others)[: examples - len(pick)]])
    return np.sort(pick)


def batch_figure(batch, x=None, y=None, *, examples: int = 9, seed: int = 0, bins: int = 30):
    """A matplotlib Figure: one histogram per parameter over the converged fits (the median
    marked), and, when the data are passed (``x`` (M,) or (B, M), ``y`` (B, M)), a grid of
    ``examples`` fits drawn at random (``seed``), each with its data and fitted curve.

    Fits that did not converge are left out of the histograms (their count is in the title);
    the example grid prefers converged fits and titles each with its id and status.
    """
    from ..errors import DataError
    from .plot import _pyplot

    plt = _pyplot()
    names = list(batch.param_names)
    if y is not None:
        y = np.asarray(y, dtype=float)
        if y.ndim != 2 or y.shape[0] != len(batch):
            raise DataError(f"y must be ({len(batch)}, M): one row per fit, got shape {y.shape}")
        if x is None:
            raise DataError("the example fits need x as well as y")
    show = example_indices(batch, examples, seed) if y is not None else np.arange(0)
    n_cols = min(3, len(names)) or 1
    hist_rows = math.ceil(len(names) / n_cols) if names else 0
    ex_cols = min(3, len(show)) or 1
    ex_rows = math.ceil(len(show) / ex_cols)
    fig = plt.figure(figsize=(3.0 * max(n_cols, ex_cols), 2.4 * (hist_rows + ex_rows) + 0.6), layout="constrained")
    parts = fig.subfigures(2, 1, height_ratios=[max(hist_rows, 0.01), max(ex_rows, 0.01)]) if len(show) else [fig]
    _histograms(parts[0], batch, names, n_cols, bins)
    if len(show):
        _examples(parts[1], batch, x, y, show, ex_cols)
    return fig


def _histograms(fig, batch, names, n_cols, bins) -> None:
    ok = np.asarray(batch.converged, dtype=bool)
    fig.suptitle(f"{batch.model_text}: {int(ok.sum())} of {len(batch)} fits converged", fontsize=10)
    if not names:
        return
    axes = np.atleast_1d(fig.subplots(math.ceil(len(names) / n_cols), n_cols)).ravel()
    for ax, name in zip(axes, names):
        values = np.asarray(batch.params[name], dtype=float)[ok]
        values = values[np.isfinite(values)]
        if values.size:
            ax.hist(values, bins=bins, color="C0", alpha=0.8)
            ax.axvline(float(np.median(values)), color="C3", lw=1, label=f"median {np.median(values):.4g}")
            ax.legend(fontsize=7)
        ax.set_xlabel(name)
        ax.set_ylabel("fits")
    for ax in axes[len(names):]:
        ax.remove()


def _examples(fig, batch, x, y, show, n_cols) -> None:
    from ..errors import GradfitError
    from .plot import _set_x_scale
    from .plot_data import curve_grid, x_scale

    fig.suptitle(f"{len(show)} example fits (drawn at random)", fontsize=10)
    axes = np.atleast_1d(fig.subplots(math.ceil(len(show) / n_cols), n_cols)).ravel()
    try:
        model = _curve_model(batch, x)
    except GradfitError:
        model = None  # the data are still worth seeing
    for ax, i in zip(axes, show):
        xi = _row(x, i, len(batch))
        ok = np.isfinite(xi) & np.isfinite(y[i])
        ax.plot(xi[ok], y[i][ok], "o", ms=3, color="C0", label="data")
        scale = x_scale(batch.model_text, xi[ok]) if ok.sum() > 1 else ("linear", None)
        _set_x_scale(ax, scale)
        if model is not None and ok.any():
            grid = curve_grid(xi[ok], scale, 200)
            curve = _predict(batch, model, i, grid)
            if curve is not None:
                ax.plot(grid, curve, "-", color="C1", lw=1.6, label="fit")
        label = batch.ids[i] if batch.ids is not None else i
        ax.set_title(f"fit {label}: {batch.status_text[i]}", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(show):]:
        ax.remove()


def _row(x, i: int, b: int) -> np.ndarray:
    if isinstance(x, dict):
        x = next(iter(x.values()))
    a = np.asarray(x, dtype=float)
    return a[i] if a.ndim == 2 and a.shape[0] == b else a.reshape(-1)


def _curve_model(batch, x):
    """The fitted single-input model (rebuilt from the text when the result was loaded)."""
    from .bands import _batch_model

    if batch.model_index is not None and len(batch.models) > 1:
        return None  # several candidate models: each fit's curve would need its own
    given = list(x) if isinstance(x, dict) else [None]
    model = _batch_model(batch, None, given)
    return model if len(model.input_names) == 1 else None


def _predict(batch, model, i: int, grid: np.ndarray) -> np.ndarray | None:
    import torch

    params = {n: float(np.asarray(batch.params[n])[i]) for n in batch.param_names}
    if not all(math.isfinite(v) for v in params.values()):
        return None
    with torch.no_grad():
        out = model.forward({model.input_names[0]: torch.as_tensor(grid, dtype=torch.float64)},
                            {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()})
    out = np.broadcast_to(np.asarray(out, dtype=float), grid.shape)
    return out
