"""Run by tests/test_parallel.py under torchrun: fit a fixed batch and save it (rank 0)."""

import sys

import numpy as np

import gradfit as gf


def main(out: str) -> None:
    rng = np.random.default_rng(5)
    x = np.arange(32.0)
    truth = np.column_stack([rng.uniform(200, 1000, 101), 15.5 + rng.uniform(-4, 4, 101), rng.uniform(2, 4, 101),
                             rng.uniform(10, 100, 101)])
    y = rng.poisson(truth[:, :1] * np.exp(-(x - truth[:, 1:2]) ** 2 / (2 * truth[:, 2:3] ** 2)) + truth[:, 3:4])
    r = gf.fit_many("gaussian", x, y.astype(float), init=truth * 1.1, dtype="float64")
    from gradfit.fitting.parallel import world

    rank, size = world()
    if rank == 0:
        r.save(out)
        print(f"world={size} fits={len(r)}")


if __name__ == "__main__":
    main(sys.argv[1])
