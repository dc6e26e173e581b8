"""The cohort table: one TSV per output folder and target, ``tsf-trt_<target>.tsv``, one row per subject.

Why a table built from the disk: many processes share one output folder (tsf_trt.runs.claims), and
each knows only the subjects it ran. The per-subject reports are the truth (each goes last and marks
a finished subject: tsf_trt.runs.outputs), so every process that ends a folder run rebuilds the whole
table from the reports found under the folder and replaces it atomically (tsf_trt.files.atomic): the
last to finish leaves the complete table, and one that finishes earlier leaves a table of what was
finished then. `tsf-trt table` rebuilds it on demand.

Failures are not on disk (a failed subject writes nothing): a row "failed" comes from the process
that failed it, and the table keeps it (read back from the table it replaces) until the subject is
done; "busy" is a subject another live run held when this process looked. A subject skipped because
it was already complete is "done": its row is its report's, whoever wrote it, so rebuilding an
unchanged folder gives the same bytes (the table is then not rewritten).

Cells are locale-free and reproducible: floats as Python's shortest round-trip repr, booleans
true/false, no value as an empty cell (``n/a`` in a BIDS derivative, as BIDS "Tabular files" ask);
tabs and line breaks in text become spaces. The table is not a BIDS file: a BIDS derivative's
.bidsignore lists it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tsf_trt import sequences
from tsf_trt.errors import InputError
from tsf_trt.files.atomic import atomic_path
from tsf_trt.files.ownership import TABLE_MARK_COLUMN, is_own_file
from tsf_trt.inputs.subjects import Subject
from tsf_trt.runs.outcomes import SubjectOutcome
from tsf_trt.runs.outputs import Inputs, finished_report

#: The table's name in the output folder (a BIDS derivative's .bidsignore lists it:
#: tsf_trt.inputs.bids_derivatives.TABLES, written by tsf_trt.runs.bids_outputs.write_bidsignore).
TABLE_NAME = "tsf-trt_{target}.tsv"
COLUMNS: tuple[str, ...] = (
    "subject", "session", "task", "target", "model_id", "backend", "precision",
    *(f"weight_{name}" for name in sequences.NAMES),
    "tsem_mean_head", "tsem_p99_head",
    "interval_applies", "interval_why", "interval_alpha", "interval_mean_half_width", "interval_score",
    "interval_flagged", "preflight", "seconds", "status", "error", "synth", "report", "tsf_trt_version")
#: What marks a TSV as a tsf-trt table (tsf_trt.files.ownership recognises JSON by the same key).
_MARK_COLUMN = TABLE_MARK_COLUMN
#: sub-<s>/ses-<x>/anat/<file>: the deepest a report lies below the output folder.
_DEPTH = 4
_MAX_RECORD = 1 << 20  # a report is a few KiB: a bigger JSON file is not one
#: Rebuilds after a write that found the folder changed meanwhile (another process finished a subject).
_ATTEMPTS = 8


def table_path(root: str | Path, target: int) -> Path:
    """Where a folder run's table of `target` goes: in the output folder itself."""
    return Path(root) / TABLE_NAME.format(target=sequences.NAMES[target])


def is_own_table(path: Path) -> bool:
    """Whether `path` is a table tsf-trt wrote (tsf_trt.files.ownership decides: its header), not a link."""
    return not path.is_symlink() and path.name.endswith(".tsv") and is_own_file(path)


def check_table(path: Path) -> None:
    """The table may be (re)written at `path`: absent, or tsf-trt's own table; a user's file of
    that name is never replaced (one line naming it). Checked before a run's first subject."""
    if (path.exists() or path.is_symlink()) and not is_own_table(path):
        raise InputError(path, "exists and was not written by tsf-trt: the cohort table replaces only its own "
                               "(--overwrite too); move it away or choose another output")


# -- records: the one place that knows where a subject's record lies and which keys it has ---------
def find_run_records(root: Path, target: int) -> list[tuple[Path, dict[str, Any]]]:
    """The finished subjects' records of `target` under `root`, by path, with what each holds (any
    layout: a folder run's <subject>/, a BIDS derivative's sub-*/[ses-*/]anat/, single subjects' in `root`)."""
    found: list[tuple[Path, dict[str, Any]]] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue  # claims, temp files, probes
            if entry.is_dir(follow_symlinks=False):
                if depth < _DEPTH:
                    walk(Path(entry.path), depth + 1)
            elif entry.name.endswith(".json") and (record := read_run_record(Path(entry.path), target)) is not None:
                found.append((Path(entry.path), record))

    walk(Path(root), 1)
    return found


def read_run_record(path: Path, target: int | None = None) -> dict[str, Any] | None:
    """A finished subject's record (today the report, tsf_trt.runs.outputs.build_report), or None.
    Keys read: complete, tsf_trt_version, target, subject, bids.{subject,session}, task, model_id,
    backend, precision.ran,
    weights, tsem.{mean_head,p99_head}, interval.{applies,why,alpha,mean_half_width_head,score,
    flagged}, preflight[].kind, timings_s.total, outputs.synth, sources."""
    try:
        if path.stat().st_size > _MAX_RECORD:
            return None
    except OSError:
        return None
    record = finished_report(path)
    if record is None or _MARK_COLUMN not in record or not isinstance(record.get("target"), str):
        return None
    if target is not None and record["target"] != sequences.NAMES[target]:
        return None
    return record


def _record_row(record: dict[str, Any], path: Path, root: Path, table_dir: Path) -> dict[str, Any]:
    subject, session = _labels(record, path, root)
    weights = _dict(record.get("weights"))
    tsem, interval = _dict(record.get("tsem")), _dict(record.get("interval"))
    applies = interval.get("applies") is True
    synth = _dict(record.get("outputs")).get("synth")
    kinds = [str(f.get("kind")) for f in record.get("preflight") or [] if isinstance(f, dict)]
    return {
        "subject": subject, "session": session, "task": record.get("task"), "target": record.get("target"),
        "model_id": record.get("model_id"), "backend": record.get("backend"),
        "precision": _dict(record.get("precision")).get("ran"),
        **{f"weight_{name}": weights.get(name) for name in sequences.NAMES},
        "tsem_mean_head": tsem.get("mean_head"), "tsem_p99_head": tsem.get("p99_head"),
        "interval_applies": interval.get("applies") if interval else None,
        "interval_why": None if applies else interval.get("why"),
        # no number unless the guarantee applies: never one that looks calibrated and is not
        **{column: interval.get(key) if applies else None for column, key in
           (("interval_alpha", "alpha"), ("interval_mean_half_width", "mean_half_width_head"),
            ("interval_score", "score"), ("interval_flagged", "flagged"))},
        "preflight": ",".join(dict.fromkeys(kinds)),
        "seconds": _dict(record.get("timings_s")).get("total"),
        "status": "done", "error": None,
        "synth": _relative(path.parent / synth, table_dir) if isinstance(synth, str) and synth else None,
        "report": _relative(path, table_dir), "tsf_trt_version": record.get(_MARK_COLUMN),
    }


def _labels(record: dict[str, Any], path: Path, root: Path) -> tuple[str, str | None]:
    """(subject, session): a BIDS case's (sub-<s>, ses-<x> or None), from its record's "bids" labels
    or (records of earlier versions, the synthesis's sidecar) its sub-<s>/[ses-<x>/] folders; else the
    record's subject name and no session."""
    bids = _dict(record.get("bids"))
    if isinstance(bids.get("subject"), str):
        session = bids.get("session")
        return f"sub-{bids['subject']}", f"ses-{session}" if isinstance(session, str) else None
    try:
        parts = path.parent.relative_to(root).parts
    except ValueError:
        parts = ()
    if parts and parts[0].startswith("sub-"):
        return parts[0], parts[1] if len(parts) > 1 and parts[1].startswith("ses-") else None
    return str(record.get("subject", "")), None


def _subject_labels(subject: Subject) -> tuple[str, str | None]:
    if subject.bids is None:
        return subject.name, None
    label, session = subject.bids
    return f"sub-{label}", None if session is None else f"ses-{session}"


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


# -- rows -------------------------------------------------------------------------------------------
def build_rows(root: Path, target: int, table_dir: Path, outcomes: Sequence[SubjectOutcome] = (),
               subjects: Sequence[Subject] = ()) -> list[dict[str, Any]]:
    """Every row, sorted by (subject, session, task, report): a done row per record found; for a
    subject without one, this process's failure, else the failure the run's table holds, else this
    process's "busy" (a live run elsewhere held it)."""
    root = Path(root)
    rows = [_record_row(record, path, root, table_dir) for path, record in find_run_records(root, target)]
    done = {(row["subject"], row["session"]) for row in rows}
    labels = {subject.name: _subject_labels(subject) for subject in subjects}
    pending: dict[tuple[str, str | None], dict[str, Any]] = {}
    name = sequences.NAMES[target]
    for outcome in outcomes:
        if outcome.status == "busy":
            key = labels.get(outcome.subject, (outcome.subject, None))
            pending[key] = _pending_row(key, name, "busy", outcome.error)
    for row in previous_failures(table_path(root, target)):
        pending[(row["subject"], row["session"])] = row
    for outcome in outcomes:
        if outcome.status == "failed":
            key = labels.get(outcome.subject, (outcome.subject, None))
            pending[key] = _pending_row(key, name, "failed", outcome.error)
    rows += [row for key, row in pending.items() if key not in done]
    return sorted(rows, key=lambda r: tuple(r[k] or "" for k in ("subject", "session", "task", "report")))


def _pending_row(key: tuple[str, str | None], target: str, status: str, error: str | None,
                 task: str | None = None) -> dict[str, Any]:
    return {**dict.fromkeys(COLUMNS), "subject": key[0], "session": key[1], "task": task, "target": target,
            "status": status, "error": error}


def previous_failures(path: Path) -> list[dict[str, Any]]:
    """The "failed" rows of the table at `path`, when it is tsf-trt's (none otherwise): failures
    are on disk nowhere else."""
    if not is_own_table(path):
        return []
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            read = list(csv.DictReader(handle, delimiter="\t"))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []

    def value(row: Mapping[str, Any], column: str) -> str | None:
        cell = row.get(column)
        return None if cell in (None, "", "n/a") else str(cell)

    return [_pending_row((value(row, "subject") or "", value(row, "session")), value(row, "target") or "",
                         "failed", value(row, "error"), value(row, "task"))
            for row in read if row.get("status") == "failed"]


def render(rows: Iterable[Mapping[str, Any]], missing: str = "") -> str:
    """The TSV text of `rows` (COLUMNS, in order)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(column), missing) for column in COLUMNS])
    return buffer.getvalue()


def _cell(value: Any, missing: str) -> str:
    if value is None or value == "":
        return missing
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return " ".join(str(value).replace("\t", " ").splitlines())


# -- writing ----------------------------------------------------------------------------------------
def write_table(root: str | Path, target: int, *, path: Path | None = None, outcomes: Sequence[SubjectOutcome] = (),
                subjects: Sequence[Subject] = (), protected: Inputs | Iterable[Path] = ()) -> Path | None:
    """Rebuild the table of `target` in the output folder `root` (at `path`, default
    :func:`table_path`) from the records on disk and this process's `outcomes`; replace it atomically
    unless the bytes are the same. Returns its path, or None when there is no row to write.

    After each write the rows are built again: when another process finished a subject meanwhile
    (this process may have renamed a table older than that process's), the table is written again,
    so the last process to end a folder run leaves every subject finished before it ended."""
    root = Path(root)
    path = table_path(root, target) if path is None else Path(path)
    if Inputs.of(protected).holds(path) is not None:
        raise InputError(path, "is an input: an input is never written; choose another output")
    check_table(path)
    missing = "n/a" if (root / "dataset_description.json").is_file() else ""
    rows = build_rows(root, target, path.parent, outcomes, subjects)
    for _ in range(_ATTEMPTS):
        if not rows:
            return None
        text = render(rows, missing)
        if _read_text(path) != text:
            check_table(path)  # again: a file may have appeared under its name meanwhile
            with atomic_path(path, overwrite=True, own_location=True) as tmp:  # ours or absent: check_table
                tmp.write_text(text, encoding="utf-8")
        rows = build_rows(root, target, path.parent, outcomes, subjects)
        if render(rows, missing) == text:
            break
    return path


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None

