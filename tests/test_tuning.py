"""gradfit tune and lr_find: Optuna search, pruning, shared journal storage, workers, resume."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gradfit as gf
from gradfit import ConfigError

optuna = pytest.importorskip("optuna")
RNG = np.random.default_rng(9)
X = np.linspace(-1, 1, 60)
Y = np.sin(3 * X) + 0.1 * RNG.standard_normal(60)


def test_tune_finds_a_good_configuration():
    r = gf.tune("a*x + b + c*x**3", x=X, y=Y, space={"lr": ("log", 1e-4, 1.0), "optimizer": ["sgd", "adam"]},
                trials=10, epochs=100, val_fraction=0.25, seed=0)
    assert len(r.trials) == 10 and len({t["number"] for t in r.trials}) == 10
    assert set(r.best_params) == {"lr", "optimizer"} and 1e-4 <= r.best_params["lr"] <= 1.0
    assert r.best_value == min(t["value"] for t in r.trials if t["state"] == "COMPLETE")
    assert r.best_fit.val_loss == pytest.approx(r.best_value, rel=1e-5)
    df = r.to_pandas()
    assert {"number", "state", "value", "param_lr", "param_optimizer"} <= set(df.columns)


def test_space_validation():
    with pytest.raises(ConfigError, match="low < high"):
        gf.tune("a*x + b", x=X, y=Y, space={"lr": ("log", 1.0, 0.1)}, trials=1)
    with pytest.raises(ConfigError, match="log range"):
        gf.tune("a*x + b", x=X, y=Y, space={"lr": ("log", 0.0, 0.1)}, trials=1)
    with pytest.raises(ConfigError, match="metric"):
        gf.tune("a*x + b", x=X, y=Y, space={"lr": [0.1]}, trials=1, metric="r2")


def test_bad_fit_options_and_search_names_fail_before_any_trial():
    with pytest.raises(ConfigError, match=r"space 'lrr': 'lrr' is not a fit option \(did you mean 'lr'\?\)"):
        gf.tune("a*x + b", x=X, y=Y, space={"lrr": ("log", 1e-3, 1e-1)}, trials=1)
    with pytest.raises(ConfigError, match=r"epochs must be an integer >= 1, got 0"):
        gf.tune("a*x + b", x=X, y=Y, space={"lr": ("log", 1e-3, 1e-1)}, trials=1, epochs=0)


def test_dead_worker_trials_are_failed_through_the_public_api():
    import socket

    from gradfit.tuning import fail_dead_trials, open_study

    study = open_study(None, None, seed=0)
    trial = study.ask()
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial.set_user_attr("pid", int(done.stdout))
    trial.set_user_attr("host", socket.gethostname())
    alive = study.ask()
    alive.set_user_attr("pid", os.getpid())
    alive.set_user_attr("host", socket.gethostname())
    assert fail_dead_trials(study) == 1
    assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING"]


def test_pruning_saves_epochs_at_equal_best_value():
    space = {"lr": ("log", 1e-5, 1.0), "optimizer": ["sgd", "adam", "adagrad"]}
    kw = dict(x=X, y=Y, space=space, trials=24, epochs=150, val_fraction=0.25, seed=3, hidden=(16,), normalize=True)
    pruned = gf.tune("mlp", prune=True, **kw)
    full = gf.tune("mlp", prune=False, **kw)
    epochs = lambda r: sum(t["epochs"] or 0 for t in r.trials)  # noqa: E731
    assert epochs(pruned) <= 0.7 * epochs(full)
    assert pruned.best_value <= 1.1 * full.best_value


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gradfit", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


@pytest.fixture
def sin_csv(tmp_path):
    p = tmp_path / "sin.csv"
    p.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in zip(X, Y)))
    return p


def test_cli_workers_share_the_study_exactly(sin_csv, tmp_path):
    out = tmp_path / "t"
    common = [sin_csv, "mlp", "--x", "x", "--y", "y", "--space", "lr=log:1e-4:1e-1", "--space", "optimizer=sgd,adam",
              "--space", "epochs=int:20:60", "--hidden", "8", "--normalize", "--val-fraction", "0.25", "--out", out]
    p = _cli("tune", *common, "--trials", 12, "--workers", 4)
    assert p.returncode == 0, p.stderr
    import csv

    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 12 and sorted(int(r["number"]) for r in rows) == list(range(12))
    params = {(r["param_lr"], r["param_optimizer"], r["param_epochs"]) for r in rows}
    assert len(params) == 12  # no trial duplicated across workers
    assert (out / "best.json").exists() and (out / "history.png").stat().st_size > 1000
    p = _cli("tune", *common, "--trials", 3, "--json")  # resume: adds 3
    assert p.returncode == 0, p.stderr
    assert '"trials": 15' in p.stdout


def test_killed_worker_trial_is_failed_and_study_continues(sin_csv, tmp_path):
    out = tmp_path / "k"
    common = [sin_csv, "mlp", "--x", "x", "--y", "y", "--space", "lr=log:1e-4:1e-1", "--hidden", "8",
              "--val-fraction", "0.25", "--out", out]
    worker = subprocess.Popen([sys.executable, "-m", "gradfit", "tune", *map(str, common), "--epochs", "200000",
                               "--trials", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "study.journal"
    deadline = time.time() + 120
    while time.time() < deadline and not (journal.exists() and b"RUNNING" in journal.read_bytes() or
                                          journal.exists() and journal.stat().st_size > 200):
        time.sleep(0.2)
    time.sleep(1.0)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    p = _cli("tune", *common, "--epochs", "30", "--trials", "2", "--json")
    assert p.returncode == 0, p.stderr
    import json

    doc = json.loads(p.stdout)
    assert doc["states"].get("FAIL") == 1 and doc["trials"] == 3
    assert doc["states"].get("COMPLETE", 0) + doc["states"].get("PRUNED", 0) == 2


def test_lr_find(tmp_path):
    r = gf.lr_find("a*x + b", x=X, y=2 * X + 1, steps=80, start_lr=1e-5, end_lr=10)
    assert len(r.lrs) == len(r.losses) and r.lrs[0] == pytest.approx(1e-5)
    assert 1e-4 < r.suggestion < 5
    # the suggested rate trains well
    fit = gf.fit("a*x + b", x=X, y=2 * X + 1, optimizer="adam", lr=r.suggestion, epochs=300, progress=False)
    assert fit.loss < 1e-3
    r.plot(tmp_path / "lr.png")
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"


POSTGRES = os.environ.get("GRADFIT_TEST_POSTGRES")


@pytest.mark.skipif(not POSTGRES, reason="set GRADFIT_TEST_POSTGRES (.ci/run starts a server on loopback)")
def test_postgres_storage_with_four_workers(sin_csv, tmp_path):
    import uuid

    study = f"pg-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "pg"
    p = _cli("tune", sin_csv, "mlp", "--x", "x", "--y", "y", "--space", "lr=log:1e-4:1e-1", "--space",
             "epochs=int:20:60", "--hidden", "8", "--val-fraction", "0.25", "--trials", 8, "--workers", 4,
             "--storage", POSTGRES, "--study", study, "--out", out, "--json")
    assert p.returncode == 0, p.stderr
    loaded = optuna.load_study(study_name=study, storage=POSTGRES)
    numbers = sorted(t.number for t in loaded.trials)
    assert numbers == list(range(8))
    assert len({(t.params["lr"], t.params["epochs"]) for t in loaded.trials}) == 8
