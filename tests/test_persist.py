"""Saving and loading: JSON + safetensors, atomic, refuses damaged or foreign files."""

import json
import math
import os

import numpy as np
import pytest

import gradfit as gf
from gradfit import PersistError
from gradfit._files import atomic_write_text


@pytest.fixture
def saved(tmp_path, thermo):
    r = gf.fit("t_c ~ w*t_u + b", data=thermo, optimizer="adam", lr=0.1, epochs=200, progress=False)
    path = tmp_path / "model.json"
    r.save(path)
    return r, path


def test_roundtrip_identical_predictions(saved, thermo):
    r, path = saved
    again = gf.load(path)
    assert again.params == r.params and again.status == r.status and again.history == r.history
    np.testing.assert_array_equal(again.predict({"t_u": thermo["t_u"]}), r.predict({"t_u": thermo["t_u"]}))
    doc = json.loads(path.read_text())
    assert doc["format"] == "gradfit.model" and doc["model"]["formula"] == "t_c ~ w*t_u + b"


def test_builtin_roundtrip(tmp_path):
    x = np.linspace(0, 10, 50)
    r = gf.fit("gaussian", x=x, y=3 * np.exp(-((x - 4) ** 2) / 2) + 1, optimizer="lbfgs", lr=1, epochs=30,
               progress=False)
    r.save(tmp_path / "g.json")
    np.testing.assert_array_equal(gf.load(tmp_path / "g.json").predict(x), r.predict(x))


def test_truncated_tampered_foreign_and_newer_files(saved, tmp_path):
    _, path = saved
    text = path.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(text[: len(text) // 2])
    with pytest.raises(PersistError, match="truncated"):
        gf.load(bad)
    doc = json.loads(text)
    doc["params"]["w"] = 123.0
    bad.write_text(json.dumps(doc))
    with pytest.raises(PersistError, match="checksum"):
        gf.load(bad)
    bad.write_text("[1, 2, 3]")
    with pytest.raises(PersistError, match="not a gradfit model"):
        gf.load(bad)
    doc = json.loads(text)
    doc["format_version"] = 99
    bad.write_text(json.dumps(doc))
    with pytest.raises(PersistError, match="newer gradfit"):
        gf.load(bad)
    bad.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(PersistError):
        gf.load(bad)
    with pytest.raises(PersistError, match="no such"):
        gf.load(tmp_path / "missing.json")


def test_tampered_weights_are_refused(tmp_path):
    x = np.random.default_rng(0).uniform(size=(50, 2))
    r = gf.fit("mlp", x=x, y=x.sum(1), hidden=(4,), epochs=2, progress=False)
    r.save(tmp_path / "m.json")
    blob = bytearray((tmp_path / "m.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "m.safetensors").write_bytes(bytes(blob))
    with pytest.raises(PersistError, match="checksum"):
        gf.load(tmp_path / "m.json")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_format_1_files_still_load(tmp_path):
    """Format 1 stored fewer fields and NaN as null; its files load with the defaults for the rest."""
    from gradfit.results.persist import _checksum

    doc = {"format": "gradfit.model", "format_version": 1, "gradfit_version": "0.1", "torch_version": "2.0",
           "model": {"kind": "formula", "formula": "a*x + b", "inputs": ["x"]},
           "params": {"a": 2.0, "b": None}, "loss": 0.5, "val_loss": None, "status": "converged", "epochs_run": 3,
           "message": "", "settings": {"optimizer": "lm"}, "n_train": 3, "n_val": 0, "notes": [],
           "history": {"train_loss": [1.0, 0.5], "val_loss": []}}
    doc["checksum"] = _checksum(doc)
    (tmp_path / "old.json").write_text(json.dumps(doc))
    r = gf.load(tmp_path / "old.json")
    assert r.status == "converged" and r.params["a"] == 2.0 and np.isnan(r.params["b"])
    assert r.val_loss is None and r.stderr is None and r.free == () and r.history["train_loss"] == [1.0, 0.5]


def test_malformed_entry_is_named(saved, tmp_path):
    from gradfit.results.persist import _checksum

    _, path = saved
    doc = json.loads(path.read_text())
    doc["status"] = "finished"
    doc["checksum"] = _checksum(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(PersistError, match="'status' entry is malformed.*unknown status 'finished'"):
        gf.load(bad)


def test_format_1_bounds_written_as_strings_load_as_numbers(tmp_path):
    """Format 1 saved infinite bounds as "inf" strings; a loaded bounded fit must still report."""
    from gradfit.results.persist import _checksum

    doc = {"format": "gradfit.model", "format_version": 1, "gradfit_version": "0.1", "torch_version": "2.0",
           "model": {"kind": "formula", "formula": "a*exp(-k*x)", "inputs": ["x"]},
           "params": {"a": 2.0, "k": 1.5}, "loss": 0.5, "val_loss": None, "status": "converged", "epochs_run": 3,
           "message": "", "settings": {"optimizer": "lm", "method": "lm", "bounds": {"k": [0.0, "inf"]},
                                       "init": {"a": 1.0, "k": 1.0}},
           "n_train": 3, "n_val": 0, "notes": [], "history": {"train_loss": [1.0, 0.5], "val_loss": []}}
    doc["checksum"] = _checksum(doc)
    (tmp_path / "old.json").write_text(json.dumps(doc))
    r = gf.load(tmp_path / "old.json")
    assert r.settings["bounds"]["k"] == [0.0, math.inf]
    assert "bounds [0, inf]" in r.report()
