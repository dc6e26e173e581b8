"""From what the user typed to subjects: a name plus sequence index -> file path.

Only names and the file system are looked at here; whether a file is a usable NIfTI
volume is decided later, where it is opened. Sequence spellings belong to
:mod:`tsf_trt.sequences`, the reading of file names to :mod:`tsf_trt.inputs.naming`, BIDS
datasets to :mod:`tsf_trt.inputs.bids`. Nothing is dropped silently: every NIfTI file of a
folder that is not used is kept with the reason (`Subject.unused`, `Discovery.unused`),
and every ambiguity is that subject's `problem`, naming the files.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tsf_trt import sequences
from tsf_trt.errors import InputError, TsfError
from tsf_trt.inputs import naming

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
# nnU-Net's raw-data convention: CASE_XXXX.nii.gz, XXXX the 4-digit channel number.
_NNUNET = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# The part before '=' in `seq=path` is taken as a sequence name when it looks like one
# (all aliases are alphanumeric); anything else, e.g. `/data/run=1/x_t1.nii.gz`, is a path.
_NAME_LIKE = re.compile(r"^\s*[A-Za-z0-9]+\s*$")
_SEPARATORS = "_-."
_UNNAMED = "cannot tell the sequence from the file name; write it as t1=PATH (one of {})"


#: Sub-folders that hold outputs, never subjects (a BIDS derivatives folder, tsf-trt's default -o).
OUTPUT_FOLDERS = ("derivatives",)


@dataclass(frozen=True)
class Subject:
    """One case to synthesise for; `inputs` may hold any subset of the four sequences.

    `problem` says why a subject found in a folder cannot run (two files of one sequence,
    say): folder mode fails that subject alone and goes on with the others. `unused` lists
    the subject's files that are not inputs, each with why. `bids` is (subject label,
    session label or None) for a subject of a BIDS dataset, whose outputs are named by the
    BIDS derivatives rules."""

    name: str
    inputs: dict[int, Path]  # sequence index -> file
    problem: str | None = None
    unused: tuple[tuple[Path, str], ...] = ()
    bids: tuple[str, str | None] | None = None


@dataclass(frozen=True)
class Discovery:
    """What a data set holds: its subjects, and the NIfTI files that belong to none (with why)."""

    subjects: list[Subject]
    unused: tuple[tuple[Path, str], ...] = ()


def parse_inputs(items: Sequence[str]) -> dict[int, Path]:
    """Sequence index -> path for command-line inputs, in the order given.

    An item is `seq=PATH` (any accepted spelling, any case) or a plain path whose file
    name says the sequence. A plain path whose first '=' follows a bare word (`abc=x.nii`)
    reads as the explicit form; write `./abc=x.nii` to mean the file.
    """
    if not items:
        raise TsfError("no input given: name at least one file, e.g. t1=PATH")
    inputs: dict[int, Path] = {}
    for item in items:
        index, path = _parse_item(item)
        if index in inputs:
            raise InputError(
                path,
                f"{sequences.DISPLAY[index]} is given twice, here and as {inputs[index]}; "
                "give each sequence once",
            )
        inputs[index] = path
    return inputs


def _parse_item(item: str) -> tuple[int, Path]:
    key, sep, rest = item.partition("=")
    if sep and _NAME_LIKE.match(key):
        try:
            index = sequences.parse(key)
        except TsfError as exc:  # its message lists the accepted spellings
            raise (InputError(_path(rest), str(exc)) if rest.strip() else exc) from None
        if not rest.strip():
            raise TsfError(f"'{item}' names no file: write it as {key.strip()}=PATH")
        return index, _path(rest)
    if not item.strip():
        raise TsfError("an input is an empty string: give a file path")
    path = _path(item)
    if not _NIFTI.search(path.name):
        raise InputError(path, "not a NIfTI file (.nii or .nii.gz expected)")
    found = naming.read_name(path.name)
    if found is None:
        raise InputError(path, _UNNAMED.format(", ".join(sequences.NAMES)))
    return found[1], path


def _path(text: str) -> Path:
    return Path(os.path.expanduser(text.strip()))


def subject_name(inputs: Mapping[int, Path]) -> str:
    """The subject the inputs belong to, for naming outputs.

    The subject part of the file names (the file stem where the name carries no
    sequence); if they differ, their common prefix; failing that, the first input's
    folder name; failing that, "subject".
    """
    paths = list(inputs.values())
    if not paths:
        return "subject"
    parts = []
    for path in paths:
        found = naming.read_name(path.name)
        parts.append(found[0] if found is not None else sequences.nifti_stem(path.name))
    name = os.path.commonprefix(parts).rstrip(_SEPARATORS)
    return name or _folder_name(paths[0].parent)


def _folder_name(folder: Path) -> str:
    name = folder.name
    return name if name not in ("", ".", "..", "/") else "subject"


def find_subjects(folder: str | Path, channels: Sequence[int] | None = None) -> list[Subject]:
    """Every subject in `folder`, sorted by name (see :func:`discover`)."""
    return discover(folder, channels).subjects


def discover(folder: str | Path, channels: Sequence[int] | None = None) -> Discovery:
    """Every subject in `folder`, sorted by name, and the files that are not inputs.

    Layouts, told apart by the names found: one sub-folder per subject; a flat folder of
    files named `<subject>_<seq>.nii.gz` (any name :func:`tsf_trt.inputs.naming.read_name` reads);
    a flat nnU-Net folder `CASE_XXXX.nii.gz`, which needs `channels` (channel k is
    sequence channels[k]). Files that are not inputs (segmentations, T2*, unreadable
    names) are listed as unused, each with why; `derivatives/` (outputs) is skipped.
    A folder of DICOM files is refused with the advice to convert it.
    """
    root = Path(folder)
    if not root.exists():
        raise InputError(root, "no such folder")
    if not root.is_dir():
        raise InputError(root, "is a file, not a folder: give the folder that holds the subjects")

    found = _Found()
    for entry in _entries(root):
        if entry.is_dir() and entry.name not in OUTPUT_FOLDERS:
            found.add_named(_nifti_files(entry), entry.name)
        elif not entry.is_dir() and not _NIFTI.search(entry.name) and (broken := broken_link(entry)):
            found.unused.setdefault(None, []).append((entry, f"{broken}: a subject folder?"))
    flat = _nifti_files(root)
    nnunet = [p for p in flat if _NNUNET.match(sequences.nifti_stem(p.name))]
    found.add_named([p for p in flat if p not in nnunet or channels is None], None,
                    default=_folder_name(root.resolve()))

    if nnunet and channels is None and not found.names():
        raise TsfError(
            f"{root}: looks like nnU-Net naming (CASE_XXXX.nii.gz); say which channel is "
            "which with --channels t1,t1gd,t2,flair"
        )
    if channels is not None:
        if not nnunet:
            raise TsfError(f"--channels is for nnU-Net folders (files named CASE_XXXX.nii.gz), and {root} holds "
                           "none: drop --channels")
        found.add_nnunet(nnunet, _check_channels(channels))

    if not found.names():
        refuse_dicom(root)
        raise InputError(
            root,
            "no subject found: expected one sub-folder per subject or files named like "
            "<subject>_t1.nii.gz / <subject>-t1n.nii.gz (or nnU-Net CASE_0000.nii.gz with --channels)",
        )
    names = found.names()
    subjects = [Subject(name, dict(sorted(found.inputs.get(name, {}).items())), found.problems.get(name),
                        tuple(found.unused.get(name, ()))) for name in names]
    orphans = [item for owner, items in found.unused.items() if owner not in names for item in items]
    return Discovery(subjects, tuple(orphans))


def refuse_dicom(folder: Path) -> None:
    """A DICOM folder is not "no subject": say what it is and how to convert it."""
    for path in [folder, *(p for p in _entries(folder) if p.is_dir())][:50]:
        files = [p for p in _entries(path) if p.is_file()][:20] if path.is_dir() else []
        if any(_is_dicom(p) for p in files):
            raise InputError(path, "holds DICOM files: tsf-trt reads NIfTI. Convert them first, e.g. "
                                   f"`dcm2niix -z y -o OUT {path}`, then co-register and skull-strip "
                                   "(docs/your-data.md, \"Preparing your data\")")


def _is_dicom(path: Path) -> bool:
    """DICOM Part 10: "DICM" at byte 128 (what dcm2niix looks for too); or a .dcm name."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


class _Found:
    """Subjects found so far. A conflict (two files of one sequence, one subject in two
    places) becomes that subject's problem, so the rest of the folder still runs."""

    def __init__(self) -> None:
        self.inputs: dict[str, dict[int, Path]] = {}
        self.problems: dict[str, str] = {}
        self.unused: dict[str | None, list[tuple[Path, str]]] = {}  # None: the folder's, no subject's

    def names(self) -> list[str]:
        return sorted(set(self.inputs) | set(self.problems))

    def add_named(self, files: Sequence[Path], subject: str | None, default: str = "") -> None:
        """Files whose names say their sequence: all of one `subject` (a sub-folder), or
        grouped by the subject part of their names (a flat folder)."""
        batch: dict[str, dict[int, Path]] = {}
        unread = []
        for path in files:
            read = naming.read_name(path.name)
            if read is not None:
                self._put(batch, subject if subject is not None else (read[0] or default), read[1], path)
            else:
                unread.append(path)
        for name, inputs in batch.items():
            self._add(name, inputs)
        for path in unread:  # a flat folder's file goes to the subject its name starts with
            owner = subject if subject is not None else _owner(path.name, batch)
            broken = broken_link(path)
            why = naming.why_not(path.name)
            self.unused.setdefault(owner, []).append((path, f"{why}; {broken}" if broken else why))

    def add_nnunet(self, files: Sequence[Path], channels: Sequence[int]) -> None:
        batch: dict[str, dict[int, Path]] = {}
        for path in files:
            match = _NNUNET.match(sequences.nifti_stem(path.name))
            assert match is not None
            channel = int(match.group("channel"))
            if channel >= len(channels):
                raise InputError(
                    path,
                    f"channel {channel} but --channels names only {len(channels)} "
                    f"({', '.join(sequences.NAMES[c] for c in channels)})",
                )
            self._put(batch, match.group("case"), channels[channel], path)
        for name, inputs in batch.items():
            self._add(name, inputs)

    def _put(self, batch: dict[str, dict[int, Path]], name: str, index: int, path: Path) -> None:
        inputs = batch.setdefault(name, {})
        if index in inputs:
            self.problems.setdefault(name, f"{sequences.DISPLAY[index]} found twice, in {inputs[index]} and "
                                           f"{path}; keep one")
        else:
            inputs[index] = path

    def _add(self, name: str, inputs: dict[int, Path]) -> None:
        if name in self.inputs:
            first, other = next(iter(self.inputs[name].values())), next(iter(inputs.values()))
            self.problems.setdefault(name, f"subject '{name}' is found twice: {first} and {other}; keep one")
            return
        self.inputs[name] = inputs


def _owner(filename: str, subjects: Mapping[str, object]) -> str | None:
    """The subject whose name (and a separator) begins `filename`; the longest such, or None."""
    owners = [name for name in subjects if filename.startswith(name) and filename[len(name):][:1] in
              tuple(_SEPARATORS)]
    return max(owners, key=len, default=None)


def _entries(folder: Path) -> list[Path]:
    """Visible entries, skipping hidden and editor/transfer temp files."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise InputError(folder, f"cannot be read ({exc.strerror or exc})") from None
    return [folder / n for n in names if not n.startswith((".", "~", "#")) and not n.endswith("~")]


def _nifti_files(folder: Path) -> list[Path]:
    """NIfTI names that are files, or symbolic links that lead to none (named, never dropped)."""
    return [p for p in _entries(folder) if _NIFTI.search(p.name) and (p.is_file() or broken_link(p))]


def broken_link(path: Path) -> str | None:
    """Why `path` is a symbolic link that leads to no file (dangling, or a loop); None if it is
    not one. What the user sees instead of a file silently missing."""
    try:
        os.stat(path)
        return None
    except OSError as exc:
        try:
            target = os.readlink(path)
        except OSError:
            return None  # not a link: whatever is wrong is said where the file is opened
        if exc.errno == errno.ELOOP:
            return f"a symbolic link loop (-> {target})"
        return f"a broken symbolic link (-> {target}: {exc.strerror})"


def _check_channels(channels: Sequence[int]) -> list[int]:
    out = list(channels)
    for c in out:
        if not isinstance(c, int) or not 0 <= c < sequences.N_SEQUENCES:
            raise TsfError(f"--channels: {c!r} is not a sequence index 0..{sequences.N_SEQUENCES - 1}")
    dup = sorted({c for c in out if out.count(c) > 1})
    if dup:
        raise TsfError(f"--channels names {', '.join(sequences.DISPLAY[c] for c in dup)} more than once")
    return out


def shard(subjects: Sequence[Subject], spec: str | None) -> list[Subject]:
    """Share `i/n` of the subjects, round-robin over the name order, so that n
    independent runs cover every subject exactly once."""
    ordered = sorted(subjects, key=lambda s: s.name)
    if spec is None:
        return ordered
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    i, n = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not 1 <= i <= n:
        raise TsfError(f"--shard expects i/n with 1 <= i <= n, got '{spec}'")
    return [s for pos, s in enumerate(ordered) if pos % n == i - 1]


def check_subject_name(name: str) -> None:
    """A subject name becomes part of output file names and of every line about the subject: it
    must never lead out of the folder, nor break a line (control characters: newline, tab, ESC)."""
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0") \
            or _CONTROL.search(name):
        raise TsfError(f"subject name {name!r} cannot name output files: it must not be empty, start with '.', "
                       "or hold '/', '\\', NUL or control characters")


#: Control characters (Unicode category Cc: C0, DEL and C1), which no output name may hold.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(name: str) -> str:
    """A name as one line shows it: with its control characters escaped (a refused subject
    folder's name may hold a newline)."""
    return _CONTROL.sub(lambda found: repr(found[0])[1:-1], name)
