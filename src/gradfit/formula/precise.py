"""Evaluate a formula tree in extended precision (mpmath), point by point.

Used only where float64 itself is the limit: when a fit's residuals are within a few orders
of magnitude of float64 rounding (e.g. NIST Lanczos1, residuals ~1e-13 on values ~1), the
chi-square (and so every standard error) computed in float64 has only 2-3 correct digits.
Recomputing the residuals at the fitted parameters in 40-digit arithmetic restores them.
"""

from __future__ import annotations

from .functions import FUNCTIONS
from .tree import BinOp, Call, Const, Neg, Node, Num, Var

__all__ = ["residuals_mp"]


def _functions(mp):
    return {name: f.mpmath(mp) for name, f in FUNCTIONS.items()}


def _evaluate(node: Node, env: dict, mp, funcs):
    if isinstance(node, Num):
        return mp.mpf(node.value)
    if isinstance(node, Const):
        return mp.pi if node.name == "pi" else mp.e
    if isinstance(node, Var):
        return env[node.name]
    if isinstance(node, Neg):
        return -_evaluate(node.arg, env, mp, funcs)
    if isinstance(node, BinOp):
        a = _evaluate(node.left, env, mp, funcs)
        b = _evaluate(node.right, env, mp, funcs)
        if node.op == "+":
            return a + b
        if node.op == "-":
            return a - b
        if node.op == "*":
            return a * b
        if node.op == "/":
            return a / b
        return a**b
    if isinstance(node, Call):
        return funcs[node.func](*[_evaluate(a, env, mp, funcs) for a in node.args])
    raise TypeError(f"not a formula node: {node!r}")


def residuals_mp(rhs: Node, inputs: dict, y, weights, params: dict, dps: int = 40):
    """Weighted residuals ``sqrt(w_i) * (f(x_i; params) - y_i)`` with every operation in
    ``dps``-digit arithmetic, rounded to float64 at the end (numpy array). Points where the
    model is not a finite real number give NaN.

    The data and parameters are taken as the exact binary values they hold; only the
    arithmetic is extended.
    """
    import mpmath
    import numpy as np

    ctx = mpmath.MPContext()
    ctx.dps = dps
    funcs = _functions(ctx)
    env = {k: ctx.mpf(float(v)) for k, v in params.items()}
    names = list(inputs)
    out = np.empty(len(y))
    for i in range(len(y)):
        for n in names:
            env[n] = ctx.mpf(float(inputs[n][i]))
        r = _evaluate(rhs, env, ctx, funcs) - ctx.mpf(float(y[i]))
        if weights is not None:
            r *= ctx.sqrt(ctx.mpf(float(weights[i])))
        # a complex value (log or sqrt of a negative number) or inf/NaN: the model is not
        # finite there, as in float64
        out[i] = float(r) if isinstance(r, ctx.mpf) and ctx.isfinite(r) else np.nan
    return out
