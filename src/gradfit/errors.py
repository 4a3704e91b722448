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
    "GradfitWarning",
    "did_you_mean",
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
