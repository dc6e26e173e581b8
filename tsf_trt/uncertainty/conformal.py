"""Conformal risk control: the smallest interval scale whose expected miscoverage is at most α.

Why this rule: a per-voxel heuristic u(x) says *where* a synthesis is likely wrong, not by how
much; calibration turns it into a statement with a guarantee. For the interval ŷ ± λ·u(x), the
loss of one subject is the fraction of its head voxels whose truth lies outside,
L(λ) = mean(|y − ŷ| / u > λ), which falls as λ grows and lies in [0, B] with B = 1. On n
calibration subjects exchangeable with the next one (subjects, not voxels, are the units),
conformal risk control (Angelopoulos, Bates, Fisch, Lei, Schuster, "Conformal Risk Control",
ICLR 2024; the rule the im2im-uq paper's λ search builds on, Angelopoulos et al., ICML 2022)
takes

    λ̂ = inf{ λ : n/(n+1) · R̂(λ) + B/(n+1) ≤ α },   R̂(λ) = (1/n) Σᵢ Lᵢ(λ),

and then E[L_{n+1}(λ̂)] ≤ α for a new subject, whatever the model and u. It needs
n ≥ B/α − 1 subjects (9 at α = 0.1), and the bound is tight (not vacuous) only when n is
large: the empirical risk it allows is ((n+1)α − B)/n, 0.055 at n = 20 and 0.091 at n = 100.

MAPIE (the maintained conformal library) controls precision or recall of multi-label
classifiers and intervals of scalar regressions; neither is a per-voxel fraction of one
image, so the few lines are written here and tested against the formula by hand
(tests/test_uncertainty.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tsf_trt.errors import TsfError

#: The largest loss of one subject: a fraction of voxels.
MAX_LOSS = 1.0


def allowed_risk(n: int, alpha: float, bound: float = MAX_LOSS) -> float:
    """The empirical risk R̂(λ) that λ̂ may leave: ((n+1)α − B)/n. Refused (one line) when no λ
    can give the guarantee with n subjects."""
    if not 0.0 < alpha < 1.0:
        raise TsfError(f"--alpha must be between 0 and 1, got {alpha}")
    allowed = ((n + 1) * alpha - bound) / n if n > 0 else -1.0
    if allowed < 0:
        need = int(np.ceil(bound / alpha - 1))
        raise TsfError(f"{n} calibration subject(s) cannot bound the miscoverage at α = {alpha:g}: "
                       f"at least {need} are needed (more make the bound tighter: about 100 for a "
                       f"miscoverage within 10 % of α)")
    return allowed


def risk(ratios: Sequence[np.ndarray], lam: float) -> float:
    """R̂(λ): the mean over subjects of the fraction of each one's ratios |y − ŷ|/u above λ."""
    return float(np.mean([np.count_nonzero(np.asarray(r) > lam) / max(np.asarray(r).size, 1) for r in ratios]))


def calibrate_lambda(ratios: Sequence[np.ndarray], alpha: float, bound: float = MAX_LOSS) -> float:
    """λ̂ of the module docstring from each calibration subject's ratios |y − ŷ|/u(x) over its
    head voxels. Exact: R̂ is a step function that only drops at a ratio, so λ̂ is the smallest
    ratio (or 0) at which the weighted tail of larger ratios is within the allowed risk."""
    subjects = [np.asarray(r, dtype=np.float64).ravel() for r in ratios]
    if any(r.size == 0 for r in subjects):
        raise TsfError("a calibration subject has no head voxels")
    if any(not np.isfinite(r).all() or (r < 0).any() for r in subjects):
        raise TsfError("calibration ratios must be finite and non-negative")
    allowed = allowed_risk(len(subjects), alpha, bound)
    values = np.concatenate(subjects)
    weights = np.concatenate([np.full(r.size, 1.0 / (len(subjects) * r.size)) for r in subjects])
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order]
    # tail[k] = weight of the values strictly above values[k] (equal values share one step)
    last_of_run = np.r_[values[1:] != values[:-1], True]
    above = weights[::-1].cumsum()[::-1]  # weight of values[k:] (k inclusive)
    tail = np.r_[above[1:], 0.0]          # weight of values[k+1:]
    candidates = np.flatnonzero(last_of_run & (tail <= allowed + 1e-12))  # 1e-12: float sums of 1/(n·m)
    if above[0] <= allowed + 1e-12:       # even λ = 0 leaves little enough outside (all ratios 0)
        return 0.0
    return float(values[candidates[0]])
