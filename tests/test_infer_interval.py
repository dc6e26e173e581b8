"""`tsf-trt infer` applies a calibration (issue 24): the interval half-width map and the report's
"interval" block where the guarantee applies, and a plain "it does not apply, because ..." with no
half-width map everywhere else; another model's calibration is refused before the model loads.

The calibrations are built here from Calibration / TaskCalibration objects (not by `calibrate`), so
that λ and the heuristic are known and the half-width can be checked by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import (FAST, SHAPE, assert_clean_error, cli, files_under, hidden_files, lps, make_head,
                           subject_folder, wide_inputs, write_nifti)
from tsf_trt.uncertainty.calibration import STATEMENT, Calibration, TaskCalibration, write_calibration
from tsf_trt.uncertainty.heuristic import Heuristic, edge_map

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TASK = "t1,flair->t2"        # what write_pair's inputs make with --target t2
LAM, C0, C1 = 2.0, 0.01, 1.0  # half-width = λ·(c0 + c1·feature), network units
LOADING = "loading model"     # the log line of the model's load (cli/infer.py _synthesizer)


def _model_id(model: Path) -> str:
    from tsf_trt.synthesis.source import ModelSource

    return ModelSource.resolve(model).model_id


def _calibration(path: Path, model_id: str, features: tuple[str, ...] = ("edge",), *, task: str = TASK,
                 voxel_mm: tuple[float, float] = (0.9, 1.1), flag_above: float = 1e9) -> Path:
    entry = TaskCalibration(Heuristic(features, (C0, *[C1] * len(features))), LAM, 20, 0.09, flag_above, 0.2)
    write_calibration(Calibration(model_id, 0.1, {task: entry}, voxel_mm, inputs=wide_inputs()), path,
                      overwrite=True)
    return path


def _report(out: Path, stem: str = "sub_t2") -> dict:
    return json.loads((out / f"{stem}.json").read_text())


def _data(path: Path) -> np.ndarray:
    from tsf_trt.files.volume import load_volume

    return load_volume(path).data


def test_the_half_width_map_is_lambda_times_u_in_output_units(tmp_path, case, small_model_dir):
    inp, out, t1, flair = case
    cal = _calibration(tmp_path / "cal.json", _model_id(small_model_dir))
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--calibration", cal, *FAST)
    assert result.exit_code == 0, result.output
    report = _report(out)
    block = report["interval"]
    assert block["applies"] is True and block["calibration"] == str(cal) and block["alpha"] == 0.1
    assert block["statement"] == STATEMENT and block["lambda"] == LAM and block["features"] == ["edge"]
    assert block["half_width_file"] == "sub_t2_halfwidth.nii.gz" and block["flag_above"] == 1e9
    assert block["flagged"] is False and block["score"] == block["mean_half_width_head"]
    assert "qc" not in report  # the old flag does not compete
    assert report["outputs"]["halfwidth"] == "sub_t2_halfwidth.nii.gz"

    # By hand: the synthesis file back in network units, its in-plane gradient, λ·(c0 + c1·edge)·500.
    image = _data(out / "sub_t2_synth.nii.gz") / 500.0 - 1.0
    expected = LAM * (C0 + C1 * edge_map(image)) * 500.0
    written = nib.load(out / "sub_t2_halfwidth.nii.gz")
    assert written.get_data_dtype() == np.float32
    half_width = _data(out / "sub_t2_halfwidth.nii.gz")
    # The synthesis file holds (x + 1)·500 in float32: recovering x costs ~1e-7 per voxel, which the
    # gradient and ×λ·500 turn into ~1e-3 output units at most; 1e-2 leaves room, and a missing
    # ×500 or λ is off by far more.
    np.testing.assert_allclose(half_width, expected, atol=1e-2)
    assert half_width.min() >= LAM * C0 * 500.0 - 1e-3  # never narrower than the offset allows
    head = (_data(t1) > 0) | (_data(flair) > 0)
    # The report's mean is over the network's grid (the same grid here): float32 sums, so 1e-4 relative.
    assert block["mean_half_width_head"] == pytest.approx(float(half_width[head].mean()), rel=1e-4)
    assert "interval ±" in result.stdout and "(α 0.1)" in result.stdout


def test_a_calibration_for_another_model_is_refused_before_the_model_loads(tmp_path, case, small_model_dir,
                                                                           no_model_load):
    inp, out, t1, flair = case
    cal = _calibration(tmp_path / "cal.json", "another-model")
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--calibration", cal, *FAST)
    assert_clean_error(result, str(cal), "another-model", _model_id(small_model_dir))
    assert LOADING not in result.stderr and files_under(out) == []


def test_the_models_own_calibration_is_used_and_refused_when_it_is_another_models(tmp_path, case,
                                                                                    small_model_dir):
    inp, out, t1, flair = case
    model = shutil.copytree(small_model_dir, tmp_path / "model")
    own = _calibration(model / "calibration.json", _model_id(model))
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", model, "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    assert _report(out)["interval"]["calibration"] == str(own) and (out / "sub_t2_halfwidth.nii.gz").is_file()

    # --calibration none turns it off: no interval, and the earlier run's map goes with --overwrite
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", model, "-o", out, "--overwrite",
                 "--calibration", "none", *FAST)
    assert result.exit_code == 0, result.output
    block = _report(out)["interval"]
    assert block["applies"] is False and block["why"].startswith("no calibration:") and block["calibration"] is None
    assert not (out / "sub_t2_halfwidth.nii.gz").exists() and "no calibrated interval" in result.stdout

    _calibration(model / "calibration.json", "another-model")
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", model, "-o", tmp_path / "out2", *FAST)
    assert_clean_error(result, str(own), "another-model", "--calibration none")
    assert LOADING not in result.stderr


@pytest.mark.parametrize("text, words", [
    ("{not json", ("not a readable JSON file",)),
    ('{"format": "tsf-trt-qc"}', ("not a calibration",)),
    (None, ("alpha",)),
])
def test_a_damaged_calibration_is_one_line_naming_it(tmp_path, case, small_model_dir, no_model_load, text, words):
    inp, out, t1, flair = case
    cal = _calibration(tmp_path / "cal.json", _model_id(small_model_dir))
    if text is None:
        cal.write_text(cal.read_text().replace('"alpha": 0.1', '"alpha": 1.5'))
    else:
        cal.write_text(text)
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--calibration", cal, *FAST)
    assert_clean_error(result, str(cal), *words)
    missing = cli("infer", "--inputs", t1, flair, "--target", "t2", "-o", out, "--calibration", tmp_path / "none.json")
    assert_clean_error(missing, str(tmp_path / "none.json"), "no such file")


def test_a_task_not_calibrated_gets_no_interval(tmp_path, case, small_model_dir):
    inp, out, t1, flair = case
    cal = _calibration(tmp_path / "cal.json", _model_id(small_model_dir), task="t1->t2")
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--calibration", cal, *FAST)
    assert result.exit_code == 0, result.output
    report = _report(out)
    assert report["interval"] == {"applies": False, "calibration": str(cal),
                                  "why": "task t1,flair->t2 was not calibrated (this calibration holds t1->t2)"}
    assert report["outputs"]["halfwidth"] is None and "qc" not in report  # no other flag in its place
    assert sorted(files_under(out)) == ["sub_t2.json", "sub_t2_synth.nii.gz", "sub_t2_tsem.nii.gz"]
    assert "no calibrated interval: task t1,flair->t2 was not calibrated" in result.stdout


@pytest.mark.parametrize("voxel_range, why", [
    ((0.9, 1.1), "outside the calibration subjects' 0.9-1.1 mm"),
    ((0.5, 3.0), "the inputs differ from the calibration subjects"),  # in range, but preflight's finding
])
def test_a_preflight_finding_means_the_guarantee_does_not_apply(tmp_path, small_model_dir, voxel_range, why):
    coarse = lps(2.5, SHAPE)
    t1 = write_nifti(tmp_path / "in" / "sub_t1.nii.gz", make_head(SHAPE, seed=0), coarse)
    flair = write_nifti(tmp_path / "in" / "sub_flair.nii.gz", make_head(SHAPE, seed=1), coarse)
    cal = _calibration(tmp_path / "cal.json", _model_id(small_model_dir), voxel_mm=voxel_range)
    out = tmp_path / "out"
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--calibration", cal, *FAST)
    assert result.exit_code == 0, result.output
    block = _report(out)["interval"]
    assert block["applies"] is False and why in block["why"] and "mean_half_width_head" not in block
    if "differ" in why:
        assert "sub_t1.nii.gz (voxel-size)" in block["why"]
    assert not (out / "sub_t2_halfwidth.nii.gz").exists()


def test_folder_mode_resumes_subjects_whose_interval_does_not_apply(tmp_path, small_model_dir):
    data = subject_folder(tmp_path / "data", ("sub01", "sub02"))
    coarse = lps(2.5, SHAPE)
    for k, seq in enumerate(("t1", "flair")):  # sub03: 2.5 mm voxels, outside the calibration's range
        write_nifti(data / "sub03" / f"sub03_{seq}.nii.gz", make_head(SHAPE, seed=10 + k), coarse)
    cal = _calibration(tmp_path / "cal.json", _model_id(small_model_dir))
    out = tmp_path / "out"
    args = ("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out,
            "--calibration", cal, *FAST)
    first = cli(*args)
    assert first.exit_code == 0, first.output
    assert "3 done" in first.stdout
    assert all((out / s / f"{s}_t2_halfwidth.nii.gz").is_file() for s in ("sub01", "sub02"))
    assert not (out / "sub03" / "sub03_t2_halfwidth.nii.gz").exists()
    assert _report(out / "sub03", "sub03_t2")["interval"]["applies"] is False
    assert "sub03" in first.stderr and "no calibrated interval: voxel sides of 2.5 mm" in first.stderr
    second = cli(*args)
    assert second.exit_code == 0, second.output
    assert "0 done, 3 skipped" in second.stdout
    # a subject whose half-width map is gone, though its report says it applies, is redone
    (out / "sub01" / "sub01_t2_halfwidth.nii.gz").unlink()
    third = cli(*args)
    assert third.exit_code == 0, third.output
    assert "1 done, 2 skipped" in third.stdout and (out / "sub01" / "sub01_t2_halfwidth.nii.gz").is_file()
    assert hidden_files(out) == []


def test_overwrite_replaces_only_tsf_trts_own_half_width_map(tmp_path, case, small_model_dir):
    inp, out, t1, flair = case
    cal = _calibration(tmp_path / "cal.json", _model_id(small_model_dir))
    args = ("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
            "--calibration", cal, *FAST)
    theirs = write_nifti(out / "sub_t2_halfwidth.nii.gz", np.ones(SHAPE, np.float32))  # a user's file
    before = theirs.read_bytes()
    refused = cli(*args, "--overwrite")
    assert_clean_error(refused, str(theirs))
    assert theirs.read_bytes() == before and sorted(files_under(out)) == ["sub_t2_halfwidth.nii.gz"]

    theirs.unlink()
    assert cli(*args).exit_code == 0
    ours = (out / "sub_t2_halfwidth.nii.gz").read_bytes()
    again = cli(*args)  # without --overwrite: nothing is replaced
    assert_clean_error(again, "exists", "--overwrite")
    assert cli(*args, "--overwrite").exit_code == 0
    assert (out / "sub_t2_halfwidth.nii.gz").read_bytes() == ours  # replaced by the same map
    # where the interval no longer applies, --overwrite removes tsf-trt's own map with the rest
    other = _calibration(tmp_path / "other.json", _model_id(small_model_dir), task="t1->t2")
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--calibration", other, "--overwrite", *FAST)
    assert result.exit_code == 0, result.output
    assert not (out / "sub_t2_halfwidth.nii.gz").exists() and _report(out)["interval"]["applies"] is False
    assert hidden_files(out) == []


def test_a_spread_heuristic_runs_the_one_to_one_syntheses(tmp_path, case, small_model_dir):
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.pipeline import Synthesizer

    inp, out, t1, flair = case
    cal = _calibration(tmp_path / "cal.json", _model_id(small_model_dir), ("spread",))
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--calibration", cal, *FAST)
    assert result.exit_code == 0, result.output
    assert _report(out)["interval"]["features"] == ["spread"]

    synth = Synthesizer(small_model_dir, RunOptions(backend="torch", threads=1))
    plain = synth.run({"t1": t1, "flair": flair}, "t2")
    both = synth.run({"t1": t1, "flair": flair}, "t2", singles=True)
    assert plain.singles is None and sorted(both.singles) == [0, 3]
    # the one-to-one syntheses are their own (not the fused image), and the fused image is unchanged
    assert all(not np.allclose(s, both.image) for s in both.singles.values())
    np.testing.assert_array_equal(both.image, plain.image)
    spread = np.mean([np.abs(s - both.image) for s in both.singles.values()], axis=0)
    # Same backend, same inputs, one process: the CLI's run repeats these numbers up to float32
    # reordering (~1e-6 network units); ×λ·500 and 1e-2 output units leave room.
    np.testing.assert_allclose(_data(out / "sub_t2_halfwidth.nii.gz"), LAM * (C0 + C1 * spread) * 500.0, atol=1e-2)


def test_a_bids_subject_gets_a_half_width_map_with_a_sidecar(tmp_path, small_model_dir):
    from tsf_trt.files.ownership import is_own_file

    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.9.0"}))
    for k, suffix in enumerate(("T1w", "FLAIR")):
        write_nifti(bids / "sub-01" / "anat" / f"sub-01_{suffix}.nii.gz", make_head(SHAPE, seed=k))
    cal = _calibration(tmp_path / "cal.json", _model_id(small_model_dir))
    result = cli("infer", "--bids", bids, "--target", "t2", "--model", small_model_dir, "--calibration", cal, *FAST)
    assert result.exit_code == 0, result.output
    deriv = bids / "derivatives" / "tsf-trt"
    anat = deriv / "sub-01" / "anat"
    names = ("T2w_halfwidth", "T2w_tsem", "tsfsynth_T2w")  # maps: suffixes of their own (tests/test_bids_schema.py)
    assert sorted(p.name for p in anat.iterdir()) == sorted(
        f"sub-01_desc-{name}{ext}" for name in names for ext in (".json", ".nii.gz"))
    sidecar = json.loads((anat / "sub-01_desc-T2w_halfwidth.json").read_text())
    assert sidecar["Sources"] == ["bids::sub-01/anat/sub-01_desc-tsfsynth_T2w.nii.gz"]
    assert "alpha 0.1" in sidecar["Description"] and sidecar["tsf-trt"]["alpha"] == 0.1
    assert all(is_own_file(anat / f"sub-01_desc-T2w_halfwidth{ext}") for ext in (".json", ".nii.gz"))
    report = json.loads((deriv / "logs" / "sub-01_t2.json").read_text())  # the run's record
    assert report["interval"]["half_width_file"] == "sub-01_desc-T2w_halfwidth.nii.gz"


def test_the_python_api_refuses_another_models_calibration(tmp_path, case, small_model_dir):
    from tsf_trt.errors import InputError
    from tsf_trt.inputs.subjects import Subject
    from tsf_trt.runs.jobs import infer_subject
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.pipeline import Synthesizer

    inp, out, t1, flair = case
    cal = _calibration(tmp_path / "cal.json", "another-model")
    request = InferRequest(2, out, calibration=cal)
    assert isinstance(request.calibration, Calibration)  # read when the request is built
    synth = Synthesizer(small_model_dir, RunOptions(backend="torch", threads=1))
    with pytest.raises(InputError, match="another-model"):
        infer_subject(synth, Subject("sub", {0: t1, 3: flair}), request)
    assert files_under(out) == []


def test_with_resample_the_half_width_goes_back_to_the_input_grid(tmp_path, small_model_dir):
    coarse = lps(2.5, SHAPE)
    t1 = write_nifti(tmp_path / "in" / "sub_t1.nii.gz", make_head(SHAPE, seed=0), coarse)
    flair = write_nifti(tmp_path / "in" / "sub_flair.nii.gz", make_head(SHAPE, seed=1), coarse)
    cal = _calibration(tmp_path / "cal.json", _model_id(small_model_dir), voxel_mm=(0.5, 3.0))
    out = tmp_path / "out"
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--calibration", cal, "--resample", *FAST)
    assert result.exit_code == 0, result.output
    report = _report(out)
    assert report["resampled"] is True and report["interval"]["applies"] is True, report["interval"]
    written = nib.load(out / "sub_t2_halfwidth.nii.gz")
    assert written.shape == nib.load(t1).shape and np.allclose(written.affine, nib.load(t1).affine)
    half_width = np.asarray(written.dataobj)
    # linear resampling mixes neighbours (and the widest value outside the view): never below the
    # offset's λ·c0·500 = 10, up to float32 rounding
    assert np.isfinite(half_width).all() and half_width.min() >= LAM * C0 * 500.0 - 1e-3


def test_combine_mean_is_not_what_was_calibrated(tmp_path, case, small_model_dir):
    inp, out, t1, flair = case
    cal = _calibration(tmp_path / "cal.json", _model_id(small_model_dir))
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--calibration", cal, "--combine", "mean", *FAST)
    assert result.exit_code == 0, result.output
    block = _report(out)["interval"]
    assert block["applies"] is False and "--combine mean" in block["why"]
    assert not (out / "sub_t2_halfwidth.nii.gz").exists()


def test_the_calibration_file_is_an_input_never_written(tmp_path, case, small_model_dir):
    """A calibration named like one of the outputs is never replaced, even with --overwrite: it is
    read by the run, so it is one of its inputs (single subject and folder mode)."""
    inp, out, t1, flair = case
    out.mkdir(parents=True, exist_ok=True)
    cal = _calibration(out / "sub_t2.json", _model_id(small_model_dir))  # where the report would go
    before = cal.read_bytes()
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--calibration", cal, "--overwrite", *FAST)
    assert_clean_error(result, str(cal), "is an input")
    assert cal.read_bytes() == before


def test_from_python_calibrate_then_infer_and_a_noisier_subject_is_outside(tmp_path, small_model_dir):
    """The whole path as a Python user takes it: calibrate on phantoms, write and read the file, infer a
    new phantom (the guarantee applies), then the same phantom with far more noise in its T1 (it does not)."""
    from tsf_trt.evaluation.calibrate import CalibrationPlan, calibrate
    from tsf_trt.evaluation.tasks import parse_task
    from tsf_trt.inputs.subjects import Subject, find_subjects
    from tsf_trt.phantoms import write_subjects
    from tsf_trt.runs.jobs import infer_subject
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.pipeline import Synthesizer

    shape = (32, 32, 16)

    def one_mm(folder: Path) -> None:  # small phantoms relabelled as 1 mm: no preflight finding
        for path in folder.rglob("*.nii.gz"):
            write_nifti(path, np.asarray(nib.load(path).dataobj), lps(1.0, shape))

    write_subjects(tmp_path / "calset", 16, seed=700, shape=shape)
    one_mm(tmp_path / "calset")
    synth = Synthesizer(small_model_dir, RunOptions(backend="torch", threads=1))
    calibration = calibrate(synth.backend, find_subjects(tmp_path / "calset"),
                            CalibrationPlan((parse_task(TASK),)))
    assert set(calibration.inputs.inputs) == {"t1", "t1gd", "t2", "flair"}
    write_calibration(calibration, tmp_path / "cal.json")
    write_subjects(tmp_path / "new", 1, seed=900, shape=shape)
    one_mm(tmp_path / "new")
    new = find_subjects(tmp_path / "new")[0]
    (tmp_path / "out").mkdir()
    request = InferRequest(2, tmp_path / "out", calibration=tmp_path / "cal.json")
    infer_subject(synth, Subject(new.name, {0: new.inputs[0], 3: new.inputs[3]}), request)
    interval = _report(tmp_path / "out", f"{new.name}_t2")["interval"]
    assert interval["applies"] is True, interval
    assert (tmp_path / "out" / f"{new.name}_t2_halfwidth.nii.gz").is_file()

    t1 = nib.load(new.inputs[0])
    data = np.asarray(t1.dataobj, dtype=np.float32)
    rng = np.random.default_rng(0)
    noisy = np.where(data > 0, data + rng.normal(0, 0.2 * np.percentile(data[data > 0], 99), data.shape), 0)
    noisy_t1 = write_nifti(tmp_path / "noisy" / "t1.nii.gz", np.abs(noisy).astype(np.float32), t1.affine)
    infer_subject(synth, Subject("noisy", {0: noisy_t1, 3: new.inputs[3]}), request)
    interval = _report(tmp_path / "out", "noisy_t2")["interval"]
    assert interval["applies"] is False and "t1 input's noise level" in interval["why"]
    assert not (tmp_path / "out" / "noisy_t2_halfwidth.nii.gz").exists()
