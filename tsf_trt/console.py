"""What every command shows a person: the two consoles, progress bars, and the one-line error contract.

Its own module, below the CLI, so that entry points outside :mod:`tsf_trt.cli` (the
`train` group that torchrun launches as a module) keep the same contract without
importing the whole CLI.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from .errors import TsfError

out = Console()
err = Console(stderr=True)

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """User errors and Ctrl-C end as one line and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TsfError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            err.print("interrupted: no partial output was left behind", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err)
