"""Run under torchrun by tests/test_parallel.py (independent fits) and tests/test_global_fit.py
(a global fit: one rate shared by every fit): fit a fixed batch and save it (rank 0).

    python _torchrun_fit_many.py OUT [independent|global|global_poisson]
"""

import sys

import numpy as np

import gradfit as gf


def independent() -> gf.BatchResult:
    rng = np.random.default_rng(5)
    x = np.arange(32.0)
    truth = np.column_stack([rng.uniform(200, 1000, 101), 15.5 + rng.uniform(-4, 4, 101), rng.uniform(2, 4, 101),
                             rng.uniform(10, 100, 101)])
    y = rng.poisson(truth[:, :1] * np.exp(-(x - truth[:, 1:2]) ** 2 / (2 * truth[:, 2:3] ** 2)) + truth[:, 3:4])
    return gf.fit_many("gaussian", x, y.astype(float), init=truth * 1.1, dtype="float64")


def shared_rate() -> gf.BatchResult:
    rng = np.random.default_rng(11)
    x = np.linspace(0, 5, 32)
    a, o = rng.uniform(2, 5, 41), rng.uniform(0, 1, 41)
    y = a[:, None] * np.exp(-0.8 * x) + o[:, None] + rng.normal(0, 0.05, (41, 32))
    y[7, 10:] = np.nan
    return gf.fit_many("a*exp(-k*x) + o", x, y, init={"a": 3.0, "k": 0.5, "o": 0.5}, shared=["k"], dtype="float64",
                       bounds={"a": (0, None)}, tol=1e-10)


def shared_rate_counts() -> gf.BatchResult:
    """Low counts: a quarter of them zero, many fits' optima on the positivity edge (the edge
    constraint, the second-order correction and the per-fit damping all reduce across ranks)."""
    rng = np.random.default_rng(1)
    x = np.linspace(0, 5, 32)
    a, o = rng.uniform(5, 20, (41, 1)), rng.uniform(0, 0.3, (41, 1))
    y = rng.poisson(a * np.exp(-0.8 * x) + o).astype(float)
    return gf.fit_many("a*exp(-k*x) + o", x, y, init={"a": 10.0, "k": 1.0, "o": 0.5}, shared=["k"], dtype="float64",
                       loss="poisson", tol=1e-10)


def main(out: str, mode: str = "independent") -> None:
    r = {"independent": independent, "global": shared_rate, "global_poisson": shared_rate_counts}[mode]()
    from gradfit.fitting.parallel import world

    rank, size = world()
    if rank == 0:
        r.save(out)
        print(f"world={size} fits={len(r)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
