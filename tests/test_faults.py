"""Fault injection for gradfit's multi-file saves (issue 12 sections 1, 2, 3, 8).

- a model (model.json + model.safetensors) and a checkpoint (checkpoint.json +
  checkpoint.safetensors) change as one atomic unit: an injected ENOSPC at every write, rename
  and link step leaves the old complete pair (or, after the commit point, the new one);
- SIGKILL at random moments of a run with ``--checkpoint-every 1``: every kill resumes and ends
  on the uninterrupted run's final parameters;
- ``--resume`` refuses other data (rows, values, weights, split);
- files respect the umask.
"""

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit import _files
from gradfit.results.persist import read_document, write_document
from gradfit.train.checkpoint import Checkpointer, load_checkpoint, save_checkpoint

RNG = np.random.default_rng(1)
X = RNG.uniform(-1, 1, (80, 1))
Y = np.sin(2 * X[:, 0])
KW = {"hidden": (4,), "epochs": 5, "seed": 0, "progress": False, "lr": 1e-2}


def _enospc():
    return OSError(errno.ENOSPC, "No space left on device")


def _fail_nth(monkeypatch, owner, name, n):
    """Make the n-th call (1-based) of owner.name raise ENOSPC; return a list of call counts."""
    real = getattr(owner, name)
    calls = [0]

    def wrapper(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            raise _enospc()
        return real(*a, **k)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


# -- one atomic unit: a failed model save leaves the previous model loadable -----------------------

# commit_pair's steps: atomic_write_bytes is called for (1) the staged weights, (2) the document
# naming them (the commit point), (3) the document naming model.safetensors; os.replace for the
# same three plus the hard link (between 2 and 3); os.link once.
STEPS = ([("atomic_write_bytes", n) for n in (1, 2, 3)] + [("replace", n) for n in (1, 2, 3, 4)]
         + [("link", 1)])


@pytest.fixture(scope="module")
def two_models():
    old = gf.fit("mlp", x=X, y=Y, **KW)
    new = gf.fit("mlp", x=X, y=Y, **{**KW, "seed": 1})
    assert not np.array_equal(old.predict(X), new.predict(X))
    return old, new


@pytest.mark.parametrize("step", STEPS, ids=[f"{s}{n}" for s, n in STEPS])
def test_failed_model_save_keeps_a_complete_model(tmp_path, monkeypatch, two_models, step):
    old, new = two_models
    path = tmp_path / "model.json"
    old.save(path)
    before = old.predict(X)
    name, n = step
    owner = _files if name == "atomic_write_bytes" else _files.os
    _fail_nth(monkeypatch, owner, name, n)
    committed = (name == "atomic_write_bytes" and n >= 3) or (name == "replace" and n >= 3) or name == "link"
    if committed:
        new.save(path)  # after the commit point a failure only leaves the staged name in use
    else:
        with pytest.raises(OSError):
            new.save(path)
    monkeypatch.undo()
    got = gf.load(path).predict(X)
    np.testing.assert_array_equal(got, new.predict(X) if committed else before)
    # the next save tidies every staged leftover and ends on the usual names
    new.save(path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["model.json", "model.safetensors"], names
    assert json.loads(path.read_text())["weights"]["file"] == "model.safetensors"
    np.testing.assert_array_equal(gf.load(path).predict(X), new.predict(X))


def test_failed_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"a": torch.zeros(3)}, {"counters": {"epoch": 1}})
    for n in (1, 2):  # the staged tensors, then the document: both before the commit point
        _fail_nth(monkeypatch, _files, "atomic_write_bytes", n)
        with pytest.raises(OSError):
            save_checkpoint(tmp_path, {"a": torch.ones(3)}, {"counters": {"epoch": 2}})
        monkeypatch.undo()
        tensors, meta = load_checkpoint(tmp_path)
        assert meta["counters"]["epoch"] == 1 and torch.equal(tensors["a"], torch.zeros(3))
    save_checkpoint(tmp_path, {"a": torch.ones(3)}, {"counters": {"epoch": 2}})
    tensors, meta = load_checkpoint(tmp_path)
    assert meta["counters"]["epoch"] == 2 and torch.equal(tensors["a"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.safetensors"]


def test_files_of_the_previous_format_still_load(tmp_path):
    # a checkpoint.json without "tensors_file" names checkpoint.safetensors
    from safetensors.torch import save as st_save

    blob = st_save({"a": torch.arange(3.0)})
    (tmp_path / "checkpoint.safetensors").write_bytes(blob)
    doc = {"format": "gradfit.checkpoint", "version": 2, "tensors_sha256": hashlib.sha256(blob).hexdigest(),
           "counters": {"epoch": 4}}
    (tmp_path / "checkpoint.json").write_text(json.dumps(doc))
    tensors, meta = load_checkpoint(tmp_path)
    assert meta["counters"]["epoch"] == 4 and torch.equal(tensors["a"], torch.arange(3.0))
    # a model whose document names weights under any bare name in its folder
    write_document(tmp_path / "m.json", {"k": 1}, {"w": torch.ones(2)})
    doc, weights = read_document(tmp_path / "m.json")
    assert doc["weights"]["file"] == "m.safetensors" and torch.equal(weights["w"], torch.ones(2))


# -- --resume refuses other data --------------------------------------------------------------------

def _checkpointed(folder, x, y, **kw):
    return gf.fit("y ~ a*x + b", x=x, y=y, epochs=3, progress=False, seed=0, optimizer="adam",
                  checkpoint=Checkpointer(folder, every_epochs=1, every_seconds=None), **kw)


@pytest.mark.parametrize("change", ["more_rows", "other_values", "weights"])
def test_resume_refuses_different_data(tmp_path, change):
    x = np.linspace(0, 1, 80)
    y = 2 * x + 1
    _checkpointed(tmp_path, x[:50], y[:50])
    if change == "more_rows":
        x2, y2, extra = x, y, {}
    elif change == "other_values":
        x2, y2, extra = x[:50], y[:50] + 0.01, {}
    else:
        x2, y2, extra = x[:50], y[:50], {"weights": np.linspace(1, 2, 50)}
    with pytest.raises(gf.GradfitError, match="different (data|fit)"):
        gf.fit("y ~ a*x + b", x=x2, y=y2, epochs=6, progress=False, seed=0, optimizer="adam", checkpoint=tmp_path,
               resume=True, **extra)
    # the same data still resumes
    res = gf.fit("y ~ a*x + b", x=x[:50], y=y[:50], epochs=6, progress=False, seed=0, optimizer="adam",
                 checkpoint=tmp_path, resume=True)
    assert res.epochs_run == 6


@pytest.mark.slow
def test_resume_on_an_80_row_file_is_refused_by_the_cli(tmp_path):
    x = np.linspace(0, 1, 80)
    full = tmp_path / "d80.csv"
    full.write_text("x,y\n" + "".join(f"{a},{2 * a + 1}\n" for a in x))
    half = tmp_path / "d50.csv"
    half.write_text("x,y\n" + "".join(f"{a},{2 * a + 1}\n" for a in x[:50]))
    args = ["y ~ a*x + b", "--optimizer", "adam", "--epochs", "3", "--no-progress", "--checkpoint-every", "1", "--out", str(tmp_path / "o")]
    first = subprocess.run([sys.executable, "-m", "gradfit", "fit", str(half), *args], check=False, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([sys.executable, "-m", "gradfit", "fit", str(full), *args, "--resume"],
                           check=False, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2, again.stderr
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "different data" in lines[0], again.stderr


# -- SIGKILL during checkpoints ---

PAIR_WRITER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("_files", sys.argv[1])
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
folder = sys.argv[2]
print("ready", flush=True)
i = 0
while True:
    i += 1
    blob = (str(i) * 50_000).encode()
    files.commit_pair(folder + "/doc.json", blob, "doc.bin", lambda name: json.dumps({"i": i, "file": name}))
"""


def test_sigkill_of_a_pair_writer_always_leaves_a_complete_pair(tmp_path):
    """The commit protocol alone (no torch, so fast): 30 random SIGKILLs, and after each the
    document names a present file holding exactly the content written with it."""
    rng = random.Random(0)
    for k in range(30):
        proc = subprocess.Popen([sys.executable, "-c", PAIR_WRITER, _files.__file__, str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if not (tmp_path / "doc.json").exists():
            continue  # killed before the first commit
        doc = json.loads((tmp_path / "doc.json").read_text())
        assert (tmp_path / doc["file"]).read_bytes() == (str(doc["i"]) * 50_000).encode(), k


# -- SIGKILL during training runs ------------------------------------------------------------------

def _kill_and_resume(tmp_path, kills, seed):
    data = tmp_path / "d.csv"
    xs = np.random.default_rng(0).uniform(-1, 1, 60)
    data.write_text("x,y\n" + "".join(f"{a},{np.sin(2 * a)}\n" for a in xs))
    args = [sys.executable, "-m", "gradfit", "fit", str(data), "mlp", "--x", "x", "--y", "y", "--hidden", "4",
            "--epochs", "150", "--batch-size", "16", "--no-progress", "--json", "--checkpoint-every", "1"]
    full = subprocess.run(args + ["--out", str(tmp_path / "full")], check=False, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr
    want = (tmp_path / "full" / "model.safetensors").read_bytes()
    rng = random.Random(seed)
    survived = alive = 0
    for k in range(kills):
        out = tmp_path / f"cut{k}"
        proc = subprocess.Popen(args + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "checkpoint.json").exists() and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        alive += proc.poll() is None  # killed mid-run, not after the run ended
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        res = subprocess.run(args + ["--out", str(out), "--resume"], check=False, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, f"kill {k}: {res.stderr}"
        assert json.loads(res.stdout)["loss"] == json.loads(full.stdout)["loss"]
        assert (out / "model.safetensors").read_bytes() == want
        survived += 1
    assert survived == kills and alive >= (kills + 1) // 2, (survived, alive)


@pytest.mark.slow
def test_sigkill_with_checkpoint_every_epoch_always_resumes(tmp_path):
    _kill_and_resume(tmp_path, 3, seed=0)


@pytest.mark.slow
def test_sigkill_with_checkpoint_every_epoch_always_resumes_20(tmp_path):
    _kill_and_resume(tmp_path, 20, seed=1)


# -- file modes follow the umask --------------------------------------------------------------------

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _files.atomic_write_text(tmp_path / "a.txt", "x")
        write_document(tmp_path / "m.json", {"k": 1}, {"w": torch.ones(2)})
        save_checkpoint(tmp_path / "ck", {"a": torch.zeros(1)}, {"counters": {"epoch": 1}})
    finally:
        os.umask(old)
    files = [tmp_path / "a.txt", tmp_path / "m.json", tmp_path / "m.safetensors",
             tmp_path / "ck" / "checkpoint.json", tmp_path / "ck" / "checkpoint.safetensors"]
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: oct(mode) for f in files}
