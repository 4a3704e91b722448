"""Bootstrap confidence intervals: every resampled refit of a finished fit as ONE
:func:`gradfit.fit_many` batch.

Data flow (forward hops only): the fit's data, rebuilt and checked against the result
(lsq/profile.py ``rebuild_problem``: training points, weights) -> ``n`` resampled datasets drawn
with a seeded numpy Generator -> one float64 ``fit_many`` call starting at the estimate, with the
fit's bounds and fixed parameters -> converged refits kept, the others counted -> a
:class:`Bootstrap` (samples, percentile / basic / BCa intervals).

Kinds of resampling:

- ``"residual"`` (least squares): ``y*_i = f(x_i; theta_hat) + e*_i / sqrt(w_i)``, the ``e*``
  drawn with replacement from the centred standardized residuals ``sqrt(w_i) (y_i - f_i)``,
  scaled by ``sqrt(n / (n - k))`` (``rescale=True``, k the free parameters) so their variance is
  the reduced chi-square, not its biased ``chi2 / n`` (the leverage-free correction; it does not
  undo each point's own leverage, as Davison and Hinkley's ``e_i / sqrt(1 - h_ii)`` would).
- ``"pairs"``: the points ``(x_i, y_i, w_i)`` drawn with replacement; each refit has its own x.
- ``"parametric"``: new noise from the fitted model. Poisson fits (the default for them):
  ``y* ~ Poisson(mu_hat)``, refitted by maximum likelihood. Least squares: Gaussian noise of
  variance ``s^2 / w_i`` (``s^2`` the reduced chi-square, 1 with ``absolute_sigma``).

:meth:`FitResult.ci(method="bootstrap") <gradfit.results.fit_result.FitResult.ci>` reaches this
module through the hook registered at the bottom (``results/`` sits below ``fitting/`` and
cannot import it); :func:`bootstrap` is the main API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, FitError, warn_user
from ..results.fit_result import register_interval_method

__all__ = ["INTERVALS", "KINDS", "Bootstrap", "bootstrap"]

KINDS = ("residual", "pairs", "parametric")
INTERVALS = ("percentile", "basic", "bca")
#: fewer resamples cannot place the tails of any usual level
MIN_RESAMPLES = 10
#: share of non-converged refits above which the intervals come with a warning
FAILED_WARN_FRACTION = 0.05
#: BCa's jackknife refits the data once per point in one batch of (points, points) arrays
BCA_MAX_POINTS = 5000


@dataclass(frozen=True, repr=False)
class Bootstrap:
    """The bootstrap distribution of a fit's free parameters (see :func:`bootstrap`).

    Attributes
    ----------
    names : the free parameters, the columns of ``samples``.
    estimate : {name: value} of the original fit.
    samples : (n_converged, P) refitted values, one row per converged resample.
    kind : "residual", "pairs" or "parametric".
    n_resamples : resamples drawn; ``n_failed`` of them did not converge and are dropped
        (``failed_status`` counts them by status).
    acceleration : {name: a} from the jackknife (``bca=True``), else None.
    seed : the seed the resamples were drawn with.
    """

    names: tuple
    estimate: dict
    samples: np.ndarray
    kind: str
    n_resamples: int
    n_failed: int
    failed_status: dict = field(default_factory=dict)
    acceleration: dict | None = None
    seed: int | None = None

    def __repr__(self) -> str:
        return (f"Bootstrap(kind={self.kind!r}, resamples={self.n_resamples}, converged={len(self.samples)}, "
                f"failed={self.n_failed}, params={list(self.names)})")

    @property
    def std(self) -> dict:
        """Bootstrap standard errors {name: sd} (ddof=1)."""
        sd = self.samples.std(axis=0, ddof=1)
        return {n: float(s) for n, s in zip(self.names, sd)}

    @property
    def covariance(self) -> np.ndarray:
        """(P, P) covariance of the samples, in the order of ``names``."""
        return np.atleast_2d(np.cov(self.samples, rowvar=False))

    def ci(self, level: float = 0.95, method: str = "percentile") -> dict:
        """Confidence intervals {name: (low, high)} from the bootstrap distribution.

        Parameters
        ----------
        level : between 0 and 1.
        method : "percentile" (the (1-level)/2 and (1+level)/2 quantiles of the samples),
            "basic" (``2 theta_hat`` minus those quantiles, reversed) or "bca" (bias-corrected and
            accelerated, Efron 1987: needs ``bca=True`` in :func:`bootstrap`). Quantiles are
            numpy's linear interpolation between order statistics. Percentile intervals do
            not widen for an estimated noise scale as t intervals do: at 95% they covered 94.1%
            over 1,000 simulated 50-point exponential decays (tests/test_bootstrap.py).

        Returns
        -------
        dict name -> (low, high) floats.
        """
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
            raise ConfigError(f"level must be between 0 and 1, got {level!r}")
        if method not in INTERVALS:
            raise ConfigError(f"interval must be one of {', '.join(map(repr, INTERVALS))}, got {method!r}")
        alpha = (1.0 - level) / 2.0
        out = {}
        for j, name in enumerate(self.names):
            column, theta = self.samples[:, j], self.estimate[name]
            if method == "bca":
                probs = self._bca_probabilities(column, theta, name, alpha)
            else:
                probs = (alpha, 1.0 - alpha)
            low, high = np.quantile(column, probs)
            if method == "basic":
                low, high = 2.0 * theta - high, 2.0 * theta - low
            out[name] = (float(low), float(high))
        return out

    def _bca_probabilities(self, column, theta, name, alpha) -> tuple[float, float]:
        """The BCa quantile levels: bias correction z0 from the share of samples below the
        estimate (ties counted half), acceleration from the jackknife."""
        from ..stats import z_quantile

        if self.acceleration is None:
            raise ConfigError("BCa intervals need the jackknife acceleration: run gf.bootstrap(..., bca=True)")
        share = (np.sum(column < theta) + 0.5 * np.sum(column == theta)) / len(column)
        share = min(max(share, 0.5 / len(column)), 1.0 - 0.5 / len(column))
        z0, a = z_quantile(share), self.acceleration[name]

        def level_at(p):
            z = z0 + z_quantile(p)
            return _normal_cdf(z0 + z / (1.0 - a * z))

        return level_at(alpha), level_at(1.0 - alpha)


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def bootstrap(result, *, x=None, y=None, data=None, sigma=None, weights=None, n: int = 1000, seed=0,
              kind: str | None = None, rescale: bool = True, bca: bool = False, tol: float = 1e-8,
              max_iter: int = 50, device="cpu", threads: int | None = None) -> Bootstrap:
    """Refit ``n`` resampled datasets of a finished fit in one :func:`gradfit.fit_many` batch.

    Parameters
    ----------
    result : a :class:`~gradfit.FitResult` of a scalar-parameter model (formula, built-in,
        function) fitted by least squares or with ``loss="poisson"``.
    x, y, data, sigma, weights : the data the fit was made with, passed as to
        :func:`gradfit.fit` (a result keeps no data); checked against the fit's chi-square.
    n : resamples (at least 10; 1,000 or more for 95% intervals).
    seed : seed of the numpy Generator that draws them (same seed, same intervals); None draws
        fresh entropy.
    kind : "residual" (default for least squares), "pairs", or "parametric" (default for
        Poisson fits: ``y* ~ Poisson(mu_hat)``); see the module docstring. A Poisson fit refuses
        "residual" (resampled residuals make negative, non-integer counts).
    rescale : residual kind: scale the centred residuals by ``sqrt(n / (n - k))``.
    bca : also refit the jackknife (one batch of ``points`` leave-one-out fits) for BCa
        intervals, ``Bootstrap.ci(level, "bca")``; at most 5,000 points.
    tol, max_iter : of the refits (float64; a relative chi-square change of 1e-8 moves the
        parameters by ~1e-4 standard errors, far below the intervals' Monte Carlo error).
    device, threads : as in :func:`gradfit.fit_many`.

    Returns
    -------
    Bootstrap
        ``.samples`` (converged refits x free parameters), ``.ci(level, method)``, ``.std``;
        refits that did not converge are dropped and counted in ``.n_failed`` (a warning when
        more than 5%).

    Raises
    ------
    ConfigError
        Bad n, kind or level; no data; a network, a tie, or a loss other than least squares or
        Poisson.
    DataError
        The data is not the fit's own.
    FitError
        Fewer than 10 refits converged.

    Examples
    --------
    >>> import numpy as np, gradfit as gf
    >>> rng = np.random.default_rng(0)
    >>> x = np.linspace(0, 4, 60)
    >>> y = 2.0 * np.exp(-0.8 * x) + 0.02 * rng.standard_normal(60)
    >>> r = gf.fit("a*exp(-k*x)", x=x, y=y, init={"a": 1.0, "k": 1.0})
    >>> b = gf.bootstrap(r, x=x, y=y, n=200, seed=1)
    >>> lo, hi = b.ci(0.95)["k"]
    >>> bool(lo < r.params["k"] < hi), b.samples.shape
    (True, (200, 2))
    """
    from ..lsq.problem import predict_numpy
    from ..lsq.profile import rebuild_problem
    from .many import fit_many

    model = result.model
    kind = _check_arguments(result, x, data, n, kind)
    poisson = result.settings.get("loss") == "poisson"
    problem = rebuild_problem(model, result.params, result.settings, result.stats, x=x, y=y, data=data,
                              sigma=sigma, weights=weights)
    inputs, y_obs, w = problem.numpy()
    with np.errstate(all="ignore"):
        mu = np.broadcast_to(predict_numpy(model, inputs, result.params), y_obs.shape).astype(float)
    rng = np.random.default_rng(seed)
    k = len(result.free)
    if kind == "pairs":
        rows = rng.integers(0, len(y_obs), size=(n, len(y_obs)))
        x_star = {name: (v[rows] if np.ndim(v) else v) for name, v in inputs.items()}
        y_star, w_star = y_obs[rows], None if w is None else w[rows]
    else:
        x_star, w_star = inputs, w
        y_star = _resample_y(kind, rng, n, y_obs, mu, w, k, poisson, rescale, result)

    def refit(inputs_, y_, weights_, mask=None):
        return fit_many(model, inputs_, y_, init=dict(result.params), bounds=_bounds(result.settings),
                        fixed=result.settings.get("fixed") or None, weights=weights_, mask=mask,
                        loss="poisson" if poisson else "mse", tol=tol, max_iter=max_iter, dtype="float64",
                        device=device, threads=threads)

    batch = refit(x_star, y_star, w_star)
    names = tuple(result.free)
    ok = np.asarray(batch.converged, dtype=bool)
    samples = np.stack([np.asarray(batch.params[name], dtype=float)[ok] for name in names], axis=1)
    failed = _failed_status(batch, ok)
    n_failed = int((~ok).sum())
    if ok.sum() < MIN_RESAMPLES:
        raise FitError(f"only {int(ok.sum())} of {n} bootstrap refits converged ({_status_text(failed)}); "
                       "check the fit, or raise max_iter")
    if n_failed > FAILED_WARN_FRACTION * n:
        warn_user(f"bootstrap: {n_failed} of {n} refits did not converge ({_status_text(failed)}) and were dropped; "
                  "the intervals describe the converged ones only (raise max_iter, or check the model)")
    acceleration = None
    if bca:
        acceleration = _jackknife_acceleration(refit, inputs, y_obs, w, names)
    return Bootstrap(names=names, estimate={name: float(result.params[name]) for name in names}, samples=samples,
                     kind=kind, n_resamples=n, n_failed=n_failed, failed_status=failed, acceleration=acceleration,
                     seed=seed)


def _check_arguments(result, x, data, n, kind) -> str:
    """The kind to use, after refusing what cannot be bootstrapped."""
    model = result.model
    if not getattr(model, "scalar_params", False):
        raise ConfigError("bootstrap intervals refit scalar-parameter models (formulas, built-ins, functions); "
                          "a network's weights have no per-parameter intervals")
    loss = result.settings.get("loss")
    if loss not in ("mse", "poisson") or result.stats is None:
        raise ConfigError(f"bootstrap refits least-squares (loss='mse') and Poisson fits, not loss={loss!r}")
    if result.settings.get("tie"):
        raise ConfigError("bootstrap refits with gf.fit_many, which does not support tie; substitute the tie into "
                          "the formula and fit again")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < MIN_RESAMPLES:
        raise ConfigError(f"n must be an integer number of resamples >= {MIN_RESAMPLES} (1,000 or more for 95% "
                          f"intervals), got {n!r}")
    if x is None and data is None:
        raise ConfigError("bootstrap intervals refit the model, so they need the fit's data: pass it, e.g. "
                          "r.ci(0.95, method='bootstrap', x=x, y=y) or data=df, with sigma= or weights= if the fit "
                          "had them")
    poisson = loss == "poisson"
    kind = ("parametric" if poisson else "residual") if kind is None else kind
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if poisson and kind == "residual":
        raise ConfigError("a Poisson fit is bootstrapped with kind='parametric' (y* ~ Poisson(mu)) or 'pairs'; "
                          "resampled residuals would make negative, non-integer counts")
    return kind


def _resample_y(kind, rng, n, y, mu, w, k, poisson, rescale, result) -> np.ndarray:
    """(n, points) resampled responses for the residual and parametric kinds."""
    used = np.ones(len(y), bool) if w is None else w > 0
    sw = np.ones(len(y)) if w is None else np.sqrt(np.where(used, w, 1.0))
    if kind == "parametric":
        if poisson:
            return rng.poisson(np.clip(mu, 0.0, None), size=(n, len(y))).astype(float)
        scale = 1.0 if result.absolute_sigma else math.sqrt(result.stats["redchi"])
        return mu + scale * rng.standard_normal((n, len(y))) / sw
    # the standardized residuals of the points that count (zero weights carry no residual)
    e = (sw * (y - mu))[used]
    e = e - e.mean()
    m = len(e)
    if rescale and m > k:
        e = e * math.sqrt(m / (m - k))
    draw = e[rng.integers(0, m, size=(n, len(y)))]
    return np.where(used, mu + draw / sw, y)


def _bounds(settings: dict) -> dict | None:
    bounds = settings.get("bounds")
    if not bounds:
        return None
    return {name: (None if lo is None or lo == -math.inf else lo, None if hi is None or hi == math.inf else hi)
            for name, (lo, hi) in bounds.items()}


def _failed_status(batch, ok) -> dict:
    """{status name: count} of the refits that did not converge."""
    values, counts = np.unique(np.asarray(batch.status_text)[~ok], return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}


def _status_text(failed: dict) -> str:
    return ", ".join(f"{count} {status}" for status, count in failed.items()) or "none failed"


def _jackknife_acceleration(refit, inputs, y, w, names) -> dict:
    """BCa's acceleration per parameter from the leave-one-out refits (one batch, the
    left-out point masked): ``a = sum(d^3) / (6 (sum d^2)^1.5)``, ``d = mean - theta_(i)``."""
    m = len(y)
    if m > BCA_MAX_POINTS:
        raise ConfigError(f"bca=True refits the data once per point ({m} points; at most {BCA_MAX_POINTS}); "
                          "use the percentile or basic interval")
    mask = ~np.eye(m, dtype=bool)
    batch = refit(inputs, np.broadcast_to(y, (m, m)).copy(), w, mask)
    ok = np.asarray(batch.converged, dtype=bool)
    out = {}
    for name in names:
        theta = np.asarray(batch.params[name], dtype=float)[ok]
        d = theta.mean() - theta
        denominator = 6.0 * float(np.sum(d * d)) ** 1.5
        out[name] = float(np.sum(d ** 3) / denominator) if denominator > 0 else 0.0
    return out


def _bootstrap_intervals(result, level, *, x=None, y=None, data=None, sigma=None, weights=None, n=1000, seed=0,
                         kind=None, interval="percentile") -> dict:
    """FitResult.ci(method="bootstrap"): :func:`bootstrap` then :meth:`Bootstrap.ci`."""
    if interval not in INTERVALS:
        raise ConfigError(f"interval must be one of {', '.join(map(repr, INTERVALS))}, got {interval!r}")
    boot = bootstrap(result, x=x, y=y, data=data, sigma=sigma, weights=weights, n=n, seed=seed, kind=kind,
                     bca=interval == "bca")
    return boot.ci(level, interval)


register_interval_method("bootstrap", _bootstrap_intervals)
