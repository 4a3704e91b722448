"""Named parameters with bounds, fixed values and ties, mapped to a free vector for optimizers.

Optimizers see only the free parameters, in *internal* coordinates that have no bounds:

* two-sided bounds: ``p = lo + (hi - lo) * (sin(u) + 1) / 2``
* lower bound only: ``p = lo - 1 + sqrt(u^2 + 1)``; upper only: ``p = hi + 1 - sqrt(u^2 + 1)``

(the MINUIT/lmfit transforms: smooth, so Levenberg-Marquardt and torch.optim work unchanged).
Fixed parameters are constants; a tied parameter is an expression of others (``c = 2*a``),
evaluated after the free ones in dependency order. :meth:`ParameterSpace.full` is a torch
function of the free vector, so autograd and ``torch.func.jacfwd`` see the whole chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..errors import ConfigError, FormulaError

__all__ = ["ParameterSpace", "feasible_start"]


def feasible_start(values: Mapping[str, float], bounds: Mapping | None) -> dict:
    """Move default starting values strictly inside their bounds, as scipy does: to the
    midpoint of two-sided bounds, or one unit inside a one-sided bound."""
    out = dict(values)
    for n, pair in (bounds or {}).items():
        if n not in out:
            continue
        lo, hi = _pair(n, pair)
        v = out[n]
        if lo < v < hi:
            continue
        if math.isfinite(lo) and math.isfinite(hi):
            out[n] = 0.5 * (lo + hi)
        elif math.isfinite(lo):
            out[n] = lo + 1.0
        else:
            out[n] = hi - 1.0
    return out


@dataclass(frozen=True)
class _Tie:
    name: str
    text: str
    compiled: object
    depends: tuple[str, ...]


class ParameterSpace:
    """The parameters of one fit. ``values`` are starting values for every parameter."""

    def __init__(self, names: Sequence[str], values: Mapping[str, float], *, bounds: Mapping | None = None,
                 fixed: Sequence[str] = (), tie: Mapping[str, str] | None = None):
        self.names = tuple(names)
        known = set(self.names)

        def check(name, what):
            if name not in known:
                from ..errors import did_you_mean

                raise ConfigError(f"{what} names unknown parameter {name!r}{did_you_mean(name, known)}; "
                                  f"parameters are {', '.join(self.names)}")

        self.lower = {n: -math.inf for n in self.names}
        self.upper = {n: math.inf for n in self.names}
        for name, pair in (bounds or {}).items():
            check(name, "bounds")
            lo, hi = _pair(name, pair)
            self.lower[name], self.upper[name] = lo, hi
        fixed_set = set(fixed)
        self.fixed = tuple(n for n in self.names if n in fixed_set)
        for name in fixed:
            check(name, "fixed")
        self.ties = _compile_ties(tie, known, check) if tie else ()
        tied = {t.name for t in self.ties}
        for name in tied & fixed_set:
            raise ConfigError(f"parameter {name!r} is both fixed and tied; choose one")
        self.values = {n: float(values[n]) for n in self.names}
        self.free = tuple(n for n in self.names if n not in tied and n not in fixed_set)
        for n in self.free:
            v, lo, hi = self.values[n], self.lower[n], self.upper[n]
            if not lo <= v <= hi:
                raise ConfigError(f"initial value {n}={v:g} is outside its bounds [{lo:g}, {hi:g}]; "
                                  "change the init or the bounds")
        if not self.free:
            raise ConfigError("every parameter is fixed or tied; nothing left to fit")
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
            v = _from_internal_float(ui, lo, hi)
            span = (hi - lo) if math.isfinite(lo) and math.isfinite(hi) else max(1.0, abs(v))
            mask.append(any(math.isfinite(b) and abs(v - b) <= rtol * span for b in (lo, hi)))
        return mask

    # -- float (numpy) coordinates, for the least-squares kernels -----------------------------
    def internal_start_values(self) -> list[float]:
        return [_to_internal(self.values[n], self.lower[n], self.upper[n]) for n in self.free]

    def values_from_internal(self, u) -> dict:
        """Every parameter as a float from internal free coordinates (no ties: see
        :meth:`full` for those)."""
        out = dict(self.values)
        values = u.tolist() if hasattr(u, "tolist") else [float(v) for v in u]
        if not self.has_bounds:
            out.update(zip(self.free, values))
            return out
        for n, ui in zip(self.free, values):
            out[n] = _from_internal_float(ui, self.lower[n], self.upper[n])
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
            values[name] = _from_internal(ui, self.lower[name], self.upper[name]) if internal else ui
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


def _pair(name: str, pair) -> tuple[float, float]:
    try:
        lo, hi = pair
    except (TypeError, ValueError):
        raise ConfigError(f"bounds for {name!r} must be a pair (min, max); use None for no limit") from None
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    if math.isnan(lo) or math.isnan(hi):
        raise ConfigError(f"bounds for {name!r} must not be NaN")
    if lo > hi:
        raise ConfigError(f"bounds for {name!r}: min {lo:g} is greater than max {hi:g}")
    if lo == hi:
        raise ConfigError(f"bounds for {name!r}: min equals max ({lo:g}); fix the parameter instead")
    return lo, hi


def _to_internal(v: float, lo: float, hi: float) -> float:
    if math.isfinite(lo) and math.isfinite(hi):
        return math.asin(max(-1.0, min(1.0, 2.0 * (v - lo) / (hi - lo) - 1.0)))
    if math.isfinite(lo):
        return math.sqrt((v - lo + 1.0) ** 2 - 1.0)
    if math.isfinite(hi):
        return math.sqrt((hi - v + 1.0) ** 2 - 1.0)
    return v


def _from_internal(u, lo: float, hi: float, lib=None):
    """Internal coordinate -> parameter value; ``lib`` is math (floats) or torch (tensors)."""
    if lib is None:
        import torch as lib
    if math.isfinite(lo) and math.isfinite(hi):
        return lo + (hi - lo) * (lib.sin(u) + 1.0) / 2.0
    if math.isfinite(lo):
        return lo - 1.0 + lib.sqrt(u * u + 1.0)
    if math.isfinite(hi):
        return hi + 1.0 - lib.sqrt(u * u + 1.0)
    return u


def _from_internal_float(u: float, lo: float, hi: float) -> float:
    return _from_internal(u, lo, hi, math)


def _compile_ties(tie: Mapping[str, str], known: set, check) -> tuple[_Tie, ...]:
    from ..formula.compile import compile_tree
    from ..formula.parse import parse_expression

    parsed = {}
    for name, text in tie.items():
        check(name, "tie")
        try:
            node = parse_expression(str(text), what=f"tie for {name}")
        except FormulaError as exc:
            raise ConfigError(f"tie {name}={text!r}: {exc}") from None
        deps = node.names()
        for d in sorted(deps):
            if d not in known:
                check(d, f"tie {name}={text!r}")
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
    return tuple(_Tie(n, parsed[n][0], compile_tree(parsed[n][1]), parsed[n][2]) for n in order)
