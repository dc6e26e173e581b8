"""A cohort's output folder as a whole (issue 22, items 4, 5, 11, 12, 14 and infer's part of 15).

* One model per output folder: a second model's run is refused in one line naming both
  models (before its model loads when the folder already says so), never "already
  complete", never a mix; --overwrite replaces the other model's outputs.
* A symbolic link that leads nowhere among a subject's files is named: its subject fails
  alone, or it is listed as not used when the run would not read it.
* A subject folder whose name holds a control character fails alone, in one line.
* Runs in other PID namespaces on one host are judged as other hosts (by the lease).
* --frame and --claim-lease are bounded up front.
* Every option and output location of `infer` is checked before the model loads.

Real processes where processes are the point (tsf-trt's console script, two models at
once, `unshare -pf --mount-proc`); in-process CLI runs elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (SCRIPT, SHAPE, assert_clean_error, cli, cohort, files_under, hidden_files, make_head,
                           problem_lines, snapshot, subject_folder, wide_inputs, write_nifti, write_pair)
from tests.helpers import FAST as TORCH
from tsf_trt.synthesis.options import RunOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ORT = ("--backend", "ort", "--threads", "1")
LOADING = "loading model"  # the log line of the model's load (cli/infer.py _synthesizer)


def _model_ids(out: Path, pattern: str = "*/*_t2.json") -> dict[str, str]:
    return {p.parent.name: json.loads(p.read_text())["model_id"] for p in sorted(out.glob(pattern))}


def _model_id(model_dir: Path) -> str:
    from tsf_trt.synthesis.source import ModelSource

    return ModelSource.resolve(model_dir).model_id


# --- 4. one model per output folder --------------------------------------------------------------


def test_a_second_model_on_a_finished_folder_is_one_error_before_its_model_loads(
        tmp_path, small_model_dir, small_export_dir, monkeypatch):
    data, out = subject_folder(tmp_path / "data"), tmp_path / "out"
    first = cli("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out, *TORCH)
    assert first.exit_code == 0, first.output
    ours, theirs = _model_id(small_model_dir), _model_id(small_export_dir)
    assert ours != theirs and set(_model_ids(out).values()) == {ours}
    before = snapshot(out)

    import tsf_trt.synthesis.pipeline as pipeline

    loaded = pipeline.create_backend
    calls = []
    monkeypatch.setattr(pipeline, "create_backend", lambda *a, **k: calls.append(1) or loaded(*a, **k))
    second = cli("infer", "--data", data, "--target", "t2", "--model", small_export_dir, "-o", out, *ORT)
    message = assert_clean_error(second, str(out), ours, theirs, "--overwrite")
    assert "already complete" not in second.output and LOADING not in second.stderr and calls == []
    assert snapshot(out) == before, message

    replaced = cli("infer", "--data", data, "--target", "t2", "--model", small_export_dir, "-o", out, *ORT,
                   "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert "3 done, 0 skipped" in replaced.stdout
    assert set(_model_ids(out).values()) == {theirs} and hidden_files(out) == []


def test_two_concurrent_runs_with_different_models_never_mix(tmp_path, small_model_dir, small_export_dir):
    """Two real processes, one per model, started together on one output folder: one of them
    does every subject; the other stops in one line naming both models (before or after its
    model loads, whichever it reaches first) and writes nothing."""
    names = cohort(tmp_path / "data", 6)
    out = tmp_path / "out"
    ids = {_model_id(small_model_dir), _model_id(small_export_dir)}
    procs = [subprocess.Popen([str(SCRIPT), "infer", "--data", str(tmp_path / "data"), "--target", "t2",
                               "--model", str(model), "-o", str(out), *backend],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for model, backend in ((small_model_dir, TORCH), (small_export_dir, ORT))]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for _, stdout, stderr in results:
        assert "Traceback" not in stdout + stderr, stderr
    assert sorted(code for code, _, _ in results) == [0, 1], results
    code, stdout, stderr = next(r for r in results if r[0] == 1)
    (line,) = problem_lines(stderr)
    assert line.startswith("error: ") and all(i in line for i in ids), line
    winner = next(r for r in results if r[0] == 0)
    assert f"{len(names)} done, 0 skipped" in winner[1]
    assert sorted(_model_ids(out)) == names and len(set(_model_ids(out).values())) == 1
    assert hidden_files(out) == []  # no claim, no registration left


def test_a_bids_derivative_names_one_model(tmp_path, small_model_dir, small_export_dir):
    bids = tmp_path / "bids"
    (bids / "dataset_description.json").parent.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    for sub in ("01", "02"):
        for k, suffix in enumerate(("T1w", "FLAIR")):
            write_nifti(bids / f"sub-{sub}" / "anat" / f"sub-{sub}_{suffix}.nii.gz", make_head(SHAPE, seed=k))
    deriv = bids / "derivatives" / "tsf-trt"
    ours, theirs = _model_id(small_model_dir), _model_id(small_export_dir)

    def described() -> str:
        return json.loads((deriv / "dataset_description.json").read_text())["GeneratedBy"][0]["Description"]

    assert cli("infer", "--bids", bids, "--target", "t2", "--model", small_model_dir, *TORCH).exit_code == 0
    assert described().endswith(f"model {ours}")
    tsem = json.loads((deriv / "sub-01" / "anat" / "sub-01_desc-T2w_tsem.json").read_text())
    assert tsem["tsf-trt"]["version"]  # what tells tsf-trt's own files for --overwrite
    second = cli("infer", "--bids", bids, "--target", "t2", "--model", small_export_dir, *ORT)
    assert_clean_error(second, ours, theirs)
    third = cli("infer", "--bids", bids, "--target", "t2", "--model", small_export_dir, *ORT, "--overwrite")
    assert third.exit_code == 0, third.output
    assert described().endswith(f"model {theirs}")
    assert set(_model_ids(deriv, "logs/sub-*_t2.json").values()) == {theirs}  # the runs' records


def test_a_live_run_of_another_model_stops_a_run_that_registers_later(tmp_path):
    """The registration (tsf_trt.runs.claims.Claims.join) in one process: the earlier run of
    another model holds the folder, a later one of the same model joins it."""
    from tsf_trt.runs.claims import Claims, ModelConflict, live_runs

    with Claims() as first:
        first.join(tmp_path, "t2", "model-a")
        with Claims() as same:
            same.join(tmp_path, "t2", "model-a")
            with Claims() as other, pytest.raises(ModelConflict, match="model-a.*model-b"):
                other.join(tmp_path, "t2", "model-b")
            with Claims() as other_target:
                other_target.join(tmp_path, "flair", "model-b")  # another target's outputs: another file
        assert [h.model_id for h in live_runs(tmp_path, "t2", 600)] == ["model-a"]
    assert live_runs(tmp_path, "t2", 600) == [] and files_under(tmp_path) == []


def test_a_report_of_another_model_is_never_taken_as_done(tmp_path, small_model_dir):
    """The per-subject guard, for runs that skip the folder check (library use): infer_folder
    stops at another model's report, and with overwrite redoes it."""
    from tsf_trt.inputs.subjects import find_subjects
    from tsf_trt.model import load_model
    from tsf_trt.runs.claims import ModelConflict
    from tsf_trt.runs.jobs import infer_folder
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.pipeline import Synthesizer

    data, out = subject_folder(tmp_path / "data", ("sub01",)), tmp_path / "out"
    synth = Synthesizer(load_model(small_model_dir), RunOptions(batch_size=4))
    assert infer_folder(synth, find_subjects(data), InferRequest(2, output=out)).count("done") == 1
    report = out / "sub01" / "sub01_t2.json"
    report.write_text(report.read_text().replace(synth.backend.model_id, "another-model"))
    with pytest.raises(ModelConflict, match="another-model"):
        infer_folder(synth, find_subjects(data), InferRequest(2, output=out))
    assert json.loads(report.read_text())["model_id"] == "another-model"
    redone = infer_folder(synth, find_subjects(data), InferRequest(2, output=out, overwrite=True))
    assert redone.count("done") == 1 and json.loads(report.read_text())["model_id"] == synth.backend.model_id


# --- 5. links that lead nowhere -----------------------------------------------------------------------


def test_broken_links_in_a_folder_are_named(tmp_path, small_model_dir):
    data, out = subject_folder(tmp_path / "data"), tmp_path / "out"
    (data / "sub02" / "sub02_flair.nii.gz").unlink()
    (data / "sub02" / "sub02_flair.nii.gz").symlink_to(tmp_path / "moved" / "sub02_flair.nii.gz")  # read: fails
    (data / "sub03" / "sub03_t2.nii.gz").symlink_to(tmp_path / "gone_t2.nii.gz")  # the target: not read
    loop = data / "sub01" / "sub01_seg.nii.gz"
    os.symlink(loop.name, loop)  # a loop, in a file no run reads
    (data / "sub04").symlink_to(tmp_path / "unmounted" / "sub04")  # a subject folder that is not there
    result = cli("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out, *TORCH,
                 "--verbose")  # the files not used, one line per subject
    assert result.exit_code == 1, result.output
    (line,) = problem_lines(result.stderr)
    assert "sub02: failed" in line and "sub02_flair.nii.gz" in line and "broken symbolic link" in line, line
    assert "sub03: not used: sub03_t2.nii.gz (a broken symbolic link" in result.stderr and "the target" in result.stderr
    assert "sub01: not used: sub01_seg.nii.gz" in result.stderr and "symbolic link loop" in result.stderr
    assert "(no subject): not used: sub04 (a broken symbolic link" in result.stderr
    assert "2 done, 0 skipped (already complete), 1 failed" in result.stdout
    assert sorted(_model_ids(out)) == ["sub01", "sub03"]


def test_a_broken_link_given_as_an_input_is_one_line(tmp_path, no_model_load):
    t1 = write_nifti(tmp_path / "in" / "s_t1.nii.gz", make_head(SHAPE))
    flair = tmp_path / "in" / "s_flair.nii.gz"
    flair.symlink_to(tmp_path / "nowhere.nii.gz")
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "-o", tmp_path / "out", *TORCH)
    assert_clean_error(result, "s_flair.nii.gz", "broken symbolic link", "nowhere.nii.gz")
    assert files_under(tmp_path / "out") == []


def _bids_t1s(bids: Path, subjects: tuple[str, ...]) -> Path:
    """A BIDS dataset whose subjects have a T1w each."""
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    for sub in subjects:
        write_nifti(bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz", make_head(SHAPE, seed=0))
    return bids


def test_broken_links_in_bids_and_map_fail_their_subject(tmp_path, small_model_dir):
    bids = _bids_t1s(tmp_path / "bids", ("01", "02"))
    (bids / "sub-02" / "anat" / "sub-02_FLAIR.nii.gz").symlink_to(tmp_path / "x.nii.gz")
    result = cli("infer", "--bids", bids, "--target", "t2", "--model", small_model_dir, *TORCH)
    assert result.exit_code == 1
    (line,) = problem_lines(result.stderr)
    assert "sub-02: failed" in line and "sub-02_FLAIR.nii.gz" in line and "broken symbolic link" in line, line

    csv = tmp_path / "map.csv"
    csv.write_text(f"a,t1,{bids}/sub-01/anat/sub-01_T1w.nii.gz\nb,t1,{bids}/sub-02/anat/sub-02_T1w.nii.gz\n"
                   f"b,flair,{bids}/sub-02/anat/sub-02_FLAIR.nii.gz\n")
    result = cli("infer", "--map", csv, "--target", "t2", "--model", small_model_dir, "-o", tmp_path / "o", *TORCH)
    assert result.exit_code == 1
    (line,) = problem_lines(result.stderr)
    assert "b: failed" in line and "sub-02_FLAIR.nii.gz" in line and "broken symbolic link" in line, line


def test_a_bids_subject_or_session_folder_that_is_a_broken_link_fails_alone(tmp_path, small_model_dir):
    """A `sub-<label>` (or `ses-<label>`) entry that is a link to nothing is no silent drop either."""
    bids = _bids_t1s(tmp_path / "bids", ("01", "03"))
    (bids / "sub-02").symlink_to(tmp_path / "gone")
    (bids / "sub-03" / "ses-2").symlink_to(tmp_path / "gone-too")
    result = cli("infer", "--bids", bids, "--target", "t2", "--model", small_model_dir, *TORCH)
    assert result.exit_code == 1, result.output
    lines = problem_lines(result.stderr)
    assert len(lines) == 2, lines
    assert "sub-02: failed" in lines[0] and "broken symbolic link" in lines[0] and "gone" in lines[0], lines
    assert "ses-2" in lines[1] and "broken symbolic link" in lines[1], lines
    assert "2 done" in result.stdout, result.stdout


# --- 11. a subject folder named with a control character ------------------------------------------------


def test_a_subject_named_with_a_newline_fails_alone(tmp_path, small_model_dir):
    data, out = subject_folder(tmp_path / "data", ("a1", "bad\nname", "z9")), tmp_path / "out"
    result = cli("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out, *TORCH)
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    (line,) = problem_lines(result.stderr)
    assert "bad\\nname: failed: subject name 'bad\\nname'" in line
    assert "control characters" in line
    assert "2 done, 0 skipped (already complete), 1 failed" in result.stdout
    assert sorted(_model_ids(out)) == ["a1", "z9"] and hidden_files(out) == []


# --- 12. PID namespaces ---------------------------------------------------------------------------------


def _unshare() -> list[str]:
    command = ["unshare", "-pf", "--mount-proc"]
    try:
        ok = subprocess.run([*command, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("`unshare -pf --mount-proc` is not permitted here (needs root or user namespaces)")
    return command


def test_another_pid_namespace_is_another_host():
    """Its pids mean nothing here (pid 1 there is init here): its host tag differs."""
    from tsf_trt.files.owners import host_tag

    there = subprocess.run([*_unshare(), sys.executable, "-c", "from tsf_trt.files.owners import host_tag, Owner; "
                            "print(host_tag(), Owner.current().pid)"], capture_output=True, text=True, timeout=60)
    tag, pid = there.stdout.split()
    assert pid == "1" and tag != host_tag() and len(tag) == 8


def test_runs_in_two_pid_namespaces_never_take_each_others_live_subjects(tmp_path, small_model_dir):
    """A run in its own PID namespace and a plain one, started together on one folder: neither
    removes the other's live claims as a killed run's (today each read the other's pid in its
    own namespace: dead, or init), so no subject fails and each is done once."""
    unshare = _unshare()
    names = cohort(tmp_path / "data", 8)
    out = tmp_path / "out"
    command = [str(SCRIPT), "infer", "--data", str(tmp_path / "data"), "--target", "t2", "--model",
               str(small_model_dir), "-o", str(out), *TORCH]
    procs = [subprocess.Popen(prefix + command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for prefix in (unshare, [])]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    done = 0
    for code, stdout, stderr in results:
        assert code == 0 and "Traceback" not in stderr and "took this subject over" not in stderr, (stdout, stderr)
        assert problem_lines(stderr) == [], stderr
        done += int(stdout.split(" done,")[0].split()[-1])
    assert done == len(names) and sorted(_model_ids(out)) == names and hidden_files(out) == []


# --- 14. bounds ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (("--frame", "100000x100000"), ("--frame", "at most 2048")),
    (("--frame", "1x" + "9" * 5000), ("--frame",)),
    (("--claim-lease", "inf"), ("--claim-lease", "between")),
    (("--claim-lease", "nan"), ("--claim-lease", "between")),
    (("--claim-lease", "0.01"), ("--claim-lease", "between")),
    (("--frame", "30x30"), ("--frame 30x30", "multiples of 4")),  # the model's config, read without its weights
])
def test_sizes_and_leases_are_bounded_up_front(tmp_path, no_model_load, args, words):
    data = subject_folder(tmp_path / "data", ("sub01",))
    result = cli("infer", "--data", data, "--target", "t2", "-o", tmp_path / "out", *TORCH, *args)
    assert_clean_error(result, *words)
    assert not (tmp_path / "out").exists()


# --- 15. every check before the model loads ----------------------------------------------------------------


def test_an_existing_output_is_refused_before_the_model_loads(tmp_path, small_model_dir, no_model_load):
    out = tmp_path / "out"
    (out / "s_t2_tsem.nii.gz").parent.mkdir(parents=True)
    (out / "s_t2_tsem.nii.gz").write_bytes(b"mine")
    result = cli("infer", "--inputs", *write_pair(tmp_path / "in", "s"), "--target", "t2", "--model", small_model_dir,
                 "-o", out, *TORCH)
    assert_clean_error(result, "s_t2_tsem.nii.gz", "exists", "--overwrite")
    assert LOADING not in result.stderr and files_under(out) == ["s_t2_tsem.nii.gz"]


def _read_only(folder: Path, command: list[str]) -> list[str]:
    """`command` run with `folder` unwritable: chmod for a user; for root (whom permissions do
    not stop) a read-only bind mount in a mount namespace of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind '{folder}' '{folder}' && mount -o "
                            f"remount,bind,ro '{folder}' && ! touch '{folder}/x'"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("cannot make a folder read-only for root here (unshare -m and mount are not permitted)")
    quoted = " ".join(f"'{part}'" for part in command)
    return ["unshare", "-m", "sh", "-c", f"mount --bind '{folder}' '{folder}' && mount -o remount,bind,ro "
                                         f"'{folder}' && exec {quoted}"]


@pytest.mark.parametrize("mode", ["single", "folder"])
def test_an_unwritable_output_folder_is_refused_before_the_model_loads(tmp_path, small_model_dir, mode):
    """A real process, whose model would fail to load (its weights are damaged): the error it
    gives is the output folder's."""
    broken = tmp_path / "broken-model"
    shutil.copytree(small_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"damaged")
    given = write_pair(tmp_path / "in", "s") if mode == "single" else [subject_folder(tmp_path / "data")]
    inputs = [str(p) for p in given]
    out = tmp_path / "out"
    flag = "--inputs" if mode == "single" else "--data"
    command = [str(SCRIPT), "infer", flag, *inputs, "--target", "t2", "--model", str(broken), "-o", str(out), *TORCH]
    proc = subprocess.run(_read_only(out, command), capture_output=True, text=True, timeout=120)
    out.chmod(0o755)
    assert proc.returncode == 1, proc.stderr
    (line,) = problem_lines(proc.stderr)
    assert line.startswith(f"error: {out}") and "cannot write" in line, line
    assert LOADING not in proc.stderr and files_under(out) == []


def _calibration(tmp_path: Path, task: dict | None = None, **fields) -> Path:
    """An interval calibration file (tsf-trt calibrate's format) with `fields` (and `task`'s, in its one
    task) replaced; "INF" and "NAN" are written as the JSON that Python reads (Infinity, NaN)."""
    from tsf_trt.uncertainty.calibration import Calibration, TaskCalibration, write_calibration
    from tsf_trt.uncertainty.heuristic import Heuristic

    path = tmp_path / "calibration.json"
    entry = TaskCalibration(Heuristic(("edge",), (0.01, 1.0)), 2.0, 20, 0.09, 1.0, 0.2)
    write_calibration(Calibration("x", 0.1, {"t1,flair->t2": entry}, (0.9, 1.1), inputs=wide_inputs()), path)
    body = json.loads(path.read_text())
    body.update(fields)
    body["tasks"]["t1,flair->t2"].update(task or {})
    path.write_text(json.dumps(body).replace('"INF"', "Infinity").replace('"NAN"', "NaN"))
    return path


@pytest.mark.parametrize("fields, words", [
    ({"alpha": True}, ("alpha", "true")),
    ({"alpha": "INF"}, ("alpha", "Infinity")),
    ({"alpha": "NAN"}, ("alpha", "NaN")),
    ({"voxel_mm": ["NAN", 1.1]}, ("voxel_mm", "NaN")),
    ({"task": {"lambda": "NAN"}}, ("t1,flair->t2", "lambda")),
    ({"task": {"flag_above": True}}, ("t1,flair->t2", "flag_above")),
    ({"model_id": ""}, ("model_id",)),
    ({"model_id": None}, ("model_id",)),
])
def test_a_damaged_calibration_is_one_line_naming_it(tmp_path, no_model_load, fields, words):
    """Booleans, Infinity and NaN (which Python's json reads) are not numbers here: one line naming the
    file and the field, before the model (the default one: not even resolved) loads."""
    cal = _calibration(tmp_path, **fields)
    result = cli("infer", "--inputs", *write_pair(tmp_path / "in", "s"), "--target", "t2", "-o", tmp_path / "out",
                 "--calibration", cal, *TORCH)
    assert_clean_error(result, str(cal), *words)
    assert not (tmp_path / "out").exists()


def test_folder_mode_checks_come_before_the_model_loads_too(tmp_path, small_model_dir, no_model_load):
    """A finished folder of another model: the error names both, and no model was loaded."""
    data, out = subject_folder(tmp_path / "data", ("sub01",)), tmp_path / "out"
    report = out / "sub01" / "sub01_t2.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"complete": True, "model_id": "another-model", "tsf_trt_version": "0"}))
    result = cli("infer", "--data", data, "--target", "t2", "--model", small_model_dir, "-o", out, *TORCH)
    assert_clean_error(result, "another-model", _model_id(small_model_dir), "sub01_t2.json")
