"""Statistics over subjects, for what the report concludes: the subject flag's rank AUC, bootstrap
confidence intervals of the tables' means, and the paired test behind the ordering of methods.

Why here: the report (tsf_trt.evaluation.report) and `scripts/uncertainty_study.py` share them, and a
rule written twice would drift. Every statistic is SciPy's (scipy.stats), a maintained implementation;
this module only decides what is resampled, paired and counted, and when n is too small to conclude.
Subjects are the unit: several tasks of one subject are not independent, so they are resampled and
paired together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: "Bad" syntheses, for the flag's ROC: the worst tenth by PSNR (the issue's "worst PSNR decile").
BAD_FRACTION = 0.1
#: Fewest subjects for a confidence interval or an AUC in the report. Below it a percentile bootstrap
#: covers well under its nominal level (it resamples the few values seen: simulated on normal data, a
#: 95 % interval holds the mean 76 % of the time at n = 3, 85 % at 5, 90 % at 10), and an AUC moves in
#: steps of 1 / (n1·n2) (the worst decile of 2 subjects gives 1.000 or 0.000). The report then prints
#: "n/a (n too small)".
MIN_SUBJECTS = 10
CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0  # fixed: the same rows give the same intervals on every run and machine
#: Two-sided level of the paired test before the report says one method beats another.
SIGNIFICANCE = 0.05
PAIRED_TEST = "Wilcoxon signed-rank test (scipy.stats.wilcoxon, two-sided)"
TOO_FEW = "n/a (n too small)"


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks (SciPy's, a maintained implementation)."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(values, dtype=np.float64), method="average")


def rank_auc(scores: Sequence[float], positives: Sequence[bool]) -> float:
    """ROC AUC: the probability that a positive scores above a negative, ties counting one half,
    which is the Mann-Whitney U of the positives over n_pos·n_neg (scipy.stats.mannwhitneyu).
    nan without both classes."""
    from scipy.stats import mannwhitneyu

    x = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float(mannwhitneyu(x[pos], x[~pos], alternative="two-sided").statistic / (n_pos * n_neg))


def auc_too_small(n_pos: int, n_neg: int) -> str | None:
    """Why an AUC over these subjects concludes nothing (None when it may be read)."""
    if n_pos == 0 or n_neg == 0:
        return "needs subjects in both classes"
    if n_pos + n_neg < MIN_SUBJECTS:
        return f"n too small: {n_pos + n_neg} subjects, at least {MIN_SUBJECTS} needed"
    return None


def worst(values: Sequence[float], fraction: float = BAD_FRACTION) -> np.ndarray:
    """Mask of the lowest ceil(fraction·n) values (at least one)."""
    x = np.asarray(values, dtype=np.float64)
    k = max(1, math.ceil(fraction * len(x)))
    mask = np.zeros(len(x), dtype=bool)
    mask[np.argsort(x, kind="mergesort")[:k]] = True
    return mask


def by_subject(values: Sequence[float], subjects: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Finite values gathered per subject: (names in first-seen order, sum and count of each)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for value, subject in zip(values, subjects):
        if finite(value):
            sums[subject] = sums.get(subject, 0.0) + float(value)
            counts[subject] = counts.get(subject, 0) + 1
    names = list(sums)
    return names, np.array([sums[n] for n in names]), np.array([counts[n] for n in names], dtype=np.float64)


def bootstrap_ci(values: Sequence[float], subjects: Sequence[str], *, resamples: int = RESAMPLES,
                 seed: int = SEED, confidence: float = CONFIDENCE,
                 min_subjects: int = MIN_SUBJECTS) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` (one per subject × task), resampling
    subjects with all their values (scipy.stats.bootstrap, paired over per-subject sums and counts, so
    each resample's statistic is the same mean over rows as the table's); None below `min_subjects`."""
    from scipy.stats import bootstrap

    _, sums, counts = by_subject(values, subjects)
    if len(sums) < max(2, min_subjects):
        return None
    if np.ptp(sums / counts) == 0 and np.all(counts == counts[0]):
        mean = float(sums.sum() / counts.sum())
        return mean, mean  # every subject the same: every resample too (SciPy would warn of a degenerate one)

    def mean_over_rows(s: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
        return s.sum(axis=axis) / c.sum(axis=axis)

    result = bootstrap((sums, counts), mean_over_rows, paired=True, vectorized=True, n_resamples=resamples,
                       confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def smallest_p(n: int) -> float:
    """The smallest two-sided p the exact signed-rank test can give on n pairs: every difference the
    same sign, 2 / 2**n. Below 6 pairs it is above 0.05: no data could show a difference."""
    return 2.0 / 2.0 ** n if n > 0 else 1.0


def paired_test(better: Mapping[str, float], worse: Mapping[str, float]) -> dict[str, Any]:
    """Per-subject values of two methods (subject -> mean over the subject's tasks), tested on the
    subjects both have: n, the mean difference, the raw two-sided p (scipy.stats.wilcoxon), and `why`
    when no p could fall below SIGNIFICANCE at this n. The signed-rank test because it needs no normal
    differences (one odd subject can skew PSNR differences) and is exact at small n."""
    from scipy.stats import wilcoxon

    common = [s for s in better if s in worse]
    d = np.array([better[s] - worse[s] for s in common], dtype=np.float64)
    out: dict[str, Any] = {"n": len(common), "mean_difference": float(d.mean()) if len(d) else None, "p": None,
                           "why": None}
    if smallest_p(len(d)) >= SIGNIFICANCE:
        out["why"] = (f"n too small, the signed-rank test needs at least {min_subjects_paired()} subjects to "
                      f"reach p < {SIGNIFICANCE:g}")
    elif not np.any(d):
        out["p"] = 1.0  # identical on every subject
    else:
        out["p"] = float(wilcoxon(d, alternative="two-sided").pvalue)
    return out


def min_subjects_paired() -> int:
    """The fewest pairs on which the signed-rank test can reach SIGNIFICANCE (6 at 0.05)."""
    n = 1
    while smallest_p(n) >= SIGNIFICANCE:
        n += 1
    return n


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error over the steps of one ordering; None stays None):
    the k-th smallest of m p-values times (m - k + 1), made non-decreasing, at most 1."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for k, (p, i) in enumerate(present):
        running = max(running, min(1.0, (len(present) - k) * p))
        out[i] = running
    return out


# -- summaries of a table cell -------------------------------------------------------------------
def finite(value: Any) -> bool:
    """A score that counts: present and finite (PSNR is inf where a synthesis equals its truth)."""
    return value is not None and math.isfinite(value)


def mean_stat(values: Sequence[Any], subjects: Sequence[str] | None = None) -> dict[str, Any]:
    """Mean, sample std (n - 1) and count of the finite values; with `subjects` (one per value), how
    many subjects they come from and the bootstrap interval of the mean over them (None below
    ranks.MIN_SUBJECTS)."""
    x = np.array([v for v in values if finite(v)], dtype=np.float64)
    out: dict[str, Any] = {"mean": None, "std": None, "n": int(len(x))}
    if len(x):
        out.update(mean=float(x.mean()), std=float(x.std(ddof=1)) if len(x) > 1 else None)
    if subjects is not None:
        out["n_subjects"] = len(by_subject(values, subjects)[0])
        out["ci95"] = None if not len(x) else bootstrap_ci(values, subjects)
    return out


def spread(values: Sequence[Any], alpha: float | None = None) -> dict[str, Any]:
    """Mean, sample std, range and the t-interval of the mean over subjects (few: hence t); with
    `alpha`, how many subjects lie above it."""
    x = np.array([v for v in values if finite(v)], dtype=np.float64)
    out: dict[str, Any] = {"n": int(len(x)), "mean": None, "std": None, "min": None, "max": None, "ci95": None}
    if len(x):
        out.update(mean=float(x.mean()), min=float(x.min()), max=float(x.max()))
    if len(x) > 1:
        from scipy.stats import t

        std = float(x.std(ddof=1))
        half = float(t.ppf(0.5 + CONFIDENCE / 2, len(x) - 1)) * std / math.sqrt(len(x))
        out.update(std=std, ci95=[float(x.mean()) - half, float(x.mean()) + half])
    if alpha is not None:
        out["above_alpha"] = int((x > alpha).sum())
    return out
