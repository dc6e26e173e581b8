"""Summaries of repeated timings, and ratios between rows.

Why a module of its own: the JSON schema promises the same summary (mean, p50, p90,
p99, min, max) for every timed quantity and the same ratio rule (baseline time / row
time) everywhere, so both are defined once here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: Keys of every summary, in the order reports show them.
SUMMARY_KEYS = ("mean", "p50", "p90", "p99", "min", "max")


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Mean, percentiles (linear interpolation, so min <= p50 <= p90 <= p99 <= max) and extremes."""
    if not samples:
        raise ValueError("no samples to summarize")
    values = np.asarray(samples, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "min": float(values.min()), "max": float(values.max())}


def speedup(baseline_seconds: float | None, seconds: float | None) -> float | None:
    """How many times faster than the baseline (> 1: faster); None when either is missing or 0."""
    if not baseline_seconds or not seconds:
        return None
    return baseline_seconds / seconds


def ratios(baseline: Mapping, row: Mapping) -> dict:
    """Every time of `row` as a speed-up over `baseline` (both report rows), means against means."""
    stages = {name: speedup(baseline["stages"].get(name, {}).get("mean"), stat["mean"])
              for name, stat in row["stages"].items()}
    return {
        "baseline": {"backend": baseline["backend"], "batch_size": baseline["batch_size"]},
        "end_to_end": speedup(baseline["end_to_end"]["mean"], row["end_to_end"]["mean"]),
        "compute": speedup(baseline["compute"]["mean"], row["compute"]["mean"]),
        "stages": stages,
    }
