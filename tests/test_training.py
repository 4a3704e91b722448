"""The training loop: optimizers, minibatches, validation, reproducibility, losses, callbacks."""

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit import ConfigError, DataError
from gradfit.optim.registry import optimizer_names

RNG = np.random.default_rng(0)
X = RNG.uniform(-2, 2, 200)
Y = 1.5 * X - 0.7 + 0.05 * RNG.standard_normal(200)


@pytest.mark.parametrize("name", optimizer_names())
def test_every_optimizer_reduces_the_loss(name):
    lr = {"lbfgs": 1.0, "adadelta": 10.0, "adagrad": 0.5, "rprop": 1e-2}.get(name, 5e-2)
    r = gf.fit("a*x + b", x=X, y=Y, optimizer=name, lr=lr, epochs=300, progress=False)
    start = gf.loss_value("a*x + b", x=X, y=Y, params={"a": 1.0, "b": 1.0})
    assert r.loss < 0.05 * start, (name, r.loss, start)
    assert r.params["a"] == pytest.approx(1.5, abs=0.1), name


def test_sgd_momentum_and_nesterov_options():
    plain = gf.fit("a*x + b", x=X, y=Y, optimizer="sgd", lr=1e-2, epochs=50, progress=False)
    nest = gf.fit("a*x + b", x=X, y=Y, optimizer="sgd", lr=1e-2, epochs=50, progress=False,
                  optimizer_options={"momentum": 0.9, "nesterov": True})
    assert nest.loss < plain.loss
    assert nest.settings["options"]["training"]["optimizer_options"] == {"momentum": 0.9, "nesterov": True}


def test_bad_optimizer_settings():
    with pytest.raises(ConfigError, match="unknown optimizer"):
        gf.fit("a*x + b", x=X, y=Y, optimizer="adamm", epochs=1)
    with pytest.raises(ConfigError, match="learning rate"):
        gf.fit("a*x + b", x=X, y=Y, lr=-1, epochs=1)
    with pytest.raises(ConfigError, match="bad option"):
        gf.fit("a*x + b", x=X, y=Y, optimizer="adam", optimizer_options={"bogus": 1}, epochs=1)
    with pytest.raises(ConfigError, match="epochs"):
        gf.fit("a*x + b", x=X, y=Y, epochs=0)
    with pytest.raises(ConfigError, match="unknown parameter 'c'"):
        gf.fit("a*x + b", x=X, y=Y, init={"c": 1.0}, epochs=1)


def test_seeded_runs_reproduce_bitwise_and_seeds_differ():
    kw = dict(x=X, y=Y, optimizer="adam", lr=1e-2, epochs=20, batch_size=16, val_fraction=0.25, progress=False)
    a = gf.fit("a*x + b", seed=3, **kw)
    b = gf.fit("a*x + b", seed=3, **kw)
    c = gf.fit("a*x + b", seed=4, **kw)
    assert a.params == b.params and a.history == b.history
    assert a.params != c.params


def test_minibatch_and_validation_history():
    r = gf.fit("a*x + b", x=X, y=Y, optimizer="adam", lr=5e-2, epochs=40, batch_size=32, val_fraction=0.2,
               progress=False)
    assert r.n_train == 160 and r.n_val == 40
    assert len(r.history["train_loss"]) == len(r.history["val_loss"]) == 40
    assert r.history["val_loss"][-1] < r.history["val_loss"][0]
    assert r.val_loss == pytest.approx(gf.loss_value("a*x + b", x=X, y=Y, params=r.params), rel=0.5)


def test_full_batch_and_minibatch_of_whole_set_agree():
    a = gf.fit("a*x + b", x=X, y=Y, optimizer="sgd", lr=1e-2, epochs=30, progress=False)
    b = gf.fit("a*x + b", x=X, y=Y, optimizer="sgd", lr=1e-2, epochs=30, batch_size=1000, progress=False)
    assert a.params == b.params


@pytest.mark.parametrize("loss", ["mse", "mae", "huber", "log_cosh"])
def test_losses_autograd_equals_analytic(loss):
    kw = dict(x=X, y=Y, params={"a": 0.3, "b": 0.2}, loss=loss, dtype="float64")
    auto = gf.gradient("a*x + b", method="autograd", **kw)
    ana = gf.gradient("a*x + b", method="analytic", **kw)
    fd = gf.gradient("a*x + b", method="finite", **kw)
    for k in auto:
        assert auto[k] == pytest.approx(ana[k], rel=1e-10) and auto[k] == pytest.approx(fd[k], rel=1e-5)


def test_robust_losses_resist_an_outlier():
    y = Y.copy()
    y[0] = 200.0
    mse = gf.fit("a*x + b", x=X, y=y, loss="mse", optimizer="adam", lr=5e-2, epochs=800, progress=False)
    mae = gf.fit("a*x + b", x=X, y=y, loss="mae", optimizer="adam", lr=5e-2, epochs=800, progress=False)
    assert abs(mae.params["b"] + 0.7) < 0.05 < abs(mse.params["b"] + 0.7)


def test_custom_loss_callable_and_weights():
    r = gf.fit("a*x + b", x=X, y=Y, loss=lambda p, t: ((p - t) ** 4).mean(), optimizer="adam", lr=5e-2,
               epochs=500, progress=False)
    assert r.params["a"] == pytest.approx(1.5, abs=0.05)
    w = np.where(X > 0, 1.0, 0.0)
    y = np.where(X > 0, Y, 100.0)  # points with weight 0 must not matter
    r = gf.fit("a*x + b", x=X, y=y, weights=w, optimizer="lbfgs", lr=1, epochs=50, dtype="float64", progress=False)
    assert r.params["a"] == pytest.approx(1.5, abs=0.05)


def test_custom_loss_with_analytic_model_gradient():
    g = gf.gradient("a*x + b", x=X, y=Y, params={"a": 0.3, "b": 0.2}, method="analytic", dtype="float64",
                    loss=lambda p, t: ((p - t) ** 4).mean())
    fd = gf.gradient("a*x + b", x=X, y=Y, params={"a": 0.3, "b": 0.2}, method="finite",
                     loss=lambda p, t: ((p - t) ** 4).mean())
    assert g["a"] == pytest.approx(fd["a"], rel=1e-6)


def test_tol_reports_converged():
    r = gf.fit("a*x + b", x=X, y=Y, optimizer="adam", lr=5e-2, epochs=5000, tol=1e-7, progress=False)
    assert r.status == "converged" and r.epochs_run < 5000


def test_callback_sees_every_epoch_and_can_stop():
    class Stop(gf.Callback):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, epoch, logs):
            self.seen.append((epoch, logs["train_loss"]))
            return epoch == 7

    cb = Stop()
    r = gf.fit("a*x + b", x=X, y=Y, optimizer="adam", epochs=100, callbacks=[cb], progress=False)
    assert r.status == "stopped" and r.epochs_run == 7 and [e for e, _ in cb.seen] == list(range(1, 8))


def test_log_every_writes_lines(capsys):
    gf.fit("a*x + b", x=X, y=Y, optimizer="adam", epochs=10, log_every=5, val_fraction=0.2, progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("epoch 5  train ") and "  val " in err[0]


def test_nan_policy():
    x = X.copy()
    x[[3, 10]] = np.nan
    with pytest.raises(DataError, match="rows?.*4, 11"):
        gf.fit("a*x + b", x=x, y=Y, epochs=1)
    r = gf.fit("a*x + b", x=x, y=Y, epochs=1, nan_policy="omit", progress=False)
    assert r.n_train == 198 and "dropped 2 row(s)" in r.notes[0]


def test_bad_data():
    with pytest.raises(DataError, match="has 3 values but y has 2"):
        gf.fit("a*x + b", x=[1.0, 2.0, 3.0], y=[1.0, 2.0], epochs=1)
    with pytest.raises(DataError, match="cannot determine 2 parameters"):
        gf.fit("a*x + b", x=[1.0], y=[1.0], epochs=1)
    with pytest.raises(DataError, match="did you mean 't_u'"):
        gf.fit("t_c ~ w*t_v + b", data={"t_u": [1.0, 2.0], "t_c": [1.0, 2.0]}, epochs=1)


def test_float64_and_device_options():
    r = gf.fit("a*x + b", x=X, y=Y, dtype="float64", device="cpu", epochs=5, progress=False)
    assert r.settings["dtype"] == "float64" and r.settings["device"] == "cpu"
    with pytest.raises(ConfigError):
        gf.fit("a*x + b", x=X, y=Y, dtype="float16", epochs=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    a = gf.fit("a*x + b", x=X, y=Y, optimizer="sgd", lr=1e-2, epochs=100, dtype="float64", device="cpu")
    b = gf.fit("a*x + b", x=X, y=Y, optimizer="sgd", lr=1e-2, epochs=100, dtype="float64", device="cuda")
    assert a.params["a"] == pytest.approx(b.params["a"], rel=1e-10)
