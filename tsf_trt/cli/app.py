"""The Typer application; what every command shows (consoles, errors, progress) is :mod:`tsf_trt.console`."""

from __future__ import annotations

from typing import Annotated

import typer

from tsf_trt.cli.doctor import doctor
from tsf_trt.console import (EXIT_ERROR, EXIT_INTERRUPTED, err, log, out, progress_bar, setup_logging,
                             start_command, step, user_errors)
from tsf_trt.version import __version__

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
    setup_logging()  # each long command sets it up again with its --quiet, --no-progress, --log-file
    start_command()  # old option spellings wait for that (tsf_trt.cli.vocabulary)


app.command("doctor")(doctor)  # defined apart from the app (it imports nothing from here), registered here


__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "app", "err", "log", "out", "progress_bar", "setup_logging", "step",
           "user_errors"]
