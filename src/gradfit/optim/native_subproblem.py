"""The trust-region subproblem of Levenberg-Marquardt in C: the twin of
:mod:`gradfit.optim.trust_region` for the native single-fit kernel
(:mod:`gradfit.optim.native_single`), which includes :data:`SUBPROBLEM` after the model.

The singular system of ``J D^-1`` (singular values, right singular vectors, U^T r) comes from a
cyclic Jacobi eigensolver on the scaled P x P Gram matrix for long, well-conditioned data, and
otherwise from a one-sided Jacobi (Hestenes) SVD of ``J D^-1`` itself; both are accurate to
rounding in every singular value (Demmel & Veselić, "Jacobi's method is more accurate than QR",
SIAM J. Matrix Anal. Appl. 13, 1992), and for the few parameters of a fit they cost less than a
LAPACK call. The damping for a trust-region radius is found by the safeguarded Newton iteration
of trust_region.Subproblem.damping_for (Hebden/Moré). Needs ``real``, ``P`` (the model's
parameter count) and the columns layout of native_single (row 0 the residuals, row 1 + i the
partial derivative of parameter i, each n long).
"""

__all__ = ["SUBPROBLEM"]

SUBPROBLEM = r"""
#define EPS 2.220446049250313e-16
#define GRAM_CONDITION {gram_condition}

/* sum a_j b_j: vector partial sums within blocks of 256, the blocks' sums added in turn (rounding
   error ~ (256 / lanes + n / 256) eps rather than n eps, and the loop vectorizes) */
static real dot(long n, const real *a, const real *b) {
    real total = 0;
    for (long lo = 0; lo < n; lo += 256) {
        long hi = lo + 256 < n ? lo + 256 : n;
        real s = 0;
        #pragma omp simd reduction(+:s)
        for (long j = lo; j < hi; j++) s += a[j] * b[j];
        total += s;
    }
    return total;
}

typedef struct {
    int k;                 /* number of singular values */
    real s[P], c[P];       /* singular values (descending) and r's coordinates U^T r */
    real v[P * P];         /* v[i * P + m]: component m of the i-th right singular vector */
    real gn[P];            /* the Gauss-Newton step's coefficients (pseudo-inverse) */
    real gn_norm;
} subproblem;

/* key descending (selection sort), with other (when not 0) and the rows of v in the same order */
static void sort_descending(int nf, real *key, real *other, real *v) {
    for (int i = 0; i < nf; i++) {
        int best = i;
        for (int k = i + 1; k < nf; k++) if (key[k] > key[best]) best = k;
        if (best == i) continue;
        real t = key[i]; key[i] = key[best]; key[best] = t;
        if (other) { t = other[i]; other[i] = other[best]; other[best] = t; }
        for (int m = 0; m < nf; m++) { t = v[i * P + m]; v[i * P + m] = v[best * P + m]; v[best * P + m] = t; }
    }
}

/* the plane rotation (x, y) <- (c x - s y, s x + c y) of m pairs, ``stride`` apart */
static void rotate(long m, real *x, real *y, long stride, real c, real s) {
    for (long j = 0; j < m; j++) {
        real xj = x[j * stride], yj = y[j * stride];
        x[j * stride] = c * xj - s * yj;
        y[j * stride] = s * xj + c * yj;
    }
}

/* eigenvalues (descending) and eigenvectors (rows of v) of the symmetric nf x nf matrix a (destroyed):
   cyclic Jacobi, stopped when every off-diagonal entry is below rounding against its diagonal */
static void jacobi_eigh(int nf, real *a, real *evals, real *v) {
    for (int i = 0; i < nf; i++)
        for (int k = 0; k < nf; k++) v[i * P + k] = (i == k);
    for (int sweep = 0; sweep < 100; sweep++) {
        int rotated = 0;
        for (int i = 0; i < nf; i++)
            for (int k = i + 1; k < nf; k++) {
                real aik = a[i * nf + k], aii = a[i * nf + i], akk = a[k * nf + k];
                if (aik == 0 || fabs(aik) <= EPS * sqrt(fabs(aii)) * sqrt(fabs(akk))) continue;
                real theta = (akk - aii) / (2 * aik);
                real t = (theta >= 0 ? 1 : -1) / (fabs(theta) + sqrt(1 + theta * theta));
                if (t == 0) continue;  /* a rotation below rounding (theta^2 overflowed) */
                rotated = 1;
                real c = 1 / sqrt(1 + t * t), s = t * c;
                rotate(nf, a + i, a + k, nf, c, s);                /* columns i, k */
                rotate(nf, a + i * nf, a + k * nf, 1, c, s);       /* rows i, k */
                rotate(nf, v + i * P, v + k * P, 1, c, s);         /* eigenvectors: rows of v */
            }
        if (!rotated) break;
    }
    for (int i = 0; i < nf; i++) evals[i] = a[i * nf + i];
    sort_descending(nf, evals, 0, v);
}

/* singular values (descending), right singular vectors (rows of v) and U^T r of the n x nf matrix
   a (columns of n, overwritten by A V): one-sided Jacobi (Hestenes) */
static void jacobi_svd(long n, int nf, real *a, const real *r, subproblem *sp) {
    real *v = sp->v;
    for (int i = 0; i < nf; i++)
        for (int k = 0; k < nf; k++) v[i * P + k] = (i == k);
    for (int sweep = 0; sweep < 60; sweep++) {
        int rotated = 0;
        for (int i = 0; i < nf; i++)
            for (int k = i + 1; k < nf; k++) {
                real *ai = a + i * n, *ak = a + k * n;
                real alpha = dot(n, ai, ai), beta = dot(n, ak, ak), gamma = dot(n, ai, ak);
                if (gamma == 0 || !(fabs(gamma) > EPS * sqrt(alpha) * sqrt(beta))) continue;
                real zeta = (beta - alpha) / (2 * gamma);
                real t = (zeta >= 0 ? 1 : -1) / (fabs(zeta) + sqrt(1 + zeta * zeta));
                if (t == 0) continue;  /* a rotation below rounding */
                rotated = 1;
                real c = 1 / sqrt(1 + t * t), s = c * t;
                rotate(n, ai, ak, 1, c, s);
                rotate(nf, v + i * P, v + k * P, 1, c, s);
            }
        if (!rotated) break;
    }
    real s[P], c[P];
    for (int i = 0; i < nf; i++) {
        s[i] = sqrt(dot(n, a + i * n, a + i * n));
        c[i] = s[i] > 0 ? dot(n, a + i * n, r) / s[i] : 0;
    }
    sort_descending(nf, s, c, v);
    sp->k = n < nf ? (int)n : nf;  /* a thin SVD has min(n, F) singular values */
    for (int i = 0; i < sp->k; i++) { sp->s[i] = s[i]; sp->c[i] = c[i]; }
}

/* trust_region.Subproblem.__init__ */
static void make_subproblem(long n, int nf, const real *cols, const long *fi, const real *d, int long_data,
                            const real *gram, const real *g, real *work, subproblem *sp) {
    int done = 0;
    if (long_data) {
        real a[P * P], evals[P];
        real total = 0;
        for (int i = 0; i < nf; i++)
            for (int k = 0; k < nf; k++) { a[i * nf + k] = gram[i * nf + k] / (d[i] * d[k]); total += a[i * nf + k]; }
        if (isfinite(total)) {
            jacobi_eigh(nf, a, evals, sp->v);
            if (evals[nf - 1] > GRAM_CONDITION * evals[0] && isfinite(evals[0])) {
                sp->k = nf;
                for (int i = 0; i < nf; i++) {
                    sp->s[i] = sqrt(evals[i]);
                    real proj = 0;
                    for (int m = 0; m < nf; m++) proj += sp->v[i * P + m] * (g[m] / d[m]);
                    sp->c[i] = proj / sp->s[i];
                }
                done = 1;
            }
        }
    }
    if (!done) {
        for (int i = 0; i < nf; i++) {
            const real *ci = cols + (1 + fi[i]) * n;
            for (long j = 0; j < n; j++) work[i * n + j] = ci[j] / d[i];
        }
        jacobi_svd(n, nf, work, cols, sp);
    }
    real cut = sp->k > 0 ? sp->s[0] * (real)(n > nf ? n : nf) * EPS : 0;
    real norm2 = 0;
    for (int i = 0; i < sp->k; i++) {
        sp->gn[i] = sp->s[i] > cut ? 1 / sp->s[i] : 0;
        norm2 += (sp->gn[i] * sp->c[i]) * (sp->gn[i] * sp->c[i]);
    }
    sp->gn_norm = sqrt(norm2);
}

static real coefficient(const subproblem *sp, int i, real lam) {
    return lam == 0 ? sp->gn[i] : sp->s[i] / (sp->s[i] * sp->s[i] + lam);
}

static real predicted_norm2(const subproblem *sp, real lam) {
    real t = 0;
    for (int i = 0; i < sp->k; i++) { real u = sp->s[i] * coefficient(sp, i, lam) * sp->c[i]; t += u * u; }
    return t;
}

static void scaled_step(const subproblem *sp, int nf, real lam, real *z) {
    for (int m = 0; m < nf; m++) z[m] = 0;
    for (int i = 0; i < sp->k; i++) {
        real w = -coefficient(sp, i, lam) * sp->c[i];
        for (int m = 0; m < nf; m++) z[m] += w * sp->v[i * P + m];
    }
}

/* trust_region.Subproblem.damping_for: Newton's method on 1/||z(lam)|| - 1/delta in a bracket */
static real damping_for(const subproblem *sp, real delta, real lam_hint) {
    if (sp->gn_norm <= 1.1 * delta) return 0;
    real s2[P], s2c2[P];
    for (int i = 0; i < sp->k; i++) { s2[i] = sp->s[i] * sp->s[i]; s2c2[i] = s2[i] * sp->c[i] * sp->c[i]; }
    real lo = 0, hi = INFINITY;
    real lam = sp->k > 0 ? 1e-12 * s2[0] : 1e-12;
    if (lam_hint > lam) lam = lam_hint;
    for (int it = 0; it < 60; it++) {
        real q[P], q_min = 1;
        for (int i = 0; i < sp->k; i++) { q[i] = s2[i] + lam; if (i == 0 || q[i] < q_min) q_min = q[i]; }
        if (!(q_min * q_min * q_min > 0)) return lam > 0 ? lam : INFINITY;
        real norm2 = 0, dn2 = 0;
        for (int i = 0; i < sp->k; i++) { norm2 += s2c2[i] / (q[i] * q[i]); dn2 += s2c2[i] / (q[i] * q[i] * q[i]); }
        real norm = sqrt(norm2);
        if (0.9 * delta <= norm && norm <= 1.1 * delta) return lam;
        if (norm > delta) lo = lam; else hi = lam;
        real dnorm2 = -2 * dn2;
        real phi = norm > 0 ? 1 / norm - 1 / delta : -1 / delta;
        real dphi = norm > 0 ? -dnorm2 / (2 * norm2 * norm) : 0;
        real next = dphi > 0 ? lam - phi / dphi : NAN;
        if (!(lo < next && next < hi) || !isfinite(next))
            next = (lo > 0 && isfinite(hi)) ? sqrt(lo * hi) : (hi == INFINITY ? lam * 10 : 0.5 * (lo + hi));
        lam = next;
        if (lam > 1e300) return lam;
    }
    return lam;
}

"""
