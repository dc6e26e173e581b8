"""A user's data is never lost, never half-written, and every mistake is one line.

One test (or a few) per defect of the data-safety issue, each reproduced as a user
would meet it through the CLI; the concurrent and killed runs are in
tests/test_folder_processes.py. The export-manifest defects are in
tests/test_export_integrity.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import (DATA, FAST, SCRIPT, SHAPE, assert_clean_error, cli, dead_pid, files_under, hidden_files,
                           make_head, snapshot, subject_folder, write_nifti)


def _folder_infer(data: Path, out: Path, model: Path, *extra):
    return cli("infer", "--data", data, "--target", "t2", "--model", model, "-o", out, *FAST, *extra)


# --- 2. an input is never written ---------------------------------------------------------------


def test_overwrite_never_replaces_an_input_named_like_an_output(tmp_path, small_model_dir):
    coll = tmp_path / "coll"
    t1 = write_nifti(coll / "subj_t2_synth.nii.gz", make_head(SHAPE, seed=0))
    flair = write_nifti(coll / "subj_t2_tsem.nii.gz", make_head(SHAPE, seed=1))
    before = snapshot(coll)
    result = cli("infer", "--inputs", f"t1={t1}", f"flair={flair}", "--target", "t2", "--subject-name", "subj",
                 "-o", coll, "--overwrite", "--model", small_model_dir, *FAST)
    assert_clean_error(result, "subj_t2_synth.nii.gz", "is an input", "never written")
    assert snapshot(coll) == before


def test_overwrite_never_replaces_a_hard_link_of_an_input(tmp_path, small_model_dir):
    inp, out = tmp_path / "in", tmp_path / "out"
    t1 = write_nifti(inp / "sub_t1.nii.gz", make_head(SHAPE, seed=0))
    flair = write_nifti(inp / "sub_flair.nii.gz", make_head(SHAPE, seed=1))
    out.mkdir()
    os.link(t1, out / "sub_t2_synth.nii.gz")  # an output name that *is* the input, under another path
    before = t1.read_bytes()
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "-o", out, "--overwrite",
                 "--model", small_model_dir, *FAST)
    assert_clean_error(result, "sub_t2_synth.nii.gz", "is an input", "the same file as")
    assert t1.read_bytes() == before and os.path.samefile(t1, out / "sub_t2_synth.nii.gz")


# --- 3. a subject name never leaves the output folder ----------------------------------------------


@pytest.mark.parametrize("name", ["../escaped", "a/b", "..", ".hidden", ""])
def test_subject_name_cannot_leave_the_output_folder(tmp_path, small_model_dir, name):
    inp, out = tmp_path / "in", tmp_path / "out"
    t1 = write_nifti(inp / "sub_t1.nii.gz", make_head(SHAPE, seed=0))
    before = snapshot(tmp_path)
    result = cli("infer", "--inputs", t1, "--target", "t2", "--subject-name", name, "-o", out,
                 "--model", small_model_dir, *FAST)
    assert_clean_error(result, "--subject-name", "cannot name output files")
    assert snapshot(tmp_path) == before


# --- 4. leftovers of dead processes are removed by the next run, a live one's never --------------------


def test_rerun_removes_leftovers_of_dead_runs_only(tmp_path, small_model_dir):
    from tsf_trt.files.owners import Owner, host_tag, process_start

    data, out = subject_folder(tmp_path / "data", ["sub01", "sub02"]), tmp_path / "out"
    folder = out / "sub01"
    folder.mkdir(parents=True)
    dead = Owner(host_tag(), dead_pid(), 0).tag
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = Owner(host_tag(), live_proc.pid, process_start(live_proc.pid)).tag
        stale = [folder / f".sub01_t2_synth.nii.gz.tmp-{dead}-0123abcd.nii.gz",   # this version's names
                 folder / f".sub01_t2.json.tmp-{dead}-89abcdef.json",
                 folder / ".sub01_t2_tsem.nii.gz.tmp-4194303-deadbeef.nii.gz"]      # tsf-trt 0.1's, an hour old
        for path in stale:
            path.write_bytes(b"\x1f\x8b half a gzip")
        os.utime(stale[2], (time.time() - 3600,) * 2)
        kept = folder / f".sub01_t2_synth.nii.gz.tmp-{live}-fedcba98.nii.gz"     # a live process is writing it
        kept.write_bytes(b"being written")
        claim = folder / ".sub01_t2.claim-1"  # a claim of the dead process: taken over
        claim.write_text(json.dumps({"host": "here", "host_tag": host_tag(), "pid": int(dead.split("-")[1]),
                                     "process_start": 0, "token": "0" * 16, "started": time.time()}))

        result = _folder_infer(data, out, small_model_dir)
        assert result.exit_code == 0, result.output
        assert "2 done" in result.stdout and "leftovers of killed runs removed" in result.stdout
        assert not any(p.exists() for p in [*stale, claim])
        assert kept.read_bytes() == b"being written"
        assert hidden_files(out) == [f"sub01/{kept.name}"]
    finally:
        live_proc.kill()
        live_proc.wait()


def test_a_live_claim_is_left_alone(tmp_path, small_model_dir):
    """A subject claimed by a live process elsewhere is not done twice, and its claim stays."""
    from tsf_trt.files.owners import Owner, host_tag, process_start

    data, out = subject_folder(tmp_path / "data", ["sub01", "sub02"]), tmp_path / "out"
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = Owner(host_tag(), live_proc.pid, process_start(live_proc.pid))
        claim = out / "sub01" / ".sub01_t2.claim-1"
        claim.parent.mkdir(parents=True)
        claim.write_text(json.dumps({"host": "here", "host_tag": owner.host, "pid": owner.pid,
                                     "process_start": owner.start, "token": "1" * 16, "started": time.time()}))
        result = _folder_infer(data, out, small_model_dir)
        assert result.exit_code == 0, result.output
        assert "1 done" in result.stdout and "1 in progress in other runs" in result.stdout
        assert f"claimed by pid {live_proc.pid}" in " ".join(result.stderr.split())
        assert claim.is_file() and not (out / "sub01" / "sub01_t2.json").exists()
    finally:
        live_proc.kill()
        live_proc.wait()
    result = _folder_infer(data, out, small_model_dir)  # its holder is gone now: taken over
    assert result.exit_code == 0 and "1 done, 1 skipped" in result.stdout, result.output
    assert hidden_files(out) == []


def test_wait_takes_over_when_the_holder_dies(tmp_path, small_model_dir):
    """--wait: a subject a live run holds is looked at again, and taken over once its holder is gone."""
    import threading

    from tsf_trt.files.owners import Owner, host_tag, process_start

    data, out = subject_folder(tmp_path / "data", ["sub01", "sub02"]), tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = Owner(host_tag(), holder.pid, process_start(holder.pid))
    claim = out / "sub01" / ".sub01_t2.claim-1"
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"host": "here", "host_tag": owner.host, "pid": owner.pid,
                                 "process_start": owner.start, "token": "2" * 16, "started": time.time()}))
    timer = threading.Timer(1.5, holder.kill)
    timer.start()
    try:
        result = _folder_infer(data, out, small_model_dir, "--wait", "--claim-lease", "2")
    finally:
        timer.cancel()
        holder.kill()
        holder.wait()
    assert result.exit_code == 0, result.output
    assert "2 done, 0 skipped (already complete), 0 failed" in result.stdout, result.output
    assert "waiting for 1 subject(s) that other runs hold" in result.stderr
    assert (out / "sub01" / "sub01_t2.json").is_file() and hidden_files(out) == []


def test_folder_only_options_are_refused_for_one_subject(case, small_model_dir):
    _, out, t1, flair = case
    for extra in (("--wait",), ("--claim-lease", "30")):
        result = cli("infer", "--inputs", t1, flair, "--target", "t2", "-o", out, "--model", small_model_dir, *extra)
        assert_clean_error(result, extra[0], "folder mode")


# --- 5. a header that claims more voxels than the file holds ---------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_header_claiming_a_huge_volume_is_one_line(tmp_path, small_model_dir, suffix):
    import gzip

    header = nib.Nifti1Header()
    header.set_data_shape((10000, 10000, 1000))
    header.set_data_dtype(np.float32)
    raw = header.binaryblock + b"\0" * 4 + np.random.default_rng(0).bytes(10_000)
    path = tmp_path / "in" / f"huge_t1{suffix}"
    path.parent.mkdir()
    path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)
    flair = write_nifti(tmp_path / "in" / "huge_flair.nii.gz", make_head(SHAPE, seed=1))
    result = cli("infer", "--inputs", path, flair, "--target", "t2", "-o", tmp_path / "out",
                 "--model", small_model_dir, *FAST)
    assert_clean_error(result, path.name, "truncated or corrupt", "10000x10000x1000")
    assert files_under(tmp_path / "out") == []


# --- 6. a full disk --------------------------------------------------------------------------------------


def test_disk_full_while_writing_outputs_is_one_line(case, small_model_dir, monkeypatch):
    import tsf_trt.runs.outputs

    _, out, t1, flair = case

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tsf_trt.runs.outputs, "write_volume", full)
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "-o", out, "--model", small_model_dir, *FAST)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # after the progress bar
    assert len(errors) == 1 and "sub_t2_synth.nii.gz: no space left on device" in errors[0], result.stderr
    assert files_under(out) == []


def _unshare_ok() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_ok(), reason="needs unshare and a tmpfs mount in a private mount namespace")
@pytest.mark.parametrize("size,what", [("40k", "infer"), ("100k", "infer"), ("3m", "import-reference"),
                                       ("3m", "export")])
def test_really_full_disk_is_one_line(case, small_model_dir, tmp_path, size, what):
    """A real file system that fills up (a tmpfs of `size`, mounted for this process only)."""
    _, _, t1, flair = case
    full = tmp_path / "full"
    full.mkdir()
    command = {
        "infer": [SCRIPT, "infer", "--inputs", t1, flair, "--target", "t2", "-o", full, "--model", small_model_dir,
                  *FAST],
        "import-reference": [SCRIPT, "import-reference", "--seq2seq", DATA / "small_seq2seq.pt", "--tsf",
                             DATA / "small_tsf.pt", "--config", "small", "-o", full / "model"],
        "export": [SCRIPT, "export", "--model", small_model_dir, "-o", full / "export"],
    }[what]
    shell = f"mount -t tmpfs -o size={size} tmpfs {full} && " + " ".join(f"'{c}'" for c in command) \
        + f"; rc=$?; find {full} -mindepth 1; exit $rc"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on device" in errors[0] and str(full) in errors[0], proc.stderr
    assert not [line for line in proc.stdout.splitlines() if line.startswith(str(full))], proc.stdout


# --- 8, 9, 11, 12: options are checked before any work, and reported as used -----------------------------


@pytest.mark.parametrize("args,words", [
    (("--combine", "max"), ("--combine", "max", "middle", "mean")),
    (("--threads", "100000"), ("--threads", "100000", "cores")),
    (("--backend", "tensorflow"), ("--backend", "tensorflow", "openvino")),
    (("--precision", "bf16", "--backend", "ort"), ("--precision bf16", "ort")),
    (("--device", "gpu0"), ("--device", "gpu0")),
    (("--claim-lease", "0"), ("--claim-lease",)),
])
def test_bad_options_fail_before_the_model_loads(tmp_path, args, words):
    """The model path does not even exist: the option is refused before anything looks at it. A value
    outside an option's choices (--combine, --backend) is click's usage error (exit 2), naming them."""
    data = subject_folder(tmp_path / "data", ["sub01"])
    result = cli("infer", "--data", data, "--target", "t2", "--model", tmp_path / "no-model", "-o",
                 tmp_path / "out", *args)
    if args[0] in ("--combine", "--backend"):
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        for word in words:
            assert word in result.stderr, (word, result.stderr)
    else:
        assert_clean_error(result, *words)
    assert not (tmp_path / "out").exists()


def test_threads_are_bounded_in_every_command(tmp_path):
    for command in (["bench", "--threads", "100000"], ["evaluate", "--data", tmp_path, "-o", tmp_path / "r",
                                                        "--threads", "100000"]):
        assert_clean_error(cli(*command), "--threads", "100000")


def test_channels_on_a_brats_folder_is_an_error(tmp_path, small_model_dir):
    data = subject_folder(tmp_path / "data", ["sub01"])
    result = _folder_infer(data, tmp_path / "out", small_model_dir, "--channels", "t1,t1")
    assert_clean_error(result, "--channels", "nnU-Net")
    assert not (tmp_path / "out").exists()


def test_target_among_sources_in_folder_mode_is_refused_once_before_the_model(tmp_path):
    data = subject_folder(tmp_path / "data")
    result = cli("infer", "--data", data, "--target", "t2", "--sources", "t1,t2", "--model",
                 tmp_path / "no-model", "-o", tmp_path / "out")
    assert_clean_error(result, "--sources", "target T2")


def test_report_batch_size_is_the_batch_used(case, small_model_dir):
    _, out, t1, flair = case
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "-o", out, "--model", small_model_dir,
                 "--batch-size", "99999999999999999999999", *FAST)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sub_t2.json").read_text())
    assert report["batch_size"] == SHAPE[2]  # the whole volume, 12 slices, in one batch
    # with default options the report says the precision (and why) and the frame that ran
    assert report["precision"]["ran"] == "fp32" and "--precision auto" in report["precision"]["why"]
    assert report["frame"]["frame"] == "head" and report["frame"]["slices"] == SHAPE[2]


# --- 13. one subject with two files of a sequence fails alone ---------------------------------------------


def test_two_files_of_one_sequence_fail_that_subject_alone(tmp_path, small_model_dir):
    data, out = subject_folder(tmp_path / "data", ["sub1", "sub2", "sub4"]), tmp_path / "out"
    write_nifti(data / "sub4" / "sub4-t1n.nii.gz", make_head(SHAPE, seed=3))
    result = _folder_infer(data, out, small_model_dir)
    assert result.exit_code == 1, result.output
    assert "2 done, 0 skipped (already complete), 1 failed" in result.stdout
    message = " ".join(result.stderr.split())
    assert "sub4: failed:" in message and "sub4_t1.nii.gz" in message and "sub4-t1n.nii.gz" in message
    assert (out / "sub1" / "sub1_t2.json").is_file() and (out / "sub2" / "sub2_t2.json").is_file()
    assert not (out / "sub4").exists()


# --- messages print shapes as the file stores them (x, y, z) ---------------------------------------------


def test_shapes_are_printed_in_the_files_own_order(tmp_path, small_model_dir):
    inp = tmp_path / "in"
    t1 = write_nifti(inp / "sub_t1.nii.gz", make_head((4, 5, 12), seed=0))
    flair = write_nifti(inp / "sub_flair.nii.gz", make_head((4, 5, 12), seed=1))
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "-o", tmp_path / "out",
                 "--model", small_model_dir, *FAST)
    assert_clean_error(result, "sub_t1.nii.gz", "4x5 voxels", "4x5x12")

    other = write_nifti(inp / "other_flair.nii.gz", make_head((40, 36, 13), seed=1))
    t1 = write_nifti(inp / "big_t1.nii.gz", make_head(SHAPE, seed=0))
    result = cli("infer", "--inputs", t1, other, "--target", "t2", "-o", tmp_path / "out",
                 "--model", small_model_dir, *FAST)
    assert_clean_error(result, "other_flair.nii.gz", "40x36x13 vs 40x36x12")
