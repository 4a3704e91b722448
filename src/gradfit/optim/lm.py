"""Levenberg-Marquardt for least squares, on torch tensors.

Minimises ``0.5 * ||r(x)||^2`` for a residual closure ``r``, in the trust-region form of
Moré (1978), the algorithm of MINPACK's lmder: each iteration finds the damping ``lam`` for
which the scaled step ``||D dx||`` fills the trust region ``Delta``, where
``dx = -(J^T J + lam D^2)^(-1) J^T r``; ``Delta`` grows or shrinks with the ratio of actual to
predicted reduction. The damped system is solved through the SVD of ``J D^-1`` (no normal
equations, so no squared condition number), which also makes the search for ``lam`` a scalar
root-finding problem costing O(P) per trial. ``D`` is Moré's scaling, the running maximum of
the Jacobian's column norms, or the identity (``scaling="none"``).

The Jacobian comes from ``torch.func.jacfwd`` or a caller-supplied function (exact either
way: no finite differences).

Stopping is honest: "converged" needs a relative cost reduction below ftol (actual and
predicted), a trust region below xtol, or a scaled gradient below gtol, and the final point
must pass a stationarity test; otherwise the status is "max_iterations" or "stalled". The
caller adds "singular" from the Jacobian's rank at the solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["LMOptions", "LMOutcome", "levenberg_marquardt", "scaled_gradient", "default_tolerances"]


def default_tolerances(dtype) -> tuple[float, float, float]:
    """(ftol, xtol, gtol) for a dtype: a little above its rounding level."""
    import torch

    eps = torch.finfo(dtype).eps
    return (10 * eps, 100 * eps, 10 * eps)


@dataclass(frozen=True)
class LMOptions:
    max_iter: int = 2000
    ftol: float | None = None  # None: default_tolerances(dtype)
    xtol: float | None = None
    gtol: float | None = None
    #: scaled gradient below which a stopping point counts as stationary
    stationary: float = 1e-6
    #: ||r|| below this counts as a zero-residual fit at working precision (then any point
    #: with such residuals is stationary to within rounding)
    residual_floor: float = 0.0
    #: "jacobian": Moré's running maximum of column norms; "none": identity
    scaling: str = "jacobian"
    #: initial trust region = factor * ||D x0|| (MINPACK's default factor)
    factor: float = 100.0


@dataclass
class LMOutcome:
    x: object
    cost: float  # 0.5 * ||r||^2
    status: str  # converged | max_iterations | stalled
    iterations: int
    message: str
    history: list = field(default_factory=list)  # cost after each accepted iteration
    n_residual: int = 0
    n_jacobian: int = 0


def scaled_gradient(jac, r, exempt=None) -> float:
    """max_j |J_j . r| / (||J_j|| ||r||): the cosine between the residual and each Jacobian
    column (MINPACK's gtol measure); 0 at a stationary point, scale-free. Columns flagged in
    ``exempt`` (parameters resting on a bound) are left out."""
    import torch

    rn = torch.linalg.vector_norm(r)
    if rn == 0:
        return 0.0
    cn = torch.linalg.vector_norm(jac, dim=0)
    ok = cn > 0
    if exempt is not None:
        ok = ok & ~exempt
    if not bool(ok.any()):
        return 0.0
    g = (jac.T @ r).abs()
    return float((g[ok] / (cn[ok] * rn)).max())


class _Subproblem:
    """The trust-region subproblem at one point, solved through the SVD of J D^-1."""

    def __init__(self, jac, r, d):
        import torch

        u, s, vt = torch.linalg.svd(jac / d, full_matrices=False)
        self.s, self.vt, self.d = s, vt, d
        self.c = u.T @ r  # r's coordinates in the range of J
        self.rank_cut = s[0] * max(jac.shape) * torch.finfo(s.dtype).eps if s.numel() else 0.0

    def step(self, lam: float):
        """The scaled step z = D dx for damping lam (lam = 0: Gauss-Newton, pseudo-inverse)."""
        import torch

        s = self.s
        if lam == 0.0:
            inv = torch.where(s > self.rank_cut, 1.0 / torch.where(s > 0, s, torch.ones_like(s)),
                              torch.zeros_like(s))
        else:
            inv = s / (s * s + lam)
        return -(self.vt.T @ (inv * self.c))

    def norm(self, lam: float) -> float:
        import torch

        return float(torch.linalg.vector_norm(self.step(lam)))

    def damping_for(self, delta: float, lam_hint: float) -> float:
        """The lam >= 0 with ||step(lam)|| within 10% of delta (0 if the GN step fits)."""
        if self.norm(0.0) <= 1.1 * delta:
            return 0.0
        # ||step(lam)|| decreases monotonically in lam: bracket, then bisect in log space.
        lo, hi = 0.0, max(lam_hint, 1e-12 * float(self.s[0]) ** 2 + 1e-300)
        while self.norm(hi) > delta:
            lo, hi = hi, hi * 10.0
            if hi > 1e300:
                return hi
        for _ in range(100):
            mid = math.sqrt(lo * hi) if lo > 0 else hi / 10.0
            n = self.norm(mid)
            if 0.9 * delta <= n <= 1.1 * delta:
                return mid
            if n > delta:
                lo = mid
            else:
                hi = mid
            if lo > 0 and hi / lo < 1.0 + 1e-12:
                break
        return hi


def levenberg_marquardt(residual: Callable, x0, *, jacobian: Callable | None = None,
                        options: LMOptions = LMOptions(), callback: Callable | None = None,
                        at_bound: Callable | None = None) -> LMOutcome:
    """Minimise ``0.5*||residual(x)||^2`` from ``x0`` (1-D tensor). See the module docstring.

    ``at_bound(x)`` returns a boolean mask of coordinates resting on a bound (in transformed
    coordinates their gradient vanishes only in the limit); the stationarity tests skip them.

    >>> import torch
    >>> t = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    >>> out = levenberg_marquardt(lambda p: p[0] * torch.exp(-p[1] * t) - 2 * torch.exp(-0.5 * t),
    ...                           torch.tensor([1.0, 1.0], dtype=torch.float64))
    >>> out.status, [round(v, 6) for v in out.x.tolist()]
    ('converged', [2.0, 0.5])
    """
    import torch
    from torch.func import jacfwd

    ftol_d, xtol_d, gtol_d = default_tolerances(x0.dtype)
    ftol = options.ftol if options.ftol is not None else ftol_d
    xtol = options.xtol if options.xtol is not None else xtol_d
    gtol = options.gtol if options.gtol is not None else gtol_d
    jac_fn = jacobian or jacfwd(residual)
    tiny = torch.finfo(x0.dtype).tiny

    x = x0.detach().clone()
    with torch.no_grad():
        r = residual(x)
    if not bool(torch.isfinite(r).all()):
        return LMOutcome(x, math.inf, "stalled", 0, "the residuals are not finite at the starting point", [], 1, 0)
    fnorm = float(torch.linalg.vector_norm(r))
    jac = jac_fn(x)
    n_res, n_jac = 1, 1
    if options.scaling == "none":
        d = torch.ones_like(x)
    else:
        d = torch.linalg.vector_norm(jac, dim=0)
        d = torch.where(d > 0, d, torch.ones_like(d))
    xnorm = float(torch.linalg.vector_norm(d * x))
    delta = options.factor * xnorm if xnorm > 0 else options.factor
    lam = 0.0
    history = [0.5 * fnorm**2]
    status, message = "max_iterations", f"stopped after max_iter={options.max_iter} iterations"
    it = 0
    while it < options.max_iter:
        it += 1
        exempt = at_bound(x) if at_bound is not None else None
        if fnorm <= options.residual_floor or scaled_gradient(jac, r, exempt) <= gtol:
            status, message = "converged", ("residuals at working precision" if fnorm <= options.residual_floor
                                            else "scaled gradient below gtol")
            break
        sub = _Subproblem(jac, r, d)
        while True:  # inner loop: shrink the trust region until a step is accepted
            lam = sub.damping_for(delta, lam)
            z = sub.step(lam)
            dx = z / d
            pnorm = float(torch.linalg.vector_norm(z))
            if it == 1:
                delta = min(delta, pnorm)
            x_new = x + dx
            with torch.no_grad():
                r_new = residual(x_new)
            n_res += 1
            fnorm1 = float(torch.linalg.vector_norm(r_new)) if bool(torch.isfinite(r_new).all()) else math.inf
            actred = 1.0 - (fnorm1 / fnorm) ** 2 if 0.1 * fnorm1 < fnorm else -1.0
            jdx = jac @ dx
            t1 = float(torch.linalg.vector_norm(jdx)) / fnorm
            t2 = math.sqrt(lam) * pnorm / fnorm
            prered = t1**2 + 2.0 * t2**2
            dirder = -(t1**2 + t2**2)
            ratio = actred / prered if prered != 0 else 0.0
            if ratio <= 0.25:
                temp = 0.5 if actred >= 0 else 0.5 * dirder / (dirder + 0.5 * actred)
                if 0.1 * fnorm1 >= fnorm or temp < 0.1:
                    temp = 0.1
                delta = temp * min(delta, pnorm / 0.1)
                lam = lam / temp
            elif lam == 0.0 or ratio >= 0.75:
                delta = pnorm / 0.5
                lam = 0.5 * lam
            accepted = ratio >= 1e-4
            if accepted:
                x, r, fnorm = x_new, r_new, fnorm1
                jac = jac_fn(x)
                n_jac += 1
                if options.scaling != "none":
                    d = torch.maximum(d, torch.linalg.vector_norm(jac, dim=0))
                xnorm = float(torch.linalg.vector_norm(d * x))
                history.append(0.5 * fnorm**2)
                if callback is not None and callback(it, history[-1]):
                    status, message = "stopped", f"stopped by a callback at iteration {it}"
                    break
            if abs(actred) <= ftol and prered <= ftol and 0.5 * ratio <= 1.0:
                status, message = "converged", "relative cost reduction below ftol"
            elif delta <= xtol * xnorm:
                status, message = "converged", "relative step below xtol"
            elif delta <= 1e-300 or (lam > 0 and not math.isfinite(lam)):
                status, message = "converged", "no further reduction possible at working precision"
            if status == "converged" or accepted:
                break
        if status in ("converged", "stopped"):
            break
    if status == "converged" and fnorm > options.residual_floor:
        measure = scaled_gradient(jac, r, at_bound(x) if at_bound is not None else None)
        if measure > options.stationary:
            status = "stalled"
            message = (f"stopped at a point that is not stationary (scaled gradient {measure:.2e} > "
                       f"{options.stationary:.0e}); try another starting point")
    return LMOutcome(x, 0.5 * fnorm**2, status, it, message, history, n_res, n_jac)


#: (scaling, factor) tried in turn by :func:`robust_levenberg_marquardt`
STRATEGIES = (("jacobian", 100.0), ("none", 100.0), ("jacobian", 1.0), ("none", 1.0))


def robust_levenberg_marquardt(residual: Callable, x0, *, jacobian: Callable | None = None,
                               options: LMOptions = LMOptions(), callback: Callable | None = None,
                               restarts: bool = True, at_bound: Callable | None = None) -> tuple[LMOutcome, str]:
    """Levenberg-Marquardt from ``x0`` with a small portfolio of strategies.

    MINPACK's choices (Jacobian scaling, initial trust region 100*||D x0||) and unscaled steps
    each fail on some hard starts that the other solves (NIST BoxBOD and MGH09 from their first
    start; MGH10 needs a cautious initial trust region). The first two always run and the
    lower cost wins; the cautious ones run only if neither converged. Returns the outcome and
    the strategy that produced it, e.g. "scaling=jacobian, factor=100".
    """
    from dataclasses import replace

    plan = STRATEGIES if restarts else STRATEGIES[:1]
    best: LMOutcome | None = None
    best_name = ""
    total_res = total_jac = 0
    for i, (scaling, factor) in enumerate(plan):
        if best is not None and (best.status == "stopped" or (i >= 2 and best.status == "converged")):
            break
        out = levenberg_marquardt(residual, x0, jacobian=jacobian, callback=callback, at_bound=at_bound,
                                  options=replace(options, scaling=scaling, factor=factor))
        total_res += out.n_residual
        total_jac += out.n_jacobian
        if best is None or _better(out, best):
            best, best_name = out, f"scaling={scaling}, factor={factor:g}"
    best.n_residual, best.n_jacobian = total_res, total_jac
    return best, best_name


def _better(a: LMOutcome, b: LMOutcome) -> bool:
    """Converged beats not converged; then the lower cost wins."""
    if (a.status == "converged") != (b.status == "converged"):
        return a.status == "converged"
    return a.cost < b.cost
