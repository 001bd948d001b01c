"""The ``bertbeam`` command: argv -> a job, one module per command."""

from bertbeam.cli.main import main

__all__ = ["main"]
