"""Progress bars (gradfit.callbacks.ProgressBar): drawn on a terminal only, and only once the work
has run PROGRESS_DELAY seconds; one bar for Levenberg-Marquardt iterations, epochs and fit_many's
fits. The tests set the delay to 0 (or leave the default for "a short fit prints nothing") and
stand a StringIO that says it is a terminal in for stderr; no assertion depends on timing."""

import contextlib
import io
import re

import numpy as np
import pytest

import gradfit as gf
from gradfit import callbacks
from gradfit.callbacks import ProgressBar
from gradfit.cli.main import main

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal; ``with`` it, it stands in for stderr."""

    def isatty(self):
        return True

    def __enter__(self):
        self._redirect = contextlib.redirect_stderr(self)
        return self._redirect.__enter__()

    def __exit__(self, *exc):
        return self._redirect.__exit__(*exc)


def _frames(text: str) -> list[str]:
    """The bar's frames as plain text (each redraw starts with a carriage return)."""
    plain = _ANSI.sub("", text)
    return [f.strip() for f in re.split(r"[\r\n]", plain) if f.strip()]


@pytest.fixture
def terminal(monkeypatch):
    """Bars appear at once; ``with terminal:`` makes stderr a terminal (inside the test: pytest's
    output capture sets sys.stderr again between a fixture's setup and the test)."""
    monkeypatch.setattr(callbacks, "PROGRESS_DELAY", 0.0)
    return _Terminal()


def _decay(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 5.0, n)
    return x, 3.0 * np.exp(-0.7 * x) + 0.5 + 0.01 * rng.standard_normal(n)


DECAY = "y ~ a*exp(-k*x) + c"
START = {"a": 1.0, "k": 1.0, "c": 0.0}


def test_lm_fit_shows_iterations_of_max_iter_and_the_loss(terminal):
    x, y = _decay()
    with terminal:
        r = gf.fit(DECAY, x=x, y=y, init=START, max_iter=400)
    assert r.status == "converged" and 1 < r.epochs_run < 400
    frames = _frames(terminal.getvalue())
    assert frames and all(f.startswith("least squares") for f in frames)
    last = frames[-1]
    assert f"{r.epochs_run}/400" in last  # the final count, of max_iter
    loss = float(re.search(r"loss (\S+)", last).group(1))
    assert loss == pytest.approx(r.loss, rel=1e-3)  # the mean loss chi2/n at the end point
    # the counts only grow within one strategy's run
    counts = [int(re.search(r"(\d+)/400", f).group(1)) for f in frames]
    assert counts[0] <= counts[-1]


def test_epoch_fit_shows_epochs(terminal, thermo):
    with terminal:
        r = gf.fit("t_c ~ w*t_u + b", data=thermo, init={"w": 1.0, "b": 0.0}, optimizer="adam", lr=0.1,
                   epochs=25)
    assert r.epochs_run == 25
    last = _frames(terminal.getvalue())[-1]
    assert last.startswith("fitting") and "25/25" in last and "loss" in last


def test_fit_many_shows_fits_chunk_by_chunk(terminal):
    x = np.linspace(0.0, 1.0, 20)
    slopes = np.arange(1.0, 41.0)
    y = slopes[:, None] * x[None, :] + 2.0
    with terminal:
        res = gf.fit_many("y ~ m*x + q", x, y, init={"m": 0.0, "q": 0.0}, chunk_size=10, compile=False,
                          dtype="float64", device="cpu")
    np.testing.assert_allclose(res.params["m"], slopes, rtol=1e-6)
    frames = _frames(terminal.getvalue())
    assert frames and all(f.startswith("fit_many") for f in frames)
    assert "40/40" in frames[-1]
    # drawn after each chunk but the last: 10, 20 or 30 fits done
    assert {re.search(r"(\d+)/40", f).group(1) for f in frames} <= {"10", "20", "30", "40"}


def test_a_short_fit_prints_nothing_with_the_default_delay(monkeypatch, thermo):
    monkeypatch.setattr(callbacks, "PROGRESS_DELAY", 2.0)  # the default
    x, y = _decay()
    with _Terminal() as err:
        assert gf.fit(DECAY, x=x, y=y, init=START).status == "converged"
        gf.fit("t_c ~ w*t_u + b", data=thermo, init={"w": 1.0, "b": 0.0}, optimizer="adam", lr=0.1, epochs=5)
    assert err.getvalue() == ""


def test_progress_false_prints_nothing(terminal, thermo):
    x, y = _decay()
    with terminal:
        gf.fit(DECAY, x=x, y=y, init=START, progress=False)
        gf.fit("t_c ~ w*t_u + b", data=thermo, init={"w": 1.0, "b": 0.0}, optimizer="adam", lr=0.1, epochs=5,
               progress=False)
        gf.fit_many("y ~ m*x + q", np.linspace(0, 1, 5), np.ones((30, 5)), init={"m": 0.0, "q": 0.0},
                    chunk_size=10, compile=False, device="cpu", progress=False)
    assert terminal.getvalue() == ""


def test_no_terminal_no_bar(monkeypatch):
    monkeypatch.setattr(callbacks, "PROGRESS_DELAY", 0.0)
    x, y = _decay()
    with contextlib.redirect_stderr(io.StringIO()) as err:  # a file or a pipe
        gf.fit(DECAY, x=x, y=y, init=START)
    assert err.getvalue() == ""


@pytest.mark.parametrize("flag, bar", [(None, True), ("--no-progress", False), ("--json", False)])
def test_cli_fit_lm_progress_flags(monkeypatch, tmp_path, flag, bar):
    monkeypatch.setattr(callbacks, "PROGRESS_DELAY", 0.0)
    x, y = _decay(100)
    path = tmp_path / "decay.csv"
    path.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in zip(x, y)))
    out, err = io.StringIO(), _Terminal()
    argv = ["fit", str(path), DECAY, "--init", "a=1,k=1,c=0", "--out", str(tmp_path / "o")]
    code = main(argv + ([flag] if flag else []), stdout=out, stderr=err)
    assert code == 0
    assert ("least squares" in _ANSI.sub("", err.getvalue())) is bar


def test_bar_waits_for_the_delay_and_never_starts_at_the_end(monkeypatch):
    stream = _Terminal()
    monkeypatch.setattr(callbacks, "PROGRESS_DELAY", 3600.0)
    waiting = ProgressBar(10, stream=stream)
    waiting.update(5)
    assert not waiting.shown
    waiting.close(completed=10)
    monkeypatch.setattr(callbacks, "PROGRESS_DELAY", 0.0)
    finished = ProgressBar(10, stream=stream)
    finished.advance(10)  # the work is done before the bar would appear: nothing to show
    assert not finished.shown
    finished.close()
    assert stream.getvalue() == ""
    shown = ProgressBar(10, "chunks", stream=stream)
    shown.advance(4)
    assert shown.shown
    shown.close(completed=7)
    assert not shown.shown and "7/10" in _frames(stream.getvalue())[-1]


def test_an_interrupted_fit_closes_its_bar(terminal, thermo):
    """Ctrl-C (here a callback raising KeyboardInterrupt at epoch 3) ends the run without
    after_fit: the bar must still stop, so its refresh thread does not leave a hidden cursor."""
    import threading

    class Interrupt(gf.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 3:
                raise KeyboardInterrupt

    before = {t.ident for t in threading.enumerate()}
    with terminal, pytest.raises(KeyboardInterrupt):
        gf.fit("t_c ~ w*t_u + b", data=thermo, init={"w": 1.0, "b": 0.0}, optimizer="adam", lr=0.1, epochs=25,
               callbacks=[Interrupt()])
    assert "fitting" in terminal.getvalue()  # the bar was drawing
    # rich's refresh thread ends once the bar stops (it is told to, then finishes its last wait)
    for t in [t for t in threading.enumerate() if t.ident not in before and t.daemon]:
        t.join(timeout=10)
        assert not t.is_alive()
