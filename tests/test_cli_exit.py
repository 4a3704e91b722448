"""The exit status of every command says whether its numbers can be trusted (issue 11, 2.9),
ids survive fit-many (2.7), column names pass through unparsed (2.6), and no input ends in a
traceback (2.4)."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from gradfit.cli.common import STATUS_EXIT, ExitStatus, batch_exit_status, exit_status
from gradfit.cli.main import main
from gradfit.status import Status
from _cli import cli


@pytest.fixture
def decay_csv(tmp_path):
    """y = 2 exp(-1.7 t) + 0.5 exactly: the right values are the generating ones."""
    t = np.linspace(0, 3, 30)
    p = tmp_path / "decay.csv"
    p.write_text("sample,Time (s),Signal\n" + "".join(f"S{i:02d},{float(a)!r},{float(2 * np.exp(-1.7 * a) + 0.5)!r}\n"
                                                      for i, a in enumerate(t)))
    return p


def test_one_table_covers_every_status():
    assert set(STATUS_EXIT) == {s.value for s in Status}
    assert {k for k, v in STATUS_EXIT.items() if v == ExitStatus.OK} == {"converged", "max_epochs", "stopped_early"}
    for s in Status:
        assert exit_status(s) == exit_status(s.value) == STATUS_EXIT[s.value]
    assert exit_status("a status from the future") == ExitStatus.FIT_FAILED
    assert batch_exit_status(["converged", "converged"]) == ExitStatus.OK
    assert batch_exit_status(["converged", "stalled"]) == ExitStatus.FIT_FAILED
    assert batch_exit_status([]) == ExitStatus.OK


@pytest.mark.parametrize("extra,status", [
    ((), "converged"),
    (("--max-iter", "1"), "max_iterations"),
    (("--optimizer", "adam", "--lr", "0.05", "--epochs", "30", "--init", "a=1,k=1,c=0"), "max_epochs"),
])
def test_fit_exit_follows_the_table(decay_csv, extra, status):
    code, out, err = cli("fit", decay_csv, "exp_decay", "--x", "Time (s)", "--y", "Signal", "--json", *extra)
    doc = json.loads(out)
    assert doc["status"] == status
    assert code == STATUS_EXIT[status], err
    if code:
        assert f"(status {status}, exit 3)" in err and len(err.strip().splitlines()) == 1


def test_column_names_pass_through_unparsed_subprocess(decay_csv):
    """2.6: a column named 'Time (s)' is a column, not the formula 'Time(s)'."""
    proc = subprocess.run([sys.executable, "-m", "gradfit", "fit", str(decay_csv), "exp_decay", "--x", "Time (s)",
                           "--y", "Signal", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    params = json.loads(proc.stdout)["params"]
    assert params["a"] == pytest.approx(2.0, rel=1e-6) and params["k"] == pytest.approx(1.7, rel=1e-6)
    assert params["c"] == pytest.approx(0.5, abs=1e-6)


def test_unused_text_column_is_fine_and_a_used_one_is_named(decay_csv, tmp_path):
    # defaults: y is the last numeric column, x the first other numeric one (not the text 'sample')
    code, out, err = cli("fit", decay_csv, "exp_decay", "--json")
    assert code == 0, err
    assert json.loads(out)["params"]["k"] == pytest.approx(1.7, rel=1e-6)
    code, _, err = cli("fit", decay_csv, "exp_decay", "--x", "Time(s)")
    assert code == 2 and "no column 'Time(s)' for --x (did you mean 'Time (s)'?)" in err
    data = tmp_path / "formula.csv"
    data.write_text("well,t,y\nW1,0,2.5\nW2,1,1.5\nW3,2,1.0\nW4,3,0.75\n")
    code, out, err = cli("fit", data, "y ~ a*exp(-k*t) + c", "--init", "a=2,k=1,c=0.5", "--json")
    assert code == 0, err  # 'well' is text and unused
    code, out, err = cli("fit", data, "y ~ a*t + well", "--json")
    assert code == 2 and "non-numeric values: row 2 column 'well': 'W1'" in err
    assert len(err.strip().splitlines()) == 1


NOISE = [0.01, -0.02, 0.015, 0.0, -0.01, 0.005]
#: each well's least-squares line, computed in closed form (numpy.polyfit), not by gradfit
LINES = [np.polyfit(np.arange(6.0), [a * x + b + NOISE[x] for x in range(6)], 1)
         for a, b in ((2.0, 1.0), (-1.0, 3.0), (0.5, -2.0))]


@pytest.fixture
def long_csv(tmp_path):
    """Three noisy lines y = a*x + b, one per well."""
    rows = ["well,plate,x,y"]
    for well, plate, (a, b) in (("W00", 10, (2.0, 1.0)), ("W01", 11, (-1.0, 3.0)), ("W02", 12, (0.5, -2.0))):
        rows += [f"{well},{plate},{x},{a * x + b + NOISE[x]!r}" for x in range(6)]
    p = tmp_path / "long.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


@pytest.mark.parametrize("id_column,expected", [("well", ["W00", "W01", "W02"]), ("plate", ["10", "11", "12"])])
def test_fit_many_keeps_text_and_integer_ids(long_csv, tmp_path, id_column, expected):
    out = tmp_path / "res.csv"
    code, _, err = cli("fit-many", long_csv, "a*x + b", "--id-column", id_column, "--x", "x", "--y", "y",
                       "--init", "a=0,b=0", "--dtype", "float64", "--out", out)
    assert code == 0, err
    table = list(csv.DictReader(out.open()))
    assert [r["id"] for r in table] == expected  # integers as written: '10', not '10.0'
    np.testing.assert_allclose([float(r["a"]) for r in table], [line[0] for line in LINES], rtol=1e-6)
    np.testing.assert_allclose([float(r["b"]) for r in table], [line[1] for line in LINES], rtol=1e-6)


def test_fit_many_parquet_and_npz_keep_id_types(long_csv, tmp_path):
    import pandas as pd

    from gradfit.results.batch_result import BatchResult

    for column, kind in (("well", object), ("plate", np.int64)):
        for suffix in (".parquet", ".npz"):
            out = tmp_path / f"res_{column}{suffix}"
            code, _, err = cli("fit-many", long_csv, "a*x + b", "--id-column", column, "--x", "x", "--y", "y",
                               "--init", "a=0,b=0", "--out", out)
            assert code == 0, err
            ids = pd.read_parquet(out)["id"].to_numpy() if suffix == ".parquet" else BatchResult.load(out).ids
            assert ids.tolist() == (["W00", "W01", "W02"] if column == "well" else [10, 11, 12])
            if suffix == ".npz":
                assert ids.dtype == kind


def test_fit_many_exits_3_when_a_fit_is_not_a_solution(long_csv, tmp_path):
    with long_csv.open("a") as f:
        f.write("W09,13,0,1\n")  # one point for two parameters: too_few_points
    out = tmp_path / "res.csv"
    code, _, err = cli("fit-many", long_csv, "a*x + b", "--id-column", "well", "--x", "x", "--y", "y",
                       "--init", "a=0,b=0", "--out", out)
    assert code == 3 and "not every fit is a solution" in err and "too_few_points" in err
    table = list(csv.DictReader(out.open()))
    assert [r["status"] for r in table] == ["converged"] * 3 + ["too_few_points"]
    assert table[-1]["id"] == "W09"


def test_hill_parameter_n_keeps_its_column(tmp_path):
    """Hill's parameter n and the point count n: the parameter keeps the name."""
    import gradfit as gf

    x = np.logspace(-2, 2, 12)
    y = np.stack([1 + 9 * x**1.3 / (x**1.3 + e**1.3) for e in (1.0, 3.0)])
    r = gf.fit_many("hill", x=x, y=y, init="guess", dtype="float64")
    cols = r.columns()
    np.testing.assert_allclose(cols["n"], [1.3, 1.3], rtol=1e-6)
    assert cols["result_n"].tolist() == [12, 12]


@pytest.mark.parametrize("formula", ["y ~ a*log(x) + b", "y ~ exp(exp(exp(exp(x*a))))"])
def test_undefined_or_overflowing_model_is_one_line_not_a_traceback(tmp_path, formula):
    x = np.linspace(-1, 5, 20)
    p = tmp_path / "neg.csv"
    p.write_text("x,y\n" + "".join(f"{float(a)!r},{float(2 * np.log(abs(a) + 0.1) + 1)!r}\n" for a in x))
    # from a=1, b=1 (the default start is now chosen by chi-square, and finds a finite one)
    init = "a=1,b=1" if "b" in formula else "a=1"
    code, _, err = cli("fit", p, formula, "--init", init)
    assert code in (2, 3), err
    assert "Traceback" not in err and "internal error" not in err
    assert [ln for ln in err.splitlines() if "error" in ln or "exit" in ln][:1]


def test_an_unexpected_exception_is_one_line_exit_1(monkeypatch, decay_csv):
    import gradfit.cli.main as cli_main

    def boom(args, stdout, stderr):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(cli_main, "_command", lambda name: boom)
    code, _, err = cli("fit", decay_csv, "exp_decay")
    assert code == 1 and err.strip() == ("gradfit fit: internal error: RuntimeError: something broke; please report "
                                         "it with the command (GRADFIT_TRACEBACK=1 shows the traceback)")


def test_predict_exit_follows_the_saved_fit(decay_csv, tmp_path):
    for extra, expected in (((), 0), (("--max-iter", "1"), 3)):
        out = tmp_path / f"run{expected}"
        code, _, err = cli("fit", decay_csv, "exp_decay", "--x", "Time (s)", "--y", "Signal", "--out", out, *extra)
        assert code == expected, err
        new = tmp_path / "new.csv"
        new.write_text("Time (s)\n0.5\n1.5\n")
        code, stdout, err = cli("predict", out / "model.json", new)
        assert code == expected, err
        assert stdout.splitlines()[0] == "Time (s),prediction" and len(stdout.splitlines()) == 3


def test_a_closed_stdout_pipe_exits_141_quietly(tmp_path):
    """`gradfit ... | head`: the reader went away; not bad input (2) nor a bug (1)."""


    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    x = np.linspace(0, 3, 30)
    path = tmp_path / "d.csv"
    np.savetxt(path, np.c_[x, 2 * np.exp(-1.7 * x)], delimiter=",", header="x,y", comments="")
    err = io.StringIO()
    status = main(["fit", str(path), "y ~ A*exp(-k*x)", "--init", "A=1,k=1", "--json"], stdout=ClosedPipe(), stderr=err)
    assert status == 141 and err.getvalue() == ""
