"""BIDS in: file names, and the anat/ files of a raw dataset -> cases (tsf-trt's outputs are
named by tsf_trt.inputs.bids_derivatives). Names and the file system only; no BIDS library is needed.

Facts from the BIDS specification (BIDS_VERSION), by section:

* "Common principles", "Filenames": a name is entity instances `key-value` and a suffix
  joined by `_`, then an extension; an entity appears at most once, in the order of the
  "Entity table" appendix (ENTITY_ORDER); a file of a session begins `sub-<label>_ses-<label>`.
  "Definitions": a label is letters, digits and `+`; an index is digits, maybe zero-padded;
  the extension starts at the left-most period. "Dotfiles": names starting `.` are hidden.
* "Magnetic Resonance Imaging", "Non-parametric structural MR images": the anat suffixes
  (T1w, T2w, PDw, T2starw, FLAIR, ...). Entities appendix: `ce-<label>` names the contrast
  agent; `run-<index>` separates acquisitions "with the same acquisition parameters".

Discovery rule (find_cases), one case per `sub-<label>/[ses-<label>/]anat/`:

1. T1w without `ce-` -> T1; T1w with any `ce-<label>` -> T1Gd; T2w -> T2; FLAIR -> FLAIR.
   Every other file is listed in `unused` with why: other suffixes, names that break the
   rules above or whose sub-/ses- are not their folder's, non-NIfTI files, `part-` phase,
   real or imaginary images, tsf-trt's outputs (`desc-tsfsynth`, the `tsem` and `halfwidth`
   maps, and an earlier version's `desc-tsem`/`desc-halfwidth`); JSON sidecars are expected and
   hidden files skipped, so neither is listed.
2. `select` narrows: `{ENTITY: LABEL}` (`acq` or `acquisition`) applies to each sequence whose
   candidates use that entity at all, `{"t1.acq": LABEL}` (any sequence spelling) to that
   sequence only; it keeps the files with that label (indices compare as numbers), with
   LABEL None those without the entity, with ANY (`*`) those with any value of it, and with
   several labels (a tuple, or `A|B` as typed) those with any of them: the values of fMRIPrep's
   filter file (tsf_trt.inputs.bids_filter reads it into `select`).
3. One candidate left: used. Several (another acq-, rec-, run-, echo-, .nii beside .nii.gz)
   is the case's problem, naming the files, how they differ and the option that picks one:
   no run is preferred, as which is better is not in the name.

tsf-trt's outputs, named as a BIDS derivative: tsf_trt.inputs.bids_derivatives.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tsf_trt import sequences
from tsf_trt.errors import InputError, TsfError
from tsf_trt.inputs.subjects import broken_link

#: The release whose rules these are (its entity table and derivative rules are the current ones).
BIDS_VERSION = "1.11.1"
PIPELINE_NAME = "tsf-trt"
#: The option that fills `select`, named in messages.
FILTER_OPTION = "--bids-filter"
#: A `select` value: the entity present, with any value (pybids' Query.ANY, written "*" in fMRIPrep's filter file).
ANY = "*"
#: A `select` value: a label or index, None (the entity absent), ANY, or a tuple of these (any of them).
FilterValue = str | None | tuple[str | None, ...]

#: Entity keys in the order of the "Entity table" appendix, and their names (schema rules/entities.yaml).
ENTITY_ORDER: tuple[str, ...] = tuple(
    "sub tpl ses cohort sample task tracksys acq nuc voi ce trc stain rec dir run mod echo flip inv mt part "
    "proc hemi space split recording chunk atlas seg scale res den label desc".split())
ENTITY_NAMES: dict[str, str] = dict(zip(ENTITY_ORDER, (
    "subject template session cohort sample task tracksys acquisition nucleus volume ceagent tracer stain "
    "reconstruction direction run modality echo flip inversion mtransfer part processing hemisphere space split "
    "recording chunk atlas segmentation scale resolution density label description").split()))
#: Entities whose value is an index; all others take a label.
INDEX_ENTITIES = frozenset({"run", "echo", "flip", "inv", "split", "chunk"})
_POSITION = {key: i for i, key in enumerate(ENTITY_ORDER)}
_BY_NAME = {name: key for key, name in ENTITY_NAMES.items()}
_LABEL, _INDEX = re.compile(r"[0-9a-zA-Z+]+"), re.compile(r"[0-9]+")
_SUFFIX, _EXTENSION = re.compile(r"[0-9a-zA-Z]+"), re.compile(r"(?:\.[0-9a-zA-Z]+)+")

#: The anat suffixes tsf-trt reads -> sequence index (a T1w with `ce-` is T1Gd: sequence_of).
SUFFIXES = {"T1w": 0, "T2w": 2, "FLAIR": 3}
NIFTI = (".nii.gz", ".nii")
SYNTH_DESC = "tsfsynth"
#: The maps' suffixes (tsf_trt.inputs.bids_derivatives, "Output naming rule"): the TSEM, and the interval
#: half-width map (`infer` with a calibration).
TSEM_SUFFIX, HALFWIDTH_SUFFIX = "tsem", "halfwidth"
MAP_SUFFIXES = (TSEM_SUFFIX, HALFWIDTH_SUFFIX)
#: The descs earlier versions gave the maps (with the target's suffix): recognised, never inputs.
LEGACY_DESCS = ("tsem", "halfwidth")

def _bad_value(key: str, value: str) -> str | None:
    """Why `value` cannot follow `key-` ("Definitions": label, index), or None."""
    if key in INDEX_ENTITIES:
        return None if _INDEX.fullmatch(value) else f"{key}- takes an index (digits)"
    return None if _LABEL.fullmatch(value) else f"{key}- takes a label (letters, digits, '+')"


@dataclass(frozen=True)
class BidsName:
    """A parsed file name; `entities` maps keys (`sub`, `acq`, ...) to values, in spec order."""

    entities: dict[str, str]
    suffix: str
    extension: str

    def __str__(self) -> str:
        return format_name(self.entities, self.suffix, self.extension)


def _parse(name: str) -> BidsName | str:
    """The parsed name, or why it is not a BIDS file name."""
    stem, _, rest = name.partition(".")
    if not stem or not rest or not _EXTENSION.fullmatch("." + rest):
        return "a hidden file" if not stem else "no file extension" if not rest else f"'.{rest}' is not an extension"
    *pairs, suffix = stem.split("_")
    if not _SUFFIX.fullmatch(suffix):
        return f"suffix '{suffix}' is not letters and digits"
    entities: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("-")
        if not sep or key not in _POSITION:
            return f"'{pair}' is not an entity of the specification"
        if key in entities:
            return f"{key}- appears twice"
        if _bad_value(key, value):
            return f"'{pair}': {_bad_value(key, value)}"
        if entities and _POSITION[key] < _POSITION[last := next(reversed(entities))]:
            return f"{key}- after {last}-: entities out of the specification's order"
        entities[key] = value
    return BidsName(entities, suffix, "." + rest)


def parse_name(name: str | Path) -> BidsName | None:
    """The entities, suffix and extension of a BIDS file name (a path's last part), or None
    for a name that breaks the rules of "Filenames" (unknown or repeated entity, entities out
    of order, a bad label or index, no extension)."""
    parsed = _parse(Path(name).name)
    return parsed if isinstance(parsed, BidsName) else None


def format_name(entities: Mapping[str, str], suffix: str, extension: str) -> str:
    """A file name with the entities (by key) in the specification's order."""
    for key, value in entities.items():
        if key not in _POSITION:
            raise TsfError(f"'{key}' is not a BIDS entity key (one of {', '.join(ENTITY_ORDER)})")
        if _bad_value(key, str(value)):
            raise TsfError(f"{key}-{value}: {_bad_value(key, str(value))}")
    if not _SUFFIX.fullmatch(suffix) or not _EXTENSION.fullmatch(extension):
        raise TsfError(f"'{suffix}{extension}' is not a BIDS suffix and extension")
    ordered = sorted(entities.items(), key=lambda item: _POSITION[item[0]])
    return "_".join([*(f"{k}-{v}" for k, v in ordered), suffix]) + extension


def sequence_of(name: BidsName) -> int | None:
    """The sequence index a name stands for: T1w (T1Gd with any ce-), T2w, FLAIR; else None."""
    index = SUFFIXES.get(name.suffix)
    return 1 if index == 0 and "ce" in name.entities else index


def is_bids_dataset(folder: str | Path) -> bool:
    """A dataset_description.json at the top, or a sub-<label>/[ses-<label>/]anat/ folder."""
    root = Path(folder)
    try:
        return (root / "dataset_description.json").is_file() or any(
            (sub / "anat").is_dir() or any((ses / "anat").is_dir() for _, ses in _labelled(sub, "ses"))
            for _, sub in _labelled(root, "sub"))
    except TsfError:  # unreadable or missing
        return False


@dataclass(frozen=True)
class BidsCase:
    """One subject (and session) to synthesise for; `unused` lists every file of its anat/
    not taken, with why (sidecars excepted); `problem` says why the case cannot run."""

    subject: str
    session: str | None
    inputs: dict[int, Path]
    problem: str | None = None
    unused: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """`sub-01` or `sub-01_ses-pre`: how every file name of the case begins."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session is not None else "")


def find_cases(root: str | Path, participants: Iterable[str] | None = None, sessions: Iterable[str] | None = None,
               select: Mapping[str, FilterValue] | None = None) -> list[BidsCase]:
    """Every case of a raw BIDS dataset, by subject then session (rule: the module docstring).

    `participants` and `sessions` take labels with or without `sub-`/`ses-`; one that
    matches no folder is an error naming it. With `sessions`, cases without a session go."""
    top = Path(root)
    if not top.is_dir():
        raise InputError(top, "no such folder" if not top.exists() else "is a file, not a BIDS dataset folder")
    rules, want_ses = _rules(select), _labels(sessions, "ses", "--session")
    want_sub = _labels(participants, "sub", "--participant-label")
    subjects = dict(_labelled(top, "sub"))
    if not subjects:
        raise InputError(top, "no sub-<label> folder: not a BIDS dataset with subjects")
    if want_sub is not None:
        missing = [f"sub-{s}" for s in want_sub if s not in subjects]
        if missing:
            some = ", ".join(f"sub-{s}" for s in sorted(subjects)[:5]) + (", ..." if len(subjects) > 5 else "")
            raise InputError(top, f"no folder for participant {', '.join(missing)} (found {some})")
        subjects = {s: subjects[s] for s in want_sub}
    cases, seen = [], set()
    for label, folder in sorted(subjects.items()):
        broken = broken_link(folder)
        if broken:
            cases.append(BidsCase(label, None, {}, f"{folder}: {broken}"))
            continue
        places: list[tuple[str | None, Path]] = list(_labelled(folder, "ses"))
        if (folder / "anat").is_dir() or not places:
            places.insert(0, (None, folder))
        for ses, place in places:
            if want_ses is None or ses in want_ses:
                seen.add(ses)
                broken = broken_link(place)
                cases.append(BidsCase(label, ses, {}, f"{place}: {broken}") if broken
                             else _case(label, ses, place / "anat", rules))
    missing = [f"ses-{s}" for s in want_ses or () if s not in seen]
    if missing:
        raise InputError(top, f"no folder for session {', '.join(missing)} among the chosen participants")
    return cases


_Rule = tuple[int | None, str, tuple[str | None, ...], str]  # (sequence, None for all; key; values; as written)
_Candidates = list[tuple[Path, BidsName]]


def _case(subject: str, session: str | None, anat: Path, rules: list[_Rule]) -> BidsCase:
    if not anat.is_dir():
        return BidsCase(subject, session, {}, f"{anat}: no anat/ folder")
    found: dict[int, _Candidates] = {}
    unused: list[tuple[Path, str]] = []  # as met, then those not selected
    for path in _entries(anat):
        got = _classify(path, subject, session)
        if isinstance(got, str):
            unused.append((path, got))
        elif got is not None:
            index = sequence_of(got)
            assert index is not None  # _classify passes SUFFIXES only
            found.setdefault(index, []).append((path, got))
    inputs, problems = {}, []
    for index in sorted(found):
        kept = _select(index, found[index], rules, unused)
        if len(kept) == 1:
            inputs[index] = kept[0][0]
        elif kept:
            problems.append(_ambiguous(index, kept))
    if not problems and not inputs:
        problems.append(f"{anat}: no T1w, T2w or FLAIR image to use")
    return BidsCase(subject, session, inputs, "; ".join(problems) or None, unused)


def _classify(path: Path, subject: str, session: str | None) -> BidsName | str | None:
    """The name of a candidate, why the file is not one, or None for a sidecar."""
    if path.is_dir():
        return "a folder"
    name = _parse(path.name)
    if isinstance(name, str):
        return f"not a BIDS file name ({name})"
    if name.extension == ".json":
        return None
    if "sub" not in name.entities:
        return "not a BIDS file name (no sub- entity)"
    if name.entities.get("sub") != subject or name.entities.get("ses") != session:
        return f"its name does not begin with {BidsCase(subject, session, {}).name}, the folder it is in"
    if name.suffix in MAP_SUFFIXES:
        return f"a tsf-trt output (_{name.suffix}), never an input"
    if name.suffix not in SUFFIXES:
        return f"not an anat suffix tsf-trt uses ({name.suffix})"
    if name.extension not in NIFTI:
        return f"not NIfTI ({name.extension}; .nii or .nii.gz expected)"
    if name.entities.get("desc") in (SYNTH_DESC, *LEGACY_DESCS):
        return f"a tsf-trt output (desc-{name.entities['desc']}), never an input"
    if name.entities.get("part", "mag") != "mag":
        return f"a part-{name.entities['part']} image: tsf-trt reads magnitude images"
    return name


def _same(key: str, a: str | None, b: str | None) -> bool:
    """`a` (a file's value) is what `b` asks for: equal values, indices as numbers (`run-01` is `run-1`);
    b ANY: any value."""
    if b == ANY:
        return a is not None
    return int(a) == int(b) if key in INDEX_ENTITIES and a is not None and b is not None else a == b


def _select(index: int, cands: _Candidates, rules: list[_Rule], unused: list[tuple[Path, str]]) -> _Candidates:
    for scope, key, values, written in rules:
        if scope not in (None, index) or (scope is None and not any(key in n.entities for _, n in cands)):
            continue
        keep = [(p, n) for p, n in cands if any(_same(key, n.entities.get(key), v) for v in values)]
        for p, n in cands:
            if all(p != q for q, _ in keep):
                have = f"{key}-{n.entities[key]}" if key in n.entities else f"no {key}- entity"
                unused.append((p, f"not selected: {have} ({FILTER_OPTION} {written})"))
        cands = keep
    return cands


def _ambiguous(index: int, cands: _Candidates) -> str:
    head = f"{sequences.DISPLAY[index]} has {len(cands)} candidate files: {', '.join(p.name for p, _ in cands)}"
    keys = [k for k in ENTITY_ORDER if len({n.entities.get(k) for _, n in cands}) > 1]
    if not keys:  # "Uniqueness of data files": one file per entities, whatever the extension
        return f"{head} (the same image as .nii and .nii.gz?): keep one"
    label = next(n.entities[keys[0]] for _, n in cands if keys[0] in n.entities)
    return (f"{head} (they differ in {', '.join(k + '-' for k in keys)}): pick one with {FILTER_OPTION} "
            f"{sequences.NAMES[index]}.{keys[0]}={label}")


def check_filter(select: Mapping[str, FilterValue] | None) -> None:
    """Raise what is wrong with a `select` (an unknown entity or sequence, a bad label) before any
    folder is read; find_cases checks it again."""
    _rules(select)


def _rules(select: Mapping[str, FilterValue] | None) -> list[_Rule]:
    rules: list[_Rule] = []
    for written, given in (select or {}).items():
        scope_text, dot, entity = written.rpartition(".")
        try:
            scope = sequences.parse(scope_text) if dot else None
        except TsfError as exc:
            raise TsfError(f"{FILTER_OPTION} {written}: {exc}") from None
        key = entity if entity in _POSITION else _BY_NAME.get(entity)
        if key is None:
            raise TsfError(f"{FILTER_OPTION} {written}: '{entity}' is not a BIDS entity (acq, ce, rec, run, ...)")
        if key in ("sub", "ses"):
            raise TsfError(f"{FILTER_OPTION} {written}: choose these with --participant-label and --session")
        values = []
        if not isinstance(given, tuple):  # as typed: `run=1|` is run-1 or no run- entity
            given = tuple(v or None for v in given.split("|")) if given else (None,)
        for value in given:
            if value not in (None, ANY) and _bad_value(key, value := value.removeprefix(f"{key}-")):
                raise TsfError(f"{FILTER_OPTION} {written}={value}: {_bad_value(key, value)}")
            values.append(value)
        shown = "|".join("" if v is None else v for v in values)
        rules.append((scope, key, tuple(values), f"{written}={shown}"))
    return rules


def label_of(value: str, prefix: str, what: str) -> str:
    """The label of `01` or `sub-01` ("Participant names and other labels": the prefix is not part of it)."""
    label = value.strip().removeprefix(f"{prefix}-")
    if not _LABEL.fullmatch(label):
        raise TsfError(f"{what}: '{value}' is not a BIDS label (letters, digits, '+'; e.g. 01 or {prefix}-01)")
    return label


def _labels(values: Iterable[str] | str | None, prefix: str, option: str) -> list[str] | None:
    """The labels of a filter; None (no filter) for None or an empty list."""
    out = [label_of(v, prefix, option) for v in ([values] if isinstance(values, str) else values or ())]
    return out or None


def _entries(folder: Path) -> list[Path]:
    """Visible entries, sorted: "Dotfiles" are hidden, and so are tsf-trt's temporary files."""
    try:
        return [folder / n for n in sorted(os.listdir(folder)) if not n.startswith(".")]
    except OSError as exc:
        raise InputError(folder, f"cannot be read ({exc.strerror or exc})") from None


def _labelled(folder: Path, prefix: str) -> list[tuple[str, Path]]:
    """(label, path) of the `prefix-<label>` folders in `folder`, and of the symbolic links so
    named that lead nowhere (their case fails, naming the link: never a silent drop)."""
    return [(p.name[len(prefix) + 1:], p) for p in _entries(folder)
            if p.name.startswith(f"{prefix}-") and _LABEL.fullmatch(p.name[len(prefix) + 1:])
            and (p.is_dir() or broken_link(p) is not None)]
