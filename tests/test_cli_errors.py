"""The CLI's "bad input" contract: outputs, models, import-reference, a real process.

Every bad input ends with exit code 1 (2 for Click's own usage errors), one error line on
stderr that names the offending file and the problem, no traceback, and nothing new in
the output folder (not even a hidden temp file). Bad input files, sequences and folders are
in tests/test_cli_inputs.py, Ctrl-C in tests/test_cli_interrupt.py; the helpers all three use
are in tests/helpers.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import (DATA, SCRIPT, SHAPE, assert_clean_error, cli, files_under, infer, problem_lines,
                           snapshot)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- outputs ---------------------------------------------------------------------------------


def test_existing_output_needs_overwrite(case, small_model_dir):
    inp, out, t1, flair = case
    assert infer(small_model_dir, out, t1, flair).exit_code == 0
    before = snapshot(out)
    contents = {name: (out / name).read_bytes() for name in before}
    result = infer(small_model_dir, out, t1, flair)
    assert_clean_error(result, "sub_t2_synth.nii.gz", "exists", "--overwrite")
    assert snapshot(out) == before
    assert {name: (out / name).read_bytes() for name in before} == contents

    result = infer(small_model_dir, out, t1, flair, extra=["--overwrite"])
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == sorted(before)  # same three files, no leftovers


def test_output_folder_is_a_file(case, small_model_dir, tmp_path):
    inp, out, t1, flair = case
    target = tmp_path / "out.txt"
    target.write_text("keep me\n")
    result = infer(small_model_dir, target, t1, flair)
    assert_clean_error(result, "out.txt", "output folder is a file")
    assert target.read_text() == "keep me\n"


def test_output_folder_cannot_be_created(case, small_model_dir, tmp_path):
    inp, out, t1, flair = case
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("keep me\n")
    before = snapshot(tmp_path)
    result = infer(small_model_dir, blocker / "sub", t1, flair)
    assert_clean_error(result, "somefile.txt/sub", "cannot create the output folder")
    assert blocker.read_text() == "keep me\n"
    assert snapshot(tmp_path) == before


# --- models ----------------------------------------------------------------------------------


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _no_config(model: Path) -> None:
    (model / "config.json").unlink()


def _no_weights(model: Path) -> None:
    (model / "model.safetensors").unlink()


def _more_res_blocks(model: Path) -> None:
    meta = json.loads((model / "config.json").read_text())
    meta["config"]["enc_res_blocks"] = 3
    (model / "config.json").write_text(json.dumps(meta))


def _flip_bytes(model: Path) -> None:
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))


BAD_MODELS = {
    "no-config": (_no_config, ["missing config.json"]),
    "no-weights": (_no_weights, ["missing weights file model.safetensors"]),
    "config-mismatch": (_more_res_blocks, ["model.safetensors", "weights do not match the model config",
                                           "missing tensors", "encoder.res.2"]),
    "corrupt-weights": (_flip_bytes, ["model.safetensors", "do not match the hash"]),
}


@pytest.mark.parametrize("spoil, words", BAD_MODELS.values(), ids=BAD_MODELS.keys())
def test_bad_model_directory(case, small_model_dir, tmp_path, spoil, words):
    inp, out, t1, flair = case
    model = _copy_model(small_model_dir, tmp_path / "spoilt_model")
    spoil(model)
    result = infer(model, out, t1, flair)
    assert_clean_error(result, "spoilt_model", *words)
    assert files_under(out) == []


def test_model_path_does_not_exist(case, tmp_path):
    inp, out, t1, flair = case
    result = infer(tmp_path / "no_such_model", out, t1, flair)
    assert_clean_error(result, "no_such_model", "does not exist")
    assert files_under(out) == []


def test_bundled_model_is_the_default(case):
    from tsf_trt.synthesis.source import ModelSource

    inp, out, t1, flair = case
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "-o", out, "--backend", "torch")
    assert result.exit_code == 0, result.output
    report = json.loads(next(out.glob("*.json")).read_text())
    assert report["model_id"] == ModelSource.resolve(None).model_id


def test_missing_bundled_model_is_a_clean_error(case, tmp_path, monkeypatch):
    import tsf_trt.bundled

    monkeypatch.setitem(tsf_trt.bundled.BUNDLED, "demo", tmp_path / "gone")
    inp, out, t1, flair = case
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "-o", out)
    assert_clean_error(result, "bundled model is missing", "--model")
    assert files_under(out) == []


@pytest.fixture(scope="module")
def seq2seq_model_dir(tmp_path_factory) -> Path:
    model = tmp_path_factory.mktemp("s2s") / "seq2seq_only"
    result = cli("import-reference", "--seq2seq", DATA / "small_seq2seq.pt", "--config", "small", "-o", model)
    assert result.exit_code == 0, result.output
    assert "Seq2Seq-only" in result.stdout
    return model


def test_seq2seq_only_model_refuses_two_inputs(case, seq2seq_model_dir):
    inp, out, t1, flair = case
    result = infer(seq2seq_model_dir, out, t1, flair)
    assert_clean_error(result, "Seq2Seq-only", "exactly one input", "got 2")
    assert files_under(out) == []


def test_seq2seq_only_model_one_input(case, seq2seq_model_dir):
    inp, out, t1, flair = case
    result = infer(seq2seq_model_dir, out, t1)
    assert result.exit_code == 0, result.output
    assert "no TSEM" in result.stdout
    assert sorted(os.listdir(out)) == ["sub_t2.json", "sub_t2_synth.nii.gz"]
    report = json.loads((out / "sub_t2.json").read_text())
    assert report["tsem"] is None
    assert report["outputs"]["tsem"] is None
    assert report["weights"] == {"t1": pytest.approx(1.0)}
    img = nib.load(out / "sub_t2_synth.nii.gz")
    assert img.shape == SHAPE and np.isfinite(img.get_fdata()).all()


# --- import-reference ------------------------------------------------------------------------


IMPORT_ERRORS = {
    "tsf-as-seq2seq": (["--seq2seq", DATA / "small_tsf.pt", "--tsf", DATA / "small_seq2seq.pt"],
                       ["small_tsf.pt", "TSF checkpoint", "--tsf"]),
    "seq2seq-as-tsf": (["--seq2seq", DATA / "small_seq2seq.pt", "--tsf", DATA / "small_seq2seq.pt"],
                       ["small_seq2seq.pt", "Seq2Seq (Generator) checkpoint", "--seq2seq"]),
    "wrong-config": (["--seq2seq", DATA / "small_seq2seq.pt", "--tsf", DATA / "small_tsf.pt",
                      "--config", "paper"],
                     ["small_seq2seq.pt", "do not match the model config", "another shape"]),
    "unknown-config": (["--seq2seq", DATA / "small_seq2seq.pt", "--config", "huge"],
                       ["huge", "not a preset"]),
    "missing-file": (["--seq2seq", "{tmp}/gone.pth"], ["gone.pth", "does not exist"]),
    "not-a-checkpoint": (["--seq2seq", "{tmp}/notes.pth"], ["notes.pth", "not a plain state_dict checkpoint"]),
}


@pytest.mark.parametrize("args, words", IMPORT_ERRORS.values(), ids=IMPORT_ERRORS.keys())
def test_import_reference_errors(tmp_path, args, words):
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    if "--config" not in args:
        args += ["--config", "small"]
    before = snapshot(tmp_path)
    result = cli("import-reference", *args, "-o", tmp_path / "model")
    assert_clean_error(result, *words)
    assert snapshot(tmp_path) == before  # no model dir, no hidden temp dir


def test_import_reference_output_exists(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "keep.txt").write_text("keep me\n")
    before = snapshot(tmp_path)
    result = cli("import-reference", "--seq2seq", DATA / "small_seq2seq.pt", "--tsf", DATA / "small_tsf.pt",
                 "--config", "small", "-o", model)
    assert_clean_error(result, "model", "exists", "--overwrite")
    assert snapshot(tmp_path) == before


# --- a real process ----------------------------------------------------------------------------


def test_console_script_prints_no_traceback(case, small_model_dir):
    inp, out, t1, flair = case
    assert SCRIPT.exists()
    proc = subprocess.run(
        [str(SCRIPT), "infer", "--inputs", str(inp / "gone_t1.nii.gz"), str(flair), "--target", "t2",
         "--model", str(small_model_dir), "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = problem_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "gone_t1.nii.gz" in lines[0] and "file not found" in lines[0]
    assert files_under(out) == []
