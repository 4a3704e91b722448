"""Bounded least-squares paths that reach a bound (issue 11, section 2.1 follow-up).

A projected step can land exactly where the model's derivative in the projected parameter
vanishes (a model symmetric about its bound: ``c**2``, ``abs(c)``, ``sqrt(x**2 + c**2)``);
no gradient method leaves such a point although the optimum is inside. Iterates now stay
strictly inside the box (steps are reflected off a bound or stop short of it, as in scipy's
trf) and only a converged point is moved onto the bounds it pushes against, so an optimum on
a bound is still reached exactly and reported.

Right values: scipy.optimize.least_squares(method="trf") with ftol = xtol = gtol = 1e-15, or
the analytic optimum (exact data)."""

import math
import warnings

import numpy as np
import pytest

import gradfit as gf
from gradfit.optim import box
from gradfit.optim.lm import levenberg_marquardt

scipy_optimize = pytest.importorskip("scipy.optimize")
torch = pytest.importorskip("torch")

RNG = np.random.default_rng(3)
X = np.linspace(0.0, 3.0, 30)
XS = np.linspace(-4.0, 4.0, 41)
Y_SQUARE = 2.0 * np.exp(-1.3**2 * X) + 0.01 * RNG.standard_normal(X.size)
Y_ABS = 1.5 * np.exp(-0.8 * X) + 0.3 + 0.01 * RNG.standard_normal(X.size)
Y_GAUSS = 3.0 * np.exp(-(XS - 0.5) ** 2 / (2 * 0.7**2)) + 0.02 * RNG.standard_normal(XS.size)
Y_EXP = 2.0 * np.exp(-1.7 * X) + 0.02 * RNG.standard_normal(X.size)
Y_GROW = 2.0 * np.exp(0.2 * X) + 0.01 * RNG.standard_normal(X.size)  # c**2 would have to be < 0

XH = np.array([-32, -16, -8, 4, 4, 8, 16, 32], dtype=float)
HYPERBOLA_TRUE = [-2.0, 0.4, -1.0, -5.0, 9.5]
HYPERBOLA_START = [-2.5 / 3.0, 4 / 3.0, 1.0, -4.0, 0.5]
HYPERBOLA_BOUNDS = ([-3.0, 0.0, -2.0, -10.0, 0.0], [0.0, 3.0, 3.0, 0.0, 10.0])
HYPERBOLA_NAMES = ["s_1", "s_2", "o_x", "o_y", "c"]


def _hyperbola(sqrt):
    def f(x, s_1, s_2, o_x, o_y, c):
        return o_y + (s_2 - s_1) / 2 * (x - o_x) + (s_1 + s_2) / 2 * sqrt((x - o_x) ** 2 + c**2 / 4)

    return f


Y_HYPERBOLA = _hyperbola(np.sqrt)(XH, *HYPERBOLA_TRUE)


def _scipy(f, x, y, init, bounds):
    """scipy trf with tight tolerances, the same start (moved strictly inside, as trf does)."""
    names = list(init)
    lo = np.array([bounds.get(n, (None, None))[0] for n in names], dtype=object)
    hi = np.array([bounds.get(n, (None, None))[1] for n in names], dtype=object)
    lo = np.array([-np.inf if v is None else v for v in lo], dtype=float)
    hi = np.array([np.inf if v is None else v for v in hi], dtype=float)
    out = scipy_optimize.least_squares(lambda p: f(x, *p) - y, np.array(list(init.values()), dtype=float),
                                       bounds=(lo, hi), method="trf", ftol=1e-15, xtol=1e-15, gtol=1e-15,
                                       max_nfev=20000)
    return out.x


def _fit(formula, x, y, init, bounds):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gf.fit(formula, x=x, y=y, init=init, bounds=bounds, dtype="float64")


# -- the hyperbola of scipy's test_dtypes2: a projection onto c = 0 was a saddle --------------------------------

def test_hyperbola_numpy_written_reaches_the_exact_answer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        popt = gf.curve_fit(_hyperbola(np.sqrt), XH, Y_HYPERBOLA, p0=HYPERBOLA_START, bounds=HYPERBOLA_BOUNDS)[0]
    np.testing.assert_allclose(popt, HYPERBOLA_TRUE, rtol=1e-6)


def test_hyperbola_torch_written_reaches_the_exact_answer():
    popt = gf.curve_fit(_hyperbola(torch.sqrt), XH, Y_HYPERBOLA, p0=HYPERBOLA_START, bounds=HYPERBOLA_BOUNDS)[0]
    np.testing.assert_allclose(popt, HYPERBOLA_TRUE, rtol=1e-9)


def test_hyperbola_formula_converges_to_the_exact_answer():
    r = _fit("y ~ o_y + (s_2 - s_1)/2*(x - o_x) + (s_1 + s_2)/2*sqrt((x - o_x)**2 + c**2/4)", XH, Y_HYPERBOLA,
             dict(zip(HYPERBOLA_NAMES, HYPERBOLA_START)),
             {n: (lo, hi) for n, lo, hi in zip(HYPERBOLA_NAMES, *HYPERBOLA_BOUNDS)})
    assert r.status == "converged"
    np.testing.assert_allclose([r.params[n] for n in HYPERBOLA_NAMES], HYPERBOLA_TRUE, rtol=1e-9)
    assert not any("at a bound" in n for n in r.notes)


# -- models symmetric about their bound, and a width bounded at 0: the optimum is inside ----------------------

INTERIOR = [
    ("y ~ a*exp(-c**2*x)", lambda x, a, c: a * np.exp(-(c**2) * x), X, Y_SQUARE, "c", [0.0, 0.3, 3.0]),
    ("y ~ a*exp(-abs(c)*x) + b", lambda x, a, c, b: a * np.exp(-np.abs(c) * x) + b, X, Y_ABS, "c", [0.0, 0.05, 4.0]),
    ("y ~ a*exp(-(x - m)**2/(2*c**2))", lambda x, a, m, c: a * np.exp(-((x - m) ** 2) / (2 * c**2)), XS, Y_GAUSS,
     "c", [0.05, 5.0, 40.0]),
    ("y ~ a*exp(-c*x)", lambda x, a, c: a * np.exp(-c * x), X, Y_EXP, "c", [0.0, 1e-9, 20.0]),
]


@pytest.mark.parametrize("case", range(len(INTERIOR)), ids=["square", "abs", "gauss_width", "exp_decay"])
@pytest.mark.parametrize("start", range(3))
def test_interior_optimum_from_a_start_on_near_or_far_from_the_bound(case, start):
    formula, f, x, y, name, starts = INTERIOR[case]
    names = f.__code__.co_varnames[1:f.__code__.co_argcount]
    init = {n: (starts[start] if n == name else 1.0 if n == "a" else 0.0) for n in names}
    bounds = {name: (0, None)}
    ref = _scipy(f, x, y, init, bounds)
    assert ref[list(init).index(name)] > 0.1  # scipy agrees the optimum is inside
    r = _fit(formula, x, y, init, bounds)
    assert r.status == "converged"
    np.testing.assert_allclose([r.params[n] for n in init], ref, rtol=1e-7)
    assert not any("at a bound" in n for n in r.notes)


# -- optimum on, next to, or far from a bound: an active bound is reached exactly and reported ----------------

@pytest.mark.parametrize("lower, active", [(2.0, True), (1.69, True), (1.0, False), (0.0, False)])
@pytest.mark.parametrize("where", ["on", "inside", "far"])
def test_exponential_decay_with_the_optimum_on_near_or_far_from_a_bound(lower, active, where):
    f = lambda x, A, k: A * np.exp(-k * x)  # noqa: E731
    k0 = {"on": lower, "inside": lower + 0.5, "far": 20.0}[where]
    ref = _scipy(f, X, Y_EXP, {"A": 1.0, "k": k0}, {"k": (lower, None)})
    assert (abs(ref[1] - lower) < 1e-9) == active  # scipy agrees which bound is active
    r = _fit("y ~ A*exp(-k*x)", X, Y_EXP, {"A": 1.0, "k": k0}, {"k": (lower, None)})
    assert r.status == "converged"
    if active:
        assert r.params["k"] == lower  # exactly on the bound, not next to it
        assert any("k at a bound" in n for n in r.notes)
    else:
        assert r.params["k"] == pytest.approx(ref[1], rel=1e-8)
        assert not any("at a bound" in n for n in r.notes)
    assert r.params["A"] == pytest.approx(ref[0], rel=1e-8)


@pytest.mark.parametrize("start", [(0.5, 4.0), (1.0, 3.0), (1.5, 2.0), (0.5, 5.0)])
def test_two_sided_box_with_the_optimum_at_a_corner(start):
    f = lambda x, A, k: A * np.exp(-k * x)  # noqa: E731
    bounds = {"A": (0.5, 1.5), "k": (2.0, 5.0)}
    ref = _scipy(f, X, Y_EXP, dict(zip("Ak", start)), bounds)
    np.testing.assert_allclose(ref, [1.5, 2.0], atol=1e-9)  # scipy: both bounds active
    r = _fit("y ~ A*exp(-k*x)", X, Y_EXP, dict(zip("Ak", start)), bounds)
    assert r.status == "converged"
    assert (r.params["A"], r.params["k"]) == (1.5, 2.0)
    assert any("A, k at a bound" in n or ("A" in n and "k" in n and "at a bound" in n) for n in r.notes)


@pytest.mark.parametrize("c0", [0.0, 0.5])
def test_symmetric_model_whose_optimum_is_on_its_bound(c0):
    # c**2 would have to be negative: the optimum is c = 0, where the model is flat in c (the
    # Jacobian is rank-deficient there, so the status is "singular", honestly)
    f = lambda x, a, c: a * np.exp(-(c**2) * x)  # noqa: E731
    ref = _scipy(f, X, Y_GROW, {"a": 1.0, "c": c0}, {"c": (0, None)})
    assert abs(ref[1]) < 1e-6
    r = _fit("y ~ a*exp(-c**2*x)", X, Y_GROW, {"a": 1.0, "c": c0}, {"c": (0, None)})
    assert r.params["c"] == 0.0
    assert r.params["a"] == pytest.approx(ref[0], rel=1e-8)
    assert r.status == "singular"


# -- the kernel ------------------------------------------------------------------------------------------------

def test_kernel_iterates_never_land_on_a_bound_before_converging():
    # a*exp(-c**2 x) from c = 0.3: steps that cross c = 0 are reflected or stop short of it
    seen = []

    def res(p):
        seen.append(p.copy())
        return p[0] * np.exp(-p[1] ** 2 * X) - Y_SQUARE

    def jac(p):
        e = np.exp(-p[1] ** 2 * X)
        return np.column_stack([e, -2.0 * p[1] * p[0] * X * e])

    out = levenberg_marquardt(res, np.array([1.0, 3.0]), jacobian=jac, bounds=([-np.inf, 0.0], [np.inf, np.inf]))
    assert out.status == "converged"
    assert all(p[1] > 0 for p in seen)
    np.testing.assert_allclose(out.x, _scipy(lambda x, a, c: a * np.exp(-(c**2) * x), X, Y_SQUARE,
                                             {"a": 1.0, "c": 3.0}, {"c": (0, None)}), rtol=1e-8)


def test_trial_point_reflects_short_overshoots_and_stops_short_otherwise():
    bounds = (np.array([0.0, -1.0]), np.array([np.inf, 1.0]))
    x = np.array([0.5, 0.0])
    point, how = box.trial_point(x, np.array([-0.8, 0.5]), bounds, True)
    assert how == "reflected"
    np.testing.assert_allclose(point, [0.3, 0.5])
    point, how = box.trial_point(x, np.array([-2.0, 0.5]), bounds, True)  # overshoot beyond x: no reflection
    assert how.tolist() == [True, False]
    assert 0.0 < point[0] < 0.5 * (1 - box.THETA) * 2 and point[1] == 0.5
    point, how = box.trial_point(np.array([0.0, 1.0]), np.array([-1.0, 1.0]), bounds, False)
    assert point.tolist() == [0.0, 1.0]  # resting on the bound it crosses: stays
    assert box.trial_point(x, np.array([0.1, 0.1]), bounds, True)[1] is None


def test_step_back_tends_to_one_near_a_solution():
    gradient, col_norms, bounds = np.array([1e-12, 2.0]), np.array([1.0, 1.0]), (np.zeros(2), np.full(2, np.inf))
    far = box.step_back(np.array([1.0, 1.0]), gradient, col_norms, 1.0, None, bounds)
    near = box.step_back(np.array([1.0, 1e-14]), gradient, col_norms, 1.0, None, bounds)
    assert far == box.THETA and 1 - near < 1e-6
    assert math.isclose(box.step_back(np.ones(2), np.zeros(2), col_norms, 0.0, None, bounds), 1 - 2.0**-52)


# -- fit_many: the batched kernel stops short of a bound too ---------------------------------------------------

def test_fit_many_hyperbola_leaves_the_flat_bound():
    ys = np.stack([Y_HYPERBOLA, Y_HYPERBOLA + 0.01 * np.sin(XH)])
    bounds = {n: (lo, hi) for n, lo, hi in zip(HYPERBOLA_NAMES, *HYPERBOLA_BOUNDS)}
    init = dict(zip(HYPERBOLA_NAMES, HYPERBOLA_START))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = gf.fit_many(_hyperbola(torch.sqrt), XH, ys, init=init, bounds=bounds, dtype="float64", max_iter=500,
                        tol=1e-12)
    assert r.status.tolist() == [0, 0]
    for i, y in enumerate(ys):
        ref = _scipy(_hyperbola(np.sqrt), XH, y, init, bounds)
        np.testing.assert_allclose([r.params[n][i] for n in HYPERBOLA_NAMES], ref, rtol=1e-6)
