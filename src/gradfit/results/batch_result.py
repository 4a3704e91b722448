"""BatchResult: what fit_many returns. Arrays of one value per fit; reports itself and saves to
.npz (every field), Parquet or CSV (the per-fit table, ids kept with their type); all three
load back with :meth:`BatchResult.load`."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._files import parse_json  # a ValueError (caught by load) for JSON nested too deeply
from ..errors import ConfigError, GradfitError, PersistError
from ..status import Status
from .html_report import BatchDisplay
from .batch_tables import csv_columns, id_document, id_fields, table_frame, table_ids

__all__ = ["BatchResult", "STATUS_NAMES"]

#: status code -> name (BatchResult.status holds the codes of gradfit.status.Status)
STATUS_NAMES = {s.code: s.value for s in Status}
#: the keys of BatchResult.stats (the residual-free keys of FitResult.stats)
STAT_KEYS = ("n", "dof", "chisqr", "redchi", "aic", "bic")
#: the further keys of a likelihood fit's stats (fit_many(loss="poisson"))
_LIKELIHOOD_KEYS = ("deviance", "loglike")
_READS = "BatchResult.load reads the .npz files and the .csv/.parquet tables that BatchResult.save writes"
#: version of the .npz document written by :meth:`BatchResult.save`
_FORMAT = 2


@dataclass(frozen=True, repr=False)  # repr, notebook blocks and to_html: BatchDisplay
class BatchResult(BatchDisplay):
    """Per-fit results of :func:`gradfit.fit_many`.

    Attributes
    ----------
    param_names : tuple of the P parameter names.
    params, stderr : dict name -> (B,) arrays (stderr NaN where undetermined, 0 if fixed).
    stats : dict of (B,) arrays with FitResult.stats' key names: n (points used), dof,
        chisqr, redchi, aic, bic (gradfit.stats.batch_statistics).
    status : (B,) int8 :class:`~gradfit.status.Status` codes (``Status.from_code``);
        ``status_text`` gives the names and ``converged`` is ``status == 0``.
    iterations : (B,) iterations each fit ran.
    model_text : the model's description.
    timings : warm-up (compilation) and fitting time, fits per second, path, device.
    ids : None, or (B,) the original ids of the fits (long tables: ``fit_many(data=, id=)``).
    loss : "mse" (least squares) or "poisson" (maximum likelihood: ``stats`` add deviance and
        loglike, chisqr is Pearson's, aic/bic come from the log-likelihood and stderr from the
        Fisher information).

    ``chi2``, ``redchi`` and ``n_points`` are read-only aliases of ``stats`` entries.
    """

    param_names: tuple
    params: dict
    stderr: dict
    stats: dict
    status: np.ndarray
    iterations: np.ndarray
    model_text: str = ""
    timings: dict = field(default_factory=dict)
    ids: np.ndarray | None = None
    loss: str = "mse"
    #: fit_many(shared=...): name -> the shared value, its standard error, and the joint fit's
    #: statistics (scalars n, dof, chisqr, redchi, aic, bic, n_params); empty otherwise
    shared: dict = field(default_factory=dict)
    shared_stderr: dict = field(default_factory=dict)
    joint_stats: dict = field(default_factory=dict)
    #: fit_many(starts=K): starts (K) and (B,) converged, reached_best, distinct_minima; else empty
    multistart: dict = field(default_factory=dict)
    #: (B, P, P) each fit's parameter covariance (0 for fixed; NaN where undetermined), or None
    covariance: np.ndarray | None = None
    #: the fitted model (bound to its inputs); not saved: :meth:`band` rebuilds formulas and built-ins
    model: object = field(default=None, repr=False, compare=False)
    #: fit_many(models=...): (B,) the chosen candidate per fit (-1: none converged), the candidates'
    #: labels, (B, candidates) their criterion values (NaN where not converged), and its name
    model_index: np.ndarray | None = None
    models: tuple = ()
    criteria: np.ndarray | None = None
    criterion: str = ""
    #: long tables: the id column's name, and its pandas type when numpy has none (a Categorical, zoned
    #: dates; results/batch_tables.py); a fitted DataArray: where each fit sits on its grid (not saved)
    id_name: str = ""
    id_dtype: object = field(default=None, repr=False, compare=False)
    stacking: object = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.status)

    # -- aliases and views -----------------------------------------------------------------------
    @property
    def chi2(self) -> np.ndarray:
        return self.stats["chisqr"]

    @property
    def redchi(self) -> np.ndarray:
        return self.stats["redchi"]

    @property
    def n_points(self) -> np.ndarray:
        return self.stats["n"]

    @property
    def status_names(self) -> dict:
        return dict(STATUS_NAMES)

    @property
    def converged(self) -> np.ndarray:
        return self.status == Status.CONVERGED.code

    @property
    def status_text(self) -> np.ndarray:
        return np.array([STATUS_NAMES.get(int(s), str(int(s))) for s in self.status])

    def status_counts(self) -> dict:
        """status name -> number of fits, most common first."""
        codes, counts = np.unique(self.status, return_counts=True)
        pairs = sorted(zip(counts.tolist(), codes.tolist()), key=lambda t: (-t[0], t[1]))
        return {STATUS_NAMES.get(c, str(c)): n for n, c in pairs}

    def band(self, x, level: float = 0.95, kind: str = "confidence", *, sigma=None, model=None):
        """(lower, upper), each (B, M): every fit's confidence or prediction band at ``x`` ((M,)
        or (B, M), a dict for several inputs); see :func:`gradfit.results.bands.batch_band`."""
        from .bands import batch_band

        return batch_band(self, x, level, kind, sigma=sigma, model=model)

    def plot(self, path, x=None, y=None, *, examples: int = 9, seed: int = 0) -> None:
        """PNG of parameter histograms (converged fits) and, given the data, a grid of example
        fits; see :func:`gradfit.results.plot_batch.batch_figure`."""
        from .plot_batch import plot_batch

        plot_batch(self, path, x, y, examples=examples, seed=seed)

    # -- text --------------------------------------------------------------------------------------
    def summary(self) -> str:
        """Model, status counts, speed and each parameter's median over the converged fits."""
        t = self.timings
        lines = [f"model      {self.model_text}", self._fits_line(),
                 f"speed      {t.get('fits_per_s', float('nan')):,.0f} fits/s on {t.get('device', '?')} "
                 f"({t.get('path', '?')} path{', compiled' if t.get('compiled') else ''}"
                 f"{', native kernel' if t.get('native') else ''}; "
                 f"warm-up {t.get('warmup_s', 0.0):.2f} s, fitting {t.get('fit_s', 0.0):.3f} s)"]
        lines.extend(self._shared_lines(max(len(n) for n in self.param_names)))
        ok = self.converged
        for name in self.param_names:
            v = self.params[name][ok & ~np.isnan(self.params[name])]  # NaN: not in the chosen model (models=)
            if v.size:
                lines.append(f"  {name:<8} median {np.median(v):.6g}  (2.5%..97.5%: {np.percentile(v, 2.5):.4g} .. "
                             f"{np.percentile(v, 97.5):.4g})")
        return "\n".join(lines)

    def report(self) -> str:
        """A text report mirroring FitResult.report(): model, status counts, statistics, and
        per parameter the median, spread (2.5%..97.5%) and median standard error, over the
        converged fits."""
        ok = self.converged
        lines = [f"model      {self.model_text}", self._fits_line()]
        if self.loss == "poisson":
            lines.append("loss       poisson (maximum likelihood; standard errors from the Fisher information)")
        if ok.any():
            st = {k: v[ok] for k, v in self.stats.items()}
            lines.append("statistics (median over converged fits)")
            lines.append(f"  points {_med(st['n'])}, free parameters {_med(st['n'] - st['dof'])}, "
                         f"degrees of freedom {_med(st['dof'])}")
            lines.append(f"  chi-square {_med(st['chisqr'])}, reduced chi-square {_med(st['redchi'])}")
            lines.append(f"  AIC {_med(st['aic'])}, BIC {_med(st['bic'])}")
            if "deviance" in st:
                lines.append(f"  deviance {_med(st['deviance'])}, log-likelihood {_med(st['loglike'])}")
            width = max(len(n) for n in self.param_names)
            lines.extend(self._shared_lines(width))
            lines.append("parameters (converged fits)")
            for name in self.param_names:
                has = ok & ~np.isnan(self.params[name])  # NaN: not in the chosen model (models=)
                v, se = self.params[name][has], self.stderr[name][has]
                if not v.size:
                    continue
                lines.append(f"  {name:<{width}}  median {np.median(v):.6g}  spread {np.percentile(v, 2.5):.4g} .. "
                             f"{np.percentile(v, 97.5):.4g}  stderr median {_med(se)}")
        return "\n".join(lines)

    def _shared_lines(self, width: int) -> list:
        """The joint fit's statistics and shared parameters (fit_many(shared=...)), or nothing."""
        if not self.shared:
            return []
        js = self.joint_stats
        lines = [f"joint fit: points {js.get('n', '-')}, free parameters {js.get('n_params', '-')}, degrees of "
                 f"freedom {js.get('dof', '-')}",
                 f"  chi-square {js.get('chisqr', float('nan')):.6g}, reduced chi-square "
                 f"{js.get('redchi', float('nan')):.6g}, AIC {js.get('aic', float('nan')):.6g}, "
                 f"BIC {js.get('bic', float('nan')):.6g}", "shared parameters (one value for every fit)"]
        if "deviance" in js:  # a joint Poisson fit
            lines.insert(2, f"  deviance {js['deviance']:.6g}, log-likelihood {js.get('loglike', float('nan')):.6g}")
        for name, v in self.shared.items():
            lines.append(f"  {name:<{width}}  {v:.8g} +/- {self.shared_stderr.get(name, float('nan')):.3g}")
        return lines

    def _fits_line(self) -> str:
        line = f"fits       {len(self)}: " + ", ".join(f"{v} {k}" for k, v in self.status_counts().items())
        if self.models:  # fit_many(models=...): how often each candidate won
            won = [f"{int((self.model_index == j).sum())} {m}" for j, m in enumerate(self.models)]
            won.append(f"{int((self.model_index < 0).sum())} none")
            line += f"\nchosen     by {self.criterion.upper()}: " + ", ".join(won)
        return line

    # -- tables ------------------------------------------------------------------------------------
    def columns(self) -> dict:
        """One column per quantity: fit, id (if any), <param>, <param>_stderr, the statistics
        under the keys of ``stats`` and of FitResult.stats (n, dof, chisqr, redchi, aic, bic),
        iterations, status, converged.

        Parameters keep their names: a bookkeeping column whose name a parameter (or its
        ``_stderr``) takes is written as ``result_<name>`` (Hill's ``n`` vs points ``n``).
        Ids keep their type (text, integers) so the table joins back to the data.
        """
        params = {n: self.params[n] for n in self.param_names}
        params.update({f"{n}_stderr": self.stderr[n] for n in self.param_names})
        st = self.stats
        fixed = {"fit": np.arange(len(self))}
        if self.ids is not None:
            fixed["id"] = self.ids
        rest = dict(n=st["n"], dof=st["dof"], chisqr=st["chisqr"], redchi=st["redchi"], aic=st["aic"],
                    bic=st["bic"], **{k: st[k] for k in _LIKELIHOOD_KEYS if k in st},
                    iterations=self.iterations, status=self.status_text, converged=self.converged)
        if self.models:  # fit_many(models=...): the chosen candidate's label per fit ("" for none)
            rest["model"] = np.array([self.models[i] if i >= 0 else "" for i in self.model_index], dtype=object)
        rename = (lambda k: f"result_{k}" if k in params else k)
        return {**{rename(k): v for k, v in fixed.items()}, **params, **{rename(k): v for k, v in rest.items()}}

    def to_pandas(self):
        """A pandas DataFrame, one row per fit, typed ids under the id's name (results/batch_tables.py)."""
        from .batch_tables import to_pandas

        return to_pandas(self)

    def to_xarray(self):
        """An xarray Dataset per fit, on a fitted DataArray's grid (results/batch_tables.py)."""
        from .batch_tables import to_xarray

        return to_xarray(self)

    # -- the arrays, for gathering across processes ---------------------------------------------------
    def numeric_arrays(self) -> dict:
        """Every per-fit numeric array under a flat key (param:<name>, stderr:<name>,
        stats:<key>, status, iterations)."""
        out = {"status": self.status, "iterations": self.iterations}
        out.update({f"stats:{k}": v for k, v in self.stats.items()})
        for n in self.param_names:
            out[f"param:{n}"] = self.params[n]
            out[f"stderr:{n}"] = self.stderr[n]
        out.update({f"multistart:{k}": v for k, v in self.multistart.items() if k != "starts"})
        if self.covariance is not None:
            out["covariance"] = self.covariance
        return out

    def with_arrays(self, arrays: dict) -> "BatchResult":
        """A copy with the arrays of :meth:`numeric_arrays` replaced."""
        return dataclasses.replace(
            self, params={n: arrays[f"param:{n}"] for n in self.param_names},
            stderr={n: arrays[f"stderr:{n}"] for n in self.param_names},
            stats={k[len("stats:"):]: v for k, v in arrays.items() if k.startswith("stats:")},
            status=arrays["status"], iterations=arrays["iterations"], timings=dict(self.timings),
            multistart={**self.multistart, **{k[11:]: v for k, v in arrays.items() if k.startswith("multistart:")}},
            covariance=arrays.get("covariance", self.covariance))

    # -- files -------------------------------------------------------------------------------------
    def save(self, path) -> None:
        """Write .npz (every field, no pickles; text ids as a unicode array), .parquet or .csv
        (the table of :meth:`columns`), atomically; :meth:`load` reads each back."""
        from .._files import atomic_write_bytes

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            buf = io.BytesIO()
            np.savez(buf, **self._document())
            atomic_write_bytes(path, buf.getvalue())
        elif suffix == ".parquet":
            from ..errors import require

            for module in ("pandas", "pyarrow"):
                require(module, extra="pandas", feature=f"saving {path.name} (Parquet)")
            buf = io.BytesIO()
            table_frame(self).to_parquet(buf, index=False)
            atomic_write_bytes(path, buf.getvalue())
        elif suffix == ".csv":
            from ..data.io import write_csv

            write_csv(path, csv_columns(self))
        else:
            raise ConfigError(f"save to .npz, .parquet or .csv, not {suffix or 'a file without extension'}")

    def _document(self) -> dict:
        """The .npz document: one array per field (text fields as 0-d string arrays)."""
        doc = {k.replace(":", "__"): np.asarray(v) for k, v in self.numeric_arrays().items()}
        doc["format"] = np.asarray(_FORMAT)
        doc["param_names"] = np.array(self.param_names, dtype=str)
        doc["model_text"] = np.asarray(self.model_text, dtype=str)
        doc["loss"] = np.asarray(self.loss, dtype=str)
        doc["timings"] = np.asarray(json.dumps(self.timings), dtype=str)
        if self.shared:  # global fitting: the shared values and the joint statistics, by name
            doc["shared_names"] = np.array(list(self.shared), dtype=str)
            doc["shared_values"] = np.array([self.shared[n] for n in self.shared], dtype=float)
            doc["shared_stderr"] = np.array([self.shared_stderr.get(n, np.nan) for n in self.shared], dtype=float)
            doc["joint_stats_keys"] = np.array(list(self.joint_stats), dtype=str)
            doc["joint_stats_values"] = np.array(list(self.joint_stats.values()), dtype=float)
        if self.models:  # fit_many(models=...): the choice per fit and every candidate's criterion
            doc.update(models=np.array(self.models, dtype=str), model_index=np.asarray(self.model_index),
                       criteria=np.asarray(self.criteria, dtype=float), criterion=np.asarray(self.criterion, dtype=str))
        if self.multistart:
            doc["multistart_starts"] = np.asarray(self.multistart["starts"])
        if self.ids is not None:  # text ids as a unicode array: no pickles
            ids = np.asarray(self.ids)
            doc["ids"] = ids.astype(str) if ids.dtype.kind in "OSU" else ids
            doc.update(id_document(self))
        return doc

    @classmethod
    def load(cls, path) -> "BatchResult":
        """Read a BatchResult written by :meth:`save`.

        .npz gives back every field (also the files of earlier versions, which had chi2,
        redchi and n_points but no stats, ids or timings). .csv and .parquet tables give back
        every per-fit column (parameters, errors, statistics, iterations, status, ids); the
        model text and timings are not in a table. Text ids come back as str, integer ids as
        int64.

        Raises PersistError for a missing or unreadable file.

        Examples
        --------
        >>> import numpy as np, gradfit as gf, tempfile, pathlib
        >>> r = gf.fit_many("a*x", x=np.arange(3.0), y=[[0.0, 2.0, 4.1], [0.0, 1.0, 2.1]], init={"a": 1})
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.csv"
        >>> r.save(p)
        >>> bool(np.allclose(BatchResult.load(p).params["a"], r.params["a"]))
        True
        """
        path = Path(path)
        if path.suffix.lower() in (".csv", ".parquet"):
            return _from_table(path)
        if path.suffix.lower() != ".npz":
            raise PersistError(f"{path}: not {path.suffix or 'a file without extension'}; {_READS}")
        if not path.is_file():
            raise PersistError(f"{path}: no such fit_many result file")
        try:
            return _from_npz(cls, path)
        except PersistError:
            raise
        except (OSError, EOFError, ValueError, TypeError, KeyError, IndexError, zipfile.BadZipFile,
                GradfitError) as exc:  # truncated, damaged or edited: one line, never a traceback
            raise PersistError(f"cannot read fit_many results from {path} ({type(exc).__name__}: {exc}); "
                               "the file is truncated or damaged") from None


def _from_npz(cls, path: Path) -> "BatchResult":
    """A BatchResult from the .npz document of :meth:`BatchResult.save` (errors left to load)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    names = tuple(str(n) for n in arrays.get("param_names", ()))
    flat = {k.replace("__", ":"): v for k, v in arrays.items()}
    if "stats:chisqr" not in flat and "chi2" in flat:  # format 1: chi2, redchi, n_points
        flat.update(_stats_of_format1(flat, len(names)))
    missing = [k for k in ("status", "iterations", *(f"param:{n}" for n in names)) if k not in flat]
    if missing or not names:
        raise PersistError(f"{path} is not a fit_many result file (missing {', '.join(missing) or 'param_names'})")
    _check_lengths(flat, arrays.get("ids"), path)
    base = cls(param_names=names, params={}, stderr={}, stats={}, status=flat["status"],
               iterations=flat["iterations"], model_text=str(arrays.get("model_text", "")),
               timings=parse_json(str(arrays["timings"])) if "timings" in arrays else {},
               **id_fields(arrays, _ids(arrays.get("ids"))), loss=_loss(arrays.get("loss"), path),
               **_shared_of(arrays),
               **_selection_of(arrays, len(flat["status"])),
               multistart={"starts": int(arrays["multistart_starts"])} if "multistart_starts" in arrays else {})
    return base.with_arrays({k: v for k, v in flat.items() if k.startswith(("param:", "stderr:", "stats:",
                                                                               "status", "iterations", "covariance",
                                                                               "multistart:"))})


def _shared_of(arrays: dict) -> dict:
    """shared, shared_stderr and joint_stats from a saved global fit (empty for other files)."""
    if "shared_names" not in arrays:
        return {}
    names = [str(n) for n in np.atleast_1d(arrays["shared_names"])]
    keys = [str(k) for k in np.atleast_1d(arrays.get("joint_stats_keys", np.array([], dtype=str)))]
    stats = {k: float(v) for k, v in zip(keys, np.atleast_1d(arrays.get("joint_stats_values", [])))}
    stats.update({k: int(stats[k]) for k in ("n", "dof", "n_params") if k in stats})
    return {"shared": {n: float(v) for n, v in zip(names, np.atleast_1d(arrays["shared_values"]))},
            "shared_stderr": {n: float(v) for n, v in zip(names, np.atleast_1d(arrays["shared_stderr"]))},
            "joint_stats": stats}


def _selection_of(arrays: dict, n_fits: int) -> dict:
    """model_index, models, criteria and criterion of a saved fit_many(models=...) (else nothing)."""
    if "models" not in arrays:
        return {}
    models = tuple(str(m) for m in np.atleast_1d(arrays["models"]))
    index, criteria = np.asarray(arrays["model_index"]), np.asarray(arrays["criteria"], dtype=float)
    if index.shape != (n_fits,) or criteria.shape != (n_fits, len(models)) or index.max(initial=-1) >= len(models):
        raise ValueError(f"the model choice arrays have shapes {index.shape} and {criteria.shape}, not ({n_fits},) "
                         f"and ({n_fits}, {len(models)})")
    return {"models": models, "model_index": index.astype(np.int64), "criteria": criteria,
            "criterion": str(arrays.get("criterion", ""))}


def _check_lengths(flat: dict, ids, path: Path) -> None:
    """Every per-fit array is one numeric row per fit, and the status codes are known."""
    n = np.shape(flat["status"])[0] if np.ndim(flat["status"]) == 1 else -1
    per_fit = {k: v for k, v in flat.items() if k.startswith(("param:", "stderr:", "stats:", "status", "iterations"))}
    for key, v in per_fit.items():
        if v.ndim != 1 or v.shape[0] != n or v.dtype.kind not in "fiub":
            raise PersistError(f"{path}: the {key!r} array is {v.dtype} of shape {v.shape}, not one number per fit "
                               f"({n} fits); the file is damaged or was edited")
    if ids is not None and (ids.ndim != 1 or ids.shape[0] != n):
        raise PersistError(f"{path}: the ids array has shape {ids.shape}, not one id per fit ({n} fits)")
    codes = {s.code for s in Status}
    unknown = sorted(set(np.unique(flat["status"]).tolist()) - codes)
    if unknown:
        raise PersistError(f"{path}: unknown status code {unknown[0]!r}; the file is damaged or was edited")


def _stats_of_format1(flat: dict, n_params: int) -> dict:
    """stats from a format-1 file; the free-parameter count comes from chi2 / redchi."""
    from ..stats import batch_statistics

    chi2, redchi, n = flat["chi2"], flat["redchi"], flat["n_points"]
    with np.errstate(invalid="ignore", divide="ignore"):
        n_free = n - chi2 / redchi
    n_free = n_free[np.isfinite(n_free)]
    k = int(np.rint(n_free[0])) if n_free.size else n_params
    return {f"stats:{key}": v for key, v in batch_statistics(chi2, n, k).items()}


def _from_table(path: Path) -> "BatchResult":
    """A BatchResult from the table of :meth:`BatchResult.columns` (the inverse of save)."""
    from ..data.io import read_table
    from ..errors import DataError

    try:
        cols = read_table(path)
    except DataError as exc:
        raise PersistError(f"cannot read fit_many results from {path} ({exc}); {_READS}") from None
    names = tuple(k[: -len("_stderr")] for k in cols if k.endswith("_stderr") and k[: -len("_stderr")] in cols)

    taken = {*names, *(f"{n}_stderr" for n in names)}

    def fixed(key):  # bookkeeping columns a parameter's name took are written result_<key>
        return cols.get(f"result_{key}" if key in taken else key)

    status = fixed("status")
    if not names or status is None or fixed("iterations") is None:
        raise PersistError(f"{path} is not a fit_many result table (it needs <param>, <param>_stderr, status and "
                           "iterations columns)")
    by_name = {s.value: s.code for s in Status}
    unknown = sorted({str(v) for v in status} - set(by_name))
    if unknown:
        raise PersistError(f"{path}: unknown status {unknown[0]!r} in the status column")
    stats = {k: np.asarray(fixed(k), dtype=float) for k in (*STAT_KEYS, *_LIKELIHOOD_KEYS) if fixed(k) is not None}
    ids, id_dtype = table_ids(path, "result_id" if "id" in taken else "id", fixed("id"))
    return BatchResult(param_names=names, params={n: np.asarray(cols[n], dtype=float) for n in names},
                       stderr={n: np.asarray(cols[f"{n}_stderr"], dtype=float) for n in names},
                       stats=stats, status=np.array([by_name[str(v)] for v in status], dtype=np.int8),
                       iterations=np.asarray(fixed("iterations")), ids=ids, id_dtype=id_dtype,
                       loss="poisson" if "deviance" in stats else "mse")


def _loss(value, path: Path) -> str:
    """The saved loss ("mse" when the file predates it); anything else is a damaged file."""
    loss = "mse" if value is None else str(value)
    if loss not in ("mse", "poisson"):
        raise PersistError(f"{path}: unknown loss {loss[:40]!r}; the file is damaged or was edited")
    return loss


def _ids(ids):
    """Saved ids as fit_many returns them: text as an object array of str, numbers as they were."""
    if ids is None or ids.dtype.kind not in "US":
        return ids
    out = np.empty(ids.shape, dtype=object)
    out[...] = ids.astype(str).tolist()
    return out


def _med(v) -> str:
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    return f"{np.median(v):.6g}" if v.size else "-"
