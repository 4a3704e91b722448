"""``gradfit fit-many DATA MODEL``: one fit per row (wide) or per id (long format)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import ConfigError, DataError
from .common import parse_assignments, parse_bounds

# numpy is imported inside the functions: this module's add_parser runs for every
# `gradfit` invocation, --help included, which must stay instant.


def add_parser(sub) -> None:
    p = sub.add_parser("fit-many", help="many independent fits of one model (batched, CPU or GPU)")
    p.add_argument("data", help="CSV/Parquet with one row per fit (columns y_0..y_{M-1}), a long table with "
                                "--id-column, or .npy (fits x points) / .npz (y, optional x and init_<name>)")
    p.add_argument("model", help="formula in x (e.g. 'a*exp(-(x-c)**2/(2*w**2)) + o'), or a built-in name")
    p.add_argument("--x-values", metavar="START:STOP[:STEP] | V,V,...",
                   help="x shared by every fit (default 0..M-1, or x_0..x_{M-1} columns per fit)")
    p.add_argument("--y-prefix", default="y_", help="prefix of the y columns in wide format (default y_)")
    p.add_argument("--id-column", metavar="COL", help="long format: the column naming each fit")
    p.add_argument("--x", dest="x_col", metavar="COL", help="long format: the x column")
    p.add_argument("--y", dest="y_col", metavar="COL", help="long format: the y column")
    p.add_argument("--init", metavar="NAME=V,...|guess",
                   help="starting values (constants; columns named like parameters give per-fit values); "
                        "'guess' for built-in models")
    p.add_argument("--bounds", action="append", default=[], metavar="NAME=LO:HI")
    p.add_argument("--fix", action="append", default=[], metavar="NAME")
    p.add_argument("--tol", type=float, default=None, help="convergence: |d chi2| < tol*max(1, chi2) (default 1e-4)")
    p.add_argument("--max-iter", type=int, default=None, help="iterations per fit (default 25)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="auto")
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--compile", default="auto", choices=["auto", "yes", "no"])
    p.add_argument("--out", metavar="FILE", help="write the per-fit table (.csv, .npz or .parquet)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--no-progress", action="store_true")


def _x_values(text: str | None, n_points: int):
    import numpy as np

    if not text:
        return np.arange(n_points, dtype=float)
    if ":" in text:
        parts = text.split(":")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise ConfigError(f"--x-values {text!r}: expected START:STOP[:STEP]") from None
        x = np.arange(*nums)
    else:
        try:
            x = np.array([float(v) for v in text.split(",")])
        except ValueError:
            raise ConfigError(f"--x-values {text!r}: expected numbers separated by commas") from None
    if len(x) != n_points:
        raise DataError(f"--x-values gives {len(x)} values but each fit has {n_points} points")
    return x


def _numbered(columns: dict, prefix: str) -> list[str]:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)$")
    found = sorted(((int(m.group(1)), k) for k in columns if (m := pattern.match(k))))
    return [k for _, k in found]


def load_batch(args):
    """-> (x, y, columns or None) from the data file."""
    import numpy as np

    path = Path(args.data)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if not path.exists():
            raise DataError(f"{path}: no such file")
        try:
            y = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DataError(f"{path}: not a numeric .npy array ({exc})") from None
        y = np.asarray(y, dtype=float)
        if y.ndim != 2:
            raise DataError(f"{path}: expected a 2-D array (fits, points), got shape {y.shape}")
        return _x_values(args.x_values, y.shape[1]), y, {}
    from ..data.io import read_table

    columns = read_table(path)
    if suffix == ".npz" and "y" in columns:
        y = columns["y"]
        if y.ndim != 2:
            raise DataError(f"{path}: array 'y' must be 2-D (fits, points), got shape {y.shape}")
        x = columns["x"] if "x" in columns else _x_values(args.x_values, y.shape[1])
        init = {k[5:]: v for k, v in columns.items() if k.startswith("init_")}
        return x, y, init
    if args.id_column:
        return _long_format(columns, args, path)
    ycols = _numbered(columns, args.y_prefix)
    if not ycols:
        raise DataError(f"{path}: no columns {args.y_prefix}0, {args.y_prefix}1, ...; use --y-prefix, or "
                        "--id-column/--x/--y for a long table")
    y = np.column_stack([columns[c] for c in ycols])
    xcols = _numbered(columns, "x_")
    if xcols and not args.x_values:
        if len(xcols) != len(ycols):
            raise DataError(f"{path}: {len(xcols)} x_ columns but {len(ycols)} y columns")
        x = np.column_stack([columns[c] for c in xcols])
    else:
        x = _x_values(args.x_values, y.shape[1])
    return x, y, columns


def _long_format(columns: dict, args, path):
    import numpy as np

    from ..errors import did_you_mean

    for flag, col in (("--id-column", args.id_column), ("--x", args.x_col), ("--y", args.y_col)):
        if not col:
            raise ConfigError(f"long format needs --id-column, --x and --y (missing {flag})")
        if col not in columns:
            raise DataError(f"{path}: no column {col!r} for {flag}{did_you_mean(col, columns)}")
    ids, xs, ys = columns[args.id_column], columns[args.x_col], columns[args.y_col]
    keys, inverse = np.unique(ids, return_inverse=True)
    counts = np.bincount(inverse)
    width = int(counts.max())
    x = np.full((len(keys), width), np.nan)
    y = np.full((len(keys), width), np.nan)
    fill = np.zeros(len(keys), dtype=int)
    for i, k in enumerate(inverse):
        x[k, fill[k]], y[k, fill[k]] = xs[i], ys[i]
        fill[k] += 1
    # padded x positions get the row's last x so the model stays finite there (y is NaN: masked)
    last = x[np.arange(len(keys)), counts - 1]
    x = np.where(np.isnan(x), last[:, None], x)
    return x, y, {}


def run_fit_many(args, stdout, stderr) -> int:
    import numpy as np

    import gradfit as gf
    from gradfit.models import resolve_model

    x, y, columns = load_batch(args)
    model = resolve_model(args.model)
    init_text = (args.init or "").strip()
    if init_text == "guess":
        init = "guess"
    else:
        names = model.bind(["x"]).param_names if hasattr(model, "bind") else model.param_names
        constants = parse_assignments(init_text, "--init")
        per_fit = {n: np.asarray(columns[n], dtype=float) for n in names if n in columns}
        init = {n: constants.get(n, per_fit.get(n)) for n in names}
        missing = [n for n, v in init.items() if v is None]
        if missing:
            raise ConfigError(f"no starting value for {', '.join(missing)}: pass --init {missing[0]}=VALUE, "
                              f"columns named {missing[0]}, or --init guess for a built-in model")
    fixed = [n.strip() for item in args.fix for n in item.split(",") if n.strip()]
    result = gf.fit_many(args.model, x, y, init=init, bounds=parse_bounds(args.bounds) or None, fixed=fixed or None,
                         tol=args.tol, max_iter=args.max_iter, dtype=args.dtype, device=args.device,
                         chunk_size=args.chunk_size, compile={"yes": True, "no": False}.get(args.compile, "auto"),
                         progress=False if args.no_progress or args.json else None)
    if args.out:
        result.save(args.out)
    if args.json:
        counts = {result.status_names[int(k)]: int(v) for k, v in zip(*np.unique(result.status, return_counts=True))}
        doc = {"fits": len(result), "status": counts, "converged_fraction": float(result.converged.mean()),
               "fits_per_s": result.timings.get("fits_per_s"), "warmup_s": result.timings.get("warmup_s"),
               "device": result.timings.get("device"), "out": args.out}
        print(json.dumps(doc), file=stdout)
    else:
        print(result.summary(), file=stdout)
        if args.out:
            print(f"wrote {len(result)} rows to {args.out}", file=stdout)
    return 0
