"""The public fitting functions: fit, fit_many, curve_fit, bootstrap and their helpers."""

# registers FitResult.ci(method="bootstrap") (results/ sits below fitting/ and cannot import it)
from . import bootstrap as _bootstrap  # noqa: F401
