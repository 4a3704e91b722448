"""Scale-out for fit_many under torchrun: each rank fits a contiguous block of the batch and
the blocks are gathered (every rank ends with the whole result; rank 0 is the one to use).

Nothing happens outside torchrun: a single process gets the whole batch.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import numpy as np

__all__ = ["world", "shard_range", "gather_result", "reducer", "sum_across", "this_process_only"]

#: set while a rank fits work it was assigned itself (fit_many_files' chunks): fit_many inside
#: then neither shards nor gathers
_LOCAL = contextvars.ContextVar("gradfit_this_process_only", default=False)


@contextlib.contextmanager
def this_process_only():
    """Within the block, :func:`world` is (0, 1): fit_many fits its whole batch in this process."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def world() -> tuple[int, int]:
    """(rank, world size), initializing the default process group under torchrun (one
    mechanism with training: :func:`gradfit.train.distributed.process_group`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _LOCAL.get():
        return 0, 1
    from ..train.distributed import process_group

    return process_group()


def shard_range(n: int) -> tuple[int, int]:
    """This rank's block [start, stop) of n fits (contiguous, sizes differ by at most one)."""
    rank, size = world()
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_result(local, n_total: int):
    """Concatenate every rank's BatchResult in rank order (identity in one process).

    Arrays travel as tensors through all_gather (padded to the longest block); nothing is
    pickled."""
    rank, size = world()
    if size == 1:
        return local
    import torch
    import torch.distributed as dist

    arrays = local.numeric_arrays()
    n_local = len(local)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([n_local], dtype=torch.int64, device=device))
    counts = [int(c.item()) for c in counts]
    longest = max(counts)
    merged = {}
    for key, value in arrays.items():
        t = torch.as_tensor(np.ascontiguousarray(value), device=device)
        padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=device)
        padded[:n_local] = t
        pieces = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(pieces, padded)
        merged[key] = np.concatenate([p[:c].cpu().numpy() for p, c in zip(pieces, counts)])
    result = local.with_arrays(merged)
    result.timings["world_size"] = size
    if len(result) != n_total:
        raise RuntimeError(f"gathered {len(result)} fits, expected {n_total}")
    return result


def sum_across(tensor):
    """``tensor`` summed elementwise over every rank (all_reduce), the same on each rank;
    ``tensor`` itself in one process. The global fit (fit_many's ``shared``) sums its Schur
    complement pieces with it, so every rank takes the same shared step."""
    rank, size = world()
    if size == 1:
        return tensor
    import torch
    import torch.distributed as dist

    nccl = dist.get_backend() == "nccl"
    out = tensor.to(torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu").clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def reducer():
    """:func:`sum_across` under torchrun, None in one process (the engines' "no reduction")."""
    return sum_across if world()[1] > 1 else None
