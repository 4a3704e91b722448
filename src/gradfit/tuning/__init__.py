"""Hyperparameter search on Optuna: ``tune`` fits the model once per trial with settings drawn
from a search space, prunes hopeless trials from their validation loss during training,
and returns the best configuration, its fit and the trial table.

Studies live in a storage several workers can share: Optuna's journal file (an append-only
log with file locks, safe for parallel writers on one machine; the default next to the
results) or any Optuna storage URL (e.g. postgresql://...). A trial whose worker died is
marked failed (and lost: it does not count towards the trial count) when the next worker on
the same machine starts, or at once by the supervisor of ``gradfit tune --workers N``
(:mod:`.workers`), which starts a worker for the missing trials.

Every value a trial could draw is checked before the first trial (:func:`.space.check_space`),
a resumed study must have the space it was created with (:func:`.study.check_study_space`),
and a trial that fails on a setting stops the search with that error instead of failing
silently.
"""

from __future__ import annotations

import math
import os
import socket
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError, FitError, GradfitError, require, warn_user
from .space import check_space, decode_choice, encode_choice, fit_keywords, parse_space, parse_space_text, space_text
from .progress import TrialProgress
from .study import (LOST_ATTR, best_value, check_study_space, counted_trials, fail_dead_trials,
                    failed_trials_warning, open_study, trial_rows, write_outputs)

__all__ = ["tune", "run_trials", "SearchInterrupted", "TuneResult", "shown_options", "parse_space", "parse_space_text", "open_study", "lr_find",
           "LRFinderResult", "prepare", "write_outputs", "fail_dead_trials", "check_study_space", "space_text",
           "DEFAULT_VAL_FRACTION"]

#: the validation split of tune's default metric "val_loss" when the caller sets none
DEFAULT_VAL_FRACTION = 0.2


@dataclass
class TuneResult:
    """What :func:`tune` returns: ``best_params`` (search name -> value, ``hidden`` as a tuple of
    widths), ``best_value`` (the metric), ``best_fit`` (the best configuration fitted again),
    ``trials`` (one row per trial: number, state, value, param_NAME, epochs, error),
    ``study_name``, ``storage`` and ``val_fraction`` (the split the trials held out), ``metric``,
    ``space`` (in the command line's syntax) and ``fit_options`` (the fixed fit options every trial
    shared, as :func:`shown_options` lists them)."""

    best_params: dict
    best_value: float
    best_fit: object
    trials: list = field(default_factory=list)  # one dict per trial: number, state, value, params
    study_name: str = ""
    storage: str | None = None
    #: the validation split the trials used (DEFAULT_VAL_FRACTION when none was given)
    val_fraction: float = 0.0
    metric: str = "val_loss"
    space: str = ""
    fit_options: dict = field(default_factory=dict)

    def to_pandas(self):
        """The trial table as a pandas DataFrame (needs pandas: ``pip install "gradfit[pandas]"``)."""
        pd = require("pandas", extra="pandas", feature="TuneResult.to_pandas")

        return pd.DataFrame(self.trials)

    def __repr__(self) -> str:
        """One line: the best value and parameters, the trial counts by state."""
        from ..results.display import tune_repr

        return tune_repr(self)

    def _repr_html_(self) -> str:
        from ..results.display import tune_html

        return tune_html(self)

    def to_html(self, path, x=None, y=None, *, title: str | None = None) -> None:
        """Write a self-contained HTML report atomically: best trial, trial table and the best
        fit (with its data plot when ``x`` and ``y`` are passed)."""
        from ..results.html_report import tune_report, write_report

        settings = {"study": self.study_name, "storage": self.storage, "metric": self.metric, "space": self.space,
                    "val_fraction": self.val_fraction, "fit options": self.fit_options}
        write_report(path, tune_report(self.best_params, self.best_value, self.trials, best_fit=self.best_fit, x=x, y=y,
                                       settings=settings, title=title))


def prepare(model, space: Mapping, *, metric: str = "val_loss", trials: int = 1, x=None, y=None, data=None,
            **fit_options) -> tuple[dict, dict]:
    """Check a search before any trial: the metric, the trial count, the space (names, ranges,
    and every value a trial could draw, against the options' own validation) and the fixed fit
    options. Returns ``(parsed space, fit keywords shared by every trial)``; with metric
    "val_loss" and no ``val_fraction`` given, the trials hold out DEFAULT_VAL_FRACTION (0.2).

    Raises
    ------
    ConfigError
        naming the bad setting, before anything runs.
    """
    if metric not in ("val_loss", "loss"):
        raise ConfigError(f"metric must be 'val_loss' or 'loss', got {metric!r}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials must be an integer >= 1, got {trials!r}")
    parsed = parse_space(space)
    base = dict(fit_options, progress=False)
    if metric == "val_loss" and base.get("val_fraction") is None:
        base["val_fraction"] = DEFAULT_VAL_FRACTION
    check_space(model, base, parsed, metric, x=x, y=y, data=data)
    return parsed, base


def tune(model, x=None, y=None, *, data=None, space: Mapping, trials: int = 50, metric: str = "val_loss",
         storage: str | None = None, study: str | None = None, workers: int = 1, seed: int = 0,
         max_total: int | None = None, prune: bool = True, progress: bool | None = None,
         **fit_options) -> TuneResult:
    """Search ``space`` for the fit settings that minimise ``metric`` ("val_loss" or "loss").

    Parameters
    ----------
    model, x, y, data : as for :func:`gradfit.fit`.
    space : name -> ``("log" | "float" | "int", low, high)`` or a list of choices; see
        :func:`gradfit.tuning.space.parse_space`. ``hidden`` choices are layer widths: 32 is
        one layer of 32, ``(32, 32)`` or ``"32-32"`` two.
    trials : trials to add to the study (>= 1).
    metric : "val_loss" (default; without ``val_fraction`` the trials hold out 20% of the rows,
        ``TuneResult.val_fraction`` says which share) or "loss" (the training loss).
    storage, study : an Optuna journal file or storage URL, and the study name; an existing study
        is resumed, and must have been created with the same space.
    workers, seed, max_total, prune : threads, sampler seed, the study's total trial count
        (shared by worker processes), and median pruning on the metric.
    progress : a transient display of the trials done and the best value so far on stderr;
        None (default): only when stderr is a terminal, and only once the search has run
        ``gradfit.callbacks.PROGRESS_DELAY`` seconds. The trials' own fits draw no bar.
    **fit_options : fixed keyword arguments of :func:`gradfit.fit` for every trial.

    Returns
    -------
    TuneResult : best parameters and value, the best configuration refitted, the trial table.

    Raises
    ------
    ConfigError
        Before any trial: an unknown search name, a malformed range, a value a trial could draw
        that its option refuses, metric "val_loss" with val_fraction=0, or a resumed study
        with another space. During the search: a trial that fails on its settings (a
        ConfigError, ModelError or DataError) stops the search with that error; no trial
        completing is a ConfigError too.

    Examples
    --------
    >>> import numpy as np, gradfit as gf
    >>> x = np.linspace(0, 1, 40); y = 2 * x + 1
    >>> r = gf.tune("a*x + b", x=x, y=y, space={"lr": ("log", 1e-3, 1e-1)}, trials=4, optimizer="adam",
    ...             epochs=50, val_fraction=0.25)
    >>> len(r.trials), sorted(r.best_params)
    (4, ['lr'])
    """
    st, parsed, base = _search(model, x, y, data, space, trials, metric, storage, study, workers, seed, max_total,
                               prune, progress, fit_options)
    from optuna.trial import TrialState

    from ..fitting.fit import fit

    if not st.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ConfigError("no trial completed (every trial diverged, was pruned or failed); "
                          "narrow the ranges, lower lr or check the fit options")
    best = st.best_trial
    best_values = _drawn(best.params, parsed)
    best_fit = fit(model, x, y, data=data, **fit_keywords(base, best_values))
    return TuneResult(best_values, float(best.value), best_fit, trial_rows(st), st.study_name,
                      storage if isinstance(storage, str) else None, float(base.get("val_fraction") or 0.0),
                      metric=metric, space=space_text(parsed), fit_options=shown_options(base))


def shown_options(options: Mapping) -> dict:
    """The fixed fit options of a search as a report shows them: every option that was given a
    value (None and empty ones left out), JSON data only; data, starting arrays, callbacks and
    the progress display are not settings and are left out."""
    from ..fitting.keywords import FIT_KEYWORDS

    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return True
        if isinstance(v, (list, tuple)):
            return all(map(plain, v))
        return isinstance(v, Mapping) and all(isinstance(k, str) and plain(w) for k, w in v.items())

    keep = (set(FIT_KEYWORDS) | {"init", "bounds", "fixed", "tie"}) - {"progress"}  # a display, not a setting
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(options.items())
            if k in keep and v is not None and v != () and v != {} and v != [] and plain(v)}


class SearchInterrupted(KeyboardInterrupt):
    """:func:`run_trials` stopped because its ``stop`` asked: ``signum`` is what ``stop``
    returned (a signal number). A KeyboardInterrupt, so Optuna fails the running trial and
    lets it through."""

    def __init__(self, signum):
        super().__init__(f"interrupted{_signal_words(signum)}")
        self.signum = signum


def run_trials(model, x=None, y=None, *, data=None, space: Mapping, trials: int = 50, metric: str = "val_loss",
               storage: str | None = None, study: str | None = None, workers: int = 1, seed: int = 0,
               max_total: int | None = None, prune: bool = True, progress: bool | None = None,
               stop: Callable[[], object] | None = None, **fit_options):
    """The search of :func:`tune` without its refit of the best configuration: add ``trials``
    trials to the study and return it (an ``optuna.Study``; it may hold no complete trial).
    Each trial records its process id and host, so a supervisor can tell which trials a dead
    worker left running. ``max_total`` caps the study's trial count (lost trials of dead
    workers not counted, see :func:`.study.counted_trials`): the share of one of several worker
    processes. ``stop``: called at every epoch (or iteration) of a trial's fit and after each
    trial; once it returns something true (the CLI's stop signal), the running trial fails as
    lost and :class:`SearchInterrupted` is raised. Otherwise the same parameters and errors as
    :func:`tune`.
    """
    return _search(model, x, y, data, space, trials, metric, storage, study, workers, seed, max_total, prune,
                   progress, fit_options, stop)[0]


def _search(model, x, y, data, space, trials, metric, storage, study, workers, seed, max_total, prune, progress,
            fit_options, stop=None):
    """run_trials -> (study, parsed space, the fit keywords shared by every trial)."""
    optuna = require("optuna", extra="tune", feature="gf.tune")

    from ..callbacks import Callback, wants_progress
    from ..fitting.fit import fit

    parsed, base = prepare(model, space, metric=metric, trials=trials, x=x, y=y, data=data, **fit_options)
    st = open_study(study, storage, seed, prune=prune)
    check_study_space(st, parsed, f" in {storage}" if isinstance(storage, str) else "")
    fail_dead_trials(st)
    before = {t.number for t in st.get_trials(deepcopy=False)}
    counted = counted_trials(st)
    # several processes on one study share one target, so the study ends with exactly it
    target = max_total if max_total is not None else counted + trials
    setting_errors: list = []

    class Pruning(Callback):
        def __init__(self, trial):
            self.trial = trial
            self.pruned = False

        def on_epoch_end(self, epoch, logs):
            if stop is not None and stop():
                raise SearchInterrupted(stop())
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
        keywords = fit_keywords(base, values)
        pruning = Pruning(trial)
        callbacks = [*keywords.pop("callbacks", ()), pruning]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a trial's overfitting is what the search is for
                r = fit(model, x, y, data=data, callbacks=callbacks, **keywords)
        except KeyboardInterrupt as interrupt:  # Ctrl-C, or stop() asked
            trial.set_user_attr("error", f"interrupted{_signal_words(getattr(interrupt, 'signum', None))}")
            trial.set_user_attr(LOST_ATTR, True)  # not its settings' fault: a rerun runs it again
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            if isinstance(exc, GradfitError) and not isinstance(exc, FitError):
                setting_errors.append((trial.number, values, exc))  # the same settings would fail again
                trial.study.stop()
            raise
        trial.set_user_attr("epochs", r.epochs_run)
        if pruning.pruned:
            raise optuna.TrialPruned()
        value = r.val_loss if metric == "val_loss" else r.loss
        if value is None or not math.isfinite(value):
            raise optuna.TrialPruned()  # diverged: no usable value, tell the sampler to avoid it
        return value

    n_trials = min(trials, max(0, target - counted))
    bar = TrialProgress(n_trials) if wants_progress(progress) else None

    def after_trial(study, trial):
        if counted_trials(study) >= target or (stop is not None and stop()):
            study.stop()
        if bar is not None:
            finished = [t for t in study.get_trials(deepcopy=False) if t.number not in before and t.state.is_finished()]
            bar.update(len(finished), best_value(study))

    try:
        st.optimize(objective, n_trials=n_trials, n_jobs=max(1, int(workers)), callbacks=[after_trial],
                    catch=(Exception,))
    finally:
        if bar is not None:
            bar.close()
    if stop is not None and stop():  # it came between trials: the last trial ended by itself
        raise SearchInterrupted(stop())
    if setting_errors:
        number, values, exc = setting_errors[0]
        raise type(exc)(f"trial {number} ({space_text({k: ('choice', [v]) for k, v in values.items()})}) "
                        f"failed, so the search stopped: {exc}")
    warning = failed_trials_warning(st, before)
    if warning:
        warn_user(warning)
    return st, parsed, base


def _signal_words(signum) -> str:
    import signal

    try:
        return f" by {signal.Signals(signum).name}"
    except ValueError:
        return ""


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
            label = trial.suggest_categorical(name, [encode_choice(v) for v in spec[1]])
            values[name] = decode_choice(spec[1], label)
    return values


def _drawn(params: dict, space: dict) -> dict:
    """A trial's stored params as the values the fit got (choice labels decoded)."""
    return {k: decode_choice(space[k][1], v) if k in space and space[k][0] == "choice" else v
            for k, v in params.items()}


# -- learning-rate range test -------------------------------------------------------------------
@dataclass
class LRFinderResult:
    lrs: list
    losses: list
    suggestion: float

    def plot(self, path) -> None:
        from ..results.plot import plot_lr_finder

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

    from ..fitting.fit import fit
    from ..callbacks import Callback

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
