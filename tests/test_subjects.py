"""Command-line inputs and folders -> subjects (names and file system only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import FLAIR, T1, T1GD, T2, touch
from tsf_trt.errors import InputError, TsfError
from tsf_trt.inputs.subjects import Subject, discover, find_subjects, parse_inputs, shard, subject_name

# --- parse_inputs -------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, index",
    [
        ("BraTS2021_00000_t1ce.nii.gz", T1GD),
        ("sub-01-t2f.nii.gz", FLAIR),
        ("t1.nii.gz", T1),
        ("/x/FLAIR.nii", FLAIR),
        ("/d/BraTS-GLI-00000-000-t2w.nii.gz", T2),
    ],
)
def test_parse_inputs_reads_sequence_from_name(item: str, index: int) -> None:
    assert parse_inputs([item]) == {index: Path(item)}


@pytest.mark.parametrize("key", ["t1", "T1", "t1n", "T1w"])
def test_parse_inputs_explicit_form_any_spelling(key: str) -> None:
    assert parse_inputs([f"{key}=/data/a.nii.gz"]) == {T1: Path("/data/a.nii.gz")}


def test_parse_inputs_explicit_form_splits_on_first_equals_only() -> None:
    assert parse_inputs(["flair=/d/x=y.nii.gz"]) == {FLAIR: Path("/d/x=y.nii.gz")}


def test_parse_inputs_keeps_order_and_mixes_forms() -> None:
    got = parse_inputs(["/d/c_flair.nii.gz", "t1gd=/d/other.nii.gz", "/d/c_t1.nii"])
    assert list(got.items()) == [
        (FLAIR, Path("/d/c_flair.nii.gz")),
        (T1GD, Path("/d/other.nii.gz")),
        (T1, Path("/d/c_t1.nii")),
    ]


def test_parse_inputs_plain_path_containing_equals() -> None:
    item = "/data/run=1/sub-01_t2.nii.gz"
    assert parse_inputs([item]) == {T2: Path(item)}
    assert parse_inputs(["./a=b_t1.nii.gz"]) == {T1: Path("a=b_t1.nii.gz")}


def test_parse_inputs_unrecognised_name() -> None:
    with pytest.raises(InputError) as err:
        parse_inputs(["/d/scan.nii.gz"])
    assert err.value.path == Path("/d/scan.nii.gz")
    assert "cannot tell the sequence from the file name" in str(err.value)
    assert "t1=PATH (one of t1, t1gd, t2, flair)" in str(err.value)


def test_parse_inputs_unknown_sequence_name() -> None:
    with pytest.raises(TsfError, match="unknown sequence 'pd'") as err:
        parse_inputs(["pd=/d/a.nii.gz"])
    assert "/d/a.nii.gz" in str(err.value)


def test_parse_inputs_explicit_form_without_path() -> None:
    with pytest.raises(TsfError, match="names no file"):
        parse_inputs(["t1="])


def test_parse_inputs_same_sequence_twice_names_both() -> None:
    with pytest.raises(InputError) as err:
        parse_inputs(["/d/a_t1.nii.gz", "t1n=/d/b.nii.gz"])
    assert "/d/a_t1.nii.gz" in str(err.value) and "/d/b.nii.gz" in str(err.value)


@pytest.mark.parametrize("items", [[], [""]])
def test_parse_inputs_empty(items: list[str]) -> None:
    with pytest.raises(TsfError):
        parse_inputs(items)


# --- subject_name -------------------------------------------------------------------


def test_subject_name_common_subject() -> None:
    inputs = parse_inputs(["/d/BraTS2021_00000_t1.nii.gz", "/d/BraTS2021_00000_flair.nii.gz"])
    assert subject_name(inputs) == "BraTS2021_00000"


def test_subject_name_brats2023() -> None:
    inputs = parse_inputs(["BraTS-GLI-00005-001-t1n.nii.gz", "BraTS-GLI-00005-001-t2f.nii.gz"])
    assert subject_name(inputs) == "BraTS-GLI-00005-001"


def test_subject_name_differing_subjects_use_common_prefix() -> None:
    inputs = parse_inputs(["/d/case_A_t1.nii.gz", "/d/case_B_t2.nii.gz"])
    assert subject_name(inputs) == "case"


def test_subject_name_falls_back_to_parent_folder() -> None:
    assert subject_name(parse_inputs(["/data/p07/t1.nii.gz", "/data/p07/flair.nii.gz"])) == "p07"
    assert subject_name(parse_inputs(["t1=/data/p08/a.nii.gz", "t2=/data/p08/b.nii.gz"])) == "p08"


@pytest.mark.parametrize(
    "items", [["t1.nii.gz", "flair.nii.gz"], ["/t1.nii.gz"], ["t1=./a.nii", "t2=b.nii"]]
)
def test_subject_name_last_resort(items: list[str]) -> None:
    assert subject_name(parse_inputs(items)) == "subject"


def test_subject_name_explicit_form_uses_file_stems() -> None:
    assert subject_name(parse_inputs(["t1=/d/case7_a.nii.gz", "t2=/d/case7_b.nii"])) == "case7"
    assert subject_name(parse_inputs(["t1=/d/scan.nii.gz"])) == "scan"


# --- find_subjects ------------------------------------------------------------------


def test_find_subjects_brats2021_folders(tmp_path: Path) -> None:
    for subj in ("BraTS2021_00002", "BraTS2021_00000"):
        touch(tmp_path / subj, *(f"{subj}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair", "seg")))
    touch(tmp_path / "BraTS2021_00000", "BraTS2021_00000_t2_synth.nii.gz", "BraTS2021_00000_tsem.nii.gz")
    got = find_subjects(tmp_path)
    assert [s.name for s in got] == ["BraTS2021_00000", "BraTS2021_00002"]
    d = tmp_path / "BraTS2021_00000"
    assert got[0] == Subject(
        "BraTS2021_00000",
        {
            T1: d / "BraTS2021_00000_t1.nii.gz",
            T1GD: d / "BraTS2021_00000_t1ce.nii.gz",
            T2: d / "BraTS2021_00000_t2.nii.gz",
            FLAIR: d / "BraTS2021_00000_flair.nii.gz",
        },
        unused=((d / "BraTS2021_00000_seg.nii.gz", "a segmentation"),
                (d / "BraTS2021_00000_t2_synth.nii.gz", "a tsf-trt output"),
                (d / "BraTS2021_00000_tsem.nii.gz", "a tsf-trt output")),
    )


def test_find_subjects_brats2023_folders_partial_ok(tmp_path: Path) -> None:
    touch(tmp_path / "BraTS-GLI-00001-000", *(f"BraTS-GLI-00001-000-{s}.nii.gz" for s in ("t1n", "t2f")))
    seqs = ("t1n", "t1c", "t2w", "t2f")
    touch(tmp_path / "BraTS-GLI-00000-000", *(f"BraTS-GLI-00000-000-{s}.nii.gz" for s in seqs))
    got = find_subjects(str(tmp_path))
    assert [s.name for s in got] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert list(got[0].inputs) == [T1, T1GD, T2, FLAIR]
    assert list(got[1].inputs) == [T1, FLAIR]


def test_find_subjects_folder_name_wins_and_skips_hidden_and_empty(tmp_path: Path) -> None:
    touch(tmp_path / "p1", "t1.nii.gz", "flair.nii", ".t2.nii.gz", "t2.nii.gz~", "notes.txt")
    touch(tmp_path / ".cache", "x_t1.nii.gz")
    touch(tmp_path / "outputs", "p1_t2_synth.nii.gz")
    touch(tmp_path, ".DS_Store", "README.md")
    found = discover(tmp_path)
    p1 = tmp_path / "p1"
    assert found.subjects == [Subject("p1", {T1: p1 / "t1.nii.gz", FLAIR: p1 / "flair.nii"})]
    assert found.unused == ((tmp_path / "outputs" / "p1_t2_synth.nii.gz", "a tsf-trt output"),)


def test_find_subjects_flat_grouped(tmp_path: Path) -> None:
    touch(tmp_path, "b_t1.nii.gz", "b_flair.nii.gz", "a-t1n.nii.gz", "a-t2w.nii.gz")
    touch(tmp_path, "a-seg.nii.gz", "a_t1_synth.nii.gz", "b_tsem.nii.gz")
    got = find_subjects(tmp_path)
    assert got == [
        Subject("a", {T1: tmp_path / "a-t1n.nii.gz", T2: tmp_path / "a-t2w.nii.gz"},
                unused=((tmp_path / "a-seg.nii.gz", "a segmentation"),
                        (tmp_path / "a_t1_synth.nii.gz", "a tsf-trt output"))),
        Subject("b", {T1: tmp_path / "b_t1.nii.gz", FLAIR: tmp_path / "b_flair.nii.gz"},
                unused=((tmp_path / "b_tsem.nii.gz", "a tsf-trt output"),)),
    ]


def test_find_subjects_flat_bare_names_take_folder_name(tmp_path: Path) -> None:
    touch(tmp_path / "case9", "t1.nii.gz", "t2.nii.gz")
    assert [s.name for s in find_subjects(tmp_path / "case9")] == ["case9"]


def _problems(found) -> dict[str, str | None]:
    return {s.name: s.problem for s in found}


def test_find_subjects_duplicate_sequence_is_that_subjects_problem(tmp_path: Path) -> None:
    """Two files of one sequence fail that subject alone: the others still run."""
    touch(tmp_path / "s1", "s1_t1.nii.gz", "s1_t1n.nii.gz")
    touch(tmp_path / "s2", "s2_t1.nii.gz", "s2_flair.nii.gz")
    problems = _problems(find_subjects(tmp_path))
    assert problems["s2"] is None
    assert "s1_t1.nii.gz" in problems["s1"] and "s1_t1n.nii.gz" in problems["s1"]


def test_find_subjects_duplicate_in_flat_folder(tmp_path: Path) -> None:
    touch(tmp_path, "s1_t1.nii.gz", "s1_t1.nii", "s2_t1.nii.gz")
    problems = _problems(find_subjects(tmp_path))
    assert "T1 found twice" in problems["s1"] and problems["s2"] is None


def test_find_subjects_nnunet_with_channels(tmp_path: Path) -> None:
    touch(tmp_path, *(f"BraTS_001_{c:04d}.nii.gz" for c in range(3)), "BraTS_000_0000.nii.gz")
    got = find_subjects(tmp_path, channels=[FLAIR, T1, T1GD, T2])
    assert got == [
        Subject("BraTS_000", {FLAIR: tmp_path / "BraTS_000_0000.nii.gz"}),
        Subject(
            "BraTS_001",
            {
                T1: tmp_path / "BraTS_001_0001.nii.gz",
                T1GD: tmp_path / "BraTS_001_0002.nii.gz",
                FLAIR: tmp_path / "BraTS_001_0000.nii.gz",
            },
        ),
    ]


def test_find_subjects_nnunet_without_channels(tmp_path: Path) -> None:
    touch(tmp_path, "BraTS_001_0000.nii.gz", "BraTS_001_0001.nii.gz")
    expected = r"looks like nnU-Net naming \(CASE_XXXX.nii.gz\).*--channels t1,t1gd,t2,flair"
    with pytest.raises(TsfError, match=expected):
        find_subjects(tmp_path)


def test_find_subjects_nnunet_channel_beyond_list(tmp_path: Path) -> None:
    touch(tmp_path, "c_0000.nii.gz", "c_0002.nii.gz")
    with pytest.raises(InputError) as err:
        find_subjects(tmp_path, channels=[T1, T2])
    assert err.value.path == tmp_path / "c_0002.nii.gz"


@pytest.mark.parametrize("channels", [[T1, T1], [4], [-1]])
def test_find_subjects_bad_channels(tmp_path: Path, channels: list[int]) -> None:
    touch(tmp_path, "c_0000.nii.gz")
    with pytest.raises(TsfError, match="--channels"):
        find_subjects(tmp_path, channels=channels)


def test_find_subjects_nothing_recognisable(tmp_path: Path) -> None:
    touch(tmp_path, "scan.nii.gz", "a_seg.nii.gz", ".hidden_t1.nii.gz")
    touch(tmp_path / "empty_dir", "notes.txt")
    with pytest.raises(InputError) as err:
        find_subjects(tmp_path)
    assert err.value.path == tmp_path and "no subject found" in str(err.value)


def test_find_subjects_missing_folder_or_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such folder"):
        find_subjects(tmp_path / "missing")
    touch(tmp_path, "x_t1.nii.gz")
    with pytest.raises(InputError, match="not a folder"):
        find_subjects(tmp_path / "x_t1.nii.gz")


def test_find_subjects_same_subject_as_folder_and_files(tmp_path: Path) -> None:
    touch(tmp_path / "s1", "s1_t1.nii.gz")
    touch(tmp_path, "s1_t2.nii.gz")
    assert "'s1' is found twice" in _problems(find_subjects(tmp_path))["s1"]


def test_channels_without_nnunet_files_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path, "s1_t1.nii.gz", "s1_flair.nii.gz")
    with pytest.raises(TsfError, match="--channels is for nnU-Net"):
        find_subjects(tmp_path, channels=[T1, T2])


# --- shard --------------------------------------------------------------------------


def _subjects(n: int) -> list[Subject]:
    return [Subject(f"s{k:02d}", {T1: Path(f"s{k:02d}_t1.nii.gz")}) for k in range(n)]


def test_shard_none_keeps_all() -> None:
    subjects = _subjects(5)
    assert shard(subjects, None) == subjects


def test_shard_round_robin() -> None:
    names = [s.name for s in shard(_subjects(7), "2/3")]
    assert names == ["s01", "s04"]
    assert [s.name for s in shard(_subjects(7), " 1 / 1 ")] == [f"s{k:02d}" for k in range(7)]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10])
def test_shard_partitions(n: int) -> None:
    subjects = list(reversed(_subjects(7)))  # order given does not matter
    parts = [[s.name for s in shard(subjects, f"{i}/{n}")] for i in range(1, n + 1)]
    flat = [name for part in parts for name in part]
    assert sorted(flat) == sorted(s.name for s in subjects)
    assert len(flat) == len(set(flat))


@pytest.mark.parametrize("spec", ["0/2", "3/2", "1/0", "2", "a/b", "-1/2", "1/2/3", ""])
def test_shard_malformed(spec: str) -> None:
    with pytest.raises(TsfError, match=r"--shard expects i/n with 1 <= i <= n, got"):
        shard(_subjects(3), spec)
