"""Data-parallel training under torchrun (train/distributed.py): 2 CPU processes (gloo) take the
same steps as one process with the same global batch; checkpoints resume across the same world
size; a rank that dies takes the job down and leaves a checkpoint that loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradfit as gf
from gradfit.errors import ConfigError
from gradfit.train.checkpoint import Checkpointer, load_checkpoint
from gradfit.train.distributed import Group, check_resume_world, is_writer, training_group

SCRIPT = Path(__file__).with_name("_torchrun_train.py")


def _run(args, timeout=180):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "GRADFIT_NO_DDP")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


def _torchrun(*args, timeout=180):
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT),
                 *map(str, args)], timeout)


def _params(path, kind):
    doc = json.loads(Path(path).read_text())
    return doc["world"], [np.asarray(part, dtype=float) for part in doc[kind]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The 1-process and 2-process runs (10 epochs of both fits), computed once."""
    folder = tmp_path_factory.mktemp("ddp")
    one, two = folder / "one.json", folder / "two.json"
    p1 = _run([sys.executable, str(SCRIPT), str(one), "both"])
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = _torchrun(two, "both")
    assert p2.returncode == 0, p2.stderr[-3000:]
    return one, two


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "formula"])
def test_two_processes_equal_one_with_the_same_global_batch(runs, kind):
    one, two = runs
    world1, (p1, train1, val1) = _params(one, kind)
    world2, (p2, train2, val2) = _params(two, kind)
    assert (world1, world2) == (1, 2)
    # the parameters moved (so equality says something) and match to float64 rounding
    assert len(train1) == 10 and train1[-1] < train1[0]
    np.testing.assert_allclose(p2, p1, rtol=1e-10, atol=1e-13)
    # the history holds the losses of the global batches and validation set, reduced over the ranks
    np.testing.assert_allclose(train2, train1, rtol=1e-10)
    np.testing.assert_allclose(val2, val1, rtol=1e-10)


@pytest.mark.slow
def test_checkpointed_two_process_run_resumes_to_the_uninterrupted_one(runs, tmp_path):
    _, two = runs
    ckpt = tmp_path / "ckpt"
    first = _torchrun(tmp_path / "five.json", "both", "--epochs", 5, "--checkpoint", ckpt)
    assert first.returncode == 0, first.stderr[-3000:]
    for kind in ("mlp", "formula"):
        _, meta = load_checkpoint(ckpt / kind)
        assert meta["counters"]["epoch"] == 5 and meta["world_size"] == 2
    second = _torchrun(tmp_path / "ten.json", "both", "--epochs", 10, "--checkpoint", ckpt, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    for kind in ("mlp", "formula"):
        _, (p_resumed, train_resumed, _) = _params(tmp_path / "ten.json", kind)
        _, (p_straight, train_straight, _) = _params(two, kind)
        np.testing.assert_array_equal(p_resumed, p_straight)
        np.testing.assert_array_equal(train_resumed, train_straight)
    # a 2-process checkpoint does not resume in one process: its batches were split by rank
    one = _run([sys.executable, str(SCRIPT), str(tmp_path / "x.json"), "mlp", "--epochs", "12", "--checkpoint", str(ckpt),
                "--resume"])
    assert one.returncode != 0 and "written by 2 process(es) and this run has 1" in one.stderr


@pytest.mark.slow
def test_a_rank_that_dies_takes_the_job_down_and_the_checkpoint_loads(tmp_path):
    ckpt = tmp_path / "ckpt"
    p = _torchrun(tmp_path / "out.json", "mlp", "--epochs", 10, "--checkpoint", ckpt, "--die-at", 3, timeout=120)
    assert p.returncode != 0
    assert "rank 1 dies at epoch 3" in p.stderr
    assert not (tmp_path / "out.json").exists()
    tensors, meta = load_checkpoint(ckpt / "mlp")
    # rank 0 saved epoch 2, or epoch 3 too before its next all-reduce failed
    assert meta["counters"]["epoch"] in (2, 3) and meta["world_size"] == 2
    assert len(meta["history"]["train_loss"]) == meta["counters"]["epoch"]
    assert all(np.isfinite(t.numpy()).all() for k, t in tensors.items() if k.startswith("leaf."))


def test_outside_torchrun_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert training_group() is None and is_writer()


def test_a_rank_takes_every_world_th_row_of_a_batch():
    import torch

    from gradfit.train.objective import TensorData

    data = TensorData({"x": torch.arange(7.0)}, torch.arange(7.0) * 10, torch.ones(7))
    shares = [_fake_group(3, rank).share(data) for rank in range(3)]
    assert [s.inputs["x"].tolist() for s in shares] == [[0.0, 3.0, 6.0], [1.0, 4.0], [2.0, 5.0]]
    assert [Group.weight(s) for s in shares] == [3.0, 2.0, 2.0]
    assert sorted(sum((s.y.tolist() for s in shares), [])) == data.y.tolist()


def test_resume_under_another_world_size_is_a_config_error(tmp_path):
    x = np.linspace(0, 1, 20)
    kw = dict(x=x, y=2 * x + 1, optimizer="adam", epochs=3, lr=0.1, device="cpu")
    gf.fit("w*x + b", checkpoint=Checkpointer(tmp_path, every_epochs=1, every_seconds=None), **kw)
    meta_path = tmp_path / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    assert meta["world_size"] == 1
    meta_path.write_text(json.dumps({**meta, "world_size": 2}))
    with pytest.raises(ConfigError, match="written by 2 process"):
        gf.fit("w*x + b", checkpoint=Checkpointer(tmp_path, every_epochs=1), resume=True, **{**kw, "epochs": 5})
    with pytest.raises(ConfigError, match="torchrun --nproc_per_node=1 or without torchrun"):
        check_resume_world({"world_size": 1}, _fake_group(2))


def _fake_group(size, rank=0):
    """A Group's rank and size without a process group (share and the checks need no more)."""
    g = Group.__new__(Group)
    g.rank, g.size = rank, size
    return g
