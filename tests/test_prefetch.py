"""Folder mode reads subject k+1's inputs while subject k computes (tsf_trt.inputs.prefetch), and
nothing else changes: what is written, which subject a bad file fails, a file changed after it
was read ahead, a Ctrl-C."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import tsf_trt.inputs.prefetch as prefetch
from tests.helpers import AFFINE_LPS, SHAPE, SUBJECTS, files_under, hidden_files, make_head, subject_folder, write_nifti
from tsf_trt.errors import InputError
from tsf_trt.files.volume import load_volume
from tsf_trt.inputs.subjects import find_subjects
from tsf_trt.runs import jobs
from tsf_trt.runs.request import InferRequest
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import Synthesizer

MAIN, AHEAD = threading.main_thread().name, "tsf-trt prefetch"


@pytest.fixture
def reads(monkeypatch) -> list[tuple[str, str]]:
    """(thread that asked, file name) of every input read, in order (each subject's files are then
    read in a pool of their own)."""
    seen: list[tuple[str, str]] = []
    real = prefetch.load_subject

    def load(inputs):
        seen.extend((threading.current_thread().name, Path(p).name) for p in inputs.values())
        return real(inputs)

    monkeypatch.setattr(prefetch, "load_subject", load)
    monkeypatch.setattr(jobs, "load_subject", load)
    return seen


def _run(data: Path, out: Path, model, **kwargs):
    request = InferRequest(2, output=out)  # t2 from t1 + flair
    return jobs.infer_folder(Synthesizer(model, RunOptions(batch_size=4)), find_subjects(data), request, **kwargs)


def _while_computing(monkeypatch, subject: str, action) -> list:
    """Run `action()` inside `subject`'s synthesis (before the network); its results, in a list."""
    real, results = Synthesizer.run, []

    def run(self, inputs, *args, **kwargs):
        if next(iter(inputs.values())).path.parent.name == subject:
            results.append(action())
        return real(self, inputs, *args, **kwargs)

    monkeypatch.setattr(Synthesizer, "run", run)
    return results


def test_the_next_subject_is_read_while_one_computes(tmp_path, small_model, one_torch_thread, monkeypatch, reads):
    """sub01's network waits until sub02's inputs are being read: without prefetch it would wait in vain."""
    reading = threading.Event()
    real = prefetch.load_volume

    def load(path):
        if Path(path).parent.name == "sub02":
            reading.set()
        return real(path)

    monkeypatch.setattr(prefetch, "load_volume", load)
    overlapped = _while_computing(monkeypatch, "sub01", lambda: reading.wait(10))
    summary = _run(subject_folder(tmp_path / "data"), tmp_path / "out", small_model)
    assert overlapped == [True] and summary.count("done") == 3
    assert [thread for thread, _ in reads] == [MAIN] * 2 + [AHEAD] * 4  # sub01 first, then each one ahead
    assert [name.split("_")[0] for _, name in reads] == ["sub01"] * 2 + ["sub02"] * 2 + ["sub03"] * 2


def test_prefetched_outputs_equal_unprefetched_bit_for_bit(tmp_path, small_model, one_torch_thread, reads):
    data = subject_folder(tmp_path / "data")
    assert _run(data, tmp_path / "ahead", small_model).count("done") == 3
    assert {thread for thread, _ in reads} == {MAIN, AHEAD}
    reads.clear()
    assert _run(data, tmp_path / "plain", small_model, prefetch=False).count("done") == 3
    assert {thread for thread, _ in reads} == {MAIN}  # prefetch=False: every subject read in its turn
    images = sorted(p.relative_to(tmp_path / "ahead") for p in (tmp_path / "ahead").rglob("*.nii.gz"))
    assert len(images) == 6  # synthesis and TSEM of each subject
    for name in images:
        assert (tmp_path / "ahead" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    for report in (tmp_path / "ahead").rglob("*_t2.json"):
        ours, theirs = (json.loads(p.read_text()) for p in (report, tmp_path / "plain" / report.relative_to(
            tmp_path / "ahead")))
        for found in (ours, theirs):
            found.pop("timings_s")
        assert json.dumps(ours).replace("/ahead/", "/") == json.dumps(theirs).replace("/plain/", "/")


def test_a_corrupt_file_fails_only_its_subject_with_one_line(tmp_path, small_model, one_torch_thread, reads):
    data = subject_folder(tmp_path / "data")
    bad = data / "sub02" / "sub02_t1.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not a volume" * 50)
    with pytest.raises(InputError) as direct:
        load_volume(bad)
    lines = []
    summary = _run(data, tmp_path / "out", small_model, on_end=lambda o: lines.append(o.line()))
    assert [o.status for o in summary.outcomes] == ["done", "failed", "done"]
    assert lines[1] == f"sub02: failed: {direct.value}" and str(bad) in lines[1] and "\n" not in lines[1]
    assert (AHEAD, bad.name) in reads and (MAIN, bad.name) in reads  # failed ahead, read again in its turn
    assert not (tmp_path / "out" / "sub02").exists() and hidden_files(tmp_path / "out") == []


def test_a_file_changed_after_it_was_read_ahead_is_read_again(tmp_path, small_model, one_torch_thread, monkeypatch,
                                                              reads):
    data = subject_folder(tmp_path / "data")
    changed = data / "sub02" / "sub02_flair.nii.gz"

    def change():  # sub02 has been read ahead by now (sub01's load started it): write it anew
        for thread in threading.enumerate():
            if thread.name == AHEAD:
                thread.join()
        write_nifti(changed, make_head(SHAPE, seed=99))

    _while_computing(monkeypatch, "sub01", change)
    assert _run(data, tmp_path / "out", small_model).count("done") == 3
    assert reads.count((AHEAD, changed.name)) == 1 and reads.count((MAIN, changed.name)) == 1
    monkeypatch.undo()
    fresh = _run(data, tmp_path / "fresh", small_model, prefetch=False)  # the changed file from the start
    assert fresh.count("done") == 3
    for name in SUBJECTS:
        ours, theirs = (root / name / f"{name}_t2_synth.nii.gz" for root in (tmp_path / "out", tmp_path / "fresh"))
        assert ours.read_bytes() == theirs.read_bytes(), name


def test_ctrl_c_while_the_next_subject_is_read_leaves_nothing(tmp_path, small_model, one_torch_thread, monkeypatch):
    release = threading.Event()
    real = prefetch.load_volume

    def load(path):
        if Path(path).parent.name == "sub02":
            release.wait(10)  # still reading when the run stops
        return real(path)

    def interrupt():
        raise KeyboardInterrupt

    monkeypatch.setattr(prefetch, "load_volume", load)
    _while_computing(monkeypatch, "sub01", interrupt)
    ended = []
    with pytest.raises(KeyboardInterrupt):
        _run(subject_folder(tmp_path / "data"), tmp_path / "out", small_model, on_end=ended.append)
    ahead = [t for t in threading.enumerate() if t.name == AHEAD]
    assert ended == [] and files_under(tmp_path / "out") == []
    assert ahead and all(t.daemon for t in ahead)  # never holds the interpreter's exit
    release.set()


def test_parallel_reading_finds_what_check_subject_finds_and_fails_in_order(tmp_path):
    """Each file read and checked in its own thread: the findings are check_subject's, in its order
    (a different grid included), and of two bad files the first in the subject's order raises."""
    from tsf_trt.inputs.preflight import check_subject

    shifted = AFFINE_LPS.copy()
    shifted[0, 3] += 5.0
    files = {3: write_nifti(tmp_path / "s_flair.nii.gz", make_head(SHAPE, seed=1), shifted),
             0: write_nifti(tmp_path / "s_t1.nii.gz", make_head(SHAPE, seed=0))}
    loaded = prefetch.load_subject(files)
    assert list(loaded.volumes) == [3, 0] and loaded.findings == check_subject(loaded.volumes)
    assert "different-grid" in [f.kind for f in loaded.findings]
    for name in ("s_flair.nii.gz", "s_t1.nii.gz"):
        (tmp_path / name).write_bytes(b"broken")
    with pytest.raises(InputError) as first:
        prefetch.load_subject(files)
    assert first.value.path == files[3]


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_one_file_as_two_sequences_is_refused_before_reading(tmp_path, monkeypatch, how):
    """Whatever the subject's source (command line, folder, BIDS, --map), its inputs pass here: a
    file given as two sequences (itself or through a link) fails the subject before any read."""
    import os

    t1 = write_nifti(tmp_path / "s_t1.nii.gz", make_head(SHAPE, seed=0))
    second = t1 if how == "same path" else tmp_path / "s_flair.nii.gz"
    if how == "symlink":
        second.symlink_to(t1)
    elif how == "hard link":
        os.link(t1, second)
    read = []
    monkeypatch.setattr(prefetch, "load_volume", lambda p: read.append(p))
    with pytest.raises(InputError) as error:
        prefetch.load_subject({0: t1, 3: second})
    assert error.value.path == second and read == []
    assert ("given as both T1 and FLAIR" if how == "same path"
            else f"the FLAIR input is the same file as the T1 input {t1}") in error.value.problem
    # Read ahead in folder mode: the same error, on the subject's turn.
    ahead = prefetch.Prefetcher()
    ahead.ahead({0: t1, 3: second})
    monkeypatch.setattr(prefetch, "load_volume", load_volume)
    ahead.load({0: write_nifti(tmp_path / "other_t1.nii.gz", make_head(SHAPE, seed=2))})
    with pytest.raises(InputError, match="one file cannot be two sequences"):
        ahead.load({0: t1, 3: second})


def test_two_files_with_the_same_voxels_are_a_finding(tmp_path):
    t1 = write_nifti(tmp_path / "s_t1.nii.gz", make_head(SHAPE, seed=0))
    copy = write_nifti(tmp_path / "s_flair.nii.gz", make_head(SHAPE, seed=0))
    loaded = prefetch.load_subject({0: t1, 3: copy})
    assert [(f.path, f.kind) for f in loaded.findings] == [(copy, "identical-inputs")]
