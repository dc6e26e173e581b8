"""What `infer` is asked to make (:class:`InferRequest`), checked once, when built, before any
model loads or file is read: the run-level half of a request, beside :class:`~tsf_trt.synthesis.options.RunOptions`
(how to run the network).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tsf_trt import sequences
from tsf_trt.errors import InputError, TsfError
from tsf_trt.runs.claims import DEFAULT_LEASE_S, check_lease
from tsf_trt.uncertainty.calibration import Calibration, read_calibration

if TYPE_CHECKING:
    from tsf_trt.inputs.subjects import Subject
    from tsf_trt.runs.outputs import OutputPaths


@dataclass(frozen=True)
class InferRequest:
    """What `infer` is asked to make, for one subject or a folder of them; checked once, when built.

    `output` is the output folder (the commands' default: :func:`~tsf_trt.runs.outputs.default_output`;
    never beside the raw files); `synth_name` names one subject's synthesis file in it (`-o NAME.nii.gz`,
    :func:`split_output`; the other outputs beside it, named after it), None: the usual names (a folder
    run's must be: :func:`file_output_error`); `sources` (folder mode) picks the inputs of every subject (None:
    all but the target); `calibration` the interval calibration (`tsf-trt calibrate`; None: no interval, and each report
    says so; the CLI passes the model's own, ModelSource.calibration_file, unless told otherwise);
    `lease_s` and `wait` rule how folder runs share subjects (tsf_trt.runs.claims).
    """

    target: int
    output: Path
    sources: tuple[int, ...] | None = None
    tsem: bool = True
    overwrite: bool = False
    lease_s: float = DEFAULT_LEASE_S
    wait: bool = False
    strict: bool = False    # the preprocessing checks' warnings fail the subject (tsf_trt.inputs.preflight)
    resample: bool = False  # inputs off 1 mm or on different grids go through 1 mm isotropic (tsf_trt.inputs.resample)
    calibration: Calibration | Path | None = None  # a calibration.json path is read when the request is built
    synth_name: str | None = None  # one subject: the synthesis file's own name in `output` (-o NAME.nii.gz)

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
        if self.synth_name is not None and split_output(self.synth_name) != (Path("."), self.synth_name):
            raise TsfError(f"the synthesis file's name must be a file name ending in .nii or .nii.gz, without a "
                           f"folder: {self.synth_name!r}")
        if isinstance(self.calibration, (str, Path)):
            object.__setattr__(self, "calibration", read_calibration(Path(self.calibration)))
        check_lease(self.lease_s)

    def makes_tsem(self, has_fusion: bool) -> bool:
        """Whether this request's outputs include a TSEM map, for a model with or without the TSF stage."""
        return sequences.makes_tsem(self.tsem, has_fusion)

    def read_files(self) -> list[Path]:
        """The files this request reads besides the subjects' inputs (its calibration): inputs too,
        never written, with or without --overwrite."""
        source = getattr(self.calibration, "source", "")
        return [Path(source)] if source else []

    def check_calibration(self, model_id: str) -> None:
        """A calibration belongs to one model: another model's is refused, in one line naming its file
        (the CLI asks before the model loads; tsf_trt.runs.jobs asks again for Python callers)."""
        cal = self.calibration
        if cal is None or cal.model_id == model_id:
            return
        problem = (f"calibrated for model {cal.model_id}, but this is model {model_id or '(without an id)'}: "
                   "calibrate this model with `tsf-trt calibrate`, or run without an interval (--calibration none)")
        raise InputError(cal.source, problem) if cal.source else TsfError(f"the calibration: {problem}")

    def outputs_of(self, subject: Subject, has_fusion: bool, *, own_folder: bool) -> OutputPaths:
        """Where `subject`'s outputs go for this request (tsf_trt.runs.outputs.OutputPaths.of). The
        interval half-width map's name is always among them, with or without a calibration: it is
        written only where the interval applies, and an earlier run's is never left beside outputs
        whose report says there is none (--overwrite removes it, and without it the run stops)."""
        from tsf_trt.runs.outputs import OutputPaths

        if self.synth_name is not None and (own_folder or subject.bids is not None):
            raise file_output_error(self.output / self.synth_name)
        return OutputPaths.of(subject, self.output, self.target, self.makes_tsem(has_fusion), own_folder=own_folder,
                              interval=True, synth_name=self.synth_name)


#: Image formats tsf-trt does not write: `-o out.mgz` is a mistake to name, not a folder to create.
_OTHER_IMAGES = (".mgz", ".mgh", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr", ".img")


def split_output(output: str | Path) -> tuple[Path, str | None]:
    """`infer -o` as (output folder, synthesis file name or None). A name ending in .nii or .nii.gz
    names the synthesis file itself, as mri_synthsr's --o does (issue 25: `-o out.nii.gz` made a
    folder of that name); its folder then holds the other outputs. Any other name is a folder.
    Decided by the name alone, never by what is on disk, so a command means the same every time."""
    path = Path(output)
    name = path.name
    if sequences.nifti_stem(name) not in ("", name):
        return path.parent, name
    if name.lower().endswith(_OTHER_IMAGES):
        raise TsfError(f"-o {output}: tsf-trt writes NIfTI; name the synthesis file NAME.nii.gz (or .nii), or "
                       "give a folder")
    return path, None


def file_output_error(output: str | Path) -> TsfError:
    """`-o NAME.nii.gz` where a run has many subjects: one line, whoever finds it (the CLI, before it
    reads the data; :meth:`InferRequest.outputs_of` for Python callers)."""
    return TsfError(f"-o {output}: a name ending in .nii or .nii.gz names one subject's synthesis file, and this "
                    "run has many subjects (a folder, a BIDS dataset or --map): give -o a folder")
