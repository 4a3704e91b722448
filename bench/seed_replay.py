"""Seed replay: the worked example's SGD loop (5000 epochs, lr=1e-2, x = 0.1*t_u) written by
hand (forward, loss, zero_grad, backward, step) vs gradfit.fit, in the same process.

    python bench/seed_replay.py [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

import gradfit as gf
from _common import best_of, table

T_C = torch.tensor(gf.thermometer()["t_c"])
T_U = torch.tensor(gf.thermometer()["t_u"])


def hand_loop(epochs=5000):
    t_un = 0.1 * T_U
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    optimizer = torch.optim.SGD([params], lr=1e-2)
    for _ in range(epochs):
        w, b = params
        t_p = w * t_un + b
        loss = ((t_p - T_C) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return params.detach().tolist()


def gradfit_fit(gradient, epochs=5000):
    r = gf.fit("w*x + b", x=0.1 * T_U, y=T_C, init={"w": 1.0, "b": 0.0}, optimizer="sgd", lr=1e-2, epochs=epochs,
               gradient=gradient, progress=False)
    return [r.params["w"], r.params["b"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    gradfit_fit("analytic", 10)  # warm caches: sympy derivative, imports
    hand_t, hand_p = best_of(hand_loop, args.repeats)
    rows = [["hand-written loop (anchor)", f"{hand_t:.3f}", "1.00", f"w={hand_p[0]:.4f} b={hand_p[1]:.4f}"]]
    for gradient in ("autograd", "analytic"):
        t, p = best_of(lambda: gradfit_fit(gradient), args.repeats)
        rows.append([f"gradfit.fit gradient={gradient}", f"{t:.3f}", f"{t / hand_t:.2f}",
                     f"w={p[0]:.4f} b={p[1]:.4f}"])
    print(table("seed replay: SGD 5000 epochs, thermometer (best of %d, 1 thread)" % args.repeats,
                ["run", "seconds", "time / hand", "result"], rows))


if __name__ == "__main__":
    main()
