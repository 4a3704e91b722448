"""Built-in curves: a formula plus a data-driven initial guess.

Each guess is a small numpy function of (x, y) that lands close enough to the optimum for a
local optimizer; they are tested on noisy synthetic data in tests/test_builtin.py.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np

from ..errors import ModelError
from ..formula.parse import ParsedFormula, parse_formula
from ..formula.tree import substitute
from .formula import FormulaModel

__all__ = ["BuiltinModel", "builtin_model", "BUILTIN_NAMES"]


def _sorted_xy(x, y):
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def _edge_mean(v, frac=0.1):
    k = max(1, int(len(v) * frac))
    return float(np.mean(v[:k])), float(np.mean(v[-k:]))


def _span(x):
    s = float(x.max() - x.min()) if len(x) else 1.0
    return s if s > 0 else 1.0


def _guess_linear(x, y):
    if len(x) < 2 or np.ptp(x) == 0:
        return {"slope": 0.0, "intercept": float(np.mean(y)) if len(y) else 0.0}
    slope, intercept = np.polyfit(x, y, 1)
    return {"slope": float(slope), "intercept": float(intercept)}


def _guess_poly(degree):
    def guess(x, y):
        coeffs = np.zeros(degree + 1)
        if len(x) > degree and np.ptp(x) > 0:
            coeffs = np.polynomial.polynomial.polyfit(x, y, degree)
        return {f"c{i}": float(c) for i, c in enumerate(coeffs)}

    return guess


def _guess_exp_decay(x, y):
    x, y = _sorted_xy(x, y)
    first, last = _edge_mean(y)
    c = last
    a = first - c
    k = 3.0 / _span(x)
    if a != 0:
        target = c + a / np.e
        crossing = np.nonzero((y - target) * np.sign(a) <= 0)[0]
        if len(crossing) and x[crossing[0]] > x[0]:
            k = 1.0 / (x[crossing[0]] - x[0])
        a = a * np.exp(k * x[0])  # the formula is a*exp(-k*x): refer a to x = 0
    return {"a": float(a), "k": float(k), "c": float(c)}


def _peak_guess(x, y):
    x, y = _sorted_xy(x, y)
    lo, hi = _edge_mean(y)
    c = min(lo, hi)
    i = int(np.argmax(y - c))
    a = float(y[i] - c)
    center = float(x[i])
    half = y - c >= a / 2
    width = float(x[half].max() - x[half].min()) if half.any() else _span(x) / 4
    width = width if width > 0 else _span(x) / max(len(x), 2)
    return a, center, width, c


def _guess_gaussian(x, y):
    a, mu, fwhm, c = _peak_guess(x, y)
    return {"a": a, "mu": mu, "sigma": fwhm / 2.3548, "c": c}


def _guess_lorentzian(x, y):
    a, x0, fwhm, c = _peak_guess(x, y)
    return {"a": a, "x0": x0, "gamma": fwhm / 2.0, "c": c}


def _guess_logistic(x, y):
    x, y = _sorted_xy(x, y)
    lo, hi = _edge_mean(y)
    mid = (lo + hi) / 2
    above = np.nonzero((y - mid) * np.sign(hi - lo) >= 0)[0]
    x0 = float(x[above[0]]) if len(above) else float(np.median(x))
    return {"L": float(hi - lo), "k": 8.0 / _span(x), "x0": x0, "c": float(lo)}


def _guess_power(x, y):
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    ok = (x > 0) & (y > 0)
    if ok.sum() >= 2 and np.ptp(np.log(x[ok])) > 0:
        b, log_a = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
        return {"a": float(np.exp(log_a)), "b": float(b)}
    return {"a": 1.0, "b": 1.0}


def _guess_hill(x, y):
    x, y = _sorted_xy(x, y)
    lo, hi = _edge_mean(y)
    mid = (lo + hi) / 2
    above = np.nonzero((y - mid) * np.sign(hi - lo) >= 0)[0]
    positive = x[x > 0]
    ec50 = float(x[above[0]]) if len(above) and x[above[0]] > 0 else float(np.median(positive)) if len(positive) else 1.0
    return {"bottom": float(lo), "top": float(hi), "ec50": ec50, "n": 1.0}


_CURVES: dict[str, tuple[str, Callable]] = {
    "linear": ("slope*x + intercept", _guess_linear),
    "exp_decay": ("a*exp(-k*x) + c", _guess_exp_decay),
    "gaussian": ("a*exp(-(x - mu)**2/(2*sigma**2)) + c", _guess_gaussian),
    "lorentzian": ("a*gamma**2/((x - x0)**2 + gamma**2) + c", _guess_lorentzian),
    "logistic": ("c + L/(1 + exp(-k*(x - x0)))", _guess_logistic),
    "power": ("a*x**b", _guess_power),
    "hill": ("bottom + (top - bottom)*x**n/(ec50**n + x**n)", _guess_hill),
}
BUILTIN_NAMES = tuple(_CURVES) + ("poly:N",)
_POLY = re.compile(r"^poly:(\d+)$")


class BuiltinModel(FormulaModel):
    """A named curve: its formula in ``x`` and a data-driven :meth:`guess`.

    The data's input may have any column name (``"Time (s)"``, ``"dose [mg]"``): the name
    replaces ``x`` in the parsed tree and is never parsed as formula text.

    >>> builtin_model("exp_decay", input_name="Time (s)").input_names
    ('Time (s)',)
    """

    kind = "builtin"

    def __init__(self, name: str, formula: str, guesser: Callable, input_name: str = "x"):
        parsed = parse_formula(formula)
        if input_name != "x":
            if input_name in parsed.names():
                raise ModelError(f"input name {input_name!r} clashes with a parameter of {name}; rename the column")
            # display text only (describe() shows the curve's name); the tree is renamed below
            text = re.sub(r"\bx\b", input_name, formula) if input_name.isidentifier() else formula
            parsed = ParsedFormula(text, substitute(parsed.rhs, {"x": input_name}), parsed.response)
        super().__init__(parsed, inputs=[input_name], name=name)
        self._guesser = guesser

    def bind(self, available):
        """Use the data's one input name (e.g. a column 'dose') in place of x."""
        available = list(available)
        if len(available) != 1 or available[0] == self.input_names[0]:
            return self
        return builtin_model(self.name, input_name=available[0])

    def guess(self, inputs: Mapping, y) -> dict[str, float]:
        x = np.asarray(next(iter(inputs.values())), dtype=float)
        y = np.asarray(y, dtype=float)
        guess = self._guesser(x, y)
        return {k: (v if np.isfinite(v) else 1.0) for k, v in guess.items()}

    def spec(self) -> dict:
        return {"kind": "builtin", "name": self.name, "input": self.input_names[0]}


def builtin_model(name: str, input_name: str = "x") -> BuiltinModel:
    """The built-in curve called ``name`` (``linear``, ``poly:3``, ``gaussian``, ...)."""
    key = name.strip().lower()
    m = _POLY.match(key)
    if m:
        degree = int(m.group(1))
        if not 2 <= degree <= 10:
            raise ModelError(f"poly:N takes N from 2 to 10, got {degree}")
        formula = " + ".join(["c0", "c1*x"] + [f"c{i}*x**{i}" for i in range(2, degree + 1)])
        return BuiltinModel(key, formula, _guess_poly(degree), input_name)
    if key not in _CURVES:
        raise ModelError(f"unknown built-in model {name!r}; choose one of {', '.join(BUILTIN_NAMES)}")
    formula, guesser = _CURVES[key]
    return BuiltinModel(key, formula, guesser, input_name)
