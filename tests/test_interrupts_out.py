"""Issue 12 §7: an unwritable --out fails before any fitting (exit 2, one line naming the
path); §6: Ctrl-C stops at the next minibatch, saves the state there, exits 130, and the run
resumes from that minibatch bit-identically (in-process cases: tests/test_midepoch_resume.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from _cli import cli


@pytest.fixture
def line_csv(tmp_path):
    x = np.linspace(0, 1, 12)
    p = tmp_path / "line.csv"
    p.write_text("x,y\n" + "".join(f"{float(a)!r},{float(2 * a + 1)!r}\n" for a in x))
    return p


@pytest.fixture
def long_csv(tmp_path):
    rows = ["well,x,y"] + [f"W{w},{x},{(w + 1) * x + 1}" for w in range(2) for x in range(5)]
    p = tmp_path / "long.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


@pytest.fixture
def no_fitting(monkeypatch):
    """Any fit that starts fails the test: the check must come first."""
    def boom(*a, **k):
        raise AssertionError("fitting started before --out was checked")

    import gradfit.tuning

    monkeypatch.setattr(gradfit, "fit", boom)
    monkeypatch.setattr(gradfit, "fit_many", boom)
    monkeypatch.setattr(gradfit.tuning, "tune", boom)


def _bad_folders(tmp_path):
    """Paths no one can write to as a folder, even root: an existing file, a path under a file."""
    a_file = tmp_path / "taken.txt"
    a_file.write_text("not a folder\n")
    return {"existing file": a_file, "under a file": a_file / "sub" / "out"}


def _one_line_naming(err, path):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0] and "--out" in lines[0], err


@pytest.mark.parametrize("kind", ["existing file", "under a file"])
def test_fit_unwritable_out_exits_2_before_fitting(line_csv, tmp_path, no_fitting, kind):
    bad = _bad_folders(tmp_path)[kind]
    code, _, err = cli("fit", line_csv, "y ~ a*x + b", "--out", bad)
    assert code == 2
    _one_line_naming(err, bad)


@pytest.mark.parametrize("kind", ["existing file", "under a file"])
def test_tune_unwritable_out_exits_2_before_any_trial(line_csv, tmp_path, no_fitting, kind):
    bad = _bad_folders(tmp_path)[kind]
    code, _, err = cli("tune", line_csv, "y ~ a*x + b", "--space", "lr=log:1e-3:1e-1", "--trials", 2,
                       "--epochs", 2, "--optimizer", "adam", "--out", bad)
    assert code == 2
    _one_line_naming(err, bad)


def test_fit_many_unwritable_out_exits_2_before_fitting(long_csv, tmp_path, no_fitting):
    bad = _bad_folders(tmp_path)
    for out in (bad["existing file"] / "fits.csv", bad["under a file"] / "fits.csv", tmp_path):  # tmp_path: a folder
        code, _, err = cli("fit-many", long_csv, "a*x + b", "--id-column", "well", "--x", "x", "--y", "y",
                           "--out", out)
        assert code == 2, err
        _one_line_naming(err, out)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through permission bits")
@pytest.mark.parametrize("mode", [0o555, 0o000])
def test_fit_read_only_or_forbidden_folder_exits_2(line_csv, tmp_path, no_fitting, mode):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(mode)
    try:
        for out in (folder, folder / "new"):
            code, _, err = cli("fit", line_csv, "y ~ a*x + b", "--out", out)
            assert code == 2
            _one_line_naming(err, out)
    finally:
        folder.chmod(0o755)


def test_writable_out_is_created_and_left_clean(line_csv, tmp_path):
    out = tmp_path / "new" / "deeper"
    code, _, err = cli("fit", line_csv, "y ~ a*x + b", "--out", out)
    assert code == 0, err
    assert not [p for p in out.iterdir() if p.name.startswith(".gradfit-write-check")]
    assert (out / "model.json").exists()


# --- §6: a stop signal is answered at the next minibatch --------------------------------------

def test_second_signal_aborts_at_once(tmp_path):
    from gradfit.cli.common import StopSignals
    from gradfit.train.checkpoint import Checkpointer

    ck = Checkpointer(tmp_path, every_seconds=None)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with StopSignals(lambda signum: setattr(ck, "signal", signum)):  # as `gradfit fit` sets it up
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert ck.signal == signal.SIGINT  # the first asks for a clean stop
            os.kill(os.getpid(), signal.SIGINT)  # the second aborts
            time.sleep(1)
            pytest.fail("the second SIGINT did not abort")
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_cli_ctrl_c_stops_mid_epoch_and_resume_matches(tmp_path):
    """batch_size=1 on 4000 rows: an epoch takes seconds; SIGINT after the first checkpoint
    stops inside epoch 2 and saves the state at that minibatch, exits 130, and --resume
    continues from there to where an uninterrupted run ends."""
    from gradfit.train.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 4000)
    data = tmp_path / "d.csv"
    data.write_text("x,y\n" + "".join(f"{float(a)!r},{float(2 * a + 1 + 0.1 * e)!r}\n"
                                      for a, e in zip(x, rng.normal(size=x.size))))
    args = [sys.executable, "-m", "gradfit", "fit", str(data), "y ~ a*x + b", "--optimizer", "adam", "--lr", "1e-3",
            "--epochs", "3", "--batch-size", "1", "--no-progress", "--json", "--checkpoint-every", "1"]
    cut = tmp_path / "cut"
    proc = subprocess.Popen(args + ["--out", str(cut)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (cut / "checkpoint.json").exists() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.5)  # past the end of epoch 1's checkpoint commit; epoch 2 takes seconds
    proc.send_signal(signal.SIGINT)  # inside epoch 2
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "--resume" in err and "interrupted in epoch 2 after " in err, err
    counters = load_checkpoint(cut)[1]["counters"]
    assert counters["epoch"] == 1 and 0 < counters["batch_start"] < 4000
    assert f"after {counters['batch_start']} of 4000 rows" in err
    full = subprocess.run(args + ["--out", str(tmp_path / "full")], capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    res = subprocess.run(args + ["--out", str(cut), "--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["params"] == json.loads(full.stdout)["params"]
