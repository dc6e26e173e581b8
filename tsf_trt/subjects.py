"""From what the user typed to subjects: a name plus sequence index -> file path.

Only names and the file system are looked at here; whether a file is a usable NIfTI
volume is decided later, where it is opened. Sequence spellings and the reading of
file names belong to :mod:`tsf_trt.sequences`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import sequences
from .errors import InputError, TsfError

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
# nnU-Net's raw-data convention: CASE_XXXX.nii.gz, XXXX the 4-digit channel number.
_NNUNET = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# The part before '=' in `seq=path` is taken as a sequence name when it looks like one
# (all aliases are alphanumeric); anything else, e.g. `/data/run=1/x_t1.nii.gz`, is a path.
_NAME_LIKE = re.compile(r"^\s*[A-Za-z0-9]+\s*$")
_SEPARATORS = "_-."
_UNNAMED = "cannot tell the sequence from the file name; write it as t1=PATH (one of {})"


@dataclass(frozen=True)
class Subject:
    """One case to synthesise for; `inputs` may hold any subset of the four sequences.

    `problem` says why a subject found in a folder cannot run (two files of one sequence,
    say): folder mode fails that subject alone and goes on with the others."""

    name: str
    inputs: dict[int, Path]  # sequence index -> file
    problem: str | None = None


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
    found = sequences.from_filename(path.name)
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
        found = sequences.from_filename(path.name)
        parts.append(found[0] if found is not None else sequences.nifti_stem(path.name))
    name = os.path.commonprefix(parts).rstrip(_SEPARATORS)
    return name or _folder_name(paths[0].parent)


def _folder_name(folder: Path) -> str:
    name = folder.name
    return name if name not in ("", ".", "..", "/") else "subject"


def find_subjects(folder: str | Path, channels: Sequence[int] | None = None) -> list[Subject]:
    """Every subject in `folder`, sorted by name.

    Layouts, told apart by the names found: one sub-folder per subject; a flat folder of
    files named `<subject>_<seq>.nii.gz` (any spelling sequences.from_filename reads);
    a flat nnU-Net folder `CASE_XXXX.nii.gz`, which needs `channels` (channel k is
    sequence channels[k]). Unrecognised files (segmentations, our outputs) are ignored.
    """
    root = Path(folder)
    if not root.exists():
        raise InputError(root, "no such folder")
    if not root.is_dir():
        raise InputError(root, "is a file, not a folder: give the folder that holds the subjects")

    found = _Found()
    for entry in _entries(root):
        if entry.is_dir():
            found.add_named(_nifti_files(entry), entry.name)
    found.add_named(_nifti_files(root), None, default=_folder_name(root.resolve()))

    nnunet = [p for p in _nifti_files(root) if _NNUNET.match(sequences.nifti_stem(p.name))]
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
        raise InputError(
            root,
            "no subject found: expected one sub-folder per subject or files named like "
            "<subject>_t1.nii.gz / <subject>-t1n.nii.gz (or nnU-Net CASE_0000.nii.gz with --channels)",
        )
    return [Subject(name, dict(sorted(found.inputs.get(name, {}).items())), found.problems.get(name))
            for name in found.names()]


class _Found:
    """Subjects found so far. A conflict (two files of one sequence, one subject in two
    places) becomes that subject's problem, so the rest of the folder still runs."""

    def __init__(self) -> None:
        self.inputs: dict[str, dict[int, Path]] = {}
        self.problems: dict[str, str] = {}

    def names(self) -> list[str]:
        return sorted(set(self.inputs) | set(self.problems))

    def add_named(self, files: Sequence[Path], subject: str | None, default: str = "") -> None:
        """Files whose names say their sequence: all of one `subject` (a sub-folder), or
        grouped by the subject part of their names (a flat folder)."""
        batch: dict[str, dict[int, Path]] = {}
        for path in files:
            read = sequences.from_filename(path.name)
            if read is not None:
                self._put(batch, subject if subject is not None else (read[0] or default), read[1], path)
        for name, inputs in batch.items():
            self._add(name, inputs)

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


def _entries(folder: Path) -> list[Path]:
    """Visible entries, skipping hidden and editor/transfer temp files."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise InputError(folder, f"cannot be read ({exc.strerror or exc})") from None
    return [folder / n for n in names if not n.startswith((".", "~", "#")) and not n.endswith("~")]


def _nifti_files(folder: Path) -> list[Path]:
    return [p for p in _entries(folder) if _NIFTI.search(p.name) and p.is_file()]


def _check_channels(channels: Sequence[int]) -> list[int]:
    out = list(channels)
    for c in out:
        if not isinstance(c, int) or not 0 <= c < sequences.N_SEQUENCES:
            raise TsfError(f"--channels: {c!r} is not a sequence index 0..{sequences.N_SEQUENCES - 1}")
    dup = sorted({c for c in out if out.count(c) > 1})
    if dup:
        raise TsfError(f"--channels names {', '.join(sequences.DISPLAY[c] for c in dup)} more than once")
    return out


def gather(items: Sequence[str], target: int, *, subject: str | None = None, channels: Sequence[int] | None = None,
           shard_spec: str | None = None) -> list[Subject]:
    """The subjects of `infer --inputs ITEMS`: one folder is folder mode (every subject found,
    then its `--shard` share), anything else one subject of command-line inputs, named `subject` or
    after its files. Inputs are checked to exist and read, before any model loads."""
    from .outputs import check_subject_name
    from .volume import check_input_file

    if not items:
        raise TsfError("no input given: use --inputs FILE [FILE ...] or --inputs FOLDER")
    if len(items) == 1 and Path(items[0]).is_dir():
        return shard(find_subjects(items[0], channels), shard_spec)
    if subject is not None:
        try:
            check_subject_name(subject)
        except TsfError as exc:
            raise TsfError(f"--subject: {exc}") from None
    given = parse_inputs(items)
    if target in given:
        raise InputError(given[target], f"is the target {sequences.DISPLAY[target]} itself: nothing to "
                                        "synthesise (drop it or pick another --target)")
    sequences.check_task(list(given), target)
    for path in given.values():  # a typo should fail fast
        check_input_file(path)
    if subject is None:
        subject = subject_name(given)
        check_subject_name(subject)  # read from the file names: it must not lead out of -o either
    return [Subject(subject, given)]


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
