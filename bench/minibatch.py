"""Minibatch training throughput: 500,000 rows x 8 features, MLP 8-64-1 tanh, Adam, batch 1024,
one epoch. gradfit.fit vs the usual hand loop over DataLoader(TensorDataset) and vs a hand
loop that slices tensors with a permutation, all in one process.

    python bench/minibatch.py [--rows 500000] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import gradfit as gf
from _common import best_of, table

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


def gradfit_epoch(x, y):
    r = gf.fit(make_net(), x=x, y=y, optimizer="adam", lr=1e-3, epochs=1, batch_size=BATCH, progress=False)
    return r.loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    x, y = make_data(args.rows)
    gradfit_epoch(x[:4096], y[:4096])  # warm-up: imports
    t_gf, _ = best_of(lambda: gradfit_epoch(x, y), args.repeats)
    t_slice, _ = best_of(lambda: slicing_loop(x, y), args.repeats)
    t_dl, _ = best_of(lambda: dataloader_loop(x, y), max(1, args.repeats - 1))
    rows = [
        ["hand loop, DataLoader(TensorDataset)", f"{t_dl:.2f}", f"{t_dl / t_gf:.1f}x"],
        ["hand loop, tensor slicing", f"{t_slice:.2f}", f"{t_slice / t_gf:.2f}x"],
        ["gradfit.fit (batch_size=1024)", f"{t_gf:.2f}", "1.00x"],
    ]
    print(table(f"one epoch, {args.rows} rows x 8, MLP 8-64-1 tanh, Adam, batch {BATCH} "
                f"(best of {args.repeats}, {torch.get_num_threads()} threads)",
                ["run", "seconds", "gradfit speed-up"], rows))


if __name__ == "__main__":
    main()
