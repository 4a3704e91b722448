"""Every optimizer in the registry checkpoints and resumes bit-identically on the CPU
(issue 12, §5: L-BFGS keeps lists of tensors in its state, which once broke its checkpoint)."""

import numpy as np
import pytest

import gradfit as gf
from gradfit.options import TORCH_OPTIMIZERS

RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, 64)
Y = np.sin(3 * X)


def _fit(optimizer, epochs, folder=None, resume=False):
    training = gf.TrainingOptions(optimizer=optimizer, lr=0.5 if optimizer == "lbfgs" else 0.01, epochs=epochs,
                                  seed=0, tol=None)
    checkpoint = None if folder is None else gf.CheckpointOptions(folder=str(folder), every_epochs=1, resume=resume)
    return gf.fit("mlp", x=X, y=Y, options=gf.FitOptions(training=training, checkpoint=checkpoint))


@pytest.mark.parametrize("optimizer", sorted(TORCH_OPTIMIZERS))
def test_every_optimizer_resumes_bit_identically(tmp_path, optimizer):
    full = _fit(optimizer, 6)
    _fit(optimizer, 3, tmp_path)  # stops after epoch 3, its checkpoint on disk
    resumed = _fit(optimizer, 6, tmp_path, resume=True)
    assert resumed.epochs_run == full.epochs_run
    assert resumed.loss == full.loss
    assert resumed.history["train_loss"] == full.history["train_loss"]
    np.testing.assert_array_equal(resumed.predict(X), full.predict(X))
