"""How result fields become JSON and come back exactly: codecs, and models from their specs.

A result class declares its file document once, as a table ``{field name: Codec}``;
:func:`encode_fields` and :func:`decode_fields` walk that table, so a field that is not in
the table is not saved, and every field in it is saved and loaded the same way.

Floats that JSON cannot hold are written as strings where the table says "number"
(``"nan"``, ``"inf"``, ``"-inf"``), and as ``{"$float": "inf"}`` inside free-form trees
(settings, cross-validation summaries), where a string could also be a plain string.
Integers stay integers and floats stay floats (``1`` and ``1.0`` round-trip as themselves).
Nothing is pickled and no stored code is run: custom torch modules and Python functions
are passed back in by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import ModelError, PersistError
from ..status import Status

__all__ = ["Codec", "NUMBER", "INT", "TEXT", "STATUS", "NAMES", "NUMBERS", "SERIES", "ARRAY", "TREE",
           "optional", "encode_fields", "decode_fields", "model_from_spec"]

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_FLOAT_TAG = "$float"
#: array dtypes a document may name (numbers only: never object arrays)
_ARRAY_KINDS = "fiub"


@dataclass(frozen=True)
class Codec:
    """``encode(value) -> JSON value`` and ``decode(JSON value) -> value``; ``decode`` raises
    :class:`ValueError` or :class:`TypeError` with the reason when the stored value is malformed."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def _float_text(v: float) -> str:
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _encode_number(v):
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"expected a number, got {v!r}")
    if isinstance(v, (int, np.integer)):
        return int(v)
    v = float(v)
    return v if math.isfinite(v) else _float_text(v)


def _decode_number(v):
    if isinstance(v, bool):
        raise TypeError(f"expected a number, got {v!r}")
    if isinstance(v, (int, float)):
        return v
    if v is None:
        return math.nan  # format 1 wrote NaN as null
    if isinstance(v, str) and v in _NON_FINITE:
        return _NON_FINITE[v]
    raise TypeError(f"expected a number, got {v!r}")


def _decode_int(v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def _decode_text(v):
    if not isinstance(v, str):
        raise TypeError(f"expected text, got {v!r}")
    return v


def _decode_status(v):
    try:
        return Status(_decode_text(v))
    except ValueError:
        raise ValueError(f"unknown status {v!r}; known: {', '.join(s.value for s in Status)}") from None


def _mapping(v) -> dict:
    if not isinstance(v, dict):
        raise TypeError(f"expected an object, got {type(v).__name__}")
    return v


def _sequence(v) -> list:
    if not isinstance(v, list):
        raise TypeError(f"expected a list, got {type(v).__name__}")
    return v


def _encode_array(a):
    a = np.asarray(a)
    if a.dtype.kind not in _ARRAY_KINDS:
        raise TypeError(f"cannot store an array of dtype {a.dtype}")
    return {"dtype": a.dtype.name, "shape": list(a.shape), "values": [_encode_number(v) for v in a.ravel().tolist()]}


def _decode_array(v):
    v = _mapping(v)
    dtype = np.dtype(_decode_text(v["dtype"]))
    if dtype.kind not in _ARRAY_KINDS:
        raise TypeError(f"arrays hold numbers, not {dtype}")
    shape = tuple(_decode_int(s) for s in _sequence(v["shape"]))
    values = [_decode_number(x) for x in _sequence(v["values"])]
    return np.array(values, dtype=dtype).reshape(shape)


def _encode_tree(v):
    if isinstance(v, dict):
        return {str(k): _encode_tree(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode_tree(x) for x in v]
    if isinstance(v, np.ndarray):
        return _encode_tree(v.tolist())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else {_FLOAT_TAG: _float_text(v)}
    if isinstance(v, np.integer):
        return int(v)
    if v is None or isinstance(v, (int, str)):
        return v
    raise TypeError(f"cannot store a {type(v).__name__} ({v!r}); settings hold JSON values only")


def _decode_tree(v):
    if isinstance(v, dict):
        if set(v) == {_FLOAT_TAG}:
            return _NON_FINITE[_decode_text(v[_FLOAT_TAG])]
        return {k: _decode_tree(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode_tree(x) for x in v]
    return v


def optional(codec: Codec) -> Codec:
    """``codec``, with None stored as null."""
    return Codec(lambda v: None if v is None else codec.encode(v),
                 lambda v: None if v is None else codec.decode(v))


#: an int or a float (non-finite floats as "nan", "inf", "-inf")
NUMBER = Codec(_encode_number, _decode_number)
INT = Codec(int, _decode_int)
TEXT = Codec(str, _decode_text)
#: a :class:`~gradfit.status.Status`, stored as its name
STATUS = Codec(lambda v: Status(v).value, _decode_status)
#: a tuple of names (or notes)
NAMES = Codec(lambda v: [str(x) for x in v], lambda v: tuple(_decode_text(x) for x in _sequence(v)))
#: {name: number}
NUMBERS = Codec(lambda v: {str(k): _encode_number(x) for k, x in v.items()},
                lambda v: {str(k): _decode_number(x) for k, x in _mapping(v).items()})
#: {name: [number, ...]}, e.g. a training history
SERIES = Codec(lambda v: {str(k): [_encode_number(x) for x in xs] for k, xs in v.items()},
               lambda v: {str(k): [_decode_number(x) for x in _sequence(xs)] for k, xs in _mapping(v).items()})
#: a numeric numpy array of any shape, with its dtype
ARRAY = Codec(_encode_array, _decode_array)
#: a free-form JSON tree (settings, summaries); lists come back as lists
TREE = Codec(_encode_tree, _decode_tree)


def encode_fields(obj, table: dict[str, Codec]) -> dict:
    """The document entries of ``obj``'s fields named in ``table``."""
    out = {}
    for name, codec in table.items():
        try:
            out[name] = codec.encode(getattr(obj, name))
        except (TypeError, ValueError) as exc:
            raise PersistError(f"cannot save field {name!r}: {exc}") from None
    return out


def decode_fields(doc: dict, table: dict[str, Codec]) -> dict:
    """The fields stored in ``doc`` (entries the document lacks are left out, so the class
    defaults apply to files written before a field existed)."""
    out = {}
    for name, codec in table.items():
        if name not in doc:
            continue
        try:
            out[name] = codec.decode(doc[name])
        except (KeyError, TypeError, ValueError) as exc:
            raise PersistError(f"the {name!r} entry is malformed ({exc})") from None
    return out


# -- models ---------------------------------------------------------------------------------
def model_from_spec(spec: dict, weights: dict | None = None, *, module=None, function=None):
    """Rebuild a model from its ``spec()``.

    Formulas and built-in curves are rebuilt from their text, MLPs from their description and
    ``weights`` (a state dict of tensors). A custom ``torch.nn.Module`` or a Python function
    is code, which a file never carries: pass ``module=`` (an instance of the same
    architecture, which receives the weights) or ``function=``.

    Raises
    ------
    ModelError
        The model is a custom module or function and it was not passed, or the function
        passed has other parameters than the saved one.
    PersistError
        The description is malformed, or the weights do not fit the module.
    """
    if not isinstance(spec, dict) or "kind" not in spec:
        raise PersistError("the 'model' entry is missing or malformed")
    try:
        return _model(spec, weights, module, function)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, (PersistError, ModelError)):
            raise
        raise PersistError(f"malformed model description ({type(exc).__name__}: {exc})") from None


def _model(spec: dict, weights, module, function):
    from ..models import builtin_model
    from ..models.formula import FormulaModel
    from ..models.function import FunctionModel

    kind = spec["kind"]
    if kind == "formula":
        inputs = [str(n) for n in spec["inputs"]]
        model = FormulaModel(str(spec["formula"]), inputs=inputs, name=spec.get("name"))
        unused = [n for n in inputs if n not in model.input_names]
        if unused:  # predict would ask for a column the formula never reads
            raise PersistError(f"the 'model.inputs' entry is malformed: it names {unused[0]!r}, which the formula "
                               "does not use")
        return model
    if kind == "builtin":
        return builtin_model(str(spec["name"]), input_name=str(spec.get("input", "x")))
    if kind == "function":
        if function is None:
            raise ModelError(f"the model is a Python function ({spec.get('name')}); "
                             "pass function=<the same function> to load it")
        model = FunctionModel(function)
        saved = tuple(str(n) for n in spec.get("params", model.param_names))
        if model.param_names != saved:
            raise ModelError(f"the function passed takes parameters {', '.join(model.param_names)}, but the saved "
                             f"fit has {', '.join(saved)}; pass the function that was fitted")
        return model
    if kind in ("mlp", "module"):
        return _module_model(spec, weights, module)
    raise PersistError(f"unknown model kind {kind!r}")


def _module_model(spec: dict, state: dict | None, module):
    import torch

    from ..models.neural import MLPSpec, ModuleModel, build_mlp

    if state is None:
        raise PersistError("the weights entry is missing")
    mlp = None
    if spec["kind"] == "mlp":
        mlp = MLPSpec(tuple(int(h) for h in spec["hidden"]), str(spec["activation"]))
        module = build_mlp(int(spec["in_features"]), int(spec["out_features"]), mlp.hidden, mlp.activation)
    elif module is None:
        raise ModelError(f"the model is a custom torch module ({spec.get('class')}); "
                         "pass module=<an instance of the same architecture> to load it")
    dtype = next(iter(state.values())).dtype if state else torch.float32
    module.to(dtype)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise PersistError(f"the weights do not fit the model ({str(exc).splitlines()[0]})") from None
    model = ModuleModel(module, mlp=mlp, in_features=spec.get("in_features"), out_features=spec.get("out_features"),
                        input_names=tuple(spec.get("input_names") or ("x",)))
    norm = spec.get("normalization")
    if norm:
        for key in ("x_mean", "x_std", "y_mean", "y_std"):
            setattr(model, key, torch.tensor(norm[key], dtype=dtype))
    return model
