"""Hive partition keys as columns: ``runs/run=3/site=north/part-0.parquet`` gives every row of
that file the columns ``run`` (3.0) and ``site`` ("north"), as pyarrow.dataset and pandas read
them.

A key is a folder name ``name=value`` (``name`` an identifier) on the path of *every* file of the
dataset; a key that is also a column inside the files is left to that column. Values are
URL-decoded; a key whose values all read as numbers is numeric (float64), else text.
``__HIVE_DEFAULT_PARTITION__`` (Hive's null) is NaN or None.

Source: the Hive layout as Apache Arrow documents it (``pyarrow.dataset.partitioning(flavor="hive")``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

import numpy as np

__all__ = ["partition_columns", "partition_types", "fill_partitions", "HIVE_NULL"]

#: the value Hive writes for a null partition key
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def _keys(path: Path) -> dict:
    out = {}
    for part in path.parent.parts:
        name, eq, value = part.partition("=")
        if eq and name.isidentifier():
            out[name] = unquote(value)
    return out


def _as_numbers(values: list):
    """float64 values, or None when one of them is not a number."""
    try:
        return np.array([np.nan if v == HIVE_NULL else float(v) for v in values], dtype=np.float64)
    except ValueError:
        return None


def partition_columns(files, existing=()) -> dict:
    """``{name: (value per file, numeric)}`` of the Hive keys every file's path holds.

    Parameters
    ----------
    files : the dataset's files, in its order.
    existing : column names inside the files (a key by one of these names is not added).

    Returns
    -------
    dict : name -> (float64 array or object array, one value per file; bool numeric), in the
        order the keys appear on the first file's path.

    Examples
    --------
    >>> cols = partition_columns([Path("d/run=1/a.parquet"), Path("d/run=2/b.parquet")])
    >>> cols["run"][0].tolist(), cols["run"][1]
    ([1.0, 2.0], True)
    """
    per_file = [_keys(Path(f)) for f in files]
    if not per_file:
        return {}
    common = [k for k in per_file[0] if all(k in keys for keys in per_file[1:]) and k not in set(existing)]
    out = {}
    for name in common:
        values = [keys[name] for keys in per_file]
        numbers = _as_numbers(values)
        if numbers is not None:
            out[name] = (numbers, True)
        else:
            out[name] = (np.array([None if v == HIVE_NULL else v for v in values], dtype=object), False)
    return out


def partition_types(partitions: dict) -> dict:
    """``{name: pyarrow type}`` of :func:`partition_columns`' columns: float64 or string."""
    import pyarrow as pa

    return {name: pa.float64() if numeric else pa.string() for name, (_, numeric) in partitions.items()}


def fill_partitions(out: dict, partitions: dict, file_index: int) -> None:
    """Fill the partition columns present in ``out`` (arrays of one row group's rows) with the
    values of file ``file_index``."""
    for name, (values, _) in partitions.items():
        if name in out:
            out[name][:] = values[file_index]
