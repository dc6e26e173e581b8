"""Normalisation and 2.5D stacking against the reference goldens, plus our extensions."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import DATA
from tsf_trt.synthesis.preprocess import (OUTPUT_SCALE, SliceAccumulator, normalize, pad_amounts, pad_inplane,
                                          stack_25d, to_output_intensity)


@pytest.fixture(scope="module")
def golden():
    with np.load(DATA / "small_preprocess.npz") as npz:
        return {k: npz[k] for k in npz.files}


def test_normalize_matches_reference(golden):
    out = normalize(golden["volume"])
    assert out.dtype == np.float32
    assert np.array_equal(out, golden["normalized"])
    assert float(np.abs(normalize(golden["volume"].astype(np.float64)) - golden["normalized_from_f64"]).max()) < 1e-7
    assert out.min() == -1.0 and out.max() == 1.0


def test_normalize_rejects_empty_volume():
    with pytest.raises(ValueError, match="99th percentile"):
        normalize(np.zeros((4, 8, 8), np.float32))
    almost_empty = np.zeros((10, 10, 10), np.float32)
    almost_empty[0, 0, :5] = 7  # < 1 % non-zero: p99 is 0
    with pytest.raises(ValueError):
        normalize(almost_empty)


def test_stack_matches_reference_inside_the_volume(golden):
    vol = golden["normalized"]
    ours = stack_25d(vol, range(1, vol.shape[0] - 1))  # reference: d slices -> d-2 samples
    assert np.array_equal(ours, golden["stack25d"][:, 0])
    k = int(golden["stack25d_index"])
    assert np.array_equal(stack_25d(vol, [k + 1]), golden["stack25d_slice4"])


def test_stack_replicates_edges():
    vol = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)
    stacks = stack_25d(vol, range(4))
    assert stacks.shape == (4, 3, 2, 3)
    assert stacks[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]
    assert stack_25d(vol[:1], [0])[0, :, 0, 0].tolist() == [0, 0, 0]  # a single slice


@pytest.mark.parametrize("size,expected", [(240, (0, 0)), (155, (0, 1)), (50, (1, 1)), (49, (1, 2))])
def test_pad_amounts(size, expected):
    assert pad_amounts(size, 4) == expected


def test_pad_and_crop_round_trip():
    vol = np.random.default_rng(0).random((3, 50, 45), dtype=np.float32)
    padded, (ys, xs) = pad_inplane(vol, 4)
    assert padded.shape == (3, 52, 48)
    assert np.array_equal(padded[:, ys, xs], vol)
    assert padded[:, 0].max() == -1.0 and padded[:, :, -1].max() == -1.0  # background value
    same, crop = pad_inplane(vol[:, :48, :44], 4)
    assert same.shape == (3, 48, 44)


def test_output_intensity_maps_network_range():
    assert to_output_intensity(np.array([-1.0, 0.0, 1.0])).tolist() == [0.0, OUTPUT_SCALE / 2, OUTPUT_SCALE]


def test_accumulator_middle_and_mean():
    depth = 5
    # sample z predicts slices z-1, z, z+1 as channels 0, 1, 2; make each prediction = 10*slice + channel
    outputs = np.stack([np.stack([np.full((2, 2), 10.0 * (z - 1 + c) + c) for c in range(3)]) for z in range(depth)])
    middle = SliceAccumulator((depth, 2, 2), "middle")
    mean = SliceAccumulator((depth, 2, 2), "mean")
    for start in (0, 2, 4):  # in batches, like the pipeline
        centres = range(start, min(start + 2, depth))
        middle.add(centres, outputs[start:centres.stop].astype(np.float32))
        mean.add(centres, outputs[start:centres.stop].astype(np.float32))
    assert middle.result()[:, 0, 0].tolist() == [1, 11, 21, 31, 41]
    # slice 0: channel 1 of sample 0 (1) and channel 0 of sample 1 (0) -> 0.5; inner: (c0 + c1 + c2)/3 = +1
    assert mean.result()[:, 0, 0].tolist() == pytest.approx([0.5, 11, 21, 31, 41.5])
    with pytest.raises(ValueError):
        SliceAccumulator((1, 1, 1), "median")
