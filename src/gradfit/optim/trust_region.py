"""The trust-region subproblem of Levenberg-Marquardt (optim/lm.py): the damped
Gauss-Newton step for a given trust-region radius, from the singular system of ``J D^-1``."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["Subproblem", "GRAM_CONDITION", "GRAM_COVARIANCE", "RANGE_GRAM_COND", "symmetric_eigh", "thin_svd"]

#: smallest/largest eigenvalue of the scaled Gram matrix above which the subproblem is solved
#: from it (cond(J D^-1) < 1e5: steps accurate to ~eps * cond^2 < 1e-6, ample for an
#: iteration that only needs descent); below it, the SVD of J D^-1 itself
GRAM_CONDITION = 1e-10

#: smallest/largest eigenvalue of the column-scaled Gram matrix above which one fit's
#: covariance comes from it (cond(J D^-1) < 1e4: the inverse is accurate to ~eps * 1e8,
#: far below any digit a standard error reports), not from the SVD of the Jacobian
#: (:func:`gradfit.stats.covariance_from_gram`)
GRAM_COVARIANCE = 1e-8

#: condition number of the column-scaled Jacobian below which its Gram matrix serves the
#: end-point range cosine (:func:`gradfit.stats.batch_range_cosine`)
RANGE_GRAM_COND = 1e5


class Subproblem:
    """The trust-region subproblem at one point: the singular values s, right singular
    vectors V and coordinates c = U^T r of ``A = J D^-1``.

    They come from the eigendecomposition of the P x P matrix ``A^T A`` when A is well
    conditioned (one pass over the n x P data instead of a factorization of it: several
    times cheaper for long data), and from the SVD of A otherwise, so that ill-conditioned
    problems never see a squared condition number. The search for the damping then works on
    P Python floats (cheaper than numpy calls for the handful of parameters a fit has).
    """

    def __init__(self, jac: np.ndarray, r: np.ndarray, d: np.ndarray, gram: np.ndarray | None = None,
                 grad: np.ndarray | None = None):
        """``gram`` = J^T J and ``grad`` = J^T r, when the caller has them, save passes over
        the n x P data."""
        eig = v = None
        long = jac.shape[0] >= 4 * jac.shape[1]  # long data: the Gram matrix is much smaller than A
        if long:
            if gram is None:
                gram = jac.T @ jac
            try:
                eig, v = symmetric_eigh(gram / (d[:, None] * d))
            except np.linalg.LinAlgError:  # non-finite entries: the SVD below reports them
                eig = None
        if eig is not None and eig[0] > GRAM_CONDITION * eig[-1] and math.isfinite(eig[-1]):
            # descending, as from the SVD; U^T r = S^-1 V^T A^T r with U = A V S^-1
            vt = v.T[::-1]
            s = [math.sqrt(e) for e in reversed(eig.tolist())]
            proj = (vt @ ((jac.T @ r if grad is None else grad) / d)).tolist()
            c = [pc / sv for pc, sv in zip(proj, s)]
        else:
            u, s_arr, vt = thin_svd(jac / d)
            s, c = s_arr.tolist(), (u.T @ r).tolist()
        self.vt = vt
        self.s = s
        self.c_list = c  # r's coordinates in the range of J
        self.rank_cut = s[0] * max(jac.shape) * _EPS if s else 0.0
        # the Gauss-Newton step (lam = 0) uses the pseudo-inverse: directions with singular
        # values at rounding level are dropped
        self.gn_coef = [1.0 / sv if sv > self.rank_cut else 0.0 for sv in s]
        self.gn_norm = math.sqrt(sum([(k * ci) * (k * ci) for k, ci in zip(self.gn_coef, c)]))

    def predicted_norm2(self, lam: float) -> float:
        """||A z||^2 for the step z of damping lam (= ||J dx||^2): from the singular system,
        without a pass over the data (A z = -U S diag(coefficients) c)."""
        return sum([(sv * k * c) * (sv * k * c) for sv, k, c in zip(self.s, self.coefficients(lam), self.c_list)])

    def coefficients(self, lam: float) -> list[float]:
        if lam == 0.0:
            return self.gn_coef
        return [sv / (sv * sv + lam) for sv in self.s]

    def step(self, lam: float) -> np.ndarray:
        """The scaled step z = D dx for damping lam (lam = 0: Gauss-Newton, pseudo-inverse)."""
        return np.array([-k * ci for k, ci in zip(self.coefficients(lam), self.c_list)]) @ self.vt

    def norm(self, lam: float) -> float:
        if lam == 0.0:
            return self.gn_norm
        return math.sqrt(sum([(k * c) * (k * c) for k, c in zip(self.coefficients(lam), self.c_list)]))

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
            q_min = min(q, default=1.0)  # (list comprehensions below: cheaper than generators for P terms)
            if not q_min * q_min * q_min > 0.0:  # lam and s underflow: no usable step
                return lam if lam > 0 else math.inf
            norm2 = sum([b / (qi * qi) for b, qi in zip(s2c2, q)])
            norm = math.sqrt(norm2)
            if 0.9 * delta <= norm <= 1.1 * delta:
                return lam
            if norm > delta:
                lo = lam
            else:
                hi = lam
            dnorm2 = -2.0 * sum([b / (qi * qi * qi) for b, qi in zip(s2c2, q)])  # d ||z||^2 / d lam
            # Newton step for phi(lam) = 1/||z|| - 1/delta: phi' = -dnorm2 / (2 ||z||^3)
            phi = 1.0 / norm - 1.0 / delta if norm > 0 else -1.0 / delta
            cube = 2.0 * norm2 * norm  # (underflows for tiny residuals, as with weights of 1e-200: divide in turn)
            dphi = -dnorm2 / cube if cube > 0 else (-dnorm2 / norm2) / (2.0 * norm) if norm > 0 else 0.0
            new = lam - phi / dphi if dphi > 0 else math.nan
            if not (lo < new < hi) or not math.isfinite(new):
                new = math.sqrt(lo * hi) if (lo > 0 and math.isfinite(hi)) else (lam * 10.0 if hi == math.inf
                                                                                  else 0.5 * (lo + hi))
            lam = new
            if lam > 1e300:
                return lam
        return lam


_EPS = float(np.finfo(np.float64).eps)


def _numpy_eigh():
    """numpy's symmetric eigensolver gufunc itself: np.linalg.eigh spends several times the
    LAPACK call on argument checks for a 3 x 3 matrix, once per iteration. It does not
    raise on a matrix that is not finite (the public function does): checked here."""
    try:
        from numpy.linalg import _umath_linalg

        gufunc = _umath_linalg.eigh_lo
        gufunc(np.eye(2), signature="d->dd")
    except (ImportError, AttributeError, TypeError):  # another numpy: the public function
        return np.linalg.eigh

    def eigh(m: np.ndarray):
        if not math.isfinite(m.sum()):  # inf - inf is NaN: one sum sees any entry
            raise np.linalg.LinAlgError("the scaled Gram matrix is not finite")
        return gufunc(m, signature="d->dd")

    return eigh


#: eigenvalues (ascending) and eigenvectors of a small symmetric matrix; LinAlgError when not finite
symmetric_eigh = _numpy_eigh()


def _numpy_thin_svd():
    """numpy's thin-SVD gufunc itself, for the ill-conditioned iterations that cannot use
    the Gram matrix (NIST MGH17 spends most of its hundreds of iterations there): the public
    np.linalg.svd adds several microseconds of checks and an errstate per call. Anything
    not finite goes to the public function, which raises as before."""
    try:
        from numpy.linalg import _umath_linalg

        gufunc = _umath_linalg.svd_s
        gufunc(np.eye(2), signature="d->ddd")
    except (ImportError, AttributeError, TypeError):  # another numpy: the public function
        return lambda a: np.linalg.svd(a, full_matrices=False)

    def svd(a: np.ndarray):
        if math.isfinite(np.vdot(a, a)):  # (all finite, short of an overflow: the public function then)
            u, s, vt = gufunc(a, signature="d->ddd")
            if math.isfinite(s.sum()):
                return u, s, vt
        return np.linalg.svd(a, full_matrices=False)  # not finite, or not converged: raises

    return svd


#: (U, s, V^T) of an (n, P) matrix, n >= P or not (np.linalg.svd with full_matrices=False)
thin_svd = _numpy_thin_svd()
