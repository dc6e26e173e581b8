"""The report folder: what a run is, what it has finished, and when it may be reused.

Why: evaluating a data set takes hours on a CPU, so a run must survive an interruption.
`run.json` records what the rows depend on (model, tasks, slice step, comparisons, LPIPS);
`subjects/<name>.json` holds one finished subject's rows, written atomically when the
subject is done, with the size and time stamp of its input files. Rerunning the same
command finds them and computes only what is missing; a folder holding another run, or
files that are not a report, is refused unless `--overwrite` (which starts afresh).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..atomic import atomic_path

FORMAT = "tsf-trt-evaluation"
VERSION = 1
RUN_FILE = "run.json"
SUBJECTS = "subjects"
FIGURES = "figures"
OUTPUTS = ("report.md", "summary.json", "results.csv", "qc.json", RUN_FILE)


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

    def open(self, overwrite: bool) -> bool:
        """Make the folder ready; True when it resumes a compatible earlier run."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(self.path, "is a file; give a folder for the report")
        resumed = False
        if self.path.is_dir() and any(self.path.iterdir()):
            if overwrite:
                self.clear()
            else:
                self._check_compatible()
                resumed = True
        try:
            self.subjects.mkdir(parents=True, exist_ok=True)
            self.figures.mkdir(exist_ok=True)
        except OSError as exc:
            raise InputError(self.path, f"cannot create the report folder ({exc.strerror or exc})") from None
        with atomic_path(self.path / RUN_FILE, overwrite=True) as tmp:
            tmp.write_text(json.dumps(self.key, indent=2) + "\n")
        return resumed

    def _check_compatible(self) -> None:
        run = self.path / RUN_FILE
        if not run.is_file():
            raise InputError(self.path, "exists and is not a tsf-trt evaluation report (no run.json): give a new "
                                        "or empty folder, or --overwrite to write the report into it")
        try:
            old = json.loads(run.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(run, f"unreadable ({exc}); use --overwrite to start afresh") from None
        if not isinstance(old, dict):
            old = {}
        differ = [k for k in sorted(set(old) | set(self.key)) if old.get(k) != self.key.get(k)]
        if differ:
            detail = ", ".join(f"{k}: {_short(old.get(k))} there, {_short(self.key.get(k))} now" for k in differ)
            raise InputError(self.path, f"holds a report of another run ({detail}); use --overwrite to replace it "
                                        "or --output for another folder")

    def clear(self) -> None:
        """Remove what an earlier run wrote here (only our own files)."""
        for name in OUTPUTS:
            (self.path / name).unlink(missing_ok=True)
        for folder, pattern in ((self.subjects, "*.json"), (self.figures, "*.png")):
            if folder.is_dir():
                for path in folder.glob(pattern):
                    path.unlink()
                try:
                    folder.rmdir()
                except OSError:
                    pass  # holds files that are not ours: leave them

    def _cache(self, subject: str) -> Path:
        return self.subjects / f"{safe_name(subject)}.json"

    def cached(self, subject: str, inputs_fingerprint: Sequence[Any], thresholds: Sequence[str],
               figures: Sequence[Path] = ()) -> dict[str, Any] | None:
        """The finished entry of `subject` when it still holds: same inputs, the QC thresholds asked
        for, and the figures asked for on disk; None when the subject must be computed."""
        try:
            entry = json.loads(self._cache(subject).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != self.key or entry.get("subject") != subject:
            return None
        if entry.get("inputs") != [list(f) for f in inputs_fingerprint]:
            return None
        for row in entry.get("rows", []):
            have = row.get("tsem_exceedance") or {}
            if any(t not in have for t in thresholds):
                return None
        if not all(p.is_file() for p in figures):
            return None
        return entry

    def save(self, subject: str, inputs_fingerprint: Sequence[Any], rows: Sequence[Mapping[str, Any]],
             **extra: Any) -> None:
        """Record a finished subject (atomically: a crash leaves the old entry or none)."""
        entry = {"key": self.key, "subject": subject, "inputs": [list(f) for f in inputs_fingerprint],
                 "rows": list(rows), **extra}
        with atomic_path(self._cache(subject), overwrite=True) as tmp:
            tmp.write_text(json.dumps(entry, indent=1) + "\n")  # nan/inf kept: read back by Python only


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
