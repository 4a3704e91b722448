"""torch.compile support for the batched engine (lsq/batched.py): the process-wide cache of
compiled step functions, keyed by the model itself (a formula's text, or the Python function
object: two lambdas share a name, not their code), the fallback to eager when torch.compile
cannot trace a model, and the rule behind ``compile="auto"``.
"""

from __future__ import annotations

import contextlib


__all__ = [
    "COMPILED",
    "COMPILE_FAILED",
    "compile_key",
    "is_compile_failure",
    "model_key",
    "native_build_seconds",
    "native_eligible",
    "native_kernel",
    "native_key",
    "add_eager_seconds",
    "spent_enough",
    "worth_building",
    "quiet",
    "traceable_residual_and_jacobian",
]

#: compiled step functions, keyed by compile_key (one cache per process: compiling costs seconds)
COMPILED: dict = {}
#: compile keys whose tracing or code generation failed -> the reason (they then run eagerly)
COMPILE_FAILED: dict = {}
#: seconds torch.compile takes for a new step kernel (Gaussian formula, torch 2.13, 2-core CPU:
#: 27 s cold, 9 s with inductor's disk cache warm; a tiny Python callable 9-13 s). CUDA: not
#: measured; the CPU figure is used (the first call traces the same graph).
COMPILE_COST_S = {"cpu": 30.0, "cuda": 30.0}
#: the projected eager time must exceed this many compile costs: compiled steps ran 1.7x
#: (200k fits) to 15x (1M fits) faster than eager in steady state, so eager time T saves at
#: least 0.4 T, which pays for the compile when T > 2.5 x cost
COMPILE_MARGIN = 3.0
#: LM iterations a typical fit takes after the first (the Gaussian workload's median is ~6-9)
EXPECTED_ITERATIONS = 8


#: seconds the C compiler (gcc 12, 2-core CPU) takes to build a new native kernel, about
#: BUILD_S[kind] + BUILD_PER_PARAM2[kind] * P^2 for P parameters (the unrolled normal sums and
#: solves grow as P^2), by kind:
#: - "many": fit_many's kernel with its lanes (optim/native_lm.py, optim/native_lanes.py; -O3):
#:   0.55 s at 2, 0.7-0.9 s at 3-4, 1.0 s at 7, 1.8 s at 10, 2.7 s at 14, 4.0 s at 18;
#: - "global": the joint loop with the lanes' sums (optim/native_global.py): 0.7-0.75 s at 4,
#:   0.8-0.95 s at 7;
#: - "single": one fit's trust-region loop (optim/native_single.py, -O2): 0.36-0.39 s at 4,
#:   0.38-0.41 s at 7.
#: compile="auto" builds one only when the projected eager time exceeds NATIVE_MARGIN times
#: this (the kernel runs several times faster than eager, so a build plus the rest in C is no
#: slower than eager once the eager time exceeds ~1.5 builds; 2 leaves room for the
#: projection's error: 1.5 made a 100k-fit call ~10% slower than eager in one measurement)
BUILD_S = {"many": 0.6, "global": 0.6, "single": 0.3}
BUILD_PER_PARAM2 = {"many": 0.012, "global": 0.006, "single": 0.002}
NATIVE_MARGIN = 2.0


def native_build_seconds(n_params: int, kind: str = "many") -> float:
    """The expected seconds of building a native kernel of ``kind`` ("many", "global" or
    "single") for ``n_params`` parameters."""
    return BUILD_S[kind] + BUILD_PER_PARAM2[kind] * n_params**2


#: seconds the torch loops spent, in this process, on models a native kernel could run
#: (key: the model's expression, parameter names and dtype); once they exceed NATIVE_MARGIN
#: builds, compile="auto" builds the kernel however small the next call: many small calls
#: pay for it as one large one would (a JIT's tiering)
EAGER_SECONDS: dict = {}


def spent_enough(key, n_params: int, kind: str = "many") -> bool:
    """True once the torch loops of ``key`` have cost more than NATIVE_MARGIN builds of ``kind``."""
    return EAGER_SECONDS.get(key, 0.0) > NATIVE_MARGIN * native_build_seconds(n_params, kind)


def add_eager_seconds(key, seconds: float) -> None:
    EAGER_SECONDS[key] = EAGER_SECONDS.get(key, 0.0) + seconds


def native_eligible(fused: bool, device, likelihood, *, whole: bool = False) -> bool:
    """True when the native kernel covers the batch: a formula (or built-in) model on the CPU
    (optim/native_lm.py; bounds included), least squares, or with ``whole`` (the whole batch in C,
    lsq/native_many.py) Poisson too (its fits with a zero count or a bound go back to torch)."""
    return fused and getattr(device, "type", str(device)) == "cpu" and (likelihood is None or whole)


def worth_building(first_iter_s: float, max_iter: int, n_params: int, later_chunks: float = 0.0) -> bool:
    """compile="auto": build a native kernel when the rest of the call, projected from the
    first eager iteration as in :func:`worth_compiling` (the rest of this chunk, and
    ``later_chunks`` more chunks of this size, which would run in the kernel once it is built),
    exceeds NATIVE_MARGIN build costs."""
    rest = first_iter_s * (min(EXPECTED_ITERATIONS, max_iter - 1) + later_chunks * min(EXPECTED_ITERATIONS + 1, max_iter))
    return rest > NATIVE_MARGIN * native_build_seconds(n_params)


def chunk_mode(option, key):
    """How one chunk runs: True/False as asked; for "auto", compiled when the kernel is already
    in this process's cache (compiled steps measured no slower than eager at every size, see
    COMPILE_COST_S) and it did not fail to compile, else "auto" (start eagerly and let
    worth_compiling decide after the first iteration)."""
    if option != "auto":
        return option
    if key in COMPILE_FAILED:
        return False
    return True if key in COMPILED else "auto"


def worth_compiling(first_iter_s: float, max_iter: int, dev) -> bool:
    """compile="auto": compile a fresh kernel only when the projected eager time of the rest
    of the chunk (the first eager iteration's seconds times EXPECTED_ITERATIONS more, capped by
    max_iter) exceeds COMPILE_MARGIN times the measured compile cost."""
    rest = first_iter_s * min(EXPECTED_ITERATIONS, max_iter - 1)
    cost = COMPILE_COST_S.get(getattr(dev, "type", str(dev)), COMPILE_COST_S["cpu"])
    return rest > COMPILE_MARGIN * cost


def is_compile_failure(exc) -> bool:
    """An exception raised by torch.compile's tracing or code generation (not by the model)."""
    module = type(exc).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor", "torch.fx", "torch._subclasses"))


def traceable_residual_and_jacobian(model, names, inputs: dict, y):
    """The general path's ``theta (B, P) -> (f - y, [J_j (B, M)])`` written so torch.compile
    can trace it: one ``torch.func.jvp`` per parameter along a unit tangent over the vmapped
    model (the same forward-mode derivatives as ``jacfwd``, whose own tracing fails in
    torch.compile on the CPU with an internal assert about ``_fw_primal``)."""
    import torch
    from torch.func import jvp, vmap

    keys = list(inputs)

    def single(theta, *xs):
        return model.forward(dict(zip(keys, xs)), dict(zip(names, theta.unbind())))

    in_dims = (0, *[(0 if inputs[k].dim() == 2 else None) for k in keys])
    value = vmap(single, in_dims=in_dims)

    def fn(theta):
        xs = [inputs[k] for k in keys]

        def at(t):
            return value(t, *xs)

        f, cols = None, []
        for j in range(len(names)):
            tangent = torch.zeros_like(theta)  # a dense tangent: an expanded one fails under dynamic shapes
            tangent[:, j] = 1.0
            f, d = jvp(at, (theta,), (tangent,))
            cols.append(d)
        if f is None:
            f = at(theta)
        return f - y, cols

    return fn




def model_key(model):
    """What identifies the model's code: a formula's text, or the Python callable itself (two
    functions may share a name; a closure's captured values are part of its code)."""
    func = getattr(model, "func", None)
    if func is not None:
        return ("function", func)
    return ("formula", getattr(model, "text", None) or model.describe())


def compile_key(model, names, fused, tensors, tol) -> tuple:
    y, inputs = tensors["y"], tensors["inputs"]
    # the batch size is dynamic: one compiled function serves every chunk and compaction
    return (model_key(model), tuple(names), fused, y.shape[1], str(y.dtype), str(y.device),
            tuple((k, v.dim()) for k, v in inputs.items()), tol, tensors["free"], tensors["bounded"],
            tensors["unit"], tensors.get("likelihood"))




def quiet(compiled):
    """``compiled`` with torch's own console output around it silenced: the FutureWarning
    inductor's lowering raises on the first call (torch._prims_common.check is deprecated), and,
    until a call has succeeded (the first call traces and compiles), the lines torch's loggers
    (dynamo, inductor, fake tensors) write to stderr. When that attempt fails, gradfit runs the
    model eagerly and says so in one note (``timings["compile"]``); torch's internals are
    nothing a user can act on."""
    import functools
    import warnings

    traced = [False]

    @functools.wraps(compiled)
    def call(*args):
        with warnings.catch_warnings(), _torch_logs_silenced(not traced[0]):
            warnings.filterwarnings("ignore", message=r".*_prims_common\.check.* is deprecated", category=FutureWarning)
            out = compiled(*args)
        traced[0] = True
        return out
    return call


@contextlib.contextmanager
def _torch_logs_silenced(active: bool = True):
    """Raise torch's loggers above CRITICAL for the block, then restore their levels. Only the
    loggers with a level of their own are set ("torch" and those torch._logging configured):
    every other torch logger takes its level from them."""
    if not active:
        yield
        return
    import logging

    named = [logger for name, logger in list(logging.root.manager.loggerDict.items())
             if name.startswith("torch.") and isinstance(logger, logging.Logger) and logger.level != logging.NOTSET]
    saved = [(logger, logger.level) for logger in [logging.getLogger("torch"), *named]]
    for logger, _ in saved:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def native_kernel(use_compile, model, names, fused, tensors, dtype, device, likelihood, notes: dict):
    """This chunk's native kernel (optim/native_lm.py) as ``(kernel, build)``: the NativeLM
    when it runs the chunk from the start (compile=True, or "auto" with the library already
    built, or once the model's eager time paid for it); else a function that builds it
    (compile="auto" with the library not built yet: _iterate decides after one eager
    iteration) or None (compile=False, a model or batch it does not cover, no compiler).
    A failed build is noted in ``notes["native_kernel"]``."""
    if use_compile is False or not native_eligible(fused, device, likelihood):
        return None, None
    from ..optim.native_lm import kernel

    inputs = tuple(tensors["inputs"])
    build_now = use_compile is True or spent_enough(native_key(model, names, dtype), len(names))
    found, reason = kernel(model, names, inputs, dtype, build=build_now)
    if found is not None:
        return found, None
    if reason == "not built yet":
        def build():
            built, why = kernel(model, names, inputs, dtype)
            if built is None:
                notes["native_kernel"] = why
            return built

        return None, build
    if build_now:
        notes["native_kernel"] = reason
    return None, None


def native_key(model, names, dtype):
    """The key of a model's torch time in lsq/compiled.EAGER_SECONDS."""
    return ("batch", getattr(model, "expression", None), tuple(names), str(dtype))
