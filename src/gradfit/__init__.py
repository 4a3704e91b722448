"""gradfit: learning as parameter estimation.

Give it input/output pairs and a model (a formula, a built-in curve, a Python function or a
torch module); it estimates the parameters with autograd and an optimizer, watches a
validation split, and returns a result that reports, plots and saves itself.

>>> import gradfit as gf
>>> r = gf.fit("w*x + b", x=[0.0, 1.0, 2.0], y=[1.0, 3.0, 5.0], optimizer="adam", lr=0.1, epochs=2000)
>>> round(r.params["w"], 2)
2.0

Heavy modules (torch, sympy, matplotlib) load on first use, so ``import gradfit`` and the
``gradfit`` command start instantly.
"""

from __future__ import annotations

from importlib import import_module

from .errors import (ConfigError, DataError, FitError, FormulaError, GradfitError, GradfitWarning,
                     MissingDependencyError, ModelError, PersistError)

from ._version import __version__

# public name -> module that defines it (loaded on first access, PEP 562)
_LAZY = {
    "fit": "gradfit.fitting.fit",
    "gradient": "gradfit.fitting.gradient",
    "loss_value": "gradfit.fitting.gradient",
    "curve_fit": "gradfit.fitting.scipy_compat",
    "fit_many": "gradfit.fitting.many",
    "fit_many_files": "gradfit.fitting.stream",
    "ParquetData": "gradfit.data.parquet_rows",
    "read_fit_many_files": "gradfit.fitting.stream",
    "bootstrap": "gradfit.fitting.bootstrap",
    "Bootstrap": "gradfit.fitting.bootstrap",
    "compare": "gradfit.fitting.compare",
    "Comparison": "gradfit.fitting.compare",
    "tune": "gradfit.tuning",
    "lr_find": "gradfit.tuning",
    "BatchResult": "gradfit.results.batch_result",
    "read_strd": "gradfit.data.nist",
    "load": "gradfit.results.fit_result",
    "FitResult": "gradfit.results.fit_result",
    "Callback": "gradfit.callbacks",
    "CSVLogger": "gradfit.train.loggers",
    "TensorBoardLogger": "gradfit.train.loggers",
    "Loss": "gradfit.losses",
    "FormulaModel": "gradfit.models.formula",
    "FunctionModel": "gradfit.models.function",
    "builtin_model": "gradfit.models.builtin",
    "parse_formula": "gradfit.formula.parse",
    "read_table": "gradfit.data.io",
    "thermometer": "gradfit.data.examples",
    "Status": "gradfit.status",
    "FitOptions": "gradfit.options",
    "TrainingOptions": "gradfit.options",
    "LeastSquaresOptions": "gradfit.options",
    "RegularizationOptions": "gradfit.options",
    "EarlyStoppingOptions": "gradfit.options",
    "CheckpointOptions": "gradfit.options",
    "CrossValidationOptions": "gradfit.options",
    "long_to_batch": "gradfit.data.tables",
}

__all__ = sorted([*_LAZY, "GradfitError", "FormulaError", "DataError", "ModelError", "ConfigError", "FitError",
                  "PersistError", "MissingDependencyError", "GradfitWarning", "__version__"])


def __getattr__(name: str):
    if name in _LAZY:
        if name == "load":  # a loaded result's ci(method="bootstrap") refits: register the fitting layer
            import_module("gradfit.fitting")
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradfit' has no attribute {name!r}")


def __dir__():
    return __all__
