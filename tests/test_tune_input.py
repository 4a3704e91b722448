"""Tuning input errors (issue 11, 2.10): every bad search input is one ConfigError line (exit 2
in the CLI) before any trial runs; int ``hidden`` means one layer; val_loss gets a default split;
a resumed study must keep its space."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest

import gradfit as gf
from gradfit import ConfigError
from gradfit.cli.main import main

optuna = pytest.importorskip("optuna")

X = np.linspace(-1, 1, 40)
Y = 2.0 * X + 0.5 + 0.05 * np.sin(17 * X)
FAST = dict(epochs=3, optimizer="adam", progress=False)


@pytest.fixture
def csv(tmp_path):
    p = tmp_path / "thermo.csv"
    p.write_text("t_u,t_c\n" + "".join(f"{a},{b}\n" for a, b in zip(X, Y)))
    return p


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], stdout=out, stderr=err)
    return int(code), out.getvalue(), err.getvalue()


def _trial_count(storage) -> int:
    from gradfit.tuning import open_study

    return len(open_study(None, str(storage), 0).get_trials(deepcopy=False))


# -- the CLI: one line, exit 2, no trial -------------------------------------------------------------
@pytest.mark.parametrize("spec, words", [
    ("learnrate=log:1e-4:1e-1", "'learnrate' is not a fit option (did you mean 'lr'?)"),
    ("learning_rate=log:1e-4:1e-1", "did you mean 'lr'?"),
    ("optimizer=adam,adamm", "unknown optimizer 'adamm' (did you mean 'adam'?)"),
    ("lr=log:1e-1:1e-4", "need low < high"),
    ("lr=log:0:1", "a log range needs low > 0"),
    ("epochs=int:a:b", "expected int:LOW:HIGH with numbers"),
    ("epochs=int:1.5:3", "an int range needs integer ends"),
    ("lr=", "--space expects NAME=SPEC"),
    ("lr=exp:1:2", "unknown range kind 'exp'"),
    ("lr=log:1e-3", "expected log:LOW:HIGH"),
    ("lr=float:-1:1", "learning rate lr must be a positive number"),
    ("loss=mse,hubber", "unknown loss 'hubber'"),
    ("momentum=float:0:0.9", "unexpected keyword argument 'momentum'"),  # adam takes no momentum
    ("hidden=8,32", "only the built-in 'mlp' model has hidden"),
    ("val_fraction=float:0:0.5", "metric 'val_loss' needs a validation split"),
    ("penalty.l3=log:1e-6:1e-2", "unknown penalty 'l3'"),
    ("epochs.x=int:1:3", "only the dict options"),
])
def test_cli_bad_space_is_one_line_exit_2_before_any_trial(csv, tmp_path, spec, words):
    out = tmp_path / "t"
    code, stdout, stderr = _cli(["tune", csv, "t_c ~ w*t_u + b", "--space", spec, "--trials", 2, "--epochs", 3,
                                 "--optimizer", "adam", "--out", out])
    assert code == 2, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("gradfit tune: error: "), stderr
    assert words in stderr and "Traceback" not in stderr
    assert not (out / "study.journal").exists() or _trial_count(out / "study.journal") == 0


def test_cli_really_exits_2_with_one_line(csv, tmp_path):
    p = subprocess.run([sys.executable, "-m", "gradfit", "tune", str(csv), "t_c ~ w*t_u + b", "--space",
                        "learnrate=log:1e-4:1e-1", "--trials", "1", "--out", str(tmp_path / "t")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "did you mean 'lr'" in p.stderr


def test_cli_default_validation_split_is_stated_and_trials_complete(csv, tmp_path):
    out = tmp_path / "t"
    code, stdout, stderr = _cli(["tune", csv, "t_c ~ w*t_u + b", "--space", "lr=log:1e-3:1e-1", "--trials", 2,
                                 "--epochs", 3, "--optimizer", "adam", "--out", out])
    assert code == 0, stderr
    assert "(2 complete)" in stdout and "validation split of 0.2 of the rows (the default" in stdout
    code, stdout, _ = _cli(["tune", csv, "t_c ~ w*t_u + b", "--space", "lr=log:1e-3:1e-1", "--trials", 1,
                            "--epochs", 3, "--optimizer", "adam", "--out", out, "--json"])
    doc = json.loads(stdout)
    assert code == 0 and doc["trials"] == 3 and doc["val_fraction"] == 0.2
    code, _, stderr = _cli(["tune", csv, "t_c ~ w*t_u + b", "--space", "lr=log:1e-3:1e-1", "--trials", 1,
                            "--epochs", 3, "--optimizer", "adam", "--val-fraction", 0, "--out", tmp_path / "z"])
    assert code == 2 and "needs a validation split" in stderr


def test_cli_resume_with_another_space_is_one_line(csv, tmp_path):
    out = tmp_path / "t"
    common = [csv, "t_c ~ w*t_u + b", "--trials", 1, "--epochs", 3, "--optimizer", "adam", "--out", out]
    assert _cli(["tune", *common, "--space", "lr=log:1e-3:1e-1"])[0] == 0
    for other in (["--space", "lr=log:1e-4:1e-1"], ["--space", "lr=float:1e-3:1e-1"],
                  ["--space", "optimizer=sgd,adam"], ["--space", "lr=log:1e-3:1e-1", "--space", "epochs=int:2:4"]):
        code, _, stderr = _cli(["tune", *common, *other])
        assert code == 2 and stderr.count("\n") == 1, stderr
        assert "was created with the space lr=log:0.001:0.1" in stderr and "new study" in stderr
    assert _trial_count(out / "study.journal") == 1
    assert _cli(["tune", *common, "--space", "lr=log:1e-3:1e-1"])[0] == 0  # the same space resumes
    assert _trial_count(out / "study.journal") == 2


def test_cli_hidden_choices_are_widths_and_dash_joins_layers(csv, tmp_path):
    out = tmp_path / "h"
    code, stdout, stderr = _cli(["tune", csv, "mlp", "--x", "t_u", "--y", "t_c", "--space", "hidden=4,8-8",
                                 "--trials", 3, "--epochs", 3, "--out", out, "--json"])
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["states"] == {"COMPLETE": 3} and doc["best_params"]["hidden"] in ("4", "8-8")


# -- Python ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("space, words", [
    ({"learnrate": ("log", 1e-4, 1e-1)}, "did you mean 'lr'?"),
    ({"optimizer": ["adam", "adamm"]}, "unknown optimizer 'adamm'"),
    ({"lr": ("log", 1e-1, 1e-4)}, "need low < high"),
    ({"lr": ("log", 0, 1)}, "log range needs low > 0"),
    ({"epochs": ("int", "a", "b")}, "finite numbers"),
    ({"epochs": ("int", 1.5, 3)}, "integer ends"),
    ({"lr": ("log", 1e-3)}, "expected ('log', low, high)"),
    ({"lr": []}, "non-empty list"),
    ({"lr": ("float", 0.0, float("nan"))}, "finite numbers"),
    ({"batch_size": [0, 8]}, "batch_size must be an integer >= 1"),
    ({"activation": ["tanh", "relux"]}, "only the built-in 'mlp' model"),
    ({"momentum": ("float", 0, 0.9)}, "unexpected keyword argument 'momentum'"),
    ({}, "non-empty dict"),
])
def test_python_bad_space_is_a_config_error_before_any_trial(tmp_path, space, words):
    storage = tmp_path / "s.journal"
    with pytest.raises(ConfigError) as info:
        gf.tune("a*x + b", x=X, y=Y, space=space, trials=2, storage=str(storage), **FAST)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert not storage.exists() or _trial_count(storage) == 0


def test_activation_choices_checked_for_mlp():
    with pytest.raises(ConfigError, match="unknown activation 'relux'"):
        gf.tune("mlp", x=X, y=Y, space={"activation": ["tanh", "relux"]}, trials=1, **FAST)


def test_int_hidden_is_one_layer_in_fit_and_in_tune():
    from gradfit.models.neural import MLPSpec

    assert MLPSpec(32).hidden == (32,) and MLPSpec([8, 4]).hidden == (8, 4)
    for bad in (0, (), (8, 0), True, "32"):
        with pytest.raises(ConfigError, match="hidden"):
            gf.fit("mlp", x=X, y=Y, hidden=bad, epochs=1, progress=False)
    r = gf.fit("mlp", x=X, y=Y, hidden=32, epochs=2, progress=False)
    assert r.model.mlp.hidden == (32,)
    assert sum(p.numel() for p in r.model.module.parameters()) == (1 * 32 + 32) + (32 * 1 + 1)
    t = gf.tune("mlp", x=X, y=Y, space={"hidden": [4, "8-8", (3, 5)]}, trials=4, seed=1, **FAST)
    assert {row["param_hidden"] for row in t.trials} <= {"4", "8-8", "3-5"}
    assert t.best_params["hidden"] in ((4,), (8, 8), (3, 5))
    assert t.best_fit.model.mlp.hidden == t.best_params["hidden"]
    t = gf.tune("mlp", x=X, y=Y, space={"hidden": ("int", 2, 6)}, trials=2, **FAST)
    assert len(t.best_fit.model.mlp.hidden) == 1 and 2 <= t.best_fit.model.mlp.hidden[0] <= 6


def test_default_validation_split_and_explicit_zero():
    t = gf.tune("a*x + b", x=X, y=Y, space={"lr": ("log", 1e-3, 1e-1)}, trials=2, **FAST)
    assert t.val_fraction == 0.2 and t.best_fit.n_val == 8 and t.best_fit.n_train == 32
    assert all(row["state"] == "COMPLETE" for row in t.trials)
    with pytest.raises(ConfigError, match="needs a validation split.*metric 'loss'"):
        gf.tune("a*x + b", x=X, y=Y, space={"lr": ("log", 1e-3, 1e-1)}, trials=2, val_fraction=0, **FAST)
    t = gf.tune("a*x + b", x=X, y=Y, space={"lr": ("log", 1e-3, 1e-1)}, trials=2, metric="loss", **FAST)
    assert t.val_fraction == 0.0 and t.best_fit.n_val == 0


def test_momentum_alias_and_dotted_names_reach_the_fit():
    t = gf.tune("a*x + b", x=X, y=Y, space={"momentum": ("float", 0.1, 0.9), "penalty.l2": ("log", 1e-6, 1e-3)},
                trials=2, **{**FAST, "optimizer": "sgd"})
    assert set(t.best_params) == {"optimizer_options.momentum", "penalty.l2"}
    opts = t.best_fit.settings["options"]
    assert opts["training"]["optimizer_options"]["momentum"] == t.best_params["optimizer_options.momentum"]


def test_a_trial_failing_on_its_settings_stops_the_search(tmp_path):
    # an error only the fit itself finds (here NaN in y with nan_policy "raise") would fail every
    # trial the same way: the first one stops the search with that error, as one line
    storage = tmp_path / "s.journal"
    y = Y.copy()
    y[3] = np.nan
    with pytest.raises(gf.DataError, match=r"^trial 0 \(lr=.*\) failed, so the search stopped: .*NaN") as info:
        gf.tune("a*x + b", x=X, y=y, space={"lr": ("log", 1e-3, 1e-1)}, trials=5, storage=str(storage), **FAST)
    assert "\n" not in str(info.value)
    assert _trial_count(storage) == 1


def test_init_names_are_checked_before_any_trial():
    with pytest.raises(ConfigError, match=r"space 'init.zz': the model has no parameter 'zz' \(its parameters: a, b\)"):
        gf.tune("a*x + b", x=X, y=Y, space={"init.zz": ("float", 0, 1)}, trials=2, **FAST)
    # a name that is a data column is an input, not a parameter: refused before any trial
    with pytest.raises(ConfigError, match=r"'x' is a data column, so it is an input"):
        gf.tune("a*x + b", x={"x": X}, y=Y, space={"init.x": ("float", 0, 1)}, trials=2, **FAST)
    with pytest.raises(ConfigError, match=r"'t_u' is a data column"):
        gf.tune("t_c ~ w*t_u + b", data=gf.thermometer(), space={"init.t_u": ("float", 0, 1)}, trials=2, **FAST)
    t = gf.tune("a*x + b", x=X, y=Y, space={"init.a": ("float", 0, 1)}, trials=2, **FAST)
    assert 0 <= t.best_params["init.a"] <= 1


def test_resume_in_python_with_the_same_and_another_space(tmp_path):
    storage = str(tmp_path / "s.journal")
    kw = dict(x=X, y=Y, trials=1, storage=storage, **FAST)
    gf.tune("a*x + b", space={"lr": ("log", 1e-3, 1e-1), "optimizer": ["sgd", "adam"]}, **kw)
    gf.tune("a*x + b", space={"lr": ("log", 1e-3, 1e-1), "optimizer": ["sgd", "adam"]}, **kw)
    for other in ({"lr": ("log", 1e-3, 1e-1)}, {"lr": ("log", 1e-3, 1e-1), "optimizer": ["adam", "sgd"]},
                  {"lr": ("float", 1e-3, 1e-1), "optimizer": ["sgd", "adam"]}):
        with pytest.raises(ConfigError, match="was created with the space lr=log:0.001:0.1 optimizer=sgd,adam"):
            gf.tune("a*x + b", space=other, **kw)
    assert _trial_count(storage) == 2


def test_study_from_before_the_space_record_is_checked_by_its_trials(tmp_path):
    from gradfit.tuning import open_study
    from gradfit.tuning.study import SPACE_ATTR

    storage = str(tmp_path / "s.journal")
    study = open_study(None, storage, 0)
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    study.tell(trial, 1.0)
    assert SPACE_ATTR not in study.user_attrs
    with pytest.raises(ConfigError, match="has trials searched over 'lr'"):
        gf.tune("a*x + b", x=X, y=Y, space={"lr": ("log", 1e-3, 1e-1)}, trials=1, storage=storage, **FAST)
    t = gf.tune("a*x + b", x=X, y=Y, space={"lr": ("log", 1e-4, 1e-1)}, trials=1, storage=storage, **FAST)
    assert len(t.trials) == 2


def test_parse_space_text():
    from gradfit.tuning.space import parse_space, parse_space_text

    space = parse_space_text(["lr=log:1e-4:1e-1", "epochs=int:10:50", "optimizer=sgd,adam", "normalize=true,false",
                              "hidden=8,16-16", "device=cpu,cuda:0"])
    assert space == {"lr": ("log", 1e-4, 1e-1), "epochs": ("int", 10, 50), "optimizer": ["sgd", "adam"],
                     "normalize": [True, False], "hidden": ["8", "16-16"], "device": ["cpu", "cuda:0"]}
    assert parse_space(space)["hidden"] == ("choice", [(8,), (16, 16)])
    for bad in (["lr"], ["=1"], ["lr=a,,b"], ["hidden=8,x-8"]):
        with pytest.raises(ConfigError):
            parse_space(parse_space_text(bad))
