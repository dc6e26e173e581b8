"""The CLI's "bad input" contract.

Every bad input ends with exit code 1 (2 for Click's own usage errors), one error line on
stderr that names the offending file and the problem, no traceback, and nothing new in
the output folder (not even a hidden temp file). Good inputs write the three outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import AFFINE_LPS, DATA, make_head, problem_lines
from tsf_trt.cli import app

SHAPE = (40, 36, 12)
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- helpers ------------------------------------------------------------------------------


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under folder (hidden ones included) -> (size, mtime_ns) of a file, or
    (-1, 0) of a folder (whose mtime a harmless write probe changes); {} if absent."""
    if not folder.exists():
        return {}
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            st = path.stat()
            found[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns) if path.is_file() else (-1, 0)
    return found


def files_under(folder: Path) -> list[str]:
    """Files (not folders) under folder, hidden ones included."""
    if not folder.exists():
        return []
    return sorted(str((Path(r) / f).relative_to(folder)) for r, _, fs in os.walk(folder) for f in fs)


def assert_clean_error(result, *needles: str, code: int = 1) -> str:
    """Exit `code`, no traceback, exactly one non-blank stderr line holding every needle."""
    assert result.exit_code == code, (result.exit_code, result.output)
    # CliRunner maps an uncaught exception to exit code 1 too: make sure it was a clean exit.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = problem_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    message = lines[0]
    if code == 1:
        assert message.startswith("error: "), message
    for needle in needles:
        assert needle.lower() in message.lower(), (needle, message)
    return message


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE_LPS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


@pytest.fixture
def case(tmp_path):
    """Two good inputs (sub_t1, sub_flair) in tmp/in and an empty output folder tmp/out."""
    inp, out = tmp_path / "in", tmp_path / "out"
    out.mkdir()
    t1 = write_nifti(inp / "sub_t1.nii.gz", make_head(SHAPE, seed=0))
    flair = write_nifti(inp / "sub_flair.nii.gz", make_head(SHAPE, seed=1))
    return inp, out, t1, flair


def infer(model, out, *inputs, target="t2", extra=()):
    return cli("infer", "--inputs", *inputs, "--target", target, "--model", model, "-o", out, *extra)


# --- the good path ------------------------------------------------------------------------


def test_success_writes_three_files_in_input_grid(case, small_model_dir):
    inp, out, t1, flair = case
    result = infer(small_model_dir, out, t1, flair)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["sub_t2.json", "sub_t2_synth.nii.gz", "sub_t2_tsem.nii.gz"]
    ref = nib.load(t1)
    for name in ("sub_t2_synth.nii.gz", "sub_t2_tsem.nii.gz"):
        img = nib.load(out / name)
        assert img.shape == SHAPE
        np.testing.assert_allclose(img.affine, ref.affine)
        assert np.isfinite(img.get_fdata()).all()
    report = json.loads((out / "sub_t2.json").read_text())
    assert report["complete"] is True
    assert set(report["weights"]) == {"t1", "flair"}
    assert sum(report["weights"].values()) == pytest.approx(1.0, abs=1e-5)
    assert report["tsem"] is not None


def test_success_lists_each_output_on_one_line(case, small_model_dir, tmp_path):
    inp, out, t1, flair = case
    out = tmp_path / ("a_rather_long_output_folder_name_" * 3) / "out"
    result = infer(small_model_dir, out, t1, flair)
    assert result.exit_code == 0, result.output
    for name in ("sub_t2_synth.nii.gz", "sub_t2_tsem.nii.gz", "sub_t2.json"):
        assert f"  wrote {out / name}" in result.stdout.splitlines(), result.stdout


def test_4d_with_one_volume_works(case, small_model_dir):
    inp, out, t1, flair = case
    four = write_nifti(inp / "four_t1.nii.gz", make_head(SHAPE)[..., None])
    result = infer(small_model_dir, out, four)
    assert result.exit_code == 0, result.output
    assert nib.load(out / "four_t2_synth.nii.gz").shape == SHAPE


# --- bad input files -----------------------------------------------------------------------


def _text(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n")
    return path


def _truncated(path: Path) -> Path:
    full = write_nifti(path, make_head(SHAPE))
    data = full.read_bytes()
    full.write_bytes(data[: int(len(data) * 0.6)])
    return path


def _array(data):
    return lambda path: write_nifti(path, data)


def _with(index, value):
    data = make_head(SHAPE)
    data[index] = value
    return _array(data)


BAD_FILES = {
    # id: (file name, writer, words the message must hold)
    "text-as-nii": ("x_t1.nii.gz", _text, ["not a readable NIfTI"]),
    "truncated": ("cut_t1.nii.gz", _truncated, ["truncated or corrupt"]),
    "2d": ("flat_t1.nii.gz", _array(make_head(SHAPE)[..., 0]), ["2D", "3D volume expected"]),
    "5d": ("five_t1.nii.gz", _array(make_head(SHAPE)[..., None, None].repeat(2, axis=4)), ["5D"]),
    "4d-two-volumes": ("four_t1.nii.gz", _array(np.stack([make_head(SHAPE)] * 2, axis=3)), ["4D with 2 volumes"]),
    "nan": ("nan_t1.nii.gz", _with((20, 18, 6), np.nan), ["NaN or infinite"]),
    "inf": ("inf_t1.nii.gz", _with((20, 18, 6), np.inf), ["NaN or infinite"]),
    "zeros": ("zero_t1.nii.gz", _array(np.zeros(SHAPE, np.float32)), ["all voxels are equal", "value 0"]),
    "fives": ("five_t1.nii.gz", _array(np.full(SHAPE, 5.0, np.float32)), ["all voxels are equal", "value 5"]),
}


@pytest.mark.parametrize("name, writer, words", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_input_file(case, small_model_dir, name, writer, words):
    inp, out, t1, flair = case
    bad = writer(inp / name)
    result = infer(small_model_dir, out, bad, flair)
    assert_clean_error(result, name, *words)
    assert files_under(out) == []


def test_missing_input_file(case, small_model_dir):
    inp, out, t1, flair = case
    result = infer(small_model_dir, out, inp / "gone_t1.nii.gz", flair)
    assert_clean_error(result, "gone_t1.nii.gz", "file not found")
    assert files_under(out) == []


def test_txt_file_given_explicitly_is_not_nifti(case, small_model_dir):
    inp, out, t1, flair = case
    txt = _text(inp / "sub_t1.txt")
    result = infer(small_model_dir, out, f"t1={txt}", flair)
    assert_clean_error(result, "sub_t1.txt", "not a NIfTI file")
    assert files_under(out) == []


def test_txt_file_by_name(case, small_model_dir):
    inp, out, t1, flair = case
    txt = _text(inp / "sub_t1.txt")
    result = infer(small_model_dir, out, txt, flair)
    assert_clean_error(result, "sub_t1.txt", "not a NIfTI file")
    assert files_under(out) == []


def test_failed_run_leaves_no_output_folder_it_created(case, small_model_dir, tmp_path):
    inp, out, t1, flair = case
    fresh = tmp_path / "fresh"
    result = infer(small_model_dir, fresh / "deep", t1, inp / "gone_flair.nii.gz")
    assert_clean_error(result, "gone_flair.nii.gz")  # caught before anything is created
    assert not fresh.exists()
    flat = write_nifti(inp / "flat_flair.nii.gz", np.full((40, 36, 12), 5.0, np.float32))
    result = infer(small_model_dir, fresh / "deep", t1, flat)
    assert_clean_error(result, "flat_flair.nii.gz", "all voxels are equal")  # caught after the model loaded
    assert not fresh.exists()


def test_shapes_disagree(case, small_model_dir):
    inp, out, t1, flair = case
    small = write_nifti(inp / "other_flair.nii.gz", make_head((40, 36, 10), seed=1))
    result = infer(small_model_dir, out, t1, small)
    assert_clean_error(result, "other_flair.nii.gz", "sub_t1.nii.gz", "shape differs")
    assert files_under(out) == []


def test_affines_disagree(case, small_model_dir):
    inp, out, t1, flair = case
    shifted = AFFINE_LPS.copy()
    shifted[0, 3] += 5.0
    moved = write_nifti(inp / "moved_flair.nii.gz", make_head(SHAPE, seed=1), shifted)
    result = infer(small_model_dir, out, t1, moved)
    message = assert_clean_error(result, "moved_flair.nii.gz", "sub_t1.nii.gz", "affine differs")
    assert "5" in message
    assert files_under(out) == []


# --- bad sequences and tasks -----------------------------------------------------------------


def test_same_sequence_twice(case, small_model_dir):
    inp, out, t1, flair = case
    other = write_nifti(inp / "other.nii.gz", make_head(SHAPE, seed=3))
    result = infer(small_model_dir, out, t1, f"t1={other}")
    assert_clean_error(result, "other.nii.gz", "sub_t1.nii.gz", "T1 is given twice")
    assert files_under(out) == []


def test_unknown_sequence_name(case, small_model_dir):
    inp, out, t1, flair = case
    result = infer(small_model_dir, out, t1, f"foo={flair}")
    assert_clean_error(result, "sub_flair.nii.gz", "unknown sequence 'foo'", "t1, t1gd, t2, flair")
    assert files_under(out) == []


def test_file_name_without_sequence(case, small_model_dir):
    inp, out, t1, flair = case
    brain = write_nifti(inp / "brain.nii.gz", make_head(SHAPE))
    result = infer(small_model_dir, out, brain, flair)
    assert_clean_error(result, "brain.nii.gz", "cannot tell the sequence", "t1=PATH")
    assert files_under(out) == []


def test_unknown_target(case, small_model_dir):
    inp, out, t1, flair = case
    result = infer(small_model_dir, out, t1, flair, target="pd")
    assert_clean_error(result, "unknown sequence 'pd'")
    assert files_under(out) == []


def test_target_among_inputs(case, small_model_dir):
    inp, out, t1, flair = case
    result = infer(small_model_dir, out, t1, flair, target="flair")
    assert_clean_error(result, Path(flair).name, "is the target FLAIR itself")
    assert files_under(out) == []


def test_missing_target_is_a_usage_error(case, small_model_dir):
    inp, out, t1, flair = case
    result = cli("infer", "--inputs", t1, "--model", small_model_dir, "-o", out)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "--target" in result.stderr
    assert files_under(out) == []


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
    from tsf_trt.source import ModelSource

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


# --- Ctrl-C ----------------------------------------------------------------------------------


def _subject(t1: Path, flair: Path):
    from tsf_trt.subjects import Subject

    return Subject("sub", {0: t1, 3: flair})


def test_interrupt_mid_volume_leaves_nothing(case, small_model_dir):
    from tsf_trt.jobs import infer_subject
    from tsf_trt.options import InferRequest
    from tsf_trt.pipeline import Synthesizer

    inp, out, t1, flair = case
    synth = Synthesizer(small_model_dir, batch_size=2)
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
    import tsf_trt.outputs
    from tsf_trt.jobs import infer_subject
    from tsf_trt.options import InferRequest
    from tsf_trt.pipeline import Synthesizer

    inp, out, t1, flair = case
    real = tsf_trt.outputs.write_volume
    calls = []

    def save_then_interrupt(*args, **kwargs):
        calls.append(args[2])
        path = real(*args, **kwargs)
        if len(calls) == on_call:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(tsf_trt.outputs, "write_volume", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        infer_subject(Synthesizer(small_model_dir, batch_size=2), _subject(t1, flair), InferRequest(2, output=out))
    assert len(calls) == on_call
    assert files_under(out) == []


def test_interrupt_between_renames_leaves_nothing(case, small_model_dir, monkeypatch):
    import tsf_trt.atomic
    from tsf_trt.jobs import infer_subject
    from tsf_trt.options import InferRequest
    from tsf_trt.pipeline import Synthesizer

    inp, out, t1, flair = case
    real = tsf_trt.atomic.publish

    def publish(tmp, path, overwrite):
        # The temp files of save_volume are published into other temp files (hidden names);
        # interrupt just before the second *final* name is published.
        if not path.name.startswith(".") and any(not p.startswith(".") for p in os.listdir(out)):
            raise KeyboardInterrupt
        return real(tmp, path, overwrite)

    monkeypatch.setattr(tsf_trt.atomic, "publish", publish)
    with pytest.raises(KeyboardInterrupt):
        infer_subject(Synthesizer(small_model_dir, batch_size=2), _subject(t1, flair), InferRequest(2, output=out))
    assert files_under(out) == []


def test_cli_interrupt_exit_code_and_message(case, small_model_dir, monkeypatch):
    import tsf_trt.outputs

    inp, out, t1, flair = case

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tsf_trt.outputs, "write_volume", interrupt)
    result = infer(small_model_dir, out, t1, flair)
    assert result.exit_code == 130
    assert "Traceback" not in result.output
    assert "interrupted" in result.stderr
    assert files_under(out) == []


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


# --- folder mode -----------------------------------------------------------------------------


def _folder(root: Path, names=("sub01", "sub02", "sub03")) -> Path:
    for name in names:
        write_nifti(root / name / f"{name}_t1.nii.gz", make_head(SHAPE, seed=0))
        write_nifti(root / name / f"{name}_flair.nii.gz", make_head(SHAPE, seed=1))
    return root


def test_folder_with_one_bad_subject_and_resume(tmp_path, small_model_dir):
    data, out = _folder(tmp_path / "data"), tmp_path / "out"
    _truncated(data / "sub02" / "sub02_t1.nii.gz")
    args = ("infer", "--inputs", data, "--target", "t2", "--model", small_model_dir, "-o", out)

    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    # Rich folds long lines at 80 columns here (see test_folder_failure_is_one_line): read
    # the message with line breaks removed.
    assert result.stderr.count("failed") == 1, result.stderr
    assert "sub02: failed:" in result.stderr
    assert "sub02_t1.nii.gz" in result.stderr.replace("\n", "")
    assert "truncated or corrupt" in " ".join(result.stderr.split())
    assert "2 done, 0 skipped (already complete), 1 failed" in result.stdout
    for name in ("sub01", "sub03"):
        assert sorted(os.listdir(out / name)) == [f"{name}_t2.json", f"{name}_t2_synth.nii.gz",
                                                  f"{name}_t2_tsem.nii.gz"]
    assert files_under(out / "sub02") == []
    written = snapshot(out)

    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "0 done, 2 skipped (already complete), 1 failed" in result.stdout
    assert "sub02_t1.nii.gz" in result.stderr.replace("\n", "")
    assert snapshot(out) == written  # the finished subjects were not touched


def test_folder_failure_is_one_line(tmp_path, small_model_dir):
    data, out = _folder(tmp_path / "data", ["sub01", "sub02"]), tmp_path / "out"
    _truncated(data / "sub02" / "sub02_t1.nii.gz")
    result = cli("infer", "--inputs", data, "--target", "t2", "--model", small_model_dir, "-o", out)
    assert result.exit_code == 1, result.output
    failed = problem_lines(result.stderr)
    assert len(failed) == 1 and "ERROR   sub02: failed: " in failed[0], result.stderr
    assert "sub02_t1.nii.gz" in failed[0] and "truncated or corrupt" in failed[0], result.stderr


def test_folder_shards_cover_every_subject_once(tmp_path, small_model_dir):
    data = _folder(tmp_path / "data")
    done = []
    for i in (1, 2):
        out = tmp_path / f"out{i}"
        result = cli("infer", "--inputs", data, "--target", "t2", "--model", small_model_dir, "-o", out,
                     "--shard", f"{i}/2")
        assert result.exit_code == 0, result.output
        done += [p.name for p in out.iterdir() if (p / f"{p.name}_t2.json").is_file()]
    assert sorted(done) == ["sub01", "sub02", "sub03"]


@pytest.mark.parametrize("spec", ["0/2", "3/2", "x"])
def test_folder_bad_shard(tmp_path, small_model_dir, spec):
    data, out = _folder(tmp_path / "data", ["sub01"]), tmp_path / "out"
    result = cli("infer", "--inputs", data, "--target", "t2", "--model", small_model_dir, "-o", out,
                 "--shard", spec)
    assert_clean_error(result, "--shard", spec)
    assert files_under(out) == []


def test_nnunet_folder_needs_channels(tmp_path, small_model_dir):
    data, out = tmp_path / "nnunet", tmp_path / "out"
    for case_name in ("case1", "case2"):
        for channel in (0, 1):
            write_nifti(data / f"{case_name}_{channel:04d}.nii.gz", make_head(SHAPE, seed=channel))
    result = cli("infer", "--inputs", data, "--target", "t2", "--model", small_model_dir, "-o", out)
    assert_clean_error(result, "nnunet", "nnU-Net", "--channels")
    assert files_under(out) == []


# --- a real process ----------------------------------------------------------------------------


def test_console_script_prints_no_traceback(case, small_model_dir):
    inp, out, t1, flair = case
    script = Path(sys.executable).with_name("tsf-trt")
    assert script.exists()
    proc = subprocess.run(
        [str(script), "infer", "--inputs", str(inp / "gone_t1.nii.gz"), str(flair), "--target", "t2",
         "--model", str(small_model_dir), "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = problem_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "gone_t1.nii.gz" in lines[0] and "file not found" in lines[0]
    assert files_under(out) == []
