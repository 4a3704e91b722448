"""Checkpoints of a training run: everything needed to continue bit-for-bit.

A checkpoint is two files in the run's folder that change as one atomic unit
(:func:`gradfit._files.commit_pair`): ``checkpoint.safetensors`` (parameters, optimizer tensors,
random-generator states, callbacks' tensors such as the early-stopping snapshot) and
``checkpoint.json`` (epoch, history, optimizer settings, the other callback state, the name and
SHA-256 of the tensor file, and the SHA-256 of the training data). No pickle anywhere.

A checkpoint is taken at the end of an epoch, or, when a stop signal arrives during a
minibatch epoch, between two minibatches. Then ``counters`` also holds ``batch_start`` (the
permutation index of the next minibatch), ``rng.batch`` is the batch generator's state before
the epoch's permutation was drawn, ``loop.total`` the epoch's running loss sum and
``pending.*`` the divergence copy taken when the epoch began.

:class:`Checkpointer` is the training loop's checkpoint callback; :func:`capture_state` and
:func:`restore_state` turn a loop's state (train/loop.py ``LoopState``) into (tensors, meta)
and back. Each callback's own state travels through its ``state_dict()``/``load_state_dict()``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

from ..callbacks import Callback
from ..errors import PersistError

__all__ = ["save_checkpoint", "load_checkpoint", "capture_state", "restore_state", "Interrupted", "Checkpointer",
           "data_fingerprint", "CHECKPOINT_VERSION"]

#: 2: callback state under "callbacks" (version 1 kept loop counters and the scheduler apart);
#: 3: a checkpoint may stop inside an epoch (``counters["batch_start"]``, ``loop.total``, ``pending.*``).
#: Version 2 files (always at an epoch's end) read as they are.
CHECKPOINT_VERSION = 3
OLDEST_READABLE = 2


class Interrupted(Exception):
    """Raised by the loop after it saved a checkpoint because a stop signal arrived.

    ``epoch`` is the last complete epoch; ``rows`` is None at an epoch's end, or
    ``(done, n)`` when the run stopped inside the next epoch after ``done`` of its ``n`` rows
    (``(done, n, what)`` names them, e.g. "training rows").
    """

    def __init__(self, signum: int, epoch: int, rows: tuple | None = None):
        self.signum, self.epoch, self.rows = signum, epoch, rows
        super().__init__(f"interrupted by signal {signum} {self.where}")

    @property
    def where(self) -> str:
        """'after epoch 3', or 'in epoch 4 after 1200 of 4000 rows'."""
        if self.rows is None:
            return f"after epoch {self.epoch}"
        return f"in epoch {self.epoch + 1} after {self.rows[0]} of {self.rows[1]} {(*self.rows, 'rows')[2]}"


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
    """Write a checkpoint: ``checkpoint.json`` and the tensor file it names, as one atomic unit
    (:func:`gradfit._files.commit_pair`), so a SIGKILL or a full disk at any moment leaves the
    previous complete checkpoint or the new one."""
    from safetensors.torch import save as st_save

    from .._files import commit_pair

    folder = Path(folder)
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    body = {"format": "gradfit.checkpoint", "version": CHECKPOINT_VERSION,
            "tensors_sha256": hashlib.sha256(blob).hexdigest(), **_json_safe(meta)}

    def render(name: str) -> str:
        return json.dumps({**body, "tensors_file": name}) + "\n"

    commit_pair(folder / "checkpoint.json", blob, "checkpoint.safetensors", render)


def load_checkpoint(folder) -> tuple[dict, dict]:
    """Read and verify a checkpoint: ``(tensors, meta)``.

    Raises
    ------
    PersistError
        No checkpoint, not a gradfit checkpoint, another version, or damaged.
    """
    from safetensors.torch import load as st_load

    from .._files import TOO_DEEP, parse_json

    folder = Path(folder)
    meta_path = folder / "checkpoint.json"
    if not meta_path.exists():
        raise PersistError(f"{folder}: no checkpoint to resume from (run without --resume first)")
    try:
        meta = parse_json(meta_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PersistError(f"{meta_path}: damaged checkpoint (not valid JSON)") from None
    except (ValueError, MemoryError) as exc:  # nested too deeply or too large
        raise PersistError(f"{meta_path}: damaged checkpoint ({exc or 'too large to read'})") from None
    # a checkpoint.json that is a symbolic link: its tensor file sits beside the file it points
    # to (where save_checkpoint put it)
    folder = Path(os.path.realpath(meta_path)).parent
    if not isinstance(meta, dict) or meta.get("format") != "gradfit.checkpoint":
        raise PersistError(f"{meta_path}: not a gradfit checkpoint")
    version = meta.get("version", 0)
    if not isinstance(version, int):
        raise PersistError(f"{meta_path}: damaged checkpoint (version is not an integer)")
    if version > CHECKPOINT_VERSION:
        raise PersistError(f"{meta_path}: written by a newer gradfit; upgrade to resume")
    if version < OLDEST_READABLE:
        raise PersistError(f"{meta_path}: written by an older gradfit (checkpoint version {meta.get('version')}); "
                           "start afresh without --resume")
    # files written before the pair was committed as one unit have no "tensors_file"
    blob_path = folder / Path(str(meta.get("tensors_file", "checkpoint.safetensors"))).name
    if not blob_path.exists():
        raise PersistError(f"{blob_path}: the checkpoint's tensor file is missing; start afresh without --resume")
    blob = blob_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise PersistError(f"{blob_path}: checksum mismatch; the checkpoint is damaged")
    meta.pop("tensors_file", None)
    try:
        _check_counters(meta.get("counters"), meta_path)
        restored = _json_restore(meta)
    except RecursionError:  # parsed, but too deep to walk under this stack
        raise PersistError(f"{meta_path}: damaged checkpoint ({TOO_DEEP})") from None
    return st_load(blob), restored


def _check_counters(counters, path) -> None:
    """``counters`` is ``{"epoch": int >= 0}``, with ``"batch_start": int >= 0`` when the
    checkpoint stopped inside an epoch."""
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    ok = (isinstance(counters, dict) and count(counters.get("epoch"))
          and set(counters) <= {"epoch", "batch_start"} and count(counters.get("batch_start", 0)))
    if not ok:
        raise PersistError(f"{path}: damaged checkpoint (counters {counters!r}); start afresh without --resume")


def data_fingerprint(objective) -> str:
    """SHA-256 of the training data an objective fits: the training and validation inputs
    (by name), targets and weights, with their shapes and dtypes, so that a resumed run refuses
    other data, other rows, or another train/validation split."""
    import torch

    h = hashlib.sha256()
    for part in ("train", "val"):
        data = getattr(objective, part, None)
        h.update(f"[{part}]".encode())
        if data is None:
            continue
        items = [(f"x:{k}", v) for k, v in sorted(data.inputs.items())] + [("y", data.y), ("w", data.weights)]
        for name, t in items:
            if t is None:
                h.update(f"{name}=None;".encode())
                continue
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Checkpointer(Callback):
    """The checkpoint callback: saves the run's complete state every ``every_epochs`` epochs or
    ``every_seconds`` seconds, after the run's last epoch (so a finished run can be continued
    with more epochs), and at once when a stop signal arrives (a handler sets ``signal`` to its
    number), after which it raises :class:`Interrupted`.

    ``fingerprint`` (set by the caller) identifies the fit, so that resuming refuses another one.
    The loop runs it after every other callback, so a checkpoint holds their state after the epoch.
    """

    def __init__(self, folder, every_epochs: int | None = None, every_seconds: float | None = 60.0):
        import time

        self.folder = Path(folder)
        self.every_epochs = every_epochs
        self.every_seconds = every_seconds
        self.signal: int | None = None
        self.fingerprint: str | None = None
        #: the run's total epochs (set by the caller): a resumed run whose schedule is sized by it must keep it
        self.epochs: int | None = None
        self.data_sha256: str | None = None
        self._last = time.monotonic()

    def before_fit(self, loop) -> None:
        # hashed once, before training touches anything: a resumed run compares it (restore_state)
        self.data_sha256 = data_fingerprint(loop.objective)

    def due(self, epoch: int) -> bool:
        import time

        if self.every_epochs and epoch % self.every_epochs == 0:
            return True
        return bool(self.every_seconds) and time.monotonic() - self._last >= self.every_seconds

    def save(self, tensors: dict, meta: dict) -> None:
        import time

        from .distributed import is_writer, process_group

        if is_writer():  # under torchrun rank 0 writes; every rank holds the same state
            self.folder.mkdir(parents=True, exist_ok=True)
            save_checkpoint(self.folder, tensors, {**meta, "fingerprint": self.fingerprint,
                                                   "data_sha256": self.data_sha256, "epochs": self.epochs,
                                                   "world_size": process_group()[1]})
        self._last = time.monotonic()

    def after_epoch(self, loop) -> None:
        # the last epoch always saves, so a finished run can be continued with more epochs
        if self.signal is None and not self.due(loop.epoch) and loop.epoch < loop.total_epochs:
            return
        self.save(*capture_state(loop))
        if self.signal is not None:
            raise Interrupted(self.signal, loop.epoch)


def capture_state(loop) -> tuple[dict, dict]:
    """Everything a loop needs to continue bit-for-bit: (tensors, JSON-able metadata).

    ``loop`` is train/loop.py's ``LoopState``: its objective's parameters and divergence copies,
    the optimizer, the random generators, the history and each callback's ``state_dict()``.
    """
    import torch

    objective = loop.objective
    tensors = {f"leaf.{i}": t for i, t in enumerate(objective.leaves)}
    for i, t in enumerate(objective.divergence_state()):
        tensors[f"good.{i}"] = t
    for k, t in objective.extra_state().items():
        tensors[f"objective.{k}"] = t
    opt = loop.optimizer.state_dict()
    opt_meta = {"param_groups": opt["param_groups"], "state": {}}
    for pid, st in opt["state"].items():
        opt_meta["state"][str(pid)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                # L-BFGS keeps lists of tensors (and None) in its state: each tensor goes to
                # the weights file, the list's shape to the JSON
                opt_meta["state"][str(pid)][k] = _encode_nested(v, f"optlist.{pid}.{k}", tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    counters = {"epoch": loop.epoch}
    if loop.position is not None:  # between two minibatches of epoch loop.epoch
        generator_state, start, total = loop.position
        counters = {"epoch": loop.epoch - 1, "batch_start": start}
        tensors["rng.batch"], tensors["loop.total"] = generator_state, total
        for i, t in enumerate(objective.divergence_state(pending=True)):
            tensors[f"pending.{i}"] = t
    elif loop.generator is not None:
        tensors["rng.batch"] = loop.generator.get_state()
    if getattr(objective, "noise_generator", None) is not None:
        tensors["rng.noise"] = objective.noise_generator.get_state()
    callbacks = {}
    for key, cb in _stateful(loop.callbacks):
        callbacks[key] = _encode(cb.state_dict(), f"cb.{key}", tensors)
    meta = {"counters": counters, "history": loop.history, "best_epoch": loop.best_epoch,
            "optimizer": opt_meta, "callbacks": callbacks}
    return tensors, meta


def restore_state(resume: tuple, loop) -> None:
    """Load a captured state into a fresh loop and its callbacks (the inverse of capture_state)."""
    import torch

    tensors, meta = resume
    objective = loop.objective
    saved_data = meta.get("data_sha256")
    if saved_data is not None and saved_data != data_fingerprint(objective):
        raise PersistError("the checkpoint was trained on different data (other rows, values, weights or "
                           "train/validation split); resume with the same data file, or start afresh "
                           "without --resume")
    with torch.no_grad():
        for i, t in enumerate(objective.leaves):
            t.copy_(tensors[f"leaf.{i}"])
    objective.load_divergence_state(_numbered(tensors, "good"))
    objective.load_extra_state({k[len("objective."):]: v for k, v in tensors.items() if k.startswith("objective.")})
    opt_meta = meta["optimizer"]
    state = {}
    for pid, st in opt_meta["state"].items():
        entry = {k: _decode_nested(v, tensors) for k, v in st.items()}
        prefix = f"opt.{pid}."
        entry.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        state[int(pid)] = entry
    loop.optimizer.load_state_dict({"state": state, "param_groups": opt_meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if loop.generator is not None and "rng.batch" in tensors:
        loop.generator.set_state(tensors["rng.batch"])
    if getattr(objective, "noise_generator", None) is not None and "rng.noise" in tensors:
        objective.noise_generator.set_state(tensors["rng.noise"])
    loop.history = {k: list(v) for k, v in meta["history"].items()}
    loop.best_epoch = meta.get("best_epoch")
    loop.epoch = loop.epochs_run = meta["counters"]["epoch"]
    if "batch_start" in meta["counters"]:
        objective.load_divergence_state(_numbered(tensors, "pending"), pending=True)
        loop.position = (tensors["rng.batch"], meta["counters"]["batch_start"], tensors["loop.total"])
    saved = meta.get("callbacks", {})
    for key, cb in _stateful(loop.callbacks):
        if key in saved:
            cb.load_state_dict(_decode(saved[key], f"cb.{key}", tensors))


def _stateful(callbacks):
    """(key, callback) for each callback with a state_dict; the key is its class name, numbered
    from the second of a kind on."""
    seen: dict = {}
    for cb in callbacks:
        if not hasattr(cb, "state_dict"):
            continue
        name = type(cb).__name__
        seen[name] = seen.get(name, 0) + 1
        yield (name if seen[name] == 1 else f"{name}#{seen[name]}"), cb


def _encode(state: dict, prefix: str, tensors: dict) -> dict:
    """A callback's state_dict -> its JSON part; tensors (and lists of them) go to ``tensors``."""
    import torch

    out = {}
    for name, v in state.items():
        if isinstance(v, torch.Tensor):
            tensors[f"{prefix}.{name}"] = v
            out[name] = {"__tensor__": True}
        elif isinstance(v, (list, tuple)) and v and all(isinstance(t, torch.Tensor) for t in v):
            for i, t in enumerate(v):
                tensors[f"{prefix}.{name}.{i}"] = t
            out[name] = {"__tensors__": len(v)}
        else:
            out[name] = v
    return out


def _decode(doc: dict, prefix: str, tensors: dict) -> dict:
    out = {}
    for name, v in doc.items():
        if isinstance(v, dict) and set(v) == {"__tensor__"}:
            out[name] = tensors[f"{prefix}.{name}"]
        elif isinstance(v, dict) and set(v) == {"__tensors__"}:
            out[name] = [tensors[f"{prefix}.{name}.{i}"] for i in range(v["__tensors__"])]
        else:
            out[name] = v
    return out


def _numbered(tensors: dict, prefix: str) -> list:
    """[tensors[f"{prefix}.0"], tensors[f"{prefix}.1"], ...] for as many as there are."""
    out = []
    while f"{prefix}.{len(out)}" in tensors:
        out.append(tensors[f"{prefix}.{len(out)}"])
    return out


def _encode_nested(value, key: str, tensors: dict):
    """``value`` for the JSON part, with every tensor inside lists or tuples moved to
    ``tensors`` under ``key.i...`` and left as a pointer ``{"__tensor__": name}``; tensors are
    cloned so that no two share memory (safetensors refuses shared storage)."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(value, (list, tuple)):
        return {"__list__": [_encode_nested(v, f"{key}.{i}", tensors) for i, v in enumerate(value)],
                "tuple": isinstance(value, tuple)}
    return value


def _decode_nested(value, tensors: dict):
    """The inverse of :func:`_encode_nested`."""
    if isinstance(value, dict) and set(value) == {"__tensor__"} and isinstance(value["__tensor__"], str):
        return tensors[value["__tensor__"]]
    if isinstance(value, dict) and set(value) == {"__list__", "tuple"}:
        items = [_decode_nested(v, tensors) for v in value["__list__"]]
        return tuple(items) if value["tuple"] else items
    return value
