"""`tsf-trt demo`: one held-out phantom, two syntheses of its T2, scored against the truth.

Why a phantom: it is the only subject we can ship a ground truth for. Its seed is outside
those the bundled model was trained (0..47) and measured (1000..1019) on, so the scores it
prints are honest held-out numbers. Two tasks show the paper's point in one run: T2 from
T1 + FLAIR, then from T1 + T1Gd + FLAIR — one more input should raise PSNR, and ω says how
much each input counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tsf_trt import metrics, sequences
from tsf_trt.errors import InputError
from tsf_trt.files.atomic import atomic_path, check_writable, sweep
from tsf_trt.files.ownership import refuse_input_overlap
from tsf_trt.files.volume import load_volume
from tsf_trt.inputs.subjects import Subject
from tsf_trt.runs.jobs import infer_subject
from tsf_trt.runs.outputs import OutputPaths
from tsf_trt.runs.request import InferRequest
from tsf_trt.synthesis.pipeline import Progress, Synthesizer
from tsf_trt.synthesis.preprocess import normalize
from tsf_trt.version import __version__

DEMO_SEED = 900_000
TARGET = "t2"
TASKS: tuple[tuple[str, ...], ...] = (("t1", "flair"), ("t1", "t1gd", "flair"))
SHAPE = (240, 240, 155)  # BraTS grid, 1 mm voxels (nibabel x, y, z)


@dataclass
class TaskScore:
    """What the demo measured for one task (PSNR/SSIM in the head mask, network units)."""

    task: str
    folder: str
    psnr: float
    ssim: float
    weights: dict[str, float]
    tsem_psnr_top1: float | None
    tsem_psnr_rest: float | None
    seconds: float
    figure: str
    outputs: list[str] = field(default_factory=list)


def _slug(sources: tuple[str, ...]) -> str:
    return f"{'_'.join(sources)}_to_{TARGET}"


def demo_paths(out_dir: Path, seed: int = DEMO_SEED) -> dict[str, Any]:
    """Every path the demo writes, so that all can be checked before any work."""
    from tsf_trt.phantoms import subject_name

    name = subject_name(seed, "brats2021")
    tasks = {s: OutputPaths.for_subject(out_dir / _slug(s), name, sequences.parse(TARGET), True) for s in TASKS}
    return {"name": name, "subject": out_dir / name, "tasks": tasks,
            "figures": {s: out_dir / f"demo_{_slug(s)}.png" for s in TASKS}, "report": out_dir / "demo.json"}


def check_demo(out_dir: str | Path, overwrite: bool, seed: int = DEMO_SEED,
               inputs: Sequence[tuple[str, Path | None]] = ()) -> None:
    """Refuse, before anything is computed: an output folder that is or holds one of `inputs`
    (the model), existing outputs without `overwrite`, and with it any that tsf-trt did not
    write; an output folder that cannot be written."""
    from tsf_trt.phantoms import check_targets

    out_dir = Path(out_dir)
    refuse_input_overlap(out_dir, inputs)
    check_targets(out_dir, 1, "brats2021", overwrite, seed)
    paths = demo_paths(out_dir, seed)
    for slug in (_slug(s) for s in TASKS):
        if (out_dir / slug).exists() and not (out_dir / slug).is_dir():
            raise InputError(out_dir / slug, "is a file; the demo writes a folder of that name")
    files = [p for outputs in paths["tasks"].values() for p in outputs.all()]
    for path in [*files, *paths["figures"].values(), paths["report"]]:
        if path.exists() or path.is_symlink():
            check_writable(path, overwrite)  # and with --overwrite, only tsf-trt's own files


def run_demo(synth: Synthesizer, out_dir: str | Path, *, overwrite: bool = False, seed: int = DEMO_SEED,
             shape: tuple[int, int, int] = SHAPE,
             on_task: Callable[[str], Progress | None] | None = None) -> list[TaskScore]:
    """Make the phantom, run both tasks through `infer`'s own job, score, draw, write demo.json.

    ``on_task(task)`` may return a progress callback for that task's slices.
    """
    from tsf_trt.phantoms import write_subjects
    from tsf_trt.runs.figures import scored_title, subject_figure

    out_dir = Path(out_dir)
    check_demo(out_dir, overwrite, seed)
    paths = demo_paths(out_dir, seed)
    sweep(out_dir, {paths["report"].name, *(p.name for p in paths["figures"].values())})  # killed demos' temps
    write_subjects(out_dir, 1, seed=seed, shape=shape, overwrite=overwrite)
    files = {sequences.parse(s): paths["subject"] / f"{paths['name']}_{suffix}.nii.gz"
             for s, suffix in (("t1", "t1"), ("t1gd", "t1ce"), ("t2", "t2"), ("flair", "flair"))}
    images = {i: normalize(load_volume(p).data) for i, p in files.items()}
    target = sequences.parse(TARGET)
    scores = []
    for task_sources in TASKS:
        sources = [sequences.parse(s) for s in task_sources]
        subject = Subject(paths["name"], {i: files[i] for i in sources})
        task = sequences.describe(sorted(sources), target)
        (out_dir / _slug(task_sources)).mkdir(exist_ok=True)
        request = InferRequest(target, output=out_dir / _slug(task_sources), overwrite=overwrite)
        outcome = infer_subject(synth, subject, request, progress=on_task(task) if on_task else None)
        r = outcome.result
        truth = images[target]
        regions = metrics.tsem_regions(r.image, truth, r.tsem, r.head_mask) if r.tsem is not None else None
        psnr, ssim = metrics.psnr(r.image, truth, r.head_mask), metrics.ssim(r.image, truth, r.head_mask)
        figure = subject_figure(
            paths["figures"][task_sources], inputs={sequences.DISPLAY[i]: images[i] for i in sorted(sources)},
            synthesis=r.image, truth=truth, tsem=r.tsem, weights=r.weights_by_name(), head=r.head_mask,
            title=scored_title(paths["name"], task, psnr, ssim, "(demo, held-out phantom)"))
        scores.append(TaskScore(
            task=task, folder=_slug(task_sources), psnr=psnr, ssim=ssim, weights=r.weights_by_name(),
            tsem_psnr_top1=regions and regions["psnr_top"], tsem_psnr_rest=regions and regions["psnr_rest"],
            seconds=r.timings["total"], figure=Path(figure).name,
            outputs=[str(p.relative_to(out_dir)) for p in outcome.paths.all()]))
    report = {"tsf_trt_version": __version__,  # the mark by which --overwrite knows it as tsf-trt's
              "subject": paths["name"], "seed": seed, "shape": list(shape), "target": TARGET,
              "model_id": synth.backend.model_id, "backend": synth.backend.describe(),
              "metric_note": "PSNR/SSIM inside the head mask, network units [-1, 1] (data range 2), truth = the "
                             "phantom's T2 after the reference normalisation; TSEM top 1 % of head voxels",
              "tasks": [asdict(s) for s in scores]}
    with atomic_path(paths["report"], overwrite) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return scores
