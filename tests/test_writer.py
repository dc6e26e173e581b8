"""Output writing (tsf_trt.runs.writer, tsf_trt.files.volume): the faster gzip (isal) changes nothing that is
written, and folder mode's background writer keeps every data-safety rule: claims held until
publish, one error line per subject, order."""

from __future__ import annotations

import gzip
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import tsf_trt.runs.jobs as jobs
import tsf_trt.runs.outcomes as outcomes  # where a finished subject's outputs are written
import tsf_trt.runs.writer as writer
from tests.helpers import SHAPE, SUBJECTS, files_under, hidden_files, make_head, subject_folder, write_nifti
from tsf_trt.files.atomic import DiskFullError
from tsf_trt.files.volume import load_volume
from tsf_trt.files.volume_write import save_volume
from tsf_trt.inputs.subjects import find_subjects
from tsf_trt.runs.request import InferRequest
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import Synthesizer

def _image(tmp_path: Path) -> tuple[object, np.ndarray]:
    like = load_volume(write_nifti(tmp_path / "in_t1.nii.gz", make_head(SHAPE, seed=3)))
    return like, make_head(like.shape, seed=4)


def test_isal_output_decompresses_to_nibabels_bytes(tmp_path):
    pytest.importorskip("isal")
    like, array = _image(tmp_path)
    ours = save_volume(like, array, tmp_path / "ours.nii.gz", description="x")
    theirs = tmp_path / "theirs.nii.gz"
    nib.Nifti1Image(like.to_native(array), like.affine, nib.load(ours).header).to_filename(theirs)
    raw = ours.read_bytes()
    assert gzip.decompress(raw) == gzip.decompress(theirs.read_bytes())
    assert raw[3] == 0 and raw[4:8] == b"\0\0\0\0"  # no file name in the header, mtime 0: as nibabel's
    assert np.array_equal(load_volume(ours).data, array)


def test_without_isal_nibabel_writes(tmp_path, monkeypatch):
    like, array = _image(tmp_path)
    with_isal = save_volume(like, array, tmp_path / "a.nii.gz", description="x").read_bytes()
    monkeypatch.setitem(sys.modules, "isal", None)  # import isal now fails, as where it is not installed
    monkeypatch.setitem(sys.modules, "isal.igzip", None)
    without = save_volume(like, array, tmp_path / "b.nii.gz", description="x")
    assert without.read_bytes()[8] == 4  # zlib's "fastest" flag: nibabel's own level 1 wrote it
    assert gzip.decompress(without.read_bytes()) == gzip.decompress(with_isal)
    assert np.array_equal(load_volume(without).data, array)


def _run(tmp_path: Path, small_model, **callbacks):
    subjects = find_subjects(subject_folder(tmp_path / "data"))
    request = InferRequest(2, output=tmp_path / "out")  # t2 from t1 + flair
    return jobs.infer_folder(Synthesizer(small_model, RunOptions(batch_size=4)), subjects, request, **callbacks)


def _claims(folder: Path) -> list[Path]:
    return list(folder.glob(".*.claim-*"))


def test_overlap_keeps_order_and_publishes_before_the_line(tmp_path, small_model, one_torch_thread, monkeypatch):
    events, writers = [], []
    real = outcomes.write_outputs

    def write(result, like, paths, *args, **kwargs):
        assert _claims(paths.folder), "the claim is held while the outputs are written"
        writers.append(threading.current_thread().name)
        real(result, like, paths, *args, **kwargs)

    monkeypatch.setattr(outcomes, "write_outputs", write)

    def on_end(outcome):
        events.append(("end", outcome.subject))
        assert outcome.status == "done" and outcome.paths.complete()  # files first, then the line
        assert _claims(outcome.paths.folder) == []  # released once published

    summary = _run(tmp_path, small_model, on_start=lambda s: events.append(("start", s.name)), on_end=on_end)
    assert events == [(kind, name) for name in SUBJECTS for kind in ("start", "end")]
    assert writers == ["tsf-trt writer"] * 3  # written off the computing thread
    assert [o.subject for o in summary.outcomes] == list(SUBJECTS) and summary.count("done") == 3
    assert hidden_files(tmp_path / "out") == []


def test_a_failing_background_write_is_that_subjects_error(tmp_path, small_model, one_torch_thread, monkeypatch):
    real = outcomes.write_outputs

    def write(result, like, paths, *args, **kwargs):
        if paths.folder.name == "sub02":
            raise OSError(5, "Input/output error")
        real(result, like, paths, *args, **kwargs)

    monkeypatch.setattr(outcomes, "write_outputs", write)
    lines = []
    summary = _run(tmp_path, small_model, on_end=lambda o: lines.append(o.line()))
    assert [o.status for o in summary.outcomes] == ["done", "failed", "done"]
    assert lines[1] == "sub02: failed: OSError: [Errno 5] Input/output error"
    assert "1 failed" in summary.line(1.0) and summary.count("done") == 2
    assert not (tmp_path / "out" / "sub02").exists()  # no outputs, no claim, not even its empty folder
    assert hidden_files(tmp_path / "out") == []


def test_a_full_disk_in_the_background_stops_the_run_cleanly(tmp_path, small_model, one_torch_thread, monkeypatch):
    def write(result, like, paths, *args, **kwargs):
        raise DiskFullError(paths.synth, "no space left on device while writing it")

    monkeypatch.setattr(outcomes, "write_outputs", write)
    ended = []
    with pytest.raises(DiskFullError):
        _run(tmp_path, small_model, on_end=ended.append)
    assert ended == []
    assert hidden_files(tmp_path / "out") == [] and not list((tmp_path / "out").glob("*/*.nii.gz"))


def test_ctrl_c_while_writing_publishes_nothing(tmp_path, small_model, one_torch_thread, monkeypatch):
    """Ctrl-C during sub02's synthesis while sub01 is written: sub01 is abandoned before its
    renames, every temp file and claim goes, and no line is printed."""
    stopping = threading.Event()
    real_write, real_abandon, real_run = outcomes.write_outputs, writer.Writer.abandon, Synthesizer.run

    def write(*args, **kwargs):
        assert stopping.wait(60)
        real_write(*args, **kwargs)

    def abandon(self):
        if self._pending is not None:
            self._pending.stop.set()
        stopping.set()  # the write goes on only once the stop is set
        real_abandon(self)

    calls = []

    def run(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(outcomes, "write_outputs", write)
    monkeypatch.setattr(writer.Writer, "abandon", abandon)
    monkeypatch.setattr(Synthesizer, "run", run)
    ended = []
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, small_model, on_end=ended.append)
    assert ended == []
    assert files_under(tmp_path / "out") == []  # no output under a final name, no temp file, no claim
