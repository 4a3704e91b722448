"""CSVLogger and TensorBoardLogger (train/loggers.py): what they write matches the fit's own history."""

import csv
import sys

import numpy as np
import pytest

import gradfit as gf
from gradfit.callbacks import Callback
from gradfit.errors import MissingDependencyError
from gradfit.train.loggers import CSV_COLUMNS

X = np.linspace(0.0, 1.0, 40)
Y = 2.0 * X + 1.0 + 0.05 * np.sin(17 * X)
FIRST_ORDER = dict(optimizer="adam", lr=0.1, epochs=12, val_fraction=0.25, seed=3, schedule="step")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _column(rows, name):
    i = rows[0].index(name)
    return [float(r[i]) if r[i] else None for r in rows[1:]]


def test_csv_logger_rows_are_the_fits_history(tmp_path):
    path = tmp_path / "log.csv"
    r = gf.fit("w*x + b", X, Y, callbacks=[gf.CSVLogger(path)], **FIRST_ORDER)
    rows = _rows(path)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(row[0]) for row in rows[1:]] == list(range(1, 13))
    assert _column(rows, "train_loss") == r.history["train_loss"]  # repr: exact
    assert _column(rows, "val_loss") == r.history["val_loss"]
    # the learning rate each epoch used: the step schedule's, as the history records it
    assert _column(rows, "lr") == pytest.approx(r.history["lr"], rel=1e-15)
    elapsed = _column(rows, "elapsed_s")
    assert all(b >= a >= 0 for a, b in zip(elapsed, elapsed[1:]))


def test_csv_logger_lr_without_a_schedule_is_the_optimizers(tmp_path):
    path = tmp_path / "log.csv"
    gf.fit("w*x + b", X, Y, optimizer="sgd", lr=0.05, epochs=4, callbacks=[gf.CSVLogger(path)])
    rows = _rows(path)
    assert _column(rows, "lr") == [0.05] * 4 and _column(rows, "val_loss") == [None] * 4


def test_csv_logger_records_levenberg_marquardt_iterations(tmp_path):
    path = tmp_path / "lm.csv"
    r = gf.fit("a*exp(-x/tau)", X, 3.0 * np.exp(-X / 0.4), init={"a": 1.0, "tau": 1.0}, optimizer="lm",
               callbacks=[gf.CSVLogger(path)])
    rows = _rows(path)
    # one row per iteration the solver reports; its history also holds the starting loss first
    assert [int(row[0]) for row in rows[1:]] == list(range(1, len(r.history["train_loss"])))
    assert _column(rows, "train_loss") == r.history["train_loss"][1:]
    assert _column(rows, "train_loss")[-1] < 1e-20 and _column(rows, "lr") == [None] * (len(rows) - 1)


class _Interrupt(Callback):
    def on_epoch_end(self, epoch, logs):
        if epoch == 5:
            raise KeyboardInterrupt


def test_an_interrupted_run_leaves_every_finished_epoch(tmp_path):
    path = tmp_path / "log.csv"
    with pytest.raises(KeyboardInterrupt):
        gf.fit("w*x + b", X, Y, optimizer="adam", lr=0.1, epochs=50,
               callbacks=[gf.CSVLogger(path), _Interrupt()])
    text = path.read_text()
    assert text.endswith("\n")
    assert [int(row[0]) for row in _rows(path)[1:]] == [1, 2, 3, 4, 5]


def test_append_continues_a_file_and_writes_one_header(tmp_path):
    path = tmp_path / "log.csv"
    for _ in range(2):
        gf.fit("w*x + b", X, Y, optimizer="adam", lr=0.1, epochs=3, callbacks=[gf.CSVLogger(path, append=True)])
    rows = _rows(path)
    assert rows.count(list(CSV_COLUMNS)) == 1 and [int(r[0]) for r in rows[1:]] == [1, 2, 3, 1, 2, 3]
    gf.fit("w*x + b", X, Y, optimizer="adam", lr=0.1, epochs=2, callbacks=[gf.CSVLogger(path)])
    assert [int(r[0]) for r in _rows(path)[1:]] == [1, 2]  # append=False starts anew


def test_csv_logger_refuses_a_folder(tmp_path):
    with pytest.raises(gf.ConfigError, match="directory"):
        gf.CSVLogger(tmp_path)
    # a missing folder is made, as every other writer makes it
    gf.fit("w*x + b", X, Y, optimizer="adam", epochs=2, callbacks=[gf.CSVLogger(tmp_path / "no" / "l.csv")])
    assert (tmp_path / "no" / "l.csv").read_text().count("\n") == 3  # a header and two epochs


def test_tensorboard_logger_without_tensorboard_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "gradfit\[tensorboard\]"'):
        gf.TensorBoardLogger(tmp_path)


def test_tensorboard_scalars_read_back_as_the_history(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = gf.fit("w*x + b", X, Y, callbacks=[gf.TensorBoardLogger(tmp_path, hparams={"lr": 0.1, "opt": "adam"})],
               **FIRST_ORDER)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss/train", "loss/val", "lr"} <= set(tags)
    for tag, expected in (("loss/train", r.history["train_loss"]), ("loss/val", r.history["val_loss"]),
                          ("lr", r.history["lr"])):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == list(range(1, 13))
        np.testing.assert_allclose([s.value for s in scalars], expected, rtol=1e-6)  # stored as float32
    hparams = [s for s in tags if s.startswith("hparam/")]
    assert sorted(hparams) == ["hparam/train_loss", "hparam/val_loss"]
    assert events.Scalars("hparam/val_loss")[0].value == pytest.approx(r.history["val_loss"][-1], rel=1e-6)
