"""The native kernel of single least-squares fits (optim/native_single.py): the same answers,
statuses and uncertainties as lm.py, against independent references (NIST's certified values,
scipy's least_squares at tight tolerances), and the rules for when it runs."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

import gradfit as gf
from gradfit import _native
from gradfit.data.nist import lre, read_strd
from gradfit.lsq import solve

NIST = Path(__file__).resolve().parents[2] / "shared" / "nist_strd"

pytestmark = pytest.mark.skipif(_native.compiler() is None, reason="no C compiler")


@pytest.fixture
def native(monkeypatch):
    """Single fits build the native kernel at once."""
    monkeypatch.delenv("GRADFIT_CC", raising=False)
    monkeypatch.setattr(solve, "build_single_now", lambda *a: True)


@pytest.fixture
def eager(monkeypatch):
    """Single fits run lm.py (no C compiler)."""
    monkeypatch.setenv("GRADFIT_CC", "")


def _ran_native(result) -> bool:
    return result.settings["strategy"].endswith("; native kernel")


def _both(monkeypatch, *args, **kwargs):
    """The fit on the native kernel, then on lm.py."""
    with monkeypatch.context() as m:
        m.delenv("GRADFIT_CC", raising=False)
        m.setattr(solve, "build_single_now", lambda *a: True)
        fast = gf.fit(*args, **kwargs)
    with monkeypatch.context() as m:
        m.setenv("GRADFIT_CC", "")
        slow = gf.fit(*args, **kwargs)
    assert _ran_native(fast) and not _ran_native(slow)
    return fast, slow


def _tight(f, jac, p0, x, y, sigma=None):
    """scipy's least_squares at tolerances 1e-15 with the exact Jacobian: the reference."""
    s = 1.0 if sigma is None else sigma
    out = least_squares(lambda p: (f(x, *p) - y) / s, p0, jac=lambda p: jac(p, x) / np.reshape(s, (-1, 1)),
                        ftol=1e-15, xtol=1e-15, gtol=1e-15)
    return out.x


def _decay(x, a, k, c):
    return a * np.exp(-k * x) + c


def _decay_jac(p, x):
    e = np.exp(-p[1] * x)
    return np.column_stack([e, -p[0] * x * e, np.ones_like(x)])


@pytest.mark.parametrize("n", [5, 12, 100, 5000])
def test_decay_matches_reference_and_eager(monkeypatch, n):
    # n = 5 and 12 are short data (fewer than 4 points per parameter... for 5): the SVD route
    rng = np.random.default_rng(n)
    x = np.linspace(0, 10, n)
    y = 3.0 * np.exp(-0.4 * x) + 1.0 + 0.05 * rng.standard_normal(n)
    fast, slow = _both(monkeypatch, "a*exp(-k*x) + c", x=x, y=y, init=dict(a=1.0, k=1.0, c=1.0), dtype="float64")
    ref = _tight(_decay, _decay_jac, [1.0, 1.0, 1.0], x, y)
    got = np.array([fast.params[k] for k in "akc"])
    np.testing.assert_allclose(got, ref, rtol=1e-8)
    assert fast.status == slow.status == "converged"
    for k in "akc":
        assert fast.params[k] == pytest.approx(slow.params[k], rel=1e-8)
        assert fast.stderr[k] == pytest.approx(slow.stderr[k], rel=1e-6)
    assert fast.stats["chisqr"] == pytest.approx(slow.stats["chisqr"], rel=1e-10)
    np.testing.assert_allclose(fast.covariance, slow.covariance, rtol=1e-6)


def test_weights_fixed_and_two_inputs(monkeypatch):
    rng = np.random.default_rng(3)
    u = rng.uniform(0, 2, 300)
    v = rng.uniform(-1, 1, 300)
    sigma = 0.02 + 0.05 * u
    y = 2.0 * np.exp(-0.7 * u) * np.cos(1.3 * v) + 0.5 + sigma * rng.standard_normal(300)
    kw = dict(x={"u": u, "v": v}, y=y, sigma=sigma, init=dict(a=1.0, k=1.0, w=1.0, c=0.5), fixed=["c"],
              dtype="float64")
    fast, slow = _both(monkeypatch, "a*exp(-k*u)*cos(w*v) + c", **kw)

    def f(x, a, k, w):
        return a * np.exp(-k * x[0]) * np.cos(w * x[1]) + 0.5

    def jac(p, x):
        a, k, w = p
        e, c, s = np.exp(-k * x[0]), np.cos(w * x[1]), np.sin(w * x[1])
        return np.column_stack([e * c, -a * x[0] * e * c, -a * e * s * x[1]])

    ref = _tight(f, jac, [1.0, 1.0, 1.0], np.stack([u, v]), y, sigma)
    np.testing.assert_allclose([fast.params[k] for k in "akw"], ref, rtol=1e-8)
    assert fast.params["c"] == 0.5 and fast.stderr["c"] == 0.0
    for k in "akw":
        assert fast.stderr[k] == pytest.approx(slow.stderr[k], rel=1e-7)


HARD = ["MGH09", "MGH10", "Bennett5", "Eckerle4", "Rat43", "BoxBOD", "Thurber", "MGH17", "Lanczos1"]


@pytest.mark.skipif(not NIST.is_dir(), reason="NIST StRD data not present")
def test_nist_every_problem_certified_digits(native):
    """All 54 NIST StRD nonlinear fits (both starts) on the native kernel: converged, >= 6
    correct digits in every parameter and >= 4 in every standard error against the certified
    values (tests/test_nist.py's standard)."""
    worst = worst_sd = 15.0
    count = 0
    for path in sorted(NIST.glob("*.dat")):
        p = read_strd(path)
        if p.linear:
            continue
        for start in p.starts:
            r = gf.fit(p.formula, data=p.columns, init=start, dtype="float64")
            assert _ran_native(r), path.stem
            assert r.status == "converged", (path.stem, r.message)
            for name in p.param_names:
                worst = min(worst, lre(r.params[name], p.certified[name]))
                # (Lanczos1's certified errors carry 3 digits, as tests/test_nist.py says)
                sd = lre(r.stderr[name], p.certified_sd[name]) + (1.0 if p.name == "Lanczos1" else 0.0)
                worst_sd = min(worst_sd, sd)
            count += 1
    assert count == 54
    assert worst >= 6.0 and worst_sd >= 4.0


@pytest.mark.skipif(not NIST.is_dir(), reason="NIST StRD data not present")
@pytest.mark.parametrize("name", HARD)
def test_nist_hard_starts_agree_with_eager(monkeypatch, name):
    p = read_strd(NIST / f"{name}.dat")
    for start in p.starts:
        fast, slow = _both(monkeypatch, p.formula, data=p.columns, init=start, dtype="float64")
        assert fast.status == slow.status
        for k in p.param_names:
            assert fast.params[k] == pytest.approx(slow.params[k], rel=1e-7)


def test_statuses_match_eager(monkeypatch):
    x = np.linspace(0, 10, 60)
    y = 3.0 * np.exp(-0.4 * x) + 1.0
    y = y + 0.01 * np.sin(7 * x)
    # too few iterations: max_iterations, with lm.py's message
    fast, slow = _both(monkeypatch, "a*exp(-k*x) + c", x=x, y=y, init=dict(a=1.0, k=3.0, c=0.0), max_iter=2,
                       dtype="float64")
    assert fast.status == slow.status == "max_iterations"
    assert fast.message == slow.message
    # parameters only in a product: singular, naming them
    fast, slow = _both(monkeypatch, "a*b*exp(-k*x)", x=x, y=y, init=dict(a=1.0, b=2.0, k=0.5), dtype="float64")
    assert fast.status == slow.status == "singular"
    assert "a, b" in fast.message
    # exact data: residuals at working precision
    exact = 2.0 * np.exp(-0.3 * x)
    fast, slow = _both(monkeypatch, "a*exp(-k*x)", x=x, y=exact, init=dict(a=1.0, k=1.0), dtype="float64")
    assert fast.status == slow.status == "converged"
    assert fast.params["k"] == pytest.approx(0.3, rel=1e-13)


def test_not_finite_start_is_reported_by_lm(native):
    # sqrt of a negative number at the start: lm.py names the rows, as without the kernel
    x = np.linspace(0, 4, 20)
    r = gf.fit("sqrt(x - c) + a", x=x, y=np.sqrt(x + 1.0), init=dict(c=2.0, a=0.0), dtype="float64")
    assert r.status == "not_finite"
    assert "row" in r.message


def test_when_it_runs(native, monkeypatch):
    x = np.linspace(0, 10, 50)
    y = 3.0 * np.exp(-0.4 * x) + 1.0 + 0.01 * np.cos(5 * x)
    kw = dict(x=x, y=y, init=dict(a=1.0, k=1.0, c=1.0), dtype="float64")
    assert _ran_native(gf.fit("a*exp(-k*x) + c", **kw))
    # bounds, callbacks and tied parameters run lm.py
    assert not _ran_native(gf.fit("a*exp(-k*x) + c", bounds={"k": (0, 1)}, **kw))
    assert not _ran_native(gf.fit("a*exp(-k*x) + c", tie={"c": "a/3"}, **kw))
    seen = []

    class Count(gf.Callback):
        def on_epoch_end(self, epoch, logs):
            seen.append(epoch)

    assert not _ran_native(gf.fit("a*exp(-k*x) + c", callbacks=[Count()], **kw)) and seen
    # a Python function has no C form; Poisson fits have deviance residuals
    assert not _ran_native(gf.fit(lambda x, a, k, c: a * torch.exp(-k * x) + c, **kw))
    counts = np.round(10 * np.exp(-0.2 * x)) + 1
    assert not _ran_native(gf.fit("a*exp(-k*x) + c", x=x, y=counts, loss="poisson", init=dict(a=9.0, k=0.2, c=1.0)))
    # no compiler: lm.py, the same answer
    monkeypatch.setenv("GRADFIT_CC", "")
    r = gf.fit("a*exp(-k*x) + c", **kw)
    assert not _ran_native(r) and r.status == "converged"


def test_tiering_builds_after_enough_eager_time(monkeypatch):
    """compile="auto" for single fits: lm.py until this formula's fits have spent two builds'
    time in the process, then the kernel (a JIT's tiering)."""
    from gradfit.lsq import compiled
    from gradfit.optim import native_common

    monkeypatch.delenv("GRADFIT_CC", raising=False)
    monkeypatch.setattr(solve, "build_single_now", compiled.spent_enough)  # (the rule, whatever conftest set)
    monkeypatch.setattr(compiled, "EAGER_SECONDS", {})
    monkeypatch.setattr(native_common, "_KERNELS", {})
    monkeypatch.setenv("GRADFIT_CACHE_DIR", "")  # no disk cache: nothing is built before
    x = np.linspace(0, 10, 50)
    y = 1.5 * np.exp(-0.25 * x) + 0.75 * np.cos(x / 5)
    kw = dict(x=x, y=y, init=dict(a=1.0, k=1.0, c=1.0), dtype="float64")
    formula = "a*exp(-k*x) + c*cos(x/5)"
    assert not _ran_native(gf.fit(formula, **kw))
    key = next(k for k in compiled.EAGER_SECONDS if k[0] == "single")
    assert compiled.EAGER_SECONDS[key] > 0
    compiled.EAGER_SECONDS[key] = 100.0  # as if it had run for long
    assert _ran_native(gf.fit(formula, **kw))


def test_compile_option(monkeypatch, tmp_path):
    """compile=True builds the kernel at once (no tiering, empty cache), False never runs it,
    "yes"/"no" are accepted, anything else is a ConfigError; the CLI's --compile does the same."""
    import json
    import subprocess
    import sys

    from gradfit.errors import ConfigError
    from gradfit.lsq import compiled
    from gradfit.optim import native_common

    monkeypatch.delenv("GRADFIT_CC", raising=False)
    monkeypatch.setattr(solve, "build_single_now", compiled.spent_enough)
    monkeypatch.setattr(compiled, "EAGER_SECONDS", {})
    monkeypatch.setattr(native_common, "_KERNELS", {})
    monkeypatch.setenv("GRADFIT_CACHE_DIR", str(tmp_path / "cache"))
    x = np.linspace(0, 10, 40)
    y = 2.0 * np.exp(-0.3 * x) + 0.5 + 0.01 * np.sin(4 * x)
    kw = dict(x=x, y=y, init=dict(a=1.0, k=1.0, c=1.0), dtype="float64")
    formula = "a*exp(-k*x) + c*cos(x/50)"  # (a formula no other test builds in this process)
    assert not _ran_native(gf.fit(formula, **kw))  # auto: nothing built, nothing spent yet
    built = gf.fit(formula, compile=True, **kw)
    assert _ran_native(built) and built.settings["options"]["least_squares"]["compile"] is True
    assert _ran_native(gf.fit(formula, **kw))  # auto: built now
    off = gf.fit(formula, compile="no", **kw)
    assert not _ran_native(off) and off.params["k"] == pytest.approx(built.params["k"], rel=1e-8)
    assert _ran_native(gf.fit(formula, compile="yes", **kw))
    with pytest.raises(ConfigError, match="compile must be"):
        gf.fit(formula, compile="maybe", **kw)
    data = tmp_path / "d.csv"
    data.write_text("x,y\n" + "\n".join(f"{float(a)!r},{float(b)!r}" for a, b in zip(x, y)) + "\n")
    for flag, native in (("yes", True), ("no", False)):
        out = subprocess.run([sys.executable, "-m", "gradfit", "fit", str(data), f"y ~ {formula}", "--init",
                              "a=1,k=1,c=1", "--dtype", "float64", "--compile", flag, "--json"],
                             capture_output=True, text=True, check=True)
        assert json.loads(out.stdout)["strategy"].endswith("; native kernel") == native


def test_a_damaged_cached_library_is_built_again(tmp_path):
    """A truncated library in the disk cache (a full disk, an interrupted copy) must not reach
    the loader, which maps it and dies with SIGBUS: its digest no longer matches, so it is built
    again (in a fresh process, as a later run would find it)."""
    import subprocess
    import sys

    script = ("import numpy as np, gradfit as gf\n"
              "x = np.linspace(0, 5, 60); y = 2*np.exp(-1.3*x) + 0.5 + 0.01*np.cos(7*x)\n"
              "r = gf.fit('a*exp(-k*x) + c', x=x, y=y, init={'a': 1, 'k': 1, 'c': 0}, compile=True)\n"
              "print(r.status, r.settings['strategy'].endswith('; native kernel'), round(r.params['k'], 6))\n")
    env = {**__import__("os").environ, "GRADFIT_CACHE_DIR": str(tmp_path)}
    env.pop("GRADFIT_CC", None)
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    libraries = list((tmp_path / "native").glob("*.so"))
    assert len(libraries) == 1 and libraries[0].with_suffix(".sha256").exists()
    with open(libraries[0], "r+b") as f:
        f.truncate(3000)
    again = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, (again.returncode, again.stderr)
    assert again.stdout == first.stdout and again.stdout.startswith("converged True")
    assert libraries[0].stat().st_size > 3000  # rebuilt in place


def test_review_fixes(native, monkeypatch):
    """A Poisson fit's history is its mean half deviance (not doubled); max_iter too large for the
    kernel's history runs lm.py; compile=False reaches the multistart's single fit; a kernel run
    that ends singular still says so in its strategy."""
    from gradfit.optim import native_single

    x = np.linspace(0, 10, 40)
    counts = np.round(9 * np.exp(-0.2 * x)) + 1
    r = gf.fit("a*exp(-k*x) + c", x=x, y=counts, loss="poisson", init=dict(a=9.0, k=0.2, c=1.0), dtype="float64")
    assert r.history["train_loss"][-1] == pytest.approx(r.loss, rel=1e-9)
    y = 2.0 * np.exp(-0.3 * x) + 0.5 + 0.01 * np.sin(4 * x)
    kw = dict(x=x, y=y, init=dict(a=1.0, k=1.0, c=1.0), dtype="float64")
    big = gf.fit("a*exp(-k*x) + c", max_iter=native_single.MAX_HISTORY, **kw)
    assert big.status == "converged" and not _ran_native(big)
    assert _ran_native(gf.fit("a*exp(-k*x) + c + 0*d", **{**kw, "init": dict(a=1.0, k=1.0, c=1.0, d=1.0)}))
    runs = []
    original = native_single.NativeSingleLM.runner
    monkeypatch.setattr(native_single.NativeSingleLM, "runner",
                        lambda self, *a, **k: runs.append(1) or original(self, *a, **k))
    gf.fit("a*exp(-k*x) + c", starts=4, compile=False, **kw)
    assert not runs
    gf.fit("a*exp(-k*x) + c", starts=4, **kw)
    assert runs


def test_inputs_callbacks_and_no_dof_messages():
    """x as an (n, 1) column is one input; (n, 2) is a DataError naming the fix; a function as a
    callback is a ConfigError; a fit with as many points as parameters says its errors need sigma."""
    from gradfit.errors import ConfigError, DataError

    x = np.linspace(0, 5, 30)
    y = 2 * np.exp(-1.3 * x) + 0.5
    kw = dict(y=y, init={"a": 1, "k": 1, "c": 0})
    col = gf.fit("a*exp(-k*x) + c", x=x[:, None], **kw)
    assert col.status == "converged" and col.params["k"] == pytest.approx(1.3, rel=1e-9)
    with pytest.raises(DataError, match="one value per point"):
        gf.fit("a*exp(-k*x) + c", x=np.c_[x, x], **kw)
    with pytest.raises(ConfigError, match="gradfit.Callback"):
        gf.fit("a*exp(-k*x) + c", x=x, callbacks=[lambda *a: None], **kw)
    with pytest.warns(gf.GradfitWarning, match="no degrees of freedom"):
        r = gf.fit("a*exp(-k*x) + c", x=[0.0, 1.0, 2.5], y=[2.5, 1.05, 0.6], init={"a": 1, "k": 1, "c": 0})
    assert r.status == "converged" and any("absolute_sigma" in n for n in r.notes)


def test_fit_many_parses_compile_as_gf_fit_does():
    """One parser for compile= (options.compile_choice): fit_many's global path refused nothing and
    took "yes" for "auto"; both now take True/False/"auto"/"yes"/"no" and refuse the rest."""
    from gradfit.errors import ConfigError

    rng = np.random.default_rng(2)
    x = np.linspace(0, 5, 16)
    y = rng.uniform(2, 4, (6, 1)) * np.exp(-0.7 * x) + 0.01 * rng.standard_normal((6, 16))
    for shared in (None, ["k"]):
        kw = dict(init={"a": 3.0, "k": 0.5}, dtype="float64", **({"shared": shared} if shared else {}))
        with pytest.raises(ConfigError, match="compile must be"):
            gf.fit_many("a*exp(-k*x)", x, y, compile="maybe", **kw)
        assert gf.fit_many("a*exp(-k*x)", x, y, compile="yes", **kw).timings["native"]
        assert not gf.fit_many("a*exp(-k*x)", x, y, compile="no", **kw).timings["native"]
