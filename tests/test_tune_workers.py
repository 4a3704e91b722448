"""Supervised tuning workers (gradfit.tuning.workers, ``gradfit tune --workers N``): a worker
killed mid-trial has its trial failed as lost and replaced, so the study ends with the trials
asked for; SIGTERM to the parent stops the workers and writes what completed (exit 143); the
progress display shows trials done and the best value on a terminal."""

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gradfit import callbacks

optuna = pytest.importorskip("optuna")

X = np.linspace(-1, 1, 60)
Y = np.sin(3 * X) + 0.1 * np.random.default_rng(9).standard_normal(60)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


@pytest.fixture
def sin_csv(tmp_path):
    p = tmp_path / "sin.csv"
    p.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in zip(X, Y)))
    return p


# -- progress -------------------------------------------------------------------------------------
def test_progress_shows_trials_done_and_best_value(monkeypatch):
    from gradfit.tuning.progress import TrialProgress

    monkeypatch.setattr(callbacks, "PROGRESS_DELAY", 0.0)
    term = _Terminal()
    bar = TrialProgress(24, stream=term)
    bar.update(7, 0.0123456)
    assert bar.shown
    bar.close()
    text = _plain(term.getvalue())
    assert "7/24" in text and "best 0.01235" in text


def test_progress_waits_for_long_searches_and_stays_off_pipes(monkeypatch):
    from gradfit.tuning.progress import TrialProgress

    term = _Terminal()
    bar = TrialProgress(24, stream=term)  # the default delay: a search this short draws nothing
    bar.update(3, 0.5)
    bar.close()
    assert term.getvalue() == "" and not bar.shown


def test_cli_single_process_progress_on_a_terminal_and_not_with_no_progress(monkeypatch, sin_csv, tmp_path):
    monkeypatch.setattr(callbacks, "PROGRESS_DELAY", 0.0)
    argv = ["tune", sin_csv, "y ~ a*x + b", "--space", "lr=log:1e-3:1e-1", "--epochs", "20", "--trials", "3",
            "--val-fraction", "0.25"]
    from gradfit.cli.main import main

    for extra, shown in (([], True), (["--no-progress"], False)):
        term = _Terminal()
        code = main([str(a) for a in [*argv, "--out", tmp_path / f"o{len(extra)}", *extra]], io.StringIO(), term)
        assert code == 0
        text = _plain(term.getvalue())
        assert ("/3" in text and "best" in text) == shown, text


# -- the supervisor, with workers that import optuna only (fast) ----------------------------------
_FAKE_WORKER = """
import os, signal, socket, sys
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

path, n, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="gradfit", storage=JournalStorage(JournalFileBackend(path)))

def objective(trial):
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("host", socket.gethostname())
    x = trial.suggest_float("x", -1, 1)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return x * x
    os.kill(os.getpid(), signal.SIGKILL)  # the run's first trial dies with its worker

study.optimize(objective, n_trials=n)
"""


def test_supervisor_fails_a_killed_workers_trial_and_replaces_it(tmp_path):
    from gradfit.tuning import open_study
    from gradfit.tuning.study import counted_trials
    from gradfit.tuning.workers import run_workers

    journal = str(tmp_path / "study.journal")
    study = open_study(None, journal, 0)
    calls = []

    def command(n, index, goal):
        calls.append((n, index, goal))
        return [sys.executable, "-c", _FAKE_WORKER, journal, str(n), str(tmp_path / "killed-one")]

    outcome = run_workers(study, command, trials=4, workers=2)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 4 and states.count("FAIL") == 1 and len(states) == 5
    failed = [t for t in study.trials if t.state.name == "FAIL"][0]
    assert "SIGKILL" in failed.user_attrs["error"] and failed.user_attrs["lost"] is True
    assert outcome.lost == 1 and outcome.signum is None and not outcome.errors
    # two workers of 2 trials, then one for the 2 the dead worker owed; all stop at a study of 4
    assert sorted(c[0] for c in calls) == [2, 2, 2] and {c[2] for c in calls} == {4}
    assert counted_trials(study) == 4


# -- the CLI, with real workers -------------------------------------------------------------------
def _study_trials(journal):
    from gradfit.tuning import open_study

    return open_study(None, str(journal), 0).get_trials(deepcopy=False) if journal.exists() else []


def _wait_for(predicate, journal, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trials = _study_trials(journal)
        found = predicate(trials)
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("the study never reached the state waited for")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _tune(sin_csv, out, *extra):
    argv = ["tune", sin_csv, "y ~ a*x + b + c*x**3", "--space", "lr=log:1e-3:1e-1", "--val-fraction", "0.25",
            "--out", out, "--json", *extra]
    return subprocess.Popen([sys.executable, "-m", "gradfit", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_cli_worker_killed_mid_trial_study_still_ends_with_the_trials_asked(sin_csv, tmp_path):
    out = tmp_path / "t"
    parent = _tune(sin_csv, out, "--epochs", "1500", "--trials", "4", "--workers", "2")
    running = _wait_for(lambda ts: [t for t in ts if t.state.name == "RUNNING" and "pid" in t.user_attrs],
                        out / "study.journal")
    victim = running[0].user_attrs["pid"]
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = parent.communicate(timeout=600)
    assert parent.returncode == 0, stderr
    doc = json.loads(stdout)
    assert doc["states"].get("COMPLETE", 0) + doc["states"].get("PRUNED", 0) == 4
    rows = list(csv.DictReader((out / "trials.csv").open()))
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert len(failed) == 1 and f"pid {victim}" in failed[0]["error"] and "SIGKILL" in failed[0]["error"]
    assert "1 trial(s) failed" in stderr


def _running(pid):
    """True while ``pid`` runs; a zombie (ended, not yet reaped by whoever adopted it) has ended."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with their parent on Linux only")
def test_cli_parent_killed_by_sigkill_takes_its_workers_along(sin_csv, tmp_path):
    """A supervisor that cannot forward anything (SIGKILL) leaves no orphans running the trials:
    each worker gets SIGTERM from the kernel, ends its trial as lost and exits."""
    out = tmp_path / "t"
    parent = _tune(sin_csv, out, "--optimizer", "adam", "--epochs", "100000", "--trials", "40", "--workers", "2")
    pids = _wait_for(lambda ts: (lambda r: r if len(r) == 2 else None)(
        {t.user_attrs["pid"] for t in ts if t.state.name == "RUNNING" and "pid" in t.user_attrs}),
        out / "study.journal")
    parent.kill()
    parent.communicate(timeout=60)
    deadline = time.monotonic() + 60
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(p) for p in pids)
    trials = _study_trials(out / "study.journal")
    assert len(trials) < 40 and not [t for t in trials if t.state.name == "RUNNING"]
    stopped = [t for t in trials if t.state.name == "FAIL"]
    assert len(stopped) == 2 and all("SIGTERM" in t.user_attrs["error"] and t.user_attrs["lost"] for t in stopped)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_cli_sigterm_stops_the_workers_and_writes_what_completed(sin_csv, tmp_path, workers):
    out = tmp_path / "t"
    parent = _tune(sin_csv, out, "--epochs", "3000", "--trials", "40", "--workers", workers)

    def busy(ts):  # a trial complete, and every worker inside a trial
        running = {t.user_attrs["pid"] for t in ts if t.state.name == "RUNNING" and "pid" in t.user_attrs}
        done = any(t.state.name == "COMPLETE" for t in ts)
        return running if done and len(running) == workers else None

    pids = _wait_for(busy, out / "study.journal")
    parent.send_signal(signal.SIGTERM)
    stdout, stderr = parent.communicate(timeout=120)
    assert parent.returncode == 143, stderr
    assert not any(_alive(p) for p in pids)
    doc = json.loads(stdout)
    assert doc["interrupted"] == "SIGTERM" and doc["states"]["COMPLETE"] >= 1 and "RUNNING" not in doc["states"]
    assert (out / "trials.csv").exists() and (out / "best.json").exists()
    assert "interrupted by SIGTERM" in stderr
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == doc["trials"] < 40 + workers
