"""Models written as formula text: ``"t_c ~ w*t_u + b"``."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Mapping

from ..errors import DataError, FormulaError
from ..formula.compile import compile_tree
from ..formula.parse import ParsedFormula, parse_formula
from ..formula.tree import Node, Var, walk
from .base import Model

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FormulaModel"]


@lru_cache(maxsize=512)
def _names_in_order(node: Node) -> tuple[str, ...]:
    """Free names in order of first appearance in the text (w before b in 'w*x + b')."""
    seen: dict[str, int] = {}
    for n in walk(node):
        if isinstance(n, Var):
            seen[n.name] = min(seen.get(n.name, n.pos), n.pos)
    return tuple(sorted(seen, key=lambda k: (seen[k], k)))


def _straight_line(assignments, outputs, backend: str):
    """Compile a program from :mod:`gradfit.formula.symbolic` (temporaries assigned in order,
    then the outputs) to a function env -> [output values]."""
    steps = tuple((name, compile_tree(tree, backend)) for name, tree in assignments)
    outs = tuple(compile_tree(tree, backend) for tree in outputs)

    def run(env):
        env = dict(env)
        for name, fn in steps:
            env[name] = fn(env)
        return [fn(env) for fn in outs]

    return run


@lru_cache(maxsize=256)
def _bound(parsed: ParsedFormula, inputs: tuple[str, ...], name: str | None) -> "FormulaModel":
    # A bound model only caches derived, immutable things (compiled partials), so one
    # instance per (formula, inputs) serves every fit.
    return FormulaModel(parsed, inputs=inputs, name=name)


class FormulaModel(Model):
    """A model given by a formula. Names that are inputs are fixed by :meth:`bind`; every
    other free name is a parameter.

    >>> m = FormulaModel("t_c ~ w*t_u + b").bind(["t_u", "t_c"])
    >>> m.param_names, m.input_names
    (('w', 'b'), ('t_u',))
    """

    kind = "formula"

    def __init__(self, formula: str | ParsedFormula, inputs: Iterable[str] | None = None, *, name: str | None = None):
        self.parsed = formula if isinstance(formula, ParsedFormula) else parse_formula(formula)
        self.text = self.parsed.text
        self.name = name
        self.expression = self.parsed.rhs
        self._ordered = _names_in_order(self.parsed.rhs)
        self._bound = inputs is not None
        self._set_inputs(set(inputs or ()))
        self._compiled = compile_tree(self.parsed.rhs)
        self._compiled_response = compile_tree(self.parsed.response) if self.parsed.response is not None else None
        self._response_names = frozenset(self.parsed.response.names() if self.parsed.response is not None else ())
        self._partials = None
        self._np_partials = None
        self._np_forward = None
        self._vanishes_at_zero = None
        self._program = None
        self._partials_constant = False

    def _set_inputs(self, inputs: set[str]) -> None:
        self.input_names = tuple(n for n in self._ordered if n in inputs)
        self.param_names = tuple(n for n in self._ordered if n not in inputs)
        self._param_index = {n: i for i, n in enumerate(self.param_names)}

    @property
    def bound(self) -> bool:
        return self._bound

    @property
    def response_names(self) -> frozenset[str]:
        return self._response_names

    def bind(self, available: Iterable[str]) -> "FormulaModel":
        """Return a copy whose inputs are the formula names found in ``available`` (data
        columns or named inputs)."""
        available = set(available)
        model = _bound(self.parsed, tuple(n for n in self._ordered if n in available), self.name)
        if not model.input_names and self._ordered:
            raise FormulaError(
                f"formula {self.text!r} uses none of the data's names ({', '.join(sorted(available)) or 'none'}); "
                "name the input x or pass x as a dict {name: values}"
            )
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
            from ..formula.compile import numpy_supported

            self._np_forward = compile_tree(self.parsed.rhs, "numpy") if numpy_supported(self.parsed.rhs) else False
        if self._np_forward is False:
            return self._torch_to_numpy(self.forward, inputs, params)
        env = dict(params)
        env.update(inputs)
        out = self._np_forward(env)
        n = len(next(iter(inputs.values())))
        if isinstance(out, np.ndarray) and out.shape == (n,):
            return out
        return np.broadcast_to(np.asarray(out, dtype=float), (n,)).copy()

    def value_and_partials(self):
        """A function env -> (value, [d value / d p for each parameter]) that computes common
        subexpressions once (for fit_many, where every operation runs over millions of
        points). Entries may be Python floats where a derivative is constant."""
        if self._program is None:
            from ..formula.symbolic import value_and_partials_program

            run = _straight_line(*value_and_partials_program(self.parsed.rhs, self.param_names), "torch")

            def program(env):
                values = run(env)
                return values[0], values[1:]

            self._program = program
        return self._program

    def jacobian_numpy(self, inputs: Mapping, params: Mapping, names) -> "np.ndarray":
        """(n, len(names)) float64 matrix of d prediction / d parameter, for the parameters
        ``names`` in that order (symbolic partials, common subexpressions computed once,
        evaluated with numpy; torch for functions numpy lacks).

        The matrix is Fortran-ordered (each column contiguous): LAPACK factors it without a
        copy, and column norms, scaling and products with it run at full memory speed."""
        import numpy as np

        partials_of = self._numpy_partials()
        n = len(next(iter(inputs.values())))
        if partials_of is False:
            partials = self._torch_to_numpy(self.partials, inputs, params)
        else:
            env = dict(params)
            env.update(inputs)
            partials = partials_of(env)
        out = np.empty((len(names), n))
        for j, name in enumerate(names):
            out[j] = partials[self._param_index[name]]  # constants broadcast along the row
        return out.T

    def _numpy_partials(self):
        """A function env -> [d prediction / d p for each parameter] in numpy, or False where
        numpy lacks a function."""
        if self._np_partials is None:
            from ..formula.compile import numpy_supported
            from ..formula.symbolic import partials_program

            assignments, outputs = partials_program(self.parsed.rhs, self.param_names)
            supported = all(numpy_supported(t) for t in (*(t for _, t in assignments), *outputs))
            self._np_partials = _straight_line(assignments, outputs, "numpy") if supported else False
        return self._np_partials

    @staticmethod
    def _torch_to_numpy(fn, inputs, params):
        import torch

        t_in = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in inputs.items()}
        t_par = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in params.items()}
        with torch.no_grad():
            out = fn(t_in, t_par)
        if isinstance(out, list):
            return [o.numpy() for o in out]
        return out.numpy()

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
        from ..formula.compile import numpy_supported

        if numpy_supported(r):
            return np.asarray(compile_tree(r, "numpy")(columns), dtype=float)
        return self._torch_to_numpy(lambda c, _p: self.response(c), columns, {})

    def _compile_partials(self) -> None:
        from ..formula.symbolic import derivatives

        trees = derivatives(self.parsed.rhs, self.param_names)
        self._partial_trees = [trees[p] for p in self.param_names]
        self._partials = [compile_tree(t) for t in self._partial_trees]
        params = set(self.param_names)
        self._partials_constant = not any(trees[p].names() & params for p in self.param_names)

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
        if self._partials is None:
            self._compile_partials()
        return self._partials_constant

    def partials(self, inputs: Mapping, params: Mapping) -> list:
        """Analytic d(prediction)/d(parameter) for each parameter, broadcast to the data."""
        import torch

        if self._partials is None:
            self._compile_partials()
        env = dict(params)
        env.update(inputs)
        ref = next(iter(inputs.values()))
        out = []
        for fn in self._partials:
            v = fn(env)
            if not isinstance(v, torch.Tensor) or v.shape != ref.shape:
                v = torch.as_tensor(v, dtype=ref.dtype, device=ref.device).expand(ref.shape)
            out.append(v)
        return out

    def spec(self) -> dict:
        spec = {"kind": "formula", "formula": self.text, "inputs": list(self.input_names)}
        if self.name:
            spec["name"] = self.name
        return spec

    def describe(self) -> str:
        return self.name or self.text
