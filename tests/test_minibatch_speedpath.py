"""The minibatch speed path: the explicit MLP forward/backward (models/neural.py MLPGradient)
against autograd, when it is used and when not, and the float32 shortcut of working_dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gradfit as gf
import gradfit.train.objective as objective_module
from gradfit.data.arrays import float32_lossy
from gradfit.fitting.first_order import _float32_surely_enough
from gradfit.losses import resolve_loss
from gradfit.models.neural import ModuleModel, build_mlp, mlp_layers
from gradfit.train.objective import ModuleObjective, TensorData


def _objective(net, x, y, weights=None, standardize=False, scale=1.0):
    model = ModuleModel(net, in_features=x.shape[1], out_features=1 if y.dim() == 1 else y.shape[1])
    if standardize:
        model.standardize(x, y)
    return ModuleObjective(model, TensorData({"x": x}, y, weights), None, resolve_loss("mse"), loss_scale=scale)


def _autograd(obj, data):
    for p in obj.leaves:
        p.grad = None
    value = obj._loss_value(data, None)
    (value / obj.loss_scale).backward()
    return float(value.detach()), [p.grad.clone() for p in obj.leaves]


def _explicit(obj, data):
    for p in obj.leaves:
        p.grad = None
    value = obj._explicit_step(data)
    return float(value), [p.grad.clone() for p in obj.leaves]


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("hidden,outputs", [((64,), 1), ((16, 8), 1), ((12,), 3)])
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 5e-7), (torch.float64, 1e-13)])
def test_gradients_match_autograd(activation, hidden, outputs, dtype, rtol):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 5, generator=g, dtype=dtype) * 3 + 1
    y = torch.randn(300, generator=g, dtype=dtype) if outputs == 1 else torch.randn(300, outputs, generator=g,
                                                                                       dtype=dtype)
    net = build_mlp(5, outputs, hidden, activation, seed=3).to(dtype)
    obj = _objective(net, x, y, standardize=True, scale=2.5)
    assert obj.kernel is not None
    data = obj.train
    v_ref, g_ref = _autograd(obj, data)
    v, grads = _explicit(obj, data)
    assert v == pytest.approx(v_ref, rel=rtol)
    for a, b in zip(grads, g_ref):
        assert a.shape == b.shape
        assert float((a - b).norm() / b.norm()) < rtol * 10


@pytest.mark.parametrize("net", [
    nn.Sequential(nn.Linear(4, 1)),                                                     # no hidden layer
    nn.Sequential(nn.Linear(4, 6, bias=False), nn.Tanh(), nn.Linear(6, 1, bias=False)),  # no biases
])
def test_edge_networks_match_autograd(net):
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(50, 4, generator=g), torch.randn(50, generator=g)
    obj = _objective(net, x, y)
    assert obj.kernel is not None
    v_ref, g_ref = _autograd(obj, obj.train)
    v, grads = _explicit(obj, obj.train)
    assert v == pytest.approx(v_ref, rel=1e-6)
    for a, b in zip(grads, g_ref):
        assert float((a - b).norm() / b.norm()) < 5e-6


def test_weighted_loss_matches_autograd():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(200, 3, generator=g), torch.randn(200, generator=g)
    w = torch.rand(200, generator=g) + 0.1
    obj = _objective(build_mlp(3, 1, (8,), "tanh", seed=0), x, y, weights=w)
    v_ref, g_ref = _autograd(obj, obj.train)
    v, grads = _explicit(obj, obj.train)
    assert v == pytest.approx(v_ref, rel=1e-6)
    for a, b in zip(grads, g_ref):
        assert float((a - b).norm() / b.norm()) < 2e-5


def test_only_plain_mlps_with_mse_take_the_explicit_path():
    assert mlp_layers(build_mlp(2, 1, (4, 4), "relu")) is not None
    assert mlp_layers(build_mlp(2, 1, (4,), "gelu")) is None  # derivative not a function of the output

    class Mine(nn.Sequential):
        pass

    assert mlp_layers(Mine(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))) is None  # may override forward
    assert mlp_layers(nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 1), nn.Tanh())) is None
    hooked = build_mlp(2, 1, (4,), "tanh")
    hooked[0].register_forward_hook(lambda *a: None)
    assert mlp_layers(hooked) is None
    frozen = build_mlp(2, 1, (4,), "tanh")
    frozen[0].weight.requires_grad_(False)
    assert mlp_layers(frozen) is None
    x, y = torch.randn(10, 2), torch.randn(10)
    net = build_mlp(2, 1, (4,), "tanh")
    mae = ModuleObjective(ModuleModel(net), TensorData({"x": x}, y), None, resolve_loss("mae"))
    assert mae.kernel is None


def test_a_shape_it_cannot_follow_falls_back_to_autograd():
    # y of shape (n, 1) with one output: the model predicts (n,), the loss broadcasts to (n, n)
    # as it always has; the explicit path steps aside instead of computing something else
    x, y = torch.randn(6, 2), torch.randn(6, 1)
    obj = _objective(build_mlp(2, 1, (4,), "tanh", seed=0), x, y)
    obj.model.out_features = 1
    opt = torch.optim.SGD(obj.leaves, lr=0.0)
    value = obj.step(opt, obj.train)
    assert obj.kernel is None
    assert float(value.detach()) == pytest.approx(float(obj._loss_value(obj.train, None).detach()))


def _fit(x, y, **kw):
    args = {"model": "mlp", "hidden": (16,), "optimizer": "adam", "lr": 1e-2, "epochs": 3, "batch_size": 64,
            "seed": 0, "progress": False, "normalize": True}
    args.update(kw)
    model = args.pop("model")
    return gf.fit(model, x=x, y=y, **args)


def test_training_matches_autograd_and_repeats_exactly(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    y = np.tanh(x @ np.array([1.0, -2.0, 0.5])) + 0.05 * rng.normal(size=500)
    fast, again = _fit(x, y), _fit(x, y)
    monkeypatch.setattr(objective_module, "_mlp_kernel", lambda model, loss: None)
    slow = _fit(x, y)
    assert fast.history["train_loss"] == again.history["train_loss"]  # seeded CPU runs repeat bit for bit
    np.testing.assert_allclose(fast.history["train_loss"], slow.history["train_loss"], rtol=1e-4)
    assert fast.loss < 0.5 * fast.history["train_loss"][0]  # it learned
    xs = rng.normal(size=(50, 3))
    np.testing.assert_allclose(fast.predict(x=xs), slow.predict(x=xs), atol=1e-4)


def test_penalty_keeps_autograd(monkeypatch):
    calls = []
    original = ModuleObjective._explicit_step
    monkeypatch.setattr(ModuleObjective, "_explicit_step", lambda self, data: calls.append(1) or original(self, data))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2))
    y = x[:, 0] - x[:, 1]
    r = _fit(x, y, epochs=2, penalty={"l2": 1e-3})
    assert not calls and np.isfinite(r.loss)
    _fit(x, y, epochs=1)
    assert calls  # without a penalty the same fit takes the explicit path


@pytest.mark.parametrize("column", [
    1.7e12 + np.arange(1000.0),            # millisecond timestamps: float32 loses them
    1e9 + np.linspace(0, 1e3, 1000),       # a large offset
    np.full(1000, 3.0),                    # constant: never lossy, but the bound cannot say so
    np.r_[np.nan, np.arange(999.0)],       # NaN: the bound says "not sure"
    np.random.default_rng(0).normal(size=1000),
    np.random.default_rng(1).normal(size=1000).astype(np.float32).astype(np.float64),
])
def test_float32_shortcut_never_hides_a_lossy_column(column):
    v = np.stack([column, np.arange(1000.0)], axis=1)
    if _float32_surely_enough(v):
        assert float32_lossy({"v": v}) == []
    if float32_lossy({"v": v}):
        assert not _float32_surely_enough(v)


def test_float32_shortcut_decides_ordinary_data():
    rng = np.random.default_rng(0)
    assert _float32_surely_enough(rng.normal(size=(5000, 4)) * 1e3 + 5)
    assert not _float32_surely_enough(1.7e12 + np.arange(5000.0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gradients_match_autograd_on_cuda():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1024, 8, generator=g).cuda(), torch.randn(1024, generator=g).cuda()
    obj = _objective(build_mlp(8, 1, (64,), "tanh", seed=0).cuda(), x, y)
    v_ref, g_ref = _autograd(obj, obj.train)
    v, grads = _explicit(obj, obj.train)
    assert v == pytest.approx(v_ref, rel=1e-5)
    for a, b in zip(grads, g_ref):
        assert float((a - b).norm() / b.norm()) < 1e-4


def test_no_graph_capture_on_cpu():
    from gradfit.train.loop import _captured_step

    x, y = torch.randn(64, 2), torch.randn(64)
    obj = _objective(build_mlp(2, 1, (4,), "tanh", seed=0), x, y)
    opt = torch.optim.Adam(obj.leaves, lr=1e-3)
    assert _captured_step(obj, opt, 16, None) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", ["mlp", "module"])
def test_cuda_graph_step_trains_as_eager(monkeypatch, model):
    import gradfit.train.loop as loop_module

    calls = []
    original_call = loop_module._CapturedStep.__call__
    monkeypatch.setattr(loop_module._CapturedStep, "__call__",
                        lambda self, batch: calls.append(self.graph is not None) or original_call(self, batch))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 3))
    y = np.tanh(x @ np.array([1.0, -2.0, 0.5]))

    def run():
        if model == "mlp":
            return _fit(x, y, device="cuda", batch_size=64, epochs=2)
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 16), nn.GELU(), nn.Linear(16, 1))  # autograd inside the graph
        return gf.fit(net, x=x, y=y, optimizer="adam", lr=1e-2, epochs=2, batch_size=64, seed=0, progress=False,
                      device="cuda")

    graphed = run()
    assert any(calls)  # replayed from a captured graph
    monkeypatch.setattr(loop_module, "_captured_step", lambda *a: None)
    eager = run()
    np.testing.assert_allclose(graphed.history["train_loss"], eager.history["train_loss"], rtol=1e-4)


def _shared_layer_net():
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(4, 1)).double()


def test_a_layer_used_twice_takes_autograd(monkeypatch):
    """A shared layer's gradient is the sum over its uses: the hand-written backward writes
    each once, so such networks must take autograd (an adversarial run found the fast path
    reporting loss 0.773 where autograd reaches 0.607)."""
    assert mlp_layers(_shared_layer_net()) is None
    tied = build_mlp(2, 2, (2,), "tanh")
    tied[2].weight = tied[0].weight  # a weight tied across layers (2x2 both)
    assert mlp_layers(tied) is None
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 3))
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    kw = dict(x=x, y=y, optimizer="adam", lr=0.05, epochs=5, dtype="float64", progress=False)
    fast = gf.fit(_shared_layer_net(), **kw)
    monkeypatch.setattr(objective_module, "_mlp_kernel", lambda model, loss: None)
    autograd = gf.fit(_shared_layer_net(), **kw)
    assert fast.loss == pytest.approx(autograd.loss, rel=1e-12)


def test_concurrent_builds_give_the_same_seeded_network():
    """nn.Linear draws from the global generator: building networks in threads must not
    interleave one build's seeding with another's drawing."""
    from concurrent.futures import ThreadPoolExecutor

    expected = [p.detach().clone() for p in build_mlp(3, 2, (16, 16), "tanh", seed=7).parameters()]

    def build(_):
        return [p.detach() for p in build_mlp(3, 2, (16, 16), "tanh", seed=7).parameters()]

    with ThreadPoolExecutor(8) as pool:
        for params in pool.map(build, range(400)):
            assert all(torch.equal(a, b) for a, b in zip(params, expected))


def test_concurrent_fits_give_the_sequential_answer():
    """The adversarial repro: six identical seeded MLP fits in threads gave other losses in
    1-10 of 30 runs (another fit's torch.manual_seed reset the global generator while a network
    was drawing its weights)."""
    from concurrent.futures import ThreadPoolExecutor

    x = np.linspace(0, 3, 50)
    y = 2 * np.exp(-x)

    def run(_):
        return gf.fit("mlp", x=x, y=y, epochs=10, hidden=(8,), threads=1, dtype="float64", progress=False).loss

    expected = run(None)
    for _ in range(4):
        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(run, range(6))) == [expected] * 6
