"""Streamed training under torchrun (train/streamed.py, data/parquet_rows.py): sharded reads
(each rank its own row groups, in lockstep with idle steps), simulated and with 2 gloo
processes, and the whole-stream mode that equals one process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from gradfit.data.parquet_rows import ParquetData, pass_rows, rank_batch_size, shuffled_batches
from gradfit.errors import ConfigError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from test_stream_training import _linear_rows, _reader, _write, linear  # noqa: E402,F401  (linear: a fixture)


# -- sharded reads: torchrun's ranks, simulated -----------------------------------------------------

def _ids_folder(tmp_path, n: int, row_group: int):
    """``n`` rows numbered by an ``id`` column, in ``row_group``-row groups of one file."""
    rng = np.random.default_rng(3)
    cols = {"id": np.arange(n, dtype=float), "x1": rng.normal(size=n), "y": rng.normal(size=n)}
    return _write(tmp_path / "ids", cols, files=1, row_group=row_group)


def _lockstep(per_rank: list) -> list:
    """The steps of a sharded epoch, simulated as train/streamed.py runs them: at each step every
    rank takes its next batch or, with none left, an idle step (None); the epoch ends after the
    step at which no rank has another batch."""
    its = [iter(b) for b in per_rank]
    current = [next(it, None) for it in its]
    steps = []
    while True:
        upcoming = [next(it, None) for it in its]
        steps.append(current)
        if all(u is None for u in upcoming):
            return steps
        current = upcoming


def test_the_ranks_batch_sizes_sum_to_the_global_batch():
    for world in (1, 2, 3, 4, 7):
        for batch in range(world, 40):
            sizes = [rank_batch_size(batch, (r, world)) for r in range(world)]
            assert sum(sizes) == batch and max(sizes) - min(sizes) <= 1, (batch, world, sizes)
    assert rank_batch_size(10, None) == 10


# 7 row groups over 2 and 3 ranks (odd), more ranks than row groups, and row-group splits
@pytest.mark.parametrize("groups, world, fraction", [(7, 2, 0.0), (7, 3, 0.0), (3, 5, 0.0), (13, 3, 0.2),
                                                     (12, 4, 0.25)])
def test_sharded_ranks_read_disjoint_units_and_use_every_training_row_once(tmp_path, groups, world, fraction):
    size, batch = 100, 30
    n = groups * size - 37  # the last row group is short
    reader = _reader(_ids_folder(tmp_path, n, size), fraction, seed=5, columns=("id", "x1", "y"))
    train_units = reader.split.train_units()
    assert reader.split.kind == ("none" if not fraction else "row_group")
    train_ids = np.array([i for i in range(n) if i // size in train_units], dtype=float)
    for epoch in (1, 2, 5):
        per_rank = [list(shuffled_batches(reader, epoch, 5, batch, 150, shard=(r, world))) for r in range(world)]
        units = [{int(i) // size for b in batches for i in b.inputs["id"]} for batches in per_rank]
        perm = np.random.default_rng([5, epoch]).permutation(len(train_units))  # drawn as in one process
        for r in range(world):
            assert units[r] == {train_units[i] for i in perm[r::world]}
            own = rank_batch_size(batch, (r, world))
            assert all(b.n == own for b in per_rank[r][:-1]) and all(b.n <= own for b in per_rank[r])
        assert sum(len(u) for u in units) == len(set().union(*units)) == len(train_units)
        steps = _lockstep(per_rank)
        assert len(steps) == max(len(b) for b in per_rank)
        assert all(any(b is not None for b in step) for step in steps)  # no step is idle on every rank
        used = np.concatenate([b.inputs["id"] for step in steps for b in step if b is not None])
        np.testing.assert_array_equal(np.sort(used), train_ids)  # every training row exactly once
        if world > groups:  # the ranks without units idle at every step
            assert all(per_rank[r] == [] for r in range(groups, world))
    for validation in (False, True) if fraction else (False,):
        passed = [np.concatenate([p.inputs["id"] for p in pass_rows(reader, validation, (r, world))] or [[]])
                  for r in range(world)]
        whole = np.concatenate([p.inputs["id"] for p in pass_rows(reader, validation)])
        np.testing.assert_array_equal(np.sort(np.concatenate(passed)), np.sort(whole))


def test_shard_reads_is_checked(tmp_path, monkeypatch):
    from gradfit.fitting.streamed import _shard_group
    from gradfit.train import distributed

    with pytest.raises(ConfigError, match="shard_reads must be True or False"):
        ParquetData(tmp_path, shard_reads="no")
    fake = distributed.Group.__new__(distributed.Group)
    fake.rank, fake.size = 0, 4
    monkeypatch.setattr(distributed, "training_group", lambda: fake)
    with pytest.raises(ConfigError, match=r"batch_size=3 is smaller than the 4 ranks.*shard_reads=False"):
        _shard_group(ParquetData(tmp_path), 3)
    assert _shard_group(ParquetData(tmp_path), 4) is fake
    assert _shard_group(ParquetData(tmp_path, shard_reads=False), 3) is None


# -- torchrun ------------------------------------------------------------------------------------------

TORCHRUN_SCRIPT = r"""
import json, sys
import numpy as np
import gradfit as gf
from gradfit.train.distributed import process_group
folder, out = sys.argv[1], sys.argv[2]
data = gf.ParquetData(folder, stream=True, shard_reads=False)
kw = dict(batch_size=256, epochs=3, dtype="float64", val_fraction=0.2, device="cpu")
net = gf.fit("mlp", x=["x1", "x2"], y="y", data=data, hidden=(8,), lr=0.01, normalize=True, **kw)
line = gf.fit("y ~ a*x1 + b*x2 + c", data=data, lr=0.05, **kw)
doc = {"world": process_group()[1],
       "mlp": np.concatenate([p.detach().numpy().ravel() for p in net.model.module.parameters()]).tolist(),
       "formula": [line.params[k] for k in "abc"],
       "history": [net.history["train_loss"], net.history["val_loss"], line.history["train_loss"]],
       "losses": [net.loss, net.val_loss, line.loss, line.val_loss]}
if process_group()[0] == 0:
    with open(out, "w") as f:
        json.dump(doc, f)
"""


@pytest.mark.slow
def test_two_torchrun_processes_reading_the_whole_stream_equal_one(tmp_path):
    import os

    folder = _write(tmp_path / "ddp", _linear_rows(6000, seed=7), files=2, row_group=250)  # 24 row groups
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "GRADFIT_NO_DDP")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "one.json")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(folder), str(tmp_path / "two.json")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (a["world"], b["world"]) == (1, 2)
    # each rank steps on its share of the same global batches; the weighted all-reduce makes the
    # step the one-process step up to the order of float64 additions
    for key in ("mlp", "formula"):
        np.testing.assert_allclose(b[key], a[key], rtol=1e-9, atol=1e-12)
    for h1, h2 in zip(a["history"], b["history"]):
        np.testing.assert_allclose(h2, h1, rtol=1e-9)
    np.testing.assert_allclose(b["losses"], a["losses"], rtol=1e-9)


SHARDED_SCRIPT = r"""
import json, sys
import numpy as np
import gradfit as gf
import torch.distributed as dist
from gradfit.callbacks import Callback
from gradfit.data import parquet_rows
from gradfit.train import streamed
from gradfit.train.checkpoint import Checkpointer, Interrupted
from gradfit.train.distributed import process_group
folder, out, ck = sys.argv[1:4]
rank, world = process_group()
reads, seen = [0], []
read = parquet_rows.RowSource.read

def counted(self, unit, columns):
    reads[0] += 1
    return read(self, unit, columns)

batches = streamed.StreamedTraining.batches

def recorded(self, epoch):  # per epoch: the row groups this rank read, the x1 values (unique: ids) it stepped on
    before, ids = reads[0], []
    for part in batches(self, epoch):
        ids.append(part.inputs["x1"])
        yield part
    seen.append({"reads": reads[0] - before, "x1": np.concatenate(ids).tolist() if ids else []})

parquet_rows.RowSource.read, streamed.StreamedTraining.batches = counted, recorded
formula, data = "y ~ a*x1 + b*x2 + c", gf.ParquetData(folder, stream=True)
kw = dict(batch_size=1024, lr=0.05, schedule="cosine", normalize=True, dtype="float64", device="cpu")
r = gf.fit(formula, data=data, epochs=8, **kw)
doc = {"world": world, "params": [r.params[k] for k in "abc"], "epochs": list(seen), "n_train": r.n_train,
       "loss": r.loss, "history": r.history["train_loss"], "source": r.settings["source"]}
seen.clear()
v = gf.fit(formula, data=data, epochs=2, val_fraction=0.2, **kw)
doc["val"] = {"epochs": list(seen), "n_train": v.n_train, "n_val": v.n_val, "val_loss": v.val_loss,
              "history": v.history["val_loss"], "params": [v.params[k] for k in "abc"]}
full = gf.fit(formula, data=data, epochs=3, **kw)
ckpt = Checkpointer(ck, every_epochs=None, every_seconds=None)

class SignalMidEpoch(Callback):  # only rank 1 is asked to stop: the ranks agree to stop after the same step
    def before_epoch(self, loop):
        if loop.epoch == 2 and rank == 1:
            ckpt.signal = 15

try:
    gf.fit(formula, data=data, epochs=3, checkpoint=ckpt, callbacks=[SignalMidEpoch()], **kw)
    stopped = False
except Interrupted:
    stopped = True
dist.barrier()  # rank 0 has written the checkpoint
resumed = gf.fit(formula, data=data, epochs=3, checkpoint=Checkpointer(ck), resume=True, **kw)
doc["resume"] = {"stopped": stopped, "equal": resumed.params == full.params and resumed.history == full.history}
with open(f"{out}.{rank}.json", "w") as f:
    json.dump(doc, f)
"""


@pytest.mark.slow
def test_two_torchrun_processes_with_sharded_reads_each_read_half_and_use_every_row_once(tmp_path):
    import os

    cols = _linear_rows(47_500, seed=11)
    folder = _write(tmp_path / "sharded", cols, files=1, row_group=2500)  # 19 row groups: odd
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "GRADFIT_NO_DDP")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(folder), str(tmp_path / "out"), str(tmp_path / "ck")], env=env,
                         capture_output=True, text=True, timeout=300)  # a rank waiting for ever would time out
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"out.{r}.json").read_text()) for r in (0, 1))
    assert a["world"] == 2 and a["source"]["sharded"] is True and a["source"]["ranks"] == 2
    # the ranks take the same steps: bit-identical parameters, histories and losses
    for key in ("params", "history", "loss", "n_train"):
        assert a[key] == b[key]
    assert a["val"]["params"] == b["val"]["params"] and a["val"]["val_loss"] == b["val"]["val_loss"]
    x1 = np.sort(cols["x1"])
    for fit, train_units in ((a, 19), (a["val"], 19 - 4)):  # val_fraction=0.2 holds out round(3.8) groups
        assert len(fit["epochs"]) == len(b["val"]["epochs"] if fit is a["val"] else b["epochs"])
        other = b["val"] if fit is a["val"] else b
        for mine, theirs in zip(fit["epochs"], other["epochs"]):
            # each rank reads its half of the epoch's row groups, and nothing more, during the epoch
            assert sorted([mine["reads"], theirs["reads"]]) == [train_units // 2, train_units - train_units // 2]
            used = np.sort(mine["x1"] + theirs["x1"])
            assert len(used) == fit["n_train"] and len(np.unique(used)) == len(used)  # each row once
            assert np.isin(used, x1).all()
    assert a["n_train"] == 47_500 and a["val"]["n_train"] + a["val"]["n_val"] == 47_500
    # a linear formula recovers the least-squares solution of all rows (the 1-process test's tolerance)
    design = np.column_stack([cols["x1"], cols["x2"], np.ones(len(x1))])
    ref, *_ = np.linalg.lstsq(design, cols["y"], rcond=None)
    assert np.allclose(a["params"], ref, atol=1e-3)
    # the final loss, and the validation loss of the held-out rows (those no rank trained on),
    # equal numpy's at the final parameters: the ranks' passes were added, not duplicated
    assert a["loss"] == pytest.approx(float(np.mean((design @ a["params"] - cols["y"]) ** 2)), rel=1e-9)
    trained = np.isin(cols["x1"], a["val"]["epochs"][0]["x1"] + b["val"]["epochs"][0]["x1"])
    held = ~trained
    assert held.sum() == a["val"]["n_val"]
    val_ref = np.mean((design[held] @ a["val"]["params"] - cols["y"][held]) ** 2)
    assert a["val"]["val_loss"] == pytest.approx(float(val_ref), rel=1e-9)
    # a stop asked of one rank mid-epoch stops both after the same step; resuming equals the straight run
    assert a["resume"] == b["resume"] == {"stopped": True, "equal": True}
