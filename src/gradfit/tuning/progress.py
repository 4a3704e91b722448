"""The progress display of a search: trials done of those asked for and the best value so far.

It behaves like the fits' bar (:class:`gradfit.callbacks.ProgressBar`): transient, on stderr
(or the stream given), and drawn only once the search has run
:data:`gradfit.callbacks.PROGRESS_DELAY` seconds, so a short search prints nothing. Whether to
draw it at all (stderr a terminal, ``--no-progress``, ``--json``) is the caller's choice.
"""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["TrialProgress"]


class TrialProgress:
    """``TrialProgress(total)``, then ``update(done, best)`` after each trial (or each look at a
    shared study), and ``close()``.

    Parameters
    ----------
    total : the trials asked for.
    stream : where to draw; stderr (looked up at each write) when None.
    """

    def __init__(self, total: int, stream: TextIO | None = None):
        from .. import callbacks

        self.total = int(total)
        self.stream = stream
        self.done = 0
        self.best: float | None = None
        self._made = time.monotonic()
        self._show_at = self._made + callbacks.PROGRESS_DELAY  # looked up now: tests set it to 0
        self._progress = None
        self._task = None

    @property
    def shown(self) -> bool:
        """Whether the display has started drawing."""
        return self._progress is not None

    def update(self, done: int, best: float | None) -> None:
        """``done`` trials of this run finished; ``best`` is the study's best value (None
        before a trial completes)."""
        self.done, self.best = int(done), best
        if self._progress is None:
            if time.monotonic() < self._show_at or self.done >= self.total:
                return  # short so far, or finished before it was worth drawing
            self._start()
        self._progress.update(self._task, completed=self.done, best=self._best_text())

    def close(self) -> None:
        """Stop drawing; a transient display leaves nothing behind."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _best_text(self) -> str:
        from ..callbacks import format_loss

        return format_loss(self.best)

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        # Console(stderr=True) looks sys.stderr up at each write, so captured streams work too
        console = Console(file=self.stream) if self.stream is not None else Console(stderr=True)
        self._progress = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("best {task.fields[best]}"), TimeElapsedColumn(),
                                  console=console, transient=True, refresh_per_second=4)
        self._task = self._progress.add_task("trials", total=self.total, completed=self.done,
                                             best=self._best_text())
        self._progress.tasks[-1].start_time = self._made  # elapsed since the search began
        self._progress.start()
