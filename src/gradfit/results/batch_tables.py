"""A BatchResult as labelled tables: a pandas DataFrame whose id column keeps the ids' values and
type, and an xarray Dataset on the grid of the DataArray that was fitted.

Ids come from a long table (``fit_many(data=df, id="well", ...)``) as a numpy array of their
values (text as objects, integers, datetime64); a pandas extension type of the id column (a
Categorical, dates with a time zone) is kept beside them as ``id_dtype`` and put back here.
The .npz file stores the id column's name and, for those types, what rebuilds them; a Parquet
table keeps the types itself; a CSV table keeps text and numbers only (dates come back as text).
"""

from __future__ import annotations

import numpy as np

from ..errors import require

__all__ = ["to_pandas", "table_frame", "to_xarray", "csv_columns", "id_document", "id_fields", "table_ids"]


def to_pandas(result):
    """One row per fit (:meth:`BatchResult.columns`), the id column named as the id column of
    the long table fitted (``id`` when unknown), with the ids' original type; for a fitted
    DataArray, one column per batch dimension holding each fit's coordinates instead."""
    frame = table_frame(result, result.id_name or "id")
    stacking = getattr(result, "stacking", None)
    if stacking is not None and result.ids is None:
        pd = require("pandas", extra="pandas", feature="BatchResult.to_pandas")
        grids = np.meshgrid(*(stacking.template[d].values for d in stacking.dims), indexing="ij")
        labels = pd.DataFrame({str(d): g.reshape(-1) for d, g in zip(stacking.dims, grids)})
        frame = pd.concat([frame.iloc[:, :1], labels, frame.iloc[:, 1:]], axis=1)
    return frame


def table_frame(result, id_label: str = "id"):
    """The DataFrame of :meth:`BatchResult.columns` with typed ids under ``id_label`` (files
    keep the label ``id``)."""
    pd = require("pandas", extra="pandas", feature="BatchResult.to_pandas")
    columns = result.columns()
    if result.ids is not None:
        key = "result_id" if "result_id" in columns else "id"
        ids = pd.Series(np.asarray(result.ids))
        if result.id_dtype is not None:
            ids = ids.astype(result.id_dtype)
        columns[key] = ids.array
        if id_label != "id" and id_label not in columns:
            columns = {(id_label if k == key else k): v for k, v in columns.items()}
    return pd.DataFrame(columns)


def to_xarray(result):
    """The per-fit quantities as an xarray Dataset: ``{name}``, ``{name}_stderr``, the
    statistics, iterations, status (names) and converged. A fitted DataArray's result is laid
    on its batch dimensions and coordinates (kept in memory only: a result loaded from a file
    has none); otherwise on one dimension ``fit`` (named as the id column, with the ids as
    coordinate, for a long table)."""
    xr = require("xarray", extra="xarray", feature="BatchResult.to_xarray")
    columns = result.columns()
    for key in ("fit", "result_fit", "id", "result_id"):
        columns.pop(key, None)
    stacking = getattr(result, "stacking", None)
    if stacking is not None:
        variables = {k: stacking.unstack(v) for k, v in columns.items()}
        return xr.Dataset(variables, attrs={"model": result.model_text, "fit_dim": stacking.dim})
    dim = result.id_name or "fit"
    coords = {dim: np.asarray(result.ids)} if result.ids is not None else {dim: np.arange(len(result))}
    variables = {k: ((dim,), np.asarray(v)) for k, v in columns.items()}
    return xr.Dataset(variables, coords=coords, attrs={"model": result.model_text})


# -- ids in files ----------------------------------------------------------------------------------
def csv_columns(result) -> dict:
    """:meth:`BatchResult.columns` for a CSV file: dates as ISO 8601 text (a CSV has no types)."""
    columns = result.columns()
    key = "result_id" if "result_id" in columns else "id"
    ids = columns.get(key)
    if ids is not None and np.asarray(ids).dtype.kind == "M":
        columns[key] = np.datetime_as_string(np.asarray(ids))
    elif ids is not None and any(hasattr(v, "isoformat") for v in ids):
        columns[key] = _objects([v.isoformat() if hasattr(v, "isoformat") else v for v in ids])
    return columns


def id_document(result) -> dict:
    """The .npz entries beyond ``ids`` that bring the ids back as they were: the id column's
    name, a Categorical's categories (and order flag), a time zone (ids then stored as UTC)."""
    doc = {}
    if result.ids is None:
        return doc
    if result.id_name:
        doc["id_name"] = np.asarray(result.id_name, dtype=str)
    dtype = result.id_dtype
    categories = getattr(dtype, "categories", None)
    if categories is not None:
        values = np.asarray(categories)
        doc["id_categories"] = values.astype(str) if values.dtype.kind in "OSU" else values
        doc["id_ordered"] = np.asarray(bool(dtype.ordered))
    elif getattr(dtype, "tz", None) is not None:
        pd = require("pandas", extra="pandas", feature="saving time-zoned ids")
        doc["ids"] = np.asarray(pd.DatetimeIndex(result.ids).tz_convert("UTC").tz_localize(None).values)
        doc["id_tz"] = np.asarray(str(dtype.tz), dtype=str)
    return doc


def id_fields(arrays: dict, ids) -> dict:
    """``ids``, ``id_name`` and ``id_dtype`` for BatchResult from a loaded .npz document."""
    out = {"ids": ids, "id_name": str(arrays["id_name"]) if "id_name" in arrays else ""}
    if ids is None or ("id_categories" not in arrays and "id_tz" not in arrays):
        return out
    try:
        import pandas as pd
    except ImportError:  # the values stay; only the pandas type is lost
        return out
    if "id_tz" in arrays:
        index = pd.DatetimeIndex(ids).tz_localize("UTC").tz_convert(str(arrays["id_tz"]))
        out["ids"], out["id_dtype"] = _objects(list(index)), index.dtype
        return out
    categories = arrays["id_categories"]
    categories = list(_objects(categories.astype(str).tolist()) if categories.dtype.kind in "US" else categories)
    by_text = {str(c): c for c in categories}
    out["ids"] = _objects([by_text.get(str(v), v) for v in ids])
    out["id_dtype"] = pd.CategoricalDtype(categories, ordered=bool(arrays.get("id_ordered", False)))
    return out


def table_ids(path, column: str, ids):
    """(ids, id_dtype) of a loaded table: a Parquet file's id column is read again with its
    type (Categorical, dates); a CSV's ids stay as read (text or integers)."""
    if ids is None or str(path).lower().endswith(".csv"):
        return ids, None
    pd = require("pandas", extra="pandas", feature="reading a Parquet table")
    series = pd.read_parquet(path, columns=[column])[column]
    if isinstance(series.dtype, np.dtype) or str(series.dtype) in ("str", "string"):
        values = series.to_numpy()
        return (_objects(values.tolist()) if values.dtype.kind == "O" else values), None
    return _objects(series.tolist()), series.dtype


def _objects(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
