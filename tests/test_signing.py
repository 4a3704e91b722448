"""Keyed signatures (HMAC-SHA256) of saved models: with a key set, a file edited and re-hashed,
an unsigned file, or one signed with another key is refused; without a key a signed file loads.

Tampering here is what an attacker can do without the key: edit the JSON (or the weights and
the SHA-256 the JSON names) and recompute the checksum with persist's own function."""

import hashlib
import hmac
import json
import warnings

import numpy as np
import pytest
from _cli import cli
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import gradfit as gf
from gradfit import ConfigError, PersistError
from gradfit.results.persist import _checksum
from gradfit.results.schema import check_signature

KEY = "correct horse battery staple"
ENV = "GRADFIT_SIGNING_KEY"
X = np.linspace(0.0, 4.0, 20)
Y = 2.5 * X - 1.0 + 0.01 * np.sin(7 * X)


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


@pytest.fixture
def line_fit():
    return gf.fit("a*x + b", x=X, y=Y, optimizer="linear")


@pytest.fixture
def mlp_fit():
    rng = np.random.default_rng(0)
    x2 = rng.uniform(-1, 1, size=(40, 2))
    return gf.fit("mlp", x=x2, y=x2[:, 0] - x2[:, 1], hidden=(4,), optimizer="adam", lr=0.05, epochs=5,
                  progress=False, dtype="float64")


def _rewrite(path, edit):
    """Apply ``edit`` to the JSON document and recompute its checksum as gradfit does."""
    doc = json.loads(path.read_text())
    edit(doc)
    doc["checksum"] = _checksum(doc)
    path.write_text(json.dumps(doc, indent=2))


def test_signed_with_env_key_loads_and_the_signature_is_hmac_sha256_of_the_body(line_fit, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    path = tmp_path / "model.json"
    line_fit.save(path)
    text = path.read_text()
    doc = json.loads(text)
    body = {k: v for k, v in doc.items() if k not in ("checksum", "signature")}
    expected = hmac.new(KEY.encode(), json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
                        hashlib.sha256).hexdigest()
    assert doc["signature"] == {"algorithm": "hmac-sha256", "key_id": hashlib.sha256(KEY.encode()).hexdigest()[:8],
                                "hmac": expected}
    assert KEY not in text
    assert gf.load(path).params == line_fit.params


def test_edited_and_rehashed_document_is_refused_with_the_key(line_fit, tmp_path, monkeypatch):
    path = tmp_path / "model.json"
    line_fit.save(path, signing_key=KEY)
    _rewrite(path, lambda d: d["params"].__setitem__("a", 100.0))
    # the checksum alone does not notice: that is why the signature exists
    assert gf.load(path).params["a"] == 100.0
    monkeypatch.setenv(ENV, KEY)
    with pytest.raises(PersistError, match="edited after it was signed") as info:
        gf.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(PersistError, match="edited after it was signed"):
        gf.load(path, signing_key=KEY)


def test_edited_weights_with_their_sha256_updated_are_refused(mlp_fit, tmp_path, monkeypatch):
    path = tmp_path / "model.json"
    mlp_fit.save(path, signing_key=KEY)
    doc = json.loads(path.read_text())
    wfile = tmp_path / doc["weights"]["file"]
    tensors = st_load(wfile.read_bytes())
    name = min(tensors)
    tensors[name] = tensors[name] + 1.0
    blob = st_save(tensors)
    wfile.write_bytes(blob)
    _rewrite(path, lambda d: d["weights"].__setitem__("sha256", hashlib.sha256(blob).hexdigest()))
    x = np.array([[0.2, -0.3], [0.5, 0.5]])
    assert not np.allclose(gf.load(path).predict(x), mlp_fit.predict(x))  # loads unverified, changed
    monkeypatch.setenv(ENV, KEY)
    with pytest.raises(PersistError, match="edited after it was signed"):
        gf.load(path)


def test_signed_network_round_trips_with_the_key(mlp_fit, tmp_path):
    path = tmp_path / "model.json"
    mlp_fit.save(path, signing_key=KEY.encode())
    x = np.array([[0.2, -0.3], [0.5, 0.5]])
    np.testing.assert_array_equal(gf.load(path, signing_key=KEY.encode()).predict(x), mlp_fit.predict(x))


def test_unsigned_file_is_refused_when_a_key_is_set(line_fit, tmp_path, monkeypatch):
    path = tmp_path / "model.json"
    line_fit.save(path)
    assert "signature" not in json.loads(path.read_text())
    monkeypatch.setenv(ENV, KEY)
    with pytest.raises(PersistError, match=f"not signed, and {ENV} is set") as info:
        gf.load(path)
    assert f"unset {ENV}" in str(info.value) and "re-save it with the key" in str(info.value)


def test_removing_the_signature_and_rehashing_is_refused(line_fit, tmp_path):
    path = tmp_path / "model.json"
    line_fit.save(path, signing_key=KEY)
    _rewrite(path, lambda d: d.pop("signature"))
    with pytest.raises(PersistError, match="not signed"):
        gf.load(path, signing_key=KEY)


def test_wrong_key_is_refused_naming_a_different_key(line_fit, tmp_path, monkeypatch):
    path = tmp_path / "model.json"
    line_fit.save(path, signing_key=KEY)
    monkeypatch.setenv(ENV, "another key")
    ours, theirs = (hashlib.sha256(k.encode()).hexdigest()[:8] for k in (KEY, "another key"))
    with pytest.raises(PersistError, match="signed with a different key") as info:
        gf.load(path)
    assert ours in str(info.value) and theirs in str(info.value)


def test_signed_file_loads_without_a_key_and_without_warnings(line_fit, tmp_path):
    path = tmp_path / "model.json"
    line_fit.save(path, signing_key=KEY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gf.load(path).params == line_fit.params
    # the checksum is still checked without a key
    doc = json.loads(path.read_text())
    doc["params"]["a"] = 1.0
    path.write_text(json.dumps(doc))
    with pytest.raises(PersistError, match="checksum mismatch"):
        gf.load(path)


def test_explicit_key_wins_over_the_environment(line_fit, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "env key")
    path = tmp_path / "model.json"
    line_fit.save(path, signing_key=KEY)
    assert gf.load(path, signing_key=KEY).params == line_fit.params
    with pytest.raises(PersistError, match="different key"):
        gf.load(path)


def test_empty_environment_variable_means_no_key(line_fit, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, "")
    path = tmp_path / "model.json"
    line_fit.save(path)
    assert "signature" not in json.loads(path.read_text())
    assert gf.load(path).params == line_fit.params


@pytest.mark.parametrize("key", ["", b"", 123])
def test_an_empty_or_non_text_key_is_refused(line_fit, tmp_path, key):
    with pytest.raises(ConfigError, match="signing_key"):
        line_fit.save(tmp_path / "model.json", signing_key=key)
    assert not (tmp_path / "model.json").exists()


GOOD = {"algorithm": "hmac-sha256", "key_id": "0123abcd", "hmac": "ab" * 32}


@pytest.mark.parametrize("entry, message", [
    ("hmac", "must be an object"),
    ({**GOOD, "algorithm": "md5"}, "unknown algorithm 'md5'"),
    ({k: v for k, v in GOOD.items() if k != "key_id"}, "'signature.key_id' entry is missing"),
    ({**GOOD, "key_id": "XYZ12345"}, "must match"),
    ({**GOOD, "hmac": "ab" * 31}, "must match"),
    ({**GOOD, "hmac": "ab" * 40}, "characters long"),
    ({**GOOD, "extra": "x"}, "has 4 entries"),
])
def test_malformed_signature_entry_is_refused_with_or_without_a_key(line_fit, tmp_path, entry, message):
    check_signature(GOOD)
    path = tmp_path / "model.json"
    line_fit.save(path, signing_key=KEY)
    _rewrite(path, lambda d: d.__setitem__("signature", entry))
    for key in (None, KEY):
        with pytest.raises(PersistError, match=message) as info:
            gf.load(path, signing_key=key)
        assert str(info.value).startswith(f"{path}: ")  # named like every other refusal of the file


def test_every_signature_refusal_starts_with_the_file_path(line_fit, tmp_path):
    """Unsigned, another key, edited after signing: each message is "<path>: ...", one line."""
    path = tmp_path / "model.json"
    line_fit.save(path)
    refusals = []
    for edit, key in ((None, KEY), ("other key", KEY), ("edit", KEY)):
        if edit == "other key":
            line_fit.save(path, signing_key="another secret")
        elif edit == "edit":
            line_fit.save(path, signing_key=KEY)
            _rewrite(path, lambda d: d["params"].__setitem__("a", 9.0))
        with pytest.raises(PersistError) as info:
            gf.load(path, signing_key=key)
        refusals.append(str(info.value))
    assert [m.split(": ", 1)[1].split(" ", 2)[:2] for m in refusals] == [["not", "signed,"], ["signed", "with"],
                                                                        ["fails", "its"]]
    assert all(m.startswith(f"{path}: ") and "\n" not in m for m in refusals)


def test_cli_predict_refuses_a_tampered_signed_model_in_one_line(thermo, thermo_csv, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, KEY)
    path = tmp_path / "model.json"
    gf.fit("t_c ~ w*t_u + b", data=thermo, optimizer="linear").save(path)  # signed: the key is in the env
    code, out, err = cli("predict", path, thermo_csv)
    assert code == 0 and len(out.splitlines()) == 12, err
    _rewrite(path, lambda d: d["params"].__setitem__("w", 1.0))
    code, out, err = cli("predict", path, thermo_csv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "edited after it was signed" in err
