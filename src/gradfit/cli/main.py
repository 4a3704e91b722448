"""The ``gradfit`` command: parse arguments, call the API, format the answer.

``main(argv) -> int`` never raises for user errors: GradfitError -> one line on stderr and
exit 2; a diverged fit -> exit 3. Only argparse and the standard library are imported at
start-up, so ``gradfit --help`` is instant; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import sys
from enum import IntEnum

__all__ = ["main", "entry", "ExitStatus"]


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # an unexpected internal error (a bug): traceback shown
    USAGE = 2  # bad usage or input
    FIT_FAILED = 3  # the fit ran but diverged
    INTERRUPTED = 130


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--init", metavar="NAME=V,...", help="starting values, e.g. w=1,b=0")
    g.add_argument("--optimizer", default="auto",
                   help="auto (default: direct solve or Levenberg-Marquardt for least squares, adam otherwise), "
                        "lm, linear, sgd, adam, adamw, rmsprop, adagrad, lbfgs, ...")
    g.add_argument("--lr", type=float, default=1e-2, help="learning rate (default 0.01)")
    g.add_argument("--epochs", type=int, default=1000, help="epochs (default 1000)")
    g.add_argument("--batch-size", type=int, default=None, help="minibatch size (default: full batch)")
    g.add_argument("--loss", default="mse", help="mse, mae, huber, log_cosh (default mse)")
    g.add_argument("--momentum", type=float, default=None, help="momentum for sgd/rmsprop")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for sgd")
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other optimizer option, e.g. --opt weight_decay=1e-4 (repeatable)")
    g.add_argument("--normalize", action="store_true", help="balance gradients (parameters keep their units)")
    g.add_argument("--val-fraction", type=float, default=0.0, help="hold out this fraction for validation")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--gradient", default="autograd", choices=["autograd", "analytic"])
    g.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument("--tol", type=float, default=None, help="stop when the relative loss change stays below this")
    g.add_argument("--max-iter", type=int, default=None, help="Levenberg-Marquardt iterations (default 2000)")
    g.add_argument("--log-every", type=int, default=0, metavar="N", help="print the losses every N epochs")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--nan-policy", default="raise", choices=["raise", "omit"],
                   help="rows with NaN/inf: raise an error (default) or omit them")
    gen = p.add_argument_group("generalization")
    gen.add_argument("--penalty", action="append", default=[], metavar="l2=C | l2:NAME=C",
                     help="l1/l2 penalty on all parameters (l2=1e-3) or one (l2:w=1e-3); repeatable")
    gen.add_argument("--input-noise", type=float, default=0.0, metavar="SIGMA",
                     help="noise on training inputs, relative to each input's std")
    gen.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                     help="stop when validation loss has not improved for PATIENCE epochs (needs --val-fraction)")
    gen.add_argument("--schedule", default=None, help="learning-rate schedule: step, exponential, cosine, plateau")
    gen.add_argument("--cv", type=int, default=None, metavar="K", help="also run K-fold cross-validation")
    ls = p.add_argument_group("parameters and weights")
    ls.add_argument("--bounds", action="append", default=[], metavar="NAME=LO:HI",
                    help="bounds, e.g. --bounds w=0: --bounds b=-5:5 (empty side: no limit)")
    ls.add_argument("--fix", action="append", default=[], metavar="NAME[=VALUE]",
                    help="hold a parameter fixed (at VALUE or its init); repeatable or comma-separated")
    ls.add_argument("--tie", action="append", default=[], metavar="NAME=EXPR",
                    help="tie a parameter to others, e.g. --tie 'c=2*a'")
    ls.add_argument("--sigma", metavar="COL", help="column of per-point standard deviations (weights 1/sigma^2)")
    ls.add_argument("--absolute-sigma", action="store_true",
                    help="sigma is absolute: do not rescale the covariance by the reduced chi-square")
    m = p.add_argument_group("model")
    m.add_argument("--x", dest="x_cols", metavar="COL[,COL]", help="input column(s) for built-in models and mlp")
    m.add_argument("--y", dest="y_col", metavar="COL", help="target column for built-in models and mlp")
    m.add_argument("--hidden", default="64", help="mlp hidden sizes, e.g. 64,64 (default 64)")
    m.add_argument("--activation", default="tanh", help="mlp activation (default tanh)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="gradfit",
        description="Estimate model parameters from data: formulas, built-in curves and neural networks.",
        epilog="Run 'gradfit demo' for a guided tour on the thermometer example.",
    )
    parser.add_argument("--version", action="version", version=f"gradfit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="guided walk-through of the thermometer calibration")
    demo.add_argument("--out", default=None, metavar="DIR", help="write the plots here (default ./gradfit-demo)")

    fit = sub.add_parser("fit", help="fit a model to a data file")
    fit.add_argument("data", help="CSV/TSV (header row), .npz or .parquet")
    fit.add_argument("model", help="formula 'y ~ a*x + b', a built-in name (gaussian, poly:3, ...) or mlp")
    fit.add_argument("--out", metavar="DIR", help="write model.json, history.csv, fit.png, loss.png")
    fit.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    fit.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                     help="with --out: save a checkpoint every N epochs (and every --checkpoint-seconds, and on "
                          "Ctrl-C/SIGTERM)")
    fit.add_argument("--checkpoint-seconds", type=float, default=60.0, metavar="S",
                     help="with --out: save a checkpoint every S seconds (default 60; 0 turns it off)")
    fit.add_argument("--resume", action="store_true", help="continue the interrupted run whose checkpoint is in --out")
    _add_fit_options(fit)

    pred = sub.add_parser("predict", help="predict with a saved model")
    pred.add_argument("model", help="model.json written by 'gradfit fit --out'")
    pred.add_argument("data", help="data file with the model's input columns")
    pred.add_argument("-o", "--output", metavar="OUT.csv", help="write here instead of stdout")

    tu = sub.add_parser("tune", help="search learning rate, optimizer, epochs, penalties ... with Optuna")
    tu.add_argument("data", help="data file")
    tu.add_argument("model", help="formula 'y ~ ...', built-in name or mlp")
    tu.add_argument("--space", action="append", default=[], metavar="NAME=SPEC",
                    help="lr=log:1e-4:1e-1, epochs=int:100:5000, momentum=float:0:0.99, optimizer=sgd,adam, "
                         "penalty.l2=log:1e-6:1e-1 (repeatable)")
    tu.add_argument("--trials", type=int, default=50, help="trials to add to the study (default 50)")
    tu.add_argument("--workers", type=int, default=1, help="parallel worker processes sharing the study")
    tu.add_argument("--storage", help="Optuna storage: a journal file path or URL such as postgresql://...; "
                                      "default DIR/study.journal")
    tu.add_argument("--study", help="study name (default gradfit); an existing study is resumed")
    tu.add_argument("--out", metavar="DIR", help="trials.csv, best.json and plots (default ./gradfit-tune)")
    tu.add_argument("--json", action="store_true", help="print a JSON summary")
    tu.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    tu.add_argument("--max-total", type=int, default=None, help=argparse.SUPPRESS)
    _add_fit_options(tu)

    from .fit_many import add_parser as add_fit_many

    add_fit_many(sub)

    gc = sub.add_parser("gradcheck", help="compare autograd, analytic and finite-difference gradients")
    gc.add_argument("model", help="formula, e.g. 'w*x + b' or 't_c ~ w*t_u + b'")
    gc.add_argument("data", help="data file")
    gc.add_argument("--at", required=True, metavar="NAME=V,...", help="parameter values, e.g. w=1,b=0")
    gc.add_argument("--loss", default="mse")
    gc.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    gc.add_argument("--x", dest="x_cols", metavar="COL")
    gc.add_argument("--y", dest="y_col", metavar="COL")
    return parser


def main(argv=None, stdout=None, stderr=None) -> int:
    """Run the CLI; returns the exit status instead of exiting (tests call this directly)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(stdout)
        return ExitStatus.OK
    from ..errors import GradfitError

    try:
        if args.command == "demo":
            from .demo import run_demo as run
        elif args.command == "fit":
            from .fit import run_fit as run
        elif args.command == "predict":
            from .predict import run_predict as run
        elif args.command == "fit-many":
            from .fit_many import run_fit_many as run
        elif args.command == "tune":
            from .tune import run_tune as run
        else:
            from .gradcheck import run_gradcheck as run
        return int(run(args, stdout, stderr))
    except GradfitError as exc:
        message = " ".join(str(exc).split())
        print(f"gradfit {args.command}: error: {message}", file=stderr)
        return ExitStatus.USAGE
    except OSError as exc:  # e.g. --out in a read-only folder
        print(f"gradfit {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=stderr)
        return ExitStatus.USAGE
    except KeyboardInterrupt:
        print("gradfit: interrupted", file=stderr)
        return ExitStatus.INTERRUPTED


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
