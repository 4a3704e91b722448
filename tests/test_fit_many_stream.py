"""fit_many_files: batches read from .npy memory maps and Parquet a chunk at a time, results
written as Parquet parts with a manifest, resumed without refitting, sharded by rank."""

import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import gradfit as gf
from gradfit._files import parse_json
from gradfit.data.stream import NpySource, ParquetSource, open_source
from gradfit.fitting.stream import _read_manifest

sys.path.insert(0, str(Path(__file__).parent))
import _torchrun_fit_many_stream as job

SCRIPT = Path(job.__file__)
X = np.asarray(job.OPTIONS["x"])


def _decays(n=230, seed=3):
    rng = np.random.default_rng(seed)
    a, k, c = rng.uniform(1, 3, n), rng.uniform(0.3, 1.5, n), rng.uniform(-0.5, 0.5, n)
    return a[:, None] * np.exp(-k[:, None] * X) + c[:, None] + rng.normal(0, 0.01, (n, X.size))


def _in_memory(y):
    opts = {k: v for k, v in job.OPTIONS.items() if k not in ("x", "chunk_fits")}
    return gf.fit_many(job.MODEL, X, y, **opts)


def _stream(data, out, **extra):
    return gf.fit_many_files(job.MODEL, data, out, **{**job.OPTIONS, **extra})


def _assert_matches(frame, r):
    assert frame["fit"].tolist() == list(range(len(r)))
    for n in r.param_names:
        np.testing.assert_allclose(frame[n], r.params[n], rtol=1e-9, atol=1e-12, err_msg=n)
        np.testing.assert_allclose(frame[f"{n}_stderr"], r.stderr[n], rtol=1e-7, err_msg=n)
    np.testing.assert_allclose(frame["chisqr"], r.stats["chisqr"], rtol=1e-7)
    assert frame["status"].tolist() == r.status_text.tolist()


@pytest.fixture
def cube(tmp_path):
    y = _decays()
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "y.npy", y


def test_npy_stream_equals_fit_many_in_memory(cube, tmp_path):
    path, y = cube
    s = _stream(path, tmp_path / "out")
    assert (s.n_fits, s.n_chunks, s.fitted, s.skipped, s.complete) == (230, 6, (0, 1, 2, 3, 4, 5), (), True)
    r = _in_memory(y)
    assert s.status_counts == r.status_counts()
    assert r.converged.all()
    _assert_matches(gf.read_fit_many_files(tmp_path / "out"), r)
    # the parts are one pyarrow dataset (the manifest and records, named "_...", are skipped)
    import pyarrow.dataset as ds

    assert ds.dataset(tmp_path / "out", format="parquet").count_rows() == 230
    manifest = parse_json((tmp_path / "out" / "_manifest.json").read_bytes())
    assert manifest["complete"] and [(c["start"], c["stop"]) for c in manifest["chunks"]] == \
        [(0, 40), (40, 80), (80, 120), (120, 160), (160, 200), (200, 230)]


def test_parquet_files_stream_by_row_groups(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    y = _decays(150, seed=8)
    folder = tmp_path / "wide"
    folder.mkdir()
    for i, rows in enumerate((slice(0, 70), slice(70, 150))):  # two files, row groups of 25 rows
        table = pa.table({**{f"y_{j}": y[rows, j] for j in range(X.size)}, "name": np.arange(150)[rows]})
        pq.write_table(table, folder / f"part{i}.parquet", row_group_size=25)
    src = open_source(folder)
    assert isinstance(src, ParquetSource) and (src.n_fits, src.n_points) == (150, X.size)
    x_block, block = src.read(60, 101)  # across both files and several row groups
    assert x_block is None
    np.testing.assert_array_equal(block, y[60:101])
    s = _stream(str(folder / "*.parquet"), tmp_path / "out")
    assert s.n_chunks == 4 and s.complete
    r = _in_memory(y)
    _assert_matches(s.to_pandas(), r)
    # per-fit x columns x_0.. (here each row's x is the shared one): read with y, row by row
    per_fit = pa.table({**{f"y_{j}": y[:, j] for j in range(X.size)}, **{f"x_{j}": np.full(150, X[j])
                                                                          for j in range(X.size)}})
    pq.write_table(per_fit, tmp_path / "per_fit.parquet", row_group_size=50)
    x_block, _ = open_source(tmp_path / "per_fit.parquet").read(45, 55)
    np.testing.assert_array_equal(x_block, np.tile(X, (10, 1)))
    s = gf.fit_many_files(job.MODEL, tmp_path / "per_fit.parquet", tmp_path / "out2",
                          **{k: v for k, v in job.OPTIONS.items() if k != "x"})
    _assert_matches(s.to_pandas(), r)


def test_npy_memmap_is_never_read_whole(tmp_path, monkeypatch):
    # 12000 fits, 1.15 MB; chunks of 100 fits are 9.6 kB (fit_many's own peak is ~30 times a chunk)
    y = np.tile(_decays(100, seed=4), (120, 1))
    np.save(tmp_path / "big.npy", y)
    np.save(tmp_path / "small.npy", y[:50])
    rows = []
    read = NpySource.read

    def spy(self, start, stop):
        out = read(self, start, stop)
        rows.append(out[1].shape[0])
        return out

    monkeypatch.setattr(NpySource, "read", spy)
    def run(name, out):
        gf.fit_many_files("a*exp(-k*x) + c", tmp_path / name, tmp_path / out, x=X, chunk_fits=100,
                          init={"a": 1.0, "k": 1.0, "c": 0.0}, dtype="float64", max_iter=2, threads=1)

    run("small.npy", "warm")  # imports and first-call caches before measuring
    rows.clear()
    tracemalloc.start()
    try:
        run("big.npy", "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert max(rows) == 100 and sum(rows) >= 12000
    # loaded whole, the array alone would be the peak; per chunk the bookkeeping adds ~1 kB
    assert peak < y.nbytes / 2, (peak, y.nbytes)
    # the reader alone: a pass over every chunk holds one chunk at a time
    src = open_source(tmp_path / "big.npy")
    tracemalloc.start()
    try:
        total = sum(float(src.read(i, i + 100)[1].sum()) for i in range(0, src.n_fits, 100))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == pytest.approx(float(y.sum()))
    assert peak < 3 * 100 * X.size * 8, peak


def test_interrupted_run_resumes_without_refitting(cube, tmp_path):
    path, _ = cube
    done = []

    def stop_after_two(record):
        done.append(record["chunk"])
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _stream(path, tmp_path / "out", on_chunk=stop_after_two)
    assert not _read_manifest(tmp_path / "out")["complete"]
    with pytest.raises(gf.DataError, match="2 of 6 chunks|4 of 6 chunks"):
        gf.read_fit_many_files(tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out" / "_chunks").iterdir()}
    (tmp_path / "out" / "part-00004.parquet").write_bytes(b"torn")  # a part without its record: refitted
    s = _stream(path, tmp_path / "out")
    assert s.skipped == (0, 1) and s.fitted == (2, 3, 4, 5) and s.complete
    for name, blob in before.items():
        assert (tmp_path / "out" / "_chunks" / name).read_bytes() == blob  # not refitted, not rewritten
    _stream(path, tmp_path / "whole")
    a, b = gf.read_fit_many_files(tmp_path / "out"), gf.read_fit_many_files(tmp_path / "whole")
    assert a.equals(b)


def test_other_data_or_settings_are_refused(cube, tmp_path):
    path, y = cube
    _stream(path, tmp_path / "out")
    with pytest.raises(gf.ConfigError, match="tol|settings"):
        _stream(path, tmp_path / "out", tol=1e-6)
    y2 = y.copy()
    y2[-1, -1] += 1.0
    np.save(path, y2)
    with pytest.raises(gf.ConfigError, match="other data or settings .*source"):
        _stream(path, tmp_path / "out")
    # a run that failed before committing any chunk blocks nothing: the corrected call starts afresh
    with pytest.raises(gf.ConfigError, match="dtype"):
        _stream(path, tmp_path / "fresh", dtype="float16")
    assert _stream(path, tmp_path / "fresh").complete
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(gf.ConfigError, match="other files"):
        _stream(path, tmp_path / "busy")


def test_refuses_per_fit_values_and_formula_without_init(cube, tmp_path):
    path, _ = cube
    with pytest.raises(gf.ConfigError, match="one value per fit"):
        gf.fit_many_files(job.MODEL, path, tmp_path / "o1", x=X, init={"a": np.ones(230), "k": 1.0, "c": 0.0})
    with pytest.raises(gf.ConfigError, match=r"bounds\['a'\] holds one value per fit"):
        gf.fit_many_files(job.MODEL, path, tmp_path / "o4", x=X, init={"a": 1.0, "k": 1.0, "c": 0.0},
                          bounds={"a": (0, np.full(230, 9.0))})
    with pytest.raises(gf.ConfigError, match="missing: c"):
        gf.fit_many_files(job.MODEL, path, tmp_path / "o2", x=X, init={"a": 1.0, "k": 1.0})
    with pytest.raises(gf.ConfigError, match="shared"):
        gf.fit_many_files(job.MODEL, path, tmp_path / "o3", x=X, shared=["k"])


def test_ranks_share_the_chunks_and_equal_one_process(cube, tmp_path):
    path, _ = cube
    one = _stream(path, tmp_path / "one")
    odd = _stream(path, tmp_path / "two", rank=1, world_size=2)
    assert odd.fitted == (1, 3, 5) and not odd.complete
    even = _stream(path, tmp_path / "two", rank=0, world_size=2)
    assert even.fitted == (0, 2, 4) and even.complete and one.complete
    assert gf.read_fit_many_files(tmp_path / "two").equals(gf.read_fit_many_files(tmp_path / "one"))


def test_cli_stream(cube, tmp_path):
    from _cli import cli

    path, y = cube
    np.save(tmp_path / "x.npy", X)
    args = ["fit-many", str(path), job.MODEL, "--stream", "--out", str(tmp_path / "out"), "--x-values",
            str(tmp_path / "x.npy"), "--chunk-fits", "100", "--init", "a=1,k=1,c=0", "--dtype", "float64",
            "--compile", "no", "--tol", "1e-10"]  # the kernel of _in_memory (job.OPTIONS)
    code, out, err = cli(*args)
    assert code == 0, err
    assert "230 fits in 3 chunks: fitted 3 here" in out
    _assert_matches(gf.read_fit_many_files(tmp_path / "out"), _in_memory(y))
    code, out, err = cli(*args)
    assert code == 0 and "fitted 0 here, 3 already written" in out
    code, out, err = cli(*args[:-1], "1e-6")
    assert code == 2 and "other data or settings" in err


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return env


@pytest.mark.slow
def test_killed_process_resumes_with_identical_output(cube, tmp_path):
    path, _ = cube
    log = tmp_path / "log.txt"
    records = tmp_path / "out" / "_chunks"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(path), str(tmp_path / "out"), str(log), "2"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (records.is_dir() and any(records.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    killed_with = sorted(p.name for p in records.iterdir())
    assert 1 <= len(killed_with) < 6
    done = subprocess.run([sys.executable, str(SCRIPT), str(path), str(tmp_path / "out"), str(log)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "complete=True" in done.stdout
    chunks = [int(line.split()[1]) for line in log.read_text().splitlines()]
    assert sorted(chunks) == list(range(6))  # every chunk written exactly once over both runs
    _stream(path, tmp_path / "whole")
    assert gf.read_fit_many_files(tmp_path / "out").equals(gf.read_fit_many_files(tmp_path / "whole"))


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(cube, tmp_path):
    path, _ = cube
    log = tmp_path / "log.txt"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(SCRIPT), str(path), str(tmp_path / "two"), str(log)], env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "rank=0 fitted=[0, 2, 4] complete=True" in p.stdout and "rank=1 fitted=[1, 3, 5]" in p.stdout
    by_pid = {}
    for line in log.read_text().splitlines():
        by_pid.setdefault(line.split()[3], []).append(int(line.split()[1]))
    assert sorted(sorted(v) for v in by_pid.values()) == [[0, 2, 4], [1, 3, 5]]
    _stream(path, tmp_path / "one")
    assert gf.read_fit_many_files(tmp_path / "two").equals(gf.read_fit_many_files(tmp_path / "one"))
