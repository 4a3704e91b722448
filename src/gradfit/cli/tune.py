"""``gradfit tune DATA MODEL --space NAME=SPEC ...``: hyperparameter search with Optuna."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from .common import ExitStatus, StopSignals, check_out_file, check_out_folder, fit_kwargs, library_output


def parse_space_args(items) -> dict:
    """lr=log:1e-4:1e-1, epochs=int:100:5000, momentum=float:0:0.99, optimizer=sgd,adam,
    hidden=8,32,32-32 (see :func:`gradfit.tuning.space.parse_space_text`)."""
    from ..tuning.space import parse_space_text

    return parse_space_text(items)


def _given(argv, flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv or ())


def run_tune(args, stdout, stderr) -> ExitStatus:
    from ..errors import require

    require("optuna", extra="tune", feature="gradfit tune")  # before the data is read or a worker started
    from ..tuning import (DEFAULT_VAL_FRACTION, SearchInterrupted, check_study_space, open_study, prepare, run_trials,
                          write_outputs)
    from ..tuning.study import fail_dead_trials
    from .fit import load_model_and_data, weight_columns, weight_keywords

    space = parse_space_args(args.space)
    out = Path(args.out or "gradfit-tune")
    if not args.worker:
        check_out_folder(out)  # an unwritable --out fails now, not after every trial
        if args.report:
            check_out_file(args.report, "--report")
    storage = args.storage or str(out / "study.journal")
    kwargs = fit_kwargs(args)
    progress = kwargs.pop("progress", None)  # None: on a terminal; the trials' own fits draw none
    kwargs.pop("seed", None)
    if not _given(args.argv, "--val-fraction"):
        kwargs.pop("val_fraction", None)  # tune's default split for its metric val_loss
    model, x, y, columns = load_model_and_data(args.model, args.data, args.x_cols, args.y_col,
                                               extra=weight_columns(args))
    kwargs.update(weight_keywords(args, columns))  # every trial fits with the same weights
    # every check before any trial or worker runs: the space, each value it can draw, the study's space
    parsed, base = prepare(model, space, trials=args.trials, x=x, y=y, data=columns, **kwargs)
    if "://" not in storage:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
    check_study_space(open_study(args.study, storage, args.seed), parsed, f" in {storage}")
    split = None if "val_fraction" in kwargs else DEFAULT_VAL_FRACTION  # said in the summary
    if args.workers > 1 and not args.worker:
        return _run_workers(args, storage, progress, out, stdout, stderr, split)
    del parsed, base  # run_trials() checks again (it is the API; the checks are cheap)
    # a second signal aborts, except in a worker: its supervisor forwards a copy of a
    # terminal's Ctrl-C and kills it if it must; the running trial ends at its fit's next epoch
    # or iteration (raising from the handler could land inside Optuna's bookkeeping)
    stop = StopSignals(abort_on_second=not args.worker)
    try:
        with library_output("tune", stderr), stop:
            run_trials(model, x, y, data=columns, space=space, trials=args.trials, storage=storage,
                       study=args.study, seed=args.seed, max_total=args.max_total, progress=progress, stop=stop,
                       **kwargs)
    except SearchInterrupted:
        pass
    signum = stop.signum
    study = open_study(args.study, storage, args.seed)
    if signum is not None:  # a signal outside a trial's fit may have left it running
        fail_dead_trials(study, [os.getpid()], f"was stopped by {signal.Signals(signum).name}")
    if args.worker:
        return ExitStatus.OK if signum is None else ExitStatus.from_signal(signum)
    write_outputs(study, out)
    code = _report(study, out, stdout, stderr, args.json, split, signum)
    _html_report(args, study, stdout)
    return code


def _run_workers(args, storage: str, progress, out: Path, stdout, stderr, split) -> ExitStatus:
    """``--workers N``: N worker processes on the shared storage, supervised (see
    :mod:`gradfit.tuning.workers`); the outputs are written from the study they leave."""
    from ..errors import ConfigError
    from ..tuning import open_study, write_outputs
    from ..tuning.progress import TrialProgress
    from ..tuning.study import failed_trials_warning
    from ..tuning.workers import run_workers

    study = open_study(args.study, storage, args.seed)
    before = {t.number for t in study.get_trials(deepcopy=False)}

    def command(n: int, index: int, goal: int) -> list:
        return [sys.executable, "-m", "gradfit", *_worker_argv(args.argv, n, storage), "--max-total", str(goal),
                "--seed", str(args.seed + 1000 * (index + 1))]  # each worker's sampler explores differently

    shown = progress if progress is not None else getattr(stderr, "isatty", lambda: False)()
    bar = TrialProgress(args.trials, stream=stderr) if shown else None
    outcome = run_workers(study, command, args.trials, args.workers, progress=bar)
    if outcome.setting_error:
        raise ConfigError(outcome.setting_error)
    for line in outcome.errors:
        print(f"gradfit tune: {line}", file=stderr)
    warning = failed_trials_warning(study, before) if outcome.signum is None else None  # stopped: said below
    if warning:
        print(f"gradfit tune: warning: {warning}", file=stderr)
    write_outputs(study, out)
    code = _report(study, out, stdout, stderr, args.json, split, outcome.signum)
    _html_report(args, study, stdout)
    return code


def _html_report(args, study, stdout) -> None:
    """--report FILE: the study's best trial, trial table and plots as one HTML file."""
    if not args.report:
        return
    from ..results.html_report import tune_report, write_report
    from ..tuning import shown_options
    from ..tuning.study import trial_rows

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = (study.best_params, study.best_value) if complete else ({}, None)
    options = fit_kwargs(args)
    options.pop("progress", None)
    if not _given(args.argv, "--val-fraction"):
        options.pop("val_fraction", None)  # tune's default split, said in the summary
    settings = {"data": args.data, "model": args.model, "space": args.space, "metric": "val_loss",
                "study": study.study_name, "storage": args.storage, "fit options": shown_options(options)}
    write_report(args.report, tune_report(*best, trial_rows(study), study=study, settings=settings))
    if not args.json:
        print(f"wrote {Path(args.report)}", file=stdout)


def _worker_argv(argv: list, n: int, storage: str) -> list:
    """The same command for one worker: its share of trials, one process, the shared storage."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--trials", "--workers", "--storage", "--seed"):
            skip = True
            continue
        if a.startswith(("--trials=", "--workers=", "--storage=", "--seed=")):
            continue
        out.append(a)
    return [*out, "--trials", str(n), "--workers", "1", "--storage", storage, "--worker"]


def _report(study, out: Path, stdout, stderr, as_json: bool, default_split: float | None = None,
            signum: int | None = None) -> ExitStatus:
    """Print the study's summary; FIT_FAILED when no trial completed, 130/143 when ``signum``
    stopped the search. ``default_split``: the validation share tune chose because
    --val-fraction was not given (said in the summary)."""
    trials = study.get_trials(deepcopy=False)
    counts: dict = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    doc = {"study": study.study_name, "trials": len(trials), "states": counts, "out": str(out)}
    if default_split is not None:
        doc["val_fraction"] = default_split
    if complete:
        doc.update(best_value=study.best_value, best_params=study.best_params)
    if signum is not None:
        doc["interrupted"] = signal.Signals(signum).name
    if as_json:
        print(json.dumps(doc), file=stdout)
    else:
        states = ", ".join(f"{v} {k.lower()}" for k, v in counts.items())
        print(f"study {study.study_name}: {len(trials)} trials ({states})", file=stdout)
        if default_split is not None:
            print(f"metric val_loss on a validation split of {default_split:g} of the rows (the default; "
                  f"set --val-fraction)", file=stdout)
        if complete:
            best = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in study.best_params.items())
            print(f"best value {study.best_value:.6g} with {best}", file=stdout)
        files = [p.name for p in (out / "trials.csv", out / "best.json", out / "history.png", out / "importance.png")
                 if p.exists()]
        print(f"wrote {', '.join(files)} in {out}", file=stdout)
    if signum is not None:
        print(f"gradfit tune: interrupted by {signal.Signals(signum).name}; the outputs hold the trials that "
              f"finished; run the command again to add --trials more", file=stderr)
        return ExitStatus.from_signal(signum)
    return ExitStatus.OK if complete else ExitStatus.FIT_FAILED
