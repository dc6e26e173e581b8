"""Subject-level jobs behind `tsf-trt infer`: one subject, or a folder of them.

These functions are the library side of the CLI (usable from Python): they choose
inputs and output names, refuse bad requests before any heavy work, run the
:class:`~tsf_trt.synthesis.pipeline.Synthesizer` and write outputs all-or-nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tsf_trt import sequences
from tsf_trt.errors import TsfError
from tsf_trt.files.atomic import DiskFullError, make_folder, remove_stale
from tsf_trt.inputs.prefetch import Loaded, Prefetcher, load_subject
from tsf_trt.inputs.preflight import voxel_size_mm
from tsf_trt.inputs.resample import needs_resampling, resample_subject, result_to_input_grid, to_input_grid
from tsf_trt.inputs.subjects import Subject
from tsf_trt.runs.claims import Claim, Claims, Holder, ModelConflict
from tsf_trt.runs.outcomes import IntervalPlan, SubjectOutcome, Synthesized, failed
from tsf_trt.runs.bids_outputs import bids_sidecars, legacy_outputs, raw_root, skull_stripped, start_derivative
from tsf_trt.runs.outputs import Inputs, OutputPaths, build_report, check_folder_outputs, precision_block
from tsf_trt.runs.request import InferRequest
from tsf_trt.runs.table import check_table, table_path, write_table
from tsf_trt.runs.writer import Started, Writer
from tsf_trt.synthesis.pipeline import Progress, Synthesizer
from tsf_trt.uncertainty.calibration import PER_NETWORK_UNIT

_log = logging.getLogger(__name__)


@dataclass
class FolderSummary:
    outcomes: list[SubjectOutcome] = field(default_factory=list)
    table: Path | None = None  # the cohort table this run left (tsf_trt.runs.table), None if none was written

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def failed(self) -> list[SubjectOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def removed(self) -> list[Path]:
        return [p for o in self.outcomes for p in o.removed]

    def line(self, seconds: float) -> str:
        busy = self.count("busy")
        return (f"{self.count('done')} done, {self.count('skipped')} skipped (already complete), "
                f"{self.count('failed')} failed" + (f", {busy} in progress in other runs" if busy else "")
                + (f", {len(self.removed)} leftovers of killed runs removed" if self.removed else "")
                + f", in {seconds:.1f} s")


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


def infer_subject(synth: Synthesizer, subject: Subject, request: InferRequest, *, progress: Progress | None = None,
                  backend_name: str = "", paths: OutputPaths | None = None, overwrite: bool | None = None,
                  protected: Inputs | Iterable[Path] = (), before_publish: Callable[[], None] | None = None
                  ) -> SubjectOutcome:
    """Synthesise `request.target` for one subject from all of `subject.inputs`; write its outputs.

    Outputs go to `paths` (folder mode's), else where :meth:`OutputPaths.of` puts them for
    `request.output`; `overwrite` overrides the request's (folder mode replaces a dead
    run's partial outputs). No output may be one of the subject's inputs or of `protected`
    (folder mode: an :class:`~tsf_trt.runs.outputs.Inputs` of every input of the folder, which
    holds the subject's own). With `request.calibration` (another model's is refused), the interval
    half-width map is written where its guarantee applies, and the report's "interval" block says
    so, or why not."""
    return synthesize_subject(synth, subject, request, progress=progress, backend_name=backend_name, paths=paths,
                              overwrite=overwrite, protected=protected, before_publish=before_publish).write()


def synthesize_subject(synth: Synthesizer, subject: Subject, request: InferRequest, *,
                       progress: Progress | None = None, backend_name: str = "", paths: OutputPaths | None = None,
                       overwrite: bool | None = None, protected: Inputs | Iterable[Path] = (),
                       before_publish: Callable[[], None] | None = None,
                       load: Callable[[Mapping[int, Path]], Loaded] = load_subject,
                       log_findings: bool = True) -> Synthesized:
    """:func:`infer_subject` up to its outputs: every check, the synthesis and the report. `load`
    reads and checks the inputs (folder mode's :meth:`~tsf_trt.inputs.prefetch.Prefetcher.load`, which
    has them read ahead). The input checks' findings are in the outcome, and logged as warnings
    unless `log_findings` is False (folder mode: the subject's line and the run's summary say them)."""
    target, tsem = request.target, request.tsem
    overwrite = request.overwrite if overwrite is None else overwrite
    sources = list(subject.inputs)
    synth.check_task(sorted(sources), target)
    request.check_calibration(synth.backend.model_id)
    with_tsem = request.makes_tsem(synth.has_fusion)
    paths = paths or request.outputs_of(subject, synth.has_fusion, own_folder=False)
    inputs = protected if isinstance(protected, Inputs) else \
        Inputs([*subject.inputs.values(), *request.read_files(), *protected])
    removed = [p for folder in paths.folders() if folder.is_dir()
               for p in remove_stale(folder, paths.names(), request.lease_s)]
    paths.check(overwrite, inputs)
    start = time.perf_counter()
    loaded = load(subject.inputs)
    read = time.perf_counter() - start  # reading and checking; in folder mode, what is left of it
    volumes = loaded.volumes
    network, findings = _preflight(subject, loaded, request, log_findings)
    plan = IntervalPlan.of(request.calibration, synth.backend.model_id, sequences.task_key(sources, target),
                           [v for volume in volumes.values() for v in voxel_size_mm(volume)],
                           [f"{f.path.name} ({f.kind})" for f in findings],  # the report's "preflight" says more
                           loaded.profile, synth.has_fusion).unless(_combine_differs(synth))
    if plan.entry is not None and paths.halfwidth is None:
        raise ValueError("these outputs have no half-width map's name: build them with InferRequest.outputs_of")
    result = synth.run(network, target, tsem=with_tsem or plan.needs("tsem"), progress=progress,
                       singles=plan.needs("singles"))
    plan = plan.unless(_frame_misses_head(result.frame))
    half_width = None if plan.entry is None else plan.half_width(result)  # on the network's grid, as calibrated
    interval = plan.block(half_width, result.head_mask, paths.halfwidth.name if paths.halfwidth else "")
    result = replace(result, singles=None, tsem=result.tsem if with_tsem else None)  # used; not outputs
    if network is not volumes:  # --resample: the outputs go back onto the first input's grid
        grid, like = network[sources[0]], volumes[sources[0]]
        result = result_to_input_grid(result, grid, like)
        if half_width is not None:  # as TSEM goes back; outside the resampled view, the widest interval
            half_width = to_input_grid(half_width, grid, like, fill=float(half_width.max()))
    written = paths if half_width is not None else paths.without_interval()
    result.timings["read"] = read
    extra: dict = {"tsem_note": None if with_tsem or not tsem else "no TSEM: the model has no TSF stage (Seq2Seq only)",
                   "preflight": [{"file": str(f.path), "kind": f.kind, "message": f.message} for f in findings],
                   "resampled": network is not volumes}
    model_id = synth.backend.model_id
    # a BIDS derivative: sidecars of BIDS fields (tsf_trt.runs.bids_outputs); the record is the report
    sidecar, tsem_sidecar, halfwidth_sidecar = bids_sidecars(
        subject, written, result, request.output, model_id=model_id, interval=interval,
        skull_stripped=skull_stripped(f.kind for f in findings))
    legacy = legacy_outputs(subject, request.output, target) if overwrite else []
    if subject.bids is not None:
        extra["bids"] = {"subject": subject.bids[0], "session": subject.bids[1]}
    report = build_report(result, written, subject.inputs, subject=subject.name,
                          model_id=model_id, backend=backend_name or synth.backend.describe(),
                          extra=extra, precision=precision_block(synth.backend), interval=interval)
    return Synthesized(subject.name, result, volumes[sources[0]], written, report, overwrite, inputs, before_publish,
                       tsem_sidecar, removed,
                       None if half_width is None else (half_width * PER_NETWORK_UNIT).astype("float32"),
                       halfwidth_sidecar, [*([] if half_width is not None else paths.interval_files()), *legacy],
                       sidecar=sidecar, findings=list(findings))


def _combine_differs(synth: Synthesizer) -> str | None:
    """`calibrate` synthesises by the middle rule (tsf_trt.evaluation.loop): --combine mean is another synthesis."""
    combine = synth.options.combine
    return None if combine == "middle" else (f"--combine {combine}: the calibration measured syntheses made by "
                                             "the middle rule (--combine middle)")


def _frame_misses_head(frame: dict) -> str | None:
    """Head voxels outside --frame are background in the synthesis, unlike any calibrated one."""
    outside = float(frame.get("head_outside", 0.0) or 0.0)
    return None if outside <= 0 else (f"--frame {frame.get('frame')} left {100 * outside:.2f} % of the head "
                                      "outside the frame")


def _preflight(subject: Subject, loaded: Loaded, request: InferRequest, log: bool = True) -> tuple[dict, list]:
    """The preprocessing checks (tsf_trt.inputs.preflight, found by `loaded`'s reader): each finding is a
    warning line (with `log`), or with `request.strict` the subject's error; with `request.resample`,
    inputs on other grids or far from 1 mm go to the network on one 1 mm grid (tsf_trt.inputs.resample)."""
    volumes, findings = loaded.volumes, loaded.findings
    network = volumes
    if request.resample and needs_resampling(volumes):
        network = resample_subject(volumes)
        findings = [f for f in findings if f.kind not in ("voxel-size", "different-grid")]
        if log:
            _log.info("%s: resampled to 1 mm isotropic for the network (--resample)", subject.name,
                      extra={"subject": subject.name})
    else:  # inputs on different grids fail in the pipeline with their own one-line error
        findings = [f for f in findings if f.kind != "different-grid"]
    for finding in findings:
        if request.strict:
            raise finding.error()
        if log:
            _log.warning("%s: %s", subject.name, finding, extra={"subject": subject.name})
    return network, findings


def infer_folder(synth: Synthesizer, subjects: Sequence[Subject], request: InferRequest, *,
                 on_start: Callable[[Subject], Progress | None] | None = None,
                 on_end: Callable[[SubjectOutcome], None] | None = None,
                 on_wait: Callable[[list[SubjectOutcome]], None] | None = None,
                 backend_name: str = "", prefetch: bool = True) -> FolderSummary:
    """Every subject in turn, safe to run in many processes at once over one folder.

    Output goes to `request.output/<subject>/` (BIDS subjects: by the derivatives naming). Each subject
    is claimed first (:mod:`tsf_trt.runs.claims`): finished ones are skipped (resume), ones a
    live run holds are left to it ("busy"), dead runs' claims are taken over and their
    leftovers removed; a failure is recorded and the rest go on. With `overwrite`,
    finished subjects are redone, except those another run finished since this one began.
    With `wait`, busy subjects are looked at again until their holders finish them or
    die (then this run takes them over): when it returns, every subject has an outcome.
    The output folder holds one model's outputs: a live run of another model there, or
    (without overwrite) another model's report, stops this run with a ModelConflict.
    A subject's outputs are written on a background thread while the next one computes
    (:class:`~tsf_trt.runs.writer.Writer`), and with `prefetch` the next one's inputs are read while
    it computes (:class:`~tsf_trt.inputs.prefetch.Prefetcher`: what is read and every error stay as
    without it); `on_start` and `on_end` still come in subject order, from this thread.
    When the run ends, it rebuilds the cohort table `tsf-trt_<target>.tsv` in the output folder from
    every report there and its own failures (:mod:`tsf_trt.runs.table`; `summary.table`).
    """
    protected = Inputs([*(p for s in subjects for p in s.inputs.values()), *request.read_files()])
    run = _FolderRun(synth, request, backend_name, protected, time.time(), Prefetcher() if prefetch else None)
    summary = FolderSummary()

    def emit(outcome: SubjectOutcome) -> None:
        summary.outcomes.append(outcome)
        if on_end:
            on_end(outcome)

    request.check_calibration(synth.backend.model_id)  # once, for every subject
    check_table(table_path(request.output, request.target))  # a user's file of the table's name: before any work
    writer = Writer(emit)
    pending = list(subjects)
    with Claims(request.lease_s) as claims:
        try:
            _join(claims, subjects, request, synth.backend.model_id)
            while pending:
                busy = []
                for k, subject in enumerate(pending):
                    run.read_ahead(pending[k + 1:])
                    outcome = run.one(subject, claims, on_start, writer)
                    if outcome is None:
                        continue  # being written: the writer hands it on, in order
                    if request.wait and outcome.status == "busy":
                        busy.append((subject, outcome))
                        continue
                    writer.flush()
                    emit(outcome)
                writer.flush()
                pending = [subject for subject, _ in busy]
                if pending:
                    if on_wait:
                        on_wait([outcome for _, outcome in busy])
                    time.sleep(min(5.0, max(0.2, request.lease_s / 4)))  # a dead holder on this host is seen at once
        except BaseException:
            writer.abandon()  # before Claims closes: the subject being written keeps its claim until it ends
            raise
        finally:
            run.close()
    try:  # the cohort table, rebuilt from every report on disk: the last run to end leaves it complete
        summary.table = write_table(request.output, request.target, outcomes=summary.outcomes, subjects=subjects,
                                    protected=protected)
    except (TsfError, OSError) as exc:  # the subjects' outputs stand; the table can be rebuilt (`tsf-trt table`)
        _log.warning("the cohort table was not written: %s", exc)
    return summary


def _join(claims: Claims, subjects: Sequence[Subject], request: InferRequest, model_id: str) -> None:
    """Register this run in the output folder, whose outputs are one model's (a ModelConflict
    stops the run otherwise, before any subject); a BIDS derivative dataset describes itself."""
    root = request.output
    make_folder(root)
    claims.join(root, sequences.NAMES[request.target], model_id)
    check_folder_outputs(root, subjects, request.target, model_id, overwrite=request.overwrite,
                         lease_s=request.lease_s)
    bids = next((s for s in subjects if s.bids is not None), None)
    if bids is not None:
        start_derivative(root, model_id, raw_root(bids), overwrite=request.overwrite)


@dataclass
class _FolderRun:
    """What every subject of one folder run shares."""

    synth: Synthesizer
    request: InferRequest
    backend_name: str
    protected: Inputs
    started: float  # time.time(): with overwrite, reports newer than this were written by a concurrent run
    prefetch: Prefetcher | None = None

    @property
    def since(self) -> float | None:
        """With overwrite, only reports written since this run began mark a subject complete."""
        return self.started if self.request.overwrite else None

    def complete(self, paths: OutputPaths) -> bool:
        """Finished by a run of this model (another model's report: a ModelConflict, see
        :meth:`OutputPaths.complete`)."""
        return paths.complete(self.since, self.synth.backend.model_id)

    def plan(self, subject: Subject) -> tuple[Subject, OutputPaths]:
        """The subject with the inputs this run takes from it, and its outputs; raises what is wrong."""
        request = self.request
        if subject.problem:
            raise TsfError(subject.problem)
        chosen = replace(subject, inputs=choose_sources(subject, request.target, request.sources))
        return chosen, request.outputs_of(chosen, self.synth.has_fusion, own_folder=True)

    def read_ahead(self, upcoming: Sequence[Subject]) -> None:
        """Name the first of `upcoming` that this run will compute (usable, not complete) as the
        subject to read while the next one computes."""
        if self.prefetch is None:
            return
        for subject in upcoming:
            try:
                chosen, paths = self.plan(subject)
                if self.complete(paths):
                    continue
            except (TsfError, OSError):
                continue  # `one` says why, in its turn
            self.prefetch.ahead(chosen.inputs)
            return
        self.prefetch.ahead(None)

    def close(self) -> None:
        if self.prefetch is not None:
            self.prefetch.close()

    def one(self, subject: Subject, claims: Claims, on_start, writer: Writer) -> SubjectOutcome | None:
        """The subject's outcome, or None once its outputs are handed to `writer` (with its claim)."""
        request = self.request
        created: Path | None = None
        paths: OutputPaths | None = None
        try:
            chosen, paths = self.plan(subject)
            where = paths.folder
            stem = paths.report.stem
            removed = self._sweep(claims, where, stem, paths)
            if self.complete(paths):
                return SubjectOutcome(subject.name, "skipped", paths, removed=removed)
            created = make_folder(where)
            held = claims.claim(where, stem)
            if isinstance(held, Holder):
                return SubjectOutcome(subject.name, "busy", paths, error=held.describe(), removed=removed)
            claim: Claim | None = held
            try:
                if self.complete(paths):  # finished by another run between our look and our claim
                    return SubjectOutcome(subject.name, "skipped", paths, removed=removed)

                def still_ours() -> None:
                    if not held.still_held():
                        raise TsfError(f"{held.path}: another run took this subject over while this one worked "
                                       "on it (taken for dead: is --claim-lease shorter than a pause of this "
                                       "machine?); nothing was written")

                progress = Started(writer, subject, on_start)
                try:
                    job = synthesize_subject(self.synth, chosen, request, paths=paths,
                                             overwrite=request.overwrite or any(p.exists() for p in paths.all()),
                                             progress=progress, backend_name=self.backend_name,
                                             protected=self.protected, before_publish=still_ours,
                                             load=self.prefetch.load if self.prefetch else load_subject,
                                             log_findings=False)
                    # (overwrite: existing outputs are a dead run's, partial)
                except Exception:
                    progress.start()  # this subject's error line comes after the one before it
                    raise
                job.removed = removed + job.removed
                progress.start()
                writer.submit(job, held, created)
                claim = None  # the writer releases it once the outputs are published
                return None
            finally:
                if claim is not None:
                    claim.release()
        except (DiskFullError, ModelConflict):
            raise  # not this subject's fault: every later one would fail the same way
        except (TsfError, OSError) as exc:
            return failed(subject.name, exc, created, paths)

    @staticmethod
    def _sweep(claims: Claims, where: Path, stem: str, paths: OutputPaths) -> list[Path]:
        """Claims and temp files of dead runs beside this subject's outputs (never a live run's): in
        `where`, and in the folder of a BIDS subject's record (paths.folders)."""
        if not where.is_dir():
            return []
        return claims.sweep(where, stem) + [p for folder in paths.folders() if folder.is_dir()
                                            for p in remove_stale(folder, paths.names(), claims.lease_s)]
