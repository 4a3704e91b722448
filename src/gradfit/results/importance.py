"""Hyperparameter importances of a study that reflect what the trials showed.

Optuna's default (``get_param_importances`` without an evaluator: PED-ANOVA since Optuna 4.x)
answers "which settings do the best 10% of trials share", from complete trials only. On a
gradfit search that is the wrong question twice over: the median pruner stops the trials with
the worst settings, so they never count, and with a few trials the top 10% is one trial. An
8-trial search in which sgd against adam changed the validation loss 100x (13 against 1290)
gave the optimizer an importance of 0.003.

Here instead:

- every finished trial counts: complete ones with their value, pruned ones with the last value
  they reported (the one the pruner judged them by; it is only worse later);
- losses are compared on a log scale when all are positive (a 100x change is a 100x change,
  whether the loss went 1 -> 100 or 0.01 -> 1);
- the evaluator is fANOVA (:class:`optuna.importance.FanovaImportanceEvaluator`, seed 0 so the
  same study gives the same plot): the share of the objective's variance over the whole search
  space that each parameter explains, which is what "this setting changed the loss" means.
  fANOVA needs scikit-learn; without it PED-ANOVA runs on the same trials (with a 0.5 target
  quantile, so more than one trial is "good") and the plot's label says which ran.
"""

from __future__ import annotations

import math
import warnings

__all__ = ["param_importances", "finished_values"]


def finished_values(study) -> list:
    """(trial, value) for every complete trial and every pruned one that reported a value."""
    out = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name
        if state == "COMPLETE" and t.value is not None:
            out.append((t, float(t.value)))
        elif state == "PRUNED" and t.intermediate_values:
            out.append((t, float(t.intermediate_values[max(t.intermediate_values)])))
    return [(t, v) for t, v in out if math.isfinite(v)]


def param_importances(study, seed: int = 0) -> tuple[dict, str]:
    """({parameter: importance, summing to 1}, evaluator name) for ``study``; ({}, "") when
    fewer than two finished trials or no parameter varies.

    >>> import optuna
    >>> optuna.logging.set_verbosity(optuna.logging.ERROR)
    >>> s = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> s.optimize(lambda t: 10 ** (3 * t.suggest_float("a", 0, 1)) + t.suggest_float("b", 0, 1e-3), 30)
    >>> imp, how = param_importances(s)
    >>> max(imp, key=imp.get), imp["a"] > 0.5
    ('a', True)
    """
    from ..errors import require

    optuna = require("optuna", extra="tune", feature="parameter importances")
    values = finished_values(study)
    if len(values) < 2:
        return {}, ""
    log = all(v > 0 for _, v in values)
    copy = optuna.create_study(direction=study.direction)
    for t, v in values:
        copy.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                                 value=math.log(v) if log else v))
    try:
        import sklearn  # noqa: F401  (fANOVA's random forest)

        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=seed), "fANOVA"
    except ImportError:
        evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.5), "PED-ANOVA"
    try:
        with warnings.catch_warnings():  # optuna's notes on few trials are not the user's concern
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(copy, evaluator=evaluator)
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}, ""
    scale = "log objective" if log else "objective"
    return {k: float(v) for k, v in importances.items()}, f"{name} on the {scale}, {len(values)} trials"
