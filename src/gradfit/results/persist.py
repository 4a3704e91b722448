"""Result files: a JSON document (plus a safetensors file of weights beside it for networks),
with a format name, a format version and a SHA-256 checksum, written atomically through
:mod:`gradfit._files`. Nothing is ever pickled or unpickled.

The checksum is unkeyed: it catches damage, not deliberate edits. With a signing key
(``signing_key=`` or ``$GRADFIT_SIGNING_KEY``) a document is also signed when written and
verified when read (:mod:`gradfit.results.signing`).

This module only moves documents between memory and disk; what a document holds is
declared by the result class (``FitResult.to_document`` / ``FitResult.from_document``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .._files import TOO_DEEP, atomic_write_text, commit_pair, parse_json, resolve_target
from ..errors import PersistError
from .signing import resolve_key, sign, verify

__all__ = ["write_document", "read_document", "FORMAT", "FORMAT_VERSION"]

FORMAT = "gradfit.model"
#: 2: every result field is stored; non-finite numbers as "nan"/"inf"/"-inf" (1 wrote NaN as null)
FORMAT_VERSION = 2


def _canonical(doc: dict, leave_out: tuple[str, ...] = ("checksum",)) -> bytes:
    """The bytes the checksum (and, leaving out the signature too, the signature) is over."""
    body = {k: v for k, v in doc.items() if k not in leave_out}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _checksum(doc: dict) -> str:
    return hashlib.sha256(_canonical(doc)).hexdigest()


def _signed_body(doc: dict) -> bytes:
    return _canonical(doc, ("checksum", "signature"))


def write_document(path, body: dict, weights: dict | None = None, *, signing_key=None) -> None:
    """Write ``body`` (JSON values) to ``path`` with the format header and checksum.

    ``weights`` (a torch state dict) go to ``<stem>.safetensors`` beside the file, which names
    them with their SHA-256. A ``path`` that is a symbolic link is followed: the document (and its
    weights, beside it) replace the file it points to. A document without weights may also be
    written into a stream (``/dev/stdout``, a FIFO); one with weights needs a file path. The document and its weights change as one atomic unit
    (:func:`gradfit._files.commit_pair`): a crash or a failed write (a full disk) at any moment
    leaves either the previous complete model or the new one, never a mix.

    With a key (``signing_key``, text or bytes, else ``$GRADFIT_SIGNING_KEY`` if set) the
    document also gets an HMAC-SHA256 ``signature`` of its body (which names the weights'
    SHA-256, so they are signed too).

    Raises
    ------
    PersistError
        The document holds a value JSON cannot hold, or it has weights and ``path`` is a stream.
    ConfigError
        ``signing_key`` is empty or not text or bytes.
    OSError
        The disk is full or the folder not writable; the previous model is left as it was.
    """
    import torch

    from .._version import __version__

    path = Path(path)
    key = resolve_key(signing_key)
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "gradfit_version": __version__,
           "torch_version": torch.__version__.split("+")[0], **body}

    def render(weights_name: str | None) -> str:
        full = dict(doc)
        if weights_name is not None:
            full["weights"] = {"file": weights_name, "sha256": digest}
        if key is not None:
            full["signature"] = sign(_signed_body(full), key)
        full["checksum"] = _checksum(full)
        try:
            return json.dumps(full, indent=2, allow_nan=False) + "\n"
        except ValueError as exc:  # a NaN that a codec did not encode: refuse rather than write non-JSON
            raise PersistError(f"{path}: cannot write the document ({exc})") from None

    if weights is None:
        atomic_write_text(path, render(None))
        return
    target, how, _ = resolve_target(path)
    if how != "replace":
        raise PersistError(f"{path}: a network model is two files (the document and its weights beside it); "
                           "give a file path, not a stream or device")
    path = target  # a link's target: the weights go beside the document, where read_document looks
    from safetensors.torch import save as st_save

    blob = st_save({k: v.detach().cpu().contiguous() for k, v in weights.items()})
    digest = hashlib.sha256(blob).hexdigest()
    render("check")  # refuse a non-JSON document before any file is touched
    commit_pair(path, blob, path.with_suffix(".safetensors").name, render)


def read_document(path, *, signing_key=None) -> tuple[dict, dict | None]:
    """Read and verify a document: ``(document, weights state dict or None)``.

    With a key (``signing_key``, else ``$GRADFIT_SIGNING_KEY`` if set) the document must carry
    a valid signature made with that key; without one a signature is not checked.

    Raises
    ------
    PersistError
        The file is missing, not JSON, not a gradfit file, from a newer format version, or
        fails its checksum; or a key is set and the file is unsigned, signed with another key
        or edited after it was signed; or its weights file is missing, damaged or unreadable.
    ConfigError
        ``signing_key`` is empty or not text or bytes.
    """
    path = Path(path)
    key = resolve_key(signing_key)
    try:
        doc = _read_json(path)
        # before the weights are read: their SHA-256 is then one the key holder signed
        verify(doc.get("signature"), _signed_body(doc), key, str(path))
    except RecursionError:  # parsed, but too deep to hash under this stack
        raise PersistError(f"{path}: not a gradfit model file ({TOO_DEEP})") from None
    weights = doc.get("weights")
    if weights is None:
        return doc, None
    if not isinstance(weights, dict) or "file" not in weights:
        raise PersistError(f"{path}: the weights entry is malformed")
    # beside the document itself: through a symbolic link, beside the file it points to (where
    # write_document put them); a bare name, so never a path out of that folder
    folder = Path(os.path.realpath(path)).parent
    return doc, _read_weights(folder / Path(str(weights["file"])).name, weights.get("sha256"), path)


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise PersistError(f"{path}: no such model file")
    if path.is_dir():
        raise PersistError(f"{path}: is a directory; pass the model.json inside it")
    try:
        doc = parse_json(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise PersistError(f"{path}: not a gradfit model file (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise PersistError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); "
                           "the file is truncated or not a gradfit model") from None
    except ValueError as exc:  # nested too deeply or too large: parse_json's one line
        raise PersistError(f"{path}: not a gradfit model file ({exc})") from None
    except MemoryError:
        raise PersistError(f"{path}: too large to read in the memory available; not a gradfit model") from None
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


def _read_weights(wfile: Path, sha256, path: Path) -> dict:
    # wfile is the bare name joined to the document's folder: never follow paths out of it
    if not wfile.exists():
        raise PersistError(f"{wfile}: weights file missing (it must sit beside {path.name})")
    blob = wfile.read_bytes()
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise PersistError(f"{wfile}: checksum mismatch; the weights were modified or damaged")
    from safetensors.torch import load as st_load

    try:
        return st_load(blob)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise PersistError(f"{wfile}: unreadable safetensors file ({exc})") from None
