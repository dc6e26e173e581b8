"""`tsf-trt calibrate`: fit the heuristic and calibrate λ on subjects whose target is known.

The subjects are split once, by a hash of their names (so adding subjects never moves one from
one side to the other): about `fit_fraction` of them fit the heuristic's coefficients, the rest
only set λ and the subject flag's cut. The guarantee needs the second set to be exchangeable with
the subjects it is applied to, and never used for fitting (tsf_trt.uncertainty.conformal).
Every task is computed from one encoding of each subject (tsf_trt.evaluation.loop).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tsf_trt.backends import Backend
from tsf_trt.errors import TsfError
from tsf_trt.evaluation.loop import evaluate_images
from tsf_trt.evaluation.tasks import Task
from tsf_trt.inputs.subjects import Subject
from tsf_trt.uncertainty.calibration import PER_NETWORK_UNIT, Calibration, TaskCalibration
from tsf_trt.uncertainty.conformal import calibrate_lambda, risk
from tsf_trt.uncertainty.heuristic import CANDIDATES, feature_maps, fit_heuristic
from tsf_trt.uncertainty.profile import InputProfile, ProfileRanges

#: The heuristic `calibrate` fits unless told otherwise (docs/trust.md, "Measured with the bundled demo model").
DEFAULT_HEURISTIC = "edge+tsem_smooth"
#: Voxels per fitting subject that enter the regression (a fixed-seed sample: every subject weighs alike).
FIT_VOXELS = 20_000
#: The subject flag's cut: the calibration subjects' score quantile (flags about the worst tenth).
FLAG_QUANTILE = 0.9


@dataclass(frozen=True)
class CalibrationPlan:
    tasks: tuple[Task, ...]
    alpha: float = 0.1
    heuristic: str = DEFAULT_HEURISTIC
    fit_fraction: float = 0.25
    slice_step: int = 1
    frame: str = "head"

    def __post_init__(self) -> None:
        from tsf_trt.uncertainty.conformal import allowed_risk

        allowed_risk(1_000_000, self.alpha)  # the α itself (the subjects are counted later)
        if self.heuristic not in CANDIDATES:
            raise TsfError(f"--heuristic must be one of {', '.join(CANDIDATES)}, got '{self.heuristic}'")
        if not 0 < self.fit_fraction < 1:
            raise TsfError(f"--fit-fraction must be between 0 and 1, got {self.fit_fraction}")
        if self.slice_step < 1:
            raise TsfError(f"--slice-step must be at least 1, got {self.slice_step}")
        if not self.tasks:
            raise TsfError("--tasks names no task")

    @property
    def features(self) -> tuple[str, ...]:
        return CANDIDATES[self.heuristic]


def split(subjects: Sequence[Subject], fit_fraction: float) -> tuple[list[Subject], list[Subject]]:
    """(fitting, calibration) subjects: a subject is for fitting when the hash of its name falls
    below `fit_fraction`; at least one on each side."""
    def draw(subject: Subject) -> float:
        return int.from_bytes(hashlib.sha256(subject.name.encode()).digest()[:8], "big") / 2 ** 64

    ordered = sorted(subjects, key=draw)
    fit = [s for s in ordered if draw(s) < fit_fraction] or ordered[:1]
    rest = [s for s in ordered if s not in fit]
    return sorted(fit, key=lambda s: s.name), sorted(rest, key=lambda s: s.name)


def check_subjects(subjects: Sequence[Subject], plan: CalibrationPlan) -> tuple[list[Subject], list[Subject]]:
    """The split, after refusing what cannot give a guarantee: a task some subject lacks, or too few
    calibration subjects for α (before any model loads)."""
    from tsf_trt.uncertainty.conformal import allowed_risk

    for task in plan.tasks:
        lacking = [s.name for s in subjects if any(i not in s.inputs for i in (*task.sources, task.target))]
        if lacking:
            raise TsfError(f"--tasks {task.key}: {len(lacking)} subject(s) lack a sequence it needs (its sources and "
                           f"the target's truth), e.g. {lacking[0]}: calibrate on subjects that have them all")
    fit, rest = split(subjects, plan.fit_fraction)
    try:
        allowed_risk(len(rest), plan.alpha)
    except TsfError as exc:
        raise TsfError(f"{len(subjects)} subjects, {len(rest)} of them for calibration (the others fit the "
                       f"heuristic): {exc}") from None
    return fit, rest


def _task_maps(backend: Backend, subject: Subject, plan: CalibrationPlan, voxel_mm: list[float],
               profiles: list[InputProfile]):
    """Per task: the features and |error| over the head; the subject's voxel sizes go to `voxel_mm`,
    its inputs' profile to `profiles`."""
    spread = "spread" in plan.features
    images = evaluate_images(backend, subject.inputs, plan.tasks, slice_step=plan.slice_step, compare=spread,
                             frame=plan.frame)
    voxel_mm.extend(images.voxel_mm)
    if images.profile is not None:
        profiles.append(images.profile)
    for task in plan.tasks:
        out = images.tasks[task]
        singles = [images.one_to_one[(s, task.target)] for s in task.sources] if spread else []
        maps = feature_maps(out.image, out.tsem, singles)
        head = images.head
        err = np.abs(images.truth[task.target] - out.image)[head]
        yield task, {k: maps[k][head] for k in plan.features}, err


def calibrate(backend: Backend, subjects: Sequence[Subject], plan: CalibrationPlan, *,
              progress: Callable[[str], None] | None = None) -> Calibration:
    """Fit, then calibrate, every task of `plan` (see the module docstring)."""
    fit, rest = check_subjects(subjects, plan)
    tell = progress or (lambda _: None)
    rng = np.random.default_rng(0)
    voxel_mm: list[float] = []  # every side of every subject's voxels, as read
    profiles: list[InputProfile] = []  # the calibration subjects' (the fitting ones' are not kept)
    samples: dict[Task, tuple[list, list]] = {t: ([], []) for t in plan.tasks}
    for subject in fit:
        for task, features, err in _task_maps(backend, subject, plan, voxel_mm, []):
            pick = rng.choice(err.size, min(FIT_VOXELS, err.size), replace=False)
            samples[task][0].append({k: v[pick] for k, v in features.items()})
            samples[task][1].append(err[pick])
        tell(f"fit: {subject.name}")
    heuristics = {t: fit_heuristic(plan.features, *samples[t]) for t in plan.tasks}
    ratios: dict[Task, list[np.ndarray]] = {t: [] for t in plan.tasks}
    errors: dict[Task, list[np.ndarray]] = {t: [] for t in plan.tasks}  # |error| itself: u ≡ 1, the baseline
    scores: dict[Task, list[float]] = {t: [] for t in plan.tasks}  # mean u over each head
    for subject in rest:
        for task, features, err in _task_maps(backend, subject, plan, voxel_mm, profiles):
            u = heuristics[task].u(features)
            ratios[task].append((err / u).astype(np.float32))
            errors[task].append(err.astype(np.float32))
            scores[task].append(float(np.mean(u, dtype=np.float64)))  # as subject_score averages
        tell(f"calibration: {subject.name}")
    tasks = {}
    for task in plan.tasks:
        lam = calibrate_lambda(ratios[task], plan.alpha)
        widths = [lam * s * PER_NETWORK_UNIT for s in scores[task]]  # subject_score of each, from mean u
        tasks[task.key] = TaskCalibration(heuristics[task], lam, len(rest), risk(ratios[task], lam),
                                          float(np.quantile(widths, FLAG_QUANTILE, method="higher")),
                                          calibrate_lambda(errors[task], plan.alpha))
    return Calibration(backend.model_id, plan.alpha, tasks, (min(voxel_mm), max(voxel_mm)),
                       {"fit": [s.name for s in fit], "calibration": [s.name for s in rest]},
                       inputs=ProfileRanges.of(profiles))
