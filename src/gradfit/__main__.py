"""``python -m gradfit`` runs the command-line interface."""

from gradfit.cli.main import entry

entry()
