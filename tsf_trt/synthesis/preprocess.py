"""Intensities and 2.5D slice stacks: what the network sees, and how its output returns.

All arrays are (z, y, x), as the reference's SimpleITK arrays (see :mod:`tsf_trt.files.volume`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Network output in [-1, 1] is written as (y + 1) / 2 · OUTPUT_SCALE: background
#: (-1) becomes 0 and the clip level 2·p99 (+1) becomes 1000, a range every viewer
#: windows sensibly without surprises from negative values.
OUTPUT_SCALE = 1000.0
#: Value of the background after normalisation; also used for in-plane padding.
BACKGROUND = -1.0
COMBINE_RULES = ("middle", "mean")


def normalize(volume: np.ndarray) -> np.ndarray:
    """The reference normalisation: clip to [0, 2·p99] of the whole volume, map to [-1, 1].

    The percentile includes the background, as in the reference data loader. Computed
    in float32 like the reference on float32 input. Raises ValueError when 2·p99 is not
    positive (all-zero or almost-empty volume: the reference would divide by zero).
    """
    vol = np.asarray(volume, dtype=np.float32)
    amax = 2 * np.percentile(vol, 99)
    if not np.isfinite(amax) or amax <= 0:
        raise ValueError(
            f"the 99th percentile of the intensities is {amax / 2:g}: the volume is (almost) "
            "empty or not positive, so it cannot be normalised"
        )
    out = np.clip(vol, 0, amax)
    out /= amax
    out *= 2
    out -= 1
    return out


def to_output_intensity(image: np.ndarray) -> np.ndarray:
    """Network units [-1, 1] -> written intensities [0, OUTPUT_SCALE]."""
    return ((np.asarray(image, dtype=np.float32) + 1) * (OUTPUT_SCALE / 2)).astype(np.float32)


def stack_25d(volume: np.ndarray, centres: Sequence[int] | range) -> np.ndarray:
    """Samples of 3 adjacent axial slices (z-1, z, z+1) as channels, (n, 3, y, x).

    Unlike the reference (d slices -> d-2 samples), every slice is a centre: the
    missing neighbour of an edge slice is the edge slice itself (replication).
    """
    z = np.asarray(centres)
    last = volume.shape[0] - 1
    index = np.stack([np.clip(z - 1, 0, last), z, np.clip(z + 1, 0, last)], axis=1)
    return volume[index]


def pad_amounts(size: int, multiple: int) -> tuple[int, int]:
    """(before, after) padding that makes `size` a multiple of `multiple`, split evenly."""
    total = -size % multiple
    return total // 2, total - total // 2


def pad_inplane(volume: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Pad y and x with the background value up to multiples of `multiple`.

    Returns the padded volume and the (y, x) slices that crop results back.
    """
    (y0, y1), (x0, x1) = pad_amounts(volume.shape[1], multiple), pad_amounts(volume.shape[2], multiple)
    crop = (slice(y0, y0 + volume.shape[1]), slice(x0, x0 + volume.shape[2]))
    if not (y0 or y1 or x0 or x1):
        return volume, crop
    padded = np.pad(volume, ((0, 0), (y0, y1), (x0, x1)), constant_values=BACKGROUND)
    return padded, crop


class SliceAccumulator:
    """Collects per-sample network outputs (n, 3, y, x) into a volume (z, y, x).

    ``middle``: slice z is the middle channel of sample z (the reference's rule).
    ``mean``: slice z is the mean of every prediction of it — channel 1 of sample z,
    channel 2 of sample z-1 and channel 0 of sample z+1 (those that exist).
    """

    def __init__(self, shape: tuple[int, int, int], rule: str = "middle"):
        if rule not in COMBINE_RULES:
            raise ValueError(f"combine rule must be one of {COMBINE_RULES}, got {rule!r}")
        self.rule = rule
        self.total = np.zeros(shape, dtype=np.float32)
        self.count = np.zeros(shape[0], dtype=np.float32) if rule == "mean" else None

    def add(self, centres: Sequence[int] | range, outputs: np.ndarray) -> None:
        """`outputs` (n, 3, y, x); for the middle rule also (n, y, x), the middle channel alone."""
        z = np.asarray(centres)
        if self.count is None:
            self.total[z] = outputs if outputs.ndim == 3 else outputs[:, 1]
            return
        depth = self.total.shape[0]
        for channel, offset in enumerate((-1, 0, 1)):
            target = z + offset
            ok = (target >= 0) & (target < depth)
            np.add.at(self.total, target[ok], outputs[ok, channel])
            np.add.at(self.count, target[ok], 1.0)

    def result(self) -> np.ndarray:
        if self.count is None:
            return self.total
        return self.total / np.maximum(self.count, 1.0)[:, None, None]
