"""Named parameters with bounds, fixed values and ties, mapped to a free vector for optimizers.

:class:`ParameterSpec` holds what the user said about the parameters (init, bounds, fixed,
ties) and validates it by one set of rules for ``fit`` and ``fit_many`` (where every value may
also be one number per fit, a (B,) array):

* names must be parameters of the model (a typo gets a "did you mean" hint);
* bounds are pairs (min, max) with None for no limit; NaN, min > max and min == max are
  refused (to hold a parameter, fix it);
* starting values must be finite numbers;
* **the one rule for starting values outside their bounds**: a value the user gave must lie
  within its bounds (ends included), or a ConfigError names it; a value the model guessed is
  moved strictly inside (:func:`feasible_start`), as scipy does.

Optimizers see only the free parameters, in *internal* coordinates that have no bounds:

* two-sided bounds: ``p = lo + (hi - lo) * (sin(u) + 1) / 2``
* lower bound only: ``p = lo - 1 + sqrt(u^2 + 1)``; upper only: ``p = hi + 1 - sqrt(u^2 + 1)``

(the MINUIT/lmfit transforms: smooth, so torch.optim works unchanged). Their slope vanishes on
the bounds, so a start on (or within ~1e-3 of the transform's scale of) a bound is moved just
inside, to where the slope is :data:`MIN_SLOPE` of its value far from the bounds. Least squares
does not use the transforms: Levenberg-Marquardt takes projected steps in the box itself
(:func:`gradfit.optim.lm.step`).
Fixed parameters are constants; a tied parameter is an expression of others (``c = 2*a``),
evaluated after the free ones in dependency order. :meth:`ParameterSpace.full` is a torch
function of the free vector, so autograd and ``torch.func.jacfwd`` see the whole chain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError, FormulaError
from .internal import MIN_SLOPE, from_internal, from_internal_float, to_internal  # noqa: F401 (MIN_SLOPE: re-export)

__all__ = ["ParameterSpace", "ParameterSpec", "any_finite_bound", "columns", "feasible_start"]


def feasible_start(values: Mapping, bounds: Mapping | None) -> dict:
    """Move guessed starting values strictly inside their bounds, as scipy does: to the
    midpoint of two-sided bounds, or one unit inside a one-sided bound. Values and bounds
    are numbers or (B,) arrays (one per fit), elementwise."""
    out = dict(values)
    for n, pair in (bounds or {}).items():
        if n not in out:
            continue
        lo, hi = _pair(n, pair, per_fit=True)
        if np.ndim(out[n]) == 0 and np.ndim(lo) == 0 and np.ndim(hi) == 0:
            out[n] = _inside(float(out[n]), lo, hi)
            continue
        v, lo, hi = np.broadcast_arrays(np.asarray(out[n], dtype=float), lo, hi)
        moved = np.where(np.isfinite(lo) & np.isfinite(hi), 0.5 * (lo + hi), np.where(np.isfinite(lo), lo + 1.0,
                                                                                      hi - 1.0))
        out[n] = np.where((lo < v) & (v < hi), v, moved)
    return out


def _inside(v: float, lo: float, hi: float) -> float:
    if lo < v < hi:
        return v
    if math.isfinite(lo) and math.isfinite(hi):
        return 0.5 * (lo + hi)
    return lo + 1.0 if math.isfinite(lo) else hi - 1.0


def check_names(what: str, given, names: Sequence[str]) -> None:
    """ConfigError for the first name in ``given`` that is not a parameter (with a hint)."""
    for name in given:
        if name not in names:
            from ..errors import did_you_mean

            raise ConfigError(f"{what} names unknown parameter {name!r}{did_you_mean(name, names)}; "
                              f"parameters are {', '.join(names)}")


@dataclass(frozen=True)
class ParameterSpec:
    """What the user said about the parameters, validated (see the module docstring).

    ``init`` holds the starting values given (not guesses), ``lower``/``upper`` every
    parameter's bounds (-inf/inf for none); values are floats, or (B,) float arrays when the
    spec was built with ``n_fits`` (fit_many). Raises ConfigError (unknown names, bad bounds,
    non-finite or out-of-bounds init, every parameter fixed) or DataError (per-fit arrays of
    the wrong length).

    >>> spec = ParameterSpec.create(("a", "b"), init={"a": 2.0}, bounds={"b": (0, None)}, fixed=["a"])
    >>> spec.start({"a": 1.0, "b": -3.0}), spec.free
    ({'a': 2.0, 'b': 1.0}, ('b',))
    """

    names: tuple[str, ...]
    init: Mapping
    lower: Mapping
    upper: Mapping
    fixed: tuple[str, ...] = ()
    tie: Mapping = field(default_factory=dict)
    n_fits: int | None = None
    #: the ties, parsed and ordered so that each comes after those it uses
    compiled_ties: tuple = ()

    @classmethod
    def create(cls, names: Sequence[str], *, init: Mapping | None = None, bounds: Mapping | None = None,
               fixed: Sequence[str] | str | None = (), tie: Mapping | None = None,
               n_fits: int | None = None) -> "ParameterSpec":
        names = tuple(names)
        per_fit = n_fits is not None
        if isinstance(fixed, Mapping):  # {"k": 0.8}: held at that value (it wins over init, as `--fix k=0.8`)
            init = {**(init or {}), **fixed}
        fixed = [fixed] if isinstance(fixed, str) else list(fixed or ())
        # fixed first: a fixed value is also an init value (`--fix c=1`), and the option the user
        # wrote is the one to name
        check_names("fixed", fixed, names)
        check_names("init", init or {}, names)
        check_names("bounds", bounds or {}, names)
        check_names("tie", tie or {}, names)
        lower = {n: -math.inf for n in names}
        upper = {n: math.inf for n in names}
        for name, pair in (bounds or {}).items():
            lower[name], upper[name] = _pair(name, pair, per_fit=per_fit, n_fits=n_fits)
        values = {name: _init_value(name, v, n_fits) for name, v in (init or {}).items()}
        tied = set(tie or ())
        for name in tied & set(fixed):
            raise ConfigError(f"parameter {name!r} is both fixed and tied; choose one")
        # ties before the count of free parameters: a cycle is the error to report
        compiled = _compile_ties(tie, names) if tie else ()
        fixed_set = set(fixed)
        spec = cls(names, values, lower, upper, tuple(n for n in names if n in fixed_set), dict(tie or {}), n_fits,
                   compiled)
        if not spec.free:
            raise ConfigError("every parameter is fixed or tied; nothing left to fit")
        spec.check_within_bounds(values)
        return spec

    @cached_property
    def free(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if n not in self.fixed and n not in self.tie)

    def bounds(self) -> dict:
        """name -> (min, max) for the parameters with a finite bound."""
        if self.n_fits is None:  # floats: math is several times cheaper than numpy on scalars
            return {n: (self.lower[n], self.upper[n]) for n in self.names
                    if math.isfinite(self.lower[n]) or math.isfinite(self.upper[n])}
        return {n: (self.lower[n], self.upper[n]) for n in self.names
                if _any_finite(self.lower[n]) or _any_finite(self.upper[n])}

    def check_within_bounds(self, values: Mapping) -> None:
        """ConfigError for the first free value outside its bounds (ends included)."""
        for n in self.free:
            if n not in values:
                continue
            v, lo, hi = values[n], self.lower[n], self.upper[n]
            if (self.n_fits is None or type(v) is type(lo) is type(hi) is float) and lo <= v <= hi:
                continue
            inside = (lo <= v) & (v <= hi)
            if np.all(inside):
                continue
            where = ""
            if np.ndim(inside):
                b = int(np.nonzero(~np.broadcast_to(inside, np.shape(inside)))[0][0])
                v, lo, hi = (float(np.broadcast_to(a, np.shape(inside))[b]) for a in (v, lo, hi))
                where = f" (fit {b})"
            raise ConfigError(f"initial value {n}={float(v):g}{where} is outside its bounds [{float(lo):g}, "
                              f"{float(hi):g}]; change the init or the bounds")

    def start(self, guess: Mapping) -> dict:
        """Starting values: the given init, and for the other parameters the ``guess`` moved
        inside the bounds. ConfigError if a parameter has neither."""
        missing = [n for n in self.names if n not in self.init and n not in guess]
        if missing:
            raise ConfigError(f"init is missing {', '.join(missing)} (parameters: {', '.join(self.names)})")
        guessed = feasible_start({n: guess[n] for n in self.names if n not in self.init}, self.bounds())
        return {n: self.init[n] if n in self.init else guessed[n] for n in self.names}

    def bound_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each (B, P) for a per-fit spec or (P,) otherwise. Bounds that are one
        number per parameter come as a read-only broadcast of one row (a million fits' two
        (B, P) arrays of infinities cost ~70 ms of fresh memory, written once and only read)."""
        return tuple(columns(side, self.names, self.n_fits, shared=True) for side in (self.lower, self.upper))


def columns(values: Mapping, names: Sequence[str], n_fits: int | None, *, shared: bool = False) -> np.ndarray:
    """``values[name]`` (numbers or (B,) arrays) as the columns of a (B, P) float array, or (P,)
    when ``n_fits`` is None (column by column: np.broadcast_to costs ~5 us a call). ``shared``:
    when every value is a number, the (B, P) array is a read-only broadcast of one row (B > 1:
    a copy for torch or C is then made by np.ascontiguousarray, as the view is not contiguous)."""
    if shared and n_fits is not None and n_fits > 1 and all(np.ndim(values[name]) == 0 for name in names):
        return np.broadcast_to(columns(values, names, None), (n_fits, len(names)))
    out = np.empty((len(names),) if n_fits is None else (n_fits, len(names)))
    for j, name in enumerate(names):
        out[..., j] = values[name]
    return out


def any_finite_bound(lower: np.ndarray, upper: np.ndarray, free) -> bool:
    """Whether any fit of a batch has a finite bound on a free parameter: ``lower``/``upper`` (B, P)
    (a broadcast row included), ``free`` (P,) 1/0 or bool. Two reductions over the fits: no (B, P)
    temporaries (the bounds of a million fits are 64 MB)."""
    cols = np.asarray(free, dtype=bool)
    if not len(lower) or not cols.any():
        return False
    return bool(np.isfinite(lower.max(axis=0)[cols]).any() or np.isfinite(upper.min(axis=0)[cols]).any())


def _any_finite(value) -> bool:
    """Whether a bound (a number or a (B,) array) is finite anywhere."""
    return math.isfinite(value) if type(value) is float else bool(np.isfinite(value).any())


def _init_value(name: str, value, n_fits: int | None):
    if type(value) is float and math.isfinite(value):  # the common case, without numpy
        return value
    if n_fits is None or np.ndim(value) == 0:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise ConfigError(f"init value for {name!r} must be a finite number, got {value!r}")
        return float(value)
    arr = np.asarray(value, dtype=float)
    if arr.shape != (n_fits,):
        raise DataError(f"init for {name!r} must be a number or have one value per fit ({n_fits}), "
                        f"got shape {arr.shape}")
    if not np.isfinite(arr).all():
        b = int(np.nonzero(~np.isfinite(arr))[0][0])
        raise ConfigError(f"init value for {name!r} must be a finite number, got {arr[b]!r} (fit {b})")
    return arr


@dataclass(frozen=True)
class _Tie:
    name: str
    text: str
    compiled: object


class ParameterSpace:
    """The parameters of one fit. ``values`` are starting values for every parameter."""

    def __init__(self, names: Sequence[str], values: Mapping[str, float], *, bounds: Mapping | None = None,
                 fixed: Sequence[str] = (), tie: Mapping[str, str] | None = None):
        self._setup(ParameterSpec.create(names, bounds=bounds, fixed=fixed, tie=tie), values)

    @classmethod
    def from_spec(cls, spec: ParameterSpec, values: Mapping[str, float]) -> "ParameterSpace":
        """The space of an already validated one-fit :class:`ParameterSpec` (no second validation)."""
        space = cls.__new__(cls)
        space._setup(spec, values)
        return space

    def _setup(self, spec: ParameterSpec, values: Mapping[str, float]) -> None:
        self.ties = spec.compiled_ties
        self.names = spec.names
        self.lower, self.upper = dict(spec.lower), dict(spec.upper)
        self.fixed = spec.fixed
        self.values = {n: float(values[n]) for n in self.names}
        self.free = spec.free
        spec.check_within_bounds(self.values)
        #: some free parameter has a finite bound (optimizers then work in internal coordinates)
        self.has_bounds = any(math.isfinite(self.lower[n]) or math.isfinite(self.upper[n]) for n in self.free)

    # -- properties -----------------------------------------------------------------------

    @property
    def is_plain(self) -> bool:
        """No bounds, fixed or tied parameters: internal coordinates are the parameters."""
        return not self.has_bounds and not self.fixed and not self.ties

    def at_bound(self, values: Mapping[str, float], rtol: float = 1e-7) -> list[str]:
        out = []
        for n in self.free:
            for b in (self.lower[n], self.upper[n]):
                if math.isfinite(b) and abs(values[n] - b) <= rtol * max(1.0, abs(b)):
                    out.append(n)
        return out

    def bound_mask(self, u, rtol: float = 1e-6) -> list[bool]:
        """Per free parameter: True where its value (from internal ``u``, a sequence of floats)
        rests on one of its bounds, within ``rtol`` of the bounds' span or scale."""
        mask = []
        for n, ui in zip(self.free, [float(v) for v in u]):
            lo, hi = self.lower[n], self.upper[n]
            v = from_internal_float(ui, lo, hi)
            span = (hi - lo) if math.isfinite(lo) and math.isfinite(hi) else max(1.0, abs(v))
            mask.append(any(math.isfinite(b) and abs(v - b) <= rtol * span for b in (lo, hi)))
        return mask

    # -- float (numpy) coordinates, for the least-squares kernels -----------------------------
    def internal_start_values(self) -> list[float]:
        return [to_internal(self.values[n], self.lower[n], self.upper[n]) for n in self.free]

    def values_from_internal(self, u) -> dict:
        """Every parameter as a float from internal free coordinates (no ties: see
        :meth:`full` for those)."""
        out = dict(self.values)
        values = u.tolist() if hasattr(u, "tolist") else [float(v) for v in u]
        if not self.has_bounds:
            out.update(zip(self.free, values))
            return out
        for n, ui in zip(self.free, values):
            out[n] = from_internal_float(ui, self.lower[n], self.upper[n])
        return out

    def internal_derivative_values(self, u) -> list[float]:
        """d p_free / d u as floats."""
        out = []
        for n, ui in zip(self.free, [float(v) for v in u]):
            lo, hi = self.lower[n], self.upper[n]
            if math.isfinite(lo) and math.isfinite(hi):
                out.append((hi - lo) / 2.0 * math.cos(ui))
            elif math.isfinite(lo):
                out.append(ui / math.sqrt(ui * ui + 1.0))
            elif math.isfinite(hi):
                out.append(-ui / math.sqrt(ui * ui + 1.0))
            else:
                out.append(1.0)
        return out

    # -- coordinates ----------------------------------------------------------------------
    def internal_start(self, dtype, device):
        """Free parameters' starting values in internal (unbounded) coordinates."""
        import torch

        return torch.tensor(self.internal_start_values(), dtype=dtype, device=device)

    def full(self, u, *, internal: bool = True):
        """Every parameter as a (P,) tensor, differentiable in ``u``: the free parameters in
        internal coordinates (or, with ``internal=False``, their values themselves)."""
        import torch

        values: dict = {}
        parts = u.unbind(-1) if u.dim() else (u,)
        for name, ui in zip(self.free, parts):
            values[name] = from_internal(ui, self.lower[name], self.upper[name]) if internal else ui
        ref = u
        for name in self.fixed:
            values[name] = torch.full(u.shape[:-1], self.values[name], dtype=ref.dtype, device=ref.device)
        for t in self.ties:
            v = t.compiled(values)
            values[t.name] = v if isinstance(v, torch.Tensor) else torch.full(u.shape[:-1], float(v), dtype=ref.dtype,
                                                                             device=ref.device)
        return torch.stack([values[n] for n in self.names], dim=-1)

    def as_dict(self, u, *, internal: bool = True) -> dict:
        return dict(zip(self.names, self.full(u, internal=internal).unbind(-1)))

    def describe(self) -> dict:
        """Bounds, fixed and tied parameters as JSON-able settings ({} for a plain space)."""
        out: dict = {}
        bounds = {n: [self.lower[n], self.upper[n]] for n in self.names
                  if math.isfinite(self.lower[n]) or math.isfinite(self.upper[n])}
        if bounds:
            out["bounds"] = bounds
        if self.fixed:
            out["fixed"] = list(self.fixed)
        if self.ties:
            out["tie"] = {t.name: t.text for t in self.ties}
        return out


def _pair(name: str, pair, *, per_fit: bool = False, n_fits: int | None = None):
    """(min, max) as floats, or with ``per_fit`` each a float or a (B,) array; None is no limit."""
    if isinstance(pair, (str, bytes)):
        pair = None
    try:
        lo, hi = pair
    except (TypeError, ValueError):
        raise ConfigError(f"bounds for {name!r} must be a pair (min, max); use None for no limit") from None
    lo = _bound_value(name, lo, -math.inf, per_fit, n_fits)
    hi = _bound_value(name, hi, math.inf, per_fit, n_fits)
    if type(lo) is float and type(hi) is float and lo < hi:
        return lo, hi  # the common case (NaN fails "<"), without numpy
    if np.any(np.isnan(lo)) or np.any(np.isnan(hi)):
        raise ConfigError(f"bounds for {name!r} must not be NaN")
    if np.any(lo > hi):
        b = _first(lo > hi)
        raise ConfigError(f"bounds for {name!r}: min {_at(lo, b):g} is greater than max {_at(hi, b):g}{_fit(b)}")
    if np.any(lo == hi):
        b = _first(lo == hi)
        raise ConfigError(f"bounds for {name!r}: min equals max ({_at(lo, b):g}){_fit(b)}; fix the parameter instead")
    return lo, hi


def _bound_value(name: str, v, default: float, per_fit: bool, n_fits: int | None):
    if v is None:
        return default
    if per_fit and np.ndim(v):
        arr = np.asarray(v, dtype=float)
        if n_fits is not None and arr.shape != (n_fits,):
            raise DataError(f"bounds for {name!r} must be numbers or have one value per fit ({n_fits}), "
                            f"got shape {arr.shape}")
        return arr
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"bounds for {name!r} must be numbers or None, got {v!r}") from None


def _first(mask) -> int | None:
    return int(np.nonzero(np.atleast_1d(mask))[0][0]) if np.ndim(mask) else None


def _at(v, b: int | None) -> float:
    return float(v) if np.ndim(v) == 0 or b is None else float(v[b])


def _fit(b: int | None) -> str:
    return "" if b is None else f" (fit {b})"


def _compile_ties(tie: Mapping[str, str], names: tuple[str, ...]) -> tuple[_Tie, ...]:
    from ..formula.compile import compile_tree
    from ..formula.parse import parse_expression

    check_names("tie", tie, names)
    parsed = {}
    for name, text in tie.items():
        try:
            node = parse_expression(str(text), what=f"tie for {name}")
        except FormulaError as exc:
            raise ConfigError(f"tie {name}={text!r}: {exc}") from None
        deps = node.names()
        check_names(f"tie {name}={text!r}", sorted(deps), names)
        if name in deps:
            raise ConfigError(f"tie {name}={text!r} refers to itself")
        parsed[name] = (str(text), node, tuple(sorted(deps)))
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n, path):
        if state.get(n) == 2 or n not in parsed:
            return
        if state.get(n) == 1:
            raise ConfigError(f"ties form a cycle: {' -> '.join(path + [n])}")
        state[n] = 1
        for d in parsed[n][2]:
            visit(d, path + [n])
        state[n] = 2
        order.append(n)

    for n in parsed:
        visit(n, [])
    return tuple(_Tie(n, parsed[n][0], compile_tree(parsed[n][1])) for n in order)


def refuse_inputs_as_parameters(model, init, bounds, fixed, tie) -> None:
    """ConfigError when init/bounds/fixed/tie name one of the model's inputs: a name that is a
    data column (or a key of x={...}) is an input, so the user's parameter settings for it
    would otherwise be refused as "unknown" without saying why."""
    from ..formula.parse import parse_expression

    inputs = set(getattr(model, "input_names", ()))
    if not inputs:
        return
    named = [("fixed", n) for n in ([fixed] if isinstance(fixed, str) else fixed or ())]
    named += [("init", n) for n in (init if isinstance(init, Mapping) else {})] + [("bounds", n) for n in (bounds or {})]
    named += [("tie", n) for n in (tie or {})]
    for target, text in (tie or {}).items():
        try:
            named += [(f"tie {target}={text!r}", n) for n in sorted(parse_expression(str(text)).names())]
        except FormulaError:  # a malformed tie is ParameterSpec's to report
            pass
    for what, name in named:
        if name in inputs:
            raise ConfigError(
                f"{what} names {name!r}, but {name!r} is an input of the model, not a parameter: a name that is a data "
                f"column (or a key of x={{...}}) is an input (inputs: {', '.join(model.input_names)}; parameters: "
                f"{', '.join(model.param_names) or 'none'}); to fit {name!r} as a parameter, drop or rename the "
                f"column {name!r}")
