"""The expression tree every formula is turned into.

Nodes are frozen dataclasses: the parser builds them, the compiler turns them into torch
calls and the symbolic module into sympy expressions. ``pos`` is the character offset in
the user's text (-1 for nodes made by gradfit itself, e.g. symbolic derivatives).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# name -> number of arguments. The user-facing whitelist; the compiler and the symbolic
# module implement exactly these (plus the internal ones below).
FUNCTIONS: dict[str, int] = {
    "exp": 1, "log": 1, "log10": 1, "sqrt": 1, "abs": 1,
    "sin": 1, "cos": 1, "tan": 1, "arcsin": 1, "arccos": 1, "arctan": 1, "atan": 1,
    "sinh": 1, "cosh": 1, "tanh": 1, "sigmoid": 1, "erf": 1,
    "minimum": 2, "maximum": 2,
}
# Only produced by symbolic differentiation (d|u| = sign(u) du, dmax = heaviside ...).
INTERNAL_FUNCTIONS: dict[str, int] = {"sign": 1, "heaviside": 1}
ALIASES = {"atan": "arctan"}
CONSTANTS: dict[str, float] = {"pi": 3.141592653589793, "e": 2.718281828459045}
BINARY_OPS = ("+", "-", "*", "/", "**")


class Node:
    """Base class of expression nodes.

    Nodes are hashed often (compiled functions and derivatives are cached by tree), so each
    node computes its hash once, from its children's cached hashes.
    """

    pos: int

    def __post_init__(self):
        object.__setattr__(self, "_hash", hash((type(self).__name__,) + self._key()))

    def __hash__(self):
        return self._hash

    def _key(self) -> tuple:
        return ()  # each node type lists the fields that identify it

    def names(self) -> frozenset[str]:
        """Free variable names (parameters and inputs) in this subtree (computed once)."""
        cached = self.__dict__.get("_names")
        if cached is None:
            out: set[str] = set()
            _collect_names(self, out)
            cached = frozenset(out)
            object.__setattr__(self, "_names", cached)
        return cached


@dataclass(frozen=True)
class Num(Node):
    value: float
    pos: int = field(default=-1, compare=False)

    def _key(self):
        return (self.value,)

    __hash__ = Node.__hash__


@dataclass(frozen=True)
class Var(Node):
    name: str
    pos: int = field(default=-1, compare=False)

    def _key(self):
        return (self.name,)

    __hash__ = Node.__hash__


@dataclass(frozen=True)
class Const(Node):
    """A named constant (pi, e): kept by name so it prints and differentiates exactly."""

    name: str
    pos: int = field(default=-1, compare=False)

    def _key(self):
        return (self.name,)

    __hash__ = Node.__hash__


@dataclass(frozen=True)
class Neg(Node):
    arg: Node
    pos: int = field(default=-1, compare=False)

    def _key(self):
        return (self.arg._hash,)

    __hash__ = Node.__hash__


@dataclass(frozen=True)
class BinOp(Node):
    op: str
    left: Node
    right: Node
    pos: int = field(default=-1, compare=False)

    def _key(self):
        return (self.op, self.left._hash, self.right._hash)

    __hash__ = Node.__hash__


@dataclass(frozen=True)
class Call(Node):
    func: str
    args: tuple[Node, ...]
    pos: int = field(default=-1, compare=False)

    def _key(self):
        return (self.func,) + tuple(a._hash for a in self.args)

    __hash__ = Node.__hash__


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
