"""Overfitting controls: penalties, input noise, early stopping, schedules, cross-validation."""

import numpy as np
import pytest

import gradfit as gf
from gradfit import ConfigError

RNG = np.random.default_rng(4)
X = np.linspace(-1, 1, 40)
Y = 0.5 * X + 0.1 * RNG.standard_normal(40)


def test_l2_penalty_shrinks_parameters_and_is_recorded():
    kw = dict(x=X, y=Y, optimizer="adam", lr=0.05, epochs=600, progress=False)
    plain = gf.fit("c0 + c1*x + c5*x**5 + c9*x**9", **kw)
    ridge = gf.fit("c0 + c1*x + c5*x**5 + c9*x**9", penalty={"l2": 0.1}, **kw)
    auto = gf.fit("a*x + b", x=X, y=Y, penalty={"l2": 0.1}, epochs=5, progress=False)
    assert auto.method == "adam" and "penalty" in auto.method_reason
    norm = lambda r: sum(v * v for v in r.params.values())  # noqa: E731
    assert norm(ridge) < 0.8 * norm(plain)
    assert len(ridge.history["penalty"]) == 600 and ridge.history["penalty"][-1] > 0
    # penalty applies only where asked
    only = gf.fit("a*x + b", penalty={"l2": {"b": 100.0}}, **kw)
    assert abs(only.params["b"]) < 0.01 and only.params["a"] == pytest.approx(0.5, abs=0.1)


def test_l1_penalty_drives_small_coefficients_to_zero():
    r = gf.fit("a*x + b", x=X, y=Y, penalty={"l1": {"b": 0.5}}, optimizer="adam", lr=0.01, epochs=800,
               progress=False)
    assert abs(r.params["b"]) < 0.02


def test_penalty_on_networks_and_bad_penalties():
    x2 = RNG.uniform(-1, 1, (100, 2))
    r = gf.fit("mlp", x=x2, y=x2.sum(1), hidden=(8,), epochs=50, penalty={"l2": 1e-2}, progress=False)
    assert len(r.history["penalty"]) == 50
    with pytest.raises(ConfigError, match="unknown penalty"):
        gf.fit("a*x + b", x=X, y=Y, penalty={"l3": 1.0}, epochs=1)
    with pytest.raises(ConfigError, match="unknown parameter 'q'"):
        gf.fit("a*x + b", x=X, y=Y, penalty={"l2": {"q": 1.0}}, epochs=1)
    with pytest.raises(ConfigError, match=">= 0"):
        gf.fit("a*x + b", x=X, y=Y, penalty={"l2": -1}, epochs=1)


def test_input_noise_is_seeded_and_changes_the_fit():
    kw = dict(x=X, y=Y, optimizer="adam", lr=0.05, epochs=200, progress=False)
    a = gf.fit("a*x + b", input_noise=0.2, **kw)
    b = gf.fit("a*x + b", input_noise=0.2, **kw)
    clean = gf.fit("a*x + b", **kw)
    assert a.params == b.params and a.params != clean.params
    # noise on x attenuates the slope (regression dilution): a smaller |a|
    assert abs(a.params["a"]) < abs(clean.params["a"])


def test_early_stopping_restores_best_epoch():
    x = np.linspace(-1, 1, 30)
    y = np.sin(3 * x) + 0.3 * RNG.standard_normal(30)
    r = gf.fit("mlp", x=x, y=y, hidden=(64, 64), optimizer="adam", lr=0.01, epochs=3000, val_fraction=0.3,
               early_stopping={"patience": 50}, normalize=True, progress=False, seed=1)
    assert r.status == "stopped_early" and r.best_epoch is not None and r.epochs_run == r.best_epoch + 50
    best = min(r.history["val_loss"])
    assert r.history["val_loss"][r.best_epoch - 1] == best
    assert r.val_loss == pytest.approx(best, rel=1e-5)
    with pytest.raises(ConfigError, match="val_fraction"):
        gf.fit("a*x + b", x=X, y=Y, early_stopping=5, epochs=10)


def test_overfitting_warning():
    x = np.linspace(-1, 1, 24)
    y = x + 0.3 * RNG.standard_normal(24)
    with pytest.warns(gf.GradfitWarning, match="overfitting"):
        gf.fit("mlp", x=x, y=y, hidden=(128, 128), optimizer="adam", lr=0.01, epochs=2500, val_fraction=0.3,
               normalize=True, progress=False, seed=3)


@pytest.mark.parametrize("schedule,check", [
    ("step", lambda lr: lr[-1] < lr[0] / 50),
    ("exponential", lambda lr: lr[-1] == pytest.approx(lr[0] * 0.01, rel=0.05)),
    ("cosine", lambda lr: lr[-1] < 1e-3 * lr[0]),
    ({"name": "plateau", "patience": 2}, lambda lr: lr[-1] < lr[0]),
])
def test_schedules(schedule, check):
    r = gf.fit("a*x + b", x=X, y=Y, optimizer="sgd", lr=0.1, epochs=100, schedule=schedule, progress=False)
    assert len(r.history["lr"]) == 100 and check(r.history["lr"])
    with pytest.raises(ConfigError, match="unknown schedule"):
        gf.fit("a*x + b", x=X, y=Y, optimizer="sgd", epochs=2, schedule="zigzag")


def test_one_list_of_schedule_names_and_each_one_builds():
    import torch

    from gradfit.options import SCHEDULE_NAMES
    from gradfit.train import regularize

    assert not hasattr(regularize, "SCHEDULES")  # the list lives in options.py alone
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    for name in SCHEDULE_NAMES:
        assert isinstance(regularize.make_schedule(name, opt, 10), (torch.optim.lr_scheduler.LRScheduler,
                                                                   torch.optim.lr_scheduler.ReduceLROnPlateau))
    with pytest.raises(ConfigError, match="choose one of " + ", ".join(SCHEDULE_NAMES)):
        regularize.make_schedule("zigzag", opt, 10)


def test_cross_validation_reproducible_and_split_kinds():
    kw = dict(x=X, y=Y, optimizer="adam", lr=0.05, epochs=100, progress=False)
    a = gf.fit("a*x + b", cv=5, **kw)
    b = gf.fit("a*x + b", cv=5, **kw)
    assert a.cv == b.cv and len(a.cv["val_loss"]) == 5 and len(a.cv["params"]) == 5
    assert a.cv["mean"] == pytest.approx(np.mean(a.cv["val_loss"]))
    assert a.cv["params_mean"]["a"] == pytest.approx(0.5, abs=0.1)
    t = gf.fit("a*x + b", cv=4, cv_split="time", **kw)
    assert t.cv["folds"] == 3
    groups = np.repeat(np.arange(8), 5)
    g = gf.fit("a*x + b", cv=4, cv_split="grouped", cv_groups=groups, **kw)
    assert g.cv["folds"] == 4
    lin = gf.fit("a*x + b", x=X, y=Y, cv=5)  # least squares per fold too
    assert lin.method == "linear" and lin.cv["std"] >= 0


def test_kfold_indices_properties():
    from gradfit.data.split import kfold_indices

    folds = kfold_indices(23, 5, seed=0)
    val = np.concatenate([v for _, v in folds])
    assert sorted(val.tolist()) == list(range(23))
    groups = np.repeat(np.arange(6), 4)
    for tr, va in kfold_indices(24, 3, seed=1, groups=groups):
        assert not set(groups[tr]) & set(groups[va])
    for tr, va in kfold_indices(20, 4, seed=0, time_ordered=True):
        assert tr.max() < va.min()
