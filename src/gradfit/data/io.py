"""Files -> named columns. Every failure is a DataError naming the file and what to do (a
MissingDependencyError for a format whose optional reader is not installed).

Delimited text (CSV, TSV, semicolon, whitespace; gzip/bz2/xz-compressed too) is read with
the standard library (:mod:`gradfit.data.delimited`), so each bad cell can be reported
precisely and no optional package is needed; .npz is read with ``allow_pickle=False``;
Parquet, Feather and Excel (.xlsx) go through pandas (with pyarrow or openpyxl): the extras
``gradfit[pandas]`` and ``gradfit[excel]``; without them a MissingDependencyError says so.

Columns come back typed: int64 when every cell is an integer (ids stay integers), float64 for
numbers with missing values (NaN), and object arrays of str for text. Only the columns a
fit uses must be numeric: :func:`numeric_columns` checks those and names the bad cells.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np

from ..errors import DataError, MissingDependencyError, require
from .delimited import MISSING, check_duplicate_names, decode_text, infer_column, parse_number, read_delimited

__all__ = ["read_table", "numeric_columns", "table_from_frame", "write_csv", "csv_text",
           "format_number", "TABLE_FORMATS"]

_MAX_REPORTED = 5
#: what read_table reads, by file name ending (other names are read as delimited text)
TABLE_FORMATS = {
    ".csv .tsv .txt .dat (and .gz/.bz2/.xz of them)": "delimited text, standard library",
    ".npz": "numpy arrays, one per column",
    ".parquet": "pandas + pyarrow",
    ".feather .arrow": "pandas + pyarrow",
    ".xlsx .xlsm": "pandas + openpyxl (first sheet)",
}
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "lzma"}


def read_table(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a data file into named 1-D columns.

    Parameters
    ----------
    path : str or path-like
        A delimited text file with a header row (.csv, .tsv, .txt; compressed with gzip, bz2
        or xz too, e.g. ``data.csv.gz``), .npz, .parquet, .feather or .xlsx.

    Returns
    -------
    dict
        name -> numpy array of N entries: int64 (all integers), float64 (numbers; empty
        cells, 'nan', 'NA', 'N/A', '#N/A', 'null' are NaN) or object (text). Whether NaN or
        text is allowed is decided by whoever uses the column (nan_policy,
        :func:`numeric_columns`).

    Raises
    ------
    DataError
        A missing or unreadable file, a missing header, rows of unequal length, duplicate
        names or an ambiguous decimal sign; the message names the file and what to do.
    MissingDependencyError
        A Parquet, Feather or Excel file without pandas and its reader installed; the message
        says which extra to install (``pip install "gradfit[pandas]"``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
    >>> _ = p.write_text('well,dose,signal\\nW01,1,"1,012.5"\\n')
    >>> cols = read_table(p)
    >>> cols["well"].tolist(), cols["dose"].tolist(), cols["signal"].tolist()
    (['W01'], [1], [1012.5])
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, expected a data file")
    suffixes = [s.lower() for s in p.suffixes]
    suffix = suffixes[-1] if suffixes else ""
    if suffix == ".npz":
        return _read_npz(p)
    if suffix in (".parquet", ".feather", ".arrow", ".xlsx", ".xlsm", ".xls", ".ods"):
        return _read_with_pandas(p, suffix)
    raw = _decompress(p, p.read_bytes())
    if not raw.strip():
        raise DataError(f"{p}: the file is empty; expected a header row and data rows")
    if raw.startswith(b"PK\x03\x04"):
        hint = ("an Excel workbook: name it .xlsx" if b"[Content_Types].xml" in raw[:2000] or b"xl/" in raw[:4000]
                else "a ZIP archive: unzip it first")
        raise DataError(f"{p}: looks like {hint}")
    return read_delimited(decode_text(raw, str(p)), str(p))


def _decompress(p: Path, raw: bytes) -> bytes:
    for magic, module in _COMPRESSED.items():
        if raw.startswith(magic):
            import importlib

            try:
                return importlib.import_module(module).decompress(raw)
            except (OSError, EOFError, ValueError) as exc:
                raise DataError(f"{p}: a damaged or truncated {module} file ({exc}); compress it again") from None
    return raw


def _read_npz(p: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(p, allow_pickle=False) as z:
            out = {k: _typed(np.asarray(z[k]), f"{p}: array {k!r}") for k in z.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{p}: not a readable .npz file ({exc})") from None
    if not out:
        raise DataError(f"{p}: the .npz file holds no arrays")
    return out


def _typed(arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind in "fb":
        return arr.astype(np.float64)
    if arr.dtype.kind in "US":
        out = np.empty(arr.shape, dtype=object)
        out[...] = arr.astype(str)
        return out
    raise DataError(f"{what} has dtype {arr.dtype}; save numbers or text")


#: suffix -> (pandas reader, engine module, its pip package, the gradfit extra that installs both)
_PANDAS_READERS = {".parquet": ("read_parquet", "pyarrow", "pyarrow", "pandas"),
                   ".feather": ("read_feather", "pyarrow", "pyarrow", "pandas"),
                   ".arrow": ("read_feather", "pyarrow", "pyarrow", "pandas"),
                   ".xlsx": ("read_excel", "openpyxl", "openpyxl", "excel"),
                   ".xlsm": ("read_excel", "openpyxl", "openpyxl", "excel"),
                   ".xls": ("read_excel", "xlrd", "xlrd", None), ".ods": ("read_excel", "odf", "odfpy", None)}


def _read_with_pandas(p: Path, suffix: str) -> dict[str, np.ndarray]:
    reader, engine, package, extra = _PANDAS_READERS[suffix]
    feature = f"{p}: reading {suffix} files"
    try:
        pd = require("pandas", extra=extra or "pandas", feature=feature)
        require(engine, extra=extra, feature=feature, package=package)
    except MissingDependencyError as exc:
        raise MissingDependencyError(f"{exc} (or save the data as CSV)") from None
    try:
        frame = getattr(pd, reader)(p)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a data problem here
        raise DataError(f"{p}: not a readable {suffix} file ({type(exc).__name__}: {exc})") from None
    if reader == "read_excel":  # rows and columns a spreadsheet shows as empty
        frame = frame.dropna(how="all")
        frame = frame.loc[:, [not (str(c).startswith("Unnamed:") and frame[c].isna().all()) for c in frame.columns]]
    if frame.shape[0] == 0:
        raise DataError(f"{p}: has a header but no data rows")
    return table_from_frame(frame, str(p))


def table_from_frame(frame, source: str = "data") -> dict[str, np.ndarray]:
    """A pandas DataFrame -> typed columns (int64, float64 or object arrays of str), the way
    :func:`read_table` returns them; DataError for a duplicate name."""
    names = [str(c) for c in frame.columns]
    check_duplicate_names(names, source)
    out = {}
    for name, col in zip(names, frame.columns):
        series = frame[col]
        kind = getattr(series.dtype, "kind", "O")
        if kind in "iu":
            out[name] = np.asarray(series, dtype=np.int64)
        elif kind in "fb":
            out[name] = np.asarray(series, dtype=np.float64)
        else:
            try:  # nullable integers/floats: NA -> NaN
                out[name] = np.asarray(series.astype("float64"), dtype=np.float64)
                continue
            except (TypeError, ValueError):
                pass
            cells = ["" if _is_na(v) else (repr(float(v)) if isinstance(v, float) else str(v)).strip()
                     for v in series.tolist()]
            out[name] = infer_column(cells)
    return out


def _is_na(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or type(v).__name__ in ("NAType", "NaTType")


def numeric_columns(columns, used=(), *, source: str = "data") -> dict[str, np.ndarray]:
    """The numeric columns of a table as float64; text columns are left out.

    Parameters
    ----------
    columns : dict of 1-D arrays (what :func:`read_table` returns)
    used : iterable of str
        Columns the caller needs: a text column among them is a DataError naming its first
        non-numeric cells (rows counted with the header as row 1).
    source : str
        How error messages name the table.

    Examples
    --------
    >>> import numpy as np
    >>> cols = {"well": np.array(["W1", "W2"], dtype=object), "x": np.array([1, 2])}
    >>> numeric_columns(cols, ["x"])
    {'x': array([1., 2.])}
    """
    out = {}
    for name, values in columns.items():
        arr = np.asarray(values)
        if arr.dtype.kind in "iufb":
            out[name] = arr.astype(np.float64)
    for name in used:
        if name in columns and name not in out:
            out[name] = _require_numeric(np.asarray(columns[name]), name, source)
    return out


def _require_numeric(values: np.ndarray, name: str, source: str) -> np.ndarray:
    cells = [str(v).strip() for v in values.reshape(-1)]
    parsed = np.array([parse_number(c) for c in cells])
    bad = [i for i, (c, v) in enumerate(zip(cells, parsed)) if math.isnan(v) and c.lower() not in MISSING]
    if not bad:
        return parsed.reshape(values.shape)
    shown = "; ".join(f"row {i + 2} column {name!r}: {cells[i][:20]!r}" for i in bad[:_MAX_REPORTED])
    more = f" and {len(bad) - _MAX_REPORTED} more" if len(bad) > _MAX_REPORTED else ""
    raise DataError(f"{source}: non-numeric values: {shown}{more} (the header is row 1); column {name!r} is used, "
                    "so fix those cells or use another column")


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
