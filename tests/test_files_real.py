"""Data files as people have them (issue 11, 2.7 and 2.8): each file is written the way a tool
or a person writes it, and read_table must give back the values that were written."""

import bz2
import gzip
import importlib.util
import sys

import numpy as np
import pytest

from gradfit import DataError
from gradfit.data.io import numeric_columns, read_table

X = [1.0, 2.5, 4.0]
Y = [0.5, 1012.6, -3.25]


def _write(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


def _check_xy(cols, x=X, y=Y):
    assert list(cols) == ["x", "y"]
    np.testing.assert_array_equal(cols["x"], x)
    np.testing.assert_array_equal(cols["y"], y)


PLAIN = "x,y\n1,0.5\n2.5,1012.6\n4,-3.25\n"


@pytest.mark.parametrize("name,content", [
    ("d.csv.gz", gzip.compress(PLAIN.encode())),
    ("d.tsv.gz", gzip.compress(PLAIN.replace(",", "\t").encode())),
    ("d.csv.bz2", bz2.compress(PLAIN.encode())),
    ("gz_without_suffix.csv", gzip.compress(PLAIN.encode())),
    # Excel "Unicode text": UTF-16 with a BOM, tab-delimited, CRLF
    ("excel.txt", PLAIN.replace(",", "\t").replace("\n", "\r\n").encode("utf-16")),
    ("le.txt", PLAIN.replace(",", "\t").encode("utf-16-le")),  # UTF-16 without a BOM
    ("be.txt", PLAIN.replace(",", "\t").encode("utf-16-be")),
    ("bom.csv", b"\xef\xbb\xbf" + PLAIN.encode()),  # UTF-8 with a BOM (Excel "CSV UTF-8")
    ("trailing.csv", PLAIN.replace("\n", ",\n")),  # a delimiter at the end of every line
    ("trailing_rows.csv", PLAIN + ",\n,\n\n  \n"),  # empty rows a spreadsheet leaves at the end
    ("thousands.csv", 'x,y\n1,0.5\n2.5,"1,012.6"\n4,-3.25\n'),  # quoted thousands separator
    ("quoted.csv", '"x","y"\n"1","0.5"\n"2.5","1012.6"\n"4","-3.25"\n'),
    ("comment.csv", "# exported 2026-01-01\n" + PLAIN),
    ("euro.csv", "x;y\n1;0,5\n2,5;1.012,6\n4;-3,25\n"),  # semicolons and decimal commas
    ("euro_tab.txt", "x\ty\n1\t0,5\n2,5\t1012,6\n4\t-3,25\n"),
    ("semicolon_dot.csv", "x;y\n1;0.5\n2.5;1012.6\n4;-3.25\n"),
    ("spaces.txt", "x  y\n1  0.5\n2.5 1012.6\n4   -3.25\n"),
])
def test_reads_files_as_people_have_them(tmp_path, name, content):
    _check_xy(read_table(_write(tmp_path, name, content)))


@pytest.mark.parametrize("delimiter,header", [(",", "x,y"), (" ", "x y"), ("\t", "x\ty")])
def test_np_savetxt_with_header(tmp_path, delimiter, header):
    """np.savetxt writes the header as a '# x,y' comment: it names the columns."""
    p = tmp_path / "saved.txt"
    np.savetxt(p, np.column_stack([X, Y]), delimiter=delimiter, header=header)
    _check_xy(read_table(p))


def test_integer_columns_stay_integers_and_text_is_kept(tmp_path):
    cols = read_table(_write(tmp_path, "ids.csv", "well,plate,dose\nW00,7,0.5\nW01,12345678901234,1\n"))
    assert cols["plate"].dtype == np.int64 and cols["plate"].tolist() == [7, 12345678901234]
    assert cols["well"].dtype == object and cols["well"].tolist() == ["W00", "W01"]
    assert cols["dose"].dtype == np.float64
    assert set(numeric_columns(cols)) == {"plate", "dose"}


def test_zero_padded_ids_stay_as_written(tmp_path):
    cols = read_table(_write(tmp_path, "pad.csv", "plate,x\n007,1\n010,2\n"))
    assert cols["plate"].tolist() == ["007", "010"]
    assert numeric_columns(cols, ["plate"])["plate"].tolist() == [7.0, 10.0]  # still usable as numbers


def test_missing_value_spellings_are_nan(tmp_path):
    cols = read_table(_write(tmp_path, "na.csv", "x,y\n1,NA\n2,N/A\n3,#N/A\n4,null\n5,\n6,nan\n7,8\n"))
    assert np.isnan(cols["y"][:6]).all() and cols["y"][6] == 8


@pytest.mark.parametrize("name,content,match", [
    ("mixed.txt", "x\ty\n1,5\t2.5\n", "both decimal points .* and decimal commas"),
    ("ambiguous.txt", "x\ty\n1\t1,500\n2\t2,250\n", "'1,500' may be read with a decimal comma"),
    ("gz.csv.gz", gzip.compress(PLAIN.encode())[:20], "damaged or truncated gzip"),
    ("noheader.csv", "1,2\n3,4\n", "first row must name the columns"),
    ("underscore.csv", "x,y\n1_000,2\n", None),  # not a number in a data file: a text column
])
def test_unreadable_or_ambiguous_files_get_one_clear_line(tmp_path, name, content, match):
    p = _write(tmp_path, name, content)
    if match is None:
        assert read_table(p)["x"].dtype == object
        return
    with pytest.raises(DataError, match=match) as info:
        read_table(p)
    assert "\n" not in str(info.value) and name in str(info.value)


def test_semicolon_groups_only_mean_decimal_commas(tmp_path):
    """'1,500' in a semicolon file: the locales that write ';' write the decimal comma."""
    cols = read_table(_write(tmp_path, "eu.csv", "x;y\n1;1,500\n2;2,250\n"))
    np.testing.assert_array_equal(cols["y"], [1.5, 2.25])


def test_a_workbook_named_csv_says_so(tmp_path):
    p = _write(tmp_path, "book.csv", b"PK\x03\x04" + b"\x00" * 30 + b"[Content_Types].xml")
    with pytest.raises(DataError, match="Excel workbook: name it .xlsx"):
        read_table(p)


@pytest.mark.skipif(importlib.util.find_spec("openpyxl") is None, reason="needs openpyxl")
def test_xlsx(tmp_path):
    import pandas as pd

    p = tmp_path / "book.xlsx"
    pd.DataFrame({"well": ["W00", "W01", "W02"], "x": X, "y": Y}).to_excel(p, index=False)
    cols = read_table(p)
    assert cols["well"].tolist() == ["W00", "W01", "W02"]
    np.testing.assert_array_equal(cols["x"], X)
    np.testing.assert_array_equal(cols["y"], Y)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="needs pyarrow")
@pytest.mark.parametrize("suffix", [".feather", ".parquet"])
def test_feather_and_parquet_keep_text_and_integer_columns(tmp_path, suffix):
    import pandas as pd

    p = tmp_path / f"t{suffix}"
    frame = pd.DataFrame({"well": ["W00", "W01", "W02"], "plate": [3, 3, 4], "x": X, "y": Y})
    (frame.to_feather if suffix == ".feather" else frame.to_parquet)(p)
    cols = read_table(p)
    assert cols["well"].tolist() == ["W00", "W01", "W02"] and cols["plate"].dtype == np.int64
    np.testing.assert_array_equal(cols["y"], Y)


def test_missing_reader_names_the_extra(tmp_path, monkeypatch):
    from gradfit import MissingDependencyError

    monkeypatch.setitem(sys.modules, "openpyxl", None)  # `import openpyxl` raises ImportError
    p = _write(tmp_path, "book.xlsx", b"PK\x03\x04")
    with pytest.raises(MissingDependencyError) as info:
        read_table(p)
    assert str(info.value) == (f'{p}: reading .xlsx files needs openpyxl: pip install "gradfit[excel]" '
                               "(or save the data as CSV)")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
@pytest.mark.parametrize("ids", [["W00", "W01", "W02"], [10, 11, 12]])
def test_fit_many_ids_from_a_dataframe_survive_save_and_load(tmp_path, suffix, ids):
    """2.7, Python side: ids of any type come back as they were, through every file format;
    Hill's parameter n keeps its name next to the point count."""
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    import pandas as pd

    import gradfit as gf
    from gradfit.results.batch_result import BatchResult

    x = np.logspace(-2, 2, 10)
    rows = [(i, d, 1 + 9 * d**1.2 / (d**1.2 + e**1.2) + 0.01 * (-1) ** j)
            for i, e in zip(ids, (1.0, 2.0, 3.0)) for j, d in enumerate(x)]
    df = pd.DataFrame(rows, columns=["well", "dose", "signal"])
    r = gf.fit_many("hill", data=df, id="well", x="dose", y="signal", init="guess", dtype="float64")
    assert r.ids.tolist() == ids
    p = tmp_path / f"r{suffix}"
    r.save(p)
    back = BatchResult.load(p)
    assert back.ids.tolist() == ids and back.param_names == r.param_names
    assert isinstance(back.ids.tolist()[0], type(ids[0]))
    for n in r.param_names:
        np.testing.assert_array_equal(back.params[n], r.params[n])
        np.testing.assert_array_equal(back.stderr[n], r.stderr[n])
    np.testing.assert_array_equal(back.status, r.status)
    np.testing.assert_array_equal(back.stats["n"], r.stats["n"])
    if suffix != ".npz":
        table = pd.read_csv(p) if suffix == ".csv" else pd.read_parquet(p)
        assert table["id"].tolist() == ids and table["result_n"].tolist() == [10, 10, 10]


def test_delimited_text_needs_no_pandas(tmp_path):
    """The CSV path is the standard library's: it works where pandas is not installed, and a
    Parquet file there gets one line saying what to install."""
    import subprocess
    import sys

    p = _write(tmp_path, "d.csv.gz", gzip.compress('well,x,y\nW1,1,"1,012.5"\n'.encode()))
    _write(tmp_path, "d.parquet", b"PAR1")
    code = ("import sys; sys.modules['pandas'] = None\n"
            "from gradfit.data.io import read_table\n"
            f"c = read_table({str(p)!r}); print(c['well'].tolist(), c['x'].tolist(), c['y'].tolist())\n"
            "assert 'pandas' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "from gradfit import MissingDependencyError\n"
            "try:\n"
            f"    read_table({str(tmp_path / 'd.parquet')!r})\n"
            "except MissingDependencyError as exc:\n"
            "    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.strip().splitlines()
    assert first == "['W1'] [1] [1012.5]"
    assert second.endswith('d.parquet: reading .parquet files needs pandas: pip install "gradfit[pandas]" '
                           "(or save the data as CSV)")
