"""Subject figures a reader can compare and orient: one fixed |error| scale in every figure, units on
every colour bar, the patient's left and right marked (checked against a file of known orientation),
the TSEM overlay limited to its stated top 1 % of the head, one slice-label style, and the demo's title
with its scores (evaluate's: tests/test_evaluate.py). Read from the spec and the matplotlib objects,
never pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import write_nifti
from tsf_trt.runs import figures
from tsf_trt.runs.figures import ERROR_MAX, draw_subject, scored_title, subject_spec

SHAPE = (4, 16, 16)  # canonical (z, y, x)


def head_volume(seed: int) -> np.ndarray:
    """A square head at 0.5 on a -1 background, with a little texture."""
    image = -np.ones(SHAPE, np.float32)
    image[:, 3:13, 3:13] = 0.5 + 0.1 * np.random.default_rng(seed).standard_normal((SHAPE[0], 10, 10))
    return image


def spec_of(truth_offset: float, seed: int = 0, **extra):
    image = head_volume(seed)
    kwargs = {"inputs": {"t1": image}, "synthesis": image, "truth": np.clip(image + truth_offset, -1, 1),
              "tsem": None, "weights": {"t1": 1.0}, "title": "x", "slices": [1, 2]}
    kwargs.update(extra)
    return subject_spec(**kwargs)


def texts(fig) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def images_by_cmap(fig, name: str):
    return [im for ax in fig.axes for im in ax.get_images() if im.get_cmap().name == name]


def test_two_subjects_share_one_fixed_error_scale():
    """|error| 0.05 and 0.4 network units: the same colour limits (0 to ERROR_MAX, output units),
    where the old figures ranged each to its own 99.5th percentile."""
    small, large = spec_of(0.05, seed=1), spec_of(0.4, seed=2)
    assert small.scales["error"] == large.scales["error"] == (0.0, ERROR_MAX)
    for spec, expected in ((small, 0.05), (large, 0.4)):
        error = next(v for title, v, kind in spec.columns if kind == "error")
        inside = error[:, 5:11, 5:11]  # away from the clip at 1
        assert float(np.median(inside)) == pytest.approx(expected * figures.PER_NETWORK_UNIT, rel=1e-3)  # float32
        drawn = images_by_cmap(draw_subject(spec), "inferno")
        assert len(drawn) == len(spec.rows) and {im.get_clim() for im in drawn} == {(0.0, ERROR_MAX)}


def test_half_width_shares_the_error_scale_and_units():
    image = head_volume(0)
    spec = spec_of(0.1, half_width=np.full_like(image, 0.05))
    kinds = {title: kind for title, _, kind in spec.columns}
    assert kinds["|error| (0–1000)"] == kinds["half-width (0–1000)"] == "error"
    fig = draw_subject(spec)
    assert {im.get_clim() for im in images_by_cmap(fig, "inferno")} == {(0.0, ERROR_MAX)}
    bars = [t for t in texts(fig) if t == spec.colourbar_labels["error"]]
    assert len(bars) == 2 and "0–1000" in bars[0]  # one colour bar under each, with the units


def test_left_and_right_are_marked_where_they_are(tmp_path):
    """A NIfTI stored RAS (x grows to the patient's right) with a bright block on the patient's left:
    loaded as every command loads it, the block is drawn on the side marked 'L'."""
    from tsf_trt.files.volume import load_volume

    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    data = np.zeros((16, 16, 4), np.float32)  # (x, y, z), x = 0 is the patient's far left
    data[2:6, 2:14, :] = 100.0
    data[6:14, 2:14, :] = 10.0
    volume = load_volume(write_nifti(tmp_path / "ras.nii.gz", data, ras)).data
    image = volume / 50.0 - 1.0  # canonical (z, y, x), in [-1, 1]
    block_columns = np.flatnonzero((image[1] > 0.5).any(axis=0))
    spec = subject_spec(inputs={"t1": image}, synthesis=image, truth=None, tsem=None, weights=None, title="x",
                        slices=[1])
    on_left, on_right = spec.markers
    assert (on_left, on_right) == ("R", "L")
    assert block_columns.min() > SHAPE[2] // 2  # the patient's left is drawn on the right...
    fig = draw_subject(spec)
    first = fig.axes[0]
    marks = {t.get_text(): t.get_position()[0] for t in first.texts}
    assert marks["L"] > 0.5 > marks["R"]  # ...where 'L' is written
    assert "the patient's right (R) on the left" in spec.note


def test_tsem_overlay_is_the_stated_top_percent():
    rng = np.random.default_rng(3)
    image = head_volume(0)
    tsem = rng.random(SHAPE).astype(np.float32) * 0.1
    head = image > -1
    spec = spec_of(0.1, tsem=tsem, head=head)
    expected = float(np.percentile(tsem[head], 99))  # the paper's top 1 % (tsf_trt.metrics.tsem_regions)
    assert spec.tsem_threshold == pytest.approx(expected)
    assert f"{expected:.3g}" in spec.note and "top 1 % region of Table 2" in spec.note
    fig = draw_subject(spec)
    overlays = images_by_cmap(fig, "autumn")
    assert len(overlays) == len(spec.rows)
    for z, im in zip(spec.rows, overlays):
        shown = ~np.ma.getmaskarray(im.get_array())
        assert np.array_equal(shown, head[z] & (tsem[z] > expected))  # only the head's top region is drawn
        assert im.get_clim() == (0.0, figures.TSEM_MAX)
    top = int((head & (tsem > expected)).sum())
    assert 0 < top <= 0.01 * head.sum()  # 1 % of the head over the whole volume (TSEM's values all differ)
    assert (tsem[~head] > expected).any()  # a case where TSEM outside the head would have shown
    assert any("TSEM, network units" in t for t in texts(fig))


def test_rows_are_labelled_one_way_and_the_title_carries_the_scores():
    spec = spec_of(0.1, slice_numbers=[40, 46], title=scored_title("Sub", "T1->T2", 27.123, 0.81234, "(demo)"))
    assert spec.row_labels == ["axial z 40", "axial z 46"]
    assert spec_of(0.1).row_labels == ["axial z 1", "axial z 2"]
    assert spec.title == "Sub: T1->T2   PSNR 27.12 dB, SSIM 0.812 (head)  (demo)"
    assert scored_title("Sub", "T1->T2") == "Sub: T1->T2"  # no truth, no scores
    fig = draw_subject(spec)
    assert fig.axes[0].get_ylabel() == "axial z 40" and spec.title in texts(fig)
    with pytest.raises(ValueError, match="slice numbers"):
        spec_of(0.1, slice_numbers=[1])


def test_demo_figure_has_its_scores_in_the_title(small_model_dir, tmp_path, monkeypatch, one_torch_thread):
    """The demo runs on a phantom, so the truth is known: the title carries the PSNR/SSIM it prints."""
    from tsf_trt.runs.demo import run_demo
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.pipeline import Synthesizer

    drawn = []  # the figures, not rendered (rendering is what matplotlib tests; a PNG costs ~1.5 s here)
    monkeypatch.setattr(figures, "save_png", lambda fig, path, **kw: drawn.append(fig) or Path(path))
    scores = run_demo(Synthesizer(small_model_dir, RunOptions(backend="torch")), tmp_path / "demo",
                      shape=(24, 24, 12))
    assert len(drawn) == len(scores) == 2
    for fig, score in zip(drawn, scores):
        said = texts(fig)
        assert f"PSNR {score.psnr:.2f} dB, SSIM {score.ssim:.3f}" in fig.get_suptitle(), fig.get_suptitle()
        assert all(label.startswith("axial z ") for label in (ax.get_ylabel() for ax in fig.axes) if label)
        assert "R" in said and "L" in said
