"""User-facing errors.

Anything a user can cause (a bad file, a wrong flag, a mismatched model) is raised
as a :class:`TsfError`; the CLI prints it as one line and exits non-zero, without a
traceback. Programming errors stay ordinary exceptions so that they do show one.
"""

from __future__ import annotations

from pathlib import Path


class TsfError(Exception):
    """An error the user can fix; its message is complete on its own."""


class InputError(TsfError):
    """A problem with one named file or directory."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ModelError(InputError):
    """A model directory or checkpoint that cannot be used as asked."""
