"""``gradfit fit-many DATA MODEL --stream --out FOLDER``: fit_many_files from the command line.

DATA is a .npy array (fits, points) or a wide Parquet table, folder or glob; the results go to
FOLDER as Parquet parts, a chunk at a time, and a rerun of the same command resumes. Under
torchrun every rank runs the same command and fits its own chunks.
"""

from __future__ import annotations

import json

from ..errors import ConfigError
from .common import ExitStatus, batch_exit_status, library_output, parse_bounds

#: options of fit-many that need the whole batch in memory
_IN_MEMORY = {"report": "--report", "plot": "--plot", "shared": "--shared", "starts": "--starts",
              "id_column": "--id-column", "x_cols": "--x", "y_col": "--y"}


def run_stream(args, stdout, stderr, *, starting_values, x_values) -> ExitStatus:
    """fit-many --stream; ``starting_values`` and ``x_values`` are fit-many's readers of --init/--fix
    and --x-values (cli/fit_many.py, which calls this)."""
    import gradfit as gf
    from gradfit.data.stream import open_source
    from gradfit.models import resolve_model

    if not args.out:
        raise ConfigError("--stream writes its results a chunk at a time to a folder: pass --out FOLDER")
    used = [flag for key, flag in _IN_MEMORY.items() if getattr(args, key, None)]
    if used:
        raise ConfigError(f"--stream fits chunks independently and does not take {', '.join(used)}; "
                          "drop it, or fit in memory without --stream")
    model = resolve_model(args.model)
    names = list(model.bind(["x"]).param_names if hasattr(model, "bind") and not model.bound else model.param_names)
    init, fixed = starting_values(args, names, {})
    x = args.x_values
    if x and not x.lower().endswith(".npy"):
        x = x_values(x, open_source(args.data, y_prefix=args.y_prefix).n_points)

    def report(record):
        if not (args.no_progress or args.json):
            print(f"gradfit fit-many: chunk {record['chunk']} (fits {record['start']}..{record['stop'] - 1}) written "
                  f"in {record['seconds']:.2f} s", file=stderr, flush=True)

    with library_output("fit-many", stderr):
        summary = gf.fit_many_files(args.model, args.data, args.out, x=x, y_prefix=args.y_prefix,
                                    chunk_fits=args.chunk_fits, on_chunk=report, init=init,
                                    bounds=parse_bounds(args.bounds) or None, fixed=fixed or None, loss=args.loss,
                                    tol=args.tol, max_iter=args.max_iter, dtype=args.dtype, device=args.device,
                                    threads=args.threads, chunk_size=args.chunk_size,
                                    compile={"yes": True, "no": False}.get(args.compile, "auto"), progress=False)
    if args.json:
        print(json.dumps({"fits": summary.n_fits, "chunks": summary.n_chunks, "fitted": list(summary.fitted),
                          "skipped": list(summary.skipped), "complete": summary.complete,
                          "status": summary.status_counts, "out": str(args.out)}), file=stdout)
    else:
        counts = ", ".join(f"{n} {k}" for k, n in summary.status_counts.items())
        print(f"{summary.n_fits} fits in {summary.n_chunks} chunks: fitted {len(summary.fitted)} here, "
              f"{len(summary.skipped)} already written; {counts}", file=stdout)
        if summary.complete:
            print(f"wrote {args.out} (Parquet parts: read with pyarrow.dataset.dataset or gf.read_fit_many_files)",
                  file=stdout)
    if not summary.complete:  # another rank (a job array) still writes its chunks
        return ExitStatus.OK
    return batch_exit_status(list(summary.status_counts))
