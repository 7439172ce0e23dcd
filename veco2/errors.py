"""User-facing errors.

A :class:`Veco2Error` is a problem with the user's input or environment (a bad file, a bad
config value, a missing dataset).  The CLI prints it as one line and exits non-zero, without a
traceback unless ``--debug`` is given.  Bugs stay ordinary exceptions.
"""

from __future__ import annotations

from pathlib import Path


class Veco2Error(Exception):
    """An error the user can fix; ``str(err)`` is the whole one-line message."""


class InputError(Veco2Error):
    """Bad content in an input file, located by file and (1-based) line."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class ConfigError(Veco2Error):
    """A config key or value that is not allowed; the message names the key and what is allowed."""
