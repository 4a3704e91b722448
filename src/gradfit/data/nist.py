"""Reader for NIST StRD regression files (the certified reference problems gradfit is validated on).

The model is read as written in the file: brackets become parentheses, the trailing ``+ e``
(the error term) is dropped, Filip's ``...`` is expanded, and a ``log[y]`` response stays a
response expression.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["StrdProblem", "read_strd", "lre"]

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


@dataclass(frozen=True)
class StrdProblem:
    name: str
    formula: str  # "response ~ expression"
    param_names: tuple[str, ...]
    starts: tuple[dict, ...]  # one dict per start (nonlinear problems); empty for linear ones
    certified: dict  # name -> certified value
    certified_sd: dict  # name -> certified standard deviation
    residual_sd: float
    columns: dict  # column name -> numpy array
    linear: bool


def lre(value: float, certified: float) -> float:
    """Log relative error: the number of correct significant digits (capped at 15; 0 if wrong)."""
    if not math.isfinite(value):
        return 0.0
    if certified == 0.0:
        err = abs(value)
    else:
        err = abs(value - certified) / abs(certified)
    if err == 0.0:
        return 15.0
    return max(0.0, min(15.0, -math.log10(err)))


def _model_text(lines: list[str]) -> str:
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("Model:"))
    body: list[str] = []
    started = False
    for ln in lines[start + 1:]:
        s = ln.strip()
        if not started:
            if re.match(r"^(log\[y\]|y)\s*=", s):
                started = True
                body.append(s)
            continue
        if not s or s.startswith("Starting") or s.startswith("Certified"):
            break
        body.append(s)
    text = " ".join(body)
    text = re.sub(r"\+\s*e\s*$", "", text).strip()
    text = text.replace("[", "(").replace("]", ")")
    return text


def _expand_ellipsis(rhs: str, names: tuple[str, ...]) -> str:
    if "..." not in rhs:
        return rhs
    # Filip: y = B0 + B1*x + B2*(x**2) + ... + B10*(x**10)
    return " + ".join(["B0", "B1*x"] + [f"{n}*(x**{k})" for k, n in enumerate(names) if k >= 2])


def read_strd(path) -> StrdProblem:
    """Parse one StRD ``.dat`` file (nonlinear or linear regression)."""
    p = Path(path)
    lines = p.read_text(encoding="latin-1").splitlines()
    model = _model_text(lines)
    response, _, rhs = model.partition("=")
    response = response.strip()
    rhs = rhs.strip()
    linear = "Linear Least Squares" in "\n".join(lines[:12])
    starts: list[dict] = [{}, {}]
    certified: dict = {}
    sd: dict = {}
    names: list[str] = []
    for ln in lines:
        m = re.match(rf"^\s*(b\d+)\s*=\s*({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})\s+({_NUMBER})\s*$", ln)
        if m and not linear:
            name = m.group(1)
            names.append(name)
            starts[0][name], starts[1][name] = float(m.group(2)), float(m.group(3))
            certified[name], sd[name] = float(m.group(4)), float(m.group(5))
            continue
        m = re.match(rf"^\s*(B\d+)\s+({_NUMBER})\s+({_NUMBER})\s*$", ln)
        if m and linear:
            names.append(m.group(1))
            certified[m.group(1)], sd[m.group(1)] = float(m.group(2)), float(m.group(3))
    # "Residual Standard Deviation: v" (nonlinear) or "Residual" / "Standard Deviation v" (linear)
    rsd_line = next((ln for i, ln in enumerate(lines) if "Residual Standard Deviation" in ln or
                     (ln.strip().startswith("Standard Deviation") and "Residual" in lines[i - 1])), "")
    rsd = re.findall(_NUMBER, rsd_line.split("Deviation")[-1]) if rsd_line else []
    data_at = [i for i, ln in enumerate(lines) if ln.strip().startswith("Data:")][-1]
    header = lines[data_at].split(":", 1)[1].split()
    rows = [ln.split() for ln in lines[data_at + 1:] if ln.strip()]
    values = np.array([[float(v) for v in r] for r in rows])
    if values.shape[1] != len(header):
        raise DataError(f"{p}: data rows do not match the header {header}")
    columns = {h: values[:, j] for j, h in enumerate(header)}
    rhs = _expand_ellipsis(rhs, tuple(names))
    return StrdProblem(name=p.stem, formula=f"{response} ~ {rhs}", param_names=tuple(names),
                       starts=tuple(s for s in starts if s), certified=certified, certified_sd=sd,
                       residual_sd=float(rsd[0]) if rsd else math.nan, columns=columns, linear=linear)
