import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# a developer's own signing key would turn every tamper test into a signature refusal
os.environ.pop("GRADFIT_SIGNING_KEY", None)
# the symbolic-program cache of this test run, not the developer's ~/.cache/gradfit
os.environ["GRADFIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="gradfit-test-cache-")
atexit.register(shutil.rmtree, os.environ["GRADFIT_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def thermo():
    import gradfit as gf

    return gf.thermometer()


@pytest.fixture
def thermo_csv(tmp_path, thermo):
    path = tmp_path / "thermo.csv"
    rows = ["t_u,t_c"] + [f"{u},{c}" for u, c in zip(thermo["t_u"], thermo["t_c"])]
    path.write_text("\n".join(rows) + "\n")
    return path


def pytest_configure(config):
    # GRADFIT_TEST_NATIVE_SINGLE=1: every single least-squares fit that the native kernel covers
    # builds it at once (optim/native_single.py), so that the whole suite can run on it
    if os.environ.get("GRADFIT_TEST_NATIVE_SINGLE"):
        from gradfit.lsq import solve

        solve.build_single_now = lambda *a: True
