"""User data (arrays, tensors, dicts, DataFrames) -> validated named float arrays.

This is the one place that decides which names are inputs, where y comes from, and what
happens to NaN/inf (``nan_policy``: "raise" names the rows; "omit" drops them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ..errors import ConfigError, DataError
from ..models.formula import FormulaModel
from ..models.neural import MLPSpec
from ..errors import did_you_mean
from .io import columns_from_frame

__all__ = ["Arrays", "prepare_arrays", "as_float_array"]


@dataclass
class Arrays:
    """Validated data: named inputs, target, optional weights (numpy, float64)."""

    inputs: dict[str, np.ndarray]
    y: np.ndarray
    weights: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    #: True when every value is finite and within float32's range (set by validation)
    float32_safe: bool = False

    @property
    def n(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> "Arrays":
        return Arrays({k: v[idx] for k, v in self.inputs.items()}, self.y[idx],
                      None if self.weights is None else self.weights[idx], list(self.notes), self.float32_safe)


def as_float_array(value, what: str) -> np.ndarray:
    """Anything array-like (lists, numpy, torch tensors, pandas) -> float64 numpy array."""
    if type(value) is np.ndarray and value.dtype == np.float64:
        return value
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be numeric, got {type(value).__name__}") from None
    if arr.dtype == object:
        raise DataError(f"{what} must be numeric")
    return arr


def _columns(data) -> dict[str, np.ndarray]:
    if isinstance(data, Mapping):
        cols = {str(k): as_float_array(v, f"column {k!r}") for k, v in data.items()}
        lengths = {k: (len(v) if v.ndim else 0) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            first = next(iter(lengths))
            odd = next(k for k, n in lengths.items() if n != lengths[first])
            raise DataError(f"column {odd!r} has {lengths[odd]} values but column {first!r} has {lengths[first]}; "
                            "every column needs one value per row")
        return cols
    if hasattr(data, "columns") and hasattr(data, "__getitem__"):
        return columns_from_frame(data)
    raise DataError(f"data must be a pandas DataFrame or a dict of columns, got {type(data).__name__}")


def prepare_arrays(model, x=None, y=None, *, data=None, weights=None, nan_policy: str = "raise"):
    """Resolve inputs and target for ``model``; returns (model bound to its inputs, Arrays)."""
    if nan_policy not in ("raise", "omit"):
        raise ConfigError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    columns: dict[str, np.ndarray] = {}
    if data is not None:
        columns = _columns(data)
        if not columns:
            raise DataError("data has no columns")
    inputs, y_arr = _inputs_and_target(model, x, y, columns)
    if isinstance(model, FormulaModel):
        if columns and x is None:
            _check_column_typos(model, columns, y)
        model = model.bind(inputs)
        missing = [n for n in model.input_names if n not in inputs]
        if missing:
            raise DataError(f"no data for input {missing[0]!r}{did_you_mean(missing[0], inputs)}")
        inputs = {n: inputs[n] for n in model.input_names}
    elif not isinstance(model, MLPSpec) and getattr(model, "scalar_params", True) and len(inputs) == 1:
        inputs = {model.input_names[0]: next(iter(inputs.values()))}
    w = None if weights is None else as_float_array(weights, "weights")
    if y_arr.ndim != 1 and not isinstance(model, MLPSpec) and getattr(model, "scalar_params", True):
        raise DataError(f"y must have one value per point (1-D), got shape {y_arr.shape}; "
                        "for many independent fits use fit_many")
    arrays = _validate(Arrays(inputs, y_arr, w), nan_policy)
    return model, arrays


def _inputs_and_target(model, x, y, columns):
    if columns:
        y_arr = _target_from_columns(model, y, columns)
        if x is None:
            inputs = {k: v for k, v in columns.items()}
            if isinstance(model, FormulaModel):
                used = model.parsed.rhs.names()
                inputs = {k: v for k, v in inputs.items() if k in used}
            else:
                exclude = {y} if isinstance(y, str) else set()
                inputs = {k: v for k, v in inputs.items() if k not in exclude}
        else:
            names = [x] if isinstance(x, str) else list(x)
            for n in names:
                if n not in columns:
                    raise DataError(f"no column {n!r} in data{did_you_mean(n, columns)}")
            inputs = {n: columns[n] for n in names}
        return inputs, y_arr
    if x is None:
        raise DataError("no input data: pass x=... (array or dict of named inputs) or data=...")
    if y is None:
        if isinstance(model, FormulaModel) and model.parsed.response is not None and isinstance(x, Mapping):
            return _named_inputs(x), _target_from_columns(model, None, _named_inputs(x))
        raise DataError("no target: pass y=... or data= with a 'response ~ expression' formula")
    inputs = _named_inputs(x) if isinstance(x, Mapping) else {"x": as_float_array(x, "x")}
    if isinstance(model, FormulaModel) and not isinstance(x, Mapping):
        inputs = {_single_input_name(model): inputs["x"]}
    return inputs, as_float_array(y, "y")


def _check_column_typos(model, columns, y) -> None:
    """A formula that uses no column at all almost always has a misspelled column name."""
    used = model.parsed.rhs.names() & set(columns)
    if used:
        return
    for name in sorted(model.parsed.rhs.names()):
        hint = did_you_mean(name, columns)
        if hint:
            raise DataError(f"no column {name!r} in data{hint}; the formula uses no data column")
    raise DataError(f"the formula uses none of the data's columns ({', '.join(columns)})")


def _named_inputs(x: Mapping) -> dict[str, np.ndarray]:
    return {str(k): as_float_array(v, f"input {k!r}") for k, v in x.items()}


def _single_input_name(model) -> str:
    """With x given as a bare array, the formula's input is 'x' (or its one non-parameter)."""
    if model.bound:
        return model.input_names[0] if model.input_names else "x"
    names = model.parsed.rhs.names()
    if "x" in names:
        return "x"
    raise DataError(
        f"formula {model.text!r} has no name 'x'; pass x as a dict naming the input, e.g. x={{'t': values}}"
    )


def _target_from_columns(model, y, columns) -> np.ndarray:
    if isinstance(y, str):
        if y not in columns:
            raise DataError(f"no column {y!r} in data{did_you_mean(y, columns)}")
        return columns[y]
    if y is not None:
        return as_float_array(y, "y")
    if not isinstance(model, FormulaModel) or model.parsed.response is None:
        raise DataError("which column is y? write the formula as 'response ~ expression' or pass y='column'")
    for n in model.response_names:
        if n not in columns:
            raise DataError(f"response uses {n!r}, which is not a column{did_you_mean(n, columns)}")
    value = model.response_numpy({n: columns[n] for n in model.response_names})
    shape = next(iter(columns.values())).shape
    if isinstance(value, np.ndarray) and value.shape == shape and value.dtype == np.float64:
        return value  # read-only from here on, like the input columns
    return np.broadcast_to(np.asarray(value, dtype=float), shape).copy()


def _drop_or_name_bad_rows(a: Arrays, n: int, nan_policy: str) -> Arrays:
    """Rows with NaN or inf: named in an error ("raise") or dropped with a note ("omit")."""
    bad = ~np.isfinite(a.y).reshape(n, -1).all(axis=1)
    for v in a.inputs.values():
        bad |= ~np.isfinite(v).reshape(n, -1).all(axis=1)
    if a.weights is not None:
        bad |= ~np.isfinite(a.weights)
    if bad.any():
        rows = np.nonzero(bad)[0]
        if nan_policy == "raise":
            shown = ", ".join(str(r + 1) for r in rows[:8]) + (" ..." if len(rows) > 8 else "")
            raise DataError(f"NaN or inf in {len(rows)} data row(s): {shown} (1-based); "
                            "clean them or use nan_policy='omit' (--nan-policy omit) to drop them")
        keep = ~bad
        a = a.take(np.nonzero(keep)[0])
        a.notes.append(f"dropped {len(rows)} row(s) with NaN or inf")
        if a.n == 0:
            raise DataError("every row has NaN or inf; nothing left to fit")
    return a


_FLOAT32_MAX_SQUARED = float(np.finfo(np.float32).max) ** 2


def _sum_of_squares(v: np.ndarray) -> float:
    flat = v if v.ndim == 1 else v.reshape(-1)
    return float(flat @ flat)


def _validate(a: Arrays, nan_policy: str) -> Arrays:
    n = len(a.y) if a.y.ndim else 0
    if a.y.ndim == 0 or n == 0:
        raise DataError("y is empty; at least one data point is needed")
    if a.y.ndim > 2:
        raise DataError(f"y must be 1-D (or 2-D for multi-output networks), got shape {a.y.shape}")
    for name, v in a.inputs.items():
        if v.ndim == 0 or len(v) != n:
            raise DataError(f"input {name!r} has {v.size if v.ndim == 0 else len(v)} values but y has {n}")
    if a.weights is not None and (a.weights.shape != (n,)):
        raise DataError(f"weights must have one value per point ({n}), got shape {a.weights.shape}")
    checked = (a.y, *a.inputs.values()) if a.weights is None else (a.y, a.weights, *a.inputs.values())
    if all(_sum_of_squares(v) <= _FLOAT32_MAX_SQUARED for v in checked):  # False for NaN
        # One BLAS reduction per array proves every value finite and within float32's
        # range (NaN and inf propagate; sum(v^2) bounds every v^2); the row-by-row checks
        # only run when it fails, to name the rows.
        a.float32_safe = True
    else:
        a = _drop_or_name_bad_rows(a, n, nan_policy)
    if a.weights is not None and (a.weights < 0).any():
        raise DataError("weights must be non-negative")
    return a
