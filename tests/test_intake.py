"""Real data in (issue: BIDS, honest discovery, logs): the naming rule, `--map`, DICOM
folders, BIDS datasets in and derivatives out, the default output folder, and the log a
pipeline reads when stderr is a pipe."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import AFFINE_LPS, FAST, SCRIPT, cli, lps, make_head, phantom_volumes, problem_lines
from tsf_trt.errors import InputError
from tsf_trt.inputs.mapfile import read_map
from tsf_trt.inputs.naming import read_name, why_not
from tsf_trt.inputs.subjects import discover

T1, T1GD, T2, FLAIR = range(4)
SHAPE = (24, 20, 6)


def head(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(make_head(SHAPE, seed=seed), AFFINE_LPS), path)
    return path


# --- the naming rule -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("BraTS2021_00000_t1ce.nii.gz", ("BraTS2021_00000", T1GD)),
    ("BraTS-GLI-00000-000-t2f.nii.gz", ("BraTS-GLI-00000-000", FLAIR)),
    ("patient1_T1_MPRAGE.nii.gz", ("patient1", T1)),
    ("patient1_t1c.nii.gz", ("patient1", T1GD)),
    ("patient1_axial_T2_FLAIR.nii.gz", ("patient1", FLAIR)),
    ("p7_T1_post_gd.nii", ("p7", T1GD)),
    ("p7_T1_pre.nii", ("p7", T1)),
    ("p7-MPRAGE.nii.gz", ("p7", T1)),
    ("p7_T2w.nii.gz", ("p7", T2)),
    ("sub-01_ce-gadolinium_T1w.nii.gz", ("sub-01", T1GD)),
    ("c_t1.nii", ("c", T1)),  # a one-letter subject is not a contrast word
    ("flair.nii", ("", FLAIR)),
])
def test_names_that_say_their_sequence(name, expected):
    assert read_name(name) == expected


@pytest.mark.parametrize("name, why", [
    ("p1_seg.nii.gz", "segmentation"), ("p1_t2star.nii.gz", "T2*"), ("p1_t1_t2.nii.gz", "both a T1 and a T2"),
    ("p1_t2_synth.nii.gz", "tsf-trt output"), ("scan_0003.nii.gz", "--map"), ("p1_T1_pre_post.nii", "--map"),
])
def test_names_that_do_not(name, why):
    assert read_name(name) is None and why in why_not(name)


def test_the_flat_folder_of_the_issue_is_one_subject_and_drops_nothing(tmp_path):
    for name in ("patient1_T1_MPRAGE", "patient1_t1c", "patient1_axial_T2_FLAIR", "patient1_seg", "scan_0003"):
        head(tmp_path / f"{name}.nii.gz")
    found = discover(tmp_path)
    assert [(s.name, sorted(s.inputs)) for s in found.subjects] == [("patient1", [T1, T1GD, FLAIR])]
    assert [p.name for p, _ in found.subjects[0].unused] == ["patient1_seg.nii.gz"]
    assert [p.name for p, _ in found.unused] == ["scan_0003.nii.gz"]


# --- --map -------------------------------------------------------------------------------------


def test_map_file(tmp_path):
    head(tmp_path / "scans" / "a.nii.gz")
    head(tmp_path / "scans" / "b.nii.gz")
    csv = tmp_path / "map.csv"
    csv.write_text("subject,sequence,path\n# comment\np1,t1,scans/a.nii.gz\np1,FLAIR,scans/b.nii.gz\n"
                   "p2,t1,scans/gone.nii.gz\np3,t1,scans/a.nii.gz\np3,t1n,scans/b.nii.gz\n")
    p1, p2, p3 = read_map(csv)
    assert p1.inputs == {T1: tmp_path / "scans/a.nii.gz", FLAIR: tmp_path / "scans/b.nii.gz"} and p1.problem is None
    assert "gone.nii.gz" in p2.problem and "line 5" in p2.problem
    assert "given twice" in p3.problem and "line 7" in p3.problem
    csv.write_text("p1,t1\n")
    with pytest.raises(InputError, match="line 1: expected subject,sequence,path"):
        read_map(csv)
    csv.write_text("p1,pd,scans/a.nii.gz\n")
    with pytest.raises(InputError, match="line 1: unknown sequence 'pd'"):
        read_map(csv)


# --- DICOM -------------------------------------------------------------------------------------


def test_a_dicom_folder_is_refused_with_the_advice(tmp_path):
    series = tmp_path / "dicom" / "series1"
    series.mkdir(parents=True)
    (series / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    result = cli("infer", "--data", tmp_path / "dicom", "--target", "t2")
    assert result.exit_code == 1
    (line,) = problem_lines(result.stderr)
    assert "series1: holds DICOM files" in line and "dcm2niix" in line and "Preparing your data" in line
    assert not (tmp_path / "dicom" / "derivatives").exists()


# --- BIDS in, derivatives out ------------------------------------------------------------------


def make_bids(root: Path) -> Path:
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.9.0"}))
    anat = root / "sub-01" / "anat"
    for k, suffix in enumerate(("T1w", "ce-gadolinium_T1w", "FLAIR", "acq-mprage_T1w", "T2starw")):
        head(anat / f"sub-01_{suffix}.nii.gz", seed=k)
    (anat / "sub-01_T1w.json").write_text("{}")  # a sidecar: expected, never listed
    for ses in ("pre", "post"):
        for k, suffix in enumerate(("T1w", "FLAIR")):
            head(root / "sub-02" / f"ses-{ses}" / "anat" / f"sub-02_ses-{ses}_{suffix}.nii.gz", seed=k)
    return root


def test_bids_dataset_to_derivatives(tmp_path, small_model_dir):
    bids = make_bids(tmp_path / "bids")
    result = cli("infer", "--bids", bids, "--target", "t2", "--model", small_model_dir, *FAST)
    assert result.exit_code == 1, result.output  # sub-01 is ambiguous: two T1w
    problems = problem_lines(result.stderr)
    assert len(problems) == 1 and "sub-01: failed" in problems[0]
    assert "sub-01_T1w.nii.gz" in problems[0] and "sub-01_acq-mprage_T1w.nii.gz" in problems[0]
    assert "--bids-filter" in problems[0]
    assert "sub-01: not used: sub-01_T2starw.nii.gz" in result.stderr
    deriv = bids / "derivatives" / "tsf-trt"
    described = json.loads((deriv / "dataset_description.json").read_text())
    assert described["DatasetType"] == "derivative" and described["GeneratedBy"][0]["Name"] == "tsf-trt"
    for ses in ("pre", "post"):
        anat = deriv / "sub-02" / f"ses-{ses}" / "anat"
        stem = f"sub-02_ses-{ses}_desc-"
        assert sorted(p.name for p in anat.iterdir()) == [f"{stem}T2w_tsem.json", f"{stem}T2w_tsem.nii.gz",
                                                          f"{stem}tsfsynth_T2w.json", f"{stem}tsfsynth_T2w.nii.gz"]
        sidecar = json.loads((anat / f"{stem}tsfsynth_T2w.json").read_text())
        assert sidecar["Sources"] == [f"bids:raw:sub-02/ses-{ses}/anat/sub-02_ses-{ses}_T1w.nii.gz",
                                      f"bids:raw:sub-02/ses-{ses}/anat/sub-02_ses-{ses}_FLAIR.nii.gz"]
        block = sidecar["tsf-trt"]  # BIDS fields and this block; the run's record is in logs/
        assert set(block["weights"]) == {"t1", "flair"} and block["model_id"] and block["tsem"] is not None
        record = json.loads((deriv / "logs" / f"sub-02_ses-{ses}_t2.json").read_text())
        assert record["complete"] is True and record["tsem"] is not None

    result = cli("infer", "--bids", bids, "--target", "t2", "--model", small_model_dir, *FAST,
                 "--participant-label", "01", "--bids-filter", "t1.acq=mprage")
    assert result.exit_code == 0, result.output
    sidecar = json.loads((deriv / "sub-01" / "anat" / "sub-01_desc-tsfsynth_T2w.json").read_text())
    assert sidecar["Sources"][0] == "bids:raw:sub-01/anat/sub-01_acq-mprage_T1w.nii.gz"
    assert "1 done, 0 skipped" in result.stdout


def test_bids_options_need_a_bids_dataset(tmp_path):
    head(tmp_path / "p_t1.nii.gz")
    result = cli("infer", "--inputs", tmp_path / "p_t1.nii.gz", "--target", "t2", "--participant-label", "01")
    assert result.exit_code == 1 and "--participant-label is for folder mode" in problem_lines(result.stderr)[0]


# --- default output, and the log of a batch job -----------------------------------------------------


def test_default_output_is_a_derivatives_folder_and_the_log_is_one_line_per_subject(tmp_path, small_model_dir):
    data = tmp_path / "data"
    for name in ("s1", "s2"):
        head(data / name / f"{name}_t1.nii.gz")
        head(data / name / f"{name}_flair.nii.gz", seed=1)
    log = tmp_path / "logs" / "run.log"
    proc = subprocess.run([str(SCRIPT), "infer", "--data", str(data), "--target", "t2", "--model",
                           str(small_model_dir), *FAST, "--log-file", str(log)],
                          capture_output=True, text=True, timeout=300)  # pipes, as in a batch job
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (data / "s1").iterdir()) == ["s1_flair.nii.gz", "s1_t1.nii.gz"]  # nothing beside
    assert (data / "derivatives" / "tsf-trt" / "s1" / "s1_t2_synth.nii.gz").is_file()
    lines = proc.stderr.splitlines()
    assert "\x1b[" not in proc.stderr  # no bar, no colour codes in a pipe
    for name in ("s1", "s2"):
        (line,) = [line for line in lines if f" {name}: " in line]
        assert "T1,FLAIR->T2, torch fp32" in line and f"{name}_t2_synth.nii.gz" in line and " s," in line
    assert any("output: " in line and "derivatives/tsf-trt" in line for line in lines)
    assert any("loading model" in line and "done in" in line for line in lines)
    assert [line.split(" ", 1)[1] for line in log.read_text().splitlines()] == [
        line.split(" ", 1)[1] for line in lines]  # the file holds the same lines

    quiet = subprocess.run([str(SCRIPT), "infer", "--data", str(data), "--target", "t2", "--model",
                            str(small_model_dir), *FAST, "--quiet"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == "" and "0 done, 2 skipped" in quiet.stdout


# --- preprocessing checks in infer ---------------------------------------------------------------


def _phantom_files(folder: Path, voxel_mm: float, shift: int = 0) -> list[Path]:
    """T1 and FLAIR of one phantom (96 x 96 x 40 voxels of `voxel_mm`), FLAIR shifted by
    `shift` voxels along x with the same header."""
    vols = phantom_volumes()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("t1", "flair"):
        data = np.roll(vols[name], shift, axis=0) if name == "flair" else vols[name]
        paths.append(folder / f"p_{name}.nii.gz")
        nib.save(nib.Nifti1Image(data.astype(np.float32), lps(voxel_mm, data.shape)), paths[-1])
    return paths


def test_misaligned_inputs_warn_and_strict_fails(tmp_path, small_model_dir):
    t1, flair = _phantom_files(tmp_path / "in", 2.5, shift=4)
    args = ("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, *FAST,
            "-o", tmp_path / "out")
    result = cli(*args)
    assert result.exit_code == 0, result.output
    warnings = [line for line in problem_lines(result.stderr) if "WARNING" in line]
    assert any("misaligned" in line or "co-register" in line for line in warnings), result.stderr
    assert any("voxel size" in line for line in warnings), result.stderr
    report = json.loads((tmp_path / "out" / "p_t2.json").read_text())
    assert {f["kind"] for f in report["preflight"]} >= {"misaligned", "voxel-size"}
    strict = cli(*args, "--strict", "--overwrite")
    assert strict.exit_code == 1 and problem_lines(strict.stderr)[-1].startswith("error: ")


def test_resample_runs_at_1mm_and_writes_on_the_input_grid(tmp_path, small_model_dir):
    t1, flair = _phantom_files(tmp_path / "in", 2.5)
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, *FAST,
                 "-o", tmp_path / "out", "--resample")
    assert result.exit_code == 0, result.output
    assert "voxel size" not in result.stderr and "resampled to 1 mm" in result.stderr
    synth = nib.load(tmp_path / "out" / "p_t2_synth.nii.gz")
    assert synth.shape == nib.load(t1).shape and np.allclose(synth.affine, nib.load(t1).affine)
    assert json.loads((tmp_path / "out" / "p_t2.json").read_text())["resampled"] is True


def test_unused_files_of_several_subjects_are_summarised_by_reason(tmp_path, caplog):
    """One line per reason past UNUSED_LINES subjects (a run logs one line per subject, its outcome),
    with the count of files and subjects and an example; --verbose lists every subject's."""
    from types import SimpleNamespace

    from tsf_trt.cli.infer_options import UNUSED_LINES, log_unused

    subjects = [SimpleNamespace(name=f"s{i}", unused=((tmp_path / f"s{i}_seg.nii.gz", "a segmentation"),))
                for i in range(UNUSED_LINES + 2)]
    gathered = SimpleNamespace(subjects=subjects, unused=((tmp_path / "notes.nii", "no sequence in the name"),))
    intake = SimpleNamespace(root=tmp_path)
    with caplog.at_level("INFO", logger="tsf_trt"):
        log_unused(gathered, intake)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith(f"not used: {UNUSED_LINES + 2} file(s) (a segmentation) in {UNUSED_LINES + 2} "
                               "subject(s), e.g. ")
    assert lines[1].startswith("not used: 1 file(s) (no sequence in the name) in 1 subject(s)") and len(lines) == 2
    caplog.clear()
    with caplog.at_level("INFO", logger="tsf_trt"):
        log_unused(gathered, intake, verbose=True)
    assert len(caplog.records) == UNUSED_LINES + 3
    assert caplog.records[0].getMessage() == "s0: not used: s0_seg.nii.gz (a segmentation)"
