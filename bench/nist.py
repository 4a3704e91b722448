"""NIST StRD nonlinear regression: correct significant digits (LRE) per problem and start,
gradfit.fit (defaults, float64, exact Jacobians) vs scipy.optimize.curve_fit (defaults:
method "lm", finite differences) vs lmfit (defaults: leastsq), all in one run.

    python bench/nist.py [--nist ../shared/nist_strd] [--markdown]

A cell is the smallest LRE over the parameters (digits that agree with the certified
value; 0 = wrong). "silent" counts misses (< 4 digits) that the tool reported as success.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

import gradfit as gf
from gradfit.data.nist import lre, read_strd
from gradfit.formula.compile import compile_tree
from gradfit.models.formula import FormulaModel
from gradfit.models.jacobian import jacobian


def numpy_model(problem):
    """The file's formula as a numpy function f(x, *params) for scipy and lmfit."""
    model = FormulaModel(problem.formula).bind(problem.columns)
    fn = compile_tree(model.expression, "numpy")
    inputs = model.input_names

    def f(x, *p):
        env = dict(zip(problem.param_names, p))
        if len(inputs) == 1:
            env[inputs[0]] = x
        else:
            env.update(zip(inputs, x))
        return fn(env)

    y = model.response_numpy(problem.columns)
    x = problem.columns[inputs[0]] if len(inputs) == 1 else np.stack([problem.columns[n] for n in inputs])
    return f, x, np.asarray(y, dtype=float)


def digits(values, problem) -> float:
    return min(lre(float(v), problem.certified[n]) for n, v in zip(problem.param_names, values))


def sd_digits(sds, problem) -> float:
    return min(lre(float(v), problem.certified_sd[n]) for n, v in zip(problem.param_names, sds))


def run_gradfit(problem, start):
    r = gf.fit(problem.formula, data=problem.columns, init=problem.starts[start], dtype="float64")
    vals = [r.params[n] for n in problem.param_names]
    sds = [r.stderr[n] for n in problem.param_names]
    return digits(vals, problem), sd_digits(sds, problem), r.status == "converged"


def run_scipy(problem, start):
    from scipy.optimize import curve_fit

    f, x, y = numpy_model(problem)
    p0 = [problem.starts[start][n] for n in problem.param_names]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            popt, pcov = curve_fit(f, x, y, p0=p0)
    except (RuntimeError, ValueError):
        return 0.0, 0.0, False
    sds = np.sqrt(np.abs(np.diag(pcov))) if np.isfinite(pcov).all() else [np.nan] * len(popt)
    return digits(popt, problem), sd_digits(sds, problem), True


def run_lmfit(problem, start):
    import lmfit

    f, x, y = numpy_model(problem)
    params = lmfit.Parameters()
    for n in problem.param_names:
        params.add(n, value=problem.starts[start][n])

    def residual(p):
        return f(x, *[p[n].value for n in problem.param_names]) - y

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = lmfit.minimize(residual, params)
        except ValueError:  # lmfit raises when the model returns NaN along the way
            return 0.0, 0.0, False
    vals = [out.params[n].value for n in problem.param_names]
    sds = [out.params[n].stderr if out.params[n].stderr is not None else np.nan for n in problem.param_names]
    return digits(vals, problem), sd_digits(sds, problem), bool(out.success)


def linear_table(paths, markdown: bool) -> None:
    """Linear problems: gradfit (direct solve through the formula) vs numpy.linalg.lstsq on the
    same design matrix (SVD, the usual tool)."""
    print()
    rows = []
    for path in paths:
        p = read_strd(path)
        if not p.linear:
            continue
        r = gf.fit(p.formula, data=p.columns, dtype="float64")
        model = FormulaModel(p.formula).bind(p.columns)
        inputs = {n: p.columns[n] for n in model.input_names}
        design = jacobian(model, inputs, {n: 0.0 for n in model.param_names}, model.param_names)
        y = model.response_numpy(p.columns)
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        rows.append([p.name, f"{digits([r.params[n] for n in p.param_names], p):.1f}",
                     f"{sd_digits([r.stderr[n] for n in p.param_names], p):.1f}", f"{digits(coef, p):.1f}"])
    header = ["problem", "gradfit params", "gradfit sd", "numpy lstsq params"]
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        for row in [header, *rows]:
            print("  ".join(c.ljust(18) for c in row))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nist", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "nist_strd"))
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args()
    paths = sorted(Path(args.nist).glob("*.dat"))
    problems = [read_strd(p) for p in paths]
    problems = [p for p in problems if not p.linear]
    tools = {"gradfit": run_gradfit, "scipy": run_scipy, "lmfit": run_lmfit}
    rows = []
    totals = {t: {"ge4": [0, 0], "ge6": [0, 0], "silent": 0, "time": 0.0} for t in tools}
    for p in problems:
        row = [p.name]
        for t, fn in tools.items():
            for s in (0, 1):
                t0 = time.perf_counter()
                d, sd, ok = fn(p, s)
                totals[t]["time"] += time.perf_counter() - t0
                totals[t]["ge4"][s] += d >= 4
                totals[t]["ge6"][s] += d >= 6
                totals[t]["silent"] += ok and d < 4
                row.append(f"{d:.1f}" + ("" if t != "gradfit" else f" / {sd:.1f}"))
        rows.append(row)
    header = ["problem", "gradfit s1 (sd)", "gradfit s2 (sd)", "scipy s1", "scipy s2", "lmfit s1", "lmfit s2"]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        w = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))
    print()
    for t, v in totals.items():
        print(f"{t:8s} >=4 digits: start1 {v['ge4'][0]}/27, start2 {v['ge4'][1]}/27;  >=6 digits: start1 "
              f"{v['ge6'][0]}/27, start2 {v['ge6'][1]}/27;  silent misses {v['silent']};  time {v['time']:.1f} s")
    linear_table(paths, args.markdown)


if __name__ == "__main__":
    main()
