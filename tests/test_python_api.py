"""The Python API cannot misread an input and gives the CLI's files: nibabel images in any storage
orientation, paths, Volumes and (array, affine) run as `infer` runs files, `Result.save` writes
`infer`'s images byte for byte, ω is keyed by sequence name, a bare array is refused in one line,
and `Synthesizer` runs with the CLI's defaults.

Byte equality with `infer` is exact by construction: the same float32 voxels reach the same
backend (torch, one thread: FAST) with the same options, and both write through
`Result.output_arrays` and `tsf_trt.files.volume_write.output_image`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from tests.helpers import AFFINE_LPS, FAST, cli, files_under, make_head
from tsf_trt.errors import InputError, TsfError
from tsf_trt.files.volume import load_volume
from tsf_trt.synthesis.options import RunOptions
from tsf_trt.synthesis.pipeline import Synthesizer

SHAPE = (40, 36, 10)  # (x, y, z) in the LPS storage
ORIENTATIONS = {"lps": ("L", "P", "S"), "ras": ("R", "A", "S"), "permuted": ("P", "S", "R")}


def stored(codes: tuple[str, str, str], seed: int) -> nib.Nifti1Image:
    """One head (the same voxels for every `codes`) stored with axes `codes`: permutations and flips
    of the voxel array with the affine that keeps every voxel where it was."""
    img = nib.Nifti1Image(make_head(SHAPE, seed=seed), AFFINE_LPS)
    return img.as_reoriented(ornt_transform(io_orientation(AFFINE_LPS), axcodes2ornt(codes)))


def images(codes: tuple[str, str, str]) -> dict[str, nib.Nifti1Image]:
    return {"t1": stored(codes, 1), "flair": stored(codes, 2)}


@pytest.fixture(scope="module")
def synth(small_model_dir) -> Synthesizer:
    return Synthesizer(small_model_dir, RunOptions(backend="torch", threads=1))  # what FAST asks of infer


@pytest.fixture(scope="module")
def subjects(tmp_path_factory, small_model_dir) -> dict[str, Path]:
    """Per orientation, a folder with sub_t1 and sub_flair files and `infer`'s outputs in cli/."""
    root = tmp_path_factory.mktemp("orientations")
    for name, codes in ORIENTATIONS.items():
        folder = root / name
        folder.mkdir()
        for seq, img in images(codes).items():
            nib.save(img, folder / f"sub_{seq}.nii.gz")
        done = cli("infer", "--inputs", folder / "sub_t1.nii.gz", folder / "sub_flair.nii.gz", "--target", "t2",
                   "--model", small_model_dir, "-o", folder / "cli", *FAST)
        assert done.exit_code == 0, done.output
    return {name: root / name for name in ORIENTATIONS}


def nifti_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nii.gz"))}


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_images_in_any_orientation_give_infers_files_bit_for_bit(synth, subjects, orientation, tmp_path):
    folder = subjects[orientation]
    from_files = {seq: nib.load(folder / f"sub_{seq}.nii.gz") for seq in ("t1", "flair")}
    for kind, given in (("loaded", from_files), ("in memory", images(ORIENTATIONS[orientation]))):
        result = synth.run(given, "t2")
        written = result.save(tmp_path / kind / "sub")
        assert [p.name for p in written] == ["sub_t2_synth.nii.gz", "sub_t2_tsem.nii.gz"]
        assert nifti_bytes(tmp_path / kind) == nifti_bytes(folder / "cli"), kind  # names and bytes
        report = json.loads((folder / "cli" / "sub_t2.json").read_text())
        assert result.weights == report["weights"] and list(result.weights) == ["t1", "flair"]
    synthesis, tsem = result.to_nifti()
    on_disk = nib.load(folder / "cli" / "sub_t2_synth.nii.gz")
    assert synthesis.shape == on_disk.shape == from_files["t1"].shape  # the input's own axis order
    assert np.array_equal(synthesis.affine, on_disk.affine)
    assert np.array_equal(np.asarray(synthesis.dataobj), np.asarray(on_disk.dataobj))
    assert tsem is not None and np.array_equal(np.asarray(tsem.dataobj),
                                               np.asarray(nib.load(folder / "cli" / "sub_t2_tsem.nii.gz").dataobj))


def test_every_orientation_reaches_the_network_as_the_same_volume(synth):
    """What an image is stored as changes nothing the network sees (the same voxels, reoriented)."""
    first, *others = [synth.run(images(codes), "t2") for codes in ORIENTATIONS.values()]
    assert first.image.shape == (SHAPE[2], SHAPE[1], SHAPE[0])  # (z, y, x)
    for other in others:
        assert np.array_equal(other.image, first.image) and np.array_equal(other.tsem, first.tsem)


def test_paths_volumes_images_and_arrays_with_affine_agree(synth, subjects):
    folder = subjects["permuted"]
    t1, flair = folder / "sub_t1.nii.gz", folder / "sub_flair.nii.gz"
    img = nib.load(t1)
    forms = {
        "str": {"t1": str(t1), "flair": str(flair)},
        "path": {"t1": t1, "flair": flair},
        "volume": {"t1": load_volume(t1), "flair": load_volume(flair)},
        "image": {"t1": img, "flair": nib.load(flair)},
        "array with affine": {"t1": (np.asanyarray(img.dataobj), img.affine), "flair": flair},
        "indices": {0: t1, 3: flair},
    }
    results = {name: synth.run(given, "t2") for name, given in forms.items()}
    reference = results.pop("path")
    for name, result in results.items():
        assert np.array_equal(result.image, reference.image), name
        assert np.array_equal(result.tsem, reference.tsem) and result.weights == reference.weights, name
    assert reference.inputs == {"t1": t1, "flair": flair}
    assert results["image"].inputs == reference.inputs  # an image loaded from a file is that file
    assert results["array with affine"].inputs["t1"] == Path("<t1 array>")
    # the array's image is built from its affine: it lands on the file's grid, in the file's layout
    from_array = results["array with affine"].to_nifti().synth
    assert from_array.shape == img.shape and np.array_equal(from_array.affine, img.affine)


def test_a_bare_array_is_refused_in_one_line(synth, subjects):
    data = np.asanyarray(nib.load(subjects["lps"] / "sub_t1.nii.gz").dataobj)
    with pytest.raises(TsfError) as caught:
        synth.run({"t1": data, "flair": subjects["lps"] / "sub_flair.nii.gz"}, "t2")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("t1: a bare array has no orientation")
    assert "(array, affine)" in message and "nib.Nifti1Image(array, affine)" in message
    with pytest.raises(TsfError, match=r"^flair: expected a NIfTI file's path, a nibabel image.*got list$"):
        synth.run({"t1": subjects["lps"] / "sub_t1.nii.gz", "flair": data.tolist()}, "t2")
    with pytest.raises(InputError, match=r"<t1 array>: the affine must be a 4x4 array of numbers, got .LPS."):
        synth.run({"t1": (data, "LPS"), "flair": subjects["lps"] / "sub_flair.nii.gz"}, "t2")


def test_a_bad_image_is_one_line_naming_it(synth, subjects):
    """An image in memory is checked as its file would be; the message names it as `<t1 image>`
    (or its file, for an image nib.load read)."""
    flair = subjects["lps"] / "sub_flair.nii.gz"
    head = make_head(SHAPE, seed=1)
    nan = head.copy()
    nan[0, 0, 0] = np.nan
    cases = {"contains 1 NaN or infinite voxel": nib.Nifti1Image(nan, AFFINE_LPS),
             "is 4D with 2 volumes": nib.Nifti1Image(np.stack([head, head], -1), AFFINE_LPS),
             "all voxels are equal": nib.Nifti1Image(np.ones(SHAPE, np.float32), AFFINE_LPS)}
    for why, img in cases.items():
        with pytest.raises(InputError, match=rf"^<t1 image>: {why}") as caught:
            synth.run({"t1": img, "flair": flair}, "t2")
        assert "\n" not in str(caught.value)
    cut = nib.load(subjects["permuted"] / "sub_t1.nii.gz").slicer[:, :, :-1]  # a new image, in memory
    with pytest.raises(InputError, match=r"^<t1 image>: grid shape differs from sub_flair.nii.gz"):
        synth.run({"flair": flair, "t1": cut}, "t2")


def test_save_never_writes_an_input_nor_a_foreign_file(synth, subjects, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    t1 = shutil.copy(subjects["ras"] / "sub_t1.nii.gz", folder / "x_t2_synth.nii.gz")  # named as an output
    flair = shutil.copy(subjects["ras"] / "sub_flair.nii.gz", folder / "x_flair.nii.gz")
    result = synth.run({"t1": t1, "flair": flair}, "t2")
    before = t1.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(InputError, match="x_t2_synth.nii.gz: is the t1 input .* an input is never written"):
            result.save(folder / "x", overwrite=overwrite)
    assert t1.read_bytes() == before and files_under(folder) == ["x_flair.nii.gz", "x_t2_synth.nii.gz"]

    out = tmp_path / "out"
    out.mkdir()
    (out / "y_t2_tsem.nii.gz").write_bytes(b"a user's file")
    with pytest.raises(InputError, match="y_t2_tsem.nii.gz: exists"):
        result.save(out / "y")
    with pytest.raises(InputError, match="y_t2_tsem.nii.gz"):
        result.save(out / "y", overwrite=True)  # not tsf-trt's: never replaced
    assert files_under(out) == ["y_t2_tsem.nii.gz"]  # nothing partial, no temp file
    assert (out / "y_t2_tsem.nii.gz").read_bytes() == b"a user's file"

    first = result.save(out / "new" / "z")  # a missing folder is made
    result.save(out / "new" / "z", overwrite=True)  # tsf-trt's own: replaced
    assert [p.name for p in first] == ["z_t2_synth.nii.gz", "z_t2_tsem.nii.gz"]
    assert result.save(str(out / "new") + "/") == [out / "new" / "t2_synth.nii.gz", out / "new" / "t2_tsem.nii.gz"]


def test_arrays_in_the_networks_layout_run_explicitly_and_have_no_grid(synth, subjects):
    volumes = {seq: load_volume(subjects["ras"] / f"sub_{seq}.nii.gz") for seq in ("t1", "flair")}
    result = synth.run_canonical({seq: v.data for seq, v in volumes.items()}, "t2")
    with pytest.raises(TsfError, match=r"^this result has no input grid .*pass like=") as caught:
        result.to_nifti()
    assert "\n" not in str(caught.value)
    with pytest.raises(TsfError, match="no input grid"):
        result.save("anywhere")
    given = synth.run(volumes, "t2")
    ours, theirs = result.to_nifti(like=volumes["t1"]).synth, given.to_nifti().synth
    assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))


def _commands(typer_app, prefix: str = ""):
    for command in typer_app.registered_commands:
        yield prefix + (command.name or command.callback.__name__), command.callback
    for group in typer_app.registered_groups:
        callback = group.typer_instance.registered_callback
        if callback is not None and callback.callback is not None:
            yield prefix + group.name, callback.callback
        yield from _commands(group.typer_instance, prefix + group.name + " ")


def test_synthesizer_and_every_command_share_run_defaults(small_model_dir, monkeypatch):
    """One source of how to run: every command that picks a runtime (has --backend) defaults each
    RunOptions field as RunOptions does, and so does Synthesizer without options."""
    import tsf_trt.synthesis.pipeline
    from tsf_trt.cli import app

    defaults = {f.name: f.default for f in dataclasses.fields(RunOptions)}
    checked = []
    for name, callback in _commands(app):
        params = inspect.signature(callback).parameters
        if "backend" not in params:
            continue
        checked.append(name)
        for field, default in defaults.items():
            if field in params:
                assert params[field].default == default, (name, field)
    assert {"infer", "demo", "evaluate", "calibrate"} <= set(checked)
    built = []  # the options the backend is built with (not built here: auto would time every runtime)
    monkeypatch.setattr(tsf_trt.synthesis.pipeline, "create_backend", lambda source, options: built.append(options))
    assert Synthesizer(small_model_dir).options == RunOptions() and built == [RunOptions()]
