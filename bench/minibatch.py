"""Minibatch training throughput: 500,000 rows x 8 features, MLP 8-64-1 tanh, Adam, batch 1024,
one epoch. gradfit.fit vs the usual hand loop over DataLoader(TensorDataset) and vs a hand
loop that slices tensors with a permutation, all in one process, run in turn (gradfit,
slicing, DataLoader, gradfit, ...) so that a shared machine's load drifts over all three alike.

    python bench/minibatch.py [--rows 500000] [--repeats 3] [--threads N]

``--threads`` sets torch's intra-op threads for the hand loops (default: the process's);
gradfit.fit uses its own ``threads`` policy unless ``--threads`` is given, then the same count.
Targets (issue 13): >= 15x the DataLoader loop, >= 1.0x (ideally ~2x) the slicing loop.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import gradfit as gf
from _common import table

BATCH = 1024


def make_data(rows: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, 8, generator=g)
    y = torch.tanh(x @ torch.randn(8, generator=g)) + 0.1 * torch.randn(rows, generator=g)
    return x, y


def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))


def dataloader_loop(x, y):
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    for xb, yb in loader:
        loss = ((net(xb).squeeze(-1) - yb) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def slicing_loop(x, y):
    net = make_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    perm = torch.randperm(len(y))
    for i in range(0, len(y), BATCH):
        idx = perm[i : i + BATCH]
        loss = ((net(x[idx]).squeeze(-1) - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def gradfit_epoch(x, y, threads=None):
    r = gf.fit(make_net(), x=x, y=y, optimizer="adam", lr=1e-3, epochs=1, batch_size=BATCH, progress=False,
               threads=threads)
    return r.loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    x, y = make_data(args.rows)
    gradfit_epoch(x[:4096], y[:4096], args.threads)  # warm-up: imports
    runs = {"gradfit": lambda: gradfit_epoch(x, y, args.threads), "slicing": lambda: slicing_loop(x, y),
            "dataloader": lambda: dataloader_loop(x, y)}
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    labels = {"dataloader": "hand loop, DataLoader(TensorDataset)", "slicing": "hand loop, tensor slicing",
              "gradfit": f"gradfit.fit (batch_size={BATCH})"}
    rows = [[labels[k], f"{best[k]:.3f}", f"{med[k]:.3f}", f"{best[k] / best['gradfit']:.2f}x",
             f"{med[k] / med['gradfit']:.2f}x"] for k in ("dataloader", "slicing", "gradfit")]
    print(table(f"one epoch, {args.rows} rows x 8, MLP 8-64-1 tanh, Adam, batch {BATCH} "
                f"({args.repeats} rounds, {torch.get_num_threads()} threads for the hand loops)",
                ["run", "best s", "median s", "gradfit speed-up (best)", "(median)"], rows))


if __name__ == "__main__":
    main()
