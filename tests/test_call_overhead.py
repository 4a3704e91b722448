"""The per-call shortcuts of gf.fit (issue 13, target 1) keep their semantics: remembered
options never go stale, the terminal test follows a replaced stderr, and the numeric shortcuts
agree with the numpy forms they replace."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import gradfit as gf
from gradfit.callbacks import wants_progress
from gradfit.data.float32 import within_float32_range
from gradfit.fitting.fit import _OPTION_KEYWORDS, _default_values
from gradfit.fitting.keywords import options_from_keywords, options_from_values
from gradfit.optim.lm import LMOptions, LMOutcome, _flat
from gradfit.status import Status


def _values(**changes):
    return tuple(changes.get(k, v) for k, v in zip(_OPTION_KEYWORDS, _default_values()))


def test_remembered_options_follow_a_mutated_dict():
    extra = {"momentum": 0.9}
    values = _values(optimizer="sgd", optimizer_options=extra)
    assert options_from_values(_OPTION_KEYWORDS, values).training.optimizer_options == {"momentum": 0.9}
    extra["momentum"] = 0.5  # the same dict object, changed: never served from the memo
    assert options_from_values(_OPTION_KEYWORDS, values).training.optimizer_options == {"momentum": 0.5}


@pytest.mark.parametrize("change", [{"epochs": 10}, {"lr": 0.5}, {"dtype": "float64"}, {"tol": 1e-9}])
def test_remembered_options_change_with_any_value(change):
    before = options_from_values(_OPTION_KEYWORDS, _values())
    after = options_from_values(_OPTION_KEYWORDS, _values(**change))
    assert after != before
    assert after == options_from_keywords(**change)


def test_remembered_options_tell_equal_values_of_other_types():
    # 1 == 1.0 == True, but only an int is an epoch count: the memo keys on identity and types
    assert options_from_values(_OPTION_KEYWORDS, _values(epochs=3)).training.epochs == 3
    with pytest.raises(gf.ConfigError):
        options_from_values(_OPTION_KEYWORDS, _values(epochs=3.0))


def test_a_fit_in_a_loop_takes_its_keywords():
    x = np.linspace(0, 4, 30)
    y = 2.0 * np.exp(-0.7 * x) + 0.1
    a = gf.fit("a*exp(-k*x) + c", x=x, y=y, init={"a": 1.0, "k": 1.0, "c": 0.0}, dtype="float64", max_iter=3)
    b = gf.fit("a*exp(-k*x) + c", x=x, y=y, init={"a": 1.0, "k": 1.0, "c": 0.0}, dtype="float64")
    assert a.status == "max_iterations" and a.epochs_run == 3
    assert b.status == "converged"
    assert b.params["k"] == pytest.approx(0.7, rel=1e-10)


class _Stream:
    def __init__(self, tty: bool):
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def write(self, text):
        return len(text)

    def flush(self):
        pass


def test_progress_follows_a_replaced_stderr(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Stream(True))
    assert wants_progress(None) is True
    monkeypatch.setattr(sys, "stderr", _Stream(False))
    assert wants_progress(None) is False
    assert wants_progress(True) is True and wants_progress(False) is False


@pytest.mark.parametrize("values, expected", [
    ([1.0, -2.0], True), ([3e38, 1.0], True), ([1e39], False), ([np.nan, 1.0], False), ([np.inf], False),
    ([-np.inf, 1.0], False), ([], True), ([[1.0, 2.0], [3.0, 4e38]], False),
])
def test_float32_range_test_without_flags(values, expected):
    with np.errstate(all="raise"):  # the shortcut raises no floating-point flag
        assert within_float32_range(np.array(values, dtype=float)) is expected


def _outcome(norms):
    out = LMOutcome(np.zeros(len(norms)), 0.0, Status.CONVERGED, 1, "", [], 1, 1, np.zeros(3), np.ones((3, len(norms))))
    out.gram_eigh = (np.array(norms), None, None)
    return out


@pytest.mark.parametrize("norms, flat", [
    ([1.0, 2.0], False), ([1.0, 1e-17], True), ([0.0, 1.0], True), ([1.0, math.nan, 1e-20], False),
    ([math.nan, 1e-20], False),
])
def test_flat_column_test_on_floats(norms, flat):
    assert _flat(_outcome(norms)) is flat


def test_lm_options_fill_in_their_tolerances():
    from dataclasses import replace

    o = LMOptions(ftol=1e-3)
    assert o.tolerances[0] == 1e-3 and o.tolerances[1] == LMOptions().tolerances[1]
    assert replace(o, xtol=1e-5).tolerances[:2] == (1e-3, 1e-5)
    assert o == LMOptions(ftol=1e-3)


def _gauss(x, a, m, s, c):
    return a * np.exp(-(x - m) ** 2 / (2 * s**2)) + c


@pytest.mark.parametrize("zero_weight", [False, True])
@pytest.mark.parametrize("compile_", [True, False])
def test_weighted_statistics_from_the_solvers_residuals(zero_weight, compile_):
    # the statistics of a weighted fit come from the solver's residuals divided by sqrt(w) (or,
    # with a zero weight, from the model evaluated again): both must match the definitions
    rng = np.random.default_rng(3)
    x = np.linspace(-5, 5, 120)
    sigma = 0.02 + 0.01 * np.abs(x)
    y = _gauss(x, 2.5, 0.7, 0.9, 0.3) + sigma * rng.standard_normal(x.size)
    w = 1.0 / sigma**2
    if zero_weight:
        w[5] = 0.0
    r = gf.fit("a*exp(-(x-m)**2/(2*s**2)) + c", x=x, y=y, weights=w, dtype="float64", compile=compile_,
               init={"a": 2.0, "m": 0.5, "s": 1.0, "c": 0.0})
    assert r.status == "converged"
    resid = _gauss(x, *(r.params[n] for n in "amsc")) - y
    chi2 = float(np.sum(w * resid**2))
    mean = np.sum(w * y) / np.sum(w)
    assert r.stats["chisqr"] == pytest.approx(chi2, rel=1e-10)
    used = w > 0  # a point of weight 0 is left out (n, rss)
    assert r.stats["n"] == int(used.sum())
    assert r.stats["rss"] == pytest.approx(float(resid[used] @ resid[used]), rel=1e-10)
    assert r.stats["r2"] == pytest.approx(1.0 - chi2 / float(np.sum(w * (y - mean) ** 2)), rel=1e-12)
    assert r.loss == pytest.approx(chi2 / float(np.sum(w)), rel=1e-10)


@pytest.mark.parametrize("sigma, message", [([1.0, 0.0, 1.0, 1.0], "sigma must be positive: 0 at row 2"),
                                            ([1.0, -1.0, 1.0, 1.0], "sigma must be positive: -1 at row 2"),
                                            ([1.0, np.nan, 1.0, 1.0], "NaN or inf in 1 data row")])
def test_sigma_must_be_positive(sigma, message):
    with pytest.raises(gf.DataError, match=message):
        gf.fit("a*x + b", x=[0.0, 1.0, 2.0, 3.0], y=[1.0, 2.0, 2.9, 4.1], sigma=sigma)
