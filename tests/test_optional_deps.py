"""Optional dependencies (the extras tune, pandas, excel): a missing one is a
MissingDependencyError naming what to install, and the CLI's one line with exit 2, never an
internal error. ``sys.modules[name] = None`` makes ``import name`` raise ImportError, as if the
package were not installed."""

import sys
import types

import numpy as np
import pytest
from _cli import cli

import gradfit as gf
from gradfit import GradfitError, MissingDependencyError
from gradfit.errors import require

X = np.linspace(0, 1, 24)
Y = 2 * X + 1 + 0.01 * np.cos(17 * X)


def _absent(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


# -- the helper ---------------------------------------------------------------------------------------
def test_require_returns_the_module_or_says_what_to_install(monkeypatch):
    assert require("json", extra="tune", feature="x") is sys.modules["json"]
    _absent(monkeypatch, "optuna")
    with pytest.raises(MissingDependencyError) as info:
        require("optuna", extra="tune", feature="gradfit tune")
    assert str(info.value) == 'gradfit tune needs optuna: pip install "gradfit[tune]"'
    # one error type for every caller: gradfit's (CLI exit 2) and ImportError's (existing handlers)
    assert isinstance(info.value, GradfitError) and isinstance(info.value, ImportError)
    assert gf.MissingDependencyError is MissingDependencyError and "MissingDependencyError" in gf.__all__
    _absent(monkeypatch, "odf")
    with pytest.raises(MissingDependencyError, match=r"^reading \.ods files needs odfpy: pip install odfpy$"):
        require("odf", extra=None, feature="reading .ods files", package="odfpy")


def test_require_names_the_missing_dependency_of_an_installed_package(monkeypatch):
    """optuna installed but its own dependency (sqlalchemy) missing: both are named."""
    broken = types.ModuleType("gradfit_test_broken")
    monkeypatch.setitem(sys.modules, "gradfit_test_broken", None)

    def fake_import(name, *a, **k):
        raise ModuleNotFoundError("No module named 'sqlalchemy'", name="sqlalchemy")

    monkeypatch.setattr("importlib.import_module", fake_import)
    with pytest.raises(MissingDependencyError) as info:
        require(broken.__name__, extra="tune", feature="gf.tune")
    assert str(info.value) == ("gf.tune needs gradfit_test_broken (importing gradfit_test_broken failed: No module "
                               "named 'sqlalchemy'): pip install \"gradfit[tune]\"")


# -- tune ---------------------------------------------------------------------------------------------
def test_cli_tune_without_optuna_exits_2_with_one_line(monkeypatch, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in zip(X, Y)))
    _absent(monkeypatch, "optuna")
    code, out, err = cli("tune", data, "y ~ a*x + b", "--space", "lr=log:1e-3:1e-1", "--out", tmp_path / "t")
    assert code == 2 and out == ""
    assert err.splitlines() == ['gradfit tune: error: gradfit tune needs optuna: pip install "gradfit[tune]"']
    assert not (tmp_path / "t").exists()  # refused before anything was written


def test_gf_tune_without_optuna(monkeypatch):
    _absent(monkeypatch, "optuna")
    with pytest.raises(MissingDependencyError, match=r'^gf\.tune needs optuna: pip install "gradfit\[tune\]"$'):
        gf.tune("a*x + b", x=X, y=Y, space={"lr": ("log", 1e-3, 1e-1)}, trials=2, epochs=5)


def test_tune_result_to_pandas_without_pandas(monkeypatch):
    from gradfit.tuning import TuneResult

    r = TuneResult({"lr": 0.01}, 0.5, None, trials=[{"number": 0, "value": 0.5}])
    _absent(monkeypatch, "pandas")
    with pytest.raises(MissingDependencyError, match=r'TuneResult\.to_pandas needs pandas: pip install '
                                                     r'"gradfit\[pandas\]"'):
        r.to_pandas()


def test_plot_tuning_without_optuna(monkeypatch, tmp_path):
    from gradfit.results.plot import plot_tuning

    _absent(monkeypatch, "optuna")
    with pytest.raises(MissingDependencyError, match=r'plot_tuning needs optuna: pip install "gradfit\[tune\]"'):
        plot_tuning(object(), tmp_path)


def test_storage_url_without_its_database_driver(monkeypatch):
    pytest.importorskip("optuna")
    pytest.importorskip("sqlalchemy")
    from gradfit.tuning.study import open_study

    _absent(monkeypatch, "psycopg", "psycopg2")
    with pytest.raises(MissingDependencyError, match=r"the storage postgresql://\.\.\. needs its database driver.*"
                                                     r'pip install "gradfit\[tune\]" \(psycopg\)'):
        open_study("s", "postgresql://user:pw@localhost:1/db", 0)


# -- pandas: tables and results -------------------------------------------------------------------------
def test_batch_result_to_pandas_and_parquet_without_pandas(monkeypatch, tmp_path):
    r = gf.fit_many("a*x", x=np.arange(3.0), y=[[0.0, 2.0, 4.1], [0.0, 1.0, 2.1]], init={"a": 1})
    _absent(monkeypatch, "pandas")
    with pytest.raises(MissingDependencyError, match=r'^BatchResult\.to_pandas needs pandas: pip install '
                                                     r'"gradfit\[pandas\]"$'):
        r.to_pandas()
    with pytest.raises(MissingDependencyError, match=r'^saving r\.parquet \(Parquet\) needs pandas: pip install '
                                                     r'"gradfit\[pandas\]"$'):
        r.save(tmp_path / "r.parquet")
    assert not (tmp_path / "r.parquet").exists()
    r.save(tmp_path / "r.csv")  # CSV needs no extra
    assert gf.BatchResult.load(tmp_path / "r.csv").params["a"].tolist() == r.params["a"].tolist()


def test_read_parquet_without_pyarrow(monkeypatch, tmp_path):
    p = tmp_path / "d.parquet"
    p.write_bytes(b"PAR1")
    _absent(monkeypatch, "pyarrow")
    with pytest.raises(MissingDependencyError) as info:
        gf.read_table(p)
    assert str(info.value) == (f'{p}: reading .parquet files needs pyarrow: pip install "gradfit[pandas]" '
                               "(or save the data as CSV)")


def test_cli_fit_on_parquet_without_pandas_exits_2_with_one_line(monkeypatch, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": [0.0, 1.0, 2.0], "y": [1.0, 3.0, 5.0]}), p)
    _absent(monkeypatch, "pandas")
    code, _, err = cli("fit", p, "y ~ a*x + b")
    assert code == 2
    assert err.splitlines() == [f'gradfit fit: error: {p}: reading .parquet files needs pandas: pip install '
                                '"gradfit[pandas]" (or save the data as CSV)']


def test_cli_fit_many_parquet_out_without_pyarrow_exits_2_with_one_line(monkeypatch, tmp_path):
    data = tmp_path / "w.csv"
    data.write_text("y_0,y_1,y_2\n0,2,4.1\n0,1,2.1\n")
    _absent(monkeypatch, "pyarrow")
    code, _, err = cli("fit-many", data, "a*x", "--init", "a=1", "--out", tmp_path / "r.parquet")
    assert code == 2
    assert err.splitlines() == ['gradfit fit-many: error: saving r.parquet (Parquet) needs pyarrow: pip install '
                                '"gradfit[pandas]"']
    assert not (tmp_path / "r.parquet").exists()


def test_cli_fit_many_refuses_a_parquet_out_before_fitting(monkeypatch, tmp_path):
    data = tmp_path / "w.csv"
    data.write_text("y_0,y_1,y_2\n0,2,4.1\n0,1,2.1\n")
    calls = []
    monkeypatch.setattr(gf, "fit_many", lambda *a, **k: calls.append(1))  # what the CLI calls
    _absent(monkeypatch, "pandas")
    code, _, err = cli("fit-many", data, "a*x", "--init", "a=1", "--out", tmp_path / "r.parquet")
    assert code == 2 and calls == [] and "saving r.parquet (Parquet) needs pandas" in err
