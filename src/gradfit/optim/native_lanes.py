"""fit_many's Levenberg-Marquardt across fits: one SIMD lane per fit.

The per-fit loop of :mod:`gradfit.optim.native_lm` vectorizes over a fit's points; with 32
points that is two AVX-512 vectors, and the rest of an iteration (the P x P damped Cholesky
solve, the acceptance and convergence tests) is scalar code with long dependency chains: ~260 ns
per fit and iteration for a 4-parameter Gaussian. Here L fits (one 64-byte vector: 16 in float,
8 in double) advance together, each in its own lane, as one GPU warp runs Gpufit's fits: the
point loop evaluates the model, its partials and the normal sums of all L fits at once (the
L sums of a pair in one vector register, no horizontal reductions), and the algebra of an
iteration is straight-line code, printed here for the formula's P, so that every operation is
one vector instruction for L fits (~20-40 ns per fit and iteration).

A lane whose fit has finished is refilled with the next fit at once (fits take 5 to 25
iterations), so lanes stay busy until a thread runs out of fits. The iteration is
:func:`gradfit.optim.batch_lm.step` without bounds, in native_lm's order of operations: only the
normal sums' order differs (point by point here, blocks of points there), so the two agree to
rounding. Fits with a finite bound on a free parameter take native_lm's per-fit loop (the box
rules branch per coordinate).

Functions printed (after native_lm's template; ``P``, ``GF_NH``, ``RUNNING`` and the status codes
defined there): ``lanes_invariants`` (each lane's parameter-only subexpressions),
``lanes_sums`` (chi-square, J^T W J and J^T W r of every lane) and ``lanes_step`` (the iteration's
algebra), over a ``lanes_t`` of structure-of-arrays state, ``[quantity][lane]``.
"""

from __future__ import annotations

__all__ = ["lanes_source", "lanes_sums_source"]


def _pairs(p: int) -> list[tuple[int, int]]:
    """The bordered matrix [J r]'s products (i, k), k <= i, column p the residuals, in the
    order of native_common.normal_sums_source."""
    return [(i, k) for i in range(p + 1) for k in range(i + 1)]


def _tri(i: int, k: int) -> int:
    """Index of A[i][k], k <= i, in the packed lower triangle."""
    return i * (i + 1) // 2 + k


def _header(p: int, double: bool) -> str:
    """lanes_t and the vector helpers: V holds one quantity of the L lanes, VI an integer (or
    mask: -1 true, 0 false) of the same width per lane (GCC's vector extensions: one AVX-512
    register, two AVX2 ones, ...)."""
    mint = "long long" if double else "int"
    sign = "0x8000000000000000LL" if double else "(int)0x80000000"
    big = "DBL_MAX" if double else "FLT_MAX"
    return f"""
/* ---- fits across SIMD lanes (optim/native_lanes.py) ---- */
#include <float.h>
#define L ((int)(64 / sizeof(real)))
#define NSUMS {(p + 1) * (p + 2) // 2}
#define NTRI {p * (p + 1) // 2}
typedef {mint} mint;
typedef real V __attribute__((vector_size(64)));
typedef mint VI __attribute__((vector_size(64)));
typedef struct __attribute__((aligned(64))) {{
    real th[P][L], tr[P][L], G[P][L], A[NTRI][L], lam[L], chi2[L], floor2[L], used[L];
    real h[GF_NH][L], sums[NSUMS][L], dev[L];
    mint st[L], it[L];
}} lanes_t;
#define BV(x) ((V){{}} + (real)(x))
#define BI(x) ((VI){{}} + (mint)(x))
#define VLOAD(row) (*(const V *)(row))
#define ILOAD(row) (*(const VI *)(row))
#define VSTORE(row, v) (*(V *)(row) = (v))
#define ISTORE(row, v) (*(VI *)(row) = (v))
/* m ? a : b lane by lane (m a mask) */
static inline V vsel(VI m, V a, V b) {{ return (V)(((VI)a & m) | ((VI)b & ~m)); }}
static inline VI isel(VI m, VI a, VI b) {{ return (a & m) | (b & ~m); }}
static inline V vabs(V x) {{ return (V)((VI)x & ~BI({sign})); }}
static inline VI vfinite(V x) {{ return vabs(x) <= BV({big}); }}
static inline V vsqrt(V x) {{ V r; for (int l = 0; l < L; l++) r[l] = sqrt(x[l]); return r; }}
"""


def _invariants(program, p: int) -> str:
    lines = ["static void lanes_invariants(lanes_t *S) {", "    #pragma omp simd", "    for (int l = 0; l < L; l++) {"]
    lines += [f"        const real p_{k} = S->tr[{k}][l];" for k in range(p)]
    lines += [f"        const real h_{k} = {text};" for k, text in enumerate(program.invariants)]
    lines += [f"        S->h[{k}][l] = p_{k};" for k in range(p)]
    lines += [f"        S->h[{p + k}][l] = h_{k};" for k in range(len(program.invariants))]
    lines += ["    }", "}"]
    return "\n".join(lines) + "\n"


def _sums(program, p: int, n_inputs: int, poisson: bool = False) -> str:
    """lanes_sums: the points outer, the lanes inner (one vector): each pair's L sums stay in
    one register; a masked point (weight <= 0) contributes nothing, whatever the model gives.
    ``poisson``: lanes_sums_poisson, the Fisher-scoring sums of likelihood.batch_poisson_deviance
    (weights w / mu, residuals mu - y; the deviance in S->dev, +inf where a used mean is not
    positive)."""
    pairs = _pairs(p)
    n_h = len(program.invariants)
    name = "lanes_sums_poisson" if poisson else "lanes_sums"
    lines = [f"static void {name}(long m, lanes_t *S, real *const *xl, const real *yl, const real *wl) {{",
             "    real acc[NSUMS][L], dev[L];",
             "    for (int q = 0; q < NSUMS; q++) for (int l = 0; l < L; l++) acc[q][l] = 0;",
             "    for (int l = 0; l < L; l++) dev[l] = 0;",
             "    for (long j = 0; j < m; j++) {",
             "        #pragma omp simd",
             "        for (int l = 0; l < L; l++) {"]
    lines += [f"            const real p_{k} = S->h[{k}][l];" for k in range(p)]
    lines += [f"            const real h_{k} = S->h[{p + k}][l];" for k in range(n_h)]
    lines += [f"            const real in_{q} = xl[{q}][j * L + l];" for q in range(n_inputs)]
    lines += ["        " + line for line in program.body]
    lines += [f"            const real v_{k} = {text};" for k, text in enumerate(program.outputs)]
    lines += ["            const real wj = wl[j * L + l];",
              "            const int used = wj > 0;"]
    if poisson:  # (single-condition selects: gcc vectorizes those)
        lines += ["            const real yj = yl[j * L + l], r = v_0 - yj;",
                  "            const int ok = v_0 > 0;  /* false for NaN */",
                  "            const real t = r - yj * log1p(r / (yj > 0 ? yj : (real)1)), term = ok ? t : (real)INFINITY;",
                  "            dev[l] += used ? wj * term : (real)0;  /* +inf: a used mean not positive */",
                  "            const real wu = used ? wj : (real)0, fisher = wu / v_0, w = ok ? fisher : (real)0;",
                  f"            const real c_{p} = used ? r : (real)0, wc_{p} = w * c_{p};"]
    else:
        lines += ["            const real w = used ? wj : (real)0;",
                  f"            const real c_{p} = used ? v_0 - yl[j * L + l] : (real)0, wc_{p} = w * c_{p};"]
    lines += [f"            const real c_{i} = used ? v_{i + 1} : (real)0, wc_{i} = w * c_{i};" for i in range(p)]
    lines += [f"            acc[{q}][l] += wc_{i} * c_{k};" for q, (i, k) in enumerate(pairs)]
    unused = [f"p_{k}" for k in range(p)] + [f"h_{k}" for k in range(n_h)] + [f"in_{q}" for q in range(n_inputs)]
    lines += [f"            (void){v};" for v in unused]
    lines += ["        }", "    }",
              "    for (int q = 0; q < NSUMS; q++) for (int l = 0; l < L; l++) S->sums[q][l] = acc[q][l];",
              "    for (int l = 0; l < L; l++) S->dev[l] = dev[l];", "}"]
    return "\n".join(lines) + "\n"


def _emit_factor(emit, p: int, damping: str) -> None:
    """The lanes' Cholesky factor L_i_k of (A + damping diag A) over the free coordinates, the
    identity over fixed ones, and the mask ``ok`` of those that factor (native_lm's factor, entry
    by entry in its order); A_i_k, fr_i and ``damping`` (a V expression) must be defined."""
    emit("VI ok = BI(-1);")
    for j in range(p):
        emit(f"V s_{j} = fr_{j} ? A_{j}_{j} * ((real)1 + {damping}) : BV(1);")
        for k in range(j):
            emit(f"s_{j} = s_{j} - L_{j}_{k} * L_{j}_{k};")
        emit(f"ok = ok & (s_{j} > (real)0);")
        emit(f"const V L_{j}_{j} = vsqrt(vsel(s_{j} > TINY, s_{j}, BV(TINY)));")
        for i in range(j + 1, p):
            emit(f"V t_{i}_{j} = (fr_{i} && fr_{j}) ? A_{i}_{j} : BV(0);")
            for k in range(j):
                emit(f"t_{i}_{j} = t_{i}_{j} - L_{i}_{k} * L_{j}_{k};")
            emit(f"const V L_{i}_{j} = t_{i}_{j} / L_{j}_{j};")


def _emit_solve(emit, p: int, tag: str, rhs) -> None:
    """e{tag}_i solving L L^T e = rhs(i) over the free coordinates (native_lm's solve)."""
    for i in range(p):
        emit(f"V z{tag}_{i} = fr_{i} ? {rhs(i)} : BV(0);")
        for k in range(i):
            emit(f"z{tag}_{i} = z{tag}_{i} - L_{i}_{k} * z{tag}_{k};")
        emit(f"z{tag}_{i} = z{tag}_{i} / L_{i}_{i};")
    for i in reversed(range(p)):
        emit(f"V e{tag}_{i} = z{tag}_{i};")
        for k in range(i + 1, p):
            emit(f"e{tag}_{i} = e{tag}_{i} - L_{k}_{i} * e{tag}_{k};")
        emit(f"e{tag}_{i} = e{tag}_{i} / L_{i}_{i};")


def _step(p: int) -> str:
    """lanes_step: native_lm's iterate (no bounds), one iteration, straight-line over vectors of
    the L lanes (explicit vector code: GCC's vectorizer turns selects on combined conditions
    into branches and gives up on such a loop)."""
    pairs = {pk: q for q, pk in enumerate(_pairs(p))}
    out = []

    def emit(text: str) -> None:
        out.append("    " + text)

    # Poisson: twice the deviance's sum (+inf where a used mean is not positive, and where NaN)
    emit("const V dev2 = (real)2 * VLOAD(S->dev);")
    emit(f"const V c2 = poisson ? vsel(dev2 != dev2, BV(INFINITY), dev2) : VLOAD(S->sums[{pairs[(p, p)]}]);")
    for i in range(p):
        emit(f"const V gt_{i} = VLOAD(S->sums[{pairs[(p, i)]}]);")
        for k in range(i + 1):
            emit(f"const V at_{i}_{k} = VLOAD(S->sums[{pairs[(i, k)]}]);")
    checks = ["vfinite(c2)"] + [f"vfinite(gt_{i})" for i in range(p)] + [
        f"vfinite(at_{i}_{k})" for i in range(p) for k in range(i + 1)]
    emit(f"const VI finite = {' & '.join(checks)};")
    emit("const V chi2_0 = VLOAD(S->chi2), lam_0 = VLOAD(S->lam);")
    emit("const VI accept = finite & (c2 <= chi2_0);")
    emit("const VI first = vabs(chi2_0) == BV(INFINITY);")
    emit("const VI settled = accept & ~first;")
    emit("const VI small = settled & (vabs(chi2_0 - c2) < tol * c2);")
    emit("const VI at_floor = settled & (c2 <= VLOAD(S->floor2));")
    for i in range(p):
        emit(f"const V th_{i} = vsel(accept, VLOAD(S->tr[{i}]), VLOAD(S->th[{i}]));")
        emit(f"const V G_{i} = vsel(accept, gt_{i}, VLOAD(S->G[{i}]));")
        for k in range(i + 1):
            emit(f"const V A_{i}_{k} = vsel(accept, at_{i}_{k}, VLOAD(S->A[{_tri(i, k)}]));")
    emit("const V chi2 = vsel(accept, c2, chi2_0);")
    emit("const V lam = vsel(accept, lam_0 * (real)0.1, lam_0 * (real)10.0);")
    emit("VI st = isel(first & ~finite, BI(NOT_FINITE), ILOAD(S->st));")
    # the Cholesky factor of (A + lam diag A), then L L^T d = -G, d = 0 where not finite
    _emit_factor(emit, p, "lam")
    _emit_solve(emit, p, "", lambda i: f"-G_{i}")
    emit(f"ok = {' & '.join(f'vfinite(e_{i})' for i in range(p))} & ok;")
    emit("V predicted = BV(0);")
    for i in range(p):
        emit(f"const V d_{i} = vsel(ok, e_{i}, BV(0));")
        emit(f"predicted = predicted + G_{i} * d_{i};")
    emit("predicted = -predicted * ((real)1 + lam);")
    emit("const VI running_0 = st == BI(RUNNING);")
    # Poisson: the predicted reduction small on the Pearson scale too (batch_lm.step's test;
    # the (p, p) sum is Pearson's chi-square there, and a convergence needs an accepted trial)
    emit(f"const VI pearson_ok = BI(poisson ? 0 : -1) | (predicted <= (real)0.25 * (tol > (real)1e-6 ? tol : (real)1e-6)"
         f" * VLOAD(S->sums[{pairs[(p, p)]}]));")
    emit("const VI converged = running_0 & (at_floor | (small & ok & (predicted <= tol * chi2) & pearson_ok));")
    emit("const VI stalled = ~converged & running_0 & (lam > LAMBDA_MAX);")
    emit("st = isel(converged, BI(CONVERGED), isel(stalled, BI(STALLED), st));")
    emit("st = isel((st == BI(RUNNING)) & ~ok, BI(SINGULAR), st);")
    emit("const VI running = st == BI(RUNNING);")
    for i in range(p):
        emit(f"VSTORE(S->th[{i}], th_{i});")
        emit(f"VSTORE(S->tr[{i}], vsel(running, th_{i} + d_{i}, th_{i}));")
        emit(f"VSTORE(S->G[{i}], G_{i});")
        for k in range(i + 1):
            emit(f"VSTORE(S->A[{_tri(i, k)}], A_{i}_{k});")
    emit("VSTORE(S->chi2, chi2); VSTORE(S->lam, lam); ISTORE(S->st, st); ISTORE(S->it, ILOAD(S->it) + 1);")
    head = ["static void lanes_step(lanes_t *S, const real *fr, real tol, int poisson) {"]
    head += [f"    const int fr_{i} = fr[{i}] != 0;" for i in range(p)]
    return "\n".join(head + out + ["}"]) + "\n"


#: up to this many parameters the finish runs across lanes too (its straight-line code grows as
#: P^3: P solves of a triangle); above, each fit's finish runs alone (native_lm's finish_one)
FINISH_MAX_PARAMS = 12


def _finish(p: int) -> str:
    """lanes_finish: native_lm's finish_one for the L fits of a buffer of finished fits (the
    standard errors, covariance, full-rank screen and range-cosine test), in its order of
    operations."""
    out = []

    def emit(text: str) -> None:
        out.append("    " + text)

    emit("const V chi2 = VLOAD(R->chi2);")
    for i in range(p):
        emit(f"const V G_{i} = VLOAD(R->G[{i}]);")
        for k in range(i + 1):
            emit(f"const V A_{i}_{k} = VLOAD(R->A[{_tri(i, k)}]);")
    _emit_factor(emit, p, "BV(0)")  # (A itself: (1 + 0) A_jj is A_jj)

    emit("VI finite_inv = BI(-1);")
    for j in range(p):  # column j of A^-1
        _emit_solve(emit, p, f"c{j}", lambda i, j=j: "BV(1)" if i == j else "BV(0)")
        emit(f"finite_inv = {' & '.join(f'vfinite(ec{j}_{i})' for i in range(p))} & finite_inv;")
    emit("const VI ok_inv = ok & finite_inv;")
    emit("const V dof = VLOAD(R->used) - n_free;")
    # unscaled: a likelihood's errors (the Cramer-Rao bound) or absolute sigma's (batch_lm.standard_errors)
    emit("const V scale = unscaled ? BV(1) : chi2 / dof;")
    emit("const VI ok_se = unscaled ? ok_inv & vfinite(chi2) : ok_inv & (dof >= (real)1) & vfinite(scale);")
    emit("const VI ok_cov = ok_se & vfinite(chi2);")
    emit("V trace = BV(0);")
    for j in range(p):
        emit(f"const V var_{j} = fr_{j} ? vsel(ok_inv, ec{j}_{j}, BV(0)) : BV(0);")
        emit(f"trace = trace + var_{j} * A_{j}_{j};")
        emit(f"const V v_{j} = var_{j} * scale;")
        emit(f"VSTORE(se[{j}], vsel(ok_se, vsqrt(vsel(v_{j} > (real)0, v_{j}, BV(0))), BV(NAN)));")
        for i in range(p):
            emit(f"VSTORE(cov[{j * p + i}], vsel(ok_cov, (real)0.5 * (ec{i}_{j} + ec{j}_{i}) * scale, BV(NAN)));")
    emit("ISTORE(full_rank, ok_inv & vfinite(trace) & (n_free * trace < (real)1 / floor_));")
    _emit_solve(emit, p, "g", lambda i: f"-G_{i}")
    emit(f"const VI ok_d = {' & '.join(f'vfinite(eg_{i})' for i in range(p))} & ok;")
    emit("V q = BV(0);")
    for i in range(p):
        emit(f"q = q + G_{i} * vsel(ok_d, eg_{i}, BV(0));")
    emit("q = -q;")
    emit("const V c = vsqrt(vsel(q > (real)0, q, BV(0)) / chi2);")
    emit("ISTORE(good, ok_d & vfinite(c) & (c < half_threshold));")
    head = ["#define LANES_FINISH 1",
            "static void lanes_finish(const lanes_t *R, const real *fr, real n_free, real floor_, real half_threshold,",
            "                         int unscaled, real (*se)[L], real (*cov)[L], mint *full_rank, mint *good) {"]
    head += [f"    const int fr_{i} = fr[{i}] != 0;" for i in range(p)]
    return "\n".join(head + out + ["}"]) + "\n"


def lanes_source(program, p: int, n_inputs: int, double: bool) -> str:
    """The C of the lane functions (see the module docstring) for a formula's
    :class:`~gradfit.formula.c_code.PointProgram` of ``p`` parameters and ``n_inputs`` inputs, in
    double or float."""
    finish = _finish(p) if p <= FINISH_MAX_PARAMS else "#define LANES_FINISH 0\n"
    return (_header(p, double) + _invariants(program, p) + _sums(program, p, n_inputs)
            + _sums(program, p, n_inputs, poisson=True) + _step(p) + finish)


def lanes_sums_source(program, p: int, n_inputs: int, double: bool) -> str:
    """lanes_t, lanes_invariants and lanes_sums alone (the global kernel's evaluation of its fits,
    :mod:`gradfit.optim.native_global`)."""
    return _header(p, double) + _invariants(program, p) + _sums(program, p, n_inputs)
