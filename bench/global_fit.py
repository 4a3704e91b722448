"""Global fitting (fit_many(shared=...)) against scipy.optimize.least_squares with jac_sparsity,
its best option for the block-arrow structure, on the same problem in the same run.

Workload: y = a*exp(-k*x) + o + d*x at 32 points x in [0, 5]; k = 0.8 is shared by every fit,
a ~ U(2, 5), o ~ U(0, 1), d ~ U(-0.05, 0.05) are per fit (1 shared + 3 local parameters);
Gaussian noise 0.02; start k = 0.6, a = 3, o = 0.5, d = 0.

scipy: the stacked residuals (B*32) of the 1 + 3B parameters, method="trf", tr_solver="lsmr",
x_scale="jac", a finite-difference Jacobian grouped by ``jac_sparsity`` (the fits' columns do
not overlap: 4 evaluations per Jacobian), ftol = xtol = gtol = 1e-10.
gradfit: defaults (float32 model evaluations, float64 normal equations and solve; tol 1e-4
relative to one fit's chi-square), and the same with dtype="float64".

    python bench/global_fit.py                 # B = 1,000 vs scipy; gradfit alone at 10k/30k/100k
    python bench/global_fit.py --smoke         # B = 100 vs scipy; gradfit at 1,000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import best_of, table

import gradfit as gf

FORMULA = "a*exp(-k*x) + o + d*x"
INIT = {"a": 3.0, "k": 0.6, "o": 0.5, "d": 0.0}


def workload(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 5, 32)
    a, o, d = rng.uniform(2, 5, n), rng.uniform(0, 1, n), rng.uniform(-0.05, 0.05, n)
    y = a[:, None] * np.exp(-0.8 * x) + o[:, None] + d[:, None] * x + rng.normal(0, 0.02, (n, 32))
    return x, y


def gradfit_fit(x, y, threads=None, dtype="float32", compile="auto"):
    return gf.fit_many(FORMULA, x, y, init=INIT, shared=["k"], dtype=dtype, threads=threads, compile=compile)


def scipy_fit(x, y):
    from scipy.optimize import least_squares
    from scipy.sparse import lil_matrix

    n, m = y.shape

    def residuals(v):
        k, a, o, d = v[0], v[1:n + 1, None], v[n + 1:2 * n + 1, None], v[2 * n + 1:, None]
        return (a * np.exp(-k * x) + o + d * x - y).ravel()

    sparsity = lil_matrix((n * m, 1 + 3 * n), dtype=int)
    sparsity[:, 0] = 1
    rows = np.arange(n * m)
    fit = rows // m
    for block in range(3):
        sparsity[rows, 1 + block * n + fit] = 1
    v0 = np.concatenate([[INIT["k"]], np.full(n, INIT["a"]), np.full(n, INIT["o"]), np.full(n, INIT["d"])])
    sol = least_squares(residuals, v0, jac_sparsity=sparsity, method="trf", tr_solver="lsmr", x_scale="jac",
                        ftol=1e-10, xtol=1e-10, gtol=1e-10)
    return sol.x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-scipy", type=int, default=1000)
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--smoke", action="store_true", help="small sizes (a check that the script runs)")
    args = parser.parse_args()
    if args.smoke:
        args.n_scipy, args.sizes = 100, "1000"
    n = args.n_scipy
    x, y = workload(n)
    t_sp, v = best_of(lambda: scipy_fit(x, y), 3)
    rows = []
    for dtype in ("float32", "float64"):
        # the native kernel built once (a process builds it after its first long run, or a later
        # process finds it in the disk cache), then defaults; and the torch loop (compile=False)
        t_build = time.perf_counter()
        built = gradfit_fit(x, y[:4], args.threads, dtype, compile=True).timings.get("native")
        t_build = time.perf_counter() - t_build
        for compile_, label in (("auto", "defaults" + (", native kernel" if built else "")), (False, "torch loop")):
            t_gf, r = best_of(lambda: gradfit_fit(x, y, args.threads, dtype, compile_), 5)
            ours = np.concatenate([[r.shared["k"]], r.params["a"], r.params["o"], r.params["d"]])
            errs = np.concatenate([[r.shared_stderr["k"]], r.stderr["a"], r.stderr["o"], r.stderr["d"]])
            diff = np.abs(ours - v)
            rows.append([f"gradfit shared=['k'], dtype={dtype}, {label}", f"{t_gf:.4f}", f"{t_sp / t_gf:.0f}x",
                         f"{r.converged.mean():.4f}", f"{np.max(diff / errs):.2g}"])
        print(f"{dtype}: first call with compile=True (building the kernel unless cached): {t_build:.2f} s")
    rows.append([f"scipy least_squares(jac_sparsity, trf/lsmr), B={n}", f"{t_sp:.3f}", "1x", "-", "0"])
    print(table("global fit: 1 shared + 3 local parameters, 32 points",
                ["", "seconds", "speed-up", "converged", "max |gradfit - scipy| / stderr"], rows))
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        xs, ys = workload(size, seed=1)
        elapsed, r = best_of(lambda: gradfit_fit(xs, ys, args.threads), 2)
        rows.append([f"B={size:,}", f"{elapsed:.2f}", f"{elapsed / size * 1e6:.1f}", str(r.timings["iterations"]),
                     f"{r.converged.mean():.4f}", f"{r.shared['k']:.6f} +/- {r.shared_stderr['k']:.2g}"])
    print(table("gradfit alone (defaults, best of two calls)", ["", "seconds", "us per fit", "iterations", "converged", "k"], rows))


if __name__ == "__main__":
    main()
