"""A quality-control flag from TSEM: one number per synthesis, a threshold calibrated on data.

Why: TSEM (paper Eq. 6) marks where the attention branch had to change the weighted-average
synthesis. If a synthesis needed much refinement, it is more likely to be wrong. The QC score
is the fraction of head voxels whose TSEM exceeds an absolute threshold τ (network units,
the [-1, 1] scale of the images): unlike the paper's top-1 % region, whose size is fixed by
definition, it grows with the amount of refinement. `evaluate --calibrate-qc` picks τ on
held-out data with ground truth (the τ whose score best ranks the worst decile of PSNR) and
a score cut that flags about that decile; `infer --qc qc.json` applies them. Without a
calibration, `infer` reports the score at DEFAULT_THRESHOLD and no flag.

This is beyond the paper: the statistics here (correlation with PSNR, ROC AUC of flagging
the worst decile) are what tell whether it works for a given model and data set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, TsfError

FORMAT = "tsf-trt-qc"
VERSION = 1
#: τ used when no calibration is given: a round value (5 % of the [-1, 1] range), not calibrated.
DEFAULT_THRESHOLD = 0.1
#: Candidate τ evaluated for every synthesis (and the grid `--calibrate-qc` chooses from).
THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
#: "Bad" syntheses, for the calibration's ROC: the worst tenth by PSNR.
BAD_FRACTION = 0.1
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
    tau, cut = data.get("tsem_threshold"), data.get("flag_above")
    if not isinstance(tau, (int, float)) or not tau > 0:
        raise InputError(path, f"tsem_threshold must be a positive number, got {tau!r}")
    if cut is not None and not isinstance(cut, (int, float)):
        raise InputError(path, f"flag_above must be a number or null, got {cut!r}")
    return QcCalibration(float(tau), None if cut is None else float(cut), str(data.get("model_id") or ""), str(path))


def check_model(calibration: QcCalibration, model_id: str) -> None:
    """A threshold belongs to one model: refuse another model's calibration."""
    if calibration.model_id and model_id and calibration.model_id != model_id:
        raise InputError(Path(calibration.source), f"calibrated for model {calibration.model_id}, but this is "
                                                   f"model {model_id}: calibrate it with `tsf-trt evaluate "
                                                   "--calibrate-qc`")


def calibration_json(calibration: QcCalibration, stats: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "tsem_threshold": calibration.tsem_threshold,
            "flag_above": calibration.flag_above, "model_id": calibration.model_id,
            "definition": DEFINITION, "bad_fraction": BAD_FRACTION, "stats": dict(stats)}


# -- statistics ------------------------------------------------------------------------------
def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    while start < len(x):
        stop = start + 1
        while stop < len(x) and sorted_x[stop] == sorted_x[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2.0  # mean of ranks start+1 .. stop
        start = stop
    return ranks


def rank_auc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula: the probability that a positive scores
    above a negative, ties counting one half. nan without both classes."""
    pos = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; nan for fewer than 3 pairs or a constant series."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's r of the average ranks."""
    return pearson(average_ranks(x), average_ranks(y)) if len(x) >= 3 else float("nan")


def worst(values: Sequence[float], fraction: float = BAD_FRACTION) -> np.ndarray:
    """Mask of the lowest ceil(fraction·n) values (at least one)."""
    x = np.asarray(values, dtype=np.float64)
    k = max(1, math.ceil(fraction * len(x)))
    mask = np.zeros(len(x), dtype=bool)
    mask[np.argsort(x, kind="mergesort")[:k]] = True
    return mask


def separation(scores: Sequence[float], psnr: Sequence[float], flag_above: float | None = None) -> dict[str, Any]:
    """How well a score separates good from bad syntheses (bad: worst decile of PSNR)."""
    s, q = np.asarray(scores, dtype=np.float64), np.asarray(psnr, dtype=np.float64)
    ok = np.isfinite(s) & np.isfinite(q)
    s, q = s[ok], q[ok]
    out: dict[str, Any] = {"n": int(len(s)), "pearson": pearson(s, q), "spearman": spearman(s, q)}
    if len(s) < 2:
        return {**out, "n_bad": 0, "auc_worst_decile": float("nan")}
    bad = worst(q)
    out.update(n_bad=int(bad.sum()), auc_worst_decile=rank_auc(s, bad))
    if flag_above is not None:
        flagged = s > flag_above
        out.update(flagged=int(flagged.sum()),
                   sensitivity=float(flagged[bad].mean()) if bad.any() else float("nan"),
                   specificity=float((~flagged[~bad]).mean()) if (~bad).any() else float("nan"))
    return out


def _scores(rows: Sequence[Mapping[str, Any]], threshold: float) -> list[float]:
    return [float(r.get("tsem_exceedance", {}).get(key(threshold), float("nan"))) for r in rows]


def _by_subject(rows: Sequence[Mapping[str, Any]], calibration: QcCalibration) -> list[dict[str, Any]]:
    """Per subject: mean score and PSNR over its tasks, and how many of its syntheses are flagged."""
    out = []
    for name in sorted({r["subject"] for r in rows}):
        mine = [r for r in rows if r["subject"] == name]
        scores = _scores(mine, calibration.tsem_threshold)
        entry = {"subject": name, "qc_score": float(np.nanmean(scores)),
                 "psnr": float(np.nanmean([r["psnr"] for r in mine])), "syntheses": len(mine)}
        if calibration.flag_above is not None:
            entry["flagged"] = int(sum(s > calibration.flag_above for s in scores))
        out.append(entry)
    return out


def qc_stats(rows: Sequence[Mapping[str, Any]], calibration: QcCalibration) -> dict[str, Any]:
    """Separation at one calibration: pooled over subject × task rows, per subject (means over
    its tasks), and within each task across subjects (mean Spearman ρ)."""
    tau = calibration.tsem_threshold
    pooled = separation(_scores(rows, tau), [r["psnr"] for r in rows], calibration.flag_above)
    per_subject = _by_subject(rows, calibration)
    within = []
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        rho = spearman(_scores(mine, tau), [r["psnr"] for r in mine])
        if not math.isnan(rho):
            within.append(rho)
    return {
        "tsem_threshold": tau, "flag_above": calibration.flag_above, "calibration": calibration.source,
        "rows": pooled,
        "subjects": separation([e["qc_score"] for e in per_subject], [e["psnr"] for e in per_subject]),
        "within_task_spearman_mean": float(np.mean(within)) if within else float("nan"),
        "per_subject": per_subject,
    }


def calibrate(rows: Sequence[Mapping[str, Any]], model_id: str = "") -> tuple[QcCalibration, dict[str, Any]]:
    """Choose τ from THRESHOLDS: the best ROC AUC for the worst decile of PSNR over the rows
    (ties: the more negative Spearman ρ, then the smaller τ); flag above the score's 90th
    percentile. The statistics are in-sample: check them on other data with `--qc`."""
    psnr = [r["psnr"] for r in rows]
    finite = [p for p in psnr if math.isfinite(p)]
    if len(finite) < 5 or len({r["subject"] for r in rows}) < 2:
        raise TsfError(f"cannot calibrate QC on {len(finite)} scored syntheses of "
                       f"{len({r['subject'] for r in rows})} subject(s): need at least 5 and 2 subjects")
    table, best = [], None
    for tau in THRESHOLDS:
        stats = separation(_scores(rows, tau), psnr)
        table.append({"tsem_threshold": tau, **stats})
        auc, rho = stats["auc_worst_decile"], stats["spearman"]
        rank = (auc if math.isfinite(auc) else -1.0, -rho if math.isfinite(rho) else -2.0)
        if best is None or rank > best[0]:
            best = (rank, tau)
    assert best is not None
    tau = best[1]
    scores = np.asarray(_scores(rows, tau), dtype=np.float64)
    cut = float(np.quantile(scores[np.isfinite(scores)], 1 - BAD_FRACTION))
    calibration = QcCalibration(tau, cut, model_id, "calibrated")
    return calibration, {**qc_stats(rows, calibration), "per_threshold": table, "in_sample": True}
