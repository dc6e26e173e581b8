"""Subject-level jobs behind `tsf-trt infer`: one subject, or a folder of them.

These functions are the library side of the CLI (usable from Python): they choose
inputs and output names, refuse bad requests before any heavy work, run the
:class:`~tsf_trt.pipeline.Synthesizer` and write outputs all-or-nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import sequences
from .errors import TsfError
from .qc import QcCalibration, qc_block
from .outputs import OutputPaths, build_report, write_outputs
from .pipeline import Progress, Result, Synthesizer
from .subjects import Subject
from .volume import load_volume


@dataclass
class SubjectOutcome:
    subject: str
    status: str                      # "done", "skipped" or "failed"
    paths: OutputPaths | None = None
    result: Result | None = None
    error: str | None = None


@dataclass
class FolderSummary:
    outcomes: list[SubjectOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[SubjectOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def choose_sources(subject: Subject, target: int, wanted: Sequence[int] | None) -> dict[int, Path]:
    """Folder mode: every sequence the subject has except the target, or those asked for."""
    if wanted:
        missing = [sequences.DISPLAY[i] for i in wanted if i not in subject.inputs]
        if missing:
            raise TsfError(f"subject {subject.name} has no {', '.join(missing)} (asked for with --sources)")
        return {i: subject.inputs[i] for i in wanted}
    chosen = {i: p for i, p in subject.inputs.items() if i != target}
    if not chosen:
        raise TsfError(f"subject {subject.name} has no input sequence besides the target {sequences.DISPLAY[target]}")
    return chosen


def infer_subject(synth: Synthesizer, subject: Subject, target: int, out_dir: str | Path | None = None, *,
                  tsem: bool = True, overwrite: bool = False, progress: Progress | None = None,
                  backend_name: str = "", qc: QcCalibration | None = None) -> SubjectOutcome:
    """Synthesise `target` for one subject from all of `subject.inputs`; write three files.

    The report's "qc" block scores the TSEM with `qc` (from `evaluate --calibrate-qc`), or with
    the default threshold and no flag."""
    sources = list(subject.inputs)
    synth.check_task(sorted(sources), target)
    first = subject.inputs[sources[0]]
    folder = Path(out_dir) if out_dir is not None else first.parent
    with_tsem = tsem and synth.has_fusion
    paths = OutputPaths.for_subject(folder, subject.name, target, with_tsem)
    paths.check(overwrite)
    start = time.perf_counter()
    volumes = {i: load_volume(p) for i, p in subject.inputs.items()}
    read = time.perf_counter() - start
    result = synth.run(volumes, target, tsem=with_tsem, progress=progress)
    result.timings["read"] = read
    report = build_report(result, paths, subject.inputs, subject=subject.name,
                          model_id=synth.backend.model_id, backend=backend_name or synth.backend.describe(),
                          extra={"tsem_note": None if with_tsem or not tsem else
                                 "no TSEM: the model has no TSF stage (Seq2Seq only)"},
                          qc=qc_block(result.tsem, result.head_mask, qc))
    start = time.perf_counter()
    write_outputs(result, volumes[sources[0]], paths, report, overwrite=overwrite)
    result.timings["write"] = time.perf_counter() - start
    return SubjectOutcome(subject.name, "done", paths, result)


def infer_folder(synth: Synthesizer, subjects: Sequence[Subject], target: int, out_dir: str | Path | None = None, *,
                 sources: Sequence[int] | None = None, tsem: bool = True, overwrite: bool = False,
                 on_start: Callable[[Subject], Progress | None] | None = None,
                 on_end: Callable[[SubjectOutcome], None] | None = None, backend_name: str = "",
                 qc: QcCalibration | None = None) -> FolderSummary:
    """Every subject in turn: finished ones are skipped (resume), a failure is recorded
    and the rest go on. Output goes to `out_dir/<subject>/` or beside each subject's inputs."""
    summary = FolderSummary()
    with_tsem = tsem and synth.has_fusion
    for subject in subjects:
        folder = Path(out_dir) / subject.name if out_dir is not None else None
        try:
            chosen = Subject(subject.name, choose_sources(subject, target, sources))
            where = folder if folder is not None else next(iter(chosen.inputs.values())).parent
            paths = OutputPaths.for_subject(where, subject.name, target, with_tsem)
            if not overwrite and paths.complete():
                outcome = SubjectOutcome(subject.name, "skipped", paths)
            else:
                # Leftovers of an interrupted run (no complete report) are ours to replace.
                redo = overwrite or any(p.exists() for p in paths.all())
                if folder is not None:
                    folder.mkdir(parents=True, exist_ok=True)
                progress = on_start(subject) if on_start else None
                outcome = infer_subject(synth, chosen, target, where, tsem=tsem, overwrite=redo,
                                        progress=progress, backend_name=backend_name, qc=qc)
        except (TsfError, OSError) as exc:
            message = str(exc) if isinstance(exc, TsfError) else f"{type(exc).__name__}: {exc}"
            outcome = SubjectOutcome(subject.name, "failed", error=message)
            if folder is not None and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()  # a failed subject leaves no empty folder behind
        summary.outcomes.append(outcome)
        if on_end:
            on_end(outcome)
    return summary
