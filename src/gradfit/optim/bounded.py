"""Bounds for ``normalize=True``: transforms scaled to each parameter's own units.

First-order training keeps bounded parameters inside their box by optimizing unbounded
coordinates through smooth transforms (MINUIT style, see
:mod:`gradfit.models.parameters`). Those transforms have a fixed scale: 1 for a one-sided
bound, the box's width for a two-sided one. Two things then break the preconditioner of
``normalize=True`` (:mod:`gradfit.optim.precondition`), which whitens the coordinates with
the Jacobian at the start:

* the transform's slope at the start is whitened away. A start on (or near) a bound sits where
  the slope is 5% of its value far from the bound, so the whitening multiplies that
  direction by ~20; once the parameter leaves the bound the slope is ~1 and every step is ~20
  times too large (SGD oscillates or diverges), or, in the opposite case, far too small;
* the transform's flat region is in absolute units. For a slope of 2e-6 (x up to 1e6) with
  bounds (0, 1) the whole useful range lies inside the flat region of a box of width 1, where
  the slope is ~1e-3 of its reference, and a start on the bound is moved to 6e-4, far beyond
  the optimum.

Here the coordinates ``v`` are in the parameters' own units (slope 1 far from the bounds) and
each transform's flat region has the parameter's natural scale ``s`` (the change that moves
the predictions by about the spread of y):

* lower bound: ``p = lo - s + sqrt(v^2 + s^2)``; upper: ``p = hi + s - sqrt(v^2 + s^2)``;
* two-sided, width ``w``: ``p = lo + w (phi - c) / (pi - 2c)`` with
  ``phi = arccos((1 - eps) cos(pi v / w))``, ``c = arccos(1 - eps)`` and
  ``eps = min(1/2, (pi s / w)^2 / 2)``: a smoothed triangle wave, flat over ~s at each bound
  (it tends to the sine transform as eps grows; eps is capped at 1/2).

The whitening is computed from the Jacobian with respect to the parameters themselves, at
their starting values, and mapped through the transforms' slope far from the bounds (a unit
reference), so it does not depend on how close to a bound the start is.

The transforms fold at the bounds (``p(-v) = p(v)``), so a parameter whose optimum lies on a
bound approaches it quickly (``p - lo`` shrinks like ``v^2``). But past a fold the parameter's
column of the Jacobian changes sign, and a whitening that mixes parameters (an intercept and a
slope of a correlated input) becomes a wrong one there: SGD slows down or settles into a
two-step cycle. So the training loop moves the coordinates back to the increasing branch once
per epoch (:meth:`ScaledBounds.canonical`,
:meth:`gradfit.train.objective.ScalarObjective.unfold`), which changes no parameter.
"""

from __future__ import annotations

import math

from ..models.internal import MIN_SLOPE, U_MIN
from .precondition import whiten

__all__ = ["ScaledBounds", "bounded_whitening"]

_FREE, _LOWER, _UPPER, _BOX = 0, 1, 2, 3
_EPS_MAX = 0.5
_EPS_MIN = 1e-200
#: a parameter's flat region, in units of its natural scale (the change that moves the
#: predictions by the spread of y)
FLAT_SCALE = 1.0


class ScaledBounds:
    """Bound transforms of the free parameters of a
    :class:`~gradfit.models.parameters.ParameterSpace`, with one scale per free parameter
    (see the module notes).

    Parameters
    ----------
    space : the ParameterSpace (its bounds and starting values are used).
    scale : sequence of F positive floats, the natural scale of each free parameter in its
        own units.

    >>> from gradfit.models.parameters import ParameterSpace
    >>> import torch
    >>> space = ParameterSpace(["a", "b"], {"a": 0.0, "b": 3.0}, bounds={"a": (0, 1)})
    >>> sb = ScaledBounds(space, [1e-6, 1.0])
    >>> v0 = sb.start()                       # a moved 1.25e-9 inside its bound, b unchanged
    >>> [float(f"{p:.3g}") for p in sb.to_params(torch.tensor(v0, dtype=torch.float64)).tolist()]
    [1.25e-09, 3.0]
    """

    def __init__(self, space, scale):
        self.space = space
        self.kind, self.lo, self.hi, self.s, self.eps, self.c, self.ref = [], [], [], [], [], [], []
        for name, s in zip(space.free, scale):
            lo, hi = float(space.lower[name]), float(space.upper[name])
            s = float(s) if math.isfinite(s) and s > 0 else 1.0
            kind = (_BOX if math.isfinite(hi) else _LOWER) if math.isfinite(lo) else (_UPPER if math.isfinite(hi)
                                                                                     else _FREE)
            eps = c = 0.0
            ref = 1.0
            if kind == _BOX:
                w = hi - lo
                eps = min(_EPS_MAX, max(_EPS_MIN, 0.5 * (math.pi * s / w) ** 2))
                c = 2.0 * math.atan2(math.sqrt(eps), math.sqrt(2.0 - eps))
                ref = math.pi * (1.0 - eps) / (math.pi - 2.0 * c)  # dp/dv mid-box
            for lst, val in zip((self.kind, self.lo, self.hi, self.s, self.eps, self.c, self.ref),
                                (kind, lo, hi, s, eps, c, ref)):
                lst.append(val)

    @property
    def reference_slope(self) -> list[float]:
        """dp/dv far from the bounds (mid-box for two-sided bounds), per free parameter."""
        return list(self.ref)

    def start(self) -> list[float]:
        """The free parameters' starting values in ``v`` coordinates; a start on or very near a
        bound is moved inside to where the slope is ``MIN_SLOPE`` of its reference."""
        out = []
        for i, name in enumerate(self.space.free):
            p, lo, hi, s, kind = self.space.values[name], self.lo[i], self.hi[i], self.s[i], self.kind[i]
            if kind == _FREE:
                out.append(p)
            elif kind in (_LOWER, _UPPER):
                d = max(p - lo if kind == _LOWER else hi - p, 0.0)
                v = max(s * U_MIN, math.sqrt(d * (d + 2.0 * s)))
                out.append(v if kind == _LOWER else -v)
            else:
                out.append(self._box_start(p, i))
        return out

    def _box_start(self, p: float, i: int) -> float:
        lo, hi, eps, c = self.lo[i], self.hi[i], self.eps[i], self.c[i]
        w = hi - lo
        q = min(max((p - lo) / w, 0.0), 1.0)
        mirror = q > 0.5
        q = 1.0 - q if mirror else q
        phi = c + q * (math.pi - 2.0 * c)
        half = (2.0 * math.sin(phi / 2.0) ** 2 - eps) / (2.0 * (1.0 - eps))  # sin^2(t/2)
        t = 2.0 * math.asin(math.sqrt(min(max(half, 0.0), 1.0)))
        # where the slope is MIN_SLOPE of mid-box: sin t / sqrt(1 - (1-eps)^2 cos^2 t) = MIN_SLOPE
        k = (1.0 - eps) ** 2
        t_min = math.asin(min(1.0, MIN_SLOPE * math.sqrt((1.0 - k) / (1.0 - MIN_SLOPE**2 * k))))
        v = max(t, t_min) * w / math.pi
        return w - v if mirror else v

    def canonical(self, v):
        """``v`` (F,) moved to the transforms' principal branch, where dp/dv > 0, without
        changing the parameters: the transforms fold at each bound (``p(-v) = p(v)`` for a
        one-sided bound; period ``2w`` for a box), and past a fold the parameter's column of
        the Jacobian changes sign, which would turn the whitening into a wrong one."""
        import torch

        out = []
        for i, vi in enumerate(v.unbind(-1)):
            kind = self.kind[i]
            if kind == _LOWER:
                vi = vi.abs()
            elif kind == _UPPER:
                vi = -vi.abs()
            elif kind == _BOX:
                w = self.hi[i] - self.lo[i]
                vi = torch.remainder(vi, 2.0 * w)
                vi = torch.where(vi > w, 2.0 * w - vi, vi)
            out.append(vi)
        return torch.stack(out)

    def to_params(self, v):
        """Free parameter values (F,) from ``v`` (F,), differentiable (torch)."""
        import torch

        parts = []
        for i, vi in enumerate(v.unbind(-1)):
            kind = self.kind[i]
            if kind == _FREE:
                parts.append(vi)
                continue
            lo, hi, s = self.lo[i], self.hi[i], self.s[i]
            if kind in (_LOWER, _UPPER):
                # sqrt(v^2+s^2) - s, without cancellation near the bound
                d = vi * vi / (torch.sqrt(vi * vi + s * s) + s)
                parts.append(lo + d if kind == _LOWER else hi - d)
                continue
            eps, c, w = self.eps[i], self.c[i], hi - lo
            half_t = vi * (math.pi / (2.0 * w))
            a = eps + 2.0 * (1.0 - eps) * torch.sin(half_t) ** 2
            b = eps + 2.0 * (1.0 - eps) * torch.cos(half_t) ** 2
            phi = 2.0 * torch.atan2(torch.sqrt(a), torch.sqrt(b))  # arccos((1-eps) cos t), stable at both ends
            parts.append(lo + w * (phi - c) / (math.pi - 2.0 * c))
        return torch.stack(parts)


def bounded_whitening(model, inputs: dict, space, y_scale: float) -> tuple:
    """The preconditioner and scaled bound transforms of ``normalize=True`` for a space with
    bounds.

    Parameters
    ----------
    model : a model with named scalar parameters.
    inputs : name -> float64 tensor (n,), the rows used for the Jacobian.
    space : its :class:`~gradfit.models.parameters.ParameterSpace` (``has_bounds`` True).
    y_scale : the spread of the target (its standard deviation, or another positive scale):
        a parameter's natural scale is the change that moves the predictions by ``y_scale``.

    Returns
    -------
    (:class:`~gradfit.optim.precondition.Whitening`, ScaledBounds): the Whitening's matrix A (F, F) maps whitened steps to steps in
    the ScaledBounds' ``v`` coordinates; it comes from the Jacobian with respect to the free
    parameters themselves (their own units) at their starting values, divided by the
    transforms' reference slopes, so a start near a bound does not distort it.
    """
    import torch

    from ..models.jacobian import free_jacobian

    dev = next(iter(inputs.values())).device
    p0 = torch.tensor([space.values[n] for n in space.free], dtype=torch.float64, device=dev)
    jac = free_jacobian(model, space, inputs, internal=False, backend="torch")(p0).detach().to(torch.float64)
    jac = torch.where(torch.isfinite(jac), jac, torch.zeros_like(jac))
    rms = torch.sqrt((jac * jac).mean(0)).tolist()
    top = max(rms) if rms else 0.0
    y_scale = float(y_scale) if math.isfinite(y_scale) and y_scale > 0 else 1.0
    scale = [FLAT_SCALE * y_scale / (r if r > 0 else top) if (r > 0 or top > 0) else 1.0 for r in rms]
    bounds = ScaledBounds(space, scale)
    ref = torch.tensor(bounds.reference_slope, dtype=torch.float64, device=dev)
    return whiten(jac * ref), bounds
