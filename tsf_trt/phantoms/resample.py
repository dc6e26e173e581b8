"""Trilinear resampling in numpy, rounded as torch's CPU kernels round it.

Why: the phantom generator used ``F.interpolate(mode="trilinear", align_corners=True)`` and
``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=True)``; the phantoms must
stay the same without torch. Both are reproduced operation by operation in float32 (same
coordinates, same weights, same order of the sums). Measured against torch 2.13 (``tests/test_phantom.py``):
grid_sample to the bit; F.interpolate to the bit with torch's AVX2/AVX512 kernels, whose ``a * w0 + b * w1``
rounds like a fused multiply-add (emulated here in float64: exact product, one rounding, then float32),
while its DEFAULT kernel rounds twice and differs by < 1e-6.
"""

from __future__ import annotations

import numpy as np

_F32 = np.float32


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of each output sample, align_corners=True, in torch's float32 steps."""
    if n_in == n_out:
        index = np.arange(n_out)
        return index, index, np.ones(n_out, _F32), np.zeros(n_out, _F32)
    scale = _F32(n_in - 1) / _F32(n_out - 1) if n_out > 1 else _F32(0.0)
    real = scale * np.arange(n_out, dtype=_F32)
    i0 = np.minimum(np.floor(real).astype(np.intp), n_in - 1)
    lambda1 = np.clip(real - i0.astype(_F32), _F32(0.0), _F32(1.0))
    return i0, i0 + (i0 < n_in - 1), _F32(1.0) - lambda1, lambda1


def upsample_trilinear(coarse: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(C, a, b, c) -> (C, *shape) float32, like ``F.interpolate(coarse[None], shape, mode="trilinear",
    align_corners=True)[0]``: separable, last axis first, as torch nests its weights."""
    out = np.asarray(coarse, dtype=_F32)
    for axis in (3, 2, 1):
        out = _interpolate_axis(out, axis, shape[axis - 1])
    return out


def _interpolate_axis(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear interpolation along one axis, one output slice at a time (small float64 temporaries)."""
    i0, i1, w0, w1 = _linear_taps(x.shape[axis], n_out)
    out = np.empty(x.shape[:axis] + (n_out,) + x.shape[axis + 1:], dtype=_F32)
    src, dst = np.moveaxis(x, axis, 0), np.moveaxis(out, axis, 0)
    for j in range(n_out):
        fused = src[i0[j]] * np.float64(w0[j])  # exact: a float32 times a float32
        fused += src[i1[j]] * w1[j]  # the float32 product, added with one rounding (torch's fma)
        dst[j] = fused
    return out


def zero_border(volumes: np.ndarray) -> np.ndarray:
    """(C, D, H, W) -> (C, D + 2, H + 2, W + 2) float32 with a zero border: what :func:`grid_sample_padded` reads."""
    return np.pad(np.asarray(volumes, dtype=_F32), [(0, 0)] + [(1, 1)] * 3)


def grid_sample_zeros(volumes: np.ndarray, grid: list[np.ndarray]) -> np.ndarray:
    """(C, D, H, W) sampled at ``grid`` -> (C, *grid[0].shape) float32, like ``F.grid_sample(volumes[None],
    g[None], mode="bilinear", padding_mode="zeros", align_corners=True)[0]`` with ``g[..., k] = grid[k]``.

    ``grid``: normalised coordinates in [-1, 1] along W, H, D (grid_sample's x, y, z).
    """
    return grid_sample_padded(zero_border(volumes), grid)


def grid_sample_padded(padded: np.ndarray, grid: list[np.ndarray], chunk: int = 1 << 16) -> np.ndarray:
    """:func:`grid_sample_zeros` of the volumes that ``padded`` (:func:`zero_border`) holds: corners outside
    count as 0, and the zero border makes that a plain gather. Points go in chunks of ``chunk``, so that
    the temporaries stay in cache."""
    coords = [np.ravel(g) for g in grid[::-1]]  # D, H, W
    out = np.empty((padded.shape[0], coords[0].size), dtype=_F32)
    for start in range(0, coords[0].size, chunk):
        part = slice(start, start + chunk)
        out[:, part] = _sample_points(padded, [c[part] for c in coords])
    return out.reshape(padded.shape[0], *grid[0].shape)


def _sample_points(padded: np.ndarray, coords: list[np.ndarray]) -> np.ndarray:
    """torch's 3-d bilinear / zeros / align_corners sampling, step by step, at 1-d arrays of D, H, W coordinates."""
    channels, *size = padded.shape
    strides = (size[1] * size[2], size[2], 1)
    flat = padded.reshape(channels, -1)
    base = np.zeros(coords[0].shape, dtype=np.intp)
    outside = np.zeros(coords[0].shape, dtype=bool)
    near, far = [], []  # per axis D, H, W: weights of the lower and the upper corner
    for axis, g in enumerate(coords):
        n = size[axis] - 2
        x = (g + _F32(1.0)) / _F32(2.0) * _F32(n - 1)  # normalised -> voxel, as torch rounds it
        x0 = np.floor(x)
        near.append((x0 + _F32(1.0)) - x)
        far.append(x - x0)
        i0 = x0.astype(np.intp)
        outside |= (i0 < -1) | (i0 > n - 1)  # both corners out: the sample is 0
        base += (np.clip(i0, -1, n - 1) + 1) * strides[axis]
    out = np.zeros((channels, base.size), dtype=_F32)
    # torch's order: z (D) outermost, then y (H), x (W) innermost; each weight is (wx * wy) * wz.
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                weight = (far if dx else near)[2] * (far if dy else near)[1] * (far if dz else near)[0]
                corner = np.take(flat, base + (dz * strides[0] + dy * strides[1] + dx), axis=1)
                out += corner * weight
    out[:, outside] = 0.0
    return out
