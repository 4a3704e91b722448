"""Optuna studies of :func:`gradfit.tune`: open or resume one in a shared storage, fail the
trials of dead workers (as lost: they are run again), refuse a resumed study whose search space changed, and write the
trial table, best configuration and plots of a study."""

from __future__ import annotations

import json
import math
import os
import socket

from ..errors import ConfigError, MissingDependencyError, require

__all__ = ["open_study", "fail_dead_trials", "mark_lost", "counted_trials", "best_value", "failed_trials_warning",
           "check_study_space", "trial_rows", "write_outputs", "SPACE_ATTR", "LOST_ATTR"]

#: the study's user attribute that records its search space (canonical JSON)
SPACE_ATTR = "gradfit_space"
#: a trial's user attribute: it failed because its process died or was stopped, not because of
#: its settings, so it does not count towards the study's trial count
LOST_ATTR = "lost"


def open_study(study: str | None, storage: str | None, seed: int, direction: str = "minimize", prune: bool = True):
    """Create or load a study; ``storage`` is a journal file path or an Optuna storage URL."""
    optuna = require("optuna", extra="tune", feature="a tuning study")

    # trial failures are counted and reported by tune() in one line each, not as tracebacks
    optuna.logging.set_verbosity(optuna.logging.ERROR)
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
    try:
        return optuna.create_study(study_name=study or "gradfit", storage=store, sampler=sampler, pruner=pruner,
                                   direction=direction, load_if_exists=True)
    except ImportError as exc:  # Optuna's words for a storage URL whose database driver is missing
        if not isinstance(store, str):
            raise
        scheme = store.split("://", 1)[0]
        raise MissingDependencyError(
            f"the storage {scheme}://... needs its database driver, which is not installed ({exc}); for "
            f'postgresql:// pip install "gradfit[tune]" (psycopg), for another database its SQLAlchemy driver') from None


def fail_dead_trials(study, pids=None, reason: str | None = None) -> int:
    """Mark the RUNNING trials of dead worker processes FAIL, as lost; returns how many.

    ``pids=None``: the trials of every process on this machine that is gone. ``pids``: the
    trials of these processes, which the caller knows have ended (it reaped them); ``reason``
    says how (e.g. "killed by SIGKILL"). A lost trial keeps its error in the "error" column
    and does not count towards a study's trial count (:func:`counted_trials`), so the trial
    a dead worker was running is run again.
    """
    from optuna.trial import TrialState

    n = 0
    host = socket.gethostname()
    wanted = None if pids is None else {int(p) for p in pids}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, where = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if pid is None or where != host:
            continue
        if (int(pid) not in wanted) if wanted is not None else _alive(int(pid)):
            continue
        n += mark_lost(study, t, f"its worker (pid {pid}) {reason or 'died'}")
    return n


def mark_lost(study, trial, reason: str) -> bool:
    """Fail one trial that did not end by itself (its process died or was stopped), with
    ``reason`` in its "error" column; False when it had finished already (another worker
    starting at the same time may have failed it)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        # the storage API: a trial of another process, by its id (FrozenTrial has no setter)
        study._storage.set_trial_user_attr(trial._trial_id, "error", reason[:500])
        study._storage.set_trial_user_attr(trial._trial_id, LOST_ATTR, True)
    except UpdateFinishedTrialError:
        return False
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    return True


def counted_trials(study) -> int:
    """The trials that count towards a study's trial count: every trial (running ones too)
    except those lost with their worker (:func:`fail_dead_trials`)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(LOST_ATTR))


def best_value(study) -> float | None:
    """The best (lowest) value of the study's complete trials; None before the first."""
    from optuna.trial import TrialState

    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return min(values) if values else None


def failed_trials_warning(study, before) -> str | None:
    """One line about the trials that failed among those not numbered in ``before`` (the
    study's trials before a run), or None when none did."""
    failed = [t for t in study.get_trials(deepcopy=False) if t.number not in before and t.state.name == "FAIL"]
    if not failed:
        return None
    return (f"{len(failed)} trial(s) failed (see the 'error' column of the trials); "
            f"the first: {failed[0].user_attrs.get('error', 'no message')}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trial_rows(study) -> list:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, "value": t.value if t.value is not None else math.nan}
        row.update({f"param_{k}": v for k, v in t.params.items()})
        row["epochs"] = t.user_attrs.get("epochs")
        if t.user_attrs.get("error"):
            row["error"] = t.user_attrs["error"]
        rows.append(row)
    return rows


def _space_document(space: dict) -> str:
    from .space import encode_choice

    doc = {name: (["choice", [encode_choice(v) for v in dim[1]]] if dim[0] == "choice" else list(dim))
           for name, dim in space.items()}
    return json.dumps(doc, sort_keys=True)


def check_study_space(study, space: dict, where: str = "") -> None:
    """Record ``space`` in a new study, or check that a resumed study was created with it.

    A study without the record (made by an older gradfit) is checked against the search
    distributions of its trials, then given the record.

    Raises
    ------
    ConfigError
        The study was created with another space (one line naming both spaces and what to do).
    """
    from .space import space_text

    stored = study.user_attrs.get(SPACE_ATTR)
    mine = _space_document(space)
    if stored is None:
        _check_trial_distributions(study, space, where)
        study.set_user_attr(SPACE_ATTR, mine)
        return
    if stored != mine:
        from .._files import parse_json

        try:  # the study database is shared: its stored space is read as untrusted text
            old = {name: (("choice", spec[1]) if spec[0] == "choice" else tuple(spec))
                   for name, spec in parse_json(stored).items()}
        except (ValueError, TypeError, AttributeError, KeyError, IndexError):
            raise ConfigError(f"study {study.study_name!r}{where} holds a search space gradfit cannot read; "
                              f"start a new study (another --out or --study; study= or storage= in Python)") from None
        raise ConfigError(f"study {study.study_name!r}{where} was created with the space {space_text(old)}, not "
                          f"{space_text(space)}; resume it with the same space, or start a new study "
                          f"(another --out or --study; study= or storage= in Python)")


def _check_trial_distributions(study, space: dict, where: str) -> None:
    from .space import space_text

    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            dim = space.get(name)
            if dim is None or not _same_distribution(dist, dim):
                raise ConfigError(f"study {study.study_name!r}{where} has trials searched over {name!r} with "
                                  f"{dist!r}, not the space {space_text(space)}; resume it with the same space, or "
                                  f"start a new study (another --out or --study)")


def _same_distribution(dist, dim) -> bool:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from .space import encode_choice

    kind = dim[0]
    if kind == "choice":
        return isinstance(dist, CategoricalDistribution) and list(dist.choices) == [encode_choice(v) for v in dim[1]]
    if kind == "int":
        return isinstance(dist, IntDistribution) and (dist.low, dist.high) == (dim[1], dim[2])
    return (isinstance(dist, FloatDistribution) and dist.log == (kind == "log")
            and (dist.low, dist.high) == (dim[1], dim[2]))


def write_outputs(study, folder) -> list:
    """trials.csv, best.json and the plots of a study, written atomically into ``folder``."""
    from pathlib import Path

    import numpy as np

    from ..data.io import write_csv
    from .._files import atomic_write_text
    from ..results.plot import plot_tuning

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
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
