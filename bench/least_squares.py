"""Time to the least-squares optimum, in process, same data, same run:

* thermometer (11 points, t_c ~ w*t_u + b): gradfit.fit with its defaults vs
  scipy.optimize.curve_fit vs the worked example's 5000-epoch SGD loop (hand-written);
* a nonlinear exponential decay (1,000 points): gradfit.fit vs curve_fit.

    python bench/least_squares.py [--repeats 1000]

gradfit and curve_fit are called in turn (interleaved) and each time is a median.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import gradfit as gf
from _common import interleaved_medians, median_of, table
from scipy.optimize import curve_fit


def sgd_loop():
    t_c = torch.tensor(gf.thermometer()["t_c"])
    t_u = 0.1 * torch.tensor(gf.thermometer()["t_u"])
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    opt = torch.optim.SGD([params], lr=1e-2)
    for _ in range(5000):
        w, b = params
        loss = ((w * t_u + b - t_c) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1000)
    args = ap.parse_args()
    # the same numpy arrays for both (gf.thermometer() holds Python lists, which each call would
    # convert; curve_fit is handed arrays)
    x, y = np.array(gf.thermometer()["t_u"]), np.array(gf.thermometer()["t_c"])
    d = {"t_u": x, "t_c": y}
    r = gf.fit("t_c ~ w*t_u + b", data=d)  # warm-up (imports, caches)
    popt, _ = curve_fit(lambda x, w, b: w * x + b, x, y)
    t_gf, t_cf = interleaved_medians([lambda: gf.fit("t_c ~ w*t_u + b", data=d),
                                      lambda: curve_fit(lambda x, w, b: w * x + b, x, y)], args.repeats)
    t_sgd = median_of(sgd_loop, 3)
    rows = [
        ["scipy curve_fit (anchor)", f"{t_cf * 1e6:.0f}", "1.00", f"w={popt[0]:.6f} b={popt[1]:.4f}"],
        ["gradfit.fit defaults (auto -> linear)", f"{t_gf * 1e6:.0f}", f"{t_gf / t_cf:.2f}",
         f"w={r.params['w']:.6f} b={r.params['b']:.4f}"],
        ["SGD 5000 epochs, hand loop", f"{t_sgd * 1e6:.0f}", f"{t_sgd / t_cf:.0f}", "w=5.3671 b=-17.3012 (not at optimum)"],
    ]
    print(table(f"thermometer, median of {args.repeats}", ["run", "microseconds", "time / curve_fit", "result"], rows))
    print(f"gradfit vs 5000-epoch SGD loop: {t_sgd / t_gf:.0f}x faster")

    rng = np.random.default_rng(0)
    xs = np.linspace(0, 10, 1000)
    ys = 3.0 * np.exp(-0.4 * xs) + 1.0 + 0.05 * rng.standard_normal(1000)
    gf.fit("a*exp(-k*x) + c", x=xs, y=ys, dtype="float64")
    reps = max(5, args.repeats // 10)
    t_gf2, t_cf2 = interleaved_medians([lambda: gf.fit("a*exp(-k*x) + c", x=xs, y=ys, dtype="float64"),
                                        lambda: curve_fit(lambda x, a, k, c: a * np.exp(-k * x) + c, xs, ys)], reps)
    r2 = gf.fit("a*exp(-k*x) + c", x=xs, y=ys, dtype="float64")
    p2, _ = curve_fit(lambda x, a, k, c: a * np.exp(-k * x) + c, xs, ys)
    rows = [["scipy curve_fit (anchor)", f"{t_cf2 * 1e3:.2f}", "1.00", np.array2string(p2, precision=6)],
            ["gradfit.fit defaults (auto -> lm), float64", f"{t_gf2 * 1e3:.2f}", f"{t_gf2 / t_cf2:.2f}",
             np.array2string(np.array([r2.params[k] for k in "akc"]), precision=6)]]
    print(table(f"exponential decay, 1000 points, median of {reps}", ["run", "ms", "time / curve_fit", "params"], rows))


if __name__ == "__main__":
    main()
