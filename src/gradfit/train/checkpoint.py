"""Checkpoints of a training run: everything needed to continue bit-for-bit.

A checkpoint is two files in the run's folder, each written atomically: ``checkpoint.safetensors``
(parameters, optimizer tensors, random-generator states, early-stopping snapshot) and
``checkpoint.json`` (epoch, history, optimizer settings, loop counters, and the SHA-256 of the
tensor file). No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from ..errors import PersistError

__all__ = ["save_checkpoint", "load_checkpoint", "Interrupted", "Checkpointer", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


class Interrupted(Exception):
    """Raised by the loop after it saved a checkpoint because a stop signal arrived."""

    def __init__(self, signum: int, epoch: int):
        super().__init__(f"interrupted by signal {signum} after epoch {epoch}")
        self.signum, self.epoch = signum, epoch


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return {"__float__": repr(v)}
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _json_restore(v):
    if isinstance(v, dict):
        if set(v) == {"__float__"}:
            return float(v["__float__"])
        return {k: _json_restore(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_restore(x) for x in v]
    return v


def save_checkpoint(folder, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save as st_save

    from .._files import atomic_write_bytes, atomic_write_text

    folder = Path(folder)
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(folder / "checkpoint.safetensors", blob)
    doc = {"format": "gradfit.checkpoint", "version": CHECKPOINT_VERSION,
           "tensors_sha256": hashlib.sha256(blob).hexdigest(), **_json_safe(meta)}
    atomic_write_text(folder / "checkpoint.json", json.dumps(doc) + "\n")


def load_checkpoint(folder) -> tuple[dict, dict]:
    from safetensors.torch import load as st_load

    folder = Path(folder)
    meta_path, blob_path = folder / "checkpoint.json", folder / "checkpoint.safetensors"
    if not meta_path.exists() or not blob_path.exists():
        raise PersistError(f"{folder}: no checkpoint to resume from (run without --resume first)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PersistError(f"{meta_path}: damaged checkpoint (not valid JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != "gradfit.checkpoint":
        raise PersistError(f"{meta_path}: not a gradfit checkpoint")
    if meta.get("version", 0) > CHECKPOINT_VERSION:
        raise PersistError(f"{meta_path}: written by a newer gradfit; upgrade to resume")
    blob = blob_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise PersistError(f"{blob_path}: checksum mismatch; the checkpoint is damaged")
    return st_load(blob), _json_restore(meta)


class Checkpointer:
    """Decides when to save (every ``every_epochs`` epochs or ``every_seconds`` seconds) and
    carries a stop signal set by a handler (``signal`` is its number, or None)."""

    def __init__(self, folder, every_epochs: int | None = None, every_seconds: float | None = 60.0):
        import time

        self.folder = Path(folder)
        self.every_epochs = every_epochs
        self.every_seconds = every_seconds
        self.signal: int | None = None
        self._last = time.monotonic()
        self.saved_epoch: int | None = None

    def due(self, epoch: int) -> bool:
        import time

        if self.every_epochs and epoch % self.every_epochs == 0:
            return True
        return bool(self.every_seconds) and time.monotonic() - self._last >= self.every_seconds

    def save(self, tensors: dict, meta: dict) -> None:
        import time

        self.folder.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.folder, tensors, {**meta, "fingerprint": getattr(self, "fingerprint", None)})
        self._last = time.monotonic()
        self.saved_epoch = meta["counters"]["epoch"]
