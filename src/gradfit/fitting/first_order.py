"""First-order training (torch.optim) for one fit: build the objective for a formula,
function or network, wire the loop's callbacks, and turn the loop's outcome into a FitResult."""

from __future__ import annotations

import math

from ..callbacks import LogCallback, ProgressCallback, wants_progress
from ..errors import ConfigError, warn_user
from ..models.neural import MLPSpec, ModuleModel, build_mlp
from ..optim.bounded import bounded_whitening
from ..optim.precondition import MAX_JACOBIAN_ROWS, jacobian, needs_float64, whiten
from ..optim.registry import make_optimizer
from ..results.fit_result import FitResult
from ..status import Status
from ..train.loop import LoopConfig, run_loop
from ..train.objective import ModuleObjective, ScalarObjective, TensorData

__all__ = ['train_first_order', 'scalar_objective', 'module_objective', 'tensors', 'working_dtype', 'json_fingerprint']


def tensors(train_arr, val_arr, dtype, dev):
    train = TensorData.from_arrays(train_arr, dtype, dev)
    val = TensorData.from_arrays(val_arr, dtype, dev) if val_arr is not None else None
    return train, val


#: an input whose largest magnitude exceeds its range by this factor keeps fewer than ~5 of
#: float64's 16 digits of variation (e.g. nanosecond timestamps spanning a few seconds)
FLOAT64_OFFSET_LIMIT = 1e11


def working_dtype(dtype, arrays) -> tuple:
    """The dtype training runs in, and notes saying why it differs from ``dtype``.

    float32 (the default) becomes float64 when float32 cannot tell the data's values apart
    (:func:`gradfit.data.arrays.float32_lossy`: millisecond timestamps, x in [1e9, 1e9+1e3]);
    the result's ``settings["dtype"]`` and a note say so. An input whose offset is so large
    that even float64 keeps few digits of its variation gets a GradfitWarning.
    """
    import numpy as np
    import torch

    from ..data.arrays import float32_lossy

    notes = []
    named = {**arrays.inputs, "y": arrays.y}
    if dtype == torch.float32:
        lossy = float32_lossy({k: v for k, v in named.items() if not _float32_surely_enough(v)})
        if lossy:
            dtype = torch.float64
            notes.append(f"trained in float64: float32 cannot tell apart the values of {', '.join(lossy)} "
                         "(rounding exceeds 1e-5 of the range, e.g. timestamps or a large offset)")
    for name, v in named.items():
        span = float(np.ptp(v)) if v.size > 1 else 0.0
        if span > 0 and float(np.abs(v).max()) > FLOAT64_OFFSET_LIMIT * span:
            message = (f"{name!r} varies over {span:.3g} around {float(np.abs(v).max()):.3g}: even float64 keeps "
                       f"few digits of that variation; subtract an offset (e.g. {name} - {name}.min()) before fitting")
            warn_user(message)
            notes.append(message)
    return dtype, tuple(notes)


def _float32_surely_enough(v) -> bool:
    """True when float32 surely tells the values of every column of ``v`` apart, judged from a
    bound instead of :func:`gradfit.data.arrays.float32_lossy`'s per-column pass (~70 ms on
    500,000 x 8, a quarter of a minibatch epoch of an MLP there): rounding to float32 moves a value by
    at most 2^-24 of the largest magnitude (2^-149 for subnormals), and the range of a sample
    of rows is a lower bound on each column's range. False means "not sure" (ask the full test).
    """
    import numpy as np

    from ..data.arrays import FLOAT32_RESOLUTION

    if v.dtype != np.float64 or v.size < 2:
        return True  # float32_lossy never counts these
    flat = v.reshape(len(v), -1)
    with np.errstate(invalid="ignore"):
        top = max(float(flat.max()), -float(flat.min()))  # NaN fails every test below
        floor = np.ptp(flat[:: max(1, len(flat) // 1024)], axis=0)
    return top < float(np.finfo(np.float32).max) and bool(
        np.all(2.0**-24 * top + 2.0**-149 <= FLOAT32_RESOLUTION * floor))


def scalar_objective(model, space, train_arr, val_arr, loss_fn, normalize, gradient, dtype, dev):
    """The :class:`ScalarObjective` of a named-parameter model on numpy arrays (float64), and
    the dtype it trains in and notes about it: (objective, dtype, notes).

    With ``normalize`` the preconditioner comes from the Jacobian at the start point in
    float64 (:func:`gradfit.optim.precondition.whiten`); with bounds, from the Jacobian in the
    parameters' own units, with bound transforms scaled to match
    (:func:`gradfit.optim.bounded.bounded_whitening`); when float32 cannot follow every
    direction it defines (:func:`gradfit.optim.precondition.needs_float64`) training runs in
    float64, and directions below float64's floor get a GradfitWarning.
    """
    import numpy as np
    import torch

    notes = []
    precondition = bounds = None
    if normalize:
        n = train_arr.n
        rows = np.unique(np.linspace(0, n - 1, min(n, MAX_JACOBIAN_ROWS)).round().astype(int))
        inputs64 = {k: torch.as_tensor(v[rows], dtype=torch.float64, device=dev) for k, v in train_arr.inputs.items()}
        if space.has_bounds:
            # whitened in the parameters' own units, with bound transforms of their scale (see
            # gradfit.optim.bounded): whitening the space's own transforms at a start near a bound
            # would build their 5% slope there into every later step
            w, bounds = bounded_whitening(model, inputs64, space, _spread(train_arr.y))
        else:
            w = whiten(jacobian(model, inputs64, space.internal_start(torch.float64, dev), space))
        if dtype == torch.float32 and needs_float64(w):
            dtype = torch.float64
            notes.append(f"trained in float64: normalize's coordinates (condition {w.condition:.2g} after scaling "
                         "each parameter) need more precision than float32")
        if w.floored:
            message = (f"normalize cannot equalize {w.floored} direction(s) of the parameters (condition "
                       f"{w.condition:.2g} after scaling each parameter): the data barely determine them at the start "
                       "point; subtract a large offset from the inputs (e.g. x - x.min()), or check for redundant "
                       "parameters")
            warn_user(message)
            notes.append(message)
        precondition = w.matrix.to(dtype=dtype, device=dev)
    train, val = tensors(train_arr, val_arr, dtype, dev)
    objective = ScalarObjective(model, train, val, loss_fn, space, dtype=dtype, device=dev, precondition=precondition,
                                gradient=gradient, bounds=bounds)
    return objective, dtype, tuple(notes)


def _spread(y) -> float:
    """The target's scale for :func:`gradfit.optim.bounded.bounded_whitening`: its standard
    deviation, else its RMS, else 1."""
    import numpy as np

    y = np.asarray(y, dtype=float)
    y = y[np.isfinite(y)]
    for value in (float(np.std(y)) if y.size else 0.0, float(np.sqrt(np.mean(y * y))) if y.size else 0.0):
        if value > 0 and np.isfinite(value):
            return value
    return 1.0


def module_objective(spec, train, val, loss_fn, normalize, seed, dtype, dev):
    import torch

    x_train = next(iter(train.inputs.values())) if len(train.inputs) == 1 else torch.stack(
        list(train.inputs.values()), dim=-1)
    in_features = 1 if x_train.dim() == 1 else x_train.shape[-1]
    out_features = 1 if train.y.dim() == 1 else train.y.shape[-1]
    if isinstance(spec, MLPSpec):
        module = build_mlp(in_features, out_features, spec.hidden, spec.activation, seed)
        model = ModuleModel(module, mlp=spec, in_features=in_features, out_features=out_features,
                            input_names=tuple(train.inputs))
    else:
        model = spec
        model.in_features, model.out_features = in_features, out_features
        model.input_names = tuple(train.inputs)
    model.to(dev, dtype)
    scale = 1.0
    if normalize:
        model.standardize(x_train, train.y, train.weights)
        with torch.no_grad():
            baseline = loss_fn(torch.zeros_like(train.y) + model.y_mean, train.y, train.weights)
        scale = float(baseline) if float(baseline) > 0 else 1.0
    return ModuleObjective(model, train, val, loss_fn, loss_scale=scale), model


def train_first_order(objective, model, optimizer, options, setup, *, settings, notes, n_train, n_val):
    """Train ``objective`` with ``optimizer`` (a torch.optim name) under ``options``
    (:class:`~gradfit.options.FitOptions`) and build the FitResult. ``setup`` carries the live
    callbacks and Checkpointer (:class:`~gradfit.fitting.fit.FitSetup`)."""
    import torch

    from ..train.loop import overfitting_signal
    from ..train.regularize import InputNoise, make_schedule, parse_penalty, sized_by_epochs

    training, reg = options.training, options.regularization
    if not model.scalar_params:
        notes = notes + _memory_notes(model, objective.train, training.batch_size)
    names = model.param_names if model.scalar_params else tuple(n for n, _ in model.module.named_parameters())
    penalty = parse_penalty(reg.penalty, names)
    noise = InputNoise.for_data(reg.input_noise, objective.train.inputs) if reg.input_noise else None
    objective.regularize(penalty, noise, training.seed)
    if hasattr(objective, "anchoring"):
        objective.anchoring = optimizer != "asgd"  # ASGD keeps a running average of absolute positions
    # a network's minibatch steps on CUDA are captured as one graph (train/loop.py) when capturable
    capturable = (not model.scalar_params and objective.train.y.device.type == "cuda"
                  and training.batch_size is not None and training.batch_size < objective.train.n)
    opt = make_optimizer(optimizer, objective.leaves, training.lr, training.optimizer_options,
                         prefer_fused=not model.scalar_params, capturable=capturable)
    scheduler = make_schedule(reg.schedule, opt, training.epochs)
    cbs = list(setup.callbacks)
    if training.log_every:
        cbs.append(LogCallback(training.log_every))
    if wants_progress(training.progress):
        cbs.append(ProgressCallback())
    torch.manual_seed(training.seed)  # anything stochastic inside torch.optim or the module
    stopping = reg.early_stopping
    config = LoopConfig(epochs=training.epochs, batch_size=training.batch_size, seed=training.seed, tol=training.tol,
                        early_stopping=None if stopping is None else (stopping.patience, stopping.min_delta))
    checkpointer = setup.checkpointer
    resume_state = None
    fingerprint = json_fingerprint(model, settings)
    if checkpointer is not None and options.checkpoint is not None and options.checkpoint.resume:
        from ..train.checkpoint import load_checkpoint

        resume_state = load_checkpoint(checkpointer.folder)
        if resume_state[1].get("fingerprint") != fingerprint:
            raise ConfigError(f"{checkpointer.folder}: the checkpoint belongs to a different fit (model, data or "
                              "options differ); resume with the same command, or start afresh without --resume")
        saved_epochs = resume_state[1].get("epochs")
        if sized_by_epochs(reg.schedule) and saved_epochs is not None and saved_epochs != training.epochs:
            # more epochs are fine otherwise; here they would stretch the schedule mid-run
            name = reg.schedule if isinstance(reg.schedule, str) else reg.schedule["name"]
            raise ConfigError(
                f"{checkpointer.folder}: the checkpoint's run has {saved_epochs} epochs and its learning-rate "
                f"schedule {name!r} is sized by them, so resuming with {training.epochs} would "
                f"make the learning rate jump; resume with the original --epochs {saved_epochs} "
                f"(epochs={saved_epochs}), or start afresh without --resume")
    if checkpointer is not None:
        checkpointer.fingerprint = fingerprint
        checkpointer.epochs = training.epochs
    outcome = run_loop(objective, opt, config, cbs, scheduler=scheduler, checkpointer=checkpointer,
                       resume=resume_state)
    minibatch = training.batch_size is not None and training.batch_size < objective.train.n
    restored = outcome.best_epoch is not None
    if minibatch and outcome.history["train_loss"] and outcome.status != "diverged" and not restored:
        # As Keras reports it: the mean batch loss of the last epoch. A full extra pass over a
        # large training set would cost a third of an epoch.
        final_loss = outcome.history["train_loss"][-1]
    else:
        final_loss = objective.evaluate(objective.train)
    if not math.isfinite(final_loss) and outcome.status != "diverged":
        outcome.status, outcome.message = Status.DIVERGED, "the loss at the final parameters is not finite"
    val_loss = objective.evaluate(objective.val) if objective.val is not None else None
    warning = overfitting_signal(outcome.history["train_loss"], outcome.history["val_loss"])
    if warning and outcome.status != "stopped_early" and training.warn_overfitting:
        warn_user(warning)
        notes = notes + (warning,)
    return FitResult(params=objective.param_values(), loss=final_loss, val_loss=val_loss, status=outcome.status,
                     epochs_run=outcome.epochs_run, history=outcome.history, model=model, message=outcome.message,
                     settings=settings, n_train=n_train, n_val=n_val, notes=notes, best_epoch=outcome.best_epoch)


def _memory_notes(model, train, batch_size) -> tuple:
    """Warn (and note) before a full-batch epoch of an MLP would need more than half the free
    memory, with a batch_size that fits (:mod:`gradfit.train.memory`)."""
    from ..train.memory import available_bytes, memory_advice

    mlp = getattr(model, "mlp", None)
    if mlp is None:
        return ()
    sizes = [model.in_features, *mlp.hidden, model.out_features]
    advice = memory_advice(train.n, sizes, train.y.element_size(), batch_size, available_bytes(train.y.device))
    if advice is None:
        return ()
    warn_user(advice)
    return (advice,)


def json_fingerprint(model, settings: dict) -> str:
    """What identifies a training run for resuming: the model and every setting but those a
    resumed run may change (more epochs, progress display, logging, threads, the checkpoint schedule)."""
    import hashlib
    import json

    options = dict(settings["options"], checkpoint=None)
    options["training"] = {k: v for k, v in options["training"].items()
                           if k not in ("epochs", "progress", "log_every", "threads")}
    doc = {"model": model.describe(), "settings": {**settings, "options": options}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()
