"""Image quality against a ground truth, as the paper scores it (Tables 1 and 2).

Both images are in network units, [-1, 1] (``preprocess.normalize`` of the truth, the raw
network output for the synthesis), so the data range is 2. Scores are taken inside a head
mask. SSIM is scikit-image's (Wang et al. 2004: Gaussian window σ 1.5, K1 0.01, K2 0.03),
computed per axial slice, its map averaged over the mask's voxels: a maintained
implementation, not ours. Training validates with a torch SSIM of the same map
(train/losses.py says why it needs its own).
"""

from __future__ import annotations

import numpy as np

DATA_RANGE = 2.0
TSEM_TOP = 1.0  # percent: the paper's "top 1 %" TSEM region


def _masked(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if mask is None:
        return np.ones(pred.shape, dtype=bool)
    if mask.shape != pred.shape:
        raise ValueError(f"mask {mask.shape} and images {pred.shape} differ in shape")
    return mask.astype(bool)


def psnr(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
         data_range: float = DATA_RANGE) -> float:
    """PSNR in dB over the mask's voxels; inf when they agree exactly, nan for an empty mask."""
    m = _masked(pred, truth, mask)
    if not m.any():
        return float("nan")
    mse = float(np.mean((pred[m].astype(np.float64) - truth[m].astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))


def ssim(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
         data_range: float = DATA_RANGE) -> float:
    """Mean SSIM over the mask's voxels, the map computed per axial slice (z, y, x)."""
    from skimage.metrics import structural_similarity

    m = _masked(pred, truth, mask)
    if pred.ndim == 2:
        pred, truth, m = pred[None], truth[None], m[None]
    total, count = 0.0, 0
    for z in np.flatnonzero(m.any(axis=(1, 2))):
        _, smap = structural_similarity(pred[z].astype(np.float64), truth[z].astype(np.float64),
                                        data_range=data_range, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)
        total += float(smap[m[z]].sum())
        count += int(m[z].sum())
    return total / count if count else float("nan")


def tsem_regions(pred: np.ndarray, truth: np.ndarray, tsem: np.ndarray, mask: np.ndarray,
                 top: float = TSEM_TOP) -> dict[str, float]:
    """PSNR inside vs outside the top `top` % TSEM region of the head (Table 2's shape).

    The threshold is the (100 - top)th percentile of TSEM over the head voxels: the region is
    `top` % of the head whatever the field of view, so the numbers compare across data sets.
    """
    m = _masked(pred, truth, mask)
    if tsem.shape != pred.shape:
        raise ValueError(f"TSEM {tsem.shape} and images {pred.shape} differ in shape")
    if not m.any():
        nan = float("nan")
        return {"threshold": nan, "psnr_top": nan, "psnr_rest": nan, "top_percent": top}
    threshold = float(np.percentile(tsem[m], 100 - top))
    region = m & (tsem > threshold)
    return {"threshold": threshold, "psnr_top": psnr(pred, truth, region),
            "psnr_rest": psnr(pred, truth, m & ~region), "top_percent": top}
