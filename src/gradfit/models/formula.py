"""Models written as formula text: ``"t_c ~ w*t_u + b"``."""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Mapping

from ..errors import DataError, FormulaError
from ..formula.compile import compile_tree, numpy_supported
from ..formula.parse import ParsedFormula, parse_formula
from ..formula.tree import Const, Node, Var, constant_names, substitute, walk
from .base import Model
from .jacobian import formula_program, partials_are_constant, torch_to_numpy

__all__ = ["FormulaModel"]


@lru_cache(maxsize=512)
def _names_in_order(node: Node) -> tuple[str, ...]:
    """Free names in order of first appearance in the text (w before b in 'w*x + b')."""
    seen: dict[str, int] = {}
    for n in walk(node):
        if isinstance(n, Var):
            seen[n.name] = min(seen.get(n.name, n.pos), n.pos)
    return tuple(sorted(seen, key=lambda k: (seen[k], k)))


@lru_cache(maxsize=512)
def _candidates_in_order(node: Node) -> tuple[str, ...]:
    """Names that data may bind, in order of first appearance: free names and the named
    constants (a data column called ``e`` or ``pi`` is an input)."""
    seen: dict[str, int] = {}
    for n in walk(node):
        if isinstance(n, (Var, Const)):
            seen[n.name] = min(seen.get(n.name, n.pos), n.pos)
    return tuple(sorted(seen, key=lambda k: (seen[k], k)))


def _with_constant_inputs(parsed: ParsedFormula, inputs) -> ParsedFormula:
    """``parsed`` with each named constant that is also an input turned into that input."""
    clash = constant_names(parsed.rhs) & set(inputs)
    if not clash:
        return parsed
    return ParsedFormula(parsed.text, substitute(parsed.rhs, constants=clash), parsed.response)


def _refuse_bare_e(parsed: ParsedFormula) -> None:
    """A bare ``e`` that no data column claims is ambiguous: Euler's number or a parameter."""
    if "e" not in constant_names(parsed.rhs):
        return
    for n in walk(parsed.rhs):
        if isinstance(n, Const) and n.name == "e":
            raise FormulaError(
                "'e' is ambiguous in a formula: gradfit does not guess whether it means Euler's number or a "
                "parameter. For Euler's number write exp(1) (and exp(x) for e**x); for a parameter use another "
                "name (e.g. e0 or offset). A data column (or x={...} key) named 'e' is used as an input",
                token="e", position=n.pos)


@lru_cache(maxsize=256)
def _bound(parsed: ParsedFormula, inputs: tuple[str, ...], name: str | None) -> "FormulaModel":
    # A bound model only caches derived, immutable things (compiled partials), so one
    # instance per (formula, inputs) serves every fit.
    return FormulaModel(parsed, inputs=inputs, name=name)


def _rebuild(text: str, inputs, name):
    """The FormulaModel that pickle stored as its text, bound inputs and name."""
    if inputs is None:
        return FormulaModel(text, name=name)
    return _bound(parse_formula(text), tuple(inputs), name)


class FormulaModel(Model):
    """A model given by a formula. Names that are inputs are fixed by :meth:`bind`; every
    other free name is a parameter.

    Which name is what:

    * a name that is a data column (or a key of ``x={...}``) is an **input**, even when it
      looks like a parameter (a column ``b`` makes ``b`` in ``a*x + b`` an input; the result
      and its report list the inputs and the parameters);
    * every other name is a **parameter**;
    * ``pi`` is the number pi unless a data column is called ``pi`` (then it is that input);
    * a bare ``e`` is the input ``e`` when a data column is called ``e``; otherwise it is
      ambiguous (Euler's number or a parameter?) and :meth:`bind` raises FormulaError: write
      ``exp(1)`` for Euler's number, or another name for a parameter;
    * left of ``~`` every name is a data column (``e ~ a*x`` reads the column ``e``).

    Formula names are identifiers; bind columns such as ``"Time (s)"`` through a built-in
    curve (``x="Time (s)"``) or rename them.

    >>> m = FormulaModel("t_c ~ w*t_u + b").bind(["t_u", "t_c"])
    >>> m.param_names, m.input_names
    (('w', 'b'), ('t_u',))
    >>> FormulaModel("y ~ a*x + e").bind(["x", "e", "y"]).input_names
    ('x', 'e')
    """

    kind = "formula"

    def __init__(self, formula: str | ParsedFormula, inputs: Iterable[str] | None = None, *, name: str | None = None):
        self.parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
        if inputs is not None:
            inputs = tuple(inputs)
            self.parsed = _with_constant_inputs(self.parsed, inputs)
        self.text = self.parsed.text
        self.name = name
        self.expression = self.parsed.rhs
        self._ordered = _names_in_order(self.parsed.rhs)
        self._candidates = _candidates_in_order(self.parsed.rhs)
        self._bound = inputs is not None
        self._set_inputs(set(inputs or ()))
        self._compiled = compile_tree(self.parsed.rhs)
        self._compiled_response = compile_tree(self.parsed.response) if self.parsed.response is not None else None
        self._response_names = frozenset(self.parsed.response.names() if self.parsed.response is not None else ())
        self._np_forward = None
        self._vanishes_at_zero = None
        self._program = None

    def _set_inputs(self, inputs: set[str]) -> None:
        self.input_names = tuple(n for n in self._ordered if n in inputs)
        self.param_names = tuple(n for n in self._ordered if n not in inputs)
        self._param_index = {n: i for i, n in enumerate(self.param_names)}

    def __reduce__(self):
        # compiled closures do not pickle: rebuild from the text (results inside pickled
        # scikit-learn estimators, multiprocessing)
        return _rebuild, (self.text, self.input_names if self._bound else None, self.name)

    @property
    def bound(self) -> bool:
        return self._bound

    @property
    def response_names(self) -> frozenset[str]:
        return self._response_names

    def bind(self, available: Iterable[str]) -> "FormulaModel":
        """Return a copy whose inputs are the formula names found in ``available`` (data
        columns or named inputs); the other names are its parameters (see the class notes).

        Raises
        ------
        FormulaError
            when no name is an input, or for a bare ``e`` that is not an input.
        """
        available = set(available)
        model = _bound(self.parsed, tuple(n for n in self._candidates if n in available), self.name)
        if not model.input_names and self._ordered:
            raise FormulaError(
                f"formula {self.text!r} uses none of the data's names ({', '.join(sorted(available)) or 'none'}); "
                "name the input x or pass x as a dict {name: values}"
            )
        _refuse_bare_e(model.parsed)
        return model

    def forward(self, inputs: Mapping, params: Mapping):
        import torch

        env = dict(params)
        env.update(inputs)
        out = self._compiled(env)
        if not isinstance(out, torch.Tensor) or out.dim() == 0:
            # A formula that ignores its inputs still predicts one value per point.
            ref = next(iter(inputs.values()))
            out = torch.as_tensor(out, dtype=ref.dtype, device=ref.device).expand(ref.shape[-1:] if ref.dim() else ())
        return out

    def forward_numpy(self, inputs: Mapping, params: Mapping):
        """The prediction with numpy (float64) instead of torch: no tensor overhead, for
        direct solves and statistics. Falls back to torch for functions numpy lacks (erf)."""
        import numpy as np

        if self._np_forward is None:
            self._np_forward = compile_tree(self.parsed.rhs, "numpy") if numpy_supported(self.parsed.rhs) else False
        if self._np_forward is False:
            return torch_to_numpy(self.forward, inputs, params)
        env = dict(params)
        env.update(inputs)
        out = self._np_forward(env)
        n = len(next(iter(inputs.values())))
        if isinstance(out, np.ndarray) and out.shape == (n,):
            return out
        return np.broadcast_to(np.asarray(out, dtype=float), (n,)).copy()

    def value_and_partials(self):
        """A function env -> (value, [d value / d p for each parameter]) in torch that
        computes common subexpressions once (for fit_many, where every operation runs over
        millions of points). Entries may be Python floats where a derivative is constant.
        Built once per model (see :func:`gradfit.models.jacobian.formula_program`), so that
        calls inside a torch.compile trace only read an attribute."""
        if self._program is None:
            run = formula_program(self.parsed.rhs, self.param_names, "torch", with_value=True)

            def program(env):
                values = run(env)
                return values[0], values[1:]

            self._program = program
        return self._program

    def response(self, columns: Mapping):
        """Evaluate the response expression (e.g. log(y)) on data columns (tensors)."""
        if self._compiled_response is None:
            raise DataError("the formula has no response; write 'y ~ expression' or pass y")
        return self._compiled_response(columns)

    def response_numpy(self, columns: Mapping):
        """The response from numpy columns (a plain column name costs nothing)."""
        import numpy as np

        r = self.parsed.response
        if isinstance(r, Var):
            return columns[r.name]
        if numpy_supported(r):
            return np.asarray(compile_tree(r, "numpy")(columns), dtype=float)
        return torch_to_numpy(lambda c, _p: self.response(c), columns, {})

    @property
    def vanishes_at_zero(self) -> bool:
        """True when the prediction is identically 0 with every parameter at 0 (no term
        free of parameters), so a linear solve needs no offset."""
        if self._vanishes_at_zero is None:
            from ..formula.symbolic import vanishes_at_zero

            self._vanishes_at_zero = vanishes_at_zero(self.parsed.rhs, self.param_names)
        return self._vanishes_at_zero

    @property
    def linear_in_params(self) -> bool:
        """True when no partial derivative depends on a parameter (the Jacobian is constant)."""
        return partials_are_constant(self.parsed.rhs, self.param_names)

    def spec(self) -> dict:
        spec = {"kind": "formula", "formula": self.text, "inputs": list(self.input_names)}
        if self.name:
            spec["name"] = self.name
        return spec

    def describe(self) -> str:
        return self.name or self.text
