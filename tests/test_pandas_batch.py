"""fit_many on long pandas tables: ids keep their values and types in BatchResult.to_pandas() and
through .npz, .parquet and .csv files (results/batch_tables.py)."""

import numpy as np
import pytest

import gradfit as gf
from gradfit.results.batch_result import BatchResult

pd = pytest.importorskip("pandas")

DOSE = [1.0, 2.0, 4.0]
#: the slope of each fit, in the table's order of first appearance; y = slope * dose exactly
SLOPES = [2.0, 0.5, 3.0]


def _table(ids):
    """A long table with three fits named by ``ids`` (one id per fit, in the order of SLOPES)."""
    rows = [(i, d, s * d) for i, s in zip(ids, SLOPES) for d in DOSE]
    return pd.DataFrame({"dose": [r[1] for r in rows], "signal": [r[2] for r in rows],
                         "well": pd.Series([r[0] for r in rows])})


def _fit(df):
    return gf.fit_many("a*dose", data=df, id="well", x="dose", y="signal", init={"a": 1.0}, dtype="float64",
                       tol=1e-12)


ID_KINDS = {
    "text": ["w3", "w1", "w2"],
    "int": [30, 10, 20],
    "datetime": list(pd.to_datetime(["2024-03-01", "2024-01-01", "2024-02-01"])),
    "zoned": list(pd.to_datetime(["2024-03-01 08:00", "2024-01-01 00:00", "2024-02-01 00:00"])
                  .tz_localize("Europe/Paris")),
}


def _categorical_table():
    df = _table(["b", "a", "c"])
    df["well"] = pd.Categorical(df["well"], categories=["c", "b", "a", "unused"], ordered=True)
    return df


def _frames():
    frames = {name: _table(ids) for name, ids in ID_KINDS.items()}
    frames["categorical"] = _categorical_table()
    return frames


@pytest.mark.parametrize("kind", ["text", "int", "datetime", "zoned", "categorical"])
def test_to_pandas_names_the_id_column_and_keeps_its_type(kind):
    df = _frames()[kind]
    table = _fit(df).to_pandas()
    assert table.columns[:3].tolist() == ["fit", "well", "a"]
    assert table["well"].dtype == df["well"].dtype
    assert table["well"].tolist() == list(pd.unique(df["well"]))
    np.testing.assert_allclose(table["a"], SLOPES, rtol=1e-12)
    # the table joins back onto the data on the id column
    joined = df.merge(table[["well", "a"]], on="well")
    np.testing.assert_allclose(joined["signal"], joined["a"] * joined["dose"], rtol=1e-12)
    assert len(joined) == len(df)


@pytest.mark.parametrize("kind", ["text", "int", "datetime", "zoned", "categorical"])
@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
def test_typed_files_give_the_ids_back_with_their_type(kind, suffix, tmp_path):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    df = _frames()[kind]
    r = _fit(df)
    r.save(tmp_path / f"r{suffix}")
    back = BatchResult.load(tmp_path / f"r{suffix}")
    table = back.to_pandas()
    label = "well" if suffix == ".npz" else "id"  # tables name the column id (the CLI's files)
    assert table[label].dtype == df["well"].dtype
    assert table[label].tolist() == r.to_pandas()["well"].tolist()
    np.testing.assert_allclose(table["a"], SLOPES, rtol=1e-12)
    if kind == "categorical":
        assert table[label].cat.categories.tolist() == ["c", "b", "a", "unused"] and table[label].cat.ordered


def test_csv_keeps_text_and_integers_and_writes_dates_as_iso_text(tmp_path):
    frames = _frames()
    expected = {"text": ["w3", "w1", "w2"], "int": [30, 10, 20], "categorical": ["b", "a", "c"],
                "datetime": ["2024-03-01T00:00:00.000000", "2024-01-01T00:00:00.000000",
                             "2024-02-01T00:00:00.000000"],
                "zoned": ["2024-03-01T08:00:00+01:00", "2024-01-01T00:00:00+01:00", "2024-02-01T00:00:00+01:00"]}
    for kind, ids in expected.items():
        _fit(frames[kind]).save(tmp_path / f"{kind}.csv")
        back = BatchResult.load(tmp_path / f"{kind}.csv")
        assert back.ids.tolist() == ids, kind
        assert [type(v) for v in back.ids.tolist()] == [type(v) for v in ids], kind
        np.testing.assert_allclose(back.params["a"], SLOPES, rtol=1e-12)
    first = (tmp_path / "int.csv").read_text().splitlines()[1].split(",")
    assert first[:2] == ["0", "30"]


def test_integer_categories_survive_npz(tmp_path):
    df = _table([7, 3, 5])
    df["well"] = pd.Categorical(df["well"], categories=[3, 5, 7])
    r = _fit(df)
    r.save(tmp_path / "r.npz")
    table = BatchResult.load(tmp_path / "r.npz").to_pandas()
    assert table["well"].dtype == df["well"].dtype and table["well"].tolist() == [7, 3, 5]


def test_a_parameter_named_like_the_id_column_keeps_both():
    df = _table(["p", "q", "r"]).rename(columns={"well": "a"})
    r = gf.fit_many("b*dose", data=df, id="a", x="dose", y="signal", init={"b": 1.0}, dtype="float64")
    table = r.to_pandas()
    assert table["a"].tolist() == ["p", "q", "r"]
    np.testing.assert_allclose(table["b"], SLOPES, rtol=1e-10)


def test_a_dict_of_columns_keeps_plain_ids():
    r = gf.fit_many("a*dose", data={"well": [5, 5, 9, 9], "dose": [1.0, 2.0, 1.0, 2.0],
                                    "signal": [1.0, 2.0, 3.0, 6.0]},
                    id="well", x="dose", y="signal", init={"a": 1.0}, dtype="float64")
    table = r.to_pandas()
    assert table["well"].tolist() == [5, 9] and table["well"].dtype == np.int64 and r.id_dtype is None
