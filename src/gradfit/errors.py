"""Typed exceptions. Every error gradfit raises on purpose derives from GradfitError.

Messages say what went wrong *and what to do*, because the CLI prints them as the
single line a user sees (exit code 2).
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings

__all__ = [
    "GradfitError",
    "FormulaError",
    "DataError",
    "ModelError",
    "ConfigError",
    "FitError",
    "PersistError",
    "MissingDependencyError",
    "GradfitWarning",
    "did_you_mean",
    "require",
    "warn_user",
]


class GradfitError(Exception):
    """Base class of all gradfit errors."""


class FormulaError(GradfitError, ValueError):
    """A formula was rejected. ``position`` is the 0-based character offset, ``token`` the culprit."""

    def __init__(self, message: str, *, token: str | None = None, position: int | None = None):
        self.token = token
        self.position = position
        where = ""
        if token is not None and position is not None:
            where = f" (at {token!r}, position {position})"
        elif position is not None:
            where = f" (at position {position})"
        super().__init__(f"{message}{where}")


class DataError(GradfitError, ValueError):
    """Input data is missing, malformed or inconsistent with the model."""


class ModelError(GradfitError, ValueError):
    """A model specification (built-in name, callable, module, saved file) is unusable."""


class ConfigError(GradfitError, ValueError):
    """An option has an invalid value (unknown optimizer, negative learning rate, ...)."""


class FitError(GradfitError, RuntimeError):
    """A fit could not be carried out at all (as opposed to a fit that ran and diverged)."""


class PersistError(GradfitError, OSError):
    """A saved file is missing, truncated, tampered with or of an unknown format version."""


class MissingDependencyError(GradfitError, ImportError):
    """A feature needs an optional package that is not installed; the message says what to
    install (an ImportError too, so ``except ImportError`` keeps working)."""


def require(module: str, *, extra: str | None, feature: str, package: str | None = None):
    """Import and return the optional ``module`` that ``feature`` needs, or raise
    MissingDependencyError saying what to install: ``pip install "gradfit[EXTRA]"``, or
    ``pip install PACKAGE`` for a package no extra provides (``extra=None``).

    Every import of an optional dependency (optuna, pandas, pyarrow, openpyxl) goes through
    here, so a missing one is one line saying what to do, never an internal error.

    Examples
    --------
    >>> import sys
    >>> sys.modules["no_such_pkg"] = None  # as if not installed
    >>> try:
    ...     require("no_such_pkg", extra="tune", feature="gradfit tune")
    ... except MissingDependencyError as exc:
    ...     print(exc)
    gradfit tune needs no_such_pkg: pip install "gradfit[tune]"
    >>> del sys.modules["no_such_pkg"]
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        install = f'"gradfit[{extra}]"' if extra else (package or module)
        missing = getattr(exc, "name", None)
        # the package is there but one of its own dependencies is not: name that one too
        broken = (f" (importing {module} failed: {exc})" if missing and missing.split(".")[0] != module.split(".")[0]
                  else "")
        raise MissingDependencyError(f"{feature} needs {package or module}{broken}: pip install {install}") from None


class GradfitWarning(UserWarning):
    """Warnings about a fit's result (rank deficiency, overfitting, parameters at bounds)."""


def did_you_mean(name: str, choices) -> str:
    """' (did you mean 'x'?)' or '': the hint every unknown-name message ends with."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str, category: type[Warning] = GradfitWarning) -> None:
    """Warn with the location of the first caller outside gradfit (the user's own line).

    A fixed ``stacklevel`` points at gradfit's internals whenever the call path changes
    (``gf.fit`` -> ``curve_fit`` -> ...); counting frames up to the first one outside the
    package always lands on the user's line (Python 3.12's ``skip_file_prefixes`` does the
    same; this works on 3.10+).
    """
    level = 2
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
