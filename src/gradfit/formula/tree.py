"""The expression tree every formula is turned into.

Nodes are frozen dataclasses: the parser builds them, the compiler turns them into torch
calls and the symbolic module into sympy expressions. ``pos`` is the character offset in
the user's text (-1 for nodes made by gradfit itself, e.g. symbolic derivatives). The
functions a :class:`Call` may name, with their form in every backend, are the one table in
:mod:`gradfit.formula.functions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

CONSTANTS: dict[str, float] = {"pi": 3.141592653589793, "e": 2.718281828459045}
BINARY_OPS = ("+", "-", "*", "/", "**")


class Node:
    """Base class of expression nodes.

    Nodes are hashed often (compiled functions and derivatives are cached by tree), so each
    node computes its hash once, from its children's cached hashes.
    """

    pos: int
    #: the fields that identify a node (all but ``pos``), set by :func:`_node`
    _key_fields: tuple[str, ...] = ()

    def __post_init__(self):
        key = tuple(_hashed(getattr(self, f)) for f in self._key_fields)
        object.__setattr__(self, "_hash", hash((type(self).__name__,) + key))

    def __hash__(self):
        return self._hash

    def names(self) -> frozenset[str]:
        """Free variable names (parameters and inputs) in this subtree (computed once)."""
        cached = self.__dict__.get("_names")
        if cached is None:
            out: set[str] = set()
            _collect_names(self, out)
            cached = frozenset(out)
            object.__setattr__(self, "_names", cached)
        return cached


def _hashed(value):
    """A field's contribution to a node's hash: children by their cached hash."""
    if isinstance(value, Node):
        return value._hash
    if isinstance(value, tuple):
        return tuple(_hashed(v) for v in value)
    return value


def _node(cls):
    """A frozen dataclass node that keeps :class:`Node`'s cached hash (a frozen dataclass
    would otherwise hash every field, recursively, on every lookup)."""
    cls = dataclass(frozen=True)(cls)
    cls._key_fields = tuple(f.name for f in fields(cls) if f.compare)
    cls.__hash__ = Node.__hash__
    return cls


def _pos():
    return field(default=-1, compare=False)


@_node
class Num(Node):
    value: float
    pos: int = _pos()


@_node
class Var(Node):
    name: str
    pos: int = _pos()


@_node
class Const(Node):
    """A named constant (pi, e): kept by name so it prints and differentiates exactly."""

    name: str
    pos: int = _pos()


@_node
class Neg(Node):
    arg: Node
    pos: int = _pos()


@_node
class BinOp(Node):
    op: str
    left: Node
    right: Node
    pos: int = _pos()


@_node
class Call(Node):
    func: str
    args: tuple[Node, ...]
    pos: int = _pos()


def walk(node: Node):
    """Every node of the tree (depth first). Iterative on purpose: trees can be deep (the
    parser allows up to its depth limit)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, Neg):
            stack.append(n.arg)
        elif isinstance(n, BinOp):
            stack.extend((n.left, n.right))
        elif isinstance(n, Call):
            stack.extend(n.args)


def constant_names(node: Node) -> frozenset[str]:
    """The named constants (``pi``, ``e``) written in ``node`` (computed once per node: every
    fit of a cached formula asks)."""
    cached = node.__dict__.get("_constant_names")
    if cached is None:
        cached = frozenset(n.name for n in walk(node) if isinstance(n, Const))
        object.__setattr__(node, "_constant_names", cached)
    return cached


def substitute(node: Node, rename: dict[str, str] | None = None, constants: frozenset | set = frozenset()) -> Node:
    """A copy of ``node`` with variables renamed (``rename``: old name -> new name) and the
    named constants in ``constants`` turned into variables of the same name.

    The new names are never parsed, so they may be any string, e.g. a data column
    ``"Time (s)"`` bound to a built-in curve's ``x``. Positions are kept.

    >>> from gradfit.formula.parse import parse_expression
    >>> to_text(substitute(parse_expression("a*exp(-k*x) + e"), {"x": "Time (s)"}, {"e"}))
    '((a * exp((-(k) * Time (s)))) + e)'
    """
    rename = rename or {}
    if not rename and not constants:
        return node

    def sub(n: Node) -> Node:
        if isinstance(n, Var):
            return Var(rename[n.name], n.pos) if n.name in rename else n
        if isinstance(n, Const):
            return Var(n.name, n.pos) if n.name in constants else n
        if isinstance(n, Neg):
            return Neg(sub(n.arg), n.pos)
        if isinstance(n, BinOp):
            return BinOp(n.op, sub(n.left), sub(n.right), n.pos)
        if isinstance(n, Call):
            return Call(n.func, tuple(sub(a) for a in n.args), n.pos)
        return n

    return sub(node)


def _collect_names(node: Node, out: set[str]) -> None:
    out.update(n.name for n in walk(node) if isinstance(n, Var))


def to_text(node: Node) -> str:
    """Render a tree back to formula text (fully parenthesised where precedence needs it)."""
    if isinstance(node, Num):
        v = node.value
        return repr(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))
    if isinstance(node, (Var, Const)):
        return node.name
    if isinstance(node, Neg):
        return f"-({to_text(node.arg)})"
    if isinstance(node, BinOp):
        return f"({to_text(node.left)} {node.op} {to_text(node.right)})"
    if isinstance(node, Call):
        return f"{node.func}({', '.join(to_text(a) for a in node.args)})"
    raise TypeError(f"not a formula node: {node!r}")
