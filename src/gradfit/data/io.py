"""Files -> named numeric columns. Every failure is a DataError naming file, row or column.

CSV/TSV are read with the standard library so each bad cell can be reported precisely;
.npz is read with ``allow_pickle=False``; Parquet goes through pandas when it is installed.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["read_table", "write_csv", "csv_text", "format_number"]

_MAX_REPORTED = 5


def read_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a CSV/TSV (header row required), .npz or .parquet file into float64 columns.

    Empty cells and 'nan' become NaN; whether NaN is allowed is decided later (nan_policy).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a data file")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _read_npz(p)
    if suffix == ".parquet":
        return _read_parquet(p)
    return _read_csv(p)


def _read_npz(p: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(p, allow_pickle=False) as z:
            out = {k: np.asarray(z[k], dtype=float) for k in z.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{p}: not a readable .npz file ({exc})") from None
    if not out:
        raise DataError(f"{p}: the .npz file holds no arrays")
    return out


def _read_parquet(p: Path) -> dict[str, np.ndarray]:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        raise DataError(f"{p}: reading Parquet needs pandas and pyarrow; pip install pandas pyarrow") from None
    try:
        frame = pd.read_parquet(p)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a data problem here
        raise DataError(f"{p}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    return columns_from_frame(frame, str(p))


def columns_from_frame(frame, source: str = "data") -> dict[str, np.ndarray]:
    """A pandas DataFrame -> float64 columns by name (str); DataError for a duplicate name or a
    non-numeric column, prefixed with ``source``."""
    names = [str(c) for c in frame.columns]
    _check_duplicates(names, source)
    out = {}
    for name, col in zip(names, frame.columns):
        try:
            out[name] = np.asarray(frame[col], dtype=float)
        except (TypeError, ValueError):
            raise DataError(f"{source}: column {name!r} is not numeric") from None
    return out


def _check_duplicates(names: list[str], source: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise DataError(f"{source}: duplicate column name {n!r}; rename one of them")
        seen.add(n)


def _read_csv(p: Path) -> dict[str, np.ndarray]:
    raw = p.read_bytes()
    if not raw.strip():
        raise DataError(f"{p}: the file is empty; expected a header row and data rows")
    if b"\x00" in raw[:4096]:
        raise DataError(f"{p}: looks like a binary file, not CSV text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{p}: line {line} is not valid UTF-8 text; save the file as UTF-8") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"{p}: the file is empty; expected a header row and data rows")
    delimiter = _sniff_delimiter(lines[0])
    rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter, skipinitialspace=True))
    header = [h.strip() for h in rows[0]]
    if any(not h for h in header):
        raise DataError(f"{p}: the header row has an empty column name (column {header.index('') + 1})")
    _check_duplicates(header, str(p))
    if _all_numeric(header):
        raise DataError(f"{p}: the first row must name the columns, e.g. 'x,y'")
    body = rows[1:]
    if not body:
        raise DataError(f"{p}: has a header but no data rows")
    values = np.empty((len(body), len(header)))
    bad: list[str] = []
    for i, row in enumerate(body, start=2):
        if delimiter == " ":
            row = [c for c in row if c != ""]
        if len(row) != len(header):
            raise DataError(f"{p}: row {i} has {len(row)} fields, the header has {len(header)}")
        for j, cell in enumerate(row):
            values[i - 2, j] = _parse_cell(cell, i, header[j], bad)
    if bad:
        more = f" and {len(bad) - _MAX_REPORTED} more" if len(bad) > _MAX_REPORTED else ""
        raise DataError(f"{p}: non-numeric values: {'; '.join(bad[:_MAX_REPORTED])}{more}")
    return {h: values[:, j].copy() for j, h in enumerate(header)}


def _parse_cell(cell: str, row: int, column: str, bad: list[str]) -> float:
    s = cell.strip()
    if s == "" or s.lower() in ("nan", "na", "null"):
        return math.nan
    try:
        return float(s)
    except ValueError:
        bad.append(f"row {row} column {column!r}: {s[:20]!r}")
        return math.nan


def _sniff_delimiter(header: str) -> str:
    for d in (",", "\t", ";"):
        if d in header:
            return d
    return " " if " " in header.strip() else ","


def _all_numeric(cells: list[str]) -> bool:
    try:
        [float(c) for c in cells]
    except ValueError:
        return False
    return True


def write_csv(path, columns: dict[str, np.ndarray]) -> None:
    """Write named columns as CSV (see :func:`csv_text`), atomically: readers see the old file
    or the complete new one, never a partial one."""
    from .._files import atomic_write_text

    atomic_write_text(path, csv_text(columns))


def csv_text(columns: dict[str, np.ndarray]) -> str:
    """Named columns of equal length -> CSV text: a header row, then one row per entry.

    Cells are written by :func:`format_number`, so floats read back exactly.

    Examples
    --------
    >>> print(csv_text({"x": [1, 2], "y": [0.1, float("nan")]}), end="")
    x,y
    1,0.1
    2,nan
    """
    names = list(columns)
    cols = [np.asarray(columns[k]) for k in names]
    n = len(cols[0]) if cols else 0
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(names)
    for i in range(n):
        w.writerow([format_number(c[i]) for c in cols])
    return buf.getvalue()


def format_number(v) -> str:
    """One CSV cell: the shortest text that reads back to the same value.

    Floats use ``repr`` (round-trips exactly); non-finite floats are ``nan``, ``inf``, ``-inf``
    (what :func:`read_table` reads); integers have no decimal point; booleans are
    ``true``/``false``; strings pass through and None is an empty cell.

    Examples
    --------
    >>> [format_number(v) for v in (0.1, 3, float("-inf"), True, None, "a")]
    ['0.1', '3', '-inf', 'true', '', 'a']
    """
    if v is None:
        return ""
    if isinstance(v, (str, bytes, np.str_)):
        return str(v) if not isinstance(v, bytes) else v.decode()
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
