"""fit_many: many independent least-squares fits of one model, in one call.

Data flow: arrays in -> (B, M) tensors with per-point weights (NaN and masked points get
weight 0) -> chunks of fits -> batched Levenberg-Marquardt (optim/batch_lm.py) run eagerly
or torch.compile'd -> BatchResult. Formulas and built-ins take the fused path (their
symbolic partials are evaluated with broadcasting, every fit at once); any torch callable
takes the general path (torch.func.vmap over jacfwd). Under torchrun the batch is sharded
across ranks and gathered.
"""

from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from ..errors import did_you_mean
from ..errors import ConfigError, DataError, ModelError

__all__ = ["fit_many", "COMPILE_THRESHOLD"]

#: batches at least this large are torch.compile'd when compile="auto" (compiling costs
#: seconds; below this the eager path finishes first)
COMPILE_THRESHOLD = {"cpu": 2_000_000, "cuda": 200_000}
DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 25
_COMPILED: dict = {}


def fit_many(model, x, y, *, init=None, bounds: Mapping | None = None, fixed=None, weights=None, sigma=None,
             mask=None, loss: str = "mse", method: str = "lm", tol: float | None = None, max_iter: int | None = None,
             dtype="float32", device="auto", chunk_size: int | None = None, compile="auto", progress=None):
    """Fit one model to each row of ``y`` independently (batched Levenberg-Marquardt).

    Parameters
    ----------
    model : formula ("a*exp(-(x-c)**2/(2*w**2)) + o"), built-in name ("gaussian"), or a
        Python callable ``f(x, a, b, ...)`` written with torch operations for one fit.
    x : (M,) shared by every fit, (B, M) per fit, or a dict of named inputs of those shapes.
    y : (B, M). NaN (or ``mask`` False) excludes a point from its fit only, so ragged data
        works by padding with NaN.
    init : (B, P) array, dict name -> scalar or (B,) array, or "guess" (built-in models).
    bounds : dict name -> (low, high), scalars or (B,) arrays; None for no limit. Steps are
        projected onto the box.
    fixed : names held at their init value.
    weights, sigma : (M,) or (B, M); weights = 1/sigma^2.
    tol, max_iter : a fit converges when an accepted step changes chi-square by less than
        tol * max(1, chi2) (default 1e-4); at most max_iter iterations (default 25).
    compile : "auto" (compile large batches), True or False.

    Returns
    -------
    BatchResult

    Examples
    --------
    >>> import numpy as np, gradfit as gf
    >>> x = np.arange(10.0)
    >>> y = np.stack([2.0 * x + 1.0, -x + 3.0])
    >>> r = gf.fit_many("a*x + b", x, y, init={"a": 0.0, "b": 0.0})
    >>> np.round(r.params["a"], 4).tolist(), r.converged.tolist()
    ([2.0, -1.0], [True, True])
    """

    from .fit import resolve_device, resolve_dtype
    from ..models import resolve_model
    from ..models.formula import FormulaModel

    if loss != "mse" or method != "lm":
        raise ConfigError("fit_many does least squares with Levenberg-Marquardt: use loss='mse', method='lm'")
    tol = DEFAULT_TOL if tol is None else float(tol)
    max_iter = DEFAULT_MAX_ITER if max_iter is None else int(max_iter)
    if not tol > 0 or max_iter < 1:
        raise ConfigError("tol must be > 0 and max_iter >= 1")
    torch_dtype, dev = resolve_dtype(dtype), resolve_device(device)
    spec = resolve_model(model)
    if not getattr(spec, "scalar_params", False):
        raise ModelError("fit_many fits models with named scalar parameters (formulas, built-ins, functions)")
    y_arr = _as_2d(y, "y")
    n_fits, n_points = y_arr.shape
    inputs = _inputs(spec, x, n_fits, n_points)
    if isinstance(spec, FormulaModel):
        spec = spec.bind(inputs)
        inputs = {n: inputs[n] for n in spec.input_names}
    names = spec.param_names
    w_arr = _weights(weights, sigma, mask, y_arr)
    theta0 = _initial(spec, init, inputs, y_arr, w_arr)
    lower, upper = _bounds(bounds, names, n_fits)
    fixed_names = [fixed] if isinstance(fixed, str) else list(fixed or ())
    for n in fixed_names:
        if n not in names:
            raise ConfigError(f"fixed names unknown parameter {n!r}{did_you_mean(n, names)}")
    free = np.array([0.0 if n in fixed_names else 1.0 for n in names])
    theta0 = np.clip(theta0, lower, upper)

    from .parallel import shard_range, gather_result

    start, stop = shard_range(n_fits)
    t0 = time.perf_counter()
    local = _run(spec, names, inputs, y_arr[start:stop], w_arr[start:stop], theta0[start:stop],
                 lower[start:stop], upper[start:stop], free, tol, max_iter, torch_dtype, dev, chunk_size,
                 compile, progress, (start, stop))
    result = gather_result(local, n_fits)
    result.timings["total_s"] = time.perf_counter() - t0
    return result


# -- inputs -------------------------------------------------------------------------------
def _as_2d(a, what: str) -> np.ndarray:
    from ..data.arrays import as_float_array

    if isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64):
        arr = a  # no float64 copy of a large float32 batch
    else:
        arr = as_float_array(a, what)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{what} must have shape (fits, points), got {arr.shape}")
    return arr


def _inputs(model, x, n_fits: int, n_points: int) -> dict:
    from ..data.arrays import as_float_array
    from ..models.formula import FormulaModel

    if isinstance(x, Mapping):
        raw = {str(k): as_float_array(v, f"input {k!r}") for k, v in x.items()}
    else:
        name = "x"
        if isinstance(model, FormulaModel) and not model.bound and "x" not in model.parsed.rhs.names():
            raise DataError(f"formula {model.text!r} has no name 'x'; pass x as a dict naming the input")
        if isinstance(model, FormulaModel) and model.bound:
            name = model.input_names[0]
        raw = {name: as_float_array(x, "x")}
    out = {}
    for k, v in raw.items():
        if v.shape == (n_points,) or v.shape == (n_fits, n_points):
            out[k] = v
        elif v.ndim == 2 and v.shape[1] == n_points and v.shape[0] == 1:
            out[k] = v[0]
        else:
            raise DataError(f"input {k!r} has shape {v.shape}; expected ({n_points},) or ({n_fits}, {n_points}) "
                            f"to match y of shape ({n_fits}, {n_points})")
    return out


def _weights(weights, sigma, mask, y: np.ndarray) -> np.ndarray:
    from ..data.arrays import as_float_array

    if weights is not None and sigma is not None:
        raise ConfigError("pass either sigma or weights, not both (weights = 1/sigma**2)")
    if weights is None and sigma is None and mask is None:
        return np.isfinite(y).astype(np.float32)  # the common case, kept cheap: 1, or 0 for NaN
    w = np.ones_like(y)
    if sigma is not None:
        s = np.broadcast_to(as_float_array(sigma, "sigma"), y.shape) if np.ndim(sigma) else None
        if s is None:
            raise DataError("sigma must be (points,) or (fits, points)")
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(s > 0, 1.0 / (s * s), 0.0)
    elif weights is not None:
        try:
            w = np.broadcast_to(as_float_array(weights, "weights"), y.shape).copy()
        except ValueError:
            raise DataError(f"weights must broadcast to y's shape {y.shape}") from None
        if (w < 0).any():
            raise DataError("weights must be non-negative")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != y.shape:
            raise DataError(f"mask must have y's shape {y.shape}, got {m.shape}")
        w = np.where(m, w, 0.0)
    w = np.where(np.isfinite(y) & np.isfinite(w), w, 0.0)
    return np.ascontiguousarray(w)


def _initial(model, init, inputs: dict, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    names = model.param_names
    n_fits = y.shape[0]
    if isinstance(init, str):
        if init != "guess":
            raise ConfigError(f"init must be an array, a dict or 'guess', got {init!r}")
        from ..models.batch_guess import batch_guess

        return batch_guess(model, inputs, y, w)
    if init is None:
        raise ConfigError("fit_many needs init: a (fits, parameters) array, a dict of values, or 'guess' "
                          "for built-in models")
    if isinstance(init, Mapping):
        missing = [n for n in names if n not in init]
        if missing:
            raise ConfigError(f"init is missing {', '.join(missing)} (parameters: {', '.join(names)})")
        unknown = [k for k in init if k not in names]
        if unknown:
            raise ConfigError(f"init names unknown parameter {unknown[0]!r}{did_you_mean(unknown[0], names)}")
        cols = []
        for n in names:
            v = np.asarray(init[n], dtype=float)
            if v.ndim == 0:
                v = np.full(n_fits, float(v))
            if v.shape != (n_fits,):
                raise DataError(f"init for {n!r} must be a number or have one value per fit ({n_fits}), "
                                f"got shape {v.shape}")
            cols.append(v)
        theta = np.stack(cols, axis=1)
    else:
        theta = np.asarray(init, dtype=float)
        if theta.ndim == 1 and theta.shape == (len(names),):
            theta = np.broadcast_to(theta, (n_fits, len(names))).copy()
        if theta.shape != (n_fits, len(names)):
            raise DataError(f"init must have shape ({n_fits}, {len(names)}) for parameters {', '.join(names)}, "
                            f"got {theta.shape}")
    if not np.isfinite(theta).all():
        raise DataError("init contains NaN or inf")
    return theta


def _bounds(bounds, names, n_fits: int) -> tuple[np.ndarray, np.ndarray]:
    lower = np.full((n_fits, len(names)), -np.inf)
    upper = np.full((n_fits, len(names)), np.inf)
    for name, pair in (bounds or {}).items():
        if name not in names:
            raise ConfigError(f"bounds names unknown parameter {name!r}{did_you_mean(name, names)}")
        try:
            lo, hi = pair
        except (TypeError, ValueError):
            raise ConfigError(f"bounds for {name!r} must be a pair (low, high)") from None
        j = names.index(name)
        lower[:, j] = -np.inf if lo is None else np.broadcast_to(np.asarray(lo, dtype=float), (n_fits,))
        upper[:, j] = np.inf if hi is None else np.broadcast_to(np.asarray(hi, dtype=float), (n_fits,))
    if (lower > upper).any():
        j = int(np.nonzero((lower > upper).any(axis=0))[0][0])
        raise ConfigError(f"bounds for {names[j]!r}: min is greater than max")
    return lower, upper


# -- running ----------------------------------------------------------------------------
def _memory_budget(dev) -> int:
    import torch

    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free * 0.5)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(int(line.split()[1]) * 1024 * 0.25)
    except OSError:
        pass
    return 2 << 30


def _chunk_size(n_fits: int, n_points: int, n_params: int, itemsize: int, dev, chunk_size) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ConfigError("chunk_size must be >= 1")
        return min(int(chunk_size), n_fits)
    # working set per fit: y, w, residuals, predictions and the Jacobian (P columns), with
    # room for temporaries
    per_fit = (n_params + 6) * n_points * itemsize * 3 + (n_params * n_params + 4 * n_params) * itemsize * 4
    return max(1, min(n_fits, _memory_budget(dev) // per_fit, 4_000_000))


def _run(model, names, inputs, y, w, theta0, lower, upper, free, tol, max_iter, dtype, dev, chunk_size,
         compile_opt, progress, span):
    import torch

    from ..results.batch_result import BatchResult
    from ..optim.batch_lm import STATUS

    n_fits, n_points = y.shape
    p = len(names)
    itemsize = torch.finfo(dtype).bits // 8
    chunk = _chunk_size(max(n_fits, 1), n_points, p, itemsize, dev, chunk_size)
    fused = getattr(model, "expression", None) is not None
    use_compile = _want_compile(compile_opt, n_fits, dev)
    if use_compile:
        chunk = min(chunk, n_fits)
    out = {k: np.empty(n_fits) for k in ("chi2",)}
    params = np.empty((n_fits, p))
    stderr = np.empty((n_fits, p))
    status = np.empty(n_fits, dtype=np.int8)
    iterations = np.empty(n_fits, dtype=np.int32)
    n_used = (w > 0).sum(axis=1)
    warmup = 0.0
    bar = _progress(progress, n_fits)
    t_fit = time.perf_counter()
    for lo in range(0, n_fits, chunk):
        hi = min(lo + chunk, n_fits)
        pad = 0  # compiled functions take any batch size (dynamic shapes): no padding
        sl = slice(lo, hi)
        tensors = _chunk_tensors(inputs, y[sl], w[sl], theta0[sl], lower[sl], upper[sl], n_used[sl], free, pad,
                                 dtype, dev)
        fresh = use_compile and _compile_key(model, names, fused, tensors, tol) not in _COMPILED

        def make_step(t):
            return _stepper(model, names, fused, use_compile, t, tol)

        state, first_iter_s = _iterate(make_step, tensors, max_iter)
        if fresh:
            warmup += first_iter_s
        se = _standard_errors(use_compile)(state.a, state.chi2, tensors["n_used"], tensors["free"])
        k = hi - lo
        params[sl] = state.theta[:k].double().cpu().numpy()
        stderr[sl] = se[:k].double().cpu().numpy()
        out["chi2"][sl] = state.chi2[:k].double().cpu().numpy()
        st = state.status[:k].cpu().numpy()
        status[sl] = np.where(st < 0, 1, st)
        iterations[sl] = state.iterations[:k].cpu().numpy()
        if bar is not None:
            bar.advance(k)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t_fit
    dof = n_used - free.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        redchi = np.where(dof > 0, out["chi2"] / dof, np.nan)
    chi2 = np.where(np.isinf(out["chi2"]), np.nan, out["chi2"])
    return BatchResult(
        param_names=tuple(names), params={n: params[:, j] for j, n in enumerate(names)},
        stderr={n: stderr[:, j] for j, n in enumerate(names)}, chi2=chi2, redchi=redchi, n_points=n_used,
        status=status, iterations=iterations, model_text=_describe(model),
        timings={"warmup_s": warmup, "fit_s": elapsed - warmup, "fits": n_fits,
                 "fits_per_s": n_fits / max(elapsed - warmup, 1e-12), "path": "fused" if fused else "general",
                 "compiled": use_compile, "device": str(dev), "chunk_size": chunk},
        status_names=dict(STATUS))


def _standard_errors(use_compile: bool):
    from ..optim.batch_lm import standard_errors

    if not use_compile:
        return standard_errors
    fn = _COMPILED.get("standard_errors")
    if fn is None:
        import torch

        fn = _COMPILED["standard_errors"] = torch.compile(standard_errors, dynamic=True)
    return fn


def _describe(model) -> str:
    return model.describe()


def _want_compile(option, n_fits: int, dev) -> bool:
    if option in (True, "yes", "true"):
        return True
    if option in (False, "no", "false", None):
        return False
    if option != "auto":
        raise ConfigError(f"compile must be 'auto', True or False, got {option!r}")
    return n_fits >= COMPILE_THRESHOLD.get(dev.type, COMPILE_THRESHOLD["cpu"])


def _chunk_tensors(inputs, y, w, theta0, lower, upper, n_used, free, pad, dtype, dev) -> dict:
    import torch

    def t(a):
        a = np.asarray(a)
        if pad:
            # pad a chunk to the compiled shape with copies of its first fit, fully masked
            a = np.concatenate([a, np.repeat(a[:1], pad, axis=0)], axis=0)
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=dev)

    y_t = t(y)
    y_t = torch.where(torch.isfinite(y_t), y_t, torch.zeros_like(y_t))  # NaN points have weight 0
    out = {"y": y_t, "w": t(w), "theta0": t(theta0), "lower": t(lower), "upper": t(upper),
           "n_used": t(n_used.astype(float)), "free": tuple(float(v) for v in free),
           "status0": torch.as_tensor(np.concatenate([np.where(n_used < free.sum(), 3, -1),
                                                      np.full(pad, 3)]).astype(np.int64), device=dev)}
    out["inputs"] = {k: (t(v) if v.ndim == 2 else torch.as_tensor(v, dtype=dtype, device=dev))
                     for k, v in inputs.items()}
    if pad:
        out["w"][-pad:] = 0.0
    return out


def _residual_and_jacobian(model, names, fused, inputs, y):
    """(theta (B, P)) -> (f - y (B, M), J (B, M, P))."""

    if fused:
        program = model.value_and_partials()  # built here, outside any torch.compile trace

        def fn(theta):
            params = {n: theta[:, j:j + 1] for j, n in enumerate(names)}
            f, partials = program({**params, **inputs})
            f = _full(f, y)
            return f - y, [_full(p, y) for p in partials]

        return fn
    from torch.func import jacfwd, vmap

    per_fit_axes = {k: (0 if v.dim() == 2 else None) for k, v in inputs.items()}
    keys = list(inputs)

    def single(theta, *xs):
        return model.forward(dict(zip(keys, xs)), dict(zip(names, theta.unbind())))

    in_dims = (0, *[per_fit_axes[k] for k in keys])
    value = vmap(single, in_dims=in_dims)
    jac = vmap(jacfwd(single), in_dims=in_dims)

    def fn(theta):
        xs = [inputs[k] for k in keys]
        return value(theta, *xs) - y, list(jac(theta, *xs).unbind(-1))

    return fn


def _compile_key(model, names, fused, tensors, tol) -> tuple:
    y, inputs = tensors["y"], tensors["inputs"]
    # the batch size is dynamic: one compiled function serves every chunk and compaction
    return (_describe(model), tuple(names), fused, y.shape[1], str(y.dtype), str(y.device),
            tuple((k, v.dim()) for k, v in inputs.items()), tol, tensors["free"])


def _full(v, like):
    """A value of the formula as a (B, M) tensor (constants and (B, 1) columns broadcast)."""
    import torch

    if not isinstance(v, torch.Tensor):
        return torch.full_like(like, float(v))
    return v if v.shape == like.shape else v.expand_as(like)


def _stepper(model, names, fused, use_compile, tensors, tol):
    """The per-iteration function for this chunk: BatchState -> BatchState. Compiled functions
    take a flat tuple of tensors and are cached per model and shape in the process (and by
    inductor on disk)."""
    from ..optim.batch_lm import BatchState, lm_iteration

    inputs, y, w = tensors["inputs"], tensors["y"], tensors["w"]
    lower, upper, free = tensors["lower"], tensors["upper"], tensors["free"]
    if not use_compile:
        rj = _residual_and_jacobian(model, names, fused, inputs, y)
        return lambda state: lm_iteration(rj, state, y, w, lower, upper, free, tol)
    import torch

    key = _compile_key(model, names, fused, tensors, tol)
    compiled = _COMPILED.get(key)
    keys = list(inputs)
    if compiled is None:
        if fused:
            model.value_and_partials()

        def flat(theta, trial, lam, chi2, a, g, status, iterations, y, w, lower, upper, *xs):
            fn = _residual_and_jacobian(model, names, fused, dict(zip(keys, xs)), y)
            st = lm_iteration(fn, BatchState(theta, trial, lam, chi2, a, g, status, iterations), y, w, lower, upper,
                              free, tol)
            return (st.theta, st.trial, st.lam, st.chi2, st.a, st.g, st.status, st.iterations)

        compiled = torch.compile(flat, dynamic=True)
        _COMPILED[key] = compiled
    xs = [inputs[k] for k in keys]

    def step(state):
        return BatchState(*compiled(state.theta, state.trial, state.lam, state.chi2, state.a, state.g, state.status,
                                    state.iterations, y, w, lower, upper, *xs))

    return step


#: compact the batch to its still-running fits when they are at most this fraction of it
COMPACT_FRACTION = 0.5
#: ... and the batch is at least this large (below, compaction costs more than it saves)
COMPACT_MIN = 1024


def _iterate(make_step, tensors, max_iter: int):
    """Run up to max_iter iterations. Finished fits are frozen by the kernel; once half of
    the batch has finished, the running ones are gathered into a smaller batch so that
    finished fits stop costing work. Returns (final state for all fits, first-call seconds)."""
    import torch

    from ..optim.batch_lm import RUNNING, BatchState, initial_state

    state = initial_state(tensors["theta0"], tensors["status0"])
    full = state
    rows = None  # indices (into the chunk) of the fits in `state`; None = all of them
    step = make_step(tensors)
    first = 0.0
    for it in range(max_iter):
        t0 = time.perf_counter()
        state = step(state)
        if it == 0:
            first = time.perf_counter() - t0
        running = state.status == RUNNING
        n_running = int(running.sum())
        if n_running == 0:
            break
        size = running.shape[0]
        if it + 1 < max_iter and size >= COMPACT_MIN and n_running <= COMPACT_FRACTION * size:
            full = _write_back(full, rows, state)
            keep = torch.nonzero(running).squeeze(-1)
            rows = keep if rows is None else rows[keep]
            state = BatchState(*(t[keep] for t in _fields(state)))
            tensors = _take(tensors, keep)
            step = make_step(tensors)
    return _write_back(full, rows, state), first


def _fields(state) -> tuple:
    return (state.theta, state.trial, state.lam, state.chi2, state.a, state.g, state.status, state.iterations)


def _write_back(full, rows, state):
    """Copy the compacted fits' state into the full-batch state (in place: the full state's
    tensors belong to this run alone)."""
    if rows is None:
        return state
    for f, s in zip(_fields(full), _fields(state)):
        f[rows] = s
    return full


def _take(tensors: dict, keep) -> dict:
    out = dict(tensors)
    for k in ("y", "w", "lower", "upper", "theta0", "status0", "n_used"):
        out[k] = tensors[k][keep]
    out["inputs"] = {k: (v[keep] if v.dim() == 2 else v) for k, v in tensors["inputs"].items()}
    return out


def _progress(progress, n_fits: int):
    import sys

    show = sys.stderr.isatty() if progress is None else bool(progress)
    if not show or n_fits < 100_000:
        return None
    from ..callbacks import ChunkProgress

    return ChunkProgress(n_fits)

