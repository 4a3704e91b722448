"""fit_many(loss="poisson") against least squares on the Gpufit workload, in the same run.

(a) Throughput: Gpufit's workload (bench/fit_many.py: Gaussian at x = 0..31, float32, init
truth * (1 +/- 10-20%), tol 1e-4, at most 25 iterations), timed alternately by least squares and
by Poisson maximum likelihood, with fit_many's defaults (compile="auto": the native kernel, both
estimators in C on the CPU once it is in the disk cache; the warm-up builds it), or --eager (the
torch kernels, compile=False) or --compiled (compile=True); the goal is Poisson >= 0.5x the
least-squares fits/s.

(b) Bias at low counts: amplitudes in three bands (10-20, 10-50, 50-200) over offsets 1-5, the
median relative bias (median of (estimate - truth) / truth over converged fits) of each
parameter by least squares, by least squares weighted by 1/max(y, 1) (sigma = sqrt(y), the usual
weighting for counts), and by Poisson maximum likelihood.

    python bench/poisson.py                     # CPU: 100k fits for (a), 20k per band for (b)
    python bench/poisson.py --eager             # the torch kernels (compile=False)
    python bench/poisson.py --n 2000            # a smoke run
    python bench/poisson.py --device cuda --n 1000000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import table

import gradfit as gf

FORMULA = "a*exp(-(x-c)**2/(2*w**2)) + o"
NAMES = ("a", "c", "w", "o")
BANDS = ((10, 20), (10, 50), (50, 200))


def workload(n: int, amplitude=(200, 1000), offset=(10, 100), seed: int = 0):
    """bench/fit_many.py's workload with the amplitude and offset ranges as arguments."""
    rng = np.random.default_rng(seed)
    x = np.arange(32, dtype=np.float64)
    truth = np.column_stack([rng.uniform(*amplitude, n), 15.5 + rng.uniform(-4, 4, n), rng.uniform(2, 4, n),
                             rng.uniform(*offset, n)])
    a, c, w, o = (truth[:, i:i + 1] for i in range(4))
    y = rng.poisson(a * np.exp(-(x - c) ** 2 / (2 * w**2)) + o).astype(np.float32)
    factor = 1 + rng.choice([-1.0, 1.0], truth.shape) * rng.uniform(0.10, 0.20, truth.shape)
    return x, y, truth, truth * factor


def fit(x, y, init, device, compile_, **kw):
    return gf.fit_many(FORMULA, x, y, init=init, tol=1e-4, max_iter=25, device=device, compile=compile_,
                       progress=False, **kw)


def throughput(n: int, device, compile_, repeats: int):
    """Median seconds of LS and Poisson calls, alternated (the machine's drift hits both alike)."""
    x, y, _, init = workload(n)
    runs = {"least squares": {}, "poisson": {"loss": "poisson"}}
    for kw in runs.values():  # warm-up: derivative programs, compiled kernels (built now if not cached)
        fit(x, y, init, device, True if compile_ == "auto" else compile_, **kw)
    times = {k: [] for k in runs}
    results = {}
    for _ in range(repeats):
        for name, kw in runs.items():
            t0 = time.perf_counter()
            results[name] = fit(x, y, init, device, compile_, **kw)
            times[name].append(time.perf_counter() - t0)
    return {name: (float(np.median(t)), results[name]) for name, t in times.items()}


def bias(n: int, device, seed: int = 1):
    """{band: {estimator: (median relative bias (4,), converged fraction)}}."""
    out = {}
    for band in BANDS:
        x, y, truth, init = workload(n, amplitude=band, offset=(1, 5), seed=seed)
        est = {"least squares": {}, "LS, sigma=sqrt(y)": {"sigma": np.sqrt(np.maximum(y, 1.0))},
               "poisson": {"loss": "poisson"}}
        out[band] = {}
        for name, kw in est.items():
            r = fit(x, y, init, device, "auto", **kw)
            ok = r.converged
            values = np.column_stack([r.params[k] for k in NAMES])
            out[band][name] = (np.median((values[ok] - truth[ok]) / truth[ok], axis=0), float(ok.mean()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=100_000, help="fits for the throughput runs (default 100k)")
    ap.add_argument("--bias-n", type=int, default=None, help="fits per amplitude band (default min(n, 20k))")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compiled", action="store_true", help="compile=True (the first call compiles)")
    ap.add_argument("--eager", action="store_true", help="compile=False: the torch kernels")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    from gradfit.fitting.fit import resolve_device

    dev = resolve_device(args.device)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    compile_ = True if args.compiled else False if args.eager else "auto"
    kind = {True: "compile=True", False: "eager (compile=False)", "auto": "defaults (compile='auto')"}[compile_]
    timed = throughput(args.n, args.device, compile_, args.repeats)
    ls_s = timed["least squares"][0]
    rows = [[name, f"{args.n:,}", f"{s:.3f}", f"{args.n / s:,.0f}", f"{ls_s / s:.2f}x",
             f"{r.converged.mean():.4%}", f"{np.median(r.iterations):.0f}"] for name, (s, r) in timed.items()]
    print(table(f"fit_many throughput, Gaussian 32 points, float32, {kind}, "
                f"on {card}", ["estimator", "fits", "median s", "fits/s", "vs LS", "converged", "median iter"],
                rows))
    bias_n = args.bias_n or min(args.n, 20_000)
    table_b = bias(bias_n, args.device)
    rows_b = []
    for band, by in table_b.items():
        for name, (b, conv) in by.items():
            rows_b.append([f"a {band[0]}-{band[1]}", name, *(f"{v:+.4f}" for v in b), f"{conv:.2%}"])
    print()
    print(table(f"median relative bias at low counts (offset 1-5), {bias_n:,} fits per band",
                ["amplitude", "estimator", "a", "c", "w", "o", "converged"], rows_b))
    if args.json:
        print(json.dumps({"card": card, "n": args.n,
                          "fits_per_s": {k: args.n / s for k, (s, _) in timed.items()},
                          "bias": {f"{b[0]}-{b[1]}": {k: v[0].tolist() for k, v in by.items()}
                                   for b, by in table_b.items()}}))


if __name__ == "__main__":
    main()
