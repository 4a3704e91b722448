"""Model selection: fit candidate models to the same data and rank them by AIC, AICc or BIC.

``gf.compare`` runs :func:`gradfit.fit` once per candidate and returns a :class:`Comparison`
(the ranked table, Akaike weights, the winner's FitResult). The candidate rules (labels,
per-candidate keywords, shared keywords filtered to each model's names) and the criteria
kernels live here too, so ``fit_many(models=...)`` (fitting/compare_many.py) ranks the
candidates of every fit by the same definitions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, FitError, GradfitError, did_you_mean
from ..status import Status

__all__ = ["compare", "Comparison", "Candidate", "CRITERIA", "aicc", "criteria_of", "parse_candidates",
           "check_criterion", "candidate_keywords", "with_label"]

#: the information criteria a comparison ranks by
CRITERIA = ("aic", "aicc", "bic")
#: keywords a candidate may carry for itself: its parameters' settings (everything else -- data,
#: weights, loss, solver -- is shared, so every candidate is fitted to the same problem)
PER_MODEL = ("init", "bounds", "fixed", "tie")
#: statuses whose parameters are a solution (the OK rows of gradfit.cli.common.STATUS_EXIT)
_SOLUTIONS = frozenset({Status.CONVERGED, Status.MAX_EPOCHS, Status.STOPPED_EARLY})
#: the columns of Comparison.table / rows(), in order
COLUMNS = ("model", "k", "n", "dof", "chisqr", "aic", "aicc", "bic", "delta", "weight", "status")


@dataclass(frozen=True)
class Candidate:
    """One model of a comparison: its label, the model as given, and its own keywords."""

    label: str
    model: Any
    options: dict = field(default_factory=dict)


# -- kernels ------------------------------------------------------------------------------------
def aicc(aic, n, k):
    """AICc = AIC + 2k(k+1)/(n-k-1) (Hurvich & Tsai 1989), for scalars or arrays.

    Where n - k - 1 <= 0 the correction is undefined and AICc is +inf (the data cannot support
    the model), NaN where AIC is NaN.

    >>> round(aicc(10.0, 20, 3), 6)
    11.5
    """
    aic, n, k = (np.asarray(v, dtype=float) for v in (aic, n, k))
    room = n - k - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(room > 0, aic + 2.0 * k * (k + 1.0) / np.where(room > 0, room, 1.0), np.inf)
    out = np.where(np.isnan(aic), np.nan, out)
    return float(out) if out.ndim == 0 else out


def criteria_of(stats: Mapping) -> dict:
    """{"aic", "aicc", "bic"} of a fit's (or a batch's) ``stats``, with k = n - dof free parameters."""
    n, dof = np.asarray(stats["n"], dtype=float), np.asarray(stats["dof"], dtype=float)
    return {"aic": stats["aic"], "aicc": aicc(stats["aic"], n, n - dof), "bic": stats["bic"]}


def akaike_weights(values) -> tuple[np.ndarray, np.ndarray]:
    """(delta, weight) of criterion values: delta = value - min, weight = exp(-delta/2) / sum.

    NaN values (failed fits) get NaN delta and weight 0; with no finite value every weight is NaN.
    """
    v = np.asarray(values, dtype=float)
    usable = ~np.isnan(v) & (v < np.inf)
    if not usable.any():
        return np.full(v.shape, np.nan), np.full(v.shape, np.nan)
    best = v[usable].min()
    with np.errstate(invalid="ignore"):
        delta = v - best if np.isfinite(best) else np.where(v == best, 0.0, np.inf)
    w = np.where(usable, np.exp(-0.5 * np.where(usable, delta, 0.0)), 0.0)
    return np.where(np.isnan(v), np.nan, delta), w / w.sum()


def check_criterion(criterion) -> str:
    key = str(criterion).strip().lower()
    if key not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}"
                          f"{did_you_mean(key, CRITERIA)}")
    return key


# -- candidates -----------------------------------------------------------------------------------
def parse_candidates(models) -> list[Candidate]:
    """Candidates from a list of models or a dict label -> model. A model is a formula, a
    built-in name, a callable, or a ``(model, {"init": ..., "bounds": ..., "fixed": ..., "tie": ...})``
    pair carrying its own parameter settings. Labels: the text, or the function's name."""
    if isinstance(models, (str, bytes)) or callable(models):
        raise ConfigError("models must be a list of candidate models (or a dict label -> model), "
                          "e.g. ['a*exp(-k*x)', 'a*exp(-k*x) + c']")
    items = list(models.items()) if isinstance(models, Mapping) else [(None, m) for m in models]
    if not items:
        raise ConfigError("models is empty: give at least one candidate model (two or more to compare)")
    out, seen = [], set()
    for label, entry in items:
        model, options = entry if isinstance(entry, tuple) else (entry, {})
        if isinstance(entry, tuple) and (len(entry) != 2 or not isinstance(options, Mapping)):
            raise ConfigError("a candidate tuple is (model, {'init': ..., 'bounds': ..., 'fixed': ..., 'tie': ...})")
        unknown = sorted(set(options) - set(PER_MODEL))
        if unknown:
            raise ConfigError(f"a candidate's own keywords are {', '.join(PER_MODEL)}; got {unknown[0]!r}"
                              f"{did_you_mean(unknown[0], PER_MODEL)} (data, weights and solver settings are "
                              "shared by every candidate)")
        label = str(label) if label is not None else _label(model)
        if label in seen:
            raise ConfigError(f"two candidates are labelled {label!r}; pass a dict label -> model to name them")
        seen.add(label)
        out.append(Candidate(label, model, dict(options)))
    return out


def _label(model) -> str:
    if isinstance(model, str):
        return " ".join(model.split())
    return getattr(model, "__name__", None) or getattr(model, "describe", lambda: type(model).__name__)()


def _names_of(model) -> set | None:
    """Every name a model uses (a formula's inputs included), or None when it cannot say."""
    from ..models import resolve_model

    spec = resolve_model(model)
    parsed = getattr(spec, "parsed", None)
    if parsed is not None:
        return set(parsed.rhs.names())
    return set(spec.param_names) if getattr(spec, "scalar_params", False) else None


def candidate_keywords(candidates: list[Candidate], shared: Mapping) -> list[dict]:
    """Each candidate's parameter keywords: the shared init/bounds/fixed/tie given by name, kept
    for the candidates that use each name, then the candidate's own settings on top.

    A shared name no candidate uses is a ConfigError (a typo would otherwise be ignored).
    Non-dict init (an array, "guess") goes to every candidate as it is.
    """
    names = [_names_of(c.model) for c in candidates]
    used = set().union(*(n for n in names if n is not None))
    anything = any(n is None for n in names)
    out = [{} for _ in candidates]
    for key in PER_MODEL:
        value = shared.get(key)
        if value is None:
            continue
        by_name = isinstance(value, Mapping) or key == "fixed"
        items = ([value] if isinstance(value, str) else list(value)) if key == "fixed" else value
        if by_name and not anything:
            stray = [n for n in items if n not in used]
            if stray:
                raise ConfigError(f"{key} names {stray[0]!r}, which no candidate model uses"
                                  f"{did_you_mean(str(stray[0]), used)}")
        for i, model_names in enumerate(names):
            if not by_name or model_names is None:
                out[i][key] = value
            elif key == "fixed":
                out[i][key] = [n for n in items if n in model_names]
            else:
                out[i][key] = {n: v for n, v in value.items() if n in model_names} or None
    for kw, c in zip(out, candidates):
        for key, own in c.options.items():
            base = kw.get(key)
            if key == "fixed":
                kw[key] = [*(base or ()), *([own] if isinstance(own, str) else own)]
            elif isinstance(own, Mapping) and isinstance(base, Mapping):
                kw[key] = {**base, **own}
            else:
                kw[key] = own
    return out


def with_label(exc: GradfitError, label: str) -> GradfitError:
    """The same error type, its message prefixed with the candidate it concerns."""
    try:
        return type(exc)(f"candidate {label!r}: {exc}")
    except TypeError:  # an error type with its own constructor: keep it as it is
        return exc


# -- one dataset ------------------------------------------------------------------------------------
def compare(models, x=None, y=None, *, data=None, criterion: str = "aicc", **fit_kwargs) -> "Comparison":
    """Fit each candidate model to the same data and rank them by an information criterion.

    Parameters
    ----------
    models : list of candidates, or dict label -> candidate. A candidate is a formula
        ("y ~ a*exp(-k*x)"), a built-in name ("gaussian", "poly:2"), a Python function, or a
        ``(model, {"init": ..., "bounds": ..., "fixed": ..., "tie": ...})`` pair with its own
        parameter settings. Labels are the texts (or function names) unless a dict names them.
    x, y, data : the data, as for :func:`gradfit.fit`; every candidate gets the same.
    criterion : "aicc" (default), "aic" or "bic": what the table is sorted by, Δ and the
        Akaike weights are computed from, and ``best`` minimizes.
    **fit_kwargs : keywords of :func:`gradfit.fit` for every candidate (weights, sigma, loss,
        tol, ...). init/bounds/fixed/tie given by name go to the candidates that use each
        name (``init={"a": 2, "k": 0.5, "c": 0}`` serves a*exp(-k*x) and a*exp(-k*x) + c);
        a candidate's own settings take precedence.

    Returns
    -------
    Comparison

    Notes
    -----
    The criteria follow lmfit's conventions, with k the number of free (varying) parameters
    and n the points fitted. Least squares: AIC = n ln(χ²/n) + 2k, BIC = n ln(χ²/n) + k ln n,
    χ² weighted by 1/σ² (the Gaussian -2 ln L with the variance profiled out, less the
    constant n(1 + ln 2π), as statsmodels' OLS counts k without σ²). loss="poisson":
    AIC = 2k - 2 ln L, BIC = k ln n - 2 ln L with the full Poisson log-likelihood.
    AICc = AIC + 2k(k+1)/(n-k-1) (Hurvich & Tsai 1989; +inf where n <= k + 1). Every
    candidate is fitted to the same points with the same loss, so the constants cancel in Δ.
    Akaike weights are exp(-Δ/2) normalized over the candidates that converged. A fit that
    did not converge (or raised FitError) is listed last with NaN criteria.

    Examples
    --------
    >>> import numpy as np, gradfit as gf
    >>> x = np.linspace(0, 4, 30)
    >>> y = 3 * np.exp(-0.8 * x) + 0.5 + np.random.default_rng(0).normal(0, 0.02, 30)
    >>> c = gf.compare(["a*exp(-k*x)", "a*exp(-k*x) + c", "linear"], x, y, init={"a": 2, "k": 1, "c": 0})
    >>> c.best_label
    'a*exp(-k*x) + c'
    """
    import inspect

    from .fit import fit

    key = check_criterion(criterion)
    candidates = parse_candidates(models)
    accepted = set(inspect.signature(fit).parameters) - {"model", "x", "y", "data"}
    unknown = sorted(set(fit_kwargs) - accepted)
    if unknown:
        raise ConfigError(f"compare passes keywords to gradfit.fit, which has no {unknown[0]!r}"
                          f"{did_you_mean(unknown[0], accepted)}")
    loss = fit_kwargs.get("loss", "mse")
    if not (isinstance(loss, str) and loss in ("mse", "poisson")):
        raise ConfigError(f"information criteria need a likelihood: loss='mse' (least squares) or 'poisson', "
                          f"got {loss!r}")
    shared = {k: fit_kwargs.pop(k) for k in PER_MODEL if k in fit_kwargs}
    results, errors = {}, {}
    for candidate, own in zip(candidates, candidate_keywords(candidates, shared)):
        try:
            results[candidate.label] = fit(candidate.model, x, y, data=data, **fit_kwargs, **own)
        except FitError as exc:  # the fit could not run (e.g. no Poisson mean > 0): a failed row
            errors[candidate.label] = " ".join(str(exc).split())
        except GradfitError as exc:
            raise with_label(exc, candidate.label) from None
    return Comparison.create(key, [c.label for c in candidates], results, errors, loss=loss)


@dataclass(frozen=True, repr=False)
class Comparison:
    """The outcome of :func:`gradfit.compare`.

    Attributes
    ----------
    criterion : "aic", "aicc" or "bic".
    labels : the candidates' labels, ranked (best first; failed fits last).
    results : dict label -> FitResult (candidates whose fit raised FitError are absent).
    errors : dict label -> message of a fit that could not run.
    loss : "mse" or "poisson".

    ``rows()`` gives the table as dicts (no pandas needed), ``table`` as a DataFrame,
    ``best`` the winner's FitResult and ``report()`` a text table.
    """

    criterion: str
    labels: tuple
    results: dict
    errors: dict
    loss: str
    _rows: tuple

    @classmethod
    def create(cls, criterion: str, labels: list, results: dict, errors: dict, *, loss: str = "mse") -> "Comparison":
        rows = []
        for label in labels:
            r = results.get(label)
            ok = r is not None and r.status in _SOLUTIONS and r.stats is not None and "aic" in r.stats
            if r is not None and r.stats is None:
                raise ConfigError(f"candidate {label!r} has no fit statistics (a neural network or a first-order "
                                  "fit of another loss): information criteria need least squares or loss='poisson'")
            st = r.stats if r is not None else {}
            n, dof = st.get("n", math.nan), st.get("dof", math.nan)
            values = criteria_of(st) if ok else dict.fromkeys(CRITERIA, math.nan)
            rows.append({"model": label, "k": n - dof if r is not None else math.nan, "n": n, "dof": dof,
                         "chisqr": st.get("deviance" if loss == "poisson" else "chisqr", math.nan),
                         **{c: float(values[c]) for c in CRITERIA},
                         "status": str(r.status) if r is not None else "error"})
        used = {row["n"] for row in rows if not math.isnan(row["aic"])}
        if len(used) > 1:
            raise DataError(f"the candidates were fitted to different numbers of points ({sorted(used)}); "
                            "information criteria compare models on the same data only")
        delta, weight = akaike_weights([row[criterion] for row in rows])
        for row, d, w in zip(rows, delta, weight):
            row.update(delta=float(d), weight=float(w))
        # ranked by the criterion; failed fits last, in the order given (a stable sort)
        rows.sort(key=lambda row: (math.isnan(row[criterion]), row[criterion] if not math.isnan(row[criterion])
                                   else 0.0))
        return cls(criterion, tuple(row["model"] for row in rows), dict(results), dict(errors), loss, tuple(rows))

    def rows(self) -> list[dict]:
        """The table as one dict per candidate (keys :data:`COLUMNS`), best first."""
        return [{c: row[c] for c in COLUMNS} for row in self._rows]

    @property
    def table(self):
        """A pandas DataFrame of :meth:`rows` (needs pandas: ``pip install "gradfit[pandas]"``).
        The "chisqr" column holds the deviance for loss="poisson"."""
        from ..errors import require

        pd = require("pandas", extra="pandas", feature="Comparison.table")
        return pd.DataFrame(self.rows(), columns=list(COLUMNS))

    @property
    def best_label(self) -> str | None:
        """The winner's label, or None when no candidate converged."""
        first = self._rows[0] if self._rows else None
        return first["model"] if first is not None and not math.isnan(first[self.criterion]) else None

    @property
    def best(self):
        """The FitResult of the candidate with the lowest criterion among those that converged."""
        if self.best_label is None:
            status = ", ".join(f"{row['model']}: {row['status']}" for row in self._rows)
            raise FitError(f"no candidate model converged ({status}); check the starting values (init=)")
        return self.results[self.best_label]

    @property
    def weights(self) -> dict:
        """label -> Akaike weight (sums to 1 over the converged candidates)."""
        return {row["model"]: row["weight"] for row in self._rows}

    def plot(self, path, x, y) -> None:
        """Save a PNG of the data with every converged candidate's curve (labelled with its
        Δ and Akaike weight; the best boldest, with its 95% confidence band) and their
        residuals: :func:`gradfit.results.plot.plot_comparison`. ``x``, ``y``: the data the
        candidates were fitted to."""
        from ..results.plot import plot_comparison

        ranked = [(row["model"], self.results[row["model"]], row["delta"], row["weight"]) for row in self._rows
                  if not math.isnan(row[self.criterion])]
        plot_comparison(path, x, y, ranked, self.criterion)

    def report(self) -> str:
        """The ranked table as aligned text, one line per candidate."""
        head = ["model", "k", "n", "deviance" if self.loss == "poisson" else "chisqr", "aic", "aicc", "bic",
                f"delta {self.criterion}", "weight", "status"]
        body = [[row["model"], _num(row["k"], "d"), _num(row["n"], "d"), _num(row["chisqr"]), _num(row["aic"]),
                 _num(row["aicc"]), _num(row["bic"]), _num(row["delta"], ".3f"), _num(row["weight"], ".3f"),
                 row["status"]] for row in self._rows]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
        lines = [f"model comparison by {self.criterion.upper()} ({len(self._rows)} candidates)"]
        for r in [head, *body]:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        return "\n".join(line.rstrip() for line in lines)

    def __repr__(self) -> str:
        weights = ", ".join(f"{row['weight']:.3g}" for row in self._rows[:5])
        best = self.best_label
        return (f"Comparison(criterion={self.criterion!r}, best={best if best is None else best[:60]!r}, "
                f"candidates={len(self._rows)}, weights=[{weights}{', ...' if len(self._rows) > 5 else ''}])")


def _num(v, fmt: str = ".6g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(int(v), "d") if fmt == "d" else format(v, fmt)
