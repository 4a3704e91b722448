"""A disk cache for symbolic results, so that a process never imports sympy (~0.4 s) nor
differentiates (~0.1 s) a formula that an earlier process already handled.

Entries are JSON documents, one file per result, named by the SHA-256 of a canonical JSON
key: the kind of result, its inputs (expression trees encoded as data by
:func:`encode_tree`), gradfit's and sympy's versions and :data:`FORMAT`. sympy's version is
read from the installed package's metadata, which does not import sympy. A new sympy or
gradfit therefore misses every old entry. The file repeats its key, which must match.

The cache is an accelerator and never an error: an entry that cannot be read, decoded or
checked is recomputed and rewritten, and a cache that cannot be written (read-only folder,
full disk) is skipped silently. Each loaded entry also passes a caller's numerical check
(:mod:`gradfit.formula.symbolic` evaluates the program at a random point), because anyone
who can write the folder could plant a wrong derivative.

Location: ``$GRADFIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/gradfit``, else
``~/.cache/gradfit``; entries live in its ``symbolic/`` folder. ``GRADFIT_CACHE_DIR=""``
turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

from .._files import atomic_write_text
from .._version import __version__
from .compile import apply_binop
from .functions import FUNCTIONS, fold
from .tree import BINARY_OPS, CONSTANTS, BinOp, Call, Const, Neg, Node, Num, Var

__all__ = ["FORMAT", "cache_dir", "cached", "decode_tree", "encode_tree", "evaluate", "random_points"]

#: bump when what symbolic.py computes (or how it is stored) changes within one gradfit version
FORMAT = 2  # 2: x**n * log(x) written xlogy(x**n, x)
_SUBDIR = "symbolic"


def cache_dir() -> Path | None:
    """The folder of gradfit's caches, or None when the cache is off (``GRADFIT_CACHE_DIR=""``)
    or no folder can be named (no home directory). Remembered per value of the environment
    variables it reads (pathlib's home lookup costs ~20 us, asked on every fit)."""
    env = os.environ
    key = (env.get("GRADFIT_CACHE_DIR"), env.get("XDG_CACHE_HOME"), env.get("HOME"))
    if key not in _CACHE_DIRS:
        _CACHE_DIRS[key] = _cache_dir()
    return _CACHE_DIRS[key]


_CACHE_DIRS: dict = {}


def _cache_dir() -> Path | None:
    explicit = os.environ.get("GRADFIT_CACHE_DIR")
    if explicit is not None:
        return Path(explicit).expanduser() if explicit.strip() else None
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec says to ignore a relative path
        return Path(xdg) / "gradfit"
    try:
        return Path.home() / ".cache" / "gradfit"
    except (RuntimeError, KeyError, OSError):
        return None


_SYMPY_VERSION: list = []


def _sympy_version() -> str | None:
    """sympy's version from its package metadata (cheap: sympy is not imported)."""
    if not _SYMPY_VERSION:
        from importlib.metadata import PackageNotFoundError, version

        try:
            _SYMPY_VERSION.append(version("sympy"))
        except PackageNotFoundError:
            _SYMPY_VERSION.append(None)
    return _SYMPY_VERSION[0]


def _canonical(doc) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def cached(kind: str, inputs: dict, compute: Callable, encode: Callable, decode: Callable,
           check: Callable[[object], bool]):
    """``compute()``, or the stored result for (``kind``, ``inputs``) when one exists, decodes
    and passes ``check``. ``inputs`` must be JSON data (trees via :func:`encode_tree`);
    ``encode`` turns a result into JSON data and ``decode`` back (raising ValueError,
    TypeError or KeyError on anything unexpected)."""
    folder = cache_dir()
    sympy_version = _sympy_version() if folder is not None else None
    if folder is None or sympy_version is None:
        return compute()
    key = {"format": FORMAT, "kind": kind, "gradfit": __version__, "sympy": sympy_version, "inputs": inputs}
    try:
        key_text = _canonical(key)
    except (TypeError, ValueError, RecursionError):
        return compute()
    path = folder / _SUBDIR / f"{hashlib.sha256(key_text.encode()).hexdigest()}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if _canonical(doc["key"]) == key_text:
            result = decode(doc["result"])
            if check(result):
                return result
    except (OSError, ValueError, TypeError, KeyError, IndexError, RecursionError, MemoryError):
        pass  # missing, unreadable, corrupt or foreign: recompute and rewrite
    result = compute()
    try:
        atomic_write_text(path, json.dumps({"key": key, "result": encode(result)}, separators=(",", ":")))
    except (OSError, ValueError, TypeError, RecursionError):
        pass  # a cache that cannot be written costs time, never an error
    return result


# -- trees as JSON data -------------------------------------------------------------------------
def encode_tree(node: Node):
    """``node`` as JSON data (positions dropped): ["num", v], ["var", name], ["const", name],
    ["neg", a], ["bin", op, left, right] or ["call", func, [args]]."""
    if isinstance(node, Num):
        return ["num", float(node.value)]
    if isinstance(node, Var):
        return ["var", node.name]
    if isinstance(node, Const):
        return ["const", node.name]
    if isinstance(node, Neg):
        return ["neg", encode_tree(node.arg)]
    if isinstance(node, BinOp):
        return ["bin", node.op, encode_tree(node.left), encode_tree(node.right)]
    if isinstance(node, Call):
        return ["call", node.func, [encode_tree(a) for a in node.args]]
    raise TypeError(f"not a formula node: {node!r}")


def decode_tree(data) -> Node:
    """The tree :func:`encode_tree` encoded; ValueError on anything else (unknown tags,
    operators, constants or functions, wrong arities, non-numbers)."""
    if not isinstance(data, list) or not data:
        raise ValueError("a tree node must be a non-empty list")
    tag, rest = data[0], data[1:]
    if tag == "num" and len(rest) == 1 and isinstance(rest[0], (int, float)) and not isinstance(rest[0], bool):
        return Num(float(rest[0]))
    if tag == "var" and len(rest) == 1 and isinstance(rest[0], str):
        return Var(rest[0])
    if tag == "const" and len(rest) == 1 and rest[0] in CONSTANTS:
        return Const(rest[0])
    if tag == "neg" and len(rest) == 1:
        return Neg(decode_tree(rest[0]))
    if tag == "bin" and len(rest) == 3 and rest[0] in BINARY_OPS:
        return BinOp(rest[0], decode_tree(rest[1]), decode_tree(rest[2]))
    if tag == "call" and len(rest) == 2 and isinstance(rest[0], str) and rest[0] in FUNCTIONS \
            and isinstance(rest[1], list) and len(rest[1]) == FUNCTIONS[rest[0]].arity:
        return Call(rest[0], tuple(decode_tree(a) for a in rest[1]))
    raise ValueError(f"not an encoded formula node: {str(data)[:80]}")


# -- plain float evaluation, for checking loaded entries -----------------------------------------
def evaluate(node: Node, env: dict) -> float:
    """``node`` in Python float arithmetic (the function table's math forms); NaN or inf
    where a value is undefined or overflows, never an exception for a bad value."""
    if isinstance(node, Num):
        return float(node.value)
    if isinstance(node, Var):
        return float(env[node.name])
    if isinstance(node, Const):
        return CONSTANTS[node.name]
    if isinstance(node, Neg):
        return -evaluate(node.arg, env)
    if isinstance(node, BinOp):
        # the compiler's own float arithmetic (its constant folding): NaN where undefined
        return apply_binop(node.op, evaluate(node.left, env), evaluate(node.right, env))
    if isinstance(node, Call):
        return fold(node.func, [evaluate(a, env) for a in node.args])
    raise TypeError(f"not a formula node: {node!r}")


#: where check points are drawn: small positive values first (log, sqrt, arcsin are defined),
#: then wider and signed ranges for formulas whose domain lies elsewhere
_RANGES = ((0.2, 0.9), (0.5, 3.0), (-1.0, 1.0), (1.0, 20.0), (-5.0, 5.0), (10.0, 100.0))


def random_points(names):
    """Random points (name -> float), three per range of :data:`_RANGES`: one as drawn, one
    with a random sign for each name, and that one mirrored (every sign flipped), so every name
    meets both signs in every range (a planted entry wrong only for negative values, such as
    ``x`` for ``abs(x)``, cannot slip through on lucky signs), from fresh randomness (a
    planted entry cannot be tuned to a point known in advance)."""
    rng = random.SystemRandom()
    ordered = sorted(names)
    for low, high in _RANGES:
        yield {name: rng.uniform(low, high) for name in ordered}
        signed = {name: rng.choice((-1.0, 1.0)) * rng.uniform(low, high) for name in ordered}
        yield signed
        yield {name: -v for name, v in signed.items()}
