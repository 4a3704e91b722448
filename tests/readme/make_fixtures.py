"""Write the small data files that README.md's shell examples read.

``python tests/readme/make_fixtures.py DIR`` writes them into DIR (default: the current
folder); tests/test_readme.py calls :func:`write_fixtures` in a temporary folder. Every file is
computed from fixed formulas and fixed seeds, so the README's printed numbers are reproducible.

Files
-----
thermo.csv, data.csv   the thermometer data (t_u, t_c), 11 rows
new.csv                t_u values to predict at
decay.csv              x, y, dy: 2*b*exp(-k1*x) + b*exp(-k2*x) + 0.5 with b=1, k1=1.5, k2=0.3,
                       plus Gaussian noise of standard deviation dy=0.02
peaks.csv              wavelength, intensity: a Gaussian peak (a=1200, c=532, w=4) on a
                       baseline of 40, plus noise
table.csv              a, b, c, target = sin(a) + b*c: 256 rows
frames.npy             (64, 32) float64: Gaussian peaks a*exp(-(x-c)**2/(2*w**2)) + o
pixels.csv             the same kind of peaks as a wide table, columns y_0..y_31
assay.csv              long table well, dose, signal: a Hill curve per well W00..W11
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

THERMO_T_U = [35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4]
THERMO_T_C = [0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0]


def _csv(path: Path, header: list[str], columns: list) -> None:
    rows = [",".join(header)]
    for values in zip(*columns):
        rows.append(",".join(v if isinstance(v, str) else repr(float(v)) for v in values))
    path.write_text("\n".join(rows) + "\n")


def _peaks(rng: np.random.Generator, fits: int, points: int = 32) -> np.ndarray:
    x = np.arange(points, dtype=np.float64)
    a = rng.uniform(300, 700, (fits, 1))
    c = rng.uniform(12, 20, (fits, 1))
    w = rng.uniform(2, 4, (fits, 1))
    o = rng.uniform(30, 70, (fits, 1))
    y = a * np.exp(-((x - c) ** 2) / (2 * w**2)) + o
    return y + rng.normal(0, 5, y.shape)


def write_fixtures(folder) -> Path:
    """Write every README data file into ``folder`` (created if needed) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("thermo.csv", "data.csv"):
        _csv(folder / name, ["t_u", "t_c"], [THERMO_T_U, THERMO_T_C])
    _csv(folder / "new.csv", ["t_u"], [[20.0, 40.0, 60.0, 80.0]])

    rng = np.random.default_rng(0)
    x = np.linspace(0, 10, 60)
    dy = np.full_like(x, 0.02)
    y = 2.0 * np.exp(-1.5 * x) + 1.0 * np.exp(-0.3 * x) + 0.5 + dy * rng.standard_normal(x.size)
    _csv(folder / "decay.csv", ["x", "y", "dy"], [x, y, dy])

    rng = np.random.default_rng(1)
    wl = np.linspace(500, 560, 61)
    inten = 1200 * np.exp(-((wl - 532) ** 2) / (2 * 4.0**2)) + 40 + rng.normal(0, 10, wl.size)
    _csv(folder / "peaks.csv", ["wavelength", "intensity"], [wl, inten])

    rng = np.random.default_rng(2)
    abc = rng.uniform(-2, 2, (256, 3))
    target = np.sin(abc[:, 0]) + abc[:, 1] * abc[:, 2]
    _csv(folder / "table.csv", ["a", "b", "c", "target"], [abc[:, 0], abc[:, 1], abc[:, 2], target])

    np.save(folder / "frames.npy", _peaks(np.random.default_rng(3), 64))
    pixels = _peaks(np.random.default_rng(4), 64)
    _csv(folder / "pixels.csv", [f"y_{j}" for j in range(32)], list(pixels.T))

    rng = np.random.default_rng(5)
    dose = np.logspace(-2, 2, 8)
    wells, doses, signals = [], [], []
    for i in range(12):
        top, ec50, n = rng.uniform(80, 120), 10 ** rng.uniform(-0.5, 0.5), rng.uniform(0.8, 1.5)
        signal = top * dose**n / (ec50**n + dose**n) + rng.normal(0, 2, dose.size)
        wells += [f"W{i:02d}"] * dose.size
        doses += list(dose)
        signals += list(signal)
    _csv(folder / "assay.csv", ["well", "dose", "signal"], [wells, doses, signals])
    return folder


if __name__ == "__main__":
    print(write_fixtures(sys.argv[1] if len(sys.argv) > 1 else "."))
