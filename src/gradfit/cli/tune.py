"""``gradfit tune DATA MODEL --space NAME=SPEC ...``: hyperparameter search with Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..errors import ConfigError
from .common import ExitStatus, fit_kwargs, library_output, parse_value


def parse_space_args(items) -> dict:
    """lr=log:1e-4:1e-1, epochs=int:100:5000, momentum=float:0:0.99, optimizer=sgd,adam."""
    space = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise ConfigError(f"--space expects NAME=SPEC like lr=log:1e-4:1e-1 or optimizer=sgd,adam, got {item!r}")
        kind, colon, rest = spec.partition(":")
        if colon and kind in ("log", "float", "int"):
            try:
                lo, hi = (float(v) for v in rest.split(":"))
            except ValueError:
                raise ConfigError(f"--space {item!r}: expected {kind}:LOW:HIGH") from None
            space[name.strip()] = (kind, int(lo) if kind == "int" else lo, int(hi) if kind == "int" else hi)
        else:
            space[name.strip()] = [parse_value(v) for v in spec.split(",")]
    if not space:
        raise ConfigError("give at least one --space NAME=SPEC")
    return space


def run_tune(args, stdout, stderr) -> ExitStatus:
    from ..tuning import open_study, tune, write_outputs
    from .fit import load_model_and_data

    space = parse_space_args(args.space)
    out = Path(args.out or "gradfit-tune")
    storage = args.storage or str(out / "study.journal")
    if "://" not in storage:
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
    model, x, y, columns = load_model_and_data(args.model, args.data, args.x_cols, args.y_col)
    kwargs = fit_kwargs(args)
    kwargs.pop("progress", None)
    kwargs.pop("seed", None)
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
        return _report(study, out, stdout, args.json)
    with library_output("tune", stderr):
        tune(model, x, y, data=columns, space=space, trials=args.trials, storage=storage, study=args.study,
             seed=args.seed, max_total=args.max_total, **kwargs)
    study = open_study(args.study, storage, args.seed)
    if args.worker:
        return ExitStatus.OK
    write_outputs(study, out)
    return _report(study, out, stdout, args.json)


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


def _report(study, out: Path, stdout, as_json: bool) -> ExitStatus:
    """Print the study's summary; FIT_FAILED when no trial completed."""
    trials = study.get_trials(deepcopy=False)
    counts: dict = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    doc = {"study": study.study_name, "trials": len(trials), "states": counts, "out": str(out)}
    if complete:
        doc.update(best_value=study.best_value, best_params=study.best_params)
    if as_json:
        print(json.dumps(doc), file=stdout)
    else:
        states = ", ".join(f"{v} {k.lower()}" for k, v in counts.items())
        print(f"study {study.study_name}: {len(trials)} trials ({states})", file=stdout)
        if complete:
            best = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in study.best_params.items())
            print(f"best value {study.best_value:.6g} with {best}", file=stdout)
        files = [p.name for p in (out / "trials.csv", out / "best.json", out / "history.png", out / "importance.png")
                 if p.exists()]
        print(f"wrote {', '.join(files)} in {out}", file=stdout)
    return ExitStatus.OK if complete else ExitStatus.FIT_FAILED
