"""The in-process CLI runner the CLI tests share: main(argv, stdout, stderr) returns the exit
status and writes only to the streams it is given."""

import io

from gradfit.cli.main import main


def cli(*argv):
    """(ExitStatus, an IntEnum; stdout text; stderr text) of ``gradfit ARGV...``."""
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()
