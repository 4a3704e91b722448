"""What the CLI commands share: exit statuses, parsing of option values, output helpers.

Every option value is parsed here, once, so a flag has one syntax in every command (the
flags themselves are defined in :mod:`gradfit.cli.options`). Errors are ConfigError messages
that name the flag and show the expected form.
"""

from __future__ import annotations

import contextlib
import math
from enum import IntEnum

from ..errors import ConfigError

__all__ = ["ExitStatus", "STATUS_EXIT", "exit_status", "batch_exit_status", "parse_value", "parse_assignments", "parse_init", "parse_fixed",
           "parse_bounds", "parse_ties", "parse_penalty", "parse_hidden", "fit_kwargs", "library_output",
           "print_table", "check_out_folder", "check_out_file"]


class ExitStatus(IntEnum):
    """The exit status of every ``gradfit`` command."""

    OK = 0
    ERROR = 1  # an unexpected internal error (a bug): one line; GRADFIT_TRACEBACK=1 shows the traceback
    USAGE = 2  # bad usage or input: one line on stderr says what to change
    # the computation ran but its numbers are not to be trusted: a fit status that STATUS_EXIT maps here,
    # no complete tune trial, a gradient mismatch
    FIT_FAILED = 3
    INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2, as shells report it
    BROKEN_PIPE = 141  # stdout closed early (`gradfit ... | head`): 128 + SIGPIPE, quietly
    TERMINATED = 143  # SIGTERM: 128 + 15

    @classmethod
    def from_signal(cls, signum: int) -> "ExitStatus":
        """The status of a run stopped by SIGINT or SIGTERM."""
        import signal

        return cls.TERMINATED if signum == signal.SIGTERM else cls.INTERRUPTED


#: The one table from a fit's status to the command's exit status, for every command that fits
#: (``fit`` by least squares or first-order training, ``fit-many``; ``predict`` applies it to the
#: status of the model it loads). OK (0) means the numbers can be used as they are; FIT_FAILED
#: (3) means a result was produced but is not a solution to trust (the output is still written
#: and says why).
STATUS_EXIT = {
    "converged": ExitStatus.OK,  # the stationarity test passed
    "max_epochs": ExitStatus.OK,  # first-order training ran the epochs asked for: the user's stopping rule
    "stopped_early": ExitStatus.OK,  # early stopping restored the best validation epoch, as asked
    "max_iterations": ExitStatus.FIT_FAILED,  # least squares ran out of iterations before the test passed
    "stalled": ExitStatus.FIT_FAILED,  # no step reduces the objective, yet the test did not pass
    "singular": ExitStatus.FIT_FAILED,  # parameters cannot be separated; their values and errors are not unique
    "diverged": ExitStatus.FIT_FAILED,  # the loss became inf/NaN
    "not_finite": ExitStatus.FIT_FAILED,  # the model or data is not finite at the start: nothing was fitted
    "too_few_points": ExitStatus.FIT_FAILED,  # fewer usable points than free parameters: nothing was fitted
    "stopped": ExitStatus.FIT_FAILED,  # a callback stopped the fit before its own test passed
}


def exit_status(status) -> ExitStatus:
    """The exit status of one fit's status (a :class:`~gradfit.status.Status` or its name),
    from :data:`STATUS_EXIT`; an unknown status fails the command (never a silent OK)."""
    return STATUS_EXIT.get(str(getattr(status, "value", status)), ExitStatus.FIT_FAILED)


def batch_exit_status(statuses) -> ExitStatus:
    """The exit status of ``fit-many``: OK only when every fit's status is OK in
    :data:`STATUS_EXIT` (a batch in which some fits are not solutions fails the command; the
    output table still holds every fit with its status)."""
    return max((exit_status(s) for s in set(statuses)), default=ExitStatus.OK)


def parse_value(text: str):
    """'1e-3' -> 0.001, 'true' -> True, '3' -> 3, otherwise the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(low)
    except ValueError:
        pass
    try:
        return float(low)
    except ValueError:
        return text.strip()


def parse_assignments(text: str | None, option: str) -> dict[str, float]:
    """'w=1,b=0' -> {'w': 1.0, 'b': 0.0}; anything else is a ConfigError naming the option."""
    out: dict[str, float] = {}
    if not text:
        return out
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{option}: expected NAME=VALUE pairs like w=1,b=0, got {part.strip()!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"{option}: value for {name.strip()!r} is not a number: {value.strip()!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{option}: value for {name.strip()!r} must be finite")
        out[name.strip()] = number
    return out


def parse_init(text: str | None):
    """--init: 'w=1,b=0' -> {'w': 1.0, 'b': 0.0}; 'guess' -> 'guess'; nothing -> {}."""
    if text is not None and text.strip().lower() == "guess":
        return "guess"
    return parse_assignments(text, "--init")


def parse_fixed(items) -> tuple[list[str], dict[str, float]]:
    """--fix: ['a', 'c=1,d'] -> (['a', 'c', 'd'], {'c': 1.0}): the names held fixed, and the
    values given for some of them (the others stay at their starting values)."""
    names: list[str] = []
    values: dict[str, float] = {}
    for item in items:
        for part in item.split(","):
            name, sep, _ = part.partition("=")
            if not name.strip():
                if sep:
                    raise ConfigError(f"--fix expects NAME or NAME=VALUE, got {part.strip()!r}")
                continue
            names.append(name.strip())
            if sep:
                values.update(parse_assignments(part, "--fix"))
    return names, values


def parse_bounds(items) -> dict:
    """--bounds: ['w=0:', 'b=-5:5'] -> {'w': (0.0, None), 'b': (-5.0, 5.0)}."""
    out = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            name, sep, rng = part.partition("=")
            lo, colon, hi = rng.partition(":")
            if not sep or not colon or not name.strip():
                raise ConfigError(f"--bounds expects NAME=LO:HI like w=0: or b=-5:5, got {part.strip()!r}")
            try:
                out[name.strip()] = (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)
            except ValueError:
                raise ConfigError(f"--bounds {part.strip()!r}: limits must be numbers") from None
    return out


def parse_ties(items) -> dict[str, str]:
    """--tie: ['c=2*a'] -> {'c': '2*a'}."""
    tie = {}
    for item in items:
        name, sep, expr = item.partition("=")
        if not sep or not name.strip() or not expr.strip():
            raise ConfigError(f"--tie expects NAME=EXPRESSION like c=2*a, got {item!r}")
        tie[name.strip()] = expr.strip()
    return tie


def parse_penalty(items) -> dict:
    """--penalty: ['l2=1e-3', 'l1:w=1e-4'] -> {'l2': 0.001, 'l1': {'w': 0.0001}}."""
    penalty: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        kind, colon, name = key.partition(":")
        kind = kind.strip()
        if not sep or kind not in ("l1", "l2"):
            raise ConfigError(f"--penalty expects l2=C or l2:NAME=C (l1 likewise), got {item!r}")
        try:
            coef = float(value)
        except ValueError:
            raise ConfigError(f"--penalty {item!r}: the coefficient must be a number") from None
        if not colon:
            penalty[kind] = coef
            continue
        per_name = penalty.setdefault(kind, {})
        if not isinstance(per_name, dict):
            raise ConfigError(f"--penalty {kind}: give either one coefficient for all or per-parameter ones")
        per_name[name.strip()] = coef
    return penalty


def parse_hidden(text) -> tuple[int, ...]:
    """--hidden: '64,64' -> (64, 64)."""
    try:
        return tuple(int(h) for h in str(text).split(",") if h.strip())
    except ValueError:
        raise ConfigError(f"--hidden expects sizes like 64,64, got {text!r}") from None


def _optimizer_options(args) -> dict:
    options = {}
    for item in args.opt:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--opt expects KEY=VALUE, got {item!r}")
        options[key.strip()] = parse_value(value)
    if args.momentum is not None:
        options["momentum"] = args.momentum
    if args.nesterov:
        options["nesterov"] = True
    return options


def fit_kwargs(args) -> dict:
    """The keyword arguments of gradfit.fit from the options of ``fit`` and ``tune``."""
    init = parse_init(args.init)
    fixed, fixed_values = parse_fixed(args.fix)
    # fit guesses every name it is not given, so 'guess' is an empty dict of starting values
    init = {**({} if init == "guess" else init), **fixed_values}
    return dict(init=init or None, bounds=parse_bounds(args.bounds) or None, fixed=fixed,
                tie=parse_ties(args.tie) or None, absolute_sigma=args.absolute_sigma,
                tol=args.tol, max_iter=args.max_iter, dtype=args.dtype, device=args.device, threads=args.threads,
                compile=getattr(args, "compile", "auto"),
                optimizer=args.optimizer, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                loss=args.loss, optimizer_options=_optimizer_options(args) or None, normalize=args.normalize,
                val_fraction=args.val_fraction, seed=args.seed, gradient=args.gradient, log_every=args.log_every,
                nan_policy=args.nan_policy, penalty=parse_penalty(args.penalty) or None,
                input_noise=args.input_noise, early_stopping=args.early_stopping, schedule=args.schedule,
                cv=args.cv, hidden=parse_hidden(args.hidden), activation=args.activation,
                progress=False if args.no_progress or args.json else None)


@contextlib.contextmanager
def library_output(command: str, stderr):
    """Around an API call: what the library writes to stderr (log lines, progress bars, and
    whether to draw them at all, which depends on stderr being a terminal) goes to the
    injected ``stderr``, and warnings become one 'gradfit COMMAND: warning: ...' line each.

    The library's writers look ``sys.stderr`` up when they write, so redirecting it for the
    call reaches all of them without threading a stream through every API function.
    """
    import warnings

    from ..errors import GradfitWarning

    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stderr):
        warnings.simplefilter("always", GradfitWarning)
        yield
    for w in caught:
        print(f"gradfit {command}: warning: {w.message}", file=stderr)


def check_out_folder(folder, flag: str = "--out") -> None:
    """Fail before any fitting when ``folder`` cannot hold the command's output.

    The folder is created when missing (with its parents), then a temporary file is created in
    it and removed: the one test that covers a read-only folder, a folder without permission, a
    path that is an existing file, and a parent that cannot be created.

    Raises
    ------
    ConfigError
        naming the path and what to do (the CLI turns it into exit 2 and one line).

    Examples
    --------
    >>> check_out_folder("results/run1")  # doctest: +SKIP
    """
    import os
    import tempfile
    from pathlib import Path

    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path}: is an existing file, not a folder; give a folder path (or remove the file)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".gradfit-write-check-", dir=path)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{flag} {path}: cannot write there ({reason}); choose a folder you can write to "
                          "or fix its permissions, before the fit runs") from None


def check_out_file(file, flag: str = "--out") -> None:
    """Fail before any fitting when the output file ``file`` cannot be written: it is an
    existing folder, or its folder cannot be created or written (see :func:`check_out_folder`).

    Raises
    ------
    ConfigError
        naming the path and what to do.
    """
    from pathlib import Path

    path = Path(file)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file path such as {path / 'fits.csv'}")
    check_out_folder(path.parent if str(path.parent) else Path("."), flag=f"{flag} {path}: its folder")


def print_table(stream, title: str | None, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal; plain aligned text otherwise (stable for scripts)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream, highlight=False, soft_wrap=True)
    if not console.is_terminal:
        console.width = 160  # files and pipes: never wrap cells
    table = Table(title=title, title_justify="left", box=None, show_edge=False, pad_edge=False)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)


class StopSignals:
    """While the body runs, the first SIGINT or SIGTERM asks the work to stop instead of
    killing it: its number is kept in ``signum`` (also what calling the object returns) and
    handed to ``on_signal``; the work checks it at its next minibatch, epoch or trial and
    exits 130/143 after saving what it can. A second signal aborts at once
    (KeyboardInterrupt) when ``abort_on_second``. Handlers are only installed when ``active``
    and on the main thread (Python's rule); otherwise the default behaviour stays."""

    def __init__(self, on_signal=None, *, abort_on_second: bool = True, active: bool = True):
        self.on_signal, self.abort_on_second, self.active = on_signal, abort_on_second, active
        self.signum = None
        self._saved: dict = {}

    def __call__(self):
        return self.signum

    def __enter__(self):
        import signal
        import threading

        if self.active and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            if self.on_signal is not None:
                self.on_signal(signum)
        elif self.abort_on_second:
            self._restore()
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        self._restore()
        return False

    def _restore(self):
        import signal

        for sig, old in self._saved.items():
            signal.signal(sig, old)
        self._saved = {}
