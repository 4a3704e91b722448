"""Formula text -> expression tree, by a whitelist over Python's ``ast``.

Nothing is ever evaluated: ``ast.parse`` only builds a syntax tree, and every node type
outside the whitelist is rejected with the offending token and its character position.
Guards run *before* ``ast.parse`` (length, NUL bytes, non-ASCII look-alikes, nesting) so a
hostile string cannot make the parser itself slow or deep.
"""

from __future__ import annotations

import ast
import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

from ..errors import FormulaError
from .functions import USER_FUNCTIONS, canonical_name, fold
from .tree import BINARY_OPS, CONSTANTS, BinOp, Call, Const, Neg, Node, Num, Var, constant_names, substitute

MAX_LENGTH = 10_000
MAX_DEPTH = 200

#: formulas name data columns by identifiers only; said when someone quotes a column name
_NAME_HINT = ("; names in a formula must be identifiers (letters, digits, _), and quoting a column name "
              "with backquotes is not supported: rename the column (e.g. df.rename(columns={'Time (s)': 't'})), "
              "pass it as x={'t': df['Time (s)']}, or use a built-in curve with x='Time (s)'")

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_HINTS = {
    ast.BitXor: "use ** for powers, not ^",
    ast.Attribute: "attribute access is not allowed; write exp(x), not math.exp(x)",
    ast.Subscript: "subscripts are not allowed",
    ast.Compare: "comparisons are not allowed; use minimum/maximum",
    ast.Lambda: "lambdas are not allowed",
    ast.IfExp: "conditional expressions are not allowed; use minimum/maximum",
}


@dataclass(frozen=True)
class ParsedFormula:
    """A parsed formula: ``response ~ rhs`` (response may be None) and the original text."""

    text: str
    rhs: Node
    response: Node | None = None

    def names(self) -> set[str]:
        return self.rhs.names()


def parse_formula(text: object) -> ParsedFormula:
    """Parse ``"y ~ a*x + b"`` or ``"a*x + b"`` into a :class:`ParsedFormula`.

    >>> parse_formula("t_c ~ w*t_u + b").rhs.names() == {"w", "t_u", "b"}
    True
    """
    if not isinstance(text, str):
        raise FormulaError(f"a formula must be a string, got {type(text).__name__}")
    return _parse_formula_cached(text)


@lru_cache(maxsize=512)
def _parse_formula_cached(text: str) -> ParsedFormula:
    # Trees are immutable, so one parse serves every fit of the same formula.
    _check_characters(text)
    if text.count("~") > 1:
        raise FormulaError("a formula has at most one '~'", token="~", position=text.index("~", text.index("~") + 1))
    if "~" in text:
        cut = text.index("~")
        response = parse_expression(text[:cut], offset=0, what="response")
        # Left of '~' only data columns make sense: 'e ~ a*x' is the column e, never Euler's number.
        response = substitute(response, constants=constant_names(response))
        rhs = parse_expression(text[cut + 1 :], offset=cut + 1, what="right-hand side")
        return ParsedFormula(text=text, rhs=rhs, response=response)
    return ParsedFormula(text=text, rhs=parse_expression(text, offset=0))


def parse_expression(text: str, *, offset: int = 0, what: str = "formula") -> Node:
    """Parse one expression (no '~'). ``offset`` shifts reported positions."""
    _check_characters(text, offset)
    stripped = text.lstrip()
    offset += len(text) - len(stripped)
    stripped = stripped.rstrip()
    if not stripped:
        raise FormulaError(f"the {what} is empty; write an expression such as 'a*x + b'", position=offset)
    _check_nesting(stripped, offset)
    try:
        with warnings.catch_warnings():
            # string literals with odd escapes make the tokenizer warn; they are refused below
            warnings.simplefilter("ignore")
            tree = ast.parse(stripped, mode="eval")
    except SyntaxError as exc:
        col = max((exc.offset or 1) - 1, 0)
        token = stripped[col : col + 1] or stripped[-1:]
        hint = _NAME_HINT if "`" in stripped else ""
        raise FormulaError(f"invalid syntax in the {what}{hint}", token=token, position=offset + col) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise FormulaError(f"the {what} cannot be parsed ({type(exc).__name__})", position=offset) from None
    _check_depth(tree.body, stripped, offset)
    node, _ = _convert(tree.body, stripped, offset)
    return node


def _check_characters(text: str, offset: int = 0) -> None:
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"formula is {len(text)} characters long; the limit is {MAX_LENGTH}", position=offset + MAX_LENGTH)
    for i, ch in enumerate(text):
        if ch == "\x00":
            raise FormulaError("NUL byte in formula", token="\\x00", position=offset + i)
        if ord(ch) > 127:
            # Python folds many unicode look-alikes (fullwidth letters, ligatures) into ASCII
            # names; refusing them keeps what the user sees equal to what runs.
            raise FormulaError("only ASCII characters are allowed in formulas", token=ch, position=offset + i)
        if not (ch.isprintable() or ch in " \t"):
            raise FormulaError("control character in formula", token=repr(ch), position=offset + i)


def _check_nesting(text: str, offset: int) -> None:
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
            if depth > MAX_DEPTH:
                raise FormulaError(f"formula nested deeper than {MAX_DEPTH} levels", token=ch, position=offset + i)
        elif ch in ")]}":
            depth -= 1


def _check_depth(root: ast.AST, text: str, offset: int) -> None:
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormulaError(f"formula nested deeper than {MAX_DEPTH} levels", token=_token(node, text),
                               position=offset + getattr(node, "col_offset", 0))
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _token(node: ast.AST, text: str) -> str:
    segment = ast.get_source_segment(text, node) or type(node).__name__
    return segment if len(segment) <= 40 else segment[:37] + "..."


def _reject(node: ast.AST, text: str, offset: int, message: str) -> FormulaError:
    return FormulaError(message, token=_token(node, text), position=offset + getattr(node, "col_offset", 0))


def _convert(node: ast.AST, text: str, offset: int) -> tuple[Node, float | None]:
    """Return (tree, constant value or None). Constant subtrees are evaluated in float
    arithmetic only to refuse ones that overflow (9**9**9); the tree keeps what was written."""
    pos = offset + getattr(node, "col_offset", 0)
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _reject(node, text, offset, "only numeric literals are allowed")
        try:
            number = float(value)
        except OverflowError:
            raise _reject(node, text, offset, "numeric literal too large") from None
        if not math.isfinite(number):
            raise _reject(node, text, offset, "numeric literal is not finite")
        return Num(number, pos), number
    if isinstance(node, ast.Name):
        return _convert_name(node, text, offset, pos)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        arg, value = _convert(node.operand, text, offset)
        if isinstance(node.op, ast.UAdd):
            return arg, value
        return Neg(arg, pos), (None if value is None else -value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        op = _BINOPS[type(node.op)]
        left, lv = _convert(node.left, text, offset)
        right, rv = _convert(node.right, text, offset)
        return BinOp(op, left, right, pos), _fold_binop(op, lv, rv, node, text, offset)
    if isinstance(node, ast.Call):
        return _convert_call(node, text, offset, pos)
    hint = _HINTS.get(type(getattr(node, "op", None)), _HINTS.get(type(node)))
    kind = type(getattr(node, "op", node)).__name__
    raise _reject(node, text, offset, hint or f"{kind} is not allowed in a formula")


def _convert_name(node: ast.Name, text: str, offset: int, pos: int) -> tuple[Node, float | None]:
    name = node.id
    if "__" in name:
        raise _reject(node, text, offset, "names containing '__' are not allowed")
    if name in USER_FUNCTIONS:
        raise _reject(node, text, offset, f"{name} is a function; call it as {name}(...)")
    if name in CONSTANTS:
        return Const(name, pos), CONSTANTS[name]
    return Var(name, pos), None


def _convert_call(node: ast.Call, text: str, offset: int, pos: int) -> tuple[Node, float | None]:
    if not isinstance(node.func, ast.Name):
        raise _reject(node.func, text, offset, "only the listed functions can be called")
    name = node.func.id
    if "__" in name:
        raise _reject(node.func, text, offset, "names containing '__' are not allowed")
    if name not in USER_FUNCTIONS:
        allowed = ", ".join(sorted(USER_FUNCTIONS))
        raise _reject(node.func, text, offset, f"unknown function {name!r}; allowed: {allowed}")
    if node.keywords:
        raise _reject(node.keywords[0].value, text, offset, f"{name}() takes no keyword arguments")
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise _reject(arg, text, offset, "starred arguments are not allowed")
    arity = USER_FUNCTIONS[name]
    if len(node.args) != arity:
        raise _reject(node, text, offset, f"{name}() takes {arity} argument(s), got {len(node.args)}")
    converted = [_convert(a, text, offset) for a in node.args]
    canonical = canonical_name(name)
    args = tuple(c[0] for c in converted)
    values = [c[1] for c in converted]
    value = None
    if all(v is not None for v in values):
        value = _finite(fold(canonical, values), node, text, offset)
    return Call(canonical, args, pos), value


def _fold_binop(op: str, a: float | None, b: float | None, node: ast.AST, text: str, offset: int) -> float | None:
    if a is None or b is None:
        return None
    try:
        if op == "+":
            v = a + b
        elif op == "-":
            v = a - b
        elif op == "*":
            v = a * b
        elif op == "/":
            v = a / b if b != 0 else math.nan
        else:
            v = math.pow(a, b) if not (a == 0 and b < 0) else math.inf
    except OverflowError:
        raise _reject(node, text, offset, "constant expression overflows") from None
    except ValueError:  # e.g. (-8)**(1/3): complex in Python, NaN in torch
        return math.nan
    return _finite(v, node, text, offset)


def _finite(v: float, node: ast.AST, text: str, offset: int) -> float:
    if math.isinf(v):
        raise _reject(node, text, offset, "constant expression overflows")
    return v


__all__ = ["ParsedFormula", "parse_formula", "parse_expression", "BINARY_OPS"]
