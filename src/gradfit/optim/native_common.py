"""What both native kernels share (:mod:`gradfit.optim.native_lm`, :mod:`gradfit.optim.native_global`):
the C that evaluates one fit (its columns over the points, its normal sums) and the process's
cache of loaded kernels (built or read by :mod:`gradfit._native`)."""

from __future__ import annotations

import os

from .._native import is_built, load

__all__ = ["COLUMNS", "cached_kernel", "loaded_kernel", "in_blocks", "normal_sums_source"]


def normal_sums_source(p: int) -> str:
    """C ``normal_sums(m, cols, chi2, nmat, g)``: chi-square, N = J^T W J (both triangles) and
    g = J^T W r from :data:`COLUMNS`' columns in one vectorized pass over the points, the
    (P + 1)(P + 2) / 2 products of the bordered matrix [J r] accumulated in named scalars (an
    ``omp simd`` reduction keeps each in a vector register; needs ACC, the accumulator type)."""
    col = {i: f"(ACC)cols[{i + 1} * m + j]" for i in range(p)}
    col[p] = "(ACC)cols[j]"
    pairs = [(i, k) for i in range(p + 1) for k in range(i + 1)]
    names = [f"s_{i}_{k}" for i, k in pairs]
    lines = ["static void normal_sums(long m, const real *cols, ACC *chi2, ACC *nmat, ACC *g) {",
             "    const real *wc = cols + (P + 1) * m;",
             f"    ACC {', '.join(n + ' = 0' for n in names)};",
             f"    #pragma omp simd reduction(+:{', '.join(names)})",
             "    for (long j = 0; j < m; j++) {",
             "        const ACC wj = (ACC)wc[j];"]
    lines += [f"        const ACC c_{i} = {col[i]}, wc_{i} = wj * c_{i};" for i in range(p + 1)]
    lines += [f"        s_{i}_{k} += wc_{i} * c_{k};" for i, k in pairs]
    lines.append("    }")
    for i, k in pairs:
        if i < p:
            lines.append(f"    nmat[{i * p + k}] = s_{i}_{k}; nmat[{k * p + i}] = s_{i}_{k};")
        elif k < p:
            lines.append(f"    g[{k}] = s_{i}_{k};")
        else:
            lines.append(f"    *chi2 = s_{i}_{k};")
    lines.append("}")
    return "\n".join(lines) + "\n"


#: one fit's evaluation, shared by the native kernels (needs P, NIN and ACC, the accumulator
#: type, defined before it): the model and its partials at every point as columns (a loop the
#: compiler vectorizes); :func:`normal_sums_source` then forms chi-square, J^T W J and J^T W r
COLUMNS = r"""
/* cols (P + 2 rows of m): row 0 the residuals f - y, rows 1..P the partials, row P + 1 the
   weights; every row 0 at a masked point (weight <= 0 or NaN), whatever the model gives there */
static void fit_columns(long m, const real *const *xs, const long *x_stride, long b, const real *yb,
                        const real *wb, const real *p, real *cols) {
    real h[GF_NH];
    long offs[NIN > 0 ? NIN : 1];
    gf_invariants(p, h);
    for (int q = 0; q < NIN; q++) offs[q] = b * x_stride[q];
    gf_columns(m, xs, offs, h, cols);
    real *wc = cols + (P + 1) * m;
    #pragma omp simd
    for (long j = 0; j < m; j++) {
        int used = wb ? (wb[j] > 0) : 1;
        cols[j] = used ? cols[j] - yb[j] : (real)0;
        for (int i = 1; i <= P; i++) cols[i * m + j] = used ? cols[i * m + j] : (real)0;
        wc[j] = used ? (wb ? wb[j] : (real)1) : (real)0;
    }
}

"""


def cached_kernel(model, dtype, parts: tuple, build: bool, source, wrap, *, level: str = "-O3"):
    """A native kernel of this process, loaded or built once: ``source(expression, double)``
    gives its C, ``wrap(lib, double)`` the object around the library; ``parts`` identify it
    beside the formula and the dtype; ``level`` the compiler's optimization flag. ``(kernel, "")``
    or ``(None, reason)``. Kernels loaded in this process are found by the formula and
    ``GRADFIT_CC`` alone (which may turn them off): a single fit asks on every call, and the cache
    folder's and the compiler's paths cost ~10 us to resolve (a loaded library needs neither)."""
    expression = getattr(model, "expression", None)
    key = _key(model, parts, dtype)
    found = _KERNELS.get(key)
    if found is not None:
        return found, ""
    import torch

    from ..formula.c_code import c_supported

    if expression is None:
        return None, "not a formula"
    if dtype not in (torch.float32, torch.float64):
        return None, f"no native kernel for {dtype}"
    from ..formula.cache import cache_dir

    double = dtype == torch.float64
    folder = cache_dir()
    if not c_supported(expression):
        return None, "a function of the formula has no C form"
    text = source(expression, double)
    if not build and not is_built(text, folder, level=level):
        return None, "not built yet"
    lib, reason = load(text, folder, level=level)
    if lib is None:
        return None, reason
    _KERNELS[key] = wrap(lib, double)
    return _KERNELS[key], ""


_KERNELS: dict = {}  # loaded kernels of this process


def loaded_kernel(model, dtype, parts: tuple):
    """The kernel :func:`cached_kernel` has loaded in this process for these arguments, or None
    (no disk, no build): for callers that ask on every fit before deciding whether to build."""
    return _KERNELS.get(_key(model, parts, dtype))


def _key(model, parts: tuple, dtype) -> tuple:
    """A loaded kernel's key: the formula, the caller's parts, the dtype and ``GRADFIT_CC``
    (which may turn native kernels off)."""
    return getattr(model, "expression", None), parts, dtype, os.environ.get("GRADFIT_CC")


def in_blocks(work, n: int, threads: int, minimum: int = 256) -> None:
    """``work(lo, hi)`` over the rows [0, n) split into up to ``threads`` contiguous blocks of at
    least ``minimum`` rows: the first block on this thread, the others each on its own (a
    native kernel's ctypes call releases the GIL)."""
    import threading

    threads = max(1, min(int(threads), n // minimum or 1))
    bounds = [round(i * n / threads) for i in range(threads + 1)]
    others = [threading.Thread(target=work, args=(lo, hi)) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    for t in others:
        t.start()
    work(bounds[0], bounds[1])
    for t in others:
        t.join()
