"""models/jacobian.py: the three Jacobian strategies agree with each other and with
autograd; the formula function table drives every backend; the single-fit
Levenberg-Marquardt runs as init + step."""

import math

import numpy as np
import pytest
import torch

from gradfit.formula.compile import compile_tree
from gradfit.formula.functions import FUNCTIONS, USER_FUNCTIONS, fold
from gradfit.formula.parse import parse_expression
from gradfit.formula.precise import residuals_mp
from gradfit.formula.symbolic import from_sympy, to_sympy
from gradfit.lsq.problem import LeastSquaresProblem
from gradfit.lsq.solve import solve
from gradfit.lsq.uncertainty import uncertainty
from gradfit.models import resolve_model
from gradfit.models.base import Model
from gradfit.models.jacobian import (batch_residual_and_jacobian, free_jacobian, jacobian, partials,
                                     partials_are_constant, strategy)
from gradfit.models.parameters import ParameterSpace
from gradfit.optim import lm

X = np.linspace(0.1, 4.0, 40)
RNG = np.random.default_rng(11)
Y = 3.0 * np.exp(-0.7 * X) + 0.5 + 0.01 * RNG.standard_normal(40)
DECAY = "a*exp(-k*x) + c"
AT = {"a": 2.5, "k": 0.6, "c": 0.4}


class NumpyDecay(Model):
    """A model that only evaluates in numpy (what curve_fit users write)."""

    numpy_only = True
    param_names = ("a", "k", "c")
    input_names = ("x",)

    def forward(self, inputs, params):
        raise AssertionError("a numpy-only model is never evaluated with torch")

    def forward_numpy(self, inputs, params):
        return params["a"] * np.exp(-params["k"] * inputs["x"]) + params["c"]


def _torch_model():
    return resolve_model(lambda x, a, k, c: a * torch.exp(-k * x) + c)


def test_strategy_by_model_kind():
    assert strategy(resolve_model(DECAY).bind(["x"])) == "symbolic"
    assert strategy(_torch_model()) == "jacfwd"
    assert strategy(NumpyDecay()) == "finite"


@pytest.mark.parametrize("wrt", [("a", "k", "c"), ("k", "c")])
def test_three_strategies_agree(wrt):
    exact = jacobian(resolve_model(DECAY).bind(["x"]), {"x": X}, AT, wrt)
    e = np.exp(-AT["k"] * X)
    closed = {"a": e, "k": -AT["a"] * X * e, "c": np.ones_like(X)}
    np.testing.assert_allclose(exact, np.column_stack([closed[n] for n in wrt]), rtol=1e-14)
    np.testing.assert_allclose(jacobian(_torch_model(), {"x": X}, AT, wrt), exact, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(jacobian(NumpyDecay(), {"x": X}, AT, wrt), exact, rtol=1e-8, atol=1e-10)
    for j in (exact, jacobian(NumpyDecay(), {"x": X}, AT, wrt)):
        assert j.shape == (40, len(wrt)) and j.flags["F_CONTIGUOUS"]


@pytest.mark.parametrize("space_kw", [{}, {"bounds": {"k": (0.0, 2.0), "a": (0.0, None)}}, {"fixed": ["c"]},
                                      {"tie": {"c": "a/5"}}])
@pytest.mark.parametrize("internal", [True, False])
def test_free_jacobian_through_bounds_fixed_and_ties(space_kw, internal):
    names = ("a", "k", "c")
    space = ParameterSpace(names, AT, **space_kw)
    u = np.array(space.internal_start_values()) if internal else np.array([AT[n] for n in space.free])
    t_in = {"x": torch.as_tensor(X)}
    # reference: autograd through the space's own torch map
    ref = torch.func.jacfwd(lambda z: _torch_model().forward(t_in, space.as_dict(z, internal=internal)))(
        torch.as_tensor(u)).numpy()
    for model, rtol in ((resolve_model(DECAY).bind(["x"]), 1e-12), (_torch_model(), 1e-12), (NumpyDecay(), 1e-7)):
        got = free_jacobian(model, space, {"x": X}, internal=internal)(u)
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=1e-9)
    got_t = free_jacobian(resolve_model(DECAY).bind(["x"]), space, t_in, internal=internal, backend="torch")(
        torch.as_tensor(u))
    np.testing.assert_allclose(got_t.numpy(), ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("space_kw", [{}, {"tie": {"c": "a/5"}}, {"bounds": {"k": (0.0, 2.0)}}])
def test_numpy_only_model_fits_like_the_formula(space_kw):
    space = ParameterSpace(("a", "k", "c"), {"a": 1.0, "k": 1.0, "c": 1.0}, **space_kw)
    results = []
    for model in (resolve_model(DECAY).bind(["x"]), NumpyDecay()):
        problem = LeastSquaresProblem(model, space, {"x": X}, Y)
        out = solve(problem, "lm")
        assert out.status == "converged", out.message
        results.append((out.values, uncertainty(problem, out.values).stderr))
    (v1, s1), (v2, s2) = results
    for n in "akc":
        assert v2[n] == pytest.approx(v1[n], rel=1e-7)
        assert s2[n] == pytest.approx(s1[n], rel=1e-5)


def test_torch_partials_and_constancy():
    m = resolve_model("a*x**2 + b*sin(x) + minimum(x, c)").bind(["x"])
    x = torch.linspace(0.1, 3.0, 7, dtype=torch.float64)
    p = torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64)
    auto = torch.func.jacfwd(lambda q: m.forward({"x": x}, dict(zip(m.param_names, q.unbind()))))(p)
    got = torch.stack(partials(m, {"x": x}, dict(zip(m.param_names, p.unbind()))), dim=1)
    torch.testing.assert_close(got, auto)
    assert partials_are_constant(resolve_model("a*x + b*x**2").bind(["x"]).expression, ("a", "b"))
    assert not partials_are_constant(m.expression, m.param_names)


def test_batch_residual_and_jacobian_fused_matches_vmap():
    m = resolve_model(DECAY).bind(["x"])
    x = torch.as_tensor(X)
    theta = torch.tensor([[2.0, 0.5, 0.1], [3.0, 0.7, 0.5]], dtype=torch.float64)
    y = torch.as_tensor(np.stack([Y, Y[::-1].copy()]))
    r1, j1 = batch_residual_and_jacobian(m, m.param_names, {"x": x}, y, fused=True)(theta)
    r2, j2 = batch_residual_and_jacobian(m, m.param_names, {"x": x}, y, fused=False)(theta)
    torch.testing.assert_close(r1, r2)
    for a, b in zip(j1, j2):
        assert a.shape == (2, 40)
        torch.testing.assert_close(a, b)


# -- the formula function table -------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_table_entry_works_in_every_backend(name):
    import mpmath
    import sympy

    f = FUNCTIONS[name]
    args = [0.3, 0.7][: f.arity]
    expected = fold(name, args)
    assert math.isfinite(expected)
    t = f.torch(torch)(*[torch.tensor(a, dtype=torch.float64) for a in args])
    assert float(t) == pytest.approx(expected, rel=1e-14)
    if f.numpy is not None:
        assert float(f.numpy(np)(*[np.float64(a) for a in args])) == pytest.approx(expected, rel=1e-14)
    assert float(f.mpmath(mpmath.mp)(*[mpmath.mpf(a) for a in args])) == pytest.approx(expected, rel=1e-14)
    assert float(f.sympy(sympy)(*[sympy.Float(a) for a in args])) == pytest.approx(expected, rel=1e-14)
    assert (name in USER_FUNCTIONS) != f.internal


@pytest.mark.parametrize("name", sorted(n for n in USER_FUNCTIONS))
def test_every_user_function_round_trips_through_sympy_and_mpmath(name):
    arity = USER_FUNCTIONS[name]
    text = f"{name}(x/5)" if arity == 1 else f"{name}(x, a)"
    node = parse_expression(text)
    back = from_sympy(to_sympy(node))
    env = {"x": torch.tensor([0.5, 1.5, 2.5], dtype=torch.float64), "a": torch.tensor(1.0, dtype=torch.float64)}
    torch.testing.assert_close(compile_tree(back)(env), compile_tree(node)(env))
    precise = residuals_mp(node, {"x": env["x"].numpy()}, np.zeros(3), None, {"a": 1.0})
    np.testing.assert_allclose(precise, compile_tree(node)(env).numpy(), rtol=1e-14)


# -- Levenberg-Marquardt as init + step ---------------------------------------------------

def _decay_lm():
    def res(p):
        return p[0] * np.exp(-p[1] * X) + p[2] - Y

    def jac(p):
        e = np.exp(-p[1] * X)
        return np.column_stack([e, -p[0] * X * e, np.ones_like(X)])

    return res, jac


def test_lm_init_step_is_the_driver():
    res, jac = _decay_lm()
    x0 = np.array([1.0, 1.0, 1.0])
    out = lm.levenberg_marquardt(res, x0, jacobian=jac)
    state = lm.init(res, x0, jacobian=jac)
    costs = [state.cost]
    while state.status is None:
        before = state
        state = lm.step(res, state, jacobian=jac)
        assert before.status is None and before.iteration == state.iteration - 1  # the input is not modified
        if state.accepted:
            costs.append(state.cost)
    assert state.status == "converged" and np.array_equal(state.x, out.x)
    assert state.iteration == out.iterations and costs == out.history
    assert lm.step(res, state, jacobian=jac) is state  # a finished state stays finished
    assert lm.outcome(state).cost == out.cost


def test_lm_max_iterations_and_callback_stop():
    res, jac = _decay_lm()
    x0 = np.array([1.0, 1.0, 1.0])
    out = lm.levenberg_marquardt(res, x0, jacobian=jac, options=lm.LMOptions(max_iter=2))
    assert out.status == "max_iterations" and out.iterations == 2
    seen = []
    out = lm.levenberg_marquardt(res, x0, jacobian=jac, callback=lambda it, cost: seen.append(it) or it >= 3)
    assert out.status == "stopped" and seen == [1, 2, 3] and out.iterations == 3
    bad = lm.init(lambda p: np.full(3, np.nan), x0, jacobian=jac)
    assert bad.status == "not_finite" and bad.history == [] and "3 of 3 data row(s): 1, 2, 3" in bad.message
