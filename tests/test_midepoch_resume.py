"""Issue 12 §6: a stop signal between two minibatches saves the state at that minibatch, and
``resume`` continues from it: the same remaining optimizer steps, ending bit-identical
(torch.equal) to an uninterrupted run, for SGD, Adam and minibatch L-BFGS, with and without
input noise, a penalty, validation, early stopping and a schedule."""

import functools
import json
import signal

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit import ConfigError, PersistError
from gradfit.callbacks import Callback
from gradfit.train.checkpoint import CHECKPOINT_VERSION, Checkpointer, Interrupted, load_checkpoint

RNG = np.random.default_rng(1)
XS = RNG.uniform(-1, 1, 60)
YS = 2 * XS + 1 + 0.1 * RNG.normal(size=XS.size)
LINE = dict(x=XS, y=YS, lr=1e-2, batch_size=4, seed=5, progress=False, epochs=4)  # 15 minibatches an epoch
NB = 15

XM = RNG.uniform(-1, 1, (100, 2))
YM = np.sin(XM).sum(1)
# 80 training rows in minibatches of 16: 5 an epoch
MLP = dict(x=XM, y=YM, hidden=(8,), lr=1e-2, batch_size=16, seed=3, progress=False, epochs=5, val_fraction=0.2)


class StepRecorder(Callback):
    """Counts the optimizer's steps and keeps a copy of the parameters after each one."""

    def __init__(self):
        self.after = []

    def before_fit(self, loop):
        super().before_fit(loop)
        real = loop.optimizer.step

        @functools.wraps(real)  # keeps the mark torch's schedulers look for
        def step(*a, **k):
            out = real(*a, **k)
            self.after.append([t.detach().clone() for t in loop.objective.leaves])
            self.on_step(loop)
            return out

        loop.optimizer.step = step

    def on_step(self, loop):
        pass


class StopAtStep(Checkpointer):
    """A checkpointer whose stop flag turns on during the ``stop_step``-th optimizer step
    (1-based, over the run): a Ctrl-C that arrives inside a known minibatch."""

    def __init__(self, folder, stop_step, **kw):
        super().__init__(folder, every_seconds=None, **kw)
        self.stop_step, self.steps = stop_step, 0

    def before_fit(self, loop):
        super().before_fit(loop)
        real = loop.optimizer.step

        @functools.wraps(real)  # keeps the mark torch's schedulers look for
        def step(*a, **k):
            out = real(*a, **k)
            self.steps += 1
            if self.steps == self.stop_step:
                self.signal = signal.SIGINT
            return out

        loop.optimizer.step = step


def _interrupt_and_resume(model, kw, folder, stop_step):
    """(reference steps, the Interrupted, the checkpoint, the resumed result, its steps)."""
    with pytest.raises(Interrupted) as stop:
        gf.fit(model, checkpoint=StopAtStep(folder, stop_step), **kw)
    saved = load_checkpoint(folder)
    rec = StepRecorder()
    res = gf.fit(model, checkpoint=Checkpointer(folder, every_seconds=None), resume=True,
                 callbacks=[rec], **kw)
    return stop.value, saved, res, rec.after


def _reference(model, kw):
    rec = StepRecorder()
    return gf.fit(model, callbacks=[rec], **kw), rec.after


def _same_tensors(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# (epoch, minibatch after which the signal arrives): after the first minibatch, in the middle,
# before the last minibatch, in the first and the last epoch
POSITIONS = [(1, 1), (1, NB - 1), (3, 7), (4, 1), (4, NB - 1)]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "lbfgs"])
@pytest.mark.parametrize("epoch,batch", POSITIONS)
def test_stop_between_minibatches_saves_that_minibatch_and_resumes_bit_identical(tmp_path, optimizer, epoch, batch):
    kw = dict(LINE, optimizer=optimizer, **({"optimizer_options": {"momentum": 0.9}} if optimizer == "sgd" else {}))
    full, steps = _reference("y ~ a*x + b", kw)
    assert len(steps) == 4 * NB
    stop_step = (epoch - 1) * NB + batch
    stop, (tensors, meta), res, resumed_steps = _interrupt_and_resume("y ~ a*x + b", kw, tmp_path, stop_step)
    # the checkpoint is the state after exactly stop_step minibatches, not the last epoch's end
    assert meta["version"] == CHECKPOINT_VERSION
    assert meta["counters"] == {"epoch": epoch - 1, "batch_start": 4 * batch}
    assert stop.epoch == epoch - 1 and stop.rows == (4 * batch, 60)
    assert stop.where == f"in epoch {epoch} after {4 * batch} of 60 rows"
    assert torch.equal(tensors["leaf.0"], steps[stop_step - 1][0])
    assert len(meta["history"]["train_loss"]) == epoch - 1
    # the resumed run takes the remaining steps only, through the same parameters
    assert len(resumed_steps) == 4 * NB - stop_step
    assert all(_same_tensors(a, b) for a, b in zip(resumed_steps, steps[stop_step:]))
    assert res.params == full.params and res.history == full.history and res.epochs_run == full.epochs_run


MLP_EXTRAS = {
    "plain": {},
    "noise_penalty": {"input_noise": 0.05, "penalty": {"l2": 1e-3}},
    "early_stopping": {"early_stopping": 1, "lr": 0.1},  # stops after epoch 3, hands back epoch 2
    "schedule_momentum": {"optimizer": "sgd", "optimizer_options": {"momentum": 0.9}, "schedule": "cosine"},
}


@pytest.mark.parametrize("extra", list(MLP_EXTRAS), ids=list(MLP_EXTRAS))
@pytest.mark.parametrize("epoch,batch", [(1, 1), (2, 4), (3, 2)])
def test_mlp_resumes_bit_identical_from_a_minibatch(tmp_path, extra, epoch, batch):
    kw = dict(MLP, **{"optimizer": "adam", **MLP_EXTRAS[extra]})
    full, steps = _reference("mlp", kw)
    assert (full.status == "stopped_early") == (extra == "early_stopping")
    stop_step = (epoch - 1) * 5 + batch
    _, (tensors, meta), res, _ = _interrupt_and_resume("mlp", kw, tmp_path, stop_step)
    assert meta["counters"] == {"epoch": epoch - 1, "batch_start": 16 * batch}
    assert _same_tensors([tensors[f"leaf.{i}"] for i in range(len(steps[0]))], steps[stop_step - 1])
    got, want = res.model.module.state_dict(), full.model.module.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert res.history == full.history and res.epochs_run == full.epochs_run and res.best_epoch == full.best_epoch
    np.testing.assert_array_equal(res.predict(XM), full.predict(XM))


def test_the_divergence_copy_of_the_epoch_in_progress_is_saved(tmp_path):
    """A mid-epoch checkpoint keeps the parameters the epoch began with (``pending.*``): a
    divergence later on falls back to them exactly as in an uninterrupted run."""
    kw = dict(MLP, optimizer="adam")
    _, steps = _reference("mlp", kw)
    with pytest.raises(Interrupted):
        gf.fit("mlp", checkpoint=StopAtStep(tmp_path, 5 + 3), **kw)  # inside epoch 2
    tensors, _ = load_checkpoint(tmp_path)
    at_epoch_start = steps[5 - 1]  # after epoch 1's five minibatches
    assert _same_tensors([tensors[f"pending.{i}"] for i in range(len(at_epoch_start))], at_epoch_start)


class StopBeforeEpoch(Callback):
    """Sets the stop flag in its before_epoch hook of epoch ``epoch``: the signal arrives after
    the epoch began, before its first minibatch."""

    def __init__(self, checkpointer, epoch):
        self.checkpointer, self.epoch = checkpointer, epoch

    def before_epoch(self, loop):
        if loop.epoch == self.epoch:
            self.checkpointer.signal = signal.SIGINT


def test_stop_before_the_first_minibatch_and_resume_twice(tmp_path):
    kw = dict(LINE, optimizer="adam")
    full, steps = _reference("y ~ a*x + b", kw)
    ck = Checkpointer(tmp_path, every_seconds=None)
    with pytest.raises(Interrupted) as stop:
        gf.fit("y ~ a*x + b", checkpoint=ck, callbacks=[StopBeforeEpoch(ck, 2)], **kw)
    assert stop.value.rows == (0, 60)
    tensors, meta = load_checkpoint(tmp_path)
    assert meta["counters"] == {"epoch": 1, "batch_start": 0} and torch.equal(tensors["leaf.0"], steps[NB - 1][0])
    # the resumed run is interrupted again, inside epoch 3, then resumed to the end
    with pytest.raises(Interrupted) as again:
        gf.fit("y ~ a*x + b", checkpoint=StopAtStep(tmp_path, NB + 5), resume=True, **kw)
    assert again.value.rows == (20, 60) and again.value.epoch == 2
    res = gf.fit("y ~ a*x + b", checkpoint=Checkpointer(tmp_path, every_seconds=None), resume=True, **kw)
    assert res.params == full.params and res.history == full.history


def test_a_signal_in_the_last_minibatch_saves_at_the_end_of_the_epoch(tmp_path):
    kw = dict(LINE, optimizer="adam")
    full, _ = _reference("y ~ a*x + b", kw)
    with pytest.raises(Interrupted) as stop:
        gf.fit("y ~ a*x + b", checkpoint=StopAtStep(tmp_path, 2 * NB), **kw)
    assert stop.value.rows is None and stop.value.where == "after epoch 2"
    assert load_checkpoint(tmp_path)[1]["counters"] == {"epoch": 2}
    res = gf.fit("y ~ a*x + b", checkpoint=Checkpointer(tmp_path, every_seconds=None), resume=True, **kw)
    assert res.params == full.params and res.history == full.history


def test_resume_inside_an_epoch_needs_that_epoch(tmp_path):
    kw = dict(LINE, optimizer="adam")
    with pytest.raises(Interrupted):
        gf.fit("y ~ a*x + b", checkpoint=StopAtStep(tmp_path, 2 * NB + 3), **kw)  # inside epoch 3
    with pytest.raises(ConfigError, match="inside epoch 3; resume with at least 3 epochs"):
        gf.fit("y ~ a*x + b", checkpoint=tmp_path, resume=True, **dict(kw, epochs=2))


def test_mid_epoch_running_loss_is_kept(tmp_path):
    """The epoch's running loss sum travels in the checkpoint: the resumed epoch's mean batch
    loss equals the uninterrupted one's (and is not a mean over the resumed batches alone)."""
    kw = dict(LINE, optimizer="adam")
    full, _ = _reference("y ~ a*x + b", kw)
    with pytest.raises(Interrupted):
        gf.fit("y ~ a*x + b", checkpoint=StopAtStep(tmp_path, NB + 7), **kw)
    tensors, _ = load_checkpoint(tmp_path)
    assert tensors["loop.total"].shape == () and float(tensors["loop.total"]) > 0
    res = gf.fit("y ~ a*x + b", checkpoint=tmp_path, resume=True, **dict(kw, epochs=2))
    assert res.history["train_loss"] == full.history["train_loss"][:2]


@pytest.mark.parametrize("counters", [None, {"epoch": -1}, {"epoch": 1, "batch_start": "4"}, {"epoch": 1.5},
                                      {"epoch": 1, "rows": 3}])
def test_damaged_counters_are_refused(tmp_path, counters):
    gf.fit("y ~ a*x + b", checkpoint=Checkpointer(tmp_path, every_epochs=1, every_seconds=None),
           **dict(LINE, optimizer="adam", epochs=1))
    path = tmp_path / "checkpoint.json"
    doc = json.loads(path.read_text())
    if counters is None:
        del doc["counters"]
    else:
        doc["counters"] = counters
    path.write_text(json.dumps(doc))
    with pytest.raises(PersistError, match="damaged checkpoint"):
        load_checkpoint(tmp_path)
