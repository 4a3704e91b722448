"""Typed options: validation in the constructors, JSON round trip, gf.fit(options=...) == keywords."""

import json

import numpy as np
import pytest

import gradfit as gf
from gradfit import ConfigError
from gradfit.fitting.keywords import checkpoint_from_spec, early_stopping_from_spec, options_from_keywords
from gradfit.options import (CheckpointOptions, CrossValidationOptions, EarlyStoppingOptions, FitOptions,
                             LeastSquaresOptions, RegularizationOptions, TrainingOptions)

THERMO = "t_c ~ w*t_u + b"


def _raises(cls, match, **kwargs):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"lr": -1}, r"learning rate lr must be a positive number, got -1"),
    ({"lr": float("nan")}, r"learning rate .* got nan"),
    ({"lr": True}, r"learning rate .* got True"),
    ({"epochs": 0}, r"epochs must be an integer >= 1, got 0"),
    ({"epochs": 2.5}, r"epochs must be an integer >= 1, got 2.5"),
    ({"batch_size": 0}, r"batch_size must be an integer >= 1 or None, got 0"),
    ({"val_fraction": 1.0}, r"val_fraction must be a number in \[0, 1\), got 1.0"),
    ({"seed": -3}, r"seed must be an integer >= 0, got -3"),
    ({"gradient": "analytc"}, r"gradient must be one of .* got 'analytc' \(did you mean 'analytic'\?\)"),
    ({"dtype": "float16"}, r"dtype must be 'float32' or 'float64', got 'float16'"),
    ({"device": "gpu"}, r"device must be .* got 'gpu'"),
    ({"tol": 0}, r"tol must be a positive number or None, got 0"),
    ({"optimizer": ""}, r"optimizer must be a name"),
    ({"optimizer_options": {"momentum": object()}}, r"optimizer_options\['momentum'\] must be plain data"),
    ({"optimizer_options": [0.9]}, r"optimizer_options must be a dict"),
    ({"log_every": -1}, r"log_every must be an integer >= 0, got -1"),
    ({"progress": "yes"}, r"progress must be True or False \(or None\), got 'yes'"),
    ({"normalize": 2}, r"normalize must be True or False, got 2"),
])
def test_training_options_name_the_bad_value(kwargs, match):
    _raises(TrainingOptions, match, **kwargs)


def test_least_squares_options_name_the_bad_value():
    _raises(LeastSquaresOptions, r"max_iter must be an integer >= 1, got 0", max_iter=0)
    _raises(LeastSquaresOptions, r"max_iter must be an integer >= 1, got '10'", max_iter="10")
    _raises(LeastSquaresOptions, r"tol must be a positive number or None, got -1e-08", tol=-1e-8)
    _raises(LeastSquaresOptions, r"absolute_sigma must be True or False, got 'no'", absolute_sigma="no")


def test_regularization_options_name_the_bad_value():
    _raises(RegularizationOptions, r"unknown penalty 'l3' \(did you mean 'l2'\?\)", penalty={"l3": 1.0})
    _raises(RegularizationOptions, r"penalty l2 coefficient must be a number >= 0, got -1", penalty={"l2": -1})
    _raises(RegularizationOptions, r"penalty l1 coefficient of 'w' must be a number >= 0, got 'x'",
            penalty={"l1": {"w": "x"}})
    _raises(RegularizationOptions, r"penalty must be a dict", penalty=0.1)
    _raises(RegularizationOptions, r"input_noise must be a number >= 0, got -0.1", input_noise=-0.1)
    _raises(RegularizationOptions, r"unknown schedule 'cosin' \(did you mean 'cosine'\?\)", schedule="cosin")
    _raises(RegularizationOptions, r"schedule must be a name .* or a dict with a 'name'", schedule={"gamma": 0.5})
    _raises(RegularizationOptions, r"early_stopping must be a EarlyStoppingOptions", early_stopping=5)
    _raises(EarlyStoppingOptions, r"early_stopping patience must be an integer >= 1, got 0", patience=0)
    _raises(EarlyStoppingOptions, r"early_stopping min_delta must be a number >= 0, got -1", min_delta=-1)
    with pytest.raises(ConfigError, match=r"early_stopping must be a patience .* got 'soon'"):
        early_stopping_from_spec("soon")
    assert early_stopping_from_spec(True) == EarlyStoppingOptions(20, 0.0)
    assert early_stopping_from_spec({"patience": 5}) == EarlyStoppingOptions(5)
    assert early_stopping_from_spec(False) is None


def test_checkpoint_and_cross_validation_options_name_the_bad_value(tmp_path):
    _raises(CheckpointOptions, r"checkpoint folder must be a path, got ''", folder="")
    _raises(CheckpointOptions, r"checkpoint folder must be a path, got 3", folder=3)
    _raises(CheckpointOptions, r"every_epochs must be an integer >= 1 or None, got 0", folder="d", every_epochs=0)
    _raises(CheckpointOptions, r"every_seconds must be a positive number or None, got -5", folder="d",
            every_seconds=-5)
    assert CheckpointOptions(tmp_path).folder == str(tmp_path)
    with pytest.raises(ConfigError, match="resume=True .* checkpoint=FOLDER"):
        checkpoint_from_spec(None, resume=True)
    _raises(CrossValidationOptions, r"cv \(the number of folds\) must be an integer >= 2, got 1", folds=1)
    _raises(CrossValidationOptions, r"cv_split must be one of .* got 'timed' \(did you mean 'time'\?\)", folds=3,
            split="timed")


def test_fit_options_name_the_bad_value():
    _raises(FitOptions, r"loss must be a name .* or a callable, got 3", loss=3)
    _raises(FitOptions, r"nan_policy must be one of 'raise', 'omit', got 'drop'", nan_policy="drop")
    _raises(FitOptions, r"hidden must be layer sizes \(integers >= 1\), got \(64, 0\)", hidden=(64, 0))
    _raises(FitOptions, r"training must be a TrainingOptions .* got \{'lr': 0.1\}", training={"lr": 0.1})
    _raises(FitOptions, r"cv must be a CrossValidationOptions", cv=5)
    _raises(FitOptions, r"early_stopping watches the validation loss: set val_fraction",
            regularization=RegularizationOptions(early_stopping=EarlyStoppingOptions()))


def test_options_are_frozen_and_canonical():
    t = TrainingOptions(dtype="double", device=None, optimizer="Adam", optimizer_options={"betas": (0.9, 0.99)})
    assert (t.dtype, t.device, t.optimizer) == ("float64", "auto", "adam")
    assert t.optimizer_options == {"betas": [0.9, 0.99]}
    assert TrainingOptions(optimizer_options={}).optimizer_options is None
    with pytest.raises(AttributeError):
        t.lr = 1.0
    assert FitOptions(hidden=[8, 4]).hidden == (8, 4)


def _everything() -> FitOptions:
    return FitOptions(
        loss="huber", nan_policy="omit", hidden=(16, 8), activation="relu",
        training=TrainingOptions(optimizer="adam", lr=0.003, epochs=77, batch_size=16, normalize=True,
                                 val_fraction=0.25, seed=5, gradient="analytic", dtype="float64", device="cpu",
                                 tol=1e-7, optimizer_options={"betas": (0.8, 0.95), "amsgrad": True}, log_every=10,
                                 progress=False, warn_overfitting=False),
        least_squares=LeastSquaresOptions(max_iter=50, tol=1e-10, absolute_sigma=True),
        regularization=RegularizationOptions(penalty={"l2": {"w": 0.001}, "l1": 1e-4}, input_noise=0.05,
                                             early_stopping=EarlyStoppingOptions(7, 1e-6),
                                             schedule={"name": "plateau", "patience": 3}),
        checkpoint=CheckpointOptions("runs/a", every_epochs=10, every_seconds=None, resume=True),
        cv=CrossValidationOptions(4, "time"))


@pytest.mark.parametrize("opts", [FitOptions(), _everything()], ids=["defaults", "everything"])
def test_json_round_trip_is_exact(opts):
    doc = opts.to_dict()
    text = json.dumps(doc)
    back = FitOptions.from_dict(json.loads(text))
    assert back == opts
    assert back.to_dict() == doc and json.dumps(back.to_dict()) == text
    doc["training"]["lr"] = 99.0  # to_dict hands out a copy
    assert opts.to_dict()["training"]["lr"] == opts.training.lr


def test_from_dict_rejects_unknown_keys_with_a_hint():
    with pytest.raises(ConfigError, match=r"FitOptions has no option 'trainig' \(did you mean 'training'\?\)"):
        FitOptions.from_dict({"trainig": {}})
    with pytest.raises(ConfigError, match=r"TrainingOptions has no option 'epoch' \(did you mean 'epochs'\?\)"):
        FitOptions.from_dict({"training": {"epoch": 5}})
    with pytest.raises(ConfigError, match=r"EarlyStoppingOptions has no option 'patient'"):
        FitOptions.from_dict({"regularization": {"early_stopping": {"patient": 5}}})
    with pytest.raises(ConfigError, match=r"from_dict takes a dict"):
        FitOptions.from_dict([1, 2])
    with pytest.raises(ConfigError, match=r"unknown fit option 'learning_rate'"):
        options_from_keywords(learning_rate=0.1)


def test_from_keywords_maps_the_fit_shorthands(tmp_path):
    o = options_from_keywords(tol=1e-6, max_iter=30, early_stopping=5, val_fraction=0.2, cv=3, cv_split="time",
                                 checkpoint=tmp_path, resume=True, schedule="cosine")
    assert o.training.tol == o.least_squares.tol == 1e-6 and o.least_squares.max_iter == 30
    assert o.regularization.early_stopping == EarlyStoppingOptions(5, 0.0)
    assert o.cv == CrossValidationOptions(3, "time")
    assert o.checkpoint == CheckpointOptions(str(tmp_path), resume=True)
    assert options_from_keywords() == FitOptions()
    # cached for scalar keywords, yet 1 and True stay apart
    assert options_from_keywords(epochs=1).training.epochs == 1
    with pytest.raises(ConfigError, match="epochs"):
        options_from_keywords(epochs=True)


@pytest.mark.parametrize("keywords,options", [
    ({}, FitOptions()),
    ({"optimizer": "adam", "lr": 0.05, "epochs": 300, "normalize": True, "progress": False},
     FitOptions(training=TrainingOptions(optimizer="adam", lr=0.05, epochs=300, normalize=True, progress=False))),
    ({"optimizer": "lm", "max_iter": 40, "absolute_sigma": True},
     FitOptions(training=TrainingOptions(optimizer="lm"),
                least_squares=LeastSquaresOptions(max_iter=40, absolute_sigma=True))),
], ids=["auto", "adam", "lm"])
def test_fit_with_options_equals_fit_with_keywords(keywords, options):
    d = gf.thermometer()
    a = gf.fit(THERMO, data=d, **keywords)
    b = gf.fit(THERMO, data=d, options=options)
    assert a.params == b.params and a.stderr == b.stderr and a.status == b.status
    assert a.settings == b.settings and a.history == b.history
    assert FitOptions.from_dict(a.settings["options"]) == options


def test_settings_replay_a_fit_and_record_what_ran():
    x = np.linspace(0, 1, 40)
    y = 2 * x + 1 + 0.01 * np.sin(40 * x)
    r = gf.fit("a*x + b", x=x, y=y, optimizer="adam", lr=0.05, epochs=60, val_fraction=0.25, early_stopping=10,
               penalty={"l2": 1e-4}, progress=False)
    assert (r.settings["method"], r.settings["loss"], r.settings["device"]) == ("adam", "mse", "cpu")
    again = gf.fit("a*x + b", x=x, y=y, options=FitOptions.from_dict(r.settings["options"]))
    assert again.params == r.params and again.history == r.history
    assert "lr=0.05" in r.report()
    lin = gf.fit("a*x + b", x=x, y=y, dtype="float32")
    assert (lin.settings["dtype"], lin.settings["device"], lin.settings["strategy"]) == ("float64", "cpu", "SVD")


def test_options_and_option_keywords_together_are_refused():
    d = gf.thermometer()
    with pytest.raises(ConfigError, match=r"options= already holds every option; drop lr, epochs"):
        gf.fit(THERMO, data=d, options=FitOptions(), lr=0.1, epochs=5)
    with pytest.raises(ConfigError, match=r"options must be a FitOptions"):
        gf.fit(THERMO, data=d, options={"training": {"lr": 0.1}})
    # data and parameter keywords combine with options; keywords at their defaults are fine
    r = gf.fit(THERMO, data=d, options=FitOptions(), init={"w": 0.5}, bounds={"w": (0, 1)}, lr=0.01)
    assert r.method == "lm" and r.params["w"] == pytest.approx(0.5368, abs=1e-3)


def test_cross_validation_folds_run_quiet():
    opts = FitOptions(training=TrainingOptions(progress=True, log_every=5), cv=CrossValidationOptions(3),
                      checkpoint=CheckpointOptions("somewhere"))
    fold = opts.for_fold()
    assert (fold.training.progress, fold.training.log_every, fold.training.warn_overfitting) == (False, 0, False)
    assert fold.checkpoint is None and fold.cv is None
    assert fold.training.lr == opts.training.lr


def test_readme_options_example():
    """README "Typed options": build options, fit with them, and rebuild them from the settings."""
    opts = gf.FitOptions(training=gf.TrainingOptions(optimizer="adam", lr=0.05, epochs=2000))
    r = gf.fit("t_c ~ w*t_u + b", data=gf.thermometer(), options=opts)
    assert gf.FitOptions.from_dict(r.settings["options"]) == opts
    assert r.method == "adam" and r.epochs_run == 2000
    with pytest.raises(gf.ConfigError, match="learning rate lr must be a positive number, got -1"):
        gf.TrainingOptions(lr=-1)


def test_names_are_checked_when_the_options_are_built():
    """Optimizer, loss and activation names are validated in the constructors, against the same
    lists the registry, the losses and the MLP use."""
    from gradfit.losses import LOSSES
    from gradfit.models.neural import ACTIVATIONS as MLP_ACTIVATIONS
    from gradfit.optim.registry import optimizer_names
    from gradfit.options import ACTIVATIONS, LOSS_NAMES, OPTIMIZERS

    assert tuple(LOSSES) == LOSS_NAMES and MLP_ACTIVATIONS is ACTIVATIONS
    assert set(optimizer_names()) | {"auto", "lm", "linear"} == set(OPTIMIZERS)
    with pytest.raises(ConfigError, match="unknown optimizer 'adamm' \\(did you mean 'adam'\\?\\); choose one of"):
        TrainingOptions(optimizer="adamm")
    with pytest.raises(ConfigError, match="unknown loss 'mse2'"):
        FitOptions(loss="mse2")
    with pytest.raises(ConfigError, match="unknown activation 'relux' \\(did you mean 'relu'\\?\\)"):
        FitOptions(activation="relux")
