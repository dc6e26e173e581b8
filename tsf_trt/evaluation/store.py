"""The report folder: what a run is, what it has finished, and when it may be reused.

Why: evaluating a data set takes hours on a CPU, so a run must survive an interruption.
`run.json` records what the rows depend on (model, tasks, slice step, comparisons, LPIPS);
`subjects/<name>.json` holds one finished subject's rows, written atomically when the
subject is done, with the size and time stamp of its input files and a SHA-256 of its
content. Rerunning the same command finds them and computes only what is missing; an entry
that fails its checksum (or cannot be read) is computed again, with one WARNING naming it.
An entry also records the content hash of the interval calibration it was scored with
(:func:`calibration_digest`): another calibration (or none) scores its subject again, in the
same folder, rather than refusing it as another run.
A folder holding another run is refused unless `--overwrite` (which starts afresh); a folder
that is not a report, or that holds anything a report does not, is refused even with it
(:data:`REPORT`): `--overwrite` removes only what tsf-trt wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tsf_trt.errors import InputError
from tsf_trt.files.atomic import atomic_path, check_folder_target, check_writable, sweep
from tsf_trt.files.ownership import FolderKind, first_foreign, is_leftover, read_tagged, unrecognised

if TYPE_CHECKING:
    from tsf_trt.uncertainty.calibration import Calibration

FORMAT = "tsf-trt-evaluation"
VERSION = 1
RUN_FILE = "run.json"
SUBJECTS = "subjects"
FIGURES = "figures"
OUTPUTS = ("report.md", "summary.json", "results.csv", RUN_FILE)
#: What earlier versions of tsf-trt wrote into a report and this one no longer does, with the format
#: tag that tells it is theirs: still a report's own file (so --overwrite may clear it), and removed
#: when the report is written again, so that a report folder never keeps a superseded result beside
#: the new one (qc.json: the TSEM QC calibration, which calibrated intervals replaced). An untagged
#: file of that name is not ours: the folder is then refused, as for any foreign file.
FORMER_OUTPUTS = {"qc.json": "tsf-trt-qc"}


def safe_name(name: str) -> str:
    """A subject or task name as a file name."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name) or "_"


def fingerprint(inputs: Mapping[int, Path]) -> list[list[Any]]:
    """Name, size and modification time of each input: a changed file invalidates its subject."""
    out = []
    for index, path in sorted(inputs.items()):
        st = Path(path).stat()
        out.append([index, Path(path).name, st.st_size, st.st_mtime_ns])
    return out


def calibration_digest(calibration: Calibration | None) -> str | None:
    """SHA-256 of what an interval calibration holds (its JSON with sorted keys, without the
    version of tsf-trt reading it): a changed file changes it, a re-indented one does not."""
    if calibration is None:
        return None
    body = {k: v for k, v in calibration.to_json().items() if k != "tsf_trt_version"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _report_foreign(folder: Path) -> str | None:
    """Why `folder` is not a tsf-trt report holding only a report's files (None when it is)."""
    run = folder / RUN_FILE
    if not run.is_file() or read_tagged(run, FORMAT) is None:
        return unrecognised(folder, f"is not a tsf-trt evaluation report (no {RUN_FILE} with the {FORMAT} tag)")
    inner = {SUBJECTS: ".json", FIGURES: ".png"}
    culprit: list[str] = []  # why subjects/ or figures/ is not ours, when one is not

    def allowed(name: str, path: Path) -> bool:
        if name in inner and path.is_dir() and not path.is_symlink():
            why = first_foreign(path, lambda n, p: n.endswith(inner[name]) and p.is_file() and not p.is_symlink())
            culprit.extend([f"{name}/ {why}"] if why else [])
            return why is None
        if name in FORMER_OUTPUTS:
            return _former(path)
        return name in OUTPUTS and path.is_file() and not path.is_symlink()

    why = first_foreign(folder, allowed)
    return culprit[0] if why and culprit else why


def _former(path: Path) -> bool:
    """Whether `path` is what an earlier tsf-trt wrote under that name (:data:`FORMER_OUTPUTS`)."""
    return path.is_file() and not path.is_symlink() and read_tagged(path, FORMER_OUTPUTS[path.name]) is not None


REPORT = FolderKind("a tsf-trt evaluation report", _report_foreign)


def _digest(entry: Mapping[str, Any]) -> str:
    """SHA-256 of an entry's content (its "sha256" field left out), as JSON with sorted keys."""
    body = {k: v for k, v in entry.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class ReportDir:
    """A report folder for one run (see the module docstring)."""

    def __init__(self, path: str | Path, run_key: Mapping[str, Any]):
        self.path = Path(path)
        self.key = {"format": FORMAT, "version": VERSION, **run_key}

    @property
    def subjects(self) -> Path:
        return self.path / SUBJECTS

    @property
    def figures(self) -> Path:
        return self.path / FIGURES

    def check(self, overwrite: bool) -> bool:
        """Every refusal :meth:`open` would make, before any work and modifying nothing; True
        when the folder holds this same run (to be resumed), False when it starts afresh."""
        if self.path.is_symlink() and not self.path.is_dir():
            raise InputError(self.path, "is a link to nothing; give a folder for the report")
        if self.path.exists() and not self.path.is_dir():
            raise InputError(self.path, "is a file; give a folder for the report")
        if self.path.is_dir() and any(not is_leftover(name) for name in _names(self.path)):
            if overwrite:
                REPORT.check(self.path)
                resumed = False
            else:
                self._check_compatible()
                resumed = True
        else:
            resumed = False
        if self.path.is_dir():
            check_writable(self.path / RUN_FILE, True, own_location=True)  # the folder can be written
        else:
            check_folder_target(self.path, False, None)  # it can be made
        return resumed

    def open(self, overwrite: bool) -> bool:
        """Make the folder ready; True when it resumes a compatible earlier run. Dead writers'
        leftovers are removed first, and with `overwrite` what an earlier run wrote."""
        resumed = self.check(overwrite)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(self.path, f"cannot create the report folder ({exc.strerror or exc})") from None
        for folder in (self.path, self.subjects, self.figures):
            sweep(folder, lambda name: True)  # the folder is ours (checked): every dead writer's leftover
        if overwrite and not resumed:
            self.clear()
        for name in FORMER_OUTPUTS:  # superseded files of an earlier tsf-trt go; anything else stays
            if _former(self.path / name):
                (self.path / name).unlink()
        with atomic_path(self.path / RUN_FILE, overwrite=True, own_location=True) as tmp:
            tmp.write_text(json.dumps(self.key, indent=2) + "\n")  # first: the folder is a report from now on
        try:
            self.subjects.mkdir(exist_ok=True)
            self.figures.mkdir(exist_ok=True)
        except OSError as exc:
            raise InputError(self.path, f"cannot create the report folder ({exc.strerror or exc})") from None
        return resumed

    def _check_compatible(self) -> None:
        run = self.path / RUN_FILE
        if not run.is_file():
            raise InputError(self.path, "exists and is not a tsf-trt evaluation report (no run.json): give a new "
                                        "or empty folder")
        try:
            old = json.loads(run.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(run, f"unreadable ({exc}); use --overwrite to start afresh") from None
        if not isinstance(old, dict) or old.get("format") != FORMAT:
            raise InputError(self.path, f"exists and is not a tsf-trt evaluation report ({RUN_FILE} has no "
                                        f"{FORMAT} tag): give a new or empty folder")
        differ = [k for k in sorted(set(old) | set(self.key)) if old.get(k) != self.key.get(k)]
        if differ:
            detail = ", ".join(f"{k}: {_short(old.get(k))} there, {_short(self.key.get(k))} now" for k in differ)
            raise InputError(self.path, f"holds a report of another run ({detail}); use --overwrite to replace it "
                                        "or --output for another folder")

    def clear(self) -> None:
        """Remove what an earlier run wrote here: the folder holds nothing else (:data:`REPORT`)."""
        REPORT.check(self.path)
        for name in OUTPUTS:
            (self.path / name).unlink(missing_ok=True)
        for folder, suffix in ((self.subjects, ".json"), (self.figures, ".png")):
            if folder.is_dir():
                for name in _names(folder):
                    if name.endswith(suffix) and not is_leftover(name):
                        (folder / name).unlink(missing_ok=True)

    def _cache(self, subject: str) -> Path:
        return self.subjects / f"{safe_name(subject)}.json"

    def cached(self, subject: str, inputs_fingerprint: Sequence[Any], figures: Sequence[Path] = (),
               calibration: str | None = None) -> dict[str, Any] | None:
        """The finished entry of `subject` when it still holds: intact (its checksum), same inputs,
        the same interval calibration (:func:`calibration_digest`;
        :meth:`save` records it as `calibration=`) and the figures asked for on disk; None when the
        subject must be computed. A damaged entry is said in one WARNING line naming it."""
        path = self._cache(subject)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            damage = None if isinstance(entry, dict) else "not a JSON object"
        except (OSError, ValueError) as exc:
            entry, damage = None, f"unreadable: {type(exc).__name__}"
        if damage is None and entry.get("sha256") != _digest(entry):
            damage = ("no checksum (written by an older tsf-trt)" if "sha256" not in entry
                      else "its content does not match its SHA-256 (modified or damaged)")
        if damage is None and not isinstance(entry.get("rows"), list):
            damage = "no rows"
        if damage is not None:
            _log.warning("%s: damaged resume entry, %s; scoring %s again", path, damage, subject)
            return None
        if entry.get("key") != self.key or entry.get("subject") != subject:
            return None
        if entry.get("inputs") != [list(f) for f in inputs_fingerprint] or entry.get("calibration") != calibration:
            return None
        if not all(p.is_file() for p in figures):
            return None
        return entry

    def save(self, subject: str, inputs_fingerprint: Sequence[Any], rows: Sequence[Mapping[str, Any]],
             **extra: Any) -> None:
        """Record a finished subject (atomically: a crash leaves the old entry or none)."""
        entry = {"key": self.key, "subject": subject, "inputs": [list(f) for f in inputs_fingerprint],
                 "rows": list(rows), **extra}
        # The checksum is of the entry as it is read back (JSON round trip: tuples become lists).
        entry = json.loads(json.dumps(entry))
        entry["sha256"] = _digest(entry)
        with atomic_path(self._cache(subject), overwrite=True, own_location=True) as tmp:
            tmp.write_text(json.dumps(entry, indent=1) + "\n")  # nan/inf kept: read back by Python only


def _names(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir())
    except OSError:
        return []


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


_log = logging.getLogger(__name__)
