"""The one status vocabulary of a fit, for ``fit`` and ``fit_many`` alike.

A status says how a fit ended. It is a ``str`` enum, so ``result.status == "converged"``
keeps working and statuses serialize to JSON as their names. ``fit_many`` stores one small
integer code per fit (``Status.code``); :meth:`Status.from_code` maps it back.

Meanings (the same on every path):

- ``converged``: the stationarity test passed at a finite point where the problem is well
  posed (least squares: a relative change in chi-square or in the parameters below the
  tolerance after an accepted step, or a gradient at rounding level; first-order training:
  the relative loss change stayed below ``tol``).
- ``max_iterations``: a least-squares solver used its iteration budget without passing the test.
- ``max_epochs``: first-order training ran every epoch asked for (no convergence test set or passed).
- ``stalled``: no step can reduce the objective any more, but the test did not pass.
- ``singular``: the Jacobian is rank-deficient at the end point (some parameters cannot be
  separated); the values are one of many equivalent solutions and their errors are undetermined.
- ``diverged``: the loss became inf/NaN; the last finite parameters are kept.
- ``stopped``: a callback or a signal asked the fit to stop.
- ``stopped_early``: early stopping on the validation loss restored the best epoch.
- ``too_few_points``: fewer usable points than free parameters; nothing was fitted.
- ``not_finite``: the model or the data is not finite at the start; nothing was fitted.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Status"]


class Status(str, Enum):
    CONVERGED = "converged"
    MAX_ITERATIONS = "max_iterations"
    SINGULAR = "singular"
    TOO_FEW_POINTS = "too_few_points"
    NOT_FINITE = "not_finite"
    STALLED = "stalled"
    DIVERGED = "diverged"
    MAX_EPOCHS = "max_epochs"
    STOPPED = "stopped"
    STOPPED_EARLY = "stopped_early"

    def __str__(self) -> str:
        return self.value

    @property
    def code(self) -> int:
        """The small integer stored per fit by ``fit_many`` (0 is converged)."""
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> "Status":
        return _BY_CODE[int(code)]


# The first five keep the codes fit_many has always written (0 converged ... 4 not_finite).
_CODES = {s: i for i, s in enumerate(Status)}
_BY_CODE = {i: s for s, i in _CODES.items()}

