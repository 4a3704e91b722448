"""fit_many throughput on the Gpufit benchmark workload, against a scipy.optimize.curve_fit loop
on the same data in the same run.

Workload: a*exp(-(x-c)**2/(2*w**2)) + o at x = 0..31 (float32), a ~ U(200,1000),
c = 15.5 + U(-4,4), w ~ U(2,4), o ~ U(10,100); y Poisson around the model; init = truth *
(1 +/- U(0.10,0.20)) with a random sign per parameter; least squares; a fit converges when
|d chi2| < 1e-4 * max(1, chi2) after an accepted step; at most 25 iterations.

    python bench/fit_many.py                      # CPU: 100k fits (+ scipy on 2,000 of them)
    python bench/fit_many.py --device cuda        # GPU: 10k and 1M fits (add --sizes for more)

The first row is fit_many with its default arguments (compile="auto"), one call, timed whole:
for the first size it is the process's first fit, so it includes importing gradfit's modules,
reading the formula's derivative program and native kernel from the disk cache (or building them
when the cache is empty), and its "steady s" column is the median of three more calls. The
scipy anchor is warmed up and timed twice (the faster pass counts). Warm-up (torch.compile) is timed separately from steady-state fitting in
the compiled rows (``--no-compiled`` skips them).
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import numpy as np

import gradfit as gf
from _common import table

FORMULA = "a*exp(-(x-c)**2/(2*w**2)) + o"
NAMES = ("a", "c", "w", "o")


def workload(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.arange(32, dtype=np.float64)
    truth = np.column_stack([rng.uniform(200, 1000, n), 15.5 + rng.uniform(-4, 4, n), rng.uniform(2, 4, n),
                             rng.uniform(10, 100, n)])
    a, c, w, o = (truth[:, i:i + 1] for i in range(4))
    y = rng.poisson(a * np.exp(-(x - c) ** 2 / (2 * w**2)) + o).astype(np.float32)
    factor = 1 + rng.choice([-1.0, 1.0], truth.shape) * rng.uniform(0.10, 0.20, truth.shape)
    return x, y, truth, truth * factor


def median_rel_error(est: np.ndarray, truth: np.ndarray) -> list[float]:
    return [float(np.nanmedian(np.abs(est[:, j] - truth[:, j]) / np.abs(truth[:, j]))) for j in range(truth.shape[1])]


def torch_gaussian(x, a, c, w, o):
    import torch

    return a * torch.exp(-(x - c) ** 2 / (2 * w**2)) + o


def run_gradfit(model, x, y, init, device, compile_):
    t0 = time.perf_counter()
    r = gf.fit_many(model, x, y, init=init, tol=1e-4, max_iter=25, device=device, compile=compile_, progress=False)
    first = time.perf_counter() - t0
    times = []
    for _ in range(3):  # steady state: the median of three calls after the first
        t0 = time.perf_counter()
        r = gf.fit_many(model, x, y, init=init, tol=1e-4, max_iter=25, device=device, compile=compile_,
                        progress=False)
        times.append(time.perf_counter() - t0)
    steady = sorted(times)[1]
    est = np.column_stack([r.params[n] for n in r.param_names])
    return r, est, first, steady


def run_scipy(x, y, init, n):
    from scipy.optimize import curve_fit

    def f(xx, a, c, w, o):
        return a * np.exp(-(xx - c) ** 2 / (2 * w**2)) + o

    def loop(count):
        est = np.full((count, 4), np.nan)
        ok = np.zeros(count, dtype=bool)
        t0 = time.perf_counter()
        for i in range(count):
            try:
                est[i], _ = curve_fit(f, x, y[i].astype(np.float64), p0=init[i])
                ok[i] = True
            except RuntimeError:
                pass
        return est, ok, time.perf_counter() - t0

    # the anchor at its best: warmed up (its first few hundred fits here ran up to 1.7x slower), then
    # the faster of two timed passes
    loop(min(n, 200))
    first, second = loop(n), loop(n)
    return min(first, second, key=lambda run: run[2])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sizes", default=None, help="comma-separated batch sizes (default: 100000 on CPU, "
                                                   "10000,1000000 on GPU)")
    ap.add_argument("--scipy-fits", type=int, default=2000, help="fits for the scipy anchor (a rate is measured)")
    ap.add_argument("--general", action="store_true", default=True, help="also time the general (callable) path")
    ap.add_argument("--no-general", dest="general", action="store_false")
    ap.add_argument("--no-compiled", dest="compiled", action="store_false", default=True,
                    help="skip the compile=True rows (their first call compiles for seconds)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    from gradfit.fitting.setup import resolve_device

    dev = resolve_device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([10_000, 1_000_000] if dev.type == "cuda"
                                                                          else [100_000])
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    rows, records = [], []
    for n in sizes:
        x, y, truth, init = workload(n)
        # the collection that importing torch leaves pending (~0.1 s over its ~10^6 objects) would
        # otherwise run inside whichever call comes first
        gc.collect()
        t0 = time.perf_counter()
        rd = gf.fit_many(FORMULA, x, y, init=init, tol=1e-4, max_iter=25, device=args.device, progress=False)
        once = time.perf_counter() - t0
        again = []
        for _ in range(3):  # the same call again: the process's later calls
            t0 = time.perf_counter()
            gf.fit_many(FORMULA, x, y, init=init, tol=1e-4, max_iter=25, device=args.device, progress=False)
            again.append(time.perf_counter() - t0)
        later = sorted(again)[1]
        rows.append(["gradfit fused, defaults (one call)", f"{n:,}", f"{once:.3f}", f"{later:.3f}", f"{n / once:,.0f}",
                     f"{rd.converged.mean():.4%}",
                     " ".join(f"{e:.4f}" for e in median_rel_error(np.column_stack(
                         [rd.params[k] for k in rd.param_names]), truth))])
        records.append({"path": "defaults", "n": n, "call_s": once, "fits_per_s": n / once, "later_s": later,
                         "converged": float(rd.converged.mean()), "path_taken": rd.timings.get("native")})
        if not args.compiled:
            continue
        r, est, first, steady = run_gradfit(FORMULA, x, y, init, args.device, True)
        rate = n / steady
        conv = float(r.converged.mean())
        err = median_rel_error(est, truth)
        rows.append(["gradfit fused, compile=True (native kernel)", f"{n:,}", f"{first:.1f}", f"{steady:.3f}", f"{rate:,.0f}",
                     f"{conv:.4%}", " ".join(f"{e:.4f}" for e in err)])
        rec = {"path": "fused", "n": n, "warmup_s": first - steady, "fit_s": steady, "fits_per_s": rate,
               "converged": conv, "median_rel_error": err}
        records.append(rec)
        if args.general:
            rg, estg, firstg, steadyg = run_gradfit(torch_gaussian, x, y, init, args.device, True)
            rows.append(["gradfit general (torch callable)", f"{n:,}", f"{firstg:.1f}", f"{steadyg:.3f}",
                         f"{n / steadyg:,.0f}", f"{rg.converged.mean():.4%}",
                         " ".join(f"{e:.4f}" for e in median_rel_error(estg, truth))])
            records.append({"path": "general", "n": n, "fit_s": steadyg, "fits_per_s": n / steadyg,
                            "converged": float(rg.converged.mean()), "fused_over_general": steadyg / steady})
    # scipy anchor on the first size's first fits, and gradfit on exactly those fits
    x, y, truth, init = workload(sizes[0])
    k = min(args.scipy_fits, len(y))
    est_s, ok_s, t_s = run_scipy(x, y[:k], init[:k], k)
    rate_s = k / t_s
    _, est_g, _, _ = run_gradfit(FORMULA, x, y[:k], init[:k], args.device, False)
    rows.append(["scipy curve_fit loop (anchor)", f"{k:,}", "-", f"{t_s:.2f}", f"{rate_s:,.0f}", f"{ok_s.mean():.4%}",
                 " ".join(f"{e:.4f}" for e in median_rel_error(est_s, truth[:k]))])
    rows.append([f"gradfit on the same {k:,} fits", f"{k:,}", "-", "-", "-", "-",
                 " ".join(f"{e:.4f}" for e in median_rel_error(est_g, truth[:k]))])
    print(table(f"fit_many, Gaussian 32 points, float32, on {card}",
                ["run", "fits", "first call s", "steady s", "fits/s", "converged", "median |rel err| a c w o"], rows))
    for rec in records:
        if rec["path"] == "defaults":
            print(f"defaults, first call, {rec['n']:,} fits: {rec['fits_per_s'] / rate_s:,.0f}x the scipy loop "
                  f"({rec['fits_per_s']:,.0f} vs {rate_s:,.0f} fits/s); later calls "
                  f"{rec['n'] / rec['later_s'] / rate_s:,.0f}x ({rec['n'] / rec['later_s']:,.0f} fits/s)")
    fused = next((r for r in records if r["path"] == "fused"), None)
    if fused:
        print(f"compiled, steady state: {fused['fits_per_s'] / rate_s:,.0f}x the scipy loop "
              f"({fused['fits_per_s']:,.0f} vs {rate_s:,.0f} fits/s)")
    general = next((r for r in records if r["path"] == "general"), None)
    if general:
        print(f"general path / fused path time: {general['fused_over_general']:.2f}x")
    if args.json:
        print(json.dumps({"card": card, "records": records, "scipy_fits_per_s": rate_s}))


if __name__ == "__main__":
    main()
