"""Reading data files: every failure is a DataError that names file, row or column."""

import numpy as np
import pytest

from gradfit import DataError
from gradfit.data.io import read_table


def _write(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


def test_reads_csv_tsv_and_semicolons(tmp_path):
    for sep in (",", "\t", ";"):
        cols = read_table(_write(tmp_path, "d.csv", f"x{sep}y\n1{sep}2\n3{sep} 4\n"))
        np.testing.assert_array_equal(cols["x"], [1, 3])
        np.testing.assert_array_equal(cols["y"], [2, 4])


def test_empty_cells_and_nan_become_nan(tmp_path):
    cols = read_table(_write(tmp_path, "d.csv", "x,y\n1,\nnan,2\n"))
    assert np.isnan(cols["y"][0]) and np.isnan(cols["x"][1])


def test_npz(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.arange(3.0), y=np.ones(3))
    assert set(read_table(p)) == {"x", "y"}


@pytest.mark.parametrize("name,content,match", [
    ("e.csv", "", "empty"),
    ("h.csv", "x,y\n", "no data rows"),
    ("u.csv", b"x,y\n1,\xff\n", "line 2 is not valid UTF-8"),
    ("b.csv", b"\x00\x01\x02binary", "binary"),
    ("r.csv", "x,y\n1,2\n3\n", "row 3 has 1 fields"),
    ("d.csv", "x,x\n1,2\n", "duplicate column name 'x'"),
    ("nh.csv", "1,2\n3,4\n", "first row must name the columns"),
])
def test_bad_files(tmp_path, name, content, match):
    with pytest.raises(DataError, match=match):
        read_table(_write(tmp_path, name, content))


def test_text_column_is_kept_and_refused_only_when_used(tmp_path):
    """A non-numeric cell makes a text column; only a caller that uses it gets the DataError,
    which names the column, the row and the cell."""
    from gradfit.data.io import numeric_columns

    cols = read_table(_write(tmp_path, "n.csv", "x,y,note\n1,abc,ok\n2,3,\n"))
    assert cols["y"].tolist() == ["abc", "3"] and cols["x"].dtype == np.int64
    assert set(numeric_columns(cols, ["x"])) == {"x"}
    with pytest.raises(DataError, match=r"non-numeric values: row 2 column 'y': 'abc'"):
        numeric_columns(cols, ["x", "y"], source="n.csv")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a directory"):
        read_table(tmp_path)


def test_validation_fast_path_and_row_names():
    """Sums of squares prove finite, float32-safe data in one pass; when they cannot (NaN,
    inf, or merely large values), the row-by-row check names rows or lets the data pass."""
    import math

    from gradfit.data.arrays import prepare_arrays
    from gradfit.models import resolve_model

    model = resolve_model("w*x + b")
    _, ok = prepare_arrays(model, [1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert ok.float32_safe
    big = [3e38] * 11  # each value fits float32 but the sum of squares overflows the test
    _, large = prepare_arrays(model, big, list(range(11)))
    assert not large.float32_safe and large.n == 11
    with pytest.raises(DataError, match=r"NaN or inf in 2 data row\(s\): 2, 4"):
        prepare_arrays(model, [1.0, math.nan, 3.0, 4.0], [1.0, 2.0, 3.0, math.inf])
    _, kept = prepare_arrays(model, [1.0, math.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0], nan_policy="omit")
    assert kept.n == 3 and kept.notes == ["dropped 1 row(s) with NaN or inf"]
