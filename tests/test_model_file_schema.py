"""Model files are data from outside: a tampered document is refused with a one-line
PersistError before anything is built (issue 12, section 4).

Each case edits one field of a valid saved fit (an MLP with normalization, and a formula fit
with standard errors), re-computes the document checksum with persist's own function so the
edit gets past it, and asserts that gf.load refuses the file quickly with a PersistError.
"""

import io
import json
import shutil
import time
import zipfile

import numpy as np
import pytest

import gradfit as gf
from gradfit.errors import PersistError
from gradfit.results.persist import _checksum

X = np.linspace(0.0, 1.0, 20)
Y = 2.0 * X + 1.0
_GONE = object()  # a field deleted instead of changed


def _line(x, a, b):
    return a * x + b


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{kind: path} of valid saved fits: an MLP of one input and one of two named inputs, a
    formula, a built-in curve and a Python function."""
    folder = tmp_path_factory.mktemp("valid")
    gf.fit("mlp", x=X, y=Y, hidden=(4, 3), epochs=3, normalize=True, progress=False).save(folder / "mlp.json")
    gf.fit("mlp", data={"a": X, "b": 1.0 - X, "y": Y}, y="y", hidden=(3,), epochs=2,
           progress=False).save(folder / "mlp2.json")
    gf.fit("a*x + b", x=X, y=Y + 0.01 * np.sin(40 * X)).save(folder / "formula.json")
    gf.fit("exp_decay", x=X, y=np.exp(-X) + 0.5).save(folder / "builtin.json")
    gf.fit(_line, x=X, y=Y + 0.01 * np.sin(40 * X)).save(folder / "function.json")
    return {name: folder / f"{name}.json" for name in ("mlp", "mlp2", "formula", "builtin", "function")}


def _tampered(source, tmp_path, path: str, value):
    """A copy of ``source`` (and its weights) with the entry at dotted ``path`` set to
    ``value`` (or deleted), its checksum re-computed so only the schema can refuse it."""
    doc = json.loads(source.read_text())
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is _GONE:
        del node[last]
    else:
        node[last] = value
    doc["checksum"] = _checksum(doc)
    target = tmp_path / source.name
    target.write_text(json.dumps(doc))
    if isinstance(doc.get("weights"), dict):  # the weights file the document names, beside it
        name = json.loads(source.read_text())["weights"]["file"]
        shutil.copy(source.parent / name, tmp_path / name)
    return target


def _deep(levels: int):
    tree: dict = {}
    for _ in range(levels):
        tree = {"a": tree}
    return tree


def _array(shape, values, dtype="float64"):
    return {"dtype": dtype, "shape": shape, "values": values}


# (field, [tampered values]): wrong type, huge size, negative value, wrong length, ...
MLP_CASES = {
    "model.hidden": [[200000, 200000], [20000, 20000], "4", [-4, 3], [0, 3], [], [4], [4, 3, 2], [4.0, 3],
                     [True, 3], [10**7, 3], list(range(1, 2000))],
    "model.in_features": [-1, 0, "1", 2, 10**12, 1.0, None, _GONE],
    "model.out_features": [0, -3, "1", 2, 10**9, None],
    "model.activation": ["__import__('os')", 3, None],
    "model.input_names": ["x", [], ["a", "b", "c"], [1]],
    "model.kind": ["pickle", 5, None],
    "model.class": [5],
    "model.normalization": ["on", [1.0], {"x_mean": [0.5]}],
    "model.normalization.x_mean": [[0.1, 0.2], "a", [], [None], ["inf", "x"]],
    "model.normalization.x_std": [[-1.0], [0.0], [1.0, 1.0], 1.0],
    "model.normalization.y_mean": [[1.0, 2.0], "x", None],
    "model.normalization.y_std": [-1.0, 0.0, [1.0, 1.0], "1"],
    "model": ["mlp", None, [1, 2]],
    "epochs_run": ["3", -1, 3.5, 2**60, None, True, _GONE],
    "n_train": ["20", -5, 1e30, None, [20]],
    "n_val": [-1, "0", 0.5],
    "settings": ["x", [1], 7, _deep(100)],
    "notes": ["note", [1, 2], {"a": 1}, ["x" * 2_000_000]],
    "history": [[], "x", {"train_loss": "x"}, {"train_loss": [[1.0]]}, {"train_loss": ["abc"]}],
    "status": [7, "finished", None],
    "loss": ["big", [1], {}, True],
    "val_loss": [{}, "x"],
    "message": [5, "x" * 2_000_000, ["m"]],
    "params": [[1], {"a": "x"}, None],
    "best_epoch": [-1, "2", 10**9],
    "cv": ["x", [1], _deep(100)],
    "stats": [[1], {"n": "x"}],
    "stderr": [{"zzz": 1.0}, "x"],
    "free": ["a", ["zzz"], [1]],
    "gradfit_version": [5],
}
FORMULA_CASES = {
    "model.formula": [5, None, "x" * 200_000, _GONE],
    "model.inputs": ["x", [1], None, ["x", "x"], ["x", "a"], ["x", "zz"]],
    "model.name": [5],
    "params.a": ["x", [1], {}],
    "covariance": [_array([100000, 100000], []), _array([2, 2], [1.0] * 4, dtype="object"), "x",
                   _array([3, 3], [1.0] * 9), _array([2, 2], [1.0] * 3), _array([2, 2, 1], [1.0] * 4),
                   _array([-2, -2], [1.0] * 4)],
    "correlation": [_array([1, 1], [1.0]), {"values": []}],
    "stderr.a": ["big", [1.0]],
    "stats.dof": ["x", {}],
    "history.train_loss": ["x", [[0.0]]],
    "free": [["a", "a"], ["a", "b", "a"]],
}
#: names that must be distinct or must agree with the parameters, on the other model kinds
MLP2_CASES = {"model.input_names": [["a", "a"], ["b", "b"], ["a", "b", "a"]]}
BUILTIN_CASES = {"model.input": ["k"]}
FUNCTION_CASES = {"model.params": [["a", "a"], ["a", "c"], ["a"], ["a", "b", "c"]]}
CASES = [("mlp", field, i, v) for field, vs in MLP_CASES.items() for i, v in enumerate(vs)]
CASES += [("formula", field, i, v) for field, vs in FORMULA_CASES.items() for i, v in enumerate(vs)]
CASES += [(kind, field, i, v) for kind, table in (("mlp2", MLP2_CASES), ("builtin", BUILTIN_CASES),
                                                  ("function", FUNCTION_CASES))
          for field, vs in table.items() for i, v in enumerate(vs)]
#: the number of fields tampered, counted per model kind (reported in README's Security section)
FIELDS_TAMPERED = sum(map(len, (MLP_CASES, FORMULA_CASES, MLP2_CASES, BUILTIN_CASES, FUNCTION_CASES)))


@pytest.mark.parametrize("which, field, i, value", CASES, ids=[f"{w}-{f}-{i}" for w, f, i, _ in CASES])
def test_tampered_field_is_refused(saved, tmp_path, which, field, i, value):
    path = _tampered(saved[which], tmp_path, field, value)
    start = time.perf_counter()
    with pytest.raises(PersistError) as info:
        gf.load(path, function=_line if which == "function" else None)
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert len(message.splitlines()) == 1 and str(path) in message
    assert len(message) < 600


def test_fields_tampered_count():
    """The counts README's Security section states."""
    assert FIELDS_TAMPERED >= 43 and len(CASES) >= 155


def test_readme_states_the_counts():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"{FIELDS_TAMPERED} fields tampered in {len(CASES)} ways" in readme


def test_fewer_input_names_than_features_is_one_line_at_predict(saved, tmp_path):
    """["a"] for a two-input network reads as one matrix input (what fit(x=2-D array) saves),
    so the file loads; predicting from a one-column input is a DataError, exit 2, never a
    torch shape error."""
    from _cli import cli

    path = _tampered(saved["mlp2"], tmp_path, "model.input_names", ["a"])
    (tmp_path / "in.csv").write_text("a,b\n0.1,0.2\n0.3,0.4\n")
    code, out, err = cli("predict", path, tmp_path / "in.csv")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert "takes 2 input features" in err and "internal error" not in err
    with pytest.raises(gf.DataError, match="takes 2 input features"):
        gf.load(path).predict({"a": X})


def test_valid_files_still_load(saved):
    """The schema accepts what gradfit writes."""
    for which, path in saved.items():
        again = gf.load(path, function=_line if which == "function" else None)
        x = {"a": X, "b": 1.0 - X} if which == "mlp2" else X
        assert again.status in ("converged", "max_epochs") and again.predict(x).shape == (20,)


def test_huge_hidden_sizes_are_refused_before_allocation(saved, tmp_path):
    """160 GB of layers beside a tiny weights file: refused in milliseconds, naming the mismatch."""
    path = _tampered(saved["mlp"], tmp_path, "model.hidden", [200000, 200000])
    start = time.perf_counter()
    with pytest.raises(PersistError, match=r"layer sizes \[1, 200000, 200000, 1\] do not match its weights"):
        gf.load(path)
    assert time.perf_counter() - start < 0.5


def test_weights_renamed_inside_the_file_are_refused(saved, tmp_path):
    """Weights with the right shapes under other names, re-hashed: refused by the schema."""
    import hashlib

    from safetensors.torch import load_file, save

    path = _tampered(saved["mlp"], tmp_path, "message", "renamed")
    weights = tmp_path / json.loads(path.read_text())["weights"]["file"]
    state = load_file(weights)
    state["9.weight"] = state.pop("0.weight")
    blob = save(state)
    weights.write_bytes(blob)
    doc = json.loads(path.read_text())
    doc["weights"]["sha256"] = hashlib.sha256(blob).hexdigest()
    doc["checksum"] = _checksum(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(PersistError, match="do not match its weights"):
        gf.load(path)


@pytest.mark.parametrize("field, value", [("epochs_run", "3"), ("model.in_features", -1),
                                          ("model.normalization.x_mean", [0.1, 0.2]), ("settings", "x"),
                                          ("model.hidden", [200000, 200000])])
def test_cli_predict_refuses_tampered_file_with_exit_2(saved, tmp_path, field, value):
    from gradfit.cli.main import main

    path = _tampered(saved["mlp"], tmp_path, field, value)
    (tmp_path / "in.csv").write_text("x\n0.1\n0.2\n")
    out, err = io.StringIO(), io.StringIO()
    code = main(["predict", str(path), str(tmp_path / "in.csv")], stdout=out, stderr=err)
    assert code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    assert "Traceback" not in err.getvalue() and out.getvalue() == ""


# -- BatchResult .npz ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def npz_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "r.npz"
    gf.fit_many("a*x", x=np.arange(3.0), y=[[0.0, 2.0, 4.1], [0.0, 1.0, 2.1]], init={"a": 1}).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.5, 0.9, 0.999])
def test_truncated_npz_is_a_persist_error(npz_bytes, tmp_path, fraction):
    path = tmp_path / "cut.npz"
    path.write_bytes(npz_bytes[: int(len(npz_bytes) * fraction)])
    with pytest.raises(PersistError, match="truncated or damaged"):
        gf.BatchResult.load(path)


def test_damaged_or_edited_npz_is_a_persist_error(npz_bytes, tmp_path):
    # a flipped byte inside each array's stored bytes (the zip's CRC-32 catches it; a byte in
    # a header field zip ignores, such as a timestamp, damages nothing: the middle of the file
    # landed there in some runs, as the timings' length moves the layout)
    with zipfile.ZipFile(io.BytesIO(npz_bytes)) as z:
        members = z.infolist()
    for info in members:
        name_len = int.from_bytes(npz_bytes[info.header_offset + 26:info.header_offset + 28], "little")
        extra_len = int.from_bytes(npz_bytes[info.header_offset + 28:info.header_offset + 30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        flipped = bytearray(npz_bytes)
        flipped[start + info.compress_size // 2] ^= 0xFF
        (tmp_path / "flip.npz").write_bytes(bytes(flipped))
        with pytest.raises(PersistError):
            gf.BatchResult.load(tmp_path / "flip.npz")
    # a valid zip whose arrays disagree: status of another length, timings that are not JSON
    with zipfile.ZipFile(io.BytesIO(npz_bytes)) as z:
        arrays = {name[:-4]: np.load(io.BytesIO(z.read(name)), allow_pickle=False) for name in z.namelist()}
    for key, value in (("status", np.array([0])), ("timings", np.array("{not json"))):
        edited = {**arrays, key: value}
        np.savez(tmp_path / "edited.npz", **edited)
        with pytest.raises(PersistError):
            gf.BatchResult.load(tmp_path / "edited.npz")
    with pytest.raises(PersistError, match="no such"):
        gf.BatchResult.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("name", ["gradfit.results.schema", "gradfit.models.neural", "gradfit.results.batch_result"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


@pytest.mark.parametrize("kind", ["mlp", "formula", "function"])
@pytest.mark.parametrize("path", ["input_names", "model.extra", "signature_v2"])
def test_entries_the_format_does_not_declare_are_refused(saved, tmp_path, kind, path):
    """An undeclared entry is data no code checks (a new-user run added a top-level
    'input_names' that loaded silently): refused in one line, the document's envelope kept."""
    target = _tampered(saved[kind], tmp_path, path, ["a"])
    with pytest.raises(PersistError, match=rf"'{path}' entry is not part of the format"):
        gf.load(target, function=_line if kind == "function" else None)
    gf.load(saved[kind], function=_line if kind == "function" else None)  # the untouched file loads
