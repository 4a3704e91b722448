"""Running a test on both kernels of fit_many: torch (no C compiler) and native (built from the
start), with a check that the native kernel really ran."""

import pytest


def kernel_variant(kind: str, monkeypatch, build_switches, runner_class, whole_batch: bool = False):
    """A fixture body (``yield from``): ``kind`` "torch" hides the C compiler; "native" sets each
    (module, name) of ``build_switches`` to a function returning True (build now), counts the
    calls of ``runner_class.run`` (and with ``whole_batch``, of optim/native_batch.run_many: fit_many's
    whole batch in C) and fails the test if there were none."""
    from gradfit import _native

    if kind == "torch":
        monkeypatch.setenv("GRADFIT_CC", "")
        yield
        return
    if _native.compiler() is None:
        pytest.skip("no C compiler")
    runs = []
    for module, name in build_switches:
        monkeypatch.setattr(module, name, lambda *a: True)
    original = runner_class.run
    monkeypatch.setattr(runner_class, "run", lambda self, *a, **k: runs.append(1) or original(self, *a, **k))
    if whole_batch:
        from gradfit.optim import native_batch

        many = native_batch.run_many
        monkeypatch.setattr(native_batch, "run_many", lambda *a, **k: runs.append(1) or many(*a, **k))
    yield
    assert runs, f"the native kernel ({runner_class.__name__}) did not run"
