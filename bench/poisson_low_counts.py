"""Where low-count Poisson fits end, against scipy's maximum likelihood (accuracy, not speed).

Decays ``a*exp(-k*x) + o`` at x = 0, 0.25, ..., 7.75 with a in U(2, 8) counts, k in U(0.1, 0.5)
and o in U(0, 0.3) (most series end in zero counts), started at a = 5, k = 0.3, o = 0.1. The
reference is scipy's best of SLSQP under every mean >= 0 from three starts, each polished by
Nelder-Mead, on sum(mu - y log mu). A series whose reference amplitude exceeds 1e4 has no
maximum (its counts fall linearly and the likelihood rises toward a = inf, k = 0, o = -inf).

For the others it counts, per solver (gf.fit; fit_many at its defaults, max_iter 25; fit_many
with max_iter=200): the statuses, the fits more than 0.01 below the maximum log-likelihood, and
those among them that say "converged" (the worst defect: a wrong answer reported as found).

    python bench/poisson_low_counts.py                 # 2 seeds x 200 series (~3 minutes)
    python bench/poisson_low_counts.py --seeds 0 --n 50
"""

from __future__ import annotations

import argparse
import warnings
from collections import Counter

import numpy as np
from scipy import optimize

import gradfit as gf

X = np.arange(32) * 0.25
INIT = {"a": 5.0, "k": 0.3, "o": 0.1}
FORMULA = "a*exp(-k*x) + o"


def series(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a, k, o = rng.uniform(2, 8, n), rng.uniform(0.1, 0.5, n), rng.uniform(0, 0.3, n)
    return rng.poisson(a[:, None] * np.exp(-k[:, None] * X) + o[:, None]).astype(float)


def nll(p, y) -> float:
    m = p[0] * np.exp(-p[1] * X) + p[2]
    if np.any(m[y > 0] <= 0) or np.any(m < -1e-12):
        return 1e300
    return float(m.sum() - np.sum(y[y > 0] * np.log(m[y > 0])))


def reference(y) -> tuple[float, np.ndarray]:
    cons = {"type": "ineq", "fun": lambda p: p[0] * np.exp(-p[1] * X) + p[2]}
    best, where = np.inf, None
    with np.errstate(all="ignore"):
        for start in ([5.0, 0.3, 0.1], [3.0, 0.2, 0.2], [6.0, 0.5, 0.05]):
            s = optimize.minimize(nll, start, args=(y,), method="SLSQP", constraints=[cons],
                                  options=dict(ftol=1e-14, maxiter=1000))
            s2 = optimize.minimize(nll, s.x, args=(y,), method="Nelder-Mead",
                                   options=dict(xatol=1e-10, fatol=1e-12, maxiter=20000))
            for r in (s, s2):
                if r.fun < best:
                    best, where = r.fun, r.x
    return best, where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    tallies = {k: Counter() for k in ("gf.fit", "fit_many", "fit_many max_iter=200")}
    n_total = n_without = 0
    for seed in (int(s) for s in args.seeds.split(",")):
        y_all = series(seed, args.n)
        refs = [reference(y) for y in y_all]
        best = np.array([r[0] for r in refs])
        without = np.array([abs(r[1][0]) > 1e4 for r in refs])
        n_total += len(y_all)
        n_without += int(without.sum())
        params = {}
        for label, kw in (("fit_many", {}), ("fit_many max_iter=200", {"max_iter": 200})):
            m = gf.fit_many(FORMULA, X, y_all, init=INIT, loss="poisson", dtype="float64", **kw)
            params[label] = (np.column_stack([m.params[c] for c in "ako"]), list(m.status_text))
        fits = [gf.fit(FORMULA, x={"x": X}, y=y, init=INIT, loss="poisson") for y in y_all]
        params["gf.fit"] = (np.array([[r.params[c] for c in "ako"] for r in fits]), [str(r.status) for r in fits])
        for label, (p, statuses) in params.items():
            for i, (pi, st) in enumerate(zip(p, statuses)):
                kind = "no maximum" if without[i] else "maximum"
                tallies[label][(kind, st)] += 1
                if not without[i] and nll(pi, y_all[i]) - best[i] > 0.01:
                    tallies[label][(kind, "short")] += 1
                    tallies[label][(kind, "short and converged")] += st == "converged"
    print(f"{n_total} series, {n_without} without a maximum")
    print(f"{'solver':24s} {'series':12s} {'converged':>9s} {'max_iter':>8s} {'stalled':>7s} {'singular':>8s} "
          f"{'short':>6s} {'short+conv':>10s}")
    for label, t in tallies.items():
        for kind in ("maximum", "no maximum"):
            print(f"{label:24s} {kind:12s} {t[(kind, 'converged')]:9d} {t[(kind, 'max_iterations')]:8d} "
                  f"{t[(kind, 'stalled')]:7d} {t[(kind, 'singular')]:8d} "
                  f"{t[(kind, 'short')] if kind == 'maximum' else '-':>6} "
                  f"{t[(kind, 'short and converged')] if kind == 'maximum' else '-':>10}")


if __name__ == "__main__":
    main()
