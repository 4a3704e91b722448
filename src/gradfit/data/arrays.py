"""User data (arrays, tensors, dicts, DataFrames) -> validated named float arrays.

This is the one place that decides which names are inputs, where y comes from, and what
happens to NaN/inf (``nan_policy``: "raise" names the rows; "omit" drops them), how sigma
becomes weights, and which values float32 cannot hold. One fit (:func:`prepare_arrays`)
and a batch of fits (:func:`batch_weights`, with the batch as the leading dimension) share
the functions and their messages: :func:`weights_from_sigma` and :func:`check_float32_range`.
In a batch, a NaN or inf in y (or in a per-point input) masks that point of that fit only.

Models are duck-typed here (data/ sits beside models/, not above it): a formula model is one
with ``parsed`` and ``bind``; ``scalar_params`` tells named-scalar models from networks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, DataError, did_you_mean
from ..formula.tree import Var, constant_names
from .delimited import check_duplicate_names
from .float32 import (FLOAT32_MAX_SQUARED, FLOAT32_MAX, FLOAT32_RESOLUTION, check_float32_range,  # noqa: F401
                      float32_lossy, within_float32_range)
from .io import numeric_columns

__all__ = ["Arrays", "prepare_arrays", "as_float_array", "as_batch", "weights_from_sigma", "check_float32_range",
           "float32_lossy", "batch_weights", "FLOAT32_MAX", "FLOAT32_RESOLUTION"]


def _is_formula(model) -> bool:
    return getattr(model, "parsed", None) is not None  # formula models (built-ins too) carry their parse


def _scalar_params(model) -> bool:
    """Named scalar parameters (formulas, built-ins, functions); False for networks and
    network specs, which have no ``scalar_params`` of their own."""
    return bool(getattr(model, "scalar_params", False))


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

    @property
    def n_used(self) -> int:
        """The points a fit uses: those of weight > 0 (all without weights)."""
        return self.n if self.weights is None else int(np.count_nonzero(self.weights > 0))

    def take(self, idx: np.ndarray) -> "Arrays":
        return Arrays({k: v[idx] for k, v in self.inputs.items()}, self.y[idx],
                      None if self.weights is None else self.weights[idx], list(self.notes), self.float32_safe)


def as_float_array(value, what: str) -> np.ndarray:
    """Anything array-like (lists, numpy, torch tensors, pandas) -> float64 numpy array.

    The result is writable: pandas (copy-on-write) and memory-mapped files hand out
    read-only views, and torch warns ("The given NumPy array is not writable") whenever such
    an array becomes a tensor. A read-only array is therefore copied once, here, and every
    later ``torch.as_tensor`` of the fit's data is silent. A view with a negative stride
    (``x[::-1]``) is copied too: torch cannot wrap one.
    """
    if (type(value) is np.ndarray and value.dtype == np.float64 and value.flags.writeable
            and min(value.strides, default=0) >= 0):
        return value
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be numeric, got {type(value).__name__}") from None
    if arr.dtype == object:
        raise DataError(f"{what} must be numeric")
    return arr if arr.flags.writeable and min(arr.strides, default=0) >= 0 else arr.copy()


def _columns(data) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(numeric columns as float64, text columns as given): ids, labels and notes may be text;
    only a column the fit uses must be numeric (checked in :func:`_refuse_used_text`)."""
    if isinstance(data, Mapping):
        raw = {str(k): v for k, v in data.items()}
    elif hasattr(data, "columns") and hasattr(data, "__getitem__"):
        check_duplicate_names([str(c) for c in data.columns], "data")
        raw = {str(c): data[c].to_numpy() for c in data.columns}
    else:
        raise DataError(f"data must be a pandas DataFrame or a dict of columns, got {type(data).__name__}")
    cols, text = {}, {}
    for k, v in raw.items():
        try:
            # pandas hands out read-only views (copy-on-write); see as_float_array
            cols[k] = as_float_array(v, f"column {k!r}")
        except DataError:
            text[k] = np.asarray(v, dtype=object)
    lengths = {k: (len(v) if np.ndim(v) else 0) for k, v in {**cols, **text}.items()}
    if len(set(lengths.values())) > 1:
        first = next(iter(lengths))
        odd = next(k for k, n in lengths.items() if n != lengths[first])
        raise DataError(f"column {odd!r} has {lengths[odd]} values but column {first!r} has {lengths[first]}; "
                        "every column needs one value per row")
    return cols, text


def _refuse_used_text(model, x, y, text: dict, named=()) -> None:
    """A text column the fit would use is a DataError naming its first non-numeric cells
    (a formula naming it must not silently turn it into a parameter); ``named``: the
    weights/sigma columns."""
    if not text:
        return
    used = set(named)
    for name in (x, y):
        if isinstance(name, str):
            used.add(name)
        elif isinstance(name, (list, tuple)):
            used.update(n for n in name if isinstance(n, str))
    if _is_formula(model):
        if x is None:
            used |= _bindable_names(model)
        if y is None and model.parsed.response is not None:
            used |= set(model.response_names)
    for name in used & set(text):
        numeric_columns(text, [name])


def prepare_arrays(model, x=None, y=None, *, data=None, weights=None, sigma=None, nan_policy: str = "raise"):
    """Resolve inputs and target for ``model``; returns (model bound to its inputs, Arrays).

    ``weights`` and ``sigma`` (weights 1/sigma^2) are values, or the name of a column of
    ``data``; such a column may also be an input of the model.
    """
    if nan_policy not in ("raise", "omit"):
        raise ConfigError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    columns: dict[str, np.ndarray] = {}
    named = [v for v in (weights, sigma) if isinstance(v, str)]
    if data is not None:
        columns, text = _columns(data)
        _refuse_used_text(model, x, y, text, named)
        if not columns:
            raise DataError("data has no numeric columns" if text else "data has no columns")
    weights, sigma = (_named_column(v, columns, what) for v, what in ((weights, "weights"), (sigma, "sigma")))
    inputs, y_arr = _inputs_and_target(model, x, y, columns, exclude=named)
    if _is_formula(model):
        if columns and x is None:
            _check_column_typos(model, columns, y)
        model = model.bind(inputs)
        missing = [n for n in model.input_names if n not in inputs]
        if missing:
            raise DataError(f"no data for input {missing[0]!r}{did_you_mean(missing[0], inputs)}")
        inputs = {n: inputs[n] for n in model.input_names}
    elif _scalar_params(model) and len(inputs) == 1:
        inputs = {model.input_names[0]: next(iter(inputs.values()))}
    weights_name = "weights" if sigma is None else "sigma"
    weights = weights_from_sigma(weights, sigma)
    w = None if weights is None else as_float_array(weights, weights_name)
    if w is not None and w.ndim == 0:  # one value for every point
        w = np.full(len(y_arr) if y_arr.ndim else 0, float(w))
    if y_arr.ndim != 1 and _scalar_params(model):
        raise DataError(f"y must have one value per point (1-D), got shape {y_arr.shape}; "
                        "for many independent fits use fit_many")
    if y_arr.ndim == 2 and y_arr.shape[1] == 1:
        y_arr = y_arr[:, 0]  # one output: a network predicts (n,), so its target is (n,) (not a (n, n) broadcast)
    arrays = _validate(Arrays(inputs, y_arr, w), nan_policy, weights_name)
    if columns and x is None and _is_formula(model):
        note = _binding_note(model)
        if note:
            arrays.notes.append(note)
    return model, arrays


def _named_column(value, columns: dict, what: str):
    """``weights="w"`` / ``sigma="s"``: that column of data= (any other value as it is)."""
    if not isinstance(value, str):
        return value
    if not columns:
        raise ConfigError(f"{what}={value!r} names a column of data=; pass data=... (a table, a dict of columns or "
                          f"a file), or {what} as values (one per point)")
    if value not in columns:
        raise DataError(f"no column {value!r} in data for {what}{did_you_mean(value, columns)}")
    return columns[value]


def _binding_note(model) -> str | None:
    """Say which names data columns made inputs when that may not be what the user meant:
    more than one column bound, or a formula whose 'x' is left a parameter. A column named
    like a parameter (``b`` in ``a*x + b``) is an input; this note keeps that from being silent."""
    if getattr(model, "kind", "formula") != "formula" or not model.param_names:
        return None
    if len(model.input_names) < 2 and "x" not in model.param_names:
        return None
    return (f"inputs (data columns): {', '.join(model.input_names)}; parameters: {', '.join(model.param_names)}"
            " (a name that is a data column is an input)")


def _inputs_and_target(model, x, y, columns, exclude=()):
    if columns:
        y_arr = _target_from_columns(model, y, columns)
        if x is None:
            inputs = {k: v for k, v in columns.items()}
            if _is_formula(model):
                used = _bindable_names(model)
                inputs = {k: v for k, v in inputs.items() if k in used}
            else:
                exclude = {*exclude, *([y] if isinstance(y, str) else [])}  # the target, the weights
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
        if _is_formula(model) and model.parsed.response is not None and isinstance(x, Mapping):
            return _named_inputs(x), _target_from_columns(model, None, _named_inputs(x))
        raise DataError("no target: pass y=... or data= with a 'response ~ expression' formula")
    inputs = _named_inputs(x) if isinstance(x, Mapping) else {"x": as_float_array(x, "x")}
    if _is_formula(model):
        if not isinstance(x, Mapping):
            inputs = {_single_input_name(model): inputs["x"]}
        inputs = {k: _one_column(k, v) for k, v in inputs.items()}
    return inputs, _transformed_response(model, as_float_array(y, "y"))


def _one_column(name: str, v: np.ndarray) -> np.ndarray:
    """A formula's input holds one value per point: an (n, 1) column is taken as (n,); (n, k)
    with k > 1 is a DataError (several inputs are named)."""
    if v.ndim == 2 and v.shape[1] == 1:
        return v[:, 0]
    if v.ndim > 1:
        raise DataError(f"input {name!r} has shape {v.shape}, but a formula's input holds one value per point; "
                        "pass it 1-D, or name each column as an input: x={'u': X[:, 0], 'v': X[:, 1]}")
    return v


def _transformed_response(model, y_arr: np.ndarray) -> np.ndarray:
    """``y=`` given as values for a formula whose response is an expression (``log(y) ~ ...``):
    the values are the response's one name, and the fit's target is the expression of them
    (fitting the raw y against ``a + b*x`` would silently ignore what the formula says)."""
    if not _is_formula(model) or model.parsed.response is None or isinstance(model.parsed.response, Var):
        return y_arr
    names = sorted(model.response_names)
    if len(names) != 1:
        raise DataError(f"the response {model.text.split('~')[0].strip()!r} uses {len(names)} names "
                        f"({', '.join(names)}); pass them as columns with data=... instead of y=")
    value = model.response_numpy({names[0]: y_arr})
    return np.broadcast_to(np.asarray(value, dtype=float), y_arr.shape).copy()


def _check_column_typos(model, columns, y) -> None:
    """A formula that uses no column at all almost always has a misspelled column name."""
    used = _bindable_names(model) & set(columns)
    if used:
        return
    for name in sorted(model.parsed.rhs.names()):
        hint = did_you_mean(name, columns)
        if hint:
            raise DataError(f"no column {name!r} in data{hint}; the formula uses no data column"
                            + _identifier_hint(columns))
    raise DataError(f"the formula uses none of the data's columns ({', '.join(columns)})" + _identifier_hint(columns))


def _identifier_hint(columns) -> str:
    """Formulas name columns by identifiers; say how to use a column such as 'Time (s)'."""
    odd = [c for c in columns if not c.isidentifier()]
    if not odd:
        return ""
    return (f"; a formula can only name columns that are identifiers, not {odd[0]!r}: rename it "
            f"(df.rename(columns={{{odd[0]!r}: 't'}})), pass x={{'t': values}}, or use a built-in curve with "
            f"x={odd[0]!r}")


def _bindable_names(model) -> frozenset[str]:
    """Names in a formula that a data column can bind: its free names and the named
    constants (a column called ``e`` or ``pi`` is an input; see FormulaModel)."""
    rhs = model.parsed.rhs
    return rhs.names() | constant_names(rhs)


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
        if _is_formula(model) and model.response_names == frozenset({y}):
            return _transformed_response(model, columns[y])  # y="y" with "log(y) ~ ..."
        return columns[y]
    if y is not None:
        return as_float_array(y, "y")
    if not _is_formula(model) or model.parsed.response is None:
        raise DataError("which column is y? write the formula as 'response ~ expression' or pass y='column'")
    for n in model.response_names:
        if n not in columns:
            raise DataError(f"response uses {n!r}, which is not a column{did_you_mean(n, columns)}")
    value = model.response_numpy({n: columns[n] for n in model.response_names})
    shape = next(iter(columns.values())).shape
    if isinstance(value, np.ndarray) and value.shape == shape and value.dtype == np.float64:
        return value  # read-only from here on, like the input columns
    return np.broadcast_to(np.asarray(value, dtype=float), shape).copy()


def _drop_or_name_bad_rows(a: Arrays, n: int, nan_policy: str, weights_name: str = "weights") -> Arrays:
    """Rows with NaN or inf: named in an error ("raise", with the arrays they are in) or dropped
    with a note ("omit")."""
    bad = np.zeros(n, dtype=bool)
    where = []
    arrays = {"y": a.y, **{f"input {k!r}": v for k, v in a.inputs.items()}}
    if a.weights is not None:
        arrays[weights_name] = a.weights
    for name, v in arrays.items():
        here = ~np.isfinite(v).reshape(n, -1).all(axis=1)
        if here.any():
            bad |= here
            where.append(name)
    if bad.any():
        rows = np.nonzero(bad)[0]
        if nan_policy == "raise":
            shown = ", ".join(str(r + 1) for r in rows[:8]) + (" ..." if len(rows) > 8 else "")
            raise DataError(f"NaN or inf in {len(rows)} data row(s): {shown} (1-based), in {', '.join(where)}; "
                            "clean them or use nan_policy='omit' (--nan-policy omit) to drop them")
        keep = ~bad
        a = a.take(np.nonzero(keep)[0])
        a.notes.append(f"dropped {len(rows)} row(s) with NaN or inf")
        if a.n == 0:
            raise DataError("every row has NaN or inf; nothing left to fit")
    return a


def _validate(a: Arrays, nan_policy: str, weights_name: str = "weights") -> Arrays:
    n = len(a.y) if a.y.ndim else 0
    if a.y.ndim == 0 or n == 0:
        raise DataError("y is empty; at least one data point is needed")
    if a.y.ndim > 2:
        raise DataError(f"y must be 1-D (or 2-D for multi-output networks), got shape {a.y.shape}")
    for name, v in a.inputs.items():
        if v.ndim == 0 or len(v) != n:
            raise DataError(f"input {name!r} has {v.size if v.ndim == 0 else len(v)} values but y has {n}")
    if a.weights is not None and (a.weights.shape != (n,)):
        shape = a.weights.shape
        raise DataError(f"{weights_name} must have one value per point ({n}), got shape {shape}")
    checked = (a.y, *a.inputs.values()) if a.weights is None else (a.y, a.weights, *a.inputs.values())
    if all(within_float32_range(v) for v in checked):  # False for NaN
        # One reduction per array proves every value finite and within float32's range
        # (data/float32.py); the row-by-row checks only run when it fails, to name the rows.
        a.float32_safe = True
    else:
        a = _drop_or_name_bad_rows(a, n, nan_policy, weights_name)
    if a.weights is not None:
        negative = a.weights < 0
        if negative.any():
            row = int(np.argmax(negative))
            raise DataError(f"weights must be non-negative: {a.weights[row]:g} at row {row + 1}; give each point's "
                            "weight (1/sigma^2; 0 leaves a point out)")
        if not a.weights.max() > 0:  # (every row dropped is refused above)
            given = "sigma is inf at every point" if weights_name == "sigma" else "every weight is 0"
            raise DataError(f"{given}: no point is left to fit (a weight of 0 leaves a point out); give some "
                            "points a positive weight (a finite sigma)")
    return a


# -- shared by one fit and a batch ----------------------------------------------------------
def weights_from_sigma(weights, sigma, *, shape: tuple | None = None):
    """Weights 1/sigma^2 from ``sigma`` (or ``weights`` unchanged when sigma is None).

    One fit: sigma is one value per point (M,), or one value for every point (a scalar); a NaN
    becomes a NaN weight, which the fit's ``nan_policy`` names or drops with its row. A batch
    (``shape`` = (B, M)): sigma is (M,) or (B, M) and is broadcast to ``shape``; NaN is refused.
    Raises ConfigError when both are given and DataError for a wrong shape or a sigma that is
    not positive at some point (named). An infinite sigma is a weight of 0.
    """
    if sigma is None:
        return weights
    if weights is not None:
        raise ConfigError("pass either sigma or weights, not both (weights = 1/sigma**2)")
    s = as_float_array(sigma, "sigma")
    if shape is None:
        if s.ndim > 1:
            raise DataError(f"sigma must be one value per point (or one value for all points), got shape {s.shape}")
    else:
        s = _broadcast(s, shape, "sigma")
    if s.size and not s.min() > 0:  # (NaN propagates through min): find which, and where
        _refuse_sigma(s, batch=shape is not None)
    return 1.0 / s**2


def _refuse_sigma(s: np.ndarray, *, batch: bool) -> None:
    """DataError naming the first sigma that is not positive (0-based fit and point in a batch,
    1-based row in one fit); NaN too in a batch. One fit's NaN passes (the NaN policy's)."""
    with np.errstate(invalid="ignore"):
        bad = ~(s > 0) if batch else (s <= 0)
    if not bad.any():
        return
    first = tuple(int(i[0]) for i in np.nonzero(bad)) if s.ndim else ()
    value = float(s[first])
    if batch:
        where = f"at fit {first[0]}, point {first[1]}"
    else:
        where = f"at row {first[0] + 1}" if first else "for every point"
    what = "sigma is NaN" if value != value else f"sigma must be positive: {value:g}"
    raise DataError(f"{what} {where}; give each point's standard deviation (> 0), or weights= instead (a weight "
                    "of 0 leaves a point out)")


def as_batch(a, what: str) -> np.ndarray:
    """(B, M) float array of a batch (a 1-D array is one fit); float32 stays float32 (no copy
    of a large batch). DataError for other shapes."""
    if isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64):
        arr = a
    else:
        arr = as_float_array(a, what)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim == 2 and 0 in arr.shape:
        empty = "no fits" if arr.shape[0] == 0 else "no points"
        raise DataError(f"{what} has {empty} (shape {arr.shape}); pass at least one fit of at least one point")
    if arr.ndim != 2:
        raise DataError(f"{what} must have shape (fits, points), got {arr.shape}")
    return arr


def _broadcast(a: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    try:
        return np.broadcast_to(a, shape)
    except ValueError:
        raise DataError(f"{what} must have shape ({shape[1]},) or {shape}, got {a.shape}") from None


def batch_weights(y: np.ndarray, *, weights=None, sigma=None, mask=None, inputs: Mapping | None = None
                  ) -> np.ndarray:
    """Per-point weights (B, M) of a batch ``y`` (B, M): 1/sigma^2 or ``weights`` (both (M,) or
    (B, M)), 0 where ``mask`` (B, M) is False and where y or a per-point input ((M,) or (B, M)
    in ``inputs``) is NaN or inf: such a point leaves its own fit only.

    Without weights, mask or missing values (several fits of several points) the result is a
    read-only broadcast of one row of ones.

    Raises ConfigError (sigma and weights both given) and DataError (shapes, sigma not
    positive, negative weights), with the messages one fit gets.
    """
    w = weights_from_sigma(weights, sigma, shape=y.shape)
    bad_inputs = None
    for v in (inputs or {}).values():
        if v.shape[-1:] == y.shape[-1:] and not np.isfinite(v).all():
            bad = ~np.isfinite(v)
            bad_inputs = bad if bad_inputs is None else (bad_inputs | bad)
    if w is None and mask is None and bad_inputs is None:  # the common case, kept cheap
        b, m = y.shape
        with np.errstate(invalid="ignore"):
            finite = b > 1 and m > 1 and bool(np.isfinite(y.min()) and np.isfinite(y.max()))
        if finite:  # every weight 1: one read-only row for every fit (a million fits' (B, M) array
            # of ones cost ~0.1-0.2 s of fresh memory; copies for torch or C are made per chunk)
            return np.broadcast_to(np.ones(m, dtype=np.float32), y.shape)
        return np.isfinite(y).astype(np.float32)  # 1, or 0 for NaN
    if w is None:
        w = np.ones(y.shape)
    elif sigma is None:
        w = np.array(_broadcast(as_float_array(w, "weights"), y.shape, "weights"))
        if (w < 0).any():
            raise DataError("weights must be non-negative")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != y.shape:
            raise DataError(f"mask must have y's shape {y.shape}, got {m.shape}")
        w = np.where(m, w, 0.0)
    ok = np.isfinite(y) & np.isfinite(w)
    if bad_inputs is not None:
        ok &= ~bad_inputs
    return np.ascontiguousarray(np.where(ok, w, 0.0))
