"""Thread oversubscription: the README's 11-point MLP example (thermometer data, 32-32 tanh
MLP, Adam, 200 epochs, 3 of 11 points held out) timed on a quiet machine and again while
``--busy`` processes (default two) spin on the CPU, with gradfit's threads="auto" (one thread
for a problem this small) and with the intra-op thread count forced to the process's
default (the behaviour before threads= existed: torch uses one thread per core), beside a
pure-Python one-thread reference of the same quiet length (what the machine gives any
one-thread job under that load). The target is auto's loaded/quiet ratio <= 2x.

    python bench/threads.py [--repeats 3] [--busy 2] [--epochs 200]

Run it on an otherwise idle machine: other work counts as load in the "quiet" column.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time
import warnings

import torch

import gradfit as gf
from _common import table


def readme_mlp(threads, epochs: int):
    """The README's overfitting example (section "Overfitting"), without its plots."""
    d = gf.thermometer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about overfitting, which is its point
        r = gf.fit("mlp", x="t_u", y="t_c", data=d, hidden=(32, 32), normalize=True, optimizer="adam", lr=3e-2,
                   val_fraction=0.3, seed=1, epochs=epochs, progress=False, threads=threads)
    return r.loss


def spin(stop) -> None:
    """A busy process: pure Python arithmetic until told to stop (no threads of its own)."""
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x = (x + i * i) % 1_000_003


def reference_work(n: int) -> int:
    """The floor: ``n`` steps of single-threaded pure-Python arithmetic (no torch, no numpy, no
    memory traffic), whose loaded/quiet ratio is what the machine gives any one-thread job
    under the same load. Three runnable processes on two cores leave each 2/3 of a core (1.5x
    at best); two vCPUs that are hyperthreads of one core, or share its caches, make it more."""
    x = 0
    for i in range(n):
        x = (x + i * i) % 1_000_003
    return x


def timed(modes: dict, epochs: int, repeats: int, reference_steps: int) -> dict:
    """Median seconds of each mode and of the reference, called in turn so drifting load hits
    all alike."""
    times = {name: [] for name in [*modes, REFERENCE]}
    for _ in range(repeats):
        for name, threads in modes.items():
            t0 = time.perf_counter()
            readme_mlp(threads, epochs)
            times[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference_work(reference_steps)
        times[REFERENCE].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


REFERENCE = "pure-Python reference, one thread (the machine's floor)"


def calibrated_steps(seconds: float) -> int:
    """Steps of :func:`reference_work` that take about ``seconds`` on this machine, now."""
    n = 100_000
    t0 = time.perf_counter()
    reference_work(n)
    return max(1, int(n * seconds / (time.perf_counter() - t0)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", type=int, default=2, help="busy processes for the loaded runs (default 2)")
    ap.add_argument("--epochs", type=int, default=200)
    args = ap.parse_args()
    default = torch.get_num_threads()
    modes = {"auto (threads=None)": None, f"forced threads={default} (old behaviour)": default}
    readme_mlp(None, 5)  # warm-up: imports, first-call caches
    t0 = time.perf_counter()
    readme_mlp(None, args.epochs)
    steps = calibrated_steps(time.perf_counter() - t0)  # the reference lasts as long as the fit
    quiet = timed(modes, args.epochs, args.repeats, steps)

    ctx = mp.get_context("spawn")  # fresh interpreters: no copy of this process's torch thread pool
    stop = ctx.Event()
    workers = [ctx.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.busy)]
    for w in workers:
        w.start()
    time.sleep(1.0)  # let them start spinning
    try:
        loaded = timed(modes, args.epochs, args.repeats, steps)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
    rows = [[name, f"{quiet[name]:.3f}", f"{loaded[name]:.3f}", f"{loaded[name] / quiet[name]:.1f}x"]
            for name in [*modes, REFERENCE]]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(table(f"README 11-point MLP, {args.epochs} epochs: quiet vs {args.busy} busy processes "
                f"(median of {args.repeats}; {os.cpu_count()} cores, torch default {default} threads, "
                f"load average {load:.1f} at the end)",
                ["threads", "quiet s", "loaded s", "loaded/quiet"], rows))
    print("target: auto loaded/quiet <= 2x; the reference row is what the machine allows any one-thread job")


if __name__ == "__main__":
    main()
