"""The public fitting functions: fit, fit_many, curve_fit and their helpers."""
