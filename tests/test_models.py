"""Built-in curves, function models, and gradients of every model against finite differences."""

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit import ConfigError, ModelError
from gradfit.models import builtin_model

X = np.linspace(0.5, 10.0, 60)
CASES = {
    "linear": ({"slope": 2.5, "intercept": -1.0}, X),
    "poly:3": ({"c0": 1.0, "c1": -0.5, "c2": 0.2, "c3": -0.01}, X),
    "exp_decay": ({"a": 5.0, "k": 0.4, "c": 1.0}, X),
    "gaussian": ({"a": 4.0, "mu": 5.0, "sigma": 1.2, "c": 0.5}, X),
    "lorentzian": ({"a": 3.0, "x0": 4.5, "gamma": 0.8, "c": 0.2}, X),
    "logistic": ({"L": 6.0, "k": 1.3, "x0": 5.0, "c": 1.0}, X),
    "power": ({"a": 2.0, "b": 1.5}, X),
    "hill": ({"bottom": 1.0, "top": 9.0, "ec50": 3.0, "n": 2.0}, X),
}


def _data(name, noise=0.02, seed=1):
    truth, x = CASES[name]
    m = builtin_model(name)
    with torch.no_grad():
        y = m.forward({"x": torch.tensor(x, dtype=torch.float64)},
                      {k: torch.tensor(v, dtype=torch.float64) for k, v in truth.items()}).numpy()
    rng = np.random.default_rng(seed)
    return x, y + noise * np.std(y) * rng.standard_normal(len(x)), truth


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_finite_differences(name):
    x, y, truth = _data(name)
    at = {k: v * 1.1 for k, v in truth.items()}
    fd = gf.gradient(name, x=x, y=y, params=at, method="finite")
    for method in ("autograd", "analytic"):
        g = gf.gradient(name, x=x, y=y, params=at, method=method, dtype="float64")
        for k in truth:
            assert g[k] == pytest.approx(fd[k], rel=1e-5, abs=1e-7), (method, k)


@pytest.mark.parametrize("name", list(CASES))
def test_guess_then_fit_recovers_truth(name):
    x, y, truth = _data(name, noise=0.005)
    r = gf.fit(name, x=x, y=y, optimizer="lbfgs", lr=1.0, epochs=200, dtype="float64", normalize=True,
               progress=False)
    for k, v in truth.items():
        assert r.params[k] == pytest.approx(v, rel=0.05, abs=0.05), (k, r.params)


@pytest.mark.parametrize("name", ["gaussian", "lorentzian", "exp_decay", "logistic", "hill"])
def test_guesses_are_close(name):
    x, y, truth = _data(name, noise=0.0)
    guess = builtin_model(name).guess({"x": x}, y)
    for k, v in truth.items():
        # within 60% of the value, or 15% of the data's range for offsets and levels
        assert guess[k] == pytest.approx(v, rel=0.6, abs=0.15 * np.ptp(y)), (k, guess)


def test_poly_bounds_and_unknown_names():
    with pytest.raises(ModelError):
        builtin_model("poly:11")
    with pytest.raises(ModelError, match="unknown built-in"):
        builtin_model("gausian")
    assert builtin_model("poly:10").param_names == tuple(f"c{i}" for i in range(11))


def test_builtin_uses_the_data_column_name():
    x, y, truth = _data("linear")
    r = gf.fit("linear", data={"dose": x, "resp": y}, x="dose", y="resp", optimizer="lbfgs", lr=1, epochs=50,
               progress=False)
    assert r.model.input_names == ("dose",)
    np.testing.assert_allclose(r.predict({"dose": x}), r.params["slope"] * x + r.params["intercept"], rtol=1e-6)


def test_python_function_model_with_defaults():
    def decay(t, a=4.0, k=0.3):
        return a * torch.exp(-k * t)

    t = np.linspace(0, 10, 40)
    y = 5.0 * np.exp(-0.5 * t)
    r = gf.fit(decay, x=t, y=y, optimizer="lbfgs", lr=1.0, epochs=100, dtype="float64", progress=False)
    assert r.params["a"] == pytest.approx(5.0, rel=1e-6)
    assert r.params["k"] == pytest.approx(0.5, rel=1e-6)
    g = gf.gradient(decay, x=t, y=y, params={"a": 4.0, "k": 0.3})
    fd = gf.gradient(decay, x=t, y=y, params={"a": 4.0, "k": 0.3}, method="finite")
    assert g["a"] == pytest.approx(fd["a"], rel=1e-4) and g["k"] == pytest.approx(fd["k"], rel=1e-4)
    with pytest.raises(ConfigError, match="analytic"):
        gf.fit(decay, x=t, y=y, gradient="analytic", epochs=1, progress=False)


def test_named_inputs_formula():
    rng = np.random.default_rng(0)
    u, v = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50)
    y = 2 * u - 3 * v + 0.5
    r = gf.fit("a*u + b*v + c", x={"u": u, "v": v}, y=y, optimizer="lbfgs", lr=1, epochs=50, dtype="float64",
               progress=False)
    assert [r.params[k] for k in "abc"] == pytest.approx([2.0, -3.0, 0.5], abs=1e-4)


def test_response_expression_is_evaluated():
    x = np.linspace(1, 5, 20)
    r = gf.fit("log(y) ~ a + b*x", data={"x": x, "y": np.exp(1.0 + 0.5 * x)}, optimizer="lbfgs", lr=1, epochs=50,
               dtype="float64", progress=False)
    assert r.params["a"] == pytest.approx(1.0, abs=1e-5) and r.params["b"] == pytest.approx(0.5, abs=1e-5)
