"""What became of one subject of an `infer` run, and a synthesis waiting to be written.

Its own module so that folder mode's background writer (:mod:`tsf_trt.runs.writer`) and the jobs
that hand it work (:mod:`tsf_trt.runs.jobs`) both build on it, and neither imports the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tsf_trt.errors import TsfError
from tsf_trt.files.atomic import remove_empty_folders
from tsf_trt.files.volume import Volume
from tsf_trt.inputs.subjects import shown
from tsf_trt.runs.outputs import Inputs, OutputPaths, write_outputs
from tsf_trt.synthesis.pipeline import Result


@dataclass
class SubjectOutcome:
    subject: str
    status: str                      # "done", "skipped", "failed" or "busy" (a live run elsewhere has it)
    paths: OutputPaths | None = None
    result: Result | None = None
    error: str | None = None         # why it failed, or who has it when busy
    removed: list[Path] = field(default_factory=list)  # leftovers of dead runs cleaned up

    def line(self, backend: str = "") -> str:
        """The subject's one log line: name, task, backend, seconds, output or why not."""
        name = shown(self.subject)  # a name that is refused may hold a newline
        if self.status == "done" and self.result is not None and self.paths is not None:
            frame = self.result.frame
            where = f", frame {frame['size'][0]}x{frame['size'][1]} ({frame['frame']})" if frame else ""
            return (f"{name}: {self.result.task}, {backend or 'done'}{where}, "
                    f"{self.result.timings['total']:.1f} s, wrote {self.paths.synth}")
        if self.status == "skipped":
            where = f" ({self.paths.report})" if self.paths is not None else ""
            return f"{name}: skipped, already complete{where}"
        return f"{name}: {self.status}: {self.error}"


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

    def write(self) -> SubjectOutcome:
        """Write and publish the outputs (all or nothing); the subject's outcome."""
        start = time.perf_counter()
        write_outputs(self.result, self.like, self.paths, self.report, overwrite=self.overwrite, inputs=self.inputs,
                      before_publish=self.before_publish, tsem_sidecar=self.tsem_sidecar)
        self.result.timings["write"] = time.perf_counter() - start
        return SubjectOutcome(self.subject, "done", self.paths, self.result, removed=self.removed)

    def failed(self, exc: Exception, created: Path | None) -> SubjectOutcome:
        """The outcome of a write that failed for this subject alone."""
        return failed(self.subject, exc, created, self.paths)


def failed(name: str, exc: Exception, created: Path | None, paths: OutputPaths | None) -> SubjectOutcome:
    """A subject that failed alone: its one-line reason, and no empty folder left (if it made one)."""
    message = str(exc) if isinstance(exc, TsfError) else f"{type(exc).__name__}: {exc}"
    if created is not None and paths is not None:  # a failed subject leaves no empty folder (only if still empty)
        remove_empty_folders(created, paths.folder)
    return SubjectOutcome(name, "failed", error=message)
