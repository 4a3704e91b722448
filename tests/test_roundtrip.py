"""save/load round trip of every FitResult field, for every model kind and both paths
(least squares "linear"/"lm" and first-order "adam"); a loaded result reports, predicts and
gives confidence intervals exactly as the fresh one. Profile intervals take the data."""

import math
import warnings
from dataclasses import fields

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit import ConfigError, DataError, FitResult
from gradfit.results.fit_result import _DOCUMENT
from gradfit.status import Status

RNG = np.random.default_rng(3)
X = np.linspace(0.0, 6.0, 40)
SIGMA = np.full(X.shape, 0.05) + 0.01 * X
Y_DECAY = 2.0 * np.exp(-0.7 * X) + 0.3 + RNG.normal(0, 0.02, X.shape)
Y_LINE = 1.5 * X - 0.4 + RNG.normal(0, 0.05, X.shape)
Y_PEAK = 3.0 * np.exp(-((X - 2.5) ** 2) / (2 * 0.8**2)) + 0.5 + RNG.normal(0, 0.03, X.shape)
X2 = RNG.uniform(-1, 1, size=(60, 2))
Y2 = np.sin(2 * X2[:, 0]) + X2[:, 1] ** 2


def decay(x, a=1.0, k=0.5, c=0.0):
    return a * torch.exp(-k * x) + c


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


FIRST_ORDER = dict(optimizer="adam", lr=0.05, epochs=60, progress=False, dtype="float64")

# id -> (model factory, data, fit options, load options)
CASES = {
    "formula-linear-weighted": (lambda: "a*x + b", dict(x=X, y=Y_LINE, sigma=SIGMA), dict(optimizer="linear"), {}),
    "formula-lm-bounds-fixed-val": (lambda: "a*exp(-k*x) + c", dict(x=X, y=Y_DECAY),
                                    dict(optimizer="lm", bounds={"k": (0.0, None), "a": (0.0, 10.0)},
                                         init={"c": 0.3}, fixed=["c"], val_fraction=0.25), {}),
    "formula-lm-tie-cv": (lambda: "a*exp(-k*x) + c", dict(x=X, y=Y_DECAY),
                          dict(optimizer="lm", tie={"c": "a/10"}, cv=3), {}),
    "formula-adam-extras": (lambda: "a*x + b", dict(x=X, y=Y_LINE),
                            dict(FIRST_ORDER, val_fraction=0.2, penalty={"l2": 1e-4}, schedule="cosine",
                                 early_stopping=5), {}),
    "formula-lm-singular": (lambda: "a*b*x + c", dict(x=X, y=Y_LINE), dict(optimizer="lm"), {}),
    "formula-sgd-diverged": (lambda: "a*x + b", dict(x=X, y=Y_LINE),
                             dict(optimizer="sgd", lr=10.0, epochs=30, progress=False), {}),
    "builtin-lm": (lambda: "gaussian", dict(x=X, y=Y_PEAK), dict(optimizer="lm"), {}),
    "builtin-linear": (lambda: "poly:2", dict(x=X, y=Y_LINE), dict(optimizer="linear"), {}),
    "builtin-adam": (lambda: "exp_decay", dict(x=X, y=Y_DECAY), FIRST_ORDER, {}),
    "function-lm": (lambda: decay, dict(x=X, y=Y_DECAY), dict(optimizer="lm"), dict(function=decay)),
    "function-adam": (lambda: decay, dict(x=X, y=Y_DECAY), dict(FIRST_ORDER, val_fraction=0.2), dict(function=decay)),
    "mlp-adam": (lambda: "mlp", dict(x=X2, y=Y2), dict(FIRST_ORDER, hidden=(6,), normalize=True, val_fraction=0.2), {}),
    "module-adam": (_net, dict(x=X2, y=Y2), dict(FIRST_ORDER, normalize=True), dict(module=_net())),
}
LEAST_SQUARES = [k for k in CASES if ("-lm" in k or "-linear" in k) and "singular" not in k]


def _fit(model, data, opts):
    with warnings.catch_warnings():  # overfitting and at-bound warnings are not under test here
        warnings.simplefilter("ignore")
        return gf.fit(model, **data, **opts)


def _same(a, b, where="") -> None:
    """Equal values of equal types, NaN equal to NaN, arrays with their dtype and shape."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
        assert np.array_equal(a, b, equal_nan=True), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _same(u, v, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module", params=list(CASES))
def fitted(request, tmp_path_factory):
    model, data, opts, load_opts = CASES[request.param]
    r = _fit(model(), data, opts)
    path = tmp_path_factory.mktemp(request.param) / "fit.json"
    r.save(path)
    return request.param, r, gf.load(path, **load_opts), data


def test_document_declares_every_field():
    assert set(_DOCUMENT) == {f.name for f in fields(FitResult)} - {"model"}


def test_every_field_round_trips(fitted):
    case, r, again, _ = fitted
    for f in fields(FitResult):
        if f.name != "model":
            _same(getattr(r, f.name), getattr(again, f.name), f"{case}.{f.name}")
    assert isinstance(again.status, Status) and isinstance(r.status, Status)
    assert again.model.spec() == r.model.spec()


def test_loaded_result_reports_predicts_and_gives_normal_ci(fitted):
    case, r, again, data = fitted
    assert again.report() == r.report()
    np.testing.assert_array_equal(again.predict(data["x"]), r.predict(data["x"]))
    if r.stderr is not None:
        _same(r.ci(0.9), again.ci(0.9), case)
    text = repr(again)
    assert "\n" not in text and len(text) < 300 and str(r.status) in text


def test_extras_are_present_where_expected(fitted):
    case, r, _, _ = fitted
    if case == "formula-adam-extras":
        assert {"penalty", "lr"} <= set(r.history) and r.best_epoch is not None
    if case == "formula-lm-tie-cv":
        assert r.cv is not None and len(r.cv["val_loss"]) == 3
    if case == "formula-lm-singular":
        assert r.status == "singular" and np.isnan(r.covariance).any() and math.isnan(r.stderr["a"])
    if case == "formula-sgd-diverged":
        assert r.status == "diverged"
    if case == "formula-lm-bounds-fixed-val":
        assert math.isinf(r.settings["bounds"]["k"][1]) and r.n_val > 0


@pytest.mark.parametrize("case", LEAST_SQUARES)
def test_profile_ci_same_on_fresh_and_loaded(case, tmp_path):
    model, data, opts, load_opts = CASES[case]
    r = _fit(model(), data, opts)
    r.save(tmp_path / "fit.json")
    again = gf.load(tmp_path / "fit.json", **load_opts)
    fresh = r.ci(0.9, method="profile", **data)
    assert set(fresh) == set(r.free)
    assert again.ci(0.9, method="profile", **data) == fresh
    for name, (lo, hi) in fresh.items():
        assert lo < r.params[name] < hi


def test_profile_ci_needs_the_fits_data():
    r = gf.fit("a*x + b", x=X, y=Y_LINE, sigma=SIGMA)
    with pytest.raises(ConfigError, match="pass"):
        r.ci(0.95, method="profile")
    with pytest.raises(ConfigError, match="weighted"):
        r.ci(0.95, method="profile", x=X, y=Y_LINE)
    with pytest.raises(DataError, match="training points"):
        r.ci(0.95, method="profile", x=X[:-1], y=Y_LINE[:-1], sigma=SIGMA[:-1])
    with pytest.raises(DataError, match="chi-square"):
        r.ci(0.95, method="profile", x=X, y=Y_LINE + 1.0, sigma=SIGMA)


def test_result_keeps_no_data_or_solver():
    r = gf.fit("a*exp(-k*x) + c", x=X, y=Y_DECAY)
    assert not hasattr(r, "_problem") and not hasattr(r, "ok")
    assert all(not isinstance(getattr(r, f.name), np.ndarray) or getattr(r, f.name).size < 10 for f in fields(r))
