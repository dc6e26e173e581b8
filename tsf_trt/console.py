"""What every command shows a person: the two consoles, the log, progress bars, and the one-line
error contract.

Results go to stdout (`out`); everything about the run goes to the ``tsf_trt`` logger, which
the library's modules log to with the standard :mod:`logging` module. On a terminal the log
is drawn by rich's handler above the progress bars; when stderr is not a terminal (a batch
job, a pipe) no bar is drawn and each record is one timestamped line, so a log file shows one
line per subject and the start and end of every long step (:func:`step`). `--log-file`
appends the same lines to a file; `--quiet` keeps only warnings and errors on the console;
`--verbose` adds the debug lines (the details a person rarely needs: why each GPU backend is not
usable, ...); `--log-format json` writes one JSON object per record instead (:class:`JsonLines`),
for pipelines. An option spelled the old way is said once, as a warning (:func:`deprecated`).

Its own module, below the CLI, so that entry points outside :mod:`tsf_trt.cli` (the
`train` group that torchrun launches as a module) keep the same contract without
importing the whole CLI.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar

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
_json = False  # --log-format json: errors are records too (user_errors)
#: Old option spellings used in this command, said once its log is set up (:func:`deprecated`).
_deprecations: list[str] = []
_command_log = False  # this command has set up its own log: an old spelling is said at once

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
F = TypeVar("F", bound=Callable[..., Any])

# The options of every long command that rule what it shows (see setup_logging), in one help panel
# (tsf_trt.cli.params groups every command's options).
LOG_PANEL = "Log"

Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", rich_help_panel=LOG_PANEL,
    help="Print only warnings, errors and the final result (the log file, if any, keeps every line).")]

NoProgress = Annotated[bool, typer.Option(
    "--no-progress", rich_help_panel=LOG_PANEL,
    help="No progress bars, even on a terminal (they are never drawn when stderr is not a terminal: one log "
         "line per step is written instead).")]

LogFile = Annotated[Optional[Path], typer.Option(
    "--log-file", show_default=False, rich_help_panel=LOG_PANEL,
    help="Also append every log line (timestamped: one per subject, and the start and end of each long step) "
         "to this file.")]

Verbose = Annotated[bool, typer.Option(
    "--verbose", "-v", rich_help_panel=LOG_PANEL,
    help="Also log the details (debug lines): why each GPU backend is not usable here, and in `infer` every "
         "file not used, one line per subject.")]

#: --log-format: text (a timestamped line per record) or json (one JSON object per line).
LOG_FORMATS = ("text", "json")
LogFormat = Annotated[Literal[LOG_FORMATS], typer.Option(  # type: ignore[valid-type]
    "--log-format", case_sensitive=False, rich_help_panel=LOG_PANEL,
    help="json: every log record, on stderr and in --log-file, is one JSON object per line (time, level, "
         "logger, message, and subject where the record is about one), for pipelines; errors too. Results "
         "stay on stdout as text.")]


class JsonLines(logging.Formatter):
    """--log-format json: one JSON object per record, on one line: time (ISO 8601, local time with
    its offset), level, logger, message, and `subject` where the record names one (logged with
    ``extra={"subject": name}``)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        subject = getattr(record, "subject", None)
        if subject is not None:
            entry["subject"] = str(subject)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def deprecated(old: str, new: str) -> None:
    """An option spelled the old way (it still works for one release): one warning naming the new
    spelling, in the log (stderr, --log-file, --log-format), never on stdout with the results. Said
    when the command's log is set up (setup_logging), or at once where it already is."""
    _deprecations.append(f"{old} is deprecated and will stop working in the next release: use {new}")
    if _command_log:
        say_deprecations()


def start_command() -> None:
    """A new command begins (the root callback, after its default log): nothing noted for an earlier
    one is left over, and what is noted now waits for this command's own log."""
    global _command_log
    _deprecations.clear()
    _command_log = False


def say_deprecations() -> None:
    """Log the old spellings noted so far, once each (setup_logging calls this; a command that sets
    up no log of its own gets them from its command class when it ends)."""
    for line in dict.fromkeys(_deprecations):
        log.warning("%s", line)
    _deprecations.clear()


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
            _error(str(exc))
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            err.print("interrupted: no partial output was left behind", highlight=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except ModuleNotFoundError as exc:
            if extra_for(exc) is None:
                raise
            what = get_current_context(silent=True)
            missing = missing_extra(what.command_path if what else "this command", exc.name)
            _error(str(missing))
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]


def _error(message: str) -> None:
    """A command's failure: `error: MESSAGE` on stderr, or with --log-format json an ERROR record."""
    if _json:
        log.error("%s", message)
    else:
        err.print(error_text(message), highlight=False, soft_wrap=True)


def setup_logging(quiet: bool = False, no_progress: bool = False, log_file: Path | None = None, *,
                  verbose: bool = False, log_format: str = "text") -> None:
    """Route the ``tsf_trt`` log for this command (replacing what an earlier call set up), then say
    the old option spellings it was given (:func:`deprecated`)."""
    global _show_progress, _json, _command_log
    from rich.logging import RichHandler

    for handler in _handlers:
        log.removeHandler(handler)
        handler.close()
    _handlers.clear()
    _json = log_format == "json"
    line: logging.Formatter = JsonLines() if _json else _LINE
    terminal = err.is_terminal
    _show_progress = terminal and not (quiet or no_progress)
    if terminal and not _json:
        console: logging.Handler = RichHandler(console=err, show_path=False, markup=False, rich_tracebacks=False,
                                               log_time_format="%H:%M:%S")
    else:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(line)
    detail = logging.DEBUG if verbose else logging.INFO
    console.setLevel(logging.WARNING if quiet else detail)
    _handlers.append(console)
    log.addHandler(console)  # first: a --log-file that cannot be written is said on it
    log.setLevel(detail)
    log.propagate = False
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            to_file = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise TsfError(f"--log-file {log_file}: cannot be written ({exc.strerror or exc})") from None
        to_file.setFormatter(line)
        to_file.setLevel(detail)
        _handlers.append(to_file)
        log.addHandler(to_file)
    _command_log = True
    say_deprecations()


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
