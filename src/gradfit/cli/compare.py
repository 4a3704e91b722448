"""``gradfit compare DATA MODEL MODEL ...``: fit each candidate, print them ranked by AICc/AIC/BIC."""

from __future__ import annotations

import json
import math

from .common import ExitStatus, library_output, parse_bounds, parse_fixed, parse_init, print_table


def run_compare(args, stdout, stderr) -> ExitStatus:
    """Read the data as ``gradfit fit`` does (per candidate, the same columns), call
    :func:`gradfit.compare`, and print one line per candidate; exit 3 when none converged."""
    import gradfit as gf

    from .fit import load_model_and_data, weight_columns, weight_keywords

    y_col = args.y_col or _response(args.models)
    columns, x, y = {}, None, y_col
    for text in args.models:
        extra = (*weight_columns(args), *((y_col,) if y_col else ()))  # the response, also where a formula names none
        _, cx, cy, used = load_model_and_data(text, args.data, args.x_cols, y_col, extra=extra)
        columns.update(used)
        x, y = x or cx, y or cy
    kwargs = _fit_kwargs(args)
    kwargs.update(weight_keywords(args, columns))
    with library_output("compare", stderr):
        comparison = gf.compare(list(args.models), x=x, y=y, data=columns, criterion=args.criterion, **kwargs)
    rows = comparison.rows()
    if args.json:
        doc = {"criterion": comparison.criterion, "best": comparison.best_label,
               "models": [{k: _json(v) for k, v in row.items()} for row in rows],
               "params": {label: {k: _json(v) for k, v in r.params.items()} for label, r in comparison.results.items()},
               "errors": comparison.errors}
        print(json.dumps(doc), file=stdout)
    else:
        head = ["model", "k", "n", "deviance" if comparison.loss == "poisson" else "chisqr", "aic", "aicc", "bic",
                f"delta {comparison.criterion}", "weight", "status"]
        body = [[row["model"], _cell(row["k"], "d"), _cell(row["n"], "d"), _cell(row["chisqr"]), _cell(row["aic"]),
                 _cell(row["aicc"]), _cell(row["bic"]), _cell(row["delta"], ".3f"), _cell(row["weight"], ".3f"),
                 row["status"]] for row in rows]
        print_table(stdout, f"model comparison by {comparison.criterion.upper()}", head, body)
        if comparison.best_label is not None:
            best = comparison.best
            params = ", ".join(f"{k}={v:.6g}" for k, v in best.params.items())
            print(f"best: {comparison.best_label}  ({params})", file=stdout)
    for label, message in comparison.errors.items():
        print(f"gradfit compare: {label}: {message}", file=stderr)
    if comparison.best_label is None:
        print("gradfit compare: no candidate model converged (exit 3); try other starting values (--init)",
              file=stderr)
        return ExitStatus.FIT_FAILED
    return ExitStatus.OK


def _response(models) -> str | None:
    """The response column a 'y ~ ...' candidate names, so built-in candidates fit the same y."""
    for text in models:
        if "~" in text:
            lhs = text.split("~", 1)[0].strip()
            if lhs.isidentifier():
                return lhs
    return None


def _fit_kwargs(args) -> dict:
    init = parse_init(args.init)
    fixed, fixed_values = parse_fixed(args.fix)
    init = {**({} if init == "guess" else init), **fixed_values}
    return dict(init=init or None, bounds=parse_bounds(args.bounds) or None, fixed=fixed,
                absolute_sigma=args.absolute_sigma, tol=args.tol, max_iter=args.max_iter, dtype=args.dtype,
                device=args.device, threads=args.threads, loss=args.loss, nan_policy=args.nan_policy,
                starts=args.starts, progress=False if args.no_progress or args.json else None)


def _json(v):
    """Strict JSON: NaN and inf (failed fits, AICc without room) become null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _cell(v, fmt: str = ".6g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(int(v), "d") if fmt == "d" else format(v, fmt)
