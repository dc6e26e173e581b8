"""What every command shows a person: the two consoles, the log, progress bars, and the one-line
error contract.

Results go to stdout (`out`); everything about the run goes to the ``tsf_trt`` logger, which
the library's modules log to with the standard :mod:`logging` module. On a terminal the log
is drawn by rich's handler above the progress bars; when stderr is not a terminal (a batch
job, a pipe) no bar is drawn and each record is one timestamped line, so a log file shows one
line per subject and the start and end of every long step (:func:`step`). `--log-file`
appends the same lines to a file; `--quiet` keeps only warnings and errors on the console.

Its own module, below the CLI, so that entry points outside :mod:`tsf_trt.cli` (the
`train` group that torchrun launches as a module) keep the same contract without
importing the whole CLI.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

from tsf_trt.errors import TsfError
from tsf_trt.machine.extras import extra_for, missing_extra

try:
    from typer.main import get_current_context  # typer's own click (recent typer)
except ImportError:  # older typer, on click
    from click import get_current_context

# Nothing printed is read as markup or emoji codes: what is shown holds paths and names as the
# user gave them (a file `x[b]_t1.nii.gz`, an output folder `o[/i]`, a subject `a:b:`), which
# rich would otherwise restyle, cut or refuse. Styled words are rich Text (error_text, the
# doctor's table); the progress bars and the spinner below show their text as given too.
out = Console(markup=False, emoji=False)
err = Console(stderr=True, markup=False, emoji=False)
log = logging.getLogger("tsf_trt")

_LINE = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
_handlers: list[logging.Handler] = []
_show_progress = True

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
F = TypeVar("F", bound=Callable[..., Any])

# The options of every long command that rule what it shows (see setup_logging).
Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", help="Print only warnings, errors and the final result (the log file, if any, keeps "
                          "every line).")]

NoProgress = Annotated[bool, typer.Option(
    "--no-progress", help="No progress bars, even on a terminal (they are never drawn when stderr is not a "
                          "terminal: one log line per step is written instead).")]

LogFile = Annotated[Optional[Path], typer.Option(
    "--log-file", show_default=False,
    help="Also append every log line (timestamped: one per subject, and the start and end of each long step) "
         "to this file.")]



def error_text(message: str) -> Text:
    """`error: <message>` as every command ends a failure, the message shown as given."""
    return Text.assemble(("error:", "bold red"), " ", message)


def user_errors(func: F) -> F:
    """User errors and Ctrl-C end as one line and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except TsfError as exc:
            err.print(error_text(str(exc)), highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            err.print("interrupted: no partial output was left behind", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except ModuleNotFoundError as exc:
            if extra_for(exc) is None:
                raise
            what = get_current_context(silent=True)
            missing = missing_extra(what.command_path if what else "this command", exc.name)
            err.print(error_text(str(missing)), highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(quiet: bool = False, no_progress: bool = False, log_file: Path | None = None) -> None:
    """Route the ``tsf_trt`` log for this command (replacing what an earlier call set up)."""
    global _show_progress
    from rich.logging import RichHandler

    for handler in _handlers:
        log.removeHandler(handler)
        handler.close()
    _handlers.clear()
    terminal = err.is_terminal
    _show_progress = terminal and not (quiet or no_progress)
    if terminal:
        console: logging.Handler = RichHandler(console=err, show_path=False, markup=False, rich_tracebacks=False,
                                               log_time_format="%H:%M:%S")
    else:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(_LINE)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    _handlers.append(console)
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            to_file = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise TsfError(f"--log-file {log_file}: cannot be written ({exc.strerror or exc})") from None
        to_file.setFormatter(_LINE)
        to_file.setLevel(logging.INFO)
        _handlers.append(to_file)
    for handler in _handlers:
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def progress_bar() -> Progress:
    """A bar on a terminal; nothing at all in a batch job or with --quiet/--no-progress (the
    log lines say what happens there)."""
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err, disable=not _show_progress)


@contextmanager
def step(what: str, logger: logging.Logger = log) -> Iterator[None]:
    """A long step (an export, the `auto` probe, an engine build): one log line when it starts
    and one when it ends, with its seconds; a spinner meanwhile on a terminal."""
    logger.info("%s ...", what)
    start = time.perf_counter()
    try:
        if _show_progress:
            with err.status(Text(f"{what} ...")):  # a str would be read as markup
                yield
        else:
            yield
    except BaseException:
        logger.info("%s: stopped after %.1f s", what, time.perf_counter() - start)
        raise
    logger.info("%s: done in %.1f s", what, time.perf_counter() - start)
