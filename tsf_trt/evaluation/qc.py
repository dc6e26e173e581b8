"""Calibrating and judging the TSEM QC score of :mod:`tsf_trt.runs.qc` on data with ground truth.

`evaluate --calibrate-qc` picks τ (the threshold whose score best ranks the worst decile of
PSNR) and a score cut that flags about that decile; the statistics here (correlation with
PSNR, ROC AUC of flagging the worst decile) are what tell whether the flag works for a given
model and data set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tsf_trt.errors import TsfError
from tsf_trt.runs.qc import DEFINITION, FORMAT, VERSION, QcCalibration, key

#: Candidate τ evaluated for every synthesis (and the grid `--calibrate-qc` chooses from).
THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
#: "Bad" syntheses, for the calibration's ROC: the worst tenth by PSNR.
BAD_FRACTION = 0.1


def calibration_json(calibration: QcCalibration, stats: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "tsem_threshold": calibration.tsem_threshold,
            "flag_above": calibration.flag_above, "model_id": calibration.model_id,
            "definition": DEFINITION, "bad_fraction": BAD_FRACTION, "stats": dict(stats)}


# -- statistics ------------------------------------------------------------------------------
def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks (SciPy's, a maintained implementation)."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(values, dtype=np.float64), method="average")


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
