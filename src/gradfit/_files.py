"""Atomic file writes and the reading of JSON from outside: the bottom layer every writer
(and every JSON reader) in gradfit uses.

Atomic means: write a temporary file in the same folder, fsync it, then ``os.replace`` it
over the target, so a reader (or a crash) only ever sees the old or the new complete file.

Files are created with mode ``0o666`` filtered by the process umask (``os.open`` applies the
umask itself), as ordinary tools do: umask 022 gives 0644, umask 077 gives 0600. A file that is
replaced keeps its permission bits (and, where the writer may set them, its owner).

The target is what the path names, as GNU tools (``sed -i --follow-symlinks``, ``cp``) treat it:
a symbolic link is followed and the file it points to is replaced (the link stays a link; a
dangling link gets the file it names created); a path that names a FIFO, a character or block
device or a socket (``/dev/stdout``, ``/dev/null``, a named pipe) is written straight into, since
atomicity means nothing for a stream and renaming over it would destroy it.

:func:`commit_pair` changes a JSON document and the binary file it names (a model's or a
checkpoint's weights) as one atomic unit; see its notes. :func:`parse_json` reads JSON that
may come from anyone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import stat
import time
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "commit_pair", "parse_json", "resolve_target",
           "unwritable", "JSONTooDeepError", "TOO_DEEP"]

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


def resolve_target(path) -> tuple[Path, str, os.stat_result | None]:
    """What a write to ``path`` changes and how: ``(file, how, its stat or None if new)``.

    ``how`` is ``"replace"`` (a regular file, or none yet: written atomically), ``"stream"`` (a
    FIFO, device or socket: written straight into) or ``"append"`` (a regular file reached through
    ``/proc/<pid>/fd``, such as ``/dev/stdout`` redirected to a file: appended to the file the
    shell opened, so nothing already written there is lost). A symbolic link (a chain of them,
    in any folder of the path) resolves to the file it points to, existing or not; a stream is
    returned as given, since ``/dev/stdout`` must be opened through its link, whose last hop
    (``/proc/self/fd/1`` -> ``pipe:[...]``) is not a path.

    Raises
    ------
    OSError
        A loop of links, or a folder on the way that cannot be searched.
    """
    given = Path(path)
    try:
        info = os.stat(given)  # follows every link
    except FileNotFoundError:
        info = None
    if info is not None and not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return given, "stream", info
    if info is not None and stat.S_ISREG(info.st_mode) and _through_descriptor(given):
        return given, "append", info
    return Path(os.path.realpath(given)), "replace", info


_DESCRIPTOR_LINK = re.compile(r"/proc/[^/]+/fd/[0-9]+\Z")


def _through_descriptor(path: Path) -> bool:
    """Whether ``path``'s chain of links passes through an open descriptor's link
    (``/proc/<pid>/fd/N``: ``/dev/stdout``, ``/dev/fd/N``), which ``realpath`` would turn into the
    path of the file the descriptor was opened on."""
    hop = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on a chain of links
        hop = os.path.join(os.path.realpath(os.path.dirname(hop)), os.path.basename(hop))
        if _DESCRIPTOR_LINK.match(hop):
            return True
        if not os.path.islink(hop):
            return False
        hop = os.path.join(os.path.dirname(hop), os.readlink(hop))
    return False


def _write_stream(target: Path, payload: bytes, append: bool) -> None:
    """Write ``payload`` straight into a FIFO, device or socket (or, through ``/dev/stdout``, the
    file a shell redirected it to: appended, so nothing already written there is lost)."""
    flags = os.O_WRONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0) | (os.O_APPEND if append else 0)
    fd = os.open(target, flags)
    try:
        view = memoryview(payload)
        while view:  # a pipe takes a large payload in pieces
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def atomic_write_bytes(path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that the file is either old-and-complete or new-and-complete.

    ``path`` may be a symbolic link (the file it points to is replaced; a dangling link gets
    its file created) or name a stream such as a FIFO, ``/dev/stdout`` or ``/dev/null`` (written
    straight into, never replaced). A new file gets mode ``0o666 & ~umask``; a replaced file
    keeps its mode (and its owner, where the writer may set it). Replacing is a rename, so a
    hard link to the old file keeps the old content: it is no longer the same file.

    Raises
    ------
    PersistError
        (an OSError) The path is a folder, its folder cannot be created or written, the disk is
        full, or the links loop; the message names the path and what to do. The target is left
        untouched and the temporary file removed.
    """
    try:
        _write_bytes(path, payload)
    except OSError as exc:
        raise unwritable(path, exc) from None


def unwritable(path, exc: OSError):
    """The :class:`~gradfit.errors.PersistError` for an OSError met while writing ``path``: one
    line naming the path, the system's reason and what to do (every writer's failures read the
    same). A PersistError is returned as it is."""
    # imported here: tests load this module on its own, as a file, in a child process
    from .errors import PersistError

    if isinstance(exc, PersistError):
        return exc
    path = Path(path)
    reason = exc.strerror or str(exc)
    if path.is_dir() or exc.errno == errno.EISDIR:
        return PersistError(f"cannot write {path}: it is a folder; give a file name such as {path / 'out'}")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return PersistError(f"cannot write {path}: {blocker} is a file, not a folder; choose another path")
    hint = {errno.ENOSPC: "free some space or choose another disk",
            errno.EDQUOT: "free some space or choose another disk",
            errno.EACCES: "choose a folder you may write to",
            errno.EPERM: "choose a folder you may write to",
            errno.EROFS: "the file system is read-only; choose another folder",
            errno.ENOENT: (f"new files cannot be created in {path.parent}" if path.parent.is_dir() else
                           f"its folder {path.parent} cannot be created") + "; choose another folder",
            errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
            errno.ELOOP: "the symbolic links on the path form a loop"}.get(exc.errno, "choose another path")
    return PersistError(f"cannot write {path}: {reason}; {hint}")


def _write_bytes(path, payload: bytes) -> None:
    target, how, info = resolve_target(path)
    if how != "replace":
        _write_stream(target, payload, append=how == "append")
        return
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(target.parent, target.name)
    try:
        if info is not None:
            _keep_owner_and_mode(fd, info)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        _remove(tmp)
        raise
    _rename_into_place(tmp, target)


def _keep_owner_and_mode(fd: int, info: os.stat_result) -> None:
    """Give the new file the replaced one's owner (only root may; others keep their own) and
    then its mode (after the owner: a change of owner clears set-id bits)."""
    if not hasattr(os, "fchown"):  # Windows: no owners or mode bits to carry over
        return
    if (info.st_uid, info.st_gid) != (os.geteuid(), os.getegid()):
        try:
            os.fchown(fd, info.st_uid, info.st_gid)
        except OSError:
            pass
    os.fchmod(fd, stat.S_IMODE(info.st_mode))


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
    """:func:`atomic_write_bytes` of ``text`` in UTF-8 (links, streams and modes as there)."""
    atomic_write_bytes(path, text.encode("utf-8"))


class JSONTooDeepError(ValueError):
    """JSON nested deeper, or larger, than Python can parse (a ValueError, as malformed JSON is)."""


def parse_json(text: str | bytes):
    """``json.loads`` for text that may come from anyone: every way it can fail is a ValueError.

    Malformed text raises ``json.JSONDecodeError`` (with ``msg``, ``lineno``) as usual; text
    nested deeper than Python's recursion limit (``[[[...]]]`` 100,000 deep) or too large to
    hold raises :class:`JSONTooDeepError`, a ValueError with a one-line message, instead of
    a RecursionError or MemoryError. Callers that walk the result recursively (a checksum's
    ``json.dumps``) should still catch RecursionError: a document just under the limit parses
    here but may not fit under a deeper stack.

    >>> parse_json('{"a": [1, 2]}')
    {'a': [1, 2]}
    >>> try:
    ...     parse_json("[" * 100_000 + "]" * 100_000)
    ... except ValueError as exc:
    ...     print(exc)
    nested too deeply for Python to read, past its recursion limit of about 1000 levels
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONTooDeepError(TOO_DEEP) from None
    except MemoryError:
        raise JSONTooDeepError(f"too large to parse in the memory available ({len(text):,} characters)") from None


#: the message of JSON (or a structure parsed from it) nested too deeply for Python
TOO_DEEP = "nested too deeply for Python to read, past its recursion limit of about 1000 levels"


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

    A ``doc_path`` that is a symbolic link is followed: the pair is written beside the file it
    points to (the link stays a link). A FIFO or device is refused (:class:`PersistError`, an
    OSError): a pair needs a folder.

    Examples
    --------
    >>> commit_pair("out/model.json", blob, "model.safetensors", lambda name: json.dumps({"file": name}))
    ... # doctest: +SKIP
    """
    # a symbolic link to the document: the pair goes beside the file it points to, where the
    # readers (which resolve the document's path the same way) look for the binary file
    doc_path, how, _ = resolve_target(doc_path)
    if how != "replace":
        from .errors import PersistError

        raise PersistError(f"cannot write {doc_path}: a document and the file it names need a folder; "
                           "this is a stream, not a file path")
    folder = doc_path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(doc_path, exc) from None
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
