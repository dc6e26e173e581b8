"""Where outputs go (issue 25): one rule for every command's default output, and `infer -o NAME.nii.gz`.

The rule (tsf_trt.runs.outputs.default_output): what `infer` derives from subjects goes to
`derivatives/tsf-trt` of their data set's folder (the folder, BIDS dataset or --map CSV's folder
given; the current folder for files given one by one), never inside a subject's folder nor among
raw files; a run's report (evaluate, demo) goes to `tsf-trt-<command>` in the current folder.
One subject's `-o NAME.nii.gz` is the synthesis file itself, the other outputs beside it; a run of
many subjects refuses it, before the data are read or the model loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import FAST, SHAPE, assert_clean_error, cli, files_under, snapshot, subject_folder, write_nifti
from tsf_trt.errors import TsfError
from tsf_trt.inputs.intake import Intake
from tsf_trt.inputs.subjects import Subject
from tsf_trt.runs.outputs import OutputPaths, default_output
from tsf_trt.runs.request import InferRequest, split_output

pytestmark = pytest.mark.usefixtures("one_torch_thread")

T2 = 2  # tsf_trt.sequences.NAMES.index("t2")


# --- the rule, in its one place -----------------------------------------------------------------


def test_the_default_of_every_command_comes_from_one_rule(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    files = Intake((str(tmp_path / "plain" / "s_t1.nii.gz"), str(tmp_path / "plain" / "s_flair.nii.gz")))
    assert files.mode == "single" and files.root is None
    assert default_output(files.root) == Path("derivatives/tsf-trt")  # the current folder's
    assert default_output(Intake((str(tmp_path / "plain"),)).root) == tmp_path / "plain" / "derivatives" / "tsf-trt"
    assert default_output(Intake(bids=tmp_path / "bids").root) == tmp_path / "bids" / "derivatives" / "tsf-trt"
    assert default_output(Intake((str(tmp_path / "bids"),)).root) == tmp_path / "bids" / "derivatives" / "tsf-trt"
    assert default_output(Intake(map_file=tmp_path / "m" / "map.csv").root) == tmp_path / "m" / "derivatives" / "tsf-trt"
    assert default_output(command="evaluate") == Path("tsf-trt-evaluate")
    assert default_output(command="demo") == Path("tsf-trt-demo")
    with pytest.raises(ValueError):
        default_output(command="export")  # a command that requires its -o has no default


@pytest.mark.parametrize("command", ["demo", "evaluate"])
def test_demo_and_evaluate_help_state_the_default_they_use(command):
    import typer

    from tsf_trt.cli import app

    (option,) = [p for p in typer.main.get_command(app).commands[command].params if p.name == "output"]
    assert f"Default: {default_output(command=command)} in the current folder" in option.help


# --- infer's default: never inside the input tree ----------------------------------------------


def test_single_subject_default_is_the_current_folder_never_the_subjects(tmp_path, small_model_dir, monkeypatch):
    """The issue's case: `infer` on the files of `phantoms/P/` wrote `phantoms/P/derivatives/tsf-trt/`."""
    data = subject_folder(tmp_path / "data", ("sub01",))
    before = snapshot(data)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = cli("infer", "--inputs", data / "sub01" / "sub01_t1.nii.gz", data / "sub01" / "sub01_flair.nii.gz",
                 "--target", "t2", "--model", small_model_dir, *FAST)
    assert result.exit_code == 0, result.output
    assert snapshot(data) == before  # nothing in the data set, nothing in the subject's folder
    assert files_under(work) == [f"derivatives/tsf-trt/sub01_t2{end}" for end in (".json", "_synth.nii.gz",
                                                                                  "_tsem.nii.gz")]
    assert re.search(r"output: derivatives/tsf-trt \(the default: files given one by one: in the current folder",
                     result.stderr), result.stderr


@pytest.mark.parametrize("kind", ["folder", "bids"])
def test_a_data_sets_default_is_its_derivatives_beside_the_subjects(kind, tmp_path, small_model_dir, monkeypatch,
                                                                    no_model_load):
    """Checked up to the model's load (where no_model_load stops it): the log names the default,
    and the subjects' folders are as they were (the created, still empty, folders are removed)."""
    data = tmp_path / "data"
    if kind == "bids":
        write_nifti(data / "sub-01" / "anat" / "sub-01_T1w.nii.gz", np.ones(SHAPE, np.float32))
        (data / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    else:
        subject_folder(data, ("sub01",))
    before = snapshot(data)
    monkeypatch.chdir(tmp_path)
    result = cli("infer", "--data", data, "--target", "t2", "--model", small_model_dir, *FAST)
    assert isinstance(result.exception, AssertionError), result.output  # no_model_load: every check had passed
    assert f"output: {data / 'derivatives' / 'tsf-trt'} (the default: in the data set's folder" in result.stderr
    assert snapshot(data) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing in the current folder


# --- -o NAME.nii.gz: one subject's synthesis file -------------------------------------------------


def test_output_file_names_the_synthesis_and_its_siblings(case, small_model_dir, tmp_path):
    inp, _, t1, flair = case
    named = tmp_path / "results" / "new" / "sub_synthT2.nii.gz"  # its folders do not exist yet
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", named, *FAST)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in named.parent.iterdir()) == [
        "sub_synthT2.json", "sub_synthT2.nii.gz", "sub_synthT2_tsem.nii.gz"]
    for path in sorted(named.parent.iterdir()):
        assert f"  wrote {path}" in result.stdout.splitlines(), result.stdout
    img = nib.load(named)
    assert img.shape == SHAPE and np.isfinite(img.get_fdata()).all()
    report = json.loads((named.parent / "sub_synthT2.json").read_text())
    assert report["complete"] is True and report["subject"] == "sub"
    assert report["outputs"]["synth"] == "sub_synthT2.nii.gz" and report["outputs"]["tsem"] == "sub_synthT2_tsem.nii.gz"
    assert sorted(p.name for p in inp.iterdir()) == ["sub_flair.nii.gz", "sub_t1.nii.gz"]

    again = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", named, *FAST)
    assert_clean_error(again, str(named), "exists")  # as with a folder: only --overwrite replaces
    redo = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", named,
               "--overwrite", *FAST)
    assert redo.exit_code == 0, redo.output  # its own files, recognised by content whatever their names


@pytest.mark.parametrize("which", ["sub_synthT2.nii.gz", "sub_synthT2_tsem.nii.gz", "sub_synthT2.json"])
def test_output_file_never_replaces_a_users_file(which, case, small_model_dir, tmp_path, no_model_load):
    _, out, t1, flair = case
    mine = out / which
    if which.endswith(".json"):
        mine.write_text('{"mine": true}\n')
    else:
        write_nifti(mine, np.ones(SHAPE, np.float32))  # a NIfTI that tsf-trt did not write
    before = snapshot(out)
    args = ["infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o",
            out / "sub_synthT2.nii.gz", *FAST]
    assert_clean_error(cli(*args), str(mine), "exists")
    assert_clean_error(cli(*args, "--overwrite"), str(mine), "not written by tsf-trt")
    assert snapshot(out) == before


def test_output_file_that_is_an_input_is_refused(case, small_model_dir, no_model_load):
    inp, _, t1, flair = case
    before = snapshot(inp)
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o", t1,
                 "--overwrite", *FAST)
    assert_clean_error(result, str(t1), "is an input")
    assert snapshot(inp) == before


@pytest.mark.parametrize("kind", ["folder", "bids", "map"])
def test_many_subjects_refuse_an_output_file_before_reading_them(kind, tmp_path, small_model_dir, no_model_load):
    data = tmp_path / "data"
    data.mkdir()
    if kind == "bids":
        (data / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    source = ["--map", data / "map.csv"] if kind == "map" else ["--data", data]  # none of them is read
    result = cli("infer", *source, "--target", "t2", "--model", small_model_dir, "-o", tmp_path / "x.nii.gz", *FAST)
    assert_clean_error(result, str(tmp_path / "x.nii.gz"), "one subject's synthesis file", "give -o a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_an_image_format_tsf_trt_does_not_write_is_refused(case, small_model_dir, tmp_path, no_model_load):
    _, _, t1, flair = case
    result = cli("infer", "--inputs", t1, flair, "--target", "t2", "--model", small_model_dir, "-o",
                 tmp_path / "synth.mgz", *FAST)
    assert_clean_error(result, "synth.mgz", "writes NIfTI")
    assert not (tmp_path / "synth.mgz").exists()


def test_the_names_of_an_output_file_and_its_rules(tmp_path):
    assert split_output("out/sub.nii.gz") == (Path("out"), "sub.nii.gz")
    assert split_output("sub.NII") == (Path("."), "sub.NII")
    assert split_output("out/run.v2") == (Path("out/run.v2"), None)  # a folder
    assert split_output(".nii.gz") == (Path(".nii.gz"), None)  # no name before the extension: a folder
    paths = OutputPaths.for_subject(tmp_path, "sub", T2, True, interval=True, synth_name="s.nii")
    assert [p.name for p in paths.all()] == ["s.nii", "s_tsem.nii", "s_halfwidth.nii", "s.json"]
    one = Subject("sub", {0: tmp_path / "sub_t1.nii.gz"})
    with pytest.raises(TsfError, match="without a folder"):
        InferRequest(T2, tmp_path, synth_name="sub/s.nii.gz")
    request = InferRequest(T2, tmp_path, synth_name="s.nii.gz")
    assert request.outputs_of(one, True, own_folder=False).synth == tmp_path / "s.nii.gz"
    with pytest.raises(TsfError, match="one subject's synthesis file"):
        request.outputs_of(one, True, own_folder=True)  # a folder run's subject (tsf_trt.runs.jobs asks so)
    with pytest.raises(TsfError, match="one subject's synthesis file"):
        request.outputs_of(Subject("01", one.inputs, bids=("01", None)), True, own_folder=False)


# --- demo and evaluate: the current folder --------------------------------------------------------


@pytest.mark.parametrize("command", ["demo", "evaluate"])
def test_demo_and_evaluate_write_their_default_in_the_current_folder(command, tmp_path, small_model_dir, monkeypatch,
                                                                     no_model_load):
    """Without running either: a file where the default folder goes is refused before the model
    loads, by name, so the command did use the rule's folder."""
    data = subject_folder(tmp_path / "data", ("sub01",))
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / default_output(command=command)
    blocker.write_text("a file\n")
    args = ["--data", data, "--tasks", "t1->t2", "--no-compare"] if command == "evaluate" else ["--shape", "8", "8", "4"]
    result = cli(command, "--model", small_model_dir, *args, *FAST)
    assert_clean_error(result, blocker.name)
    assert blocker.read_text() == "a file\n"
    assert "derivatives" not in [p.name for p in data.iterdir()]
