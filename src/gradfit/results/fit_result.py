"""FitResult: what a fit returns. Immutable; it predicts, reports, plots and saves itself.

Its file document is declared once, in ``_DOCUMENT`` (field name -> codec, see
:mod:`gradfit.results.document`): every field but the model is stored there and loads back
exactly; the model is stored as its ``spec()`` (plus weights for networks).
"""

from __future__ import annotations

import math

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import ModelError, PersistError
from ..status import Status
from .document import (ARRAY, INT, NAMES, NUMBER, NUMBERS, SERIES, STATUS, TEXT, TREE, decode_fields,
                       encode_fields, model_from_spec, optional)
from .persist import read_document, write_document
from .schema import check_document, shapes_of

__all__ = ["FitResult", "load"]

#: interval methods that refit, registered by the fitting layer (results/ cannot import fitting/):
#: name -> function(result, level, *, x, y, data, sigma, weights, **method options) -> {name: (lo, hi)}
_REFIT_INTERVALS: dict = {}


def register_interval_method(name: str, function) -> None:
    """Make ``FitResult.ci(method=name)`` call ``function`` (fitting/bootstrap.py registers
    "bootstrap" when :mod:`gradfit.fitting` is imported)."""
    _REFIT_INTERVALS[name] = function


@dataclass(frozen=True, repr=False)
class FitResult:
    """The outcome of :func:`gradfit.fit`.

    Attributes
    ----------
    params : dict name -> float, in the user's units (empty for neural networks; their
        weights live in ``model.module``).
    loss : training loss at the final parameters (full-batch training) or, with minibatches,
        the mean batch loss of the last epoch as Keras reports it; ``val_loss`` is the loss on
        the validation split at the final parameters (None without one).
    status : a :class:`~gradfit.status.Status` ("converged", "max_epochs", "max_iterations",
        "stalled", "singular", "diverged", "stopped", "stopped_early", ...); strings are
        converted on construction.
    history : {"train_loss": [...], "val_loss": [...]} (plus "penalty", "lr" when training
        recorded them), one entry per epoch or iteration run.
    settings : the options of the fit as JSON values (bounds as [low, high] floats, inf allowed).

    The result holds no training data and no solver state; :meth:`ci` with
    ``method="profile"`` takes the data as arguments.
    """

    params: dict
    loss: float
    val_loss: float | None
    status: Status
    epochs_run: int
    history: dict
    model: Any
    message: str = ""
    settings: dict = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0
    notes: tuple = ()
    #: standard errors by name (least-squares losses); 0 for fixed parameters
    stderr: dict | None = None
    #: covariance and correlation of the free parameters, in the order of ``free``
    covariance: Any = None
    correlation: Any = None
    free: tuple = ()
    #: n, dof, chisqr, redchi, rss, rmse, r2, aic, bic
    stats: dict | None = None
    #: early stopping: the epoch whose parameters were restored
    best_epoch: int | None = None
    #: cross-validation: {"val_loss": [...], "mean", "std", "params": [...], ...}
    cv: dict | None = None

    def __post_init__(self):
        if not isinstance(self.status, Status):
            object.__setattr__(self, "status", Status(self.status))

    def __repr__(self) -> str:
        """One line of at most ~300 characters: model, status, chi-square (or deviance, or loss)
        and the first parameters with their errors (never the history, settings or weights;
        :meth:`report` has the full text). See :mod:`gradfit.results.display`."""
        from .display import fit_repr

        return fit_repr(self)

    def _repr_html_(self) -> str:
        """The notebook block: parameters, statistics, status, notes, and the loss curve of a
        trained fit (the fit plot needs the data: :meth:`with_data`)."""
        from .display import fit_html

        return fit_html(self)

    def _repr_markdown_(self) -> str:
        from .display import fit_markdown

        return fit_markdown(self)

    def with_data(self, x, y, sigma=None):
        """This result shown with its data: in a notebook, ``r.with_data(x, y)`` draws the fit
        plot in the HTML block (a result keeps no data); ``.to_html(path)`` writes the report."""
        from .display import FitView

        return FitView(self, x, y, sigma)

    def to_html(self, path, x=None, y=None, sigma=None, *, title: str | None = None) -> None:
        """Write a self-contained HTML report (inline CSS and PNGs, no network references),
        atomically: data, fit and residuals (when ``x`` and ``y`` are passed), loss curve,
        parameters, statistics, correlations, warnings, settings and versions."""
        from .html_report import fit_report, write_report

        write_report(path, fit_report(self, x, y, sigma, title=title))

    @property
    def method(self) -> str:
        """The optimizer that ran ("linear", "lm", "adam", ...); ``method_reason`` says why."""
        return self.settings.get("method", self.settings.get("optimizer", ""))

    @property
    def multistart(self) -> dict | None:
        """gf.fit(starts=K): starts, converged, reached_best, distinct_minima, best_start (else None)."""
        return self.settings.get("multistart")

    @property
    def method_reason(self) -> str:
        return self.settings.get("method_reason", "")

    def ci(self, level: float = 0.95, method: str = "normal", *, x=None, y=None, data=None, sigma=None,
           weights=None, n: int = 1000, seed=0, kind: str | None = None, interval: str = "percentile") -> dict:
        """Confidence intervals {name: (low, high)} for the free parameters.

        Parameters
        ----------
        level : confidence level, between 0 and 1.
        method : "normal" (the Wald interval; no data needed): value +/- q * stderr, where q is
            the Student t quantile ``t(0.5 + level/2, dof)`` with ``dof = n - n_free`` (the scale
            is estimated from the residuals, as statsmodels' ``conf_int`` does for OLS and NLS), or
            the normal quantile z when the fit used ``absolute_sigma=True`` (known scale). At large
            dof, t tends to z (1.96 at 95%); at dof = 3 it is 3.18. "profile": profile
            likelihood, refitting the other parameters with each one held at trial values until
            chi-square rises by t^2 * (reduced chi-square), t the Wald interval's quantile at the fit's
            dof (z^2 alone with absolute sigma).
            "bootstrap": ``n`` resampled refits in one fit_many batch, by
            :func:`gradfit.bootstrap` (registered by :mod:`gradfit.fitting`, which ``gf.fit``,
            ``gf.load`` and ``gf.bootstrap`` load); ``seed``, ``kind`` ("residual", "pairs", "parametric")
            and ``interval`` ("percentile", "basic", "bca") are passed on.
        x, y, data, sigma, weights : for "profile" and "bootstrap": the data the fit was made with,
            passed as to :func:`gradfit.fit` (a result keeps no data, so this works the same on
            a fresh and on a loaded result). The problem is rebuilt from the model and the
            settings (bounds, fixed, tie, absolute_sigma, validation split).

        Returns
        -------
        dict name -> (low, high) floats, in the parameter's units; NaN where dof < 1 or the
        standard error is undetermined.

        Raises
        ------
        ConfigError
            Bad level or method, or method="profile" without the data.
        DataError
            The data passed is not the data of this fit.
        FitError
            No standard errors (not a least-squares fit), or a profile that never reaches the level.

        Notes
        -----
        t quantiles come from ``scipy.stats.t.ppf`` when scipy is installed, else from mpmath
        (exact to float64 rounding); see :mod:`gradfit.results.intervals`.

        Examples
        --------
        >>> import gradfit as gf
        >>> x, y = [0.0, 1.0, 2.0, 3.0], [1.0, 3.1, 4.9, 7.2]
        >>> r = gf.fit("a*x + b", x=x, y=y)
        >>> lo, hi = r.ci(0.95)["a"]    # a +/- t(0.975, dof=2) * stderr, t = 4.303
        >>> round((hi - lo) / 2 / r.stderr["a"], 3)
        4.303
        >>> lo, hi = r.ci(0.95, method="profile", x=x, y=y)["a"]
        >>> bool(lo < r.params["a"] < hi)
        True
        """
        from ..errors import ConfigError, FitError
        from .intervals import wald_interval

        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
            raise ConfigError(f"level must be between 0 and 1, got {level!r}")
        if self.stderr is None:
            raise FitError("no standard errors: uncertainties need a least-squares loss and a scalar-parameter model")
        absolute = self.absolute_sigma
        if method == "normal":
            dof = (self.stats or {}).get("dof")
            return {n: wald_interval(self.params[n], self.stderr[n], level, dof, absolute) for n in self.free}
        if method in _REFIT_INTERVALS:
            return _REFIT_INTERVALS[method](self, level, x=x, y=y, data=data, sigma=sigma, weights=weights, n=n,
                                            seed=seed, kind=kind, interval=interval)
        if method == "bootstrap":
            raise ConfigError("bootstrap intervals refit with gradfit.fitting, not loaded yet: call "
                              "gf.bootstrap(r, x=..., y=...).ci(level), or import gradfit.fitting first")
        if method != "profile":
            raise ConfigError(f"method must be 'normal', 'profile' or 'bootstrap', got {method!r}")
        from ..lsq.profile import profile_intervals, rebuild_problem

        problem = rebuild_problem(self.model, self.params, self.settings, self.stats, x=x, y=y, data=data,
                                  sigma=sigma, weights=weights)
        compile = ((self.settings.get("options") or {}).get("least_squares") or {}).get("compile", "auto")
        return profile_intervals(problem, self.params, self.stderr, self.stats, level, absolute, self.free, compile)

    @property
    def absolute_sigma(self) -> bool:
        """Whether the fit treated sigma as absolute (known scale: z intervals, no rescaling);
        always for a likelihood fit (loss "poisson": its Cramer-Rao covariance is absolute)."""
        from ..likelihood import LIKELIHOODS

        if self.settings.get("loss") in LIKELIHOODS:
            return True
        least_squares = (self.settings.get("options") or {}).get("least_squares") or {}
        return bool(least_squares.get("absolute_sigma", False))

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

    def band(self, x=None, level: float = 0.95, kind: str = "confidence", *, data=None, sigma=None):
        """(lower, upper) float64 arrays at new inputs (as :meth:`predict` takes them): the
        confidence band of the fitted curve, or with ``kind="prediction"`` where a new
        observation falls (``sigma=``: its noise, for weighted fits). Delta method with the
        exact Jacobian, t quantiles (z for absolute sigma and Poisson fits); the conventions
        are in :mod:`gradfit.results.bands`.

        >>> import gradfit as gf
        >>> r = gf.fit("a*x + b", x=[0.0, 1.0, 2.0, 3.0], y=[1.0, 3.1, 4.9, 7.2])
        >>> lo, hi = r.band([1.5], 0.95)
        >>> bool(lo[0] < r.predict([1.5])[0] < hi[0])
        True
        """
        from .bands import fit_band

        return fit_band(self, self._inputs_for(x, data), level, kind, sigma=sigma)

    def _inputs_for(self, x, data) -> dict:
        from ..data.arrays import as_float_array
        from ..errors import DataError, did_you_mean

        names = self.model.input_names
        if data is not None:
            cols = [str(c) for c in (data.columns if hasattr(data, "columns") else data.keys())]
            x = {}
            for n in names:
                if n not in cols:
                    raise DataError(f"no column {n!r} for input {n!r}{did_you_mean(n, cols)}")
                # only the model's inputs must be numeric (ids and labels may be text)
                column = data[n] if hasattr(data, "columns") else data[next(k for k in data if str(k) == n)]
                x[n] = as_float_array(column.to_numpy() if hasattr(column, "to_numpy") else column, f"column {n!r}")
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
        if self.settings.get("strategy"):  # least squares: how it ran ("...; native kernel": in C)
            out["strategy"] = self.settings["strategy"]
        if self.stderr is not None:
            out["stderr"] = dict(self.stderr)
            out["statistics"] = dict(self.stats)
        if self.best_epoch is not None:
            out["best_epoch"] = self.best_epoch
        if self.cv is not None:
            out["cv"] = {k: v for k, v in self.cv.items() if k != "params"}
        if self.multistart is not None:
            out["multistart"] = self.multistart
        return out

    # -- persistence and plots ----------------------------------------------------------
    def to_document(self) -> dict:
        """The file document: the model's spec and every field in ``_DOCUMENT``, as JSON values."""
        return {"model": TREE.encode(self.model.spec()), **encode_fields(self, _DOCUMENT)}

    @classmethod
    def from_document(cls, doc: dict, *, weights: dict | None = None, module=None, function=None) -> "FitResult":
        """The result a document describes; ``weights`` is the network's state dict (see
        :func:`gradfit.results.document.model_from_spec` for ``module`` and ``function``).

        Raises
        ------
        PersistError
            An entry is missing, malformed or beyond the limits of
            :mod:`gradfit.results.schema` (checked before any network is built: layer sizes
            must match the weights' shapes), or the parameters do not match the model.
        ModelError
            The model is a custom module or function that was not passed.
        """
        check_document(doc, shapes_of(weights))
        model = model_from_spec(TREE.decode(doc.get("model")), weights, module=module, function=function)
        values = decode_fields(doc, _DOCUMENT)
        missing = [name for name in _REQUIRED if name not in values]
        if missing:
            raise PersistError(f"the {missing[0]!r} entry is missing")
        params = values["params"]
        if model.scalar_params and set(params) != set(model.param_names):
            raise PersistError(f"parameters {sorted(params)} do not match the model's {list(model.param_names)}")
        return cls(model=model, **values)

    def save(self, path, *, signing_key=None) -> None:
        """Write a JSON model file (plus ``.safetensors`` weights beside it for networks),
        atomically; :func:`gradfit.load` reads it back with every field unchanged. With a key
        (``signing_key``, else ``$GRADFIT_SIGNING_KEY``) the file is signed (HMAC-SHA256)."""
        weights = None if self.model.scalar_params else self.model.module.state_dict()
        write_document(path, self.to_document(), weights, signing_key=signing_key)

    def plot_fit(self, path, x=None, y=None, band_level: float | None = 0.95, *, sigma=None, data=None,
                 xlabel=None, ylabel=None):
        """PNG of data (error bars with ``sigma``; validation rows marked), fitted curve (with its
        ``band_level`` confidence band where the fit has one; None: no band) and residuals (per
        sigma when given); pass the data to show as x, y or ``data=``. See
        :func:`gradfit.results.plot.fit_figure`."""
        from .plot import plot_fit

        return plot_fit(self, path, x, y, band_level, sigma=sigma, data=data, xlabel=xlabel, ylabel=ylabel)

    def plot_loss(self, path):
        """PNG of training (and validation) loss per epoch."""
        from .plot import plot_loss

        return plot_loss(self, path)


#: the file document of a FitResult: every field except ``model``, and how it is stored
_DOCUMENT = {
    "params": NUMBERS, "loss": NUMBER, "val_loss": optional(NUMBER), "status": STATUS, "epochs_run": INT,
    "history": SERIES, "message": TEXT, "settings": TREE, "n_train": INT, "n_val": INT, "notes": NAMES,
    "stderr": optional(NUMBERS), "covariance": optional(ARRAY), "correlation": optional(ARRAY), "free": NAMES,
    "stats": optional(NUMBERS), "best_epoch": optional(INT), "cv": optional(TREE),
}
_REQUIRED = tuple(f.name for f in fields(FitResult)
                  if f.name in _DOCUMENT and f.default is MISSING and f.default_factory is MISSING)


def load(path, *, module=None, function=None, signing_key=None) -> FitResult:
    """Load a FitResult saved with :meth:`FitResult.save`.

    Formula and built-in models are rebuilt from their text; MLPs from their description
    and safetensors weights. Custom ``torch.nn.Module`` and Python-function models cannot
    be rebuilt from a file (that would mean running stored code): pass ``module=`` (an
    instance of the same architecture) or ``function=``.

    With a key (``signing_key``, else ``$GRADFIT_SIGNING_KEY`` if set) the file must be signed
    with it: an unsigned file, or one edited after it was signed, is refused.

    Raises
    ------
    PersistError
        Missing, damaged, foreign or newer-format file, malformed entries, or (with a key) an
        unsigned file or a bad signature.
    ModelError
        The model is a custom module or function and it was not passed.

    Examples
    --------
    >>> import gradfit as gf, tempfile, os
    >>> r = gf.fit("a*x + b", x=[0.0, 1.0, 2.0], y=[1.0, 3.0, 5.2])
    >>> path = os.path.join(tempfile.mkdtemp(), "fit.json")
    >>> r.save(path)
    >>> gf.load(path).report() == r.report()
    True
    """
    doc, weights = read_document(path, signing_key=signing_key)
    doc = _numeric_bounds(doc)
    try:
        return FitResult.from_document(doc, weights=weights, module=module, function=function)
    except (PersistError, ModelError) as exc:
        raise type(exc)(f"{path}: {exc}") from None


def _numeric_bounds(doc: dict) -> dict:
    """Bounds in ``settings`` as numbers: format 1 wrote non-finite bounds as the strings "inf"
    and "-inf" (and a hand-edited file may too); turn them into the floats format 2 stores, so
    such bounded fits report and refit as new ones. Other strings are left for the report's
    checks to name."""
    settings = doc.get("settings")
    bounds = settings.get("bounds") if isinstance(settings, dict) else None
    if not isinstance(bounds, dict):
        return doc
    numbers = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "infinity": math.inf, "-infinity": -math.inf}

    def number(v):
        return numbers.get(v.strip().lower(), v) if isinstance(v, str) else v

    fixed = {name: [number(v) for v in pair] if isinstance(pair, list) else pair for name, pair in bounds.items()}
    return {**doc, "settings": {**settings, "bounds": fixed}}
