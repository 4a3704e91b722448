"""``gradfit predict MODEL.json DATA``: the model's inputs and its predictions, as CSV."""

from __future__ import annotations

from .common import ExitStatus


def run_predict(args, stdout, stderr) -> ExitStatus:
    import gradfit as gf

    from ..data.io import csv_text, read_table, write_csv

    result = gf.load(args.model)
    columns = read_table(args.data)
    pred = result.predict(data=columns)
    out = {n: columns[n] for n in result.model.input_names}
    if pred.ndim == 1:
        out["prediction"] = pred
    else:
        out.update({f"prediction_{j}": pred[:, j] for j in range(pred.shape[1])})
    if args.out:
        write_csv(args.out, out)
        print(f"wrote {len(pred)} predictions to {args.out}", file=stdout)
    else:
        stdout.write(csv_text(out))
    return ExitStatus.OK
