"""The ``gradfit`` command: parse arguments, call the API, format the answer.

``main(argv, stdout, stderr) -> ExitStatus`` never raises: GradfitError -> one line on stderr
and USAGE (2); a fit whose status is not a usable solution -> FIT_FAILED (3), by the one table
:data:`gradfit.cli.common.STATUS_EXIT`; anything else is a bug -> one "internal error" line
and ERROR (1) (``GRADFIT_TRACEBACK=1`` prints the traceback). Everything, argparse's
usage and help included, is written to the streams passed in. Only argparse and the standard
library are imported at start-up, so ``gradfit --help`` is instant; each command imports what
it needs when it runs.
"""

from __future__ import annotations

import contextlib
import sys

from .common import ExitStatus
from .options import build_parser

__all__ = ["main", "entry", "ExitStatus", "build_parser"]


def _command(name: str):
    """The run function of a command, imported only when that command runs."""
    if name == "demo":
        from .demo import run_demo as run
    elif name == "fit":
        from .fit import run_fit as run
    elif name == "predict":
        from .predict import run_predict as run
    elif name == "fit-many":
        from .fit_many import run_fit_many as run
    elif name == "tune":
        from .tune import run_tune as run
    elif name == "compare":
        from .compare import run_compare as run
    else:
        from .gradcheck import run_gradcheck as run
    return run


def main(argv=None, stdout=None, stderr=None) -> ExitStatus:
    """Run the CLI and return its exit status instead of exiting (tests call this directly).

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default ``sys.argv[1:]``).
    stdout, stderr : text streams, optional
        Where results and messages go (default the process's own).
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    parser = build_parser()
    try:
        # argparse writes help, usage and errors to sys.stdout/sys.stderr itself
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help and --version
        return ExitStatus.OK if not exc.code else ExitStatus.USAGE
    if args.command is None:
        parser.print_help(stdout)
        return ExitStatus.OK
    args.argv = argv  # for messages that repeat the command (resume hints, tune workers)
    from ..errors import GradfitError

    try:
        return ExitStatus(_command(args.command)(args, stdout, stderr))
    except GradfitError as exc:
        message = " ".join(str(exc).split())
        print(f"gradfit {args.command}: error: {message}", file=stderr)
        return ExitStatus.USAGE
    except BrokenPipeError:  # the reader went away (`| head`): not an error of the input
        if stdout is sys.__stdout__:
            _silence_stdout()
        return ExitStatus.BROKEN_PIPE
    except OSError as exc:  # e.g. --out in a read-only folder
        print(f"gradfit {args.command}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=stderr)
        return ExitStatus.USAGE
    except KeyboardInterrupt:
        print("gradfit: interrupted", file=stderr)
        return ExitStatus.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug: one line, not a traceback, unless asked for
        import os

        if os.environ.get("GRADFIT_TRACEBACK"):
            import traceback

            traceback.print_exc(file=stderr)
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        print(f"gradfit {args.command}: internal error: {message}; please report it with the command "
              "(GRADFIT_TRACEBACK=1 shows the traceback)", file=stderr)
        return ExitStatus.ERROR


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again (the
    recipe of the Python docs for SIGPIPE)."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file descriptor (tests pass a StringIO)
        pass


def entry() -> None:
    """Console-script entry point."""
    status = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        status = ExitStatus.BROKEN_PIPE
    # The interpreter's last garbage collections walk every object torch and sympy created
    # (1-2 s after a fit or a Ctrl-C); frozen, they are skipped and the OS reclaims the memory.
    import gc

    gc.freeze()
    sys.exit(status)
