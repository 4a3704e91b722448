"""normalize=True with bounds on first-order optimizers (issue 11 follow-up).

The whitening used to be computed in the bound transforms' internal coordinates at the start,
where a start on (or near) a bound has a slope of 5%: once the parameter left the bound every
step was ~20x too large (SGD: A=1.69, k=6.64 for A*exp(-k*x)), and the transforms' absolute
scale (1, or the box width) swamped parameters of small units (a slope of 2e-6 with bounds
(0, 1)). Right values: exact data (zero residual) or the analytic constrained least squares
(numpy), never gradfit's own output.
"""

import math

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit.models.parameters import MIN_SLOPE, ParameterSpace
from gradfit.optim.bounded import ScaledBounds

X_EXP = np.linspace(0, 3, 30)
Y_EXP = 2 * np.exp(-1.7 * X_EXP)  # exact: A=2, k=1.7
X_BIG = np.linspace(0, 1e6, 200)
Y_BIG = 3 + 2e-6 * X_BIG  # exact: a=2e-6, b=3 (interior optimum)
LINE = np.polyfit(X_BIG, Y_BIG, 1)  # (a, b)

OPTIMIZERS = [("sgd", 0.1), ("adam", 0.05)]


def _fit(formula, x, y, init, bounds, optimizer, lr, epochs):
    return gf.fit(formula, x=x, y=y, init=init, bounds=bounds, optimizer=optimizer, lr=lr, epochs=epochs,
                  normalize=True, progress=False)


@pytest.mark.parametrize("optimizer,lr", OPTIMIZERS)
@pytest.mark.parametrize("k0,bounds", [(0.0, (0, None)),      # start on a one-sided bound (the issue)
                                       (0.0, (0, 10)),        # start on a two-sided bound
                                       (0.01, (0, 10)),       # start near a bound
                                       (1e-4, (0, None))])
def test_exp_decay_start_on_or_near_bound(optimizer, lr, k0, bounds):
    r = _fit("y ~ A*exp(-k*x)", X_EXP, Y_EXP, {"A": 1, "k": k0}, {"k": bounds}, optimizer, lr, 3000)
    assert r.params["A"] == pytest.approx(2.0, rel=1e-4)
    assert r.params["k"] == pytest.approx(1.7, rel=1e-4)


@pytest.mark.parametrize("optimizer,lr", OPTIMIZERS)
@pytest.mark.parametrize("init,bounds", [({"a": 0, "b": 1}, {"a": (0, 1)}),      # slope on its bound
                                         ({"a": 1e-7, "b": 1}, {"a": (0, 1)}),   # slope near it
                                         ({"a": 0, "b": 1}, {"a": (0, None)}),
                                         ({"a": 0, "b": 0}, {"b": (0, 10)}),     # intercept on its bound
                                         ({"a": 0, "b": 0}, {"b": (0, None)})])
def test_large_scale_line_with_bounded_parameter(optimizer, lr, init, bounds):
    r = _fit("y ~ a*x + b", X_BIG, Y_BIG, init, bounds, optimizer, lr, 2000)
    assert r.status != "diverged"
    assert r.params["a"] == pytest.approx(LINE[0], rel=1e-5)
    assert r.params["b"] == pytest.approx(LINE[1], rel=1e-5)


@pytest.mark.parametrize("optimizer,lr", OPTIMIZERS)
def test_optimum_on_lower_bound_of_intercept(optimizer, lr):
    # b >= 5 is active: b = 5 and a is the least-squares slope of y - 5 through the origin
    r = _fit("y ~ a*x + b", X_BIG, Y_BIG, {"a": 0, "b": 6}, {"b": (5, None)}, optimizer, lr, 2000)
    a = float(X_BIG @ (Y_BIG - 5) / (X_BIG @ X_BIG))
    assert r.params["b"] == pytest.approx(5.0, abs=1e-5)
    assert r.params["b"] >= 5.0
    assert r.params["a"] == pytest.approx(a, rel=1e-4)


@pytest.mark.parametrize("optimizer,lr", OPTIMIZERS)
def test_optimum_on_upper_bound_of_slope(optimizer, lr):
    # a <= 1e-6 is active: a = 1e-6 and b is the mean of y - 1e-6 x
    r = _fit("y ~ a*x + b", X_BIG, Y_BIG, {"a": 0, "b": 0}, {"a": (None, 1e-6)}, optimizer, lr, 2000)
    assert r.params["a"] <= 1e-6
    assert r.params["a"] == pytest.approx(1e-6, rel=1e-6)
    assert r.params["b"] == pytest.approx(float(np.mean(Y_BIG - 1e-6 * X_BIG)), rel=1e-5)


@pytest.mark.parametrize("bounds", [(0, None), (0, 5)])
def test_exp_growth_ends_on_the_bound(bounds):
    # y grows, k >= 0 forbids it: k = 0 and A = mean(y)
    y = 2 * np.exp(0.5 * X_EXP)
    r = _fit("y ~ A*exp(-k*x)", X_EXP, y, {"A": 4, "k": 0.3}, {"k": bounds}, "adam", 0.05, 2000)
    assert 0.0 <= r.params["k"] < 1e-5
    assert r.params["A"] == pytest.approx(float(np.mean(y)), rel=1e-5)


def test_scaled_bounds_start_and_canonical_branch():
    space = ParameterSpace(["a", "b", "c", "d"], {"a": 0.0, "b": 0.3, "c": -2.0, "d": 1.0},
                           bounds={"a": (0, 1), "b": (0, 1), "c": (None, -1), "d": (0, None)})
    sb = ScaledBounds(space, [1e-6, 0.1, 0.5, 2.0])
    v0 = torch.tensor(sb.start(), dtype=torch.float64, requires_grad=True)
    p = sb.to_params(v0)
    pv = p.detach()
    # interior starts are kept; a start on a bound moves inside by a small part of its scale
    assert pv[1:].tolist() == pytest.approx([0.3, -2.0, 1.0], rel=1e-12)
    assert 0 < float(pv[0]) < 1e-8
    slope = torch.autograd.grad(p[0], v0)[0][0]
    assert float(slope) == pytest.approx(MIN_SLOPE * sb.reference_slope[0], rel=1e-4)
    # every branch of the folds gives the same parameters; canonical() picks the increasing one
    w = torch.tensor([-0.7, 2.4, 3.0, -5.0], dtype=torch.float64)
    same = sb.canonical(w)
    assert sb.to_params(same).tolist() == pytest.approx(sb.to_params(w).tolist(), rel=1e-12, abs=1e-15)
    leaf = same.clone().requires_grad_(True)
    jac = torch.autograd.functional.jacobian(sb.to_params, leaf)
    assert bool((torch.diagonal(jac) >= 0).all())
    assert all(math.isfinite(v) for v in sb.to_params(torch.tensor([1e3, -1e3, 1e3, -1e3],
                                                                    dtype=torch.float64)).tolist())


@pytest.mark.parametrize("optimizer,lr", OPTIMIZERS)
def test_resume_with_bounds_is_bit_identical(tmp_path, optimizer, lr):
    # the origin z0 moves when a step crosses a fold (unfold); a resumed run must follow it
    from gradfit.train.checkpoint import Checkpointer

    kw = {"x": X_BIG, "y": Y_BIG, "init": {"a": 0, "b": 1}, "bounds": {"a": (0, 1)}, "optimizer": optimizer,
          "lr": lr, "normalize": True, "progress": False}
    full = gf.fit("y ~ a*x + b", epochs=40, **kw)
    gf.fit("y ~ a*x + b", epochs=7, checkpoint=Checkpointer(tmp_path, every_epochs=7, every_seconds=None), **kw)
    res = gf.fit("y ~ a*x + b", epochs=40, checkpoint=Checkpointer(tmp_path, every_seconds=None), resume=True, **kw)
    assert res.params == full.params
    assert res.history["train_loss"] == full.history["train_loss"]
