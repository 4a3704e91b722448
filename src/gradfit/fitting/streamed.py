"""``gf.fit(model, data="runs/*.parquet", batch_size=4096)``: a fit whose data is a path.

A Parquet file, folder or glob (:class:`gradfit.data.parquet_rows.ParquetData`) is streamed
when its used columns would not fit comfortably in memory (or ``stream=True``): the fit is set
up on a sample of training rows exactly as an in-memory fit is (formula starts, checks, the
network's size, normalize's whitening), then the loop steps on the stream's minibatches
(train/streamed.py) and the final losses come from a last pass over every row. Otherwise its
used columns are read whole, and any other file goes through
:func:`gradfit.data.io.read_table`; both are then fitted as a dict of columns.

Streaming trains with a first-order optimizer on minibatches, so it refuses what needs all
rows at once (lm, linear, lbfgs, cross-validation, multistart, per-row weight arrays: name a
column of weights instead, ``weights="w"``, which works streamed and read whole).
Networks with ``normalize=True`` standardize with the moments of every training row (one
streaming pass); a scalar model's whitening uses the sample, as an in-memory fit uses at most
4096 rows for it. Standard errors are not computed for streamed fits.

Under torchrun the training and validation reads are sharded by rank (``shard_reads=True``,
train/streamed.py); the set-up sample and a network's normalization moments are not: every
rank reads them once per fit (the same rows on every rank, which the ranks' identical set-up
needs). ``settings["source"]["sharded"]`` says which it was.
"""

from __future__ import annotations

import dataclasses
import math
import os

from .._threads import choose_threads, intra_op_threads
from ..data.arrays import check_float32_range, prepare_arrays
from ..data.parquet_rows import (
    STREAM_MEMORY_SHARE,
    ParquetData,
    Reader,
    RowSource,
    Split,
    column_moments,
    default_buffer_rows,
    pass_rows,
    sample_rows,
)
from ..errors import ConfigError, DataError
from ..formula.tree import constant_names
from ..losses import resolve_loss
from ..models import resolve_model
from ..models.neural import MLPSpec
from .setup import FitSetup, make_checkpointer, parameter_space, resolve_device, resolve_dtype
from .first_order import (
    module_objective,
    scalar_objective,
    tensors,
    train_first_order,
    working_dtype,
)
from .keywords import FIT_KEYWORDS, options_from_keywords

__all__ = ["ParquetData", "fit_path"]

#: optimizers that need every row at each step
_FULL_DATA = ("lm", "linear", "lbfgs")


def fit_path(fit, call: dict):
    """Run ``fit`` (gradfit.fit) on ``call`` (its arguments by name) whose ``data`` is a path
    or a :class:`ParquetData`: streamed, or read whole and fitted as a table."""
    call = {k: v for k, v in call.items() if k in ("model", "x", "y") or k in fit.__kwdefaults__}
    data = call["data"]
    source = data if isinstance(data, ParquetData) else ParquetData(data)
    if not source.is_parquet:
        if (source.columns, source.val_key, source.buffer_rows, source.stream, source.shard_reads) != (
                None, None, None, None, True):
            raise ConfigError(f"{source.path}: columns, val_key, buffer_rows, stream and shard_reads apply to Parquet "
                              "data; drop them for other files")
        from ..data.io import read_table

        return fit(**{**call, "data": read_table(os.fspath(source.path))})
    rows = RowSource(source.path)
    x, y = call["x"], call["y"]
    for what, value in (("x", x), ("y", y)):
        if not (value is None or isinstance(value, str) or (what == "x" and isinstance(value, (list, tuple)))):
            raise ConfigError(f"with data= a path, {what}= names columns of the data (a string or a list of names), "
                              f"not values")
    # weights="w" / sigma="s": columns of the data, read with the rest (they may be inputs too)
    named = tuple(call[k] for k in ("weights", "sigma") if isinstance(call[k], str))
    options = _options(call)
    spec = resolve_model(call["model"], hidden=options.hidden, activation=options.activation)
    used = _used_columns(spec, x, y, rows, source, named)
    memory = _available()
    stream = source.stream
    if stream is None:
        stream = source.val_key is not None or (memory is not None and rows.projected_bytes(used)
                                                 > STREAM_MEMORY_SHARE * memory)
    described = {**rows.describe(), "columns": list(used), "streamed": bool(stream)}
    if not stream:
        if source.val_key is not None:
            raise ConfigError("val_key splits streamed data; drop val_key (--val-key), or stream=True (--stream)")
        result = fit(**{**call, "data": rows.read_all(used)})
        result.settings["source"] = described
        return result
    return _fit_streamed(spec, x, y, rows, used, source, options, call, described)


def _options(call: dict):
    if call["options"] is not None:
        return call["options"]
    return options_from_keywords(**{k: call[k] for k in FIT_KEYWORDS if k in call})


def _available():
    from .._memory import available_bytes

    return available_bytes(None)  # the CPU's: the rows are read into host memory


def _used_columns(spec, x, y, rows: RowSource, source: ParquetData, named: tuple = ()) -> tuple:
    """The columns the fit reads: ``source.columns``, else those x, y and the formula name, and
    the ``named`` weights and sigma columns."""
    if source.columns is not None:
        rows.check_columns(source.columns)
        names = list(source.columns)
    else:
        names = []
        formula = getattr(spec, "parsed", None) is not None
        if x is not None:
            names += [x] if isinstance(x, str) else list(x)
            rows.check_columns(names, " for x")
        elif formula:
            bindable = spec.parsed.rhs.names() | constant_names(spec.parsed.rhs)
            names += [c for c in rows.schema if c in bindable]
        else:
            names += [c for c in rows.schema if rows.numeric(c) and c not in (y, *named)]
        if isinstance(y, str):
            rows.check_columns([y], " for y")
            names.append(y)
        elif y is None and formula and spec.parsed.response is not None:
            response = sorted(spec.response_names)
            rows.check_columns(response, " for the response")
            names += response
        elif y is None:
            raise ConfigError("which column is y? write the formula as 'response ~ expression' or pass y='column'")
    for name in named:
        rows.check_columns([name], " for weights/sigma")
        names.append(name)
    names = list(dict.fromkeys(names))
    if source.val_key is not None:
        rows.check_columns([source.val_key], " for val_key")
    for name in names:
        if not rows.numeric(name):
            raise DataError(f"{rows.files[0]}: column {name!r} holds {rows.schema[name]}, not numbers; the fit uses "
                            "it, so convert it (or leave it out of the formula, x and y)")
    return tuple(names)


class _Prepare:
    """Columns of some rows -> validated Arrays, by the in-memory rules; keeps the bound model."""

    def __init__(self, spec, x, y, weights=None, sigma=None):
        self.spec, self.x, self.y, self.bound, self.notes = spec, x, y, None, ()
        self.weights, self.sigma = weights, sigma  # column names (prepare_arrays reads them)

    def __call__(self, columns: dict):
        bound, arrays = prepare_arrays(self.spec, self.x, self.y, data=columns, weights=self.weights,
                                       sigma=self.sigma)
        if self.bound is None:
            self.bound, self.notes = bound, tuple(arrays.notes)
        return arrays


def _refuse(options, call: dict) -> None:
    training = options.training
    if training.batch_size is None:
        raise ConfigError("streaming Parquet data trains on minibatches: pass batch_size= (--batch-size N, e.g. "
                          "4096), or read the used columns whole: stream=False (drop --stream)")
    name = str(training.optimizer).lower()
    if name in _FULL_DATA:
        raise ConfigError(f"optimizer={name!r} needs every row at each step; streamed data train with a first-order "
                          "optimizer ('auto' = adam, 'sgd', ...), or read the data whole: stream=False (drop --stream)")
    if options.cv is not None:
        raise ConfigError("cv= (--cv) refits folds of data held in memory; streamed data cannot do that: drop it, "
                          "or read the data whole: stream=False (drop --stream)")
    if call.get("starts"):
        raise ConfigError("starts= (--starts, multistart) needs the data in memory; drop it, or read the data whole: "
                          "stream=False (drop --stream)")
    if call.get("cv_groups") is not None:
        raise ConfigError("cv_groups= go with cv=, which streamed data cannot do: drop it, or read the data whole: "
                          "stream=False (drop --stream)")
    arrays = [k for k in ("weights", "sigma") if call.get(k) is not None and not isinstance(call[k], str)]
    if arrays:
        raise ConfigError(f"{arrays[0]} values cannot accompany streamed data (they are not rows of it); name a column "
                          f"of {arrays[0]} instead ({arrays[0]}='w'), drop them, or read the data whole: stream=False")


def _fit_streamed(spec, x, y, rows, used, source, options, call, described):
    import torch

    from ..train.streamed import StreamedTraining

    _refuse(options, call)
    training = options.training
    if source.val_key is not None and not training.val_fraction:
        raise ConfigError(f"val_key={source.val_key!r} holds out validation rows by key: also pass val_fraction "
                          "(e.g. 0.2; --val-fraction)")
    loss_fn = resolve_loss(options.loss)
    if call["sigma"] is not None and loss_fn.likelihood:
        raise ConfigError(f"loss={loss_fn.name!r} takes no sigma: counts carry their own variance (the mean); "
                          "drop sigma= (--sigma; weights= are frequency weights)")
    dtype = resolve_dtype(training.dtype)
    dev = resolve_device(training.device)
    split = Split(rows, training.val_fraction, training.seed, source.val_key)
    prepare = _Prepare(spec, x, y, *(c if isinstance(c, str) else None for c in (call["weights"], call["sigma"])))
    reader = Reader(rows, split, used, prepare, options.nan_policy)
    sample = sample_rows(reader, training.seed)
    bound = prepare.bound
    if dtype == torch.float32:
        check_float32_range({**sample.inputs, "y": sample.y})
    buffer_rows = source.buffer_rows or default_buffer_rows(training.batch_size)
    name = str(training.optimizer).lower()
    method, reason = ("adam", "streamed data: first-order optimizer") if name == "auto" else (name, "requested")
    settings = {"options": options.document(), "loss": loss_fn.name, "device": str(dev), "weighted": call["weights"] is not None or call["sigma"] is not None,
                "method": method, "method_reason": reason}
    scalar = getattr(bound, "scalar_params", True) and not isinstance(bound, MLPSpec)
    work_dtype, notes = working_dtype(dtype, sample)
    if scalar:
        if training.gradient == "analytic" and bound.expression is None:
            raise ConfigError("analytic gradients need a formula model; use gradient='autograd'")
        space = parameter_space(bound, sample, sample.n, call["init"], call["bounds"], call["fixed"],
                                 call["tie"])
        objective, work_dtype, more = scalar_objective(bound, space, sample, None, loss_fn, training.normalize,
                                                       training.gradient, work_dtype, dev)
        notes += more
        settings.update(init=dict(space.values), **space.describe())
    else:
        if training.gradient == "analytic":
            raise ConfigError("analytic gradients need a formula model; use gradient='autograd'")
        if call["bounds"] or call["fixed"] or call["tie"]:
            raise ConfigError("bounds, fixed and tie apply to named scalar parameters, not to networks")
        train, _ = tensors(sample, None, work_dtype, dev)
        objective, bound = module_objective(bound, train, None, loss_fn, training.normalize, training.seed,
                                            work_dtype, dev)
        if training.normalize:
            _standardize_from_stream(objective, bound, reader, loss_fn)
    settings["dtype"] = str(work_dtype).removeprefix("torch.")
    group = _shard_group(source, training.batch_size)
    objective.stream = StreamedTraining(reader, seed=training.seed, batch_size=training.batch_size,
                                        buffer_rows=buffer_rows, dtype=work_dtype, device=dev,
                                        has_val=split.kind != "none", group=group)
    settings["source"] = {**described, "buffer_rows": int(buffer_rows), "split": split.kind,
                          "sharded": group is not None, **({"ranks": group.size} if group is not None else {}),
                          **({"val_key": source.val_key} if source.val_key else {})}
    setup = FitSetup(loss_fn, work_dtype, dev, callbacks=tuple(call["callbacks"] or ()),
                     checkpointer=make_checkpointer(call["checkpoint"], options.checkpoint))
    widths = (len(used), len(getattr(bound, "param_names", ())), *getattr(spec, "hidden", ()))
    with intra_op_threads(choose_threads(training.threads, training.batch_size * max(widths))):
        result = train_first_order(objective, bound, method, options, setup, settings=settings,
                                   notes=tuple(prepare.notes) + tuple(notes), n_train=sample.n, n_val=0)
        # the final losses and counts: one last pass over every row
        reader.dropped = 0
        loss, n_train = objective.stream.loss(objective)
        val_loss, n_val = objective.stream.loss(objective, validation=True) if split.kind != "none" else (None, 0)
        dropped = objective.stream.dropped()
    final_notes = result.notes
    if dropped:
        final_notes += (f"dropped {dropped} row(s) with NaN or inf",)
    status, message = result.status, result.message
    if (loss is None or not math.isfinite(loss)) and status != "diverged":
        status, message = "diverged", "the loss at the final parameters is not finite"
    return dataclasses.replace(result, loss=loss, val_loss=val_loss, n_train=n_train, n_val=n_val,
                               notes=final_notes, status=status, message=message)


def _shard_group(source: ParquetData, batch_size: int):
    """The torchrun Group the reads are sharded over, or None (one process, GRADFIT_NO_DDP=1,
    or ``shard_reads=False``)."""
    from ..train.distributed import training_group

    group = training_group() if source.shard_reads else None
    if group is not None and batch_size < group.size:
        raise ConfigError(f"batch_size={batch_size} is smaller than the {group.size} ranks sharing each batch's rows; "
                          f"pass batch_size >= {group.size}, or ParquetData(..., shard_reads=False) "
                          "(--no-shard-reads)")
    return group


def _standardize_from_stream(objective, model, reader, loss_fn) -> None:
    """A network's input and output standardization from every training row (one streaming
    pass, float64), in place of the sample's; the loss scale follows (the MSE baseline is the
    target's variance; other losses keep the sample's baseline at the new mean)."""
    import numpy as np
    import torch

    def blocks():
        for part in pass_rows(reader):
            x = np.column_stack([v.reshape(len(v), -1) for v in part.inputs.values()])
            yield np.column_stack([x, part.y.reshape(len(part.y), -1)]), part.weights

    n, mean, std = column_moments(blocks())
    k = sum(v[:1].reshape(1, -1).shape[1] for v in objective.train.inputs.values())
    like = model.x_mean

    def as_t(a):
        return torch.as_tensor(a, dtype=like.dtype, device=like.device)

    model.x_mean, model.x_std = as_t(mean[:k]), as_t(np.where(std[:k] > 0, std[:k], 1.0))
    y_mean, y_std = as_t(mean[k:]), as_t(np.where(std[k:] > 0, std[k:], 1.0))
    if objective.train.y.dim() == 1:
        y_mean, y_std = y_mean[0], y_std[0]
    model.y_mean, model.y_std = y_mean, y_std
    if loss_fn.name == "mse" and objective.train.weights is None:
        baseline = float(np.mean(std[k:] ** 2) * (n - 1) / n)
    else:
        with torch.no_grad():
            train = objective.train
            baseline = float(loss_fn(torch.zeros_like(train.y) + model.y_mean, train.y, train.weights))
    objective.loss_scale = baseline if baseline > 0 else 1.0
