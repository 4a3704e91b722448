"""Single nonlinear least-squares fits: gradfit.fit vs scipy.optimize.curve_fit, same data,
same start values, same run (issue 13, target 1).

* exponential decay ``a*exp(-k*x) + c`` at 100, 1,000 and 100,000 points;
* a Gaussian peak ``a*exp(-(x-m)**2/(2*s**2)) + c`` (200 points);
* a 4-parameter Hill curve ``bottom + (top-bottom)/(1 + (ec50/x)**n)`` (48 points);
* Michaelis-Menten ``vmax*x/(km + x)`` (2 parameters, 20 points: the small end of the class);
* the Gaussian peak with per-point sigma (120 points; curve_fit given the same sigma);
* every NIST StRD nonlinear problem from both certified starts (54 fits; total time).

    python bench/single_fits.py [--repeats 50] [--nist-repeats 3] [--only decay1k,...] [--clock cpu]
                                [--kernel native|auto|eager]

``--kernel native`` (default): each formula's native kernel (optim/native_single.py) is built
during the warm-up call, as the tiering of ``compile="auto"`` builds it once a process has spent
two builds' time on a formula, and as every later process finds it in the disk cache; ``auto``:
no build forced (a first process with an empty cache: lm.py until the tiering builds); ``eager``:
no C compiler (lm.py throughout). The "path" column says which ran.

gradfit runs ``gf.fit(formula, ..., dtype="float64")`` (its defaults otherwise: exact
symbolic Jacobian, Levenberg-Marquardt); curve_fit its defaults (method "lm", forward
differences). The two are called in turn (interleaved) and each time is a median, so the
machine's load drifts over both alike: compare the ratio, not the absolute times. Accuracy
is the largest relative difference of the parameters from a reference minimizer
(scipy.optimize.least_squares, ftol = xtol = gtol = 1e-15, exact Jacobian, polished by
Gauss-Newton steps in extended precision: see _reference), and for NIST the smallest LRE
(correct digits) against the certified values over all 54 fits.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import curve_fit, least_squares  # noqa: E402

import gradfit as gf  # noqa: E402
from _common import table  # noqa: E402
from gradfit.data.nist import lre, read_strd  # noqa: E402

torch.set_num_threads(1)

#: the clock: wall time (perf_counter) or, on a machine shared with other work, this
#: process's CPU time (process_time), which the other work does not inflate
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def interleaved_medians(fns, repeats: int, clock=time.perf_counter) -> list[float]:
    """Median seconds per call of each function, called in turn (a, b, a, b, ...) so that
    the machine's load drifts over all of them alike (bench/_common.py's, with a clock)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            t0 = clock()
            fn()
            bucket.append(clock() - t0)
    return [statistics.median(b) for b in times]


def _workloads():
    rng = np.random.default_rng(0)
    out = {}
    for n, key in ((100, "decay100"), (1000, "decay1k"), (100_000, "decay100k")):
        x = np.linspace(0, 10, n)
        y = 3.0 * np.exp(-0.4 * x) + 1.0 + 0.05 * rng.standard_normal(n)
        out[key] = dict(label=f"exp decay, {n:,} points", formula="a*exp(-k*x) + c", names=("a", "k", "c"),
                        f=lambda x, a, k, c: a * np.exp(-k * x) + c,
                        jac=lambda p, x: np.column_stack([np.exp(-p[1] * x), -p[0] * x * np.exp(-p[1] * x),
                                                          np.ones_like(x)]),
                        x=x, y=y, p0=(1.0, 1.0, 1.0))
    x = np.linspace(-5, 5, 200)
    y = 2.5 * np.exp(-(x - 0.7) ** 2 / (2 * 0.9**2)) + 0.3 + 0.02 * rng.standard_normal(200)

    def gauss_jac(p, x):
        a, m, s, _ = p
        e = np.exp(-(x - m) ** 2 / (2 * s**2))
        return np.column_stack([e, a * e * (x - m) / s**2, a * e * (x - m) ** 2 / s**3, np.ones_like(x)])

    out["gauss"] = dict(label="Gaussian peak, 200 points", formula="a*exp(-(x-m)**2/(2*s**2)) + c",
                        names=("a", "m", "s", "c"), f=lambda x, a, m, s, c: a * np.exp(-(x - m) ** 2 / (2 * s**2)) + c,
                        jac=gauss_jac, x=x, y=y, p0=(2.0, 0.5, 1.0, 0.0))
    x = np.repeat(np.logspace(-2, 2, 16), 3)
    y = 0.1 + (1.9 - 0.1) / (1 + (1.3 / x) ** 1.2) + 0.02 * rng.standard_normal(x.size)

    def hill_jac(p, x):
        b, t, e, n = p
        q = (e / x) ** n
        den = 1 + q
        return np.column_stack([1 - 1 / den, 1 / den, -(t - b) * n * q / (e * den**2),
                                -(t - b) * q * np.log(e / x) / den**2])

    out["hill"] = dict(label="Hill curve (4 parameters), 48 points", formula="bottom + (top-bottom)/(1 + (ec50/x)**n)",
                       names=("bottom", "top", "ec50", "n"),
                       f=lambda x, b, t, e, n: b + (t - b) / (1 + (e / x) ** n), jac=hill_jac, x=x, y=y,
                       p0=(0.0, 2.0, 1.0, 1.0))
    # the small end of the class (a new user's cases, ninth session): 2 parameters at 20 points,
    # where curve_fit is cheapest, and per-point sigma (weights); their own generator, so the
    # data above stay as they were
    rng = np.random.default_rng(1)
    x = np.linspace(0.2, 20, 20)
    y = 3.0 * x / (2.0 + x) + 0.05 * rng.standard_normal(x.size)
    out["mm"] = dict(label="Michaelis-Menten (2 parameters), 20 points", formula="vmax*x/(km + x)",
                     names=("vmax", "km"), f=lambda x, v, k: v * x / (k + x),
                     jac=lambda p, x: np.column_stack([x / (p[1] + x), -p[0] * x / (p[1] + x) ** 2]),
                     x=x, y=y, p0=(1.0, 1.0))
    x = np.linspace(-5, 5, 120)
    sigma = 0.02 + 0.01 * np.abs(x)
    y = 2.5 * np.exp(-(x - 0.7) ** 2 / (2 * 0.9**2)) + 0.3 + sigma * rng.standard_normal(x.size)
    out["gauss_sigma"] = dict(out["gauss"], label="Gaussian peak, 120 points, sigma=", x=x, y=y, sigma=sigma)
    return out


def _reference(w) -> np.ndarray:
    """The least-squares minimizer to ~1e-14: scipy's least_squares (method "lm", tolerances
    1e-15, exact Jacobian), then Gauss-Newton steps with residuals and normal sums in 80-bit
    extended precision (np.longdouble). In float64, chi-square is flat to rounding over ~1e-10
    of these parameters (3.6e-9 for the Hill curve), so a float64 solver stops anywhere in that
    floor, least_squares included; the stationarity condition J^T r = 0 pins the minimum down
    far better, and extended precision evaluates it."""
    x, y, f, jac = w["x"], w["y"], w["f"], w["jac"]
    sigma = w.get("sigma", np.ones_like(y))
    p = least_squares(lambda p: (f(x, *p) - y) / sigma, w["p0"], jac=lambda p: jac(p, x) / sigma[:, None],
                      method="lm", ftol=1e-15, xtol=1e-15, gtol=1e-15).x.astype(np.longdouble)
    xl, yl = np.asarray(x, dtype=np.longdouble), np.asarray(y, dtype=np.longdouble)
    sl = np.asarray(sigma, dtype=np.longdouble)
    for _ in range(4):
        r, j = (f(xl, *p) - yl) / sl, jac(p, xl) / sl[:, None]
        a, g = j.T @ j, j.T @ r
        step = np.linalg.solve(a.astype(np.float64), g.astype(np.float64)).astype(np.longdouble)
        step += np.linalg.solve(a.astype(np.float64), (g - a @ step).astype(np.float64))  # one refinement
        p = p - step
    return p.astype(np.float64)


def _rel(values, ref) -> float:
    values, ref = np.asarray(values, dtype=float), np.asarray(ref, dtype=float)
    return float(np.max(np.abs(values - ref) / np.maximum(np.abs(ref), 1e-300)))


def bench_workload(w, repeats: int, clock):
    x, y, p0, sigma = w["x"], w["y"], w["p0"], w.get("sigma")
    init = dict(zip(w["names"], p0))

    def run_gf():
        return gf.fit(w["formula"], x=x, y=y, init=init, sigma=sigma, dtype="float64")

    def run_cf():
        return curve_fit(w["f"], x, y, p0=p0, sigma=sigma)

    r, (popt, _) = warm_up(run_gf), run_cf()  # warm-up (imports, caches, the native kernel)
    t_gf, t_cf = interleaved_medians([run_gf, run_cf], repeats, clock)
    ref = _reference(w)
    _, _, info, _, _ = curve_fit(w["f"], x, y, p0=p0, sigma=sigma, full_output=True)
    return [w["label"], f"{t_cf * 1e3:.3f}", f"{t_gf * 1e3:.3f}", f"{t_gf / t_cf:.2f}",
            f"{_rel([r.params[n] for n in w['names']], ref):.1e}", f"{_rel(popt, ref):.1e}",
            f"{r.epochs_run} / {info['nfev']}", _path(r)]


def _nist_model(problem):
    """The file's formula as f(x, *params) in numpy, for curve_fit."""
    from gradfit.formula.compile import compile_tree
    from gradfit.models.formula import FormulaModel

    model = FormulaModel(problem.formula).bind(problem.columns)
    fn = compile_tree(model.expression, "numpy")
    names = model.input_names

    def f(x, *p):
        env = dict(zip(problem.param_names, p))
        env.update(zip(names, x))
        return fn(env)

    x = np.stack([np.asarray(problem.columns[n], dtype=float) for n in names])
    return f, x, np.asarray(model.response_numpy(problem.columns), float)


def bench_nist(folder: Path, repeats: int, clock):
    problems = [p for p in (read_strd(f) for f in sorted(folder.glob("*.dat"))) if not p.linear]
    total_gf = total_cf = 0.0
    worst_gf = worst_cf = 15.0
    per_fit = []
    paths = set()
    for p in problems:
        f, x, y = _nist_model(p)
        for s in (0, 1):
            init = p.starts[s]
            p0 = [init[n] for n in p.param_names]

            def run_gf():
                return gf.fit(p.formula, data=p.columns, init=init, dtype="float64")

            def run_cf():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        return curve_fit(f, x, y, p0=p0)[0]
                    except (RuntimeError, ValueError):
                        return np.full(len(p0), np.nan)

            r, popt = warm_up(run_gf), run_cf()
            t_gf, t_cf = interleaved_medians([run_gf, run_cf], repeats, clock)
            total_gf += t_gf
            total_cf += t_cf
            d_gf = min(lre(r.params[n], p.certified[n]) for n in p.param_names)
            d_cf = min(lre(float(v), p.certified[n]) for n, v in zip(p.param_names, popt))
            worst_gf, worst_cf = min(worst_gf, d_gf), min(worst_cf, d_cf)
            per_fit.append((f"{p.name}-{s + 1}", t_gf, t_cf, d_gf, d_cf, r.epochs_run))
            paths.add(_path(r))
    row = ["NIST StRD, 54 fits (total)", f"{total_cf * 1e3:.1f}", f"{total_gf * 1e3:.1f}", f"{total_gf / total_cf:.2f}",
           f"min {worst_gf:.1f} digits", f"min {worst_cf:.1f} digits", "", "/".join(sorted(paths))]
    return row, per_fit


#: how the warm-up call treats the native kernel: see the module docstring
KERNEL = {"mode": "native"}


def warm_up(run_gf):
    """The first gradfit call of a workload; with --kernel native it builds the formula's kernel."""
    if KERNEL["mode"] != "native":
        return run_gf()
    from gradfit.lsq import solve

    build, solve.build_single_now = solve.build_single_now, lambda *a: True
    try:
        return run_gf()
    finally:
        solve.build_single_now = build


def _path(result) -> str:
    return "native" if result.settings["strategy"].endswith("native kernel") else "lm.py"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", choices=("native", "auto", "eager"), default="native",
                    help="native: build each formula's native kernel in the warm-up; auto: as a first process with "
                         "an empty cache; eager: no C compiler")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--nist-repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated: decay100,decay1k,decay100k,gauss,hill,mm,gauss_sigma,nist")
    ap.add_argument("--clock", choices=tuple(CLOCK), default="wall",
                    help="cpu: this process's CPU time, for a machine shared with other work")
    ap.add_argument("--per-fit", action="store_true", help="also list the NIST fits one by one")
    ap.add_argument("--nist", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "nist_strd"))
    args = ap.parse_args()
    KERNEL["mode"] = args.kernel
    if args.kernel == "eager":
        os.environ["GRADFIT_CC"] = ""
    only = set(filter(None, args.only.split(",")))
    rows = []
    for key, w in _workloads().items():
        if not only or key in only:
            reps = max(5, args.repeats // 10) if key == "decay100k" else args.repeats
            rows.append(bench_workload(w, reps, CLOCK[args.clock]))
    per_fit = []
    if (not only or "nist" in only) and Path(args.nist).is_dir():
        row, per_fit = bench_nist(Path(args.nist), args.nist_repeats, CLOCK[args.clock])
        rows.append(row)
    header = ["workload", "curve_fit ms", "gradfit ms", "gradfit / curve_fit", "gradfit accuracy",
              "curve_fit accuracy", "gradfit iters / cf nfev", "path"]
    print(table(f"single fits, interleaved medians, {args.clock} clock ({time.strftime('%Y-%m-%d')})", header, rows))
    print("accuracy: max relative parameter difference from the minimizer (least_squares at tolerances 1e-15, "
          "polished in extended precision); NIST: smallest LRE vs the certified values")
    if args.per_fit:
        print()
        print(table("NIST per fit", ["fit", "gradfit ms", "curve_fit ms", "ratio", "gradfit digits", "cf digits",
                                     "iters"],
                    [[n, f"{a * 1e3:.2f}", f"{b * 1e3:.2f}", f"{a / b:.2f}", f"{c:.1f}", f"{d:.1f}", str(i)]
                     for n, a, b, c, d, i in per_fit]))


if __name__ == "__main__":
    main()
