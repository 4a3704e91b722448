"""``gradfit fit-many DATA MODEL``: one fit per row (wide table) or per id (long table).

The reshaping is the API's (:mod:`gradfit.data.tables`); this module picks the layout from
the file and the flags, and formats the answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError, DataError
from .common import ExitStatus, batch_exit_status, check_out_file, library_output, parse_bounds, parse_fixed, parse_init


def run_fit_many(args, stdout, stderr) -> ExitStatus:
    import gradfit as gf
    from gradfit.models import resolve_model

    if args.stream:  # data larger than memory: chunks in, Parquet parts out (cli/fit_many_stream.py)
        from .fit_many_stream import run_stream

        return run_stream(args, stdout, stderr, starting_values=starting_values, x_values=_x_values)
    if args.report:
        check_out_file(args.report, "--report")
    if args.plot:
        check_out_file(args.plot, "--plot")
    if args.out:
        check_out_file(args.out)  # an unwritable --out fails now, not after every fit
        if str(args.out).lower().endswith(".parquet"):  # so does one whose writer is not installed
            from ..errors import require

            for module in ("pandas", "pyarrow"):
                require(module, extra="pandas", feature=f"saving {Path(args.out).name} (Parquet)")
    model = resolve_model(args.model)
    names = list(model.bind([_input_name(model, args)]).param_names if hasattr(model, "bind") else model.param_names)
    with library_output("fit-many", stderr):  # (a warning of the table's columns, as one line)
        data, per_fit = load_batch(args, names)
    wide_ids = data.pop(WIDE_IDS, None)
    init, fixed = starting_values(args, names, per_fit)
    with library_output("fit-many", stderr):
        result = gf.fit_many(args.model, **data, init=init, bounds=parse_bounds(args.bounds) or None,
                             fixed=fixed or None, loss=args.loss, tol=args.tol, max_iter=args.max_iter,
                             dtype=args.dtype, device=args.device, threads=args.threads, chunk_size=args.chunk_size,
                             compile={"yes": True, "no": False}.get(args.compile, "auto"),
                             progress=False if args.no_progress or args.json else None,
                             shared=_shared_names(args.shared),
                             starts=args.starts, seed=args.seed)
    if wide_ids is not None:
        import dataclasses

        import numpy as np

        result = dataclasses.replace(result, ids=np.asarray(wide_ids), id_name=args.id_column)
    if args.out:
        result.save(args.out)
    if args.plot:  # the example grid needs the (fits, points) arrays: histograms only for a long table
        result.plot(args.plot, *((data["x"], data["y"]) if "data" not in data else ()))
    if args.report:  # example fits need the (fits, points) arrays: a long table's report has none
        arrays = "data" not in data
        result.to_html(args.report, x=data["x"] if arrays else None, y=data["y"] if arrays else None)
    if args.json:
        doc = {"fits": len(result), "status": result.status_counts(), "converged_fraction": float(result.converged.mean()),
               "fits_per_s": result.timings.get("fits_per_s"), "warmup_s": result.timings.get("warmup_s"),
               "device": result.timings.get("device"), "native": bool(result.timings.get("native")),
               "out": args.out, "loss": result.loss, "report": args.report}
        if result.timings.get("native_kernel"):  # why the native kernel was not used
            doc["native_kernel"] = result.timings["native_kernel"]
        if result.shared:  # a global fit: the shared values are its answer
            doc.update(shared=result.shared, shared_stderr=result.shared_stderr,
                       joint_stats={k: (v.item() if hasattr(v, "item") else v) for k, v in result.joint_stats.items()})
        if result.multistart:
            import numpy as np

            ms = result.multistart
            doc["multistart"] = {"starts": ms["starts"], "median_reached_best": float(np.median(ms["reached_best"])),
                                 "median_distinct_minima": float(np.median(ms["distinct_minima"]))}
        if "deviance" in result.stats:
            import numpy as np

            dev = result.stats["deviance"][result.converged]
            doc["median_deviance"] = float(np.median(dev)) if dev.size else None
        print(json.dumps(doc), file=stdout)
    else:
        print(result.summary(), file=stdout)
        if args.out:
            print(f"wrote {len(result)} rows to {args.out}", file=stdout)
        if args.report:
            print(f"wrote {args.report}", file=stdout)
        if args.plot:
            print(f"wrote {args.plot}", file=stdout)
    status = batch_exit_status(result.status_text)
    if status != ExitStatus.OK:
        counts = ", ".join(f"{n} {k}" for k, n in result.status_counts().items())
        where = f"; each fit's status is in {args.out}" if args.out else "; pass --out FILE for each fit's status"
        print(f"gradfit fit-many: not every fit is a solution ({counts}), exit {int(status)}{where}", file=stderr)
    return status


def _shared_names(values) -> list[str] | None:
    """--shared k --shared a,b -> ["k", "a", "b"]; None when the option is absent."""
    if not values:
        return None
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--shared names no parameter ({', '.join(map(repr, values))}); give names, e.g. --shared k")
    return names


def _input_name(model, args) -> str:
    """The formula's input: "x", or the long table's x column when the formula is written in
    its name ("top*dose/(ec50 + dose)" with --x dose), as gf.fit_many reads it."""
    parsed = getattr(model, "parsed", None)
    if parsed is not None and args.id_column and args.x_cols:
        used = parsed.rhs.names()
        if args.x_cols in used and "x" not in used:
            return args.x_cols
    return "x"


def starting_values(args, names: list[str], per_fit: dict):
    """(init for fit_many, fixed names) from --init, --fix and per-fit columns.

    Precedence for a name: a --fix value, then an --init constant, then a per-fit column.
    """
    init = parse_init(args.init)
    fixed, fixed_values = parse_fixed(args.fix)
    if init == "guess":
        # names not given are guessed by fit_many (built-in models), as with gradfit fit
        return ({**fixed_values} if fixed_values else "guess"), fixed
    values = {n: fixed_values.get(n, init.get(n, per_fit.get(n))) for n in names}
    missing = [n for n, v in values.items() if v is None]
    if missing:
        raise ConfigError(f"no starting value for {', '.join(missing)}: pass --init {missing[0]}=VALUE, "
                          f"columns named {missing[0]}, or --init guess for a built-in model")
    return values, fixed


#: load_batch's key for a wide table's ids (not a fit_many keyword: the CLI sets them on the result)
WIDE_IDS = "wide_ids"


def load_batch(args, names: list[str]):
    """(the data keywords of fit_many, per-fit values {name: (K,)}) from the data file.

    The data keywords are x (M,) or (K, M) and y (K, M), or for a long table the table itself
    with its id, x and y column names (fit_many reshapes it and keeps the ids).
    """
    from ..data.tables import check_columns, per_fit_values, wide_to_batch

    path = Path(args.data)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        y = _read_npy(path)
        return {"x": _x_values(args.x_values, y.shape[1]), "y": y}, {}
    from ..data.io import numeric_columns, read_table

    columns = read_table(path)
    if suffix == ".npz" and "y" in columns:
        columns = numeric_columns(columns, [n for n in ("x", "y") if n in columns], source=str(path))
        y = columns["y"]
        if y.ndim != 2:
            raise DataError(f"{path}: array 'y' must be 2-D (fits, points), got shape {y.shape}")
        x = columns["x"] if "x" in columns else _x_values(args.x_values, y.shape[1])
        return {"x": x, "y": y}, {n: columns[f"init_{n}"] for n in names if f"init_{n}" in columns}
    if args.id_column and (args.x_cols or args.y_col):
        if not (args.x_cols and args.y_col):
            raise ConfigError("a long table needs --id-column, --x and --y (the fit, input and target columns)")
        if "," in args.x_cols:
            raise ConfigError(f"fit-many fits curves in one input: give one --x column, got {args.x_cols!r}")
        # checked here so that messages name the file
        check_columns(columns, {"id": args.id_column, "x": args.x_cols, "y": args.y_col}, source=str(path))
        # only the columns used must be numeric; ids keep their type (text, integers) for the output
        used = numeric_columns(columns, [args.x_cols, args.y_col, *(n for n in names if n in columns)],
                               source=str(path))
        table = {args.id_column: columns[args.id_column], args.x_cols: used[args.x_cols], args.y_col: used[args.y_col]}
        per_fit = per_fit_values({**used, args.id_column: columns[args.id_column]}, names, id=args.id_column,
                                 source=str(path))
        return {"data": table, "id": args.id_column, "x": args.x_cols, "y": args.y_col}, per_fit
    if args.x_cols or args.y_col:
        raise ConfigError("--x and --y name the columns of a long table: add --id-column COL, the column "
                          "naming each fit")
    import re

    numbered = re.compile(rf"^({re.escape(args.y_prefix)}|x_)\d+$")
    if args.id_column and not any(re.match(rf"^{re.escape(args.y_prefix)}\d+$", c) for c in columns):
        raise ConfigError(f"{path}: no {args.y_prefix}0.. columns: a long table needs --id-column, --x and --y (the fit, "
                          "input and target columns); a wide table, y_0.. columns and --id-column alone")
    x, y = wide_to_batch(numeric_columns(columns, [c for c in columns if numbered.match(c)], source=str(path)),
                         args.y_prefix, source=str(path))
    if x is None or args.x_values:
        x = _x_values(args.x_values, y.shape[1])
    batch = {"x": x, "y": y}
    if args.id_column:  # a wide table's fit ids (one row per fit), set on the result (run)
        check_columns(columns, {"id": args.id_column}, source=str(path))
        batch[WIDE_IDS] = columns[args.id_column]
    unused = [c for c in columns if not numbered.match(c) and c not in names and c != args.id_column]
    if unused:
        from ..errors import warn_user

        hint = "" if args.id_column else f"; name the fit ids with --id-column {unused[0]}"
        warn_user(f"{path}: column(s) {', '.join(unused)} not used (a wide table reads {args.y_prefix}0.., x_0.. and "
                  f"per-fit starting values named as parameters){hint}")
    return batch, per_fit_values(numeric_columns(columns, [n for n in names if n in columns], source=str(path)),
                                 names, source=str(path))


def _read_npy(path: Path):
    import numpy as np

    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        y = np.asarray(np.load(path, allow_pickle=False), dtype=float)
    except ValueError as exc:
        raise DataError(f"{path}: not a numeric .npy array ({exc})") from None
    if y.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array (fits, points), got shape {y.shape}")
    return y


def _x_values(text: str | None, n_points: int):
    """--x-values: 'START:STOP[:STEP]', 'V,V,...' or a .npy file of M values (default 0..M-1),
    shared by every fit."""
    import numpy as np

    if not text:
        return np.arange(n_points, dtype=float)
    if text.lower().endswith(".npy"):
        try:
            x = np.asarray(np.load(text, allow_pickle=False), dtype=float).reshape(-1)
        except (OSError, ValueError) as exc:
            raise DataError(f"--x-values {text!r}: cannot read it as a .npy array of numbers ({exc})") from None
    elif ":" in text:
        try:
            x = np.arange(*[float(p) for p in text.split(":")])
        except (ValueError, TypeError):
            raise ConfigError(f"--x-values {text!r}: expected START:STOP[:STEP]") from None
    else:
        try:
            x = np.array([float(v) for v in text.split(",")])
        except ValueError:
            raise ConfigError(f"--x-values {text!r}: expected numbers separated by commas") from None
    if len(x) != n_points:
        raise DataError(f"--x-values gives {len(x)} values but each fit has {n_points} points")
    return x
