"""How to run the network: checked once, when built, before any model loads or file is read.

Every entry point (the CLI commands, :class:`~tsf_trt.pipeline.Synthesizer` from Python)
builds a :class:`RunOptions`, so a bad value is one clear error up front, never a
traceback after minutes of work.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import TsfError
from .preprocess import COMBINE_RULES

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask; all cores where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(threads: int | None, flag: str = "--threads") -> None:
    """More threads than usable cores only oversubscribe them (and in the hundred thousands,
    crash the runtime): refused, with the bound."""
    if threads is None:
        return
    cores = usable_cpus()
    if not 1 <= threads <= cores:
        raise TsfError(f"{flag} must be between 1 and {cores} (the CPU cores this process may use), got {threads}")


@dataclass(frozen=True)
class RunOptions:
    backend: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int | None = None   # None: the backend's choice for the volume's size
    threads: int | None = None      # None: the runtime's choice
    combine: str = "middle"

    def __post_init__(self) -> None:
        from .backends import NAMES, PRECISIONS

        if self.backend not in NAMES:
            raise TsfError(f"--backend: unknown backend '{self.backend}' (use one of {', '.join(NAMES)})")
        if not _DEVICE.fullmatch(self.device):
            raise TsfError(f"--device must be auto, cpu, cuda or cuda:N, got '{self.device}'")
        every = sorted({p for ps in PRECISIONS.values() for p in ps})
        allowed = PRECISIONS.get(self.backend, every)
        if self.precision not in allowed:
            raise TsfError(f"--precision {self.precision} is not available for --backend {self.backend} "
                           f"(it takes {', '.join(allowed)})")
        if self.batch_size is not None and self.batch_size < 1:
            raise TsfError(f"--batch-size must be at least 1, got {self.batch_size}")
        check_threads(self.threads)
        if self.combine not in COMBINE_RULES:
            raise TsfError(f"--combine must be one of {', '.join(COMBINE_RULES)}, got '{self.combine}'")
