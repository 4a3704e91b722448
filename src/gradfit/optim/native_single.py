"""Levenberg-Marquardt for one fit as one C loop: the native kernel of ``gf.fit``.

:func:`gradfit.optim.lm.levenberg_marquardt` spends ~40 us per iteration on a 100-point fit,
almost all of it Python and numpy call overhead around a few hundred floating-point
operations; MINPACK (scipy's curve_fit) runs the same algorithm in Fortran. This kernel runs
*the same algorithm* (lm.py's module docstring: Moré's trust region, the damping found on the
singular system of ``J D^-1``, from the eigendecomposition of the scaled Gram matrix for long
well-conditioned data and from the SVD of ``J D^-1`` otherwise, the same acceptance, radius
updates, convergence tests and final stationarity test) with the model and its partial
derivatives printed as C from the formula's symbolic program (:mod:`gradfit.formula.c_code`).
The small dense algebra is its own (:mod:`gradfit.optim.native_subproblem`: Jacobi's
eigensolver and SVD, where LAPACK's are not worth a call for a few parameters). At the end it
hands back the Jacobian, the residuals and the scaled Gram matrix's eigendecomposition with the
range cosine, which the end-point test and the covariance reuse.

It covers unbounded fits of a formula without tied parameters, least squares, weights
included; the caller (:mod:`gradfit.lsq.solve`) runs lm.py for everything else, and for a
start where the model or its derivatives are not finite (lm.py names the rows). The portfolio
of restarts (:func:`gradfit.optim.lm.robust_levenberg_marquardt`) calls this kernel once per
strategy. The library is built by the system C compiler and cached on disk
(:mod:`gradfit._native`); results agree with lm.py to rounding, not bit for bit.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import accumulate

import numpy as np

from ..status import Status
from .lm import SMALL_REDUCTION, LMOutcome
from . import native_common
from .native_common import cached_kernel
from .native_subproblem import SUBPROBLEM
from .trust_region import GRAM_CONDITION, GRAM_COVARIANCE, RANGE_GRAM_COND

__all__ = ["NativeSingleLM", "kernel", "kernel_source", "MESSAGES"]

#: the compiler's optimization level: -O2 builds this kernel in 0.4-0.5 s where -O3 takes 1.4-1.9 s
#: (gcc 12, 3-14 parameters), for the same speed within 5% (15% slower at 100,000 points, where
#: the fit takes 5.6 ms against curve_fit's 19.5 ms); a single fit pays for its build sooner
LEVEL = "-O2"

#: runs with a max_iter this large go to lm.py (the kernel keeps a history entry per iteration)
MAX_HISTORY = 1_000_000

#: the C kernel's message codes -> lm.py's messages
MESSAGES = ("residuals at working precision", "scaled gradient below gtol", "relative cost reduction below ftol",
            "relative step below xtol", "no further reduction possible at working precision")

_TEMPLATE = r"""
#include <string.h>
#define NOT_FINITE_START (-1)

/* cols (P + 1 rows of n): row 0 the weighted residuals sw (f - y), rows 1..P the weighted partials */
static void evaluate(long n, const real *const *xs, const real *y, const real *sw, const real *pfull, real *cols) {
    real h[GF_NH];
    long offs[NIN > 0 ? NIN : 1];
    for (int q = 0; q < NIN; q++) offs[q] = 0;
    gf_invariants(pfull, h);
    gf_columns(n, xs, offs, h, cols);
    if (sw) {
        for (long j = 0; j < n; j++) cols[j] = (cols[j] - y[j]) * sw[j];
        for (int i = 1; i <= P; i++)
            for (long j = 0; j < n; j++) cols[i * n + j] *= sw[j];
    } else {
        for (long j = 0; j < n; j++) cols[j] -= y[j];
    }
}

/* column norms of J (and J^T J when n >= 4F, as lm._gram); 1 when J is finite (lm._finite) */
static int gram_and_norms(long n, int nf, const real *cols, const long *fi, int long_data, real *gram, real *cn) {
    real total = 0;
    for (int i = 0; i < nf; i++) {
        const real *ci = cols + (1 + fi[i]) * n;
        if (long_data) {
            for (int k = 0; k <= i; k++) {
                real s = dot(n, ci, cols + (1 + fi[k]) * n);
                gram[i * nf + k] = s;
                gram[k * nf + i] = s;
            }
            cn[i] = sqrt(gram[i * nf + i]);
        } else {
            cn[i] = sqrt(dot(n, ci, ci));
        }
        total += cn[i];
    }
    if (isfinite(total)) return 1;
    for (int i = 0; i < nf; i++) {
        const real *ci = cols + (1 + fi[i]) * n;
        for (long j = 0; j < n; j++) if (!isfinite(ci[j])) return 0;
    }
    return 1;
}

/* MINPACK's gtol measure: max_j |g_j| / (||J_j|| ||r||) over columns with ||J_j|| > 0 (lm_tests.scaled_gradient) */
static real scaled_gradient(int nf, const real *g, const real *cn, real rn) {
    if (rn == 0) return 0;
    real best = 0;
    int any = 0;
    for (int i = 0; i < nf; i++) {
        if (!(cn[i] > 0)) continue;
        real c = fabs(g[i]) / (cn[i] * rn);
        if (c != c) return NAN;
        if (!any || c > best) best = c;
        any = 1;
    }
    return best;
}

static real vnorm(long n, const real *v) { return sqrt(dot(n, v, v)); }

/* One Levenberg-Marquardt run (optim/lm.py, unbounded) on n points with nf free parameters.
   work (reals): the inputs (input q of point j at [q * n + j]), y, sqrt(w) (when weighted), the
   free parameters' indices (nf, as reals), two evaluation buffers ((P + 1) * n each), the SVD's
   work array (nf * n), the tail (9).
   head: opts (8: ftol, xtol, gtol, stationary, residual floor, factor, scaling (0: Jacobian,
   1: none), max_iter), x (nf free parameters, overwritten by the end point), every parameter's
   value (P), then the outputs: the history (max_iter + 1), the end point's Jacobian (n, nf)
   row-major, residuals (n), J^T J (nf, nf), and scaled_gram_eigh's column norms (nf), ascending
   eigenvalues (nf), eigenvectors (nf, nf) and (J^T J)^-1 (nf, nf). Returns the status code, or
   NOT_FINITE_START (nothing done: the caller reports it). The tail receives the iterations,
   residual and Jacobian evaluations, history length and message code, then ||r||, the
   stationarity measure of a stalled end, whether the eigendecomposition is there (2: and the
   inverse), and the range cosine (NaN: not from the Gram matrix). */
long gf_single(real *work, long n, long nf_, long weighted, real *head) {
    const int nf = (int)nf_;
    const real *xbase = work, *y = work + NIN * n, *sw = weighted ? y + n : 0;
    const real *fi_real = y + n * (weighted ? 2 : 1);
    long fi[P];
    for (int i = 0; i < nf; i++) fi[i] = (long)fi_real[i];
    real *cur = (real *)fi_real + nf, *trial = cur + (P + 1) * n, *scratch = trial + (P + 1) * n;
    real *tail = scratch + nf * n;
    const real *opts = head;
    real *x = head + 8, *pfull = x + nf;
    real *history = pfull + P;
    real *out_jac = history + ((long)opts[7] + 1), *out_r = out_jac + n * nf, *out_gram = out_r + n;
    real *fout = tail + 5;
    const real *xs[NIN > 0 ? NIN : 1];
    for (int q = 0; q < NIN; q++) xs[q] = xbase + q * n;
    const real ftol = opts[0], xtol = opts[1], gtol = opts[2], stationary = opts[3], floor_ = opts[4];
    const real factor = opts[5];
    const int unscaled = opts[6] != 0;
    const long max_iter = (long)opts[7];
    const int long_data = n >= 4 * (long)nf;
    real cn[P], d[P], g[P], gram[P * P], cn_new[P], gram_new[P * P], x_new[P], z[P];
    for (int i = 0; i < nf; i++) pfull[fi[i]] = x[i];
    evaluate(n, xs, y, sw, pfull, cur);
    real fnorm = vnorm(n, cur);
    if (!isfinite(fnorm)) return NOT_FINITE_START;
    if (!gram_and_norms(n, nf, cur, fi, long_data, gram, cn)) return NOT_FINITE_START;
    for (int i = 0; i < nf; i++) d[i] = unscaled ? 1 : (cn[i] > 0 ? cn[i] : 1);
    real xnorm = 0;
    for (int i = 0; i < nf; i++) xnorm += (d[i] * x[i]) * (d[i] * x[i]);
    xnorm = sqrt(xnorm);
    real delta = xnorm > 0 ? factor * xnorm : factor, lam = 0;
    long it = 0, n_res = 1, n_jac = 1, nh = 0, message = 0;
    long status = RUNNING;
    history[nh++] = 0.5 * fnorm * fnorm;
    subproblem sp;
    while (status == RUNNING) {
        if (it >= max_iter) { status = MAX_ITERATIONS; break; }
        const long it_next = it + 1;
        for (int i = 0; i < nf; i++) g[i] = dot(n, cur + (1 + fi[i]) * n, cur);
        if (fnorm <= floor_) { it = it_next; status = CONVERGED; message = 0; break; }
        if (scaled_gradient(nf, g, cn, fnorm) <= gtol) { it = it_next; status = CONVERGED; message = 1; break; }
        make_subproblem(n, nf, cur, fi, d, long_data, gram, g, scratch, &sp);
        int accepted = 0;
        while (1) {
            lam = damping_for(&sp, delta, lam);
            scaled_step(&sp, nf, lam, z);
            real pnorm = 0;
            for (int i = 0; i < nf; i++) { x_new[i] = x[i] + z[i] / d[i]; pnorm += z[i] * z[i]; }
            pnorm = sqrt(pnorm);
            if (it_next == 1 && pnorm < delta) delta = pnorm;
            for (int i = 0; i < nf; i++) pfull[fi[i]] = x_new[i];
            evaluate(n, xs, y, sw, pfull, trial);
            n_res++;
            real fnorm1 = vnorm(n, trial);
            if (!isfinite(fnorm1)) fnorm1 = INFINITY;
            real actred = 0.1 * fnorm1 < fnorm ? 1 - (fnorm1 / fnorm) * (fnorm1 / fnorm) : -1;
            if (fabs(actred) < SMALL_REDUCTION) {  /* lm.py's precise form near convergence */
                real s = 0;
                for (long j = 0; j < n; j++) s += (trial[j] - cur[j]) * (trial[j] + cur[j]);
                actred = -s / (fnorm * fnorm);
            }
            real t1 = sqrt(predicted_norm2(&sp, lam)) / fnorm, t2 = sqrt(lam) * pnorm / fnorm;
            real prered = t1 * t1 + 2 * t2 * t2, dirder = -(t1 * t1 + t2 * t2);
            real ratio = prered > 0 ? actred / prered : 0;
            accepted = 0;
            if (ratio >= 1e-4) {
                n_jac++;
                if (gram_and_norms(n, nf, trial, fi, long_data, gram_new, cn_new)) accepted = 1;
                else { ratio = 0; actred = -1; }
            }
            if (ratio <= 0.25) {
                real temp = actred >= 0 ? 0.5 : (dirder + 0.5 * actred != 0 ? 0.5 * dirder / (dirder + 0.5 * actred) : 0.1);
                if (0.1 * fnorm1 >= fnorm || temp < 0.1) temp = 0.1;
                real cap = pnorm / 0.1;
                delta = temp * (delta < cap ? delta : cap);
                lam = lam / temp;
            } else if (lam == 0 || ratio >= 0.75) {
                delta = pnorm / 0.5;
                lam = 0.5 * lam;
            }
            if (accepted) {
                real *t = cur; cur = trial; trial = t;
                for (int i = 0; i < nf; i++) x[i] = x_new[i];
                fnorm = fnorm1;
                memcpy(cn, cn_new, sizeof cn);
                if (long_data) memcpy(gram, gram_new, sizeof gram);
                xnorm = 0;
                for (int i = 0; i < nf; i++) {
                    if (!unscaled && cn[i] > d[i]) d[i] = cn[i];
                    xnorm += (d[i] * x[i]) * (d[i] * x[i]);
                }
                xnorm = sqrt(xnorm);
                history[nh++] = 0.5 * fnorm * fnorm;
            }
            if (fabs(actred) <= ftol && 0 <= prered && prered <= ftol && 0.5 * ratio <= 1) { status = CONVERGED; message = 2; }
            else if (delta <= xtol * xnorm) { status = CONVERGED; message = 3; }
            else if (delta <= 1e-300 || (lam > 0 && !isfinite(lam))) { status = CONVERGED; message = 4; }
            if (status != RUNNING || accepted) break;
        }
        it = it_next;
    }
    for (int i = 0; i < nf; i++) pfull[fi[i]] = x[i];
    fout[0] = fnorm;
    fout[1] = 0;
    if (status == CONVERGED && fnorm > floor_) {  /* lm._finished: the end point must be stationary */
        for (int i = 0; i < nf; i++) g[i] = dot(n, cur + (1 + fi[i]) * n, cur);
        real measure = scaled_gradient(nf, g, cn, fnorm);
        if (!(measure <= stationary)) { status = STALLED; fout[1] = measure; }
    }
    for (long j = 0; j < n; j++) {
        out_r[j] = cur[j];
        for (int i = 0; i < nf; i++) out_jac[j * nf + i] = cur[(1 + fi[i]) * n + j];
    }
    if (!long_data) gram_and_norms(n, nf, cur, fi, 1, gram, cn);
    for (int i = 0; i < nf * nf; i++) out_gram[i] = gram[i];
    /* stats.scaled_gram_eigh at the end point (column norms, ascending eigenvalues, eigenvectors as
       columns) and, where it serves, stats.range_cosine_from_gram: the end-point test and the
       covariance reuse them (fout[2] = 1 when the eigendecomposition is there, fout[3] the cosine
       or NaN) */
    fout[2] = 0;
    fout[3] = NAN;
    real *norms = out_gram + nf * nf, *lam_up = norms + nf, *vec = lam_up + nf;
    real dmin = INFINITY, dsum = 0;
    for (int i = 0; i < nf; i++) { real di = gram[i * nf + i]; dsum += di; if (di < dmin) dmin = di; }
    if (nf > 0 && dmin > 0 && isfinite(dsum)) {
        real a[P * P], evals[P], v[P * P];
        for (int i = 0; i < nf; i++) norms[i] = sqrt(gram[i * nf + i]);
        for (int i = 0; i < nf; i++)
            for (int k = 0; k < nf; k++) a[i * nf + k] = gram[i * nf + k] / (norms[i] * norms[k]);
        jacobi_eigh(nf, a, evals, v);
        for (int i = 0; i < nf; i++) {  /* ascending, eigenvector i in column i */
            lam_up[i] = evals[nf - 1 - i];
            for (int m = 0; m < nf; m++) vec[m * nf + i] = v[(nf - 1 - i) * P + m];
        }
        fout[2] = 1;
        if (lam_up[0] > GRAM_COVARIANCE * lam_up[nf - 1]) {  /* stats.covariance_from_gram's (J^T J)^-1 */
            real *inv = vec + nf * nf;
            for (int i = 0; i < nf; i++)
                for (int k = 0; k <= i; k++) {
                    real t = 0;
                    for (int m = 0; m < nf; m++) t += vec[i * nf + m] * vec[k * nf + m] / lam_up[m];
                    inv[i * nf + k] = inv[k * nf + i] = t / (norms[i] * norms[k]);
                }
            fout[2] = 2;
        }
        real big = lam_up[nf - 1] > 1e-300 ? lam_up[nf - 1] : 1e-300;
        if (fnorm > 0 && isfinite(fnorm) && lam_up[0] > RANGE_GRAM_LIMIT * big) {
            for (int i = 0; i < nf; i++) g[i] = dot(n, cur + (1 + fi[i]) * n, cur);
            real c2 = 0;
            for (int i = 0; i < nf; i++) {
                real proj = 0;
                for (int m = 0; m < nf; m++) proj += vec[m * nf + i] * (g[m] / norms[m]);
                real ci = proj / sqrt(lam_up[i]);
                c2 += ci * ci;
            }
            fout[3] = sqrt(c2) / fnorm;
        }
    }
    tail[0] = it; tail[1] = n_res; tail[2] = n_jac; tail[3] = nh; tail[4] = message;
    return status;
}
"""


@lru_cache(maxsize=256)
def kernel_source(expression, names: tuple[str, ...], inputs: tuple[str, ...]) -> str:
    """The C source of the kernel for this formula (``expression``, a tree), its parameter
    ``names`` and ``inputs`` in this order (float64)."""
    from ..formula.c_code import PRELUDE, model_source

    head = [f"typedef double real;\n{PRELUDE}", f"#define P {len(names)}", f"#define NIN {len(inputs)}",
            f"#define RUNNING (-2)\n#define CONVERGED {Status.CONVERGED.code}",
            f"#define MAX_ITERATIONS {Status.MAX_ITERATIONS.code}\n#define STALLED {Status.STALLED.code}",
            f"#define RANGE_GRAM_LIMIT {RANGE_GRAM_COND ** -2!r}", f"#define SMALL_REDUCTION {SMALL_REDUCTION!r}",
            f"#define GRAM_COVARIANCE {GRAM_COVARIANCE!r}"]
    subproblem = SUBPROBLEM.replace("{gram_condition}", repr(GRAM_CONDITION))
    return "\n".join(head) + "\n" + model_source(expression, inputs, names) + subproblem + _TEMPLATE


class NativeSingleLM:
    """A loaded kernel; :meth:`runner` binds it to one problem's data."""

    def __init__(self, lib, names: tuple[str, ...], inputs: tuple[str, ...]):
        import ctypes

        self.names, self.inputs = names, inputs
        self.index = {name: i for i, name in enumerate(names)}
        fn = lib.gf_single
        ptr = ctypes.c_void_p
        fn.argtypes = [ptr, ctypes.c_long, ctypes.c_long, ctypes.c_long, ptr]
        fn.restype = ctypes.c_long
        self.fn = fn

    def runner(self, inputs: dict, y: np.ndarray, weights: np.ndarray | None, values: dict, free: tuple[str, ...]):
        """``run(x0, options) -> LMOutcome | None`` for this data: one Levenberg-Marquardt run
        from the free parameters ``x0`` with :class:`gradfit.optim.lm.LMOptions` (None: the model
        or its derivatives are not finite at the start; lm.py reports that). ``values`` gives the
        fixed parameters."""
        n, nf, p, k = len(y), len(free), len(self.names), len(self.inputs)
        fixed = [float(values[name]) for name in self.names]
        # one buffer (taking a pointer costs ~1 us), laid out as gf_single reads it
        sizes = (k * n, n, 0 if weights is None else n, nf, (p + 1) * n, (p + 1) * n, nf * n, 9)
        offsets = list(accumulate(sizes, initial=0))
        work = np.empty(offsets[-1])
        for q, name in enumerate(self.inputs):
            work[q * n:(q + 1) * n] = inputs[name]
        work[offsets[1]:offsets[2]] = y
        if weights is not None:
            np.sqrt(weights, out=work[offsets[2]:offsets[3]])
        work[offsets[3]:offsets[4]] = [self.index[name] for name in free]
        tail = work[-9:]
        long_data = n >= 4 * nf
        fn, work_at, weighted = self.fn, work.ctypes.data, weights is not None
        o_hist = 8 + nf + p

        def run(x0, options):
            if options.max_iter >= MAX_HISTORY:  # the history buffer would be as large: lm.py runs it
                return None
            ftol, xtol, gtol = options.tolerances
            # one array per run for what the outcome keeps (its own: a portfolio keeps the best run)
            h = options.max_iter + 1
            o_jac = o_hist + h
            o_r = o_jac + n * nf
            o_gram = o_r + n
            o_norms = o_gram + nf * nf
            head = np.empty(o_norms + 2 * nf + 2 * nf * nf)
            head[:o_hist] = [ftol, xtol, gtol, options.stationary, options.residual_floor, options.factor,
                             1.0 if options.scaling == "none" else 0.0, float(options.max_iter), *x0.tolist(), *fixed]
            code = fn(work_at, n, nf, weighted, head.ctypes.data)
            if code == -1:
                return None
            status = Status.from_code(code)
            iterations, n_res, n_jac, n_hist, message, fnorm, measure, has_eigh, cosine = tail.tolist()
            if status == Status.CONVERGED:
                text = MESSAGES[int(message)]
            elif status == Status.STALLED:
                text = (f"stopped at a point that is not stationary (scaled gradient {measure:.2e} > "
                        f"{options.stationary:.0e}); try another starting point")
            else:
                text = f"stopped after max_iter={options.max_iter} iterations"
            out = LMOutcome(head[8:8 + nf].copy(), 0.5 * fnorm**2, status, int(iterations), text,
                            head[o_hist:o_hist + int(n_hist)].tolist(), int(n_res), int(n_jac), head[o_r:o_gram],
                            head[o_jac:o_r].reshape(n, nf), head[o_gram:o_norms].reshape(nf, nf) if long_data else None,
                            native=True)
            if has_eigh:
                o_vec = o_norms + 2 * nf
                out.gram_eigh = (head[o_norms:o_norms + nf], head[o_norms + nf:o_vec],
                                 head[o_vec:o_vec + nf * nf].reshape(nf, nf))
                if has_eigh == 2:  # and (J^T J)^-1, for stats.covariance_from_gram
                    out.gram_eigh += (head[o_vec + nf * nf:].reshape(nf, nf),)
                out.range_cosine = None if cosine != cosine else cosine
            return out

        run.work = work  # the buffer behind the pointer lives as long as the function
        return run


def kernel(model, names: tuple[str, ...], inputs: tuple[str, ...], *, build: bool = True):
    """The single-fit kernel for this formula model: ``(NativeSingleLM, "")``, or
    ``(None, reason)`` (no C form, no compiler, a failed build, or ``build=False`` and the
    library is neither loaded nor in the disk cache)."""
    import torch

    names, inputs = tuple(names), tuple(inputs)
    return cached_kernel(model, torch.float64, ("single", names, inputs), build,
                         lambda expression, double: kernel_source(expression, names, inputs),
                         lambda lib, double: NativeSingleLM(lib, names, inputs), level=LEVEL)


def loaded_kernel(model, names: tuple[str, ...], inputs: tuple[str, ...]) -> NativeSingleLM | None:
    """:func:`kernel` when it is loaded in this process already, else None (no disk, no build):
    a loop of fits asks on every call, before the tiering's bookkeeping."""
    import torch

    return native_common.loaded_kernel(model, torch.float64, ("single", names, inputs))
