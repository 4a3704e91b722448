"""The epoch loop: epochs, shuffled minibatches and validation; everything else is a callback.

Minibatches are slices of one seeded on-device permutation per epoch (``x[perm[i:j]]``),
not a per-sample DataLoader: one gather per batch instead of thousands of Python calls.

Divergence, the history, the learning-rate schedule, early stopping, the ``tol`` test and
checkpoints are the callbacks of train/callbacks.py and train/checkpoint.py; :func:`run_loop`
builds the ones its :class:`LoopConfig` asks for and runs them with the user's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..callbacks import Callback
from ..status import Status
from .callbacks import (CONVERGED_WINDOW, DIVERGED_HINT, DivergenceGuard, EarlyStopping, History, LBFGSConvergence,
                        LRSchedule, ToleranceConvergence)

__all__ = ["LoopConfig", "LoopOutcome", "LoopState", "run_loop", "DIVERGED_HINT", "CONVERGED_WINDOW"]


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    batch_size: int | None = None
    seed: int = 0
    tol: float | None = None
    #: (patience, min_delta) for early stopping on validation loss, or None
    early_stopping: tuple | None = None


@dataclass
class LoopOutcome:
    status: Status
    epochs_run: int
    history: dict = field(default_factory=lambda: {"train_loss": [], "val_loss": []})
    message: str = ""
    #: the epoch whose parameters early stopping handed back, or None
    best_epoch: int | None = None


class LoopState:
    """What the loop shows its callbacks, and what they may change.

    Attributes
    ----------
    objective, optimizer : what is trained (train/objective.py) and how.
    generator : the minibatch permutation's ``torch.Generator`` (None for full-batch training).
    callbacks : every callback of the run, in calling order (a checkpoint saves their state).
    total_epochs, epoch : the epochs asked for; the current one (1-based).
    logs : ``{"train_loss": float, "val_loss": float | None}`` of the current epoch.
    history : lists per quantity ('train_loss', 'val_loss', and 'penalty', 'lr' when used).
    epochs_run : epochs completed (a callback may lower it, e.g. for a diverged epoch).
    best_epoch : set by early stopping.
    status, message, stopped : how training ended; set through :meth:`stop`.
    """

    __slots__ = ("objective", "optimizer", "generator", "callbacks", "total_epochs", "epoch", "epochs_run", "logs",
                 "history", "best_epoch", "status", "message", "stopped")

    def __init__(self, objective, optimizer, total_epochs: int, generator=None, callbacks=()):
        self.objective, self.optimizer, self.generator = objective, optimizer, generator
        self.callbacks = list(callbacks)
        self.total_epochs, self.epoch, self.epochs_run = total_epochs, 0, 0
        self.logs: dict = {"train_loss": None, "val_loss": None}
        self.history: dict = {"train_loss": [], "val_loss": []}
        self.best_epoch: int | None = None
        self.status, self.message, self.stopped = Status.MAX_EPOCHS, "", False

    def stop(self, status, message: str) -> None:
        """End training after this epoch with ``status`` (a :class:`Status` or its name)."""
        self.status, self.message, self.stopped = Status(status), message, True


def run_loop(objective, optimizer, config: LoopConfig, callbacks=(), scheduler=None, checkpointer=None,
             resume: tuple | None = None) -> LoopOutcome:
    """Train ``objective`` with ``optimizer`` for up to ``config.epochs`` epochs.

    Each epoch records the training loss (full batch: at the parameters before the step, as
    the classic loop prints it; minibatch: the size-weighted mean of the batch losses) and,
    with validation data, the validation loss after the epoch's updates. Then the callbacks
    run in the order train/callbacks.py lists: divergence guard, history, ``scheduler``,
    early stopping (``config.early_stopping``), the user's ``callbacks``, the ``config.tol``
    test, L-BFGS's own tolerances (full-batch ``torch.optim.LBFGS``) and the ``checkpointer``; the first that stops training ends the run.

    Parameters
    ----------
    objective : ScalarObjective or ModuleObjective (train/objective.py)
    optimizer : torch.optim.Optimizer over ``objective.leaves``
    config : LoopConfig
    callbacks : gradfit.callbacks.Callback objects (user hooks or loop hooks)
    scheduler : a torch learning-rate scheduler, or None
    checkpointer : train/checkpoint.py ``Checkpointer``, or None; saves the complete state when
        it is due and when a stop signal arrives
    resume : (tensors, meta) from ``load_checkpoint``: continue exactly where that run left off

    Returns
    -------
    LoopOutcome : status (:class:`Status`), epochs run, history, message, best epoch.

    Raises
    ------
    Interrupted
        after the checkpointer saved the state because a stop signal arrived.
    """
    import torch

    train = objective.train
    minibatch = config.batch_size is not None and config.batch_size < train.n
    is_lbfgs = isinstance(optimizer, torch.optim.LBFGS)
    generator = torch.Generator(device=train.y.device).manual_seed(config.seed) if minibatch else None
    loop = LoopState(objective, optimizer, config.epochs, generator,
                     _callbacks(config, callbacks, scheduler, checkpointer, is_lbfgs and not minibatch))
    for cb in loop.callbacks:
        cb.before_fit(loop)
    if resume is not None:
        from .checkpoint import restore_state

        restore_state(resume, loop)
    # bound once: the per-epoch cost of a callback is then one call per hook it overrides
    before_epoch = [cb.before_epoch for cb in loop.callbacks if type(cb).before_epoch is not Callback.before_epoch]
    after_epoch = [cb.after_epoch for cb in loop.callbacks]
    # a stop signal is checked between minibatches, so Ctrl-C answers within one batch, not one epoch
    interrupt = _MidEpochStop(checkpointer) if minibatch and checkpointer is not None else None
    for epoch in range(loop.epochs_run + 1, config.epochs + 1):
        if interrupt is not None:
            interrupt.start_epoch(loop)
        loop.epoch = epoch
        for hook in before_epoch:
            hook(loop)
        if minibatch:
            value = _minibatch_epoch(objective, optimizer, train, config.batch_size, generator, is_lbfgs,
                                     None if interrupt is None else interrupt.requested)
            if value is None:  # stopped between two minibatches: the epoch in progress is dropped
                interrupt.stop(loop)
        elif is_lbfgs:
            value = objective.unscale(optimizer.step(objective.closure(optimizer)).detach())
        else:
            value = objective.step(optimizer, train)
        loop.logs = {"train_loss": value.item(),
                     "val_loss": objective.evaluate(objective.val) if objective.val is not None else None}
        loop.epochs_run = epoch
        for hook in after_epoch:
            hook(loop)
            if loop.stopped:
                break
        if loop.stopped:
            break
    for cb in loop.callbacks:
        cb.after_fit(loop)
    return LoopOutcome(status=loop.status, epochs_run=loop.epochs_run, history=loop.history, message=loop.message,
                       best_epoch=loop.best_epoch)


def _callbacks(config: LoopConfig, user: tuple | list, scheduler, checkpointer, lbfgs: bool = False) -> list:
    """The built-in callbacks ``config`` asks for around the user's, in train/callbacks.py's order."""
    cbs = [DivergenceGuard(), History()]
    if scheduler is not None:
        cbs.append(LRSchedule(scheduler))
    if config.early_stopping is not None:
        cbs.append(EarlyStopping(*config.early_stopping))
    cbs.extend(user)
    if config.tol is not None:
        cbs.append(ToleranceConvergence(config.tol))
    if lbfgs:  # full-batch L-BFGS: its own tolerances say when further epochs cannot move
        cbs.append(LBFGSConvergence())
    if checkpointer is not None:
        cbs.append(checkpointer)
    return cbs


def overfitting_signal(train: list, val: list, rise: float = 0.05, min_stretch: int = 20) -> str | None:
    """A message when the validation loss has risen for a sustained stretch (at least
    ``min_stretch`` epochs and a tenth of the run) by more than ``rise`` above its minimum,
    while the training loss kept falling."""
    if len(val) < 2 * min_stretch or len(train) != len(val):
        return None
    best = min(range(len(val)), key=val.__getitem__)
    stretch = len(val) - 1 - best
    if stretch < max(min_stretch, len(val) // 10):
        return None
    if val[-1] > val[best] * (1.0 + rise) and train[-1] < train[best]:
        return (f"validation loss rose {100 * (val[-1] / val[best] - 1):.0f}% over the {stretch} epochs since its "
                f"minimum (epoch {best + 1}) while training loss fell: the model is overfitting; use "
                "early_stopping, a penalty, input_noise or more data")
    return None


class _MidEpochStop:
    """Stops a long minibatch epoch at the next minibatch once a stop signal arrived, and leaves
    a checkpoint that resumes bit-identically.

    The checkpoint cannot hold a state in the middle of an epoch (the permutation and the
    running loss are not saved), so the epoch in progress is dropped and redone on resume. What
    is saved is the state at the end of the last complete epoch: when epochs are slow (the last
    one took at least ``SLOW_EPOCH_S``, or none has run yet in this process) a copy of that
    state is taken before each epoch (its cost is small next to the epoch's); when epochs are
    fast, no copy is taken and the epoch finishes, so the checkpointer saves at its end as it
    always did (the wait is under ``SLOW_EPOCH_S``).
    """

    SLOW_EPOCH_S = 0.5

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self.snapshot = None
        self.last_epoch_s = None
        self._started = None

    def start_epoch(self, loop) -> None:
        import time

        now = time.monotonic()
        if self._started is not None:
            self.last_epoch_s = now - self._started
        self._started = now
        self.snapshot = None
        if self.last_epoch_s is None or self.last_epoch_s >= self.SLOW_EPOCH_S:
            self.snapshot = _copy_state(loop)

    def requested(self) -> bool:
        """True when a stop signal arrived and there is a state to save."""
        return self.checkpointer.signal is not None and self.snapshot is not None

    def stop(self, loop):
        """Save the state of the last complete epoch and raise ``Interrupted``."""
        from .checkpoint import Interrupted

        tensors, meta = self.snapshot
        self.checkpointer.save(tensors, meta)
        raise Interrupted(self.checkpointer.signal, meta["counters"]["epoch"])


def _copy_state(loop):
    """A private copy of ``capture_state(loop)`` (its tensors and lists are the live ones)."""
    import copy

    from .checkpoint import capture_state

    tensors, meta = capture_state(loop)
    return {k: t.detach().clone() for k, t in tensors.items()}, copy.deepcopy(meta)


def _minibatch_epoch(objective, optimizer, train, batch_size, generator, is_lbfgs, stop_requested=None):
    """One epoch over seeded minibatches: the size-weighted mean loss, or None when
    ``stop_requested()`` became true between two minibatches (the epoch is then incomplete)."""
    import torch

    n = train.n
    perm = torch.randperm(n, generator=generator, device=train.y.device)
    total = torch.zeros((), dtype=train.y.dtype, device=train.y.device)
    for start in range(0, n, batch_size):
        if stop_requested is not None and start and stop_requested():
            return None
        idx = perm[start : start + batch_size]
        batch = train.take(idx)
        if is_lbfgs:
            value = objective.unscale(optimizer.step(_batch_closure(objective, optimizer, batch)).detach())
        else:
            value = objective.step(optimizer, batch)
        total += value.detach() * idx.shape[0]
    return total / n


def _batch_closure(objective, optimizer, batch):
    def closure():
        optimizer.zero_grad()
        value = objective.objective(batch)
        value.backward()
        return value

    return closure
