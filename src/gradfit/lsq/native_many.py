"""fit_many's whole batch in the native kernel, when the kernel is ready before the batch starts.

:func:`gradfit.lsq.batched.solve_batched` runs a batch chunk by chunk through torch tensors, so
that a chunk may start eagerly and move to torch.compile or the native kernel midway (the
compile="auto" tiering). When the formula's kernel is already loaded or in the disk cache (or
``compile=True`` builds it), nothing needs torch: :func:`solve_native` hands the NumPy arrays to
``gf_many`` (:mod:`gradfit.optim.native_batch`), which starts, iterates and finishes every fit and
clears those whose end points pass every test with a wide margin, and then runs the float64
end-point checks (:func:`gradfit.lsq.end_points.check_end_points`) on the others only. The
result is the chunked path's, fit for fit (the same C loop, the same screens).
"""

from __future__ import annotations

import time

import numpy as np

from ..data.float32 import within_float32_range
from ..models.parameters import any_finite_bound
from ..optim.batch_lm import EPS64, RESIDUAL_FLOOR
from ..stats import VANISH_FACTOR, stationary_threshold
from ..status import Status
from . import compiled
from .batch_starts import off_flat_starts
from .end_points import check_end_points, undetermined_fits

__all__ = ["DEFERRED", "SLAB", "solve_native"]

#: the status gf_many gives a Poisson fit it leaves to the torch kernel (a zero count, whose
#: positivity-edge steps are optim/positive_step.py's, or a finite bound)
DEFERRED = 127

#: fits per gf_many call when a progress bar is shown (it advances between calls)
SLAB = 1 << 18


def solve_native(model, names, fused: bool, inputs: dict, y: np.ndarray, w: np.ndarray, theta0: np.ndarray,
                 lower: np.ndarray, upper: np.ndarray, free, *, tol: float, max_iter: int, dtype, device, use_compile,
                 floor: float, bound_ulps: float, threads: int, bar=None, likelihood=None,
                 chunk_size: int | None = None, absolute_sigma: bool = False) -> dict | None:
    """Every fit in C (see the module docstring), or None where the native kernel does not
    cover the batch or is not ready (compile=False; "auto" before the tiering has paid for a
    build: the chunked path then decides). Starts on a bound where the model is flat move inside
    (lsq/batch_starts.py). ``likelihood="poisson"``: Fisher scoring of the deviance in the lanes;
    fits with a zero count or a finite bound are left to the caller (``deferred``). Returns the
    arrays of a BatchedSolution (params, stderr, chisqr, n_used, status, iterations, at_bound,
    covariance, likelihood), ``deferred`` (indices) and ``timings``. ``chunk_size``: fits per C call
    (the user's, else all of them, or :data:`SLAB` between progress updates)."""
    import torch

    if use_compile is False or not compiled.native_eligible(fused, device, likelihood, whole=True):
        return None
    from ..optim.native_batch import allocate, poisson_statistics, run_many
    from ..optim.native_lm import kernel

    input_names = tuple(inputs)
    build = use_compile is True or compiled.spent_enough(compiled.native_key(model, names, dtype), len(names))
    native, _ = kernel(model, names, input_names, dtype, build=build)
    if native is None:
        return None
    t0 = time.perf_counter()
    n_fits, p = len(y), len(names)
    cols = np.asarray(free, dtype=bool)
    bounded = any_finite_bound(lower, upper, free)
    start = off_flat_starts(model, names, fused, inputs, y, w, slice(0, n_fits), theta0, lower, upper, free,
                            device) if bounded else theta0
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    work = {k: np.ascontiguousarray(v, dtype=np_dtype) for k, v in inputs.items()}
    yw = np.ascontiguousarray(y, dtype=np_dtype)
    # every fit's weights one row (data/arrays.batch_weights' broadcast: nothing masked): that row
    ww = np.ascontiguousarray(w[0] if w.ndim == 2 and w.strides[0] == 0 else w, dtype=np_dtype)
    if likelihood and not within_float32_range(yw) and not np.isfinite(yw).all():  # (unused points: weight 0)
        yw = np.where(np.isfinite(yw), yw, np.zeros((), np_dtype))
    theta0, start = (np.ascontiguousarray(a, dtype=np.float64) for a in (theta0, start))
    low, high = ((np.ascontiguousarray(a, dtype=np.float64) for a in (lower, upper)) if bounded else (None, None))
    eps = float(torch.finfo(dtype).eps)
    constants = dict(tol=tol, max_iter=max_iter, floor_factor=max(RESIDUAL_FLOOR * EPS64, 100.0 * eps) ** 2,
                     floor=floor, half_threshold=0.5 * stationary_threshold(tol),
                     strong_scale=(10.0 * VANISH_FACTOR * eps) ** 2, bound_ulps=bound_ulps,
                     max_iter_code=Status.MAX_ITERATIONS.code, too_few_code=Status.TOO_FEW_POINTS.code,
                     threads=threads)
    out = allocate(n_fits, p, np_dtype)
    poisson = likelihood == "poisson"
    slab = chunk_size or (SLAB if bar is not None else max(n_fits, 1))
    for lo in range(0, n_fits, slab):
        sl = slice(lo, min(lo + slab, n_fits))
        rows = {k: (v[sl] if v.ndim == 2 else v) for k, v in work.items()}
        run_many(native.lib, native.real, input_names, rows, yw[sl], ww if ww.ndim == 1 else ww[sl], theta0[sl],
                 start[sl], None if low is None else low[sl], None if high is None else high[sl], free,
                 {k: v[sl] for k, v in out.items()}, **constants, poisson=poisson, absolute_sigma=absolute_sigma,
                 deferred_code=DEFERRED)
        if bar is not None:
            bar.advance(sl.stop - sl.start)
    everything = slice(0, n_fits)
    check_end_points(model, names, fused, inputs, y, w, everything, out["params"], out["stderr"], out["chisqr"],
                     out["status"], free, device, start=theta0, box=(lower, upper), tol=tol, eps=eps,
                     clear=out["clear"], likelihood=likelihood, absolute_sigma=absolute_sigma)
    out["likelihood"] = None
    if poisson:  # float64 statistics at the end points; chisqr is the deviance
        undetermined_fits(out["status"], out["stderr"], out["params"], theta0, everything, eps)
        out["likelihood"] = poisson_statistics(native.lib, inputs, input_names, yw, ww, out["params"], threads)
        out["chisqr"] = np.where(np.isfinite(out["chisqr"]), out["likelihood"]["deviance"], out["chisqr"])
    out["deferred"] = np.nonzero(out["status"] == DEFERRED)[0]
    out["at_bound"] = (((out["params"] == lower) | (out["params"] == upper)) & cols[None, :] if bounded
                       else np.zeros((n_fits, p), dtype=bool))
    elapsed = time.perf_counter() - t0
    out["timings"] = {"warmup_s": 0.0, "fit_s": elapsed, "fits": n_fits, "fits_per_s": n_fits / max(elapsed, 1e-12),
                      "path": "fused", "compiled": False, "native": True, "device": str(device),
                      "chunk_size": min(slab, n_fits)}
    return out
