"""Normalization for the optimizer's sake, without changing what parameters mean.

For models with named scalar parameters, ``normalize=True`` does not rescale the data the
formula sees. It changes the optimizer's coordinates instead: ``p = p0 + A @ u`` with
``A^T (J^T J / n) A = I``, J the Jacobian of the predictions at the start point. In ``u``
the Gauss-Newton curvature of the mean squared error is exactly the identity, so every
direction learns at the same rate. For a model affine in its inputs (``w*x + b``) this is
the same conditioning that standardizing x gives, and it maps back exactly because it is a
linear change of parameters; for nonlinear models it is a preconditioner fixed at the start.
Parameters are always reported as ``p``, in the user's units.

How A is computed matters at large input scales. ``J^T J`` of ``w*x + b`` with x in
[0, 1e7] has a condition number near 1e14, and with an offset (x in [1e9, 1e9 + 1e3],
timestamps) near 1e28: an eigendecomposition of ``J^T J`` loses the small direction to
rounding. So A comes from the SVD of the *column-scaled* Jacobian ``J D^-1 / sqrt(n) = U S V^T``
(D the columns' RMS) in float64: ``A = D^-1 V S^-1 V^T``. Column scaling removes the units
(any scale of x costs nothing); the SVD keeps the genuinely ill-conditioned part (an offset
much larger than the spread) at its own condition number instead of its square. Singular
values below ``floor(dtype) * max(S)`` are raised to it: a direction the data cannot see
(or that the working precision cannot resolve) gets no unbounded step. The caller runs
float64 when float32's floor would bite (:func:`needs_float64`).

Neural networks get the classic treatment instead: standardized inputs and outputs inside
the model (see :class:`gradfit.models.neural.ModuleModel`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["jacobian", "whitening", "whiten", "Whitening", "singular_floor", "needs_float64", "MAX_JACOBIAN_ROWS"]

#: rows used to estimate the preconditioner (a deterministic, evenly spaced subset)
MAX_JACOBIAN_ROWS = 4096


def singular_floor(dtype) -> float:
    """The smallest singular value, relative to the largest, that training in ``dtype`` can
    follow: sqrt(machine epsilon), 3.5e-4 for float32 and 1.5e-8 for float64. Below it the
    gradient along that direction is rounding noise, and dividing by S^2 would amplify it."""
    import torch

    return math.sqrt(torch.finfo(dtype).eps)


@dataclass(frozen=True)
class Whitening:
    """The preconditioner and what it says about the problem.

    Attributes
    ----------
    matrix : (F, F) float64 tensor A with ``A^T (J^T J / n) A = I`` (up to the floor).
    condition : largest / smallest singular value of the column-scaled Jacobian (inf when a
        direction is invisible); 1 means every parameter is equally well determined.
    floored : how many directions were below the floor (not fully equalized).
    """

    matrix: object
    condition: float
    floored: int


def jacobian(model, inputs: dict, z0, space):
    """d(prediction)/d(free parameter, internal coordinates), shape (n, F), at ``z0``, from
    an evenly spaced subset of at most :data:`MAX_JACOBIAN_ROWS` points
    (:func:`gradfit.models.jacobian.free_jacobian`, torch backend)."""
    import torch

    from ..models.jacobian import free_jacobian

    n = next(iter(inputs.values())).shape[0]
    if n > MAX_JACOBIAN_ROWS:
        idx = torch.linspace(0, n - 1, MAX_JACOBIAN_ROWS, device=z0.device).round().long()
        inputs = {k: v[idx] for k, v in inputs.items()}
    return free_jacobian(model, space, inputs, backend="torch")(z0)


def whiten(jac, floor: float | None = None) -> Whitening:
    """The :class:`Whitening` of a Jacobian ``jac`` (n, F), computed in float64.

    Parameters
    ----------
    jac : (n, F) tensor; non-finite entries count as 0.
    floor : relative floor on the singular values of the column-scaled Jacobian (default:
        :func:`singular_floor` of float64).

    >>> import torch
    >>> x = torch.linspace(1e9, 1e9 + 1e3, 200, dtype=torch.float64)
    >>> j = torch.stack([x, torch.ones_like(x)], 1)          # w*x + b
    >>> w = whiten(j)
    >>> ja = j @ w.matrix                                      # orthonormal columns (times sqrt(n))
    >>> bool(torch.allclose(ja.T @ ja / 200, torch.eye(2, dtype=torch.float64), atol=1e-6)), w.floored
    (True, 0)
    """
    import torch

    jac = jac.detach().to(torch.float64)
    jac = torch.where(torch.isfinite(jac), jac, torch.zeros_like(jac))
    n, f = jac.shape
    floor = singular_floor(torch.float64) if floor is None else float(floor)
    rms = torch.sqrt((jac * jac).sum(0) / max(n, 1))
    seen = rms > 0
    eye = torch.eye(f, dtype=torch.float64, device=jac.device)
    if not bool(seen.any()):
        return Whitening(eye, math.inf, f)
    # an invisible parameter (zero column) steps as if it were as sensitive as the most sensitive one
    scale = torch.where(seen, rms, rms.max())
    _, s, vh = torch.linalg.svd(jac[:, seen] / scale[seen] / math.sqrt(max(n, 1)), full_matrices=False)
    top = float(s.max())
    low = float(s.min()) if s.numel() else top
    condition = (top / low if low > 0 else math.inf) if bool(seen.all()) else math.inf
    floored = int((s < floor * top).sum()) + int((~seen).sum())
    s = torch.clamp(s, min=floor * top)
    inner = vh.T @ torch.diag(1.0 / s) @ vh
    a = eye / scale
    idx = torch.nonzero(seen).flatten()
    a[idx.unsqueeze(1), idx.unsqueeze(0)] = inner / scale[seen].unsqueeze(1)
    return Whitening(a, condition, floored)


def whitening(jac):
    """The preconditioner matrix A (float64) of :func:`whiten`, for callers that need only A."""
    return whiten(jac).matrix


def needs_float64(w: Whitening) -> bool:
    """True when training in float32 cannot follow every direction of ``w``: the column-scaled
    Jacobian's condition number exceeds 1/:func:`singular_floor` of float32 (about 3e3), so
    float32 gradients in the whitened coordinates would be dominated by cancellation."""
    import torch

    return w.condition * singular_floor(torch.float32) > 1.0
