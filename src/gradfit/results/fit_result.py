"""FitResult: what a fit returns. Immutable; it predicts, reports, plots and saves itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FitResult"]


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`gradfit.fit`.

    Attributes
    ----------
    params : dict name -> float, in the user's units (empty for neural networks; their
        weights live in ``model.module``).
    loss : training loss at the final parameters (full-batch training) or, with minibatches,
        the mean batch loss of the last epoch as Keras reports it; ``val_loss`` is the loss on
        the validation split at the final parameters (None without one).
    status : "converged" | "max_epochs" | "max_iterations" | "stalled" | "singular" |
        "diverged" | "stopped" | "stopped_early".
    history : {"train_loss": [...], "val_loss": [...]}, one entry per epoch run.
    """

    params: dict
    loss: float
    val_loss: float | None
    status: str
    epochs_run: int
    history: dict
    model: Any = field(repr=False)
    message: str = ""
    settings: dict = field(default_factory=dict, repr=False)
    n_train: int = 0
    n_val: int = 0
    notes: tuple = ()
    #: standard errors by name (least-squares losses); 0 for fixed parameters
    stderr: dict | None = None
    #: covariance and correlation of the free parameters, in the order of ``free``
    covariance: Any = field(default=None, repr=False)
    correlation: Any = field(default=None, repr=False)
    free: tuple = ()
    #: n, dof, chisqr, redchi, rss, rmse, r2, aic, bic
    stats: dict | None = None
    #: early stopping: the epoch whose parameters were restored
    best_epoch: int | None = None
    #: cross-validation: {"val_loss": [...], "mean", "std", "params": [...], ...}
    cv: dict | None = None
    _problem: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status != "diverged"

    @property
    def method(self) -> str:
        """The optimizer that ran ("linear", "lm", "adam", ...); ``method_reason`` says why."""
        return self.settings.get("method", self.settings.get("optimizer", ""))

    @property
    def method_reason(self) -> str:
        return self.settings.get("method_reason", "")

    def ci(self, level: float = 0.95, method: str = "normal") -> dict:
        """Confidence intervals {name: (low, high)} for the free parameters.

        method="normal": value ± z·stderr. method="profile": profile likelihood, refitting
        the other parameters with each one held at trial values until chi-square rises by
        z²·(reduced chi-square) (z² alone with absolute sigma); needs the fit's data, so it
        is unavailable on a loaded result.
        """
        from ..errors import ConfigError, FitError
        from ..stats import normal_interval

        if not 0.0 < level < 1.0:
            raise ConfigError(f"level must be between 0 and 1, got {level}")
        if self.stderr is None:
            raise FitError("no standard errors: uncertainties need a least-squares loss and a scalar-parameter model")
        if method == "normal":
            return {n: normal_interval(self.params[n], self.stderr[n], level) for n in self.free}
        if method != "profile":
            raise ConfigError(f"method must be 'normal' or 'profile', got {method!r}")
        if self._problem is None:
            raise FitError("profile intervals need the fit's data; call ci() on the result of fit(), not load()")
        from ..lsq.profile import profile_intervals

        problem, absolute = self._problem
        return profile_intervals(problem, self.params, self.stderr, self.stats, level, absolute, self.free)

    # -- prediction ---------------------------------------------------------------------
    def predict(self, x=None, *, data=None):
        """Predictions (numpy) for new inputs: an array, a dict of named inputs, or data=."""
        import torch

        from ..data.arrays import as_float_array

        inputs = self._inputs_for(x, data)
        model = self.model
        if model.scalar_params:
            tensors = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in inputs.items()}
            params = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.params.items()}
            with torch.no_grad():
                out = model.forward(tensors, params)
            return as_float_array(out, "prediction").reshape(-1) if np.ndim(out) else np.full(
                len(next(iter(inputs.values()))), float(out))
        ref = next(iter(model.module.parameters()))
        tensors = {k: torch.as_tensor(v, dtype=ref.dtype, device=ref.device) for k, v in inputs.items()}
        with torch.no_grad():
            out = model.forward(tensors)
        return out.detach().cpu().double().numpy()

    def _inputs_for(self, x, data) -> dict:
        from ..data.arrays import as_float_array
        from ..errors import did_you_mean
        from ..data.io import columns_from_frame
        from ..errors import DataError

        names = self.model.input_names
        if data is not None:
            cols = columns_from_frame(data) if hasattr(data, "columns") else {
                str(k): as_float_array(v, str(k)) for k, v in data.items()}
            x = {}
            for n in names:
                if n not in cols:
                    raise DataError(f"no column {n!r} for input {n!r}{did_you_mean(n, cols)}")
                x[n] = cols[n]
            return x
        if x is None:
            raise DataError("predict needs x=... or data=...")
        if isinstance(x, dict):
            missing = [n for n in names if n not in x]
            if missing:
                raise DataError(f"missing input {missing[0]!r}{did_you_mean(missing[0], x)}")
            return {n: as_float_array(x[n], n) for n in names}
        return {names[0]: as_float_array(x, "x")}

    # -- reporting ----------------------------------------------------------------------
    def report(self) -> str:
        """A short text report: model, status, losses and parameters."""
        from .report import text_report

        return text_report(self)

    def to_dict(self) -> dict:
        """The JSON summary the CLI prints with --json."""
        out = {"params": dict(self.params), "loss": self.loss, "val_loss": self.val_loss,
               "status": self.status, "epochs_run": self.epochs_run, "message": self.message,
               "method": self.method, "method_reason": self.method_reason}
        if self.stderr is not None:
            out["stderr"] = dict(self.stderr)
            out["statistics"] = dict(self.stats)
        if self.best_epoch is not None:
            out["best_epoch"] = self.best_epoch
        if self.cv is not None:
            out["cv"] = {k: v for k, v in self.cv.items() if k != "params"}
        return out

    # -- persistence and plots ----------------------------------------------------------
    def save(self, path) -> None:
        """Write a JSON model file (plus ``.safetensors`` weights beside it for networks)."""
        from .persist import save_result

        save_result(self, path)

    def plot_fit(self, path, x=None, y=None):
        """PNG of data, fitted curve and residuals (pass the data to show)."""
        from .plot import plot_fit

        return plot_fit(self, path, x, y)

    def plot_loss(self, path):
        """PNG of training (and validation) loss per epoch."""
        from .plot import plot_loss

        return plot_loss(self, path)
