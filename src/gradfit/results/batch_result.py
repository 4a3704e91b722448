"""BatchResult: what fit_many returns. Arrays of one value per fit; saves to .npz or Parquet."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["BatchResult"]


@dataclass
class BatchResult:
    """Per-fit results of :func:`gradfit.fit_many`.

    Attributes
    ----------
    params, stderr : dict name -> (B,) arrays (stderr NaN where undetermined, 0 if fixed).
    chi2, redchi : (B,) chi-square and chi-square per degree of freedom.
    n_points : (B,) points used (not masked, not NaN).
    status : (B,) int codes; ``status_names`` maps them (0 converged, 1 max_iterations,
        2 singular, 3 too_few_points, 4 not_finite). ``converged`` is ``status == 0``.
    iterations : (B,) iterations each fit ran.
    timings : warm-up (compilation) and fitting time, fits per second, path, device.
    """

    param_names: tuple
    params: dict
    stderr: dict
    chi2: np.ndarray
    redchi: np.ndarray
    n_points: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    model_text: str = ""
    timings: dict = field(default_factory=dict)
    status_names: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.chi2)

    @property
    def converged(self) -> np.ndarray:
        return self.status == 0

    @property
    def status_text(self) -> np.ndarray:
        return np.array([self.status_names.get(int(s), str(int(s))) for s in self.status])

    def summary(self) -> str:
        n = len(self)
        counts = {self.status_names.get(int(k), str(k)): int(v)
                  for k, v in zip(*np.unique(self.status, return_counts=True))}
        t = self.timings
        lines = [f"model      {self.model_text}",
                 f"fits       {n}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
                 f"speed      {t.get('fits_per_s', float('nan')):,.0f} fits/s on {t.get('device', '?')} "
                 f"({t.get('path', '?')} path{', compiled' if t.get('compiled') else ''}; "
                 f"warm-up {t.get('warmup_s', 0.0):.2f} s, fitting {t.get('fit_s', 0.0):.3f} s)"]
        ok = self.converged
        for name in self.param_names:
            v = self.params[name][ok]
            if v.size:
                lines.append(f"  {name:<8} median {np.median(v):.6g}  (2.5%..97.5%: {np.percentile(v, 2.5):.4g} .. "
                             f"{np.percentile(v, 97.5):.4g})")
        return "\n".join(lines)

    # -- tables and files -------------------------------------------------------------------
    def columns(self) -> dict:
        """One column per quantity: fit, <param>, <param>_stderr, chi2, redchi, n_points,
        iterations, status, converged."""
        out = {"fit": np.arange(len(self))}
        for n in self.param_names:
            out[n] = self.params[n]
        for n in self.param_names:
            out[f"{n}_stderr"] = self.stderr[n]
        out.update(chi2=self.chi2, redchi=self.redchi, n_points=self.n_points, iterations=self.iterations,
                   status=self.status_text, converged=self.converged)
        return out

    def to_pandas(self):
        """A pandas DataFrame, one row per fit."""
        import pandas as pd

        return pd.DataFrame(self.columns())

    def numeric_arrays(self) -> dict:
        out = {"chi2": self.chi2, "redchi": self.redchi, "n_points": self.n_points, "status": self.status,
               "iterations": self.iterations}
        for n in self.param_names:
            out[f"param:{n}"] = self.params[n]
            out[f"stderr:{n}"] = self.stderr[n]
        return out

    def with_arrays(self, arrays: dict) -> "BatchResult":
        return dataclasses.replace(
            self, params={n: arrays[f"param:{n}"] for n in self.param_names},
            stderr={n: arrays[f"stderr:{n}"] for n in self.param_names}, chi2=arrays["chi2"],
            redchi=arrays["redchi"], n_points=arrays["n_points"], status=arrays["status"],
            iterations=arrays["iterations"], timings=dict(self.timings))

    def save(self, path) -> None:
        """Write .npz (arrays; no pickles) or .parquet (a table), atomically; .csv also works."""
        from .._files import atomic_write_bytes

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            buf = io.BytesIO()
            arrays = {k.replace(":", "__"): np.asarray(v) for k, v in self.numeric_arrays().items()}
            arrays["param_names"] = np.array(self.param_names, dtype=str)
            np.savez(buf, **arrays)
            atomic_write_bytes(path, buf.getvalue())
        elif suffix == ".parquet":
            buf = io.BytesIO()
            self.to_pandas().to_parquet(buf, index=False)
            atomic_write_bytes(path, buf.getvalue())
        elif suffix == ".csv":
            from ..data.io import write_csv

            write_csv(path, self.columns())
        else:
            raise ConfigError(f"save to .npz, .parquet or .csv, not {suffix or 'a file without extension'}")
