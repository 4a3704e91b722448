"""fit-many on the command line as people use it: a long table whose formula names the x
column, global fits in --json, and option values that mean nothing."""

import json

import numpy as np
import pytest
from _cli import cli


def _long_table(path, n_wells=3):
    rng = np.random.default_rng(0)
    lines = ["well,time,signal"]
    for w in range(n_wells):
        for t in np.linspace(0, 5, 12):
            lines.append(f"w{w},{t},{(2 + w) * np.exp(-0.7 * t) + rng.normal(0, 0.01)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_long_table_formula_may_name_its_x_column(tmp_path):
    data = _long_table(tmp_path / "long.csv")
    code, out, err = cli("fit-many", data, "a*exp(-k*time)", "--id-column", "well", "--x", "time", "--y", "signal",
                         "--init", "a=1,k=1", "--json")
    assert code == 0, err
    assert json.loads(out)["converged_fraction"] == 1.0


def test_json_of_a_global_fit_carries_the_shared_values(tmp_path):
    data = _long_table(tmp_path / "long.csv", n_wells=4)
    code, out, err = cli("fit-many", data, "a*exp(-k*x)", "--id-column", "well", "--x", "time", "--y", "signal",
                         "--init", "a=1,k=1", "--shared", "k", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["shared"]["k"] == pytest.approx(0.7, abs=0.01)
    assert 0 < doc["shared_stderr"]["k"] < 0.01
    assert doc["joint_stats"]["dof"] == 4 * 12 - (4 + 1)


@pytest.mark.parametrize("value", [",", " , "])
def test_a_shared_option_naming_nothing_is_refused(tmp_path, value):
    data = _long_table(tmp_path / "long.csv")
    code, out, err = cli("fit-many", data, "a*exp(-k*x)", "--id-column", "well", "--x", "time", "--y", "signal",
                         "--init", "a=1,k=1", "--shared", value)
    assert code == 2 and "--shared" in err and len(err.strip().splitlines()) == 1


def test_cli_x_values_from_a_npy_file_without_stream(tmp_path):
    x = np.linspace(0, 5, 20)
    np.save(tmp_path / "x.npy", x)
    y = 2.0 * np.exp(-0.7 * x)[None, :] * np.array([[1.0], [1.5], [2.0]])
    np.save(tmp_path / "y.npy", y)
    code, out, err = cli("fit-many", tmp_path / "y.npy", "a*exp(-k*x)", "--x-values", tmp_path / "x.npy",
                         "--init", "a=1,k=1", "--json")
    assert code == 0, err
    assert json.loads(out)["converged_fraction"] == 1.0
    code, out, err = cli("fit-many", tmp_path / "y.npy", "a*exp(-k*x)", "--x-values", tmp_path / "nope.npy",
                         "--init", "a=1,k=1")
    assert code == 2 and "nope.npy" in err


def _wide_table(path):
    rng = np.random.default_rng(1)
    x = np.arange(10) * 0.5
    lines = ["sample," + ",".join(f"y_{j}" for j in range(10))]
    for i, name in enumerate(["liver", "kidney", "lung"]):
        y = (2 + i) * np.exp(-0.6 * x) + rng.normal(0, 0.01, x.size)
        lines.append(name + "," + ",".join(map(str, y)))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_wide_table_names_its_fits_with_id_column(tmp_path):
    # before: a text column of a wide table was dropped without a word (the output said fit 0..2)
    data = _wide_table(tmp_path / "wide.csv")
    code, out, err = cli("fit-many", data, "a*exp(-k*x)", "--init", "a=1,k=1", "--x-values", "0:5:0.5",
                         "--out", tmp_path / "fits.csv")
    assert code == 0, err
    assert err.count("\n") == 1 and "warning" in err and "sample not used" in err and "--id-column sample" in err
    code, out, err = cli("fit-many", data, "a*exp(-k*x)", "--init", "a=1,k=1", "--x-values", "0:5:0.5",
                         "--id-column", "sample", "--out", tmp_path / "fits.csv")
    assert code == 0 and err == ""
    table = (tmp_path / "fits.csv").read_text().splitlines()
    assert [row.split(",")[1] for row in table[1:]] == ["liver", "kidney", "lung"]
    a = [float(row.split(",")[2]) for row in table[1:]]
    np.testing.assert_allclose(a, [2, 3, 4], rtol=0.02)
    code, out, err = cli("fit-many", data, "a*exp(-k*x)", "--init", "a=1,k=1", "--id-column", "tissue")
    assert code == 2 and "tissue" in err and err.count("\n") == 1
