"""What a fit on files takes as input (issue 17): a shuffle buffer smaller than a batch or a row
group, weights/sigma named as columns of any data= (also an input of the model), Hive-style
folders and globs, the interrupt message of a streamed run, and the CLI's streamed fit and
predict. References are numpy's weighted least squares and counts of the rows written."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gradfit as gf
from gradfit.data.arrays import Arrays
from gradfit.data.parquet_rows import ParquetData, Reader, RowSource, Split, shuffled_batches
from gradfit.errors import ConfigError, DataError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _rows(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    x, x2 = rng.uniform(1, 2, n), rng.uniform(-1, 1, n)
    return {"x": x, "x2": x2, "y": 1.5 * x - 0.7 * x2 + 0.3 + rng.normal(0, 0.1, n), "s": rng.uniform(0.5, 2, n)}


def _write(path, cols, row_group=250):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path, row_group_size=row_group)
    return path


def _weighted_lstsq(cols, w):
    design = np.column_stack([cols["x"], cols["x2"], np.ones(len(cols["y"]))]) * np.sqrt(w)[:, None]
    return np.linalg.lstsq(design, cols["y"] * np.sqrt(w), rcond=None)[0]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    cols = _rows()
    folder = tmp_path_factory.mktemp("inputs")
    _write(folder / "pq" / "a.parquet", cols)
    return folder, cols


# -- 1. a shuffle buffer smaller than a batch or a row group ----------------------------------------

@pytest.mark.parametrize("buffer_rows, batch_size", [(10, 64), (1, 300), (7, 1)])
def test_a_small_buffer_still_emits_every_row_once_per_epoch(table, buffer_rows, batch_size):
    folder, cols = table
    source = RowSource(folder / "pq")
    reader = Reader(source, Split(source, 0.0, 0), ("x", "y"), lambda c: Arrays({"x": c["x"]}, c["y"]))
    for epoch in (0, 1):
        batches = list(shuffled_batches(reader, epoch, 3, batch_size, buffer_rows))
        seen = np.concatenate([b.inputs["x"] for b in batches])
        assert np.array_equal(np.sort(seen), np.sort(cols["x"]))  # each row once, none lost or repeated
        assert all(b.n == batch_size for b in batches[:-1]) and 0 < batches[-1].n <= batch_size


def test_a_fit_with_buffer_rows_below_the_batch_size_trains_on_every_row(table):
    folder, cols = table
    r = gf.fit("y ~ a*x + c*x2 + b", data=ParquetData(folder / "pq", stream=True, buffer_rows=10), batch_size=64,
               epochs=30, lr=0.02, dtype="float64")
    ref = _weighted_lstsq(cols, np.ones(len(cols["y"])))
    assert r.n_train == 2000 and np.allclose([r.params[k] for k in "acb"], ref, atol=0.03)


# -- 2. weights= and sigma= name columns of any data= -----------------------------------------------

def test_a_weights_column_that_is_also_an_input_weights_every_kind_of_data(table, tmp_path):
    import pandas as pd

    folder, cols = table
    ref = _weighted_lstsq(cols, cols["x"])
    csv = tmp_path / "d.csv"
    pd.DataFrame(cols).to_csv(csv, index=False)
    for data in (str(folder / "pq"), ParquetData(folder / "pq", stream=False), str(csv), pd.DataFrame(cols),
                 dict(cols)):
        r = gf.fit("y ~ a*x + c*x2 + b", data=data, weights="x")
        assert sorted(r.model.input_names) == ["x", "x2"]  # x stays an input, not a parameter
        assert np.allclose([r.params[k] for k in "acb"], ref, rtol=1e-9, atol=1e-12), type(data)
        assert r.settings["weighted"] is True


def test_a_sigma_column_weights_by_one_over_its_square(table):
    folder, cols = table
    ref = _weighted_lstsq(cols, 1 / cols["s"] ** 2)
    for data in (dict(cols), str(folder / "pq")):
        r = gf.fit("y ~ a*x + c*x2 + b", data=data, sigma="s")
        assert np.allclose([r.params[k] for k in "acb"], ref, rtol=1e-9, atol=1e-12)
    with pytest.raises(ConfigError, match="either sigma or weights"):
        gf.fit("y ~ a*x + c*x2 + b", data=dict(cols), sigma="s", weights="x")


def test_a_streamed_fit_weights_by_a_column_the_formula_also_uses(table):
    folder, cols = table
    r = gf.fit("y ~ a*x + c*x2 + b", data=ParquetData(folder / "pq", stream=True), weights="x", batch_size=100,
               epochs=40, lr=0.02, dtype="float64")
    assert sorted(r.model.input_names) == ["x", "x2"] and r.settings["weighted"] is True
    ref = _weighted_lstsq(cols, cols["x"])
    assert np.allclose([r.params[k] for k in "acb"], ref, atol=0.03)
    # the final loss is the weighted mean squared residual of every row at the final parameters
    resid = cols["y"] - (r.params["a"] * cols["x"] + r.params["c"] * cols["x2"] + r.params["b"])
    assert r.loss == pytest.approx(np.sum(cols["x"] * resid**2) / np.sum(cols["x"]), rel=1e-9)


def test_a_weights_name_without_data_or_not_a_column_says_so(table):
    _, cols = table
    with pytest.raises(DataError, match=r"no column 'xx' in data for weights.*'x'"):
        gf.fit("y ~ a*x + c*x2 + b", data=dict(cols), weights="xx")
    with pytest.raises(ConfigError, match="names a column of data="):
        gf.fit("y ~ a*x + b", x=cols["x"], y=cols["y"], weights="x")
    with pytest.raises(ConfigError, match="weights values cannot accompany streamed data"):
        gf.fit("y ~ a*x + b", data=ParquetData(table[0] / "pq", stream=True), weights=cols["x"], batch_size=64)


# -- 3. the interrupt message of a streamed run -----------------------------------------------------

@pytest.mark.parametrize("row_group", [250, 100])  # 8 row groups: a row-hash split; 20: whole groups held out
def test_a_streamed_interrupt_counts_training_rows(tmp_path, table, row_group, monkeypatch):
    from gradfit.train.checkpoint import Checkpointer, Interrupted
    from gradfit.train.streamed import StreamedTraining

    _, cols = table
    folder = _write(tmp_path / "d" / "a.parquet", cols, row_group=row_group).parent
    kw = dict(data=ParquetData(folder, stream=True), batch_size=64, epochs=3, lr=0.02, val_fraction=0.2)
    full = gf.fit("y ~ a*x + c*x2 + b", **kw)
    ckpt = Checkpointer(tmp_path / "ck", every_epochs=None, every_seconds=None)

    batches = StreamedTraining.batches

    def stop_after_five_batches(self, epoch):  # the signal arrives during epoch 2, after five batches
        for k, batch in enumerate(batches(self, epoch)):
            if epoch == 2 and k == 5:
                ckpt.signal = 15
            yield batch

    monkeypatch.setattr(StreamedTraining, "batches", stop_after_five_batches)
    with pytest.raises(Interrupted) as stop:
        gf.fit("y ~ a*x + c*x2 + b", checkpoint=ckpt, **kw)
    done, total, what = stop.value.rows
    assert (total, what) == (full.n_train, "training rows") and full.n_train < 2000
    assert done == 5 * 64  # whole batches of rows, not a count of batches
    assert f"in epoch 2 after {done} of {full.n_train} training rows" in str(stop.value)


# -- 4. folders and globs ---------------------------------------------------------------------------

def test_a_hive_partitioned_folder_is_read_recursively_in_sorted_order(tmp_path, table):
    from gradfit.data.stream import _parquet_files

    _, cols = table
    half = {k: v[:1000] for k, v in cols.items()}, {k: v[1000:] for k, v in cols.items()}
    _write(tmp_path / "hive" / "run=2" / "p.parquet", half[1])
    _write(tmp_path / "hive" / "run=1" / "p.parquet", half[0])
    _write(tmp_path / "hive" / "_temporary" / "p.parquet", half[0])  # Spark's unfinished output: skipped
    (tmp_path / "hive" / "_SUCCESS").write_text("")
    files = _parquet_files(tmp_path / "hive")
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["hive/run=1/p.parquet", "hive/run=2/p.parquet"]
    assert _parquet_files(str(tmp_path / "hive" / "*")) == files  # a glob matching folders reads them too
    r = gf.fit("y ~ a*x + c*x2 + b", data=str(tmp_path / "hive"))
    assert r.n_train == 2000
    assert np.allclose([r.params[k] for k in "acb"], _weighted_lstsq(cols, np.ones(2000)), rtol=1e-9)


def test_a_glob_of_other_files_says_it_takes_parquet_only(tmp_path):
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    with pytest.raises(DataError, match=r"a glob takes \.parquet files only, and it matches .*a\.csv"):
        gf.fit("y ~ a*x + b", data=str(tmp_path / "*.csv"))


# -- 5, 6, 8. the CLI -------------------------------------------------------------------------------

def test_cli_stream_without_batch_size_names_the_flags(table):
    from _cli import cli

    code, _, err = cli("fit", table[0] / "pq", "y ~ a*x + b", "--stream")
    assert code == 2 and "--batch-size" in err and "drop --stream" in err


def test_cli_json_has_the_row_counts_streamed_and_in_memory(table, tmp_path):
    from _cli import cli

    folder, cols = table
    code, out, err = cli("fit", folder / "pq", "y ~ a*x + c*x2 + b", "--stream", "--batch-size", 128, "--epochs", 1,
                         "--val-fraction", 0.2, "--json", "--no-progress")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["n_train"] + doc["n_val"] == 2000 and 0 < doc["n_val"] < 2000
    csv = tmp_path / "d.csv"
    csv.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in zip(cols["x"][:50], cols["y"][:50])))
    code, out, err = cli("fit", csv, "y ~ a*x + b", "--json", "--val-fraction", 0.2)
    assert code == 0, err
    assert (json.loads(out)["n_train"], json.loads(out)["n_val"]) == (40, 10)


def test_cli_sigma_names_a_parquet_column(table):
    from _cli import cli

    folder, cols = table
    code, out, err = cli("fit", folder / "pq", "y ~ a*x + c*x2 + b", "--sigma", "s", "--json")
    assert code == 0, err
    ref = _weighted_lstsq(cols, 1 / cols["s"] ** 2)
    assert np.allclose([json.loads(out)["params"][k] for k in "acb"], ref, rtol=1e-9)


def test_cli_predict_reads_a_parquet_folder(table, tmp_path):
    from _cli import cli

    folder, cols = table
    r = gf.fit("y ~ a*x + c*x2 + b", data=dict(cols))
    r.save(tmp_path / "m.json")
    code, out, err = cli("predict", tmp_path / "m.json", folder / "pq")
    assert code == 0, err
    got = np.loadtxt(out.splitlines(), delimiter=",", skiprows=1)
    header = out.splitlines()[0].split(",")
    expected = r.params["a"] * cols["x"] + r.params["c"] * cols["x2"] + r.params["b"]
    assert np.allclose(got[:, header.index("prediction")], expected, rtol=1e-12)
    assert np.array_equal(got[:, header.index("x")], cols["x"])


def test_profile_intervals_take_sigma_and_weights_by_column_name():
    import pandas as pd

    rng = np.random.default_rng(0)
    x = np.linspace(0, 4, 30)
    dy = 0.05 + 0.02 * x
    y = 2 * np.exp(-0.7 * x) + rng.normal(0, dy)
    df = pd.DataFrame({"x": x, "y": y, "dy": dy, "w": 1 / dy**2})
    by_name = gf.fit("y ~ a*exp(-k*x)", data=df, sigma="dy")
    by_values = gf.fit("y ~ a*exp(-k*x)", x=x, y=y, sigma=dy)
    want = by_values.ci(method="profile", x=x, y=y, sigma=dy)
    for kw in ({"sigma": "dy"}, {"weights": "w"}):
        got = by_name.ci(method="profile", data=df, **kw)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-9)
    with pytest.raises(gf.ConfigError, match="the fit was weighted"):
        by_name.ci(method="profile", data=df)


def _hive(root, keys_of, rows=400, seed=0):
    """Files at root/<key=value>/.../part-0.parquet with x, y = 1.5 x - 0.5 + 0.25 run + noise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    xs, ys, runs = [], [], []
    for keys in keys_of:
        folder = root.joinpath(*(f"{k}={v}" for k, v in keys.items()))
        folder.mkdir(parents=True)
        x = rng.uniform(0, 2, rows)
        run = float(keys.get("run", 0))
        y = 1.5 * x - 0.5 + 0.25 * run + rng.normal(0, 0.05, rows)
        pq.write_table(pa.table({"x": x, "y": y}), folder / "part-0.parquet", row_group_size=rows // 2)
        xs.append(x), ys.append(y), runs.append(np.full(rows, run))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(runs)


def test_hive_partition_keys_are_columns(tmp_path):
    keys = [{"run": r, "site": s} for r in range(4) for s in ("north", "south")]
    x, y, run = _hive(tmp_path / "hv", keys)
    want = np.linalg.lstsq(np.c_[x, np.ones_like(x), run], y, rcond=None)[0]
    whole = gf.fit("y ~ a*x + b + c*run", data=tmp_path / "hv")  # read whole: least squares
    np.testing.assert_allclose([whole.params[n] for n in "abc"], want, rtol=1e-9)
    # streamed, held out by the text key: every site's rows on one side
    streamed = gf.fit("y ~ a*x + b + c*run", data=gf.ParquetData(tmp_path / "hv", stream=True, val_key="site"),
                      batch_size=128, epochs=20, val_fraction=0.5, lr=0.05, normalize=True)
    assert (streamed.n_train, streamed.n_val) == (1600, 1600)  # one site's 1,600 rows each side
    np.testing.assert_allclose([streamed.params[n] for n in "abc"], want, atol=0.02)
    with pytest.raises(DataError, match="column 'site' holds string, not numbers"):
        gf.fit("y ~ a*x + b + c*site", data=tmp_path / "hv")


def test_a_key_on_some_paths_only_or_inside_the_files_is_not_added(tmp_path):
    from gradfit.data.hive import partition_columns

    files = [tmp_path / "run=1" / "a.parquet", tmp_path / "run=2" / "day=3" / "b.parquet",
             tmp_path / "run=x%2Fy" / "c.parquet"]
    cols = partition_columns(files)
    assert list(cols) == ["run"] and cols["run"][1] is False  # day is on one path only; x/y is text
    assert cols["run"][0].tolist() == ["1", "2", "x/y"]  # URL-decoded
    assert partition_columns(files[:2], existing=("run",)) == {}  # a column inside the files wins
    nulls = partition_columns([tmp_path / "k=1" / "a.parquet",
                               tmp_path / "k=__HIVE_DEFAULT_PARTITION__" / "b.parquet"])
    assert np.isnan(nulls["k"][0][1]) and nulls["k"][1] is True
