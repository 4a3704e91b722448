"""fit_many's compile option: Python-callable models compile (or fall back to eager with a
note), the compile cache is keyed by the function itself, and compile="auto" never compiles
a call that eager would finish first. Right values are the noise-free generating parameters."""

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit.lsq import batched, compiled

X = np.linspace(0.0, 3.0, 20)
TRUE_EXP = np.array([[2.0, 0.7], [3.0, 1.3], [0.5, 0.2]])
TRUE_LIN = np.array([[2.0, 1.0], [-1.0, 3.0], [0.5, -2.0]])


def _exp_data():
    return np.stack([a * np.exp(-k * X) for a, k in TRUE_EXP])


def _lin_data():
    return np.stack([a * X + b for a, b in TRUE_LIN])


def _fresh_caches(monkeypatch):
    cache, failed = {}, {}
    for module in (batched, compiled):
        monkeypatch.setattr(module, "COMPILED", cache)
        monkeypatch.setattr(module, "COMPILE_FAILED", failed)


def _two_lambdas(compile):
    # the same name ("<lambda>"), the same parameter names, different code
    f1 = lambda x, a, k: a * torch.exp(-k * x)
    f2 = lambda x, a, k: a * x + k
    r1 = gf.fit_many(f1, X, _exp_data(), init={"a": 1.0, "k": 1.0}, compile=compile)
    r2 = gf.fit_many(f2, X, _lin_data(), init={"a": 0.0, "k": 0.0}, compile=compile)
    r1b = gf.fit_many(f1, X, _exp_data(), init={"a": 1.0, "k": 1.0}, compile=compile)
    for r, true in ((r1, TRUE_EXP), (r2, TRUE_LIN), (r1b, TRUE_EXP)):
        assert r.converged.all()
        np.testing.assert_allclose(r.params["a"], true[:, 0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(r.params["k"], true[:, 1], rtol=1e-4, atol=1e-4)
    return r1, r2


def test_two_lambdas_eager_keep_their_own_answers():
    _two_lambdas(False)


def test_compile_key_is_the_function_not_its_name():
    from gradfit.models import resolve_model

    f1 = lambda x, a, k: a * torch.exp(-k * x)
    f2 = lambda x, a, k: a * x + k
    assert f1.__name__ == f2.__name__
    assert compiled.model_key(resolve_model(f1)) != compiled.model_key(resolve_model(f2))
    assert compiled.model_key(resolve_model(f1)) == compiled.model_key(resolve_model(f1))


@pytest.mark.slow
def test_two_lambdas_compiled_keep_their_own_answers():
    r1, r2 = _two_lambdas(True)
    assert r1.timings["compiled"] and r2.timings["compiled"], (r1.timings, r2.timings)


@pytest.mark.slow
def test_compile_true_callable_with_per_fit_input_and_fixed():
    xb = np.stack([X, 2 * X, X + 1.0])
    y = np.stack([a * np.exp(-k * xr) for (a, k), xr in zip(TRUE_EXP, xb)])
    r = gf.fit_many(lambda t, a, k: a * torch.exp(-k * t), {"t": xb}, y, init={"a": TRUE_EXP[:, 0], "k": 1.0},
                    fixed=["a"], compile=True)
    assert r.converged.all()
    np.testing.assert_allclose(r.params["k"], TRUE_EXP[:, 1], rtol=1e-4)
    np.testing.assert_array_equal(r.params["a"], TRUE_EXP[:, 0])


def test_compile_failure_falls_back_to_eager_with_a_note(monkeypatch):
    import torch._dynamo.exc as dexc

    def broken_compile(fn, **kw):
        def call(*a, **k):
            raise dexc.TorchRuntimeError("simulated tracing failure")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    _fresh_caches(monkeypatch)
    f = lambda x, a, k: a * torch.exp(-k * x)
    r = gf.fit_many(f, X, _exp_data(), init={"a": 1.0, "k": 1.0}, compile=True)
    assert r.converged.all()
    np.testing.assert_allclose(r.params["k"], TRUE_EXP[:, 1], rtol=1e-4)
    assert r.timings["compiled"] is False
    assert "ran eagerly" in r.timings["compile"]
    # a formula too (without a C compiler: a formula's compile=True otherwise runs the native kernel)
    monkeypatch.setenv("GRADFIT_CC", "")
    r = gf.fit_many("a*x + b", X, _lin_data(), init={"a": 0.0, "b": 0.0}, compile=True)
    np.testing.assert_allclose(r.params["b"], TRUE_LIN[:, 1], atol=1e-4)
    assert "ran eagerly" in r.timings["compile"]


def test_a_failing_compile_prints_nothing_of_torch(monkeypatch, capfd):
    """What torch's loggers say while a compile fails (dynamo, fake tensors) reaches no handler
    (torch's own writes to stderr) and no stderr: the user gets gradfit's one note. The stub
    logs as torch does on such a failure, through the "torch" logger hierarchy, then fails."""
    import logging

    import torch._dynamo.exc as dexc

    names = ("torch._subclasses.fake_tensor", "torch._dynamo.convert_frame")

    def broken_compile(fn, **kw):
        def call(*a, **k):
            for name in names:
                logging.getLogger(name).error("%s: failed while tracing", name)
            raise dexc.TorchRuntimeError("simulated tracing failure")
        return call

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    seen, keep = [], Keep()
    monkeypatch.setattr(torch, "compile", broken_compile)
    _fresh_caches(monkeypatch)
    levels = {n: logging.getLogger(n).level for n in ("torch", "torch._dynamo", *names)}
    for name in names:
        logging.getLogger(name).addHandler(keep)
    try:
        capfd.readouterr()
        r = gf.fit_many(lambda x, a, k: a * torch.exp(-k * x), X, _exp_data(), init={"a": 1.0, "k": 1.0},
                        compile=True)
        err = capfd.readouterr().err
        assert seen == [] and "failed while tracing" not in err, (seen, err)
        np.testing.assert_allclose(r.params["k"], TRUE_EXP[:, 1], rtol=1e-4)
        assert "ran eagerly" in r.timings["compile"] and "simulated tracing failure" in r.timings["compile"]
        # the levels are restored: torch logs as before once gradfit's compile attempt is over
        assert {n: logging.getLogger(n).level for n in levels} == levels
        logging.getLogger(names[1]).error("after the fit")
        assert seen == ["after the fit"]
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(keep)


def test_auto_does_not_compile_a_short_call(monkeypatch):
    def no_compile(fn, **kw):
        raise AssertionError("compile='auto' compiled a call eager finishes first")

    monkeypatch.setattr(torch, "compile", no_compile)
    f = lambda x, a, k: a * torch.exp(-k * x)
    r = gf.fit_many(f, X, _exp_data(), init={"a": 1.0, "k": 1.0}, compile="auto")
    assert r.converged.all() and r.timings["compiled"] is False
    r = gf.fit_many("a*x + b", X, _lin_data(), init={"a": 0.0, "b": 0.0})  # the default is "auto"
    np.testing.assert_allclose(r.params["a"], TRUE_LIN[:, 0], atol=1e-4)
    assert r.timings["compiled"] is False


def test_auto_rule_from_measured_costs(monkeypatch):
    cpu = torch.device("cpu")
    cost = compiled.COMPILE_COST_S["cpu"] * compiled.COMPILE_MARGIN
    per_iter = cost / compiled.EXPECTED_ITERATIONS
    assert not compiled.worth_compiling(0.5 * per_iter, 25, cpu)
    assert compiled.worth_compiling(2.0 * per_iter, 25, cpu)
    assert not compiled.worth_compiling(2.0 * per_iter, 2, cpu)  # one iteration left cannot pay
    assert compiled.chunk_mode(False, "k") is False and compiled.chunk_mode(True, "k") is True
    monkeypatch.setattr(compiled, "COMPILED", {"k": object()})
    monkeypatch.setattr(compiled, "COMPILE_FAILED", {"bad": "x"})
    assert compiled.chunk_mode("auto", "k") is True  # cached: no compile to pay for
    assert compiled.chunk_mode("auto", "new") == "auto"
    assert compiled.chunk_mode("auto", "bad") is False


def test_auto_switches_to_compiled_after_a_slow_first_iteration(monkeypatch):
    # a compile that costs nothing is always worth it: the run switches after iteration 1
    # (torch.compile replaced by a failing stub: the switch, then the eager fallback, with a note)
    import torch._dynamo.exc as dexc

    calls = []

    def broken_compile(fn, **kw):
        calls.append(fn)

        def call(*a, **k):
            raise dexc.TorchRuntimeError("simulated")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(compiled, "COMPILE_COST_S", {"cpu": 0.0, "cuda": 0.0})
    _fresh_caches(monkeypatch)
    f = lambda x, a, k: a * torch.exp(-k * x)
    r = gf.fit_many(f, X, _exp_data(), init={"a": 1.0, "k": 1.0}, compile="auto")
    assert calls, "auto did not switch to the compiled step"
    assert r.converged.all()
    np.testing.assert_allclose(r.params["k"], TRUE_EXP[:, 1], rtol=1e-4)
    assert "ran eagerly" in r.timings["compile"]


@pytest.mark.slow
def test_auto_uses_a_cached_kernel():
    f = lambda x, a, k: a * torch.exp(-k * x)
    r = gf.fit_many(f, X, _exp_data(), init={"a": 1.0, "k": 1.0}, compile=True)
    assert r.timings["compiled"]
    r = gf.fit_many(f, X, _exp_data(), init={"a": 1.0, "k": 1.0}, compile="auto")
    assert r.timings["compiled"] and r.timings["warmup_s"] == 0.0
    np.testing.assert_allclose(r.params["k"], TRUE_EXP[:, 1], rtol=1e-4)
