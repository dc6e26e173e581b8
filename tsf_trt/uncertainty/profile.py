"""What a calibration records of its subjects' inputs, to tell when a new subject is unlike them.

A calibration's guarantee holds for subjects exchangeable with its calibration subjects; a
synthesis from noisier inputs, under a stronger bias field, or with one input shifted against
the others is not, and its interval must not claim the bound (issue 24's shift study: docs/trust.md,
"Under shift"). Three numbers per subject, cheap enough for every `infer`:

* **noise** per input: the robust standard deviation of a voxel minus the mean of its 4 in-plane
  neighbours, over the head, every 4th slice, divided by the head's 99th percentile. For i.i.d.
  noise of σ that residual has σ·√1.25; the median absolute deviation ignores the edges.
* **bias** per input: the spread (standard deviation) of the log of the head's intensity smoothed
  over ~8 mm cells (masked, so the head's outline adds nothing): slow multiplicative fields raise
  it; anatomy sets its floor, so it is compared only with the same sequence's range.
* **misaligned_voxels**: the largest shift (voxels) at which two inputs' mutual information peaks
  (tsf_trt.inputs.preflight.alignment), 0 where no shift gains enough.

`calibrate` keeps each number's range over its calibration subjects (:class:`ProfileRanges`);
`infer` and `evaluate` hold a subject's profile against it. Numpy and SciPy only: the caller
measures the alignment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

STATS = ("noise", "bias")
#: A value this far (relative) beyond its calibration range still counts as inside: the range of
#: n subjects is a little narrower than the population's (docs/trust.md, "Calibrated intervals").
RANGE_TOLERANCE = 0.15
#: An alignment peak up to this many voxels beyond the calibration's largest still counts as inside.
MISALIGNED_TOLERANCE = 1.0
_SLICE_STEP = 4      # noise: every 4th slice
_CELL = 4            # bias: voxels per cell side (about 4 mm at the ~1 mm the network takes)
_SUBSAMPLE = 2       # bias: every 2nd voxel per axis goes into a cell's mean (8x less to add up)
_SMOOTH_CELLS = 2.0  # bias: Gaussian sigma in cells
_MIN_VOXELS = 250    # fewer voxels than this measure nothing (nan): a MAD of 250 is within ~7 % (1 SE)


def noise_level(data: np.ndarray, head: np.ndarray) -> float:
    """Relative noise σ of one (z, y, x) volume over its `head` (nan when the head is too small)."""
    sl, h = data[::_SLICE_STEP], head[::_SLICE_STEP]
    inner = h[:, 1:-1, 1:-1] & h[:, :-2, 1:-1] & h[:, 2:, 1:-1] & h[:, 1:-1, :-2] & h[:, 1:-1, 2:]
    if np.count_nonzero(inner) < _MIN_VOXELS:
        return math.nan
    centre = sl[:, 1:-1, 1:-1][inner].astype(np.float64)
    around = (sl[:, :-2, 1:-1][inner] + sl[:, 2:, 1:-1][inner] + sl[:, 1:-1, :-2][inner]
              + sl[:, 1:-1, 2:][inner]).astype(np.float64) / 4
    residual = centre - around
    mad = float(np.median(np.abs(residual - np.median(residual))))
    scale = float(np.percentile(sl[h], 99))  # the head's bright end, from the same slices
    return 1.4826 * mad / math.sqrt(1.25) / scale if scale > 0 else math.nan


def bias_level(data: np.ndarray, head: np.ndarray) -> float:
    """Spread of the log of the head's smoothed intensity (see the module docstring); nan when too small."""
    side = _CELL // _SUBSAMPLE  # samples per cell side
    cut = tuple(slice(0, (n // _CELL) * _CELL, _SUBSAMPLE) for n in data.shape)
    d, h = data[cut], head[cut]
    cells = tuple(n // side for n in d.shape)
    if min(cells) < 3:
        return math.nan

    def block(a: np.ndarray) -> np.ndarray:
        return a.reshape(cells[0], side, cells[1], side, cells[2], side).sum(axis=(1, 3, 5), dtype=np.float64)

    filled = block(h)
    total = ndimage.gaussian_filter(block(np.where(h, d, 0)), _SMOOTH_CELLS)
    weight = ndimage.gaussian_filter(filled, _SMOOTH_CELLS)
    core = filled == side ** 3  # cells wholly in the head (the division undoes the outline's blur)
    ratio = total[core] / weight[core]
    if core.sum() * _CELL ** 3 < _MIN_VOXELS or not np.all(ratio > 0):
        return math.nan
    return float(np.log(ratio).std())


def measure(data: np.ndarray) -> dict[str, float]:
    """One input's noise and bias, its head being the voxels above 0 (the pipeline's head rule)."""
    head = data > 0
    return {"noise": noise_level(data, head), "bias": bias_level(data, head)}


@dataclass(frozen=True)
class InputProfile:
    """One subject's profile: per sequence name ('t1', ...) its noise and bias; across inputs, the alignment."""

    inputs: Mapping[str, Mapping[str, float]]
    misaligned_voxels: float = 0.0

    def only(self, names: Iterable[str]) -> "InputProfile":
        """The profile of these inputs alone (a task's sources; the alignment stays that of all inputs read)."""
        return InputProfile({n: self.inputs[n] for n in names if n in self.inputs}, self.misaligned_voxels)

    def to_json(self) -> dict[str, Any]:
        return {"inputs": {k: dict(v) for k, v in self.inputs.items()}, "misaligned_voxels": self.misaligned_voxels}


@dataclass(frozen=True)
class ProfileRanges:
    """The calibration subjects' range of each number: per sequence and stat [lowest, highest];
    the largest misalignment."""

    inputs: Mapping[str, Mapping[str, tuple[float, float]]]
    misaligned_voxels: float

    @classmethod
    def of(cls, profiles: Iterable[InputProfile]) -> "ProfileRanges":
        profiles = list(profiles)
        values: dict[str, dict[str, list[float]]] = {}
        for profile in profiles:
            for name, stats in profile.inputs.items():
                for stat in STATS:
                    values.setdefault(name, {}).setdefault(stat, []).append(stats[stat])
        ranges = {name: {stat: (float(np.nanmin(v)), float(np.nanmax(v))) for stat, v in stats.items()
                         if np.isfinite(v).any()} for name, stats in values.items()}
        return cls(ranges, max((p.misaligned_voxels for p in profiles), default=0.0))

    def outside(self, profile: InputProfile) -> str | None:
        """Why `profile` is unlike the calibration subjects (one line), or None."""
        if profile.misaligned_voxels > self.misaligned_voxels + MISALIGNED_TOLERANCE:
            return (f"two inputs look shifted against each other by {profile.misaligned_voxels:.1f} voxels "
                    f"(the calibration subjects' largest: {self.misaligned_voxels:.1f})")
        for name, stats in profile.inputs.items():
            for stat in STATS:
                value = stats.get(stat, math.nan)
                known = self.inputs.get(name, {}).get(stat)
                if known is None:
                    return f"the calibration recorded no {stat} level for {name} inputs"
                lo, hi = known
                if not math.isfinite(value):
                    return f"the {name} input's {stat} level could not be measured (is its head empty?)"
                if value > hi * (1 + RANGE_TOLERANCE) or value < lo / (1 + RANGE_TOLERANCE):
                    return (f"the {name} input's {stat} level {value:.3g} is outside the calibration subjects' "
                            f"{lo:.3g}-{hi:.3g}")
        return None

    def to_json(self) -> dict[str, Any]:
        return {"inputs": {k: {s: list(r) for s, r in v.items()} for k, v in self.inputs.items()},
                "misaligned_voxels": self.misaligned_voxels}

    @classmethod
    def from_json(cls, data: Any) -> "ProfileRanges":
        """Parsed and checked; a ValueError says what is wrong (the reader names the file)."""
        if not isinstance(data, dict) or not isinstance(data.get("inputs"), dict):
            raise ValueError("inputs must hold the calibration subjects' input ranges (per sequence, noise and bias)")
        shift = data.get("misaligned_voxels")
        if not _finite(shift) or shift < 0:
            raise ValueError(f"inputs.misaligned_voxels must be a non-negative number, got {shift!r}")
        ranges: dict[str, dict[str, tuple[float, float]]] = {}
        for name, stats in data["inputs"].items():
            if not isinstance(stats, dict):
                raise ValueError(f"inputs.{name}: not an object")
            for stat, pair in stats.items():
                if stat not in STATS or not (isinstance(pair, list) and len(pair) == 2 and all(map(_finite, pair))
                                             and 0 <= pair[0] <= pair[1]):
                    raise ValueError(f"inputs.{name}.{stat}: expected one of {', '.join(STATS)} as "
                                     f"[lowest, highest], got {pair!r}")
                ranges.setdefault(name, {})[stat] = (float(pair[0]), float(pair[1]))
        return cls(ranges, float(shift))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
