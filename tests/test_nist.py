"""NIST StRD certification: every nonlinear problem from both starts, every linear problem,
fitted through the formula interface with default settings in float64."""

from pathlib import Path

import pytest

import gradfit as gf
from gradfit.data.nist import lre, read_strd

NIST = Path(__file__).resolve().parents[1].parent / "shared" / "nist_strd"
FILES = sorted(NIST.glob("*.dat")) if NIST.is_dir() else []
pytestmark = pytest.mark.skipif(not FILES, reason="../shared/nist_strd is not present")

NONLINEAR = [(f, s) for f in FILES for s in (0, 1) if not read_strd(f).linear]
LINEAR = [f for f in FILES if read_strd(f).linear]


def test_all_problems_found():
    assert len({f for f, _ in NONLINEAR}) == 27 and len(LINEAR) == 11


@pytest.mark.parametrize("path,start", NONLINEAR, ids=[f"{f.stem}-start{s + 1}" for f, s in NONLINEAR])
def test_nonlinear(path, start):
    p = read_strd(path)
    r = gf.fit(p.formula, data=p.columns, init=p.starts[start], dtype="float64")
    assert r.method == "lm" and r.status == "converged", (r.status, r.message)
    sd_digits = 3.0 if p.name == "Lanczos1" else 4.0
    for name in p.param_names:
        assert lre(r.params[name], p.certified[name]) >= 6.0, (name, r.params[name], p.certified[name])
        assert lre(r.stderr[name], p.certified_sd[name]) >= sd_digits, (name, r.stderr[name], p.certified_sd[name])


@pytest.mark.parametrize("path", LINEAR, ids=[f.stem for f in LINEAR])
def test_linear(path):
    p = read_strd(path)
    r = gf.fit(p.formula, data=p.columns, dtype="float64")
    assert r.method == "linear" and r.status == "converged"
    for name in p.param_names:
        assert lre(r.params[name], p.certified[name]) >= 7.0, (name, r.params[name], p.certified[name])
    if p.residual_sd == p.residual_sd and p.residual_sd > 0:
        assert lre((r.stats["chisqr"] / r.stats["dof"]) ** 0.5, p.residual_sd) >= 6.0
