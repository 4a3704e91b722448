"""Batched Levenberg-Marquardt as one C loop per fit: the native kernel of fit_many.

The eager kernel (:mod:`gradfit.optim.batch_lm`) makes ~40 passes over (fits x points) arrays
per iteration, and torch.compile, which fuses them, takes 9-40 s to compile. This kernel runs
the *same algorithm* (the module docstring of batch_lm, steps 1-5: the box rules and the moves
onto the bounds included; least squares) with the model and its partial derivatives printed as C from the
formula's symbolic program (:mod:`gradfit.formula.c_code`): for each fit, every iteration is
one pass over its points accumulating chi-square, J^T W J and J^T W r in registers, then the
damped P x P Cholesky solve (with batch_lm's stop-short, re-solve and snap rules where a
fit has bounds), the acceptance and convergence tests of batch_lm.step, in the
same order and the same precision (``real`` is float for float32 batches). The fit's whole
loop stays in the core's caches, as in Gpufit, where one GPU thread runs one fit.

It takes and returns a :class:`~gradfit.optim.batch_lm.BatchState`, so a run may start eagerly
and continue here (fit_many's compile="auto" does), and the end-point checks, standard errors
and results downstream are the ones of the eager path. Fits are split into contiguous blocks
run by Python threads (ctypes releases the GIL during the call).

The library is built by the system C compiler and cached on disk (:mod:`gradfit._native`);
:func:`kernel` returns None (and the reason) where there is no compiler or a function has no
C form, and callers then run the eager kernel. Sums run point by point, where torch sums in
blocks, so results agree with the eager kernel to rounding, not bit for bit.
"""

from __future__ import annotations

from functools import lru_cache

from ..status import Status
from .batch_lm import LAMBDA0, LAMBDA_MAX, MAX_SNAPS, NEAR, RUNNING, STEP_BACK, BatchState
from .native_batch import MANY_SOURCE
from .native_common import COLUMNS, cached_kernel, in_blocks, normal_sums_source

__all__ = ["NativeLM", "kernel", "kernel_source"]

_TEMPLATE = r"""
#include <stdlib.h>
#define P {p}
#define NIN {n_inputs}
#define ACC real
{columns}
#define RUNNING ({running})
#define CONVERGED {converged}
#define STALLED {stalled}
#define SINGULAR {singular}
#define NOT_FINITE {not_finite}
static const real TINY = (real){tiny};
static const real LAMBDA_MAX = (real){lambda_max};
static const real LAMBDA0 = (real){lambda0};
static const real STEP_BACK = (real){step_back};
static const real NEAR = (real){near};
#define MAX_SNAPS {max_snaps}

/* The Cholesky factor of (A + lam diag(A)) over the free coordinates (FREE[i] != 0), the identity
   over fixed ones: batch_solve.damped_solve's unrolled factorization, entry by entry in its order. */
static int factor(const real *a, real lam, const real *free_, real *low) {{
    int ok = 1;
    for (int j = 0; j < P; j++) {{
        real s = (free_[j] != 0) ? a[j * P + j] * ((real)1 + lam) : (real)1;
        for (int k = 0; k < j; k++) s = s - low[j * P + k] * low[j * P + k];
        ok = ok && (s > 0);
        real dj = sqrt(s > TINY ? s : TINY);
        low[j * P + j] = dj;
        for (int i = j + 1; i < P; i++) {{
            real t = (free_[i] != 0 && free_[j] != 0) ? a[i * P + j] : (real)0;
            for (int k = 0; k < j; k++) t = t - low[i * P + k] * low[j * P + k];
            low[i * P + j] = t / dj;
        }}
    }}
    return ok;
}}

/* d solving L L^T d = rhs (rhs zero over fixed coordinates); 0 where not finite (returns 0). */
static int solve(const real *low, const real *rhs, const real *free_, real *d) {{
    real z[P];
    int ok = 1;
    for (int i = 0; i < P; i++) {{
        real t = (free_[i] != 0) ? rhs[i] : (real)0;
        for (int k = 0; k < i; k++) t = t - low[i * P + k] * z[k];
        z[i] = t / low[i * P + i];
    }}
    for (int i = P - 1; i >= 0; i--) {{
        real t = z[i];
        for (int k = i + 1; k < P; k++) t = t - low[k * P + i] * d[k];
        d[i] = t / low[i * P + i];
    }}
    for (int i = 0; i < P; i++) ok = ok && isfinite(d[i]);
    return ok;
}}

/* (A + lam diag(A)) d = -g, fixed coordinates held at d = 0 (batch_solve.damped_solve). */
static int damped_solve(const real *a, const real *g, real lam, const real *free_, real *d) {{
    real low[P * P], rhs[P];
    int ok = factor(a, lam, free_, low);
    for (int i = 0; i < P; i++) rhs[i] = -g[i];
    ok = solve(low, rhs, free_, d) && ok;
    if (!ok) for (int i = 0; i < P; i++) d[i] = 0;
    return ok;
}}

/* What lsq/end_points.finish and clear_end_points compute from one fit's final normal equations
   A, g, from one factorization of A: the standard errors sqrt(diag(A^-1) chi2/dof) (NaN where A
   does not factor, dof < 1 or the scale is not finite; 0 for fixed parameters), the covariance
   A^-1 chi2/dof (symmetrized; NaN where it is undetermined), the full-rank screen
   F trace(M^-1) < 1/floor of the scaled matrix M, and `good`: the range cosine
   sqrt(g^T A^-1 g / chi2) finite and below half the stationarity threshold. */
static void finish_one(const real *a, const real *g, real chi2, real n_used, const real *free_, real n_free,
                       real floor_, real half_threshold, int unscaled, real *se, real *cov, unsigned char *full_rank,
                       unsigned char *good) {{
    real low[P * P], inv[P * P], col[P], unit[P], d[P], rhs[P];
    int ok = factor(a, (real)0, free_, low);
    int finite_inv = 1;
    for (int j = 0; j < P; j++) {{
        for (int i = 0; i < P; i++) unit[i] = (i == j) ? (real)1 : (real)0;
        finite_inv = solve(low, unit, free_, col) && finite_inv;
        for (int i = 0; i < P; i++) inv[i * P + j] = col[i];
    }}
    int ok_inv = ok && finite_inv;
    real dof = n_used - n_free;
    /* unscaled: a likelihood's errors (the Cramer-Rao bound) or absolute sigma's, sqrt(diag(A^-1)) */
    real scale = unscaled ? (real)1 : chi2 / dof;
    int ok_se = unscaled ? ok_inv && isfinite(chi2) : ok_inv && dof >= 1 && isfinite(scale);
    int ok_cov = ok_se && isfinite(chi2);
    real trace_inv = 0;
    for (int j = 0; j < P; j++) {{
        real var = (free_[j] != 0 && ok_inv) ? inv[j * P + j] : (real)0;
        trace_inv += var * a[j * P + j];
        real v = var * scale;
        se[j] = ok_se ? sqrt(v > 0 ? v : (real)0) : (real)NAN;
        for (int i = 0; i < P; i++)
            cov[j * P + i] = ok_cov ? (real)0.5 * (inv[j * P + i] + inv[i * P + j]) * scale : (real)NAN;
    }}
    *full_rank = ok_inv && isfinite(trace_inv) && n_free * trace_inv < (real)1 / floor_;
    for (int i = 0; i < P; i++) rhs[i] = -g[i];
    int ok_d = solve(low, rhs, free_, d) && ok;
    real q = 0;
    for (int i = 0; i < P; i++) q += g[i] * (ok_d ? d[i] : (real)0);
    q = -q;
    real c = sqrt((q > 0 ? q : (real)0) / chi2);
    *good = ok_d && isfinite(c) && c < half_threshold;
}}

/* finish_one for n fits (A (n, P, P), g (n, P), chi2 and n_used (n,)) */
void gf_finish(long n, const real *a_in, const real *g_in, const real *chi2_in, const real *n_used,
               const real *free_, real floor_, real half_threshold, int unscaled, real *se, real *cov,
               unsigned char *full_rank, unsigned char *good) {{
    real n_free = 0;
    for (int i = 0; i < P; i++) n_free += free_[i];
    for (long b = 0; b < n; b++)
        finish_one(a_in + b * P * P, g_in + b * P, chi2_in[b], n_used[b], free_, n_free, floor_, half_threshold, unscaled,
                   se + b * P, cov + b * P * P, full_rank + b, good + b);
}}

/* target with the coordinates beyond a bound stopped STEP_BACK of the way to it, clipped into
   the box, and which crossed (batch_lm._stop_short) */
static void stop_short(const real *th, const real *target, const real *lo, const real *hi, real *out, int *crossed) {{
    for (int i = 0; i < P; i++) {{
        int below = target[i] < lo[i], above = target[i] > hi[i];
        real v = below ? th[i] + STEP_BACK * (lo[i] - th[i]) : above ? th[i] + STEP_BACK * (hi[i] - th[i]) : target[i];
        v = v < lo[i] ? lo[i] : v;
        out[i] = v > hi[i] ? hi[i] : v;
        crossed[i] = below || above;
    }}
}}

/* the free coordinates inside the box whose 1-D Gauss-Newton minimum lies on or beyond the lower
   (to_lo) or the upper bound (to_hi) (batch_lm._pushing); returns whether any does */
static int pushing(const real *th, const real *g, const real *a, const real *lo, const real *hi, const real *free_,
                   int *to_lo, int *to_hi) {{
    int any = 0;
    for (int i = 0; i < P; i++) {{
        real diag = a[i * P + i];
        real reach = fabs(g[i]) / (diag > 0 ? diag : (real)INFINITY);
        to_lo[i] = free_[i] != 0 && th[i] > lo[i] && g[i] > 0 && th[i] - lo[i] <= reach;
        to_hi[i] = free_[i] != 0 && th[i] < hi[i] && g[i] < 0 && hi[i] - th[i] <= reach;
        any = any || to_lo[i] || to_hi[i];
    }}
    return any;
}}

/* batch_lm._box_step: the damped step with the coordinates held that rest on a bound the
   gradient pushes outward; where it crosses a bound, the crossing coordinates stop short, and
   those already next to their bound and pushed there are fixed where they stop while the
   others' step is solved again (the gradient g + A m of that move) */
static int box_step(const real *th, const real *a, const real *g, real lam, const real *lo, const real *hi,
                    const real *free_, real *out) {{
    real fr[P], d[P], first[P], moved[P];
    int held[P], crossed[P], to_lo[P], to_hi[P], any = 0;
    for (int i = 0; i < P; i++) {{
        held[i] = (th[i] <= lo[i] && g[i] > 0) || (th[i] >= hi[i] && g[i] < 0);
        fr[i] = (free_[i] != 0 && !held[i]) ? (real)1 : (real)0;
    }}
    int ok = damped_solve(a, g, lam, fr, d);
    real target[P];
    for (int i = 0; i < P; i++) target[i] = th[i] + d[i];
    stop_short(th, target, lo, hi, first, crossed);
    pushing(th, g, a, lo, hi, free_, to_lo, to_hi);
    for (int i = 0; i < P; i++) {{
        real dist = to_lo[i] ? th[i] - lo[i] : hi[i] - th[i];
        crossed[i] = crossed[i] && (to_lo[i] || to_hi[i]) && dist <= NEAR * fabs(d[i]);
        moved[i] = crossed[i] ? first[i] - th[i] : (real)0;
        any = any || crossed[i];
    }}
    if (!any) {{
        for (int i = 0; i < P; i++) out[i] = first[i];
        return ok;
    }}
    real g2[P], d2[P], fr2[P];
    for (int i = 0; i < P; i++) {{
        real t = 0;
        for (int k = 0; k < P; k++) t += a[i * P + k] * moved[k];
        g2[i] = g[i] + t;
        fr2[i] = (free_[i] != 0 && !held[i] && !crossed[i]) ? (real)1 : (real)0;
    }}
    int ok2 = damped_solve(a, g2, lam, fr2, d2);
    int unused[P];
    for (int i = 0; i < P; i++) target[i] = th[i] + (crossed[i] ? moved[i] : d2[i]);
    stop_short(th, target, lo, hi, out, unused);
    return ok && ok2;
}}

/* One fit's Levenberg-Marquardt state between iterations (batch_lm.BatchState's row). */
typedef struct {{
    real th[P], tr[P], A[P * P], G[P], lam, chi2;
    long st;
    int it, snaps, probing;
}} fit_state;

/* batch_lm.step (least squares; the box rules where lo/hi are given: NULL for a fit without a
   finite bound), up to `steps` times for one fit (b: its row of the per-fit inputs); cols is
   work space of (P + 2) m reals. */
static void iterate(fit_state *s, long m, const real *const *xs, const long *x_stride, long b, const real *yb,
                    const real *wb, real floor2, const real *free_, real tol, long steps, const real *lo,
                    const real *hi, real *cols) {{
    real *th = s->th, *tr = s->tr, *A = s->A, *G = s->G;
    real lam = s->lam, chi2 = s->chi2;
    long st = s->st;
    int it = s->it, snaps = s->snaps, probing = s->probing;
    const int bounded = lo != 0;
    for (long step = 0; step < steps && st == RUNNING; step++) {{
        real c2, at[P * P], gt[P];
        fit_columns(m, xs, x_stride, b, yb, wb, tr, cols);
        normal_sums(m, cols, &c2, at, gt);
        int finite = isfinite(c2);
        for (int i = 0; i < P; i++) {{
            finite = finite && isfinite(gt[i]);
            for (int k = 0; k <= i; k++) finite = finite && isfinite(at[i * P + k]);
        }}
        int accept = finite && (c2 <= chi2);
        int first = isinf(chi2);
        int settled = accept && !first;
        int small = settled && (fabs(chi2 - c2) < tol * c2);
        int at_floor = settled && (c2 <= floor2);
        if (accept) {{
            for (int i = 0; i < P; i++) {{ th[i] = tr[i]; G[i] = gt[i]; }}
            for (int i = 0; i < P * P; i++) A[i] = at[i];
            chi2 = c2;
            lam = lam * (real)0.1;
        }} else {{
            lam = lam * (real)10.0;
        }}
        if (first && !finite) st = NOT_FINITE;
        if (probing && !accept) st = CONVERGED;  /* a rejected move onto the bounds: the convergence stands */
        real d[P], next[P];
        int ok;
        if (bounded) {{
            ok = box_step(th, A, G, lam, lo, hi, free_, next);
            for (int i = 0; i < P; i++) d[i] = next[i] - th[i];
        }} else {{
            ok = damped_solve(A, G, lam, free_, d);
            for (int i = 0; i < P; i++) next[i] = th[i] + d[i];
        }}
        real predicted = 0;
        for (int i = 0; i < P; i++) predicted += G[i] * d[i];
        predicted = -predicted * ((real)1 + lam);
        int converged = (st == RUNNING) && (at_floor || (small && ok && predicted <= tol * chi2));
        int snap = 0, to_lo[P], to_hi[P];
        if (bounded) {{  /* a coordinate whose own minimum lies on or beyond a bound: try the point on it */
            int any = pushing(th, G, A, lo, hi, free_, to_lo, to_hi);
            snap = converged && !at_floor && any && snaps < MAX_SNAPS;
            converged = converged && !snap;
        }}
        if (converged) st = CONVERGED;
        else if (st == RUNNING && lam > LAMBDA_MAX) st = STALLED;
        if (st == RUNNING && !ok && !snap) st = SINGULAR;
        if (snap) for (int i = 0; i < P; i++) next[i] = to_lo[i] ? lo[i] : to_hi[i] ? hi[i] : th[i];
        for (int i = 0; i < P; i++) tr[i] = (st == RUNNING) ? next[i] : th[i];
        it += 1;
        snaps += snap;
        probing = snap;
    }}
    s->lam = lam; s->chi2 = chi2; s->st = st; s->it = it; s->snaps = snaps; s->probing = probing;
}}

/* iterate for each of n fits, continuing the BatchState in the *_io arrays (lower/upper NULL for
   a batch without a finite bound); returns -2 when its work array cannot be allocated. */
long gf_lm(long n, long m, const real *const *xs, const long *x_stride, const real *y, const real *w,
           const real *floor2, const real *free_, real tol, long steps, const real *lower, const real *upper,
           real *theta, real *trial, real *lam_io, real *chi2_io, real *a_io, real *g_io,
           long *status_io, int *iterations_io, int *snaps_io, unsigned char *probing_io) {{
    real *cols = malloc(sizeof(real) * (m > 0 ? m : 1) * (P + 2));
    if (!cols) return -2;
    for (long b = 0; b < n; b++) {{
        fit_state s;
        for (int i = 0; i < P; i++) {{ s.th[i] = theta[b * P + i]; s.tr[i] = trial[b * P + i]; s.G[i] = g_io[b * P + i]; }}
        for (int i = 0; i < P * P; i++) s.A[i] = a_io[b * P * P + i];
        s.lam = lam_io[b]; s.chi2 = chi2_io[b]; s.st = status_io[b];
        s.it = iterations_io[b]; s.snaps = snaps_io[b]; s.probing = probing_io[b];
        iterate(&s, m, xs, x_stride, b, y + b * m, w ? w + b * m : 0, floor2[b], free_, tol, steps,
                lower ? lower + b * P : 0, upper ? upper + b * P : 0, cols);
        for (int i = 0; i < P; i++) {{ theta[b * P + i] = s.th[i]; trial[b * P + i] = s.tr[i]; g_io[b * P + i] = s.G[i]; }}
        for (int i = 0; i < P * P; i++) a_io[b * P * P + i] = s.A[i];
        lam_io[b] = s.lam; chi2_io[b] = s.chi2; status_io[b] = s.st; iterations_io[b] = s.it;
        snaps_io[b] = s.snaps; probing_io[b] = (unsigned char)s.probing;
    }}
    free(cols);
    return 0;
}}
"""


@lru_cache(maxsize=256)
def kernel_source(expression, names: tuple[str, ...], inputs: tuple[str, ...], double: bool) -> str:
    """The C source of the kernel for this formula (``expression``, a tree), its parameter
    ``names`` and ``inputs`` in this order, in double or float."""
    from ..formula.c_code import PRELUDE, model_source, point_program
    from .native_batch import poisson_statistics_source
    from .native_lanes import lanes_source

    real = "double" if double else "float"
    program = point_program(expression, inputs, names)
    head = f"typedef {real} real;\n{PRELUDE}\n{model_source(expression, inputs, names, program)}"
    return head + _TEMPLATE.format(
        p=len(names), n_inputs=len(inputs), running=RUNNING, converged=Status.CONVERGED.code,
        stalled=Status.STALLED.code, singular=Status.SINGULAR.code, not_finite=Status.NOT_FINITE.code,
        tiny="1e-300" if double else "1e-30", lambda_max=repr(float(LAMBDA_MAX)),
        lambda0=repr(float(LAMBDA0)), step_back=repr(float(STEP_BACK)),
        near=repr(float(NEAR)), max_snaps=MAX_SNAPS,
        columns=COLUMNS + normal_sums_source(len(names))) + lanes_source(
            program, len(names), len(inputs), double) + MANY_SOURCE + poisson_statistics_source(
            program, len(names), len(inputs))


class NativeLM:
    """A loaded kernel: :meth:`run` continues a :class:`BatchState` natively."""

    def __init__(self, lib, double: bool, n_params: int, inputs: tuple[str, ...]):
        import ctypes

        self.lib = lib
        self.real = ctypes.c_double if double else ctypes.c_float
        self.n_params = n_params
        self.inputs = inputs
        fn = lib.gf_lm
        ptr = ctypes.c_void_p
        fn.argtypes = [ctypes.c_long, ctypes.c_long, ptr, ptr, ptr, ptr, ptr, ptr, self.real, ctypes.c_long,
                       ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr]
        fn.restype = ctypes.c_long
        self.fn = fn
        fin = lib.gf_finish
        fin.argtypes = [ctypes.c_long, ptr, ptr, ptr, ptr, ptr, self.real, self.real, ctypes.c_int, ptr, ptr, ptr, ptr]
        fin.restype = None
        self.finish_fn = fin

    def finish(self, state: BatchState, n_used, free, floor: float, threshold: float, absolute_sigma: bool = False):
        """What the eager path computes after the loop (lsq/end_points.finish and the torch part
        of lsq/end_points.clear_end_points), from the final normal equations, in C: (standard
        errors (B, P), full_rank (B,) bool, covariance (B, P, P), good (B,) bool numpy: the range
        cosine below half ``threshold``). ``absolute_sigma``: errors not scaled by chi2 / dof."""
        import numpy as np
        import torch

        a, g = state.a.contiguous(), state.g.contiguous()
        dtype = a.dtype
        b, p = g.shape
        chi2 = state.chi2.contiguous()
        used = n_used.to(dtype).contiguous()
        free_t = torch.as_tensor(free, dtype=dtype)
        se = torch.empty((b, p), dtype=dtype)
        cov = torch.empty((b, p, p), dtype=dtype)
        full_rank = np.empty(b, dtype=np.uint8)
        good = np.empty(b, dtype=np.uint8)
        self.finish_fn(b, a.data_ptr(), g.data_ptr(), chi2.data_ptr(), used.data_ptr(), free_t.data_ptr(), floor,
                       0.5 * threshold, int(absolute_sigma), se.data_ptr(), cov.data_ptr(), full_rank.ctypes.data,
                       good.ctypes.data)
        return se, torch.from_numpy(full_rank.astype(bool)), cov, good.astype(bool)

    def run(self, state: BatchState, tensors: dict, tol: float, steps: int, threads: int = 1) -> BatchState:
        """Up to ``steps`` more iterations of every running fit of ``state`` (a new state;
        ``state`` is not changed). ``tensors`` as lsq/batched's chunk tensors: inputs (M,) or
        (B, M), y, w (B, M), floor2 (B,), free (P,), unit (every weight 1)."""
        import ctypes

        import torch

        dtype = state.theta.dtype
        b_fits = state.theta.shape[0]
        out = BatchState(*(t.clone().contiguous() for t in (
            state.theta, state.trial, state.lam, state.chi2, state.a, state.g)),
            state.status.to(torch.int64).clone().contiguous(), state.iterations.to(torch.int32).clone().contiguous(),
            (state.snaps.to(torch.int32).clone() if state.snaps is not None
             else torch.zeros(b_fits, dtype=torch.int32)).contiguous(),
            (state.probing.to(torch.uint8).clone() if state.probing is not None
             else torch.zeros(b_fits, dtype=torch.uint8)).contiguous())
        n, m = tensors["y"].shape
        xs = [tensors["inputs"][k].to(dtype).contiguous() for k in self.inputs]
        y = tensors["y"].contiguous()
        w = None if tensors["unit"] else tensors["w"].contiguous()
        floor2 = tensors["floor2"].to(dtype).contiguous()
        lower = tensors["lower"].to(dtype).contiguous() if tensors["bounded"] else None
        upper = tensors["upper"].to(dtype).contiguous() if tensors["bounded"] else None
        free = torch.as_tensor(tensors["free"], dtype=dtype)
        p = self.n_params
        x_stride = (ctypes.c_long * max(len(xs), 1))(*[(m if x.dim() == 2 else 0) for x in xs])
        size = y.element_size()

        def block(lo: int, hi: int) -> None:
            k = hi - lo
            xp = (ctypes.c_void_p * max(len(xs), 1))(*[x.data_ptr() + (lo * m * size if x.dim() == 2 else 0)
                                                        for x in xs])
            codes[lo] = self.fn(k, m, xp, x_stride, y.data_ptr() + lo * m * size,
                    None if w is None else w.data_ptr() + lo * m * size,
                    floor2.data_ptr() + lo * size, free.data_ptr(), tol, steps,
                    None if lower is None else lower.data_ptr() + lo * p * size,
                    None if upper is None else upper.data_ptr() + lo * p * size,
                    out.theta.data_ptr() + lo * p * size, out.trial.data_ptr() + lo * p * size,
                    out.lam.data_ptr() + lo * size, out.chi2.data_ptr() + lo * size,
                    out.a.data_ptr() + lo * p * p * size, out.g.data_ptr() + lo * p * size,
                    out.status.data_ptr() + lo * 8, out.iterations.data_ptr() + lo * 4,
                    out.snaps.data_ptr() + lo * 4, out.probing.data_ptr() + lo)

        codes: dict = {}
        in_blocks(block, n, threads)
        if any(code != 0 for code in codes.values()):
            raise MemoryError("the native kernel could not allocate its work array")
        out.status = out.status.to(state.status.dtype)
        out.iterations = out.iterations.to(state.iterations.dtype)
        out.probing = out.probing.to(torch.bool)
        return out


def kernel(model, names: tuple[str, ...], inputs: tuple[str, ...], dtype, *, build: bool = True):
    """The native kernel for this formula model in ``dtype`` (torch.float32 or float64):
    ``(NativeLM, "")``, or ``(None, reason)`` (no C form, no compiler, a failed build, or
    ``build=False`` and the library is neither loaded nor in the disk cache)."""
    return cached_kernel(model, dtype, ("batch", tuple(names), tuple(inputs)), build,
                         lambda expression, double: kernel_source(expression, tuple(names), tuple(inputs), double),
                         lambda lib, double: NativeLM(lib, double, len(names), tuple(inputs)))
