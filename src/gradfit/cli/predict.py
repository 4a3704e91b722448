"""``gradfit predict MODEL.json DATA``."""

from __future__ import annotations

import sys


def run_predict(args, stdout, stderr) -> int:
    import numpy as np

    import gradfit as gf

    from ..data.io import read_table, write_csv

    result = gf.load(args.model)
    columns = read_table(args.data)
    pred = result.predict(data=columns)
    names = list(result.model.input_names)
    out = {n: columns[n] for n in names}
    if pred.ndim == 1:
        out["prediction"] = pred
    else:
        out.update({f"prediction_{j}": pred[:, j] for j in range(pred.shape[1])})
    if args.output:
        write_csv(args.output, out)
        print(f"wrote {len(pred)} predictions to {args.output}", file=stdout)
        return 0
    import io

    from ..data import io as dio

    buf = io.StringIO()
    keys = list(out)
    buf.write(",".join(keys) + "\n")
    for i in range(len(pred)):
        buf.write(",".join(dio._fmt(np.asarray(out[k])[i]) for k in keys) + "\n")
    (stdout or sys.stdout).write(buf.getvalue())
    return 0
