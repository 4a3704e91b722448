"""``gradfit gradcheck FORMULA DATA --at w=1,b=0``: autograd vs analytic vs finite differences."""

from __future__ import annotations

from .common import ExitStatus, library_output, parse_assignments, print_table
from .fit import load_model_and_data

#: relative disagreement above which gradcheck fails (exit FIT_FAILED, 3): loose enough for float32
#: round-off, tight enough to catch a wrong derivative
TOLERANCE = {"float32": 1e-3, "float64": 1e-6}


def run_gradcheck(args, stdout, stderr) -> ExitStatus:
    import gradfit as gf

    at = parse_assignments(args.at, "--at")
    model, x, y, columns = load_model_and_data(args.model, args.data, args.x_cols, args.y_col)
    common = dict(x=x, y=y, data=columns, params=at, loss=args.loss)
    with library_output("gradcheck", stderr):
        auto = gf.gradient(model, method="autograd", dtype=args.dtype, **common)
        analytic = gf.gradient(model, method="analytic", dtype=args.dtype, **common)
        finite = gf.gradient(model, method="finite", **common)
    worst = 0.0
    rows = []
    for name in auto:
        scale = max(abs(finite[name]), 1e-12)
        err = max(abs(auto[name] - finite[name]), abs(analytic[name] - finite[name])) / scale
        worst = max(worst, err if abs(finite[name]) > 1e-12 else 0.0)
        rows.append([name, f"{auto[name]:.8g}", f"{analytic[name]:.8g}", f"{finite[name]:.8g}", f"{err:.1e}"])
    print_table(stdout, f"d(loss)/d(parameter) at {args.at}  (loss {args.loss}, {args.dtype})",
                ["parameter", "autograd", "analytic", "finite diff", "rel. error"], rows)
    ok = worst <= TOLERANCE[args.dtype]
    print(f"{'OK' if ok else 'MISMATCH'}: largest relative difference {worst:.1e} "
          f"(tolerance {TOLERANCE[args.dtype]:.0e})", file=stdout)
    return ExitStatus.OK if ok else ExitStatus.FIT_FAILED
