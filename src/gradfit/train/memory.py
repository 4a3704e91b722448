"""How much memory full-batch training of a network needs, and a warning before it runs out.

A full-batch epoch keeps every layer's activations for the backward pass, so its memory grows
with the number of rows; past a fraction of what the machine has free, the fit swaps or is
killed without a word. The estimate (an upper bound in spirit, not a measurement) counts, per
row, the input and output, and for each hidden layer its pre-activation, activation and their
gradients, in the training dtype.
"""

from __future__ import annotations

from typing import Sequence

from .._memory import available_bytes

__all__ = ["available_bytes", "full_batch_bytes", "memory_advice"]

#: warn when a full-batch epoch would need more than this fraction of the free memory
WARN_FRACTION = 0.5
#: the suggested batch keeps an epoch's working set under this fraction
TARGET_FRACTION = 0.05


def full_batch_bytes(n_rows: int, sizes: Sequence[int], itemsize: int) -> int:
    """Bytes an epoch over ``n_rows`` rows keeps for an MLP with layer widths ``sizes``
    (input, hidden..., output): input and output once, each hidden layer four times
    (pre-activation, activation, and the gradient of each).

    >>> full_batch_bytes(1000, [3, 64, 1], 4)
    1040000
    """
    inner = sum(int(s) for s in sizes[1:-1])
    return int(n_rows) * (int(sizes[0]) + int(sizes[-1]) + 4 * inner) * int(itemsize)


def memory_advice(n_rows: int, sizes: Sequence[int], itemsize: int, batch_size: int | None, available: int | None):
    """A warning text when full-batch training would need more than WARN_FRACTION of the free
    memory ``available``, naming the estimate and a batch_size (a power of two) that keeps an
    epoch's working set under TARGET_FRACTION of it; None when it fits, when minibatches are
    used, or when the free memory is unknown.

    >>> memory_advice(5_000_000, [1, 4096, 4096, 1], 4, None, 2 << 30) is not None
    True
    >>> memory_advice(100, [1, 64, 1], 4, None, 2 << 30) is None
    True
    """
    if available is None or (batch_size is not None and batch_size < n_rows):
        return None
    need = full_batch_bytes(n_rows, sizes, itemsize)
    if need <= WARN_FRACTION * available:
        return None
    per_row = max(need // max(int(n_rows), 1), 1)
    batch = 1
    while batch * 2 * per_row <= TARGET_FRACTION * available and batch * 2 < n_rows:
        batch *= 2
    return (f"full-batch training of {n_rows:,} rows needs about {need / 2**30:.1f} GiB per epoch for the "
            f"network's activations and gradients, more than half of the {available / 2**30:.1f} GiB free: "
            f"train in minibatches (batch_size={batch}, or --batch-size {batch})")
