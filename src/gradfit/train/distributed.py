"""Data-parallel training under torchrun: the process group, each rank's share of a batch,
the gradient and loss reductions, and which rank writes files.

The rule (the same for networks and for formula models):

* Every rank holds the whole training set (the same data, checked when training starts) and
  draws the same seeded permutation per epoch. A minibatch of ``batch_size`` rows is the
  *global* batch: rank ``r`` of ``w`` takes its rows ``r, r + w, r + 2w, ...``. A full-batch
  epoch splits the training set the same way. So a 2-process run with ``batch_size=G`` takes
  the same steps as a 1-process run with ``batch_size=G``, and every row is used once per
  epoch across the ranks.
* After each rank's backward pass, the gradients of every trainable tensor (a network's
  weights, a formula's flat parameter vector) are averaged over the ranks, weighted by each
  rank's share of the loss (its rows, or the sum of its weights): the average is the gradient
  of the global batch's mean loss. One flat all-reduce carries the gradients and the batch
  loss, as DistributedDataParallel's buckets would; gradfit does it itself because its
  explicit MLP kernel sets gradients without autograd hooks and because uneven shares (the
  last batch of an epoch) need weights rather than DDP's plain mean.
* Training and validation losses are these weighted means, the same on every rank, so every
  rank takes the same decisions (divergence, early stopping, ``tol``).
* Only rank 0 writes files (checkpoints, loggers, the CLI's outputs). A checkpoint records
  the world size; resuming under another one is a ConfigError.

Outside torchrun (``WORLD_SIZE`` unset or 1) :func:`training_group` is None and nothing here runs.
"""

from __future__ import annotations

import atexit
import os

from ..errors import ConfigError, DataError

__all__ = ["process_group", "training_group", "is_writer", "Group", "check_resume_world", "TORCHRUN_DISABLE"]

#: set to 1 to make gf.fit ignore torchrun's process group (every rank fits on its own)
TORCHRUN_DISABLE = "GRADFIT_NO_DDP"


def process_group() -> tuple[int, int]:
    """(rank, world size): under torchrun (``WORLD_SIZE`` > 1) the default process group,
    initialized here if nobody did (gloo without CUDA, nccl on this rank's GPU with it);
    (0, 1) otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        atexit.register(_shutdown)  # gloo's threads abort a process that exits with the group alive
        _note_failures()
    return dist.get_rank(), dist.get_world_size()


_FAILED: list = []


def _note_failures() -> None:
    """Remember an uncaught exception, so that :func:`_shutdown` does not wait for the other
    ranks at a barrier they will never reach (they wait for this rank's next all-reduce): the
    rank exits at once and torchrun takes the job down."""
    import sys

    previous = sys.excepthook

    def hook(*exc_info):
        _FAILED.append(exc_info[0])
        previous(*exc_info)

    sys.excepthook = hook


def _shutdown() -> None:
    import torch.distributed as dist

    if _FAILED:
        return
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def is_writer() -> bool:
    """True on the rank that writes files: rank 0 under torchrun, the only process otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def training_group():
    """The :class:`Group` gf.fit trains over, or None outside torchrun (or with
    ``GRADFIT_NO_DDP=1``)."""
    if os.environ.get(TORCHRUN_DISABLE, "") not in ("", "0"):
        return None
    rank, size = process_group()
    return None if size <= 1 else Group(rank, size)


def check_resume_world(meta: dict, group) -> None:
    """Refuse a checkpoint written under another world size (its batches were split otherwise)."""
    saved = int(meta.get("world_size", 1))
    here = 1 if group is None else group.size
    if saved != here:
        raise ConfigError(f"the checkpoint was written by {saved} process(es) and this run has {here}: the batches "
                          f"are split by world size, so resume with {saved} (torchrun --nproc_per_node={saved}"
                          f"{' or without torchrun' if saved == 1 else ''}), or start afresh without --resume")


class Group:
    """The ranks training one fit together: rank, world size, and the reductions."""

    def __init__(self, rank: int, size: int):
        import torch
        import torch.distributed as dist

        self.rank, self.size = rank, size
        nccl = dist.get_backend() == "nccl"
        #: where collectives run: nccl reduces CUDA tensors only
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")

    def _all_reduce(self, t):
        import torch.distributed as dist

        out = t.to(self.device, copy=True)  # all_reduce works in place
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(t.device)

    def share(self, data):
        """This rank's rows of ``data`` (a TensorData): rows ``rank::size``, as views."""
        from .objective import TensorData

        r, w = self.rank, self.size
        return TensorData({k: v[r::w] for k, v in data.inputs.items()}, data.y[r::w],
                          None if data.weights is None else data.weights[r::w])

    @staticmethod
    def weight(data) -> float:
        """The share's weight in a weighted mean loss: its rows, or the sum of its weights."""
        return float(data.n) if data.weights is None else float(data.weights.sum())

    def synchronize(self, leaves, value, data, extra=None):
        """Average the gradients of ``leaves`` over the ranks, weighted by :meth:`weight` of
        each rank's ``data``, in place; return the global batch loss (weighted mean of each
        rank's ``value``). A rank with an empty share contributes nothing. ``extra`` (a 1-d
        tensor, e.g. sharded streaming's "has another batch" flag) is summed over the ranks in
        place, in the same all-reduce."""
        import torch

        w = self.weight(data)
        dtype = leaves[0].dtype
        grads = [p.grad if p.grad is not None and w > 0 else torch.zeros_like(p) for p in leaves]
        loss = value.detach().reshape(1).to(dtype) if w > 0 else torch.zeros(1, dtype=dtype, device=leaves[0].device)
        tail = [] if extra is None else [extra.to(device=loss.device, dtype=dtype)]
        flat = torch.cat([g.reshape(-1).to(dtype) * w for g in grads] + tail + [loss * w, loss.new_tensor([w])])
        flat = self._all_reduce(flat)
        total = flat[-1]
        offset = 0
        for p in leaves:
            size = p.numel()
            p.grad = (flat[offset : offset + size] / total).reshape(p.shape).to(p.dtype)
            offset += size
        if extra is not None:
            extra.copy_(flat[offset : offset + extra.numel()])
        return (flat[-2] / total).to(value.dtype).reshape(value.shape)

    def idle_step(self, leaves, optimizer, data, extra=None):
        """The step of a rank whose share of the batch is empty: it adds nothing to the
        gradient average but must take part in it and in the optimizer step (``extra``: as
        in :meth:`synchronize`)."""
        import torch

        for p in leaves:
            p.grad = torch.zeros_like(p)
        value = self.synchronize(leaves, torch.zeros((), dtype=data.y.dtype, device=data.y.device), data, extra)
        optimizer.step()
        return value

    def mean(self, value: float, data) -> float:
        """The weighted mean over the ranks of ``value`` (this rank's mean loss on ``data``)."""
        import torch

        w = self.weight(data)
        pair = torch.tensor([value * w if w > 0 else 0.0, w], dtype=torch.float64)
        pair = self._all_reduce(pair)
        return float(pair[0] / pair[1])

    def total(self, value):
        """``value`` (a tensor) summed over the ranks."""
        return self._all_reduce(value.detach())

    def evaluate(self, objective, data) -> float:
        """The loss on ``data`` at the current parameters: each rank evaluates its share."""
        part = self.share(data)
        return self.mean(objective.evaluate(part) if part.n else 0.0, part)

    def broadcast(self, leaves) -> None:
        """Rank 0's values of ``leaves`` on every rank (as DistributedDataParallel starts)."""
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for p in leaves:
                t = p.detach().to(self.device).clone()
                dist.broadcast(t, src=0)
                p.copy_(t.to(p.device))

    def check_same_data(self, data) -> None:
        """DataError unless every rank holds the same training data (rows and a checksum)."""
        import torch

        y = data.y.detach().to(torch.float64)
        mine = torch.stack([torch.tensor(float(data.n), dtype=torch.float64),
                            torch.nan_to_num(y).sum().cpu(), torch.nan_to_num(y * y).sum().cpu()])
        spread = self._all_reduce(mine) / self.size - mine
        if bool((spread.abs() > 1e-9 * (1 + mine.abs())).any()):
            raise DataError(f"rank {self.rank} holds other training data than the mean of the ranks: under torchrun "
                            "every rank must pass the same data to gf.fit (each trains on its share of every batch)")
