"""gf.bootstrap against a loop of scipy curve_fit over the same resamples, in the same run.

The workload of issue 15: a 100-point exponential decay y = a exp(-k x) + noise, fitted once,
then ``n`` (default 1,000) residual-bootstrap refits. gradfit runs them as one float64
fit_many batch (``gf.bootstrap``, end to end: data check, resampling, refits, intervals); the
anchor refits the same resampled datasets one by one with ``scipy.optimize.curve_fit``
(started at the estimate, its default tolerances), which is what users write by hand. The goal
is gradfit under 1 s for n = 1,000 on this CPU. Both give percentile intervals of k, printed
side by side.

    python bench/bootstrap.py               # n = 1,000 resamples
    python bench/bootstrap.py --n 100       # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
from _common import best_of, table

import gradfit as gf

POINTS = 100


def workload(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 5.0, POINTS)
    return x, 3.0 * np.exp(-0.7 * x) + 0.05 * rng.standard_normal(POINTS)


def same_resamples(r, x, y, n: int, seed: int) -> np.ndarray:
    """The residual resamples gf.bootstrap draws (fitting/bootstrap.py, unweighted): centred
    residuals scaled by sqrt(m / (m - k)), drawn with the same Generator calls."""
    mu = r.params["a"] * np.exp(-r.params["k"] * x)
    e = y - mu
    e = (e - e.mean()) * math.sqrt(len(y) / (len(y) - 2))
    rng = np.random.default_rng(seed)
    return mu + e[rng.integers(0, len(y), size=(n, len(y)))]


def scipy_loop(ys, x, p0):
    from scipy.optimize import curve_fit

    def model(x, a, k):
        return a * np.exp(-k * x)

    out = np.empty((len(ys), 2))
    for i, y in enumerate(ys):
        out[i] = curve_fit(model, x, y, p0=p0)[0]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="resamples (default 1,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    x, y = workload()
    r = gf.fit("a*exp(-k*x)", x=x, y=y, init={"a": 1.0, "k": 1.0})
    gf.bootstrap(r, x=x, y=y, n=args.n, seed=0)  # warm-up: the model's derivative program
    rows, seconds = [], {}
    for kind in ("residual", "pairs"):
        s, boot = best_of(lambda kind=kind: gf.bootstrap(r, x=x, y=y, n=args.n, seed=0, kind=kind), args.repeats)
        seconds[f"gradfit {kind}"] = s
        lo, hi = boot.ci(0.95)["k"]
        rows.append([f"gf.bootstrap kind={kind}", f"{args.n:,}", f"{s:.3f}", f"{args.n / s:,.0f}",
                     f"{len(boot.samples) / args.n:.1%}", f"[{lo:.5f}, {hi:.5f}]"])
    ys = same_resamples(r, x, y, args.n, seed=0)
    p0 = [r.params["a"], r.params["k"]]
    scipy_loop(ys[:5], x, p0)  # warm-up: scipy's imports are not part of its time
    s, fits = best_of(lambda: scipy_loop(ys, x, p0), 2)
    seconds["scipy loop"] = s
    lo, hi = np.quantile(fits[:, 1], [0.025, 0.975])
    rows.append(["curve_fit loop (same residual resamples)", f"{args.n:,}", f"{s:.3f}", f"{args.n / s:,.0f}",
                 "100.0%", f"[{lo:.5f}, {hi:.5f}]"])
    ratio = seconds["scipy loop"] / seconds["gradfit residual"]
    print(table(f"bootstrap of a {POINTS}-point exponential fit, float64, CPU ({torch.get_num_threads()} threads)",
                ["method", "resamples", "best s", "refits/s", "converged", "95% percentile CI of k"], rows))
    print(f"\ngf.bootstrap (residual) is {ratio:.1f}x the curve_fit loop; goal: under 1 s at n = 1,000 "
          f"({'met' if args.n < 1000 or seconds['gradfit residual'] < 1.0 else 'NOT met'} at n = {args.n:,})")
    if args.json:
        print(json.dumps({"n": args.n, "seconds": seconds, "ratio_vs_scipy": ratio}))


if __name__ == "__main__":
    main()
