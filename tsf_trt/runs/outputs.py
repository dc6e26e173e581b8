"""What `infer` leaves on disk for one subject, written so that it is all or nothing.

Three files per subject and target: the synthesis, the TSEM and a JSON report (in a BIDS
derivative, the report is the synthesis's JSON sidecar and the TSEM has a sidecar too); with a
calibration whose guarantee applies to the subject, a fourth: the interval half-width map.
Each is written under a temporary name and renamed when complete; the report goes last,
so its presence marks a finished subject (what folder mode's resume relies on).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tsf_trt import sequences
from tsf_trt.errors import InputError, TsfError
from tsf_trt.files.atomic import atomic_group, check_writable, disk_full_as_error
from tsf_trt.files.volume import Volume, write_volume
from tsf_trt.inputs.subjects import Subject, check_subject_name
from tsf_trt.runs.claims import ModelConflict, conflict_with_run, live_runs
from tsf_trt.synthesis.pipeline import Result
from tsf_trt.synthesis.preprocess import OUTPUT_SCALE, to_output_intensity
from tsf_trt.uncertainty.calibration import STATEMENT
from tsf_trt.version import __version__

REPORT_VERSION = 2  # 2: the "interval" block replaced the TSEM "qc" block
#: What a model conflict asks of the user (tsf_trt.runs.claims.ModelConflict).
ONE_MODEL = "an output folder holds one model's outputs; use another -o, or --overwrite to replace them"


def default_output(data_root: Path) -> Path:
    """The output folder when none is given: `derivatives/tsf-trt` in the data set's folder (a BIDS
    derivatives dataset's place), never beside the raw files. The one place of that default."""
    return Path(data_root) / "derivatives" / "tsf-trt"


@dataclass(frozen=True)
class OutputPaths:
    synth: Path
    tsem: Path | None
    report: Path
    tsem_sidecar: Path | None = None  # BIDS derivatives only
    halfwidth: Path | None = None  # the interval half-width map: with a calibration (where it applies: the report says)
    halfwidth_sidecar: Path | None = None  # BIDS derivatives only

    @classmethod
    def for_subject(cls, folder: str | Path, subject: str, target: int, tsem: bool, *,
                    interval: bool = False) -> "OutputPaths":
        check_subject_name(subject)
        stem = Path(folder) / f"{subject}_{sequences.NAMES[target]}"
        return cls(Path(f"{stem}_synth.nii.gz"), Path(f"{stem}_tsem.nii.gz") if tsem else None,
                   Path(f"{stem}.json"), halfwidth=Path(f"{stem}_halfwidth.nii.gz") if interval else None)

    @classmethod
    def for_bids(cls, deriv_root: str | Path, subject: str, session: str | None, target: int,
                 tsem: bool, *, interval: bool = False) -> "OutputPaths":
        from tsf_trt.inputs.bids import derivative_paths, halfwidth_paths

        named = derivative_paths(deriv_root, subject, session, target)
        halfwidth, halfwidth_sidecar = halfwidth_paths(deriv_root, subject, session, target) if interval \
            else (None, None)
        return cls(named.synth, named.tsem if tsem else None, named.synth_sidecar,
                   named.tsem_sidecar if tsem else None, halfwidth, halfwidth_sidecar)

    @classmethod
    def of(cls, subject: Subject, root: Path, target: int, tsem: bool, *, own_folder: bool,
           interval: bool = False) -> "OutputPaths":
        """Where `subject`'s outputs go, the one rule: a BIDS subject's by the derivatives naming
        under `root`; another's in `root` (`root/<subject>/` with `own_folder`, folder mode).
        With `interval` (a calibration is applied), the half-width map's name too."""
        if subject.bids is not None:
            return cls.for_bids(root, *subject.bids, target, tsem, interval=interval)
        folder = root / subject.name if own_folder else root
        return cls.for_subject(folder, subject.name, target, tsem, interval=interval)

    @property
    def folder(self) -> Path:
        return self.report.parent

    def all(self) -> list[Path]:
        """Every output, in the order they are published: the report, which marks completion, last."""
        return [p for p in (self.synth, self.tsem, self.tsem_sidecar, self.halfwidth, self.halfwidth_sidecar,
                            self.report) if p is not None]

    def interval_files(self) -> list[Path]:
        """The half-width map and its sidecar: written only where the interval applies."""
        return [p for p in (self.halfwidth, self.halfwidth_sidecar) if p is not None]

    def without_interval(self) -> "OutputPaths":
        """These outputs less the half-width map: what is written where the guarantee does not apply."""
        return replace(self, halfwidth=None, halfwidth_sidecar=None)

    def names(self) -> list[str]:
        return [p.name for p in self.all()]

    def complete(self, since: float | None = None, model_id: str | None = None) -> bool:
        """True when a run finished this subject (the report goes last, so it marks the end);
        with `since` (a time.time(), --overwrite), only a report written at or after it counts.
        With `model_id`, only a report of that model counts: another model's is a ModelConflict
        naming both (with `since`, it is redone), whether or not its other files are there.
        The half-width map is needed only where the report says the interval applies (it says
        why not otherwise): a calibration given later does not redo finished subjects, --overwrite does."""
        report = finished_report(self.report, since)
        if report is None:
            return False
        if model_id is not None and report.get("model_id") != model_id:
            if since is not None:
                return False
            raise ModelConflict(f"{self.report}: written with model {report.get('model_id')}, and this run's model "
                                f"is {model_id}: {ONE_MODEL}")
        interval = report.get("interval")
        applies = isinstance(interval, dict) and interval.get("applies") is True
        needed = self.all() if applies else self.without_interval().all()
        return all(p.is_file() for p in needed)

    def check(self, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
        """Fail before any work when an output exists, is an input, or its folder is unwritable."""
        self.refuse_inputs(inputs)
        for path in self.all():
            check_writable(path, overwrite)

    def refuse_inputs(self, inputs: Iterable[Path]) -> None:
        """An input is never written, with or without --overwrite (same name, link or hard link)."""
        known = Inputs.of(inputs)
        for path in self.all():
            source = known.holds(path)
            if source is not None:
                which = "" if path.absolute() == source.absolute() else f" (the same file as {source})"
                raise InputError(path, f"is an input{which}: an input is never written, with or without "
                                       "--overwrite; choose another --output or --subject")


def finished_report(path: Path, since: float | None = None) -> dict | None:
    """The report at `path` of a finished run (written at or after `since`, if given), else None."""
    try:
        if since is not None and path.stat().st_mtime < since:
            return None
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and report.get("complete") is True else None


class Inputs:
    """Input files to protect, looked up by resolved name and by inode: a folder run checks
    every output against every input of the folder, so this is built once."""

    def __init__(self, paths: Iterable[Path]):
        self._names: dict[Path, Path] = {}
        self._inodes: dict[tuple[int, int], Path] = {}
        for path in paths:
            self._names[path.resolve()] = path
            try:
                st = path.stat()
            except OSError:
                continue
            self._inodes[(st.st_dev, st.st_ino)] = path

    @classmethod
    def of(cls, paths: "Inputs | Iterable[Path]") -> "Inputs":
        """`paths` as Inputs (itself when it already is: built once per folder run)."""
        return paths if isinstance(paths, Inputs) else cls(paths)

    def holds(self, path: Path) -> Path | None:
        """The input that `path` names or links to, None if none."""
        found = self._names.get(path.resolve())
        if found is not None:
            return found
        try:
            st = path.stat()
        except OSError:
            return None
        return self._inodes.get((st.st_dev, st.st_ino))


def build_report(result: Result, paths: OutputPaths, inputs: dict[int, Path], *,
                 subject: str, model_id: str, backend: str, extra: dict[str, Any] | None = None,
                 precision: dict[str, str] | None = None, interval: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report; `interval` the calibrated interval's block (tsf_trt.runs.outcomes.IntervalPlan.block):
    the one statement of how far to trust the synthesis ("tsem" only summarises the TSEM map)."""
    report = {
        "tsf_trt_version": __version__,
        "report_version": REPORT_VERSION,
        "subject": subject,
        "task": result.task,
        "target": sequences.NAMES[result.target],
        "sources": {sequences.NAMES[i]: str(inputs[i]) for i in result.sources},
        "weights": result.weights_by_name(),
        "model_id": model_id,
        "backend": backend,
        "precision": precision,
        "batch_size": result.batch_size,
        "frame": result.frame,
        "outputs": {
            "synth": paths.synth.name,
            "tsem": paths.tsem.name if paths.tsem else None,
            "synth_units": f"network output [-1, 1] mapped linearly to [0, {OUTPUT_SCALE:g}]",
            "tsem_units": "|difference| of network outputs, [-1, 1] scale (paper Eq. 6)",
            "halfwidth": paths.halfwidth.name if paths.halfwidth else None,
            "halfwidth_units": f"the synthesis's own units (0-{OUTPUT_SCALE:g}): the interval is synth ± halfwidth",
        },
        "tsem": result.tsem_summary(),
        "interval": interval,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "host": platform.node(),
        "pid": os.getpid(),  # with host: which of several processes sharing a folder wrote it
        **(extra or {}),
        "complete": True,
    }
    return report


def precision_block(backend: Any) -> dict[str, str]:
    """The report's precision: what the backend was built for, what really ran, and why."""
    return {"precision": backend.precision, "ran": getattr(backend, "runtime_precision", backend.precision),
            "why": getattr(backend, "precision_reason", "")}


def write_outputs(result: Result, like: Volume, paths: OutputPaths, report: dict[str, Any], *,
                  overwrite: bool, inputs: Iterable[Path] = (), before_publish: Callable[[], None] | None = None,
                  tsem_sidecar: dict[str, Any] | None = None, half_width: np.ndarray | None = None,
                  halfwidth_sidecar: dict[str, Any] | None = None, remove: Sequence[Path] = ()) -> None:
    """Write every file under a temporary name; publish them together when all are complete.

    The images go first and the report last, so the report marks a finished subject.
    `before_publish` runs just before the first rename (folder mode checks there that
    its claim on the subject still holds). Should anything fail between the renames
    (Ctrl-C included), the files this call put in place are removed again, and only those.
    `half_width` (output units, on `like`'s grid) goes to `paths.halfwidth`. `remove`: outputs
    of an earlier run that this one does not write (a half-width map where the interval no
    longer applies), removed just before the renames, only if tsf-trt's own, so no file is
    left that looks like this synthesis's interval.
    """
    if paths.tsem is not None and result.tsem is None:
        raise ValueError("TSEM output requested but the result has none")
    if (paths.halfwidth is None) != (half_width is None):
        raise ValueError("a half-width map and its output name go together")
    inputs = Inputs.of(inputs)
    paths.refuse_inputs(inputs)
    with atomic_group(paths.all(), overwrite) as tmps:
        files = dict(zip(paths.all(), tmps))
        with disk_full_as_error(paths.synth):
            write_volume(like, to_output_intensity(result.image), files[paths.synth],
                         description=f"tsf-trt {result.task} synthesis")
        if paths.tsem is not None:
            with disk_full_as_error(paths.tsem):
                write_volume(like, np.ascontiguousarray(result.tsem, dtype=np.float32), files[paths.tsem],
                             description=f"tsf-trt {result.task} TSEM")
        if paths.tsem_sidecar is not None:
            with disk_full_as_error(paths.tsem_sidecar):
                files[paths.tsem_sidecar].write_text(json.dumps(tsem_sidecar or {}, indent=2) + "\n")
        if paths.halfwidth is not None:
            with disk_full_as_error(paths.halfwidth):
                write_volume(like, np.ascontiguousarray(half_width, dtype=np.float32), files[paths.halfwidth],
                             description=f"tsf-trt {result.task} interval half-width")
        if paths.halfwidth_sidecar is not None:
            with disk_full_as_error(paths.halfwidth_sidecar):
                files[paths.halfwidth_sidecar].write_text(json.dumps(halfwidth_sidecar or {}, indent=2) + "\n")
        with disk_full_as_error(paths.report):
            files[paths.report].write_text(json.dumps(report, indent=2) + "\n")
        paths.refuse_inputs(inputs)  # again: an input may have appeared under an output name
        if before_publish is not None:
            before_publish()
        for stale in remove:
            if stale.exists() or stale.is_symlink():
                if inputs.holds(stale) is not None:
                    raise InputError(stale, "is an input: an input is never written or removed")
                check_writable(stale, overwrite)  # tsf-trt's own only, and only with overwrite
                stale.unlink()


def bids_sidecars(subject: Subject, paths: OutputPaths, result: Result, raw_root: Path | None
                  ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What a BIDS derivative's sidecars add to the report ("Sources", "Description";
    Derivatives, "Common file level metadata fields"), and the TSEM's sidecar."""
    from tsf_trt.inputs.bids import bids_uri

    sources = [bids_uri(subject.inputs[i], raw_root) if raw_root is not None else str(subject.inputs[i])
               for i in result.sources]
    synth = {"Description": f"{sequences.DISPLAY[result.target]} synthesised by TSF-Seq2Seq from "
                            f"{', '.join(sequences.DISPLAY[i] for i in result.sources)} (tsf-trt)",
             "Sources": sources}
    tsem = None if paths.tsem is None else {
        "tsf_trt_version": __version__,  # what tells tsf-trt's own files (--overwrite replaces only those)
        "Description": "TSEM: |output with - output without task-specific attention| of the synthesis "
                       "(paper Eq. 6), in network units; high where the network had to refine",
        "Sources": [f"bids::{paths.synth.relative_to(paths.synth.parents[2 + (subject.bids[1] is not None)])}"
                    if subject.bids is not None else paths.synth.name]}
    return synth, tsem


def halfwidth_sidecar(subject: Subject, paths: OutputPaths, interval: dict[str, Any]) -> dict[str, Any] | None:
    """A BIDS derivative's half-width sidecar (as the TSEM's: what it is, its source), with the
    guarantee's statement and α; None outside BIDS or where no half-width map is written."""
    if paths.halfwidth_sidecar is None or subject.bids is None:
        return None
    return {"tsf_trt_version": __version__,  # what tells tsf-trt's own files (--overwrite replaces only those)
            "Description": f"interval half-width: {STATEMENT} (alpha {interval['alpha']:g}); in the synthesis's "
                           f"own units (0-{OUTPUT_SCALE:g})",
            "Sources": [f"bids::{paths.synth.relative_to(paths.synth.parents[2 + (subject.bids[1] is not None)])}"]}


def raw_root(subject: Subject) -> Path | None:
    """The raw BIDS dataset a BIDS subject's inputs are in (the folder above its sub-<label>/)."""
    if subject.bids is None or not subject.inputs:
        return None
    for folder in next(iter(subject.inputs.values())).parents:
        if folder.name == f"sub-{subject.bids[0]}":
            return folder.parent
    return None


def write_dataset_description(deriv_root: Path, model_id: str, source: Path | None, *,
                              overwrite: bool = False) -> Path | None:
    """The derivative's dataset_description.json, written once (several runs may share the
    folder: the first to finish it wins, an existing one is left as it is); with `overwrite`,
    one that names another model is replaced (the run replaces that model's outputs). Returns
    the path when this call wrote it."""
    from tsf_trt.files.atomic import atomic_path
    from tsf_trt.inputs.bids import dataset_description

    path = deriv_root / "dataset_description.json"
    replace = overwrite and described_model(path) not in (None, model_id)
    if path.exists() and not replace:
        return None
    described = dataset_description("tsf-trt synthesis", __version__, model_id, source, deriv_root)
    try:
        # own_location: described_model read tsf-trt's own GeneratedBy entry in it
        with atomic_path(path, overwrite=replace, own_location=replace) as tmp:
            tmp.write_text(json.dumps(described, indent=2) + "\n")
    except InputError:
        if path.exists():
            return None  # another run wrote it first
        raise
    return path


def described_model(path: Path) -> str | None:
    """The model a derivative's dataset_description.json names; None if none is there."""
    from tsf_trt.inputs.bids import model_described

    try:
        return model_described(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def check_folder_outputs(root: Path, subjects: Iterable[Subject], target: int, model_id: str, *, overwrite: bool,
                         lease_s: float) -> None:
    """Folder mode's outputs in `root` are one model's: a ModelConflict naming both models when
    a live run of another model writes this target there (tsf_trt.runs.claims.Claims.join), or,
    without `overwrite`, when reports of this run's subjects (or a BIDS derivative's
    dataset_description.json) are another model's. Checked before the model loads, and again
    once this run has registered. Costs a stat per subject and a read per report found."""
    name = sequences.NAMES[target]
    runs = live_runs(root, name, lease_s)
    if runs and runs[0].model_id != model_id:
        raise conflict_with_run(root, name, runs[0], model_id)
    if overwrite:
        return
    others: list[tuple[Path, object]] = []
    bids = False
    for subject in subjects:
        bids = bids or subject.bids is not None
        try:
            report = OutputPaths.of(subject, root, target, False, own_folder=True).report
        except TsfError:
            continue  # a name that cannot name outputs: that subject fails alone, in its turn
        if report.is_file():
            found = finished_report(report)
            if found is not None and found.get("model_id") != model_id:
                others.append((report, found.get("model_id")))
    if others:
        raise ModelConflict(f"{root}: {len(others)} subject(s) of this run have {name} outputs of model {others[0][1]} "
                            f"(e.g. {others[0][0]}), and this run's model is {model_id}: {ONE_MODEL}")
    described = described_model(root / "dataset_description.json") if bids else None
    if described not in (None, model_id):
        raise ModelConflict(f"{root / 'dataset_description.json'}: describes outputs of model {described}, and this "
                            f"run's model is {model_id}: {ONE_MODEL}")

