"""How to run the network (:class:`RunOptions`), checked once, when built, before any model
loads or file is read, so a bad value is one clear error up front, never a traceback after
minutes of work. Every entry point (the CLI commands, and :class:`~tsf_trt.synthesis.pipeline.Synthesizer`
from Python) builds one; what to make is :class:`tsf_trt.runs.request.InferRequest`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from tsf_trt.errors import TsfError
from tsf_trt.synthesis.frame import FrameSpec
from tsf_trt.synthesis.preprocess import COMBINE_RULES

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
    """How to run the network: the same object, with the same defaults, for every command and for
    :class:`~tsf_trt.synthesis.pipeline.Synthesizer` and
    :func:`~tsf_trt.synthesis.backend.create_backend` from Python. Checked when built."""

    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"         # bf16 where native and checked on this model, else fp32
    batch_size: int | None = None   # None: the backend's choice for the volume's size
    threads: int | None = None      # None: the runtime's choice
    combine: str = "middle"
    frame: FrameSpec | str = "head"  # head, full or HxW: parsed once, here, into a FrameSpec
    compile: bool = False           # torch.compile each stage (--backend torch only)

    def __post_init__(self) -> None:
        from tsf_trt.backends import NAMES, PRECISIONS, check_precision

        if self.backend not in NAMES:
            raise TsfError(f"--backend: unknown backend '{self.backend}' (use one of {', '.join(NAMES)})")
        if not _DEVICE.fullmatch(self.device):
            raise TsfError(f"--device must be auto, cpu, cuda or cuda:N, got '{self.device}'")
        if self.backend == "auto":
            every = ["auto"] + sorted({p for ps in PRECISIONS.values() for p in ps})
            if self.precision not in every:
                raise TsfError(f"--precision {self.precision} is not one of {', '.join(every)}")
        else:
            check_precision(self.backend, self.precision)
        if self.batch_size is not None and self.batch_size < 1:
            raise TsfError(f"--batch-size must be at least 1, got {self.batch_size}")
        check_threads(self.threads)
        if self.combine not in COMBINE_RULES:
            raise TsfError(f"--combine must be one of {', '.join(COMBINE_RULES)}, got '{self.combine}'")
        object.__setattr__(self, "frame", FrameSpec.parse(self.frame))
        if self.compile and self.backend != "torch":
            hint = " (auto may pick ONNX Runtime, OpenVINO or TensorRT: name --backend torch)" \
                if self.backend == "auto" else ""
            raise TsfError(f"--compile (torch.compile) is for --backend torch, not --backend {self.backend}{hint}")
