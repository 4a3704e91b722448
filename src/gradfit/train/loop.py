"""The epoch loop: steps, shuffled minibatches, validation, divergence, callbacks.

Minibatches are slices of one seeded on-device permutation per epoch (``x[perm[i:j]]``),
not a per-sample DataLoader: one gather per batch instead of thousands of Python calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .checkpoint import Interrupted

__all__ = ["LoopConfig", "LoopOutcome", "run_loop", "DIVERGED_HINT"]

DIVERGED_HINT = ("the loss became inf/nan; lower the learning rate (e.g. 10x smaller) "
                 "or normalize the inputs (normalize=True, --normalize)")
#: consecutive epochs of relative change below ``tol`` that count as converged
CONVERGED_WINDOW = 10


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
    status: str  # "max_epochs" | "converged" | "diverged" | "stopped" | "stopped_early"
    epochs_run: int
    history: dict = field(default_factory=lambda: {"train_loss": [], "val_loss": []})
    message: str = ""
    best_epoch: int | None = None
    best_val_loss: float | None = None


def run_loop(objective, optimizer, config: LoopConfig, callbacks=(), scheduler=None, checkpointer=None,
             resume: tuple | None = None) -> LoopOutcome:
    """Train ``objective`` with ``optimizer`` for up to ``config.epochs`` epochs.

    Each epoch records the training loss (full batch: at the parameters before the step, as
    the classic loop prints it; minibatch: the size-weighted mean of the batch losses) and,
    with validation data, the validation loss after the epoch's updates. A non-finite loss
    stops training and restores the last parameters whose loss was finite. With early
    stopping, training stops once the validation loss has not improved by min_delta for
    ``patience`` epochs, and the best epoch's parameters are restored.

    With a ``checkpointer`` (train/checkpoint.py), the complete state is saved when it is due
    and when a stop signal arrives (then :class:`Interrupted` is raised); ``resume`` =
    (tensors, meta) from a checkpoint continues exactly where it left off.
    """
    import torch

    train = objective.train
    n = train.n
    minibatch = config.batch_size is not None and config.batch_size < n
    is_lbfgs = isinstance(optimizer, torch.optim.LBFGS)
    device = train.y.device
    generator = torch.Generator(device=device).manual_seed(config.seed) if minibatch else None
    out = LoopOutcome(status="max_epochs", epochs_run=0)
    history_train, history_val = out.history["train_loss"], out.history["val_loss"]
    for cb in callbacks:
        cb.on_train_begin(config.epochs)
    calm = 0
    if objective.penalty is not None:
        out.history["penalty"] = []
    if scheduler is not None:
        out.history["lr"] = []
    best, best_state, since_best = math.inf, None, 0
    first_epoch = 1
    if resume is not None:
        counters = restore_state(resume, objective, optimizer, scheduler, generator, out)
        first_epoch = counters["epoch"] + 1
        calm, best, since_best = counters["calm"], counters["best"], counters["since_best"]
        best_state = counters["best_state"]
        history_train, history_val = out.history["train_loss"], out.history["val_loss"]
    for epoch in range(first_epoch, config.epochs + 1):
        objective.remember()
        if minibatch:
            value = _minibatch_epoch(objective, optimizer, train, config.batch_size, generator, is_lbfgs)
        elif is_lbfgs:
            value = objective.unscale(optimizer.step(objective.closure(optimizer)).detach())
        else:
            value = objective.step(optimizer, train)
        train_loss = value.item()
        if not math.isfinite(train_loss):
            objective.restore_good()
            out.status, out.message = "diverged", f"diverged at epoch {epoch}: {DIVERGED_HINT}"
            out.epochs_run = epoch - 1
            break
        objective.accept()
        history_train.append(train_loss)
        val_loss = objective.evaluate(objective.val) if objective.val is not None else None
        if val_loss is not None:
            history_val.append(val_loss)
        if objective.penalty is not None:
            out.history["penalty"].append(objective.penalty_now())
        if scheduler is not None:
            out.history["lr"].append(float(optimizer.param_groups[0]["lr"]))
            _step_schedule(scheduler, val_loss if val_loss is not None else train_loss)
        out.epochs_run = epoch
        if config.early_stopping is not None and val_loss is not None:
            patience, min_delta = config.early_stopping
            if val_loss < best - min_delta:
                best, since_best, out.best_epoch = val_loss, 0, epoch
                best_state = objective.snapshot()
            else:
                since_best += 1
                if since_best >= patience:
                    objective.restore(best_state)
                    out.status = "stopped_early"
                    out.message = (f"validation loss did not improve for {patience} epochs; restored epoch "
                                   f"{out.best_epoch} (val {best:.6g})")
                    out.best_val_loss = best
                    break
        if checkpointer is not None and (checkpointer.due(epoch) or checkpointer.signal is not None):
            counters = {"epoch": epoch, "calm": calm, "best": best, "since_best": since_best}
            checkpointer.save(*capture_state(objective, optimizer, scheduler, generator, out, counters, best_state))
            if checkpointer.signal is not None:
                raise Interrupted(checkpointer.signal, epoch)
        logs = {"train_loss": train_loss, "val_loss": val_loss}
        stop = False
        for cb in callbacks:
            stop = bool(cb.on_epoch_end(epoch, logs)) or stop
        if stop:
            out.status, out.message = "stopped", f"stopped by a callback at epoch {epoch}"
            break
        if config.tol is not None and len(history_train) > 1:
            prev = history_train[-2]
            calm = calm + 1 if abs(prev - train_loss) <= config.tol * max(abs(train_loss), 1e-300) else 0
            if calm >= CONVERGED_WINDOW:
                out.status = "converged"
                out.message = f"relative loss change below tol={config.tol:g} for {CONVERGED_WINDOW} epochs"
                break
    if config.early_stopping is not None and best_state is not None and out.status not in ("stopped_early", "diverged"):
        # ran out of epochs (or stopped otherwise): still hand back the best epoch
        objective.restore(best_state)
        out.best_val_loss = best
    for cb in callbacks:
        cb.on_train_end(out.status, out.epochs_run)
    return out


def capture_state(objective, optimizer, scheduler, generator, out, counters: dict, best_state) -> tuple[dict, dict]:
    """Everything the loop needs to continue bit-for-bit: (tensors, JSON-able metadata)."""
    import torch

    tensors = {f"leaf.{i}": t for i, t in enumerate(objective.leaves)}
    for i, t in enumerate(objective.divergence_state()):
        tensors[f"good.{i}"] = t
    opt = optimizer.state_dict()
    opt_meta = {"param_groups": opt["param_groups"], "state": {}}
    for pid, st in opt["state"].items():
        opt_meta["state"][str(pid)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                opt_meta["state"][str(pid)][k] = v
    tensors["rng.torch"] = torch.get_rng_state()
    if generator is not None:
        tensors["rng.batch"] = generator.get_state()
    if getattr(objective, "noise_generator", None) is not None:
        tensors["rng.noise"] = objective.noise_generator.get_state()
    if best_state is not None:
        for i, t in enumerate(best_state):
            tensors[f"best.{i}"] = t
    meta = {"counters": counters, "history": out.history, "best_epoch": out.best_epoch, "optimizer": opt_meta,
            "scheduler": scheduler.state_dict() if scheduler is not None else None}
    return tensors, meta


def restore_state(resume: tuple, objective, optimizer, scheduler, generator, out) -> dict:
    """Load a captured state into freshly built objects (the inverse of capture_state)."""
    import torch

    tensors, meta = resume
    with torch.no_grad():
        for i, t in enumerate(objective.leaves):
            t.copy_(tensors[f"leaf.{i}"])
    good = [tensors[k] for k in sorted((k for k in tensors if k.startswith("good.")), key=lambda k: int(k[5:]))]
    objective.load_divergence_state(good)
    opt_meta = meta["optimizer"]
    state = {}
    for pid, st in opt_meta["state"].items():
        entry = dict(st)
        for k in tensors:
            if k.startswith(f"opt.{pid}."):
                entry[k[len(f"opt.{pid}."):]] = tensors[k]
        state[int(pid)] = entry
    optimizer.load_state_dict({"state": state, "param_groups": opt_meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if generator is not None and "rng.batch" in tensors:
        generator.set_state(tensors["rng.batch"])
    if getattr(objective, "noise_generator", None) is not None and "rng.noise" in tensors:
        objective.noise_generator.set_state(tensors["rng.noise"])
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    out.history = {k: list(v) for k, v in meta["history"].items()}
    out.best_epoch = meta.get("best_epoch")
    out.epochs_run = meta["counters"]["epoch"]
    best_keys = sorted((k for k in tensors if k.startswith("best.")), key=lambda k: int(k[5:]))
    counters = dict(meta["counters"])
    counters["best_state"] = [tensors[k] for k in best_keys] if best_keys else None
    return counters


def _step_schedule(scheduler, metric: float) -> None:
    import torch

    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(metric)
    else:
        scheduler.step()


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


def _minibatch_epoch(objective, optimizer, train, batch_size, generator, is_lbfgs):
    import torch

    n = train.n
    perm = torch.randperm(n, generator=generator, device=train.y.device)
    total = torch.zeros((), dtype=train.y.dtype, device=train.y.device)
    for start in range(0, n, batch_size):
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
