"""Paths in the CLI's messages are printed as paths: ``--out run/`` reads ``run/model.json``,
not ``run//model.json``."""

import json

from _cli import cli


def _line_csv(folder):
    path = folder / "d.csv"
    path.write_text("x,y\n0,1\n1,3.1\n2,4.9\n3,7.05\n")
    return path


def test_fit_out_with_a_trailing_slash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _line_csv(tmp_path)
    code, out, err = cli("fit", "d.csv", "y ~ a*x + b", "--out", "run/")
    assert code == 0, err
    assert out.splitlines()[-1] == "wrote run/model.json, history.csv, fit.png, loss.png"
    assert (tmp_path / "run" / "model.json").is_file()
    code, out, err = cli("fit", "d.csv", "y ~ a*x + b", "--out", "run//", "--json")
    assert code == 0, err
    assert json.loads(out)["out"] == "run"
