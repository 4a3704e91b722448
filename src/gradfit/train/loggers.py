"""Loggers: callbacks that record each epoch (or least-squares iteration) outside the process.

- :class:`CSVLogger` appends one row per epoch to a CSV file: epoch, train_loss, val_loss, lr,
  elapsed_s. Each row is written whole and flushed before training goes on, so the file holds
  every finished epoch even when the run is interrupted or killed.
- :class:`TensorBoardLogger` writes the same scalars to TensorBoard event files through
  ``torch.utils.tensorboard.SummaryWriter`` (needs ``pip install "gradfit[tensorboard]"``).

Both follow the callback protocol of :mod:`gradfit.callbacks`: first-order training calls their
loop hooks (the learning rate is read from the run: the schedule's value for the epoch, else
the optimizer's), Levenberg-Marquardt and the direct solve call the simple hooks once per
iteration (no learning rate: that column stays empty).

Examples
--------
>>> import tempfile, pathlib, gradfit as gf
>>> path = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
>>> r = gf.fit("w*x + b", x=[0.0, 1.0, 2.0], y=[1.0, 3.0, 5.0], optimizer="adam", lr=0.1, epochs=3,
...            callbacks=[gf.CSVLogger(path)])
>>> path.read_text().splitlines()[0]
'epoch,train_loss,val_loss,lr,elapsed_s'
>>> len(path.read_text().splitlines())
4
"""

from __future__ import annotations

import abc
import csv
import io
import time
from pathlib import Path

from ..callbacks import Callback
from .._files import unwritable
from ..errors import ConfigError, require
from .distributed import is_writer

__all__ = ["CSVLogger", "TensorBoardLogger", "CSV_COLUMNS"]

#: the columns of a CSVLogger file, in order
CSV_COLUMNS = ("epoch", "train_loss", "val_loss", "lr", "elapsed_s")


class _EpochLogger(Callback, abc.ABC):
    """Maps both kinds of hooks onto ``_begin``, ``_record(epoch, train, val, lr)`` and ``_end``,
    which each logger defines (the file or the event writer)."""

    _started: float | None = None

    # loop hooks: first-order training; under torchrun only rank 0 writes (train/distributed.py)
    def before_fit(self, loop) -> None:
        if is_writer():
            self._start()

    def after_epoch(self, loop) -> None:
        if not is_writer():
            return
        lrs = loop.history.get("lr")  # the schedule's value for this epoch (it has stepped already)
        lr = lrs[-1] if lrs else float(loop.optimizer.param_groups[0]["lr"])
        self._record(loop.epoch, loop.logs["train_loss"], loop.logs.get("val_loss"), lr)

    def after_fit(self, loop) -> None:
        self._end()

    def after_abort(self, loop) -> None:
        self._end()

    # simple hooks: least-squares iterations
    def on_train_begin(self, total_epochs: int) -> None:
        if is_writer():
            self._start()

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if not is_writer():
            return
        self._record(epoch, logs["train_loss"], logs.get("val_loss"), None)

    def on_train_end(self, status: str, epochs_run: int) -> None:
        self._end()

    def _start(self) -> None:
        self._started = time.monotonic()
        self._begin()

    def _elapsed(self) -> float:
        return time.monotonic() - self._started if self._started is not None else 0.0

    @abc.abstractmethod
    def _begin(self) -> None:
        """Defined by each logger."""

    @abc.abstractmethod
    def _record(self, epoch: int, train_loss, val_loss, lr) -> None:
        """Defined by each logger."""

    @abc.abstractmethod
    def _end(self) -> None:
        """Defined by each logger."""


class CSVLogger(_EpochLogger):
    """Append one row per epoch to a CSV file: epoch, train_loss, val_loss, lr, elapsed_s.

    Parameters
    ----------
    path : str or path-like
        The file. Its folder must exist.
    append : bool
        False (default): start the file anew with a header. True: add rows to an existing
        file (a header only if it is empty), e.g. for a run resumed from a checkpoint.

    Notes
    -----
    Each row is one write followed by a flush, so the file always ends with a complete row:
    an interrupted run leaves every epoch it finished. An empty cell means "none" (no
    validation data; no learning rate in a least-squares fit). Floats are written so that
    they read back exactly.
    """

    def __init__(self, path, *, append: bool = False):
        self.path = Path(path)
        self.append = bool(append)
        if self.path.is_dir():
            raise ConfigError(f"CSVLogger: {self.path} is a directory; give a file name such as "
                              f"{self.path / 'log.csv'}")
        self._file = None

    def _begin(self) -> None:
        self._end()
        fresh = not self.append or not self.path.exists() or self.path.stat().st_size == 0
        try:  # the folder is made as every other writer makes it (gradfit._files)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if self.append else "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise unwritable(self.path, exc) from None
        if fresh:
            self._write(CSV_COLUMNS)

    def _record(self, epoch: int, train_loss, val_loss, lr) -> None:
        if self._file is None:  # hooks called without a start (a callback list reused by hand)
            self._start()
        self._write((int(epoch), _cell(train_loss), _cell(val_loss), _cell(lr), f"{self._elapsed():.6f}"))

    def _end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, row) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(row)
        self._file.write(buf.getvalue())  # one whole line per write, then flushed
        self._file.flush()


class TensorBoardLogger(_EpochLogger):
    """Write each epoch's losses and learning rate as TensorBoard scalars.

    Scalars ``loss/train``, ``loss/val`` (with validation data) and ``lr`` (first-order
    training), with the epoch (or iteration) as step, through
    ``torch.utils.tensorboard.SummaryWriter``. View them with ``tensorboard --logdir LOG_DIR``.

    Parameters
    ----------
    log_dir : str or path-like
        Folder of the event files (created if missing).
    hparams : dict, optional
        Hyperparameters (numbers, strings, booleans) recorded at the end of training with the
        final losses as metrics ``hparam/train_loss`` and ``hparam/val_loss``, for TensorBoard's
        HParams tab.

    Raises
    ------
    MissingDependencyError
        The ``tensorboard`` package is not installed: ``pip install "gradfit[tensorboard]"``.
    """

    def __init__(self, log_dir, *, hparams: dict | None = None):
        require("tensorboard", extra="tensorboard", feature="TensorBoardLogger")
        self.log_dir = Path(log_dir)
        self.hparams = dict(hparams) if hparams else None
        self._writer = None
        self._last: dict = {}

    def _begin(self) -> None:
        self._end()
        from torch.utils.tensorboard import SummaryWriter

        try:
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        except OSError as exc:
            raise unwritable(self.log_dir, exc) from None
        self._last = {}

    def _record(self, epoch: int, train_loss, val_loss, lr) -> None:
        if self._writer is None:
            self._start()
        values = {"loss/train": train_loss, "loss/val": val_loss, "lr": lr}
        for tag, value in values.items():
            if value is not None:
                self._writer.add_scalar(tag, float(value), int(epoch))
        self._last = {k: float(v) for k, v in values.items() if v is not None and k.startswith("loss/")}

    def _end(self) -> None:
        if self._writer is None:
            return
        if self.hparams and self._last:
            metrics = {f"hparam/{k.split('/')[1]}_loss": v for k, v in self._last.items()}
            self._writer.add_hparams(self.hparams, metrics, run_name=".")
        self._writer.close()
        self._writer = None


def _cell(value) -> str:
    """A CSV cell: '' for none, else the float's repr (reads back exactly)."""
    return "" if value is None else repr(float(value))
