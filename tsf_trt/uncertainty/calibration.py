"""A calibration file: λ, α and the heuristic per task for one model, and when its guarantee applies.

`tsf-trt calibrate` writes it (tsf_trt.evaluation.calibrate); `infer --calibration` applies it;
the bundled demo model ships one. Its statement, for a task it holds: on subjects like the
calibration subjects (same model, same acquisition: the voxel-size range below, no preflight
finding, inputs whose noise, bias and alignment are within the calibration subjects' ranges:
tsf_trt.uncertainty.profile), the expected fraction of head voxels whose true intensity lies outside
synthesis ± λ·u(x) is at most α. Anywhere else the guarantee does not apply, and every report
says so instead of showing a number that looks calibrated and is not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt import sequences
from tsf_trt.errors import InputError, TsfError
from tsf_trt.uncertainty.heuristic import Heuristic, feature_maps, needs
from tsf_trt.uncertainty.profile import InputProfile, ProfileRanges

FORMAT = "tsf-trt-calibration"
VERSION = 2  # 2: the calibration subjects' input ranges ("inputs")
STATEMENT = ("for subjects like the calibration subjects, the expected fraction of head voxels whose true "
             "intensity lies outside synthesis ± half_width is at most alpha")
#: Output units (0-1000) per network unit: tsf_trt.synthesis.preprocess.OUTPUT_SCALE / 2 (a test holds them equal).
PER_NETWORK_UNIT = 500.0
#: Voxel sizes this far outside the calibration's range still count as inside it (header rounding).
VOXEL_TOLERANCE_MM = 0.05


@dataclass(frozen=True)
class TaskCalibration:
    """One task's interval: half-width λ·u(x) (network units), and the subject flag's cut."""

    heuristic: Heuristic
    lam: float
    n_subjects: int
    empirical_outside: float          # R̂(λ) on the calibration subjects
    flag_above: float                 # subject score above which a subject is flagged (:func:`subject_score`)
    constant_lam: float               # the non-adaptive baseline: λ for u ≡ 1 on the same subjects (network units)

    def half_width(self, image: np.ndarray, tsem: np.ndarray | None, singles: Sequence[np.ndarray] = ()
                   ) -> np.ndarray:
        """λ·u(x) over a synthesis (network units): the interval is image ± this."""
        features = feature_maps(image, tsem, singles)
        return (np.float32(self.lam) * self.heuristic.u(features)).astype(np.float32)

    @property
    def needs(self) -> tuple[str, ...]:
        """What the synthesis must give beyond its image: 'tsem' and/or 'singles' (one-to-one syntheses)."""
        return needs(self.heuristic.names)

    def to_json(self) -> dict[str, Any]:
        return {"features": list(self.heuristic.names), "coefficients": list(self.heuristic.coefficients),
                "lambda": self.lam, "n_subjects": self.n_subjects, "empirical_outside": self.empirical_outside,
                "flag_above": self.flag_above, "constant_half_width": self.constant_lam}


@dataclass(frozen=True)
class Calibration:
    model_id: str
    alpha: float
    tasks: Mapping[str, TaskCalibration]       # Task.key ('t1,flair->t2') -> its calibration
    voxel_mm: tuple[float, float]              # the calibration subjects' smallest and largest voxel side
    subjects: Mapping[str, Sequence[str]] = field(default_factory=dict)  # {"fit": [...], "calibration": [...]}
    source: str = ""                           # the file it was read from
    inputs: ProfileRanges | None = None        # the calibration subjects' input ranges (None: not recorded)

    def to_json(self) -> dict[str, Any]:
        from tsf_trt.version import __version__

        return {"format": FORMAT, "version": VERSION, "tsf_trt_version": __version__, "model_id": self.model_id,
                "alpha": self.alpha, "statement": STATEMENT, "units": "network units ([-1, 1]); x500 for 0-1000",
                "voxel_mm": list(self.voxel_mm), "tasks": {k: t.to_json() for k, t in self.tasks.items()},
                "inputs": None if self.inputs is None else self.inputs.to_json(),
                "subjects": {k: list(v) for k, v in self.subjects.items()}}

    def other_model(self, model_id: str) -> str | None:
        """Why the calibration does not apply to the model `model_id`, or None when it is its model."""
        if model_id != self.model_id:
            return f"calibrated for model {self.model_id}, not this model ({model_id or 'without an id'})"
        return None

    def why_not(self, model_id: str, task_key: str, voxel_mm: Sequence[float], findings: Sequence[str],
                profile: InputProfile | None) -> str | None:
        """Why the guarantee does not apply to this synthesis; None when it does. `profile`: the
        subject's inputs as measured (None: not measured, which the guarantee cannot cover)."""
        other = self.other_model(model_id)
        if other is not None:
            return other
        if task_key not in self.tasks:
            return f"task {task_key} was not calibrated (this calibration holds {', '.join(sorted(self.tasks))})"
        lo, hi = self.voxel_mm
        if min(voxel_mm) < lo - VOXEL_TOLERANCE_MM or max(voxel_mm) > hi + VOXEL_TOLERANCE_MM:
            # `voxel_mm` holds every side of every input's voxels: say their range, once
            small, large = min(voxel_mm), max(voxel_mm)
            sizes = f"{small:.3g}" if small == large else f"{small:.3g}-{large:.3g}"
            return f"voxel sides of {sizes} mm, outside the calibration subjects' {lo:g}-{hi:g} mm"
        if findings:
            return f"the inputs differ from the calibration subjects: {'; '.join(findings)}"
        if self.inputs is None:
            return "the calibration recorded no range of its subjects' inputs (make it again with `tsf-trt calibrate`)"
        if profile is None:
            return "the inputs' noise, bias and alignment were not measured"
        unlike = self.inputs.outside(profile)
        return None if unlike is None else f"unlike the calibration subjects: {unlike}"


def write_calibration(calibration: Calibration, path: Path, overwrite: bool = False) -> None:
    from tsf_trt.files.atomic import atomic_path

    if calibration.inputs is None:
        raise ValueError("a calibration without its subjects' input ranges cannot be read back: record them")
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(json.dumps(calibration.to_json(), indent=1) + "\n")


def _number(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def read_calibration(path: str | Path) -> Calibration:
    """A calibration file, every field checked: a damaged or foreign file is one line naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(path, f"not a calibration (expected \"format\": \"{FORMAT}\", as `tsf-trt calibrate` "
                               "writes)")
    if data.get("version") != VERSION:
        raise InputError(path, f"calibration version {data.get('version')!r}; this tsf-trt reads {VERSION}: "
                               "make it again with `tsf-trt calibrate`")
    model_id, alpha, voxel = data.get("model_id"), data.get("alpha"), data.get("voxel_mm")
    if not isinstance(model_id, str) or not model_id:
        raise InputError(path, "model_id must name the model it was calibrated for")
    if not _number(alpha, 0, 1) or alpha in (0, 1):
        raise InputError(path, f"alpha must be between 0 and 1, got {json.dumps(alpha)}")
    if not (isinstance(voxel, list) and len(voxel) == 2 and all(_number(v, 0) for v in voxel) and voxel[0] <= voxel[1]):
        raise InputError(path, f"voxel_mm must be [smallest, largest] in mm, got {json.dumps(voxel)}")
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise InputError(path, "tasks must hold at least one calibrated task")
    parsed = {}
    for key, entry in tasks.items():
        parsed[key] = _task(path, key, entry)
    try:
        inputs = ProfileRanges.from_json(data.get("inputs"))
    except ValueError as exc:
        raise InputError(path, str(exc)) from None
    subjects = data.get("subjects") if isinstance(data.get("subjects"), dict) else {}
    return Calibration(model_id, float(alpha), parsed, (float(voxel[0]), float(voxel[1])),
                       {k: tuple(v) for k, v in subjects.items() if isinstance(v, list)}, str(path), inputs)


def _task(path: Path, key: str, entry: Any) -> TaskCalibration:
    try:
        canonical = sequences.task_key(*sequences.parse_task_key(key))
    except TsfError as exc:
        raise InputError(path, f"task {key!r}: {exc}") from None
    if canonical != key:
        raise InputError(path, f"task {key!r} is not written as tsf-trt writes it ({canonical})")
    if not isinstance(entry, dict):
        raise InputError(path, f"task {key}: not an object")
    names, coefficients = entry.get("features"), entry.get("coefficients")
    lam, n, outside, cut = entry.get("lambda"), entry.get("n_subjects"), entry.get("empirical_outside"), \
        entry.get("flag_above")
    constant = entry.get("constant_half_width")
    if not (isinstance(names, list) and all(isinstance(n_, str) for n_ in names) and isinstance(coefficients, list)
            and all(_number(c) for c in coefficients)):
        raise InputError(path, f"task {key}: features must be names and coefficients numbers")
    try:
        heuristic = Heuristic(tuple(names), tuple(float(c) for c in coefficients))
    except TsfError as exc:
        raise InputError(path, f"task {key}: {exc}") from None
    if not _number(lam, 0) or not (isinstance(n, int) and not isinstance(n, bool) and n > 0) \
            or not _number(outside, 0, 1) or not _number(cut, 0) or not _number(constant, 0):
        raise InputError(path, f"task {key}: lambda, n_subjects, empirical_outside, flag_above and "
                               "constant_half_width must be non-negative numbers (n_subjects a count, "
                               "empirical_outside a fraction)")
    return TaskCalibration(heuristic, float(lam), n, float(outside), float(cut), float(constant))


def subject_score(half_width: np.ndarray, head: np.ndarray) -> float:
    """A subject's score: its mean half-width over the head, output units (0-1000): the error the
    heuristic predicts for it; the flag cuts it at the calibration subjects' FLAG_QUANTILE."""
    values = np.asarray(half_width)[np.asarray(head, dtype=bool)] if np.any(head) else np.asarray(half_width)
    return float(values.mean(dtype=np.float64)) * PER_NETWORK_UNIT  # float64: equal widths give equal scores
