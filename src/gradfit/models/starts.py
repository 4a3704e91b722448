"""Starting points: space-filling designs of starts for multistart, and a data-driven start
for formulas (pure kernels over numpy arrays; fitting/multistart.py runs the fits).

**Multistart designs** (:func:`spread_starts`). Start 0 is always the given start (the
user's init, or the model's guess); the others come from a scrambled Sobol sequence (default)
or a Latin hypercube over the unit cube, mapped per parameter:

* two finite bounds: uniform over [lo, hi], or log-uniform when 0 < lo and hi / lo > 1e3
  (a rate bounded to (1e-6, 10) is spread over its decades, not crowded at the top);
* one finite bound: the distance from the bound to the start, times 10**U(-d, d) (d =
  :data:`SPREAD_DECADES`), on the bound's side;
* no bounds: the start's magnitude times 10**U(-d, d), with the sign flipped for a fraction
  :data:`FLIP_FRACTION` of the points (an unbounded parameter may have either sign); a start
  at 0 spreads symmetrically over magnitudes 10**U(-d - 1, d + 1) (its scale is unknown:
  around 1, five decades wide).

**Data-driven formula starts** (:func:`formula_start`). A formula's parameter without init
or bounds used to start at 1.0 (curve_fit's rule). Instead, the all-ones start and
:data:`FORMULA_CANDIDATES` Sobol candidates (magnitudes 10**U(-3, 3), widened to one decade
beyond the data's largest |y|, either sign; with one input, a third of the coordinates
uniform over its range instead) are scored by chi-square in one vectorized evaluation (on at
most :data:`SCORE_POINTS` evenly spaced points), and the lowest wins; ties keep the all-ones
start. Parameters the formula is linear in are solved for each candidate instead of sampled
(:func:`formula_start`). The design is fixed (seed 0), so a fit is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

__all__ = [
    "DESIGNS",
    "FLIP_FRACTION",
    "FORMULA_CANDIDATES",
    "SCORE_POINTS",
    "SPREAD_DECADES",
    "formula_start",
    "spread_starts",
    "unit_design",
]

#: the space-filling designs of multistart
DESIGNS = ("sobol", "lhs")
#: decades either side of a start for a parameter without two finite bounds
SPREAD_DECADES = 2.0
#: the fraction of multistart points that flip an unbounded parameter's sign
FLIP_FRACTION = 0.25
#: candidates scored (besides all ones) for a formula's data-driven start
FORMULA_CANDIDATES = 512
#: points used to score them (evenly spaced; the scoring is a screen, not the fit)
SCORE_POINTS = 64
#: a log-uniform spread for two bounds wider than this ratio (both positive)
_LOG_RATIO = 1e3
#: keeps design points off the box's faces, where a model may be flat (LM moves them anyway)
_EDGE = 1e-6


def unit_design(n: int, dim: int, *, seed: int = 0, design: str = "sobol") -> np.ndarray:
    """``n`` points of a space-filling design in [0, 1)^dim, (n, dim) float64, reproducible
    from ``seed``: a scrambled Sobol sequence (torch.quasirandom.SobolEngine) or a Latin
    hypercube (one point per 1/n slice of every axis, numpy's default_rng).

    >>> unit_design(4, 2, seed=1).shape
    (4, 2)
    """
    if n <= 0 or dim <= 0:
        return np.zeros((max(n, 0), max(dim, 0)))
    if design == "lhs":
        rng = np.random.default_rng(seed)
        cells = np.stack([rng.permutation(n) for _ in range(dim)], axis=1)
        return (cells + rng.random((n, dim))) / n
    import torch

    engine = torch.quasirandom.SobolEngine(dim, scramble=True, seed=int(seed))
    return engine.draw(n, dtype=torch.float64).numpy()


def spread_starts(center: np.ndarray, lower: np.ndarray, upper: np.ndarray, vary: np.ndarray, n_starts: int, *,
                  seed: int = 0, design: str = "sobol", decades: float = SPREAD_DECADES) -> np.ndarray:
    """(K, B, P) starts for B fits of P parameters: start 0 is ``center`` (B, P), starts
    1..K-1 a ``design`` over each fit's box (``lower``/``upper`` (B, P), -inf/inf for none),
    mapped as the module docstring says. Parameters with ``vary`` False keep their value.
    The same unit points serve every fit (mapped around each fit's own start and bounds)."""
    center = np.asarray(center, dtype=float)
    lower, upper = np.broadcast_to(lower, center.shape), np.broadcast_to(upper, center.shape)
    out = np.broadcast_to(center, (n_starts, *center.shape)).copy()
    if n_starts <= 1:
        return out
    p = center.shape[-1]
    u = unit_design(n_starts - 1, 2 * p, seed=seed, design=design)
    pos = np.clip(u[:, :p], _EDGE, 1.0 - _EDGE)[:, None, :]  # (K-1, 1, P)
    flip = u[:, p:][:, None, :]
    c, lo, hi = center[None], lower[None], upper[None]
    both, only_lo, only_hi = (np.isfinite(lo) & np.isfinite(hi), np.isfinite(lo) & ~np.isfinite(hi),
                              ~np.isfinite(lo) & np.isfinite(hi))
    with np.errstate(all="ignore"):
        linear = lo + pos * (hi - lo)
        logs = np.exp(np.log(lo) + pos * (np.log(hi) - np.log(lo)))
        boxed = np.where((lo > 0) & (hi > _LOG_RATIO * lo), logs, linear)
        factor = 10.0 ** (decades * (2.0 * pos - 1.0))
        gap = np.where(only_lo, c - lo, hi - c)
        gap = np.where(gap > 0, gap, np.maximum(np.abs(c), 1.0))
        one_sided = np.where(only_lo, lo + gap * factor, hi - gap * factor)
        sign = np.where(c != 0, np.sign(c), 1.0) * np.where(flip < FLIP_FRACTION, -1.0, 1.0)
        sign = np.where(c == 0, np.where(flip < 0.5, -1.0, 1.0), sign)
        wide = 10.0 ** ((decades + 1.0) * (2.0 * pos - 1.0))
        free = sign * np.where(c != 0, np.abs(c) * factor, wide)
    spread = np.where(both, boxed, np.where(only_lo | only_hi, one_sided, free))
    mask = np.asarray(vary, dtype=bool)
    out[1:] = np.where(mask, spread, out[1:])
    return out


# -- the data-driven start of a formula ---------------------------------------------------------
def formula_start(model, inputs: Mapping, y: np.ndarray, weights: np.ndarray | None, values: Mapping,
                  vary: Sequence[str]) -> dict:
    """Starting values for a formula: ``values`` with the parameters ``vary`` replaced by the
    best candidate (see the module docstring); ``values`` itself when none beats it or the data
    do not suit the screen (multi-column inputs or outputs).

    Parameters in ``vary`` that the formula is jointly linear in (:func:`linear_parameters`:
    ``a`` and ``c`` in ``a*exp(-k*x) + c``) are not sampled: each candidate of the others gets
    their weighted least-squares values (variable projection), so the screen is a search over
    the nonlinear parameters alone and the amplitudes come out at the data's scale."""
    vary = [n for n in vary if n in values]
    y = np.asarray(y, dtype=float)
    if not vary or y.ndim != 1 or len(y) == 0 or any(np.ndim(v) != 1 for v in inputs.values()):
        return dict(values)
    idx = np.unique(np.linspace(0, len(y) - 1, min(len(y), SCORE_POINTS)).round().astype(int))
    y_s, w_s = y[idx], (None if weights is None else np.asarray(weights, dtype=float)[idx])
    x_s = {k: np.asarray(v, dtype=float)[idx] for k, v in inputs.items()}
    linear = [n for n in linear_parameters(model.parsed.rhs, tuple(model.param_names)) if n in vary]
    nonlinear = [n for n in vary if n not in linear]
    top = float(np.log10(max(float(np.max(np.abs(y_s))), 1e-300)))
    span = None
    if len(x_s) == 1:
        x0 = next(iter(x_s.values()))
        span = (float(np.min(x0)), float(np.max(x0))) if np.isfinite(x0).all() else None
    decades = (min(-3.0, top - 1.0), max(3.0, top + 1.0))
    cand = _formula_candidates(len(nonlinear), decades, span) if nonlinear else np.ones((1, 0))
    params = {n: np.full((len(cand), 1), float(v)) for n, v in values.items()}
    for j, n in enumerate(nonlinear):
        params[n] = cand[:, j:j + 1]
    fitted = {}
    if linear:
        fitted = _project(model, x_s, y_s, w_s, params, linear, len(cand))
        params.update(fitted)
    chi2 = _chi_square(model, x_s, y_s, w_s, params, len(cand))
    best = int(np.argmin(chi2))
    if not np.isfinite(chi2[best]):
        return dict(values)
    out = {**values, **{n: float(cand[best, j]) for j, n in enumerate(nonlinear)}}
    out.update({n: float(v[best, 0]) for n, v in fitted.items() if np.isfinite(v[best, 0])})
    return out


@lru_cache(maxsize=256)
def linear_parameters(rhs, names: tuple) -> tuple:
    """The parameters (in order, chosen greedily) that ``rhs`` is jointly linear in: no
    partial derivative with respect to one of them depends on any of them (from the symbolic
    partials that Levenberg-Marquardt uses anyway)."""
    from ..formula.symbolic import partials_program

    try:
        assignments, outputs = partials_program(rhs, names)
    except Exception:  # noqa: BLE001 - a formula sympy cannot differentiate: no projection
        return ()
    params, temps = set(names), {}
    for name, tree in assignments:
        temps[name] = {n for n in tree.names() if n in params}.union(*(temps[n] for n in tree.names() if n in temps))
    deps = [{n for n in t.names() if n in params}.union(*(temps[n] for n in t.names() if n in temps)) for t in outputs]
    chosen: list = []
    for j, n in enumerate(names):
        if n in deps[j] or deps[j] & set(chosen) or any(n in deps[names.index(c)] for c in chosen):
            continue
        chosen.append(n)
    return tuple(chosen)


def _project(model, inputs, y, w, params: dict, linear: list, k: int) -> dict:
    """Weighted least-squares values (K, 1) of the ``linear`` parameters for each of K rows of
    the others: the columns are f(e_l) - f(0), exact for a formula linear in them."""
    n = len(y)
    zero = {**params, **{name: np.zeros((k, 1)) for name in linear}}
    sw = np.ones_like(y) if w is None else np.sqrt(w)
    with np.errstate(all="ignore"):
        base = _predict(model, inputs, zero, k, n)
        r = (y[None, :] - base) * sw
        cols = [(_predict(model, inputs, {**zero, name: np.ones((k, 1))}, k, n) - base) * sw for name in linear]
        ok = np.isfinite(r).all(axis=1) & np.logical_and.reduce([np.isfinite(c).all(axis=1) for c in cols])
        r = np.where(ok[:, None], r, 0.0)
        cols = [np.where(ok[:, None], c, 0.0) for c in cols]
        # normal equations of unit-norm columns with a tiny ridge: (L, L) systems, one per row
        norms = [np.sqrt((c * c).sum(axis=1)) for c in cols]
        cols = [c / np.where(s > 0, s, 1.0)[:, None] for c, s in zip(cols, norms)]
        size = len(linear)
        gram = np.empty((k, size, size))
        for i in range(size):
            for j in range(i, size):
                gram[:, i, j] = gram[:, j, i] = (cols[i] * cols[j]).sum(axis=1)
        gram += 1e-10 * np.eye(size)
        rhs = np.stack([(c * r).sum(axis=1) for c in cols], axis=1)
        theta = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0] / np.stack([np.where(s > 0, s, 1.0) for s in norms], 1)
    theta[~ok] = np.nan
    return {name: theta[:, j:j + 1] for j, name in enumerate(linear)}


@lru_cache(maxsize=64)
def _unit_candidates(dim: int) -> np.ndarray:
    out = unit_design(FORMULA_CANDIDATES, 3 * dim, seed=0)
    out.setflags(write=False)
    return out


def _formula_candidates(dim: int, decades: tuple, span: tuple | None) -> np.ndarray:
    """(1 + FORMULA_CANDIDATES, dim): all ones, then Sobol points: per coordinate a signed
    log-uniform magnitude over ``decades``, or (a third of them, when the data have one input)
    a value uniform over the input's range ``span`` (where locations such as a peak's centre lie)."""
    u = _unit_candidates(dim)
    mags = 10.0 ** (decades[0] + (decades[1] - decades[0]) * u[:, :dim])
    values = np.where(u[:, dim:2 * dim] < 0.5, -1.0, 1.0) * mags
    if span is not None:
        values = np.where(u[:, 2 * dim:] < 1.0 / 3.0, span[0] + (span[1] - span[0]) * u[:, :dim], values)
    return np.vstack([np.ones((1, dim)), values])


def _chi_square(model, inputs: Mapping, y: np.ndarray, w, params: Mapping, k: int) -> np.ndarray:
    """(K,) weighted chi-square of K parameter rows (inf where the prediction is not finite)."""
    with np.errstate(all="ignore"):
        try:
            pred = _predict(model, inputs, params, k, len(y))
        except (ArithmeticError, ValueError, TypeError, RuntimeError):
            return np.full(k, math.inf)
        r2 = (pred - y[None, :]) ** 2
        chi2 = (r2 if w is None else w[None, :] * r2).sum(axis=1)
    return np.where(np.isfinite(chi2), chi2, math.inf)


def _predict(model, inputs: Mapping, params: Mapping, k: int, n: int) -> np.ndarray:
    """(K, n) predictions: the formula's numpy form with broadcasting, else its torch form."""
    forward = _numpy_forward(model.parsed.rhs)
    if forward is not None:
        out = forward({**params, **inputs})
        return np.broadcast_to(np.asarray(out, dtype=float), (k, n))
    import torch

    env_p = {name: torch.as_tensor(v) for name, v in params.items()}
    out = model.forward({name: torch.as_tensor(v) for name, v in inputs.items()}, env_p)
    return np.broadcast_to(out.detach().numpy().astype(float), (k, n))


@lru_cache(maxsize=256)
def _numpy_forward(rhs):
    from ..formula.compile import compile_tree, numpy_supported

    return compile_tree(rhs, "numpy") if numpy_supported(rhs) else None


def formula_start_space(model, space, arrays, init, bounds):
    """gf.fit's formula start: ``space`` (a ParameterSpace) with its free parameters that have
    neither init nor bounds started by :func:`formula_start` (a copy; ``space`` itself when
    nothing changes)."""
    import copy

    vary = [n for n in space.free if n not in (init or {}) and n not in (bounds or {})]
    if not vary:
        return space
    try:
        values = formula_start(model, arrays.inputs, arrays.y, arrays.weights, space.values, vary)
    except (ArithmeticError, ValueError, TypeError, RuntimeError, np.linalg.LinAlgError):
        return space  # a formula the screen cannot evaluate in bulk keeps the all-ones start
    if values == space.values:
        return space
    out = copy.copy(space)
    out.values = values
    return out
