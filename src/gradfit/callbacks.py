"""The one way training talks to the outside world: a small callback protocol.

The loop never prints; log lines and progress bars are callbacks, and so is anything a
user wants to watch or stop on (return True from ``on_epoch_end`` to stop).
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["Callback", "LogCallback", "ProgressCallback", "format_loss"]


class Callback:
    """Override any of these. ``logs`` holds 'train_loss' and 'val_loss' (None without validation)."""

    def on_train_begin(self, total_epochs: int) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict) -> bool | None:
        return None

    def on_train_end(self, status: str, epochs_run: int) -> None:
        pass


def format_loss(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"


class LogCallback(Callback):
    """Writes 'epoch 500  train 2.93  val 3.10' every ``every`` epochs (and the last one)."""

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


class ProgressCallback(Callback):
    """A rich progress bar on stderr; refreshes a few times a second, not every epoch."""

    def __init__(self, description: str = "fitting"):
        self.description = description
        self._progress = None
        self._task = None

    def on_train_begin(self, total_epochs: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                                  console=Console(stderr=True), transient=True, refresh_per_second=8)
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=total_epochs, loss="-")

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._progress.update(self._task, completed=epoch, loss=format_loss(logs["train_loss"]))

    def on_train_end(self, status: str, epochs_run: int) -> None:
        if self._progress is not None:
            self._progress.stop()


def wants_progress(progress) -> bool:
    """progress=None means: show a bar only when stderr is a terminal."""
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress)


class ChunkProgress:
    """A rich progress bar over fits (fit_many), advanced chunk by chunk."""

    def __init__(self, total: int, description: str = "fitting"):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def close(self) -> None:
        self._progress.stop()
