"""Batches of fits too large for memory, read a block of rows at a time.

Two sources, both opened without reading their data:

- a ``.npy`` array ``y`` (fits, points), memory-mapped (``numpy.load(mmap_mode="r")``): a
  block is copied out of the map and nothing else is touched;
- wide Parquet tables (one row per fit, columns ``y_0 .. y_{M-1}`` and optionally
  ``x_0 .. x_{M-1}``, as :func:`gradfit.data.tables.wide_to_batch` reads them): a file, a
  folder of ``*.parquet`` files or a glob, in sorted file order. Only the row groups that hold
  a block are read, in record batches of the projected columns (pyarrow), never a whole file.

:func:`open_source` returns either; ``read(start, stop)`` gives ``(x, y)`` of those rows
(``x`` is None unless the table has per-fit x columns) and ``fingerprint()`` a small JSON
description (shape, files, sizes, a hash of the first and last rows) that tells two sources
apart without reading them whole.
"""

from __future__ import annotations

import glob as globbing
import hashlib
from pathlib import Path

import numpy as np

from ..errors import DataError, require
from .tables import wide_to_batch

__all__ = ["NpySource", "ParquetSource", "block_hash", "open_source", "open_parquet_files"]

#: rows at each end of a source hashed into its fingerprint
SAMPLE_ROWS = 16
#: rows per pyarrow record batch while reading a block
RECORD_BATCH_ROWS = 65_536


def block_hash(*arrays) -> str:
    """sha256 of the arrays' shapes and float64 bytes (None entries skipped)."""
    digest = hashlib.sha256()
    for a in arrays:
        if a is None:
            continue
        a = np.ascontiguousarray(a, dtype=np.float64)
        digest.update(repr(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


class NpySource:
    """A (fits, points) ``.npy`` array, memory-mapped: ``read`` copies only the rows asked for."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        try:
            self._map = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{self.path}: not a numeric .npy array ({exc})") from None
        if self._map.ndim != 2 or self._map.dtype.kind not in "fiu":
            raise DataError(f"{self.path}: expected a 2-D numeric array (fits, points), got shape "
                            f"{self._map.shape} of {self._map.dtype}")
        self.n_fits, self.n_points = (int(n) for n in self._map.shape)

    def read(self, start: int, stop: int):
        """(None, y (stop - start, M) float64) copied out of the map."""
        return None, np.array(self._map[start:stop], dtype=np.float64)

    def fingerprint(self) -> dict:
        return {"kind": "npy", "name": self.path.name, "shape": [self.n_fits, self.n_points],
                "dtype": str(self._map.dtype), "bytes": self.path.stat().st_size, "sample": _sample_hash(self)}


class ParquetSource:
    """Wide Parquet tables read by row groups and record batches of the y (and x) columns."""

    def __init__(self, source, y_prefix: str = "y_", x_prefix: str = "x_"):
        pq = require("pyarrow.parquet", extra="pandas", feature="streaming Parquet input")
        self.files = _parquet_files(source)
        self.y_prefix, self.x_prefix = y_prefix, x_prefix
        self._files = open_parquet_files(pq, self.files)
        names = list(self._files[0].schema_arrow.names)
        self.y_columns = _numbered(names, y_prefix)
        self.x_columns = _numbered(names, x_prefix)
        if not self.y_columns:
            raise DataError(f"{self.files[0]}: no columns {y_prefix}0, {y_prefix}1, ...: name the y columns so "
                            "or give their prefix (--y-prefix)")
        if self.x_columns and len(self.x_columns) != len(self.y_columns):
            raise DataError(f"{self.files[0]}: {len(self.x_columns)} {x_prefix} columns but {len(self.y_columns)} "
                            f"{y_prefix} columns; give one x per y, or none to share x between fits")
        for f, pf in zip(self.files[1:], self._files[1:]):
            missing = [c for c in self.y_columns + self.x_columns if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(f"{f}: no column {missing[0]} (the first file, {self.files[0].name}, has it); "
                                "every file of the dataset needs the same columns")
        self._rows = [pf.metadata.num_rows for pf in self._files]
        self._offsets = np.concatenate([[0], np.cumsum(self._rows)]).astype(int)
        self.n_fits, self.n_points = int(self._offsets[-1]), len(self.y_columns)
        if self.n_fits == 0:
            raise DataError(f"{self.files[0]}: the table has no rows")

    def read(self, start: int, stop: int):
        """(x (K, M) or None, y (K, M)) of rows [start, stop): only the row groups that overlap
        are read, one record batch at a time."""
        pieces = []
        for i, pf in enumerate(self._files):
            lo, hi = max(start, self._offsets[i]), min(stop, self._offsets[i + 1])
            if lo < hi:
                pieces.extend(self._read_file(pf, lo - self._offsets[i], hi - self._offsets[i]))
        columns = {}
        for name in self.y_columns + self.x_columns:
            columns[name] = np.concatenate([p[name] for p in pieces]) if pieces else np.empty(0)
        return wide_to_batch(columns, self.y_prefix, self.x_prefix, source=str(self.files[0]))

    def _read_file(self, pf, lo: int, hi: int) -> list:
        groups, first, row = [], None, 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if row + n > lo and row < hi:
                groups.append(g)
                first = row if first is None else first
            row += n
        out, at = [], first
        for batch in pf.iter_batches(batch_size=RECORD_BATCH_ROWS, row_groups=groups,
                                     columns=self.y_columns + self.x_columns):
            a, b = max(lo - at, 0), min(hi - at, batch.num_rows)
            if a < b:
                part = batch.slice(a, b - a)
                out.append({c: part.column(c).to_numpy(zero_copy_only=False) for c in part.schema.names})
            at += batch.num_rows
            if at >= hi:
                break
        return out

    def fingerprint(self) -> dict:
        return {"kind": "parquet", "files": [f.name for f in self.files], "rows": [int(r) for r in self._rows],
                "columns": self.y_columns + self.x_columns, "sample": _sample_hash(self)}


def open_source(source, *, y_prefix: str = "y_"):
    """A :class:`NpySource` for a ``.npy`` file, else a :class:`ParquetSource` (a ``.parquet``
    file, a folder of them, or a glob).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "y.npy"
    >>> np.save(p, np.arange(12.0).reshape(4, 3))
    >>> s = open_source(p)
    >>> s.n_fits, s.n_points, s.read(1, 3)[1].tolist()
    (4, 3, [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    """
    text = str(source)
    if text.lower().endswith(".npy"):
        return NpySource(source)
    return ParquetSource(source, y_prefix=y_prefix)


def _parquet_files(source) -> list[Path]:
    """The ``.parquet`` files of a file, a folder (searched recursively, as Hive partitions
    ``run=1/part.parquet`` are laid out; names starting with "." or "_" skipped, as Spark's
    ``_temporary``) or a glob (a folder it matches read as a folder), sorted for a stable order."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = _folder_files(path)
    elif any(ch in text for ch in "*?["):
        matched = sorted(Path(p) for p in globbing.glob(text))  # less markers (_SUCCESS) and hidden folders
        matched = [m for m in matched if m.name[:1] not in "._" or (m.is_file() and m.suffix.lower() == ".parquet")]
        files = [f for m in matched for f in (_folder_files(m) if m.is_dir() else [m])]
        other = [f for f in files if f.suffix.lower() != ".parquet"]
        if other:
            raise DataError(f"{source}: a glob takes .parquet files only, and it matches {other[0]}; read a "
                            "single file of another type by its name (data='file.csv'), or narrow the glob")
    elif path.suffix.lower() == ".parquet":
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        files = [path]
    else:
        raise DataError(f"{source}: stream a .npy array (fits, points), a wide .parquet table, a folder of "
                        ".parquet files or a glob of them")
    if not files and path.is_dir():
        raise DataError(f"{source}: is a directory with no .parquet files; give a data file (.csv, .parquet, "
                        "...) or a folder of .parquet files")
    if not files:
        raise DataError(f"{source}: no files match; give a data file or a glob that matches .parquet files")
    return files


def _folder_files(path: Path) -> list[Path]:
    return sorted(f for f in path.rglob("*.parquet")
                  if f.is_file() and not any(p[:1] in "._" for p in f.relative_to(path).parts))


def open_parquet_files(pq, files) -> list:
    """``pyarrow.parquet.ParquetFile`` of each file (metadata only); a file pyarrow cannot read
    (truncated, not Parquet) is a DataError naming it, not pyarrow's own exception."""
    opened = []
    for f in files:
        try:
            opened.append(pq.ParquetFile(f))
        except Exception as exc:  # pyarrow raises ArrowInvalid, ArrowIOError, OSError ...
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{f}: not a readable Parquet file ({reason}); check that it was written completely"
                            ) from None
    return opened


def _numbered(names: list[str], prefix: str) -> list[str]:
    import re

    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    found = sorted((int(m.group(1)), k) for k in names if (m := pattern.match(k)))
    return [k for _, k in found]


def _sample_hash(source) -> str:
    n = min(SAMPLE_ROWS, source.n_fits)
    head = source.read(0, n)
    tail = source.read(source.n_fits - n, source.n_fits)
    return block_hash(*head, *tail)
