"""The worked example's published numbers (float32, full batch, MSE, start w=1, b=0)."""

import numpy as np
import pytest

import gradfit as gf

FORMULA = "t_c ~ w*t_u + b"
START = {"w": 1.0, "b": 0.0}


@pytest.mark.parametrize("method", ["autograd", "analytic"])
def test_published_gradient(thermo, method):
    g = gf.gradient(FORMULA, data=thermo, params=START, method=method)
    assert g["w"] == pytest.approx(4517.2969, abs=1e-3)
    assert g["b"] == pytest.approx(82.6000, abs=1e-4)


def test_initial_loss(thermo):
    assert gf.loss_value(FORMULA, data=thermo, params=START) == pytest.approx(1763.8848, abs=1e-3)


@pytest.mark.parametrize("gradient", ["autograd", "analytic"])
def test_sgd_on_scaled_input(thermo, gradient):
    x = [0.1 * v for v in thermo["t_u"]]
    r = gf.fit("w*x + b", x=x, y=thermo["t_c"], init=START, optimizer="sgd", lr=1e-2, epochs=5000,
               gradient=gradient, progress=False)
    assert r.params["w"] == pytest.approx(5.3671, abs=5e-5)
    assert r.params["b"] == pytest.approx(-17.3012, abs=5e-5)
    assert r.history["train_loss"][-1] == pytest.approx(2.927647, abs=2e-6)
    assert r.loss == pytest.approx(2.927647, abs=2e-6)
    assert r.epochs_run == 5000 and r.status == "max_epochs"


def test_adam_on_raw_input(thermo):
    r = gf.fit(FORMULA, data=thermo, init=START, optimizer="adam", lr=1e-1, epochs=2000, progress=False)
    assert r.params["w"] == pytest.approx(0.5367, abs=5e-5)
    assert r.params["b"] == pytest.approx(-17.3021, abs=5e-5)
    assert r.history["train_loss"][-1] == pytest.approx(2.927646, abs=2e-6)


def test_sgd_on_raw_input_diverges_and_keeps_last_finite_params(thermo):
    r = gf.fit(FORMULA, data=thermo, init=START, optimizer="sgd", lr=1e-2, epochs=5000, progress=False)
    assert r.status == "diverged"
    assert "lower the learning rate" in r.message and "normalize" in r.message
    assert np.isfinite(list(r.params.values())).all()
    assert np.isfinite(r.loss)
    assert r.epochs_run < 50
    # the kept parameters are the last ones whose loss was recorded as finite
    assert r.loss == pytest.approx(r.history["train_loss"][-1], rel=1e-5)


def test_normalize_reaches_least_squares_with_sgd(thermo):
    r = gf.fit(FORMULA, data=thermo, init=START, optimizer="sgd", lr=1e-2, epochs=5000, normalize=True,
               progress=False)
    w, b = np.polyfit(thermo["t_u"], thermo["t_c"], 1)
    assert r.params["w"] == pytest.approx(0.53677, abs=1e-5)
    assert r.params["b"] == pytest.approx(-17.305, abs=1e-3)
    assert r.params["w"] == pytest.approx(w, rel=1e-4) and r.params["b"] == pytest.approx(b, rel=1e-4)


def test_float64_agrees_with_least_squares(thermo):
    r = gf.fit(FORMULA, data=thermo, init=START, optimizer="sgd", lr=1e-2, epochs=5000, normalize=True,
               dtype="float64", progress=False)
    w, b = np.polyfit(thermo["t_u"], thermo["t_c"], 1)
    assert r.params["w"] == pytest.approx(w, rel=1e-10)
    assert r.params["b"] == pytest.approx(b, rel=1e-10)
