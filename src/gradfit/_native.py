"""C source -> a loaded shared library, built once by the system C compiler and kept on disk.

gradfit's native kernels (:mod:`gradfit.optim.native_lm`) are C programs generated per formula.
torch.compile reaches the same speed but takes 9-40 s to compile a kernel on a 2-core CPU; a
C compiler takes ~0.1-0.3 s for these few hundred lines, and a library already on disk loads in
about a millisecond, so a later process pays nothing.

- Compiler: ``$GRADFIT_CC`` (a name or path; ``GRADFIT_CC=""`` turns native kernels off), else
  the first of ``cc``, ``gcc``, ``clang`` on the PATH. No compiler: :func:`load` returns None
  with the reason, and callers run their torch kernels.
- Flags: ``-O3`` (or the ``level`` a caller asks for) ``-fPIC -shared -fno-math-errno
  -ffp-contract=off -fopenmp-simd -march=native``
  (no ``-ffast-math``: NaN and inf keep their IEEE meaning, which the kernels test; no
  contraction into FMA; ``omp simd`` loops vectorize without a runtime library), linked with
  glibc's vector math library ``libmvec`` where it exists (SIMD exp/log/sin/cos/pow, within 4 ulp),
  else plain ``libm`` (and without ``-march=native`` where the compiler refuses it). A library is built for this CPU (``-march=native``), so the CPU's model
  and flags are part of its cache key: a cache folder shared by different machines holds one
  library per CPU kind.
- Cache: ``<folder>/native/<sha256>.so`` (``folder`` is gradfit's cache folder,
  :func:`gradfit.formula.cache.cache_dir`), the hash over the source, the flags, the compiler's
  path and the CPU, with the source kept beside it as ``.c`` and the library's sha256 as
  ``.sha256``. A library is built into a temporary file and renamed into place, so concurrent
  processes never load half a file, and one whose bytes no longer match its digest (truncated
  by a full disk or an interrupted copy: loading it would kill the process with SIGBUS) is
  built again.
- Trust: a shared library is code. One is loaded from the cache only when it and its folder
  belong to this user and nobody else may write them (as ssh treats its keys); libraries are
  written with mode 0755 whatever the umask. Otherwise (a shared or read-only cache, or no cache
  folder) the library is built in a private temporary folder, loaded, and the folder removed.
- Failure: a compiler that fails or times out (``BUILD_TIMEOUT_S``) is not run again in the
  process; callers run their torch kernels and say why.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["FLAGS", "compiler", "is_built", "load"]

FLAGS = ("-fPIC", "-shared", "-fno-math-errno", "-ffp-contract=off", "-fopenmp-simd")
#: the optimization level of a kernel unless its caller asks for another (``level=``)
LEVEL = "-O3"
#: (compile flags, link flags) tried in order until one builds: for this CPU with glibc's vector
#: math library (-DGF_VECTOR_MATH makes the C prelude declare SIMD forms of exp, log, sin and
#: cos), for this CPU alone, then generic code (a compiler without -march=native)
VARIANTS = ((("-march=native", "-DGF_VECTOR_MATH"), ("-lmvec",)), (("-march=native",), ()), ((), ()))
#: seconds a compiler run may take before the kernel is given up (then: torch kernels)
BUILD_TIMEOUT_S = 60
_LOADED: dict = {}  # key -> ctypes.CDLL (or None and the reason), for this process
_BROKEN: dict = {}  # compiler -> why it failed: it is not run again in this process
_LOCK = threading.Lock()


def compiler() -> str | None:
    """The C compiler's path, or None (none found, or ``GRADFIT_CC=""``)."""
    explicit, path = os.environ.get("GRADFIT_CC"), os.environ.get("PATH", "")
    if (explicit, path) not in _COMPILERS:
        if explicit is not None:
            found = shutil.which(explicit.strip()) if explicit.strip() else None
        else:
            found = next(filter(None, (shutil.which(name) for name in ("cc", "gcc", "clang"))), None)
        _COMPILERS[(explicit, path)] = found
    return _COMPILERS[(explicit, path)]


_COMPILERS: dict = {}


def _cpu() -> str:
    """What identifies this CPU's instruction set (the libraries are built for it with
    -march=native): the model and flags lines of /proc/cpuinfo, else the platform's names."""
    if not _CPU:
        text = ""
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                lines = [line for line in f.read(1 << 16).splitlines() if line.startswith(("model name", "flags"))]
            text = "\n".join(lines[:2])
        except OSError:
            pass
        _CPU.append(text or f"{platform.machine()} {platform.processor()}")
    return _CPU[0]


_CPU: list = []


def _private(path: Path) -> bool:
    """True when ``path`` exists, belongs to this user and no one else may write it."""
    try:
        info = path.stat()
    except OSError:
        return False
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return False
    return not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _key(source: str, cc: str, level: str) -> str:
    parts = [source, level, *FLAGS, repr(VARIANTS), cc, platform.machine(), platform.system(), _cpu()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def is_built(source: str, folder: Path | None, *, level: str = LEVEL) -> bool:
    """True when :func:`load` would not run the compiler: the library is loaded in this process
    or lies in the cache (cheap: no compiler run, no load)."""
    cc = compiler()
    if cc is None:
        return False
    key = _key(source, cc, level)
    if key in _LOADED:
        return _LOADED[key][0] is not None
    library = None if folder is None else folder / "native" / f"{key}.so"
    return library is not None and _private(library.parent) and _private(library) and \
        library.with_suffix(".sha256").exists()


def load(source: str, folder: Path | None, *, level: str = LEVEL):
    """The library built from ``source``: ``(ctypes.CDLL, "")``, or ``(None, reason)`` when no
    compiler is found or the build fails. ``folder``: gradfit's cache folder (None: no disk
    cache). Each library is built at most once per process and per cache."""
    cc = compiler()
    if cc is None:
        return None, "no C compiler (set GRADFIT_CC, or install cc)"
    key = _key(source, cc, level)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = _build_or_read(source, key, cc, folder, level)
        return _LOADED[key]


def _build_or_read(source: str, key: str, cc: str, folder: Path | None, level: str):
    import ctypes

    if cc in _BROKEN:  # this compiler failed on an earlier kernel of this process: not again
        return None, _BROKEN[cc]
    cache = _private_cache(folder)
    if cache is not None:
        target = cache / f"{key}.so"
        if _private(target) and _intact(target):
            try:
                return ctypes.CDLL(str(target)), ""
            except OSError:
                pass  # damaged or foreign: built again below
        try:
            return _compile(source, key, cc, cache, level)
        except OSError:
            pass  # the cache cannot be written (read-only, full): a private build below
    # no usable cache: build in a private temporary folder, removed once the library is loaded
    # (the loaded library stays mapped)
    try:
        with tempfile.TemporaryDirectory(prefix="gradfit-native-", ignore_cleanup_errors=True) as private:
            return _compile(source, key, cc, Path(private), level)
    except OSError as exc:
        return None, f"the C kernel could not be built or loaded: {exc}"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(library: Path) -> bool:
    """Whether a cached library is the file that was built: its sha256 matches the one written
    beside it (``<key>.sha256``). A truncated library (a full disk, an interrupted copy) is
    mapped by the loader and kills the process with SIGBUS when its missing pages are touched,
    so it must never reach ctypes; one without a digest (an older gradfit's) is rebuilt too."""
    try:
        return (library.with_suffix(".sha256").read_text(encoding="ascii").strip()
                == _digest(library))
    except (OSError, UnicodeDecodeError):
        return False


def _private_cache(folder: Path | None) -> Path | None:
    """``folder/native``, made if needed, when it belongs to this user and no one else may write
    it; else None."""
    if folder is None:
        return None
    cache = folder / "native"
    try:
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return cache if _private(cache) else None


def _compile(source: str, key: str, cc: str, folder: Path, level: str):
    """Build ``source`` into ``folder/<key>.so`` (a temporary name, then renamed) and load it:
    ``(ctypes.CDLL, "")`` or ``(None, reason)`` when the compiler fails. Raises OSError when
    ``folder`` cannot be written."""
    import ctypes

    src = folder / f".{key}.{os.getpid()}.{threading.get_ident()}.c"
    tmp = src.with_suffix(".so")
    try:
        src.write_text(source, encoding="utf-8")
        try:
            for compile_flags, link_flags in VARIANTS:
                done = subprocess.run([cc, level, *FLAGS, *compile_flags, "-o", str(tmp), str(src), *link_flags, "-lm"],
                                      capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
                if done.returncode == 0:
                    break
        except subprocess.TimeoutExpired:
            _BROKEN[cc] = f"the C compiler ({cc}) took over {BUILD_TIMEOUT_S} s"
            return None, _BROKEN[cc]
        if done.returncode != 0:
            lines = (done.stderr or done.stdout or "").strip().splitlines()
            _BROKEN[cc] = f"the C compiler failed ({cc}): {lines[0] if lines else done.returncode}"
            return None, _BROKEN[cc]
        # whatever the umask: writable by this user alone (a group-writable file is not trusted)
        os.chmod(tmp, 0o755)
        os.chmod(src, 0o644)
        digest = folder / f".{key}.{os.getpid()}.{threading.get_ident()}.sha256"
        digest.write_text(_digest(tmp), encoding="ascii")
        os.replace(tmp, folder / f"{key}.so")
        os.replace(digest, folder / f"{key}.sha256")
        os.replace(src, folder / f"{key}.c")
        try:
            return ctypes.CDLL(str(folder / f"{key}.so")), ""
        except OSError as exc:
            return None, f"the C kernel could not be loaded: {exc}"
    finally:
        for leftover in (src, tmp, folder / f".{key}.{os.getpid()}.{threading.get_ident()}.sha256"):
            try:
                leftover.unlink()
            except OSError:
                pass
