"""The small linear algebra of the batched Levenberg-Marquardt kernels: the damped normal
equations (A + lam diag(A)) d = -g solved for every fit of a batch at once.

At or below ``UNROLL_MAX`` parameters the Cholesky factorization is unrolled into elementwise
tensor operations over the batch (a 4 x 4 system per fit costs a few dozen fusable kernels; a
batched LAPACK call on 100k tiny matrices costs more than the whole fit); above it, batched
LAPACK (``torch.linalg.cholesky_ex``). Fixed parameters and per-fit held coordinates (an
active bound) are identity rows with a zero right side. Used by :mod:`gradfit.optim.batch_lm`
(independent fits) and :mod:`gradfit.optim.global_lm` (the local blocks of a global fit).
"""

from __future__ import annotations

__all__ = ["UNROLL_MAX", "damped_solve", "inverse_diagonal", "covariance_matrices"]

#: above this many parameters the normal matrix is built by a batched matrix product and
#: factored by batched LAPACK (torch.linalg.cholesky_ex); at or below, the unrolled
#: elementwise Cholesky (fewer, fusable kernels for small P) is used
UNROLL_MAX = 12


def damped_solve(a, g, lam, free, hold=None):
    """Solve (A + lam diag(A)) d = -g for every fit by an unrolled Cholesky factorization
    (elementwise over the batch), with fixed parameters (``free`` (P,) 0.0) held (d = 0), and
    per fit the coordinates in ``hold`` (B, P) bool, if given. ``g`` is (B, P), or (B, P, K)
    for K right-hand sides sharing one factorization. ``lam`` is (B,), or (B, P) for a damping
    of its own per coordinate (A_ii (1 + lam_i)). Returns (d, ok): d shaped like ``g``, zero
    where ok (B,) is False (the factorization failed or the solution is not finite)."""
    import torch

    p = a.shape[-1]
    if p > UNROLL_MAX:
        return _factored_solve(a, g, lam, free, hold)
    many = g.dim() == 3

    def per_fit(t):  # a (B,) factor entry against (B,) or (B, K) right-hand sides
        return t.unsqueeze(-1) if many else t

    free_l = [float(v) for v in free]  # a tuple of 0.0/1.0 (a compile-time constant)
    per_coordinate = lam.dim() == 2
    lam_i = lam.unbind(-1) if per_coordinate else [lam] * p
    lam = lam[:, 0] if per_coordinate else lam  # (B,): the shape of a factor entry
    m = [[None] * p for _ in range(p)]
    for i in range(p):
        for k in range(i + 1):
            if free_l[i] and free_l[k]:
                v = a[:, i, k] * (1.0 + lam_i[i]) if i == k else a[:, i, k]
                if hold is not None:
                    out = hold[:, i] | hold[:, k]
                    v = torch.where(out, torch.ones_like(v) if i == k else torch.zeros_like(v), v)
            else:
                v = torch.ones_like(lam) if i == k else torch.zeros_like(lam)
            m[i][k] = v
    rhs = [-g[:, i] if free_l[i] else torch.zeros_like(g[:, i]) for i in range(p)]
    if hold is not None:
        rhs = [torch.where(per_fit(hold[:, i]), torch.zeros_like(t), t) for i, t in enumerate(rhs)]
    low = [[None] * p for _ in range(p)]
    ok = torch.ones_like(lam, dtype=torch.bool)
    for j in range(p):
        s = m[j][j]
        for k in range(j):
            s = s - low[j][k] * low[j][k]
        ok = ok & (s > 0)
        d = torch.sqrt(torch.clamp(s, min=1e-300 if s.dtype == torch.float64 else 1e-30))
        low[j][j] = d
        for i in range(j + 1, p):
            t = m[i][j]
            for k in range(j):
                t = t - low[i][k] * low[j][k]
            low[i][j] = t / d
    low = [[None if v is None else per_fit(v) for v in row] for row in low]  # each entry shaped once
    z = [None] * p
    for i in range(p):
        t = rhs[i]
        for k in range(i):
            t = t - low[i][k] * z[k]
        z[i] = t / low[i][i]
    x = [None] * p
    for i in reversed(range(p)):
        t = z[i]
        for k in range(i + 1, p):
            t = t - low[k][i] * x[k]
        x[i] = t / low[i][i]
    step = torch.stack(x, dim=1)
    ok = ok & torch.isfinite(step).flatten(1).all(-1)
    keep = ok.reshape(ok.shape + (1,) * (step.dim() - 1))
    return torch.where(keep, step, torch.zeros_like(step)), ok


def _active_matrix(a, free, hold=None, lam=None):
    """(A + lam diag(A)) over the active coordinates (free and not held), the identity over
    the others, and the active mask (B, P)."""
    import torch

    active = torch.as_tensor([bool(v) for v in free], device=a.device).expand(a.shape[:-1])
    if hold is not None:
        active = active & ~hold
    both = active.unsqueeze(-1) & active.unsqueeze(-2)
    m = a
    if lam is not None:
        m = a + torch.diag_embed(torch.diagonal(a, dim1=-2, dim2=-1) * (lam if lam.dim() == 2 else lam.unsqueeze(-1)))
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    m = torch.where(both, m, eye)
    finite = torch.isfinite(m).flatten(1).all(-1)
    m = torch.where(finite[:, None, None], m, eye)  # LAPACK is not given NaN; such fits fail below
    return m, active, finite


def _factored_solve(a, g, lam, free, hold=None):
    """damped_solve for many parameters: a batched LAPACK Cholesky (cost P^3 per fit in one
    call, where the unrolled form costs P^3 separate kernels)."""
    import torch

    m, active, finite = _active_matrix(a, free, hold, lam)
    factor, info = torch.linalg.cholesky_ex(m)
    ok = finite & (info == 0)
    cols = g if g.dim() == 3 else g.unsqueeze(-1)  # (B, P, K)
    act = active.unsqueeze(-1)
    rhs = torch.where(act, -cols, torch.zeros_like(cols))
    rhs = torch.where(ok[:, None, None] & torch.isfinite(rhs), rhs, torch.zeros_like(rhs))
    factor = torch.where(ok[:, None, None], factor, torch.eye(a.shape[-1], dtype=a.dtype, device=a.device))
    step = torch.cholesky_solve(rhs, factor)
    ok = ok & torch.isfinite(step).flatten(1).all(-1) & torch.isfinite(cols).flatten(1).all(-1)
    step = torch.where(act & ok[:, None, None], step, torch.zeros_like(step))
    return (step if g.dim() == 3 else step.squeeze(-1)), ok


def inverse_diagonal(a, free):
    """diag(A^-1) (B, P) over the free parameters (0 for fixed ones) and ok (B,) (False where
    the Cholesky factorization fails). Elementwise over the batch, like the solver (a batched
    LAPACK inverse of 4x4 matrices costs more than the whole fit)."""
    import torch

    p = a.shape[-1]
    if p > UNROLL_MAX:
        m, active, finite = _active_matrix(a, free)
        factor, info = torch.linalg.cholesky_ex(m)
        ok = finite & (info == 0)
        factor = torch.where(ok[:, None, None], factor, torch.eye(p, dtype=a.dtype, device=a.device))
        diag = torch.diagonal(torch.cholesky_inverse(factor), dim1=-2, dim2=-1)
        ok = ok & torch.isfinite(diag).all(-1)
        return torch.where(active, diag, torch.zeros_like(diag)), ok
    zero_lam = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
    diag = []
    ok = torch.ones_like(zero_lam, dtype=torch.bool)
    for j in range(p):
        if not free[j]:
            diag.append(torch.zeros_like(zero_lam))
            continue
        unit = torch.zeros(a.shape[:-1], dtype=a.dtype, device=a.device)
        unit[:, j] = -1.0  # damped_solve solves A d = -g
        col, good = damped_solve(a, unit, zero_lam, free)
        diag.append(col[:, j])
        ok = ok & good
    return torch.stack(diag, dim=-1), ok


def covariance_matrices(a, chi2, n_points, free, *, likelihood: str | None = None, absolute_sigma: bool = False):
    """Per-fit covariance (B, P, P) of the parameters: A^-1 * chi2 / dof (least squares, the
    scale :func:`gradfit.optim.batch_lm.standard_errors` uses), or A^-1 unscaled with a
    ``likelihood`` (A the Fisher information: the Cramer-Rao bound) or ``absolute_sigma``. Rows and columns of fixed
    parameters are 0; a fit whose A does not factor, whose dof < 1 (least squares) or whose
    chi-square is not finite is NaN. The inverse is the solve of A X = I by the same Cholesky
    as :func:`damped_solve` (unrolled up to ``UNROLL_MAX`` parameters, batched LAPACK above)."""
    import torch

    p = a.shape[-1]
    eye = torch.eye(p, dtype=a.dtype, device=a.device).expand(a.shape[0], p, p)
    inverse, ok = damped_solve(a, -eye, torch.zeros_like(chi2), free)  # damped_solve solves A d = -g
    inverse = 0.5 * (inverse + inverse.transpose(-1, -2))  # exactly symmetric
    if likelihood is None and not absolute_sigma:
        scale = chi2 / (n_points - float(sum(free)))
        ok = ok & (n_points - float(sum(free)) >= 1)
    else:
        scale = torch.ones_like(chi2)
    ok = ok & torch.isfinite(scale) & torch.isfinite(chi2)
    cov = inverse * scale[:, None, None]
    return torch.where(ok[:, None, None], cov, torch.full_like(cov, float("nan")))
