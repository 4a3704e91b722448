"""fixed= as a dict holds each parameter at the value given (as `--fix k=0.8`), in gf.fit,
gf.fit_many and global fits; its value wins over init. Fixed values come back exactly."""

import numpy as np
import pytest

import gradfit as gf

X = np.linspace(0, 5, 32)
RNG = np.random.default_rng(1)
A, O = RNG.uniform(2, 5, (6, 1)), RNG.uniform(0, 1, (6, 1))
Y = A * np.exp(-0.8 * X) + O + RNG.normal(0, 0.05, (6, 32))
INIT = {"a": 3.0, "k": 0.5, "o": 0.5}


def _line_fit_with_k(k, y):
    """With k known the model is linear in a and o: the exact least-squares answer."""
    design = np.column_stack([np.exp(-k * X), np.ones_like(X)])
    return np.linalg.lstsq(design, y, rcond=None)[0]


def test_fit_holds_a_fixed_dict_value():
    r = gf.fit("a*exp(-k*x) + o", X, Y[0], init=INIT, fixed={"k": 0.83})
    assert r.params["k"] == 0.83 and r.stderr["k"] == 0.0
    np.testing.assert_allclose([r.params["a"], r.params["o"]], _line_fit_with_k(0.83, Y[0]), rtol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fit_many_holds_a_fixed_dict_value_exactly(dtype):
    r = gf.fit_many("a*exp(-k*x) + o", X, Y, init=INIT, fixed={"k": 0.83}, dtype=dtype,
                    tol=1e-4 if dtype == "float32" else 1e-12, max_iter=50)
    assert np.all(r.params["k"] == 0.83) and r.converged.all()
    for b in range(len(Y)):
        np.testing.assert_allclose([r.params["a"][b], r.params["o"][b]], _line_fit_with_k(0.83, Y[b]),
                                   rtol=1e-3 if dtype == "float32" else 1e-7)


def test_a_fixed_shared_value_is_the_shared_value():
    r = gf.fit_many("a*exp(-k*x) + o", X, Y, init=INIT, fixed={"k": 0.83}, shared=["k"])
    assert r.shared["k"] == 0.83
    r = gf.fit_many("a*exp(-k*x) + o", X, Y, init=INIT, fixed={"o": 0.2}, shared=["k"])
    assert np.all(r.params["o"] == 0.2) and r.shared["k"] != INIT["k"]
