"""Ctrl-C in `tsf-trt infer`: wherever it comes (mid-volume, while writing, between the renames
that publish the outputs), nothing is left in the output folder and the CLI exits 130 with one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import files_under, infer
from tsf_trt.synthesis.options import RunOptions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _subject(t1: Path, flair: Path):
    from tsf_trt.inputs.subjects import Subject

    return Subject("sub", {0: t1, 3: flair})


def test_interrupt_mid_volume_leaves_nothing(case, small_model_dir):
    from tsf_trt.runs.jobs import infer_subject
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.pipeline import Synthesizer

    inp, out, t1, flair = case
    synth = Synthesizer(small_model_dir, RunOptions(batch_size=2))
    calls = []

    def progress(done, total):
        calls.append((done, total))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        infer_subject(synth, _subject(t1, flair), InferRequest(2, output=out), progress=progress)
    assert calls == [(2, 12)]  # interrupted after the first of 6 batches
    assert files_under(out) == []


@pytest.mark.parametrize("on_call", [1, 2])
def test_interrupt_while_writing_leaves_nothing(case, small_model_dir, monkeypatch, on_call):
    import tsf_trt.runs.outputs
    from tsf_trt.runs.jobs import infer_subject
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.pipeline import Synthesizer

    inp, out, t1, flair = case
    real = tsf_trt.runs.outputs.write_volume
    calls = []

    def save_then_interrupt(*args, **kwargs):
        calls.append(args[2])
        path = real(*args, **kwargs)
        if len(calls) == on_call:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(tsf_trt.runs.outputs, "write_volume", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        infer_subject(Synthesizer(small_model_dir, RunOptions(batch_size=2)), _subject(t1, flair), InferRequest(2, output=out))
    assert len(calls) == on_call
    assert files_under(out) == []


def test_interrupt_between_renames_leaves_nothing(case, small_model_dir, monkeypatch):
    import tsf_trt.files.atomic
    from tsf_trt.runs.jobs import infer_subject
    from tsf_trt.runs.request import InferRequest
    from tsf_trt.synthesis.pipeline import Synthesizer

    inp, out, t1, flair = case
    real = tsf_trt.files.atomic.publish

    def publish(tmp, path, overwrite):
        # The temp files of save_volume are published into other temp files (hidden names);
        # interrupt just before the second *final* name is published.
        if not path.name.startswith(".") and any(not p.startswith(".") for p in os.listdir(out)):
            raise KeyboardInterrupt
        return real(tmp, path, overwrite)

    monkeypatch.setattr(tsf_trt.files.atomic, "publish", publish)
    with pytest.raises(KeyboardInterrupt):
        infer_subject(Synthesizer(small_model_dir, RunOptions(batch_size=2)), _subject(t1, flair), InferRequest(2, output=out))
    assert files_under(out) == []


def test_cli_interrupt_exit_code_and_message(case, small_model_dir, monkeypatch):
    import tsf_trt.runs.outputs

    inp, out, t1, flair = case

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tsf_trt.runs.outputs, "write_volume", interrupt)
    result = infer(small_model_dir, out, t1, flair)
    assert result.exit_code == 130
    assert "Traceback" not in result.output
    assert "interrupted" in result.stderr
    assert files_under(out) == []
