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
("not_finite" when the residuals or the Jacobian are not finite at the start: nothing is
fitted). Trial points where the residuals or the Jacobian are not finite, or complex, are
failed steps (the trust region shrinks). Bounds are a box, without a transform (a start on a
bound is as good as any other): coordinates resting on a bound with the gradient pointing
outward are held, the others take the step, which is reflected off a bound it crosses or
stops short of it (:mod:`gradfit.optim.box`: iterates are never projected onto a bound, where
the model may be flat); a converged point is moved onto the bounds it pushes against, so an
active bound is reached exactly. The stationarity tests use the projected gradient. The
caller adds "singular" from the Jacobian's rank at the solution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ..status import Status
from . import box as _box_steps
from .finite import as_real, not_finite_message
from .lm_tests import active_set, column_norms as _column_norms, default_tolerances, norm as _norm, scaled_gradient
from .trust_region import GRAM_CONDITION, Subproblem as _Subproblem  # noqa: F401 (re-exported)

__all__ = ["LMOptions", "LMState", "LMOutcome", "init", "step", "outcome", "levenberg_marquardt",
           "robust_levenberg_marquardt", "scaled_gradient", "default_tolerances", "not_finite_message",
           "as_real", "active_set"]


_DEFAULT_TOLERANCES = default_tolerances()


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

    #: (ftol, xtol, gtol), float64's defaults filled in (asked every iteration; made with the
    #: options: functools.cached_property takes a lock on every first use)
    tolerances: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        given = (self.ftol, self.xtol, self.gtol)
        object.__setattr__(self, "tolerances", tuple(d if v is None else v for v, d in zip(given, _DEFAULT_TOLERANCES)))


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
    #: the Jacobian (n, P) at ``x`` (None when the start was not finite)
    jacobian: np.ndarray | None = None
    #: J^T J (P, P) at ``x`` when the run computed it (long data), else None
    gram: np.ndarray | None = None
    #: the native kernel's (optim/native_single.py) outcomes: ``native`` True, with
    #: :func:`gradfit.stats.scaled_gram_eigh` at ``x`` and the range cosine from it
    gram_eigh: tuple | None = None
    range_cosine: float | None = None
    native: bool = False


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
    #: how many times converged points were moved onto the bounds (:func:`_onto_bounds`)
    snaps: int = 0
    #: J^T J (P, P) for long data (n >= 4P), else None (the subproblem computes what it needs)
    gram: np.ndarray | None = None

    @property
    def cost(self) -> float:
        return 0.5 * self.fnorm * self.fnorm


def _box(bounds, x: np.ndarray):
    """(lower, upper) float64 arrays for ``x`` from ``bounds`` (None: no bounds)."""
    if bounds is None:
        return None
    lo, hi = (np.broadcast_to(np.asarray(b, dtype=np.float64), x.shape) for b in bounds)
    if not (np.isfinite(lo).any() or np.isfinite(hi).any()):
        return None
    return lo, hi


def init(residual: Callable, x0, *, jacobian: Callable, options: LMOptions = LMOptions(), bounds=None) -> LMState:
    """The state at ``x0``: residuals, Jacobian, scaling and the initial trust region
    ``options.factor * ||D x0||``. Residuals or a Jacobian that are not finite end the run
    at once (status not_finite, naming the first rows where they are not). ``bounds`` =
    (lower, upper) clips ``x0`` into the box."""
    x = np.array(x0, dtype=np.float64)
    box = _box(bounds, x)
    if box is not None:
        x = np.minimum(np.maximum(x, box[0]), box[1])
    r = as_real(residual(x))
    fnorm = _norm(r)  # not finite when r is not (or when it overflows: then every entry is looked at)
    if not (math.isfinite(fnorm) or np.isfinite(r).all()):
        return LMState(x, r, None, None, None, math.inf, math.nan, 0.0, 0.0, n_jacobian=0,
                       status=Status.NOT_FINITE, message=not_finite_message(r))
    jac = as_real(jacobian(x))
    gram, col_norms = _gram(jac)
    if not _finite(jac, col_norms):
        return LMState(x, r, None, None, None, fnorm, math.nan, 0.0, 0.0, status=Status.NOT_FINITE,
                       message=not_finite_message(jac, "in its derivatives at the starting values"))
    inside = None if box is None else _box_steps.off_flat_bounds(x, col_norms, box)
    evaluations = 1
    if inside is not None:  # a start on a bound where the model is flat there: a saddle
        evaluations = 2
        r_in = as_real(residual(inside))
        jac_in = as_real(jacobian(inside)) if np.isfinite(r_in).all() else None
        moved = None if jac_in is None else _gram(jac_in)
        if moved is not None and _finite(jac_in, moved[1]):
            x, r, jac, fnorm = inside, r_in, jac_in, _norm(r_in)
            gram, col_norms = moved
    d = np.ones_like(x) if options.scaling == "none" else np.where(col_norms > 0, col_norms, 1.0)
    xnorm = _norm(d * x)
    delta = options.factor * xnorm if xnorm > 0 else options.factor
    return LMState(x, r, jac, col_norms, d, fnorm, xnorm, delta, 0.0, n_residual=evaluations,
                   n_jacobian=evaluations, history=[0.5 * fnorm * fnorm], gram=gram)


def step(residual: Callable, state: LMState, *, jacobian: Callable, options: LMOptions = LMOptions(),
         bounds=None) -> LMState:
    """One iteration: the gradient test, then trust-region trials until one is accepted or
    a convergence test passes. Returns a new state (``state`` is not modified; the history
    list is shared). A finished state is returned unchanged.

    ``bounds`` = (lower, upper) (P,) arrays (-inf/inf for none) confines the trials to the
    box: coordinates in the :func:`active_set` are held, the others take the
    Levenberg-Marquardt step; one that crosses a bound is reflected off it, or after a failed
    reflection stops short of it and the others' step is solved again
    (:func:`gradfit.optim.box.trial_point`); the ratio test uses the step taken. A converged
    point is moved onto the bounds it pushes against when that does not raise the cost, and
    the run goes on from there. Trial points whose residuals or Jacobian are
    not finite (or complex) are rejected and the trust region shrinks. A converged state has
    passed the final stationarity test on the projected gradient (else it is stalled).
    """
    if state.status is not None:
        return state
    if state.iteration >= options.max_iter:
        return _with_status(_copy(state), Status.MAX_ITERATIONS, f"stopped after max_iter={options.max_iter} iterations")
    ftol, xtol, gtol = options.tolerances
    x, r, fnorm, jac, col_norms, d = state.x, state.residuals, state.fnorm, state.jacobian, state.col_norms, state.scale
    xnorm, delta, lam = state.xnorm, state.radius, state.damping
    n_res, n_jac = state.n_residual, state.n_jacobian
    it = state.iteration + 1
    box = _box(bounds, x)
    grad = jac.T @ r
    held = None if box is None else active_set(x, grad, box)
    if fnorm <= options.residual_floor or scaled_gradient(jac, r, held, col_norms=col_norms, r_norm=fnorm,
                                                          grad=grad) <= gtol:
        message = ("residuals at working precision" if fnorm <= options.residual_floor
                   else "scaled gradient below gtol")
        new = _copy(state)
        new.iteration = it
        return _onto_bounds(residual, jacobian, new, box, options) or _finished(new, Status.CONVERGED, message,
                                                                                  options, box)
    if held is not None and held.any():
        keep = np.nonzero(~held)[0]
        sub = _Subproblem(jac[:, keep], r, d[keep], None if state.gram is None else state.gram[np.ix_(keep, keep)],
                          grad[keep])
    else:
        keep = None
        sub = _Subproblem(jac, r, d, state.gram, grad)
    status = None
    message = ""
    reflect = True  # a step that crosses a bound is reflected off it until a reflection fails
    theta = _box_steps.THETA
    if box is not None:  # stop closer to a bound as the fit converges (trf's rule)
        theta = _box_steps.step_back(x, grad, col_norms, fnorm, held, box)
    while True:  # shrink the trust region until a step is accepted
        lam = sub.damping_for(delta, lam)
        z = sub.step(lam)
        if keep is not None:
            dx = np.zeros_like(x)
            dx[keep] = z / d[keep]
        else:
            dx = z / d
        pnorm = _norm(z)
        crossed = reflected = False
        if box is not None:
            x_new, how = _box_steps.trial_point(x, dx, box, reflect, theta)
            crossed, reflected = how is not None, isinstance(how, str)
            if crossed and not reflected:  # stopped short of the bound: the others' step again
                x_new = _box_steps.rest_of_step(_Subproblem, jac, r, d, lam, x, x_new, how, keep, box,
                                                theta)
                dx = x_new - x
                pnorm = _norm(d * dx)
        else:
            x_new = x + dx
        if it == 1:
            delta = min(delta, pnorm)
        r_new = as_real(residual(x_new))
        n_res += 1
        fnorm1 = _norm(r_new)  # NaN and inf propagate into the norm
        if not math.isfinite(fnorm1):
            fnorm1 = math.inf
        actred = 1.0 - (fnorm1 / fnorm) * (fnorm1 / fnorm) if 0.1 * fnorm1 < fnorm else -1.0
        if abs(actred) < SMALL_REDUCTION:  # near convergence 1 - (|r1|/|r|)^2 is rounding (a 1e-16
            # reduction can come out 0 and reject the step to the minimum): sum((r1 - r)(r1 + r)) is not
            actred = -float((r_new - r) @ (r_new + r)) / (fnorm * fnorm)
        if crossed and not reflected:
            # the linear model's reduction for the shortened step (Moré's identities hold only
            # for the Levenberg-Marquardt step itself; a reflected step is that step in the
            # problem folded at the bound, and keeps its prediction)
            jd = jac @ dx
            rjd = float(r @ jd) / (fnorm * fnorm)
            prered = -(2.0 * rjd + float(jd @ jd) / (fnorm * fnorm))
            dirder = rjd
        else:
            t1 = math.sqrt(sub.predicted_norm2(lam)) / fnorm  # ||J dx||, from the singular system
            t2 = math.sqrt(lam) * pnorm / fnorm
            prered = t1 * t1 + 2.0 * t2 * t2
            dirder = -(t1 * t1 + t2 * t2)
        ratio = actred / prered if prered > 0 else 0.0
        jac_new = None
        if ratio >= 1e-4:
            jac_new = as_real(jacobian(x_new))
            n_jac += 1
            gram_new, norms_new = _gram(jac_new)
            if not _finite(jac_new, norms_new):  # derivatives overflow there: a failed trial
                ratio, actred, jac_new = 0.0, -1.0, None
        if reflected and jac_new is None:
            reflect = False
        if ratio <= 0.25:
            temp = 0.5 if actred >= 0 else (0.5 * dirder / (dirder + 0.5 * actred) if dirder + 0.5 * actred != 0
                                            else 0.1)
            if 0.1 * fnorm1 >= fnorm or temp < 0.1:
                temp = 0.1
            delta = temp * min(delta, pnorm / 0.1)
            lam = lam / temp
        elif lam == 0.0 or ratio >= 0.75:  # (a step shortened at a bound does not shrink it)
            delta = max(delta, pnorm / 0.5) if crossed and not reflected else pnorm / 0.5
            lam = 0.5 * lam
        accepted = jac_new is not None
        if accepted:
            x, r, fnorm = x_new, r_new, fnorm1
            jac, gram, col_norms = jac_new, gram_new, norms_new
            if options.scaling != "none":
                d = np.maximum(d, col_norms)
            xnorm = _norm(d * x)
            state.history.append(0.5 * fnorm * fnorm)
        if abs(actred) <= ftol and 0 <= prered <= ftol and 0.5 * ratio <= 1.0:
            status, message = Status.CONVERGED, "relative cost reduction below ftol"
        elif delta <= xtol * xnorm:
            status, message = Status.CONVERGED, "relative step below xtol"
        elif delta <= 1e-300 or (lam > 0 and not math.isfinite(lam)):
            status, message = Status.CONVERGED, "no further reduction possible at working precision"
        if status is not None or accepted:
            break
    new = LMState(x, r, jac, col_norms, d, fnorm, xnorm, delta, lam, it, n_res, n_jac, state.history,
                  accepted=accepted, snaps=state.snaps, gram=gram if accepted else state.gram)
    if status is None:
        return new
    if status == Status.CONVERGED:
        return _onto_bounds(residual, jacobian, new, box, options) or _finished(new, status, message, options, box)
    return _finished(new, status, message, options, box)


#: relative cost reductions below this are recomputed from the residuals' differences (see :func:`step`)
SMALL_REDUCTION = 1e-8

#: how many times one run moves a converged point onto the bounds before it accepts it as is
MAX_SNAPS = 5


def _onto_bounds(residual: Callable, jacobian: Callable, state: LMState, box, options: LMOptions) -> LMState | None:
    """A converged point next to a bound the gradient pushes against, moved onto it (iterates
    otherwise stay strictly inside, :mod:`gradfit.optim.box`): the running state at the new
    point when its cost is not higher, else None (the convergence stands)."""
    if box is None or state.snaps >= MAX_SNAPS or state.fnorm <= options.residual_floor:
        return None
    moved, n_res, n_jac = _box_steps.onto_bounds(residual, jacobian, state.x, state.jacobian.T @ state.residuals,
                                                 state.col_norms, state.fnorm, box)
    state.n_residual += n_res
    state.n_jacobian += n_jac
    if moved is None:
        return None
    x_new, r_new, jac = moved
    fnorm = _norm(r_new)
    col_norms = _column_norms(jac)
    d = state.scale if options.scaling == "none" else np.maximum(state.scale, col_norms)
    state.history.append(0.5 * fnorm * fnorm)
    return LMState(x_new, r_new, jac, col_norms, d, fnorm, _norm(d * x_new), state.radius, state.damping,
                   state.iteration, state.n_residual, state.n_jacobian, state.history, accepted=True,
                   snaps=state.snaps + 1)


def _copy(state: LMState) -> LMState:
    """A shallow copy that has not accepted a step (dataclasses.replace is several times slower)."""
    return LMState(state.x, state.residuals, state.jacobian, state.col_norms, state.scale, state.fnorm, state.xnorm,
                   state.radius, state.damping, state.iteration, state.n_residual, state.n_jacobian, state.history,
                   gram=state.gram)


def _gram(jac: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """(J^T J, column norms) for long data, whose subproblem uses the Gram matrix (one pass
    over the data gives both); (None, column norms) otherwise."""
    if jac.shape[0] >= 4 * jac.shape[1]:
        gram = jac.T @ jac
        return gram, np.sqrt(gram.diagonal())
    return None, _column_norms(jac)


def _finite(jac: np.ndarray, col_norms: np.ndarray) -> bool:
    """Whether the Jacobian is finite: its column norms (sums of squares) see any NaN or inf
    in it, so only when they are not finite (or overflow) is every entry looked at."""
    return math.isfinite(sum(col_norms.tolist())) or bool(np.isfinite(jac).all())


def _with_status(state: LMState, status: Status, message: str) -> LMState:
    state.status, state.message = status, message
    return state


def _finished(state: LMState, status: Status, message: str, options: LMOptions, box) -> LMState:
    """Set the final status of a state ``step`` made; "converged" must pass the
    stationarity test (on the projected gradient when there are bounds) at the end point."""
    if status == Status.CONVERGED and state.fnorm > options.residual_floor:
        held = None if box is None else active_set(state.x, state.jacobian.T @ state.residuals, box)
        measure = scaled_gradient(state.jacobian, state.residuals, held, col_norms=state.col_norms,
                                  r_norm=state.fnorm)
        if not measure <= options.stationary:
            status = Status.STALLED
            message = (f"stopped at a point that is not stationary (scaled gradient {measure:.2e} > "
                       f"{options.stationary:.0e}); try another starting point")
    return _with_status(state, status, message)


def levenberg_marquardt(residual: Callable, x0, *, jacobian: Callable, options: LMOptions = LMOptions(),
                        callback: Callable | None = None, bounds=None) -> LMOutcome:
    """Minimise ``0.5*||residual(x)||^2`` from ``x0``: :func:`init`, then :func:`step` until
    the state has a status. See the module docstring.

    ``residual(x)`` returns the (n,) residuals and ``jacobian(x)`` their (n, P) Jacobian, as
    float64 numpy arrays. ``bounds`` = (lower, upper), each a number or a (P,) array
    (-inf/inf for no limit), confines ``x`` to a box (see :func:`step`);
    a coordinate that ends on a bound with the gradient pointing outward is exempt from the
    stationarity test. A callback ``callback(iteration, cost)``, called after each
    accepted step, returning True stops the run (status stopped).

    >>> t = np.array([0.0, 1.0, 2.0, 3.0])
    >>> res = lambda p: p[0] * np.exp(-p[1] * t) - 2 * np.exp(-0.5 * t)
    >>> jac = lambda p: np.column_stack([np.exp(-p[1] * t), -p[0] * t * np.exp(-p[1] * t)])
    >>> out = levenberg_marquardt(res, np.array([1.0, 1.0]), jacobian=jac)
    >>> str(out.status), [round(v, 6) for v in out.x.tolist()]
    ('converged', [2.0, 0.5])
    >>> out = levenberg_marquardt(res, np.array([1.0, 1.0]), jacobian=jac, bounds=([0.0, 0.7], [np.inf, np.inf]))
    >>> str(out.status), round(float(out.x[1]), 6)
    ('converged', 0.7)
    """
    state = init(residual, x0, jacobian=jacobian, options=options, bounds=bounds)
    while state.status is None:
        state = step(residual, state, jacobian=jacobian, options=options, bounds=bounds)
        if callback is not None and state.accepted and callback(state.iteration, state.history[-1]):
            state = _with_status(_copy(state), Status.STOPPED, f"stopped by a callback at iteration {state.iteration}")
    return outcome(state)


def outcome(state: LMState) -> LMOutcome:
    """The result of a finished run."""
    return LMOutcome(state.x, state.cost, state.status, state.iteration, state.message, state.history,
                     state.n_residual, state.n_jacobian, state.residuals, state.jacobian, state.gram)


#: (scaling, factor) tried in turn by :func:`robust_levenberg_marquardt`
STRATEGIES = (("jacobian", 100.0), ("none", 100.0), ("jacobian", 1.0), ("none", 1.0))
_STRATEGY_NAMES = {(s, f): f"scaling={s}, factor={f:g}" for s, f in STRATEGIES}


def robust_levenberg_marquardt(residual: Callable, x0, *, jacobian: Callable,
                               options: LMOptions = LMOptions(), callback: Callable | None = None,
                               restarts: bool = True, bounds=None, run: Callable | None = None
                               ) -> tuple[LMOutcome, str]:
    """Levenberg-Marquardt from ``x0`` with a small portfolio of strategies.

    MINPACK's choices (Jacobian scaling, initial trust region 100*||D x0||) come first; when
    they end without converging (NIST BoxBOD from its first start stalls on a plateau), unscaled
    steps and then cautious initial trust regions (MGH10's first start) are tried in turn. The
    first converged run wins; if none converges, the lowest cost. Returns the outcome and the
    strategy that produced it, e.g. "scaling=jacobian, factor=100". ``bounds`` as in
    :func:`levenberg_marquardt`. ``run(x0, options)``, when given, replaces
    :func:`levenberg_marquardt` for each strategy (the native kernel of
    :mod:`gradfit.optim.native_single`, for unbounded fits without a callback); where it returns
    None (a start that is not finite) the strategy runs here.
    """
    plan = STRATEGIES if restarts else STRATEGIES[:1]
    best: LMOutcome | None = None
    best_name = ""
    total_res = total_jac = 0
    for scaling, factor in plan:
        # a start where the model is not finite is the same start for every strategy
        # (a converged point where the model is flat in a parameter, a plateau the first
        # strategies can jump onto, is not final: the lowest converged cost wins)
        if best is not None and best.status in (Status.STOPPED, Status.CONVERGED, Status.NOT_FINITE) and not (
                best.status == Status.CONVERGED and _flat(best)):
            break
        if (options.scaling, options.factor) != (scaling, factor):  # (replace costs microseconds)
            options = replace(options, scaling=scaling, factor=factor)
        out = None if run is None else run(x0, options)
        if out is None:
            with np.errstate(all="ignore"):  # trial steps may overflow; LM rejects them
                out = levenberg_marquardt(residual, x0, jacobian=jacobian, callback=callback, bounds=bounds,
                                          options=options)
        total_res += out.n_residual
        total_jac += out.n_jacobian
        if best is None or _better(out, best):
            best, best_name = out, _STRATEGY_NAMES[scaling, factor]
    best.n_residual, best.n_jacobian = total_res, total_jac
    return best, best_name


def _flat(out: LMOutcome) -> bool:
    """Whether the model is flat (to rounding) in some parameter at the end point."""
    if out.jacobian is None or out.jacobian.size == 0:
        return False
    cn = (out.gram_eigh[0] if out.gram_eigh is not None  # (the native kernel's column norms)
          else _column_norms(out.jacobian) if out.gram is None else np.sqrt(out.gram.diagonal())).tolist()
    limit = math.ulp(1.0) * max(cn)  # (float64's eps; Python floats: numpy's max and any cost ~5 us)
    return all(c == c for c in cn) and any(c <= limit for c in cn)  # (NaN: nothing to say)


def _better(a: LMOutcome, b: LMOutcome) -> bool:
    """Converged beats not converged; then the lower cost wins."""
    if (a.status == Status.CONVERGED) != (b.status == Status.CONVERGED):
        return a.status == Status.CONVERGED
    return a.cost < b.cost
