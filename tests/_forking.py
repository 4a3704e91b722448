"""Children of the test process that run gradfit's CLI, for the SIGKILL tests of
tests/test_faults.py: os.fork() a child that runs ``gradfit.cli.main.main(argv)`` in-process
(gradfit and torch imported once, in the parent), reap it, make it SIGKILL itself at an exact
step of a commit, and poll for what it writes."""

import io
import os
import re
import signal
import time
import traceback

import torch

from gradfit.cli.main import main

STAGED = {p: re.compile(re.escape(p) + r"\.[0-9a-f]{16}\.safetensors\Z") for p in ("checkpoint", "model")}
# commit_pair's file operations in order: 1 replace (the staged weights), 2 replace (the document
# naming them: the commit point), 3 link, 4 replace (the weights' usual name), 5 replace (the
# document naming it), 6 unlink (the staged file). Step s kills just before operation s; step 7
# just after operation 6.
COMMIT_STEPS = 7
COMMIT_POINT = 2


def _kill_at_step(prefix, commit, step):
    """In a child: SIGKILL this process at ``step`` (see COMMIT_STEPS) of its ``commit``-th
    commit_pair of ``prefix`` files ("checkpoint" or "model"), by wrapping the os calls."""
    seen = {"commit": 0, "op": 0}

    def wrap(real, name_of, starts_commit=False):
        def op(*args, **kwargs):
            name = os.path.basename(os.fspath(name_of(args)))
            ours = name.startswith(prefix + ".")
            if ours and starts_commit and STAGED[prefix].match(name):
                seen["commit"], seen["op"] = seen["commit"] + 1, 0
            ours = ours and seen["commit"] == commit
            if ours:
                seen["op"] += 1
                if seen["op"] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if ours and seen["op"] == step - 1 == COMMIT_STEPS - 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return op

    os.replace = wrap(os.replace, lambda a: a[1], starts_commit=True)
    os.link = wrap(os.link, lambda a: a[0])
    os.unlink = wrap(os.unlink, lambda a: a[0])


def spawn(argv, log, step_kill=None):
    """Fork a child that runs ``gradfit ARGV`` through the CLI's main() and exits with its status
    (stderr, or a traceback, in ``log``); ``step_kill``: (prefix, commit, step) for _kill_at_step."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        torch.set_num_threads(1)
        if step_kill:
            _kill_at_step(*step_kill)
        err = io.StringIO()
        code = int(main(argv, stdout=io.StringIO(), stderr=err))
        log.write_text(err.getvalue())
    except BaseException:  # noqa: BLE001 - a child never returns into pytest: it logs, then exits
        log.write_text(traceback.format_exc())
    finally:
        os._exit(code)


def reap(pid, timeout=120.0):
    """The child's wait status (it is killed, and the test fails, after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"a gradfit child ran over {timeout} s")
        time.sleep(0.002)


def killed(status):
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def assert_exit_ok(status, log):
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, log.read_text() if log.exists() else "")


def listing(folder):
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def identity(path):
    """Which file ``path`` is now (a commit renames a new file over it), or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def wait_for(pid, event, timeout):
    """Poll until ``event()`` is true or ``timeout`` seconds passed: None, or the wait status if
    the child ended first."""
    deadline = time.monotonic() + timeout
    while not event() and time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.0005)
    return None
