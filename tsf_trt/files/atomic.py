"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Everything tsf-trt writes goes through here: outputs, reports, model directories,
exports, engines, checkpoints. A temporary name beside the target carries its writer
(:mod:`tsf_trt.files.owners`), ``.NAME.tmp-HOST-PID-START-RAND[.suffix]``, so that what a killed
process left behind can be told from what a live one is writing, and removed
(:func:`remove_stale`) without ever touching another live process's file. A full disk
is reported as one line naming the file being written (:class:`DiskFullError`).

`--overwrite` replaces only what tsf-trt wrote (:mod:`tsf_trt.files.ownership` recognises it): that
is the default of every function here; writes into a location the caller has already
recognised as tsf-trt's own (its caches, a report folder it resumes) say so with
``own_location=True``.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tsf_trt.errors import InputError, TsfError
from tsf_trt.files.owners import DEFAULT_LEASE_S, Owner, leftover_owner
from tsf_trt.files.ownership import FolderKind, refuse_foreign_file

#: Errors of "this file system has no hard links": publish then checks and renames instead.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EACCES}
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
#: Messages of libraries that report a full disk without an OSError (safetensors, torch).
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "storagefull", "os error 28")
_LOW_SPACE_BYTES = 1 << 20
class DiskFullError(InputError):
    """The file system filled up while a file was written; nothing partial was left."""


def temp_path(path: Path, kind: str = "tmp") -> Path:
    """A hidden name beside `path` that says who writes it, with the same suffix, so that
    writers choosing a format by name ('.nii.gz', '.json') do the right thing."""
    name = path.name
    suffix = ".nii.gz" if name.lower().endswith(".nii.gz") else path.suffix
    return path.parent / f".{name}.{kind}-{Owner.current().tag}-{secrets.token_hex(4)}{suffix}"


def probe_folder(folder: Path, name: str = "write-check") -> None:
    """Really create and delete a file in `folder` (OSError when it cannot): os.access says yes
    to root even on read-only mounts. The probe is named as a temp file of this process beside
    `name`, so a killed run's is swept like its other leftovers."""
    probe = temp_path(folder / name, "probe")
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(probe)


def _probe_folder(path: Path, folder: Path) -> None:
    """`path` can be created in `folder` (where it goes, or the nearest folder above it that exists)."""
    try:
        probe_folder(folder, path.name)
    except OSError as exc:
        raise InputError(path, f"cannot write in folder {folder} ({exc.strerror or exc})") from None


def check_folder_writable(folder: Path) -> None:
    """Outputs can be written in the existing output folder `folder` (a real probe)."""
    try:
        probe_folder(folder)
    except OSError as exc:
        raise InputError(folder, f"cannot write in the output folder ({exc.strerror or exc})") from None


def check_writable(path: str | Path, overwrite: bool, *, own_location: bool = False) -> None:
    """Fail early (before any work) if ``path`` cannot be written as asked; modifies nothing.
    An existing file is replaced only with `overwrite`, and only when tsf-trt wrote it (or the
    caller vouches for the location with `own_location`: a cache, a recognised report folder)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory; give a file name for the output")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise InputError(path, "exists; use --overwrite to replace it")
        if not own_location:
            refuse_foreign_file(path)
    folder = path.parent
    if not folder.exists():
        raise InputError(path, f"folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(path, f"{folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(path, f"folder {folder} is not writable")
    _probe_folder(path, folder)


def link_exclusive(tmp: Path, path: Path) -> bool | None:
    """Give `tmp` the name `path` only if no file has it (a hard link: atomic, also on NFS):
    True when it was made, False when `path` exists, None on a file system without hard links."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        # NFS: the link was made, and a retried request answered EEXIST
        return os.stat(tmp).st_nlink > 1 and _same_inode(tmp, path)
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        return None
    return True


def publish(tmp: Path, path: Path, overwrite: bool) -> None:
    """Move the finished temp file to its final name, without clobbering unless allowed."""
    if overwrite:
        if path.is_dir():
            raise InputError(path, "is a directory; give a file name for the output")
        os.replace(tmp, path)
        return
    linked = link_exclusive(tmp, path)
    if linked is None:  # no hard links on this file system: check, then rename
        linked = not (path.exists() or path.is_symlink())
        if linked:
            os.replace(tmp, path)
    if not linked:
        raise InputError(path, "exists; use --overwrite to replace it")


def _same_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether `exc` means the disk is full: ENOSPC/EDQUOT anywhere in its chain, a library's
    message saying so, or (for libraries that hide the cause) almost no space left."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        if any(text in str(seen).lower() for text in _DISK_FULL_TEXT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < _LOW_SPACE_BYTES


@contextmanager
def disk_full_as_error(path: Path, folder: Path | None = None) -> Iterator[None]:
    """Turn a full disk while writing `path` into one DiskFullError line naming it."""
    try:
        yield
    except TsfError:
        raise
    except Exception as exc:
        if is_disk_full(exc, folder or path.parent):
            raise DiskFullError(path, "no space left on device while writing it "
                                      "(nothing partial was left; free space and run again)") from None
        raise


@contextmanager
def atomic_group(paths: Sequence[Path], overwrite: bool, *, own_location: bool = False) -> Iterator[list[Path]]:
    """Temp paths for files that belong together, published in the order given when the
    block ends without error (put the file that marks completion last).

    Should publishing fail midway (Ctrl-C included), exactly the files this call put in
    place are removed again, each checked by inode: never a file another process wrote.
    What may be replaced: :func:`check_writable`.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        check_writable(path, overwrite, own_location=own_location)
    tmps = [temp_path(path) for path in paths]
    try:
        for tmp, path in zip(tmps, paths):
            with disk_full_as_error(path):  # reserve the name; umask applies
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        # A full disk while the caller writes: name the file, or the folder of several files.
        with disk_full_as_error(paths[0] if len(paths) == 1 else paths[0].parent):
            yield tmps
        published: list[tuple[Path, int]] = []
        try:
            for tmp, path in zip(tmps, paths):
                if not tmp.exists():
                    raise RuntimeError(f"temporary file {tmp} vanished before it could be renamed")
                inode = os.stat(tmp).st_ino
                with disk_full_as_error(path):
                    publish(tmp, path, overwrite)
                published.append((path, inode))
        except BaseException:
            for path, inode in published:
                try:
                    if os.lstat(path).st_ino == inode:
                        path.unlink()
                except FileNotFoundError:
                    pass
            raise
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, overwrite: bool, *, own_location: bool = False) -> Iterator[Path]:
    """Yield a hidden temp path beside ``path``; rename it into place only on success.

    On any exception, including KeyboardInterrupt, the temp file is removed and nothing
    appears under ``path``: a group of one.
    """
    with atomic_group([Path(path)], overwrite, own_location=own_location) as (tmp,):
        yield tmp


def _existing_ancestor(path: Path) -> Path:
    """`path` or the nearest folder above it that exists (where creating it starts)."""
    return next(p for p in [path, *path.parents] if p.exists() or p.is_symlink() or p == p.parent)


def check_folder_target(path: str | Path, overwrite: bool, kind: FolderKind | None, *,
                        own_location: bool = False) -> None:
    """Fail before any work unless :func:`atomic_dir` may write the folder `path`: absent, or
    with `overwrite` a folder of `kind` holding nothing else (``own_location``: any folder
    there is tsf-trt's own, a cache); its parent creatable and writable. Modifies nothing."""
    path = Path(path)
    if path.is_symlink():
        raise InputError(path, "is a symbolic link: not replaced; give another output folder")
    if path.exists():
        if not path.is_dir():
            raise InputError(path, "is a file; give a folder for the output")
        if not overwrite:
            raise InputError(path, "exists; use --overwrite to replace it")
        if not own_location:
            if kind is None:
                raise InputError(path, "exists and is not a folder tsf-trt may replace; choose another output")
            kind.check(path)
    base = _existing_ancestor(path.parent)
    if not base.is_dir():
        raise InputError(path, f"{base} is not a folder")
    _probe_folder(path, base)


@contextmanager
def atomic_dir(path: str | Path, kind: FolderKind | None = None, *, own_location: bool = False) -> Iterator[Path]:
    """Yield a hidden temp folder beside ``path``; on success it replaces ``path`` whole.

    Model directories, exports, checkpoints and phantom subjects are written this way:
    a reader sees the complete old folder or the complete new one, never a mix. On any
    exception (KeyboardInterrupt included) the temp folder is removed and ``path`` is
    untouched. Whether replacing is allowed is the caller's check, made before the work
    (:func:`check_folder_target`); it is made again just before the swap, so that an
    existing folder is replaced only when it is of `kind` and holds nothing else (or
    `own_location`), whatever appeared there meanwhile. Dead writers' leftovers of the same
    name beside it are removed first.
    """
    path = Path(path)
    with disk_full_as_error(path, path.parent if path.parent.exists() else None):
        path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path.parent, [path.name])
    tmp = temp_path(path)
    try:
        with disk_full_as_error(path):
            tmp.mkdir()  # umask applies, so the published folder is not private
            yield tmp
            if path.exists() or path.is_symlink():
                if not own_location:
                    if kind is None or path.is_symlink() or not path.is_dir():
                        raise InputError(path, "exists and is not a folder tsf-trt may replace; nothing was "
                                               "written")
                    kind.check(path)
                old = temp_path(path, "old")
                os.rename(path, old)
                os.rename(tmp, path)
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink()
            else:
                os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stale_leftovers(folder: Path, names: Iterable[str] | Callable[[str], bool], lease_s: float) -> list[Path]:
    """Temp files, probes and old folders beside `names` in `folder` (or beside any name
    the predicate accepts) whose writer is dead: on this host, the process is gone; on
    another, the file is untouched for longer than the lease."""
    wanted = names if callable(names) else set(names).__contains__
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    found = []
    for entry in entries:
        found_owner = leftover_owner(entry)
        if found_owner is None or not wanted(found_owner[0]):
            continue
        owner = found_owner[1]
        path = folder / entry
        try:
            mtime = path.lstat().st_mtime
        except FileNotFoundError:
            continue
        if owner.is_dead(mtime, lease_s):
            found.append(path)
    return sorted(found)


def remove_stale(folder: Path, names: Iterable[str] | Callable[[str], bool], lease_s: float) -> list[Path]:
    """Remove what :func:`stale_leftovers` finds; returns what was removed."""
    removed = []
    for path in stale_leftovers(folder, names, lease_s):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another process cleaned it first
        removed.append(path)
    return removed


def sweep(folder: Path, names: Iterable[str] | Callable[[str], bool], lease_s: float | None = None) -> list[Path]:
    """:func:`remove_stale` for a command's own outputs, logged; `lease_s` (for writers on other
    hosts) defaults to the claim lease of folder runs."""
    if lease_s is None:
        lease_s = DEFAULT_LEASE_S
    removed = remove_stale(folder, names, lease_s) if folder.is_dir() else []
    if removed:
        _log.info("removed %d leftover(s) of killed runs in %s", len(removed), folder)
    return removed


def make_folder(path: Path) -> Path | None:
    """Create an output folder; return the topmost folder this created (None if it existed),
    for :func:`remove_empty_folders` when the run fails."""
    if path.exists() and not path.is_dir():
        raise InputError(path, "output folder is a file")
    top = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(path, f"cannot create the output folder ({exc.strerror})") from None
    return top


def remove_empty_folders(top: Path | None, leaf: Path | None) -> None:
    """A failed run leaves no folders it created, as long as they are still empty."""
    if top is None or leaf is None:
        return
    for folder in [leaf, *leaf.parents]:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return


_log = logging.getLogger(__name__)
