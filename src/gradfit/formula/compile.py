"""Expression tree -> a torch (or numpy) function of a name->value mapping.

The compiled function is a tree of small closures that call torch (or numpy) operations,
taken from the one function table in :mod:`gradfit.formula.functions`; there is no code
generation and no eval. Constant subtrees are folded at compile time. Because it only uses broadcasting torch ops, the same
function evaluates one fit (parameters are 0-d tensors) or a whole batch of fits
(parameters shaped (B, 1) against inputs shaped (M,) or (B, M)), and it can be traced by
``torch.compile`` and ``torch.func``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Mapping, Union

from .functions import FUNCTIONS, fold, numpy_supported_function
from .tree import CONSTANTS, BinOp, Call, Const, Neg, Node, Num, Var, walk

Value = Union[float, "torch.Tensor"]  # noqa: F821 - torch is imported lazily
Compiled = Callable[[Mapping[str, "torch.Tensor"]], Value]  # noqa: F821


@lru_cache(maxsize=1024)
def numpy_supported(node: Node) -> bool:
    """True when every function in ``node`` has a numpy counterpart."""
    return all(numpy_supported_function(n.func) for n in walk(node) if isinstance(n, Call))


@lru_cache(maxsize=1024)
def compile_tree(node: Node, backend: str = "torch") -> Compiled:
    """Compile ``node`` to ``f(env) -> tensor or float``; ``env`` maps every free name to a value.

    >>> import torch
    >>> from gradfit.formula.parse import parse_expression
    >>> f = compile_tree(parse_expression("w*x + b"))
    >>> f({"w": torch.tensor(2.0), "x": torch.tensor([1.0, 2.0]), "b": torch.tensor(1.0)})
    tensor([3., 5.])
    """
    kind, payload = _compile(node, backend)
    if kind == "const":
        value = payload
        return lambda env: value
    return payload


def _compile(node: Node, backend: str = "torch") -> tuple[str, object]:
    if isinstance(node, Num):
        return "const", float(node.value)
    if isinstance(node, Const):
        return "const", CONSTANTS[node.name]
    if isinstance(node, Var):
        name = node.name
        return "fn", lambda env: env[name]
    if isinstance(node, Neg):
        kind, arg = _compile(node.arg, backend)
        if kind == "const":
            return "const", -arg
        return "fn", lambda env: -arg(env)
    if isinstance(node, BinOp):
        return _compile_binop(node, backend)
    if isinstance(node, Call):
        return _compile_call(node, backend)
    raise TypeError(f"not a formula node: {node!r}")


def apply_binop(op: str, a: Value, b: Value) -> Value:
    """``a op b``; on two Python floats (constant folding, the symbolic cache's check) the
    undefined cases give NaN and an overflowing power +-inf, as numpy would, never an
    exception."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if isinstance(a, float) and isinstance(b, float):
            return a / b if b != 0 else math.nan
        return a / b
    if isinstance(a, float) and isinstance(b, float):
        try:
            return math.pow(a, b)
        except OverflowError:  # the sign of a negative base to an odd integer power survives
            odd = b.is_integer() and b % 2 == 1
            return -math.inf if a < 0 and odd else math.inf
        except (ValueError, ZeroDivisionError):
            return math.nan
    return a ** b


def _compile_binop(node: BinOp, backend: str) -> tuple[str, object]:
    op = node.op
    lk, left = _compile(node.left, backend)
    rk, right = _compile(node.right, backend)
    if lk == "const" and rk == "const":
        return "const", apply_binop(op, left, right)
    if lk == "const":
        c = left
        if op == "+":
            return "fn", lambda env: c + right(env)
        if op == "-":
            return "fn", lambda env: c - right(env)
        if op == "*":
            return "fn", lambda env: c * right(env)
        if op == "/":
            return "fn", lambda env: c / right(env)
        return "fn", lambda env: c ** right(env)
    if rk == "const":
        c = right
        if op == "+":
            return "fn", lambda env: left(env) + c
        if op == "-":
            return "fn", lambda env: left(env) - c
        if op == "*":
            return "fn", lambda env: left(env) * c
        if op == "/":
            return "fn", lambda env: left(env) / c
        if c == 2.0:
            # x*x is cheaper and exact; torch's pow(x, 2.0) gives the same value.
            return "fn", lambda env: _square(left(env))
        return "fn", lambda env: left(env) ** c
    if op == "+":
        return "fn", lambda env: left(env) + right(env)
    if op == "-":
        return "fn", lambda env: left(env) - right(env)
    if op == "*":
        return "fn", lambda env: left(env) * right(env)
    if op == "/":
        return "fn", lambda env: left(env) / right(env)
    return "fn", lambda env: left(env) ** right(env)


def _square(v):
    return v * v


def _backend_function(name: str, backend: str):
    """The function ``name`` in ``backend`` ("torch" or "numpy"), from the one table."""
    if backend == "torch":
        import torch

        return FUNCTIONS[name].torch(torch)
    import numpy as np

    return FUNCTIONS[name].numpy(np)


def _compile_call(node: Call, backend: str) -> tuple[str, object]:
    compiled = [_compile(a, backend) for a in node.args]
    if all(k == "const" for k, _ in compiled):
        return "const", fold(node.func, [v for _, v in compiled])
    fn = _backend_function(node.func, backend)
    if len(compiled) == 2:
        return _compile_binary_call(FUNCTIONS[node.func].clamp, fn, compiled, backend)
    arg = compiled[0][1]
    return "fn", lambda env: fn(arg(env))


def _compile_binary_call(clamp: str | None, fn, compiled: list[tuple[str, object]], backend: str):
    (ak, a), (bk, b) = compiled
    if clamp is not None and (ak == "const" or bk == "const"):
        # a constant bound: one clamp instead of broadcasting the constant to the data
        if backend == "torch":
            import torch

            clip = torch.clamp
        else:
            import numpy as np

            clip = np.clip
        c, f = (a, b) if ak == "const" else (b, a)
        if clamp == "upper":
            return "fn", lambda env: clip(f(env), None, c)
        return "fn", lambda env: clip(f(env), c, None)
    if ak == "const":
        return "fn", lambda env: fn(a, b(env))
    if bk == "const":
        return "fn", lambda env: fn(a(env), b)
    return "fn", lambda env: fn(a(env), b(env))
