"""Worker processes of one search (``gradfit tune --workers N``), supervised until the study
holds the trials asked for.

The supervisor starts N workers, each with its share of the trials, on one shared storage.
It then watches them:

- a worker killed by a signal (SIGKILL, the OOM killer, a stray SIGTERM) leaves the trial it
  was running RUNNING: the supervisor marks it FAIL, as lost (it does not count, see
  :func:`.study.counted_trials`), and starts a worker for the trials the dead one still owed;
  once every worker has ended, any shortfall gets one more worker. So ``trials`` is the count
  that ends COMPLETE, PRUNED or FAIL by its own settings; replacements are capped at
  ``trials`` so a worker that dies on every trial cannot loop forever.
- a worker that exits 2 stopped on a setting error (see :func:`gradfit.tune`): the others are
  stopped too, and the error is returned for the caller to raise.
- SIGINT or SIGTERM to the supervisor is forwarded to every worker (their trials end FAIL, as
  lost); the supervisor waits for them and returns the signal, so the caller writes outputs
  from what completed and exits 130/143. A second signal, or workers still running
  :data:`GRACE` seconds after the first, kills them.

Workers stay in the supervisor's process group, so a terminal's Ctrl-C and job control reach
them as they reach any pipeline; a worker ignores signals after its first (see
``gradfit.cli.tune``), so the forwarded copy does no harm.

A supervisor that dies without forwarding anything (SIGKILL, the OOM killer) must not leave
orphans running every trial: on Linux each worker asks the kernel for SIGTERM when its parent
dies (``prctl(PR_SET_PDEATHSIG)``), and stops as it would on a forwarded SIGTERM. Elsewhere
the orphans run on (their trials still land in the study).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .progress import TrialProgress
from .study import LOST_ATTR, best_value, counted_trials, fail_dead_trials, mark_lost

__all__ = ["run_workers", "WorkersOutcome", "split_trials", "GRACE"]

#: seconds the workers get to stop after a forwarded signal before they are killed
GRACE = 20.0
_POLL = 0.1  # seconds between looks at the worker processes
_LOOK = 0.5  # seconds between reads of the study for the progress display


@dataclass
class WorkersOutcome:
    """What a supervised run ended with: ``signum`` (the SIGINT/SIGTERM that stopped it, or
    None), ``setting_error`` (a worker's one-line error when it stopped on its settings),
    ``errors`` (one line per worker that failed otherwise), ``lost`` (trials failed with their
    worker and run again) and ``started`` (worker processes started, replacements included)."""

    signum: int | None = None
    setting_error: str | None = None
    errors: list = field(default_factory=list)
    lost: int = 0
    started: int = 0


def split_trials(trials: int, workers: int) -> list:
    """Shares of ``trials`` over at most ``workers`` workers, as even as integers allow."""
    shares = [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]
    return [n for n in shares if n > 0]


def run_workers(study, command: Callable[[int, int, int], list], trials: int, workers: int, *,
                progress: TrialProgress | None = None) -> WorkersOutcome:
    """Run worker processes until ``study`` holds ``trials`` more counted trials.

    Parameters
    ----------
    study : the shared optuna study (its storage must be visible to the workers).
    command : ``command(n, index, goal)`` -> the argv of a worker that adds ``n`` trials and
        stops once the study counts ``goal``; ``index`` numbers the workers started (seeds).
    trials, workers : trials asked for, and worker processes at a time.
    progress : a display to update with the trials done and the best value, or None.

    Returns
    -------
    WorkersOutcome
    """
    pool = _Pool(study, command, trials)
    forward = threading.current_thread() is threading.main_thread()
    saved = {}
    if forward:  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, pool.on_signal)
    try:
        for n in split_trials(trials, workers):
            pool.start(n)
        pool.supervise(progress)
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)
        pool.kill_all()  # only reached with live workers when something above failed
        if progress is not None:
            progress.close()
    return pool.outcome


class _Worker:
    def __init__(self, proc: subprocess.Popen, share: int, log):
        self.proc, self.share, self.log = proc, share, log

    def error_line(self) -> str:
        """The worker's last stderr line (its one-line error)."""
        self.log.seek(0)
        lines = [ln.strip() for ln in self.log.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[-1][-300:] if lines else "no message"


class _Pool:
    def __init__(self, study, command, trials: int):
        self.study, self.command, self.trials = study, command, trials
        self.before = {t.number for t in study.get_trials(deepcopy=False)}
        self.goal = counted_trials(study) + trials
        self.live: list = []
        self.pids: list = []
        self.outcome = WorkersOutcome()
        self.stop_at: float | None = None  # when the workers were asked to stop
        self.kill_sent = False
        self.replacements = 0  # workers started for dead ones; at most ``trials``

    # -- processes --------------------------------------------------------------------------------
    def start(self, n: int) -> None:
        argv = self.command(n, self.outcome.started, self.goal)
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=dict(os.environ),
                                preexec_fn=_die_with_parent())
        self.live.append(_Worker(proc, n, log))
        self.pids.append(proc.pid)
        self.outcome.started += 1
        if self.outcome.signum is not None:  # a signal arrived while it was starting
            proc.send_signal(self.outcome.signum)

    def on_signal(self, signum, frame) -> None:
        if self.outcome.signum is None:
            self.outcome.signum = signum
            self.stop(signum)
        else:
            self.kill_all()  # a second signal: do not wait

    def stop(self, signum: int) -> None:
        self.stop_at = time.monotonic()
        for w in list(self.live):
            _send(w.proc, signum)

    def kill_all(self) -> None:
        self.kill_sent = True
        for w in list(self.live):
            _send(w.proc, signal.SIGKILL)

    # -- the loop ---------------------------------------------------------------------------------
    def supervise(self, progress) -> None:
        looked = 0.0
        while True:
            for w in [w for w in self.live if w.proc.poll() is not None]:
                self.live.remove(w)
                try:
                    self.ended(w)
                finally:
                    w.log.close()
            if not self.live and not self.refill():
                break
            if self.stop_at is not None and not self.kill_sent and time.monotonic() - self.stop_at > GRACE:
                self.kill_all()
            if progress is not None and time.monotonic() - looked > _LOOK:
                looked = time.monotonic()
                progress.update(self.done(), best_value(self.study))
            time.sleep(_POLL)
        if progress is not None:
            progress.update(self.done(), best_value(self.study))

    def stopping(self) -> bool:
        return self.stop_at is not None

    def ended(self, w: _Worker) -> None:
        rc, pid = w.proc.returncode, w.proc.pid
        by_signal = rc < 0 or rc in (128 + signal.SIGINT, 128 + signal.SIGTERM)
        if rc == 0:
            return
        if self.stopping():
            fail_dead_trials(self.study, [pid], "was stopped")
            return
        if by_signal:
            self.outcome.lost += fail_dead_trials(self.study, [pid], _how(rc))
            missing = w.share - self.counted_of(pid)
            if missing > 0 and self.replacements < self.trials:
                self.replacements += 1
                self.start(missing)
            elif missing > 0 and not self.outcome.errors:
                self.outcome.errors.append(f"workers died {self.replacements + 1} times ({_how(rc)}); "
                                           f"no more were started, so the study is short of the trials asked for")
            return
        self.outcome.lost += fail_dead_trials(self.study, [pid], f"exited with {rc}")
        if rc == 2:  # a setting error: every worker would meet it again
            self.outcome.setting_error = w.error_line().removeprefix("gradfit tune: error: ")
            self.stop(signal.SIGTERM)
        else:
            self.outcome.errors.append(f"a worker exited with {rc}: {w.error_line()}")

    def refill(self) -> bool:
        """With every worker ended: fail what they left running and start one worker for any
        shortfall. True when one was started."""
        self.outcome.lost += fail_dead_trials(self.study, self.pids, "ended without finishing it")
        self.outcome.lost += self.fail_unclaimed()
        if self.stopping() or self.outcome.errors:
            return False
        shortfall = self.goal - counted_trials(self.study)
        if shortfall <= 0 or self.replacements >= self.trials:
            return False
        self.replacements += 1
        self.start(shortfall)
        return True

    def fail_unclaimed(self) -> int:
        """Fail the trials of this run still RUNNING without a pid: a worker that died between
        creating a trial and starting it (every worker has ended when this is called)."""
        from optuna.trial import TrialState

        n = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number not in self.before and "pid" not in t.user_attrs:
                n += mark_lost(self.study, t, "its worker ended before the trial began")
        return n

    def counted_of(self, pid: int) -> int:
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.user_attrs.get("pid") == pid and not t.user_attrs.get(LOST_ATTR))

    def done(self) -> int:
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.number not in self.before and t.state.is_finished() and not t.user_attrs.get(LOST_ATTR))


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the worker SIGTERM when this process dies
    (Linux; None elsewhere or when libc cannot be loaded).

    The signal follows the *thread* that started the worker: the supervisor starts every worker
    from the thread that runs :func:`run_workers`, which outlives them. A parent that died
    between fork and prctl has already passed its death by, so the child compares its parent
    with the expected one and exits instead of running orphaned. preexec_fn is not safe with
    threads that hold locks across fork; the function only calls prctl, getppid and _exit,
    and libc is loaded here, before the fork.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        # prctl is variadic and reads unsigned longs: pass them as such, not as C ints
        prctl(ctypes.c_int(_PR_SET_PDEATHSIG), *(ctypes.c_ulong(v) for v in (int(signal.SIGTERM), 0, 0, 0)))
        if os.getppid() != parent:  # the parent is gone already: do not start orphaned
            os._exit(128 + int(signal.SIGTERM))

    return preexec


def _send(proc: subprocess.Popen, signum: int) -> None:
    try:
        proc.send_signal(signum)
    except ProcessLookupError:  # it ended meanwhile
        pass


def _how(rc: int) -> str:
    signum = -rc if rc < 0 else rc - 128
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return f"was killed by {name}" if rc < 0 else f"was stopped by {name}"
