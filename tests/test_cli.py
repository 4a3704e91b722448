"""The gradfit command, run as a user runs it (subprocess), with its exit codes."""

import csv
import json
import subprocess
import sys

import pytest

import gradfit as gf
from _cli import cli


def run(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "gradfit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_help_is_light():
    code = ("import sys; from gradfit.cli.main import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'numpy', 'sympy', 'matplotlib', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert out == "[]"
    rc, stdout, _ = run("--help")
    assert rc == 0 and "demo" in stdout and "gradcheck" in stdout


def test_fit_json_matches_api(thermo_csv):
    rc, out, err = run("fit", thermo_csv, "t_c ~ w*t_u + b", "--init", "w=1,b=0", "--optimizer", "adam",
                       "--lr", "0.1", "--epochs", "2000", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["params"]["w"] == pytest.approx(0.5367, abs=5e-5)
    assert doc["params"]["b"] == pytest.approx(-17.3021, abs=5e-5)
    assert doc["status"] == "max_epochs" and doc["epochs_run"] == 2000 and doc["val_loss"] is None


def test_fit_out_writes_model_history_and_plots(thermo_csv, tmp_path):
    out = tmp_path / "run"
    rc, stdout, err = run("fit", thermo_csv, "t_c ~ w*t_u + b", "--optimizer", "sgd", "--epochs", "300",
                          "--normalize", "--val-fraction", "0.2", "--out", out)
    assert rc == 0, err
    assert "w " in stdout and "status" in stdout
    for name in ("model.json", "history.csv", "fit.png", "loss.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(rows) == 300 and set(rows[0]) == {"epoch", "train_loss", "val_loss"}
    assert _setting(gf.load(out / "model.json").settings, "normalize") is True


def _setting(settings: dict, key: str):
    """A value from FitResult.settings, wherever the typed options nest it."""
    if key in settings:
        return settings[key]
    for value in settings.values():
        if isinstance(value, dict):
            found = _setting(value, key)
            if found is not None:
                return found
    return None


@pytest.mark.parametrize("extra", [[], ["--optimizer", "lm", "--json"]])
def test_model_not_finite_at_start_exits_3_with_one_line(tmp_path, extra):
    data = tmp_path / "neg.csv"
    data.write_text("x,y\n-1,0\n1,1\n2,2\n3,3\n")
    rc, out, err = run("fit", data, "y ~ a*log(x) + b", *extra)
    assert rc == 3
    assert err.count("\n") == 1 and err.startswith("gradfit fit: the model is not finite")
    assert "row(s): 1 (1-based)" in err and "Traceback" not in err and "Warning" not in err
    assert "not_finite" in out


def test_diverged_fit_exits_3(thermo_csv):
    rc, out, err = run("fit", thermo_csv, "t_c ~ w*t_u + b", "--init", "w=1,b=0", "--optimizer", "sgd",
                       "--epochs", "5000", "--json")
    assert rc == 3
    assert json.loads(out)["status"] == "diverged"
    assert "lower the learning rate" in err and "Traceback" not in err


@pytest.mark.parametrize("args,needle", [
    (("fit", "{csv}", "t_c ~ w*t_u + __import__('os')"), "names containing '__'"),
    (("fit", "{missing}", "t_c ~ w*t_u + b"), "no such file"),
    (("fit", "{csv}", "t_c ~ w*t_v + b"), "did you mean 't_u'"),
    (("fit", "{csv}", "t_c ~ w*t_u + b", "--optimizer", "nope"), "unknown optimizer"),
    (("fit", "{csv}", "t_c ~ w*t_u + b", "--init", "w=abc"), "--init"),
    (("predict", "{csv}", "{csv}"), "not a gradfit model"),
    (("gradcheck", "t_c ~ w*t_u + b", "{csv}", "--at", "w=1"), "missing b"),
    (("gradcheck", "w*t_u + b", "{csv}", "--at", "w=1,b=0"), "response ~ expression"),
])
def test_bad_input_exits_2_with_one_line(thermo_csv, tmp_path, args, needle):
    args = [a.format(csv=thermo_csv, missing=tmp_path / "missing.csv") for a in args]
    rc, out, err = run(*args)
    assert rc == 2, (rc, err)
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_argparse_usage_error_exits_2():
    rc, _, err = run("fit")
    assert rc == 2 and "error:" in err and "--help" in err


def test_predict_csv(thermo_csv, tmp_path):
    run("fit", thermo_csv, "t_c ~ w*t_u + b", "--optimizer", "adam", "--lr", "0.1", "--epochs", "500",
        "--out", tmp_path / "m")
    rc, out, err = run("predict", tmp_path / "m" / "model.json", thermo_csv, "-o", tmp_path / "pred.csv")
    assert rc == 0, err
    rows = list(csv.DictReader((tmp_path / "pred.csv").open()))
    model = gf.load(tmp_path / "m" / "model.json")
    assert len(rows) == 11 and set(rows[0]) == {"t_u", "prediction"}
    p = model.params
    assert float(rows[0]["prediction"]) == pytest.approx(p["w"] * float(rows[0]["t_u"]) + p["b"], rel=1e-9)
    rc, out, _ = run("predict", tmp_path / "m" / "model.json", thermo_csv)
    assert rc == 0 and out.splitlines()[0] == "t_u,prediction" and len(out.splitlines()) == 12


def test_gradcheck(thermo_csv):
    rc, out, err = run("gradcheck", "t_c ~ w*t_u + b", thermo_csv, "--at", "w=1,b=0")
    assert rc == 0, err
    assert "4517.2969" in out and "82.6" in out and "OK" in out


def test_builtin_model_from_cli(tmp_path):
    import numpy as np

    x = np.linspace(0, 10, 40)
    y = 3 * np.exp(-0.4 * x) + 1
    path = tmp_path / "decay.csv"
    path.write_text("time,signal\n" + "".join(f"{a},{b}\n" for a, b in zip(x, y)))
    rc, out, err = run("fit", path, "exp_decay", "--optimizer", "lbfgs", "--lr", "1", "--epochs", "50",
                       "--dtype", "float64", "--json")
    assert rc == 0, err
    p = json.loads(out)["params"]
    assert p["a"] == pytest.approx(3, rel=1e-3) and p["k"] == pytest.approx(0.4, rel=1e-3)


def test_demo(tmp_path):
    rc, out, err = run("demo", "--out", tmp_path / "demo")
    assert rc == 0, err
    assert "4517.2969" in out and "diverged" in out and "5.3671" in out and "-17.3012" in out
    assert "0.5367" in out and "-17.3021" in out
    for name in ("fit.png", "loss.png", "sgd_vs_adam.png"):
        assert (tmp_path / "demo" / name).read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def decay_csv(tmp_path):
    import numpy as np

    rng = np.random.default_rng(3)
    x = np.linspace(0, 10, 40)
    y = 3 * np.exp(-0.4 * x) + 1 + 0.02 * rng.standard_normal(40)
    path = tmp_path / "decay.csv"
    path.write_text("x,y,s\n" + "".join(f"{a},{b},0.02\n" for a, b in zip(x, y)))
    return path


def test_fit_least_squares_json_has_uncertainties(decay_csv):
    rc, out, err = run("fit", decay_csv, "y ~ a*exp(-k*x) + c", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["method"] == "lm" and doc["status"] == "converged"
    assert set(doc["stderr"]) == {"a", "k", "c"} and doc["stderr"]["k"] > 0
    assert {"chisqr", "redchi", "r2", "aic", "bic", "rmse", "dof", "n"} <= set(doc["statistics"])
    assert doc["params"]["k"] == pytest.approx(0.4, abs=0.01)


def test_fit_bounds_fix_tie_sigma(decay_csv):
    rc, out, err = run("fit", decay_csv, "y ~ a*exp(-k*x) + c", "--bounds", "k=0:0.3", "--fix", "c=1",
                       "--sigma", "s", "--absolute-sigma", "--json")
    assert rc == 0, err
    p = json.loads(out)["params"]
    assert p["k"] == pytest.approx(0.3, abs=1e-7) and p["c"] == 1.0
    rc, out, err = run("fit", decay_csv, "y ~ a*exp(-k*x) + c", "--tie", "c=a/3", "--json")
    p = json.loads(out)["params"]
    assert rc == 0 and p["c"] == pytest.approx(p["a"] / 3)


def test_report_and_singular_warning(decay_csv):
    rc, out, err = run("fit", decay_csv, "y ~ a*b*exp(-k*x) + c")
    assert rc == 3 and "(status singular, exit 3)" in err  # a and b cannot be separated
    assert "singular" in out and "undetermined" in out
    assert "warning" in err and "a, b" in err


@pytest.mark.parametrize("args,needle", [
    (("--bounds", "k=2:1"), "greater than max"),
    (("--bounds", "k=zero:1"), "must be numbers"),
    (("--tie", "c=a", "--tie", "a=c"), "cycle"),
    (("--tie", "c=q*2"), "unknown parameter 'q'"),
    (("--init", "k=5", "--bounds", "k=0:1"), "outside its bounds"),
    (("--sigma", "sd"), "did you mean 's'"),
])
def test_least_squares_bad_options_exit_2(decay_csv, args, needle):
    rc, _, err = run("fit", decay_csv, "y ~ a*exp(-k*x) + c", *args)
    assert rc == 2 and needle in err and "Traceback" not in err


@pytest.fixture
def batch_files(tmp_path):
    import numpy as np

    rng = np.random.default_rng(2)
    x = np.arange(32.0)
    t = np.column_stack([rng.uniform(200, 1000, 40), 15.5 + rng.uniform(-4, 4, 40), rng.uniform(2, 4, 40),
                         rng.uniform(10, 100, 40)])
    y = rng.poisson(t[:, :1] * np.exp(-(x - t[:, 1:2]) ** 2 / (2 * t[:, 2:3] ** 2)) + t[:, 3:4]).astype(float)
    np.save(tmp_path / "y.npy", y)
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join([f"y_{i}" for i in range(32)] + ["a", "c", "w", "o"]) + "\n" + "".join(
        ",".join(map(str, [*y[i], *(t[i] * 1.1)])) + "\n" for i in range(40)))
    long = tmp_path / "long.csv"
    long.write_text("fit,x,y\n" + "".join(f"{i},{x[j]},{y[i, j]}\n" for i in range(40) for j in range(20 + i % 12)))
    return tmp_path, t


def test_fit_many_cli_formats(batch_files):
    import numpy as np
    import pandas as pd

    d, truth = batch_files
    rc, out, err = run("fit-many", d / "y.npy", "gaussian", "--init", "guess", "--out", d / "r.parquet", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["fits"] == 40 and doc["converged_fraction"] >= 0.95
    table = pd.read_parquet(d / "r.parquet")
    assert np.median(np.abs(table["mu"] - truth[:, 1])) < 0.1
    rc, out, err = run("fit-many", d / "wide.csv", "a*exp(-(x-c)**2/(2*w**2)) + o", "--out", d / "r.csv")
    assert rc == 0 and "40 converged" in out, (out, err)
    rows = list(csv.DictReader((d / "r.csv").open()))
    assert len(rows) == 40 and {"a", "a_stderr", "status", "chisqr", "redchi", "n"} <= set(rows[0])
    rc, out, err = run("fit-many", d / "long.csv", "gaussian", "--id-column", "fit", "--x", "x", "--y", "y",
                       "--init", "guess", "--json")
    assert rc == 0, err and json.loads(out)["fits"] == 40


@pytest.mark.parametrize("args,needle", [
    (("{d}/wide.csv", "a*x + b"), "no starting value for b"),
    (("{d}/y.npy", "gaussian", "--x-values", "0:10", "--init", "guess"), "gives 10 values"),
    (("{d}/long.csv", "gaussian", "--id-column", "fid", "--x", "x", "--y", "y"), "did you mean 'fit'"),
    (("{d}/missing.npy", "gaussian"), "no such file"),
])
def test_fit_many_cli_errors(batch_files, args, needle):
    d, _ = batch_files
    rc, _, err = run("fit-many", *[a.format(d=d) for a in args])
    assert rc == 2 and needle in err and "Traceback" not in err


# In-process runs: main(argv, stdout, stderr) returns an ExitStatus and writes only to the
# streams it is given (capsys proves nothing reaches the process's own).


def test_main_returns_exit_status_and_uses_only_the_given_streams(capsys, thermo_csv):
    from gradfit.cli.main import ExitStatus

    code, out, err = cli("--help")
    assert code is ExitStatus.OK and "usage: gradfit" in out and err == ""
    code, out, err = cli("fit")
    assert code is ExitStatus.USAGE and "gradfit fit: error:" in err and "required" in err and out == ""
    code, out, err = cli("fit", thermo_csv, "t_c ~ w*t_u + b", "--optimizer", "adam", "--lr", "0.1",
                         "--epochs", "10", "--log-every", "5", "--val-fraction", "0.2")
    assert code is ExitStatus.OK and "status" in out
    assert [ln.split()[:2] for ln in err.splitlines()] == [["epoch", "5"], ["epoch", "10"]]
    code, out, err = cli("fit", thermo_csv, "t_c ~ w*t_u + b", "--init", "w=1,b=0", "--optimizer", "sgd",
                         "--epochs", "5000", "--json")
    assert code is ExitStatus.FIT_FAILED and "lower the learning rate" in err
    code, _, err = cli("fit", thermo_csv, "t_c ~ w*t_u + b", "--fix", "=1")
    assert code is ExitStatus.USAGE and "--fix expects NAME or NAME=VALUE" in err
    assert capsys.readouterr() == ("", "")


def test_exit_status_of_a_fit():
    from gradfit.cli.common import ExitStatus, exit_status
    from gradfit.status import Status

    # exit 0 means the numbers can be used as they are (the table is cli.common.STATUS_EXIT)
    ok = {Status.CONVERGED, Status.MAX_EPOCHS, Status.STOPPED_EARLY}
    assert {exit_status(s) for s in ok} == {ExitStatus.OK}
    assert {exit_status(s) for s in Status if s not in ok} == {ExitStatus.FIT_FAILED}
    assert ExitStatus.from_signal(2) is ExitStatus.INTERRUPTED and ExitStatus.from_signal(15) == 143


def test_shared_options_have_one_definition():
    """fit, fit-many and tune parse --init, --fix, --bounds, --tol, --max-iter, --dtype, --device,
    --x, --y, --out, --json and --no-progress with the same definition and help."""
    from gradfit.cli.options import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    shared = ["--init", "--fix", "--bounds", "--tol", "--max-iter", "--dtype", "--device", "--x", "--y", "--out",
              "--json", "--no-progress"]

    def action(cmd, flag):
        return next(a for a in sub[cmd]._actions if flag in a.option_strings)

    for flag in shared:
        defs = {(a.dest, a.nargs, a.type, repr(a.default), str(a.choices), type(a).__name__)
                for a in (action(c, flag) for c in ("fit", "fit-many", "tune"))}
        assert len(defs) == 1, (flag, defs)
    assert action("fit", "--fix").metavar == action("fit-many", "--fix").metavar == "NAME[=VALUE]"
    for cmd, default in (("fit", "2000"), ("fit-many", "25")):
        help_text = action(cmd, "--max-iter").help
        assert help_text.startswith("solver iterations per fit (default: " + default), help_text
    args = [sub[c].parse_args(["d", "m", "--fix", "a=1,b", "--init", "guess", "--max-iter", "7"])
            for c in ("fit", "fit-many", "tune")]
    assert {(a.fix[0], a.init, a.max_iter) for a in args} == {("a=1,b", "guess", 7)}


def test_option_value_parsers():
    from gradfit import ConfigError
    from gradfit.cli.common import parse_bounds, parse_fixed, parse_init

    assert parse_fixed(["a", "c=1,d"]) == (["a", "c", "d"], {"c": 1.0})
    assert parse_init(" Guess ") == "guess" and parse_init("w=1, b=-2") == {"w": 1.0, "b": -2.0}
    assert parse_init(None) == {}
    assert parse_bounds(["w=0:", "b=-5:5"]) == {"w": (0.0, None), "b": (-5.0, 5.0)}
    with pytest.raises(ConfigError, match="--fix: value for 'c' is not a number"):
        parse_fixed(["c=x"])


def test_fit_many_fix_value_long_table_init_columns_and_ids(tmp_path):
    """--fix NAME=VALUE means in fit-many what it means in fit; a long table's per-fit columns
    give per-fit starting values."""
    import numpy as np

    x = np.linspace(0, 4, 9)
    rows = []
    for k, (a, b) in enumerate([(2.0, 1.0), (-1.0, 3.0), (0.5, -2.0)]):
        n = 9 - 2 * k  # ragged: 9, 7, 5 points
        rows += [f"{10 + k},{xi},{a * xi + b},{a + 0.1}\n" for xi in x[:n]]
    path = tmp_path / "long.csv"
    path.write_text("fit,t,v,a\n" + "".join(rows))
    out = tmp_path / "r.csv"
    code, stdout, err = cli("fit-many", path, "a*x + b", "--id-column", "fit", "--x", "t", "--y", "v",
                            "--init", "b=0", "--dtype", "float64", "--out", out)
    assert code == 0, err
    table = list(csv.DictReader(out.open()))
    assert [float(r["id"]) for r in table] == [10, 11, 12] and [int(r["n"]) for r in table] == [9, 7, 5]
    np.testing.assert_allclose([float(r["a"]) for r in table], [2.0, -1.0, 0.5], atol=1e-5)
    np.testing.assert_allclose([float(r["b"]) for r in table], [1.0, 3.0, -2.0], atol=1e-5)
    code, _, err = cli("fit-many", path, "a*x + b", "--id-column", "fit", "--x", "t", "--y", "v",
                       "--fix", "b=0.25", "--dtype", "float64", "--out", out)
    assert code == 0, err
    assert {float(r["b"]) for r in csv.DictReader(out.open())} == {0.25}
    path.write_text("fit,t,v,a\n1,0,1,2\n1,1,2,3\n")
    code, _, err = cli("fit-many", path, "a*x + b", "--id-column", "fit", "--x", "t", "--y", "v", "--init", "b=0")
    assert code == 2 and "column 'a' has different values within fit 1" in err


@pytest.mark.parametrize("args,needle", [
    (("--x", "t", "--y", "v"), "add --id-column COL"),
    (("--id-column", "fit", "--x", "t"), "needs --id-column, --x and --y"),
    (("--id-column", "fit", "--x", "t,u", "--y", "v"), "give one --x column"),
    (("--id-column", "fit", "--x", "tt", "--y", "v"), "the x column 'tt' is not in the table (did you mean 't'?)"),
])
def test_fit_many_layout_errors(tmp_path, args, needle):
    # (--init guess --fix b=1 on a formula once failed with "init is missing a": a formula's
    # parameters without init now start from the data, as in gradfit fit)
    path = tmp_path / "long.csv"
    path.write_text("fit,t,v\n1,0,1\n1,1,2\n2,0,3\n2,1,5\n")
    code, _, err = cli("fit-many", path, "a*x + b", *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_predict_to_stdout_in_process(thermo_csv, tmp_path):
    cli("fit", thermo_csv, "t_c ~ w*t_u + b", "--out", tmp_path / "m")
    code, out, err = cli("predict", tmp_path / "m" / "model.json", thermo_csv)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "t_u,prediction" and len(lines) == 12, err
    assert lines[1].split(",")[0] == "35.7"


def test_fit_many_fix_value_with_guess_like_fit(tmp_path):
    """--fix NAME=VALUE means the same in fit and fit-many: held at VALUE, the rest guessed."""
    import numpy as np
    x = np.arange(32.0)
    rows = [",".join(f"{v:.6g}" for v in 400 * np.exp(-(x - c) ** 2 / 8) + 20) for c in (12.0, 15.0, 18.0)]
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"y_{i}" for i in range(32)) + "\n" + "\n".join(rows) + "\n")
    out = tmp_path / "r.csv"
    code, _, err = cli("fit-many", path, "gaussian", "--init", "guess", "--fix", "sigma=2", "--dtype", "float64",
                       "--max-iter", "100", "--out", out)
    assert code == 0, err
    table = list(csv.DictReader(out.open()))
    assert {float(r["sigma"]) for r in table} == {2.0}
    np.testing.assert_allclose([float(r["mu"]) for r in table], [12.0, 15.0, 18.0], atol=1e-6)


@pytest.mark.parametrize("argv", [["fit", "x.csv", "y ~ a*x", "--dtype", "float16"],
                                  ["fit-many", "x.csv", "gaussian", "--max-iter", "x"], ["bogus"]])
def test_usage_errors_are_one_line(argv):
    code, out, err = cli(*argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "error:" in err and "--help" in err, err
