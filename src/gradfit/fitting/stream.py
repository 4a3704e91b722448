"""fit_many over batches larger than memory: read a chunk of fits, fit it, write its part.

Data flow (forward hops only): a source opened without reading it (data/stream.py: a .npy
memory map or Parquet record batches) -> the run's key (model, source fingerprint, x, settings)
checked against ``OUT/_manifest.json`` -> chunk i (rows [i*chunk_fits, ...)) to rank
i % world (fitting/parallel.py) -> fit_many on the chunk in this process only -> the chunk's
rows written atomically to ``OUT/part-0000i.parquet``, then its record ``OUT/_chunks/0000i.json``
(the commit point: a chunk with a record is never fitted again) -> when every record exists,
the manifest marked complete with every chunk's row range.

Each rank writes only its own parts and records, so ranks never write the same file; the
manifest is written once at the start (the same text from whichever rank writes it) and once
at the end (by rank 0 after a barrier under torchrun). ``pyarrow.dataset.dataset(OUT)`` reads
the parts as one table (it skips names starting with "_" and "."); :func:`read_fit_many_files`
returns it as a DataFrame sorted by fit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._files import atomic_write_bytes, atomic_write_text, parse_json
from ..errors import ConfigError, DataError

__all__ = ["StreamSummary", "fit_many_files", "read_fit_many_files"]

FORMAT = "gradfit.fit_many_files/1"
MANIFEST = "_manifest.json"
RECORDS = "_chunks"
#: fit_many keywords that apply per chunk; those in HOW change how, not what, is computed and
#: stay out of the run's key (a resume may use another device or thread count)
OPTIONS = {"init", "bounds", "fixed", "weights", "sigma", "loss", "tol", "max_iter", "dtype", "device", "chunk_size",
           "compile", "threads", "progress"}
HOW = {"device", "chunk_size", "compile", "threads", "progress"}


@dataclasses.dataclass(frozen=True)
class StreamSummary:
    """What :func:`fit_many_files` did: chunks this process fitted and skipped (already
    written), whether every chunk of the run is written, and the status counts over the
    written chunks."""

    out: Path
    n_fits: int
    n_chunks: int
    fitted: tuple
    skipped: tuple
    complete: bool
    status_counts: dict

    def to_pandas(self):
        """The results, one row per fit (:func:`read_fit_many_files`)."""
        return read_fit_many_files(self.out)


def fit_many_files(model, source, out, *, x=None, y_prefix: str = "y_", chunk_fits: int = 100_000,
                   rank: int | None = None, world_size: int | None = None, on_chunk=None, **options) -> StreamSummary:
    """:func:`gradfit.fit_many` over a batch read from files a chunk at a time, its results
    written chunk by chunk to a folder of Parquet parts, resumable.

    Parameters
    ----------
    model : as for :func:`gradfit.fit_many` (a formula needs ``init`` for every parameter:
        its data-driven start would depend on the chunk).
    source : a ``.npy`` array (fits, points), memory-mapped; or a wide Parquet table (columns
        ``y_0 ..``, optionally ``x_0 ..``), a folder of them, or a glob, read by record batches.
    out : the results folder (created): ``part-NNNNN.parquet`` per chunk (columns as
        ``BatchResult.to_pandas()``, ``fit`` the global row index), ``_chunks/NNNNN.json`` per
        written chunk, ``_manifest.json``. Rerunning with the same arguments skips the chunks
        already written; other data or settings raise ConfigError.
    x : the inputs shared by every fit: (M,) values or a ``.npy`` file of them (default: the
        table's x columns, else 0..M-1).
    y_prefix : prefix of a Parquet table's y columns.
    chunk_fits : fits read, fitted and written at a time (part of the run's key).
    rank, world_size : which chunks this process fits (chunk i when i % world_size == rank);
        default from torchrun (one process: every chunk). Explicit values shard without a
        process group (a job array); each process then returns once its own chunks are written.
    on_chunk : called with each chunk's record (a dict) after it is written.
    **options : fit_many keywords that are the same for every fit: init, bounds, fixed,
        weights, sigma ((M,) or scalars), loss, tol, max_iter, dtype, device, chunk_size,
        compile, threads, progress.

    Returns
    -------
    StreamSummary

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib, gradfit as gf
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> np.save(d / "y.npy", np.outer(np.arange(1.0, 6.0), np.arange(4.0)))
    >>> s = gf.fit_many_files("a*x", d / "y.npy", d / "out", chunk_fits=2, init={"a": 0.5})
    >>> s.n_chunks, s.fitted, np.round(s.to_pandas()["a"], 3).tolist()
    (3, (0, 1, 2), [1.0, 2.0, 3.0, 4.0, 5.0])
    """
    from ..data.stream import block_hash, open_source
    from ..models import resolve_model

    _check_options(options)
    if not isinstance(chunk_fits, int) or isinstance(chunk_fits, bool) or chunk_fits < 1:
        raise ConfigError(f"chunk_fits must be a positive integer, got {chunk_fits!r}")
    described_model = _canonical(model)
    # once, not per chunk: caches keyed by the model object (compiled kernels) then serve every chunk
    model = resolve_model(model)
    _check_init(model, options.get("init"))
    src = open_source(source, y_prefix=y_prefix)
    x_shared = _shared_x(x, src)
    n_chunks = -(-src.n_fits // chunk_fits)
    settings = {k: _canonical(v) for k, v in sorted(options.items()) if k not in HOW}
    described = {"format": FORMAT, "model": described_model, "source": src.fingerprint(),
                 "x": None if x_shared is None else block_hash(x_shared), "n_fits": src.n_fits,
                 "n_points": src.n_points, "chunk_fits": chunk_fits, "settings": settings}
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    out = Path(out)
    _open_out(out, key, {**described, "key": key, "n_chunks": n_chunks, "complete": False})
    rank, world_size, grouped = _placement(rank, world_size)
    run = secrets.token_hex(4)
    fitted, skipped = [], []
    for i in range(rank, n_chunks, world_size):
        if _record(out, i, key) is not None:
            skipped.append(i)
            continue
        record = _fit_chunk(model, src, x_shared, out, i, chunk_fits, key, run, options)
        fitted.append(i)
        if on_chunk is not None:
            on_chunk(record)
    if grouped:
        import torch.distributed as dist

        dist.barrier()  # every rank's parts are written before rank 0 looks
    records = [_record(out, i, key) for i in range(n_chunks)]
    complete = all(r is not None for r in records)
    if complete and (rank == 0 or not grouped):
        chunks = [{"chunk": r["chunk"], "start": r["start"], "stop": r["stop"], "part": r["part"]} for r in records]
        atomic_write_text(out / MANIFEST, json.dumps({**described, "key": key, "n_chunks": n_chunks, "complete": True,
                                                      "chunks": chunks}, indent=1, sort_keys=True))
    counts: dict = {}
    for r in records:
        for name, n in (r or {}).get("status_counts", {}).items():
            counts[name] = counts.get(name, 0) + n
    return StreamSummary(out=out, n_fits=src.n_fits, n_chunks=n_chunks, fitted=tuple(fitted), skipped=tuple(skipped),
                         complete=complete, status_counts=counts)


def read_fit_many_files(out):
    """The results of a complete :func:`fit_many_files` run as one pandas DataFrame, sorted by
    ``fit`` (DataError naming the missing chunks if the run is not finished)."""
    from ..errors import require

    ds = require("pyarrow.dataset", extra="pandas", feature="reading fit_many_files results")
    out = Path(out)
    manifest = _read_manifest(out)
    if manifest is None:
        raise DataError(f"{out}: no {MANIFEST}; not a folder written by fit_many_files")
    missing = [i for i in range(manifest["n_chunks"]) if _record(out, i, manifest["key"]) is None]
    if missing:
        raise DataError(f"{out}: {len(missing)} of {manifest['n_chunks']} chunks not written yet (first: {missing[0]}); "
                        "rerun fit_many_files with the same arguments to finish them")
    frame = ds.dataset(out, format="parquet").to_table().to_pandas()
    column = "result_fit" if "result_fit" in frame.columns else "fit"
    return frame.sort_values(column, kind="stable").reset_index(drop=True)


# -- checks -------------------------------------------------------------------------------------
def _check_options(options: dict) -> None:
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ConfigError(f"fit_many_files does not take {', '.join(unknown)}: it fits chunks independently with the "
                          f"same settings for every fit ({', '.join(sorted(OPTIONS))}); per-fit values, masks, "
                          "shared parameters and candidate models need gf.fit_many on data in memory")
    per_fit = []
    for name in ("init", "bounds", "fixed"):
        value = options.get(name)
        if isinstance(value, Mapping):
            for k, v in value.items():
                ends = v if name == "bounds" and isinstance(v, (tuple, list)) else [v]
                if any(end is not None and np.ndim(end) > 0 for end in ends):
                    per_fit.append(f"{name}[{k!r}]")
        elif name == "init" and value is not None and not isinstance(value, str) and np.ndim(value) > 1:
            per_fit.append("init")
    per_fit += [n for n in ("weights", "sigma") if np.ndim(options.get(n)) > 1]
    if per_fit:
        raise ConfigError(f"fit_many_files takes values shared by every fit; {', '.join(per_fit)} holds one value "
                          "per fit: put them in the data, or fit in memory with gf.fit_many")


def _check_init(model, init) -> None:
    """A formula's start from the data would come from each chunk's mean curve, so results
    would depend on the chunking: ask for init instead."""
    from ..models.builtin import BuiltinModel

    spec = model
    if isinstance(spec, BuiltinModel) or getattr(spec, "parsed", None) is None or isinstance(init, str):
        return
    names = spec.bind(["x"]).param_names if hasattr(spec, "bind") and not spec.bound else spec.param_names
    given = set(init) if isinstance(init, Mapping) else (set(names) if init is not None else set())
    missing = [n for n in names if n not in given]
    if missing:
        raise ConfigError(f"fit_many_files needs init for every parameter of a formula (missing: {', '.join(missing)}), "
                          "e.g. init={" + ", ".join(f"{n!r}: 1.0" for n in missing) + "}: a start from the data would "
                          "differ from chunk to chunk")


def _shared_x(x, src):
    if x is None:
        return None if getattr(src, "x_columns", None) else np.arange(src.n_points, dtype=float)
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if not path.is_file():
            raise DataError(f"{path}: no such file (x values)")
        x = np.load(path, allow_pickle=False)
    x = np.asarray(x, dtype=float)
    if x.shape != (src.n_points,):
        raise DataError(f"x has shape {x.shape}; every fit has {src.n_points} points, so pass ({src.n_points},) values")
    return x


def _canonical(value):
    """JSON for the run's key: arrays by shape and hash, tuples as lists, models by text."""
    if isinstance(value, np.ndarray) and value.ndim > 0:
        return {"shape": list(value.shape), "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    describe = getattr(value, "describe", None)
    if callable(describe):
        return describe()
    if callable(value) and hasattr(value, "__qualname__"):  # a Python model function: by name, not address
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return str(value)  # torch.float64 and the like


# -- the folder ------------------------------------------------------------------------------------
def _open_out(out: Path, key: str, manifest: dict) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; fit_many_files writes a folder of Parquet parts: name a new folder")
    existing = _read_manifest(out)
    if existing is not None and existing.get("key") != key and not any((out / RECORDS).glob("*.json")):
        # no chunk of that run was committed (it failed before its first): nothing to mix, start afresh
        for part in out.glob("part-*.parquet"):
            part.unlink()
        existing = None
    if existing is None:
        if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".") and p.name not in (MANIFEST, RECORDS)):
            raise ConfigError(f"{out} is a folder with other files and no {MANIFEST}: name a new or empty folder")
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    elif existing.get("key") != key:
        changed = [k for k in ("model", "source", "x", "n_fits", "n_points", "chunk_fits", "settings")
                   if existing.get(k) != manifest.get(k)]
        raise ConfigError(f"{out} holds fit_many_files results of other data or settings (differing: "
                          f"{', '.join(changed) or 'format'}); resuming would mix them: pass the same arguments, "
                          "or write to a new folder (or delete this one)")


def _read_manifest(out: Path):
    try:
        return parse_json((out / MANIFEST).read_bytes())
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged manifest is a config problem, named
        raise ConfigError(f"{out / MANIFEST}: unreadable ({exc}); delete the folder to start again") from None


def _record(out: Path, i: int, key: str):
    """Chunk i's record if it is written for this run's key, else None."""
    try:
        record = parse_json((out / RECORDS / f"{i:05d}.json").read_bytes())
    except Exception:  # noqa: BLE001 - absent or torn: the chunk is fitted again
        return None
    return record if isinstance(record, dict) and record.get("key") == key else None


def _placement(rank, world_size):
    """(rank, world size, whether a torchrun process group synchronizes the ranks)."""
    if rank is None and world_size is None:
        from .parallel import world

        rank, world_size = world()
        return rank, world_size, world_size > 1
    if rank is None or world_size is None:
        raise ConfigError("pass rank and world_size together (or neither, for torchrun's)")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ConfigError(f"rank must be in 0..world_size-1 and world_size >= 1, got rank={rank!r}, "
                          f"world_size={world_size!r}")
    return rank, world_size, False


def _fit_chunk(model, src, x_shared, out: Path, i: int, chunk_fits: int, key: str, run: str, options: dict) -> dict:
    from ..data.stream import block_hash
    from ..results.batch_tables import table_frame
    from .many import fit_many
    from .parallel import this_process_only

    start, stop = i * chunk_fits, min((i + 1) * chunk_fits, src.n_fits)
    t0 = time.perf_counter()
    x_block, y_block = src.read(start, stop)
    with this_process_only():  # this rank was assigned the chunk: fit_many must not shard it again
        result = fit_many(model, x_shared if x_block is None else x_block, y_block, **options)
    frame = table_frame(result)
    frame["result_fit" if "result_fit" in frame.columns else "fit"] = np.arange(start, stop)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    part = f"part-{i:05d}.parquet"
    atomic_write_bytes(out / part, buf.getvalue())
    record = {"key": key, "chunk": i, "start": start, "stop": stop, "part": part, "run": run, "pid": os.getpid(),
              "y_sha256": block_hash(x_block, y_block), "status_counts": result.status_counts(),
              "seconds": round(time.perf_counter() - t0, 6)}
    # the commit point: written after the part, so a chunk with a record has its rows on disk
    atomic_write_text(out / RECORDS / f"{i:05d}.json", json.dumps(record, sort_keys=True))
    return record

