"""``gradfit predict MODEL.json DATA``: the model's inputs and its predictions, as CSV."""

from __future__ import annotations

from .common import ExitStatus, exit_status


def run_predict(args, stdout, stderr) -> ExitStatus:
    """Predict from a saved fit. The exit status is the saved fit's (the one table in
    :data:`gradfit.cli.common.STATUS_EXIT`): predictions from a fit that is not a solution are
    written but exit FIT_FAILED (3), as are predictions that are not finite at finite inputs."""
    import numpy as np

    import gradfit as gf

    from .._files import resolve_target
    from ..data.io import csv_text, numeric_columns, write_csv

    result = gf.load(args.model)
    table = _read(args.data, result.model.input_names)
    columns = numeric_columns(table, [n for n in result.model.input_names if n in table], source=args.data)
    pred = result.predict(data=columns)
    out = {n: columns[n] for n in result.model.input_names}
    if pred.ndim == 1:
        out["prediction"] = pred
    else:
        out.update({f"prediction_{j}": pred[:, j] for j in range(pred.shape[1])})
    if args.out:
        write_csv(args.out, out)
        if resolve_target(args.out)[1] == "replace":  # -o /dev/stdout or a FIFO: the CSV alone, no trailer
            print(f"wrote {len(pred)} predictions to {args.out}", file=stdout)
    else:
        stdout.write(csv_text(out))
    status = exit_status(result.status)
    if status != ExitStatus.OK:
        print(f"gradfit predict: the saved fit's status is {result.status} (exit {int(status)}): its predictions "
              "are not from a converged fit", file=stderr)
    finite_in = np.ones(len(pred), dtype=bool)
    for n in result.model.input_names:
        v = np.asarray(columns[n], dtype=float)
        finite_in &= np.isfinite(v).reshape(len(v), -1).all(axis=1)
    finite_out = np.isfinite(np.asarray(pred, dtype=float)).reshape(len(pred), -1).all(axis=1)
    bad = np.flatnonzero(finite_in & ~finite_out)
    if bad.size:
        rows = ", ".join(str(i + 2) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
        print(f"gradfit predict: {bad.size} prediction(s) are not finite at finite inputs (rows {rows}, the header "
              "is row 1)", file=stderr)
        status = ExitStatus.FIT_FAILED
    return status


def _read(data, names) -> dict:
    """The data file's columns; for a folder or glob of Parquet files (as ``gradfit fit`` takes
    them) the model's input columns, read whole (a file at a time, one row group at a time)."""
    from pathlib import Path

    from ..data.io import read_table

    text = str(data)
    if not (Path(text).is_dir() or any(ch in text for ch in "*?[")):
        return read_table(data)
    from ..data.parquet_rows import RowSource

    rows = RowSource(text)
    return rows.read_all([n for n in names if n in rows.schema])
