"""The BIDS App (`tsf-trt bids BIDS_DIR OUTPUT_DIR participant|group`, tsf_trt/cli/bids_app.py):
the positional interface end to end on a tiny dataset, as `infer --bids` writes it; participant
labels with and without `sub-` in the BIDS Apps' spelling; a session label; fMRIPrep's filter
file choosing among two T1w runs; the group level's table; every refusal one line before the
model loads; `infer` called the BIDS App way pointed to it; two processes with different labels
sharing one output folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FAST, SHAPE, assert_clean_error, cli, files_under, make_head, write_nifti
from tsf_trt.inputs.bids_derivatives import RECORD_FOLDER

#: The console script a container runs (pyproject [project.scripts]).
BIDS_SCRIPT = Path(sys.executable).with_name("tsf-trt-bids")


def _dataset(root: Path) -> Path:
    """sub-01 in ses-pre (two T1w runs, FLAIR), sub-02 in ses-pre and ses-post (T1w, FLAIR): every head different."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    seed = 0
    for anat, stem, names in ((root / "sub-01/ses-pre/anat", "sub-01_ses-pre", ("run-1_T1w", "run-2_T1w", "FLAIR")),
                              (root / "sub-02/ses-pre/anat", "sub-02_ses-pre", ("T1w", "FLAIR")),
                              (root / "sub-02/ses-post/anat", "sub-02_ses-post", ("T1w", "FLAIR"))):
        for name in names:
            write_nifti(anat / f"{stem}_{name}.nii.gz", make_head(SHAPE, seed=seed))
            seed += 1
    return root


@pytest.fixture(scope="module")
def app_run(tmp_path_factory, small_model_dir):
    """(raw, derivative, work dir, result) of one participant-level call as a BIDS App user types it."""
    import torch

    top = tmp_path_factory.mktemp("bids_app")
    raw = _dataset(top / "raw")
    # run 2 where there are runs, the image without a run- entity elsewhere
    (top / "filter.json").write_text(json.dumps({"t1w": {"datatype": "anat", "run": [2, None]},
                                                 "bold": {"task": "rest"}}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TSF_TRT_CACHE", str(top / "cache"))  # --work-dir sets it: restored afterwards
            result = cli("bids", raw, top / "out", "participant", "--participant_label", "01", "sub-02",
                         "--session-label", "ses-pre", "--bids-filter-file", top / "filter.json", "--target", "t2",
                         "--model", small_model_dir, "--backend", "torch", "--precision", "fp32", "--omp-nthreads", "1",
                         "-w", top / "work")
    finally:
        torch.set_num_threads(threads)
    return raw, top / "out", top / "work", result


def test_participant_level_writes_the_derivative_of_the_chosen_subjects_and_session(app_run) -> None:
    raw, out, work, result = app_run
    assert result.exit_code == 0, result.output
    assert "2 done, 0 skipped" in result.stdout
    assert (out / "dataset_description.json").is_file() and (out / ".bidsignore").is_file()
    synths = sorted(p.relative_to(out).as_posix() for p in out.rglob("*_desc-tsfsynth_T2w.nii.gz"))
    assert synths == ["sub-01/ses-pre/anat/sub-01_ses-pre_desc-tsfsynth_T2w.nii.gz",
                      "sub-02/ses-pre/anat/sub-02_ses-pre_desc-tsfsynth_T2w.nii.gz"]  # not ses-post
    record = json.loads((out / RECORD_FOLDER / "sub-01_ses-pre_t2.json").read_text())
    assert Path(record["sources"]["t1"]).name == "sub-01_ses-pre_run-2_T1w.nii.gz"  # the filter file chose run 2
    record = json.loads((out / RECORD_FOLDER / "sub-02_ses-pre_t2.json").read_text())
    assert Path(record["sources"]["t1"]).name == "sub-02_ses-pre_T1w.nii.gz"  # null: the one without run-
    assert "run-1_T1w.nii.gz (not selected: run-1 (--bids-filter t1.run=2|))" in result.stderr
    assert "bold" in result.stderr  # fMRIPrep's other query: skipped, said so
    assert work.is_dir() and not any(raw.rglob("*tsfsynth*"))  # nothing written into the raw dataset


def test_participant_level_is_infer_bids(app_run, small_model_dir, tmp_path, one_torch_thread) -> None:
    """`infer --bids -o` with the same choice writes the same files: one path, one layout."""
    raw, out, _, _ = app_run
    result = cli("infer", "--bids", raw, "-o", tmp_path / "deriv", "--participant-label", "01,02",
                 "--session-label", "pre", "--bids-filter", "t1.run=2|", "--target", "t2", "--model", small_model_dir,
                 *FAST,
                 "--precision", "fp32")
    assert result.exit_code == 0, result.output

    def names(root: Path) -> list[str]:
        return files_under(root)

    assert names(tmp_path / "deriv") == names(out)


def test_group_level_writes_the_cohort_table(app_run) -> None:
    raw, out, _, _ = app_run
    result = cli("bids", raw, out, "group")
    assert result.exit_code == 0, result.output
    rows = (out / "tsf-trt_t2.tsv").read_text().splitlines()
    assert len(rows) == 3 and all("\tdone\t" in row for row in rows[1:])
    assert_clean_error(cli("bids", raw, out, "group", "--participant-label", "01"), "--participant-label",
                       "participant level")


def test_refusals_are_one_line_before_the_model_loads(tmp_path, no_model_load) -> None:
    raw = _dataset(tmp_path / "raw")
    bad = tmp_path / "bad.json"
    bad.write_text('{"t1w": {"run": 1},')
    called = ("--target", "t2", "--backend", "torch")
    assert_clean_error(cli("bids", raw, tmp_path / "o", "participant", "--bids-filter-file", bad, *called),
                       "bad.json", "not JSON")
    bad.write_text('{"t1w": {"session": "pre"}}')
    assert_clean_error(cli("bids", raw, tmp_path / "o", "participant", "--bids-filter-file", bad, *called),
                       "bad.json", "--session-label")
    bad.write_text('{"t1": {"echo": "x"}}')
    assert_clean_error(cli("bids", raw, tmp_path / "o", "participant", "--bids-filter-file", bad, *called),
                       "bad.json", "echo- takes an index")
    assert_clean_error(cli("bids", raw, tmp_path / "o", "participant", "--backend", "torch"), "--target", "required")
    assert_clean_error(cli("bids", raw, tmp_path / "o", "subject", *called), "analysis level 'subject'")
    assert_clean_error(cli("bids", raw, raw / "sub-01", "participant", *called), "inside the raw dataset")
    assert_clean_error(cli("bids", raw, tmp_path / "o", "participant", "--nprocs", "1", "--omp-nthreads", "2",
                           *called), "--omp-nthreads 2 is more than --nprocs 1")
    assert_clean_error(cli("bids", raw, raw, "participant", *called), "raw dataset BIDS_DIR itself")
    assert_clean_error(cli("bids", raw, tmp_path / "o", "participant", "-w", raw / "work", *called),
                       "--work-dir is inside BIDS_DIR")
    assert_clean_error(cli("bids", raw, tmp_path / "o", "participant", "--participant-label", "03", *called),
                       "sub-03")
    (raw / "sub-01/ses-pre/anat/sub-01_ses-pre_T1w_old.nii.gz").write_bytes(b"")  # breaks the BIDS rules
    message = assert_clean_error(cli("bids", raw, tmp_path / "o", "participant", *called),
                                 "not a valid BIDS dataset", "sub-01_ses-pre_T1w_old.nii.gz", "--skip-bids-validation")
    assert "1 file name" in message
    (raw / "dataset_description.json").unlink()
    assert_clean_error(cli("bids", raw, tmp_path / "o", "participant", *called), "no dataset_description.json")
    assert not (tmp_path / "o").exists() and not (raw / "work").exists()


def test_infer_called_as_a_bids_app_points_to_it(tmp_path) -> None:
    result = cli("infer", tmp_path / "bids_in", tmp_path / "bids_out", "participant", "--target", "t2")
    message = assert_clean_error(result, "BIDS App", "tsf-trt bids")
    assert f"tsf-trt bids {tmp_path / 'bids_in'} {tmp_path / 'bids_out'} participant --target t2" in message


def test_two_processes_with_different_labels_share_one_output_folder(tmp_path, small_export_dir) -> None:
    """Two array tasks as a container runs them (the console script), one participant each, at once."""
    raw = _dataset(tmp_path / "raw")
    out = tmp_path / "out"
    procs = [subprocess.Popen([str(BIDS_SCRIPT), str(raw), str(out), "participant", "--participant-label", label,
                               "--target", "t2", "--model", str(small_export_dir), "--backend", "ort", "--nprocs", "1",
                               "--bids-filter", "t1.run=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for label in ("01", "02")]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, (stdout, stderr)
    records = sorted(p.name for p in (out / RECORD_FOLDER).iterdir())
    assert records == ["sub-01_ses-pre_t2.json", "sub-02_ses-post_t2.json", "sub-02_ses-pre_t2.json"]
    assert len(list(out.rglob("*_desc-tsfsynth_T2w.nii.gz"))) == 3
    assert not [p for p in out.rglob(".*") if p.name != ".bidsignore"]  # no claim or temporary file left
    assert len((out / "tsf-trt_t2.tsv").read_text().splitlines()) == 4  # the last to end saw all three
