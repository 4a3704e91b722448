"""Expression tree <-> sympy, for exact derivatives and structure (linearity).

sympy expressions are *built* from our parsed tree with sympy constructors; text is never
handed to sympy (``sympy.parse_expr`` calls eval). Derivatives come back as our own trees so
the same compiler evaluates them with torch.

The results a fit asks for (CSE programs, :func:`vanishes_at_zero`) are also kept on disk
(:mod:`gradfit.formula.cache`), checked numerically when loaded, so a later process needs no
sympy for a formula it has seen.
"""

from __future__ import annotations

import math
from functools import lru_cache

from .cache import cached, decode_tree, encode_tree, evaluate, random_points
from .functions import FROM_SYMPY, FUNCTIONS
from .tree import BinOp, Call, Const, Neg, Node, Num, Var

# Small integers stay exact (x**2 differentiates to 2*x); anything else becomes a Float so
# sympy never does big exact arithmetic on user constants.
_EXACT_INT_LIMIT = 1000


def to_sympy(node: Node, symbols: dict | None = None):
    """Build the sympy expression of ``node``. ``symbols`` caches name -> real Symbol."""
    import sympy as sp

    symbols = {} if symbols is None else symbols

    def sym(name: str):
        if name not in symbols:
            symbols[name] = sp.Symbol(name, real=True)
        return symbols[name]

    def build(n: Node):
        if isinstance(n, Num):
            v = n.value
            if float(v).is_integer() and abs(v) <= _EXACT_INT_LIMIT:
                return sp.Integer(int(v))
            return sp.Float(v)
        if isinstance(n, Const):
            return sp.pi if n.name == "pi" else sp.E
        if isinstance(n, Var):
            return sym(n.name)
        if isinstance(n, Neg):
            return -build(n.arg)
        if isinstance(n, BinOp):
            a, b = build(n.left), build(n.right)
            return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                    "/": lambda: a / b, "**": lambda: a**b}[n.op]()
        if isinstance(n, Call):
            args = [build(a) for a in n.args]
            return FUNCTIONS[n.func].sympy(sp)(*args)
        raise TypeError(f"not a formula node: {n!r}")

    return build(node)


def from_sympy(expr) -> Node:
    """Convert a sympy expression (as produced by :func:`to_sympy` and ``diff``) to a tree."""
    import sympy as sp

    if expr.is_Symbol:
        return Var(expr.name)
    if expr is sp.pi:
        return Const("pi")
    if expr is sp.E:
        return Const("e")
    if expr.is_Number:
        return Num(float(expr))
    if expr.is_Add:
        return _fold_binop("+", [from_sympy(a) for a in expr.args])
    if expr.is_Mul:
        return _fold_binop("*", [from_sympy(a) for a in expr.args])
    if expr.is_Pow:
        base, exponent = expr.args
        if exponent == sp.Rational(1, 2):
            return Call("sqrt", (from_sympy(base),))
        if exponent == -1:
            return BinOp("/", Num(1.0), from_sympy(base))
        return BinOp("**", from_sympy(base), from_sympy(exponent))
    name = FROM_SYMPY.get(type(expr).__name__)
    if name is not None:
        if FUNCTIONS[name].arity == 1:
            # Heaviside carries its value at 0 as a second argument: the tree's is fixed at 1/2
            return Call(name, (from_sympy(expr.args[0]),))
        # sympy's Min and Max take any number of arguments: nest them pairwise
        return _fold_calls(name, [from_sympy(a) for a in expr.args])
    raise TypeError(f"gradfit cannot evaluate sympy expression {expr}")


def _diff(expr, symbol):
    """d expr / d symbol, each product u**e * log(u) (or u * log(u)) written XLogY(u**e, u)
    (the tree's xlogy): the derivative of x**n with respect to n is x**n log(x), whose limit at
    x = 0 (a zero-dose control, n > 0) is 0, where the product evaluates 0 * -inf = NaN."""
    import sympy as sp

    xlogy = sp.Function("XLogY")

    def has_log(e):
        return e.is_Mul and any(isinstance(f, sp.log) for f in e.args)

    def rewrite(e):
        factors, pairs = list(e.args), []
        for log in [f for f in factors if isinstance(f, sp.log)]:
            base = log.args[0]
            power = next((f for f in factors if f is not log and (f == base or (f.is_Pow and f.args[0] == base))),
                         None)
            if power is not None:
                factors.remove(log)
                factors.remove(power)
                pairs.append(xlogy(power, base))
        return sp.Mul(*pairs, *factors)

    return sp.diff(expr, symbol).replace(has_log, rewrite)


def _fold_binop(op: str, items: list[Node]) -> Node:
    out = items[0]
    for item in items[1:]:
        out = BinOp(op, out, item)
    return out


def _fold_calls(func: str, items: list[Node]) -> Node:
    out = items[0]
    for item in items[1:]:
        out = Call(func, (out, item))
    return out


def derivatives(node: Node, wrt: tuple[str, ...]) -> dict[str, Node]:
    """Exact partial derivatives of ``node`` with respect to each name in ``wrt``."""
    return dict(zip(wrt, _derivatives_cached(node, tuple(wrt))))


@lru_cache(maxsize=256)
def _derivatives_cached(node: Node, wrt: tuple[str, ...]) -> tuple[Node, ...]:
    import sympy as sp

    symbols: dict = {}
    expr = to_sympy(node, symbols)
    out = []
    for name in wrt:
        s = symbols.get(name) or sp.Symbol(name, real=True)
        out.append(from_sympy(_diff(expr, s)))
    return tuple(out)


@lru_cache(maxsize=256)
def vanishes_at_zero(node: Node, params: tuple[str, ...]) -> bool:
    """True when ``node`` is identically 0 with every name in ``params`` set to 0 (the
    model ``w*x + b`` has no term free of parameters; ``w*x + x**2`` has one)."""
    params = tuple(params)
    return cached("vanishes_at_zero", {"node": encode_tree(node), "params": list(params)},
                  lambda: _vanishes_at_zero(node, params), bool, _decode_bool,
                  lambda claim: _vanishing_agrees(node, params, claim))


def _vanishes_at_zero(node: Node, params: tuple[str, ...]) -> bool:
    import sympy as sp

    symbols: dict = {}
    expr = to_sympy(node, symbols)
    try:
        at_zero = expr.subs({symbols[p]: 0 for p in params if p in symbols})
        return bool(sp.expand(at_zero) == 0)
    except (TypeError, ValueError, ZeroDivisionError):
        return False


def _decode_bool(data) -> bool:
    if not isinstance(data, bool):
        raise TypeError("expected true or false")
    return data


def _vanishing_agrees(node: Node, params: tuple[str, ...], claim: bool) -> bool:
    """A stored answer is believed when it is False (the linear solve then computes the
    offset, which is always right) or when the formula is 0 with the parameters at 0 at
    the first random point where it has a finite value. A True that no point confirms (a
    parameter in a denominator) is recomputed; the linear solve, the one caller on the fit
    path, asks only models linear in their parameters, which are finite there."""
    if not claim:
        return True
    zero = dict.fromkeys(params, 0.0)
    for point in random_points(node.names()):
        value = evaluate(node, {**point, **zero})
        if math.isfinite(value):
            return abs(value) <= 1e-9 * (1.0 + max((abs(v) for v in point.values()), default=0.0))
    return False


def value_and_partials_program(node: Node, wrt: tuple[str, ...]):
    """The model and its partial derivatives as one straight-line program with common
    subexpressions computed once (sympy.cse): returns (assignments, outputs) where
    assignments is a list of (temporary name, tree) evaluated in order and outputs are the
    trees of [value, d/d wrt[0], ...] over inputs, parameters and temporaries."""
    return _program_cached(node, tuple(wrt))


def partials_program(node: Node, wrt: tuple[str, ...]):
    """Like :func:`value_and_partials_program` for the partial derivatives alone (what a
    Jacobian needs): outputs are the trees of [d/d wrt[0], ...]."""
    return _program_cached(node, tuple(wrt), with_value=False)


@lru_cache(maxsize=512)
def _program_cached(node: Node, wrt: tuple[str, ...], with_value: bool = True):
    return cached("program", {"node": encode_tree(node), "wrt": list(wrt), "with_value": with_value},
                  lambda: _program(node, wrt, with_value), _encode_program, _decode_program,
                  lambda program: _program_agrees(node, wrt, with_value, program))


def _program(node: Node, wrt: tuple[str, ...], with_value: bool):
    import sympy as sp

    symbols: dict = {}
    expr = to_sympy(node, symbols)
    exprs = [_diff(expr, symbols.get(n) or sp.Symbol(n, real=True)) for n in wrt]
    if with_value:
        exprs.insert(0, expr)
    # temporaries are named so they can never clash with user names (the parser refuses "__")
    temps = (sp.Symbol(f"{_TEMP_PREFIX}{i}", real=True) for i in range(10**6))
    replacements, reduced = sp.cse(exprs, symbols=temps)
    assignments = tuple((str(sym), from_sympy(sub)) for sym, sub in replacements)
    return assignments, tuple(from_sympy(e) for e in reduced)


# -- programs on disk (formula/cache.py) ------------------------------------------------------
_TEMP_PREFIX = "__t"
_EPS = 2.220446049250313e-16


def _encode_program(program) -> dict:
    assignments, outputs = program
    return {"assignments": [[name, encode_tree(tree)] for name, tree in assignments],
            "outputs": [encode_tree(tree) for tree in outputs]}


def _decode_program(data: dict):
    assignments = []
    for name, tree in data["assignments"]:
        if not (isinstance(name, str) and name.startswith(_TEMP_PREFIX) and name[len(_TEMP_PREFIX):].isdigit()):
            raise ValueError(f"not a temporary's name: {name!r}")
        assignments.append((name, decode_tree(tree)))
    return tuple(assignments), tuple(decode_tree(tree) for tree in data["outputs"])


def _program_agrees(node: Node, wrt: tuple[str, ...], with_value: bool, program) -> bool:
    """A loaded program is believed when, at every random point where the formula and the
    program are finite (at least one), its value equals the formula's and each partial
    derivative agrees with a central difference of the formula to 1e-4 (relative)."""
    assignments, outputs = program
    if len(outputs) != len(wrt) + with_value:
        return False
    names = node.names() | set(wrt)
    temps = set()
    for name, tree in assignments:  # each temporary is new and reads only what exists before it
        if name in names or name in temps or not tree.names() <= names | temps:
            return False
        temps.add(name)
    if not all(tree.names() <= names | temps for tree in outputs):
        return False
    checked = 0
    for point in random_points(names):
        env = dict(point)
        for name, tree in assignments:
            env[name] = evaluate(tree, env)
        got = [evaluate(tree, env) for tree in outputs]
        value = evaluate(node, point)
        if not all(math.isfinite(v) for v in (value, *got)):
            continue
        if with_value:
            if abs(got[0] - value) > 1e-6 * max(1.0, abs(value)):
                return False
            got = got[1:]
        # every finite point must agree, not only the first: an entry may be wrong on part of
        # the domain (one sign); a point where the central difference itself is not finite
        # (an edge of the domain) says nothing
        for name, d in zip(wrt, got):
            verdict = _partial_agrees(node, point, name, value, d)
            if verdict is False:
                return False
        checked += 1
    return checked > 0


def _partial_agrees(node: Node, point: dict, name: str, value: float, partial: float) -> bool | None:
    x = point[name]
    h = 1e-5 * max(1.0, abs(x))
    up = evaluate(node, {**point, name: x + h})
    down = evaluate(node, {**point, name: x - h})
    if not (math.isfinite(up) and math.isfinite(down)):
        return None  # at an edge of the domain: no verdict
    difference = (up - down) / (2 * h)
    # relative 1e-4, with a floor well above the central difference's own rounding (eps |f| / h)
    tol = 1e-4 * max(abs(partial), abs(difference)) + 1e3 * _EPS * (1.0 + abs(value)) / h
    return abs(partial - difference) <= tol
