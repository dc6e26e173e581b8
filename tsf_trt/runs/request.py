"""What `infer` is asked to make (:class:`InferRequest`), checked once, when built, before any
model loads or file is read: the run-level half of a request, beside :class:`~tsf_trt.synthesis.options.RunOptions`
(how to run the network).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tsf_trt import sequences
from tsf_trt.errors import TsfError
from tsf_trt.runs.claims import DEFAULT_LEASE_S, check_lease
from tsf_trt.runs.qc import QcCalibration, load_calibration


@dataclass(frozen=True)
class InferRequest:
    """What `infer` is asked to make, for one subject or a folder of them; checked once, when built.

    `output` is the output folder (the commands' default: :func:`~tsf_trt.runs.outputs.default_output`;
    never beside the raw files); `sources` (folder mode) picks the inputs of every subject (None:
    all but the target); `qc` the TSEM QC calibration; `lease_s` and `wait` rule how folder runs share subjects (tsf_trt.runs.claims).
    """

    target: int
    output: Path
    sources: tuple[int, ...] | None = None
    tsem: bool = True
    overwrite: bool = False
    qc: QcCalibration | Path | None = None  # a qc.json path is read when the request is built
    lease_s: float = DEFAULT_LEASE_S
    wait: bool = False
    strict: bool = False    # the preprocessing checks' warnings fail the subject (tsf_trt.inputs.preflight)
    resample: bool = False  # inputs off 1 mm or on different grids go through 1 mm isotropic (tsf_trt.inputs.resample)

    def __post_init__(self) -> None:
        if not 0 <= self.target < sequences.N_SEQUENCES:
            raise TsfError(f"--target: not a sequence index: {self.target}")
        if self.sources is not None:
            object.__setattr__(self, "sources", tuple(self.sources))
            try:
                sequences.check_task(sorted(self.sources), self.target)
            except sequences.TargetIsInput:  # say which flag named it
                raise TsfError(f"--sources names the target {sequences.DISPLAY[self.target]} itself: nothing to "
                               "synthesise (drop it from --sources or pick another --target)") from None
        object.__setattr__(self, "output", Path(self.output))
        if self.qc is not None and not self.tsem:
            raise TsfError("--qc scores the TSEM map, which --no-tsem turns off: drop one of them")
        if isinstance(self.qc, (str, Path)):
            object.__setattr__(self, "qc", load_calibration(Path(self.qc)))
        check_lease(self.lease_s)

    def makes_tsem(self, has_fusion: bool) -> bool:
        """Whether this request's outputs include a TSEM map, for a model with or without the TSF stage."""
        return sequences.makes_tsem(self.tsem, has_fusion)
