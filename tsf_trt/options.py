"""The typed objects a request flows through: how to run the network (:class:`RunOptions`)
and what to make (:class:`InferRequest`), each checked once, when built, before any model
loads or file is read, so a bad value is one clear error up front, never a traceback
after minutes of work. Every entry point (the CLI commands, and
:class:`~tsf_trt.pipeline.Synthesizer` from Python) builds them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .claims import DEFAULT_LEASE_S, check_lease
from .errors import TsfError
from .preprocess import COMBINE_RULES
from .qc import QcCalibration, load_calibration

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
    precision: str = "auto"         # bf16 where native and checked on this model, else fp32
    batch_size: int | None = None   # None: the backend's choice for the volume's size
    threads: int | None = None      # None: the runtime's choice
    combine: str = "middle"
    frame: str = "head"             # tsf_trt.frame: head, full or HxW
    compile: bool = False           # torch.compile each stage (--backend torch only)

    def __post_init__(self) -> None:
        from .backends import NAMES, PRECISIONS, check_precision
        from .frame import FrameSpec

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
        object.__setattr__(self, "frame", str(FrameSpec.parse(self.frame)))
        if self.compile and self.backend != "torch":
            hint = " (auto may pick ONNX Runtime, OpenVINO or TensorRT: name --backend torch)" \
                if self.backend == "auto" else ""
            raise TsfError(f"--compile (torch.compile) is for --backend torch, not --backend {self.backend}{hint}")


@dataclass(frozen=True)
class InferRequest:
    """What `infer` is asked to make, for one subject or a folder of them; checked once, when built.

    `sources` (folder mode) picks the inputs of every subject (None: all but the target);
    `output` is the output folder (None: beside each subject's inputs); `qc` the TSEM QC
    calibration; `lease_s` and `wait` rule how folder runs share subjects (tsf_trt.claims).
    """

    target: int
    sources: tuple[int, ...] | None = None
    output: Path | None = None
    tsem: bool = True
    overwrite: bool = False
    qc: QcCalibration | Path | None = None  # a qc.json path is read when the request is built
    lease_s: float = DEFAULT_LEASE_S
    wait: bool = False
    strict: bool = False    # the preprocessing checks' warnings fail the subject (tsf_trt.preflight)
    resample: bool = False  # inputs off 1 mm or on different grids go through 1 mm isotropic (tsf_trt.resample)

    def __post_init__(self) -> None:
        from . import sequences

        if not 0 <= self.target < sequences.N_SEQUENCES:
            raise TsfError(f"--target: not a sequence index: {self.target}")
        if self.sources is not None:
            object.__setattr__(self, "sources", tuple(self.sources))
            if self.target in self.sources:
                raise TsfError(f"--sources names the target {sequences.DISPLAY[self.target]} itself: nothing to "
                               "synthesise (drop it from --sources or pick another --target)")
            sequences.check_task(sorted(self.sources), self.target)
        if self.output is not None:
            object.__setattr__(self, "output", Path(self.output))
        if self.qc is not None and not self.tsem:
            raise TsfError("--qc scores the TSEM map, which --no-tsem turns off: drop one of them")
        if isinstance(self.qc, (str, Path)):
            object.__setattr__(self, "qc", load_calibration(Path(self.qc)))
        check_lease(self.lease_s)
