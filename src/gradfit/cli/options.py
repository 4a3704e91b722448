"""Every option of the ``gradfit`` command, defined once, and the parser built from them.

``OPTIONS`` holds each flag's one definition: its spelling, syntax (metavar, type, choices) and
meaning. Commands compose named groups of flags, so ``--fix NAME[=VALUE]`` or ``--max-iter``
mean the same in ``fit``, ``fit-many`` and ``tune``. Where only the default differs between
commands (``--max-iter``, ``--tol``) or what is written (``--out``), the command fills the
``{default}`` / ``{what}`` slot of the shared help text. Values are parsed by the helpers in
:mod:`gradfit.cli.common`.

Only argparse is imported: building the parser is all ``gradfit --help`` does, and it must
stay instant.
"""

from __future__ import annotations

import argparse

__all__ = ["OPTIONS", "add_options", "build_parser"]

#: flag -> (extra option strings, argparse keywords). The help may hold ``{default}`` or ``{what}``,
#: which each command fills in.
OPTIONS: dict[str, tuple[tuple[str, ...], dict]] = {
    # data columns
    "--x": ((), dict(dest="x_cols", metavar="COL[,COL]",
                     help="input column(s): for built-in models and mlp, and for long tables in fit-many "
                          "(a formula 'y ~ ...' names its own inputs)")),
    "--y": ((), dict(dest="y_col", metavar="COL",
                     help="target column: for built-in models and mlp, and for long tables in fit-many")),
    # parameters
    "--init": ((), dict(metavar="NAME=V,...|guess",
                        help="starting values, e.g. w=1,b=0, or 'guess' for the model's data-driven guess. "
                             "fit guesses the names not given; in fit-many a data column named like a "
                             "parameter gives each fit its own starting value")),
    "--bounds": ((), dict(action="append", default=[], metavar="NAME=LO:HI",
                          help="bounds, e.g. --bounds w=0: --bounds b=-5:5 (empty side: no limit); repeatable")),
    "--fix": ((), dict(action="append", default=[], metavar="NAME[=VALUE]",
                       help="hold a parameter fixed at VALUE, or at its starting value; repeatable or "
                            "comma-separated")),
    "--tie": ((), dict(action="append", default=[], metavar="NAME=EXPR",
                       help="tie a parameter to others, e.g. --tie 'c=2*a'; repeatable")),
    "--shared": ((), dict(action="append", default=[], metavar="NAME[,NAME]",
                          help="fit-many: parameters that take one value for every fit (global fitting: one "
                               "joint least-squares problem); repeatable or comma-separated")),
    # model selection
    "--criterion": ((), dict(default="aicc", choices=["aicc", "aic", "bic"],
                             help="information criterion that ranks the candidates (default aicc)")),
    "--starts": ((), dict(type=int, default=None, metavar="K",
                          help="multistart: fit from K starts (the init or guess and a seeded Sobol design over the "
                               "bounds, log-spread where a bound is missing) in one batch; keep the best")),
    # weights
    "--sigma": ((), dict(metavar="COL", help="column of per-point standard deviations (weights 1/sigma^2)")),
    "--weights": ((), dict(metavar="COL", help="column of per-point weights (instead of --sigma)")),
    "--absolute-sigma": ((), dict(action="store_true",
                                  help="sigma is absolute: do not rescale the covariance by the reduced "
                                       "chi-square")),
    # solver
    "--tol": ((), dict(type=float, default=None,
                       help="convergence tolerance: a fit converges when a step changes the loss (chi-square) "
                            "by less than this relative amount (default: {default})")),
    "--max-iter": ((), dict(type=int, default=None, metavar="N",
                            help="solver iterations per fit (default: {default})")),
    "--dtype": ((), dict(default="float32", choices=["float32", "float64"],
                         help="floating-point precision (default float32)")),
    "--device": ((), dict(default="auto", help="auto, cpu or cuda (default auto)")),
    "--compile": ((), dict(default="auto", choices=["auto", "yes", "no"],
                           help="{what} (default auto: when it pays for itself; no: never)")),
    "--threads": ((), dict(type=int, default=None, metavar="N",
                           help="intra-op CPU threads while fitting (default: 1 for small problems, torch's "
                                "default otherwise); set it when other work shares the cores")),
    # training
    "--optimizer": ((), dict(default="auto",
                             help="auto (default: direct solve or Levenberg-Marquardt for least squares, adam "
                                  "otherwise), lm, linear, sgd, adam, adamw, rmsprop, adagrad, lbfgs, ...")),
    "--lr": ((), dict(type=float, default=1e-2, help="learning rate (default 0.01)")),
    "--epochs": ((), dict(type=int, default=1000, help="epochs of first-order training (default 1000)")),
    "--batch-size": ((), dict(type=int, default=None, help="minibatch size (default: full batch)")),
    "--loss": ((), dict(default="mse", help="mse, mae, huber, log_cosh, poisson (counts: maximum likelihood); "
                                            "fit-many: mse or poisson (default mse)")),
    "--momentum": ((), dict(type=float, default=None, help="momentum for sgd/rmsprop")),
    "--nesterov": ((), dict(action="store_true", help="Nesterov momentum for sgd")),
    "--opt": ((), dict(action="append", default=[], metavar="KEY=VALUE",
                       help="any other optimizer option, e.g. --opt weight_decay=1e-4 (repeatable)")),
    "--normalize": ((), dict(action="store_true", help="balance gradients (parameters keep their units)")),
    "--val-fraction": ((), dict(type=float, default=0.0, help="hold out this fraction for validation")),
    "--seed": ((), dict(type=int, default=0, help="random seed (default 0)")),
    "--gradient": ((), dict(default="autograd", choices=["autograd", "analytic"])),
    "--log-every": ((), dict(type=int, default=0, metavar="N", help="write the losses to stderr every N epochs")),
    "--nan-policy": ((), dict(default="raise", choices=["raise", "omit"],
                              help="rows with NaN/inf: raise an error (default) or omit them")),
    # generalization
    "--penalty": ((), dict(action="append", default=[], metavar="l2=C | l2:NAME=C",
                           help="l1/l2 penalty on all parameters (l2=1e-3) or one (l2:w=1e-3); repeatable")),
    "--input-noise": ((), dict(type=float, default=0.0, metavar="SIGMA",
                               help="noise on training inputs, relative to each input's std")),
    "--early-stopping": ((), dict(type=int, default=None, metavar="PATIENCE",
                                  help="stop when validation loss has not improved for PATIENCE epochs (needs "
                                       "--val-fraction)")),
    "--schedule": ((), dict(default=None, help="learning-rate schedule: step, exponential, cosine, plateau")),
    "--cv": ((), dict(type=int, default=None, metavar="K", help="also run K-fold cross-validation")),
    # neural networks
    "--hidden": ((), dict(default="64", metavar="N[,N]", help="mlp hidden sizes, e.g. 64,64 (default 64)")),
    "--activation": ((), dict(default="tanh", help="mlp activation (default tanh)")),
    # output
    "--out": ((), dict(default=None, help="write {what}")),
    "--report": ((), dict(default=None, metavar="FILE",
                          help="write a self-contained HTML report to FILE (plots, parameters, statistics, settings, "
                               "versions; inline images, no network references)")),
    "--plot": ((), dict(default=None, metavar="FILE",
                        help="fit-many: a PNG of parameter histograms (converged fits) and 9 example fits drawn "
                             "at random with their data")),
    "--json": ((), dict(action="store_true", help="print one JSON object instead of tables")),
    # data larger than memory
    "--stream": ((), dict(action="store_true", help="{what}")),
    "--val-key": ((), dict(default=None, metavar="COL",
                           help="with Parquet DATA: hold out --val-fraction of the rows by a stable hash of COL's "
                                "values (a key's rows all on one side; streams the data)")),
    "--no-shard-reads": ((), dict(action="store_true",
                                  help="under torchrun, every rank reads the whole stream (default: each rank reads "
                                       "only its share of the row groups)")),
    "--no-progress": ((), dict(action="store_true", help="no progress bar")),
}

#: named groups, in the order --help lists them
GROUPS = {
    "columns": ("--x", "--y"),
    "parameters": ("--init", "--bounds", "--fix", "--tie"),
    "weights": ("--sigma", "--weights", "--absolute-sigma"),
    "solver": ("--tol", "--max-iter", "--dtype", "--device", "--threads"),
    "training": ("--optimizer", "--lr", "--epochs", "--batch-size", "--loss", "--momentum", "--nesterov", "--opt",
                 "--normalize", "--val-fraction", "--seed", "--gradient", "--log-every", "--nan-policy"),
    "generalization": ("--penalty", "--input-noise", "--early-stopping", "--schedule", "--cv"),
    "neural network": ("--hidden", "--activation"),
    "output": ("--out", "--report", "--json", "--no-progress"),
}


def add_options(parser, flags, *, defaults: dict | None = None, what: str = "", metavar: dict | None = None) -> None:
    """Add ``flags`` from :data:`OPTIONS` to ``parser`` (or an argument group).

    ``defaults`` (flag -> text) and ``what`` fill the help's ``{default}`` and ``{what}`` slots;
    ``metavar`` overrides a flag's metavar (``--out DIR`` or ``--out FILE``). Anything else about
    a flag is the same everywhere.
    """
    for flag in flags:
        aliases, kwargs = OPTIONS[flag]
        kwargs = dict(kwargs)
        if "help" in kwargs:
            kwargs["help"] = kwargs["help"].format(default=(defaults or {}).get(flag, ""), what=what)
        if metavar and flag in metavar:
            kwargs["metavar"] = metavar[flag]
        parser.add_argument(*aliases, flag, **kwargs)


def _group(parser, name: str, *, skip=(), **fill) -> None:
    add_options(parser.add_argument_group(name), [f for f in GROUPS[name] if f not in skip], **fill)


def _add_estimation_options(p, *, out_what: str, max_iter: str, tol: str) -> None:
    """What fit and tune share: one fit's columns, parameters, weights, solver and training."""
    _group(p, "columns")
    _group(p, "parameters")
    _group(p, "weights")
    _group(p, "solver", defaults={"--tol": tol, "--max-iter": max_iter})
    _group(p, "training")
    _group(p, "generalization")
    _group(p, "neural network")
    _group(p, "output", what=out_what, metavar={"--out": "DIR"})


_FIT_MAX_ITER = "2000 Levenberg-Marquardt iterations; first-order training runs --epochs"
_FIT_TOL = "near float64 rounding for Levenberg-Marquardt; no test for first-order training"


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="guided walk-through of the thermometer calibration")
    add_options(p, ["--out"], what="the plots into DIR (default ./gradfit-demo)", metavar={"--out": "DIR"})


def _add_fit(sub) -> None:
    p = sub.add_parser("fit", help="fit a model to a data file")
    p.add_argument("data", help="CSV/TSV (header row), .npz, or .parquet (a file, a folder or a quoted glob)")
    p.add_argument("model", help="formula 'y ~ a*x + b', a built-in name (gaussian, poly:3, ...) or mlp")
    _add_estimation_options(p, out_what="model.json, history.csv, fit.png, loss.png (and checkpoints) into DIR",
                            max_iter=_FIT_MAX_ITER, tol=_FIT_TOL)
    add_options(p.add_argument_group("native kernel"), ["--compile"],
                what="Levenberg-Marquardt of a formula without bounds or ties as a native C kernel (built by the "
                     "system C compiler, cached on disk; yes: build it now)")
    add_options(p.add_argument_group("multistart"), ["--starts"])
    add_options(p.add_argument_group("data larger than memory"), ["--stream", "--val-key", "--no-shard-reads"],
                what="train on Parquet DATA (file, folder or glob) streamed in minibatches (needs --batch-size); "
                     "default: streamed when its used columns would take over a quarter of the free memory")
    ck = p.add_argument_group("checkpoints")
    ck.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                    help="with --out: save a checkpoint every N epochs (and every --checkpoint-seconds, and on "
                         "Ctrl-C/SIGTERM)")
    ck.add_argument("--checkpoint-seconds", type=float, default=60.0, metavar="S",
                    help="with --out: save a checkpoint every S seconds (default 60; 0 turns it off)")
    ck.add_argument("--resume", action="store_true",
                    help="continue the interrupted run whose checkpoint is in --out")


def _add_fit_many(sub) -> None:
    p = sub.add_parser("fit-many", help="many independent fits of one model (batched, CPU or GPU)")
    p.add_argument("data", help="CSV/Parquet with one row per fit (columns y_0..y_{M-1}), a long table with "
                                "--id-column, or .npy (fits x points) / .npz (y, optional x and init_<name>)")
    p.add_argument("model", help="formula in x (e.g. 'a*exp(-(x-c)**2/(2*w**2)) + o'), or a built-in name")
    layout = p.add_argument_group("table layout")
    layout.add_argument("--x-values", metavar="START:STOP[:STEP] | V,V,... | FILE.npy",
                        help="x shared by every fit: an arange, values, or a .npy file of them (default 0..M-1, "
                             "or x_0..x_{M-1} columns per fit)")
    layout.add_argument("--y-prefix", default="y_", help="prefix of the y columns in wide format (default y_)")
    layout.add_argument("--id-column", metavar="COL",
                        help="the column naming each fit: with --x and --y a long table (one row per point); "
                             "alone, a wide table's id column (its values name the fits in the output)")
    _group(p, "columns")
    _group(p, "parameters", skip=("--tie",))
    _group(p, "solver", defaults={"--tol": "1e-4", "--max-iter": "25 Levenberg-Marquardt iterations per fit; 200 joint "
                                                           "iterations with --shared"})
    add_options(p.add_argument_group("estimator"), ["--loss"])
    add_options(p.add_argument_group("global fitting"), ["--shared"])
    add_options(p.add_argument_group("multistart"), ["--starts", "--seed"])
    batching = p.add_argument_group("batching")
    batching.add_argument("--chunk-size", type=int, default=None, metavar="N", help="fits per batch on the device")
    add_options(batching, ["--stream"], what="read DATA (.npy memory map, wide .parquet file/folder/glob) and write "
                "--out (a folder of Parquet parts) a chunk at a time; a rerun resumes, skipping chunks written")
    batching.add_argument("--chunk-fits", type=int, default=100_000, metavar="N",
                          help="with --stream: fits read, fitted and written at a time (default 100000)")
    add_options(batching, ["--compile"], what="compile the fits: a native C kernel for formulas (cached on disk), "
                                               "else torch.compile; no: eager torch")
    _group(p, "output", what="the per-fit table to FILE (.csv, .npz or .parquet)", metavar={"--out": "FILE"})
    add_options(p.add_argument_group("plots"), ["--plot"])


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="fit candidate models to one data file and rank them by AICc, AIC or BIC")
    p.add_argument("data", help="CSV/TSV (header row), .npz or .parquet")
    p.add_argument("models", nargs="+", metavar="model",
                   help="candidate models: formulas 'y ~ a*exp(-k*x)' or built-in names (gaussian, poly:2, ...)")
    add_options(p.add_argument_group("selection"), ["--criterion"])
    _group(p, "columns")
    _group(p, "parameters", skip=("--tie",))
    _group(p, "weights")
    _group(p, "solver", defaults={"--tol": _FIT_TOL, "--max-iter": _FIT_MAX_ITER})
    add_options(p.add_argument_group("estimator"), ["--loss", "--nan-policy"])
    add_options(p.add_argument_group("multistart"), ["--starts"])
    add_options(p.add_argument_group("output"), ["--json", "--no-progress"])


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict with a saved model")
    p.add_argument("model", help="model.json written by 'gradfit fit --out'")
    p.add_argument("data", help="data file with the model's input columns")
    p.add_argument("-o", "--out", "--output", dest="out", metavar="FILE",
                   help="write the predictions to FILE (CSV) instead of stdout")


def _add_tune(sub) -> None:
    p = sub.add_parser("tune", help="search learning rate, optimizer, epochs, penalties ... with Optuna")
    p.add_argument("data", help="data file")
    p.add_argument("model", help="formula 'y ~ ...', built-in name or mlp")
    s = p.add_argument_group("search")
    s.add_argument("--space", action="append", default=[], metavar="NAME=SPEC",
                   help="lr=log:1e-4:1e-1, epochs=int:100:5000, momentum=float:0:0.99, optimizer=sgd,adam, "
                        "penalty.l2=log:1e-6:1e-1 (repeatable)")
    s.add_argument("--trials", type=int, default=50, help="trials to add to the study (default 50)")
    s.add_argument("--workers", type=int, default=1, help="parallel worker processes sharing the study")
    s.add_argument("--storage", help="Optuna storage: a journal file path or URL such as postgresql://...; "
                                     "default DIR/study.journal")
    s.add_argument("--study", help="study name (default gradfit); an existing study is resumed")
    s.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--max-total", type=int, default=None, help=argparse.SUPPRESS)
    _add_estimation_options(p, out_what="trials.csv, best.json and plots into DIR (default ./gradfit-tune)",
                            max_iter=_FIT_MAX_ITER, tol=_FIT_TOL)


def _add_gradcheck(sub) -> None:
    p = sub.add_parser("gradcheck", help="compare autograd, analytic and finite-difference gradients")
    p.add_argument("model", help="formula, e.g. 'w*x + b' or 't_c ~ w*t_u + b'")
    p.add_argument("data", help="data file")
    p.add_argument("--at", required=True, metavar="NAME=V,...", help="parameter values, e.g. w=1,b=0")
    add_options(p, ["--loss", "--dtype", "--x", "--y"])


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as ONE line on stderr (the CLI's promise for bad input)
    instead of the whole usage block; subcommand parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``gradfit`` parser with every command (argparse only: nothing heavy is imported)."""
    from .. import __version__

    parser = _Parser(
        prog="gradfit",
        description="Estimate model parameters from data: formulas, built-in curves and neural networks.",
        epilog="Run 'gradfit demo' for a guided tour on the thermometer example.",
    )
    parser.add_argument("--version", action="version", version=f"gradfit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_demo, _add_fit, _add_predict, _add_tune, _add_fit_many, _add_compare, _add_gradcheck):
        add(sub)
    return parser
