"""Intra-op threads for one fit: small problems run on one thread.

torch's intra-op pool (OpenMP and MKL, sized to the cores) splits an op over its threads and
waits for all of them. On a tiny tensor there is nothing to split, yet each op can still wait
at the pool's barrier, and on a loaded machine a descheduled pool thread makes every op wait
for the scheduler: the README's 11-point MLP fit ran ~70x slower under two busy processes than
on one thread. Below :data:`SMALL_PROBLEM_ELEMENTS` a fit therefore runs single-threaded;
bigger ones keep whatever the process has (torch's default, ``OMP_NUM_THREADS``, or the
caller's ``torch.set_num_threads``), so "auto" never raises the count above what was set.
``threads=N`` overrides both. Inter-op threads are left alone: torch fixes them at start-up.
"""

from __future__ import annotations

import numbers
import threading

from .errors import ConfigError

__all__ = ["SMALL_PROBLEM_ELEMENTS", "MAX_THREADS", "check_threads", "choose_threads", "intra_op_threads"]

#: the most intra-op threads ``threads=`` accepts. torch.set_num_threads(100000) crashes the
#: process (a segfault in the OpenMP pool, not an exception), and no CPU comes near: the largest
#: two-socket servers have 768 hardware threads (2 x 192 cores x 2 SMT). A fixed bound, not a
#: multiple of os.cpu_count(), so options that pass on one machine pass on every other.
MAX_THREADS = 1024

#: below this many elements in a fit's widest per-step tensor (rows per step x the widest
#: layer, input or parameter count) "auto" runs on one thread. torch's elementwise kernels do
#: not split below 32768 elements (at::internal::GRAIN_SIZE); on the 2-core development
#: machine one thread was as fast or faster up to ~1e5 elements even when quiet, and 18-75x
#: faster at every size up to 1e5 when loaded (bench/threads.py measures the example); the
#: minibatch benchmark's 1024-row batches of a 64-wide layer (65,536 elements) ran ~3x faster
#: on one thread (bench/minibatch.py --threads 1), so the bound sits above that.
SMALL_PROBLEM_ELEMENTS = 131_072

# torch's thread count is one setting of the process: fits running at once in threads
# (gf.tune with workers > 1) share it, so entering and leaving are counted under one lock and
# the value found before the first entry comes back when the last one leaves.
_LOCK = threading.Lock()
_ACTIVE = {"count": 0, "before": None}


def check_threads(value):
    """``threads=`` in canonical form: None ("auto") or an integer from 1 to :data:`MAX_THREADS`.

    Raises
    ------
    ConfigError
        for anything else (0, -1, 1.5, "two", True, 100000), saying what to pass.
    """
    if value is None or type(value) is int and 1 <= value <= MAX_THREADS:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"threads must be an integer >= 1 (intra-op CPU threads) or None (auto: one thread "
                          f"for small problems, torch's default otherwise), got {value!r}")
    if value > MAX_THREADS:
        import os

        raise ConfigError(f"threads must be at most {MAX_THREADS}, got {int(value)}; this machine has "
                          f"{os.cpu_count() or 'an unknown number of'} CPUs, and more threads than CPUs only wait "
                          "for each other: pass the CPU count or fewer, or leave threads unset (auto)")
    return int(value)


def choose_threads(requested: int | None, elements: int) -> int | None:
    """The intra-op thread count a fit runs with: ``requested`` when given, else 1 for a problem
    whose widest per-step tensor holds fewer than :data:`SMALL_PROBLEM_ELEMENTS` elements, else
    None (leave the process's setting alone).

    >>> choose_threads(None, 11 * 32), choose_threads(None, 10**6), choose_threads(2, 11)
    (1, None, 2)
    """
    if requested is not None:
        return requested
    return 1 if elements < SMALL_PROBLEM_ELEMENTS else None


class intra_op_threads:
    """Run the body with ``torch.set_num_threads(threads)`` and restore the previous count
    afterwards, also when the body raises. ``None`` changes nothing. (A class rather than a
    generator-based context manager: it wraps every fit, and costs ~1 us instead of ~15.)

    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with intra_op_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """

    __slots__ = ("threads", "previous")

    def __init__(self, threads: int | None):
        self.threads = threads
        self.previous = None

    def __enter__(self):
        if self.threads is None:
            return None
        import torch

        with _LOCK:
            if _ACTIVE["count"] == 0:
                _ACTIVE["before"] = torch.get_num_threads()
            _ACTIVE["count"] += 1
            self.previous = torch.get_num_threads()
            if self.previous != self.threads:
                torch.set_num_threads(self.threads)
        return None

    def __exit__(self, *exc) -> bool:
        if self.threads is None:
            return False
        import torch

        with _LOCK:
            _ACTIVE["count"] -= 1
            # the last one out restores the process's value; a nested or concurrent one, its own
            back = _ACTIVE["before"] if _ACTIVE["count"] == 0 else self.previous
            if torch.get_num_threads() != back:
                torch.set_num_threads(back)
        return False
