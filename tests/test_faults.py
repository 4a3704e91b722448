"""Fault injection for gradfit's multi-file saves (issue 12 sections 1, 2, 3, 8).

- a model (model.json + model.safetensors) and a checkpoint (checkpoint.json +
  checkpoint.safetensors) change as one atomic unit: an injected ENOSPC at every write, rename
  and link step leaves the old complete pair (or, after the commit point, the new one);
- SIGKILL of real ``gradfit fit ... --checkpoint-every 1`` runs (the CLI's main() in os.fork()ed
  children of this process, so a kill costs a fork, not a Python start). Every killed run
  resumes, and every chain of resumes ends on the uninterrupted run's exact weights and history;
  a kill during the final model save leaves no model or the complete final one. Counts:
    default run: 100 kills at random moments (50 of a minibatch run, 50 of a full-batch run)
                 + 28 kills at each step of a checkpoint commit and of the model save (7 + 7,
                 each run), 128 in all;
    slow (-m slow): 300 more at random moments, and 23 through ``python -m gradfit``
                 subprocesses (3 + 20);
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
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import cli
from _forking import (
    COMMIT_POINT,
    COMMIT_STEPS,
    STAGED,
    assert_exit_ok,
    identity,
    killed,
    listing,
    reap,
    spawn,
    wait_for,
)

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
#
# The children are os.fork()s of this test process, which imported gradfit, torch and matplotlib
# once (and ran the reference fit): each child runs the real CLI, gradfit.cli.main.main with the
# argv a user types (`fit DATA mlp --checkpoint-every 1 --out DIR [--resume]`), writing real
# checkpoints and models, and is SIGKILLed mid-run. A kill costs a fork, not a Python start
# (~2 s with torch), which is what lets 100 kills run in the default test run.

# (epochs, options): a full-batch epoch is one step, so that run has more of them to be cut in
RUNS = {"minibatch": (24, ["--batch-size", "16"]), "full_batch": (60, [])}
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="forks children of the test process")


@pytest.fixture
def scratch(tmp_path):
    """The runs' folder: in memory (/dev/shm) where there is one. A SIGKILL ends a process, not
    the machine, so what it wrote stays in the page cache either way: the fsyncs (7 a commit)
    that a disk makes each checkpoint wait for change nothing a kill can leave, only the time."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="gradfit-test-") as folder:
        yield Path(folder)


@pytest.fixture
def one_thread():
    """One torch thread here and so in the forked children: forking a process whose OpenMP pool
    is running leaves the child's pool unusable, and one thread keeps every run's numbers alike."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fit_argv(data, run, out, resume=False):
    epochs, options = RUNS[run]
    return ["fit", str(data), "mlp", "--x", "x", "--y", "y", "--hidden", "4", "--epochs", str(epochs), *options,
            "--no-progress", "--json", "--checkpoint-every", "1", "--out", str(out), *(["--resume"] * resume)]


def _kill_at_random(pid, out, rng, timing, counts):
    """SIGKILL a running child at a random moment and return its wait status.

    ``timing`` is (start-up, one epoch, epochs) of an uninterrupted run, times in seconds. 1 kill in 5 comes
    at a delay up to the start-up and two epochs from the child's start (start-up, reading the
    checkpoint, the first epochs); 3 in 4 at a delay up to one epoch after the child's 1st, 2nd
    or 3rd new checkpoint commit, so that a run is cut about ten times on its way through the
    epochs, anywhere in an epoch and its commit; 1 in 20 as soon as it commits its model
    (inside or just after the model's commit).
    """
    start_up, epoch, epochs = timing
    mode = rng.random()
    checkpoint, model = out / "checkpoint.json", out / "model.json"
    patience = start_up + epochs * epoch  # a whole run
    if mode < 0.2:
        counts["from_the_start"] += 1
        time.sleep(rng.uniform(0.0, start_up + 2 * epoch))
    elif mode < 0.95:
        counts["after_new_checkpoints"] += 1
        files = [identity(checkpoint)]

        def committed():
            now = identity(checkpoint)
            files.extend([now] if now != files[-1] else [])
            return len(files) > commits

        commits = rng.randint(1, 3)
        status = wait_for(pid, committed, patience)
        if status is not None:
            return status  # it finished first
        time.sleep(rng.uniform(0.0, epoch))
    else:
        counts["at_the_model_save"] += 1
        old, before = identity(model), listing(out)
        status = wait_for(pid, lambda: identity(model) != old or any(
            STAGED["model"].match(n) for n in listing(out) - before), patience)
        if status is not None:
            return status
    os.kill(pid, signal.SIGKILL)
    return reap(pid)


def _final_state(out):
    """(network weights, history.csv) of a finished run's folder."""
    weights = gf.load(out / "model.json").model.module.state_dict()
    return weights, (out / "history.csv").read_bytes()


def _assert_same_model(out, want):
    got = gf.load(out / "model.json").model.module.state_dict()
    assert got.keys() == want[0].keys() and all(torch.equal(got[k], want[0][k]) for k in got), out


def _reference(folder, run):
    """Write the data, fit uninterrupted in this process (which also imports and warms up all
    that the forked children use): (data path, final state)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "d.csv"
    xs = np.random.default_rng(0).uniform(-1, 1, 60)
    data.write_text("x,y\n" + "".join(f"{a},{np.sin(2 * a)}\n" for a in xs))
    code, _, err = cli(*_fit_argv(data, run, folder / "reference"))
    assert code == 0, err
    return data, _final_state(folder / "reference")


def _check_after_kill(out, want, counts):
    """What a kill may leave: no checkpoint and no model (killed before the first commit), or a
    checkpoint that loads (its tensor file present, checksum right); a model only if complete
    and the final one (a run writes its model once, at the end). The checkpoint's epoch, or 0."""
    epoch = 0
    if (out / "checkpoint.json").exists():
        epoch = load_checkpoint(out)[1]["counters"]["epoch"]
    else:
        assert not (out / "model.json").exists(), out
    if (out / "model.json").exists():
        _assert_same_model(out, want)
        counts["model_on_disk"] += 1
    return epoch


def _sigkill_campaign(folder, run, kills, seed):
    """``kills`` SIGKILLs of ``gradfit fit --checkpoint-every 1`` runs at random moments.

    Each chain starts a run in a fresh folder, kills it, resumes it (``--resume``; afresh when no
    checkpoint was committed yet), kills the resumed run, ... a random number of times (10 to 20),
    then lets the last resume finish, whose weights and history must equal the uninterrupted
    run's exactly. A kill that finds the run already finished ends the chain (not counted). The
    moments are drawn by _kill_at_random, so that over a chain kills land everywhere from
    start-up through every epoch and its commit to the model save and the plots. Returns the
    counts, with ``checkpoint_epochs``: how many different epochs the kills left on disk."""
    from collections import Counter

    rng = random.Random(seed)
    data, want = _reference(folder, run)
    # a forked run writes the same model; its start-up and epoch times scale the kill delays
    forked, log = folder / "forked", folder / "forked.log"
    start, marks = time.monotonic(), []
    pid = spawn(_fit_argv(data, run, forked), log)
    for path in (forked / "checkpoint.json", forked / "model.json"):
        assert wait_for(pid, path.exists, 120.0) is None, log.read_text() if log.exists() else ""
        marks.append(time.monotonic() - start)
    os.kill(pid, signal.SIGKILL)  # its plots are not needed
    reap(pid)
    epochs = RUNS[run][0]
    timing = (marks[0], (marks[1] - marks[0]) / epochs, epochs)
    _assert_same_model(forked, want)
    counts, epochs_left = Counter(), set()
    while counts["kills"] < kills:
        out, log = folder / f"chain{counts['chains']}", folder / f"chain{counts['chains']}.log"
        counts["chains"] += 1
        budget = rng.randint(10, 20)
        while True:
            before = listing(out)
            resume = (out / "checkpoint.json").exists()
            counts["resumed" if resume else "started_afresh"] += 1
            pid = spawn(_fit_argv(data, run, out, resume), log)
            if budget == 0 or counts["kills"] == kills:
                assert_exit_ok(reap(pid), log)
                break
            status = _kill_at_random(pid, out, rng, timing, counts)
            if not killed(status):
                assert_exit_ok(status, log)  # it finished before the kill
                break
            counts["kills"] += 1
            budget -= 1
            # a staged file or a temporary file that the kill left: it landed inside a commit
            left = {n for n in listing(out) - before if n.endswith(".tmp") or any(p.match(n) for p in STAGED.values())}
            counts["inside_a_commit"] += bool(left)
            epochs_left.add(_check_after_kill(out, want, counts))
        assert _same(_final_state(out), want), f"{out}: resumed run ended elsewhere ({dict(counts)})"
        counts["resumed_to_the_end"] += 1
    counts["checkpoint_epochs"] = len(epochs_left - {0})
    return counts


def _same(got, want):
    return (got[0].keys() == want[0].keys() and all(torch.equal(got[0][k], want[0][k]) for k in got[0])
            and got[1] == want[1])


@needs_fork
def test_100_sigkills_at_random_moments_all_resume_to_the_same_parameters(scratch, one_thread):
    counts = {run: _sigkill_campaign(scratch / run, run, kills=50, seed=i) for i, run in enumerate(RUNS)}
    print({run: dict(c) for run, c in counts.items()})
    assert sum(c["kills"] for c in counts.values()) >= 100, counts
    assert all(c["resumed_to_the_end"] == c["chains"] for c in counts.values()), counts


@needs_fork
@pytest.mark.slow
def test_300_sigkills_at_random_moments_all_resume_to_the_same_parameters(scratch, one_thread):
    counts = {run: _sigkill_campaign(scratch / run, run, kills=150, seed=10 + i) for i, run in enumerate(RUNS)}
    print({run: dict(c) for run, c in counts.items()})
    assert sum(c["kills"] for c in counts.values()) >= 300, counts
    assert all(c["resumed_to_the_end"] == c["chains"] for c in counts.values()), counts


@needs_fork
@pytest.mark.parametrize("run", list(RUNS))
def test_sigkill_at_every_step_of_a_checkpoint_and_of_the_model_save(scratch, one_thread, run):
    """One chain of runs, each SIGKILLed (by itself, at an exact file operation) at the next step
    of commit_pair: of its second checkpoint (steps 1 to 7), then of the final model save (steps
    1 to 7). A checkpoint kill leaves the previous checkpoint before the commit point and the new
    one after it; a model kill leaves no model before the commit point and the complete final
    model after it. The last resume ends on the uninterrupted run's weights and history."""
    data, want = _reference(scratch, run)
    out, log = scratch / "steps", scratch / "steps.log"
    epoch = 0
    for step in range(1, COMMIT_STEPS + 1):
        resume = (out / "checkpoint.json").exists()
        status = reap(spawn(_fit_argv(data, run, out, resume), log, step_kill=("checkpoint", 2, step)))
        assert killed(status), (step, status, log.read_text() if log.exists() else "")
        epoch += 1 if step <= COMMIT_POINT else 2
        assert load_checkpoint(out)[1]["counters"]["epoch"] == epoch, step
        assert not (out / "model.json").exists()
    for step in range(1, COMMIT_STEPS + 1):
        status = reap(spawn(_fit_argv(data, run, out, resume=True), log, step_kill=("model", 1, step)))
        assert killed(status), (step, status, log.read_text() if log.exists() else "")
        assert load_checkpoint(out)[1]["counters"]["epoch"] == RUNS[run][0]
        if step <= COMMIT_POINT:
            assert not (out / "model.json").exists(), step
        else:
            _assert_same_model(out, want)
    assert_exit_ok(reap(spawn(_fit_argv(data, run, out, resume=True), log)), log)
    assert _same(_final_state(out), want)


# the same through `python -m gradfit` subprocesses (a fresh interpreter per run: slow)

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


def test_temporary_files_left_by_a_kill_are_removed_once_stale(tmp_path):
    """A writer killed mid-write leaves '.<name>.<hex>.tmp'; the next save removes it once it is
    older than STALE_TEMPORARY_S (a fresh one may be another process's save in progress)."""
    names = [".checkpoint.json.0123456789ab.tmp", ".checkpoint.safetensors.0123456789ab.tmp",
             ".checkpoint.0123456789abcdef.safetensors.ba9876543210.tmp"]
    for n in names:
        (tmp_path / n).write_bytes(b"partial")
    (tmp_path / ".other.json.0123456789ab.tmp").write_bytes(b"not ours")
    old = time.time() - _files.STALE_TEMPORARY_S - 5
    os.utime(tmp_path / names[0], (old, old))
    os.utime(tmp_path / names[2], (old, old))
    save_checkpoint(tmp_path, {"w": torch.ones(2)}, {"counters": {"epoch": 1}})
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([".checkpoint.safetensors.0123456789ab.tmp", ".other.json.0123456789ab.tmp",
                           "checkpoint.json", "checkpoint.safetensors"])
