"""Training on rows streamed from disk (data/parquet_rows.py): the minibatch epoch and the
loss passes of a fit whose data never sit in memory at once.

An objective trains on a stream when ``objective.stream`` is a :class:`StreamedTraining`;
``objective.train`` then holds only the set-up sample. :func:`streamed_epoch` steps on the
epoch's seeded minibatches (the scheme is in data/parquet_rows.py), and the epoch's loss is
their size-weighted mean. A stop signal between two minibatches records how many batches the
epoch has taken; a resumed run regenerates the same epoch (same seed, same data) and skips
that many, so it continues bit-identically.

Under torchrun with sharded reads (``ParquetData(shard_reads=True)``, the default) rank ``r``
of ``w`` reads only its row groups (data/parquet_rows.py: ``perm[r::w]``, its own shuffle
buffer, ``batch_size // w`` rows a step, one more for the first ``batch_size % w`` ranks).
The ranks' batch counts differ, so they keep in lockstep through three numbers summed in the
gradient all-reduce each step already makes (:meth:`Group.synchronize`'s ``extra``, no other
collective per step): whether the rank has another batch, its rows, and whether it was asked
to stop. Every rank takes part in every step; a rank with no batch left takes an idle step
(weight 0); the epoch ends after the step at which no rank has another batch, so every
training row is used once per epoch across the ranks, and the step is the gradient of the
global batch's mean loss. A stop request is agreed the same way: every rank stops after the
same step, and a resumed run skips that many steps on every rank (one all-reduce then counts
the rows they held). The loss passes split the units ``r::w`` and add the ranks' sums (one
all-reduce per pass). With ``shard_reads=False`` every rank reads the whole stream and steps
on its share of each global batch: a run equals a one-process run.
"""

from __future__ import annotations

__all__ = ["StreamedTraining", "streamed_epoch"]

#: rows per forward pass when a loss is evaluated over a stream
EVAL_ROWS = 65_536


class StreamedTraining:
    """The streamed training and validation rows of one fit, as tensors on the fit's device.

    Parameters
    ----------
    reader : :class:`gradfit.data.parquet_rows.Reader` (rows of a unit, split, NaN policy)
    seed, batch_size, buffer_rows : the shuffling scheme's settings
    dtype, device : the tensors' torch dtype and device
    has_val : whether the split holds out any rows
    group : under torchrun with sharded reads, the ranks' Group (each reads its units only)
    """

    def __init__(self, reader, *, seed: int, batch_size: int, buffer_rows: int, dtype, device, has_val: bool,
                 group=None):
        self.reader, self.seed, self.batch_size, self.buffer_rows = reader, seed, batch_size, buffer_rows
        self.dtype, self.device, self.has_val = dtype, device, has_val
        #: the torchrun :class:`~gradfit.train.distributed.Group` the reads are sharded over, or None
        self.group = group
        self.shard = None if group is None else (group.rank, group.size)
        #: an upper bound on the training rows: every row of the source
        self.n = reader.source.n_rows
        #: training rows the epoch had stepped on when a stop signal ended it (for the message)
        self.rows_done = 0

    def _tensors(self, arrays):
        from .objective import TensorData

        return TensorData.from_arrays(arrays, self.dtype, self.device)

    def batches(self, epoch: int):
        """The epoch's minibatches as numpy :class:`~gradfit.data.arrays.Arrays` (converted to
        tensors only when stepped on, so a resumed epoch skips cheaply)."""
        from ..data.parquet_rows import shuffled_batches

        return shuffled_batches(self.reader, epoch, self.seed, self.batch_size, self.buffer_rows, self.shard)

    def loss(self, objective, validation: bool = False) -> tuple[float | None, int]:
        """(mean loss, rows) over every training (or validation) row at the current parameters:
        the mean of the losses of blocks of at most :data:`EVAL_ROWS` rows, weighted by their
        rows (or, with weights, by their sum of weights, as a weighted loss averages). With
        sharded reads each rank passes over its units and the ranks' sums are added."""
        from ..data.parquet_rows import pass_rows

        total, size, rows = 0.0, 0.0, 0
        for part in pass_rows(self.reader, validation, self.shard):
            data = self._tensors(part)
            for lo in range(0, data.n, EVAL_ROWS):
                block = data.slice(lo, lo + EVAL_ROWS)
                # the block's weight from the numpy rows (no device sync)
                w = float(block.n if part.weights is None else part.weights[lo:lo + EVAL_ROWS].sum())
                if w > 0:
                    total += objective.evaluate(block) * w
                    size += w
                rows += block.n
        if self.group is not None:
            total, size, rows = self._summed(total, size, rows)
            rows = int(rows)
        return (total / size if size else None), rows

    def stop_point(self) -> tuple:
        """(training rows the interrupted epoch took, rows in an epoch, what they are): for the
        interrupt message. The training rows are counted from the metadata (the row-group
        split) or the row hash, without reading; a key split is known only by reading its
        key, so the total is then every row."""
        split = self.reader.split
        if split.kind == "key":
            return self.rows_done, self.n, "rows (training and validation rows)"
        total = sum(int((~split.val_mask(u, {})).sum()) for u in split.train_units())  # no column is read
        return self.rows_done, total, "training rows"

    def dropped(self) -> int:
        """Rows the reader dropped (``nan_policy="omit"``), over every rank's reads."""
        return int(self.reader.dropped if self.group is None else self._summed(self.reader.dropped)[0])

    def _summed(self, *values) -> list:
        import torch

        return self.group.total(torch.tensor(values, dtype=torch.float64)).tolist()


def streamed_epoch(objective, optimizer, stream: StreamedTraining, loop, stop_requested=None, group=None):
    """One epoch over the stream's minibatches: the size-weighted mean batch loss (0-d tensor),
    or None when ``stop_requested()`` became true between two minibatches (``loop.position``
    then holds ``(generator state, batches taken, loss sum)``). A ``loop.position`` on entry
    (a resumed run) skips the batches it counts."""
    import torch

    if group is not None and stream.group is not None:
        return _sharded_epoch(objective, optimizer, stream, loop, stop_requested, group)
    before = loop.generator.get_state() if stop_requested is not None else None
    if loop.position is None:
        skip, total = 0, torch.zeros((), dtype=stream.dtype, device=stream.device)
    else:
        _, skip, total = loop.position
        total = total.to(dtype=stream.dtype, device=stream.device)
        loop.position = None
    rows = 0
    for i, part in enumerate(stream.batches(loop.epoch)):
        if i < skip:  # taken before the run stopped: their loss is in ``total`` already
            rows += part.n
            continue
        if stop_requested is not None and stop_requested():
            loop.position = (before, i, total)
            stream.rows_done = rows
            return None
        batch = stream._tensors(part)
        rows_in_batch = batch.n  # the global batch: under torchrun this rank steps on its share
        if group is not None:
            batch = group.share(batch)
        if batch.n == 0:
            value = group.idle_step(objective.leaves, optimizer, batch)
        else:
            value = objective.step(optimizer, batch)
        total += value.detach() * rows_in_batch
        rows += rows_in_batch
    return total / max(rows, 1)


def _sharded_epoch(objective, optimizer, stream: StreamedTraining, loop, stop_requested, group):
    """:func:`streamed_epoch` with sharded reads: this rank steps on its own batches, in
    lockstep with the others (the module notes)."""
    import torch

    before = loop.generator.get_state() if stop_requested is not None else None
    batches = stream.batches(loop.epoch)
    total = torch.zeros((), dtype=stream.dtype, device=stream.device)
    steps = rows = 0
    if loop.position is not None:  # resumed: skip the steps taken, on every rank
        _, steps, total = loop.position
        total = total.to(dtype=stream.dtype, device=stream.device)
        loop.position = None
        held = sum(part.n for _, part in zip(range(steps), batches))
        rows = int(stream._summed(held)[0])
    idle = objective.train.slice(0, 0)  # an empty share: the idle step's weight is 0
    # summed over the ranks in each step's gradient all-reduce: [ranks with another batch,
    # rows of this step, ranks asked to stop]
    flags = torch.zeros(3, dtype=torch.float64)
    leaves, sync = objective.leaves, objective.sync
    objective.sync = lambda value, data: group.synchronize(leaves, value, data, flags)
    try:
        part = next(batches, None)
        while True:
            upcoming = next(batches, None)
            asked = stop_requested is not None and stop_requested()
            flags.copy_(torch.tensor([upcoming is not None, 0 if part is None else part.n, asked]))
            if part is None:
                value = group.idle_step(leaves, optimizer, idle, flags)
            else:
                value = objective.step(optimizer, stream._tensors(part))
            steps += 1
            total += value.detach() * float(flags[1])
            rows += int(flags[1])
            if flags[0] == 0:  # no rank has a batch left: the epoch is over
                return total / max(rows, 1)
            if flags[2] > 0:  # some rank was asked to stop: all stop after the same step
                loop.position = (before, steps, total)
                stream.rows_done = rows
                return None
            part = upcoming
    finally:
        objective.sync = sync
