"""The declared schema of a saved model document, checked before anything is built.

A model file is data from outside: every entry is checked here, type, range and size, before
:mod:`gradfit.results.document` decodes it or builds a network from it. The schema is
declared once, as tables of :class:`Field` (``RESULT_FIELDS`` for the result entries,
``MODEL_FIELDS`` for each model kind); :func:`check_document` walks them, then checks what
ties entries together: a network's layer sizes against the weights' own shapes (so
``"hidden": [200000, 200000]`` beside a tiny weights file is refused at once, not allocated),
normalization vectors against the feature counts, the covariance against the free
parameters, names against each other (a list of inputs or parameters names each once; an input
is never also a parameter).

The SHA-256 checksum of :mod:`gradfit.results.persist` catches damage; this schema bounds
what a deliberately edited file can make gradfit do. Neither authenticates the author: the
keyed signature of :mod:`gradfit.results.signing` does, when a key is set (its entry is
declared here, ``SIGNATURE_FIELDS``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from ..errors import PersistError
from ..options import ACTIVATIONS
from ..status import Status

__all__ = ["Field", "RESULT_FIELDS", "MODEL_FIELDS", "SIGNATURE_FIELDS", "SIGNATURE_ALGORITHM", "LIMITS",
           "check_document", "check_signature", "shapes_of"]

#: the limits of a document (a file within them loads; one beyond them is refused)
LIMITS = {
    "text": 1_000_000,  # characters in one string (message, formula, a note)
    "items": 10_000_000,  # entries in one list or object (a long history)
    "names": 100_000,  # parameters, inputs, notes
    "count": 2**53,  # epochs, rows (exact in a JSON number)
    "features": 1_000_000,  # inputs or outputs of a network
    "width": 1_000_000,  # units in one hidden layer
    "layers": 1_000,  # hidden layers
    "tree_depth": 64,  # nesting of settings and cv
    "tree_nodes": 1_000_000,  # values in settings or cv
    "array_dims": 2,  # covariance and correlation are matrices
}
_NON_FINITE = ("nan", "inf", "-inf")
_ARRAY_DTYPES = ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")


@dataclass(frozen=True)
class Field:
    """One entry: its ``kind`` ("int", "number", "text", "list", "object", "tree", "array"),
    whether null is allowed, whether it must be present, bounds for numbers (``low``/``high``),
    the most characters or items (``size``), the schema of list items or object values
    (``items``), the allowed values (``choices``), a regular expression text must match
    in full (``pattern``), and whether a list's items must be distinct (``unique``: names)."""

    kind: str
    nullable: bool = False
    required: bool = False
    low: float | None = None
    high: float | None = None
    size: int | None = None
    items: Field | None = None
    choices: tuple | None = None
    min_items: int = 0
    pattern: str | None = None
    unique: bool = False


_NUMBER = Field("number", nullable=True)  # null: format 1 wrote NaN as null
_COUNT = Field("int", low=0, high=LIMITS["count"])
_TEXT = Field("text", size=LIMITS["text"])
_NAME = Field("text", size=10_000)
_NAMES = Field("list", size=LIMITS["names"], items=_NAME, unique=True)
_NUMBERS = Field("object", size=LIMITS["names"], items=_NUMBER)

#: the result entries (see ``FitResult._DOCUMENT``)
RESULT_FIELDS: dict[str, Field] = {
    "model": Field("object", required=True),
    "params": Field("object", required=True, size=LIMITS["names"], items=_NUMBER),
    "loss": Field("number", nullable=True, required=True),
    "val_loss": Field("number", nullable=True, required=True),
    "status": Field("text", required=True, choices=tuple(s.value for s in Status)),
    "epochs_run": Field("int", required=True, low=0, high=LIMITS["count"]),
    "history": Field("object", required=True, size=64,
                     items=Field("list", size=LIMITS["items"], items=_NUMBER)),
    "message": _TEXT,
    "settings": Field("tree"),
    "n_train": _COUNT,
    "n_val": _COUNT,
    "notes": Field("list", size=LIMITS["names"], items=_TEXT),  # may repeat
    "stderr": Field("object", nullable=True, size=LIMITS["names"], items=_NUMBER),
    "covariance": Field("array", nullable=True),
    "correlation": Field("array", nullable=True),
    "free": _NAMES,
    "stats": Field("object", nullable=True, size=64, items=_NUMBER),
    "best_epoch": Field("int", nullable=True, low=0, high=LIMITS["count"]),
    "cv": Field("tree", nullable=True),
    "gradfit_version": Field("text", size=100),
    "torch_version": Field("text", size=100),
    "weights": Field("object", size=16),  # file and sha256; read by persist before this check
    "signature": Field("object", size=3),  # entries: SIGNATURE_FIELDS
}

#: the one signature algorithm (see :mod:`gradfit.results.signing`)
SIGNATURE_ALGORITHM = "hmac-sha256"
#: the signature entry of a signed document
SIGNATURE_FIELDS: dict[str, Field] = {
    "algorithm": Field("text", required=True, size=100, choices=(SIGNATURE_ALGORITHM,)),
    "key_id": Field("text", required=True, size=8, pattern="[0-9a-f]{8}"),
    "hmac": Field("text", required=True, size=64, pattern="[0-9a-f]{64}"),
}

_FEATURES = Field("int", required=True, low=1, high=LIMITS["features"])
_NETWORK = {
    "class": Field("text", size=1000),
    "input_names": Field("list", size=LIMITS["features"], items=_NAME, min_items=1, unique=True),
    "normalization": Field("object", nullable=True, size=4),  # entries: _check_normalization
}
#: the model entry, by kind ("kind" itself is checked first)
MODEL_FIELDS: dict[str, dict[str, Field]] = {
    "formula": {"formula": Field("text", required=True, size=100_000),
                "inputs": Field("list", required=True, size=LIMITS["names"], items=_NAME, unique=True),
                "name": Field("text", nullable=True, size=10_000)},
    "builtin": {"name": Field("text", required=True, size=1000), "input": _NAME},
    "function": {"name": Field("text", nullable=True, size=10_000), "params": _NAMES},
    "mlp": {**_NETWORK, "in_features": _FEATURES, "out_features": _FEATURES,
            "hidden": Field("list", required=True, size=LIMITS["layers"], min_items=1,
                            items=Field("int", low=1, high=LIMITS["width"])),
            "activation": Field("text", required=True, choices=ACTIVATIONS)},
    "module": {**_NETWORK, "in_features": Field("int", nullable=True, low=1, high=LIMITS["features"]),
               "out_features": Field("int", nullable=True, low=1, high=LIMITS["features"])},
}


def shapes_of(weights: Mapping | None) -> dict[str, tuple[int, ...]] | None:
    """``{name: shape}`` of a state dict of tensors (or of anything with ``.shape``)."""
    if weights is None:
        return None
    return {str(k): tuple(int(n) for n in v.shape) for k, v in weights.items()}


#: the file's envelope, which results/persist.py checks before this schema sees the document
ENVELOPE = ("format", "format_version", "checksum")


def check_document(doc: Any, weight_shapes: Mapping[str, tuple] | None = None) -> None:
    """Check a model document against the schema before it is decoded or built.

    Parameters
    ----------
    doc : the parsed JSON document (checksum already verified).
    weight_shapes : ``{tensor name: shape}`` of the weights file beside it (read from the
        safetensors header, or :func:`shapes_of` a loaded state dict); None when the document
        has no weights.

    Raises
    ------
    PersistError
        The first entry that is missing, of the wrong type, out of range, too large, or
        inconsistent with another entry or with the weights, named in one line.

    Examples
    --------
    >>> doc = {"model": {"kind": "mlp", "in_features": 1, "out_features": 1, "hidden": [200000],
    ...                  "activation": "tanh"}, "params": {}, "loss": 0.1, "val_loss": None,
    ...        "status": "converged", "epochs_run": 3, "history": {}}
    >>> try:
    ...     check_document(doc, {"0.weight": (4, 1), "0.bias": (4,), "2.weight": (1, 4), "2.bias": (1,)})
    ... except PersistError as exc:
    ...     print(str(exc)[:63])
    the model's layer sizes [1, 200000, 1] do not match its weights
    """
    if not isinstance(doc, dict):
        raise PersistError(f"the document is a {type(doc).__name__}, not an object")
    _check_table(doc, RESULT_FIELDS, "", ENVELOPE)
    if "signature" in doc:
        check_signature(doc["signature"])
    model = doc["model"]
    kind = model.get("kind")
    if kind not in MODEL_FIELDS:
        _fail("model.kind", f"unknown model kind {_show(kind)}; known: {', '.join(MODEL_FIELDS)}")
    _check_table(model, MODEL_FIELDS[kind], "model.", ("kind",))
    _check_relations(doc)
    _check_model_names(model, kind, doc["params"])
    if kind in ("mlp", "module"):
        _check_network(model, kind, weight_shapes)


def check_signature(entry: Any) -> None:
    """Check a document's ``signature`` entry against ``SIGNATURE_FIELDS`` (its shape only;
    :func:`gradfit.results.signing.verify` checks it against a key).

    Raises
    ------
    PersistError
        The entry is not an object, lacks a field, or holds a malformed one.
    """
    _check(entry, RESULT_FIELDS["signature"], "signature")
    _check_table(entry, SIGNATURE_FIELDS, "signature.")


# -- walking the tables ---------------------------------------------------------------------
def _check_table(obj: dict, table: dict[str, Field], prefix: str, envelope: tuple = ()) -> None:
    unknown = [name for name in obj if name not in table and name not in envelope]
    if unknown:  # a field the schema does not declare is data no code checks: refused, not ignored
        raise PersistError(f"the '{prefix}{unknown[0]}' entry is not part of the format (an edited or foreign "
                           "file?); remove it, or save the model again")
    for name, spec in table.items():
        if name not in obj:
            if spec.required:
                raise PersistError(f"the '{prefix}{name}' entry is missing")
            continue
        _check(obj[name], spec, prefix + name)


def _check(value, spec: Field, where: str) -> None:
    if value is None:
        if spec.nullable:
            return
        _fail(where, "must not be null")
    kind = spec.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(where, f"must be an integer, got {_show(value)}")
        _check_range(value, spec, where)
    elif kind == "number":
        if isinstance(value, str) and value in _NON_FINITE:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(where, f"must be a number, got {_show(value)}")
        _check_range(value, spec, where)
    elif kind == "text":
        if not isinstance(value, str):
            _fail(where, f"must be text, got {_show(value)}")
        if spec.size is not None and len(value) > spec.size:
            _fail(where, f"is {len(value)} characters long; the limit is {spec.size}")
        if spec.choices is not None and value not in spec.choices:
            noun = where.rsplit(".", 1)[-1]
            _fail(where, f"unknown {noun} {_show(value)}; known: {', '.join(spec.choices)}")
        if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
            _fail(where, f"must match {spec.pattern}, got {_show(value)}")
    elif kind in ("list", "object"):
        expected = list if kind == "list" else dict
        if not isinstance(value, expected):
            _fail(where, f"must be {'a list' if kind == 'list' else 'an object'}, got {_show(value)}")
        if spec.size is not None and len(value) > spec.size:
            _fail(where, f"has {len(value)} entries; the limit is {spec.size}")
        if len(value) < spec.min_items:
            _fail(where, f"needs at least {spec.min_items} entries")
        if spec.items is not None:
            entries = enumerate(value) if kind == "list" else value.items()
            for key, item in entries:
                _check(item, spec.items, f"{where}[{key!r}]" if kind == "object" else f"{where}[{key}]")
        if spec.unique:
            _check_distinct(value, where)
    elif kind == "tree":
        if not isinstance(value, dict):
            _fail(where, f"must be an object, got {_show(value)}")
        _check_tree(value, where)
    elif kind == "array":
        _check_array(value, where)
    else:  # pragma: no cover - a schema typo
        raise AssertionError(f"unknown field kind {kind!r}")


def _check_distinct(names: list, where: str) -> None:
    seen = set()
    for name in names:
        if name in seen:  # two inputs of one name would read one column twice
            _fail(where, f"names {_show(name)} twice")
        seen.add(name)


def _check_range(value, spec: Field, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        return
    if spec.low is not None and value < spec.low:
        _fail(where, f"must be at least {spec.low:g}, got {value!r}")
    if spec.high is not None and value > spec.high:
        _fail(where, f"must be at most {spec.high:g}, got {value!r}")


def _check_tree(value, where: str) -> None:
    """Free-form JSON (settings, cv): bounded depth, node count and string length."""
    stack, nodes = [(value, 0)], 0
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if depth > LIMITS["tree_depth"]:
            _fail(where, f"is nested more than {LIMITS['tree_depth']} levels deep")
        if nodes > LIMITS["tree_nodes"]:
            _fail(where, f"holds more than {LIMITS['tree_nodes']} values")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
            nodes += len(v)
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, str):
            if len(v) > LIMITS["text"]:
                _fail(where, f"holds a string of {len(v)} characters; the limit is {LIMITS['text']}")
        elif not (v is None or isinstance(v, (bool, int, float))):
            _fail(where, f"holds a {type(v).__name__}")


def _check_array(value, where: str) -> None:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "values"}:
        _fail(where, "must be an object with dtype, shape and values")
    _check(value["dtype"], Field("text", choices=_ARRAY_DTYPES), where + ".dtype")
    _check(value["shape"], Field("list", size=LIMITS["array_dims"], items=_COUNT), where + ".shape")
    _check(value["values"], Field("list", size=LIMITS["items"], items=_NUMBER), where + ".values")
    if math.prod(value["shape"]) != len(value["values"]):
        _fail(where, f"has {len(value['values'])} values for shape {value['shape']}")


# -- entries that must agree ----------------------------------------------------------------
def _check_relations(doc: dict) -> None:
    params = doc["params"]
    for name in ("stderr",):
        extra = sorted(set(doc.get(name) or ()) - set(params))
        if extra:
            _fail(name, f"names {_show(extra[0])}, which is not a parameter")
    free = doc.get("free") or []
    unknown = [n for n in free if n not in params]
    if unknown:
        _fail("free", f"names {_show(unknown[0])}, which is not a parameter")
    for name in ("covariance", "correlation"):
        array = doc.get(name)
        if array is not None and array["shape"] != [len(free), len(free)]:
            _fail(name, f"has shape {array['shape']}, but there are {len(free)} free parameters")
    best = doc.get("best_epoch")
    if best is not None and best > doc["epochs_run"]:
        _fail("best_epoch", f"is {best}, after the last epoch run ({doc['epochs_run']})")


def _check_model_names(model: dict, kind: str, params: dict) -> None:
    """A model's names against the parameters: an input is never also a parameter, and a
    function's saved parameter names are the parameters stored. (A formula's inputs are checked
    against the formula when it is parsed, and its parameters against ``params`` once built.)"""
    inputs = {"formula": model.get("inputs"), "builtin": [model.get("input", "x")]}.get(kind) or []
    both = [n for n in inputs if n in params]
    if both:
        field = "model.inputs" if kind == "formula" else "model.input"
        _fail(field, f"names {_show(both[0])}, which is also a parameter")
    saved = model.get("params")
    if kind == "function" and saved is not None and set(saved) != set(params):
        odd = sorted(set(saved) ^ set(params))[0]
        _fail("model.params", f"names {list(saved)[:20]}, but the 'params' entry has {sorted(params)[:20]} "
              f"({_show(odd)} is in one only)")


def _check_network(model: dict, kind: str, shapes) -> None:
    n_in, n_out = model.get("in_features"), model.get("out_features")
    names = model.get("input_names") or ["x"]
    if n_in is not None and len(names) not in (1, n_in):
        _fail("model.input_names", f"has {len(names)} names for {n_in} input features")
    norm = model.get("normalization")
    if norm:
        _check_normalization(norm, n_in, n_out)
    if shapes is None:
        raise PersistError("the weights entry is missing")
    if kind != "mlp":
        return  # a custom module's own load_state_dict checks its shapes
    from ..models.neural import mlp_shapes

    expected = mlp_shapes(n_in, n_out, model["hidden"])
    got = {str(k): tuple(int(n) for n in v) for k, v in shapes.items()}
    if got != expected:
        sizes = [n_in, *model["hidden"], n_out]
        diff = sorted(set(got) ^ set(expected)) or [k for k in expected if got[k] != expected[k]]
        detail = (f"'{diff[0]}' is {got.get(diff[0], 'missing')} in the weights, "
                  f"{expected.get(diff[0], 'absent')} by the sizes")
        raise PersistError(f"the model's layer sizes {sizes} do not match its weights ({detail}); "
                           "the model file was edited or belongs to other weights")


def _check_normalization(norm: dict, n_in, n_out) -> None:
    missing = [k for k in ("x_mean", "x_std", "y_mean", "y_std") if k not in norm]
    if missing:
        _fail("model.normalization", f"lacks {missing[0]}")
    for key, n in (("x_mean", n_in), ("x_std", n_in), ("y_mean", n_out), ("y_std", n_out)):
        v = norm[key]
        if key.startswith("y") and not isinstance(v, list):
            _check(v, Field("number"), f"model.normalization.{key}")
            if key == "y_std" and isinstance(v, (int, float)) and v <= 0:
                _fail(f"model.normalization.{key}", "must be positive")
            if n not in (None, 1):
                _fail(f"model.normalization.{key}", f"is one number, but the model has {n} outputs")
            continue
        _check(v, Field("list", size=LIMITS["features"], items=Field("number")), f"model.normalization.{key}")
        if n is not None and len(v) != n:
            _fail(f"model.normalization.{key}", f"has {len(v)} values for {n} features")
        if key.endswith("std") and any(isinstance(s, (int, float)) and s <= 0 for s in v):
            _fail(f"model.normalization.{key}", "must be positive")


def _fail(where: str, what: str):
    raise PersistError(f"the '{where}' entry is malformed: it {what}" if not what.startswith("unknown")
                       else f"the '{where}' entry is malformed: {what}")


def _show(value) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."
