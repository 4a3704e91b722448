"""Global Levenberg-Marquardt (fits sharing parameters) as one C loop: the native kernel of
fit_many(shared=...).

The torch implementation (:mod:`gradfit.optim.global_lm`) makes ~200 small tensor calls per
iteration; at a thousand fits that per-call overhead, not the arithmetic, is its cost. This
kernel runs the same joint iteration (global_lm's module docstring, steps 1-3, for problems
without finite bounds, least squares, in one process) in C: each fit's blocks A_b, C_b, D_b,
g_b in one pass over its points, the joint accept/reject on the total chi-square with the
rounding allowance, the damped local solves for [C_b, -g_b], the Schur complement and its
P_s x P_s Cholesky, the back-substitution, the convergence and stall tests and the fits that
leave the joint problem (not_finite at the start, singular local blocks). The model and its
partials come from :mod:`gradfit.formula.c_code`; the library is built and cached by
:mod:`gradfit._native`. Evaluations are in the batch's dtype and the blocks accumulate in
double (the torch kernel forms the products in the evaluation dtype), so the two agree to the
evaluation's rounding.

Callers keep the torch kernel for bounds, Poisson likelihoods, torchrun and GPUs.
"""

from __future__ import annotations

import math

from functools import lru_cache

from ..status import Status
from .batch_lm import LAMBDA0, LAMBDA_MAX
from .global_lm import RUNNING, GlobalState
from .native_common import COLUMNS, cached_kernel, normal_sums_source

__all__ = ["NativeGlobal", "global_kernel", "global_source"]

_TEMPLATE = r"""
#include <stdlib.h>
#include <string.h>
#define PL {pl}
#define PS {ps}
#define P (PL + PS)
#define NIN {n_inputs}
#define ACC real
{columns}
{lanes}
#define RUNNING ({running})
#define CONVERGED {converged}
#define STALLED {stalled}
#define SINGULAR {singular}
#define NOT_FINITE {not_finite}
static const double LAMBDA_MAX = {lambda_max};

/* Cholesky of (M + lam diag(M)) over the active coordinates, the identity over the others
   (batch_solve.damped_solve's unrolled order); m is n x n, row-major. */
static inline __attribute__((always_inline)) int factor_n(int n, const double *m, double lam, const int *active,
                                                            double *low) {{
    int ok = 1;
    for (int j = 0; j < n; j++) {{
        double s = active[j] ? m[j * n + j] * (1.0 + lam) : 1.0;
        for (int k = 0; k < j; k++) s -= low[j * n + k] * low[j * n + k];
        ok = ok && (s > 0);
        double dj = sqrt(s > 1e-300 ? s : 1e-300);
        low[j * n + j] = dj;
        for (int i = j + 1; i < n; i++) {{
            double t = (active[i] && active[j]) ? m[i * n + j] : 0.0;
            for (int k = 0; k < j; k++) t -= low[i * n + k] * low[j * n + k];
            low[i * n + j] = t / dj;
        }}
    }}
    return ok;
}}

static inline __attribute__((always_inline)) void solve_n(int n, const double *low, const double *rhs,
                                                           const int *active, double *x) {{
    double z[PL > PS ? PL : PS];
    for (int i = 0; i < n; i++) {{
        double t = active[i] ? rhs[i] : 0.0;
        for (int k = 0; k < i; k++) t -= low[i * n + k] * z[k];
        z[i] = t / low[i * n + i];
    }}
    for (int i = n - 1; i >= 0; i--) {{
        double t = z[i];
        for (int k = i + 1; k < n; k++) t -= low[k * n + i] * x[k];
        x[i] = t / low[i * n + i];
    }}
}}

/* lsq/global_fit._covariance, first half: per fit in the joint problem, A^-1 [I, C] into
   `both` (n, PL, PL + PS) from one factorization; a fit whose A does not factor, is not finite or
   fails the rank screen F trace(M^-1) < 1 / rank_tol2 leaves it (singular[b] = 1); the sums
   over the others: D, C^T A^-1 C, their count, points and chi-square (sums: PS*PS + PS*PS + 3). */
void gf_cov_sums(long n, const double *a, const double *c, const double *d, const double *chi2,
                 const double *n_used, const double *free_l_in, double rank_tol2, unsigned char *included,
                 unsigned char *singular, double *both, double *sums) {{
    int free_l[PL > 0 ? PL : 1];
    double n_free = 0;
    for (int i = 0; i < PL; i++) {{ free_l[i] = free_l_in[i] != 0; n_free += free_l[i]; }}
    memset(sums, 0, sizeof(double) * (2 * PS * PS + 3));
    for (long b = 0; b < n; b++) {{
        singular[b] = 0;
        if (!included[b]) continue;
        const double *ab = a + b * PL * PL;
        double low[PL * PL > 0 ? PL * PL : 1], *bb = both + b * PL * (PL + PS);
        int ok = factor_n(PL, ab, 0.0, free_l, low);
        for (int col = 0; col < PL + PS; col++) {{
            double rhs[PL > 0 ? PL : 1], x[PL > 0 ? PL : 1];
            for (int i = 0; i < PL; i++) rhs[i] = col < PL ? (i == col ? 1.0 : 0.0) : c[(b * PL + i) * PS + col - PL];
            solve_n(PL, low, rhs, free_l, x);
            for (int i = 0; i < PL; i++) {{ bb[i * (PL + PS) + col] = x[i]; ok = ok && isfinite(x[i]); }}
        }}
        double trace_inv = 0;
        for (int i = 0; i < PL; i++) trace_inv += (ok ? bb[i * (PL + PS) + i] : 0.0) * ab[i * PL + i];
        ok = ok && isfinite(trace_inv) && n_free * trace_inv < 1.0 / rank_tol2;
        if (!ok) {{ singular[b] = 1; included[b] = 0; continue; }}
        for (int i = 0; i < PS; i++)
            for (int k = 0; k < PS; k++) {{
                double ctx = 0;
                for (int q = 0; q < PL; q++) ctx += c[(b * PL + q) * PS + i] * bb[q * (PL + PS) + PL + k];
                sums[i * PS + k] += d[(b * PS + i) * PS + k];
                sums[PS * PS + i * PS + k] += ctx;
            }}
        sums[2 * PS * PS] += 1.0;
        sums[2 * PS * PS + 1] += n_used[b];
        sums[2 * PS * PS + 2] += chi2[b];
    }}
}}

/* lsq/global_fit._covariance, second half: with S0^-1 (PS x PS, zero over fixed shared ones) and
   the scale chi2 / dof, each fit's block of the joint covariance over (local, shared),
   [[A^-1 + X S0^-1 X^T, -X S0^-1], [-S0^-1 X^T, S0^-1]] * scale with X = A^-1 C (NaN outside the
   joint problem), and its local standard errors (0 for fixed local parameters). */
void gf_cov_blocks(long n, const double *both, const unsigned char *included, const double *s_inv, double scale,
                   const double *free_l_in, double *cov, double *se_l) {{
    for (long b = 0; b < n; b++) {{
        const double *bb = both + b * PL * (PL + PS);
        double *cb = cov + b * P * P;
        if (!included[b]) {{
            for (int i = 0; i < P * P; i++) cb[i] = NAN;
            for (int i = 0; i < PL; i++) se_l[b * PL + i] = NAN;
            continue;
        }}
        double xs[PL > 0 ? PL : 1][PS];
        for (int i = 0; i < PL; i++)
            for (int k = 0; k < PS; k++) {{
                double t = 0;
                for (int q = 0; q < PS; q++) t += bb[i * (PL + PS) + PL + q] * s_inv[q * PS + k];
                xs[i][k] = t;
            }}
        for (int i = 0; i < PL; i++) {{
            for (int k = 0; k < PL; k++) {{
                double t = bb[i * (PL + PS) + k];
                for (int q = 0; q < PS; q++) t += xs[i][q] * bb[k * (PL + PS) + PL + q];
                cb[i * P + k] = t * scale;
            }}
            for (int k = 0; k < PS; k++) {{ cb[i * P + PL + k] = -xs[i][k] * scale; cb[(PL + k) * P + i] = -xs[i][k] * scale; }}
            double v = bb[i * (PL + PS) + i];
            for (int q = 0; q < PS; q++) v += xs[i][q] * bb[i * (PL + PS) + PL + q];
            v *= scale;
            se_l[b * PL + i] = free_l_in[i] != 0 ? sqrt(v > 0 ? v : 0.0) : 0.0;
        }}
        for (int i = 0; i < PS; i++)
            for (int k = 0; k < PS; k++) cb[(PL + i) * P + PL + k] = s_inv[i * PS + k] * scale;
    }}
}}

/* global_lm.step (no bounds, least squares, one process) until the joint problem ends or
   max_iter iterations. State arrays are read as the start and hold the end point. Returns the
   joint status (RUNNING: max_iter reached). */
long gf_global(long n, long m, const real *const *xs, const long *x_stride, const real *y, const real *w,
               const double *free_l_in, const double *free_s_in, double tol, long max_iter, double floor2,
               const double *rounding2, double *local, double *shared, double *chi2, double *a, double *c,
               double *d, double *g_local, double *g_shared, unsigned char *included, long *fit_status,
               long *iterations_out, double *lam_out, double *total_out) {{
    int free_l[PL > 0 ? PL : 1], free_s[PS];
    for (int i = 0; i < PL; i++) free_l[i] = free_l_in[i] != 0;
    for (int i = 0; i < PS; i++) free_s[i] = free_s_in[i] != 0;
    double *t_local = malloc(sizeof(double) * n * (PL > 0 ? PL : 1));
    double *t_chi2 = malloc(sizeof(double) * n);
    double *t_n = malloc(sizeof(double) * n * P * P);
    double *t_g = malloc(sizeof(double) * n * P);
    double *xu = malloc(sizeof(double) * n * (PL > 0 ? PL : 1) * (PS + 1));
    unsigned char *finite = malloc(n);
    real *cols = malloc(sizeof(real) * (m > 0 ? m : 1) * (P + 2));
    /* the fits in blocks of L, each block's data point by point across its lanes (optim/native_lanes.py) */
    const long mm_ = m > 0 ? m : 1, nblocks = (n + L - 1) / L;
    lanes_t *S = 0;
    real *yT = 0, *wT = 0, *xT[NIN > 0 ? NIN : 1] = {{0}};
    long status = RUNNING;
    int ok_alloc = posix_memalign((void **)&S, 64, sizeof(lanes_t)) == 0;
    ok_alloc = ok_alloc && posix_memalign((void **)&yT, 64, sizeof(real) * nblocks * mm_ * L) == 0;
    ok_alloc = ok_alloc && posix_memalign((void **)&wT, 64, sizeof(real) * nblocks * mm_ * L) == 0;
    for (int q = 0; q < NIN; q++)
        ok_alloc = ok_alloc && posix_memalign((void **)&xT[q], 64, sizeof(real) * (x_stride[q] ? nblocks : 1) * mm_ * L) == 0;
    if (!t_local || !t_chi2 || !t_n || !t_g || !xu || !finite || !cols || !ok_alloc) {{ status = -2; goto done; }}
    memset(S, 0, sizeof(lanes_t));
    for (long blk = 0; blk < nblocks; blk++)
        for (long j = 0; j < m; j++)
            for (int l = 0; l < L; l++) {{
                long b = blk * L + l, at = (blk * m + j) * L + l;
                yT[at] = b < n ? y[b * m + j] : (real)0;
                wT[at] = b < n ? (w ? w[b * m + j] : (real)1) : (real)0;
                for (int q = 0; q < NIN; q++)
                    if (x_stride[q]) xT[q][at] = b < n ? xs[q][b * x_stride[q] + j] : (real)0;
                    else if (blk == 0) xT[q][j * L + l] = xs[q][j];
            }}
    double t_shared[PS];
    memcpy(t_local, local, sizeof(double) * n * PL);
    memcpy(t_shared, shared, sizeof(double) * PS);
    double lam = {lambda0}, total = INFINITY;
    long it = 0;
    for (; it < max_iter; ) {{
        /* 1. every fit's blocks at the trial point, L fits at a time (sums in the evaluation
           dtype, as the torch loop's products) */
        for (long blk = 0; blk < nblocks; blk++) {{
            for (int l = 0; l < L; l++) {{
                long b = blk * L + l < n ? blk * L + l : blk * L;  /* an empty lane repeats the block's first fit */
                for (int i = 0; i < PL; i++) S->tr[i][l] = (real)t_local[b * PL + i];
                for (int i = 0; i < PS; i++) S->tr[PL + i][l] = (real)t_shared[i];
            }}
            real *xl[NIN > 0 ? NIN : 1];
            for (int q = 0; q < NIN; q++) xl[q] = xT[q] + (x_stride[q] ? blk * m * L : 0);
            lanes_invariants(S);
            lanes_sums(m, S, xl, yT + blk * m * L, wT + blk * m * L);
            for (int l = 0; l < L && blk * L + l < n; l++) {{
                long b = blk * L + l, q = 0;
                for (int i = 0; i <= P; i++)
                    for (int k = 0; k <= i; k++, q++) {{
                        double v = S->sums[q][l];
                        if (i < P) {{ t_n[b * P * P + i * P + k] = v; t_n[b * P * P + k * P + i] = v; }}
                        else if (k < P) t_g[b * P + k] = v;
                        else t_chi2[b] = v;
                    }}
                double s = t_chi2[b];
                for (int i = 0; i < P * P; i++) s += t_n[b * P * P + i];
                for (int i = 0; i < P; i++) s += t_g[b * P + i];
                finite[b] = isfinite(s);
            }}
        }}
        int first = isinf(total);
        if (first)
            for (long b = 0; b < n; b++)
                if (included[b] && !finite[b]) {{ fit_status[b] = NOT_FINITE; included[b] = 0; }}
        double trial_total = 0, old_total = 0, n_bad = 0, n_fits = 0, noise2 = 0;
        for (long b = 0; b < n; b++) {{
            if (!included[b]) continue;
            double old = first ? 0.0 : chi2[b];
            trial_total += t_chi2[b]; old_total += old; n_bad += !finite[b]; n_fits += 1;
            if (rounding2 && !first) noise2 += rounding2[b] * old;
        }}
        double noise = (rounding2 && !first) ? sqrt(noise2) : 0.0;
        double tol_eff = tol / (n_fits > 1 ? n_fits : 1.0);
        if (first) old_total = INFINITY;
        int accept = n_bad == 0 && trial_total <= old_total + noise;
        lam = accept ? lam * 0.1 : lam * 10.0;
        if (accept) {{
            for (long b = 0; b < n; b++) {{
                const double *nb = t_n + b * P * P;
                for (int i = 0; i < PL; i++) {{
                    local[b * PL + i] = t_local[b * PL + i];
                    g_local[b * PL + i] = t_g[b * P + i];
                    for (int k = 0; k < PL; k++) a[(b * PL + i) * PL + k] = nb[i * P + k];
                    for (int k = 0; k < PS; k++) c[(b * PL + i) * PS + k] = nb[i * P + PL + k];
                }}
                for (int i = 0; i < PS; i++) {{
                    g_shared[b * PS + i] = t_g[b * P + PL + i];
                    for (int k = 0; k < PS; k++) d[(b * PS + i) * PS + k] = nb[(PL + i) * P + PL + k];
                }}
                chi2[b] = t_chi2[b];
            }}
            memcpy(shared, t_shared, sizeof(double) * PS);
            total = trial_total;
        }}
        it += 1;
        int settled = accept && !first;
        double change = fabs(old_total - trial_total);
        double limit = tol_eff * trial_total > noise ? tol_eff * trial_total : noise;
        int small = settled && change < limit;
        int at_floor = settled && trial_total <= floor2;
        /* 3. the damped joint step by the Schur complement */
        double dtot[PS * PS], gs[PS], mm[(PS + 1) * (PS + 1)];
        memset(dtot, 0, sizeof(dtot)); memset(gs, 0, sizeof(gs)); memset(mm, 0, sizeof(mm));
        for (long b = 0; b < n; b++) {{
            if (!included[b]) continue;
            double low[PL * PL > 0 ? PL * PL : 1], e[PL > 0 ? PL : 1][PS + 1];
            double *xb = xu + b * (PL > 0 ? PL : 1) * (PS + 1);
            int ok = factor_n(PL, a + b * PL * PL, lam, free_l, low);
            for (int col = 0; col <= PS; col++) {{
                double rhs[PL > 0 ? PL : 1], x[PL > 0 ? PL : 1];
                for (int i = 0; i < PL; i++) {{
                    e[i][col] = col < PS ? c[(b * PL + i) * PS + col] : g_local[b * PL + i];
                    rhs[i] = col < PS ? e[i][col] : -e[i][col];
                }}
                solve_n(PL, low, rhs, free_l, x);
                for (int i = 0; i < PL; i++) {{ xb[i * (PS + 1) + col] = x[i]; ok = ok && isfinite(x[i]); }}
            }}
            if (!ok) {{ fit_status[b] = SINGULAR; included[b] = 0; continue; }}
            for (int i = 0; i < PS; i++) {{
                gs[i] += g_shared[b * PS + i];
                for (int k = 0; k < PS; k++) dtot[i * PS + k] += d[(b * PS + i) * PS + k];
            }}
            for (int i = 0; i <= PS; i++)
                for (int k = 0; k <= PS; k++) {{
                    double s = 0;
                    for (int q = 0; q < PL; q++) s += e[q][i] * xb[q * (PS + 1) + k];
                    mm[i * (PS + 1) + k] += s;
                }}
        }}
        double schur[PS * PS], rhs_s[PS], low_s[PS * PS], ds[PS];
        int finite_schur = 1;
        for (int i = 0; i < PS; i++) {{
            for (int k = 0; k < PS; k++) {{
                schur[i * PS + k] = dtot[i * PS + k] - mm[i * (PS + 1) + k] + (i == k ? dtot[i * PS + i] * lam : 0.0);
                if (free_s[i] && free_s[k]) finite_schur = finite_schur && isfinite(schur[i * PS + k]);
            }}
            rhs_s[i] = -gs[i] - mm[i * (PS + 1) + PS];
        }}
        int ok_s = factor_n(PS, schur, 0.0, free_s, low_s) && finite_schur;
        if (!ok_s) {{ status = SINGULAR; break; }}
        solve_n(PS, low_s, rhs_s, free_s, ds);
        double predicted = mm[PS * (PS + 1) + PS];
        for (int i = 0; i < PS; i++) predicted += -mm[PS * (PS + 1) + i] * ds[i] + gs[i] * ds[i];
        predicted = -predicted;
        double limit2 = tol_eff * total > noise ? tol_eff * total : noise;
        if (at_floor || (small && predicted * (1.0 + lam) <= limit2)) {{ status = CONVERGED; break; }}
        if (lam > LAMBDA_MAX) {{ status = STALLED; break; }}
        for (long b = 0; b < n; b++) {{
            double *xb = xu + b * (PL > 0 ? PL : 1) * (PS + 1);
            for (int i = 0; i < PL; i++) {{
                double dl = 0;
                if (included[b]) {{
                    dl = xb[i * (PS + 1) + PS];
                    for (int k = 0; k < PS; k++) dl -= xb[i * (PS + 1) + k] * ds[k];
                }}
                t_local[b * PL + i] = local[b * PL + i] + dl;
            }}
        }}
        for (int i = 0; i < PS; i++) t_shared[i] = shared[i] + ds[i];
    }}
    *iterations_out = it;
    *lam_out = lam;
    double sum = 0;  /* the accepted total chi-square of the fits still in the joint problem */
    for (long b = 0; b < n; b++) if (included[b]) sum += chi2[b];
    *total_out = sum;
done:
    free(t_local); free(t_chi2); free(t_n); free(t_g); free(xu); free(finite); free(cols);
    free(S); free(yT); free(wT);
    for (int q = 0; q < NIN; q++) free(xT[q]);
    return status;
}}
"""


@lru_cache(maxsize=128)
def global_source(expression, names: tuple[str, ...], n_shared: int, inputs: tuple[str, ...], double: bool) -> str:
    """The C source of the global kernel: ``names`` are the model's parameters in kernel order
    (the local ones, then the ``n_shared`` shared ones), evaluated in double or float."""
    from ..formula.c_code import PRELUDE, model_source, point_program
    from .native_lanes import lanes_sums_source

    real = "double" if double else "float"
    program = point_program(expression, inputs, names)
    head = f"typedef {real} real;\n{PRELUDE}\n{model_source(expression, inputs, names, program)}"
    lanes = lanes_sums_source(program, len(names), len(inputs), double)
    return head + _TEMPLATE.format(lanes=lanes,
        pl=len(names) - n_shared, ps=n_shared, n_inputs=len(inputs), running=RUNNING,
        converged=Status.CONVERGED.code, stalled=Status.STALLED.code, singular=Status.SINGULAR.code,
        not_finite=Status.NOT_FINITE.code, lambda_max=repr(float(LAMBDA_MAX)), lambda0=repr(float(LAMBDA0)),
        columns=COLUMNS + normal_sums_source(len(names)))


class NativeGlobal:
    """A loaded global kernel: :meth:`run` solves the joint problem from a :class:`GlobalState`."""

    def __init__(self, lib, double: bool, inputs: tuple[str, ...]):
        import ctypes

        self.inputs = inputs
        fn = lib.gf_global
        ptr = ctypes.c_void_p
        fn.argtypes = [ctypes.c_long, ctypes.c_long, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_double, ctypes.c_long,
                       ctypes.c_double, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr]
        fn.restype = ctypes.c_long
        self.fn = fn
        self.cov_sums = lib.gf_cov_sums
        self.cov_sums.argtypes = [ctypes.c_long, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_double, ptr, ptr, ptr, ptr]
        self.cov_sums.restype = None
        self.cov_blocks = lib.gf_cov_blocks
        self.cov_blocks.argtypes = [ctypes.c_long, ptr, ptr, ptr, ctypes.c_double, ptr, ptr, ptr]
        self.cov_blocks.restype = None

    def covariance(self, state: GlobalState, free_l, free_s, n_used, rank_tol: float, joint_scale):
        """lsq/global_fit._covariance for least squares in C: (se_l (B, P_l), se_s (P_s,),
        singular (B,) bool, stats, covariance (B, P, P) over (local, shared)) as numpy arrays.
        ``joint_scale(d_tot, ctx, n_inc, n_pts, chi2) -> (stats, scale, s_inv or None, factored)``
        is the Python half shared with the torch path (the joint statistics and the Schur inverse)."""
        import numpy as np

        b, pl = state.local.shape
        ps = state.shared.shape[0]
        f64 = lambda t: np.ascontiguousarray(t.numpy(), dtype=np.float64)  # noqa: E731
        a, c, d, chi2 = f64(state.a), f64(state.c), f64(state.d), f64(state.chi2)
        used = np.ascontiguousarray(n_used, dtype=np.float64)
        fl = np.ascontiguousarray(free_l, dtype=np.float64)
        included = np.ascontiguousarray(state.included.numpy(), dtype=np.uint8)
        singular = np.zeros(b, dtype=np.uint8)
        both = np.empty((b, pl, pl + ps))
        sums = np.empty(2 * ps * ps + 3)
        self.cov_sums(b, a.ctypes.data, c.ctypes.data, d.ctypes.data, chi2.ctypes.data, used.ctypes.data,
                      fl.ctypes.data, rank_tol**2, included.ctypes.data, singular.ctypes.data, both.ctypes.data,
                      sums.ctypes.data)
        d_tot, ctx = sums[:ps * ps].reshape(ps, ps), sums[ps * ps:2 * ps * ps].reshape(ps, ps)
        n_inc, n_pts, total = sums[2 * ps * ps:]
        stats, scale, s_inv, factored = joint_scale(d_tot, ctx, n_inc, n_pts, total)
        singular = singular.astype(bool)
        if s_inv is None:  # the shared block is undetermined: every fit still in the joint problem with it
            return np.full((b, pl), np.nan), np.where(np.asarray(free_s) > 0, np.nan, 0.0), \
                singular | (included.astype(bool) if not factored else False), stats, np.full((b, pl + ps, pl + ps), np.nan)
        s_inv = np.ascontiguousarray(s_inv, dtype=np.float64)
        cov = np.empty((b, pl + ps, pl + ps))
        se_l = np.empty((b, pl))
        self.cov_blocks(b, both.ctypes.data, included.ctypes.data, s_inv.ctypes.data, scale, fl.ctypes.data,
                        cov.ctypes.data, se_l.ctypes.data)
        se_s = np.array([math.sqrt(max(v * scale, 0.0)) for v in np.diagonal(s_inv).tolist()])
        return se_l, se_s, singular, stats, cov

    def run(self, local0, shared0, status0, inputs: dict, y, w, free_l, free_s, *, tol: float, max_iter: int,
            floor2: float, rounding2) -> GlobalState:
        """The joint loop from the starts ``local0`` (B, P_l) and ``shared0`` (P_s,) (float64) and
        the per-fit statuses ``status0`` (B,) (RUNNING, or the code of a fit that cannot take part)
        to its end, as :func:`gradfit.optim.global_lm.init` and ``step`` would go: a GlobalState
        (of tensors). ``inputs`` (M,) or (B, M), ``y`` and ``w`` (B, M) (None: every weight 1) are
        numpy arrays in the evaluation dtype; ``rounding2`` (B,) float64 or None."""
        import ctypes

        import numpy as np
        import torch

        b, m = y.shape
        pl, ps = local0.shape[1], shared0.shape[0]
        xs = [np.ascontiguousarray(inputs[k]) for k in self.inputs]
        y = np.ascontiguousarray(y)
        w = None if w is None else np.ascontiguousarray(w)
        x_ptrs = (ctypes.c_void_p * max(len(xs), 1))(*[x.ctypes.data for x in xs])
        x_stride = (ctypes.c_long * max(len(xs), 1))(*[(m if x.ndim == 2 else 0) for x in xs])
        arrays = {"local": np.array(local0, dtype=np.float64, order="C"), "shared": np.array(shared0, dtype=np.float64),
                  "chi2": np.full(b, np.inf), "a": np.zeros((b, pl, pl)), "c": np.zeros((b, pl, ps)),
                  "d": np.zeros((b, ps, ps)), "g_local": np.zeros((b, pl)), "g_shared": np.zeros((b, ps))}
        status0 = np.asarray(status0)
        included = (status0 == RUNNING).astype(np.uint8)
        fit_status = np.array(status0, dtype=np.int64)
        free_l_a, free_s_a = np.array(free_l, dtype=np.float64), np.array(free_s, dtype=np.float64)
        r2 = None if rounding2 is None else np.ascontiguousarray(rounding2, dtype=np.float64)
        iterations, lam, total = ctypes.c_long(0), ctypes.c_double(0.0), ctypes.c_double(0.0)
        v = arrays  # written in place by the C loop
        status = self.fn(b, m, x_ptrs, x_stride, y.ctypes.data, None if w is None else w.ctypes.data,
                         free_l_a.ctypes.data, free_s_a.ctypes.data, tol, max_iter, floor2,
                         None if r2 is None else r2.ctypes.data, v["local"].ctypes.data, v["shared"].ctypes.data,
                         v["chi2"].ctypes.data, v["a"].ctypes.data, v["c"].ctypes.data, v["d"].ctypes.data,
                         v["g_local"].ctypes.data, v["g_shared"].ctypes.data, included.ctypes.data, fit_status.ctypes.data,
                         ctypes.byref(iterations), ctypes.byref(lam), ctypes.byref(total))
        if status == -2:
            raise MemoryError("the native global kernel could not allocate its work arrays")
        t = {k: torch.from_numpy(a) for k, a in arrays.items()}
        return GlobalState(trial_local=t["local"], trial_shared=t["shared"], lam=float(lam.value),
                           included=torch.from_numpy(included.astype(bool)),
                           fit_status=torch.from_numpy(fit_status),
                           status=int(status), iterations=int(iterations.value), total=float(total.value), **t)


def global_kernel(model, names: tuple[str, ...], n_shared: int, inputs: tuple[str, ...], dtype, *,
                  build: bool = True):
    """The native global kernel for this formula model (``names`` in kernel order: local, then
    shared): ``(NativeGlobal, "")`` or ``(None, reason)``, as :func:`gradfit.optim.native_lm.kernel`."""
    return cached_kernel(model, dtype, ("global", tuple(names), n_shared, tuple(inputs)), build,
                         lambda expression, double: global_source(expression, tuple(names), n_shared, tuple(inputs),
                                                                  double),
                         lambda lib, double: NativeGlobal(lib, double, tuple(inputs)))
