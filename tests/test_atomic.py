"""tsf_trt.files.atomic, function by function: a file or folder appears complete under its final name or
not at all, groups publish in order and roll back only what they put in place, leftovers go only
when their writer is dead, and what may be replaced is checked (no model, no CLI; the commands'
own promises are in tests/test_data_safety.py and tests/test_command_safety.py).
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

import tsf_trt.files.atomic as atomic
from tests.helpers import dead_pid
from tsf_trt.errors import InputError
from tsf_trt.files.atomic import (atomic_dir, atomic_group, atomic_path, check_folder_target, check_writable,
                                  link_exclusive, remove_stale, stale_leftovers, temp_path)
from tsf_trt.files.owners import Owner, host_tag, leftover_owner
from tsf_trt.files.ownership import FolderKind, first_foreign

OURS = '{"tsf_trt_version": "0.1.0"}'  # a JSON file tsf-trt wrote (tsf_trt.files.ownership recognises the mark)
#: A folder kind for the tests: a folder holding only `made.txt` files is one of ours.
KIND = FolderKind("a test output folder", lambda folder: first_foreign(folder, lambda name, _: name == "made.txt"))


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def leftover(folder: Path, final: str, owner: Owner, kind: str = "tmp", age_s: float = 0.0) -> Path:
    """A leftover as tsf-trt's writers name it (temp_path), of `owner`, `age_s` old."""
    path = folder / f".{final}.{kind}-{owner.tag}-0123abcd"
    path.write_text("half")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


# --- temp names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, suffix", [("a.nii.gz", ".nii.gz"), ("A.NII.GZ", ".nii.gz"), ("a.nii", ".nii"),
                                          ("m.json", ".json"), ("noext", "")])
def test_a_temp_name_is_hidden_beside_its_target_names_its_writer_and_keeps_the_suffix(tmp_path, name, suffix):
    tmp = temp_path(tmp_path / name)
    assert tmp.parent == tmp_path and tmp.name.startswith(f".{name}.tmp-") and tmp.name.endswith(suffix)
    assert leftover_owner(tmp.name) == (name, Owner.current())
    assert temp_path(tmp_path / name) != tmp  # a random part: two writers of one name never share a temp


# --- check_writable ------------------------------------------------------------------------------------


def test_check_writable(tmp_path: Path) -> None:
    out = tmp_path / "out.nii.gz"
    check_writable(out, overwrite=False)
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="exists; use --overwrite"):
        check_writable(out, overwrite=False)
    with pytest.raises(InputError, match="not written by tsf-trt"):  # --overwrite replaces only our own files
        check_writable(out, overwrite=True)
    check_writable(out, overwrite=True, own_location=True)  # a cache: the caller vouches for the place
    ours = tmp_path / "ours.json"
    ours.write_text('{"tsf_trt_version": "0.1.0"}')
    check_writable(ours, overwrite=True)
    assert out.read_bytes() == b"old"
    with pytest.raises(InputError, match="directory"):
        check_writable(tmp_path, overwrite=True)
    with pytest.raises(InputError, match="does not exist"):
        check_writable(tmp_path / "missing" / "out.nii", overwrite=False)


def test_check_writable_refuses_a_link_and_a_folder_that_is_a_file(tmp_path):
    target = tmp_path / "users.txt"
    target.write_text("mine\n")
    (tmp_path / "link.json").symlink_to(target)
    with pytest.raises(InputError, match="exists; use --overwrite"):
        check_writable(tmp_path / "link.json", overwrite=False)
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere")
    with pytest.raises(InputError, match="exists; use --overwrite"):  # a broken link exists too
        check_writable(tmp_path / "dangling.json", overwrite=False)
    with pytest.raises(InputError, match="is not a folder"):
        check_writable(target / "out.json", overwrite=False)
    assert target.read_text() == "mine\n"


def test_check_writable_probes_the_folder_for_real(tmp_path, monkeypatch):
    """os.access says yes to root on a read-only mount: only creating a file tells."""
    real = os.open

    def refuse(path, flags, mode=0o777, **kwargs):
        if ".probe-" in str(path):  # only the write probe: a read-only mount (os.access still says yes)
            raise OSError(errno.EROFS, "Read-only file system")
        return real(path, flags, mode, **kwargs)

    monkeypatch.setattr(atomic.os, "open", refuse)
    with pytest.raises(InputError, match=r"cannot write in folder .* \(Read-only file system\)"):
        check_writable(tmp_path / "out.json", overwrite=False)


# --- link_exclusive ---------------------------------------------------------------------------------------


def test_link_exclusive_names_a_file_only_once(tmp_path):
    tmp, path = tmp_path / "tmp", tmp_path / "final"
    tmp.write_text("first")
    assert link_exclusive(tmp, path) is True
    assert os.path.samefile(tmp, path)
    other = tmp_path / "other"
    other.write_text("second")
    assert link_exclusive(other, path) is False  # taken: left as it was
    assert path.read_text() == "first"


def test_link_exclusive_takes_a_retried_nfs_link_as_made(tmp_path):
    """NFS may make the link, lose the reply and answer the retry with EEXIST: the name is then
    ours (the same inode, two links)."""
    tmp, path = tmp_path / "tmp", tmp_path / "final"
    tmp.write_text("x")
    os.link(tmp, path)
    assert link_exclusive(tmp, path) is True


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EACCES])
def test_link_exclusive_says_none_where_there_are_no_hard_links(tmp_path, monkeypatch, code):
    tmp = tmp_path / "tmp"
    tmp.write_text("x")

    def no_links(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "link", no_links)
    assert link_exclusive(tmp, tmp_path / "final") is None
    assert listing(tmp_path) == ["tmp"]


def test_link_exclusive_raises_other_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        link_exclusive(tmp_path / "missing", tmp_path / "final")


# --- atomic_path and atomic_group -------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_path_cleans_up_on_error(tmp_path: Path, exc: type[BaseException]) -> None:
    final = tmp_path / "out.nii.gz"
    with pytest.raises(exc):
        with atomic_path(final, overwrite=False) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(".nii.gz")
            tmp.write_bytes(b"half")
            raise exc()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,suffix", [("a.nii.gz", ".nii.gz"), ("a.nii", ".nii"), ("m.json", ".json")])
def test_atomic_path_success(tmp_path: Path, name: str, suffix: str) -> None:
    final = tmp_path / name
    with atomic_path(final, overwrite=False) as tmp:
        assert tmp.name.endswith(suffix) and not tmp.name.endswith(".nii" + suffix)
        tmp.write_text("done")
    assert final.read_text() == "done"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_atomic_path_rechecks_before_rename(tmp_path: Path) -> None:
    final = tmp_path / "out.json"
    with pytest.raises(InputError, match="exists"):
        with atomic_path(final, overwrite=False) as tmp:
            tmp.write_text("new")
            final.write_text("someone else")  # appeared while we were working
    assert final.read_text() == "someone else"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(InputError, match="not written by tsf-trt"):  # not ours: --overwrite never replaces it
        with atomic_path(final, overwrite=True) as tmp:
            tmp.write_text("new")
    assert final.read_text() == "someone else"
    final.write_text('{"tsf_trt_version": "0.1.0"}')
    with atomic_path(final, overwrite=True) as tmp:
        tmp.write_text("new")
    assert final.read_text() == "new"


def test_a_group_publishes_in_the_order_given(tmp_path, monkeypatch):
    """The file that marks a subject complete goes last: a reader that sees it sees the others."""
    paths = [tmp_path / "synth.nii.gz", tmp_path / "tsem.nii.gz", tmp_path / "report.json"]
    seen = []
    real = atomic.publish

    def publish(tmp, path, overwrite):
        seen.append((path.name, sorted(p.name for p in paths if p.exists())))
        real(tmp, path, overwrite)

    monkeypatch.setattr(atomic, "publish", publish)
    with atomic_group(paths, overwrite=False) as tmps:
        assert [t.parent for t in tmps] == [tmp_path] * 3 and all(t.exists() for t in tmps)  # names reserved
        assert not any(p.exists() for p in paths)
        for tmp, path in zip(tmps, paths):
            tmp.write_text(path.name)
    assert seen == [("synth.nii.gz", []), ("tsem.nii.gz", ["synth.nii.gz"]),
                    ("report.json", ["synth.nii.gz", "tsem.nii.gz"])]
    assert listing(tmp_path) == sorted(p.name for p in paths)
    assert all(p.read_text() == p.name for p in paths)


def test_a_group_that_fails_midway_removes_what_it_published(tmp_path):
    """The last file's name was taken while the group was written: the two files it had already
    put in place go again; the file that took the name stays."""
    paths = [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", tmp_path / "c.json"]
    with pytest.raises(InputError, match="c.json: exists; use --overwrite"):
        with atomic_group(paths, overwrite=False) as tmps:
            for tmp in tmps:
                tmp.write_text("ours")
            paths[2].write_text("someone else's")
    assert listing(tmp_path) == ["c.json"] and paths[2].read_text() == "someone else's"


def test_rollback_never_removes_a_file_another_process_put_in_place(tmp_path, monkeypatch):
    """By inode: a file that replaced one of ours between our rename and the rollback is theirs."""
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    real = atomic.publish

    def publish(tmp, path, overwrite):
        if path == paths[1]:
            theirs = tmp_path / "theirs"
            theirs.write_text("theirs")
            os.replace(theirs, paths[0])  # another process replaced our a.json meanwhile
            raise KeyboardInterrupt  # then Ctrl-C, before b.json
        real(tmp, path, overwrite)

    monkeypatch.setattr(atomic, "publish", publish)
    with pytest.raises(KeyboardInterrupt):
        with atomic_group(paths, overwrite=False) as tmps:
            for tmp in tmps:
                tmp.write_text("ours")
    assert listing(tmp_path) == ["a.json"] and paths[0].read_text() == "theirs"


def test_a_group_refuses_before_any_work(tmp_path):
    """Every file is checked before the block runs: nothing is created, the block never starts."""
    (tmp_path / "b.json").write_text("mine")
    ran = []
    with pytest.raises(InputError, match="b.json: exists"):
        with atomic_group([tmp_path / "a.json", tmp_path / "b.json"], overwrite=False):
            ran.append(1)
    assert ran == [] and listing(tmp_path) == ["b.json"]


def test_a_group_replaces_only_our_own_files(tmp_path):
    mine, ours = tmp_path / "mine.json", tmp_path / "ours.json"
    mine.write_text('{"my": "notes"}')
    ours.write_text(OURS)
    with pytest.raises(InputError, match="not written by tsf-trt"):
        with atomic_group([ours, mine], overwrite=True):
            pass
    with atomic_group([ours], overwrite=True) as (tmp,):
        tmp.write_text("new")
    assert ours.read_text() == "new" and mine.read_text() == '{"my": "notes"}'
    with atomic_group([mine], overwrite=True, own_location=True) as (tmp,):  # a cache: the caller vouches
        tmp.write_text("new")
    assert mine.read_text() == "new" and listing(tmp_path) == ["mine.json", "ours.json"]


# --- leftovers ----------------------------------------------------------------------------------------------


def test_stale_leftovers_are_those_of_dead_writers(tmp_path):
    dead, me = Owner(host_tag(), dead_pid(), 0), Owner.current()
    parent = Owner(host_tag(), os.getppid(), 0)
    elsewhere = Owner("0badf00d", 1, 1)
    found = [leftover(tmp_path, "out.json", dead), leftover(tmp_path, "out.json", dead, "probe"),
             leftover(tmp_path, "out", dead, "old"),
             leftover(tmp_path, "out.json", elsewhere, age_s=120)]  # another host, silent past the lease
    old_style = tmp_path / ".out.json.tmp-12345-0123abcd"  # tsf-trt 0.1: a bare pid, judged by age
    old_style.write_text("half")
    then = time.time() - 120
    os.utime(old_style, (then, then))
    kept = [leftover(tmp_path, "out.json", me), leftover(tmp_path, "out.json", parent, age_s=10 * 24 * 3600),
            leftover(tmp_path, "out.json", elsewhere, "probe"),  # another host, within the lease
            leftover(tmp_path, "other.json", dead)]  # not asked about
    (tmp_path / "out.json").write_text("final")
    (tmp_path / ".out.json.tmp-notours").write_text("a user's")
    assert stale_leftovers(tmp_path, ["out.json", "out"], 60.0) == sorted([*found, old_style])
    assert stale_leftovers(tmp_path, lambda name: name.startswith("other"), 60.0) == [kept[-1]]
    assert stale_leftovers(tmp_path / "missing", ["out.json"], 60.0) == []
    assert all(p.exists() for p in [*found, *kept])  # finding removes nothing


def test_remove_stale_removes_files_and_folders_of_dead_writers_only(tmp_path):
    dead = Owner(host_tag(), dead_pid(), 0)
    folder = tmp_path / f".model.tmp-{dead.tag}-0123abcd"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "weights").write_text("half")
    file = leftover(tmp_path, "model", dead, "old")
    live = leftover(tmp_path, "model", Owner.current())
    assert remove_stale(tmp_path, ["model"], 60.0) == sorted([file, folder])
    assert listing(tmp_path) == [live.name]


def test_a_link_left_by_a_dead_writer_is_removed_not_followed(tmp_path):
    dead = Owner(host_tag(), dead_pid(), 0)
    target = tmp_path / "users"
    target.mkdir()
    (target / "data.txt").write_text("keep")
    link = tmp_path / f".model.tmp-{dead.tag}-0123abcd"
    link.symlink_to(target)
    assert remove_stale(tmp_path, ["model"], 60.0) == [link]
    assert (target / "data.txt").read_text() == "keep"


# --- atomic_dir ---------------------------------------------------------------------------------------------


def test_atomic_dir_publishes_a_new_folder_whole(tmp_path):
    path = tmp_path / "deep" / "out"
    with atomic_dir(path, KIND) as tmp:
        assert tmp.parent == path.parent and leftover_owner(tmp.name) == ("out", Owner.current())
        (tmp / "made.txt").write_text("new")
        assert not path.exists()
    assert listing(path) == ["made.txt"] and listing(path.parent) == ["out"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_dir_leaves_the_old_folder_when_the_work_fails(tmp_path, exc):
    path = tmp_path / "out"
    path.mkdir()
    (path / "made.txt").write_text("old")
    with pytest.raises(exc):
        with atomic_dir(path, KIND) as tmp:
            (tmp / "made.txt").write_text("new")
            raise exc()
    assert listing(tmp_path) == ["out"] and (path / "made.txt").read_text() == "old"


def test_atomic_dir_replaces_a_folder_of_its_kind(tmp_path):
    path = tmp_path / "out"
    path.mkdir()
    (path / "made.txt").write_text("old")
    with atomic_dir(path, KIND) as tmp:
        (tmp / "made.txt").write_text("new")
    assert listing(tmp_path) == ["out"] and listing(path) == ["made.txt"] and (path / "made.txt").read_text() == "new"


@pytest.mark.parametrize("make, kind, words", [
    (lambda p: p.mkdir(), None, "exists and is not a folder tsf-trt may replace"),
    (lambda p: (p.mkdir(), (p / "thesis.txt").write_text("mine")), KIND, "holds thesis.txt"),
    (lambda p: p.write_text("mine"), KIND, "exists and is not a folder tsf-trt may replace"),
    (lambda p: (p.parent.joinpath("elsewhere").mkdir(), p.symlink_to(p.parent / "elsewhere")), KIND,
     "exists and is not a folder tsf-trt may replace"),
], ids=["any folder without a kind", "a folder holding a user's file", "a file", "a link to a folder"])
def test_atomic_dir_refuses_what_is_not_its_kind_and_writes_nothing(tmp_path, make, kind, words):
    """Checked again just before the swap, whatever the caller checked before the work."""
    path = tmp_path / "out"
    make(path)
    before = {name: os.lstat(tmp_path / name).st_ino for name in listing(tmp_path)}
    with pytest.raises(InputError, match=words):
        with atomic_dir(path, kind) as tmp:
            (tmp / "made.txt").write_text("new")
    assert {name: os.lstat(tmp_path / name).st_ino for name in listing(tmp_path)} == before


def test_atomic_dir_with_own_location_replaces_any_folder(tmp_path):
    path = tmp_path / "cache-entry"
    path.mkdir()
    (path / "anything").write_text("old")
    with atomic_dir(path, own_location=True) as tmp:
        (tmp / "made.txt").write_text("new")
    assert listing(path) == ["made.txt"]


def test_atomic_dir_sweeps_dead_writers_leftovers_of_its_name_first(tmp_path):
    dead = Owner(host_tag(), dead_pid(), 0)
    gone = tmp_path / f".out.tmp-{dead.tag}-0123abcd"
    gone.mkdir()
    live = tmp_path / f".out.tmp-{Owner(host_tag(), os.getppid(), 0).tag}-0123abcd"
    live.mkdir()
    with atomic_dir(tmp_path / "out", KIND) as tmp:
        (tmp / "made.txt").write_text("new")
    assert listing(tmp_path) == sorted(["out", live.name])


def test_check_folder_target_says_before_the_work_what_atomic_dir_would_refuse(tmp_path):
    path = tmp_path / "out"
    check_folder_target(path, overwrite=False, kind=KIND)  # absent: fine
    path.mkdir()
    with pytest.raises(InputError, match="exists; use --overwrite"):
        check_folder_target(path, overwrite=False, kind=KIND)
    check_folder_target(path, overwrite=True, kind=KIND)  # empty: ours to replace
    with pytest.raises(InputError, match="exists and is not a folder tsf-trt may replace"):
        check_folder_target(path, overwrite=True, kind=None)
    (path / "thesis.txt").write_text("mine")
    with pytest.raises(InputError, match="holds thesis.txt"):
        check_folder_target(path, overwrite=True, kind=KIND)
    check_folder_target(path, overwrite=True, kind=None, own_location=True)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(InputError, match="symbolic link"):
        check_folder_target(link, overwrite=True, kind=KIND, own_location=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_folder_target(tmp_path / "file", overwrite=True, kind=KIND)
    with pytest.raises(InputError, match="is not a folder"):
        check_folder_target(tmp_path / "file" / "out", overwrite=False, kind=KIND)
    check_folder_target(tmp_path / "new" / "deeper" / "out", overwrite=False, kind=KIND)  # made on the way
    assert listing(tmp_path) == ["file", "link", "out"] and listing(path) == ["thesis.txt"]
