"""--sigma COL and --weights COL mean the same for fit, compare and tune (one shared resolution in
cli/fit.py): the trials of a search are weighted too."""

import json

import numpy as np
import pytest
from _cli import cli
from scipy.optimize import curve_fit

import gradfit as gf

RNG = np.random.default_rng(0)
X = np.linspace(0, 4, 40)
DY = 0.05 + 0.1 * X
Y = 2 * np.exp(-0.7 * X) + 0.3 + RNG.normal(0, DY)
MODEL = "y ~ a*exp(-k*x) + c"


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "w.csv"
    rows = zip(X.tolist(), Y.tolist(), DY.tolist())
    path.write_text("x,y,dy,w\n" + "".join(f"{a!r},{b!r},{c!r},{1 / c**2!r}\n" for a, b, c in rows))
    return path


def test_fit_takes_weights_or_sigma_by_column_and_equals_curve_fit(data):
    want, _ = curve_fit(lambda x, a, k, c: a * np.exp(-k * x) + c, X, Y, p0=[1, 1, 0], sigma=DY,
                        xtol=1e-14, ftol=1e-14)
    for flag, col in (("--sigma", "dy"), ("--weights", "w")):
        code, out, err = cli("fit", data, MODEL, flag, col, "--json")
        assert code == 0, err
        got = json.loads(out)["params"]
        np.testing.assert_allclose([got["a"], got["k"], got["c"]], want, rtol=1e-7)


def test_bad_weight_flags_exit_2_with_one_line(data):
    code, _, err = cli("fit", data, MODEL, "--sigma", "dy", "--weights", "w")
    assert code == 2 and "not both" in err and err.count("\n") == 1
    code, _, err = cli("fit", data, MODEL, "--weights", "ww")
    assert code == 2 and "no column 'ww' for --weights (did you mean 'w'?)" in err
    code, _, err = cli("compare", data, MODEL, "poly:2", "--sigma", "dyy")
    assert code == 2 and "no column 'dyy' for --sigma" in err


def test_compare_weights_equal_the_api(data):
    code, out, err = cli("compare", data, MODEL, "poly:2", "--x", "x", "--weights", "w", "--json")
    assert code == 0, err
    doc = json.loads(out)
    api = gf.compare([MODEL, "poly:2"], x="x", y="y", data={"x": X, "y": Y}, sigma=DY)
    assert doc["best"] == api.best_label
    want = {row["model"]: row for row in api.rows()}
    for row in doc["models"]:
        assert row["aicc"] == pytest.approx(want[row["model"]]["aicc"], rel=1e-9)


def test_tune_trials_fit_with_the_sigma_column(data, tmp_path):
    pytest.importorskip("optuna")
    common = ["--optimizer", "adam", "--epochs", "30", "--space", "lr=log:1e-3:1e-1", "--trials", "2", "--json",
              "--no-progress"]
    code, out, err = cli("tune", data, MODEL, "--sigma", "dy", "--out", tmp_path / "t", *common)
    assert code == 0, err
    weighted = json.loads(out)["best_value"]
    api = gf.tune(MODEL, data={"x": X, "y": Y}, space={"lr": ("log", 1e-3, 1e-1)}, trials=2, sigma=DY,
                  optimizer="adam", epochs=30, seed=0)
    assert weighted == pytest.approx(api.best_value, rel=1e-9)
    code, out, err = cli("tune", data, MODEL, "--out", tmp_path / "u", *common)
    assert code == 0, err
    assert json.loads(out)["best_value"] != pytest.approx(weighted, rel=0.1)  # unweighted trials differ
    code, _, err = cli("tune", data, MODEL, "--sigma", "dyy", "--out", tmp_path / "v", *common)
    assert code == 2 and "no column 'dyy' for --sigma" in err
