"""The batched least-squares engine behind fit_many: chunks, compile cache, the LM loop.

Where the formula's native kernel is ready when a call starts, the whole batch runs in C
(lsq/native_many.py) and nothing below is used. Otherwise: validated numpy arrays (fits as the
leading dimension) -> chunks sized to a memory budget -> starts on a bound where the model is
flat moved inside (as gf.fit moves them) -> tensors per chunk -> ``batch_lm.init`` /
``batch_lm.step`` until every fit of the chunk has finished (compacting the batch to its running
fits as they finish; compile="auto" may move a chunk to torch.compile or the native kernel
midway) -> standard errors and the end-point checks -> a :class:`BatchedSolution` of numpy
arrays (a parameter that ended on a bound in the working dtype is reported on the user's
float64 bound).

Formulas and built-ins take the fused path (their symbolic partials evaluated with
broadcasting, every fit at once); any torch callable takes the general path (torch.func.vmap
over jacfwd); lsq/compiled.py holds the compile cache, the compile="auto" rule and the eager
fallback when torch.compile cannot trace a model.

The end-point checks make "converged" mean what it means for :func:`gradfit.fit`: every
converged or max_iterations fit is checked in float64 at its end point by
:func:`gradfit.stats.end_point_checks` (the function gf.fit's statuses use too): not_finite
where the parameters or chi-square are not finite; singular where the Jacobian is
rank-deficient (singular values of the column-scaled, weighted Jacobian below ``RANK_TOL``
times the largest, or a negligible column) or the standard errors are not finite; stalled
where a converged fit is not stationary (the residuals' cosine with the Jacobian's range above
:func:`gradfit.stats.stationary_threshold` of ``tol``). This module returns plain arrays;
fitting/many.py turns them into a BatchResult.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .._memory import available_bytes
from ..errors import ConfigError
from ..models.jacobian import batch_residual_and_jacobian
from ..models.parameters import any_finite_bound
from ..optim.batch_lm import residual_floor2
from ..options import compile_choice
from ..stats import RANK_TOL, stationary_threshold
from ..status import Status
from .compiled import (COMPILE_FAILED, COMPILED, add_eager_seconds, chunk_mode, compile_key, is_compile_failure,
                       native_kernel, native_key, quiet, traceable_residual_and_jacobian,
                       worth_building, worth_compiling)
from .end_points import check_end_points, clear_end_points, finish_chunk, likelihood_statistics, undetermined_fits
from .batch_starts import off_flat_starts
from .native_many import solve_native

__all__ = ["COMPACT_FRACTION", "COMPACT_MIN", "CPU_CHUNK_BYTES", "BatchedSolution", "solve_batched"]

#: compact the batch to its still-running fits when they are at most this fraction of it
COMPACT_FRACTION = 0.5
#: ... and the batch is at least this large (below, compaction costs more than it saves)
COMPACT_MIN = 1024
#: on the CPU, a chunk's (fits, points) tensor is at most this large (32,768 fits of 32 float32
#: points: 100k Gaussian fits ran 1.1-1.3x faster than in one chunk, measured on a shared
#: 2-core machine)
CPU_CHUNK_BYTES = 4 << 20
#: how far above its rounding level a normal matrix's conditioning must stay for the
#: working-precision screen to vouch for full rank (the inverse then has a few digits)
_SCREEN_SAFETY = 1e3


@dataclass
class BatchedSolution:
    """What the engine found, one row per fit (all numpy).

    params, stderr : (B, P) float64 (stderr NaN where undetermined, 0 for fixed parameters).
    chisqr : (B,) float64 chi-square at ``params`` (inf for fits that never ran).
    n_used : (B,) int64 points with a positive weight.
    status : (B,) int8 :class:`~gradfit.status.Status` codes.
    iterations : (B,) int32.
    timings : warm-up and fitting seconds, fits/s, path, compiled, device, chunk size.
    at_bound : (B, P) bool, a free parameter that ended exactly on one of its bounds (an active
        bound, as gf.fit reports in its notes).
    likelihood : None, or (likelihood="poisson") float64 deviance, pearson, loglike (B,) at params.
    covariance : (B, P, P) in the working dtype, from the kernel's last normal matrix (0 for fixed).
    """

    params: np.ndarray
    stderr: np.ndarray
    chisqr: np.ndarray
    n_used: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    timings: dict = field(default_factory=dict)
    at_bound: np.ndarray | None = None
    likelihood: dict | None = None
    covariance: np.ndarray | None = None


def solve_batched(model, names, inputs: dict, y: np.ndarray, w: np.ndarray, theta0: np.ndarray, lower: np.ndarray,
                  upper: np.ndarray, free: np.ndarray, *, tol: float, max_iter: int, dtype, device,
                  chunk_size: int | None = None, compile="auto", progress=None,
                  likelihood: str | None = None, restart: bool = True, whole: bool = True,
                  absolute_sigma: bool = False) -> BatchedSolution:
    """Fit ``model`` to every row of ``y`` by batched Levenberg-Marquardt.

    Parameters
    ----------
    model : a bound model with named scalar parameters ``names`` (P of them).
    inputs : name -> (M,) shared or (B, M) per-fit input arrays.
    y, w : (B, M) data and weights (0 masks a point; y may be NaN there).
    theta0, lower, upper : (B, P) start and box bounds (-inf/inf for none).
    free : (P,) 1.0 for parameters that vary, 0.0 for fixed ones.
    tol, max_iter : convergence tolerance on the relative chi-square change, iteration cap.
    dtype, device : torch dtype and device of the working tensors.
    chunk_size : fits per chunk (default: from the device's free memory).
    compile : "auto" (see lsq/compiled.py: compiled when the kernel is cached, or when the first
        eager iteration projects a run long enough to pay for compiling), True or False.
    progress : show a bar over fits (None: when stderr is a terminal) once the batch has run 2 s.
    likelihood : None (least squares) or "poisson": Fisher scoring of the Poisson deviance
        (``y`` counts, ``w`` frequency weights; see :func:`gradfit.optim.batch_lm.step`);
        ``chisqr`` is the deviance and ``stderr`` the unscaled Cramer-Rao errors. A fit whose
        start has no likelihood (a mean <= 0 or not finite at a used point) starts again from its
        least-squares fit (as gf.fit does); where that has none either, it ends not_finite.
    whole : False keeps the batch out of the whole-batch native path (lsq/native_many.py: its
        deferred Poisson fits come back here).
    absolute_sigma : standard errors and covariance not scaled by chi2 / dof (the weights are
        the data's true variances; scipy's curve_fit(absolute_sigma=True)).

    Raises
    ------
    ConfigError for a bad chunk_size or compile option.
    """
    import torch

    n_fits, n_points = y.shape
    p = len(names)
    itemsize = torch.finfo(dtype).bits // 8
    chunk = _chunk_size(max(n_fits, 1), n_points, p, itemsize, device, chunk_size)
    fused = getattr(model, "expression", None) is not None
    use_compile = compile_choice(compile)
    params = np.empty((n_fits, p))
    stderr = np.empty((n_fits, p))
    covariance = np.empty((n_fits, p, p), dtype=np.float64 if itemsize == 8 else np.float32)
    chisqr = np.empty(n_fits)
    status = np.empty(n_fits, dtype=np.int8)
    iterations = np.empty(n_fits, dtype=np.int32)
    free_t = tuple(float(v) for v in free)
    held = ~np.asarray(free, dtype=bool)[None, :]  # fixed parameters keep the user's float64 value
    floor = max(RANK_TOL**2, _SCREEN_SAFETY * float(torch.finfo(dtype).eps))
    warmup = 0.0
    compiled_chunks = native_chunks = 0
    notes: dict = {}
    bar = _progress(progress, n_fits)
    kw = dict(tol=tol, max_iter=max_iter, dtype=dtype, device=device, chunk_size=chunk_size, compile=compile,
              likelihood=likelihood, progress=False, absolute_sigma=absolute_sigma)
    if whole and fused and use_compile is not False:  # the kernel ready: the whole batch in C
        done = solve_native(model, names, fused, inputs, y, w, theta0, lower, upper, free, tol=tol, max_iter=max_iter,
                            dtype=dtype, device=device, use_compile=use_compile, floor=floor,
                            bound_ulps=BOUND_ULPS * float(torch.finfo(dtype).eps), threads=torch.get_num_threads(),
                            bar=bar, likelihood=likelihood, chunk_size=chunk_size, absolute_sigma=absolute_sigma)
        if done is not None:
            if bar is not None:
                bar.close()
            solution = BatchedSolution(*(done[k] for k in ("params", "stderr", "chisqr", "n_used", "status",
                                                            "iterations", "timings", "at_bound", "likelihood",
                                                            "covariance")))
            rows = done["deferred"]
            if len(rows):  # Poisson fits with zero counts or bounds: the torch kernel ("auto" for
                # compile=True: torch.compile pays only for many such fits, and "auto" projects that)
                sub = ({k: (v[rows] if v.ndim == 2 else v) for k, v in inputs.items()}, y[rows], w[rows])
                rest = solve_batched(model, names, *sub, theta0[rows], lower[rows], upper[rows], free,
                                     **{**kw, "compile": "auto" if use_compile is True else compile}, restart=False,
                                     whole=False)
                _merge(solution, rows, rest)
                solution.timings.update(deferred=len(rows), compiled=rest.timings["compiled"],
                                        **{k: rest.timings[k] for k in ("compile",) if k in rest.timings})
            return _restart_infeasible(solution, likelihood and restart, model, names, inputs, y, w, theta0, lower,
                                       upper, free, kw)
    extra = {k: np.full(n_fits, np.nan) for k in ("deviance", "pearson", "loglike")} if likelihood else None
    n_used = np.count_nonzero(w > 0, axis=1)
    t_fit = time.perf_counter()
    for lo in range(0, n_fits, chunk):
        sl = slice(lo, min(lo + chunk, n_fits))
        start = off_flat_starts(model, names, fused, inputs, y, w, sl, theta0, lower, upper, free, device)
        chunk_inputs = {k: (v[sl] if v.ndim == 2 else v) for k, v in inputs.items()}  # per-fit x: this chunk's rows
        tensors = _chunk_tensors(chunk_inputs, y[sl], w[sl], start, lower[sl], upper[sl], n_used[sl], free_t,
                                 dtype, device, likelihood)
        key = compile_key(model, names, fused, tensors, tol)
        mode = chunk_mode(use_compile, key)
        fresh = key not in COMPILED

        def make_step(t, compiled):
            return _stepper(model, names, fused, compiled, t, tol)

        native, build_native = native_kernel(use_compile, model, names, fused, tensors, dtype, device, likelihood,
                                             notes)
        if native is not None:  # built: the whole loop in C
            from ..optim.batch_lm import init

            state = native.run(init(tensors["theta0"], tensors["status0"]), tensors, tol, max_iter,
                               torch.get_num_threads())
            first_iter_s, ran_compiled, ran_native = 0.0, False, native
        else:
            t_chunk = time.perf_counter()
            state, first_iter_s, ran_compiled, ran_native = _iterate(make_step, tensors, max_iter, mode, tol,
                                                                     build_native, (n_fits - sl.stop) / chunk)
            if build_native is not None and ran_native is None and not ran_compiled:  # torch ran what C could have
                add_eager_seconds(native_key(model, names, dtype), time.perf_counter() - t_chunk)
        if ran_compiled and fresh:
            warmup += first_iter_s
        compiled_chunks += ran_compiled
        native_chunks += ran_native is not None
        good = None
        if ran_native is not None:  # the standard errors and the end-point screen in C too
            se, full_rank, cov, good = ran_native.finish(state, tensors["n_used"], free_t, floor, stationary_threshold(tol),
                                                         absolute_sigma)
        else:
            se, full_rank, cov = finish_chunk(ran_compiled, state, tensors["n_used"], free_t, floor, likelihood,
                                              absolute_sigma)
        if ran_compiled and key in COMPILE_FAILED:
            notes["compile"] = f"torch.compile failed for this model; ran eagerly ({COMPILE_FAILED[key]})"
        params[sl] = np.where(held, theta0[sl], _on_bounds(state.theta, tensors, lower[sl], upper[sl]))
        stderr[sl] = se.double().cpu().numpy()
        covariance[sl] = cov.cpu().numpy()
        chisqr[sl] = state.chi2.double().cpu().numpy()
        st = state.status.cpu().numpy()
        status[sl] = np.where(st < 0, Status.MAX_ITERATIONS.code, st)
        iterations[sl] = state.iterations.cpu().numpy()
        eps = float(torch.finfo(dtype).eps)
        # Poisson: the Pearson scale, a zero count as one (as the kernel's floor and the float64 check)
        y_scale = np.sqrt(np.maximum(np.nan_to_num(y[sl]), 1.0)) if likelihood else y[sl]
        clear = clear_end_points(state, full_rank, params[sl], theta0[sl], lower[sl], upper[sl], y_scale, w[sl],
                                  free, eps=eps, threshold=stationary_threshold(tol), good=good)  # Poisson: Pearson scale
        check_end_points(model, names, fused, inputs, y, w, sl, params, stderr, chisqr, status, free, device,
                          start=theta0[sl], box=(lower[sl], upper[sl]), tol=tol, eps=eps, clear=clear,
                          likelihood=likelihood, absolute_sigma=absolute_sigma)
        if likelihood:  # float64 statistics at the end points; chisqr is the deviance
            undetermined_fits(status, stderr, params, theta0, sl, eps)
            for k, v in likelihood_statistics(model, names, fused, inputs, y, w, sl, params, device).items():
                extra[k][sl] = v
            chisqr[sl] = np.where(np.isfinite(chisqr[sl]), extra["deviance"][sl], chisqr[sl])
        if bar is not None:
            bar.advance(sl.stop - sl.start)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t_fit
    timings = {"warmup_s": warmup, "fit_s": elapsed - warmup, "fits": n_fits,
               "fits_per_s": n_fits / max(elapsed - warmup, 1e-12), "path": "fused" if fused else "general",
               "compiled": compiled_chunks > 0 and "compile" not in notes, "native": native_chunks > 0,
               "device": str(device), "chunk_size": chunk, **notes}
    at_bound = ((params == lower) | (params == upper)) & np.asarray(free, dtype=bool)[None, :]
    solution = BatchedSolution(params, stderr, chisqr, n_used, status, iterations, timings, at_bound, extra, covariance)
    return _restart_infeasible(solution, likelihood and restart, model, names, inputs, y, w, theta0, lower, upper,
                               free, kw)


def _restart_infeasible(solution, restart: bool, model, names, inputs, y, w, theta0, lower, upper, free, kw):
    """The solution, with each likelihood fit whose start is infeasible (not_finite at its first
    iteration) refitted from its least-squares fit (``restart``)."""
    bad = np.nonzero((solution.status == Status.NOT_FINITE.code) & (solution.iterations <= 1))[0] if restart else ()
    if not len(bad):
        return solution
    sub = ({k: (v[bad] if v.ndim == 2 else v) for k, v in inputs.items()}, y[bad], w[bad])
    box = (lower[bad], upper[bad], free)
    ls = solve_batched(model, names, *sub, theta0[bad], *box, **{**kw, "likelihood": None})
    start = np.where(np.isfinite(ls.params), ls.params, theta0[bad])
    again = solve_batched(model, names, *sub, start, *box, **kw, restart=False)
    again.iterations = again.iterations + ls.iterations
    _merge(solution, bad, again)
    solution.timings["restarted"] = len(bad)
    return solution


def _merge(solution, rows, part) -> None:
    """The fits ``rows`` of ``solution`` replaced by ``part`` (a solution of just those), in place."""
    for name in ("params", "stderr", "chisqr", "status", "iterations", "n_used", "at_bound", "covariance"):
        getattr(solution, name)[rows] = getattr(part, name)
    for k, v in (solution.likelihood or {}).items():
        v[rows] = part.likelihood[k]


# -- chunks and memory ------------------------------------------------------------------------
def _memory_budget(dev) -> int:
    """Bytes a chunk may use: half the free GPU memory, a quarter of the free CPU memory
    (2 GiB when it cannot be read)."""
    free = available_bytes(dev)
    if free is None:
        return 2 << 30
    return int(free * (0.5 if dev.type == "cuda" else 0.25))


def _chunk_size(n_fits: int, n_points: int, n_params: int, itemsize: int, dev, chunk_size) -> int:
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        return min(int(chunk_size), n_fits)
    # working set per fit: y, w, residuals, predictions and the Jacobian (P columns), with
    # room for temporaries
    per_fit = (n_params + 6) * n_points * itemsize * 3 + (n_params * n_params + 4 * n_params) * itemsize * 4
    cap = 4_000_000
    if dev.type == "cpu":
        # an eager step is ~40 passes over (chunk, points) tensors: kept near the CPU caches
        # they run several times faster than from main memory
        cap = max(COMPACT_MIN, CPU_CHUNK_BYTES // (n_points * itemsize))
    return max(1, min(n_fits, _memory_budget(dev) // per_fit, cap))


def _chunk_tensors(inputs, y, w, theta0, lower, upper, n_used, free, dtype, dev, likelihood=None) -> dict:
    import torch

    def t(a):
        return torch.as_tensor(np.require(a, None, "CW"), dtype=dtype, device=dev)

    y_t = t(y)
    y_t = torch.where(torch.isfinite(y_t), y_t, torch.zeros_like(y_t))  # NaN points have weight 0
    status0 = np.where(n_used < sum(free), Status.TOO_FEW_POINTS.code, -1).astype(np.int64)
    bounded = any_finite_bound(lower, upper, free)  # the kernel's box rules (a constant per chunk)
    w_t = t(w)
    # every weight 1 (nothing masked, nothing weighted): the kernel skips the weights (a
    # constant per chunk, like bounded)
    unit = bool((w == 1).all())
    return {"y": y_t, "w": w_t, "theta0": t(theta0), "lower": t(lower), "upper": t(upper), "bounded": bounded,
            "unit": unit, "likelihood": likelihood,
            # a Poisson fit's residuals on the Pearson scale, sum(w y^2 / mu) ~ sum(w y); one count for a zero one
            "floor2": residual_floor2(torch.sqrt(y_t.clamp(min=1.0)) if likelihood else y_t, w_t),
            "n_used": t(n_used.astype(float)), "free": free, "status0": torch.as_tensor(status0, device=dev),
            "inputs": {k: t(v) for k, v in inputs.items()}}


def _take(tensors: dict, keep) -> dict:
    out = dict(tensors)
    for k in ("y", "w", "lower", "upper", "theta0", "status0", "n_used", "floor2"):
        out[k] = tensors[k][keep]
    out["inputs"] = {k: (v[keep] if v.dim() == 2 else v) for k, v in tensors["inputs"].items()}
    return out


def _progress(progress, n_fits: int):
    """fit_many's bar over fits, or None. It appears only once the batch has run
    PROGRESS_DELAY seconds, so small batches print nothing."""
    from ..callbacks import ChunkProgress, wants_progress

    return ChunkProgress(n_fits, "fit_many") if wants_progress(progress) else None


# -- the residual, the Jacobian and the step ------------------------------------------------------
def _stepper(model, names, fused, use_compile, tensors, tol):
    """The per-iteration function for this chunk: BatchState -> BatchState. Compiled functions
    take a flat tuple of tensors and are cached per model and shape in the process (and by
    inductor on disk)."""
    from ..optim.batch_lm import BatchState, step

    inputs, y, w = tensors["inputs"], tensors["y"], tensors["w"]
    lower, upper, free, bounded = tensors["lower"], tensors["upper"], tensors["free"], tensors["bounded"]
    floor2 = tensors["floor2"]
    facts = {"bounded": bounded, "unit_weights": tensors["unit"], "constants": constant_partials(model, names, fused),
             "likelihood": tensors["likelihood"]}
    if not use_compile:
        rj = batch_residual_and_jacobian(model, names, inputs, y, fused=fused)
        return lambda state: step(rj, state, y, w, lower, upper, free, tol, floor2=floor2, **facts)
    import torch

    key = compile_key(model, names, fused, tensors, tol)
    compiled = COMPILED.get(key)
    keys = list(inputs)
    if compiled is None:
        if fused:
            model.value_and_partials()

        def flat(*args):
            fields, (y, w, lower, upper, floor2), xs = (args[:_N_FIELDS], args[_N_FIELDS:_N_FIELDS + 5],
                                                        args[_N_FIELDS + 5:])
            if fused:
                fn = batch_residual_and_jacobian(model, names, dict(zip(keys, xs)), y, fused=True)
            else:
                fn = traceable_residual_and_jacobian(model, names, dict(zip(keys, xs)), y)
            st = step(fn, BatchState(*fields), y, w, lower, upper, free, tol, floor2=floor2, **facts)
            return _fields(st)

        compiled = quiet(torch.compile(flat, dynamic=True))
        COMPILED[key] = compiled
    xs = [inputs[k] for k in keys]
    if key in COMPILE_FAILED:
        return _stepper(model, names, fused, False, tensors, tol)

    def run(state):
        if key in COMPILE_FAILED:
            return eager(state)
        try:
            return BatchState(*compiled(*_fields(state), y, w, lower, upper, floor2, *xs))
        except Exception as exc:  # torch.compile could not trace or lower this model: run it eagerly
            if not is_compile_failure(exc):
                raise
            COMPILE_FAILED[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            return eager(state)

    def eager(state):
        return _stepper(model, names, fused, False, tensors, tol)(state)

    return run


def constant_partials(model, names, fused) -> tuple:
    """((j, c), ...): the formula's partial derivatives that are a number c everywhere (an
    offset's 1), from its symbolic program; the kernel forms their sums without products."""
    if not fused:
        return ()
    from ..formula.symbolic import value_and_partials_program
    from ..formula.tree import Num

    _, outputs = value_and_partials_program(model.expression, tuple(names))
    return tuple((j, float(t.value)) for j, t in enumerate(outputs[1:]) if isinstance(t, Num))


# -- the loop -----------------------------------------------------------------------------------
def _iterate(make_step, tensors, max_iter: int, mode, tol: float = 0.0, build_native=None,
             later_chunks: float = 0.0):
    """Run up to max_iter iterations. Finished fits are frozen by the kernel; once half of
    the batch has finished, the running ones are gathered into a smaller batch so that
    finished fits stop costing work. ``mode``: True (compiled), False (eager) or "auto"
    (eager, switching after the first iteration, when the rest would take long enough to pay
    for building it, to the native kernel (``build_native()`` builds it, see
    :func:`worth_building`, which counts ``later_chunks`` of this call too) or else to
    torch.compile (:func:`worth_compiling`)). Returns
    (final state for all fits, seconds of the first compiled call, whether compiled steps
    ran, the native kernel if it ran, else None)."""
    import torch

    from ..optim.batch_lm import RUNNING, BatchState, init

    state = init(tensors["theta0"], tensors["status0"], tensors["likelihood"])
    full = state
    rows = None  # indices (into the chunk) of the fits in `state`; None = all of them
    compiled = mode is True
    step = make_step(tensors, compiled)
    first, timing_first = 0.0, compiled
    for it in range(max_iter):
        t0 = time.perf_counter()
        state = step(state)
        elapsed = time.perf_counter() - t0
        if timing_first:
            first, timing_first = elapsed, False
        running = state.status == RUNNING
        n_running = int(running.sum())
        if n_running == 0:
            break
        first_auto = mode == "auto" and not compiled and it == 0
        if first_auto and build_native is not None and worth_building(elapsed, max_iter, tensors["theta0"].shape[1],
                                                                      later_chunks):
            native = build_native()
            if native is not None:  # the rest of the loop in C
                return native.run(state, tensors, tol, max_iter - 1, torch.get_num_threads()), 0.0, False, native
        if first_auto and worth_compiling(elapsed, max_iter, state.theta.device):
            compiled = timing_first = True
            step = make_step(tensors, True)
        size = running.shape[0]
        if it + 1 < max_iter and size >= COMPACT_MIN and n_running <= COMPACT_FRACTION * size:
            full = _write_back(full, rows, state)
            keep = torch.nonzero(running).squeeze(-1)
            rows = keep if rows is None else rows[keep]
            state = BatchState(*(None if t is None else t[keep] for t in _fields(state)))
            tensors = _take(tensors, keep)
            step = make_step(tensors, compiled)
    return _write_back(full, rows, state), first, compiled, None


def _fields(state) -> tuple:
    return (state.theta, state.trial, state.lam, state.chi2, state.a, state.g, state.status, state.iterations,
            state.snaps, state.probing, state.damping)


_N_FIELDS = 11


def _write_back(full, rows, state):
    """Copy the compacted fits' state into the full-batch state (in place: the full state's
    tensors belong to this run alone)."""
    if rows is None:
        return state
    for f, s in zip(_fields(full), _fields(state)):
        if f is not None:
            f[rows] = s
    return full


# -- standard errors and the end-point checks ----------------------------------------------------
def _on_bounds(theta, tensors, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """The float64 parameters (B, P): a coordinate that ended on a bound in the working dtype,
    or within ``BOUND_ULPS`` units of its rounding (float32 stop-short steps end a few ulps
    inside a bound the optimum lies on), is reported on the user's bound exactly (a float32
    bound such as 0.1 differs from the float64 one), so that the end-point checks (which test
    such a coordinate as active, in float64) and the result see it on the bound."""
    lo_t, hi_t = tensors["lower"], tensors["upper"]
    import torch

    values = theta.double().cpu().numpy()
    ulps = BOUND_ULPS * torch.finfo(theta.dtype).eps
    at_lo = (theta <= lo_t + ulps * lo_t.abs()).cpu().numpy()
    at_hi = (theta >= hi_t - ulps * hi_t.abs()).cpu().numpy()
    return np.where(at_lo, lower, np.where(at_hi, upper, values))


#: units of rounding (eps |bound|) within which a final coordinate counts as on its bound
BOUND_ULPS = 4.0

