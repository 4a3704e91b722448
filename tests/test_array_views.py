"""numpy views torch cannot wrap (negative strides: ``x[::-1]``), read-only and
non-contiguous arrays are accepted everywhere data enters, with the same numbers as a copy."""

import numpy as np
import pytest

import gradfit as gf

X = np.linspace(0.0, 1.0, 20)
Y = 2.0 * X + 1.0


def _views():
    ro = X[::-1].copy()
    ro.flags.writeable = False
    wide = np.column_stack([X[::-1], Y[::-1]])
    return {"reversed": (X[::-1], Y[::-1]), "read-only": (ro, Y[::-1].copy()), "column": (wide[:, 0], wide[:, 1])}


@pytest.mark.parametrize("kind", ["reversed", "read-only", "column"])
def test_least_squares_on_views(kind):
    x, y = _views()[kind]
    r = gf.fit("a*x + c", x=x, y=y)
    assert r.params["a"] == pytest.approx(2.0, rel=1e-12) and r.params["c"] == pytest.approx(1.0, rel=1e-12)
    r = gf.fit("y ~ a*b + c", data={"b": x, "y": y})
    assert r.params["a"] == pytest.approx(2.0, rel=1e-12)


def test_first_order_mlp_predict_fit_many_curve_fit_on_reversed_views():
    x, y = X[::-1], Y[::-1]
    xc, yc = x.copy(), y.copy()
    a = gf.fit("a*x + c", x=x, y=y, optimizer="adam", epochs=5, progress=False)
    b = gf.fit("a*x + c", x=xc, y=yc, optimizer="adam", epochs=5, progress=False)
    assert a.params == b.params
    m = gf.fit("mlp", x=x, y=y, epochs=3, seed=0, progress=False)
    assert np.array_equal(m.predict(x), m.predict(xc))
    many = gf.fit_many("a*x + c", x, np.stack([y, 2 * y]), init={"a": 1.0, "c": 0.0})
    same = gf.fit_many("a*x + c", xc, np.stack([yc, 2 * yc]), init={"a": 1.0, "c": 0.0})
    assert np.array_equal(many.params["a"], same.params["a"])
    assert np.allclose(many.params["a"], [2.0, 4.0], rtol=1e-4)  # float32, tol=1e-4
    popt, _ = gf.curve_fit(lambda t, a, c: a * t + c, x, y)
    assert popt == pytest.approx([2.0, 1.0], rel=1e-10)
