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

__all__ = ["MANY_SOURCE", "OUTPUTS", "allocate", "poisson_statistics", "poisson_statistics_source", "run_many"]

#: C appended to native_lm's kernel source (needs its fit_state, iterate and finish_one)
MANY_SOURCE = r"""
#include <string.h>
/* above this many points per fit the per-fit loop (vectorized over the points) is used */
#define LANES_MAX_POINTS 4096
/* What a fit needs beside its state, from its data, and the batch's arrays and constants. */
typedef struct {
    long used;
    double data_norm2;
    int bounded;
    real lo[P], hi[P], floor2;
} fit_info;

typedef struct {
    long n, m, w_stride;
    const real *const *xs;
    const long *x_stride;
    const real *y, *w, *free_;
    const double *theta0, *start, *lower, *upper;
    real n_free, tol, floor_factor, floor_, half_threshold, bound_ulps;
    long steps, max_iter_code, too_few_code, poisson, absolute, deferred_code;
    double strong_scale;
    long *next, block, cursor, last;
    double *params, *stderr_, *chisqr;
    real *cov;
    signed char *status;
    int *iterations;
    unsigned char *clear;
    long *n_used;
} many_ctx;

/* fit b's points used, residual floor, bounds and start (batch_lm.init; TOO_FEW_POINTS where it
   has fewer points than free parameters); Poisson: the Pearson scale sum(w max(y, 1)) for the
   floor and the screens, and whether a used count is zero (returned) */
static int prepare(const many_ctx *c, long b, fit_state *s, fit_info *f) {
    const real *yb = c->y + b * c->m, *wb = c->w + b * c->w_stride;
    long used = 0;
    int zero = 0;
    real sum_wyy = 0;
    double data_norm2 = 0;
    for (long j = 0; j < c->m; j++) {
        int u = wb[j] > 0;
        real yy = c->poisson ? (yb[j] > 1 ? yb[j] : (real)1) : yb[j] * yb[j];
        used += u;
        zero = zero || (u && yb[j] == 0);
        sum_wyy += u ? wb[j] * yy : (real)0;
        data_norm2 += u ? (double)wb[j] * (c->poisson ? (double)yy : (double)yb[j] * (double)yb[j]) : 0.0;
    }
    f->used = used;
    f->data_norm2 = data_norm2;
    f->floor2 = c->floor_factor * sum_wyy;
    f->bounded = 0;
    if (c->lower) for (int i = 0; i < P; i++) {
        f->lo[i] = (real)c->lower[b * P + i];
        f->hi[i] = (real)c->upper[b * P + i];
        f->bounded = f->bounded || (c->free_[i] != 0 && (isfinite(f->lo[i]) || isfinite(f->hi[i])));
    }
    for (int i = 0; i < P; i++) { s->th[i] = s->tr[i] = (real)c->start[b * P + i]; s->G[i] = 0; }
    for (int i = 0; i < P * P; i++) s->A[i] = 0;
    s->lam = LAMBDA0; s->chi2 = (real)INFINITY;
    s->st = used < c->n_free ? c->too_few_code : RUNNING;
    s->it = 0; s->snaps = 0; s->probing = 0;
    return zero;
}

/* fit b's outputs from its final state and its finish (standard errors, screens; the covariance
   already written): the parameters (on the user's float64 bound where they ended on it) and `clear` */
static void emit_fit(const many_ctx *c, long b, const fit_state *s, const fit_info *f, const real *se, int full_rank,
                     int good) {
    int strong = 1, interior = 1;
    const double *theta0 = c->theta0 + b * P;
    for (int i = 0; i < P; i++) {
        double value;
        if (c->free_[i] == 0) value = theta0[i];
        else if (f->bounded && s->th[i] <= f->lo[i] + c->bound_ulps * fabs(f->lo[i])) value = c->lower[b * P + i];
        else if (f->bounded && s->th[i] >= f->hi[i] - c->bound_ulps * fabs(f->hi[i])) value = c->upper[b * P + i];
        else value = (double)s->th[i];
        c->params[b * P + i] = value;
        c->stderr_[b * P + i] = (double)se[i];
        if (c->free_[i] == 0) continue;
        double size = fabs(value) > fabs(theta0[i]) ? fabs(value) : fabs(theta0[i]);
        size = size > 1.0 ? size : 1.0;
        strong = strong && ((double)s->A[i * P + i] * size * size > c->strong_scale * f->data_norm2);
        if (c->lower) interior = interior && value > c->lower[b * P + i] && value < c->upper[b * P + i];
        else interior = interior && fabs(value) < INFINITY;
    }
    c->chisqr[b] = (double)s->chi2;
    c->status[b] = (signed char)(s->st < 0 ? c->max_iter_code : s->st);
    c->iterations[b] = s->it;
    c->clear[b] = good && full_rank && strong && interior;
    c->n_used[b] = f->used;
}

/* fit b's finish (finish_one: standard errors, covariance, screens) and outputs */
static void retire(const many_ctx *c, long b, const fit_state *s, const fit_info *f) {
    real se[P];
    unsigned char full_rank, good;
    finish_one(s->A, s->G, s->chi2, (real)f->used, c->free_, c->n_free, c->floor_, c->half_threshold,
               (int)(c->poisson || c->absolute),
               se, c->cov + b * P * P, &full_rank, &good);
    emit_fit(c, b, s, f, se, full_rank, good);
}

/* lane l of S as one fit's state */
static void lane_state(const lanes_t *S, int l, fit_state *s) {
    for (int i = 0; i < P; i++) { s->th[i] = S->th[i][l]; s->tr[i] = S->tr[i][l]; s->G[i] = S->G[i][l]; }
    for (int i = 0; i < P; i++)
        for (int k = 0; k <= i; k++) s->A[i * P + k] = s->A[k * P + i] = S->A[i * (i + 1) / 2 + k][l];
    s->lam = S->lam[l]; s->chi2 = S->chi2[l]; s->st = S->st[l]; s->it = S->it[l]; s->snaps = 0; s->probing = 0;
}

/* finished fits waiting for their finish, which runs across lanes once L have gathered */
typedef struct {
    lanes_t R;
    long fit[L];
    fit_info info[L];
    int n;
} finish_buffer;

static void flush(const many_ctx *c, finish_buffer *F) {
#if LANES_FINISH
    real se[P][L] __attribute__((aligned(64))), cov[P * P][L] __attribute__((aligned(64)));
    mint full_rank[L] __attribute__((aligned(64))), good[L] __attribute__((aligned(64)));
    lanes_finish(&F->R, c->free_, c->n_free, c->floor_, c->half_threshold, (int)(c->poisson || c->absolute), se, cov,
                 full_rank, good);
    for (int k = 0; k < F->n; k++) {
        fit_state s;
        real sek[P];
        long b = F->fit[k];
        lane_state(&F->R, k, &s);
        for (int i = 0; i < P; i++) sek[i] = se[i][k];
        for (int q = 0; q < P * P; q++) c->cov[b * P * P + q] = cov[q][k];
        emit_fit(c, b, &s, &F->info[k], sek, full_rank[k] != 0, good[k] != 0);
    }
#endif
    F->n = 0;
}

/* the next fit of this thread (blocks of c->block claimed from the shared counter), or -1 */
static long claim(many_ctx *c) {
    if (c->cursor >= c->last) {
        long first = __atomic_fetch_add(c->next, c->block, __ATOMIC_RELAXED);
        if (first >= c->n) return -1;
        c->cursor = first;
        c->last = first + c->block < c->n ? first + c->block : c->n;
    }
    return c->cursor++;
}

/* fit b start to end in the per-fit loop (bounded fits, fits that cannot start, long data) */
static void run_scalar(const many_ctx *c, long b, fit_state *s, const fit_info *f, real *cols) {
    iterate(s, c->m, c->xs, c->x_stride, b, c->y + b * c->m, c->w + b * c->w_stride, f->floor2, c->free_, c->tol, c->steps,
            f->bounded ? f->lo : 0, f->bounded ? f->hi : 0, cols);
    retire(c, b, s, f);
}

/* lane l takes the next fit that runs in lanes (the others run start to end on the way);
   returns 0 when this thread has no fits left (the lane stays empty) */
static int fill(many_ctx *c, lanes_t *S, int l, long *fit_of, fit_info *info, real *const *xl, real *yl, real *wl,
                real *cols) {
    for (;;) {
        long b = claim(c);
        if (b < 0) { fit_of[l] = -1; return 0; }
        fit_state s;
        int zero = prepare(c, b, &s, &info[l]);
        /* Poisson fits with a bound or a zero count (the positivity edge's steps) are left to the torch kernel */
        if (c->poisson && (info[l].bounded || zero) && s.st == RUNNING) { c->status[b] = (signed char)c->deferred_code; continue; }
        if (info[l].bounded || s.st != RUNNING || c->steps < 1) { run_scalar(c, b, &s, &info[l], cols); continue; }
        const long m = c->m;
        const real *yb = c->y + b * m, *wb = c->w + b * c->w_stride;
        for (long j = 0; j < m; j++) { yl[j * L + l] = yb[j]; wl[j * L + l] = wb[j]; }
        for (int q = 0; q < NIN; q++) if (c->x_stride[q])
            for (long j = 0; j < m; j++) xl[q][j * L + l] = c->xs[q][b * c->x_stride[q] + j];
        for (int i = 0; i < P; i++) { S->th[i][l] = s.th[i]; S->tr[i][l] = s.tr[i]; S->G[i][l] = 0; }
        for (int i = 0; i < NTRI; i++) S->A[i][l] = 0;
        S->lam[l] = s.lam; S->chi2[l] = s.chi2; S->floor2[l] = info[l].floor2; S->st[l] = RUNNING; S->it[l] = 0;
        fit_of[l] = b;
        return 1;
    }
}

/* lane l's fit, finished (or at its iteration cap), to the finish buffer (its finish alone where
   the finish does not run across lanes) */
static void retire_lane(const many_ctx *c, const lanes_t *S, int l, long b, const fit_info *f, finish_buffer *F) {
#if LANES_FINISH
    int k = F->n;
    for (int i = 0; i < P; i++) { F->R.th[i][k] = S->th[i][l]; F->R.tr[i][k] = S->tr[i][l]; F->R.G[i][k] = S->G[i][l]; }
    for (int i = 0; i < NTRI; i++) F->R.A[i][k] = S->A[i][l];
    F->R.chi2[k] = S->chi2[l]; F->R.lam[k] = S->lam[l]; F->R.st[k] = S->st[l]; F->R.it[k] = S->it[l];
    F->R.used[k] = (real)f->used;
    F->fit[k] = b;
    F->info[k] = *f;
    F->n = k + 1;
    if (F->n == L) flush(c, F);
#else
    fit_state s;
    (void)F;
    lane_state(S, l, &s);
    retire(c, b, &s, f);
#endif
}

/* Fits claimed from *next in blocks of `block` until n: every output row written (see the
   module docstring of optim/native_batch.py). theta0, start, lower, upper (n, P) are the user's
   float64 values (lower/upper NULL when no bound is finite); returns -2 when a work array
   cannot be allocated. */
long gf_many(long n, long m, const real *const *xs, const long *x_stride, const real *y, const real *w, long w_stride,
             const double *theta0, const double *start, const double *lower, const double *upper,
             const real *free_, real tol, long steps, real floor_factor, real floor_, real half_threshold,
             double strong_scale, real bound_ulps, long max_iter_code, long too_few_code, long poisson,
             long absolute, long deferred_code, long *next, long block,
             double *params, double *stderr_, real *cov, double *chisqr, signed char *status, int *iterations,
             unsigned char *clear, long *n_used) {
    many_ctx c = {.n = n, .m = m, .w_stride = w_stride, .xs = xs, .x_stride = x_stride, .y = y, .w = w, .free_ = free_, .theta0 = theta0,
                  .start = start, .lower = lower, .upper = upper, .n_free = 0, .tol = tol, .floor_factor = floor_factor,
                  .floor_ = floor_, .half_threshold = half_threshold, .bound_ulps = bound_ulps, .steps = steps,
                  .max_iter_code = max_iter_code, .too_few_code = too_few_code, .poisson = poisson,
                  .absolute = absolute, .deferred_code = deferred_code, .strong_scale = strong_scale,
                  .next = next, .block = block, .cursor = 0, .last = 0, .params = params, .stderr_ = stderr_,
                  .chisqr = chisqr, .cov = cov, .status = status, .iterations = iterations, .clear = clear,
                  .n_used = n_used};
    for (int i = 0; i < P; i++) c.n_free += free_[i];
    const long mm = m > 0 ? m : 1;
    real *cols = malloc(sizeof(real) * mm * (P + 2));
    lanes_t *S = 0;
    finish_buffer *F = 0;
    real *yl = 0, *wl = 0, *xl[NIN > 0 ? NIN : 1] = {0};
    int ok = cols != 0;
    if (ok && m > LANES_MAX_POINTS) {  /* long data: the per-fit loop, vectorized over the points */
        for (long b = claim(&c); b >= 0; b = claim(&c)) {
            fit_state s;
            fit_info f;
            prepare(&c, b, &s, &f);
            if (poisson && s.st == RUNNING) c.status[b] = (signed char)deferred_code;  /* no per-fit Poisson loop */
            else run_scalar(&c, b, &s, &f, cols);
        }
        free(cols);
        return 0;
    }
    ok = ok && posix_memalign((void **)&S, 64, sizeof(lanes_t)) == 0;
    ok = ok && posix_memalign((void **)&F, 64, sizeof(finish_buffer)) == 0;
    ok = ok && posix_memalign((void **)&yl, 64, sizeof(real) * mm * L) == 0;
    ok = ok && posix_memalign((void **)&wl, 64, sizeof(real) * mm * L) == 0;
    for (int q = 0; q < NIN; q++) ok = ok && posix_memalign((void **)&xl[q], 64, sizeof(real) * mm * L) == 0;
    if (ok) {
        long fit_of[L];
        fit_info info[L];
        for (int q = 0; q < NIN; q++)  /* shared inputs: every lane's column once */
            for (long j = 0; j < m; j++) for (int l = 0; l < L; l++) xl[q][j * L + l] = x_stride[q] ? 0 : xs[q][j];
        for (long j = 0; j < mm * L; j++) { yl[j] = 0; wl[j] = 0; }
        memset(S, 0, sizeof(lanes_t));
        memset(F, 0, sizeof(finish_buffer));
        int active = 0;
        for (int l = 0; l < L; l++) active += fill(&c, S, l, fit_of, info, xl, yl, wl, cols);
        while (active > 0) {
            lanes_invariants(S);
            if (poisson) lanes_sums_poisson(m, S, xl, yl, wl);
            else lanes_sums(m, S, xl, yl, wl);
            lanes_step(S, free_, tol, (int)poisson);
            for (int l = 0; l < L; l++) {
                if (fit_of[l] < 0 || (S->st[l] == RUNNING && S->it[l] < steps)) continue;
                retire_lane(&c, S, l, fit_of[l], &info[l], F);
                active -= 1;
                active += fill(&c, S, l, fit_of, info, xl, yl, wl, cols);
                if (fit_of[l] < 0) S->st[l] = RUNNING - 1;  /* an empty lane: its arithmetic is never read */
            }
        }
        flush(&c, F);
    }
    free(cols); free(S); free(F); free(yl); free(wl);
    for (int q = 0; q < NIN; q++) free(xl[q]);
    return ok ? 0 : -2;
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
             too_few_code: int, threads: int, poisson: bool = False, absolute_sigma: bool = False,
             deferred_code: int = 127) -> None:
    """Every fit of the batch through ``gf_many`` of ``lib`` (a native_lm kernel library whose
    ``real`` is the ctypes float type), into ``out`` (:func:`allocate`'s arrays, or row slices
    of them). Arrays as lsq/batched.solve_batched's, C-contiguous: y (B, M), w (B, M) or (M,) (one
    row for every fit) and the inputs ((M,) or (B, M)) in the working dtype; theta0, start, lower, upper (B, P) float64, lower and
    upper None without a finite bound. ``absolute_sigma``: standard errors and covariance not
    scaled by chi2 / dof (Poisson's never are).

    Raises MemoryError where the kernel cannot allocate its work array."""
    import ctypes
    import threading

    fn = lib.gf_many
    if fn.restype is not ctypes.c_long:
        ptr = ctypes.c_void_p
        fn.argtypes = [ctypes.c_long, ctypes.c_long, ptr, ptr, ptr, ptr, ctypes.c_long, ptr, ptr, ptr, ptr, ptr, real,
                       ctypes.c_long,
                       real, real, real, ctypes.c_double, real, ctypes.c_long, ctypes.c_long, ctypes.c_long,
                       ctypes.c_long, ctypes.c_long, ptr, ctypes.c_long,
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
        codes.append(fn(n, m, x_ptrs, x_stride, y.ctypes.data, w.ctypes.data, 0 if w.ndim == 1 else m,
                        theta0.ctypes.data, start.ctypes.data,
                        *bounds, free_r.ctypes.data, tol, max_iter, floor_factor, floor, half_threshold, strong_scale,
                        bound_ulps, max_iter_code, too_few_code, int(poisson), int(absolute_sigma), deferred_code,
                        counter.ctypes.data,
                        BLOCK, *outputs))

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


def _in_double(text: str) -> str:
    """A line of the formula's C program (formula/c_code.py) in double: its ``real`` types and
    casts, and the gf_ helpers as their gfd_ copies."""
    return text.replace("real", "double").replace("gf_", "gfd_")


def poisson_statistics_source(program, p: int, n_inputs: int) -> str:
    """C ``gf_poisson_statistics``: lsq/end_points.likelihood_statistics in double at each fit's
    final parameters (the model printed again in double, whatever the kernel's ``real``):
    deviance and Pearson's chi-square in one pass over the points (vectorized), and the
    log-likelihood as the saturated log-likelihood sum w (y log y - y - lgamma(y + 1)) (a table
    of it for integer counts) minus half the deviance; NaN where a parameter or a used
    mean is not finite, or such a mean is not positive."""
    from ..formula.c_code import PRELUDE

    helpers = [_in_double(line) for line in PRELUDE.splitlines() if line.startswith("static inline real gf_")]
    lines = helpers + [
        "#define LGAMMA_TABLE 1024",
        "void gf_poisson_statistics(long n, long m, const double *const *xs, const long *x_stride, const real *y,",
        "                           const real *w, long w_stride, const double *params, double *deviance, double *pearson,",
        "                           double *loglike) {",
        "    double table[LGAMMA_TABLE];  /* a count k's saturated term k log k - k - lgamma(k + 1) */",
        "    for (int k = 0; k < LGAMMA_TABLE; k++) table[k] = (k > 0 ? k * log((double)k) : 0.0) - k - lgamma(k + 1.0);",
        "    for (long b = 0; b < n; b++) {",
        "        const real *yb = y + b * m, *wb = w + b * w_stride;",
        "        int finite = 1;",
        "        for (int k = 0; k < P; k++) finite = finite && isfinite(params[b * P + k]);",
        "        if (!finite) { deviance[b] = pearson[b] = loglike[b] = NAN; continue; }"]
    lines += [f"        const double p_{k} = params[b * P + {k}];" for k in range(p)]
    lines += [f"        const double h_{k} = {_in_double(text)};" for k, text in enumerate(program.invariants)]
    lines += [f"        const double *x_{q} = xs[{q}] + b * x_stride[{q}];" for q in range(n_inputs)]
    lines += ["        double dev = 0, pe = 0, bad = 0, sat = 0;",
              "        #pragma omp simd reduction(+:dev, pe, bad)",
              "        for (long j = 0; j < m; j++) {"]
    lines += [f"            const double in_{q} = x_{q}[j];" for q in range(n_inputs)]
    lines += ["        " + _in_double(line) for line in program.body]
    lines += [f"            const double mu0 = {_in_double(program.outputs[0])};",
              "            /* y finite everywhere (the caller's), w 0 at unused points: no selects on them (gcc",
              "               gives up on selects of doubles by an int mask feeding further selects) */",
              "            const double yj = (double)yb[j], wj = (double)wb[j];",
              "            const int used = wj > 0;",
              "            const double ok = mu0 > 0 ? 1.0 : 0.0;  /* 0 for NaN; an infinite mean: inf sums, NaN below */",
              "            const double mu = used ? (ok > 0 ? mu0 : 1.0) : 1.0, r = mu - yj;",
              "            dev += wj * (r - yj * log1p(r / (yj > 0 ? yj : 1.0)));",
              "            pe += wj * r * r / mu;",
              "            bad += used ? 1.0 - ok : 0.0;"]
    lines += [f"            (void)in_{q};" for q in range(n_inputs)]
    lines += ["        }",
              "        for (long j = 0; j < m; j++) {  /* the saturated log-likelihood: the data's alone */",
              "            double yj = yb[j];",
              "            if (!(wb[j] > 0)) continue;",
              "            sat += (double)wb[j] * ((yj < LGAMMA_TABLE && (double)(int)yj == yj) ? table[(int)yj]",
              "                                    : (yj > 0 ? yj * log(yj) : 0.0) - yj - lgamma(yj + 1.0));",
              "        }",
              "        bad += isfinite(dev) && isfinite(pe) ? 0.0 : 1.0;",
              "        deviance[b] = bad > 0 ? NAN : 2.0 * dev;",
              "        pearson[b] = bad > 0 ? NAN : pe;",
              "        loglike[b] = bad > 0 ? NAN : sat - dev;",
              "    }",
              "}"]
    unused = [f"p_{k}" for k in range(p)] + [f"h_{k}" for k in range(len(program.invariants))]
    lines.insert(lines.index("        double dev = 0, pe = 0, bad = 0, sat = 0;"),
                 "        " + " ".join(f"(void){v};" for v in unused))
    return "\n".join(lines) + "\n"


def poisson_statistics(lib, inputs: dict, input_names: tuple[str, ...], y: np.ndarray, w: np.ndarray,
                       params: np.ndarray, threads: int = 1) -> dict:
    """``gf_poisson_statistics`` of ``lib`` (see :func:`poisson_statistics_source`) for every
    fit, the rows split over ``threads``: (B,) float64 deviance, pearson and loglike. ``inputs``
    (M,) or (B, M) are converted to float64; y and w (B, M) are the kernel's arrays (its dtype;
    integer counts below 2^24 and weights 0 or 1 are exact in float32), y finite everywhere
    (0 where a point is not used)."""
    import ctypes

    from .native_common import in_blocks

    fn = lib.gf_poisson_statistics
    if fn.restype is not None:
        fn.argtypes = [ctypes.c_long, ctypes.c_long] + [ctypes.c_void_p] * 4 + [ctypes.c_long] + [ctypes.c_void_p] * 4
        fn.restype = None
    n, m = y.shape
    xs = [np.ascontiguousarray(inputs[k], dtype=np.float64) for k in input_names]
    x_stride = (ctypes.c_long * max(len(xs), 1))(*[(m if x.ndim == 2 else 0) for x in xs])
    theta = np.ascontiguousarray(params, dtype=np.float64)
    out = {k: np.empty(n) for k in ("deviance", "pearson", "loglike")}

    def rows(lo: int, hi: int) -> None:
        x_ptrs = (ctypes.c_void_p * max(len(xs), 1))(*[x[lo:].ctypes.data if x.ndim == 2 else x.ctypes.data
                                                        for x in xs])
        fn(hi - lo, m, x_ptrs, x_stride, y[lo:].ctypes.data, (w if w.ndim == 1 else w[lo:]).ctypes.data,
           0 if w.ndim == 1 else m, theta[lo:].ctypes.data,
           *(out[k][lo:].ctypes.data for k in ("deviance", "pearson", "loglike")))

    in_blocks(rows, n, threads, BLOCK)
    return out
