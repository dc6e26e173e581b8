"""What became of one subject of an `infer` run, a synthesis waiting to be written, and its interval.

Its own module so that folder mode's background writer (:mod:`tsf_trt.runs.writer`) and the jobs
that hand it work (:mod:`tsf_trt.runs.jobs`) both build on it, and neither imports the other.
:class:`IntervalPlan` applies a calibration (tsf_trt.uncertainty.calibration) to one subject: whether
its guarantee applies, decided before the synthesis (which then computes what the heuristic needs),
and the report's "interval" block.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt.errors import TsfError
from tsf_trt.files.atomic import remove_empty_folders
from tsf_trt.files.volume import Volume
from tsf_trt.inputs.preflight import Finding
from tsf_trt.inputs.subjects import shown
from tsf_trt.runs.outputs import Inputs, OutputPaths, write_outputs
from tsf_trt.synthesis.pipeline import Result
from tsf_trt.synthesis.preprocess import OUTPUT_SCALE
from tsf_trt.uncertainty.calibration import STATEMENT, Calibration, TaskCalibration, subject_score
from tsf_trt.uncertainty.profile import InputProfile

#: Why a report without a calibration has no interval.
NO_CALIBRATION = ("no calibration: none was applied (`tsf-trt calibrate` makes one; `infer --calibration FILE` "
                  "applies it, and a model directory's own calibration.json is applied by default)")


@dataclass(frozen=True)
class IntervalPlan:
    """Whether one subject's synthesis gets a calibrated interval: `entry` where the guarantee applies,
    else `why` it does not. Decided before the synthesis, which then computes what `entry` needs."""

    calibration: Calibration | None
    entry: TaskCalibration | None
    why: str | None

    @classmethod
    def of(cls, calibration: Calibration | None, model_id: str, task_key: str, voxel_mm: Sequence[float],
           findings: Sequence[str], profile: InputProfile | None, has_fusion: bool) -> "IntervalPlan":
        """Calibration.why_not decides; a heuristic that uses TSEM cannot run on a Seq2Seq-only model."""
        if calibration is None:
            return cls(None, None, NO_CALIBRATION)
        why = calibration.why_not(model_id, task_key, voxel_mm, findings, profile)
        entry = None if why else calibration.tasks[task_key]
        if entry is not None and "tsem" in entry.needs and not has_fusion:
            entry, why = None, "the calibration's heuristic uses TSEM, which this model (Seq2Seq only) does not make"
        return cls(calibration, entry, why)

    def unless(self, why: str | None) -> "IntervalPlan":
        """This plan, or where `why` names how this synthesis differs from the calibrated ones, none."""
        return self if why is None or self.entry is None else replace(self, entry=None, why=why)

    def needs(self, what: str) -> bool:
        """Whether the synthesis must give `what` ('tsem', 'singles') for this interval."""
        return self.entry is not None and what in self.entry.needs

    def half_width(self, result: Result) -> np.ndarray:
        """λ·u(x) over `result` (network units, on the grid the network ran on)."""
        assert self.entry is not None
        singles = [result.singles[i] for i in result.sources] if self.needs("singles") and result.singles else []
        return self.entry.half_width(result.image, result.tsem, singles)

    def block(self, half_width: np.ndarray | None = None, head: np.ndarray | None = None,
              file_name: str = "") -> dict[str, Any]:
        """The report's "interval" block. Where the guarantee applies, from `half_width` (network units)
        and `head` on the network's grid (where the calibration measured the score); else why not,
        and no number (never one that looks calibrated and is not)."""
        cal = self.calibration
        where = (cal.source or None) if cal is not None else None
        if self.entry is None or cal is None or half_width is None or head is None:
            return {"applies": False, "why": self.why or NO_CALIBRATION, "calibration": where}
        score = subject_score(half_width, head)  # the mean half-width over the head, output units
        return {"applies": True, "calibration": where, "alpha": cal.alpha, "statement": STATEMENT,
                "lambda": self.entry.lam, "features": list(self.entry.heuristic.names),
                "half_width_file": file_name, "units": f"the synthesis's own units (0-{OUTPUT_SCALE:g})",
                "mean_half_width_head": score, "score": score, "flag_above": self.entry.flag_above,
                "flagged": bool(score > self.entry.flag_above)}


def interval_text(block: dict[str, Any] | None) -> str:
    """What a subject's line says of its interval: 'interval ±12.3 (α 0.1)', or why there is none."""
    if not block:
        return ""
    if block.get("applies") is True:
        flag = ", flagged" if block.get("flagged") else ""
        return f"interval ±{block['mean_half_width_head']:.1f} (α {block['alpha']:g}{flag})"
    if block.get("why") == NO_CALIBRATION:
        return "no calibrated interval (no calibration)"
    return f"no calibrated interval: {block.get('why')}"


@dataclass
class SubjectOutcome:
    subject: str
    status: str                      # "done", "skipped", "failed" or "busy" (a live run elsewhere has it)
    paths: OutputPaths | None = None
    result: Result | None = None
    error: str | None = None         # why it failed, or who has it when busy
    removed: list[Path] = field(default_factory=list)  # leftovers of dead runs cleaned up
    interval: dict[str, Any] | None = None  # the report's "interval" block (done subjects)
    findings: list[Finding] = field(default_factory=list)  # the input checks' (tsf_trt.inputs.preflight)
    resampled: bool = False  # --resample ran the network at 1 mm

    def line(self, backend: str = "") -> str:
        """The subject's one log line: name, task, backend, seconds, output or why not; the input
        checks' findings by kind (the run's summary, :func:`findings_summary`, says what each means)."""
        name = shown(self.subject)  # a name that is refused may hold a newline
        if self.status == "done" and self.result is not None and self.paths is not None:
            frame = self.result.frame
            where = f", frame {frame['size'][0]}x{frame['size'][1]} ({frame['frame']})" if frame else ""
            interval = interval_text(self.interval)
            return (f"{name}: {self.result.task}, {backend or 'done'}{where}"
                    + (", resampled to 1 mm" if self.resampled else "")
                    + f", {self.result.timings['total']:.1f} s, wrote {self.paths.synth}"
                    + (f"; {interval}" if interval else "") + self.checks_text())
        if self.status == "skipped":
            where = f" ({self.paths.report})" if self.paths is not None else ""
            return f"{name}: skipped, already complete{where}"
        return f"{name}: {self.status}: {self.error}"

    def checks_text(self) -> str:
        """'; input checks: voxel-size (3 inputs)', or '' without findings."""
        kinds: dict[str, int] = {}
        for finding in self.findings:
            kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
        said = ", ".join(f"{kind} ({n} input{'s' if n > 1 else ''})" for kind, n in kinds.items())
        return f"; input checks: {said}" if said else ""


def findings_summary(outcomes: Sequence[SubjectOutcome]) -> list[str]:
    """The input checks' findings of a folder run, one line per kind: how many inputs of how many
    subjects, and one finding in full as the example (each subject's report lists its own). A run
    logs these once, as warnings, instead of a warning per input per subject."""
    by_kind: dict[str, list[tuple[str, Finding]]] = {}
    for outcome in outcomes:
        for finding in outcome.findings:
            by_kind.setdefault(finding.kind, []).append((outcome.subject, finding))
    return [f"input checks: {kind} in {len(found)} input(s) of {len({s for s, _ in found})} subject(s), e.g. "
            f"{found[0][1]} (each subject's report lists its own; --strict fails them)"
            for kind, found in by_kind.items()]


@dataclass
class Synthesized:
    """A subject whose synthesis is done and whose outputs are not written yet: folder mode
    writes it on a background thread while the next subject computes."""

    subject: str
    result: Result
    like: Volume  # the outputs take this input's layout, affine and header
    paths: OutputPaths
    report: dict
    overwrite: bool
    inputs: Inputs
    before_publish: Callable[[], None] | None
    tsem_sidecar: dict | None
    removed: list[Path]
    half_width: np.ndarray | None = None       # output units, on `like`'s grid; where the interval applies
    halfwidth_sidecar: dict | None = None
    remove: list[Path] = field(default_factory=list)  # an earlier run's half-width map, where it no longer applies
    sidecar: dict | None = None  # the synthesis's BIDS sidecar (tsf_trt.runs.bids_outputs)
    findings: list[Finding] = field(default_factory=list)  # the input checks' (the outcome's)

    def write(self) -> SubjectOutcome:
        """Write and publish the outputs (all or nothing); the subject's outcome."""
        start = time.perf_counter()
        write_outputs(self.result, self.like, self.paths, self.report, overwrite=self.overwrite, inputs=self.inputs,
                      before_publish=self.before_publish, tsem_sidecar=self.tsem_sidecar,
                      half_width=self.half_width, halfwidth_sidecar=self.halfwidth_sidecar, remove=self.remove,
                      sidecar=self.sidecar)
        self.result.timings["write"] = time.perf_counter() - start
        return SubjectOutcome(self.subject, "done", self.paths, self.result, removed=self.removed,
                              interval=self.report.get("interval"), findings=list(self.findings),
                              resampled=bool(self.report.get("resampled")))

    def failed(self, exc: Exception, created: Path | None) -> SubjectOutcome:
        """The outcome of a write that failed for this subject alone."""
        return failed(self.subject, exc, created, self.paths)


def failed(name: str, exc: Exception, created: Path | None, paths: OutputPaths | None) -> SubjectOutcome:
    """A subject that failed alone: its one-line reason, and no empty folder left (if it made one)."""
    message = str(exc) if isinstance(exc, TsfError) else f"{type(exc).__name__}: {exc}"
    if created is not None and paths is not None:  # a failed subject leaves no empty folder (only if still empty)
        remove_empty_folders(created, paths.folder)
    return SubjectOutcome(name, "failed", error=message)
