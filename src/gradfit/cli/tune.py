"""``gradfit tune DATA MODEL --space NAME=SPEC ...``: hyperparameter search with Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .common import ExitStatus, check_out_folder, fit_kwargs, library_output


def parse_space_args(items) -> dict:
    """lr=log:1e-4:1e-1, epochs=int:100:5000, momentum=float:0:0.99, optimizer=sgd,adam,
    hidden=8,32,32-32 (see :func:`gradfit.tuning.space.parse_space_text`)."""
    from ..tuning.space import parse_space_text

    return parse_space_text(items)


def _given(argv, flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv or ())


def run_tune(args, stdout, stderr) -> ExitStatus:
    from ..tuning import DEFAULT_VAL_FRACTION, check_study_space, open_study, prepare, tune, write_outputs
    from .fit import load_model_and_data

    space = parse_space_args(args.space)
    out = Path(args.out or "gradfit-tune")
    if not args.worker:
        check_out_folder(out)  # an unwritable --out fails now, not after every trial
    storage = args.storage or str(out / "study.journal")
    kwargs = fit_kwargs(args)
    kwargs.pop("progress", None)
    kwargs.pop("seed", None)
    if not _given(args.argv, "--val-fraction"):
        kwargs.pop("val_fraction", None)  # tune's default split for its metric val_loss
    model, x, y, columns = load_model_and_data(args.model, args.data, args.x_cols, args.y_col)
    # every check before any trial or worker runs: the space, each value it can draw, the study's space
    parsed, base = prepare(model, space, trials=args.trials, x=x, y=y, data=columns, **kwargs)
    if "://" not in storage:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
    check_study_space(open_study(args.study, storage, args.seed), parsed, f" in {storage}")
    split = None if "val_fraction" in kwargs else DEFAULT_VAL_FRACTION  # said in the summary
    if args.workers > 1 and not args.worker:
        study = open_study(args.study, storage, args.seed)
        target = len(study.get_trials(deepcopy=False)) + args.trials
        shares = [args.trials // args.workers + (1 if i < args.trials % args.workers else 0)
                  for i in range(args.workers)]
        procs = []
        for i, n in enumerate(shares):
            if n == 0:
                continue
            cmd = [sys.executable, "-m", "gradfit", *_worker_argv(args.argv, n, storage), "--max-total", str(target),
                   "--seed", str(args.seed + 1000 * (i + 1))]  # each worker's sampler explores differently
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                          env=dict(os.environ)))
        failed = [p for p in procs if p.wait() != 0]
        for p in failed:
            print(f"gradfit tune: a worker exited with {p.returncode}: {p.stderr.read().strip()[-300:]}", file=stderr)
        study = open_study(args.study, storage, args.seed)
        write_outputs(study, out)
        return _report(study, out, stdout, args.json, split)
    del parsed, base  # tune() checks again (it is the API; the checks are cheap)
    with library_output("tune", stderr):
        tune(model, x, y, data=columns, space=space, trials=args.trials, storage=storage, study=args.study,
             seed=args.seed, max_total=args.max_total, **kwargs)
    study = open_study(args.study, storage, args.seed)
    if args.worker:
        return ExitStatus.OK
    write_outputs(study, out)
    return _report(study, out, stdout, args.json, split)


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


def _report(study, out: Path, stdout, as_json: bool, default_split: float | None = None) -> ExitStatus:
    """Print the study's summary; FIT_FAILED when no trial completed. ``default_split``: the
    validation share tune chose because --val-fraction was not given (said in the summary)."""
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
    return ExitStatus.OK if complete else ExitStatus.FIT_FAILED
