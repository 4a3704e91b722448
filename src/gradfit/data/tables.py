"""Tables of many fits -> the (fits, points) arrays that ``fit_many`` takes.

Two layouts are common for a batch of curves:

- **long**: one row per point, with a column naming the fit (``well, dose, signal``);
- **wide**: one row per fit, with numbered columns ``y_0 .. y_{M-1}`` (and optionally
  ``x_0 .. x_{M-1}``).

:func:`long_to_batch` and :func:`wide_to_batch` turn either into ``(K, M)`` arrays, and
:func:`per_fit_values` reads one value per fit from columns named like parameters (per-fit
starting values). ``columns`` is a dict of equal-length 1-D arrays (what
:func:`gradfit.data.io.read_table` returns) or a pandas DataFrame.

Fits keep the order in which their id first appears in the table: row ``k`` of the result is
the ``k``-th fit a reader of the table meets, whatever the ids' type (strings, integers,
floats, mixed). Sorted order is one ``numpy.argsort(ids)`` away when the ids are orderable.
"""

from __future__ import annotations

import math
import re

import numpy as np

from ..errors import DataError, did_you_mean

__all__ = ["long_to_batch", "wide_to_batch", "per_fit_values", "check_columns"]


def long_to_batch(columns, id: str, x: str, y: str, *, source: str = "data"):
    """Reshape a long table (one row per point) into one padded row per fit.

    Parameters
    ----------
    columns : dict of 1-D arrays, or a pandas DataFrame
        The table; every column has one entry per row (N rows).
    id, x, y : str
        Names of the column that names each fit, the input column and the target column.
        Ids may be of any hashable type; they are returned unchanged.
    source : str
        How error messages name the table (a file name, say).

    Returns
    -------
    ids : numpy.ndarray, shape (K,)
        One entry per fit, in order of first appearance, with the id column's dtype
        (object for strings).
    x, y : numpy.ndarray, shape (K, M), float64
        M is the largest number of rows of one fit. Within a fit, points keep the table's row
        order. Fits with fewer rows are padded with NaN in ``y`` (which ``fit_many`` treats as
        "no point") and with the fit's last x in ``x``, so the model stays finite there.

    Raises
    ------
    DataError
        A column is missing (the message suggests the closest name), the columns differ in
        length, the table is empty, an id is missing (NaN or None), or x/y is not numeric.

    Examples
    --------
    >>> from gradfit.data.tables import long_to_batch
    >>> ids, x, y = long_to_batch({"well": ["b", "b", "a"], "dose": [1, 2, 1], "signal": [5, 6, 7]},
    ...                           id="well", x="dose", y="signal")
    >>> ids.tolist(), x.tolist(), y.tolist()
    (['b', 'a'], [[1.0, 2.0], [1.0, 1.0]], [[5.0, 6.0], [7.0, nan]])
    """
    n = check_columns(columns, {"id": id, "x": x, "y": y}, source)
    id_values = _id_array(columns[id])
    xs = _numeric(columns[x], x, source)
    ys = _numeric(columns[y], y, source)
    _check_ids(id_values, id, source)
    ids, fit_of_row, order, counts = _group(id_values)
    starts = np.cumsum(counts) - counts
    # position of each row inside its fit, keeping the table's row order
    position = np.empty(n, dtype=np.intp)
    position[order] = np.arange(n) - starts[fit_of_row[order]]
    width = int(counts.max())
    x_out = np.full((len(ids), width), np.nan)
    y_out = np.full((len(ids), width), np.nan)
    x_out[fit_of_row, position] = xs
    y_out[fit_of_row, position] = ys
    padded = np.arange(width)[None, :] >= counts[:, None]
    last_x = x_out[np.arange(len(ids)), counts - 1]
    x_out[padded] = np.broadcast_to(last_x[:, None], x_out.shape)[padded]
    return ids, x_out, y_out


def wide_to_batch(columns, prefix: str = "y_", x_prefix: str = "x_", *, source: str = "data"):
    """Stack numbered columns ``{prefix}0 .. {prefix}{M-1}`` (one row per fit) into arrays.

    Parameters
    ----------
    columns : dict of 1-D arrays, or a pandas DataFrame
        K rows, one per fit. Columns are ordered by their number, not by position.
    prefix, x_prefix : str
        Prefixes of the target and (optional) per-fit input columns.
    source : str
        How error messages name the table.

    Returns
    -------
    x : numpy.ndarray, shape (K, M), or None
        None when there are no ``{x_prefix}i`` columns (the caller chooses a shared x).
    y : numpy.ndarray, shape (K, M), float64

    Raises
    ------
    DataError
        No ``{prefix}i`` columns, a different number of x and y columns, or a non-numeric column.

    Examples
    --------
    >>> from gradfit.data.tables import wide_to_batch
    >>> x, y = wide_to_batch({"y_1": [2.0, 4.0], "y_0": [1.0, 3.0], "name": [7, 8]})
    >>> x is None, y.tolist()
    (True, [[1.0, 2.0], [3.0, 4.0]])
    """
    names = [str(c) for c in columns]
    ycols = _numbered(names, prefix)
    if not ycols:
        raise DataError(f"{source}: no columns {prefix}0, {prefix}1, ...: name the y columns so, give their "
                        "prefix, or use a long table (one row per point with an id column)")
    y = np.column_stack([_numeric(columns[c], c, source) for c in ycols])
    xcols = _numbered(names, x_prefix)
    if not xcols:
        return None, y
    if len(xcols) != len(ycols):
        raise DataError(f"{source}: {len(xcols)} {x_prefix} columns but {len(ycols)} {prefix} columns; "
                        "give one x per y, or none to share x between fits")
    return np.column_stack([_numeric(columns[c], c, source) for c in xcols]), y


def per_fit_values(columns, names, *, id: str | None = None, source: str = "data") -> dict:
    """One value per fit from the columns named like ``names`` (per-fit starting values).

    Parameters
    ----------
    columns : dict of 1-D arrays, or a pandas DataFrame
        A wide table (one row per fit), or a long table when ``id`` is given.
    names : iterable of str
        Wanted names (parameter names, say); names that are not columns are skipped.
    id : str, optional
        Long tables: the column naming each fit. Each fit's value must be the same on all of
        its rows (NaN counts as equal to NaN); fits come in the order of
        :func:`long_to_batch`.
    source : str
        How error messages name the table.

    Returns
    -------
    dict
        name -> numpy.ndarray of shape (K,), float64, for each name found among the columns.

    Raises
    ------
    DataError
        A column is not numeric, the id column is missing, or a fit has different values of
        one name on different rows.

    Examples
    --------
    >>> from gradfit.data.tables import per_fit_values
    >>> per_fit_values({"fit": [1, 1, 2], "a": [3.0, 3.0, 5.0], "x": [0, 1, 0]}, ["a", "b"], id="fit")
    {'a': array([3., 5.])}
    """
    present = [n for n in names if n in columns]
    if id is None:
        return {n: _numeric(columns[n], n, source) for n in present}
    check_columns(columns, {"id": id}, source)
    id_values = _id_array(columns[id])
    _check_ids(id_values, id, source)
    ids, fit_of_row, order, counts = _group(id_values)
    first_row = order[np.cumsum(counts) - counts]
    out = {}
    for n in present:
        values = _numeric(columns[n], n, source)
        first = values[first_row]
        same = (values == first[fit_of_row]) | (np.isnan(values) & np.isnan(first[fit_of_row]))
        if not same.all():
            k = int(fit_of_row[np.argmin(same)])
            raise DataError(f"{source}: column {n!r} has different values within fit {_plain(ids[k])!r}; "
                            "a per-fit value must be the same on every row of its fit")
        out[n] = first
    return out


def check_columns(columns, roles: dict, source: str = "data") -> int:
    """Check a table before use: each named column exists, all columns have one length.

    Parameters
    ----------
    columns : dict of 1-D arrays, or a pandas DataFrame
    roles : dict
        role -> column name, e.g. ``{"id": "well", "x": "dose"}``; the role names the column
        in messages.
    source : str
        How error messages name the table.

    Returns
    -------
    int
        The number of rows.

    Raises
    ------
    DataError
        A named column is missing (with the closest name and the list of columns), the
        columns differ in length, or the table has no rows.
    """
    names = [str(c) for c in columns]
    for role, name in roles.items():
        if not isinstance(name, str):
            raise DataError(f"{source}: the {role} column must be given by name (a str), got {name!r}")
        if name not in columns:
            listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
            raise DataError(f"{source}: the {role} column {name!r} is not in the table{did_you_mean(name, names)}; "
                            f"columns: {listed}")
    lengths = {len(_as_1d(columns[c])) for c in columns}
    if len(lengths) > 1:
        raise DataError(f"{source}: columns differ in length ({', '.join(map(str, sorted(lengths)))}); "
                        "a table needs one entry per row in every column")
    n = lengths.pop() if lengths else 0
    if n == 0:
        raise DataError(f"{source}: the table has no rows")
    return n


def _as_1d(values) -> np.ndarray:
    arr = np.asarray(values)
    return arr.reshape(-1) if arr.ndim != 1 else arr


def _id_array(values) -> np.ndarray:
    arr = _as_1d(values)
    if arr.dtype.kind == "U" and not isinstance(values, np.ndarray):
        # numpy turns ["a", 1] into ["a", "1"]: mixed ids stay objects so 1 stays an int
        items = list(values)
        if not all(isinstance(v, str) for v in items):
            arr = np.empty(len(items), dtype=object)
            arr[:] = items
    return arr


def _plain(v):
    """A numpy scalar as the Python value it holds (for messages)."""
    return v.item() if isinstance(v, np.generic) else v


def _numeric(values, name: str, source: str) -> np.ndarray:
    try:
        return np.asarray(_as_1d(values), dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{source}: column {name!r} is not numeric") from None


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _check_ids(ids: np.ndarray, name: str, source: str) -> None:
    if ids.dtype.kind == "f":
        missing = np.flatnonzero(np.isnan(ids))
    elif ids.dtype.kind == "O":
        missing = np.flatnonzero([_is_missing(v) for v in ids])
    else:
        return
    if len(missing):
        rows = ", ".join(str(i + 1) for i in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{source}: {len(missing)} row(s) have no id in column {name!r} (NaN or empty): rows "
                        f"{rows}, counting data rows from 1; every row needs the id of its fit")


def _group(ids: np.ndarray):
    """(unique ids in order of first appearance (K,), each row's fit index (N,), the rows sorted
    by fit with table order kept inside a fit (N,), rows per fit (K,))."""
    unique, fit_of_row = _first_appearance(ids)
    order = np.argsort(fit_of_row, kind="stable")
    return unique, fit_of_row, order, np.bincount(fit_of_row, minlength=len(unique))


def _first_appearance(ids: np.ndarray):
    """(unique ids in order of first appearance, index of each row's fit in that order)."""
    if ids.dtype.kind != "O":
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        rank = np.empty(len(first), dtype=np.intp)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        return ids[np.sort(first)], rank[inverse]
    # object ids (strings, mixed types) may not be orderable: a dict keeps first appearance
    index: dict = {}
    fit_of_row = np.fromiter((index.setdefault(v, len(index)) for v in ids), dtype=np.intp, count=len(ids))
    unique = np.empty(len(index), dtype=object)
    unique[:] = list(index)
    return unique, fit_of_row


def _numbered(names: list[str], prefix: str) -> list[str]:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    found = sorted((int(m.group(1)), k) for k in names if (m := pattern.match(k)))
    return [k for _, k in found]
