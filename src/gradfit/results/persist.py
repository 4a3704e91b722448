"""Saving and loading FitResult files: JSON (+ safetensors weights for networks), written
atomically through gradfit._files. Nothing is ever pickled or unpickled."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from ..errors import ModelError, PersistError

from .._files import atomic_write_bytes, atomic_write_text

__all__ = ["save_result", "load", "FORMAT", "FORMAT_VERSION"]

FORMAT = "gradfit.model"
FORMAT_VERSION = 1


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _checksum(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_result(result, path) -> None:
    """Save a FitResult as JSON; a network's weights go to ``<stem>.safetensors`` beside it."""
    import torch

    from .. import __version__

    path = Path(path)
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "gradfit_version": __version__,
        "torch_version": torch.__version__.split("+")[0], "model": result.model.spec(),
        "params": dict(result.params), "loss": result.loss, "val_loss": result.val_loss,
        "status": result.status, "epochs_run": result.epochs_run, "message": result.message,
        "settings": result.settings, "n_train": result.n_train, "n_val": result.n_val,
        "notes": list(result.notes), "history": result.history,
    }
    if not result.model.scalar_params:
        from safetensors.torch import save as st_save

        tensors = {k: v.detach().cpu().contiguous() for k, v in result.model.module.state_dict().items()}
        blob = st_save(tensors)
        weights_name = path.with_suffix(".safetensors").name
        atomic_write_bytes(path.parent / weights_name, blob)
        doc["weights"] = {"file": weights_name, "sha256": hashlib.sha256(blob).hexdigest()}
    doc = _json_safe(doc)
    doc["checksum"] = _checksum(doc)
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


def _read_doc(path: Path) -> dict:
    if not path.exists():
        raise PersistError(f"{path}: no such model file")
    if path.is_dir():
        raise PersistError(f"{path}: is a directory; pass the model.json inside it")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PersistError(f"{path}: not a gradfit model file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise PersistError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                           "the file is truncated or not a gradfit model") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PersistError(f"{path}: not a gradfit model file (no 'format': '{FORMAT}')")
    version = doc.get("format_version")
    if not isinstance(version, int):
        raise PersistError(f"{path}: format_version is missing or not an integer")
    if version > FORMAT_VERSION:
        raise PersistError(f"{path}: written by a newer gradfit (format {version}, this one reads up to "
                           f"{FORMAT_VERSION}); upgrade gradfit")
    if doc.get("checksum") != _checksum(doc):
        raise PersistError(f"{path}: checksum mismatch; the file was modified or damaged after it was written")
    return doc


def _number(v, what: str, path: Path) -> float:
    if v == "inf":
        return math.inf
    if v == "-inf":
        return -math.inf
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PersistError(f"{path}: {what} must be a number")
    return float(v)


def load(path, *, module=None, function=None):
    """Load a FitResult saved with ``FitResult.save``.

    Formula and built-in models are rebuilt from their text; MLPs from their description
    and safetensors weights. Custom ``torch.nn.Module`` and Python-function models cannot
    be rebuilt from a file (that would mean running stored code): pass ``module=`` (an
    instance of the same architecture) or ``function=``.
    """
    from .fit_result import FitResult

    path = Path(path)
    doc = _read_doc(path)
    spec = doc.get("model")
    if not isinstance(spec, dict) or "kind" not in spec:
        raise PersistError(f"{path}: the 'model' entry is missing or malformed")
    try:
        model = _rebuild_model(spec, doc, path, module, function)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, (PersistError, ModelError)):
            raise
        raise PersistError(f"{path}: malformed model description ({type(exc).__name__}: {exc})") from None
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise PersistError(f"{path}: 'params' must be an object")
    params = {str(k): _number(v, f"parameter {k!r}", path) for k, v in params.items()}
    if model.scalar_params and set(params) != set(model.param_names):
        raise PersistError(f"{path}: parameters {sorted(params)} do not match the model's {list(model.param_names)}")
    history = doc.get("history") or {"train_loss": [], "val_loss": []}
    val = doc.get("val_loss")
    return FitResult(params={n: params[n] for n in model.param_names} if model.scalar_params else {},
                     loss=_number(doc.get("loss"), "loss", path),
                     val_loss=None if val is None else _number(val, "val_loss", path),
                     status=str(doc.get("status", "")), epochs_run=int(doc.get("epochs_run", 0)),
                     history=history, model=model, message=str(doc.get("message", "")),
                     settings=dict(doc.get("settings") or {}), n_train=int(doc.get("n_train", 0)),
                     n_val=int(doc.get("n_val", 0)), notes=tuple(doc.get("notes") or ()))


def _rebuild_model(spec: dict, doc: dict, path: Path, module, function):
    from ..models import builtin_model
    from ..models.formula import FormulaModel
    from ..models.function import FunctionModel

    kind = spec["kind"]
    if kind == "formula":
        return FormulaModel(str(spec["formula"]), inputs=[str(n) for n in spec["inputs"]], name=spec.get("name"))
    if kind == "builtin":
        return builtin_model(str(spec["name"]), input_name=str(spec.get("input", "x")))
    if kind == "function":
        if function is None:
            raise ModelError(f"{path}: the model is a Python function ({spec.get('name')}); "
                             "pass function=<the same function> to load it")
        return FunctionModel(function)
    if kind in ("mlp", "module"):
        return _rebuild_module(spec, doc, path, module)
    raise PersistError(f"{path}: unknown model kind {kind!r}")


def _rebuild_module(spec: dict, doc: dict, path: Path, module):
    import torch

    from ..models.neural import MLPSpec, ModuleModel, build_mlp

    weights = doc.get("weights")
    if not isinstance(weights, dict) or "file" not in weights:
        raise PersistError(f"{path}: the weights entry is missing")
    wfile = path.parent / Path(str(weights["file"])).name  # never follow paths out of the folder
    if not wfile.exists():
        raise PersistError(f"{wfile}: weights file missing (it must sit beside {path.name})")
    blob = wfile.read_bytes()
    if hashlib.sha256(blob).hexdigest() != weights.get("sha256"):
        raise PersistError(f"{wfile}: checksum mismatch; the weights were modified or damaged")
    from safetensors.torch import load as st_load

    try:
        state = st_load(blob)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise PersistError(f"{wfile}: unreadable safetensors file ({exc})") from None
    mlp = None
    if spec["kind"] == "mlp":
        mlp = MLPSpec(tuple(int(h) for h in spec["hidden"]), str(spec["activation"]))
        module = build_mlp(int(spec["in_features"]), int(spec["out_features"]), mlp.hidden, mlp.activation)
    elif module is None:
        raise ModelError(f"{path}: the model is a custom torch module ({spec.get('class')}); "
                         "pass module=<an instance of the same architecture> to load it")
    dtype = next(iter(state.values())).dtype if state else torch.float32
    module.to(dtype)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise PersistError(f"{wfile}: weights do not fit the model ({str(exc).splitlines()[0]})") from None
    model = ModuleModel(module, mlp=mlp, in_features=spec.get("in_features"), out_features=spec.get("out_features"),
                        input_names=tuple(spec.get("input_names") or ("x",)))
    norm = spec.get("normalization")
    if norm:
        for key in ("x_mean", "x_std", "y_mean", "y_std"):
            setattr(model, key, torch.tensor(norm[key], dtype=dtype))
    return model
