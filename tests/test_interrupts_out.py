"""Issue 12 §7: an unwritable --out fails before any fitting (exit 2, one line naming the
path); §6: Ctrl-C stops at the next minibatch, exits 130, and the run resumes bit-identically."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gradfit
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

RNG = np.random.default_rng(1)
XS = RNG.uniform(-1, 1, 60)
YS = 2 * XS + 1 + 0.1 * RNG.normal(size=XS.size)
KW = dict(x=XS, y=YS, optimizer="adam", lr=1e-2, batch_size=4, seed=5, progress=False)


class SignalAfter(__import__("gradfit.train.checkpoint", fromlist=["Checkpointer"]).Checkpointer):
    """A checkpointer whose stop flag turns on after ``reads`` reads: a Ctrl-C that arrives at
    a known minibatch, without a clock."""

    def __init__(self, folder, reads, **kw):
        self._reads_left = reads
        self._signal = None
        super().__init__(folder, every_seconds=None, **kw)

    @property
    def signal(self):
        if self._signal is None and self._reads_left is not None:
            self._reads_left -= 1
            if self._reads_left < 0:
                self._signal = signal.SIGINT
        return self._signal

    @signal.setter
    def signal(self, value):
        self._signal = value


def _read_epoch(folder):
    from gradfit.train.checkpoint import load_checkpoint

    return load_checkpoint(folder)[1]["counters"]["epoch"]


@pytest.mark.parametrize("reads,every", [(3, None), (40, 1), (40, None), (47, 2)])
def test_stop_mid_epoch_saves_last_complete_epoch_and_resumes_bit_identical(tmp_path, monkeypatch, reads, every):
    import gradfit.train.loop as loop
    from gradfit.train.checkpoint import Checkpointer, Interrupted

    monkeypatch.setattr(loop._MidEpochStop, "SLOW_EPOCH_S", 0.0)  # every epoch counts as slow: stop mid-epoch
    full = gradfit.fit("y ~ a*x + b", epochs=8, **KW)
    calls = []
    real = loop._minibatch_epoch
    monkeypatch.setattr(loop, "_minibatch_epoch", lambda *a: calls.append(r := real(*a)) or r)
    with pytest.raises(Interrupted) as stop:
        gradfit.fit("y ~ a*x + b", epochs=8, checkpoint=SignalAfter(tmp_path, reads, every_epochs=every), **KW)
    assert calls[-1] is None  # the epoch in progress was cut between two minibatches
    done = sum(c is not None for c in calls)
    assert stop.value.epoch == done == _read_epoch(tmp_path)  # the last complete epoch is what is saved
    res = gradfit.fit("y ~ a*x + b", epochs=8, checkpoint=Checkpointer(tmp_path, every_seconds=None), resume=True,
                      **KW)
    assert res.params == full.params and res.history == full.history and res.epochs_run == full.epochs_run


def test_fast_epochs_finish_the_epoch_then_save(tmp_path, monkeypatch):
    import gradfit.train.loop as loop
    from gradfit.train.checkpoint import Checkpointer, Interrupted

    monkeypatch.setattr(loop._MidEpochStop, "SLOW_EPOCH_S", float("inf"))  # only the first epoch is "slow"
    full = gradfit.fit("y ~ a*x + b", epochs=6, **KW)
    calls = []
    real = loop._minibatch_epoch
    monkeypatch.setattr(loop, "_minibatch_epoch", lambda *a: calls.append(r := real(*a)) or r)
    # per epoch the flag is read between minibatches (14 times) and once at the end: on inside epoch 2
    with pytest.raises(Interrupted) as stop:
        gradfit.fit("y ~ a*x + b", epochs=6, checkpoint=SignalAfter(tmp_path, 15 + 7), **KW)
    assert None not in calls and len(calls) == 2  # epoch 2 was fast: it ran to its end
    assert stop.value.epoch == 2 == _read_epoch(tmp_path)
    res = gradfit.fit("y ~ a*x + b", epochs=6, checkpoint=Checkpointer(tmp_path, every_seconds=None), resume=True,
                      **KW)
    assert res.params == full.params and res.history == full.history


def test_second_signal_aborts_at_once(tmp_path):
    from gradfit.cli.fit import _stop_signals
    from gradfit.train.checkpoint import Checkpointer

    ck = Checkpointer(tmp_path, every_seconds=None)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with _stop_signals(ck):
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
    stops inside epoch 2, exits 130, and --resume ends where an uninterrupted run ends."""
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
    proc.send_signal(signal.SIGINT)  # inside epoch 2
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "--resume" in err and "after epoch 1" in err, err
    full = subprocess.run(args + ["--out", str(tmp_path / "full")], capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    res = subprocess.run(args + ["--out", str(cut), "--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["params"] == json.loads(full.stdout)["params"]
