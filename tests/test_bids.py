"""BIDS names, discovery in a raw dataset (tsf_trt/inputs/bids.py), derivative naming and the
derivative's .bidsignore (tsf_trt/inputs/bids_derivatives.py, tsf_trt/runs/bids_outputs.py); a whole
run's derivative against the schema: tests/test_bids_schema.py.

File names marked "spec" are the BIDS specification's own examples, with the section they
come from; trees are empty placeholder files, since only names are read here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tsf_trt.errors import InputError, TsfError
from tsf_trt.inputs import bids
from tsf_trt.inputs import bids_derivatives as derive
from tsf_trt.inputs.bids import BidsName, find_cases, format_name, parse_name

from tests.helpers import FLAIR, T1, T1GD, T2, touch  # empty files: only names matter here


# --- names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, entities, suffix, extension", [
    # spec, "Common principles" > "Filenames"
    ("sub-01_task-rest_eeg.edf", {"sub": "01", "task": "rest"}, "eeg", ".edf"),
    # spec, "Definitions" (suffix)
    ("sub-05_task-matchingpennies_eeg.vhdr", {"sub": "05", "task": "matchingpennies"}, "eeg", ".vhdr"),
    # spec, Entities appendix > "acq"
    ("sub-01_acq-highres_T1w.nii.gz", {"sub": "01", "acq": "highres"}, "T1w", ".nii.gz"),
    # spec, "Magnetic Resonance Imaging" > "Non-parametric structural MR images"
    ("sub-01_part-phase_T1w.json", {"sub": "01", "part": "phase"}, "T1w", ".json"),
    # spec, "Magnetic Resonance Imaging" > "Defacing masks"
    ("sub-01_mod-T1w_defacemask.nii.gz", {"sub": "01", "mod": "T1w"}, "defacemask", ".nii.gz"),
    # spec, "Magnetic Resonance Imaging" > "Using IntendedFor metadata"
    ("sub-01_ses-pre_task-motor_run-1_bold.nii.gz", {"sub": "01", "ses": "pre", "task": "motor", "run": "1"},
     "bold", ".nii.gz"),
    # spec, Derivatives "Common data types and metadata" > "Preprocessed or cleaned data"
    ("sub-001_task-rest_run-1_space-MNI305_desc-preproc_bold.nii.gz",
     {"sub": "001", "task": "rest", "run": "1", "space": "MNI305", "desc": "preproc"}, "bold", ".nii.gz"),
    # spec, Derivatives "Common data types and metadata" > "Spatial references": a two-part extension
    ("sub-01_task-rest_space-fsLR_den-91k_bold.dtseries.nii",
     {"sub": "01", "task": "rest", "space": "fsLR", "den": "91k"}, "bold", ".dtseries.nii"),
    # the module's own example: every entity an MRI anat file can carry before the suffix
    ("sub-01_ses-pre_acq-mprage_ce-gadolinium_run-1_T1w.nii.gz",
     {"sub": "01", "ses": "pre", "acq": "mprage", "ce": "gadolinium", "run": "1"}, "T1w", ".nii.gz"),
])
def test_parse_name_reads_the_specifications_examples(name, entities, suffix, extension) -> None:
    got = parse_name(name)
    assert got == BidsName(entities, suffix, extension)
    assert list(got.entities) == list(entities)  # in the specification's order
    assert str(got) == name and format_name(entities, suffix, extension) == name


@pytest.mark.parametrize("name", [
    "sub-01_acq-laser_acq-uneven_electrodes.tsv",  # spec, "Filenames": an entity used twice
    ".gitignore",                                  # spec, "Definitions" (extension): none
    "sub-01_run-1_acq-fast_T1w.nii.gz",            # acq- belongs before run- ("Entity table")
    "sub-01_foo-bar_T1w.nii.gz",                   # no such entity
    "sub-01_run-one_T1w.nii.gz",                   # run- takes an index
    "sub-01_acq-high-res_T1w.nii.gz",              # '-' is not in a label
    "sub-01_T1w",                                  # no extension
    "sub-01_T1w.nii.gz~",                          # an editor's backup
    "sub-01_T1-w.nii.gz",                          # suffix with '-'
])
def test_parse_name_refuses_invalid_names(name: str) -> None:
    assert parse_name(name) is None


def test_format_name_orders_entities_and_checks_values() -> None:
    scrambled = {"run": "1", "ce": "gadolinium", "sub": "01", "acq": "mprage", "ses": "pre"}
    assert format_name(scrambled, "T1w", ".nii.gz") == "sub-01_ses-pre_acq-mprage_ce-gadolinium_run-1_T1w.nii.gz"
    for bad in ({"sub": "0_1"}, {"run": "a"}, {"nope": "x"}):
        with pytest.raises(TsfError):
            format_name(bad, "T1w", ".nii.gz")


def test_entity_table_matches_the_schema() -> None:
    """Checked against the BIDS schema shipped with bidsschematools, where installed."""
    bst_schema = pytest.importorskip("bidsschematools.schema")
    schema = bst_schema.load_schema()
    entities = schema["objects"]["entities"]
    assert bids.ENTITY_ORDER == tuple(entities[n]["name"] for n in schema["rules"]["entities"])
    assert bids.INDEX_ENTITIES == {entities[n]["name"] for n in schema["rules"]["entities"]
                                   if entities[n]["format"] == "index"}
    assert bids.ENTITY_NAMES == {entities[n]["name"]: n for n in schema["rules"]["entities"]}


# --- discovery -------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """sub-01: all four sequences and a T2starw; sub-02: two sessions, two T1w in ses-1;
    sub-03: no anat folder."""
    root = tmp_path / "ds"
    touch(root, "dataset_description.json", "participants.tsv",
          "sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T1w.json",
          "sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz", "sub-01/anat/sub-01_ce-gadolinium_T1w.json",
          "sub-01/anat/sub-01_T2w.nii.gz", "sub-01/anat/sub-01_FLAIR.nii.gz",
          "sub-01/anat/sub-01_T2starw.nii.gz", "sub-01/anat/sub-01_T2starw.json",
          "sub-01/anat/.sub-01_T2w.nii.gz.tmp-1", "sub-01/func/sub-01_task-rest_bold.nii.gz",
          "sub-02/ses-1/anat/sub-02_ses-1_acq-mprage_T1w.nii.gz",
          "sub-02/ses-1/anat/sub-02_ses-1_acq-spgr_T1w.nii.gz",
          "sub-02/ses-1/anat/sub-02_ses-1_FLAIR.nii.gz",
          "sub-02/ses-2/anat/sub-02_ses-2_acq-mprage_T1w.nii.gz",
          "sub-02/ses-2/anat/sub-02_ses-2_acq-fast_T2w.nii.gz",
          "sub-03/func/sub-03_task-rest_bold.nii.gz")
    return root


def by_name(cases: list[bids.BidsCase]) -> dict[str, bids.BidsCase]:
    return {c.name: c for c in cases}


def test_find_cases_maps_suffixes_and_lists_what_it_leaves(dataset: Path) -> None:
    cases = by_name(find_cases(dataset))
    assert list(cases) == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03"]
    one = cases["sub-01"]
    anat = dataset / "sub-01" / "anat"
    assert one.inputs == {T1: anat / "sub-01_T1w.nii.gz", T1GD: anat / "sub-01_ce-gadolinium_T1w.nii.gz",
                          T2: anat / "sub-01_T2w.nii.gz", FLAIR: anat / "sub-01_FLAIR.nii.gz"}
    assert one.problem is None and (one.subject, one.session) == ("01", None)
    # the sidecars are expected, the hidden temp file is skipped: only the T2starw is left over
    assert one.unused == [(anat / "sub-01_T2starw.nii.gz", "not an anat suffix tsf-trt uses (T2starw)")]
    assert cases["sub-03"].inputs == {} and "no anat/ folder" in cases["sub-03"].problem


def test_two_candidates_are_the_cases_problem_naming_both(dataset: Path) -> None:
    case = by_name(find_cases(dataset))["sub-02_ses-1"]
    assert case.session == "1" and case.inputs == {FLAIR: dataset / "sub-02/ses-1/anat/sub-02_ses-1_FLAIR.nii.gz"}
    assert case.problem == ("T1 has 2 candidate files: sub-02_ses-1_acq-mprage_T1w.nii.gz, "
                            "sub-02_ses-1_acq-spgr_T1w.nii.gz (they differ in acq-): pick one with "
                            "--bids-filter t1.acq=mprage")


def test_select_picks_one_and_lists_the_other(dataset: Path) -> None:
    cases = by_name(find_cases(dataset, select={"acq": "mprage"}))
    ses1 = cases["sub-02_ses-1"]
    anat = dataset / "sub-02/ses-1/anat"
    assert ses1.problem is None and ses1.inputs[T1] == anat / "sub-02_ses-1_acq-mprage_T1w.nii.gz"
    assert ses1.unused == [(anat / "sub-02_ses-1_acq-spgr_T1w.nii.gz",
                            "not selected: acq-spgr (--bids-filter acq=mprage)")]
    # applied to T2 too, whose candidate uses acq-: a strict filter, said in the unused list
    ses2 = cases["sub-02_ses-2"]
    assert T2 not in ses2.inputs
    assert ses2.unused == [(dataset / "sub-02/ses-2/anat/sub-02_ses-2_acq-fast_T2w.nii.gz",
                            "not selected: acq-fast (--bids-filter acq=mprage)")]
    # ...and not to sub-01, whose files use no acq-: nothing is lost there
    assert len(cases["sub-01"].inputs) == 4
    # scoped to one sequence (by any spelling, by entity name), the T2 stays
    scoped = by_name(find_cases(dataset, select={"t1w.acquisition": "mprage"}))["sub-02_ses-2"]
    assert T2 in scoped.inputs and scoped.problem is None and scoped.unused == []


def test_select_none_keeps_the_file_without_the_entity(tmp_path: Path) -> None:
    touch(tmp_path, "sub-1/anat/sub-1_T1w.nii.gz", "sub-1/anat/sub-1_rec-norm_T1w.nii.gz",
          "sub-1/anat/sub-1_run-01_T2w.nii.gz", "sub-1/anat/sub-1_run-02_T2w.nii.gz")
    (case,) = find_cases(tmp_path)
    assert "T2 has 2 candidate files" in case.problem and "run-" in case.problem  # runs are not guessed
    assert "T1 has 2 candidate files" in case.problem
    (case,) = find_cases(tmp_path, select={"rec": None, "t2.run": "2"})  # indices compare as numbers
    assert case.problem is None
    anat = tmp_path / "sub-1" / "anat"
    assert case.inputs == {T1: anat / "sub-1_T1w.nii.gz", T2: anat / "sub-1_run-02_T2w.nii.gz"}
    assert sorted(why for _, why in case.unused) == ["not selected: rec-norm (--bids-filter rec=)",
                                                     "not selected: run-01 (--bids-filter t2.run=2)"]


def test_t1gd_by_any_ce_label_and_a_doubled_extension(tmp_path: Path) -> None:
    anat = tmp_path / "sub-1" / "anat"
    touch(anat, "sub-1_ce-Gd_T1w.nii.gz", "sub-1_ce-gadolinium_T1w.nii.gz", "sub-1_FLAIR.nii", "sub-1_FLAIR.nii.gz")
    (case,) = find_cases(tmp_path)
    assert case.problem == ("T1Gd has 2 candidate files: sub-1_ce-Gd_T1w.nii.gz, sub-1_ce-gadolinium_T1w.nii.gz "
                            "(they differ in ce-): pick one with --bids-filter t1gd.ce=Gd; FLAIR has 2 candidate "
                            "files: sub-1_FLAIR.nii, sub-1_FLAIR.nii.gz (the same image as .nii and .nii.gz?): "
                            "keep one")
    (case,) = find_cases(tmp_path, select={"ce": "gadolinium"})
    assert case.inputs == {T1GD: anat / "sub-1_ce-gadolinium_T1w.nii.gz"} and case.problem.startswith("FLAIR has 2")


def test_participants_and_sessions_filter(dataset: Path) -> None:
    assert [c.name for c in find_cases(dataset, participants=["sub-02", "01"])] == ["sub-01", "sub-02_ses-1",
                                                                                     "sub-02_ses-2"]
    assert [c.name for c in find_cases(dataset, sessions=["ses-2"])] == ["sub-02_ses-2"]
    with pytest.raises(InputError, match="no folder for participant sub-09 "):
        find_cases(dataset, participants=["09"])
    with pytest.raises(InputError, match="no folder for session ses-3"):
        find_cases(dataset, participants=["02"], sessions=["3"])
    with pytest.raises(TsfError, match="--participant-label: 'sub_01' is not a BIDS label"):
        find_cases(dataset, participants=["sub_01"])


def test_unusable_files_are_listed_with_why(tmp_path: Path) -> None:
    anat = tmp_path / "sub-1" / "anat"
    touch(anat, "sub-1_T1w.nii.gz", "sub-1_part-phase_T2w.nii.gz", "sub-1_desc-tsfsynth_T2w.nii.gz",
          "sub-2_FLAIR.nii.gz", "sub-1_FLAIR.mgz", "notes.txt", "sub-1_run-1_acq-x_T2w.nii.gz", "sub-1_T1w.json")
    (case,) = find_cases(tmp_path)
    assert case.inputs == {T1: anat / "sub-1_T1w.nii.gz"} and case.problem is None
    why = {p.name: reason for p, reason in case.unused}
    assert why == {
        "notes.txt": "not a BIDS file name (no sub- entity)",
        "sub-1_FLAIR.mgz": "not NIfTI (.mgz; .nii or .nii.gz expected)",
        "sub-1_desc-tsfsynth_T2w.nii.gz": "a tsf-trt output (desc-tsfsynth), never an input",
        "sub-1_part-phase_T2w.nii.gz": "a part-phase image: tsf-trt reads magnitude images",
        "sub-1_run-1_acq-x_T2w.nii.gz": "not a BIDS file name (acq- after run-: entities out of the "
                                        "specification's order)",
        "sub-2_FLAIR.nii.gz": "its name does not begin with sub-1, the folder it is in",
    }  # the sidecar is not listed


def test_a_case_with_nothing_usable_says_so(tmp_path: Path) -> None:
    touch(tmp_path, "sub-1/anat/sub-1_T2starw.nii.gz")
    (case,) = find_cases(tmp_path)
    assert case.inputs == {} and "no T1w, T2w or FLAIR image to use" in case.problem


def test_bad_select_and_folders_are_refused(tmp_path: Path, dataset: Path) -> None:
    for select, message in (({"foo": "x"}, "'foo' is not a BIDS entity"), ({"run": "x"}, "run- takes an index"),
                            ({"sub": "01"}, "--participant-label"), ({"t9.acq": "x"}, "unknown sequence 't9'")):
        with pytest.raises(TsfError, match=message):
            find_cases(dataset, select=select)
    with pytest.raises(InputError, match="no sub-<label> folder"):
        find_cases(tmp_path / "ds" / "sub-01")
    with pytest.raises(InputError, match="no such folder"):
        find_cases(tmp_path / "missing")


def test_is_bids_dataset(tmp_path: Path, dataset: Path) -> None:
    assert bids.is_bids_dataset(dataset)
    touch(tmp_path, "plain/sub-1/ses-a/anat/sub-1_ses-a_T1w.nii.gz", "brats/BraTS_001/BraTS_001_t1.nii.gz")
    assert bids.is_bids_dataset(tmp_path / "plain")
    assert not bids.is_bids_dataset(tmp_path / "brats")
    assert not bids.is_bids_dataset(tmp_path / "missing")


# --- derivatives -----------------------------------------------------------------------


def test_derivative_paths(tmp_path: Path) -> None:
    paths = derive.derivative_paths(tmp_path, "01", "1", T2)
    folder = tmp_path / "sub-01/ses-1/anat"
    assert paths == (folder / "sub-01_ses-1_desc-tsfsynth_T2w.nii.gz", folder / "sub-01_ses-1_desc-tsfsynth_T2w.json",
                     folder / "sub-01_ses-1_desc-T2w_tsem.nii.gz", folder / "sub-01_ses-1_desc-T2w_tsem.json")
    assert derive.derivative_paths(tmp_path, "sub-01", None, T1GD).synth == \
        tmp_path / "sub-01/anat/sub-01_ce-gadolinium_desc-tsfsynth_T1w.nii.gz"
    assert derive.derivative_paths(tmp_path, "sub-01", None, T1GD).tsem.name == \
        "sub-01_ce-gadolinium_desc-T1w_tsem.nii.gz"
    assert derive.derivative_paths(tmp_path, "01", None, FLAIR).tsem.name == "sub-01_desc-FLAIR_tsem.nii.gz"
    assert derive.halfwidth_paths(tmp_path, "01", "1", T2) == (folder / "sub-01_ses-1_desc-T2w_halfwidth.nii.gz",
                                                               folder / "sub-01_ses-1_desc-T2w_halfwidth.json")
    # the run's record: outside the BIDS tree, one per case and target (T1 and T1Gd apart)
    assert derive.record_path(tmp_path, "01", "1", T2) == tmp_path / "logs" / "sub-01_ses-1_t2.json"
    assert derive.record_path(tmp_path, "01", None, T1GD).name == "sub-01_t1gd.json"


@pytest.mark.parametrize("target", [T1, T1GD, T2, FLAIR])
def test_derivative_names_round_trip_and_are_never_inputs(tmp_path: Path, target: int) -> None:
    paths = [*derive.derivative_paths(tmp_path, "01", "pre", target),
             *derive.halfwidth_paths(tmp_path, "01", "pre", target)]
    for path in paths:
        name = parse_name(path.name)
        assert name is not None and str(name) == path.name
        assert name.entities["sub"] == "01" and name.entities["ses"] == "pre"
    images = [parse_name(p.name) for p in paths if parse_name(p.name).suffix not in bids.MAP_SUFFIXES]
    assert [bids.sequence_of(n) for n in images] == [target, target]  # the synthesis, .nii.gz and .json
    # the maps' suffix is no image's: a query for the target's suffix finds the synthesis only
    _, suffix = derive.target_entities(target)
    assert [p.name for p in paths if p.name.endswith(f"_{suffix}.nii.gz")] == [paths[0].name]
    # written into an input tree, the outputs (and an earlier version's maps) are listed, never taken as inputs
    legacy = derive.legacy_map_paths(tmp_path, "01", "pre", target)
    for path in [*paths, *legacy]:
        touch(path.parent, path.name)
    (case,) = find_cases(tmp_path)
    assert case.inputs == {}
    assert {p for p, _ in case.unused} == {p for p in [*paths, *legacy] if p.suffix == ".gz"}
    assert all(why.startswith("a tsf-trt output") for _, why in case.unused)


def test_derivative_names_are_valid_by_the_bids_schema(tmp_path: Path) -> None:
    """Derivatives "File naming conventions": the synthesis matches a derivative file rule of the
    schema and must not be a permissible raw name; the maps are no file rule's (non-standard
    suffixes: the derivative's .bidsignore lists them); the raw tree's inputs are raw names."""
    import re

    validator = pytest.importorskip("bids_validator")
    bst_rules = pytest.importorskip("bidsschematools.rules")
    schema = pytest.importorskip("bidsschematools.schema").load_schema()
    derivative = [r["regex"] for r in bst_rules.regexify_filename_rules(schema.rules.files.deriv, schema, level=2)]
    raw = validator.BIDSValidator()
    for target in (T1, T1GD, T2, FLAIR):
        for session in (None, "pre"):
            named = derive.derivative_paths(tmp_path, "01", session, target)
            maps = [named.tsem, named.tsem_sidecar, *derive.halfwidth_paths(tmp_path, "01", session, target)]
            for path in (*named, *maps):
                relative = path.relative_to(tmp_path).as_posix()
                assert any(re.match(r, relative) for r in derivative) == (path not in maps), relative
                assert not raw.is_bids("/" + relative), relative
    for name in ("sub-01/anat/sub-01_ce-gadolinium_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_acq-mprage_T1w.nii.gz"):
        assert raw.is_bids("/" + name)


def test_dataset_description(tmp_path: Path) -> None:
    described = derive.dataset_description("tsf-trt outputs", "0.3.0", "abc123")
    assert described["DatasetType"] == "derivative" and described["BIDSVersion"] == bids.BIDS_VERSION
    (generated,) = described["GeneratedBy"]
    assert generated["Name"] == "tsf-trt" and generated["Version"] == "0.3.0" and "abc123" in generated["Description"]
    assert derive.model_described(described) == "abc123"
    assert "SourceDatasets" not in described
    raw = tmp_path / "raw"
    touch(raw, "sub-01/anat/sub-01_T1w.nii.gz")
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "x", "DatasetDOI": "doi:10.1/x"}))
    linked = derive.dataset_description("out", "0.3.0", "abc123", source=raw)
    assert linked["SourceDatasets"] == [{"URL": raw.absolute().as_uri(), "DOI": "doi:10.1/x"}]
    assert linked["DatasetLinks"] == {"raw": raw.absolute().as_uri()}
    nested = derive.dataset_description("out", "0.3.0", "abc123", source=raw,
                                        deriv_root=raw / "derivatives" / "tsf-trt")
    assert nested["DatasetLinks"] == {"raw": "../.."}  # "Specification of paths": relative where it can be
    json.dumps(linked)
    assert derive.bids_uri(raw / "sub-01/anat/sub-01_T1w.nii.gz", raw) == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert derive.bids_uri(raw / "sub-01/anat/x.json", raw, "") == "bids::sub-01/anat/x.json"
    with pytest.raises(InputError, match="is not inside the BIDS dataset"):
        derive.bids_uri(tmp_path / "elsewhere.nii.gz", raw)


def test_dataset_description_has_every_field_the_schema_requires(tmp_path: Path) -> None:
    schema = pytest.importorskip("bidsschematools.schema").load_schema()
    rules = schema.rules.json.dataset
    described = derive.dataset_description("out", "0.3.0", "abc123", source=tmp_path)
    for rule in (rules.dataset_description, rules.derivative_description):
        required = [k for k, level in rule.fields.items() if level == "required"]
        assert required and all(k in described for k in required), required
    assert described["DatasetType"] == schema.objects.enums.derivative.value
    assert described["BIDSVersion"] in schema.meta.versions  # the schema's UnknownVersion check


# --- .bidsignore ------------------------------------------------------------------------


def test_bidsignore_is_written_completed_when_ours_and_never_a_users(tmp_path: Path, caplog) -> None:
    from tsf_trt.files.ownership import is_own_file
    from tsf_trt.runs.bids_outputs import write_bidsignore

    path = tmp_path / ".bidsignore"
    assert write_bidsignore(tmp_path) == path and path.read_text().splitlines() == list(derive.BIDSIGNORE)
    assert is_own_file(path)  # --overwrite may replace it
    assert write_bidsignore(tmp_path) is None  # complete: left as it is
    path.write_text(f"{derive.BIDSIGNORE[0]}\nextra/\n*_tsem.*\n")  # an earlier version's, with a line added
    assert write_bidsignore(tmp_path) == path
    assert path.read_text().splitlines() == [derive.BIDSIGNORE[0], "extra/", "*_tsem.*",
                                             *(line for line in derive.BIDSIGNORE[1:] if line != "*_tsem.*")]
    path.write_text("mine/\n")  # a user's: never changed; the warning names what it lacks
    assert write_bidsignore(tmp_path) is None and path.read_text() == "mine/\n"
    assert "logs/" in caplog.text and "was not written by tsf-trt" in caplog.text


def test_a_bids_subjects_record_is_in_logs_and_published_last(tmp_path: Path) -> None:
    """The record (everything about the run) goes last, so it marks a finished subject; the images'
    folder is where folder mode claims the subject, and the record's folder is swept too."""
    from tsf_trt.runs.outputs import OutputPaths

    paths = OutputPaths.for_bids(tmp_path, "01", "pre", T2, True, interval=True)
    assert paths.all()[-1] == paths.report == tmp_path / "logs" / "sub-01_ses-pre_t2.json"
    assert paths.all()[:2] == [paths.synth, paths.sidecar] and paths.sidecar.name.endswith("_desc-tsfsynth_T2w.json")
    assert paths.folder == paths.synth.parent and paths.folders() == [paths.synth.parent, tmp_path / "logs"]
