"""normalize=True at every input scale and offset, float32's collapsing inputs, L-BFGS's own
convergence and pandas input without torch warnings (issue 11, 2.2 and 13).

Right values are analytic (noiseless lines) or numpy's float64 least squares on centred x
(an independent solver); never gradfit's own output.
"""

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit.data.arrays import float32_lossy
from gradfit.errors import GradfitWarning
from gradfit.optim.precondition import needs_float64, whiten


def _lstsq_line(x, y):
    """(slope, intercept) by float64 least squares on centred x (well conditioned at any offset)."""
    x0 = x.mean()
    slope, c = np.polyfit(x - x0, y, 1)
    return slope, c - slope * x0


def _line(x):
    def f(x, w, b):
        return w * x + b

    return f


# -- the whitening itself ---------------------------------------------------------------------
@pytest.mark.parametrize("lo, span", [(0.0, 1e3), (0.0, 1e7), (0.0, 1e9), (1e9, 1e3), (1.7e12, 6e5)])
def test_whitening_makes_the_gauss_newton_curvature_the_identity(lo, span):
    x = torch.linspace(lo, lo + span, 300, dtype=torch.float64)
    j = torch.stack([x, torch.ones_like(x)], 1)
    w = whiten(j)
    ja = j @ w.matrix
    assert torch.allclose(ja.T @ ja / 300, torch.eye(2, dtype=torch.float64), atol=1e-6)
    assert w.floored == 0


def test_whitening_floors_an_invisible_direction_and_says_so():
    x = torch.linspace(0, 1, 50, dtype=torch.float64)
    j = torch.stack([x, 2 * x], 1)  # a*b*x: two parameters, one direction
    w = whiten(j)
    assert w.floored == 1 and w.condition > 1e8 and torch.isfinite(w.matrix).all()


def test_offset_inputs_need_float64_for_normalize():
    x = torch.linspace(1e5, 1e5 + 1.0, 100, dtype=torch.float64)
    assert needs_float64(whiten(torch.stack([x, torch.ones_like(x)], 1)))
    x = torch.linspace(0, 1e7, 100, dtype=torch.float64)
    assert not needs_float64(whiten(torch.stack([x, torch.ones_like(x)], 1)))


# -- SGD with normalize=True matches least squares at every scale -----------------------------
@pytest.mark.parametrize("scale", [1e3, 1e6, 1e7, 1e9])
@pytest.mark.parametrize("model", ["y ~ w*x + b", "function"])
def test_sgd_normalize_reaches_least_squares_at_large_scale(scale, model):
    # issue: x in [0, 1e6], y = 3 + 2e-6 x, sgd lr 0.1 ended at b = 2.91; at 1e7, b = 1.06
    x = np.linspace(0, scale, 200)
    y = 3 + 2 / scale * x + 0.01 * np.sin(20 * x / scale)
    slope, intercept = _lstsq_line(x, y)
    m = _line(x) if model == "function" else model
    r = gf.fit(m, x=x, y=y, optimizer="sgd", lr=0.1, epochs=300, normalize=True)
    assert r.params["b"] == pytest.approx(intercept, rel=1e-5)
    assert r.params["w"] == pytest.approx(slope, rel=1e-5)


@pytest.mark.parametrize("lo, span", [(1e9, 1e3), (1.7e12, 6e5)])
@pytest.mark.parametrize("model", ["y ~ w*x + b", "function"])
def test_sgd_normalize_reaches_least_squares_with_a_large_offset(lo, span, model):
    # timestamps: x = 1e9 .. 1e9 + 1e3 (float32 steps of 64), or ten minutes in milliseconds
    x = np.linspace(lo, lo + span, 200)
    y = 3 + 2 / span * (x - lo)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradfitWarning)
        r = gf.fit(_line(x) if model == "function" else model, x=x, y=y, optimizer="sgd", lr=0.1, epochs=300,
                   normalize=True)
    assert r.settings["dtype"] == "float64" and any("float64" in n for n in r.notes)
    assert r.params["w"] == pytest.approx(2 / span, rel=1e-8)
    assert r.params["b"] == pytest.approx(3 - 2 / span * lo, rel=1e-8)


def test_nonlinear_model_is_fitted_the_same_with_and_without_an_offset():
    # normalize makes SGD invariant to where x lies: x in [1e9, 1e9 + 1e3] gives what [0, 1e3] gives
    fits = []
    for off in (0.0, 1e9):
        x = np.linspace(off, off + 1e3, 200)
        y = 2 * np.exp(-(x - off) / 300) + 1
        fits.append(gf.fit(f"y ~ a*exp(-k*(x - {off!r})) + c", x=x, y=y, optimizer="sgd", lr=0.02, epochs=1000,
                           normalize=True, init={"k": 1 / 250}))
    assert fits[1].settings["dtype"] == "float64"
    for name, truth in (("a", 2.0), ("k", 1 / 300), ("c", 1.0)):
        assert fits[0].params[name] == pytest.approx(truth, rel=1e-3)
        assert fits[1].params[name] == pytest.approx(fits[0].params[name], rel=1e-5)


def test_normalize_warns_when_the_offset_is_beyond_reach():
    # one second of millisecond timestamps: w*t + b has condition ~1e10 after column scaling
    t = 1.7e12 + np.arange(1000.0)
    with pytest.warns(GradfitWarning, match="cannot equalize"):
        r = gf.fit("y ~ w*t + b", x={"t": t}, y=5 + 1e-3 * (t - t[0]), optimizer="sgd", lr=0.1, epochs=5,
                   normalize=True)
    assert any("subtract" in n for n in r.notes)


# -- float32 that collapses inputs ----------------------------------------------------------
def test_float32_lossy_names_collapsing_columns_only():
    t = 1.7e12 + np.arange(0, 60_000.0)  # one minute of millisecond timestamps
    assert len(np.unique(t.astype(np.float32))) < 10
    assert float32_lossy({"t": t, "x": np.linspace(0, 1e7, 50), "c": np.full(5, 0.1)}) == ["t"]


def test_millisecond_timestamps_are_fitted_in_float64_with_a_note():
    t = 1.7e12 + np.arange(0, 60_000.0, 100.0)
    y = 1.5 + 2e-5 * (t - t[0])
    r = gf.fit("y ~ w*(t - 1.7e12) + b", x={"t": t}, y=y, optimizer="adam", lr=0.05, epochs=5)
    assert r.settings["dtype"] == "float64"
    assert any("float32 cannot tell apart the values of t" in n for n in r.notes)
    r = gf.fit("y ~ w*(t - 1.7e12) + b", x={"t": t}, y=y, optimizer="sgd", lr=0.1, epochs=200, normalize=True)
    assert r.params["w"] == pytest.approx(2e-5, rel=1e-7) and r.params["b"] == pytest.approx(1.5, rel=1e-7)


def test_ordinary_data_still_trains_in_float32():
    x = np.linspace(0, 1e7, 50)
    r = gf.fit("y ~ w*x + b", x=x, y=2e-7 * x + 1, optimizer="sgd", lr=0.1, epochs=3, normalize=True)
    assert r.settings["dtype"] == "float32" and not r.notes


@pytest.mark.parametrize("offset", [0.0, 1.7e12])
def test_mlp_learns_at_large_scale_and_on_timestamps(offset):
    x = offset + np.linspace(0, 1e7 if offset == 0 else 1e3, 200)
    y = np.sin(3 * (x - x[0]) / (x[-1] - x[0]))
    r = gf.fit("mlp", x=x, y=y, epochs=300, lr=0.02, normalize=True, hidden=(8,))
    assert r.settings["dtype"] == ("float64" if offset else "float32")
    assert math.sqrt(r.loss) < 0.02
    assert np.sqrt(np.mean((r.predict(x) - y) ** 2)) < 0.02


# -- L-BFGS stops when its own tolerances are met -------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lbfgs_stops_when_converged(dtype):
    d = gf.thermometer()
    slope, intercept = _lstsq_line(np.asarray(d["t_u"], float), np.asarray(d["t_c"], float))
    r = gf.fit("t_c ~ w*t_u + b", data=d, optimizer="lbfgs", lr=1, epochs=1000, dtype=dtype)
    assert r.status == "converged" and r.epochs_run <= 5 and "L-BFGS" in r.message
    rel = 1e-4 if dtype == "float32" else 1e-7
    assert r.params["w"] == pytest.approx(slope, rel=rel) and r.params["b"] == pytest.approx(intercept, rel=rel)


def test_lbfgs_stops_for_a_nonlinear_model_and_a_network():
    x = np.linspace(0, 3, 30)
    r = gf.fit("y ~ A*exp(-k*x)", x=x, y=2 * np.exp(-1.7 * x), optimizer="lbfgs", lr=1, epochs=1000)
    assert r.status == "converged" and r.epochs_run < 20
    assert r.params["k"] == pytest.approx(1.7, rel=1e-4)
    r = gf.fit("mlp", x=x, y=np.sin(x), optimizer="lbfgs", lr=1, epochs=1000, hidden=(8,))
    assert r.status == "converged" and r.epochs_run < 1000


def test_lbfgs_with_a_small_inner_budget_keeps_going():
    # max_iter=1: every epoch spends its whole budget, so no epoch alone proves convergence
    r = gf.fit("t_c ~ w*t_u + b", data=gf.thermometer(), optimizer="lbfgs", lr=1, epochs=3,
               optimizer_options={"max_iter": 1})
    assert r.status == "max_epochs" and r.epochs_run == 3


# -- pandas input: no torch "not writable" warning --------------------------------------------
_PANDAS_SCRIPT = """
import warnings
warnings.simplefilter("error")
import numpy as np, pandas as pd, gradfit as gf
x = np.linspace(0, 3, 30)
df = pd.DataFrame({"x": x, "y": 2 * np.exp(-1.7 * x)})
gf.fit("y ~ A*exp(-k*x)", data=df, optimizer="adam", epochs=3)
gf.fit("y ~ A*exp(-k*x)", data=df)
gf.fit("A*exp(-k*x)", x=df["x"], y=df["y"], optimizer="sgd", epochs=3, normalize=True)
gf.fit("mlp", x=df["x"], y=df["y"], epochs=2, hidden=(4,))
r = gf.fit("exp_decay", x="x", y="y", data=df)
r.predict(df["x"])
gf.gradient("y ~ A*exp(-k*x)", data=df, params={"A": 1.0, "k": 1.0})
print("clean")
"""


def test_pandas_input_emits_no_torch_warning():
    pytest.importorskip("pandas")
    # torch warns once per process, so the check runs in a fresh one
    out = subprocess.run([sys.executable, "-c", _PANDAS_SCRIPT], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and "clean" in out.stdout, out.stderr[-2000:]


# -- the moving origin of the whitened coordinates survives checkpoints and early stopping ------
def _offset_line(n=120, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(1e9, 1e9 + 1e3, n)
    return x, 3 + 2e-3 * (x - 1e9) + 0.01 * rng.standard_normal(n)


def test_resume_with_normalize_is_bit_identical(tmp_path):
    from gradfit.train.checkpoint import Checkpointer

    x, y = _offset_line()
    kw = dict(x=x, y=y, optimizer="sgd", lr=0.1, normalize=True, seed=1, progress=False)
    full = gf.fit("y ~ w*x + b", epochs=60, **kw)
    gf.fit("y ~ w*x + b", epochs=20, checkpoint=Checkpointer(tmp_path, every_epochs=20, every_seconds=None), **kw)
    res = gf.fit("y ~ w*x + b", epochs=60, checkpoint=Checkpointer(tmp_path, every_seconds=None), resume=True, **kw)
    assert res.params == full.params and res.history == full.history


def test_early_stopping_with_normalize_restores_the_best_epoch():
    x, y = _offset_line(300)
    r = gf.fit("y ~ w*x + b", x=x, y=y, optimizer="sgd", lr=0.5, epochs=400, normalize=True, val_fraction=0.3,
               early_stopping=5)
    assert r.best_epoch is not None
    best_val = min(r.history["val_loss"])
    assert r.val_loss == pytest.approx(best_val, rel=1e-9)


@pytest.mark.parametrize("optimizer, lr", [("adam", 0.5), ("rprop", 0.01), ("asgd", 0.1)])
def test_other_optimizers_with_normalize_at_large_scale(optimizer, lr):
    x = np.linspace(0, 1e7, 200)
    y = 3 + 2e-7 * x
    r = gf.fit("y ~ w*x + b", x=x, y=y, optimizer=optimizer, lr=lr, epochs=400, normalize=True,
               init={"w": 0.0, "b": 0.0})
    assert r.params["w"] == pytest.approx(2e-7, rel=1e-3) and r.params["b"] == pytest.approx(3, rel=1e-3)


def test_anchoring_moves_the_origin_without_moving_the_parameters():
    from gradfit.losses import resolve_loss
    from gradfit.models import resolve_model
    from gradfit.models.parameters import ParameterSpace
    from gradfit.train.objective import ScalarObjective, TensorData

    m = resolve_model("w*x + b").bind(["x"])
    x = torch.linspace(1e9, 1e9 + 1e3, 50, dtype=torch.float64)
    data = TensorData({"x": x}, 3 + 2e-3 * (x - 1e9))
    space = ParameterSpace(m.param_names, {"w": 1.0, "b": 1.0})
    a = whiten(torch.stack([x, torch.ones_like(x)], 1)).matrix
    obj = ScalarObjective(m, data, None, resolve_loss("mse"), space, dtype=torch.float64,
                          device=torch.device("cpu"), precondition=a)
    with torch.no_grad():
        obj.theta.copy_(torch.tensor([3e8, -2e8], dtype=torch.float64))
    before, snap = obj.param_values(), obj.snapshot()
    obj.remember()  # re-anchors: theta was far from the origin
    assert obj.theta.abs().max() == 0
    assert obj.param_values() == pytest.approx(before, rel=1e-12)
    with torch.no_grad():
        obj.theta.add_(1.0)
    obj.restore(snap)
    assert obj.param_values() == pytest.approx(before, rel=1e-12)
