"""The CLI's "bad input" contract for what it reads: input files, sequences and tasks, folders.

Every bad input ends with exit code 1 (2 for Click's own usage errors), one error line on
stderr that names the offending file and the problem, no traceback, and nothing new in
the output folder (not even a hidden temp file). Good inputs write the three outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import (AFFINE_LPS, SHAPE, assert_clean_error, cli, files_under, infer, make_head, problem_lines,
                           snapshot, subject_folder, write_nifti)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the good path ------------------------------------------------------------------------


def test_success_writes_three_files_in_input_grid(case, small_model_dir):
    inp, out, t1, flair = case
    result = infer(small_model_dir, out, t1, flair)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["sub_t2.json", "sub_t2_synth.nii.gz", "sub_t2_tsem.nii.gz"]
    ref = nib.load(t1)
    for name in ("sub_t2_synth.nii.gz", "sub_t2_tsem.nii.gz"):
        img = nib.load(out / name)
        assert img.shape == SHAPE
        np.testing.assert_allclose(img.affine, ref.affine)
        assert np.isfinite(img.get_fdata()).all()
    report = json.loads((out / "sub_t2.json").read_text())
    assert report["complete"] is True
    assert set(report["weights"]) == {"t1", "flair"}
    assert sum(report["weights"].values()) == pytest.approx(1.0, abs=1e-5)
    assert report["tsem"] is not None


def test_success_lists_each_output_on_one_line(case, small_model_dir, tmp_path):
    inp, out, t1, flair = case
    out = tmp_path / ("a_rather_long_output_folder_name_" * 3) / "out"
    result = infer(small_model_dir, out, t1, flair)
    assert result.exit_code == 0, result.output
    for name in ("sub_t2_synth.nii.gz", "sub_t2_tsem.nii.gz", "sub_t2.json"):
        assert f"  wrote {out / name}" in result.stdout.splitlines(), result.stdout


def test_4d_with_one_volume_works(case, small_model_dir):
    inp, out, t1, flair = case
    four = write_nifti(inp / "four_t1.nii.gz", make_head(SHAPE)[..., None])
    result = infer(small_model_dir, out, four)
    assert result.exit_code == 0, result.output
    assert nib.load(out / "four_t2_synth.nii.gz").shape == SHAPE


# --- bad input files -----------------------------------------------------------------------


def _text(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n")
    return path


def _truncated(path: Path) -> Path:
    full = write_nifti(path, make_head(SHAPE))
    data = full.read_bytes()
    full.write_bytes(data[: int(len(data) * 0.6)])
    return path


def _array(data):
    return lambda path: write_nifti(path, data)


def _with(index, value):
    data = make_head(SHAPE)
    data[index] = value
    return _array(data)


BAD_FILES = {
    # id: (file name, writer, words the message must hold)
    "text-as-nii": ("x_t1.nii.gz", _text, ["not a readable NIfTI"]),
    "truncated": ("cut_t1.nii.gz", _truncated, ["truncated or corrupt"]),
    "2d": ("flat_t1.nii.gz", _array(make_head(SHAPE)[..., 0]), ["2D", "3D volume expected"]),
    "5d": ("five_t1.nii.gz", _array(make_head(SHAPE)[..., None, None].repeat(2, axis=4)), ["5D"]),
    "4d-two-volumes": ("four_t1.nii.gz", _array(np.stack([make_head(SHAPE)] * 2, axis=3)), ["4D with 2 volumes"]),
    "nan": ("nan_t1.nii.gz", _with((20, 18, 6), np.nan), ["NaN or infinite"]),
    "inf": ("inf_t1.nii.gz", _with((20, 18, 6), np.inf), ["NaN or infinite"]),
    "zeros": ("zero_t1.nii.gz", _array(np.zeros(SHAPE, np.float32)), ["all voxels are equal", "value 0"]),
    "fives": ("five_t1.nii.gz", _array(np.full(SHAPE, 5.0, np.float32)), ["all voxels are equal", "value 5"]),
}


@pytest.mark.parametrize("name, writer, words", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_input_file(case, small_model_dir, name, writer, words):
    inp, out, t1, flair = case
    bad = writer(inp / name)
    result = infer(small_model_dir, out, bad, flair)
    assert_clean_error(result, name, *words)
    assert files_under(out) == []


def test_missing_input_file(case, small_model_dir):
    inp, out, t1, flair = case
    result = infer(small_model_dir, out, inp / "gone_t1.nii.gz", flair)
    assert_clean_error(result, "gone_t1.nii.gz", "file not found")
    assert files_under(out) == []


def test_txt_file_given_explicitly_is_not_nifti(case, small_model_dir):
    inp, out, t1, flair = case
    txt = _text(inp / "sub_t1.txt")
    result = infer(small_model_dir, out, f"t1={txt}", flair)
    assert_clean_error(result, "sub_t1.txt", "not a NIfTI file")
    assert files_under(out) == []


def test_txt_file_by_name(case, small_model_dir):
    inp, out, t1, flair = case
    txt = _text(inp / "sub_t1.txt")
    result = infer(small_model_dir, out, txt, flair)
    assert_clean_error(result, "sub_t1.txt", "not a NIfTI file")
    assert files_under(out) == []


def test_failed_run_leaves_no_output_folder_it_created(case, small_model_dir, tmp_path):
    inp, out, t1, flair = case
    fresh = tmp_path / "fresh"
    result = infer(small_model_dir, fresh / "deep", t1, inp / "gone_flair.nii.gz")
    assert_clean_error(result, "gone_flair.nii.gz")  # caught before anything is created
    assert not fresh.exists()
    flat = write_nifti(inp / "flat_flair.nii.gz", np.full((40, 36, 12), 5.0, np.float32))
    result = infer(small_model_dir, fresh / "deep", t1, flat)
    assert_clean_error(result, "flat_flair.nii.gz", "all voxels are equal")  # caught after the model loaded
    assert not fresh.exists()


def test_shapes_disagree(case, small_model_dir):
    inp, out, t1, flair = case
    small = write_nifti(inp / "other_flair.nii.gz", make_head((40, 36, 10), seed=1))
    result = infer(small_model_dir, out, t1, small)
    assert_clean_error(result, "other_flair.nii.gz", "sub_t1.nii.gz", "shape differs")
    assert files_under(out) == []


def test_affines_disagree(case, small_model_dir):
    inp, out, t1, flair = case
    shifted = AFFINE_LPS.copy()
    shifted[0, 3] += 5.0
    moved = write_nifti(inp / "moved_flair.nii.gz", make_head(SHAPE, seed=1), shifted)
    result = infer(small_model_dir, out, t1, moved)
    message = assert_clean_error(result, "moved_flair.nii.gz", "sub_t1.nii.gz", "affine differs")
    assert "5" in message
    assert files_under(out) == []


# --- bad sequences and tasks -----------------------------------------------------------------


def test_same_sequence_twice(case, small_model_dir):
    inp, out, t1, flair = case
    other = write_nifti(inp / "other.nii.gz", make_head(SHAPE, seed=3))
    result = infer(small_model_dir, out, t1, f"t1={other}")
    assert_clean_error(result, "other.nii.gz", "sub_t1.nii.gz", "T1 is given twice")
    assert files_under(out) == []


def test_unknown_sequence_name(case, small_model_dir):
    inp, out, t1, flair = case
    result = infer(small_model_dir, out, t1, f"foo={flair}")
    assert_clean_error(result, "sub_flair.nii.gz", "unknown sequence 'foo'", "t1, t1gd, t2, flair")
    assert files_under(out) == []


def test_file_name_without_sequence(case, small_model_dir):
    inp, out, t1, flair = case
    brain = write_nifti(inp / "brain.nii.gz", make_head(SHAPE))
    result = infer(small_model_dir, out, brain, flair)
    assert_clean_error(result, "brain.nii.gz", "cannot tell the sequence", "t1=PATH")
    assert files_under(out) == []


def test_unknown_target(case, small_model_dir):
    """--target is a choice: click's usage error (exit 2) names the value and the sequences."""
    inp, out, t1, flair = case
    result = infer(small_model_dir, out, t1, flair, target="pd")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--target" in result.stderr and "'pd' is not one of" in result.stderr and "'flair'" in result.stderr
    assert files_under(out) == []


def test_target_among_inputs(case, small_model_dir):
    inp, out, t1, flair = case
    result = infer(small_model_dir, out, t1, flair, target="flair")
    assert_clean_error(result, Path(flair).name, "is the target FLAIR itself")
    assert files_under(out) == []


def test_missing_target_is_a_usage_error(case, small_model_dir):
    inp, out, t1, flair = case
    result = cli("infer", "--inputs", t1, "--model", small_model_dir, "-o", out)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "--target" in result.stderr
    assert files_under(out) == []


# --- folder mode -----------------------------------------------------------------------------


def test_folder_with_one_bad_subject_and_resume(tmp_path, small_model_dir):
    data, out = subject_folder(tmp_path / "data"), tmp_path / "out"
    _truncated(data / "sub02" / "sub02_t1.nii.gz")
    args = ("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out)

    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    # Rich folds long lines at 80 columns here (see test_folder_failure_is_one_line): read
    # the message with line breaks removed.
    assert result.stderr.count("failed") == 1, result.stderr
    assert "sub02: failed:" in result.stderr
    assert "sub02_t1.nii.gz" in result.stderr.replace("\n", "")
    assert "truncated or corrupt" in " ".join(result.stderr.split())
    assert "2 done, 0 skipped (already complete), 1 failed" in result.stdout
    for name in ("sub01", "sub03"):
        assert sorted(os.listdir(out / name)) == [f"{name}_t2.json", f"{name}_t2_synth.nii.gz",
                                                  f"{name}_t2_tsem.nii.gz"]
    assert files_under(out / "sub02") == []
    written = snapshot(out)

    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "0 done, 2 skipped (already complete), 1 failed" in result.stdout
    assert "sub02_t1.nii.gz" in result.stderr.replace("\n", "")
    assert snapshot(out) == written  # the finished subjects were not touched


def test_folder_failure_is_one_line(tmp_path, small_model_dir):
    data, out = subject_folder(tmp_path / "data", ["sub01", "sub02"]), tmp_path / "out"
    _truncated(data / "sub02" / "sub02_t1.nii.gz")
    result = cli("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out)
    assert result.exit_code == 1, result.output
    failed = problem_lines(result.stderr)
    assert len(failed) == 1 and "ERROR   sub02: failed: " in failed[0], result.stderr
    assert "sub02_t1.nii.gz" in failed[0] and "truncated or corrupt" in failed[0], result.stderr


def test_folder_shards_cover_every_subject_once(tmp_path, small_model_dir):
    data = subject_folder(tmp_path / "data")
    done = []
    for i in (1, 2):
        out = tmp_path / f"out{i}"
        result = cli("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out,
                     "--shard", f"{i}/2")
        assert result.exit_code == 0, result.output
        done += [p.name for p in out.iterdir() if (p / f"{p.name}_t2.json").is_file()]
    assert sorted(done) == ["sub01", "sub02", "sub03"]


@pytest.mark.parametrize("spec", ["0/2", "3/2", "x"])
def test_folder_bad_shard(tmp_path, small_model_dir, spec):
    data, out = subject_folder(tmp_path / "data", ["sub01"]), tmp_path / "out"
    result = cli("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--shard", spec)
    assert_clean_error(result, "--shard", spec)
    assert files_under(out) == []


def test_nnunet_folder_needs_channels(tmp_path, small_model_dir):
    data, out = tmp_path / "nnunet", tmp_path / "out"
    for case_name in ("case1", "case2"):
        for channel in (0, 1):
            write_nifti(data / f"{case_name}_{channel:04d}.nii.gz", make_head(SHAPE, seed=channel))
    result = cli("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out)
    assert_clean_error(result, "nnunet", "nnU-Net", "--channels")
    assert files_under(out) == []
