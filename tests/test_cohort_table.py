"""The cohort table (tsf_trt.runs.table): one TSV per output folder and target, rebuilt from the
subjects' reports by every folder run that ends, and on demand by `tsf-trt table`."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import (FAST, SCRIPT, SHAPE, assert_clean_error, cli, cohort, make_head, subject_folder,
                           write_nifti)
from tsf_trt.runs.table import COLUMNS, table_path, write_table

T2 = 2


def _rows(path: Path) -> list[dict[str, str]]:
    """The table read back as the csv module reads a TSV: the header must be COLUMNS."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def _truncated(path: Path) -> None:
    data = write_nifti(path, make_head(SHAPE)).read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


@pytest.fixture(scope="module")
def synth(small_model_dir):
    """One torch Synthesizer on one thread for the library-level runs (torch's thread count restored)."""
    import torch

    from tsf_trt.synthesis.options import RunOptions
    from tsf_trt.synthesis.pipeline import Synthesizer

    before = torch.get_num_threads()
    yield Synthesizer(small_model_dir, RunOptions(backend="torch", threads=1))
    torch.set_num_threads(before)


def _run(synth, subjects, out: Path):
    from tsf_trt.runs.jobs import infer_folder
    from tsf_trt.runs.request import InferRequest

    return infer_folder(synth, subjects, InferRequest(T2, output=out), prefetch=False)


def _subjects(data: Path):
    from tsf_trt.inputs.subjects import find_subjects

    return find_subjects(data)


def test_folder_run_leaves_the_table_with_each_subject_and_its_failure(tmp_path, small_model_dir, synth):
    data, out = subject_folder(tmp_path / "data"), tmp_path / "out"
    _truncated(data / "sub02" / "sub02_t1.nii.gz")
    args = ("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out, *FAST)
    assert cli(*args).exit_code == 1  # sub02 failed
    table = table_path(out, T2)
    assert table.name == "tsf-trt_t2.tsv"
    rows = _rows(table)
    assert [(r["subject"], r["status"]) for r in rows] == [("sub01", "done"), ("sub02", "failed"), ("sub03", "done")]
    for row in (rows[0], rows[2]):
        report = json.loads((out / row["report"]).read_text())
        assert row["report"] == f"{row['subject']}/{row['subject']}_t2.json"
        assert (out / row["synth"]).is_file() and row["synth"].endswith("_t2_synth.nii.gz")
        assert (row["session"], row["task"], row["target"], row["error"]) == ("", "T1,FLAIR->T2", "t2", "")
        assert (row["model_id"], row["backend"]) == (report["model_id"], report["backend"])
        assert row["precision"] == report["precision"]["ran"] and row["tsf_trt_version"] == report["tsf_trt_version"]
        # exact: each number is written as its shortest repr, which reads back as the same float
        assert float(row["weight_t1"]) == report["weights"]["t1"]
        assert float(row["weight_flair"]) == report["weights"]["flair"]
        assert row["weight_t1gd"] == row["weight_t2"] == ""  # not inputs
        assert float(row["tsem_mean_head"]) == report["tsem"]["mean_head"]
        assert float(row["tsem_p99_head"]) == report["tsem"]["p99_head"]
        assert float(row["seconds"]) == report["timings_s"]["total"]
        # no calibration: why not, and no number that looks calibrated
        assert row["interval_applies"] == "false" and row["interval_why"].startswith("no calibration")
        assert row["interval_mean_half_width"] == row["interval_score"] == row["interval_flagged"] == ""
    failed = rows[1]
    assert "sub02_t1.nii.gz" in failed["error"] and "truncated or corrupt" in failed["error"]
    assert failed["target"] == "t2" and failed["report"] == failed["synth"] == failed["weight_t1"] == ""

    before = (table.read_bytes(), table.stat().st_mtime_ns)
    assert _run(synth, _subjects(data), out).count("failed") == 1  # resumed: 2 skipped, sub02 fails again
    assert (table.read_bytes(), table.stat().st_mtime_ns) == before  # same rows: the same bytes, not rewritten

    write_nifti(data / "sub02" / "sub02_t1.nii.gz", make_head(SHAPE, seed=2))  # mended
    assert _run(synth, _subjects(data), out).count("done") == 1
    assert [(r["subject"], r["status"]) for r in _rows(table)] == [("sub01", "done"), ("sub02", "done"),
                                                                   ("sub03", "done")]


def test_runs_finishing_in_either_order_leave_the_complete_table(tmp_path, synth):
    data = subject_folder(tmp_path / "data", ["a1", "b2", "c3", "d4"])
    subjects = _subjects(data)
    halves = (subjects[0::2], subjects[1::2])
    for first, second in ((0, 1), (1, 0)):
        out = tmp_path / f"out{first}"
        summary = _run(synth, halves[first], out)
        assert summary.table == table_path(out, T2)  # Python callers get it too
        # the earlier run's table: what was finished when it ended
        assert [r["subject"] for r in _rows(summary.table)] == sorted(s.name for s in halves[first])
        _run(synth, halves[second], out)
        rows = _rows(summary.table)
        assert [r["subject"] for r in rows] == ["a1", "b2", "c3", "d4"] and {r["status"] for r in rows} == {"done"}


def test_rows_of_subjects_without_a_report(tmp_path, synth):
    """A failure is kept (read back from the table) until the subject is done; "busy" is what this
    process saw, and goes with the next table that does not see it."""
    from tsf_trt.runs.outcomes import SubjectOutcome

    out = tmp_path / "out"
    _run(synth, _subjects(subject_folder(tmp_path / "data", ["a"])), out)
    write_table(out, T2, outcomes=[SubjectOutcome("b", "busy", error="claimed by pid 7 on h"),
                                   SubjectOutcome("c", "failed", error="c_t1.nii.gz: truncated")])
    rows = _rows(table_path(out, T2))
    assert [(r["subject"], r["status"], r["error"]) for r in rows] == [
        ("a", "done", ""), ("b", "busy", "claimed by pid 7 on h"), ("c", "failed", "c_t1.nii.gz: truncated")]
    write_table(out, T2, outcomes=[SubjectOutcome("c", "busy", error="claimed by pid 8 on h")])
    assert [(r["subject"], r["status"]) for r in _rows(table_path(out, T2))] == [("a", "done"), ("c", "failed")]


def test_a_table_renamed_after_a_newer_one_is_rebuilt(tmp_path, synth, monkeypatch):
    """Two processes ending together: one may rename a table built before the other's last subject
    was published. Each writer builds the rows again after its rename and writes until they hold."""
    import tsf_trt.runs.table as table_module

    data = subject_folder(tmp_path / "data", ["s1", "s2"])
    first, late = _subjects(data)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    _run(synth, [late], elsewhere)
    _run(synth, [first], out)
    real = table_module.atomic_path
    renames = []

    def atomic_path(path, *args, **kwargs):
        if not renames:  # while this table (without s2) is written, another process publishes s2
            shutil.copytree(elsewhere / "s2", out / "s2")
        renames.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(table_module, "atomic_path", atomic_path)
    (out / "tsf-trt_t2.tsv").unlink()
    write_table(out, T2)
    assert [r["subject"] for r in _rows(table_path(out, T2))] == ["s1", "s2"] and len(renames) == 2


def test_a_process_and_this_one_sharing_a_folder_leave_every_subject_in_the_table(tmp_path, synth,
                                                                                  small_model_dir):
    """A real `tsf-trt infer` process and a run in this process share one folder (this one joins once
    the other has published a subject, and waits for what it holds): whichever ends last leaves
    every subject in the table, each once."""
    import time

    from tsf_trt.runs.jobs import infer_folder
    from tsf_trt.runs.request import InferRequest

    names = cohort(tmp_path / "data", 6)
    out = tmp_path / "out"
    proc = subprocess.Popen([str(SCRIPT), "infer", "--data", str(tmp_path / "data"), "--target", "t2", "--model",
                             str(small_model_dir), "-o", str(out), *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*/*_t2.json")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the other process never wrote"
        time.sleep(0.01)
    infer_folder(synth, _subjects(tmp_path / "data"), InferRequest(T2, output=out, lease_s=2.0, wait=True))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    table = table_path(out, T2)
    rows = _rows(table)
    assert [r["subject"] for r in rows] == names and {r["status"] for r in rows} == {"done"}
    text = table.read_text()
    assert write_table(out, T2) == table and table.read_text() == text  # what a rebuild now gives


def test_a_bids_run_leaves_subject_and_session_labels_and_its_failure(tmp_path, synth):
    from tsf_trt.inputs.intake import Intake, gather

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "r", "BIDSVersion": "1.10.0"}))
    for k, session in enumerate(("1", "2")):
        anat = raw / "sub-01" / f"ses-{session}" / "anat"
        write_nifti(anat / f"sub-01_ses-{session}_T1w.nii.gz", make_head(SHAPE, seed=2 * k))
        write_nifti(anat / f"sub-01_ses-{session}_FLAIR.nii.gz", make_head(SHAPE, seed=2 * k + 1))
    _truncated(raw / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz")
    deriv = raw / "derivatives" / "tsf-trt"
    summary = _run(synth, gather(Intake(bids=raw), T2).subjects, deriv)
    rows = _rows(summary.table)
    assert [(r["subject"], r["session"], r["status"]) for r in rows] == [("sub-01", "ses-1", "done"),
                                                                         ("sub-01", "ses-2", "failed")]
    assert rows[0]["weight_t2"] == rows[0]["error"] == "n/a" and (deriv / rows[0]["synth"]).is_file()
    assert "sub-01_ses-2_T1w.nii.gz" in rows[1]["error"] and rows[1]["task"] == "n/a"


def test_bids_rows_carry_sessions_and_n_a(tmp_path, synth):
    """A BIDS derivative's rows: sub-<s> and ses-<x> (from the folders of an earlier version's
    reports), n/a where there is no value (BIDS "Tabular files"); numbers of the interval only where it applies."""
    out = tmp_path / "out"
    _run(synth, _subjects(subject_folder(tmp_path / "data", ["x"])), out)
    deriv = tmp_path / "deriv"
    for folder in ("sub-01/ses-1/anat", "sub-01/ses-2/anat", "sub-02/anat"):
        shutil.copytree(out / "x", deriv / folder)
    (deriv / "dataset_description.json").write_text(json.dumps({"Name": "d", "DatasetType": "derivative"}))
    report = deriv / "sub-02/anat/x_t2.json"  # as a calibrated interval and two preflight findings leave it
    found = [{"file": "x_t1.nii.gz", "kind": kind, "message": "..."} for kind in ("voxel-size", "bias", "voxel-size")]
    interval = {"applies": True, "alpha": 0.1, "mean_half_width_head": 12.5, "score": 12.5, "flag_above": 10.0,
                "flagged": True}
    report.write_text(json.dumps({**json.loads(report.read_text()), "interval": interval, "preflight": found}))
    path = write_table(deriv, T2)
    rows = _rows(path)
    assert [(r["subject"], r["session"]) for r in rows] == [("sub-01", "ses-1"), ("sub-01", "ses-2"), ("sub-02", "n/a")]
    assert rows[0]["weight_t2"] == rows[0]["error"] == "n/a" and rows[0]["report"] == "sub-01/ses-1/anat/x_t2.json"
    assert rows[0]["interval_applies"] == "false" and rows[0]["interval_score"] == rows[0]["preflight"] == "n/a"
    calibrated = {k: rows[2][k] for k in COLUMNS if k.startswith("interval_") or k == "preflight"}
    assert calibrated == {"interval_applies": "true", "interval_why": "n/a", "interval_alpha": "0.1",
                          "interval_mean_half_width": "12.5", "interval_score": "12.5", "interval_flagged": "true",
                          "preflight": "voxel-size,bias"}


def test_table_command_and_its_refusals(tmp_path, synth):
    data = subject_folder(tmp_path / "data", ["p1", "p2"])
    out = tmp_path / "out"
    _run(synth, _subjects(data), out)
    table = table_path(out, T2)
    table.unlink()
    result = cli("table", out)
    assert result.exit_code == 0, result.output
    assert str(table) in result.stdout and "2 done" in result.stdout
    assert [r["subject"] for r in _rows(table)] == ["p1", "p2"]

    copy = tmp_path / "copies" / "t2.tsv"
    copy.parent.mkdir()
    assert cli("table", out, "-t", "t2", "-o", copy).exit_code == 0
    assert all((copy.parent / r["synth"]).is_file() for r in _rows(copy))  # relative to the table's own folder
    assert_clean_error(cli("table", out, "-o", copy), "t2.tsv", "exists", "--overwrite")
    assert cli("table", out, "-o", copy, "--overwrite").exit_code == 0

    mine = tmp_path / "mine.tsv"
    mine.write_text("subject\tnote\np1\tkeep me\n")
    assert_clean_error(cli("table", out, "-o", mine), "mine.tsv", "exists", "--overwrite")
    assert_clean_error(cli("table", out, "-o", mine, "--overwrite"), "mine.tsv", "not written by tsf-trt")
    table.write_text("subject\tnote\np1\tkeep me\n")  # a user's file under the table's own name
    assert_clean_error(cli("table", out), "tsf-trt_t2.tsv", "not written by tsf-trt")
    assert mine.read_text() == table.read_text() == "subject\tnote\np1\tkeep me\n"
    assert_clean_error(cli("table", data), "no tsf-trt report")


def test_folder_run_refuses_a_users_file_of_the_tables_name_before_any_subject(tmp_path, synth):
    from tsf_trt.errors import InputError

    data, out = subject_folder(tmp_path / "data", ["q1"]), tmp_path / "out"
    out.mkdir()
    (out / "tsf-trt_t2.tsv").write_text("a user's notes\n")
    with pytest.raises(InputError, match="tsf-trt_t2.tsv: exists and was not written by tsf-trt"):
        _run(synth, _subjects(data), out)
    assert sorted(p.name for p in out.iterdir()) == ["tsf-trt_t2.tsv"]
    assert (out / "tsf-trt_t2.tsv").read_text() == "a user's notes\n"
