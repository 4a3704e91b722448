"""Tables of many fits -> (fits, points) arrays: long and wide layouts, per-fit values."""

import numpy as np
import pytest

from gradfit import DataError
from gradfit.data.tables import long_to_batch, per_fit_values, wide_to_batch

NAN = np.nan


def test_ragged_groups_pad_y_with_nan_and_x_with_the_last_x():
    cols = {"fit": [0, 0, 0, 1, 1, 2], "x": [1.0, 2.0, 3.0, 5.0, 6.0, 9.0], "y": [10, 20, 30, 50, 60, 90]}
    ids, x, y = long_to_batch(cols, id="fit", x="x", y="y")
    assert ids.tolist() == [0, 1, 2] and ids.dtype.kind == "i"
    np.testing.assert_array_equal(x, [[1, 2, 3], [5, 6, 6], [9, 9, 9]])
    np.testing.assert_array_equal(y, [[10, 20, 30], [50, 60, NAN], [90, NAN, NAN]])
    assert x.dtype == y.dtype == np.float64


def test_fits_in_first_appearance_order_rows_in_table_order():
    """Interleaved rows: each fit's points keep the table's order; fits keep first appearance."""
    cols = {"id": [7, 3, 7, 3, 7], "x": [0.0, 1.0, 2.0, 3.0, 4.0], "y": [1.0, 2.0, 3.0, 4.0, 5.0]}
    ids, x, y = long_to_batch(cols, id="id", x="x", y="y")
    assert ids.tolist() == [7, 3]
    np.testing.assert_array_equal(x, [[0, 2, 4], [1, 3, 3]])
    np.testing.assert_array_equal(y, [[1, 3, 5], [2, 4, NAN]])


def test_string_ids_keep_their_values_and_order():
    cols = {"well": ["B2", "A1", "B2", "C3", "A1"], "dose": [1, 1, 2, 1, 2], "signal": [5, 6, 7, 8, 9]}
    ids, x, y = long_to_batch(cols, id="well", x="dose", y="signal")
    assert ids.tolist() == ["B2", "A1", "C3"] and all(isinstance(i, str) for i in ids)
    np.testing.assert_array_equal(y, [[5, 7], [6, 9], [8, NAN]])
    np.testing.assert_array_equal(x, [[1, 2], [1, 2], [1, 1]])


def test_numeric_ids_keep_their_type():
    ids, _, _ = long_to_batch({"t": [2.5, 0.5, 2.5], "x": [0, 0, 1], "y": [1, 2, 3]}, id="t", x="x", y="y")
    assert ids.dtype == np.float64 and ids.tolist() == [2.5, 0.5]
    ids, _, _ = long_to_batch({"t": np.array([9, 4], dtype=np.int32), "x": [0, 0], "y": [1, 2]}, id="t", x="x", y="y")
    assert ids.dtype == np.int32 and ids.tolist() == [9, 4]


def test_mixed_unorderable_ids():
    ids, _, y = long_to_batch({"k": ["a", 1, "a", 1], "x": [0, 0, 1, 1], "y": [1, 2, 3, 4]}, id="k", x="x", y="y")
    assert ids.tolist() == ["a", 1]
    np.testing.assert_array_equal(y, [[1, 3], [2, 4]])


def test_dataframe_input():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"well": ["w2", "w1", "w2", "w1", "w2"], "dose": [0.0, 0.0, 1.0, 1.0, 2.0],
                       "signal": [1.0, 2.0, 3.0, 4.0, 5.0], "a": [7.0, 8.0, 7.0, 8.0, 7.0]})
    ids, x, y = long_to_batch(df, id="well", x="dose", y="signal")
    assert ids.tolist() == ["w2", "w1"]
    np.testing.assert_array_equal(x, [[0, 1, 2], [0, 1, 1]])
    np.testing.assert_array_equal(y, [[1, 3, 5], [2, 4, NAN]])
    np.testing.assert_array_equal(per_fit_values(df, ["a", "b"], id="well")["a"], [7.0, 8.0])
    cat = df.assign(well=df["well"].astype("category"))
    assert long_to_batch(cat, id="well", x="dose", y="signal")[0].tolist() == ["w2", "w1"]


def test_agrees_with_a_loop_over_groups():
    rng = np.random.default_rng(0)
    fit = rng.integers(0, 30, 500)
    xs, ys = rng.normal(size=500), rng.normal(size=500)
    ids, x, y = long_to_batch({"f": fit, "x": xs, "y": ys}, id="f", x="x", y="y")
    for k, i in enumerate(ids):
        rows = np.flatnonzero(fit == i)
        np.testing.assert_array_equal(y[k, :len(rows)], ys[rows])
        np.testing.assert_array_equal(x[k, :len(rows)], xs[rows])
        assert np.isnan(y[k, len(rows):]).all() and (x[k, len(rows):] == xs[rows[-1]]).all()
    assert [int(i) for i in ids] == list(dict.fromkeys(fit.tolist()))


@pytest.mark.parametrize("role,kwargs,needle", [
    ("id", dict(id="fid", x="x", y="y"), "the id column 'fid' is not in the table (did you mean 'fit'?)"),
    ("x", dict(id="fit", x="dose", y="y"), "the x column 'dose' is not in the table"),
    ("y", dict(id="fit", x="x", y="yy"), "the y column 'yy' is not in the table (did you mean 'y'?)"),
])
def test_missing_column_names_role_and_suggests(role, kwargs, needle):
    with pytest.raises(DataError) as info:
        long_to_batch({"fit": [1, 2], "x": [0.0, 1.0], "y": [1.0, 2.0]}, source="runs.csv", **kwargs)
    assert str(info.value).startswith("runs.csv: ") and needle in str(info.value)
    assert "columns: fit, x, y" in str(info.value)


@pytest.mark.parametrize("cols,needle", [
    ({"fit": [1, 2], "x": [0.0], "y": [1.0, 2.0]}, "columns differ in length"),
    ({"fit": [], "x": [], "y": []}, "no rows"),
    ({"fit": [1.0, NAN, 2.0], "x": [0.0, 1, 2], "y": [1.0, 2, 3]}, "1 row(s) have no id in column 'fit'"),
    ({"fit": ["a", None], "x": [0.0, 1], "y": [1.0, 2]}, "rows 2, counting data rows from 1"),
    ({"fit": [1, 2], "x": [0.0, 1], "y": ["a", "b"]}, "column 'y' is not numeric"),
])
def test_bad_tables(cols, needle):
    with pytest.raises(DataError, match=None) as info:
        long_to_batch(cols, id="fit", x="x", y="y")
    assert needle in str(info.value)


def test_per_fit_values_wide_and_long():
    wide = {"a": [1.0, 2.0], "y_0": [0.0, 0.0], "c": [5, 6]}
    out = per_fit_values(wide, ["a", "b", "c"])
    assert set(out) == {"a", "c"} and out["c"].dtype == np.float64
    long = {"fit": ["p", "q", "p"], "a": [1.0, NAN, 1.0], "x": [0, 0, 1]}
    np.testing.assert_array_equal(per_fit_values(long, ["a"], id="fit")["a"], [1.0, NAN])
    with pytest.raises(DataError, match="column 'a' has different values within fit 'p'"):
        per_fit_values({"fit": ["p", "q", "p"], "a": [1.0, 2.0, 3.0]}, ["a"], id="fit")
    with pytest.raises(DataError, match="did you mean 'fit'"):
        per_fit_values(long, ["a"], id="fits")


def test_wide_to_batch_orders_by_number_and_reads_x_columns():
    cols = {"y_10": [3.0], "y_2": [2.0], "y_0": [1.0], "x_0": [0.0], "x_2": [0.5], "x_10": [1.0], "note": [9.0]}
    x, y = wide_to_batch(cols)
    np.testing.assert_array_equal(y, [[1, 2, 3]])
    np.testing.assert_array_equal(x, [[0, 0.5, 1]])
    x, y = wide_to_batch({"s0": [1.0, 2.0], "s1": [3.0, 4.0]}, prefix="s")
    assert x is None and y.shape == (2, 2)
    with pytest.raises(DataError, match="no columns y_0, y_1"):
        wide_to_batch({"a": [1.0]}, source="t.csv")
    with pytest.raises(DataError, match="1 x_ columns but 2 y_ columns"):
        wide_to_batch({"y_0": [1.0], "y_1": [2.0], "x_0": [0.0]})
