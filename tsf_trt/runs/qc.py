"""The TSEM quality-control score that `infer` writes, and its calibration file.

Why: TSEM (paper Eq. 6) marks where the attention branch had to change the weighted-average
synthesis. If a synthesis needed much refinement, it is more likely to be wrong. The QC score
is the fraction of head voxels whose TSEM exceeds an absolute threshold τ (network units,
the [-1, 1] scale of the images): unlike the paper's top-1 % region, whose size is fixed by
definition, it grows with the amount of refinement. :mod:`tsf_trt.evaluation.qc` calibrates
τ and a flag cut on data with ground truth (`evaluate --calibrate-qc`); `infer --qc qc.json`
applies them. Without a calibration, `infer` reports the score at DEFAULT_THRESHOLD and no
flag. This module is the part `infer` needs, so that it does not load the evaluation package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt.errors import InputError

FORMAT = "tsf-trt-qc"
VERSION = 1
#: τ used when no calibration is given: a round value (5 % of the [-1, 1] range), not calibrated.
DEFAULT_THRESHOLD = 0.1
DEFINITION = "fraction of head voxels whose TSEM exceeds tsem_threshold (network units)"


@dataclass(frozen=True)
class QcCalibration:
    """τ for the score and, when calibrated, the score above which a synthesis is flagged."""

    tsem_threshold: float = DEFAULT_THRESHOLD
    flag_above: float | None = None
    model_id: str = ""
    source: str = "default"


def key(threshold: float) -> str:
    """How a threshold is spelled in reports and caches ('0.075')."""
    return f"{threshold:g}"


def exceedance(tsem: np.ndarray, mask: np.ndarray, thresholds: Sequence[float]) -> dict[str, float]:
    """Fraction of the mask's voxels with TSEM above each threshold (nan for an empty mask)."""
    values = np.asarray(tsem)[np.asarray(mask, dtype=bool)]
    if values.size == 0:
        return {key(t): float("nan") for t in thresholds}
    return {key(t): float(np.count_nonzero(values > t) / values.size) for t in thresholds}


def qc_block(tsem: np.ndarray | None, mask: np.ndarray, calibration: QcCalibration | None) -> dict[str, Any] | None:
    """The "qc" entry of an `infer` report; None without TSEM."""
    if tsem is None:
        return None
    cal = calibration or QcCalibration()
    score = exceedance(tsem, mask, [cal.tsem_threshold])[key(cal.tsem_threshold)]
    return {
        "score": score,
        "definition": DEFINITION,
        "tsem_threshold": cal.tsem_threshold,
        "flag_above": cal.flag_above,
        "flagged": None if cal.flag_above is None or math.isnan(score) else bool(score > cal.flag_above),
        "calibration": cal.source,
        "note": None if cal.flag_above is not None else
        "uncalibrated: default threshold, no flag; calibrate with `tsf-trt evaluate --calibrate-qc` "
        "and pass its qc.json with --qc",
    }


def load_calibration(path: str | Path) -> QcCalibration:
    """Read a qc.json written by `evaluate --calibrate-qc`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable JSON file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(path, f"not a QC calibration (expected \"format\": \"{FORMAT}\", "
                               "as `tsf-trt evaluate --calibrate-qc` writes)")
    if data.get("version") != VERSION:
        raise InputError(path, f"QC calibration version {data.get('version')!r}; this tsf-trt reads {VERSION}")
    tau, cut, model_id = data.get("tsem_threshold"), data.get("flag_above"), data.get("model_id")
    if not _number(tau) or not tau > 0:
        raise InputError(path, f"tsem_threshold must be a positive finite number, got {json.dumps(tau)}")
    if cut is not None and not (_number(cut) and 0 <= cut <= 1):
        raise InputError(path, f"flag_above must be a fraction from 0 to 1 (of head voxels) or null, "
                               f"got {json.dumps(cut)}")
    if not isinstance(model_id, str) or not model_id.strip():
        raise InputError(path, f"model_id must name the model it was calibrated for (a threshold belongs to one "
                               f"model), got {json.dumps(model_id)}")
    return QcCalibration(float(tau), None if cut is None else float(cut), model_id, str(path))


def _number(value: Any) -> bool:
    """A finite JSON number: not a boolean (true is an int in Python), Infinity or NaN (which
    Python's json reads)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_model(calibration: QcCalibration, model_id: str) -> None:
    """A threshold belongs to one model: refuse another model's calibration (a model without
    an id cannot be told to be the one)."""
    if calibration.model_id and calibration.model_id != model_id:
        raise InputError(Path(calibration.source), f"calibrated for model {calibration.model_id}, but this is "
                                                   f"model {model_id or '(without an id)'}: calibrate it with "
                                                   "`tsf-trt evaluate --calibrate-qc`")
