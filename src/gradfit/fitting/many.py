"""fit_many: many independent least-squares fits of one model, in one call.

Data flow (forward hops only): arguments checked here -> a long table reshaped to (B, M)
(data/tables.py) -> inputs bound to the model -> weights, masks and the float32 range
(data/arrays.py, the rules one fit gets) -> starting values and bounds (models/parameters.py,
one ParameterSpec) -> this process's block of fits under torchrun (fitting/parallel.py) ->
the engine (lsq/batched.py: chunks, compile cache, batched Levenberg-Marquardt) -> statistics
(stats.py) -> BatchResult, gathered across processes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

import numpy as np

from ..data.xarray_input import is_dataarray  # by type name: xarray is imported only for a DataArray
from ..errors import ConfigError, DataError, ModelError
from ..options import LeastSquaresOptions
from .batch_warnings import warn_float32_limits, warn_float32_shared_tol, warn_infeasible_starts, warn_no_dof

__all__ = ["fit_many"]

DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 25
#: with shared parameters: iterations of the one joint problem
GLOBAL_MAX_ITER = 200


def fit_many(model=None, x=None, y=None, *, data=None, id=None, init=None, bounds: Mapping | None = None, fixed=None,
             tie=None, weights=None, sigma=None, absolute_sigma: bool = False, mask=None, loss: str = "mse",
             method: str = "lm",
             tol: float | None = None, max_iter: int | None = None, dtype="float32", device="auto",
             chunk_size: int | None = None, compile="auto", progress=None, threads: int | None = None,
             shared=None, models=None, criterion: str | None = None, starts: int | None = None,
             seed: int | None = None, start_design: str = "sobol", dim: str | None = None):
    """Fit one model to each row of ``y`` independently (batched Levenberg-Marquardt).

    Parameters
    ----------
    model : formula ("a*exp(-(x-c)**2/(2*w**2)) + o"), built-in name ("gaussian"), or a
        Python callable ``f(x, a, b, ...)`` written with torch operations for one fit.
    x : (M,) shared by every fit, (B, M) per fit, or a dict of named inputs of those shapes;
        with ``data``, the name of the x column.
    y : (B, M). NaN or inf (or ``mask`` False, or a NaN input) excludes a point from its fit
        only, so ragged data works by padding with NaN; with ``data``, the y column's name.
    data, id : a long table (DataFrame or dict of columns) with one row per point, and the
        column naming each point's fit: ``fit_many(model, data=df, id="well", x="dose",
        y="signal")``. The result's ``ids`` hold each fit's id; ``r.to_pandas()`` names their
        column by ``id`` ("well") and keeps their type (text, integers, Categorical, dates).
    dim : an xarray DataArray ``y`` (as ``DataArray.curvefit``): the dimension holding each
        fit's points; every other dimension is a batch dimension (data/xarray_input.py). x is
        then None (the ``dim`` coordinate), a coordinate's name, an array or a DataArray;
        ``init``/``fixed`` values and ``bounds`` ends may be DataArrays over batch dimensions,
        and weights/sigma/mask DataArrays like y. ``r.to_xarray()`` lays the results on y's
        batch dimensions and coordinates (needs ``gradfit[xarray]``).
    init : (B, P) array, dict name -> scalar or (B,) array, or "guess" (built-in models; a
        dict may then leave names out, and those are guessed). A given value must lie within
        its bounds; guessed ones are moved inside.
    bounds : dict name -> (min, max), scalars or (B,) arrays; None for no limit. Steps are
        projected onto the box.
    fixed : names held at their init value, or a dict name -> value (scalar or (B,)) to hold
        each at (it wins over init).
    tie : not supported by fit_many (ConfigError); use :func:`gradfit.fit` per fit.
    shared : names (a list, or one comma-separated string) of parameters that take one value
        for the whole batch (global fitting): the fits are then solved jointly by
        Levenberg-Marquardt on the block-arrow normal matrix (Schur complement; cost linear in
        the fits), in float64 (``dtype`` is the evaluation's precision; formulas without bounds,
        least squares, on the CPU run the native global kernel under ``compile`` as independent
        fits do), default max_iter 200, ``tol`` relative to one fit's chi-square.
        ``r.params[name]`` is the shared value repeated per fit; ``r.shared`` and
        ``r.shared_stderr`` give it by name; every stderr comes from the joint covariance;
        ``r.joint_stats`` holds the joint fit's n, dof, chisqr, redchi, aic, bic (``r.stats``
        stays per fit, counting each fit's own parameters). A shared name needs one init
        value and one pair of bounds. With loss="poisson" the joint fit is Poisson maximum
        likelihood (stderr from the inverse joint Fisher information; joint_stats add deviance
        and loglike); if the start has a mean <= 0 at a point with data in any fit, every fit
        starts from the joint least-squares fit.
    starts, seed, start_design : multistart: every fit runs from K starts (its init, and a
        "sobol" or "lhs" design seeded by ``seed``, default 0; see :mod:`gradfit.fitting.multistart`),
        all K x B in one batch; each keeps its best converged start. ``r.multistart`` holds
        starts (K) and per-fit (B,) converged, reached_best, distinct_minima.
    weights, sigma : (M,) or (B, M); weights = 1/sigma^2 (sigma must be positive).
    absolute_sigma : False (default): each fit's standard errors and covariance are scaled by its
        reduced chi-square (only the weights' relative sizes matter, as scipy's curve_fit by
        default); True: sigma is the data's true standard deviation and the errors are
        sqrt(diag(A^-1)) unscaled, finite even for a fit without degrees of freedom (curve_fit's
        absolute_sigma=True). With ``shared=`` it applies to the joint covariance. Poisson errors
        are never scaled (the Cramer-Rao bound).
    loss : "mse" (least squares) or "poisson": maximum likelihood for counts ``y`` >= 0
        (the Poisson deviance, Gpufit's MLE estimator, by Fisher scoring). ``weights`` are
        then frequency weights (``sigma`` is refused); ``stderr`` is the Cramer-Rao bound
        sqrt(diag(F^-1)) with F the Fisher information (not scaled by the fit's quality);
        ``stats`` add deviance and loglike, aic/bic are 2k - 2 logL and k ln n - 2 logL, and
        chisqr is Pearson's sum w (y - mu)^2 / mu. A fit whose start gives a model mean <= 0
        (or not finite) at a used point starts again from its least-squares fit (as gf.fit);
        where that has none either, it ends not_finite, with a warning naming it. Trial steps
        to such means are rejected (the damping rises).
    tol, max_iter : a fit converges when an accepted step changes chi-square by less than
        tol * chi2 (default 1e-4), or its residuals reach the rounding level; at most
        max_iter iterations (default 25). Converged fits must also pass the end-point tests
        of :func:`gradfit.fit` (:func:`gradfit.stats.end_point_checks`, in float64): finite
        (else not_finite), a full-rank Jacobian without negligible columns (else singular),
        finite standard errors (else singular), and residuals whose cosine with the
        Jacobian's range is below max(1e-3, sqrt(tol)) (else stalled).
    dtype, device : working precision ("float32" refuses data beyond its range) and device.
    chunk_size : fits per chunk (default: from the free memory).
    compile : "auto", True or False. Formulas and built-ins (bounds included), least
        squares, on the CPU run the native C kernel (:mod:`gradfit.optim.native_lm`; with
        ``shared``, :mod:`gradfit.optim.native_global`), built by the system C compiler and
        cached on disk; the rest runs torch kernels. "auto" never pays for a build or a compile
        that eager would not recover: it uses the native kernel when it is already built,
        builds it after the first eager iteration when the projected rest exceeds two builds
        (``NATIVE_MARGIN * native_build_seconds(P)``, ~0.6 + 0.012 P^2 s), or once this process's eager time on the model
        exceeds that; for the torch kernels, it compiles when this process already holds the
        compiled kernel for this model and shape, or when the first eager iteration projects
        more than ``COMPILE_MARGIN * COMPILE_COST_S`` seconds (90 s on the CPU) for the rest.
        True builds the native kernel (else torch.compile); False runs eagerly. A model
        torch.compile cannot trace runs eagerly, with the reason in ``timings["compile"]``; a
        failed native build is noted in ``timings["native_kernel"]``; ``timings["native"]``
        says whether the native kernel ran.
    threads : intra-op CPU threads while fitting, or None ("auto": one thread for small batches,
        as :func:`gradfit.fit`, else the process's setting; on a machine busy with other work,
        ``threads=1`` avoids waiting at the thread pool's barrier).
    models, criterion : instead of ``model``, candidate models (as for :func:`gradfit.compare`):
        each is fitted to every row (one batch per candidate) and each fit keeps the candidate
        with the lowest ``criterion`` ("aicc" (default), "aic" or "bic") among those that
        converged: ``r.model_index`` (B,) (-1 where none converged), ``r.models`` (labels),
        ``r.criteria`` (B, candidates) and params over the union of names, NaN where the chosen
        model has no such parameter (fitting/compare_many.py).

    Returns
    -------
    BatchResult

    Raises
    ------
    ConfigError, DataError, ModelError with what to change.

    Examples
    --------
    >>> import numpy as np, gradfit as gf
    >>> x = np.arange(10.0)
    >>> y = np.stack([2.0 * x + 1.0, -x + 3.0])
    >>> r = gf.fit_many("a*x + b", x, y, init={"a": 0.0, "b": 0.0})
    >>> np.round(r.params["a"], 4).tolist(), r.converged.tolist()
    ([2.0, -1.0], [True, True])
    """
    if dim is not None or is_dataarray(y):  # a DataArray: stacked to (fits, points), results kept on its grid
        return _fit_dataarray(dict(locals()))
    if models is not None or criterion is not None:  # the best candidate per fit (fitting/compare_many.py)
        keywords = {k: v for k, v in locals().items() if k not in ("model", "models", "criterion")}
        from .compare_many import fit_candidates

        return fit_candidates(fit_many, model, models, criterion, keywords)
    from .._threads import check_threads, choose_threads, intra_op_threads
    from ..models import resolve_model
    from .setup import resolve_device, resolve_dtype  # not fit.py: fit_many needs none of gf.fit's imports

    if loss not in ("mse", "poisson") or method != "lm":
        raise ConfigError(f"fit_many fits with Levenberg-Marquardt (method='lm') by least squares (loss='mse') or "
                          f"Poisson maximum likelihood (loss='poisson'), got loss={loss!r}, method={method!r}")
    if not isinstance(absolute_sigma, (bool, np.bool_)):
        raise ConfigError(f"absolute_sigma must be True or False, got {absolute_sigma!r}")
    if loss == "poisson" and sigma is not None:
        raise ConfigError("loss='poisson' takes no sigma: the counts' variance is their mean; pass weights= "
                          "(frequency weights) or mask= to weight or exclude points")
    from .multistart import check_starts, solve_multistart

    starts = check_starts(starts, start_design)
    if starts and shared:
        raise ConfigError("starts= does not combine with shared= (one joint fit); fit without shared to find starts")
    if tie:
        raise ConfigError("fit_many does not support tie; substitute the tie into the formula (e.g. replace c "
                          "by 2*a) or fit one by one with gf.fit(..., tie=...)")
    # the same validation and messages as gf.fit's least-squares options
    solver = LeastSquaresOptions(max_iter=(GLOBAL_MAX_ITER if shared else DEFAULT_MAX_ITER) if max_iter is None
                                 else max_iter,
                                 tol=DEFAULT_TOL if tol is None else tol, compile=compile)
    tol, max_iter, compile = solver.tol, solver.max_iter, solver.compile
    threads = check_threads(threads)
    ids, x_column = None, x
    if data is not None:
        ids, x, y, id_dtype = _long_table(data, id, x, y)
    elif id is not None:
        raise ConfigError("id names the fit column of a long table: pass it with data=...")
    if x is None or y is None:
        raise DataError("no data: pass x and y arrays, or data= with id=, x= and y= column names")
    torch_dtype, dev = resolve_dtype(dtype), resolve_device(device)
    spec = resolve_model(model)
    if ids is not None and _names_input(spec, x_column):
        x = {x_column: x}  # a formula written in the column's own name ("top*dose/(ec50 + dose)")
    if not getattr(spec, "scalar_params", False):
        raise ModelError("fit_many fits models with named scalar parameters (formulas, built-ins, functions)")
    bound, inputs, y_arr, w_arr = _prepare(spec, x, y, weights, sigma, mask, torch_dtype)
    likelihood = None if loss == "mse" else loss
    if likelihood:
        _check_counts(y_arr, w_arr)
    names = bound.param_names
    theta0, lower, upper, free = _parameters(bound, init, bounds, fixed, inputs, y_arr, w_arr)
    if shared:  # one joint problem (fitting/global_many.py)
        from .global_many import fit_shared, shared_guess

        theta0 = shared_guess(theta0, names, shared, init, fixed)
        if str(torch_dtype) == "torch.float32":
            warn_float32_shared_tol(tol)
        result = fit_shared(bound, names, shared, inputs, y_arr, w_arr, theta0, lower, upper, free, tol=tol,
                            max_iter=max_iter, dtype=torch_dtype, device=dev, threads=threads, chunk_size=chunk_size,
                            likelihood=likelihood, compile=compile, absolute_sigma=bool(absolute_sigma))
        if ids is not None:
            import dataclasses

            result = dataclasses.replace(result, ids=ids, id_name=id, id_dtype=id_dtype)
        return result

    from ..lsq.batched import solve_batched
    from .parallel import gather_result, shard_range

    start, stop = shard_range(len(y_arr))
    block = slice(start, stop)
    t0 = time.perf_counter()
    local = {k: (v[block] if v.ndim == 2 else v) for k, v in inputs.items()}
    # a step is many passes over (chunk, points) tensors: auto threads by their size, as gf.fit
    # (100k Gaussians of 32 points on the quiet 2-core machine: 215k fits/s on two threads,
    # 126k on one; on a busy machine one thread wins, so threads=1 is the remedy there)
    elements = min(len(y_arr), chunk_size or 32_768) * y_arr.shape[-1] * max(1, len(names))
    with intra_op_threads(choose_threads(threads, elements) if dev.type == "cpu" else threads):
        solve, multistart = solve_batched, None
        if starts:
            solve = functools.partial(solve_multistart, starts=starts, seed=seed or 0, design=start_design)
        solution = solve(bound, names, local, y_arr[block], w_arr[block], theta0[block], lower[block],
                         upper[block], free, tol=tol, max_iter=max_iter, dtype=torch_dtype, device=dev,
                         chunk_size=chunk_size, compile=compile, progress=progress, likelihood=likelihood,
                         absolute_sigma=bool(absolute_sigma))
        if starts:
            solution, multistart = solution
            multistart.pop("best_start"), multistart.pop("best_index")
    if likelihood:
        warn_infeasible_starts(solution, start)
    if str(torch_dtype) == "torch.float32":
        warn_float32_limits(solution, {**local, "y": y_arr[block]}, tol, start)
    if not likelihood and not absolute_sigma:  # unscaled errors need no degrees of freedom
        warn_no_dof(solution, int(free.sum()), start)
    result = _batch_result(bound, names, solution, free)
    if multistart:
        import dataclasses

        result = dataclasses.replace(result, multistart=multistart)
    result = gather_result(result, len(y_arr))
    result.timings["total_s"] = time.perf_counter() - t0
    if ids is not None:
        import dataclasses

        result = dataclasses.replace(result, ids=ids, id_name=id, id_dtype=id_dtype)
    return result


# -- data -----------------------------------------------------------------------------------
def _fit_dataarray(keywords: dict):
    """fit_many on an xarray DataArray y: its batch dimensions stacked into fits, the result
    keeping where each fit sits (``to_xarray``)."""
    import dataclasses

    from ..data.xarray_input import stack_dataarray
    from ..models import resolve_model

    if keywords["data"] is not None:
        raise ConfigError("pass a DataArray as y= (with dim=), or a table as data=, not both")
    names = ("x", "init", "bounds", "fixed", "weights", "sigma", "mask")
    stacked, stacking = stack_dataarray(keywords["y"], keywords["dim"], **{k: keywords[k] for k in names})
    model = resolve_model(keywords["model"]) if keywords["model"] is not None else None
    x = keywords["x"]
    if isinstance(stacked["x"], np.ndarray) and (x is None or isinstance(x, str)):
        coordinate = stacking.dim if x is None else x
        if model is not None and _names_input(model, coordinate):  # "a*exp(-time/tau)": x named as y's coordinate
            stacked["x"] = {coordinate: stacked["x"]}
    result = fit_many(**{**keywords, **stacked, "model": model if model is not None else keywords["model"],
                         "dim": None})
    return dataclasses.replace(result, stacking=stacking)


def _long_table(data, id, x, y):
    """(ids (B,), x (B, M), y (B, M), the id column's pandas type if numpy has none) from a long
    table, NaN-padded (data/tables.py)."""
    if id is None:
        raise ConfigError("with data=, name the column that says which fit a row belongs to: id='...'")
    if not isinstance(x, str) or not isinstance(y, str):
        raise ConfigError("with data=, x and y name columns, e.g. x='dose', y='signal'")
    from ..data.tables import long_to_batch

    if not (isinstance(data, Mapping) or hasattr(data, "columns")):
        raise DataError(f"data must be a pandas DataFrame or a dict of columns, got {type(data).__name__}")
    columns = {str(k): np.asarray(data[k]) for k in data.keys()}
    dtype = getattr(data[id], "dtype", None) if isinstance(id, str) and id in data else None
    # a Categorical or time-zoned id column: to_pandas puts the type back (results/batch_tables.py)
    id_dtype = dtype if hasattr(dtype, "categories") or getattr(dtype, "tz", None) is not None else None
    return (*long_to_batch(columns, id, x, y), id_dtype)


def _prepare(model, x, y, weights, sigma, mask, torch_dtype):
    """(model bound to its inputs, inputs, y (B, M), weights (B, M)) with the rules of one fit."""
    import torch

    from ..data.arrays import as_batch, batch_weights, check_float32_range
    from ..models.formula import FormulaModel

    y_arr = as_batch(y, "y")
    n_fits, n_points = y_arr.shape
    inputs = _inputs(model, x, n_fits, n_points)
    if isinstance(model, FormulaModel):
        model = model.bind(inputs)
        inputs = {n: inputs[n] for n in model.input_names}
    if torch_dtype == torch.float32:
        check_float32_range({**inputs, "y": y_arr}, batch=True)
    w_arr = batch_weights(y_arr, weights=weights, sigma=sigma, mask=mask, inputs=inputs)
    if torch_dtype == torch.float32 and w_arr.dtype != np.float32:
        check_float32_range({"weights": w_arr}, batch=True)
    return model, inputs, y_arr, w_arr


def _inputs(model, x, n_fits: int, n_points: int) -> dict:
    """Named inputs, each (M,) or (B, M); a bare array is the model's one input."""
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


# -- parameters -------------------------------------------------------------------------------
def _parameters(model, init, bounds, fixed, inputs, y, w):
    """(theta0 (B, P), lower (B, P), upper (B, P), free (P,)) from one ParameterSpec."""
    from ..models.parameters import ParameterSpec, columns, refuse_inputs_as_parameters

    names = model.param_names
    n_fits = y.shape[0]
    refuse_inputs_as_parameters(model, init, bounds, fixed, None)
    given, guess = _init_values(model, init, inputs, y, w)
    spec = ParameterSpec.create(names, init=given, bounds=bounds, fixed=fixed, n_fits=n_fits)
    start = spec.start(guess)
    theta0 = columns(start, names, n_fits)
    lower, upper = spec.bound_arrays()
    free = np.array([1.0 if n in spec.free else 0.0 for n in names])
    return theta0, lower, upper, free


def _init_values(model, init, inputs: dict, y: np.ndarray, w: np.ndarray) -> tuple[dict, dict]:
    """(values given by the user, values guessed), each name -> number or (B,) array."""
    names = model.param_names
    n_fits = y.shape[0]
    if isinstance(init, str):
        if init != "guess":
            raise ConfigError(f"init must be an array, a dict or 'guess', got {init!r}")
        from ..models.batch_guess import batch_guess

        guess = batch_guess(model, inputs, y, w)
        return {}, {n: guess[:, j] for j, n in enumerate(names)}
    if init is None and _can_guess(model):
        init = {}
    if init is None and getattr(model, "parsed", None) is None:
        raise ConfigError("fit_many needs init for a Python function: a (fits, parameters) array or a dict of "
                          "values ('guess' works for built-in models, and formulas start from their data)")
    if init is None or (isinstance(init, Mapping) and not _can_guess(model) and getattr(model, "parsed", None)):
        given = dict(init or {})
        missing = [n for n in names if n not in given]
        # a formula's parameters without init: the chi-square-scored start of gf.fit, on the
        # batch's mean curve (one start for every fit; starts=K spreads around it)
        return given, (_formula_batch_start(model, inputs, y, w, given, missing) if missing else {})
    if isinstance(init, Mapping):
        missing = [n for n in names if n not in init]
        if not missing or not _can_guess(model):
            return dict(init), {}  # missing names without a guess: ParameterSpec names them
        from ..models.batch_guess import batch_guess

        guess = batch_guess(model, inputs, y, w)  # as in gf.fit: values not given are guessed
        return dict(init), {n: guess[:, j] for j, n in enumerate(names) if n in missing}
    theta = np.asarray(init, dtype=float)
    if theta.shape == (len(names),):
        theta = np.broadcast_to(theta, (n_fits, len(names)))
    if theta.shape != (n_fits, len(names)):
        raise DataError(f"init must have shape ({n_fits}, {len(names)}) for parameters {', '.join(names)}, "
                        f"got {theta.shape}")
    return {n: theta[:, j] for j, n in enumerate(names)}, {}


def _formula_batch_start(model, inputs: dict, y: np.ndarray, w: np.ndarray, given: dict, missing: list) -> dict:
    """Starting values for a formula's parameters ``missing`` from the batch's mean curve (the
    first fit's when the inputs differ between fits): :func:`gradfit.models.starts.formula_start`
    with the given values held (scalars; per-fit arrays enter through their median)."""
    from ..models.starts import formula_start

    per_fit = any(np.ndim(v) == 2 for v in inputs.values())
    with np.errstate(all="ignore"):
        if per_fit:
            row = {k: (v[0] if np.ndim(v) == 2 else v) for k, v in inputs.items()}
            curve = np.where(w[0] > 0, y[0], np.nan)
        else:
            row = dict(inputs)
            curve = np.nanmean(np.where(w > 0, y, np.nan), axis=0)
    used = np.isfinite(curve)
    if not used.any():
        return {n: 1.0 for n in missing}
    row = {k: (np.asarray(v)[used] if np.ndim(v) == 1 else v) for k, v in row.items()}
    values = {n: (float(np.nanmedian(np.asarray(given[n], dtype=float))) if n in given else 1.0)
              for n in model.param_names}
    start = formula_start(model, row, curve[used], None, values, missing)
    return {n: start[n] for n in missing}


def _can_guess(model) -> bool:
    from ..models.builtin import BuiltinModel

    return isinstance(model, BuiltinModel)


def _names_input(model, name: str) -> bool:
    """A formula that uses ``name`` (and not "x") as its input."""
    parsed = getattr(model, "parsed", None)
    if parsed is None:
        return False
    names = parsed.rhs.names()
    return name in names and "x" not in names


# -- the result ---------------------------------------------------------------------------------
def _batch_result(model, names, solution, free):
    from ..results.batch_result import BatchResult
    from ..stats import batch_statistics

    if solution.likelihood is not None:
        from ..likelihood import batch_poisson_fit_statistics

        stats = batch_poisson_fit_statistics(solution.likelihood["deviance"], solution.likelihood["pearson"],
                                             solution.likelihood["loglike"], solution.n_used, int(free.sum()))
    else:
        stats = batch_statistics(solution.chisqr, solution.n_used, int(free.sum()))
    return BatchResult(param_names=tuple(names), params={n: solution.params[:, j] for j, n in enumerate(names)},
                       stderr={n: solution.stderr[:, j] for j, n in enumerate(names)}, stats=stats,
                       status=solution.status, iterations=solution.iterations, model_text=model.describe(),
                       timings=solution.timings, loss="mse" if solution.likelihood is None else "poisson",
                       covariance=solution.covariance, model=model)


def _check_counts(y, w) -> None:
    """loss="poisson": counts at used points must be >= 0 (DataError naming the first)."""
    with np.errstate(invalid="ignore"):
        bad = (w > 0) & (y < 0)
    if bad.any():
        fit, point = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"loss='poisson' needs counts >= 0: fit {fit}, point {point} has y = {y[fit, point]:g} "
                        f"({int(bad.sum())} negative value(s) in all); subtract no background from counts, or mask "
                        "those points (mask=, or NaN)")
