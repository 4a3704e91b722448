"""Neural models: the built-in MLP, any nn.Module, normalization, save/load."""

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit import ModelError

RNG = np.random.default_rng(0)
X = RNG.uniform(-3, 3, (400, 2))
Y = 1000.0 + 500.0 * np.sin(X[:, 0]) * np.cos(X[:, 1])  # big offset and scale: needs normalization


def test_mlp_with_normalize_fits_and_predicts_in_user_units():
    r = gf.fit("mlp", x=X, y=Y, hidden=(32, 32), activation="tanh", optimizer="adam", lr=1e-2, epochs=300,
               normalize=True, val_fraction=0.2, progress=False)
    assert r.params == {}
    rmse = np.sqrt(np.mean((r.predict(X) - Y) ** 2))
    assert rmse < 0.1 * Y.std(), rmse
    assert r.val_loss < 0.05 * Y.var()
    # the loss is reported in the user's units (not the normalized ones)
    from gradfit.data.split import train_val_indices

    train, val = train_val_indices(len(Y), 0.2, seed=0)
    assert r.loss == pytest.approx(np.mean((r.predict(X[train]) - Y[train]) ** 2), rel=1e-4)
    assert r.val_loss == pytest.approx(np.mean((r.predict(X[val]) - Y[val]) ** 2), rel=1e-4)


def test_mlp_without_normalize_struggles_on_unscaled_targets():
    kw = dict(x=X, y=Y, hidden=(32, 32), optimizer="adam", lr=1e-2, epochs=150, progress=False)
    raw = gf.fit("mlp", **kw)
    norm = gf.fit("mlp", normalize=True, **kw)
    assert norm.loss < 0.2 * raw.loss


def test_user_module_and_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    r = gf.fit(net, x=X, y=Y, optimizer="adam", lr=1e-2, epochs=100, normalize=True, progress=False)
    path = tmp_path / "model.json"
    r.save(path)
    assert (tmp_path / "model.safetensors").exists()
    with pytest.raises(ModelError, match="module="):
        gf.load(path)
    fresh = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    again = gf.load(path, module=fresh)
    np.testing.assert_array_equal(again.predict(X), r.predict(X))


def test_mlp_save_load_identical_predictions(tmp_path):
    r = gf.fit("mlp", x=X, y=Y, hidden=(8,), epochs=20, normalize=True, progress=False)
    r.save(tmp_path / "m.json")
    again = gf.load(tmp_path / "m.json")
    np.testing.assert_array_equal(again.predict(X), r.predict(X))
    assert again.model.describe() == "mlp(8; tanh)"


def test_minibatch_mlp_is_seeded():
    kw = dict(x=X, y=Y, hidden=(8,), epochs=3, batch_size=64, normalize=True, progress=False, seed=5)
    a, b = gf.fit("mlp", **kw), gf.fit("mlp", **kw)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


def test_multi_output_mlp():
    y2 = np.stack([np.sin(X[:, 0]), np.cos(X[:, 1])], axis=1)
    r = gf.fit("mlp", x=X, y=y2, hidden=(32,), epochs=300, lr=1e-2, normalize=True, progress=False)
    assert r.predict(X).shape == (400, 2)
    assert np.mean((r.predict(X) - y2) ** 2) < 0.05


def test_bad_mlp_options():
    with pytest.raises(gf.ConfigError, match="activation"):  # an option value: validated by FitOptions
        gf.fit("mlp", x=X, y=Y, activation="swishy", epochs=1)
    with pytest.raises(gf.ConfigError, match="hidden"):  # an option value: validated by FitOptions
        gf.fit("mlp", x=X, y=Y, hidden=(0,), epochs=1)


def test_per_point_weights_apply_to_every_output_of_a_two_output_network():
    # a weight of 2 is the point given twice, for each of its outputs (full batch: same steps)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = np.stack([x @ [1.0, 2.0, 3.0], x @ [-1.0, 0.5, 2.0]], axis=1)
    w = np.ones(60)
    w[:20] = 2.0
    common = dict(hidden=(4,), epochs=5, seed=0, progress=False, val_fraction=0, normalize=False)
    for gradient in ({}, {"gradient": "autograd"}):  # the built-in MLP's own backward, and autograd
        weighted = gf.fit("mlp", x, y, weights=w, **gradient, **common)
        doubled = gf.fit("mlp", np.concatenate([x, x[:20]]), np.concatenate([y, y[:20]]), **gradient, **common)
        assert weighted.loss == pytest.approx(doubled.loss, rel=1e-5)
