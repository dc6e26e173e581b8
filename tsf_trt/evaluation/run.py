"""`evaluate` as a library call: subjects -> rows (resumable) -> tables, figures, intervals, report.

The CLI (`tsf-trt evaluate`) is a thin layer over :func:`evaluate`; tests and notebooks call
it directly with a ready :class:`~tsf_trt.synthesis.pipeline.Synthesizer`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt import sequences
from tsf_trt.backends import Backend
from tsf_trt.errors import InputError, TsfError
from tsf_trt.evaluation.loop import SliceProgress, SubjectImages, evaluate_images
from tsf_trt.evaluation.report import interval_summary, summarize, write_csv, write_json, write_markdown
from tsf_trt.evaluation.scoring import Lpips, half_widths, score_subject
from tsf_trt.evaluation.store import ReportDir, calibration_digest, fingerprint, safe_name
from tsf_trt.evaluation.tasks import Task
from tsf_trt.files.ownership import refuse_input_overlap
from tsf_trt.inputs.subjects import Subject, find_subjects
from tsf_trt.synthesis.pipeline import Synthesizer
from tsf_trt.uncertainty.calibration import Calibration
from tsf_trt.version import __version__

METRICS_VERSION = 1  # bump when a row's meaning changes: older caches are then not reused


@dataclass
class Settings:
    """What to evaluate and how (the command's options)."""

    tasks: list[Task]
    slice_step: int = 1
    compare: bool = True
    figures: int | Sequence[str] = 1     # how many subjects get figures (the first ones), or their names
    lpips: Lpips | None = None
    lpips_label: str | None = None       # what the LPIPS weights were (for the run key and the report)
    batch_size: int | None = None
    overwrite: bool = False
    frame: str = "head"                  # where the network runs (tsf_trt.synthesis.frame), as infer's --frame
    calibration: Calibration | None = None  # interval calibration to measure (tsf_trt.uncertainty.calibration)


@dataclass
class SubjectOutcome:
    subject: str
    status: str                           # "done", "cached", "skipped" or "failed"
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    backend: str = ""


@dataclass
class Hooks:
    """Progress callbacks for a front end (all optional)."""

    on_ready: Callable[[dict[str, int]], None] | None = None                  # tasks per subject, after every check
    on_subject: Callable[[Subject, int], SliceProgress | None] | None = None   # (subject, n tasks) at its start
    on_task: Callable[[Subject, Task], None] | None = None                     # a task scored
    on_end: Callable[[SubjectOutcome], None] | None = None


@dataclass
class Evaluation:
    report_dir: Path
    outcomes: list[SubjectOutcome]
    summary: dict[str, Any]
    resumed: bool

    @property
    def failed(self) -> list[SubjectOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def subject_tasks(subject: Subject, tasks: Sequence[Task]) -> list[Task]:
    """The tasks a subject has every sequence for (sources and the target's truth)."""
    return [t for t in tasks if all(i in subject.inputs for i in (*t.sources, t.target))]


def plan(data: str | Path, settings: Settings, has_fusion: bool) -> tuple[list[Subject], list[Subject]]:
    """The subjects to score and those that get figures; refuses impossible requests up front."""
    if settings.slice_step < 1:
        raise TsfError(f"--slice-step must be at least 1, got {settings.slice_step}")
    multi = [t.label for t in settings.tasks if t.n_inputs > 1]
    if not has_fusion and multi:
        raise TsfError(f"the model is Seq2Seq-only (no TSF stage): it cannot do {multi[0]}"
                       + (f" and {len(multi) - 1} more task(s)" if len(multi) > 1 else "")
                       + "; ask for one-input tasks: --tasks single, or e.g. 't1->t2;flair->t2'")
    subjects = find_subjects(data)
    if isinstance(settings.figures, int):
        chosen = [s for s in subjects if subject_tasks(s, settings.tasks)][: max(0, settings.figures)]
    else:
        names = {s.name: s for s in subjects}
        unknown = [n for n in settings.figures if n not in names]
        if unknown:
            raise TsfError(f"--figures: no subject named {', '.join(unknown)} in {data}")
        chosen = [names[n] for n in settings.figures]
    return subjects, chosen


def check_calibration(settings: Settings, model_id: str, has_fusion: bool) -> None:
    """Refuse, before any model loads, an interval calibration that cannot be measured here: made
    for another model, holding none of the tasks, or needing what this run does not compute."""
    cal = settings.calibration
    if cal is None:
        return
    where = Path(cal.source) if cal.source else Path("--calibration")
    why = cal.other_model(model_id)
    if why is not None:
        raise InputError(where, why)
    held = [t for t in settings.tasks if t.key in cal.tasks]
    if not held:
        asked = ", ".join(t.key for t in settings.tasks[:4]) + (", ..." if len(settings.tasks) > 4 else "")
        raise InputError(where, f"holds {', '.join(sorted(cal.tasks))}, none of the tasks evaluated ({asked})")
    for task in held:
        needs = cal.tasks[task.key].needs
        if "singles" in needs and not (settings.compare and has_fusion):  # what the loop computes them for
            raise TsfError(f"--calibration: the heuristic of {task.key} needs the one-to-one syntheses (spread), "
                           + ("which --no-compare skips; drop --no-compare" if has_fusion else
                              "which evaluate makes only for a model with a TSF stage"))
        if "tsem" in needs and not has_fusion:
            raise TsfError(f"--calibration: the heuristic of {task.key} needs TSEM, and this model has no TSF stage")


def figure_tasks(tasks: Sequence[Task]) -> list[Task]:
    """Per target, the evaluated task with the most inputs: one figure each."""
    best: dict[int, Task] = {}
    for task in tasks:
        if task.target not in best or task.n_inputs > best[task.target].n_inputs:
            best[task.target] = task
    return [best[t] for t in sorted(best)]


def run_key(model_id: str, settings: Settings) -> dict[str, Any]:
    """What the rows depend on (see :mod:`.store`)."""
    return {"model_id": model_id, "tasks": [t.key for t in settings.tasks], "slice_step": settings.slice_step,
            "compare": settings.compare, "lpips": settings.lpips_label, "metrics_version": METRICS_VERSION,
            "frame": settings.frame}


def check_run(data: str | Path, report_dir: str | Path, settings: Settings, *, model_id: str, has_fusion: bool,
              inputs: Sequence[tuple[str, Path | None]] = ()) -> bool:
    """Every refusal :func:`evaluate` makes about its data and report folder, made before a model
    loads and modifying nothing (the report folder is never an input, and with --overwrite only a
    report is cleared); True when the report folder holds this same run, to be resumed."""
    plan(data, settings, has_fusion)
    check_calibration(settings, model_id, has_fusion)
    refuse_input_overlap(report_dir, [("--data folder", Path(data)), *inputs])
    return ReportDir(report_dir, run_key(model_id, settings)).check(settings.overwrite)


def evaluate(synth: Synthesizer, data: str | Path, report_dir: str | Path, settings: Settings, *,
             model_label: str = "", hooks: Hooks | None = None) -> Evaluation:
    """Score every subject of `data` on every task, resuming a compatible run in `report_dir`,
    and write the report there. Failing subjects are recorded and the others go on."""
    hooks = hooks or Hooks()
    be = synth.backend
    subjects, figure_subjects = plan(data, settings, be.has_fusion)
    check_calibration(settings, be.model_id, be.has_fusion)
    refuse_input_overlap(report_dir, [("--data folder", Path(data))])
    store = ReportDir(report_dir, run_key(be.model_id, settings))
    resumed = store.open(settings.overwrite)
    compare = settings.compare and be.has_fusion
    if hooks.on_ready:
        hooks.on_ready({s.name: len(subject_tasks(s, settings.tasks)) for s in subjects})
    outcomes = []
    for subject in subjects:
        outcome = _one_subject(be, store, subject, settings, compare, subject in figure_subjects, hooks)
        outcomes.append(outcome)
        if hooks.on_end:
            hooks.on_end(outcome)
    return _finish(store, outcomes, settings, be.model_id, model_label or be.model_id, data, resumed,
                   figure_subjects, be.has_fusion)


def _one_subject(be: Backend, store: ReportDir, subject: Subject, settings: Settings, compare: bool,
                 with_figures: bool, hooks: Hooks) -> SubjectOutcome:
    """Reuse the subject's finished entry, or compute, score, draw and record it."""
    tasks = subject_tasks(subject, settings.tasks)
    if not tasks:
        have = ", ".join(sequences.DISPLAY[i] for i in subject.inputs)
        return SubjectOutcome(subject.name, "skipped", error=f"has only {have}: none of the tasks applies")
    figs = figure_tasks(tasks) if with_figures else []
    fig_paths = [_figure_path(store.figures, subject.name, t) for t in figs]
    start = time.perf_counter()
    try:
        prints = fingerprint(subject.inputs)
        digest = calibration_digest(settings.calibration)
        entry = store.cached(subject.name, prints, fig_paths, digest)
        if entry is not None:
            return SubjectOutcome(subject.name, "cached", entry["rows"], seconds=entry.get("seconds", 0.0),
                                  backend=entry.get("backend", ""))
        progress = hooks.on_subject(subject, len(tasks)) if hooks.on_subject else None
        images = evaluate_images(be, subject.inputs, tasks, slice_step=settings.slice_step,
                                 batch_size=settings.batch_size, compare=compare, frame=settings.frame,
                                 progress=progress)
        on_task = (lambda task: hooks.on_task(subject, task)) if hooks.on_task else None
        widths = _widths(be.model_id, settings.calibration, images)
        rows = score_subject(subject.name, images, compare=compare, lpips=settings.lpips, on_task=on_task,
                             calibration=settings.calibration, widths=widths)
        for task, path in zip(figs, fig_paths):
            width = widths.get(task)
            _subject_figure(path, subject.name, task, images, rows, width if isinstance(width, np.ndarray) else None)
        seconds = time.perf_counter() - start
        store.save(subject.name, prints, rows, seconds=seconds, backend=be.describe(), batch_size=images.batch_size,
                   timings=images.timings, calibration=digest)
        return SubjectOutcome(subject.name, "done", rows, seconds=seconds, backend=be.describe())
    except (TsfError, OSError) as exc:
        message = str(exc) if isinstance(exc, TsfError) else f"{type(exc).__name__}: {exc}"
        return SubjectOutcome(subject.name, "failed", error=message)


def _widths(model_id: str, calibration: Calibration | None, images: SubjectImages
            ) -> dict[Task, np.ndarray | str]:
    """The half-width maps (or why not) of the subject's calibrated tasks; {} without a calibration.
    evaluate runs no preflight, so no finding is passed: only the model, task and voxel size decide."""
    if calibration is None or not any(t.key in calibration.tasks for t in images.tasks):
        return {}
    return half_widths(calibration, model_id, images.voxel_mm, images)


def _figure_path(folder: Path, subject: str, task: Task) -> Path:
    return folder / f"{safe_name(subject)}_{task.slug}.png"


def _subject_figure(path: Path, subject: str, task: Task, images: SubjectImages, rows: list[dict[str, Any]],
                    half_width: np.ndarray | None = None) -> None:
    from tsf_trt.runs.figures import choose_slices, scored_title, subject_figure

    out, truth = images.tasks[task], images.truth[task.target]
    row = next(r for r in rows if r["task"] == task.label)
    picked = choose_slices(truth, out.tsem)
    interval = row.get("interval") or {}
    said = (f"\nhalf-width mean {interval['half_width']:.1f} (0–1000), truth outside on "
            f"{100 * interval['outside']:.1f} % of the head (α {100 * interval['alpha']:g} %)"
            if interval.get("applies") and interval.get("outside") is not None else "")
    subject_figure(path, inputs={sequences.NAMES[s]: images.truth[s] for s in task.sources}, synthesis=out.image,
                   truth=truth, tsem=out.tsem, weights={sequences.NAMES[i]: w for i, w in out.weights.items()},
                   title=scored_title(subject, task.label, row["psnr"], row["ssim"]) + said, slices=picked,
                   slice_numbers=[int(images.region.slices[k]) for k in picked], head=images.head,
                   half_width=half_width, own_location=True)  # the report folder, recognised as ours


def _finish(store: ReportDir, outcomes: list[SubjectOutcome], settings: Settings, model_id: str, model_label: str,
            data: str | Path, resumed: bool, figure_subjects: Sequence[Subject], has_fusion: bool) -> Evaluation:
    from tsf_trt.runs.figures import weights_chart

    rows = [r for o in outcomes for r in o.rows]
    summary: dict[str, Any] = {
        "tsf_trt_version": __version__, "model": model_label, "model_id": model_id,
        "backends": sorted({o.backend for o in outcomes if o.backend}), "data": str(data),
        "settings": {"tasks": [t.label for t in settings.tasks], "slice_step": settings.slice_step,
                     "compare": settings.compare and has_fusion, "combine": "middle",
                     "head_mask": "voxels where any of the subject's sequences is > 0"},
        "lpips": settings.lpips_label or "unavailable (no --lpips-weights given)",
        "subjects": {
            "scored": sum(o.status in ("done", "cached") for o in outcomes),
            "computed": sum(o.status == "done" for o in outcomes),
            "reused": sum(o.status == "cached" for o in outcomes),
            "failed": [{"subject": o.subject, "error": o.error} for o in outcomes if o.status == "failed"],
            "skipped": [{"subject": o.subject, "reason": o.error} for o in outcomes if o.status == "skipped"],
            "seconds": {o.subject: round(o.seconds, 2) for o in outcomes if o.rows},
        },
        **summarize(rows, lpips=settings.lpips is not None, compare=settings.compare and has_fusion,
                    model_method="TSF-Seq2Seq" if has_fusion else "Seq2Seq (the model has no TSF stage)"),
        "figures": {"subjects": [], "weights": None},
    }
    if settings.calibration is not None:
        summary["interval"] = interval_summary(rows, settings.calibration, settings.tasks,
                                               calibration_digest(settings.calibration))
    weight_rows = [w for w in summary["weights"] if w["n_inputs"] > 1] or summary["weights"]
    if weight_rows:
        weights_chart(store.figures / "weights.png", [(w["task"], w["weights"]) for w in weight_rows],
                      title="Contribution weight ω of each input, per task" +
                            (" (tasks with several inputs)" if len(weight_rows) < len(summary["weights"]) else ""),
                      own_location=True)
        summary["figures"]["weights"] = f"{store.figures.name}/weights.png"
    by_name = {o.subject: o for o in outcomes}
    for subject in figure_subjects:
        if subject.name in by_name and by_name[subject.name].rows:
            for task in figure_tasks(subject_tasks(subject, settings.tasks)):
                path = _figure_path(store.figures, subject.name, task)
                if path.is_file():
                    summary["figures"]["subjects"].append(
                        {"subject": subject.name, "task": task.label, "path": f"{store.figures.name}/{path.name}"})
    write_csv(store.path / "results.csv", rows)
    write_json(store.path / "summary.json", summary)
    write_markdown(store.path / "report.md", summary)
    return Evaluation(store.path, outcomes, summary, resumed)
