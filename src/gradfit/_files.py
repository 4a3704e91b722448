"""Atomic file writes: the bottom layer every writer in gradfit uses.

Atomic means: write a temporary file in the same folder, fsync it, then ``os.replace`` it
over the target, so a reader (or a crash) only ever sees the old or the new complete file.

Files are created with mode ``0o666`` filtered by the process umask (``os.open`` applies the
umask itself), as ordinary tools do: umask 022 gives 0644, umask 077 gives 0600.

:func:`commit_pair` changes a JSON document and the binary file it names (a model's or a
checkpoint's weights) as one atomic unit; see its notes.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "commit_pair"]

_FILE_MODE = 0o666  # before the umask, as open(..., "w") and shell redirections use


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, exclusive temporary file ``.<name>.<random>.tmp`` in ``folder``: (fd, path)."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, _FILE_MODE), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: could not create a temporary file for {name}")


def atomic_write_bytes(path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that the file is either old-and-complete or new-and-complete.

    The file gets mode ``0o666 & ~umask``. Raises ``OSError`` (the target is left untouched and
    the temporary file removed) when the disk is full or the folder is not writable.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(target.parent, target.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _remove(tmp)
        raise
    _rename_into_place(tmp, target)


def _remove(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _rename_into_place(tmp, target: Path) -> None:
    """Rename a complete temporary file over ``target`` (removing it if that fails) and make
    the rename durable: the one commit step of every write here."""
    try:
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _link_or_copy(src: Path, target: Path, blob: bytes) -> None:
    """Make ``target`` hold ``blob`` (the content of ``src``) atomically: a hard link of ``src``
    renamed over ``target`` where the file system has links, else an atomic copy."""
    tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        os.link(src, tmp)
    except OSError:
        atomic_write_bytes(target, blob)
        return
    _rename_into_place(tmp, target)


def staged_name(stable_name: str, blob: bytes) -> str:
    """``model.safetensors`` -> ``model.<16 hex of the SHA-256>.safetensors``."""
    stem, dot, ext = stable_name.partition(".")
    return f"{stem}.{hashlib.sha256(blob).hexdigest()[:16]}{dot}{ext}"


def _staged_pattern(stable_name: str) -> re.Pattern:
    stem, dot, ext = stable_name.partition(".")
    return re.compile(re.escape(stem) + r"\.[0-9a-f]{16}" + re.escape(dot + ext) + r"\Z")


#: seconds after which a temporary file no writer renamed is taken as left by a crash
STALE_TEMPORARY_S = 600.0


def commit_pair(doc_path, blob: bytes, stable_name: str, render) -> None:
    """Replace a JSON document and the binary file it names as ONE atomic unit.

    Parameters
    ----------
    doc_path : str or path
        The document (``model.json``, ``checkpoint.json``).
    blob : bytes
        The binary file's new content (a safetensors payload).
    stable_name : str
        The binary file's usual name beside the document (``model.safetensors``).
    render : callable
        ``render(name) -> str``: the document's text when it names the binary file ``name``.

    Notes
    -----
    Readers follow the name written in the document, and the document is only ever replaced by
    an atomic rename, so every reader (and every crash) sees a document that names a complete
    binary file with the right content:

    1. write ``blob`` to ``<stem>.<sha-prefix>.<ext>`` (new name, fsync);
    2. replace the document by one naming that file: **the commit point**; the previous
       binary file is untouched until then, so a failure before this step (a full disk) leaves
       the previous pair complete;
    3. hard-link (or copy) it to ``stable_name``, which the document no longer names;
    4. replace the document by one naming ``stable_name``;
    5. remove the staged file, and any left by an earlier crash (temporary files too, once
       older than :data:`STALE_TEMPORARY_S`).

    A crash after step 2 leaves the new pair; steps 3 to 5 are redone by the next save.

    Examples
    --------
    >>> commit_pair("out/model.json", blob, "model.safetensors", lambda name: json.dumps({"file": name}))
    ... # doctest: +SKIP
    """
    doc_path = Path(doc_path)
    folder = doc_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    staged = staged_name(stable_name, blob)
    atomic_write_bytes(folder / staged, blob)
    atomic_write_text(doc_path, render(staged))  # the commit point
    try:
        _link_or_copy(folder / staged, folder / stable_name, blob)
        atomic_write_text(doc_path, render(stable_name))
    except OSError:
        return  # the new pair is committed under the staged name; the next save tidies up
    pattern = _staged_pattern(stable_name)
    # temporary files a killed writer left (.<name>.<hex>.tmp); a recent one may belong to a
    # save running in another process right now, so only old ones go
    stem, dot, ext = stable_name.partition(".")
    names = "|".join([re.escape(doc_path.name), re.escape(stable_name),
                      re.escape(stem) + r"\.[0-9a-f]{16}" + re.escape(dot + ext)])
    temporary = re.compile(r"\.(" + names + r")\.[0-9a-f]{12}\.tmp\Z")
    stale_before = time.time() - STALE_TEMPORARY_S
    for leftover in folder.iterdir():
        try:
            if pattern.match(leftover.name) or (temporary.match(leftover.name)
                                                and leftover.stat().st_mtime < stale_before):
                leftover.unlink()
        except OSError:
            pass
