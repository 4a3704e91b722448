"""fit_many with bounds: the native kernel (box rules in C) against the eager torch kernel and a
scipy curve_fit loop with the same bounds, in the same run.

Workload: bench/fit_many.py's Gaussians (32 points, float32 data, Poisson noise, starts 10-20% off)
with the width bounded to [2.5, 3.5] (active for about half of the fits, whose true width lies
outside) and the offset to [0, 200]; tol 1e-4, at most 25 iterations.

    python bench/bounded_many.py              # 100k fits; scipy on 1,000 of them
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import gradfit as gf
from _common import table
from fit_many import FORMULA, workload

BOUNDS = {"w": (2.5, 3.5), "o": (0.0, 200.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--scipy-fits", type=int, default=1000)
    args = ap.parse_args()
    x, y, truth, init = workload(args.n)
    init[:, 2] = np.clip(init[:, 2], 2.55, 3.45)  # starts inside the box
    kw = dict(init=init, bounds=BOUNDS, tol=1e-4, max_iter=25, progress=False)
    gf.fit_many(FORMULA, x, y[:64], compile=True, **{**kw, "init": init[:64]})  # the native kernel, built once
    rows, results = [], {}
    for label, compile_ in (("native kernel (compile=True)", True), ("eager torch (compile=False)", False)):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = gf.fit_many(FORMULA, x, y, compile=compile_, **kw)
            times.append(time.perf_counter() - t0)
        results[label] = r
        rows.append([f"gradfit, {label}", f"{args.n:,}", f"{min(times):.3f}", f"{args.n / min(times):,.0f}",
                     f"{r.converged.mean():.4%}", f"{np.mean(r.params['w'] == 2.5) + np.mean(r.params['w'] == 3.5):.3f}"])
    from scipy.optimize import curve_fit

    def f(xx, a, c, w, o):
        return a * np.exp(-(xx - c) ** 2 / (2 * w**2)) + o

    k = min(args.scipy_fits, args.n)
    lo = [-np.inf, -np.inf, 2.5, 0.0]
    hi = [np.inf, np.inf, 3.5, 200.0]
    t0 = time.perf_counter()
    ok = 0
    for i in range(k):
        try:
            curve_fit(f, x, y[i], p0=init[i], bounds=(lo, hi), ftol=1e-8, xtol=1e-8)
            ok += 1
        except RuntimeError:
            pass
    t_s = (time.perf_counter() - t0) / k
    rows.append(["scipy curve_fit loop, bounds (trf)", f"{k:,}", f"{t_s * k:.3f}", f"{1 / t_s:,.0f}", f"{ok / k:.4%}", "-"])
    print(table(f"fit_many with bounds {BOUNDS}, Gaussian 32 points", ["", "fits", "seconds", "fits/s", "converged",
                                                                       "w on a bound"], rows))
    a, b = results["native kernel (compile=True)"], results["eager torch (compile=False)"]
    native_s, eager_s = float(rows[0][2]), float(rows[1][2])
    print(f"native vs eager: statuses identical for {np.mean(a.status == b.status):.4%} of fits; native "
          f"{eager_s / native_s:.1f}x eager, {args.n / native_s * t_s:.0f}x the scipy loop")


if __name__ == "__main__":
    main()
