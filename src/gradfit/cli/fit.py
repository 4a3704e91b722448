"""``gradfit fit DATA MODEL``."""

from __future__ import annotations

import json
from pathlib import Path

from .common import ExitStatus, StopSignals, check_out_file, check_out_folder, exit_status, fit_kwargs, library_output


def load_model_and_data(model_text: str, data_path: str, x_cols: str | None, y_col: str | None,
                        extra: tuple = ()):
    """Read the data file and work out (model spec, x, y, data) for gradfit.fit.

    Column names pass through as they are (``--x "Time (s)"``), never as formula text. Only
    the columns the fit uses must be numeric; text columns (ids, notes) are left out of
    ``data``, and a used one is a DataError naming its bad cells. ``extra`` names more used
    columns (``--sigma``).
    """
    from ..data.io import numeric_columns, read_table
    from ..errors import ConfigError
    from ..models import is_builtin_name

    table = read_table(data_path)
    numeric = [n for n, v in table.items() if v.dtype.kind in "iufb"]
    if is_builtin_name(model_text):
        y = y_col or (numeric[-1] if numeric else list(table)[-1])
        mlp = model_text.strip().lower() == "mlp"
        # default inputs: every other numeric column for mlp, the first other one for a curve
        xs = [x_cols] if x_cols in table else (x_cols.split(",") if x_cols else
                                                [c for c in numeric if c != y][: None if mlp else 1])
        if not xs:
            raise ConfigError(f"{data_path}: needs an input column and a target column (--x COL --y COL)")
        for flag, name in [*(("--x", n) for n in xs), ("--y", y)]:
            if name not in table:
                from ..errors import DataError, did_you_mean

                listed = ", ".join(list(table)[:10]) + (", ..." if len(table) > 10 else "")
                raise DataError(f"{data_path}: no column {name!r} for {flag}{did_you_mean(name, table)}; "
                                f"columns: {listed}")
        columns = numeric_columns(table, [*xs, y, *extra], source=data_path)
        return model_text, (xs[0] if len(xs) == 1 and not mlp else xs), y, columns
    if "~" not in model_text and y_col is None:
        raise ConfigError("write the formula as 'response ~ expression' (e.g. 't_c ~ w*t_u + b') or pass --y COL")
    return model_text, None, y_col, numeric_columns(table, [*_formula_names(model_text, table), *extra],
                                                    source=data_path)


def weight_columns(args) -> tuple:
    """The columns ``--sigma COL`` / ``--weights COL`` name (read with the fit's columns)."""
    return tuple(c for c in (args.sigma, args.weights) if c)


def weight_keywords(args, columns: dict, *, named: bool = False) -> dict:
    """``sigma=`` / ``weights=`` of gf.fit from ``--sigma COL`` / ``--weights COL``: the column's
    values, or (``named``: Parquet data that gf.fit reads itself) the column's name.

    Raises
    ------
    ConfigError
        both flags given.
    DataError
        no such column, with a did-you-mean.
    """
    from ..errors import ConfigError, DataError, did_you_mean

    if args.sigma and args.weights:
        raise ConfigError("give --sigma COL or --weights COL, not both (weights = 1/sigma^2)")
    out = {}
    for flag, name in (("--sigma", args.sigma), ("--weights", args.weights)):
        if not name:
            continue
        if not named and name not in columns:
            raise DataError(f"{args.data}: no column {name!r} for {flag}{did_you_mean(name, columns)}")
        out[flag[2:]] = name if named else columns[name]
    return out


def parquet_source(args):
    """A :class:`gradfit.ParquetData` (streamed or read whole by gf.fit) for a folder or glob of
    Parquet files, a ``.parquet`` file too large to read whole, or any of them with --stream or
    --val-key; None for a file read whole as before (plots, --sigma). --stream and --val-key on
    other data are a ConfigError."""
    from ..errors import ConfigError

    text = str(args.data)
    path = Path(text)
    if not (path.is_dir() or any(ch in text for ch in "*?[") or path.suffix.lower() == ".parquet"):
        if args.stream or args.val_key:
            raise ConfigError("--stream and --val-key read Parquet data: a .parquet file, a folder of them or a "
                              "quoted glob")
        return None
    from ..data.parquet_rows import STREAM_MEMORY_SHARE, ParquetData, RowSource

    if path.is_file() and not (args.stream or args.val_key):
        from .._memory import available_bytes

        rows, free = RowSource(path), available_bytes(None)
        if free is None or rows.projected_bytes(rows.schema) <= STREAM_MEMORY_SHARE * free:
            return None  # one file that fits in memory: read whole as before (plots, --sigma)
    return ParquetData(text, val_key=args.val_key, stream=True if args.stream else None,
                       shard_reads=not args.no_shard_reads)


def parquet_columns(args, source) -> tuple:
    """(model, x, y) for Parquet data, with the defaults of :func:`load_model_and_data` for a
    built-in model (y: the last numeric column; x: the first other one, every other for mlp),
    read from the files' schema."""
    from ..data.parquet_rows import RowSource
    from ..models import is_builtin_name

    x = args.x_cols if args.x_cols is None or "," not in args.x_cols else args.x_cols.split(",")
    if not is_builtin_name(args.model):
        return args.model, x, args.y_col
    rows = RowSource(source.path)
    numeric = [c for c in rows.schema if rows.numeric(c)]
    y = args.y_col or (numeric[-1] if numeric else None)
    mlp = args.model.strip().lower() == "mlp"
    if x is None:
        others = [c for c in numeric if c != y]
        x = others if mlp else (others[:1] or None)
    elif mlp and isinstance(x, str):
        x = [x]
    return args.model, x, y


def _formula_names(model_text: str, table: dict) -> list:
    """The table's columns that the formula names (so a text column it uses is an error, not
    a name that silently becomes a parameter)."""
    from ..models import resolve_model

    model = resolve_model(model_text)
    parsed = getattr(model, "parsed", None)
    if parsed is None:
        return []
    names = set(parsed.rhs.names()) | set(getattr(model, "response_names", ()) or ())
    return [n for n in table if n in names]


def run_fit(args, stdout, stderr) -> ExitStatus:
    import gradfit as gf

    from ..errors import ConfigError
    from ..train.checkpoint import Checkpointer, Interrupted

    if args.out:
        check_out_folder(args.out)  # an unwritable --out fails now, not after the training
    if args.report:
        check_out_file(args.report, "--report")
    source = parquet_source(args)  # Parquet goes to gf.fit as a ParquetData: streamed or read whole there
    if source is None:
        model, x, y, columns = load_model_and_data(args.model, args.data, args.x_cols, args.y_col,
                                                   extra=weight_columns(args))
    else:
        (model, x, y), columns = parquet_columns(args, source), {}
    kwargs = fit_kwargs(args)
    kwargs["starts"] = args.starts
    kwargs.update(weight_keywords(args, columns, named=source is not None))
    checkpointer = None
    if args.out:
        checkpointer = Checkpointer(args.out, every_epochs=args.checkpoint_every,
                                    every_seconds=args.checkpoint_seconds or None)
        kwargs.update(checkpoint=checkpointer, resume=args.resume)
    elif args.resume:
        raise ConfigError("--resume needs --out DIR, the folder holding the checkpoint")
    try:
        # the first signal asks the loop to checkpoint at its next minibatch and stop
        stop = StopSignals(lambda signum: setattr(checkpointer, "signal", signum), active=checkpointer is not None)
        with library_output("fit", stderr), stop:
            result = gf.fit(model, x=x, y=y, data=columns if source is None else source, **kwargs)
    except Interrupted as stop:
        import shlex

        again = " ".join(shlex.quote(a) for a in ["gradfit", *args.argv] if a != "--resume")
        print(f"gradfit fit: interrupted {stop.where}; checkpoint saved in {Path(args.out)}; "
              f"resume with: {again} --resume", file=stderr)
        return ExitStatus.from_signal(stop.signum)
    from ..train.distributed import is_writer

    if not is_writer():  # under torchrun rank 0 writes and prints; the others hold the same result
        return exit_status(result.status)
    if args.out or args.report:  # Parquet data are not read again for plots: no fit.png
        target = columns.get(y) if isinstance(y, str) else _response_column(result, columns)
    if args.out:
        write_outputs(result, Path(args.out), columns, target, _plot_sigma(args, columns))
    if args.report:
        inputs, observed = plot_data(result, columns, target)
        result.to_html(args.report, x=inputs, y=observed)
    if args.json:
        doc = result.to_dict()
        doc.update(n_train=result.n_train, n_val=result.n_val)  # the rows fitted and held out (streamed too)
        if args.out:
            doc["out"] = str(Path(args.out))
        if args.report:
            doc["report"] = str(Path(args.report))
        print(json.dumps(doc), file=stdout)
    else:
        print(result.report(), file=stdout)
        if args.out:
            # as a path, not text: --out run/ must not print run//model.json
            print(f"wrote {Path(args.out) / 'model.json'}, history.csv, fit.png, loss.png", file=stdout)
        if args.report:
            print(f"wrote {Path(args.report)}", file=stdout)
    status = exit_status(result.status)
    if status != ExitStatus.OK:
        print(f"gradfit fit: {' '.join(str(result.message).split())} (status {result.status}, exit {int(status)})",
              file=stderr)
    return status


def _plot_sigma(args, columns: dict):
    """The error bars of fit.png: the --sigma column, or 1/sqrt of the --weights column."""
    if args.sigma:
        return columns.get(args.sigma)
    w = columns.get(args.weights) if args.weights else None
    if w is None:
        return None
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(w > 0, 1.0 / np.sqrt(w), np.nan)


def write_outputs(result, out: Path, columns: dict, target, sigma=None) -> None:
    import numpy as np

    from ..data.io import write_csv

    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "model.json")
    train = result.history["train_loss"]
    val = result.history["val_loss"] or [float("nan")] * len(train)
    write_csv(out / "history.csv", {"epoch": np.arange(1, len(train) + 1), "train_loss": np.asarray(train),
                                    "val_loss": np.asarray(val)})
    result.plot_loss(out / "loss.png")
    if sigma is not None and target is not None:  # the rows with both (the fit used no others)
        target, sigma = np.where(np.isfinite(sigma), target, np.nan), np.where(np.isfinite(target), sigma, np.nan)
    inputs, observed = plot_data(result, columns, target)
    if inputs is not None:  # error bars and residual / sigma with --sigma
        sig = None if sigma is None or target is None else plot_data(result, columns, sigma)[1]
        result.plot_fit(out / "fit.png", inputs, observed, sigma=sig)


def plot_data(result, columns: dict, target):
    """(the model's input columns, the target) over the finite rows, or (None, None) when the
    file lacks an input or the target."""
    import numpy as np

    inputs = {n: columns[n] for n in result.model.input_names if n in columns}
    if len(inputs) != len(result.model.input_names) or target is None:
        return None, None
    ok = np.isfinite(target)
    for v in inputs.values():
        ok &= np.isfinite(v).reshape(len(v), -1).all(axis=1)
    return {k: v[ok] for k, v in inputs.items()}, target[ok]


def _response_column(result, columns):
    import numpy as np
    import torch

    model = result.model
    names = model.response_names
    if not all(n in columns for n in names):
        return None
    with torch.no_grad():
        v = model.response({n: torch.as_tensor(columns[n], dtype=torch.float64) for n in names})
    return np.asarray(v, dtype=float)
