"""Expression tree -> a torch function of a name->tensor mapping.

The compiled function is a tree of small closures that call torch operations; there is no
code generation and no eval. Because it only uses broadcasting torch ops, the same
function evaluates one fit (parameters are 0-d tensors) or a whole batch of fits
(parameters shaped (B, 1) against inputs shaped (M,) or (B, M)), and it can be traced by
``torch.compile`` and ``torch.func``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Mapping, Union

from .tree import CONSTANTS, BinOp, Call, Const, Neg, Node, Num, Var, walk

Value = Union[float, "torch.Tensor"]  # noqa: F821 - torch is imported lazily
Compiled = Callable[[Mapping[str, "torch.Tensor"]], Value]  # noqa: F821


#: functions the numpy backend cannot evaluate (numpy has no erf)
_NOT_IN_NUMPY = {"erf"}


@lru_cache(maxsize=1024)
def numpy_supported(node: Node) -> bool:
    """True when every function in ``node`` has a numpy counterpart."""
    return not any(isinstance(n, Call) and n.func in _NOT_IN_NUMPY for n in walk(node))


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


def _apply_binop(op: str, a: Value, b: Value) -> Value:
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
        except (OverflowError, ValueError, ZeroDivisionError):
            return math.nan
    return a ** b


def _compile_binop(node: BinOp, backend: str) -> tuple[str, object]:
    op = node.op
    lk, left = _compile(node.left, backend)
    rk, right = _compile(node.right, backend)
    if lk == "const" and rk == "const":
        return "const", _apply_binop(op, left, right)
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


def _numpy_function(name: str):
    import numpy as np

    table = {
        "exp": np.exp, "log": np.log, "log10": np.log10, "sqrt": np.sqrt, "abs": np.abs,
        "sin": np.sin, "cos": np.cos, "tan": np.tan, "arcsin": np.arcsin, "arccos": np.arccos,
        "arctan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh,
        "sigmoid": lambda u: 1.0 / (1.0 + np.exp(-u)), "sign": np.sign,
        "heaviside": lambda u: (np.sign(u) + 1.0) * 0.5,
    }
    return table[name]


def _torch_function(name: str):
    import torch

    table = {
        "exp": torch.exp, "log": torch.log, "log10": torch.log10, "sqrt": torch.sqrt, "abs": torch.abs,
        "sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "arcsin": torch.asin, "arccos": torch.acos,
        "arctan": torch.atan, "sinh": torch.sinh, "cosh": torch.cosh, "tanh": torch.tanh,
        "sigmoid": torch.sigmoid, "erf": torch.special.erf, "sign": torch.sign,
        "heaviside": lambda u: (torch.sign(u) + 1.0) * 0.5,
    }
    return table[name]


def _math_function(name: str, args: list[float]) -> float:
    from .parse import _eval_function

    if name == "sign":
        return float((args[0] > 0) - (args[0] < 0))
    if name == "heaviside":
        return 0.5 * (float((args[0] > 0) - (args[0] < 0)) + 1.0)
    return _eval_function(name, args)


def _compile_call(node: Call, backend: str) -> tuple[str, object]:
    compiled = [_compile(a, backend) for a in node.args]
    if all(k == "const" for k, _ in compiled):
        return "const", _math_function(node.func, [v for _, v in compiled])
    if node.func in ("minimum", "maximum"):
        return _compile_minmax(node.func, compiled, backend)
    fn = _torch_function(node.func) if backend == "torch" else _numpy_function(node.func)
    arg = compiled[0][1]
    return "fn", lambda env: fn(arg(env))


def _compile_minmax(func: str, compiled: list[tuple[str, object]], backend: str) -> tuple[str, object]:
    if backend == "torch":
        import torch

        clamp, two = torch.clamp, (torch.minimum if func == "minimum" else torch.maximum)
    else:
        import numpy as np

        clamp, two = np.clip, (np.minimum if func == "minimum" else np.maximum)
    (ak, a), (bk, b) = compiled
    if ak == "const" or bk == "const":
        c, f = (a, b) if ak == "const" else (b, a)
        if func == "minimum":
            return "fn", lambda env: clamp(f(env), None, c)
        return "fn", lambda env: clamp(f(env), c, None)
    return "fn", lambda env: two(a(env), b(env))
