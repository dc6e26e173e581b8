"""Folder mode shared by real processes: run together, killed with SIGKILL, run again.

Every process here is a real `tsf-trt infer` (the console script), on one input folder
and one output folder, as a Slurm array or several GPUs would run it. What must hold:
every subject is finished exactly once, each output loads in full, and nothing is left
behind: no temp file, no claim.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import COHORT_SHAPE, FAST, SCRIPT, cohort, hidden_files


def _start(data: Path, out: Path, model: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([str(SCRIPT), "infer", "--data", str(data), "--target", "t2", "--model", str(model),
                             "-o", str(out), *FAST, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, int]:
    """(exit code, subjects it reports done), with no traceback."""
    stdout, stderr = proc.communicate(timeout=300)
    assert "Traceback" not in stdout + stderr, stderr
    match = re.search(r"(\d+) done, (\d+) skipped", stdout)
    assert match, stdout + stderr
    return proc.returncode, int(match.group(1))


def _reports(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/*_t2.json")}


def _assert_all_complete_and_clean(out: Path, names: list[str]) -> dict[str, dict]:
    reports = _reports(out)
    assert sorted(reports) == names
    for name in names:
        assert reports[name]["complete"] is True
        for kind in ("synth", "tsem"):
            image = nib.load(out / name / f"{name}_t2_{kind}.nii.gz")
            data = np.asarray(image.dataobj)  # reads (and gunzips) every voxel: a torn file fails here
            assert data.shape == COHORT_SHAPE and np.isfinite(data).all()
    hidden = hidden_files(out)
    assert hidden == [], hidden  # no temp file, no claim, no probe
    return reports


def _wait_for_new_reports(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until `proc` (or another run) has finished `count` more subjects, or `proc` has ended."""
    goal = len(list(out.glob("*/*_t2.json"))) + count
    deadline = time.monotonic() + timeout
    while len(list(out.glob("*/*_t2.json"))) < goal and proc.poll() is None:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.005)


def _wait_for_temp_file(out: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not list(out.glob("*/.*.tmp-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "never wrote"
        time.sleep(0.001)


@pytest.mark.parametrize("runs", [2, 3])
def test_concurrent_runs_finish_every_subject_once(tmp_path, small_model_dir, runs):
    names = cohort(tmp_path / "data", 8)
    out = tmp_path / "out"
    procs = [_start(tmp_path / "data", out, small_model_dir) for _ in range(runs)]
    results = [_finish(p) for p in procs]
    assert [code for code, _ in results] == [0] * runs
    reports = _assert_all_complete_and_clean(out, names)
    # Each subject once: the runs' "done" add up, and each run wrote exactly the reports it counts.
    assert sum(done for _, done in results) == len(names)
    for proc, (_, done) in zip(procs, results):
        assert sum(r["pid"] == proc.pid for r in reports.values()) == done


def test_killed_at_random_moments_then_rerun_leaves_nothing_behind(tmp_path, small_model_dir):
    """The chaos test: several runs SIGKILLed at random moments, then one that completes."""
    names = cohort(tmp_path / "data", 10)
    out, rng = tmp_path / "out", random.Random(12)
    left = 0
    for round_ in range(6):
        proc = _start(tmp_path / "data", out, small_model_dir)
        _wait_for_new_reports(out, rng.randrange(1, 3), proc)  # at work, not starting up
        if round_ % 2:
            _wait_for_temp_file(out, proc)  # while it writes: the moment that leaves temp files
        else:
            time.sleep(rng.uniform(0, 0.15))  # anywhere: reading, computing, writing, renaming
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        left += len(list(out.glob("*/.*.tmp-*")))
    assert left > 0  # the kills did leave temp files behind for the next runs to clean up
    code, _ = _finish(_start(tmp_path / "data", out, small_model_dir))
    assert code == 0
    _assert_all_complete_and_clean(out, names)


def test_workers_with_sigkills_in_between_finish_every_subject_once(tmp_path, small_model_dir):
    """Three workers over one cohort; one is killed mid-way and a fourth takes its place."""
    names = cohort(tmp_path / "data", 12)
    out = tmp_path / "out"
    workers = [_start(tmp_path / "data", out, small_model_dir) for _ in range(3)]
    _wait_for_new_reports(out, 3, workers[1])
    workers[1].send_signal(signal.SIGKILL)
    workers[1].communicate(timeout=60)
    workers.append(_start(tmp_path / "data", out, small_model_dir))
    survivors = [workers[0], workers[2], workers[3]]
    results = [_finish(p) for p in survivors]
    assert [code for code, _ in results] == [0, 0, 0]
    reports = _assert_all_complete_and_clean(out, names)
    by_killed = sum(r["pid"] == workers[1].pid for r in reports.values())
    assert sum(done for _, done in results) + by_killed == len(names)
    for proc, (_, done) in zip(survivors, results):
        assert sum(r["pid"] == proc.pid for r in reports.values()) == done
