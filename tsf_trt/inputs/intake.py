"""Where one `infer` run reads its subjects from — files, a folder, a BIDS dataset or a `--map`
CSV — and the subjects it gathers there (:func:`gather`). Above :mod:`tsf_trt.inputs.subjects` (one
folder's layouts), :mod:`tsf_trt.inputs.bids` and :mod:`tsf_trt.inputs.mapfile`, which it chooses between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from tsf_trt import sequences
from tsf_trt.errors import InputError, TsfError
from tsf_trt.files.volume import check_input_file
from tsf_trt.inputs.bids import FilterValue, find_cases, is_bids_dataset
from tsf_trt.inputs.mapfile import read_map
from tsf_trt.inputs.subjects import (Discovery, Subject, broken_link, check_subject_name, discover, parse_inputs,
                                     shard, subject_name)


@dataclass(frozen=True)
class Intake:
    """Where `infer` reads subjects from, as the user said it: files or one folder (`items`), a
    BIDS dataset (`bids`, or a folder in `items` that has dataset_description.json), or a
    `--map` CSV; with the options that narrow each."""

    items: tuple[str, ...] = ()
    subject: str | None = None              # single-subject mode: the output name
    channels: tuple[int, ...] | None = None  # nnU-Net folders
    shard: str | None = None
    bids: Path | None = None
    participants: tuple[str, ...] | None = None
    sessions: tuple[str, ...] | None = None
    bids_filter: tuple[tuple[str, FilterValue], ...] = ()  # (`t1.acq`, value): tsf_trt.inputs.bids, `select`
    map_file: Path | None = None

    @cached_property
    def mode(self) -> str:
        """single, folder, bids or map: the one place this is decided (once: it looks at the disk)."""
        if self.map_file is not None:
            return "map"
        if self.bids is not None:
            return "bids"
        if len(self.items) == 1 and Path(self.items[0]).is_dir():
            return "bids" if is_bids_dataset(self.items[0]) else "folder"
        return "single"

    @property
    def root(self) -> Path | None:
        """The data set's folder, where the default output goes (tsf_trt.runs.outputs.default_output):
        the folder or BIDS dataset given, or the --map CSV's folder; None for files given one by
        one, which name no data set (their folder may be a subject's own, which outputs never enter)."""
        mode = self.mode
        if mode == "map":
            return Path(self.map_file).parent  # type: ignore[arg-type]
        if mode == "bids":
            return Path(self.bids or self.items[0])
        if mode == "folder":
            return Path(self.items[0])
        return None


def gather(intake: Intake, target: int, sources: Sequence[int] | None = None) -> Discovery:
    """The subjects of one `infer` run: every subject of a folder, BIDS dataset or map (then
    its `--shard` share), or one subject of command-line inputs, named `intake.subject` or
    after its files. Command-line inputs are checked to exist and read before any model loads.
    A symbolic link that leads to no file fails its subject, naming it, when the run would
    read it (`sources`, else every sequence but the target); else it is listed as unused."""
    mode = intake.mode
    if mode == "folder":
        found = discover(intake.items[0], intake.channels)
        return Discovery(_links(shard(found.subjects, intake.shard), target, sources), found.unused)
    if mode == "bids":
        return Discovery(_links(shard(_bids_subjects(intake), intake.shard), target, sources))
    if mode == "map":
        mapped = read_map(intake.map_file)  # type: ignore[arg-type]
        return Discovery(_links(shard(mapped, intake.shard), target, sources))
    if not intake.items:
        raise TsfError("no input given: use --inputs FILE [FILE ...], --data FOLDER, --bids DIR or --map CSV")
    subject = intake.subject
    if subject is not None:
        try:
            check_subject_name(subject)
        except TsfError as exc:
            raise TsfError(f"--subject-name: {exc}") from None
    given = parse_inputs(intake.items)
    try:
        sequences.check_task(list(given), target)
    except sequences.TargetIsInput:  # name the file that is the target
        raise InputError(given[target], f"is the target {sequences.DISPLAY[target]} itself: nothing to "
                                        "synthesise (drop it or pick another --target)") from None
    for path in given.values():  # a typo should fail fast
        broken = broken_link(path)
        if broken:
            raise InputError(path, broken)
        check_input_file(path)
    if subject is None:
        subject = subject_name(given)
        check_subject_name(subject)  # read from the file names: it must not lead out of -o either
    return Discovery([Subject(subject, given)])


def _bids_subjects(intake: Intake) -> list[Subject]:
    cases = find_cases(intake.root, intake.participants, intake.sessions, dict(intake.bids_filter) or None)
    return [Subject(case.name, case.inputs, case.problem, tuple(case.unused), (case.subject, case.session))
            for case in cases]


def _links(subjects: list[Subject], target: int, sources: Sequence[int] | None) -> list[Subject]:
    """Broken symbolic links among the subjects' inputs: the subject's problem (one line naming
    the link) if this run would read it, else moved to its unused files with why. A stat per input."""
    out = []
    for subject in subjects:
        broken = {i: why for i, path in subject.inputs.items() if (why := broken_link(path))}
        if not broken:
            out.append(subject)
            continue
        read = [i for i in broken if (i in sources if sources else i != target)]
        skipped = [i for i in broken if i not in read]
        problem = subject.problem or next((f"{subject.inputs[i]}: {broken[i]}" for i in read), None)
        unused = [*subject.unused, *((subject.inputs[i], f"{broken[i]}; not read ("
                                      f"{'the target' if i == target else 'not in --sources'})") for i in skipped)]
        inputs = {i: path for i, path in subject.inputs.items() if i not in skipped}
        out.append(replace(subject, inputs=inputs, problem=problem, unused=tuple(unused)))
    return out
