"""The one way training talks to the outside world: a small callback protocol.

The loop never prints; log lines and progress bars are callbacks, and so is anything a
user wants to watch or stop on (return True from ``on_epoch_end`` to stop).

A callback has two kinds of hooks:

- the *simple hooks*, which users override: ``on_train_begin(total_epochs)``,
  ``on_epoch_end(epoch, logs)`` (return True to stop; the fit's status is then ``stopped``)
  and ``on_train_end(status, epochs_run)``. Least-squares fits call them once per iteration.
- the *loop hooks* ``before_fit``, ``before_epoch``, ``after_epoch`` and ``after_fit``, called
  by the training loop (``gradfit.train.loop.run_loop``) with its state ``loop``. By default
  they forward to the simple hooks. Callbacks that act on the loop itself (early stopping,
  checkpoints, the convergence test, the divergence guard in ``gradfit.train.callbacks``)
  override them: they read ``loop.epoch``, ``loop.logs``, ``loop.history`` and
  ``loop.objective``, and end training with ``loop.stop(status, message)``.

A callback whose state must survive a checkpoint defines ``state_dict()`` and
``load_state_dict(state)`` (values: JSON-able numbers and lists, tensors or lists of tensors).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .status import Status

__all__ = ["Callback", "LogCallback", "ProgressBar", "ProgressCallback", "ChunkProgress", "format_loss",
           "wants_progress", "PROGRESS_DELAY"]


class Callback:
    """Override any of the simple hooks. ``logs`` holds 'train_loss' and 'val_loss' (None
    without validation)."""

    def on_train_begin(self, total_epochs: int) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict) -> bool | None:
        return None

    def on_train_end(self, status: str, epochs_run: int) -> None:
        pass

    # Loop hooks: what the training loop calls; by default the simple hooks above.

    def before_fit(self, loop) -> None:
        self.on_train_begin(loop.total_epochs)

    def before_epoch(self, loop) -> None:
        pass

    def after_epoch(self, loop) -> None:
        if self.on_epoch_end(loop.epoch, loop.logs):
            loop.stop(Status.STOPPED, f"stopped by a callback at epoch {loop.epoch}")

    def after_fit(self, loop) -> None:
        self.on_train_end(loop.status, loop.epochs_run)

    def after_abort(self, loop) -> None:
        """The run ends with an exception (a stop signal, an error) instead of :meth:`after_fit`:
        release what the callback holds on to (a progress bar), nothing more."""


def format_loss(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


class LogCallback(Callback):
    """Writes 'epoch 500  train 2.93  val 3.10' every ``every`` epochs (and the last one) to
    ``stream`` (stderr when None)."""

    def __init__(self, every: int, stream: TextIO | None = None, unit: str = "epoch"):
        self.every = int(every)
        self.stream = stream
        self.unit = unit
        self._total = 0

    def on_train_begin(self, total_epochs: int) -> None:
        self._total = total_epochs

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.every > 0 and (epoch % self.every == 0 or epoch == self._total):
            line = f"{self.unit} {epoch}  train {format_loss(logs['train_loss'])}"
            if logs.get("val_loss") is not None:
                line += f"  val {format_loss(logs['val_loss'])}"
            print(line, file=self.stream or sys.stderr, flush=True)


#: seconds of work before a progress bar appears: a short fit prints nothing (clean output and
#: logs), a long one shows its bar from then on. Read when a bar is made; tests set it to 0.
PROGRESS_DELAY = 2.0


class ProgressBar:
    """A transient rich progress bar over ``total`` steps (epochs, iterations or fits) on
    ``stream`` (stderr when None); it redraws a few times a second, not at every step.

    Nothing is drawn until :data:`PROGRESS_DELAY` seconds after the bar is made: the bar starts
    at the first :meth:`update` or :meth:`advance` after that (and not at all when that update
    already ends the work), so short fits print nothing. Until then an update costs one clock
    read.

    ``show_loss`` adds a 'loss' column that :meth:`update` fills in. ``eta`` shows the time
    remaining; without it, the time elapsed (for a total that is only an upper bound, such as
    Levenberg-Marquardt's maximum iterations).
    """

    def __init__(self, total: int, description: str = "fitting", stream: TextIO | None = None,
                 show_loss: bool = False, eta: bool = True):
        self.total = int(total)
        self.description = description
        self.stream = stream
        self.show_loss = show_loss
        self.eta = eta
        self.completed = 0
        self.loss: float | None = None
        self._made = time.monotonic()
        self._show_at = self._made + PROGRESS_DELAY
        self._progress = None  # a started rich Progress once the delay has passed
        self._task = None

    @property
    def shown(self) -> bool:
        """Whether the bar has started drawing."""
        return self._progress is not None

    def advance(self, n: int) -> None:
        self.completed += n
        self._draw()

    def update(self, completed: int, loss: float | None = None) -> None:
        self.completed, self.loss = completed, loss
        self._draw()

    def close(self, completed: int | None = None) -> None:
        """Stop drawing (a transient bar leaves nothing behind); ``completed`` is the final
        count when the last update was not (it never starts a bar that has not appeared)."""
        if self._progress is None:
            return
        if completed is not None:
            self.completed = completed
            self._draw()
        self._progress.stop()
        self._progress = None

    def _draw(self) -> None:
        if self._progress is None:
            if time.monotonic() < self._show_at or self.completed >= self.total:
                return
            self._start()
        self._progress.update(self._task, completed=self.completed, loss=format_loss(self.loss))

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        if self.show_loss:
            columns.append(TextColumn("loss {task.fields[loss]}"))
        columns.append(TimeRemainingColumn() if self.eta else TimeElapsedColumn())
        # Console(stderr=True) looks sys.stderr up at each write, so captured streams work too
        console = Console(file=self.stream) if self.stream is not None else Console(stderr=True)
        self._progress = Progress(*columns, console=console, transient=True, refresh_per_second=8)
        self._task = self._progress.add_task(self.description, total=self.total, completed=self.completed,
                                             loss=format_loss(self.loss))
        # the elapsed time counts from the start of the work, not from when the bar appeared
        self._progress.tasks[-1].start_time = self._made
        self._progress.start()


#: fit_many's bar over fits, advanced chunk by chunk: ``ChunkProgress(total).advance(n)``, ``.close()``
ChunkProgress = ProgressBar


class ProgressCallback(Callback):
    """A progress bar over epochs (or iterations) with the current training loss, drawn once
    the fit has run :data:`PROGRESS_DELAY` seconds. ``eta=False`` shows the time elapsed instead
    of the time remaining (for iterations, whose total is only a maximum)."""

    def __init__(self, description: str = "fitting", stream: TextIO | None = None, eta: bool = True):
        self.description = description
        self.stream = stream
        self.eta = eta
        self._bar = None

    def on_train_begin(self, total_epochs: int) -> None:
        self._bar = ProgressBar(total_epochs, self.description, self.stream, show_loss=True, eta=self.eta)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._bar.update(epoch, logs["train_loss"])

    def on_train_end(self, status: str, epochs_run: int) -> None:
        if self._bar is not None:
            self._bar.close(completed=epochs_run)
            self._bar = None

    def after_abort(self, loop) -> None:
        if self._bar is not None:  # a transient bar leaves the terminal as it found it
            self._bar.close()
            self._bar = None


def wants_progress(progress) -> bool:
    """progress=None means: show a bar only when stderr is a terminal."""
    if progress is None:
        return sys.stderr.isatty()  # (asked on every call, ~0.3 us: a cached answer misses a dup2 of fd 2)
    return bool(progress)
