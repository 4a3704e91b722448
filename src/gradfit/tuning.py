"""Hyperparameter search on Optuna: ``tune`` fits the model once per trial with settings drawn
from a search space, prunes hopeless trials from their validation loss during training,
and returns the best configuration, its fit and the trial table.

Studies live in a storage several workers can share: Optuna's journal file (an append-only
log with file locks, safe for parallel writers on one machine; the default next to the
results) or any Optuna storage URL (e.g. postgresql://...). A trial whose worker died is
marked failed when the next worker on the same machine starts, and the study goes on.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from dataclasses import dataclass, field
from typing import Mapping

from .errors import ConfigError, did_you_mean

__all__ = ["tune", "TuneResult", "parse_space", "open_study", "lr_find", "LRFinderResult"]


@dataclass
class TuneResult:
    best_params: dict
    best_value: float
    best_fit: object
    trials: list = field(default_factory=list)  # one dict per trial: number, state, value, params
    study_name: str = ""
    storage: str | None = None

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.trials)


# -- search space -----------------------------------------------------------------------------
def parse_space(space: Mapping) -> dict:
    """Validate a search space: name -> ("log"|"float", lo, hi) | ("int", lo, hi) | [choices]."""
    out = {}
    for name, spec in space.items():
        if isinstance(spec, (list, tuple)) and spec and spec[0] in ("log", "float", "int"):
            kind = spec[0]
            if len(spec) != 3:
                raise ConfigError(f"space {name!r}: expected ({kind!r}, low, high)")
            lo, hi = spec[1], spec[2]
            if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float))) or lo >= hi:
                raise ConfigError(f"space {name!r}: need low < high, got {lo!r}, {hi!r}")
            if kind == "log" and lo <= 0:
                raise ConfigError(f"space {name!r}: a log range needs low > 0")
            out[name] = (kind, lo, hi)
        elif isinstance(spec, (list, tuple)) and spec:
            out[name] = ("choice", list(spec))
        else:
            raise ConfigError(f"space {name!r}: use ('log', lo, hi), ('float', lo, hi), ('int', lo, hi) or a list")
    return out


def _suggest(trial, space: dict) -> dict:
    values = {}
    for name, spec in space.items():
        if spec[0] == "log":
            values[name] = trial.suggest_float(name, spec[1], spec[2], log=True)
        elif spec[0] == "float":
            values[name] = trial.suggest_float(name, spec[1], spec[2])
        elif spec[0] == "int":
            values[name] = trial.suggest_int(name, int(spec[1]), int(spec[2]))
        else:
            values[name] = trial.suggest_categorical(name, spec[1])
    return values


def _fit_keywords(base: Mapping, values: Mapping) -> dict:
    """Trial values into gradfit.fit keyword arguments; dotted names nest ("penalty.l2" -> penalty={"l2": v})."""
    opts = dict(base)
    for name, v in values.items():
        if "." in name:
            outer, inner = name.split(".", 1)
            nested = dict(opts.get(outer) or {})
            nested[inner] = v
            opts[outer] = nested
        else:
            opts[name] = v
    return opts


def _check_keywords(base: Mapping, space: Mapping) -> None:
    """Refuse bad fit options and unknown search names before any trial runs (a trial that
    fails on them would only be counted as failed)."""
    from .fitting.keywords import FIT_KEYWORDS, options_from_keywords

    options_from_keywords(**{k: v for k, v in base.items() if k in FIT_KEYWORDS})
    searchable = (*FIT_KEYWORDS, "init")
    for name in space:
        outer = name.split(".", 1)[0]
        if outer not in searchable:
            raise ConfigError(f"space {name!r}: {outer!r} is not a fit option{did_you_mean(outer, searchable)}")


# -- studies ------------------------------------------------------------------------------------
def open_study(study: str | None, storage: str | None, seed: int, direction: str = "minimize", prune: bool = True):
    """Create or load a study; ``storage`` is a journal file path or an Optuna storage URL."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = None
    if storage:
        if "://" in storage:
            store = storage
        else:
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            store = JournalStorage(JournalFileBackend(str(storage)))
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=5) if prune else optuna.pruners.NopPruner()
    return optuna.create_study(study_name=study or "gradfit", storage=store, sampler=sampler, pruner=pruner,
                               direction=direction, load_if_exists=True)


def fail_dead_trials(study) -> int:
    """Mark RUNNING trials whose worker process (on this machine) is gone as FAIL."""
    from optuna.trial import TrialState

    n = 0
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, where = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if pid is None or where != host or _alive(int(pid)):
            continue
        # another worker starting at the same time may have failed it already
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _trial_rows(study) -> list:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, "value": t.value if t.value is not None else math.nan}
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row["epochs"] = t.user_attrs.get("epochs")
        rows.append(row)
    return rows


def tune(model, x=None, y=None, *, data=None, space: Mapping, trials: int = 50, metric: str = "val_loss",
         storage: str | None = None, study: str | None = None, workers: int = 1, seed: int = 0,
         max_total: int | None = None, prune: bool = True, **fit_options):
    """Search ``space`` for the fit settings that minimise ``metric`` ("val_loss" or "loss").

    >>> import numpy as np, gradfit as gf
    >>> x = np.linspace(0, 1, 40); y = 2 * x + 1
    >>> r = gf.tune("a*x + b", x=x, y=y, space={"lr": ("log", 1e-3, 1e-1)}, trials=4, optimizer="adam",
    ...             epochs=50, val_fraction=0.25)
    >>> len(r.trials), sorted(r.best_params)
    (4, ['lr'])
    """
    import optuna

    from .fitting.fit import fit
    from .callbacks import Callback

    if metric not in ("val_loss", "loss"):
        raise ConfigError(f"metric must be 'val_loss' or 'loss', got {metric!r}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials must be an integer >= 1, got {trials!r}")
    parsed = parse_space(space)
    base = dict(fit_options, progress=False)
    if metric == "val_loss":
        base.setdefault("val_fraction", 0.2)
    _check_keywords(base, parsed)
    st = open_study(study, storage, seed, prune=prune)
    fail_dead_trials(st)
    done = len([t for t in st.get_trials(deepcopy=False) if t.state.is_finished()])
    # several processes on one study share one target, so the study ends with exactly it
    target = max_total if max_total is not None else done + trials

    class Pruning(Callback):
        def __init__(self, trial):
            self.trial = trial
            self.pruned = False

        def on_epoch_end(self, epoch, logs):
            value = logs.get(metric if metric == "val_loss" else "train_loss")
            if value is None or not math.isfinite(value):
                return None
            self.trial.report(value, epoch)
            if self.trial.should_prune():
                self.pruned = True
                return True
            return None

    def objective(trial):
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        values = _suggest(trial, parsed)
        keywords = _fit_keywords(base, values)
        pruning = Pruning(trial)
        callbacks = [*keywords.pop("callbacks", ()), pruning]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a trial's overfitting is what the search is for
            r = fit(model, x, y, data=data, callbacks=callbacks, **keywords)
        trial.set_user_attr("epochs", r.epochs_run)
        if pruning.pruned:
            raise optuna.TrialPruned()
        value = r.val_loss if metric == "val_loss" else r.loss
        if value is None or not math.isfinite(value):
            raise optuna.TrialPruned()  # diverged: no usable value, tell the sampler to avoid it
        return value

    stop = optuna.study.MaxTrialsCallback(target, states=None)
    remaining = max(0, target - len(st.get_trials(deepcopy=False)))
    st.optimize(objective, n_trials=min(trials, remaining), n_jobs=max(1, int(workers)), callbacks=[stop],
                catch=(Exception,))
    complete = [t for t in st.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        raise ConfigError("no trial completed; widen the space or check the fit options")
    best = st.best_trial
    best_fit = fit(model, x, y, data=data, **_fit_keywords(base, best.params))
    return TuneResult(dict(best.params), float(best.value), best_fit, _trial_rows(st), st.study_name,
                      storage if isinstance(storage, str) else None)


def write_outputs(study, folder) -> list:
    """trials.csv, best.json and the plots of a study, written atomically into ``folder``."""
    import json
    from pathlib import Path

    import numpy as np

    from .data.io import write_csv
    from ._files import atomic_write_text
    from .results.plot import plot_tuning

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = _trial_rows(study)
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("number", "state", "value"), k))
    write_csv(folder / "trials.csv", {k: np.array([r.get(k, "") for r in rows], dtype=object) for k in keys})
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    written = [folder / "trials.csv"]
    if complete:
        best = study.best_trial
        doc = {"study": study.study_name, "best_trial": best.number, "value": best.value, "params": best.params,
               "trials": len(rows), "complete": len(complete)}
        atomic_write_text(folder / "best.json", json.dumps(doc, indent=2) + "\n")
        written.append(folder / "best.json")
        written += plot_tuning(study, folder)
    return written


# -- learning-rate range test -------------------------------------------------------------------
@dataclass
class LRFinderResult:
    lrs: list
    losses: list
    suggestion: float

    def plot(self, path) -> None:
        from .results.plot import plot_lr_finder

        plot_lr_finder(self, path)


def lr_find(model, x=None, y=None, *, data=None, start_lr: float = 1e-6, end_lr: float = 10.0, steps: int = 100,
            optimizer: str = "adam", **fit_options) -> LRFinderResult:
    """Learning-rate range test: train with the learning rate growing exponentially from
    ``start_lr`` to ``end_lr`` over ``steps`` epochs, stop once the loss explodes, and
    suggest the rate where the (smoothed) loss falls fastest.

    >>> import numpy as np, gradfit as gf
    >>> x = np.linspace(0, 1, 50)
    >>> r = gf.lr_find("a*x + b", x=x, y=3 * x - 1, steps=60)
    >>> 1e-6 < r.suggestion < 10
    True
    """
    import numpy as np

    from .fitting.fit import fit
    from .callbacks import Callback

    if not 0 < start_lr < end_lr:
        raise ConfigError("need 0 < start_lr < end_lr")
    gamma = (end_lr / start_lr) ** (1.0 / steps)

    class Explode(Callback):
        best = math.inf

        def on_epoch_end(self, epoch, logs):
            loss = logs["train_loss"]
            self.best = min(self.best, loss)
            return loss > 4 * self.best

    opts = dict(fit_options, progress=False)
    r = fit(model, x, y, data=data, optimizer=optimizer, lr=start_lr, epochs=steps,
            schedule={"name": "exponential", "gamma": gamma}, callbacks=[Explode()], **opts)
    losses = list(r.history["train_loss"])
    lrs = list(r.history["lr"])[: len(losses)]
    if len(losses) < 4:
        raise ConfigError("the loss exploded at once; lower start_lr")
    smooth = np.array(losses, dtype=float)
    for i in range(1, len(smooth)):  # exponential moving average, as fastai does
        smooth[i] = 0.8 * smooth[i - 1] + 0.2 * smooth[i]
    logl = np.log(np.maximum(smooth, 1e-300))
    slope = np.gradient(logl, np.log(lrs))
    upto = int(np.argmin(smooth)) + 1
    i = int(np.argmin(slope[:upto])) if upto > 1 else 0
    return LRFinderResult(lrs, losses, float(lrs[i]))
