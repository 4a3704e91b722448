"""Interrupt and resume: checkpoints on a schedule and on SIGINT/SIGTERM; a resumed run on the
CPU with the same seed ends bit-identical to an uninterrupted one."""

import hashlib
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gradfit as gf
from gradfit import ConfigError, PersistError
from gradfit.train.checkpoint import Checkpointer

RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, (200, 2))
Y = np.sin(X).sum(1)


@pytest.mark.parametrize("extra", [{}, {"batch_size": 32, "input_noise": 0.05, "penalty": {"l2": 1e-3}},
                                   {"optimizer": "sgd", "optimizer_options": {"momentum": 0.9}},
                                   {"early_stopping": 100}])
def test_resume_is_bit_identical(tmp_path, extra):
    kw = dict(x=X, y=Y, hidden=(16,), optimizer="adam", lr=1e-2, seed=3, progress=False, val_fraction=0.2)
    kw.update(extra)
    full = gf.fit("mlp", epochs=40, **kw)
    gf.fit("mlp", epochs=15, checkpoint=Checkpointer(tmp_path, every_epochs=15, every_seconds=None), **kw)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["counters"]["epoch"] == 15
    res = gf.fit("mlp", epochs=40, checkpoint=Checkpointer(tmp_path, every_seconds=None), resume=True, **kw)
    np.testing.assert_array_equal(res.predict(X), full.predict(X))
    assert res.history == full.history and res.epochs_run == full.epochs_run


def test_a_finished_run_leaves_a_checkpoint_that_continues_with_more_epochs(tmp_path):
    # the default schedule (every 60 s) never comes due in a short run: the last epoch saves
    kw = dict(x=X, y=Y, hidden=(16,), optimizer="adam", lr=1e-2, seed=3, progress=False, val_fraction=0.2)
    full = gf.fit("mlp", epochs=30, **kw)
    gf.fit("mlp", epochs=12, checkpoint=tmp_path / "run", **kw)
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["counters"]["epoch"] == 12
    res = gf.fit("mlp", epochs=30, checkpoint=tmp_path / "run", resume=True, **kw)
    np.testing.assert_array_equal(res.predict(X), full.predict(X))
    assert res.history == full.history


def test_resume_refuses_a_different_fit_and_damaged_checkpoints(tmp_path):
    kw = dict(x=X, y=Y, hidden=(8,), seed=0, progress=False)
    gf.fit("mlp", epochs=3, checkpoint=Checkpointer(tmp_path, every_epochs=1, every_seconds=None), **kw)
    with pytest.raises(ConfigError, match="different fit"):
        gf.fit("mlp", epochs=6, lr=0.5, checkpoint=tmp_path, resume=True, **kw)
    blob = tmp_path / "checkpoint.safetensors"
    blob.write_bytes(blob.read_bytes()[:-10])
    with pytest.raises(PersistError, match="checksum"):
        gf.fit("mlp", epochs=6, checkpoint=tmp_path, resume=True, **kw)
    with pytest.raises(PersistError, match="no checkpoint"):
        gf.fit("mlp", epochs=6, checkpoint=tmp_path / "empty", resume=True, **kw)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cli_signal_checkpoints_and_resume_matches(tmp_path, sig, code):
    data = tmp_path / "d.csv"
    data.write_text("x1,x2,y\n" + "".join(f"{a},{b},{c}\n" for (a, b), c in zip(X, Y)))
    args = [sys.executable, "-m", "gradfit", "fit", str(data), "mlp", "--x", "x1,x2", "--y", "y", "--hidden", "16",
            "--epochs", "1200", "--batch-size", "16", "--no-progress", "--json", "--checkpoint-every", "50"]
    full = subprocess.run(args + ["--out", str(tmp_path / "full")], capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "cut")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "cut" / "checkpoint.json").exists():
        time.sleep(0.05)
    proc.send_signal(sig)  # training is under way: the first checkpoint (epoch 50) exists
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "resume with:" in lines[0] and "--resume" in lines[0]
    res = subprocess.run(args + ["--out", str(tmp_path / "cut"), "--resume"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["loss"] == json.loads(full.stdout)["loss"]
    assert _sha(tmp_path / "cut" / "model.safetensors") == _sha(tmp_path / "full" / "model.safetensors")


def _set_version(folder, version):
    path = folder / "checkpoint.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "version": version}))


def test_checkpoint_versions(tmp_path):
    """Version 2 files (written at an epoch's end, before checkpoints could stop inside one)
    resume bit-identically; version 1 and versions from a newer gradfit are refused."""
    from gradfit.train.checkpoint import CHECKPOINT_VERSION

    kw = dict(x=X, y=Y, hidden=(8,), seed=0, progress=False, batch_size=50, optimizer="adam")
    full = gf.fit("mlp", epochs=6, **kw)
    gf.fit("mlp", epochs=3, checkpoint=Checkpointer(tmp_path, every_epochs=3, every_seconds=None), **kw)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["version"] == CHECKPOINT_VERSION == 3
    _set_version(tmp_path, 2)
    res = gf.fit("mlp", epochs=6, checkpoint=Checkpointer(tmp_path, every_seconds=None), resume=True, **kw)
    np.testing.assert_array_equal(res.predict(X), full.predict(X))
    for version, message in [(1, "older gradfit"), (CHECKPOINT_VERSION + 1, "newer gradfit")]:
        _set_version(tmp_path, version)
        with pytest.raises(PersistError, match=message):
            gf.fit("mlp", epochs=6, checkpoint=tmp_path, resume=True, **kw)
