"""--frame: where the network runs in-plane, which slices it computes, and how outputs return."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import make_head
from tsf_trt.errors import TsfError
from tsf_trt.synthesis.frame import FrameSpec, cut, plan_frame, stacks_with_head
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import Synthesizer
from tsf_trt.synthesis.preprocess import BACKGROUND, normalize, pad_inplane, stack_25d

ATOL = 3e-5  # as tests/test_pipeline.py: batched vs per-stack float32 rounding on AVX2


def padded_head(depth: int = 7, size: tuple[int, int] = (80, 72), empty_slices: tuple[int, ...] = (0, 6)) -> np.ndarray:
    """A small head in the middle of a larger, empty slice; some slices hold no head at all."""
    vol = np.zeros((depth, *size), dtype=np.float32)
    vol[:, 30:54, 20:44] = make_head((depth, 24, 24), seed=4)
    vol[list(empty_slices)] = 0
    return vol


@pytest.mark.parametrize("text, spec", [("head", FrameSpec("head")), ("FULL", FrameSpec("full")),
                                        ("192x160", FrameSpec("size", (192, 160)))])
def test_frame_names_parse(text, spec):
    assert FrameSpec.parse(text) == spec
    assert RunOptions(frame=text).frame == spec  # parsed once, when the options are built


@pytest.mark.parametrize("text", ["", "0x4", "192", "192x", "big", "12x-4"])
def test_bad_frames_are_refused_before_any_work(text):
    with pytest.raises(TsfError, match="--frame must be head, full or HxW"):
        RunOptions(frame=text)


def test_a_size_must_suit_the_network(small_model):
    with pytest.raises(TsfError, match="multiples of 4"):
        Synthesizer(small_model, RunOptions(backend="torch", frame="30x32"))


def test_full_is_the_whole_slice_padded_to_the_multiple():
    head = make_head((7, 37, 30)) > 0
    frame = plan_frame("full", head, 4)
    padded, crop = pad_inplane(np.zeros((1, 37, 30), np.float32), 4)
    assert frame.shape == padded.shape[1:] and (-frame.y0, -frame.x0) == (crop[0].start, crop[1].start)
    assert frame.computes_all


def test_head_is_the_box_plus_margin_rounded_to_the_multiple():
    vol = padded_head()
    frame = plan_frame(FrameSpec("head", margin=5), vol > 0, 4)
    rows, cols = np.flatnonzero((vol > 0).any(axis=(0, 2))), np.flatnonzero((vol > 0).any(axis=(0, 1)))
    assert frame.y0 <= rows[0] - 5 and frame.y1 >= rows[-1] + 1 + 5
    assert frame.x0 <= cols[0] - 5 and frame.x1 >= cols[-1] + 1 + 5
    assert all(s % 4 == 0 for s in frame.shape) and frame.shape[0] < 80 and frame.head_outside == 0
    # the empty first and last slices' stacks (0: slices 0-1; 6: 5-6) hold head voxels of 1 and 5
    assert list(frame.slices) == list(range(7))


def test_slices_far_from_the_head_are_not_computed():
    vol = padded_head(depth=9, empty_slices=(0, 1, 2, 8))
    assert list(stacks_with_head(vol > 0)) == [2, 3, 4, 5, 6, 7, 8]


def test_a_given_size_is_centred_on_the_head_and_says_what_it_cuts():
    vol = padded_head()
    frame = plan_frame("16x16", vol > 0, 4)
    assert frame.shape == (16, 16) and (frame.y0 + frame.y1) // 2 == 42 and (frame.x0 + frame.x1) // 2 == 32
    inside = (vol[:, frame.y0:frame.y1, frame.x0:frame.x1] > 0).sum()
    assert frame.head_outside == pytest.approx(1 - inside / (vol > 0).sum())


def test_cut_pads_with_the_fill_past_the_edge():
    a = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    out = cut(a, -1, 2, 2, 6, -1.0)
    assert out.shape == (1, 3, 4)
    assert out[0, 0].tolist() == [-1, -1, -1, -1] and out[0, 1].tolist() == [2, 3, -1, -1]


def test_full_frame_equals_the_model_on_every_padded_stack(small_model):
    vols = {1: make_head((3, 37, 30), seed=3)}
    result = Synthesizer(small_model, RunOptions(frame="full")).run_canonical(vols, "flair")
    padded, crop = pad_inplane(normalize(vols[1]), 4)
    with torch.no_grad():
        expected = small_model.synthesize({1: torch.from_numpy(stack_25d(padded, range(3)))}, 3).image[:, 1]
    assert np.abs(result.image - expected.numpy()[:, crop[0], crop[1]]).max() <= ATOL
    assert result.frame["frame"] == "full" and result.frame["slices_computed"] == 3


def test_head_frame_runs_the_network_on_the_box_and_fills_the_rest(small_model):
    vol = padded_head(depth=9, empty_slices=(0, 1, 2, 8))
    result = Synthesizer(small_model, RunOptions(frame="head")).run_canonical({1: vol, 3: vol[::-1].copy()}, "t2")
    frame = plan_frame("head", (vol > 0) | (vol[::-1] > 0), 4)
    assert result.image.shape == vol.shape and result.frame["size"] == list(frame.shape)
    skipped = [z for z in range(9) if z not in frame.slices]
    assert np.all(result.image[skipped] == BACKGROUND) and np.all(result.tsem[skipped] == 0)
    outside = np.ones(vol.shape[1:], bool)
    outside[max(frame.y0, 0):frame.y1, max(frame.x0, 0):frame.x1] = False
    assert np.all(result.image[:, outside] == BACKGROUND) and np.all(result.tsem[:, outside] == 0)
    # inside the frame it is the network on the framed stacks: compare one computed slice directly
    normed = {i: frame.take(normalize(v)) for i, v in {1: vol, 3: vol[::-1].copy()}.items()}
    z = int(frame.slices[3])
    with torch.no_grad():
        out = small_model.synthesize({i: torch.from_numpy(stack_25d(v, [z])) for i, v in normed.items()}, 2).image
    placed = frame.place(np.repeat(out[:, 1].numpy(), 9, axis=0), vol.shape, BACKGROUND)
    assert np.abs(result.image[z] - placed[z]).max() <= ATOL


def test_a_cut_head_is_a_warning(small_model, caplog):
    vol = padded_head()
    with caplog.at_level("WARNING", logger="tsf_trt"):
        result = Synthesizer(small_model, RunOptions(frame="16x16")).run_canonical({1: vol}, "t2")
    assert result.frame["head_outside"] > 0 and "outside the frame" in caplog.text
