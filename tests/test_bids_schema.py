"""A BIDS run's derivative checked against the BIDS schema (bidsschematools, in [dev]), file by file:
every name by the schema's file rules for derivatives or listed in the derivative's .bidsignore,
every image's sidecar by the schema's sidecar rules (REQUIRED fields present, values as the metadata
definitions say), every file by the schema's checks; a query for T2w images finds the synthesis
only; sidecars hold BIDS fields and the `tsf-trt` block, the run's record everything else.

The schema's rules pick files with expressions in its own small language; tests/bids_schema_rules.py
implements it, and is first held to the schema's own tests of that language (meta.expression_tests).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.helpers import FAST, SHAPE, cli, make_head, wide_inputs
from tsf_trt.inputs.bids import parse_name
from tsf_trt.inputs.bids_derivatives import BIDSIGNORE, RECORD_FOLDER

bst_rules = pytest.importorskip("bidsschematools.rules")
from tests.bids_schema_rules import (SCHEMA, applies, file_context, files, holds, ignored,  # noqa: E402
                                     level_of, rules, truthy, type_of, valid)

#: What a run knows and a sidecar must not hold (issue 25): the record's.
RUN_INTERNALS = {"host", "pid", "timings_s", "frame", "backend", "precision", "batch_size", "preflight", "complete"}
#: Checks about what a dataset's authors write, not tsf-trt: a README, an author list.
AUTHORS_CHECKS = {"ReadmeFileMissing", "TooFewAuthors"}


def test_the_expression_evaluator_passes_the_schemas_own_tests() -> None:
    for case in SCHEMA.meta.expression_tests:
        got = holds(case["expression"], {"sidecar": {}})
        want = case["result"]
        assert got == want and type_of(got) == type_of(want), (case["expression"], got, want)


# --- a BIDS run ------------------------------------------------------------------------------------


def _write(path: Path, data: np.ndarray) -> None:
    """A raw input as a converter writes it: voxel units in mm (the schema's NiftiUnit check)."""
    from tests.sample_subject import AFFINE_LPS

    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(data), AFFINE_LPS)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)


def _calibration(path: Path, model_dir: Path) -> Path:
    """A calibration of the small model that applies to the test heads (t1,flair->t2), so the run
    writes half-width maps too."""
    from tsf_trt.synthesis.source import ModelSource
    from tsf_trt.uncertainty.calibration import Calibration, TaskCalibration, write_calibration
    from tsf_trt.uncertainty.heuristic import Heuristic

    entry = TaskCalibration(Heuristic(("edge",), (0.01, 1.0)), 2.0, 20, 0.09, 1e9, 0.2)
    write_calibration(Calibration(ModelSource.resolve(model_dir).model_id, 0.1, {"t1,flair->t2": entry},
                                  (0.9, 1.1), inputs=wide_inputs()), path, overwrite=True)
    return path


def _raw_dataset(root: Path) -> Path:
    """sub-01 without a session, sub-02 in ses-pre; T1w and FLAIR each."""
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.9.0"}))
    for anat, stem in ((root / "sub-01/anat", "sub-01"), (root / "sub-02/ses-pre/anat", "sub-02_ses-pre")):
        for k, suffix in enumerate(("T1w", "FLAIR")):
            _write(anat / f"{stem}_{suffix}.nii.gz", make_head(SHAPE, seed=k))
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_model_dir) -> tuple[Path, Path]:
    """(raw dataset, its derivative) after one `infer --bids --target t2` with a calibration."""
    import torch

    top = tmp_path_factory.mktemp("bids_schema")
    raw = _raw_dataset(top / "raw")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("TSF_TRT_CACHE", str(top / "cache"))
            result = cli("infer", "--bids", raw, "--target", "t2", "--model", small_model_dir,
                         "--calibration", _calibration(top / "cal.json", small_model_dir), *FAST)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return raw, raw / "derivatives" / "tsf-trt"


def test_every_file_name_is_a_schema_rules_or_one_the_bidsignore_lists(run) -> None:
    raw, deriv = run
    patterns = [r["regex"] for group in (SCHEMA.rules.files.common, SCHEMA.rules.files.deriv)
             for r in bst_rules.regexify_filename_rules(group, SCHEMA, level=2)]
    ignore = (deriv / ".bidsignore").read_text().splitlines()
    assert ignore == list(BIDSIGNORE)
    named, listed = [], []
    for path in files(deriv):
        relative = path.relative_to(deriv).as_posix()
        if ignored(relative, ignore):
            listed.append(relative)
        else:
            assert any(re.fullmatch(r, relative) for r in patterns), f"{relative}: no file rule of the schema"
            named.append(relative)
    anat = ("sub-01/anat/sub-01_", "sub-02/ses-pre/anat/sub-02_ses-pre_")
    assert named == sorted(["dataset_description.json",
                            *(f"{a}desc-tsfsynth_T2w{ext}" for a in anat for ext in (".json", ".nii.gz"))])
    assert sorted(p for p in listed if not p.startswith(f"{RECORD_FOLDER}/") and not p.endswith(".tsv")) == sorted(
        f"{a}desc-T2w_{kind}{ext}" for a in anat for kind in ("halfwidth", "tsem") for ext in (".json", ".nii.gz"))
    assert sorted(p for p in listed if p.startswith(f"{RECORD_FOLDER}/")) == [
        f"{RECORD_FOLDER}/sub-01_t2.json", f"{RECORD_FOLDER}/sub-02_ses-pre_t2.json"]


def test_every_sidecar_has_what_the_schema_requires_with_valid_values(run) -> None:
    """Each image's rules (maps too: were error maps ever standardised, the same rules would
    apply), REQUIRED fields present, each BIDS field's value as objects.metadata defines it, and
    every BIDS URI leading to a file."""
    raw, deriv = run
    images = [p for p in files(deriv) if p.name.endswith(".nii.gz")]
    assert len(images) == 6
    uri = re.compile(SCHEMA.objects.formats.bids_uri.pattern)
    links = {"": deriv, "raw": (deriv / json.loads((deriv / "dataset_description.json").read_text())
                                ["DatasetLinks"]["raw"]).resolve()}
    for image in images:
        context = file_context(image, deriv)
        sidecar = context["sidecar"]
        applied = [name for name, rule in rules(SCHEMA.rules.sidecars) if applies(rule, context)]
        assert "ImageDerivatives" in applied and "CommonDerivativeFields" in applied, (image.name, applied)
        for name, rule in rules(SCHEMA.rules.sidecars):
            if name in applied:
                missing = [f for f, lv in rule["fields"].items() if level_of(lv) == "required" and f not in sidecar]
                assert not missing, (image.name, name, missing)
        assert sidecar["SkullStripped"] is True  # the inputs are skull-stripped test heads
        for key, value in sidecar.items():
            if key == "tsf-trt":
                continue
            assert valid(value, SCHEMA.objects.metadata[key].to_dict()), (image.name, key, value)
        for source in sidecar["Sources"]:
            assert uri.fullmatch(source), source
            dataset, _, inside = source[len("bids:"):].partition(":")
            assert (links[dataset] / inside).is_file(), source


def test_every_file_passes_the_schemas_checks(run) -> None:
    """rules.checks: every check whose selectors pick one of the derivative's files holds, but
    those about what the dataset's authors write (AUTHORS_CHECKS: a README, authors)."""
    raw, deriv = run
    applied: set[str] = set()
    for path in files(deriv):
        if ignored(path.relative_to(deriv).as_posix(), list(BIDSIGNORE)) and path.suffix == ".tsv":
            continue  # the cohort table: not a BIDS file (rules for .tsv read its columns)
        context = file_context(path, deriv)
        for name, rule in rules(SCHEMA.rules.checks):
            if name in AUTHORS_CHECKS or not applies(rule, context):
                continue
            applied.add(name)
            failed = [c for c in rule["checks"] if not truthy(holds(c, context))]
            assert not failed, (path.relative_to(deriv).as_posix(), name, failed)
    # the checks that concern these files did run (a context that selects nothing would pass all)
    concerned = {"NiftiDimension", "NiftiUnit", "XformCodes0", "DuplicateFiles", "SubjectFolders", "UnknownVersion"}
    assert concerned <= applied, sorted(concerned - applied)


def test_a_query_for_t2w_images_finds_the_synthesis_only(run) -> None:
    raw, deriv = run
    synths = sorted(deriv.rglob("*_desc-tsfsynth_T2w.nii.gz"))
    assert len(synths) == 2
    assert sorted(deriv.rglob("*_T2w.nii.gz")) == synths
    # a query by entities (what pybids' layout.get(suffix="T2w", extension=".nii.gz") reads from names)
    queried = [p for p in files(deriv) if (n := parse_name(p.name)) and n.suffix == "T2w" and n.extension == ".nii.gz"]
    assert queried == synths
    for synth in synths:
        maps = json.loads(synth.with_name(synth.name.replace(".nii.gz", ".json")).read_text())["tsf-trt"]
        assert {maps["tsem"], maps["halfwidth"]} == {
            "bids::" + p.relative_to(deriv).as_posix() for p in synth.parent.glob("*_desc-T2w_*.nii.gz")}


def test_sidecars_hold_bids_fields_and_the_tsf_trt_block_and_the_record_the_rest(run) -> None:
    raw, deriv = run
    sidecars = [p for p in files(deriv) if p.suffix == ".json" and p.parent.name == "anat"]
    assert len(sidecars) == 6
    for path in sidecars:
        sidecar = json.loads(path.read_text())
        assert all(key == "tsf-trt" or key in SCHEMA.objects.metadata for key in sidecar), (path.name, list(sidecar))
        block = sidecar["tsf-trt"]
        assert not RUN_INTERNALS & set(block), (path.name, sorted(RUN_INTERNALS & set(block)))
        record = json.loads((deriv / block["record"][len("bids::"):]).read_text())
        assert block["model_id"] == record["model_id"] and block["version"] == record["tsf_trt_version"]
    record = json.loads((deriv / RECORD_FOLDER / "sub-02_ses-pre_t2.json").read_text())
    assert RUN_INTERNALS <= set(record) and record["complete"] is True
    assert record["bids"] == {"subject": "02", "session": "pre"}
    # outputs are named from the record's folder
    assert (deriv / RECORD_FOLDER / record["outputs"]["synth"]).resolve() == \
        (deriv / "sub-02/ses-pre/anat/sub-02_ses-pre_desc-tsfsynth_T2w.nii.gz").resolve()
    assert record["interval"]["applies"] is True and math.isfinite(record["interval"]["alpha"])


def test_a_later_run_resumes_and_replaces_an_earlier_versions_maps(run, tmp_path, small_model_dir,
                                                                   one_torch_thread) -> None:
    """The record marks a finished subject: a second run skips both. A subject an earlier version
    wrote (maps under the T2w suffix, the report as the sidecar, no record) is redone, and its
    error maps under an image's suffix are gone; a user's file of such a name is left alone."""
    from tsf_trt.files.ownership import is_own_file

    raw = tmp_path / "raw"
    shutil.copytree(run[0], raw)
    deriv = raw / "derivatives" / "tsf-trt"
    anat = deriv / "sub-01/anat"
    old_tsem = anat / "sub-01_desc-tsem_T2w.nii.gz"
    shutil.copy(anat / "sub-01_desc-T2w_tsem.nii.gz", old_tsem)  # tsf-trt's own by its header
    (anat / "sub-01_desc-tsem_T2w.json").write_text(json.dumps({"Description": "TSEM: |...|", "Sources": []}))
    user = anat / "sub-01_desc-halfwidth_T2w.json"
    user.write_text("{}")  # not tsf-trt's: never removed
    (deriv / RECORD_FOLDER / "sub-01_t2.json").unlink()
    assert is_own_file(old_tsem) and not is_own_file(user)
    result = cli("infer", "--bids", raw, "--target", "t2", "--model", small_model_dir, *FAST)
    assert result.exit_code == 0, result.output
    assert "1 done, 1 skipped" in result.stdout
    assert not old_tsem.exists() and not (anat / "sub-01_desc-tsem_T2w.json").exists() and user.exists()
    assert sorted(deriv.rglob("*_T2w.nii.gz")) == sorted(deriv.rglob("*_desc-tsfsynth_T2w.nii.gz"))
    assert (deriv / RECORD_FOLDER / "sub-01_t2.json").is_file()
