"""`tsf-trt`: one module per command group; each command is a thin layer over the library."""

from __future__ import annotations

import sys

from .app import EXIT_INTERRUPTED, app, err
from . import bench, data, demo, engines, evaluate, infer, models, train  # noqa: F401,E402  (registers the commands)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # outside a command, e.g. while importing torch
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)


__all__ = ["app", "main"]
