"""Scores of one subject's syntheses: one row per task, for the CSV, the tables and the intervals.

All images are in network units over the subject's region (see :mod:`.loop`); the truth is
`preprocess.normalize` of the real target, as in training; every score is taken inside the
head mask with the shared implementations of :mod:`tsf_trt.metrics`. With an interval
calibration (tsf_trt.uncertainty.calibration), a row also says how often the truth lies
outside synthesis ± half-width over the head, and the same for the constant-width baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tsf_trt import metrics, sequences
from tsf_trt.evaluation.loop import SubjectImages, TaskImages
from tsf_trt.evaluation.tasks import Task
from tsf_trt.uncertainty.calibration import PER_NETWORK_UNIT, Calibration, TaskCalibration, subject_score

#: Methods of Table 1's ablation, as column prefixes ("" is TSF-Seq2Seq itself).
METHODS = {
    "": "TSF-Seq2Seq",
    "no_attention_": "TSF-Seq2Seq w/o attention (fused_avg)",
    "seq2seq_avg_": "Seq2Seq stage, outputs of single inputs averaged",
    "seq2seq_best_": "Seq2Seq stage, best single input (oracle: chosen by PSNR)",
}
QUALITY = ("psnr", "ssim", "lpips")

Lpips = Callable[[np.ndarray, np.ndarray, np.ndarray], float]
TaskDone = Callable[[Task], None]


class _Scorer:
    """PSNR / SSIM / LPIPS of images against one truth, each image scored once however many
    methods share it (a one-input task's Seq2Seq average, best input and fused_avg coincide)."""

    def __init__(self, truth: np.ndarray, mask: np.ndarray, lpips: Lpips | None):
        self.truth, self.mask, self.lpips = truth, mask, lpips
        self._memo: dict[int, tuple[np.ndarray, dict[str, float | None]]] = {}

    def __call__(self, image: np.ndarray) -> dict[str, float | None]:
        hit = self._memo.get(id(image))
        if hit is not None and hit[0] is image:
            return hit[1]
        scores: dict[str, float | None] = {
            "psnr": metrics.psnr(image, self.truth, self.mask),
            "ssim": metrics.ssim(image, self.truth, self.mask),
            "lpips": None if self.lpips is None else float(self.lpips(image, self.truth, self.mask)),
        }
        self._memo[id(image)] = (image, scores)
        return scores


def half_widths(calibration: Calibration, model_id: str, voxel_mm: Sequence[float], images: SubjectImages,
                findings: Sequence[str] = ()) -> dict[Task, np.ndarray | str]:
    """Per task the calibration holds: the half-width map λ·u(x) over the region (network units),
    or why its guarantee does not apply to this subject (Calibration.why_not). Tasks it does not
    hold are left out: they have no interval."""
    out: dict[Task, np.ndarray | str] = {}
    for task, images_of in images.tasks.items():
        if task.key not in calibration.tasks:
            continue
        profile = None if images.profile is None else images.profile.only(sequences.NAMES[s] for s in task.sources)
        why = calibration.why_not(model_id, task.key, voxel_mm, findings, profile)
        if why is not None:
            out[task] = why
            continue
        entry = calibration.tasks[task.key]
        singles = [images.one_to_one[(s, task.target)] for s in task.sources] if "singles" in entry.needs else []
        out[task] = entry.half_width(images_of.image, images_of.tsem, singles)
    return out


def interval_scores(width: np.ndarray | str, image: np.ndarray, truth: np.ndarray, head: np.ndarray,
                    entry: TaskCalibration, alpha: float) -> dict[str, Any]:
    """A row's "interval": the fraction of head voxels whose truth lies outside image ± width (strictly,
    as the calibration counts them: tsf_trt.uncertainty.conformal), the same for the constant width,
    mean widths and the subject score in output units (0-1000); or why the guarantee does not apply."""
    if isinstance(width, str):
        return {"applies": False, "reason": width}
    # float64 means: a float32 sum's rounding would rank subjects of one constant width apart
    error, inside = np.abs(truth - image)[head], width[head].astype(np.float64)
    score = subject_score(width.astype(np.float64), head)

    def outside(bound: np.ndarray | float) -> float | None:
        return float(np.count_nonzero(error > bound) / error.size) if error.size else None

    return {"applies": True, "alpha": alpha, "outside": outside(inside),
            "half_width": float(inside.mean()) * PER_NETWORK_UNIT if inside.size else None,
            "constant_outside": outside(entry.constant_lam),
            "constant_half_width": entry.constant_lam * PER_NETWORK_UNIT,
            "score": score, "flag_above": entry.flag_above, "flagged": bool(score > entry.flag_above)}


def score_subject(subject: str, images: SubjectImages, *, compare: bool = True, lpips: Lpips | None = None,
                  on_task: TaskDone | None = None, calibration: Calibration | None = None,
                  widths: Mapping[Task, np.ndarray | str] | None = None) -> list[dict[str, Any]]:
    """One row per task (table order), with every score; with a `calibration`, "interval"
    (:func:`interval_scores`) for the tasks of `widths` (:func:`half_widths`), None for the others."""
    scorers: dict[int, _Scorer] = {}
    rows = []
    for task, out in sorted(images.tasks.items(), key=lambda item: item[0].order()):
        truth = images.truth[task.target]
        scorer = scorers.setdefault(task.target, _Scorer(truth, images.head, lpips))
        row: dict[str, Any] = {
            "subject": subject, "task": task.label, "target": sequences.DISPLAY[task.target],
            "sources": "+".join(sequences.DISPLAY[s] for s in task.sources), "n_inputs": task.n_inputs,
            "slices": len(images.region.slices), "voxels": int(images.head.sum()),
        }
        row.update(scorer(out.image))
        row.update(_tsem_scores(out, truth, images.head))
        row.update({f"w_{sequences.NAMES[i]}": out.weights.get(i) for i in range(sequences.N_SEQUENCES)})
        if compare and out.image_avg is not None:
            row.update(_comparisons(task, out, images.one_to_one, scorer))
        if calibration is not None:
            width = (widths or {}).get(task)
            row["interval"] = None if width is None else interval_scores(
                width, out.image, truth, images.head, calibration.tasks[task.key], calibration.alpha)
        rows.append(row)
        if on_task is not None:
            on_task(task)
    return rows


def _tsem_scores(out: TaskImages, truth: np.ndarray, head: np.ndarray) -> dict[str, float | None]:
    """Table 2: PSNR inside vs outside the top-1 % TSEM region of the head, and TSEM's level."""
    if out.tsem is None:
        return dict.fromkeys(("psnr_tsem_top", "psnr_tsem_rest", "tsem_p99_head", "tsem_mean_head"))
    regions = metrics.tsem_regions(out.image, truth, out.tsem, head)
    inside = out.tsem[head]
    return {"psnr_tsem_top": regions["psnr_top"], "psnr_tsem_rest": regions["psnr_rest"],
            "tsem_p99_head": regions["threshold"], "tsem_mean_head": float(inside.mean()) if inside.size else None}


def _comparisons(task: Task, out: TaskImages, one_to_one: Mapping[tuple[int, int], np.ndarray],
                 scorer: _Scorer) -> dict[str, Any]:
    """The ablation on the same subject: w/o attention, and the Seq2Seq stage (average, best input)."""
    singles = [one_to_one[(s, task.target)] for s in task.sources]
    average = singles[0] if len(singles) == 1 else np.mean(singles, axis=0)
    by_source = {s: scorer(img) for s, img in zip(task.sources, singles)}
    best = max(task.sources, key=lambda s: _finite(by_source[s]["psnr"]))
    row: dict[str, Any] = {}
    for prefix, scores in (("no_attention_", scorer(out.image_avg)), ("seq2seq_avg_", scorer(average)),
                           ("seq2seq_best_", by_source[best])):
        row.update({prefix + k: v for k, v in scores.items()})
    row["seq2seq_best_input"] = sequences.DISPLAY[best]
    return row


def _finite(value: float | None) -> float:
    return value if value is not None and np.isfinite(value) else -np.inf
