"""The Typer application and what every command shares: consoles, error handling, progress."""

from __future__ import annotations

import functools
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from .. import __version__
from ..errors import TsfError

app = typer.Typer(
    name="tsf-trt",
    help="TSF-Seq2Seq MRI synthesis: make a missing T1, T1Gd, T2 or FLAIR volume from any of the "
         "others, with each input's contribution weight and a TSEM map of where the network refined.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console()
err = Console(stderr=True)

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def user_errors(func):
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

    return wrapper


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err)


def _version(value: bool) -> None:
    if value:
        out.print(f"tsf-trt {__version__}")
        raise typer.Exit()


@app.callback()
def common(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """TSF-Seq2Seq MRI synthesis with TSEM (MICCAI 2023), as a fast, dependable command."""
