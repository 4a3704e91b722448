"""A whole fit_many batch in one C call per thread: start, loop, standard errors and screens.

The native kernel (:mod:`gradfit.optim.native_lm`) continues a
:class:`~gradfit.optim.batch_lm.BatchState` chunk by chunk, with the state, the statistics and
the end-point screen in torch and numpy around it. Where the kernel is ready before the batch
starts (``compile=True``, or "auto" with the library built by this or an earlier process), none
of that state needs to leave C: ``gf_many`` takes the user's arrays as they are (NumPy, the
working dtype) and, for each fit, counts its points and computes its residual floor, starts it
(batch_lm.init), iterates (native_lm's ``iterate``: the same algorithm and order), finishes it
(``finish_one``: standard errors, covariance, full-rank screen, range cosine), reports parameters
that ended on a bound on the user's float64 bound (lsq/batched._on_bounds) and applies the rest
of lsq/end_points.clear_end_points (columns clearly above the vanishing limit, no parameter on a
bound). It writes straight into the result's arrays.

Threads take blocks of fits from one shared counter (fits differ in their iteration counts by
10x, so equal static shares leave one thread waiting; ctypes releases the GIL during the call).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MANY_SOURCE", "OUTPUTS", "allocate", "run_many"]

#: C appended to native_lm's kernel source (needs its fit_state, iterate and finish_one)
MANY_SOURCE = r"""
/* Fits claimed from *next in blocks of `block` until n: every output row written (see the
   module docstring of optim/native_batch.py). theta0, start, lower, upper (n, P) are the user's
   float64 values (lower/upper NULL when no bound is finite); returns -2 when the work array
   cannot be allocated. */
long gf_many(long n, long m, const real *const *xs, const long *x_stride, const real *y, const real *w,
             const double *theta0, const double *start, const double *lower, const double *upper,
             const real *free_, real tol, long steps, real floor_factor, real floor_, real half_threshold,
             double strong_scale, real bound_ulps, long max_iter_code, long too_few_code, long *next, long block,
             double *params, double *stderr_, real *cov, double *chisqr, signed char *status, int *iterations,
             unsigned char *clear, long *n_used) {
    real *cols = malloc(sizeof(real) * (m > 0 ? m : 1) * (P + 2));
    if (!cols) return -2;
    real n_free = 0;
    for (int i = 0; i < P; i++) n_free += free_[i];
    for (;;) {
        long first = __atomic_fetch_add(next, block, __ATOMIC_RELAXED);
        if (first >= n) break;
        long last = first + block < n ? first + block : n;
        for (long b = first; b < last; b++) {
            const real *yb = y + b * m, *wb = w + b * m;
            long used = 0, unit = 1;
            real sum_wyy = 0;
            double data_norm2 = 0;
            for (long j = 0; j < m; j++) {
                int u = wb[j] > 0;
                real v = u ? wb[j] * yb[j] * yb[j] : (real)0;
                used += u;
                unit = unit && wb[j] == 1;
                sum_wyy += v;
                data_norm2 += u ? (double)wb[j] * (double)yb[j] * (double)yb[j] : 0.0;
            }
            real lo[P], hi[P];
            int bounded = 0;
            if (lower) for (int i = 0; i < P; i++) {
                lo[i] = (real)lower[b * P + i];
                hi[i] = (real)upper[b * P + i];
                bounded = bounded || (free_[i] != 0 && (isfinite(lo[i]) || isfinite(hi[i])));
            }
            fit_state s;
            for (int i = 0; i < P; i++) { s.th[i] = s.tr[i] = (real)start[b * P + i]; s.G[i] = 0; }
            for (int i = 0; i < P * P; i++) s.A[i] = 0;
            s.lam = (real)LAMBDA0; s.chi2 = (real)INFINITY;
            s.st = used < n_free ? too_few_code : RUNNING;
            s.it = 0; s.snaps = 0; s.probing = 0;
            /* every weight 1: the unweighted columns (the same sums: a product with 1 is exact) */
            iterate(&s, m, xs, x_stride, b, yb, unit ? 0 : wb, floor_factor * sum_wyy, free_, tol, steps,
                    bounded ? lo : 0, bounded ? hi : 0, cols);
            real se[P];
            unsigned char full_rank, good;
            finish_one(s.A, s.G, s.chi2, (real)used, free_, n_free, floor_, half_threshold, se,
                       cov + b * P * P, &full_rank, &good);
            int strong = 1, interior = 1;
            for (int i = 0; i < P; i++) {
                double value;
                if (free_[i] == 0) value = theta0[b * P + i];
                else if (bounded && s.th[i] <= lo[i] + bound_ulps * fabs(lo[i])) value = lower[b * P + i];
                else if (bounded && s.th[i] >= hi[i] - bound_ulps * fabs(hi[i])) value = upper[b * P + i];
                else value = (double)s.th[i];
                params[b * P + i] = value;
                stderr_[b * P + i] = (double)se[i];
                if (free_[i] == 0) continue;
                double size = fabs(value) > fabs(theta0[b * P + i]) ? fabs(value) : fabs(theta0[b * P + i]);
                size = size > 1.0 ? size : 1.0;
                strong = strong && ((double)s.A[i * P + i] * size * size > strong_scale * data_norm2);
                if (lower) interior = interior && value > lower[b * P + i] && value < upper[b * P + i];
                else interior = interior && fabs(value) < INFINITY;
            }
            chisqr[b] = (double)s.chi2;
            status[b] = (signed char)(s.st < 0 ? max_iter_code : s.st);
            iterations[b] = s.it;
            clear[b] = good && full_rank && strong && interior;
            n_used[b] = used;
        }
    }
    free(cols);
    return 0;
}
"""

#: fits per claim from the shared counter: small enough to balance two threads' loads, large
#: enough that the counter is touched ~once per 100 us
BLOCK = 256


#: what gf_many writes, in its argument order
OUTPUTS = ("params", "stderr", "covariance", "chisqr", "status", "iterations", "clear", "n_used")


def allocate(n: int, p: int, dtype) -> dict:
    """gf_many's output arrays for n fits of p parameters (covariance in the working ``dtype``):
    params, stderr, chisqr float64, status int8, iterations int32, clear bool, n_used int64."""
    return {"params": np.empty((n, p)), "stderr": np.empty((n, p)), "covariance": np.empty((n, p, p), dtype=dtype),
            "chisqr": np.empty(n), "status": np.empty(n, dtype=np.int8), "iterations": np.empty(n, dtype=np.int32),
            "clear": np.empty(n, dtype=bool), "n_used": np.empty(n, dtype=np.int64)}


def run_many(lib, real, input_names: tuple[str, ...], inputs: dict, y: np.ndarray, w: np.ndarray,
             theta0: np.ndarray, start: np.ndarray, lower: np.ndarray | None, upper: np.ndarray | None,
             free: np.ndarray, out: dict, *, tol: float, max_iter: int, floor_factor: float, floor: float,
             half_threshold: float, strong_scale: float, bound_ulps: float, max_iter_code: int,
             too_few_code: int, threads: int) -> None:
    """Every fit of the batch through ``gf_many`` of ``lib`` (a native_lm kernel library whose
    ``real`` is the ctypes float type), into ``out`` (:func:`allocate`'s arrays, or row slices
    of them). Arrays as lsq/batched.solve_batched's, C-contiguous: y, w (B, M) and the inputs
    ((M,) or (B, M)) in the working dtype; theta0, start, lower, upper (B, P) float64, lower and
    upper None without a finite bound.

    Raises MemoryError where the kernel cannot allocate its work array."""
    import ctypes
    import threading

    fn = lib.gf_many
    if fn.restype is not ctypes.c_long:
        ptr = ctypes.c_void_p
        fn.argtypes = [ctypes.c_long, ctypes.c_long, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, real, ctypes.c_long,
                       real, real, real, ctypes.c_double, real, ctypes.c_long, ctypes.c_long, ptr, ctypes.c_long,
                       *[ptr] * len(OUTPUTS)]
        fn.restype = ctypes.c_long
    n, m = y.shape
    xs = [inputs[k] for k in input_names]
    x_ptrs = (ctypes.c_void_p * max(len(xs), 1))(*[x.ctypes.data for x in xs])
    x_stride = (ctypes.c_long * max(len(xs), 1))(*[(m if x.ndim == 2 else 0) for x in xs])
    counter = np.zeros(1, dtype=np.int64)
    free_r = np.asarray(free, dtype=y.dtype)
    bounds = (None, None) if lower is None else (lower.ctypes.data, upper.ctypes.data)
    outputs = [out[k].ctypes.data for k in OUTPUTS]
    codes: list = []

    def work() -> None:
        codes.append(fn(n, m, x_ptrs, x_stride, y.ctypes.data, w.ctypes.data, theta0.ctypes.data, start.ctypes.data,
                        *bounds, free_r.ctypes.data, tol, max_iter, floor_factor, floor, half_threshold, strong_scale,
                        bound_ulps, max_iter_code, too_few_code, counter.ctypes.data, BLOCK, *outputs))

    threads = max(1, min(int(threads), -(-n // BLOCK)))
    # the other threads on their own, this one works too (ctypes drops the GIL during the call)
    others = [threading.Thread(target=work) for _ in range(threads - 1)]
    for t in others:
        t.start()
    work()
    for t in others:
        t.join()
    if any(code != 0 for code in codes):
        raise MemoryError("the native kernel could not allocate its work array")
