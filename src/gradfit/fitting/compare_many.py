"""fit_many(models=[...]): every candidate fitted to every row (one batch per candidate), and
per fit the candidate with the lowest information criterion among those that converged.

The candidate rules and the criteria are those of :func:`gradfit.compare` (fitting/compare.py),
so ``fit_many(models=...)`` picks, for each row, what ``compare`` picks on that row alone.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, GradfitError

__all__ = ["fit_candidates", "select_per_fit"]


def fit_candidates(fit_many, model, models, criterion, keywords: dict):
    """The BatchResult of ``fit_many(models=..., criterion=...)``; ``fit_many`` is passed in
    (the front in fitting/many.py) so that this module does not import it back."""
    from ..models import is_builtin_name
    from .compare import PER_MODEL, candidate_keywords, check_criterion, parse_candidates, with_label

    if models is None:
        raise ConfigError("criterion= chooses between models=[...]; pass the candidate models")
    if model is not None:
        raise ConfigError("pass either model (one model for every fit) or models=[...] (the best per fit), not both")
    if keywords.get("shared"):
        raise ConfigError("models= and shared= cannot be combined; fit each candidate with shared= on its own")
    key = check_criterion("aicc" if criterion is None else criterion)
    candidates = parse_candidates(models)
    shared = {k: keywords.pop(k, None) for k in PER_MODEL}
    keywords.pop("shared", None)
    results = []
    for candidate, own in zip(candidates, candidate_keywords(candidates, shared)):
        if own.get("init") is None and isinstance(candidate.model, str) and is_builtin_name(candidate.model):
            own["init"] = "guess"  # built-in curves start from their data-driven guess, as in gf.fit
        try:
            results.append(fit_many(candidate.model, **keywords, **own))
        except GradfitError as exc:
            raise with_label(exc, candidate.label) from None
    return select_per_fit([c.label for c in candidates], results, key)


def select_per_fit(labels: list, results: list, criterion: str):
    """One BatchResult keeping, per fit, the converged candidate with the lowest criterion.

    params and stderr cover the union of the candidates' parameter names (NaN where the chosen
    model has no such name); stats, status and iterations are the chosen candidate's. A fit
    where no candidate converged has model_index -1, NaN parameters, and the first candidate's
    status, stats and iterations.
    """
    from ..results.batch_result import BatchResult
    from .compare import criteria_of

    n_fits = len(results[0])
    values = np.column_stack([np.where(r.converged, np.asarray(criteria_of(r.stats)[criterion], dtype=float),
                                       np.nan) for r in results]).reshape(n_fits, len(results))
    valid = ~np.isnan(values)
    # ties go to the candidate listed first (argmin's first minimum)
    index = np.where(valid.any(axis=1), np.where(valid, values, np.inf).argmin(axis=1), -1)
    names = list(dict.fromkeys(n for r in results for n in r.param_names))
    params = {n: np.full(n_fits, np.nan) for n in names}
    stderr = {n: np.full(n_fits, np.nan) for n in names}
    source = np.where(index >= 0, index, 0)
    stat_keys = set.intersection(*(set(r.stats) for r in results))
    stats = {k: np.array(results[0].stats[k], copy=True) for k in results[0].stats if k in stat_keys}
    status, iterations = results[0].status.copy(), results[0].iterations.copy()
    for j, r in enumerate(results):
        rows = source == j
        for n in r.param_names:
            chosen = rows & (index == j)
            params[n][chosen] = r.params[n][chosen]
            stderr[n][chosen] = r.stderr[n][chosen]
        for k in stats:
            stats[k] = np.where(rows, r.stats[k], stats[k])
        status[rows], iterations[rows] = r.status[rows], r.iterations[rows]
    fit_s = sum(r.timings.get("fit_s", r.timings.get("total_s", 0.0)) for r in results)
    timings = {"total_s": sum(r.timings.get("total_s", 0.0) for r in results), "fit_s": fit_s,
               "fits_per_s": n_fits * len(results) / fit_s if fit_s > 0 else float("nan"),
               "device": results[0].timings.get("device", "?"), "path": results[0].timings.get("path", "?"),
               "candidates": {label: dict(r.timings) for label, r in zip(labels, results)}}
    return BatchResult(param_names=tuple(names), params=params, stderr=stderr, stats=stats, status=status,
                       iterations=iterations, model_text="best of: " + " | ".join(labels), timings=timings,
                       ids=results[0].ids, id_name=results[0].id_name, id_dtype=results[0].id_dtype,
                       loss=results[0].loss, model_index=index.astype(np.int64),
                       models=tuple(labels), criteria=values, criterion=criterion)
