"""The training loop's built-in callbacks: each one feature of a first-order fit.

``run_loop`` (train/loop.py) runs them in this order after every epoch, and the first one that
stops training ends the epoch:

1. :class:`DivergenceGuard` — a non-finite training loss restores the epoch's starting parameters;
2. :class:`History` — records the epoch's losses (and the penalty);
3. :class:`LRSchedule` — records the learning rate and steps the schedule;
4. :class:`EarlyStopping` — stops when the validation loss stops improving, keeps the best epoch;
5. the user's callbacks (logging, progress, anything that returns True to stop);
6. :class:`ToleranceConvergence` — the ``tol`` test; :class:`LBFGSConvergence` — L-BFGS's own
   tolerances (full-batch L-BFGS only);
7. the :class:`~gradfit.train.checkpoint.Checkpointer`, last, so that a checkpoint holds every
   other callback's state after the epoch.

Each acts on the loop's state through the loop hooks of :class:`gradfit.callbacks.Callback`;
what a resumed run needs round-trips through ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

import math

from ..callbacks import Callback
from ..status import Status

__all__ = ["DivergenceGuard", "History", "LRSchedule", "EarlyStopping", "ToleranceConvergence",
           "LBFGSConvergence", "DIVERGED_HINT", "CONVERGED_WINDOW"]

DIVERGED_HINT = ("the loss became inf/nan; lower the learning rate (e.g. 10x smaller) "
                 "or normalize the inputs (normalize=True, --normalize)")
#: consecutive epochs of relative change below ``tol`` that count as converged
CONVERGED_WINDOW = 10


class DivergenceGuard(Callback):
    """Stops with status ``diverged`` when an epoch's training loss is inf/NaN, and puts back
    the parameters the epoch started from (the last ones whose loss was finite). The diverged
    epoch does not count in ``epochs_run`` or the history.

    The copies live in the objective (``remember``/``accept``/``restore_good``), so a checkpoint
    saves them with the parameters."""

    def before_epoch(self, loop) -> None:
        loop.objective.remember()

    def after_epoch(self, loop) -> None:
        if math.isfinite(loop.logs["train_loss"]):
            loop.objective.accept()
            return
        loop.objective.restore_good()
        loop.epochs_run = loop.epoch - 1
        loop.stop(Status.DIVERGED, f"diverged at epoch {loop.epoch}: {DIVERGED_HINT}")


class History(Callback):
    """Appends each epoch's training loss, validation loss (with validation data) and penalty
    (with a penalty) to ``loop.history``."""

    def before_fit(self, loop) -> None:
        if loop.objective.penalty is not None:
            loop.history.setdefault("penalty", [])

    def after_epoch(self, loop) -> None:
        history, logs = loop.history, loop.logs
        history["train_loss"].append(logs["train_loss"])
        if logs["val_loss"] is not None:
            history["val_loss"].append(logs["val_loss"])
        if loop.objective.penalty is not None:
            history["penalty"].append(loop.objective.penalty_now())


class LRSchedule(Callback):
    """Records the learning rate of each epoch in ``loop.history['lr']``, then steps the
    torch scheduler (ReduceLROnPlateau on the validation loss, or the training loss
    without validation data)."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def before_fit(self, loop) -> None:
        loop.history.setdefault("lr", [])

    def after_epoch(self, loop) -> None:
        import torch

        loop.history["lr"].append(float(loop.optimizer.param_groups[0]["lr"]))
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            val_loss = loop.logs["val_loss"]
            self.scheduler.step(val_loss if val_loss is not None else loop.logs["train_loss"])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


class EarlyStopping(Callback):
    """Stops with status ``stopped_early`` once the validation loss has not improved by more
    than ``min_delta`` for ``patience`` epochs, and restores the best epoch's parameters.
    A run that ends otherwise (out of epochs, a callback, tol) also hands back the best
    epoch, except after divergence. Without validation data it does nothing.

    Sets ``loop.best_epoch``."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = int(patience), float(min_delta)
        self.best, self.since_best, self.best_epoch, self.best_state = math.inf, 0, None, None

    def after_epoch(self, loop) -> None:
        val_loss = loop.logs["val_loss"]
        if val_loss is None:
            return
        if val_loss < self.best - self.min_delta:
            self.best, self.since_best, self.best_epoch = val_loss, 0, loop.epoch
            self.best_state = loop.objective.snapshot()
            loop.best_epoch = loop.epoch
            return
        self.since_best += 1
        if self.since_best >= self.patience:
            if self.best_state is not None:  # every validation loss so far was NaN
                loop.objective.restore(self.best_state)
            loop.stop(Status.STOPPED_EARLY, f"validation loss did not improve for {self.patience} epochs; "
                                            f"restored epoch {self.best_epoch} (val {self.best:.6g})")

    def after_fit(self, loop) -> None:
        if self.best_state is not None and loop.status not in (Status.STOPPED_EARLY, Status.DIVERGED):
            loop.objective.restore(self.best_state)

    def state_dict(self) -> dict:
        return {"best": self.best, "since_best": self.since_best, "best_epoch": self.best_epoch,
                "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.since_best = float(state["best"]), int(state["since_best"])
        self.best_epoch, self.best_state = state["best_epoch"], state["best_state"]


class ToleranceConvergence(Callback):
    """Stops with status ``converged`` once the relative change of the training loss between
    consecutive epochs has stayed at or below ``tol`` for ``window`` epochs in a row."""

    def __init__(self, tol: float, window: int = CONVERGED_WINDOW):
        self.tol, self.window = float(tol), int(window)
        self.calm, self.previous = 0, None

    def after_epoch(self, loop) -> None:
        loss = loop.logs["train_loss"]
        if self.previous is not None:
            calm = abs(self.previous - loss) <= self.tol * max(abs(loss), 1e-300)
            self.calm = self.calm + 1 if calm else 0
        self.previous = loss
        if self.calm >= self.window:
            loop.stop(Status.CONVERGED, f"relative loss change below tol={self.tol:g} for {self.window} epochs")

    def state_dict(self) -> dict:
        return {"calm": self.calm, "previous": self.previous}

    def load_state_dict(self, state: dict) -> None:
        self.calm, self.previous = int(state["calm"]), state["previous"]


class LBFGSConvergence(Callback):
    """Stops with status ``converged`` when a full-batch ``torch.optim.LBFGS`` epoch ended on
    L-BFGS's own tolerances rather than on its iteration or evaluation budget.

    One epoch is one ``LBFGS.step``: up to ``max_iter`` inner iterations and ``max_eval``
    function evaluations. The step returns early only when the gradient is at most
    ``tolerance_grad`` (max-abs), or when it made no progress: a directional derivative, a
    parameter step or a loss change below ``tolerance_change``. Those are L-BFGS's own
    stationarity tests, so further epochs would repeat the same evaluation without moving;
    without this test a converged L-BFGS fit runs on to ``epochs`` and ends ``max_epochs``.
    The counters compared are torch's own (``state["n_iter"]`` and ``state["func_evals"]``).
    """

    def __init__(self):
        self._start = None

    @staticmethod
    def _counters(optimizer) -> tuple[int, int]:
        state = optimizer.state[optimizer._params[0]] if optimizer._params else {}
        return int(state.get("n_iter", 0)), int(state.get("func_evals", 0))

    def before_epoch(self, loop) -> None:
        self._start = self._counters(loop.optimizer)

    def after_epoch(self, loop) -> None:
        if self._start is None or loop.stopped:
            return
        n_iter, evals = self._counters(loop.optimizer)
        group = loop.optimizer.param_groups[0]
        iterations, evaluations = n_iter - self._start[0], evals - self._start[1]
        if iterations < group["max_iter"] and evaluations < group["max_eval"]:
            loop.stop(Status.CONVERGED, f"L-BFGS met its tolerances after {iterations} inner iteration(s) "
                      f"(gradient <= tolerance_grad={group['tolerance_grad']:g} or progress below "
                      f"tolerance_change={group['tolerance_change']:g})")
