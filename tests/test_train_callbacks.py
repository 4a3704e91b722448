"""The training loop's built-in callbacks (train/callbacks.py, train/checkpoint.py), each driven
directly through run_loop on a one-weight linear network, and the progress display."""

import io
import math

import numpy as np
import pytest
import torch

from gradfit.callbacks import Callback, ChunkProgress, LogCallback, ProgressCallback
from gradfit.losses import mse
from gradfit.models.neural import ModuleModel
from gradfit.status import Status
from gradfit.train.callbacks import (CONVERGED_WINDOW, DIVERGED_HINT, DivergenceGuard, EarlyStopping, History,
                                     ToleranceConvergence)
from gradfit.train.checkpoint import Checkpointer, Interrupted, load_checkpoint
from gradfit.train.loop import LoopConfig, run_loop
from gradfit.train.objective import ModuleObjective, TensorData


def _objective(val_slope=2.0, seed=0):
    """y = 2x + 1 + a wiggle that a line cannot fit, on 32 points; validation data with slope ``val_slope``."""
    torch.manual_seed(seed)
    x = torch.linspace(-1, 1, 32, dtype=torch.float64)
    module = torch.nn.Linear(1, 1).to(torch.float64)
    model = ModuleModel(module, in_features=1, out_features=1)
    wiggle = 0.3 * torch.sin(7 * x)
    train = TensorData({"x": x}, 2 * x + 1 + wiggle)
    val = TensorData({"x": x}, val_slope * x + 1 + wiggle)
    return ModuleObjective(model, train, val, mse)


def _run(objective, callbacks=(), epochs=50, lr=0.1, **kw):
    opt = torch.optim.SGD(objective.leaves, lr=lr)
    return run_loop(objective, opt, LoopConfig(epochs=epochs), list(callbacks), **kw)


def test_plain_run_uses_every_epoch():
    out = _run(_objective(), epochs=20)
    assert out.status is Status.MAX_EPOCHS and out.epochs_run == 20
    assert len(out.history["train_loss"]) == len(out.history["val_loss"]) == 20
    assert out.history["train_loss"][-1] < out.history["train_loss"][0]


def test_early_stopping_restores_the_best_epoch():
    obj = _objective(val_slope=-2.0)  # fitting the training data makes the validation loss worse
    es = EarlyStopping(patience=3)
    out = _run(obj, [es], epochs=200)
    val = out.history["val_loss"]
    assert out.status is Status.STOPPED_EARLY
    assert out.best_epoch == es.best_epoch == int(np.argmin(val)) + 1
    assert out.epochs_run == out.best_epoch + 3
    assert obj.evaluate(obj.val) == pytest.approx(val[out.best_epoch - 1], rel=1e-12)
    assert f"restored epoch {out.best_epoch}" in out.message


def test_early_stopping_hands_back_the_best_epoch_when_epochs_run_out():
    obj = _objective(val_slope=-2.0)
    out = _run(obj, [EarlyStopping(patience=1000)], epochs=30)
    assert out.status is Status.MAX_EPOCHS and out.best_epoch is not None
    assert obj.evaluate(obj.val) == pytest.approx(min(out.history["val_loss"]), rel=1e-12)


def test_early_stopping_state_round_trips():
    es = EarlyStopping(patience=5, min_delta=0.1)
    _run(_objective(val_slope=-2.0), [es], epochs=4)
    again = EarlyStopping(patience=5, min_delta=0.1)
    again.load_state_dict(es.state_dict())
    assert (again.best, again.since_best, again.best_epoch) == (es.best, es.since_best, es.best_epoch)
    assert all(torch.equal(a, b) for a, b in zip(again.best_state, es.best_state))


def test_tolerance_stops_after_the_window():
    out = _run(_objective(), [ToleranceConvergence(tol=1.0)], epochs=100)
    # every change is below a relative tol of 1, counted from the second epoch on
    assert out.status is Status.CONVERGED and out.epochs_run == CONVERGED_WINDOW + 1
    out = _run(_objective(), [ToleranceConvergence(tol=1.0, window=3)], epochs=100)
    assert out.epochs_run == 4 and "tol=1" in out.message
    out = _run(_objective(), [ToleranceConvergence(tol=1e-30)], epochs=30)
    assert out.status is Status.MAX_EPOCHS


def test_divergence_restores_finite_parameters():
    obj = _objective()
    out = _run(obj, epochs=500, lr=1e3)
    assert out.status is Status.DIVERGED and DIVERGED_HINT in out.message
    assert 0 < out.epochs_run < 500 and len(out.history["train_loss"]) == out.epochs_run
    assert all(math.isfinite(v) for v in out.history["train_loss"])
    assert all(bool(torch.isfinite(p).all()) for p in obj.leaves)
    assert math.isfinite(obj.evaluate(obj.train))


def test_divergence_guard_alone_on_a_fake_loop():
    class Loop:
        epoch, epochs_run, logs = 4, 4, {"train_loss": float("nan")}
        stopped = None

        class objective:
            calls = []
            remember = staticmethod(lambda: Loop.objective.calls.append("remember"))
            accept = staticmethod(lambda: Loop.objective.calls.append("accept"))
            restore_good = staticmethod(lambda: Loop.objective.calls.append("restore_good"))

        def stop(self, status, message):
            self.stopped = (status, message)

    loop = Loop()
    guard = DivergenceGuard()
    guard.before_epoch(loop)
    guard.after_epoch(loop)
    assert Loop.objective.calls == ["remember", "restore_good"]
    assert loop.stopped[0] is Status.DIVERGED and loop.epochs_run == 3


def test_callback_stop_request_hands_the_loop_a_status():
    class Loop:
        epoch, epochs_run, logs = 3, 3, {"train_loss": 1.0, "val_loss": None}
        stopped = None

        def stop(self, status, message):
            self.stopped = (status, message)

    class StopNow(Callback):
        def on_epoch_end(self, epoch, logs):
            return True

    loop = Loop()
    StopNow().after_epoch(loop)
    assert loop.stopped == (Status.STOPPED, "stopped by a callback at epoch 3")
    assert type(loop.stopped[0]) is Status


def test_user_callback_returning_true_stops():
    class StopAt(Callback):
        def __init__(self):
            self.seen, self.ended = [], None

        def on_epoch_end(self, epoch, logs):
            self.seen.append(epoch)
            return epoch == 7

        def on_train_end(self, status, epochs_run):
            self.ended = (status, epochs_run)

    cb = StopAt()
    out = _run(_objective(), [cb], epochs=50)
    assert out.status is Status.STOPPED and out.epochs_run == 7 and cb.seen == list(range(1, 8))
    assert cb.ended == (Status.STOPPED, 7) and out.message == "stopped by a callback at epoch 7"


def test_history_records_penalty():
    from gradfit.train.regularize import parse_penalty

    obj = _objective()
    obj.regularize(parse_penalty({"l2": 1e-2}, ["0.weight", "0.bias", "weight", "bias"]))
    out = _run(obj, epochs=5)
    assert len(out.history["penalty"]) == 5 and all(v > 0 for v in out.history["penalty"])
    assert isinstance(History(), Callback)


def _tol_es_run(tmp_path, epochs, resume=False, every=None):
    obj = _objective(val_slope=1.5)
    opt = torch.optim.Adam(obj.leaves, lr=0.05)
    config = LoopConfig(epochs=epochs, seed=1, tol=1e-4, early_stopping=(1000, 0.0))
    ckpt = Checkpointer(tmp_path, every_epochs=every, every_seconds=None) if tmp_path else None
    state = load_checkpoint(tmp_path) if resume else None
    out = run_loop(obj, opt, config, [], checkpointer=ckpt, resume=state)
    return out, [p.detach().clone() for p in obj.leaves]


def test_checkpoint_resume_keeps_callback_state(tmp_path):
    full, full_params = _tol_es_run(None, 300)
    assert full.status is Status.CONVERGED and 20 < full.epochs_run < 300
    cut = full.epochs_run - 5  # inside the tol window: the calm counter must survive the checkpoint
    _tol_es_run(tmp_path, cut, every=cut)
    res, params = _tol_es_run(tmp_path, 300, resume=True)
    assert res.history == full.history and res.status is full.status and res.epochs_run == full.epochs_run
    assert res.best_epoch == full.best_epoch
    assert all(torch.equal(a, b) for a, b in zip(params, full_params))


def test_checkpointer_saves_then_raises_on_a_signal(tmp_path):
    ckpt = Checkpointer(tmp_path, every_seconds=None)
    ckpt.signal = 15

    with pytest.raises(Interrupted) as stop:
        _run(_objective(), epochs=10, checkpointer=ckpt)
    assert (stop.value.signum, stop.value.epoch) == (15, 1)
    tensors, meta = load_checkpoint(tmp_path)
    assert meta["counters"]["epoch"] == 1 and "leaf.0" in tensors


def test_progress_and_log_write_to_the_given_stream(capsys):
    log, bar = io.StringIO(), io.StringIO()
    _run(_objective(), [LogCallback(5, stream=log), ProgressCallback(stream=bar)], epochs=10)
    assert log.getvalue().splitlines()[0].startswith("epoch 5  train ")
    chunks = ChunkProgress(10, stream=bar)
    chunks.advance(4)
    chunks.advance(6)
    chunks.close()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
