"""The epoch loop: epochs, shuffled minibatches and validation; everything else is a callback.

Minibatches are slices of one seeded on-device permutation per epoch (``x[perm[i:j]]``),
not a per-sample DataLoader. The rows of many batches are gathered at once (up to
:data:`GATHER_BYTES`) and each batch is then a contiguous view: the same batches as one
gather per batch, with fewer calls and no full shuffled copy of a large training set.

A stop signal (the checkpointer's ``signal``) is checked between minibatches: the loop then
records where the epoch stands (``LoopState.position``), the checkpointer saves it, and a
resumed run continues from that minibatch, bit-identical to an uninterrupted run.

Divergence, the history, the learning-rate schedule, early stopping, the ``tol`` test and
checkpoints are the callbacks of train/callbacks.py and train/checkpoint.py; :func:`run_loop`
builds the ones its :class:`LoopConfig` asks for and runs them with the user's.

Under torchrun (train/distributed.py) every rank draws the same permutation, steps on its
share of each global batch, and the objective averages the gradients over the ranks before
each optimizer step; the epoch's losses are the global ones.

An objective with a ``stream`` (rows read from disk a row group at a time, train/streamed.py)
takes its minibatches and its validation loss from that stream instead of ``objective.train``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..callbacks import Callback
from ..status import Status
from .callbacks import (CONVERGED_WINDOW, DIVERGED_HINT, DivergenceGuard, EarlyStopping, History, LBFGSConvergence,
                        LRSchedule, ToleranceConvergence)
from .objective import TensorData

__all__ = ["LoopConfig", "LoopOutcome", "LoopState", "run_loop", "DIVERGED_HINT", "CONVERGED_WINDOW", "GATHER_BYTES"]

#: the most bytes of training rows a minibatch epoch gathers in one call (whole batches, at
#: least one): ~5% of a small network's epoch goes to per-batch gathers
GATHER_BYTES = 1 << 22


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
    position : None, or where a minibatch epoch stopped by a signal (or resumed from a
        checkpoint taken then) stands: ``(generator_state, start, total)``, the batch generator's
        state before the epoch's permutation was drawn (the permutation is drawn again from
        it), the permutation index of the next minibatch, and the size-weighted sum of the
        epoch's batch losses so far (0-d tensor).
    """

    __slots__ = ("objective", "optimizer", "generator", "callbacks", "total_epochs", "epoch", "epochs_run", "logs",
                 "history", "best_epoch", "status", "message", "stopped", "position")

    def __init__(self, objective, optimizer, total_epochs: int, generator=None, callbacks=()):
        self.objective, self.optimizer, self.generator = objective, optimizer, generator
        self.callbacks = list(callbacks)
        self.total_epochs, self.epoch, self.epochs_run = total_epochs, 0, 0
        self.logs: dict = {"train_loss": None, "val_loss": None}
        self.history: dict = {"train_loss": [], "val_loss": []}
        self.best_epoch: int | None = None
        self.status, self.message, self.stopped = Status.MAX_EPOCHS, "", False
        self.position: tuple | None = None

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
        it is due, and when a stop signal arrives: at the next minibatch (the state inside the
        epoch), or at the end of a full-batch epoch
    resume : (tensors, meta) from ``load_checkpoint``: continue exactly where that run left
        off, at an epoch's end or between two minibatches

    Returns
    -------
    LoopOutcome : status (:class:`Status`), epochs run, history, message, best epoch.

    Raises
    ------
    Interrupted
        after the checkpointer saved the state because a stop signal arrived.
    ConfigError
        the checkpoint stopped inside an epoch beyond ``config.epochs``.
    """
    import torch

    from ..optim.fused_step import fast_stepping
    from .distributed import check_resume_world, training_group
    from .streamed import streamed_epoch

    train = objective.train
    stream = getattr(objective, "stream", None)  # rows streamed from disk (train/streamed.py)
    minibatch = stream is not None or (config.batch_size is not None and config.batch_size < train.n)
    is_lbfgs = isinstance(optimizer, torch.optim.LBFGS)
    group = training_group()  # None outside torchrun
    local = train
    if group is not None:
        _join(group, objective, is_lbfgs)
        if not minibatch:  # a full-batch epoch: this rank's rows, gathered once
            local = train.take(torch.arange(group.rank, train.n, group.size, device=train.y.device))
    generator = torch.Generator(device=train.y.device).manual_seed(config.seed) if minibatch else None
    loop = LoopState(objective, optimizer, config.epochs, generator,
                     _callbacks(config, callbacks, scheduler, checkpointer, is_lbfgs and not minibatch))
    for cb in loop.callbacks:
        cb.before_fit(loop)
    if resume is not None:
        from .checkpoint import restore_state

        check_resume_world(resume[1], group)
        restore_state(resume, loop)
        if loop.position is not None and loop.epochs_run >= config.epochs:
            from ..errors import ConfigError

            raise ConfigError(f"the checkpoint stopped inside epoch {loop.epochs_run + 1}; resume with at least "
                              f"{loop.epochs_run + 1} epochs")
    # bound once: the per-epoch cost of a callback is then one call per hook it overrides
    before_epoch = [cb.before_epoch for cb in loop.callbacks if type(cb).before_epoch is not Callback.before_epoch]
    after_epoch = [cb.after_epoch for cb in loop.callbacks]
    # a stop signal is checked between minibatches, so Ctrl-C answers within one batch, not one epoch
    stop_requested = (lambda: checkpointer.signal is not None) if minibatch and checkpointer is not None else None
    # steps skip Optimizer.step's per-call bookkeeping where that is bit-identical
    stepping = optimizer if is_lbfgs else fast_stepping(optimizer)
    graphed = (_captured_step(objective, optimizer, config.batch_size, scheduler)
               if minibatch and not is_lbfgs and group is None and stream is None else None)
    try:
        for epoch in range(loop.epochs_run + 1, config.epochs + 1):
            loop.epoch = epoch
            if loop.position is None:  # a run resumed inside this epoch ran these hooks before it stopped
                for hook in before_epoch:
                    hook(loop)
            if stream is not None:
                value = streamed_epoch(objective, stepping, stream, loop, stop_requested, group)
                if value is None:
                    _stop_inside_epoch(loop, checkpointer, stream.stop_point())
            elif minibatch:
                value = _minibatch_epoch(objective, stepping, train, config.batch_size, loop, is_lbfgs,
                                         stop_requested, graphed, group)
                if value is None:  # stopped between two minibatches: save the state there
                    _stop_inside_epoch(loop, checkpointer, (loop.position[1], train.n))
            elif is_lbfgs:
                value = objective.unscale(optimizer.step(objective.closure(optimizer)).detach())
            elif group is not None and local.n == 0:  # fewer training rows than ranks
                value = group.idle_step(objective.leaves, stepping, local)
            else:
                value = objective.step(stepping, local)
            loop.logs = {"train_loss": value.item(), "val_loss": _val_loss(objective, group)}
            loop.epochs_run = epoch
            for hook in after_epoch:
                hook(loop)
                if loop.stopped:
                    break
            if loop.stopped:
                break
    except BaseException:  # Ctrl-C's checkpoint, a second signal, an error: release bars and the like
        for cb in loop.callbacks:
            cb.after_abort(loop)
        raise
    finally:
        objective.sync = None
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


def _join(group, objective, is_lbfgs) -> None:
    """Train over ``group`` (train/distributed.py): refuse what cannot be split, start every
    rank from rank 0's parameters, and average the gradients at each step."""
    from ..errors import ConfigError

    if is_lbfgs:
        raise ConfigError("optimizer='lbfgs' under torchrun is not supported (its line search would need every "
                          "loss evaluation reduced over the ranks); use 'adam' or 'sgd', or run in one process")
    group.check_same_data(objective.train)
    group.broadcast(objective.leaves)
    leaves = objective.leaves
    objective.sync = lambda value, data: group.synchronize(leaves, value, data)


def _val_loss(objective, group):
    if getattr(objective, "stream", None) is not None:  # reduced over the ranks when reads are sharded
        return objective.stream.loss(objective, validation=True)[0] if objective.stream.has_val else None
    if objective.val is None:
        return None
    return objective.evaluate(objective.val) if group is None else group.evaluate(objective, objective.val)


def _stop_inside_epoch(loop, checkpointer, rows: tuple):
    """Save the state between two minibatches (``loop.position`` says where) and raise
    ``Interrupted``; ``rows``: (rows done, rows in the epoch[, what they are]) for its message."""
    from .checkpoint import Interrupted, capture_state

    checkpointer.save(*capture_state(loop))
    raise Interrupted(checkpointer.signal, loop.epoch - 1, rows)


def _minibatch_epoch(objective, optimizer, train, batch_size, loop, is_lbfgs, stop_requested=None, graphed=None,
                     group=None):
    """One epoch over seeded minibatches: the size-weighted mean loss, or None when
    ``stop_requested()`` became true between two minibatches; ``loop.position`` then holds
    where the epoch stands. A ``loop.position`` on entry (a resumed run) continues from there."""
    import torch

    n, generator, device = train.n, loop.generator, train.y.device
    # the state the permutation is drawn from is all a checkpoint needs to draw it again
    before = generator.get_state() if stop_requested is not None else None
    perm = torch.randperm(n, generator=generator, device=device)
    if loop.position is None:
        first, total = 0, torch.zeros((), dtype=train.y.dtype, device=device)
    else:
        _, first, total = loop.position
        total = total.to(dtype=train.y.dtype, device=device)
        loop.position = None
    chunk = max(1, GATHER_BYTES // max(1, train.row_bytes() * batch_size)) * batch_size
    for low in range(first, n, chunk):
        rows = train.take(perm[low : low + chunk])
        for offset in range(0, rows.n, batch_size):
            if stop_requested is not None and stop_requested():
                loop.position = (before, low + offset, total)
                return None
            batch = rows.slice(offset, offset + batch_size)
            rows_in_batch = batch.n  # the global batch: under torchrun this rank steps on its share
            if group is not None:
                batch = group.share(batch)
            if batch.n == 0:  # the epoch's last global batch has fewer rows than there are ranks
                value = group.idle_step(objective.leaves, optimizer, batch)
            elif is_lbfgs:
                value = objective.unscale(optimizer.step(_batch_closure(objective, optimizer, batch)).detach())
            elif graphed is not None and batch.n == batch_size:
                value = graphed(batch)
            else:
                value = objective.step(optimizer, batch)
            total += value.detach() * rows_in_batch
    return total / n


def _batch_closure(objective, optimizer, batch):
    def closure():
        optimizer.zero_grad()
        value = objective.objective(batch)
        value.backward()
        return value

    return closure


def _captured_step(objective, optimizer, batch_size, scheduler):
    """A :class:`_CapturedStep` when the whole step of a full-size minibatch can be one CUDA
    graph: CUDA data, a capturable optimizer (optim/registry.py asks for one), no learning-rate
    schedule (a graph keeps the rate it was captured with), no penalty and no input noise;
    else None (every step eager, as on CPU)."""
    if objective.train.y.device.type != "cuda" or scheduler is not None:
        return None
    if objective.penalty is not None or objective.noise is not None or objective.train.weights is not None:
        return None
    if not all(group.get("capturable", False) for group in optimizer.param_groups):
        return None
    return _CapturedStep(objective, optimizer, batch_size)


class _CapturedStep:
    """The step (forward, loss, backward, optimizer) of full-size minibatches as one CUDA graph.

    The first :attr:`WARMUP` batches run eagerly on a side stream (torch's recipe: the
    optimizer's state and the gradients exist before capture); the next one is captured
    from static copies of its rows and replayed, and every later full batch is copied into
    those rows and replayed. The last, shorter batch of an epoch runs eagerly. The loss it
    returns lives in the graph's memory: use it before the next call.
    """

    WARMUP = 3

    def __init__(self, objective, optimizer, rows: int):
        self.objective, self.optimizer, self.rows = objective, optimizer, rows
        self.graph = self.static = self.value = None
        self.warm = 0
        self.failed = False

    def __call__(self, batch):
        import torch

        if self.failed:
            return self.objective.step(self.optimizer, batch)
        if self.graph is None and self.warm < self.WARMUP:
            self.warm += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                value = self.objective.step(self.optimizer, batch)
            torch.cuda.current_stream().wait_stream(side)
            return value
        if self.graph is None:
            self.static = TensorData({k: v.clone() for k, v in batch.inputs.items()}, batch.y.clone())
            # kept alive with the graph: its kernels read and write these addresses
            kernel = getattr(self.objective, "kernel", None)
            self._buffers = None if kernel is None else dict(kernel._buffers)
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph):
                    self.value = self.objective.step(self.optimizer, self.static)
            except RuntimeError:
                # something in the step cannot be captured (a host sync, a dynamic shape): a
                # capture records kernels without running them, so this batch and the rest of
                # the run simply go eagerly
                self.failed, self.graph = True, None
                return self.objective.step(self.optimizer, batch)
        else:
            for k, v in batch.inputs.items():
                self.static.inputs[k].copy_(v)
            self.static.y.copy_(batch.y)
        self.graph.replay()
        return self.value
