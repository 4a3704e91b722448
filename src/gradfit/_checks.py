"""Value checks for the option constructors (options.py): each returns the value in its
canonical form or raises a ConfigError that names the option and the value, as torch.optim's
constructors do."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from .errors import ConfigError, did_you_mean

__all__ = ["check_integer", "is_real", "check_positive", "check_nonnegative", "check_flag", "check_choice",
           "check_known", "check_name", "check_plain", "check_mapping"]


def check_integer(label: str, value, minimum: int, *, optional: bool = False) -> int | None:
    if type(value) is int and value >= minimum or value is None and optional:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{label} must be an integer >= {minimum}{' or None' if optional else ''}, got {value!r}")
    return int(value)


def is_real(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def check_positive(label: str, value, *, optional: bool = False) -> float | None:
    if type(value) is float and 0 < value < math.inf or value is None and optional:
        return value
    if not is_real(value) or not value > 0:
        raise ConfigError(f"{label} must be a positive number{' or None' if optional else ''}, got {value!r}")
    return float(value)


def check_nonnegative(label: str, value) -> float:
    if not is_real(value) or value < 0:
        raise ConfigError(f"{label} must be a number >= 0, got {value!r}")
    return float(value)


def check_flag(label: str, value, *, optional: bool = False) -> bool | None:
    if value is True or value is False or value is None and optional:
        return value
    if isinstance(value, int) and value in (0, 1) or type(value).__name__ == "bool_":  # numpy's bool_
        return bool(value)
    raise ConfigError(f"{label} must be True or False{' (or None)' if optional else ''}, got {value!r}")


def check_choice(label: str, value, choices) -> str:
    key = value.lower() if isinstance(value, str) else value
    if key not in choices:
        hint = did_you_mean(key, choices) if isinstance(key, str) else ""
        raise ConfigError(f"{label} must be one of {', '.join(map(repr, choices))}, got {value!r}{hint}")
    return key


def check_known(label: str, value: str, choices) -> str:
    """``value`` if it is one of ``choices``, else a ConfigError that suggests the closest."""
    if value not in choices:
        raise ConfigError(f"unknown {label} {value!r}{did_you_mean(value, choices)}; choose one of {', '.join(choices)}")
    return value


def check_name(label: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{label} must be a name (a non-empty string), got {value!r}")
    return value.strip().lower()


def check_plain(label: str, value):
    """A copy of ``value`` made of JSON types (tuples become lists), or ConfigError."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (numbers.Integral, numbers.Real)):
        return int(value) if isinstance(value, numbers.Integral) else float(value)
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"{label} keys must be strings, got {bad[0]!r}")
        return {k: check_plain(f"{label}[{k!r}]", v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [check_plain(f"{label}[{i}]", v) for i, v in enumerate(value)]
    raise ConfigError(f"{label} must be plain data (numbers, strings, booleans, lists, dicts) so that it can be "
                      f"saved as JSON, got {value!r}")


def check_mapping(label: str, value) -> dict | None:
    """An option dict of keyword arguments (None and {} both mean none)."""
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{label} must be a dict of keyword arguments, got {value!r}")
    return check_plain(label, value) or None
