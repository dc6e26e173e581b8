"""`tsf-trt`: one module per command group; each command is a thin layer over the library."""

from __future__ import annotations

import sys

from tsf_trt.cli import bench, calibrate, data, demo, engines, evaluate, infer, models, table, train  # noqa: F401,E402  (registers the commands)
from tsf_trt.cli.app import EXIT_INTERRUPTED, app, err


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # outside a command, e.g. while importing torch
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)


__all__ = ["app", "main"]
