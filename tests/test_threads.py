"""Intra-op threads (gradfit/_threads.py): the context manager restores torch's thread count,
"auto" runs small fits on one thread and leaves big ones (and the caller's setting) alone,
threads=N is honoured on every path, and bad values are typed errors. The counts are read
inside the fit (a callback, or the model itself); nothing here is timed."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

import gradfit as gf
from gradfit._threads import MAX_THREADS, SMALL_PROBLEM_ELEMENTS, check_threads, choose_threads, intra_op_threads
from gradfit.callbacks import Callback
from gradfit.errors import ConfigError
from gradfit.options import FitOptions, TrainingOptions
from _cli import cli

#: a count no machine's default gives by accident, so "left alone" is told apart from "set"
PROCESS_THREADS = 3


@pytest.fixture(autouse=True)
def process_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(PROCESS_THREADS)
    yield
    torch.set_num_threads(before)


class Seen(Callback):
    """Records torch's thread count at every epoch end (inside the fit)."""

    def __init__(self):
        self.counts = []

    def on_epoch_end(self, epoch, logs):
        self.counts.append(torch.get_num_threads())


def mlp_counts(x, y, **kw):
    seen = Seen()
    gf.fit("mlp", x=x, y=y, epochs=2, optimizer="adam", progress=False, callbacks=[seen], **kw)
    return set(seen.counts)


def tiny():
    d = gf.thermometer()
    return np.asarray(d["t_u"], float), np.asarray(d["t_c"], float)


def large():
    # 4096 rows x a 64-wide hidden layer: 262144 elements, twice the threshold
    x = np.linspace(0, 1, 4096)
    return x, np.sin(3 * x)


def test_threshold_sits_between_the_two_problems():
    assert 1024 * 64 < SMALL_PROBLEM_ELEMENTS < 4096 * 64  # a 1024-row minibatch of 64 units: one thread


# -- the context manager ---------------------------------------------------------------------------
def test_context_manager_sets_and_restores():
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == PROCESS_THREADS
    with intra_op_threads(None):
        assert torch.get_num_threads() == PROCESS_THREADS


def test_context_manager_restores_after_an_exception():
    with pytest.raises(ZeroDivisionError), intra_op_threads(1):
        assert torch.get_num_threads() == 1
        raise ZeroDivisionError
    assert torch.get_num_threads() == PROCESS_THREADS


def test_nested_context_managers_restore_each_level():
    with intra_op_threads(2):
        with intra_op_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == PROCESS_THREADS


@pytest.mark.parametrize("first_out", ["a", "b"])
def test_concurrent_fits_leave_the_process_setting_behind(first_out):
    """Two threads (as gf.tune's workers) enter A, B and leave in either order: afterwards the
    process has its own count back, whichever left last."""
    entered = {k: threading.Event() for k in "ab"}
    leave = {k: threading.Event() for k in "ab"}
    errors = []

    def worker(name, n):
        try:
            with intra_op_threads(n):
                entered[name].set()
                assert leave[name].wait(10)
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ta = threading.Thread(target=worker, args=("a", 1))
    tb = threading.Thread(target=worker, args=("b", 2))
    ta.start()
    assert entered["a"].wait(10)
    tb.start()
    assert entered["b"].wait(10)
    order = ["a", "b"] if first_out == "a" else ["b", "a"]
    threads = {"a": ta, "b": tb}
    for name in order:
        leave[name].set()
        threads[name].join(10)
    assert not errors
    assert torch.get_num_threads() == PROCESS_THREADS


def test_choose_threads():
    assert choose_threads(None, SMALL_PROBLEM_ELEMENTS - 1) == 1
    assert choose_threads(None, SMALL_PROBLEM_ELEMENTS) is None  # keep the process's setting
    assert choose_threads(4, 10) == 4 and choose_threads(1, 10**9) == 1


# -- gf.fit: auto and explicit, on every path ------------------------------------------------------
def test_auto_runs_a_tiny_mlp_on_one_thread_and_restores():
    assert mlp_counts(*tiny(), hidden=(32, 32)) == {1}
    assert torch.get_num_threads() == PROCESS_THREADS


def test_auto_leaves_a_large_fit_alone():
    assert mlp_counts(*large(), hidden=(64,)) == {PROCESS_THREADS}


def test_auto_never_raises_the_callers_setting():
    torch.set_num_threads(1)
    assert mlp_counts(*large(), hidden=(64,)) == {1}
    assert torch.get_num_threads() == 1


def test_minibatches_count_rows_per_step():
    # 2048 rows, but 64 per step: 64 x 64 elements per op is small
    assert mlp_counts(*large(), hidden=(64,), batch_size=64) == {1}


@pytest.mark.parametrize("threads", [1, 2])
def test_explicit_threads_win_over_auto(threads):
    assert mlp_counts(*tiny(), hidden=(8,), threads=threads) == {threads}
    assert mlp_counts(*large(), hidden=(64,), threads=threads) == {threads}
    assert torch.get_num_threads() == PROCESS_THREADS


def test_explicit_threads_through_options():
    seen = Seen()
    opts = FitOptions(hidden=(8,), training=TrainingOptions(optimizer="adam", epochs=2, progress=False, threads=2))
    gf.fit("mlp", *tiny(), options=opts, callbacks=[seen])
    assert set(seen.counts) == {2}


@pytest.mark.parametrize("threads, expected", [(None, 1), (2, 2)])
def test_least_squares_and_scalar_training_paths(threads, expected):
    counts = []

    def line(x, a, b):  # the model itself reports the count it runs under
        counts.append(torch.get_num_threads())
        return a * x + b

    x = np.linspace(0, 1, 20)
    r = gf.fit(line, x=x, y=2 * x + 1, optimizer="lm", threads=threads)
    assert set(counts) == {expected} and abs(r.params["a"] - 2) < 1e-6
    counts.clear()
    gf.fit(line, x=x, y=2 * x + 1, optimizer="adam", epochs=3, progress=False, threads=threads)
    assert set(counts) == {expected}
    assert torch.get_num_threads() == PROCESS_THREADS


def test_threads_restored_when_the_fit_fails():
    def broken(x, a):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        gf.fit(broken, x=np.arange(5.0), y=np.arange(5.0), optimizer="lm")
    assert torch.get_num_threads() == PROCESS_THREADS


def test_fit_many_threads():
    counts = []

    def line(x, a, b):
        counts.append(torch.get_num_threads())
        return a * x + b

    x = np.arange(10.0)
    y = np.stack([2 * x + 1, -x + 3])
    r = gf.fit_many(line, x, y, init={"a": 0.0, "b": 0.0}, compile=False, threads=2)
    assert set(counts) == {2} and np.allclose(r.params["a"], [2, -1], atol=1e-4)
    counts.clear()
    gf.fit_many(line, x, y, init={"a": 0.0, "b": 0.0}, compile=False)
    assert set(counts) == {1}
    assert torch.get_num_threads() == PROCESS_THREADS


# -- validation ---------------------------------------------------------------------------------------
BAD = [0, -1, 1.5, "two", True]


@pytest.mark.parametrize("bad", BAD)
def test_bad_threads_are_config_errors(bad):
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        TrainingOptions(threads=bad)
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        gf.fit("w*x + b", x=[0.0, 1.0, 2.0], y=[1.0, 3.0, 5.0], threads=bad)
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        gf.fit_many("a*x + b", np.arange(4.0), np.ones((2, 4)), threads=bad)
    assert torch.get_num_threads() == PROCESS_THREADS


@pytest.mark.parametrize("huge", [MAX_THREADS + 1, 100_000, np.int64(10**9)])
def test_threads_above_the_cap_are_config_errors(huge):
    """torch.set_num_threads(100000) segfaults: such a count is refused before torch sees it."""
    with pytest.raises(ConfigError, match=f"threads must be at most {MAX_THREADS}, got {int(huge)}"):
        TrainingOptions(threads=huge)
    with pytest.raises(ConfigError, match=f"threads must be at most {MAX_THREADS}"):
        gf.fit("w*x + b", x=[0.0, 1.0, 2.0], y=[1.0, 3.0, 5.0], threads=huge)
    assert check_threads(MAX_THREADS) == MAX_THREADS
    assert torch.get_num_threads() == PROCESS_THREADS


def test_check_threads_canonical_and_round_trip():
    assert check_threads(None) is None and check_threads(np.int64(2)) == 2 and type(check_threads(np.int64(2))) is int
    opts = FitOptions(training=TrainingOptions(threads=2))
    assert FitOptions.from_dict(opts.to_dict()) == opts and opts.to_dict()["training"]["threads"] == 2


# -- CLI -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["fit", "fit-many"])
@pytest.mark.parametrize("count", ["0", "100000"])
def test_cli_bad_threads_exit_2_with_one_line(tmp_path, command, count):
    path = tmp_path / "d.csv"
    if command == "fit":
        path.write_text("x,y\n0,1\n1,3\n2,5.1\n3,7\n")
        code, _, err = cli("fit", path, "y ~ a*x + b", "--threads", count)
    else:
        path.write_text("y_0,y_1,y_2,y_3\n1,3,5,7\n2,4,6,8.1\n")
        code, _, err = cli("fit-many", path, "a*x + b", "--init", "a=0,b=0", "--threads", count)
    assert code == 2
    lines = err.strip().splitlines()
    expected = "threads must be an integer >= 1" if count == "0" else "threads must be at most 1024, got 100000"
    assert len(lines) == 1 and expected in lines[0]


def test_cli_threads_reach_the_fit(tmp_path):
    from gradfit.cli.common import fit_kwargs
    from gradfit.cli.options import build_parser

    args = build_parser().parse_args(["fit", "d.csv", "mlp", "--threads", "2"])
    assert fit_kwargs(args)["threads"] == 2
    args = build_parser().parse_args(["tune", "d.csv", "mlp"])
    assert fit_kwargs(args)["threads"] is None
    path = tmp_path / "d.csv"
    path.write_text("x,y\n0,1\n1,3\n2,5.1\n3,7\n")
    code, out, _ = cli("fit", path, "y ~ a*x + b", "--threads", "1", "--json")
    assert code == 0 and abs(json.loads(out)["params"]["a"] - 2.01) < 1e-9  # least squares: 10.05 / 5
    assert torch.get_num_threads() == PROCESS_THREADS
