"""Least squares on data too long to hold its Jacobian: the exact reduced problem.

At a point, Levenberg-Marquardt (:mod:`gradfit.optim.lm`), its end-point test and the
covariance use only ``||r||``, ``J^T J``, ``J^T r`` and J's column norms. For a fit whose
n x F Jacobian would exceed :data:`CHUNKED_BYTES`, one pass over the data in chunks of
:data:`CHUNK_ROWS` rows (each chunk's prediction and partials from the model's own program,
its temporaries small enough to stay in cache) reduces ``[J | r]`` to an upper triangle
``[[R, q], [0, rho]]`` of size F + 1 with

    R^T R = J^T J,    R^T q = J^T r,    ||q||^2 + rho^2 = ||r||^2,

so the reduced Jacobian ``[R; 0]`` and residuals ``[q; rho]``, (F+1, F) and (F+1,), give
every one of those quantities exactly: the solver runs on them unchanged, and nothing of
size n outlives a chunk. The triangle comes from the accumulated Gram matrix (one cheap BLAS
product per chunk; its Cholesky factor) while the column-scaled ``J^T J`` is well conditioned
(:data:`GRAM_CONDITION`), and otherwise from a TSQR-style QR (each chunk's triangle, then the
QR of the stacked triangles), so that an ill-conditioned fit never sees a squared condition
number; a fit that needed QR once keeps it. Statistics come from sums accumulated in chunks
(:func:`residual_sums`).

Measured on an exponential decay with three parameters (2 cores, OpenBLAS), the chunked
fit is 0.75x the whole-array fit's time at 100k points, ~0.5x at 300k-1M and ~0.35x at 3M
(the whole-array temporaries leave the cache); :data:`CHUNKED_BYTES`, a 16 MiB Jacobian
(700k points for three parameters), keeps smaller fits on the whole-array path, whose
numbers are bit-for-bit those of earlier releases. 16k-row chunks were as fast as 32k and
faster than 8k (Python overhead per chunk) or 64k-128k (cache).
"""

from __future__ import annotations

import math

import numpy as np

from ..optim.finite import as_real, not_finite_message
from ..optim.trust_region import symmetric_eigh
from .problem import LeastSquaresProblem, predict_numpy

__all__ = ["CHUNKED_BYTES", "CHUNK_ROWS", "GRAM_CONDITION", "use_chunks", "spans", "Reducer", "reduced_jacobian",
           "residual_sums", "not_finite_report"]

#: a fit whose Jacobian (n x free parameters float64) would exceed this many bytes runs chunked
CHUNKED_BYTES = 16 * 2**20
#: rows per chunk: a 3-parameter formula's temporaries stay within a core's L2 cache
CHUNK_ROWS = 16384
#: smallest/largest eigenvalue of the column-scaled J^T J above which a chunked pass uses the
#: Gram matrix (cond(J D^-1) < ~300: its Cholesky factor is accurate to ~eps * 1e5, well below
#: any digit reported); below it, QR
GRAM_CONDITION = 1e-5


def use_chunks(problem: LeastSquaresProblem) -> bool:
    """Whether ``problem`` is solved chunked: its Jacobian would exceed :data:`CHUNKED_BYTES`."""
    n_free = len(problem.space.free)
    return n_free > 0 and problem.n * n_free * 8 > CHUNKED_BYTES


def spans(n: int, rows: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) of each chunk of ``n`` rows."""
    rows = CHUNK_ROWS if rows is None else max(int(rows), 1)
    return [(a, min(a + rows, n)) for a in range(0, n, rows)]


class Reducer:
    """The chunks of one problem and how their [J | r] is reduced: by the Gram matrix, or by
    QR once a pass found it ill-conditioned (``qr`` then stays True)."""

    def __init__(self, problem: LeastSquaresProblem):
        self.spans = spans(problem.n)
        # per chunk: (residual, jacobian) over the free parameters' values; a formula model's
        # residual evaluates its prediction and partials in one program and the jacobian
        # called next at the same point returns them
        self.parts = [problem.rows(a, b).lm_functions(internal=False) for a, b in self.spans]
        self.n_free = len(problem.space.free)
        self.qr = False

    def triangle(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reduced residuals (F+1,), reduced Jacobian (F+1, F)) at ``u``."""
        f = self.n_free
        if not self.qr:
            gram, jtr, rr = np.zeros((f, f)), np.zeros(f), 0.0
            for residual, jacobian in self.parts:
                r = as_real(residual(u))
                jac = as_real(jacobian(u))
                # einsum, not BLAS: OpenBLAS's threaded product of an (F, m) by an (m, F)
                # matrix costs 2-3x the single pass einsum makes
                gram += np.einsum("mi,mj->ij", jac, jac)
                jtr += jac.T @ r
                rr += _sum_of_squares(r)
            if not (math.isfinite(rr) and math.isfinite(float(gram.sum()) + float(jtr.sum()))):
                return _not_finite(f, rr)
            tri = _from_gram(gram, jtr, rr)
            if tri is not None:
                return tri
            self.qr = True  # ill-conditioned (or a zero column): QR from now on
        blocks, rr = [], 0.0
        for residual, jacobian in self.parts:
            r = as_real(residual(u))
            jac = as_real(jacobian(u))
            rr += _sum_of_squares(r)
            if math.isfinite(rr) and np.isfinite(jac).all():  # (LAPACK refuses NaN)
                blocks.append(np.linalg.qr(np.column_stack([jac, r]), mode="r"))
            else:
                blocks.append(np.full((1, f + 1), math.nan))
        stacked = np.vstack(blocks)
        if not np.isfinite(stacked).all():
            return _not_finite(f, rr)
        top = np.linalg.qr(stacked, mode="r")
        jac_red = np.zeros((f + 1, f))
        jac_red[:f] = top[:f, :f]
        r_red = np.zeros(f + 1)
        r_red[:f] = top[:f, f]
        r_red[f] = abs(top[f, f]) if top.shape[0] > f else 0.0
        return r_red, jac_red


    def functions(self):
        """(residual, jacobian) of the reduced problem over the free parameters' values, for
        Levenberg-Marquardt: ``residual(u)`` makes one chunked pass and returns the reduced
        residuals; ``jacobian(u)`` at the point of the last residual returns that pass's
        reduced Jacobian (elsewhere it makes a pass)."""
        last = {"key": None, "jac": None}

        def residual(u):
            r_red, jac_red = self.triangle(u)
            last["key"], last["jac"] = u.tolist(), jac_red
            return r_red

        def jacobian(u):
            if last["key"] == u.tolist():
                return last["jac"]
            return self.triangle(u)[1]

        return residual, jacobian


def _sum_of_squares(r: np.ndarray) -> float:
    """r . r without BLAS: OpenBLAS runs a dot product of more than ~10k entries on several
    threads, whose start-up costs more than the sum itself (100x on a busy machine)."""
    return float(np.einsum("i,i->", r, r))


def _from_gram(gram: np.ndarray, jtr: np.ndarray, rr: float):
    """The reduced pair from J^T J, J^T r and ||r||^2, or None when the column-scaled Gram
    matrix is not well conditioned (:data:`GRAM_CONDITION`) or a column is zero."""
    f = len(jtr)
    d = np.sqrt(np.diagonal(gram))
    if not d.min() > 0:
        return None
    eig = symmetric_eigh(gram / (d[:, None] * d))[0]
    if not eig[0] > GRAM_CONDITION * eig[-1]:
        return None
    try:
        upper = np.linalg.cholesky(gram).T
    except np.linalg.LinAlgError:
        return None
    q = np.linalg.solve(upper.T, jtr)
    jac_red = np.zeros((f + 1, f))
    jac_red[:f] = upper
    r_red = np.empty(f + 1)
    r_red[:f] = q
    # ||q||^2 + rho^2 = ||r||^2 exactly (to rounding) unless rounding makes ||q|| > ||r||
    r_red[f] = math.sqrt(max(rr - float(q @ q), 0.0))
    return r_red, jac_red


def _not_finite(f: int, rr: float) -> tuple[np.ndarray, np.ndarray]:
    """Residuals not finite: NaN residuals; only derivatives not finite: residuals of norm
    ||r|| (a trial there fails on its Jacobian, as in the whole-array solver)."""
    jac_red = np.full((f + 1, f), math.nan)
    r_red = np.zeros(f + 1)
    r_red[f] = math.sqrt(rr) if math.isfinite(rr) else math.nan
    if not math.isfinite(rr):
        r_red[:] = math.nan
    return r_red, jac_red


def reduced_jacobian(problem: LeastSquaresProblem, values: dict) -> np.ndarray:
    """The reduced weighted Jacobian (F+1, F) at ``values`` (every parameter's value)."""
    u = np.array([values[n] for n in problem.space.free], dtype=np.float64)
    return Reducer(problem).triangle(u)[1]


def residual_sums(problem: LeastSquaresProblem, values: dict) -> tuple[float, float]:
    """(sum (f - y)^2, sum w (f - y)^2) at ``values``, in chunks; the first over the points of
    weight > 0 (a point of weight 0 is left out: :func:`gradfit.stats.fit_statistics`)."""
    rss = chi2 = 0.0
    for a, b in spans(problem.n):
        part = problem.rows(a, b)
        p_in, p_y, p_w = part.numpy()
        r = predict_numpy(problem.model, p_in, values) - p_y
        rr = _sum_of_squares(r if p_w is None else r[p_w > 0])
        rss += rr
        chi2 += rr if p_w is None else float(np.einsum("i,i,i->", p_w, r, r))
    return rss, chi2


def not_finite_report(problem: LeastSquaresProblem, u: np.ndarray) -> str:
    """The not-finite message of the whole-array solver at ``u``, naming the data rows where
    the residuals (else the derivatives) are not finite, found chunk by chunk."""
    reducer = Reducer(problem)
    bad_r = np.zeros(problem.n, dtype=bool)
    bad_j = np.zeros(problem.n, dtype=bool)
    for (a, b), (residual, jacobian) in zip(reducer.spans, reducer.parts):
        r = as_real(residual(u))
        bad_r[a:b] = ~np.isfinite(r)
        bad_j[a:b] = ~np.isfinite(as_real(jacobian(u))).all(axis=1)
    if bad_r.any():
        return not_finite_message(_marks(bad_r))
    return not_finite_message(_marks(bad_j), "in its derivatives at the starting values")


def _marks(bad: np.ndarray) -> np.ndarray:
    """NaN where ``bad``, 0 elsewhere (what not_finite_message reads rows from), in float16."""
    out = np.zeros(len(bad), dtype=np.float16)
    out[bad] = np.nan
    return out
