"""Training rows streamed from Parquet files larger than memory (``gf.fit(data="d/*.parquet")``).

A source is a ``.parquet`` file, a folder of ``*.parquet`` files or a glob, in sorted file
order. It is opened from its metadata only; its *units* are the row groups of its files (in
file order). Only the columns a fit uses are read (column projection), one row group at a time.

The scheme, all of it seeded and reproducible (same seed -> the same batches, on any rank):

- **Validation split.** ``val_key="col"``: a row is held out when a stable hash of that
  column's value (numbers by their float64 bits, text by blake2b of its UTF-8), mixed with the
  seed, falls below ``val_fraction``; all rows of a key are on one side, for a given seed in
  every run and on every rank. Otherwise, with at least :data:`MIN_GROUPS_FOR_GROUP_SPLIT` row groups, a seeded
  choice of ``round(val_fraction * groups)`` whole row groups; with fewer, the same hash of
  each row's global number (file order, then the row in its file).
- **Shuffling.** Epoch ``e`` visits the training row groups in a permutation drawn from
  ``numpy.random.default_rng([seed, e])``; their rows enter a shuffle buffer of
  ``buffer_rows`` rows. Whenever the buffer holds at least that many, it is permuted (same
  generator), every full minibatch is emitted and the remainder stays; at the end of the
  epoch the rest is permuted and emitted, the last batch possibly short.
- **Sharded reads** (under torchrun, ``shard_reads=True``). Epoch ``e``'s permutation is drawn
  as above, the same on every rank; rank ``r`` of ``w`` reads only the units ``perm[r::w]``,
  through its own shuffle buffer seeded by ``(seed, e, r)``, in batches of
  :func:`rank_batch_size` rows (the ranks' sizes sum to ``batch_size``). Loss passes give rank
  ``r`` the units ``r::w`` of the fixed unit order. So the ranks' units are disjoint and cover
  every training unit; how their uneven batch counts stay in lockstep is train/streamed.py's.
- **The sample.** What needs training arrays to set up (starting values, range checks, a
  network's size) sees the training rows of the row groups that epoch 0's permutation visits
  first, up to :data:`SAMPLE_ROWS` rows.
- **Statistics.** :func:`column_moments` merges per-row-group float64 means and squared
  deviations (Chan et al.), so normalization uses every training row without holding them.

Rows are turned into validated :class:`~gradfit.data.arrays.Arrays` by a ``prepare`` callable
the fit front supplies (the same rules as in-memory data); non-finite values are caught here
first, so an error names the file and the row.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import ConfigError, DataError, did_you_mean, require
from .arrays import Arrays
from .hive import fill_partitions, partition_columns, partition_types

__all__ = [
    "MIN_GROUPS_FOR_GROUP_SPLIT",
    "SAMPLE_ROWS",
    "ParquetData",
    "RowSource",
    "Split",
    "column_moments",
    "concat_arrays",
    "default_buffer_rows",
    "pass_rows",
    "rank_batch_size",
    "sample_rows",
    "shard_units",
    "shuffled_batches",
]

#: rows of training data that set-up (starts, checks, network size) sees
SAMPLE_ROWS = 65_536
#: row groups needed before the validation split holds out whole row groups
MIN_GROUPS_FOR_GROUP_SPLIT = 10
#: rows per pyarrow record batch while a row group is read
RECORD_BATCH_ROWS = 32_768
#: projected float64 bytes above this share of free memory are streamed (stream=None)
STREAM_MEMORY_SHARE = 0.25

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class ParquetData:
    """Parquet training data read in pieces: ``gf.fit(model, data=ParquetData("runs/"), batch_size=4096)``.

    Parameters
    ----------
    path : a ``.parquet`` file, a folder of ``*.parquet`` files or a glob (``"data/*.parquet"``).
        Another file type is read whole (:func:`gradfit.data.io.read_table`).
    columns : the columns to read (default: those the model and x/y name).
    val_key : hold out rows by a stable hash of this column's values (one key, one side).
    buffer_rows : rows of the shuffle buffer (default ``max(16 * batch_size, 65_536)``).
    stream : None (stream when the used columns as float64 would take more than a quarter of
        the free memory, or with ``val_key``), True (always), False (read the used columns whole
        and fit as usual).
    shard_reads : under torchrun, each rank reads only its share of the row groups (True, the
        default) instead of every rank reading the whole stream (False: the run then equals a
        one-process run with the same global batch).

    Examples
    --------
    >>> ParquetData("runs/*.parquet", val_key="run_id").stream is None
    True
    """

    path: object
    columns: tuple | None = None
    val_key: str | None = None
    buffer_rows: int | None = None
    stream: bool | None = None
    shard_reads: bool = True

    def __post_init__(self):
        if not isinstance(self.path, (str, os.PathLike)):
            raise ConfigError(f"ParquetData path must be a file, folder or glob (str or path), got {self.path!r}")
        if self.columns is not None:
            cols = (self.columns,) if isinstance(self.columns, str) else tuple(self.columns)
            if not all(isinstance(c, str) for c in cols):
                raise ConfigError(f"ParquetData columns must be column names, got {self.columns!r}")
            object.__setattr__(self, "columns", cols)
        if self.val_key is not None and not isinstance(self.val_key, str):
            raise ConfigError(f"val_key must be a column name, got {self.val_key!r}")
        if self.buffer_rows is not None and (isinstance(self.buffer_rows, bool) or not isinstance(
                self.buffer_rows, (int, np.integer)) or self.buffer_rows < 1):
            raise ConfigError(f"buffer_rows must be a positive integer, got {self.buffer_rows!r}")
        if self.stream not in (None, True, False):
            raise ConfigError(f"stream must be None (auto), True or False, got {self.stream!r}")
        if self.shard_reads not in (True, False):
            raise ConfigError(f"shard_reads must be True or False, got {self.shard_reads!r}")

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    @property
    def is_parquet(self) -> bool:
        """A Parquet file, a folder or a glob (anything else is read whole as a table)."""
        text = str(self.path)
        return Path(text).is_dir() or any(ch in text for ch in "*?[") or text.lower().endswith(".parquet")


def default_buffer_rows(batch_size: int) -> int:
    return max(16 * int(batch_size), SAMPLE_ROWS)


def shard_units(units: list, shard: tuple | None) -> list:
    """Rank ``r`` of ``w``'s units of ``units``: ``units[r::w]`` (all of them when ``shard`` is None)."""
    if shard is None:
        return list(units)
    rank, world = shard
    return list(units[rank::world])


def rank_batch_size(batch_size: int, shard: tuple | None) -> int:
    """Rank ``r`` of ``w``'s rows per step of a global ``batch_size``: ``batch_size // w``, one
    more for the first ``batch_size % w`` ranks, so the ranks' sizes sum to ``batch_size``."""
    if shard is None:
        return int(batch_size)
    rank, world = shard
    return int(batch_size) // world + (rank < int(batch_size) % world)


class RowSource:
    """Parquet files opened from their metadata: row groups (units), columns, row counts."""

    def __init__(self, path):
        from .stream import _parquet_files, open_parquet_files

        self.pq = require("pyarrow.parquet", extra="pandas", feature="streaming Parquet input")
        self.files = _parquet_files(path)
        self._open = open_parquet_files(self.pq, self.files)
        schema = self._open[0].schema_arrow
        self.schema = {name: schema.field(name).type for name in schema.names}
        units, offset = [], 0
        for i, (f, pf) in enumerate(zip(self.files, self._open)):
            missing = [c for c in self.schema if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(f"{f}: no column {missing[0]!r} (the first file, {self.files[0].name}, has it); "
                                "every file of the dataset needs the same columns")
            row = 0
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if n:
                    units.append((i, g, row, n, offset + row))
                row += n
            offset += row
        #: (file index, row group, first row in the file, rows, first global row) per unit
        self.units = units
        self.partitions = partition_columns(self.files, self.schema)  # Hive keys (run=3/) as columns
        self.schema.update(partition_types(self.partitions))
        self.n_rows = offset
        if not units:
            raise DataError(f"{path}: the Parquet data have no rows")

    def check_columns(self, names, what: str = "") -> None:
        """DataError naming the first of ``names`` that is not a column (``what``: " for x", ...)."""
        for name in names:
            if name not in self.schema:
                raise DataError(f"{self.files[0]}: no column {name!r}{what}{did_you_mean(name, self.schema)}; "
                                f"columns: {', '.join(list(self.schema)[:12])}")

    def numeric(self, name: str) -> bool:
        import pyarrow as pa

        t = self.schema[name]
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)

    def read_all(self, columns) -> dict:
        """Every row of ``columns`` (numbers as float64, text as objects), unit by unit."""
        parts = [self.read(u, columns) for u in range(len(self.units))]
        return {c: np.concatenate([p[c] for p in parts]) for c in columns}

    def read(self, unit: int, columns) -> dict:
        """Columns of one unit (row group) as numpy arrays: numeric ones as float64, filled
        from record batches of :data:`RECORD_BATCH_ROWS` (pyarrow then never holds the whole
        row group besides them)."""
        i, g, _, n, _ = self.units[unit]
        columns = list(columns)
        out = {c: np.empty(n, dtype=np.float64 if self.numeric(c) else object) for c in columns}
        at = 0
        in_file = [c for c in columns if c not in self.partitions]
        for batch in self._open[i].iter_batches(batch_size=RECORD_BATCH_ROWS, row_groups=[g], columns=in_file,
                                                use_threads=False):
            k = batch.num_rows
            for c in in_file:
                out[c][at : at + k] = _to_numpy(batch.column(c), self.numeric(c))
            at += k
        fill_partitions(out, self.partitions, i)
        return out

    def where(self, unit: int) -> tuple[Path, int]:
        """(file, first row of the unit in that file, 0-based)."""
        i, _, first, *_ = self.units[unit]
        return self.files[i], first

    def projected_bytes(self, columns) -> int:
        return 8 * self.n_rows * len(columns)

    def describe(self) -> dict:
        return {"files": [str(f) for f in self.files], "rows": int(self.n_rows), "row_groups": len(self.units)}


def _to_numpy(column, numeric: bool) -> np.ndarray:
    if numeric:
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.asarray(column.to_pylist(), dtype=object)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64 (wrapping arithmetic)."""
    h = np.asarray(h, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def key_hash(values: np.ndarray) -> np.ndarray:
    """A stable uint64 per value: numbers by their float64 bits (so 3 and 3.0 agree), text by
    blake2b of its UTF-8 (each distinct value hashed once)."""
    if values.dtype != object:
        bits = np.ascontiguousarray(values, dtype=np.float64) + 0.0  # -0.0 -> 0.0
        return _mix(bits.view(np.uint64))
    uniq, inverse = np.unique(values.astype(str), return_inverse=True)
    digests = np.array([int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
                        for s in uniq], dtype=np.uint64)
    return digests[inverse.reshape(-1)]


def held_out(hashes: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True where a hash (mixed with the seed) lands in the validation share."""
    salt = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    u = (_mix(hashes ^ salt) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return u < fraction


class Split:
    """Which rows of a :class:`RowSource` are validation rows (see the module notes).

    ``kind`` is "none", "row_group", "key" or "row_hash"; :meth:`val_mask` marks a unit's
    validation rows. Every rank and run that opens the same files with the same fraction,
    seed and key gets the same split.
    """

    def __init__(self, source: RowSource, val_fraction: float, seed: int, val_key: str | None = None):
        self.fraction, self.seed, self.key = float(val_fraction), int(seed), val_key
        n_units = len(source.units)
        self.val_units: frozenset = frozenset()
        if not self.fraction:
            self.kind = "none"
        elif val_key is not None:
            self.kind = "key"
        elif n_units >= MIN_GROUPS_FOR_GROUP_SPLIT:
            self.kind = "row_group"
            k = int(round(self.fraction * n_units))
            rng = np.random.default_rng([self.seed, 0x5EED])
            self.val_units = frozenset(int(u) for u in rng.choice(n_units, size=k, replace=False))
        else:
            self.kind = "row_hash"
        self.units = source.units

    def extra_columns(self) -> tuple:
        """Columns read only to split (the key)."""
        return (self.key,) if self.kind == "key" else ()

    def train_units(self) -> list[int]:
        return [u for u in range(len(self.units)) if u not in self.val_units]

    def val_units_list(self) -> list[int]:
        if self.kind in ("key", "row_hash"):
            return list(range(len(self.units)))
        return sorted(self.val_units)

    def val_mask(self, unit: int, columns: dict) -> np.ndarray:
        """A boolean mask of the unit's validation rows (``columns`` holds the key for a key split)."""
        n = self.units[unit][3]
        if self.kind == "none":
            return np.zeros(n, dtype=bool)
        if self.kind == "row_group":
            return np.full(n, unit in self.val_units)
        if self.kind == "key":
            return held_out(key_hash(columns[self.key]), self.fraction, self.seed)
        first = self.units[unit][4]
        rows = np.arange(first, first + n, dtype=np.uint64)
        return held_out(_mix(rows), self.fraction, self.seed)


@dataclass
class Reader:
    """Reads units' rows for one side of a split and turns them into Arrays: the projection,
    the split mask, the NaN policy ("raise" names the file and row; "omit" drops and counts)."""

    source: RowSource
    split: Split
    columns: tuple
    prepare: Callable[[dict], Arrays]
    nan_policy: str = "raise"
    dropped: int = 0

    def rows(self, unit: int, validation: bool = False) -> Arrays | None:
        """The unit's training (or validation) rows as Arrays; None when it has none left."""
        cols = self.source.read(unit, dict.fromkeys((*self.columns, *self.split.extra_columns())))
        mask = self.split.val_mask(unit, cols)
        keep = mask if validation else ~mask
        n = int(keep.sum())
        if n == 0:
            return None
        data = {c: cols[c] if n == len(keep) else cols[c][keep] for c in self.columns}
        bad = np.zeros(n, dtype=bool)
        for c in self.columns:
            bad |= ~np.isfinite(data[c])
        if bad.any():
            if self.nan_policy == "raise":
                file, first = self.source.where(unit)
                row = first + int(np.flatnonzero(keep)[np.flatnonzero(bad)[0]])
                col = next(c for c in self.columns if not np.isfinite(data[c][np.flatnonzero(bad)[0]]))
                raise DataError(f"{file}: NaN or inf in column {col!r} at row {row + 1} (1-based, in that file); "
                                "clean the data or use nan_policy='omit' (--nan-policy omit) to drop such rows")
            self.dropped += int(bad.sum())
            data = {c: v[~bad] for c, v in data.items()}
            if len(bad) == int(bad.sum()):
                return None
        return self.prepare(data)


def concat_arrays(parts: list) -> Arrays:
    if len(parts) == 1:
        return parts[0]
    inputs = {k: np.concatenate([p.inputs[k] for p in parts]) for k in parts[0].inputs}
    w = None if parts[0].weights is None else np.concatenate([p.weights for p in parts])
    return Arrays(inputs, np.concatenate([p.y for p in parts]), w, float32_safe=all(p.float32_safe for p in parts))


class _Buffer:
    """The shuffle buffer: preallocated columns (``capacity`` rows) that rows are copied into,
    so an epoch allocates it once instead of a concatenation and a permuted copy per fill."""

    def __init__(self, first: Arrays, capacity: int):
        def empty(v):
            return np.empty((capacity, *v.shape[1:]), dtype=v.dtype)

        self.inputs = {k: empty(v) for k, v in first.inputs.items()}
        self.y = empty(first.y)
        self.weights = None if first.weights is None else empty(first.weights)
        self.held = 0

    def _columns(self):
        return [*self.inputs.values(), self.y] + ([] if self.weights is None else [self.weights])

    def add(self, part: Arrays) -> None:
        sources = [*part.inputs.values(), part.y] + ([] if part.weights is None else [part.weights])
        for target, source in zip(self._columns(), sources):
            target[self.held : self.held + part.n] = source
        self.held += part.n

    def rows(self, idx) -> Arrays:
        return Arrays({k: v[idx] for k, v in self.inputs.items()}, self.y[idx],
                      None if self.weights is None else self.weights[idx], float32_safe=True)

    def drain(self, rng, batch_size: int, keep_remainder: bool):
        """Permute the held rows, emit every full batch (and, unless ``keep_remainder``, the
        short last one); the remainder moves to the front."""
        perm = rng.permutation(self.held)
        full = self.held // batch_size * batch_size
        for lo in range(0, full, batch_size):
            yield self.rows(perm[lo : lo + batch_size])
        rest = perm[full:]
        if not keep_remainder and len(rest):
            yield self.rows(rest)
            rest = rest[:0]
        for column in self._columns():
            column[: len(rest)] = column[rest]
        self.held = len(rest)


def shuffled_batches(reader: Reader, epoch: int, seed: int, batch_size: int, buffer_rows: int,
                     shard: tuple | None = None) -> Iterator[Arrays]:
    """The training minibatches of epoch ``epoch`` (the scheme in the module notes); with
    ``shard=(rank, world)`` rank's batches of its units (sharded reads)."""
    rng = np.random.default_rng([int(seed), int(epoch)])
    units = reader.split.train_units()
    order = [units[i] for i in rng.permutation(len(units))]
    if shard is not None:
        order = units = shard_units(order, shard)
        rng = np.random.default_rng([int(seed), int(epoch), int(shard[0])])
        batch_size = rank_batch_size(batch_size, shard)
    # before a row group is added the buffer holds under buffer_rows rows, or a remainder under a batch
    capacity = max(buffer_rows, batch_size) + max(reader.source.units[u][3] for u in units) if units else 0
    buffer = None
    for unit in order:
        part = reader.rows(unit)
        if part is None:
            continue
        if buffer is None:
            buffer = _Buffer(part, capacity)
        buffer.add(part)
        del part
        if buffer.held >= buffer_rows:
            yield from buffer.drain(rng, batch_size, keep_remainder=True)
    if buffer is not None and buffer.held:
        yield from buffer.drain(rng, batch_size, keep_remainder=False)


def pass_rows(reader: Reader, validation: bool = False, shard: tuple | None = None) -> Iterator[Arrays]:
    """Every training (or validation) row once, a row group at a time, in file order; with
    ``shard=(rank, world)`` the rows of rank's units ``r::w`` of that order."""
    units = reader.split.val_units_list() if validation else reader.split.train_units()
    for unit in shard_units(units, shard):
        part = reader.rows(unit, validation)
        if part is not None:
            yield part


def sample_rows(reader: Reader, seed: int, limit: int = SAMPLE_ROWS) -> Arrays:
    """The set-up sample: training rows of the row groups epoch 0's permutation visits first."""
    rng = np.random.default_rng([int(seed), 0])
    units = reader.split.train_units()
    parts, held = [], 0
    for i in rng.permutation(len(units)):
        part = reader.rows(units[i])
        if part is None:
            continue
        parts.append(part)
        held += part.n
        if held >= limit:
            break
    if not parts:
        raise DataError(f"{reader.source.files[0]}: no training rows (every row is held out or was dropped)")
    rows = concat_arrays(parts)
    return rows if rows.n <= limit else rows.take(np.arange(limit))


def column_moments(blocks) -> tuple[float, np.ndarray, np.ndarray]:
    """(total weight, mean, std) per column of a stream of (rows, cols) float64 blocks, or of
    (block, weights) pairs (frequency weights), merged block by block (Chan, Golub and
    LeVeque's pairwise update). The variance divides by n - 1 (sum(w) - 1 with weights, as
    :meth:`gradfit.models.neural.ModuleModel.standardize` does in memory)."""
    total, mean, m2 = 0.0, None, None
    for block in blocks:
        block, w = block if isinstance(block, tuple) else (block, None)
        block = np.asarray(block, dtype=np.float64).reshape(len(block), -1)
        w = np.ones(len(block)) if w is None else np.asarray(w, dtype=np.float64)
        k = float(w.sum())
        if k <= 0:
            continue
        b_mean = w @ block / k
        b_m2 = w @ (block - b_mean) ** 2
        if mean is None:
            total, mean, m2 = k, b_mean, b_m2
            continue
        delta = b_mean - mean
        merged = total + k
        mean = mean + delta * (k / merged)
        m2 = m2 + b_m2 + delta**2 * (total * k / merged)
        total = merged
    if mean is None:
        raise DataError("no training rows to compute normalization statistics from")
    std = np.sqrt(m2 / (total - 1 if total > 1 else total))
    return total, mean, std
