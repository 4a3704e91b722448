"""Levenberg-Marquardt for least squares.

Minimises ``0.5 * ||r(x)||^2`` for a residual closure ``r``, in the trust-region form of
Moré (1978), the algorithm of MINPACK's lmder: each iteration finds the damping ``lam`` for
which the scaled step ``||D dx||`` fills the trust region ``Delta``, where
``dx = -(J^T J + lam D^2)^(-1) J^T r``; ``Delta`` grows or shrinks with the ratio of actual to
predicted reduction. The damped system is solved through the singular system of ``J D^-1``
(its SVD; for long, well-conditioned data the eigendecomposition of the small Gram matrix,
see :class:`_Subproblem`), which also makes the search for ``lam`` a scalar Newton iteration
costing O(P) per trial. ``D`` is Moré's scaling, the running maximum of the
Jacobian's column norms, or the identity (``scaling="none"``).

The kernel works on float64 numpy arrays: a single fit's dense algebra is tiny, and torch's
per-operation overhead on CPU would dominate it. The caller supplies the residual and its
Jacobian (:mod:`gradfit.models.jacobian` builds it: exact for formulas and torch models,
finite differences for models that only evaluate in numpy).

The run is shaped like an optax transformation: :func:`init` builds an explicit
:class:`LMState` at the starting point and :func:`step` maps a state to the next (one
iteration); :func:`levenberg_marquardt` is init + step until the state has a status, and
:func:`robust_levenberg_marquardt` restarts it with other strategies when it fails.
:mod:`gradfit.optim.batch_lm` has the same shape for a batch of fits.

Stopping is honest: "converged" needs a relative cost reduction below ftol (actual and
predicted), a trust region below xtol, or a scaled gradient below gtol, and the final point
must pass a stationarity test; otherwise the status is "max_iterations" or "stalled"
("not_finite" when the residuals are not finite at the start: nothing is fitted). The caller
adds "singular" from the Jacobian's rank at the solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ..status import Status

__all__ = ["LMOptions", "LMState", "LMOutcome", "init", "step", "outcome", "levenberg_marquardt",
           "robust_levenberg_marquardt", "scaled_gradient", "default_tolerances", "not_finite_message"]


def default_tolerances(dtype=np.float64) -> tuple[float, float, float]:
    """(ftol, xtol, gtol) for a dtype: a little above its rounding level."""
    eps = float(np.finfo(dtype).eps)
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
    status: Status  # converged | max_iterations | stalled | stopped | not_finite
    iterations: int
    message: str
    history: list = field(default_factory=list)  # cost after each accepted iteration
    n_residual: int = 0
    n_jacobian: int = 0
    #: the residuals (n,) at ``x``
    residuals: np.ndarray | None = None


def scaled_gradient(jac: np.ndarray, r: np.ndarray, exempt=None, *, col_norms: np.ndarray | None = None,
                    r_norm: float | None = None) -> float:
    """max_j |J_j . r| / (||J_j|| ||r||): the cosine between the residual and each Jacobian
    column (MINPACK's gtol measure); 0 at a stationary point, scale-free. Columns flagged in
    ``exempt`` (parameters resting on a bound) are left out. ``col_norms`` and ``r_norm``
    pass norms the caller already has."""
    rn = _norm(r) if r_norm is None else r_norm
    if rn == 0.0:
        return 0.0
    cn = (_column_norms(jac) if col_norms is None else col_norms).tolist()
    g = (jac.T @ r).tolist()
    skip = [False] * len(cn) if exempt is None else [bool(e) for e in exempt]
    cosines = [abs(gj) / (cj * rn) for gj, cj, sj in zip(g, cn, skip) if cj > 0 and not sj]
    if any(c != c for c in cosines):
        return math.nan  # a NaN in the Jacobian: never stationary
    return max(cosines) if cosines else 0.0


#: smallest/largest eigenvalue of the scaled Gram matrix above which the subproblem is solved
#: from it (cond(J D^-1) < 1e5: steps accurate to ~eps * cond^2 < 1e-6, ample for an
#: iteration that only needs descent); below it, the SVD of J D^-1 itself
GRAM_CONDITION = 1e-10


class _Subproblem:
    """The trust-region subproblem at one point: the singular values s, right singular
    vectors V and coordinates c = U^T r of ``A = J D^-1``.

    They come from the eigendecomposition of the P x P matrix ``A^T A`` when A is well
    conditioned (one pass over the n x P data instead of a factorization of it: several
    times cheaper for long data), and from the SVD of A otherwise, so that ill-conditioned
    problems never see a squared condition number. The search for the damping then works on
    P Python floats (cheaper than numpy calls for the handful of parameters a fit has).
    """

    def __init__(self, jac: np.ndarray, r: np.ndarray, d: np.ndarray):
        a = jac / d
        eig = v = None
        if a.shape[0] >= 4 * a.shape[1]:  # long data: the Gram matrix is much smaller than A
            try:
                eig, v = np.linalg.eigh(a.T @ a)
            except np.linalg.LinAlgError:  # non-finite entries: the SVD below reports them
                eig = None
        if eig is not None and eig[0] > GRAM_CONDITION * eig[-1] and math.isfinite(eig[-1]):
            s = np.sqrt(eig[::-1])
            vt = v[:, ::-1].T
            c = (vt @ (a.T @ r)) / s  # U^T r with U = A V S^-1
        else:
            u, s, vt = np.linalg.svd(a, full_matrices=False)
            c = u.T @ r
        self.vt = vt
        self.c = c  # r's coordinates in the range of J
        self.s = s.tolist()
        self.c_list = self.c.tolist()
        self.rank_cut = self.s[0] * max(jac.shape) * _EPS if self.s else 0.0
        # the Gauss-Newton step (lam = 0) uses the pseudo-inverse: directions with singular
        # values at rounding level are dropped
        self.gn_coef = [1.0 / sv if sv > self.rank_cut else 0.0 for sv in self.s]
        self.gn_norm = math.sqrt(sum((k * c) ** 2 for k, c in zip(self.gn_coef, self.c_list)))

    def coefficients(self, lam: float) -> list[float]:
        if lam == 0.0:
            return self.gn_coef
        return [sv / (sv * sv + lam) for sv in self.s]

    def step(self, lam: float) -> np.ndarray:
        """The scaled step z = D dx for damping lam (lam = 0: Gauss-Newton, pseudo-inverse)."""
        return -(self.vt.T @ (np.array(self.coefficients(lam)) * self.c))

    def norm(self, lam: float) -> float:
        if lam == 0.0:
            return self.gn_norm
        return math.sqrt(sum((k * c) ** 2 for k, c in zip(self.coefficients(lam), self.c_list)))

    def damping_for(self, delta: float, lam_hint: float) -> float:
        """The lam >= 0 with ||step(lam)|| within 10% of delta (0 if the GN step fits).

        Newton's method on 1/||z(lam)|| - 1/delta (nearly linear in lam, Hebden/Moré),
        safeguarded by a bracket that shrinks every iteration.
        """
        if self.gn_norm <= 1.1 * delta:
            return 0.0
        s2 = [sv * sv for sv in self.s]
        s2c2 = [a * c * c for a, c in zip(s2, self.c_list)]
        lo, hi = 0.0, math.inf
        lam = max(lam_hint, 1e-12 * s2[0] if s2 else 1e-12)
        for _ in range(60):
            q = [a + lam for a in s2]
            norm2 = sum(b / (qi * qi) for b, qi in zip(s2c2, q))
            norm = math.sqrt(norm2)
            if 0.9 * delta <= norm <= 1.1 * delta:
                return lam
            if norm > delta:
                lo = lam
            else:
                hi = lam
            dnorm2 = -2.0 * sum(b / (qi * qi * qi) for b, qi in zip(s2c2, q))  # d ||z||^2 / d lam
            # Newton step for phi(lam) = 1/||z|| - 1/delta: phi' = -dnorm2 / (2 ||z||^3)
            phi = 1.0 / norm - 1.0 / delta if norm > 0 else -1.0 / delta
            dphi = -dnorm2 / (2.0 * norm2 * norm) if norm > 0 else 0.0
            new = lam - phi / dphi if dphi > 0 else math.nan
            if not (lo < new < hi) or not math.isfinite(new):
                new = math.sqrt(lo * hi) if (lo > 0 and math.isfinite(hi)) else (lam * 10.0 if hi == math.inf
                                                                                  else 0.5 * (lo + hi))
            lam = new
            if lam > 1e300:
                return lam
        return lam


_EPS = float(np.finfo(np.float64).eps)


def _column_norms(jac: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->j", jac, jac))


def _norm(v: np.ndarray) -> float:
    """Euclidean norm of a vector, as numpy.linalg.norm computes it (sqrt of the dot
    product) without its Python overhead."""
    return math.sqrt(float(v @ v))


@dataclass(slots=True)
class LMState:
    """Everything one Levenberg-Marquardt run carries from one iteration to the next.

    :func:`init` builds it at the starting point and :func:`step` maps it to the next one,
    so a caller (a callback, a checkpoint, a future feature) can stand between iterations.
    Arrays are float64 numpy: ``x`` (P,), ``residuals`` (n,), ``jacobian`` (n, P) at ``x``.
    """

    x: np.ndarray
    residuals: np.ndarray
    jacobian: np.ndarray | None
    #: column norms of ``jacobian`` (P,)
    col_norms: np.ndarray | None
    #: Moré's scaling D (P,): the running maximum of the column norms, or ones
    scale: np.ndarray | None
    fnorm: float  # ||residuals||
    xnorm: float  # ||D x||
    radius: float  # trust region Delta
    damping: float  # lam of the last trust-region step
    iteration: int = 0
    n_residual: int = 1
    n_jacobian: int = 1
    #: cost 0.5 * ||r||^2 at the start and after each accepted step
    history: list = field(default_factory=list)
    #: None while running, then a :class:`~gradfit.status.Status`
    status: Status | None = None
    message: str = ""
    #: whether the last step moved ``x``
    accepted: bool = False

    @property
    def cost(self) -> float:
        return 0.5 * self.fnorm**2


_DEFAULT_TOLERANCES = default_tolerances()


def _tolerances(options: LMOptions) -> tuple[float, float, float]:
    ftol_d, xtol_d, gtol_d = _DEFAULT_TOLERANCES
    return (options.ftol if options.ftol is not None else ftol_d,
            options.xtol if options.xtol is not None else xtol_d,
            options.gtol if options.gtol is not None else gtol_d)


def init(residual: Callable, x0, *, jacobian: Callable, options: LMOptions = LMOptions()) -> LMState:
    """The state at ``x0``: residuals, Jacobian, scaling and the initial trust region
    ``options.factor * ||D x0||``. Residuals that are not finite end the run at once
    (status not_finite, naming the first rows where they are not)."""
    x = np.array(x0, dtype=np.float64)
    r = np.asarray(residual(x), dtype=np.float64)
    if not np.isfinite(r).all():
        return LMState(x, r, None, None, None, math.inf, math.nan, 0.0, 0.0, n_jacobian=0,
                       status=Status.NOT_FINITE, message=not_finite_message(r))
    fnorm = _norm(r)
    jac = np.asarray(jacobian(x), dtype=np.float64)
    col_norms = _column_norms(jac)
    d = np.ones_like(x) if options.scaling == "none" else np.where(col_norms > 0, col_norms, 1.0)
    xnorm = _norm(d * x)
    delta = options.factor * xnorm if xnorm > 0 else options.factor
    return LMState(x, r, jac, col_norms, d, fnorm, xnorm, delta, 0.0, history=[0.5 * fnorm**2])


def not_finite_message(values: np.ndarray, where: str = "at the starting values",
                       fix: str = "change the starting values (init), the bounds or the formula so that it "
                                  "is defined there") -> str:
    """What to tell the user when the model (through its residuals or terms, one row per data
    point: ``values`` (n,) or (n, k)) is not finite ``where``: the first rows, 1-based."""
    bad = ~np.isfinite(np.asarray(values).reshape(len(values), -1)).all(axis=1)
    rows = np.nonzero(bad)[0]
    shown = ", ".join(str(i + 1) for i in rows[:8]) + (" ..." if len(rows) > 8 else "")
    return (f"the model is not finite {where} in {len(rows)} of {len(bad)} data row(s): {shown} (1-based); "
            f"nothing was fitted: {fix}")


def step(residual: Callable, state: LMState, *, jacobian: Callable, options: LMOptions = LMOptions(),
         at_bound: Callable | None = None) -> LMState:
    """One iteration: the gradient test, then trust-region trials until one is accepted or
    a convergence test passes. Returns a new state (``state`` is not modified; the history
    list is shared). A finished state is returned unchanged.

    ``at_bound(x)`` returns a boolean mask of coordinates resting on a bound; the
    stationarity tests skip them. A converged state has passed the final stationarity test
    (else its status is stalled).
    """
    if state.status is not None:
        return state
    if state.iteration >= options.max_iter:
        return _with_status(_copy(state), Status.MAX_ITERATIONS, f"stopped after max_iter={options.max_iter} iterations")
    ftol, xtol, gtol = _tolerances(options)
    x, r, fnorm, jac, col_norms, d = state.x, state.residuals, state.fnorm, state.jacobian, state.col_norms, state.scale
    xnorm, delta, lam = state.xnorm, state.radius, state.damping
    n_res, n_jac = state.n_residual, state.n_jacobian
    it = state.iteration + 1
    exempt = at_bound(x) if at_bound is not None else None
    if fnorm <= options.residual_floor or scaled_gradient(jac, r, exempt, col_norms=col_norms,
                                                          r_norm=fnorm) <= gtol:
        message = ("residuals at working precision" if fnorm <= options.residual_floor
                   else "scaled gradient below gtol")
        new = _copy(state)
        new.iteration = it
        return _finished(new, Status.CONVERGED, message, options, at_bound)
    sub = _Subproblem(jac, r, d)
    status = None
    message = ""
    while True:  # shrink the trust region until a step is accepted
        lam = sub.damping_for(delta, lam)
        z = sub.step(lam)
        dx = z / d
        pnorm = _norm(z)
        if it == 1:
            delta = min(delta, pnorm)
        x_new = x + dx
        r_new = np.asarray(residual(x_new), dtype=np.float64)
        n_res += 1
        fnorm1 = _norm(r_new)  # NaN and inf propagate into the norm
        if not math.isfinite(fnorm1):
            fnorm1 = math.inf
        actred = 1.0 - (fnorm1 / fnorm) ** 2 if 0.1 * fnorm1 < fnorm else -1.0
        t1 = _norm(jac @ dx) / fnorm
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
            jac = np.asarray(jacobian(x), dtype=np.float64)
            col_norms = _column_norms(jac)
            n_jac += 1
            if options.scaling != "none":
                d = np.maximum(d, col_norms)
            xnorm = _norm(d * x)
            state.history.append(0.5 * fnorm**2)
        if abs(actred) <= ftol and prered <= ftol and 0.5 * ratio <= 1.0:
            status, message = Status.CONVERGED, "relative cost reduction below ftol"
        elif delta <= xtol * xnorm:
            status, message = Status.CONVERGED, "relative step below xtol"
        elif delta <= 1e-300 or (lam > 0 and not math.isfinite(lam)):
            status, message = Status.CONVERGED, "no further reduction possible at working precision"
        if status is not None or accepted:
            break
    new = LMState(x, r, jac, col_norms, d, fnorm, xnorm, delta, lam, it, n_res, n_jac, state.history,
                  accepted=accepted)
    return new if status is None else _finished(new, status, message, options, at_bound)


def _copy(state: LMState) -> LMState:
    """A shallow copy that has not accepted a step (dataclasses.replace is several times slower)."""
    return LMState(state.x, state.residuals, state.jacobian, state.col_norms, state.scale, state.fnorm, state.xnorm,
                   state.radius, state.damping, state.iteration, state.n_residual, state.n_jacobian, state.history)


def _with_status(state: LMState, status: Status, message: str) -> LMState:
    state.status, state.message = status, message
    return state


def _finished(state: LMState, status: Status, message: str, options: LMOptions, at_bound) -> LMState:
    """Set the final status of a state ``step`` made; "converged" must pass the
    stationarity test at the end point."""
    if status == Status.CONVERGED and state.fnorm > options.residual_floor:
        measure = scaled_gradient(state.jacobian, state.residuals, at_bound(state.x) if at_bound is not None else None,
                                  col_norms=state.col_norms, r_norm=state.fnorm)
        if measure > options.stationary:
            status = Status.STALLED
            message = (f"stopped at a point that is not stationary (scaled gradient {measure:.2e} > "
                       f"{options.stationary:.0e}); try another starting point")
    return _with_status(state, status, message)


def levenberg_marquardt(residual: Callable, x0, *, jacobian: Callable, options: LMOptions = LMOptions(),
                        callback: Callable | None = None, at_bound: Callable | None = None) -> LMOutcome:
    """Minimise ``0.5*||residual(x)||^2`` from ``x0``: :func:`init`, then :func:`step` until
    the state has a status. See the module docstring.

    ``residual(x)`` returns the (n,) residuals and ``jacobian(x)`` their (n, P) Jacobian, as
    float64 numpy arrays. ``at_bound(x)`` returns a boolean mask of coordinates resting on a
    bound (in transformed coordinates their gradient vanishes only in the limit); the
    stationarity tests skip them. A callback ``callback(iteration, cost)``, called after each
    accepted step, returning True stops the run (status stopped).

    >>> t = np.array([0.0, 1.0, 2.0, 3.0])
    >>> res = lambda p: p[0] * np.exp(-p[1] * t) - 2 * np.exp(-0.5 * t)
    >>> jac = lambda p: np.column_stack([np.exp(-p[1] * t), -p[0] * t * np.exp(-p[1] * t)])
    >>> out = levenberg_marquardt(res, np.array([1.0, 1.0]), jacobian=jac)
    >>> str(out.status), [round(v, 6) for v in out.x.tolist()]
    ('converged', [2.0, 0.5])
    """
    state = init(residual, x0, jacobian=jacobian, options=options)
    while state.status is None:
        state = step(residual, state, jacobian=jacobian, options=options, at_bound=at_bound)
        if callback is not None and state.accepted and callback(state.iteration, state.history[-1]):
            state = _with_status(_copy(state), Status.STOPPED, f"stopped by a callback at iteration {state.iteration}")
    return outcome(state)


def outcome(state: LMState) -> LMOutcome:
    """The result of a finished run."""
    return LMOutcome(state.x, state.cost, state.status, state.iteration, state.message, state.history,
                     state.n_residual, state.n_jacobian, state.residuals)


#: (scaling, factor) tried in turn by :func:`robust_levenberg_marquardt`
STRATEGIES = (("jacobian", 100.0), ("none", 100.0), ("jacobian", 1.0), ("none", 1.0))


def robust_levenberg_marquardt(residual: Callable, x0, *, jacobian: Callable,
                               options: LMOptions = LMOptions(), callback: Callable | None = None,
                               restarts: bool = True, at_bound: Callable | None = None) -> tuple[LMOutcome, str]:
    """Levenberg-Marquardt from ``x0`` with a small portfolio of strategies.

    MINPACK's choices (Jacobian scaling, initial trust region 100*||D x0||) come first; when
    they end without converging (NIST BoxBOD from its first start stalls on a plateau), unscaled
    steps and then cautious initial trust regions (MGH10's first start) are tried in turn. The
    first converged run wins; if none converges, the lowest cost. Returns the outcome and the
    strategy that produced it, e.g. "scaling=jacobian, factor=100".
    """
    plan = STRATEGIES if restarts else STRATEGIES[:1]
    best: LMOutcome | None = None
    best_name = ""
    total_res = total_jac = 0
    for scaling, factor in plan:
        # a start where the model is not finite is the same start for every strategy
        if best is not None and best.status in (Status.STOPPED, Status.CONVERGED, Status.NOT_FINITE):
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
    if (a.status == Status.CONVERGED) != (b.status == Status.CONVERGED):
        return a.status == Status.CONVERGED
    return a.cost < b.cost
