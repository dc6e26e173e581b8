"""`tsf-trt`: one module per command group; each command is a thin layer over the library."""

from __future__ import annotations

import sys

from tsf_trt.cli import bench, calibrate, data, demo, engines, evaluate, infer, models, table, train  # noqa: F401,E402  (registers the commands)
from tsf_trt.cli import bids_app  # noqa: F401,E402  (after infer and table, whose paths it runs)
from tsf_trt.cli.app import EXIT_INTERRUPTED, app, err


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (`args`: instead of sys.argv[1:])."""
    try:
        app(args=args, prog_name="tsf-trt")
    except KeyboardInterrupt:  # outside a command, e.g. while importing torch
        err.print("interrupted")
        sys.exit(EXIT_INTERRUPTED)


def bids_main() -> None:
    """Console script `tsf-trt-bids`: `tsf-trt bids ARGS`, the BIDS App (a container's ENTRYPOINT)."""
    main(["bids", *sys.argv[1:]])


__all__ = ["app", "bids_main", "main"]
