"""Formula programs as C source, for the native kernels (:mod:`gradfit.optim.native_lm`).

A formula's value-and-partials program (:func:`gradfit.formula.symbolic.value_and_partials_program`:
sympy's common subexpressions as a straight-line program of our own trees) is printed as C that
evaluates the model and its P partial derivatives at every point of one fit (see
:func:`model_source`): column 0 the values, column 1 + j the partials d/dp_j. ``real`` is ``float`` or
``double``; every function is the <tgmath.h> generic one (or a ``gf_`` helper of
:data:`PRELUDE`), and every number literal is cast to ``real``, so a float kernel computes in
float as torch does on float32 tensors (a bare ``1.5`` would promote it to double).

The semantics follow the torch compiler (:mod:`gradfit.formula.compile`): ``u**2`` is ``u*u``,
``minimum``/``maximum`` propagate NaN, ``xlogy(0, b)`` is 0; division by zero and domain errors
give IEEE inf/NaN (the kernels are built without ``-ffast-math``). Each function's C form is
its entry's ``c`` field in the one table (:mod:`gradfit.formula.functions`).

>>> from gradfit.formula.parse import parse_formula
>>> src = model_source(parse_formula("y ~ a*exp(-k*x)").rhs, ("x",), ("a", "k"))
>>> "exp(" in src and "static inline void gf_columns" in src
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .functions import FUNCTIONS
from .tree import BinOp, Call, Const, Neg, Node, Num, Var

__all__ = ["PRELUDE", "PointProgram", "c_supported", "model_source", "point_program"]

#: helpers every native kernel includes after ``typedef ... real;``
PRELUDE = r"""
#include <math.h>
#ifdef GF_VECTOR_MATH
/* glibc's vector math library (libmvec) has SIMD forms of these: loops over points vectorize */
#pragma omp declare simd notinbranch
double exp(double);
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
double log(double);
#pragma omp declare simd notinbranch
float logf(float);
#pragma omp declare simd notinbranch
double sin(double);
#pragma omp declare simd notinbranch
float sinf(float);
#pragma omp declare simd notinbranch
double cos(double);
#pragma omp declare simd notinbranch
float cosf(float);
#pragma omp declare simd notinbranch
double pow(double, double);
#pragma omp declare simd notinbranch
float powf(float, float);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 35))
#pragma omp declare simd notinbranch
double log1p(double);
#pragma omp declare simd notinbranch
float log1pf(float);
#endif
#endif
#include <tgmath.h>
static inline real gf_square(real u) { return u * u; }
static inline real gf_minimum(real a, real b) { return (a != a || b != b) ? (real)NAN : (a < b ? a : b); }
static inline real gf_maximum(real a, real b) { return (a != a || b != b) ? (real)NAN : (a > b ? a : b); }
static inline real gf_sign(real u) { return u != u ? u : (real)((u > 0) - (u < 0)); }
static inline real gf_heaviside(real u) { return (gf_sign(u) + (real)1) * (real)0.5; }
static inline real gf_sigmoid(real u) { return (real)1 / ((real)1 + exp(-u)); }
static inline real gf_xlogy(real a, real b) { return b != b ? b : (a == 0 ? (real)0 : a * log(b)); }
"""


def c_supported(node: Node) -> bool:
    """True when every function of ``node`` has a C form."""
    if isinstance(node, Call):
        return FUNCTIONS[node.func].c is not None and all(c_supported(a) for a in node.args)
    if isinstance(node, BinOp):
        return c_supported(node.left) and c_supported(node.right)
    if isinstance(node, Neg):
        return c_supported(node.arg)
    return True


def _number(v: float) -> str:
    if math.isnan(v):
        return "((real)NAN)"
    if math.isinf(v):
        return "((real)INFINITY)" if v > 0 else "(-(real)INFINITY)"
    return f"((real){float(v)!r})"


#: u**n for these integer n is written as products (a pow call costs ~20-40 ns per point)
_SMALL_POWERS = range(-4, 5)


def _power(base: str, n: float) -> str:
    """``base**n`` as C: products for small integers, sqrt for 1/2, else pow."""
    if n == 0.5:
        return f"sqrt({base})"
    if float(n).is_integer() and int(n) in _SMALL_POWERS:
        k = abs(int(n))
        if k == 0:
            return "((real)1)"
        product = "gf_square(" + base + ")" if k == 2 else " * ".join([base] * k)
        if k == 4:
            product = f"gf_square(gf_square({base}))"
        return f"({product})" if n > 0 else f"((real)1 / ({product}))"
    return f"pow({base}, {_number(n)})"


class _Printer:
    """Prints trees as C, hoisting every subtree that depends on no input (only on parameters
    and numbers) into ``invariants``: computed once per evaluation of a fit, not per point."""

    def __init__(self, names: dict, inputs: frozenset):
        self.names = names
        self.point = set(inputs)  # names whose value changes from point to point
        self.invariants: list[str] = []
        self.hoisted: dict = {}  # tree -> its h_k name

    def varies(self, node: Node) -> bool:
        return bool(node.names() & self.point)

    def expr(self, node: Node, hoist: bool = True) -> str:
        if isinstance(node, (Num, Const, Var)):
            return self.leaf(node)
        if hoist and not self.varies(node):
            if node not in self.hoisted:
                text = self.expr(node, hoist=False)
                self.hoisted[node] = f"h_{len(self.invariants)}"
                self.invariants.append(text)
            return self.hoisted[node]
        if isinstance(node, Neg):
            return f"(-{self.expr(node.arg, hoist)})"
        if isinstance(node, BinOp):
            left = self.expr(node.left, hoist)
            if node.op == "**" and isinstance(node.right, Num):
                return _power(left, node.right.value)
            right = self.expr(node.right, hoist)
            if node.op == "**":
                return f"pow({left}, {right})"
            return f"({left} {node.op} {right})"
        if isinstance(node, Call):
            return "(" + FUNCTIONS[node.func].c.format(*(self.expr(a, hoist) for a in node.args)) + ")"
        raise TypeError(f"not a formula node: {node!r}")

    def leaf(self, node: Node) -> str:
        if isinstance(node, Num):
            return _number(node.value)
        if isinstance(node, Const):
            return _number(math.pi if node.name == "pi" else math.e)
        return self.names[node.name]


@dataclass(frozen=True)
class PointProgram:
    """A formula's value and partials as C pieces, in the names of :func:`model_source`:
    ``invariants`` (the expressions of h_0, h_1, ... over the parameters p_k alone), ``body``
    (the lines ``const real t_k = ...;`` over the inputs in_k, p_k and h_k) and ``outputs``
    (P + 1 expressions: the value, then each partial)."""

    invariants: tuple[str, ...]
    body: tuple[str, ...]
    outputs: tuple[str, ...]


def model_source(node: Node, inputs: tuple[str, ...], params: tuple[str, ...],
                 program: PointProgram | None = None) -> str:
    """Two C functions (see the module docstring) of ``node``'s value and its partial
    derivatives with respect to ``params``, over the inputs ``inputs``::

        static inline void gf_invariants(const real *p, real *h)   /* once per evaluation */
        static inline void gf_columns(long m, const real *const *xs, const long *offs,
                                      const real *h, real *cols)   /* the m points */

    ``h`` (``GF_NH`` values, a ``#define`` before them) holds the parameters and what depends on
    them alone (``pow(w, -3)`` of a Gaussian's partials), so the point loop computes only what
    changes with the point. Input q of point j is ``xs[q][offs[q] + j]``; ``cols`` (P + 1 rows
    of m) receives the values, then each partial. The loop body holds scalars only, so the
    compiler vectorizes it (SIMD exp/log/sin/cos/pow from libmvec where the prelude declares them).
    Names become ``in_k``, ``p_k``, ``t_k`` and ``h_k`` (user names never reach the C source).

    Raises
    ------
    ValueError if a function has no C form (check :func:`c_supported` first).
    """
    program = program or point_program(node, inputs, params)
    body, outs, invariants = program.body, program.outputs, program.invariants
    n_p, n_h = len(params), len(invariants)
    lines = [f"#define GF_NH {n_p + n_h}", "static inline void gf_invariants(const real *p, real *h) {"]
    lines += [f"    const real p_{k} = p[{k}];" for k in range(n_p)]
    lines += [f"    const real h_{k} = {text};" for k, text in enumerate(invariants)]
    lines += [f"    h[{k}] = p_{k};" for k in range(n_p)]
    lines += [f"    h[{n_p + k}] = h_{k};" for k in range(n_h)]
    lines += ["}", "static inline void gf_columns(long m, const real *const *xs, const long *offs, const real *h, "
              "real *cols) {"]
    lines += [f"    const real *x_{k} = xs[{k}] + offs[{k}];" for k in range(len(inputs))]
    lines += [f"    const real p_{k} = h[{k}];" for k in range(n_p)]
    lines += [f"    const real h_{k} = h[{n_p + k}];" for k in range(n_h)]
    lines += [f"    (void){v};" for v in (*(f"p_{k}" for k in range(n_p)), *(f"h_{k}" for k in range(n_h)))]
    lines += ["    #pragma omp simd", "    for (long j = 0; j < m; j++) {"]
    lines += [f"        const real in_{k} = x_{k}[j];" for k in range(len(inputs))]
    lines += ["    " + line for line in body]
    lines += [f"        cols[{k} * m + j] = {text};" for k, text in enumerate(outs)]
    lines += [f"        (void)in_{k};" for k in range(len(inputs))]
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"


def point_program(node: Node, inputs: tuple[str, ...], params: tuple[str, ...]) -> PointProgram:
    """:class:`PointProgram` of ``node`` (sympy's common subexpressions, parameter-only ones
    hoisted into the invariants). Raises ValueError if a function has no C form."""
    from .symbolic import value_and_partials_program

    if not c_supported(node):
        raise ValueError("the formula uses a function without a C form")
    assignments, outputs = value_and_partials_program(node, tuple(params))
    names = {n: f"in_{k}" for k, n in enumerate(inputs)}
    names.update({n: f"p_{k}" for k, n in enumerate(params)})
    printer = _Printer(names, frozenset(inputs))
    body = []
    for k, (name, tree) in enumerate(assignments):
        if not printer.varies(tree):  # a parameter-only temporary: hoisted as a whole
            printer.expr(tree)
            names[name] = printer.hoisted[tree]
            continue
        body.append(f"    const real t_{k} = {printer.expr(tree)};")
        names[name] = f"t_{k}"
        printer.point.add(name)
    outs = tuple(printer.expr(tree) for tree in outputs)
    return PointProgram(tuple(printer.invariants), tuple(body), outs)
