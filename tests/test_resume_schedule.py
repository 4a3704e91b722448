"""Resuming with another epoch count: refused when the learning-rate schedule is sized by the
total epochs (its curve would jump), allowed without a schedule or with one that is not."""

import json

import numpy as np
import pytest
from _cli import cli

import gradfit as gf
from gradfit import ConfigError
from gradfit.callbacks import Callback
from gradfit.train.checkpoint import Checkpointer
from gradfit.train.regularize import sized_by_epochs

RNG = np.random.default_rng(1)
X = RNG.uniform(-1, 1, (120, 2))
Y = np.sin(X).sum(1)
KW = dict(x=X, y=Y, hidden=(8,), optimizer="adam", lr=1e-2, seed=2, progress=False)


class _Crash(Exception):
    pass


class _CrashAfter(Callback):
    """Ends the run with an exception after ``epoch`` (as a killed process would end it)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs):
        if epoch >= self.epoch:
            raise _Crash


def _interrupted(folder, epochs, schedule):
    """A run of ``epochs`` that stopped after epoch 7 with its last checkpoint at epoch 6."""
    with pytest.raises(_Crash):
        gf.fit("mlp", epochs=epochs, schedule=schedule, callbacks=[_CrashAfter(7)],
               checkpoint=Checkpointer(folder, every_epochs=3, every_seconds=None), **KW)
    assert json.loads((folder / "checkpoint.json").read_text())["counters"]["epoch"] == 6


def test_which_schedules_are_sized_by_epochs():
    assert [sized_by_epochs(s) for s in ("cosine", "step", "exponential", "plateau", None)] == [
        True, True, True, False, False]
    # a schedule given its own size no longer depends on the epoch count
    assert not sized_by_epochs({"name": "cosine", "T_max": 30})
    assert not sized_by_epochs({"name": "step", "step_size": 5})
    assert sized_by_epochs({"name": "step", "gamma": 0.5})


def test_cosine_resume_with_other_epochs_is_refused_and_the_original_matches(tmp_path):
    _interrupted(tmp_path, 20, "cosine")
    with pytest.raises(ConfigError, match=r"has 20 epochs .* resume with the original --epochs 20 \(epochs=20\), or "
                                          r"start afresh without --resume"):
        gf.fit("mlp", epochs=30, schedule="cosine", checkpoint=tmp_path, resume=True, **KW)
    # the original count resumes onto the uninterrupted run's curve
    full = gf.fit("mlp", epochs=20, schedule="cosine", **KW)
    res = gf.fit("mlp", epochs=20, schedule="cosine", checkpoint=Checkpointer(tmp_path, every_seconds=None),
                 resume=True, **KW)
    assert res.history["lr"] == full.history["lr"] and len(res.history["lr"]) == 20
    np.testing.assert_array_equal(res.predict(X), full.predict(X))


@pytest.mark.parametrize("schedule", [None, "plateau", {"name": "cosine", "T_max": 20}])
def test_other_epochs_stay_allowed_when_nothing_is_sized_by_them(tmp_path, schedule):
    _interrupted(tmp_path, 20, schedule)
    res = gf.fit("mlp", epochs=12, schedule=schedule, checkpoint=Checkpointer(tmp_path, every_seconds=None),
                 resume=True, **KW)
    assert res.epochs_run == 12 and len(res.history["train_loss"]) == 12


def _csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("x1,x2,y\n" + "".join(f"{a},{b},{c}\n" for (a, b), c in zip(X, Y)))
    return path


def test_cli_cosine_resume_with_new_epochs_exits_2_with_one_line(tmp_path):
    data, out = _csv(tmp_path), tmp_path / "run"
    base = ["fit", data, "mlp", "--x", "x1,x2", "--y", "y", "--hidden", "8", "--no-progress", "--out", out,
            "--checkpoint-every", "3", "--schedule", "cosine"]
    code, _, err = cli(*base, "--epochs", "9")
    assert code == 0, err
    code, _, err = cli(*base, "--epochs", "12", "--resume")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "resume with the original --epochs 9" in lines[0] and "schedule 'cosine'" in lines[0]


def test_cli_resume_with_new_epochs_without_a_schedule_runs(tmp_path):
    data, out = _csv(tmp_path), tmp_path / "run"
    base = ["fit", data, "mlp", "--x", "x1,x2", "--y", "y", "--hidden", "8", "--no-progress", "--out", out,
            "--checkpoint-every", "3", "--json"]
    code, _, err = cli(*base, "--epochs", "9")
    assert code == 0, err
    code, stdout, err = cli(*base, "--epochs", "12", "--resume")
    assert code == 0, err
    assert json.loads(stdout)["epochs_run"] == 12
