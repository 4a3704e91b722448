"""JSON from outside nested absurdly deep ([[[...]]] 100,000 levels) is refused with the reader's
typed one-line error, never a RecursionError (issue 12, "nothing trusted blindly")."""

import io
import json

import numpy as np
import pytest

import gradfit as gf
from gradfit._files import JSONTooDeepError, parse_json
from gradfit.errors import PersistError
from gradfit.results.persist import _checksum

X = np.linspace(0.0, 1.0, 12)
DEEP = 100_000


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def test_parse_json_turns_depth_into_a_value_error():
    with pytest.raises(JSONTooDeepError, match="nested too deeply") as info:
        parse_json(_nested(DEEP))
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    assert parse_json(_nested(50)) == json.loads(_nested(50))
    with pytest.raises(json.JSONDecodeError):
        parse_json("[1, 2")


@pytest.fixture(scope="module")
def model_doc(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.json"
    gf.fit("a*x + b", x=X, y=2.0 * X + 1.0, optimizer="linear").save(path)
    return json.loads(path.read_text())


@pytest.mark.parametrize("levels", [DEEP, 2_000, 990, 900])
def test_deep_notes_in_a_model_file_are_a_persist_error(model_doc, tmp_path, levels):
    """100,000 and 2,000 levels fail to parse; 900 may parse and then fail the checksum's
    json.dumps under a deeper stack, or the schema: a PersistError naming the file either way."""
    body = dict(model_doc)
    body.pop("checksum")
    text = json.dumps(body)[:-1] + ', "notes": ' + _nested(levels) + "}"
    path = tmp_path / "model.json"
    path.write_text(text)
    with pytest.raises(PersistError) as info:
        gf.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 600
    if levels >= 2_000:
        assert "nested too deeply" in message


def test_deep_notes_with_a_valid_checksum_are_refused_by_the_schema(model_doc, tmp_path):
    doc = {**model_doc, "notes": json.loads(_nested(200))}
    doc["checksum"] = _checksum(doc)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(PersistError, match="'notes\\[0\\]' entry is malformed"):
        gf.load(path)


def test_cli_predict_on_a_deep_model_file_exits_2_in_one_line(model_doc, tmp_path):
    from gradfit.cli.main import main

    path = tmp_path / "model.json"
    path.write_text(json.dumps(model_doc)[:-1] + ', "notes": ' + _nested(DEEP) + "}")
    (tmp_path / "in.csv").write_text("x\n0.5\n")
    out, err = io.StringIO(), io.StringIO()
    code = main(["predict", str(path), str(tmp_path / "in.csv")], stdout=out, stderr=err)
    assert code == 2 and out.getvalue() == ""
    assert len(err.getvalue().strip().splitlines()) == 1 and "nested too deeply" in err.getvalue()
    assert "RecursionError" not in err.getvalue() and "internal error" not in err.getvalue()


@pytest.mark.parametrize("levels", [DEEP, 990, 900])
def test_deep_checkpoint_json_is_a_persist_error(tmp_path, levels):
    import torch

    from gradfit.train.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path, {"w": torch.zeros(2)}, {"counters": {"epoch": 1}})
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    text = json.dumps(meta)[:-1] + ', "extra": ' + _nested(levels) + "}"
    (tmp_path / "checkpoint.json").write_text(text)
    with pytest.raises(PersistError) as info:
        load_checkpoint(tmp_path)
    assert "checkpoint.json: damaged checkpoint" in str(info.value) and "\n" not in str(info.value)


def test_deep_timings_in_a_batch_result_are_a_persist_error(tmp_path):
    path = tmp_path / "r.npz"
    gf.fit_many("a*x", x=np.arange(3.0), y=[[0.0, 2.0, 4.1], [0.0, 1.0, 2.1]], init={"a": 1}).save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["timings"] = np.asarray(_nested(DEEP))
    np.savez(tmp_path / "deep.npz", **arrays)
    with pytest.raises(PersistError):
        gf.BatchResult.load(tmp_path / "deep.npz")


@pytest.mark.parametrize("stored", ["[" * 100_000 + "]" * 100_000, "not json", '{"lr": 3}', '[1, 2]'])
def test_an_unreadable_space_in_a_shared_study_is_a_config_error(tmp_path, stored):
    """A study database is shared with other people's processes: its stored space is untrusted."""
    pytest.importorskip("optuna")
    from gradfit.errors import ConfigError
    from gradfit.tuning.space import parse_space_text
    from gradfit.tuning.study import SPACE_ATTR, check_study_space, open_study

    study = open_study("s", str(tmp_path / "study.journal"), 0)
    study.set_user_attr(SPACE_ATTR, stored)
    with pytest.raises(ConfigError, match="cannot read"):
        check_study_space(study, parse_space_text(["lr=log:1e-4:1e-1"]))
