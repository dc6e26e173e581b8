"""The per-voxel heuristic u(x): where a synthesis is likely wrong, from what the network gives.

Features, each a (z, y, x) map in network units, computed from the synthesis itself:

* ``tsem``: |G(fused) − G(fused_avg)|, the refinement the attention made (paper Eq. 6);
* ``spread``: the mean |G(E_i) − G(fused)| over the sources' one-to-one syntheses (one extra
  decoder pass per source: the encodings are already there);
* ``edge``: the in-plane gradient magnitude of the synthesis (a blurred edge is where a
  synthesis misses most), free;
* ``tsem_smooth``: TSEM averaged over a 5×5 in-plane neighbourhood (errors are spatially
  correlated; TSEM is sparse);
* ``intensity``: the synthesis itself on [0, 1] (a multiplicative error, such as a bias field the
  inputs cannot show, grows with the signal).

u(x) = c₀ + Σ c_k f_k(x), with c ≥ 0 fitted by non-negative least squares of |error| on the
features over fitting subjects (never the calibration subjects, which only set λ), so u is a
predicted |error| and c₀ > 0 keeps every interval open. ``constant`` (u ≡ 1) is the
non-adaptive baseline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tsf_trt.errors import TsfError

#: Every feature :func:`feature_maps` computes.
FEATURES = ("tsem", "tsem_smooth", "spread", "edge", "intensity")
#: The heuristics a study compares: name -> features (empty: the constant-width baseline).
CANDIDATES: dict[str, tuple[str, ...]] = {
    "constant": (),
    "tsem": ("tsem",),
    "tsem_smooth": ("tsem_smooth",),
    "edge": ("edge",),
    "edge+tsem_smooth": ("edge", "tsem_smooth"),
    "spread": ("spread",),
    "edge+tsem_smooth+spread": ("edge", "tsem_smooth", "spread"),
    "intensity": ("intensity",),
    "edge+tsem_smooth+intensity": ("edge", "tsem_smooth", "intensity"),
}
def needs(names: Sequence[str]) -> tuple[str, ...]:
    """What a synthesis must give beyond its image for these features: 'tsem' (the TSF stage's map)
    and/or 'singles' (the one-to-one syntheses, one more decoder pass per input)."""
    return tuple(what for what, used in (("tsem", bool(set(names) & {"tsem", "tsem_smooth"})),
                                         ("singles", "spread" in names)) if used)


#: The smallest c₀: u never reaches 0, so no interval is empty (network units; 1e-3 is 0.5 of 1000).
MIN_OFFSET = 1e-3


def _box_mean(volume: np.ndarray, radius: int = 2) -> np.ndarray:
    """Mean over a (2r+1)² in-plane window, edges replicated (scipy's uniform filter)."""
    from scipy.ndimage import uniform_filter

    return uniform_filter(volume, size=(1, 2 * radius + 1, 2 * radius + 1), mode="nearest")


def edge_map(image: np.ndarray) -> np.ndarray:
    """In-plane gradient magnitude of a (z, y, x) image (central differences, per unit pixel)."""
    gy, gx = np.gradient(np.asarray(image, dtype=np.float32), axis=(1, 2))
    return np.hypot(gy, gx).astype(np.float32)


def feature_maps(image: np.ndarray, tsem: np.ndarray | None, singles: Sequence[np.ndarray] = ()
                 ) -> dict[str, np.ndarray]:
    """Every feature that can be computed from what is given (no TSEM without the TSF stage, no
    spread without one-to-one syntheses)."""
    maps = {"edge": edge_map(image),
            "intensity": np.clip((np.asarray(image, dtype=np.float32) + 1) / 2, 0, 1)}
    if tsem is not None:
        maps["tsem"] = np.asarray(tsem, dtype=np.float32)
        maps["tsem_smooth"] = _box_mean(maps["tsem"]).astype(np.float32)
    if singles:
        maps["spread"] = np.mean([np.abs(s - image) for s in singles], axis=0).astype(np.float32)
    return maps


@dataclass(frozen=True)
class Heuristic:
    """u(x) = coefficients[0] + Σ coefficients[k+1] · features[names[k]](x)."""

    names: tuple[str, ...]
    coefficients: tuple[float, ...]

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in FEATURES]
        if unknown or len(self.coefficients) != len(self.names) + 1:
            raise TsfError(f"not a heuristic: features {self.names}, coefficients {self.coefficients}")
        if self.coefficients[0] < MIN_OFFSET or min(self.coefficients) < 0:
            raise TsfError(f"a heuristic's offset must be at least {MIN_OFFSET} and its weights >= 0: "
                           f"{self.coefficients}")

    def u(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        missing = [n for n in self.names if n not in features]
        if missing:
            raise TsfError(f"the heuristic needs {', '.join(missing)}, which this synthesis did not compute")
        first = next(iter(features.values()))
        out = np.full(np.shape(first), self.coefficients[0], dtype=np.float32)
        for name, c in zip(self.names, self.coefficients[1:]):
            out += np.float32(c) * features[name]
        return out


def fit_heuristic(names: Sequence[str], features: Sequence[Mapping[str, np.ndarray]],
                  errors: Sequence[np.ndarray]) -> Heuristic:
    """Non-negative least squares of |error| on [1, features] over the fitting subjects' voxels
    (each subject's voxels as given: subsample them beforehand to weigh subjects alike)."""
    from scipy.optimize import nnls

    names = tuple(names)
    y = np.concatenate([np.asarray(e, dtype=np.float64).ravel() for e in errors])
    columns = [np.ones_like(y)] + [np.concatenate([np.asarray(f[n], dtype=np.float64).ravel() for f in features])
                                   for n in names]
    x = np.stack(columns, axis=1)
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)  # columns of one size: nnls converges on them
    coef, _ = nnls(x / scale, y)
    coef = coef / scale
    coef[0] = max(coef[0], MIN_OFFSET)
    return Heuristic(names, tuple(float(c) for c in coef))
