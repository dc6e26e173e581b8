"""Rank statistics for judging a per-subject score against PSNR: how well the calibrated subject
flag (:func:`tsf_trt.evaluation.report.interval_summary`) picks out the worst syntheses.

Why here: the report's interval statistics and `scripts/uncertainty_study.py` share them, and a
ranking rule written twice would drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: "Bad" syntheses, for the flag's ROC: the worst tenth by PSNR (the issue's "worst PSNR decile").
BAD_FRACTION = 0.1


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


def worst(values: Sequence[float], fraction: float = BAD_FRACTION) -> np.ndarray:
    """Mask of the lowest ceil(fraction·n) values (at least one)."""
    x = np.asarray(values, dtype=np.float64)
    k = max(1, math.ceil(fraction * len(x)))
    mask = np.zeros(len(x), dtype=bool)
    mask[np.argsort(x, kind="mergesort")[:k]] = True
    return mask
