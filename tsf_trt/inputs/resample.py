"""``--resample``: inputs on different grids or voxel sizes onto one 1 mm grid, outputs back.

The network mixes its inputs voxel by voxel and was trained on 1 mm BraTS volumes, so inputs
that are co-registered (in world coordinates) but stored on different grids, or far from
1 mm, can be brought onto one grid first: the first input's field of view (lowest sequence
index), its axis directions, 1 mm isotropic voxels. Resampling is nibabel.processing's
(scipy.ndimage splines): linear, so that values stay within their neighbours' range and the
empty background stays exactly empty away from the brain. Results are brought back to each
input's own grid with :func:`to_input_grid` and then written with ``save_volume(input, ...)``
like any other output: they land on the input's own grid, layout, affine and header.

A grid coarser than the one sampled from (1 mm -> 2.5 mm, 0.5 mm -> 1 mm) is first smoothed
with a Gaussian of sigma (f - 1) / 2 source voxels along an axis shrunk f times (the rule of
scikit-image's ``resize``), so that fine structure does not alias into the coarse grid.
"""

from __future__ import annotations

from collections.abc import Mapping

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage

from tsf_trt.errors import InputError
from tsf_trt.files.volume import Volume, check_same_grid, volume_standing_for
from tsf_trt.inputs.preflight import VOXEL_MM_RANGE, voxel_size_mm

Grid = tuple[tuple[int, int, int], np.ndarray]  # (x, y, z) shape, 4x4 affine: nibabel's voxel map


def reference_grid(volume: Volume, voxel_mm: float = 1.0) -> Grid:
    """``volume``'s field of view (same centre and extent, same axis directions, L,P,S order)
    with ``voxel_mm`` isotropic voxels: the grid the network runs on with ``--resample``."""
    aff = volume.canonical_affine
    sizes = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
    directions = aff[:3, :3] / sizes
    n = np.array(volume.shape[::-1], dtype=float)  # canonical (x, y, z)
    shape = np.maximum(1, np.round(n * sizes / voxel_mm)).astype(int)
    centre = aff[:3, :3] @ ((n - 1) / 2) + aff[:3, 3]
    out = np.eye(4)
    out[:3, :3] = directions * voxel_mm
    out[:3, 3] = centre - out[:3, :3] @ ((shape - 1) / 2)
    return tuple(int(s) for s in shape), out  # type: ignore[return-value]


def needs_resampling(volumes: Mapping[int, Volume], accepted: tuple[float, float] = VOXEL_MM_RANGE) -> bool:
    """Whether the inputs are on different grids or any voxel axis is outside ``accepted`` mm."""
    vols = [volumes[i] for i in sorted(volumes)]
    try:
        check_same_grid(vols)
    except InputError:
        return True
    lo, hi = accepted
    return any(not lo <= s <= hi for v in vols for s in voxel_size_mm(v))


def _source_voxels_per_target(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """Along each source axis, how many source voxels one target voxel spans (1: same size)."""
    m = np.linalg.solve(src_affine[:3, :3], dst_affine[:3, :3])
    return np.sqrt((m ** 2).sum(axis=1))


def _resample(data_xyz: np.ndarray, src_affine: np.ndarray, grid: Grid, order: int, fill: float) -> np.ndarray:
    """``data_xyz`` on ``src_affine`` sampled at ``grid``'s voxel centres (float32, (x, y, z))."""
    shrink = _source_voxels_per_target(src_affine, grid[1])
    sigma = np.maximum(0.0, (shrink - 1) / 2)
    src = np.asarray(data_xyz, dtype=np.float32)
    if order > 0 and sigma.max() > 0:
        src = ndimage.gaussian_filter(src, sigma, mode="nearest")
    # Outside the source (and half a voxel into its border) the fill value is blended in: the
    # border of a BraTS-like volume is empty background anyway.
    out = resample_from_to(nib.Nifti1Image(src, src_affine), grid, order=order, mode="constant", cval=fill)
    out = np.asarray(out.dataobj, dtype=np.float32)
    return out


def resample_volume(volume: Volume, grid: Grid, order: int = 1) -> Volume:
    """``volume`` sampled on ``grid`` (linear by default), as a Volume standing for the same
    file; outside the file's field of view it is empty (0)."""
    data = _resample(volume.data.transpose(2, 1, 0), volume.canonical_affine, grid, order, 0.0)
    img = nib.Nifti1Image(data, grid[1])
    img.header.set_xyzt_units("mm")
    sform_code = int(volume.header["sform_code"]) or 1
    qform_code = int(volume.header["qform_code"]) or 1
    img.set_sform(grid[1], code=sform_code)
    img.set_qform(grid[1], code=qform_code)
    return volume_standing_for(img, volume.path)


def resample_subject(volumes: Mapping[int, Volume], voxel_mm: float = 1.0) -> dict[int, Volume]:
    """Every input on the first input's field of view at ``voxel_mm`` isotropic (see module doc).

    The inputs must already be co-registered in world coordinates: this changes grids, it
    does not register images.
    """
    if not volumes:
        return {}
    grid = reference_grid(volumes[min(volumes)], voxel_mm)
    return {i: resample_volume(volumes[i], grid) for i in sorted(volumes)}


def to_input_grid(array_zyx: np.ndarray, grid: Volume, like: Volume, order: int = 1,
                  fill: float = 0.0) -> np.ndarray:
    """An output on the resampled grid (canonical (z, y, x) of ``grid``) on ``like``'s grid
    (canonical (z, y, x) of ``like``), ready for ``save_volume(like, ...)``.

    Linear (``order=1``) for the synthesis and for TSEM alike: a linear mix of neighbours never
    leaves their range, so TSEM stays non-negative and the image gains no ringing; with the
    anti-alias Gaussian a coarser input grid receives local averages. ``order=0`` (nearest) for
    masks and labels. ``fill``: the value for input voxels outside the resampled field of view
    (0 for written intensities and TSEM, ``preprocess.BACKGROUND`` for network units).
    """
    arr = np.asarray(array_zyx)
    if arr.shape != grid.shape:
        raise ValueError(f"array shape {arr.shape} does not match the resampled grid {grid.shape}")
    target: Grid = (like.shape[::-1], like.canonical_affine)  # type: ignore[assignment]
    out = _resample(arr.transpose(2, 1, 0), grid.canonical_affine, target, order, fill)
    return np.ascontiguousarray(out.transpose(2, 1, 0))


def result_to_input_grid(result, grid: Volume, like: Volume):
    """A pipeline Result computed on the resampled grid, brought back to ``like``'s grid: the
    image and TSEM linearly (outside the resampled field of view: background, and no TSEM),
    the head mask by nearest neighbour."""
    from dataclasses import replace

    from tsf_trt.synthesis.preprocess import BACKGROUND

    tsem = None if result.tsem is None else np.maximum(to_input_grid(result.tsem, grid, like), 0.0)
    mask = to_input_grid(result.head_mask.astype(np.float32), grid, like, order=0) > 0.5
    return replace(result, image=to_input_grid(result.image, grid, like, fill=BACKGROUND).astype(np.float32),
                   tsem=None if tsem is None else tsem.astype(np.float32), head_mask=mask,
                   grid=like.grid_only())  # to_nifti() and save() write on the input's grid
