"""Every function the formula language knows, in one table.

Each :class:`Function` entry holds the function's name in the expression tree, its number
of arguments and its form in every backend gradfit evaluates formulas with:

* ``math``: float arithmetic, for constant folding in the parser and the compiler;
* ``torch``: the compiled model (one fit or a batch, autograd, torch.func);
* ``numpy``: the float64 least-squares kernels (None where numpy lacks it: the compiler
  then falls back to torch);
* ``sympy``: exact derivatives and structure (``sympy_class`` names the sympy class that
  converts back to this entry, None where sympy rewrites the function, e.g. sigmoid);
* ``mpmath``: extended-precision residuals (formula/precise.py).

The torch, numpy, sympy and mpmath forms are functions of the library module, so that
importing this table imports none of them. Adding a function to the language means adding
one entry here: the parser's whitelist and arity checks, both compiler backends, the
symbolic module and the precise evaluator all read this table.

>>> FUNCTIONS["minimum"].arity, USER_FUNCTIONS["atan"], canonical_name("atan")
(2, 1, 'arctan')
>>> fold("sqrt", [16.0]), fold("exp", [1e6]), fold("log", [-1.0])
(4.0, inf, nan)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

__all__ = ["Function", "FUNCTIONS", "USER_FUNCTIONS", "canonical_name", "fold", "numpy_supported_function"]


@dataclass(frozen=True)
class Function:
    """One formula function and its form in every backend (see the module docstring)."""

    name: str
    arity: int
    math: Callable[..., float]
    torch: Callable
    numpy: Callable | None
    sympy: Callable
    mpmath: Callable
    sympy_class: str | None = None
    #: other names the user may write (``atan`` for ``arctan``)
    aliases: tuple[str, ...] = ()
    #: only produced by symbolic differentiation (d|u| = sign(u) du, d max = heaviside ...):
    #: users cannot write it
    internal: bool = False
    #: for two-argument functions, how a constant argument turns the call into a one-sided
    #: clamp ("upper": minimum(u, c) = clamp(u, max=c); "lower": maximum(u, c) = clamp(u, min=c))
    clamp: str | None = None
    #: the C expression of the native kernels (formula/c_code.py): a format string over the
    #: arguments, in <tgmath.h> generic functions or the prelude's gf_* helpers (None: no C form)
    c: str | None = None


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v > -700 else 0.0


def _sign(v: float) -> float:
    return float((v > 0) - (v < 0))


def _xlogy(a: float, b: float) -> float:
    return 0.0 if a == 0 else a * math.log(b)


def _numpy_xlogy(np):
    def xlogy(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a == 0, 0.0, a * np.log(b))

    return xlogy


def _unary(name: str, math_form, *, torch=None, numpy=None, sympy=None, mpmath=None, sympy_class: str | None = "",
           aliases: tuple[str, ...] = (), internal: bool = False, c: str | None = None) -> Function:
    """An entry for a one-argument function; each library form defaults to the attribute
    ``name`` of that library (numpy's ``np.exp``, sympy's ``sp.exp`` ...)."""

    def attr(lib_name):
        return lambda lib: getattr(lib, lib_name)

    return Function(name, 1, math_form, torch or attr(name), numpy or attr(name), sympy or attr(name),
                    mpmath or attr(name), sympy_class=name if sympy_class == "" else sympy_class,
                    aliases=aliases, internal=internal, c=c or name + "({0})")


_TABLE = (
    _unary("exp", math.exp),
    _unary("log", math.log),
    _unary("log10", math.log10, sympy=lambda sp: (lambda u: sp.log(u) / sp.log(10)),
           mpmath=lambda mp: (lambda u: mp.log(u, 10)), sympy_class=None),
    _unary("sqrt", math.sqrt, sympy_class=None),  # sympy writes sqrt(u) as u**(1/2)
    _unary("abs", abs, mpmath=lambda mp: abs, sympy=lambda sp: sp.Abs, sympy_class="Abs", c="fabs({0})"),
    _unary("sin", math.sin),
    _unary("cos", math.cos),
    _unary("tan", math.tan),
    _unary("arcsin", math.asin, torch=lambda t: t.asin, sympy=lambda sp: sp.asin, mpmath=lambda mp: mp.asin,
           sympy_class="asin", c="asin({0})"),
    _unary("arccos", math.acos, torch=lambda t: t.acos, sympy=lambda sp: sp.acos, mpmath=lambda mp: mp.acos,
           sympy_class="acos", c="acos({0})"),
    _unary("arctan", math.atan, torch=lambda t: t.atan, sympy=lambda sp: sp.atan, mpmath=lambda mp: mp.atan,
           sympy_class="atan", c="atan({0})", aliases=("atan",)),
    _unary("sinh", math.sinh),
    _unary("cosh", math.cosh),
    _unary("tanh", math.tanh),
    _unary("sigmoid", _sigmoid, numpy=lambda np: (lambda u: 1.0 / (1.0 + np.exp(-u))),
           sympy=lambda sp: (lambda u: 1 / (1 + sp.exp(-u))), mpmath=lambda mp: (lambda u: 1 / (1 + mp.exp(-u))),
           sympy_class=None, c="gf_sigmoid({0})"),
    # numpy has no erf (scipy's would be a heavy import): numpy evaluation falls back to torch
    Function("erf", 1, math.erf, lambda t: t.special.erf, None, lambda sp: sp.erf, lambda mp: mp.erf, "erf",
             c="erf({0})"),
    Function("minimum", 2, min, lambda t: t.minimum, lambda np: np.minimum, lambda sp: sp.Min, lambda mp: min,
             "Min", clamp="upper", c="gf_minimum({0}, {1})"),
    Function("maximum", 2, max, lambda t: t.maximum, lambda np: np.maximum, lambda sp: sp.Max, lambda mp: max,
             "Max", clamp="lower", c="gf_maximum({0}, {1})"),
    # a * log(b), 0 where a is 0: d(x**n)/dn = x**n log(x) at a zero-dose x = 0 is 0, not 0 * -inf
    Function("xlogy", 2, _xlogy, lambda t: t.xlogy, lambda np: _numpy_xlogy(np), lambda sp: (lambda a, b: a * sp.log(b)),
             lambda mp: (lambda a, b: 0 if a == 0 else a * mp.log(b)), "XLogY", internal=True,
             c="gf_xlogy({0}, {1})"),
    _unary("sign", _sign, internal=True, c="gf_sign({0})"),
    _unary("heaviside", lambda v: 0.5 * (_sign(v) + 1.0), torch=lambda t: (lambda u: (t.sign(u) + 1.0) * 0.5),
           numpy=lambda np: (lambda u: (np.sign(u) + 1.0) * 0.5),
           sympy=lambda sp: (lambda u: sp.Heaviside(u, sp.Rational(1, 2))),
           mpmath=lambda mp: (lambda u: (mp.sign(u) + 1) / 2), sympy_class="Heaviside", internal=True, c="gf_heaviside({0})"),
)

#: tree name -> entry, for every function (internal ones included)
FUNCTIONS: dict[str, Function] = {f.name: f for f in _TABLE}
#: what users may write (aliases included) -> number of arguments: the parser's whitelist
USER_FUNCTIONS: dict[str, int] = {name: f.arity for f in _TABLE if not f.internal for name in (f.name, *f.aliases)}
_CANONICAL = {alias: f.name for f in _TABLE for alias in f.aliases}
#: sympy class name -> tree name, for converting derivatives back to trees
FROM_SYMPY: dict[str, str] = {f.sympy_class: f.name for f in _TABLE if f.sympy_class}


def canonical_name(name: str) -> str:
    """The tree name for what the user wrote (``atan`` -> ``arctan``)."""
    return _CANONICAL.get(name, name)


def fold(name: str, args: list[float]) -> float:
    """Evaluate ``name(*args)`` in float arithmetic, as constant folding needs it: overflow
    gives inf and a domain error NaN (what torch would compute), never an exception."""
    try:
        return float(FUNCTIONS[name].math(*args))
    except OverflowError:
        return math.inf
    except ValueError:
        return math.nan


def numpy_supported_function(name: str) -> bool:
    """True when ``name`` has a numpy form."""
    return FUNCTIONS[name].numpy is not None
