"""Normalization for the optimizer's sake, without changing what parameters mean.

For models with named scalar parameters, ``normalize=True`` does not rescale the data the
formula sees. It changes the optimizer's coordinates instead: ``p = p0 + A @ u`` with
``A = (J^T J / n)^(-1/2)``, J the Jacobian of the predictions at the start point. In ``u``
the Gauss-Newton curvature of the mean squared error is exactly the identity, so every
direction learns at the same rate. For a model affine in its inputs (``w*x + b``) this is
the same conditioning that standardizing x gives, and it maps back exactly because it is a
linear change of parameters; for nonlinear models it is a preconditioner fixed at the start.
Parameters are always reported as ``p``, in the user's units.

Neural networks get the classic treatment instead: standardized inputs and outputs inside
the model (see :class:`gradfit.models.neural.ModuleModel`).
"""

from __future__ import annotations

__all__ = ["jacobian", "whitening", "MAX_JACOBIAN_ROWS"]

#: rows used to estimate the preconditioner (a deterministic, evenly spaced subset)
MAX_JACOBIAN_ROWS = 4096
#: eigenvalues below this fraction of the largest are treated as this fraction, so a
#: direction the data cannot see does not get an unbounded step
EIGEN_FLOOR = 1e-10


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


def whitening(jac):
    """``(J^T J / n)^(-1/2)`` via a symmetric eigendecomposition, with a floor on eigenvalues."""
    import torch

    m = jac.T @ jac / jac.shape[0]
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    evals, evecs = torch.linalg.eigh(m)
    top = evals.max()
    if not torch.isfinite(top) or top <= 0:
        return torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    evals = torch.clamp(evals, min=float(top) * EIGEN_FLOOR)
    return evecs @ torch.diag(evals.rsqrt()) @ evecs.T
