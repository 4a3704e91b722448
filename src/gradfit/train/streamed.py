"""Training on rows streamed from disk (data/parquet_rows.py): the minibatch epoch and the
loss passes of a fit whose data never sit in memory at once.

An objective trains on a stream when ``objective.stream`` is a :class:`StreamedTraining`;
``objective.train`` then holds only the set-up sample. :func:`streamed_epoch` steps on the
epoch's seeded minibatches (the scheme is in data/parquet_rows.py), and the epoch's loss is
their size-weighted mean. A stop signal between two minibatches records how many batches the
epoch has taken; a resumed run regenerates the same epoch (same seed, same data) and skips
that many, so it continues bit-identically. Under torchrun every rank reads the whole stream
(the reading is duplicated, not sharded) and steps on its share of each global batch.
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
    """

    def __init__(self, reader, *, seed: int, batch_size: int, buffer_rows: int, dtype, device, has_val: bool):
        self.reader, self.seed, self.batch_size, self.buffer_rows = reader, seed, batch_size, buffer_rows
        self.dtype, self.device, self.has_val = dtype, device, has_val
        #: an upper bound on the training rows (for messages): every row of the source
        self.n = reader.source.n_rows

    def _tensors(self, arrays):
        from .objective import TensorData

        return TensorData.from_arrays(arrays, self.dtype, self.device)

    def batches(self, epoch: int):
        """The epoch's minibatches as numpy :class:`~gradfit.data.arrays.Arrays` (converted to
        tensors only when stepped on, so a resumed epoch skips cheaply)."""
        from ..data.parquet_rows import shuffled_batches

        return shuffled_batches(self.reader, epoch, self.seed, self.batch_size, self.buffer_rows)

    def loss(self, objective, validation: bool = False) -> tuple[float | None, int]:
        """(mean loss, rows) over every training (or validation) row at the current parameters:
        the mean of the losses of blocks of at most :data:`EVAL_ROWS` rows, weighted by their
        rows (or, with weights, by their sum of weights, as a weighted loss averages)."""
        from ..data.parquet_rows import pass_rows

        total, size, rows = 0.0, 0.0, 0
        for part in pass_rows(self.reader, validation):
            data = self._tensors(part)
            for lo in range(0, data.n, EVAL_ROWS):
                block = data.slice(lo, lo + EVAL_ROWS)
                w = float(block.n if block.weights is None else block.weights.sum())
                if w > 0:
                    total += objective.evaluate(block) * w
                    size += w
                rows += block.n
        return (total / size if size else None), rows


def streamed_epoch(objective, optimizer, stream: StreamedTraining, loop, stop_requested=None, group=None):
    """One epoch over the stream's minibatches: the size-weighted mean batch loss (0-d tensor),
    or None when ``stop_requested()`` became true between two minibatches (``loop.position``
    then holds ``(generator state, batches taken, loss sum)``). A ``loop.position`` on entry
    (a resumed run) skips the batches it counts."""
    import torch

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
