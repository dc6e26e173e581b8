"""tsf_trt.uncertainty.profile: the inputs' noise, bias and alignment, measured on a phantom with
known changes (the shifts of scripts/shift_study.py, made small: 96x96x40 voxels)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tests.helpers import phantom_volumes, write_nifti
from tsf_trt.inputs.prefetch import load_subject
from tsf_trt.uncertainty.profile import bias_level, measure, noise_level


def _zyx(name: str) -> np.ndarray:
    return np.ascontiguousarray(phantom_volumes(0)[name].transpose(2, 1, 0)).astype(np.float32)


def test_noise_level_measures_added_gaussian_noise():
    # A flat head with i.i.d. noise of σ: the estimate is σ / (the head's 99th percentile), within
    # 5 % (the median absolute deviation of ~20 000 residuals varies by about 1 %).
    rng = np.random.default_rng(0)
    head = np.zeros((40, 96, 96), bool)
    head[4:36, 16:80, 16:80] = True
    for sigma in (2.0, 4.0):
        data = np.where(head, 100 + rng.normal(0, sigma, head.shape), 0).astype(np.float32)
        top = np.percentile(data[::4][head[::4]], 99)
        assert noise_level(data, head) == pytest.approx(sigma / top, rel=0.05)


def test_more_noise_and_a_bias_field_raise_their_own_level_only():
    data = _zyx("t1")
    head = data > 0
    base = measure(data)
    rng = np.random.default_rng(1)
    sigma = 2 * base["noise"] * np.percentile(data[head], 99)  # about three times the noise in all
    noisy = np.where(head, np.hypot(data + rng.normal(0, sigma, data.shape), rng.normal(0, sigma, data.shape)), 0)
    assert noise_level(noisy.astype(np.float32), head) > 2 * base["noise"]
    field = ndimage.zoom(ndimage.gaussian_filter(rng.normal(size=(5, 6, 6)), 1.0), (8, 16, 16), order=1)
    biased = np.where(head, data * np.exp(0.3 * field / field.std()), 0).astype(np.float32)
    assert bias_level(biased, head) > 1.5 * base["bias"]
    assert noise_level(biased, head) < 1.5 * base["noise"]  # not read as noise (its scale moves with the bright end)


def test_a_shifted_input_shows_in_the_profile_and_a_tiny_head_measures_nothing(tmp_path):
    t1, t2 = phantom_volumes(0)["t1"], phantom_volumes(0)["t2"]
    paths = {0: write_nifti(tmp_path / "t1.nii.gz", t1), 2: write_nifti(tmp_path / "t2.nii.gz", np.roll(t2, 3, 0))}
    loaded = load_subject(paths)
    assert loaded.profile.misaligned_voxels == pytest.approx(3.0)
    assert set(loaded.profile.inputs) == {"t1", "t2"}
    paths[2] = write_nifti(tmp_path / "t2.nii.gz", t2)
    assert load_subject(paths).profile.misaligned_voxels == 0.0
    tiny = np.zeros((12, 12, 12), np.float32)
    tiny[4:8, 4:8, 4:8] = 1
    assert all(np.isnan(v) for v in measure(tiny).values())
