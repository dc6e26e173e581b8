"""What `infer` leaves on disk for one subject, written so that it is all or nothing.

Three files per subject and target: the synthesis, the TSEM and a JSON report, the run's
record (everything about the run); with a calibration whose guarantee applies to the subject, a
fourth: the interval half-width map. In a BIDS derivative each image has a sidecar of BIDS fields
and one `tsf-trt` block, and the record goes to the derivative's `logs/`
(tsf_trt.runs.bids_outputs, tsf_trt.inputs.bids_derivatives). Each is written under a temporary
name and renamed when complete; the record goes last, so its presence marks a finished subject
(what folder mode's resume relies on).
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
from tsf_trt.files.volume import Volume
from tsf_trt.files.volume_write import write_volume
from tsf_trt.inputs.subjects import Subject, check_subject_name
from tsf_trt.runs.claims import ModelConflict, conflict_with_run, live_runs
from tsf_trt.synthesis.pipeline import Result
from tsf_trt.synthesis.preprocess import OUTPUT_SCALE
from tsf_trt.version import __version__

REPORT_VERSION = 2  # 2: the "interval" block replaced the TSEM "qc" block
#: What a model conflict asks of the user (tsf_trt.runs.claims.ModelConflict).
ONE_MODEL = "an output folder holds one model's outputs; use another -o, or --overwrite to replace them"


#: The commands that write a folder of their own when no -o is given (docs/outputs.md, "Where outputs go").
DEFAULT_OUTPUT_COMMANDS = ("infer", "evaluate", "demo")


def default_output(data_root: str | Path | None = None, command: str = "infer") -> Path:
    """Where a command writes when no -o is given: the one place of every command's default.

    What `infer` derives from subjects goes to `derivatives/tsf-trt` of their data set's folder,
    `data_root` (the folder, BIDS dataset or --map CSV's folder given; None for files given one by
    one: the current folder): the BIDS place for a pipeline's outputs, beside the subjects, which
    reading that folder again skips (tsf_trt.inputs.subjects.OUTPUT_FOLDERS), never inside a
    subject's folder (issue 25: `infer` on `phantoms/P/*` wrote into `phantoms/P/`) nor among raw
    files. A run's report is about a model, not derived from the data, and the data may be shared
    or read-only (evaluate refuses a report inside --data): `evaluate` and `demo` write
    `tsf-trt-<command>` in the current folder."""
    if command == "infer":
        return Path(data_root if data_root is not None else ".") / "derivatives" / "tsf-trt"
    if command in DEFAULT_OUTPUT_COMMANDS:
        return Path(f"tsf-trt-{command}")
    raise ValueError(f"no default output for command {command!r}")


@dataclass(frozen=True)
class OutputPaths:
    synth: Path
    tsem: Path | None
    report: Path
    tsem_sidecar: Path | None = None  # BIDS derivatives only
    halfwidth: Path | None = None  # the interval half-width map: with a calibration (where it applies: the report says)
    halfwidth_sidecar: Path | None = None  # BIDS derivatives only
    sidecar: Path | None = None  # the synthesis's sidecar: BIDS derivatives only (`report` is the run's record)

    @classmethod
    def for_subject(cls, folder: str | Path, subject: str, target: int, tsem: bool, *,
                    interval: bool = False, synth_name: str | None = None) -> "OutputPaths":
        """`<subject>_<target>_synth.nii.gz`, `..._tsem.nii.gz`, `..._halfwidth.nii.gz` and
        `<subject>_<target>.json` in `folder`; with `synth_name` (`infer -o NAME.nii.gz`), the
        synthesis is that file and the others go beside it, named after it: `NAME_tsem.nii.gz`,
        `NAME_halfwidth.nii.gz` (with the synthesis's own .nii or .nii.gz) and `NAME.json`."""
        check_subject_name(subject)
        if synth_name is not None:
            synth = Path(folder) / synth_name
            stem = Path(folder) / sequences.nifti_stem(synth_name)
            ext = synth_name[len(sequences.nifti_stem(synth_name)):]
            return cls(synth, Path(f"{stem}_tsem{ext}") if tsem else None, Path(f"{stem}.json"),
                       halfwidth=Path(f"{stem}_halfwidth{ext}") if interval else None)
        stem = Path(folder) / f"{subject}_{sequences.NAMES[target]}"
        return cls(Path(f"{stem}_synth.nii.gz"), Path(f"{stem}_tsem.nii.gz") if tsem else None,
                   Path(f"{stem}.json"), halfwidth=Path(f"{stem}_halfwidth.nii.gz") if interval else None)

    @classmethod
    def for_bids(cls, deriv_root: str | Path, subject: str, session: str | None, target: int,
                 tsem: bool, *, interval: bool = False) -> "OutputPaths":
        """The images and their sidecars by the derivatives naming, and the run's record in the
        derivative's `logs/` (tsf_trt.inputs.bids_derivatives: the rule and why)."""
        from tsf_trt.inputs.bids_derivatives import derivative_paths, halfwidth_paths, record_path

        named = derivative_paths(deriv_root, subject, session, target)
        halfwidth, halfwidth_sidecar = halfwidth_paths(deriv_root, subject, session, target) if interval \
            else (None, None)
        return cls(named.synth, named.tsem if tsem else None, record_path(deriv_root, subject, session, target),
                   named.tsem_sidecar if tsem else None, halfwidth, halfwidth_sidecar, named.synth_sidecar)

    @classmethod
    def of(cls, subject: Subject, root: Path, target: int, tsem: bool, *, own_folder: bool,
           interval: bool = False, synth_name: str | None = None) -> "OutputPaths":
        """Where `subject`'s outputs go, the one rule: a BIDS subject's by the derivatives naming
        under `root`; another's in `root` (`root/<subject>/` with `own_folder`, folder mode).
        With `interval` (a calibration is applied), the half-width map's name too. `synth_name`
        (`infer -o NAME.nii.gz`) names one subject's synthesis file in `root`: never a folder
        run's (each subject needs names of its own) nor a BIDS derivative's (BIDS names them;
        InferRequest.outputs_of refuses both to the user, tsf_trt.runs.request.file_output_error)."""
        if synth_name is not None and (own_folder or subject.bids is not None):
            raise ValueError("synth_name is for one subject outside a folder run and outside BIDS")
        if subject.bids is not None:
            return cls.for_bids(root, *subject.bids, target, tsem, interval=interval)
        folder = root / subject.name if own_folder else root
        return cls.for_subject(folder, subject.name, target, tsem, interval=interval, synth_name=synth_name)

    @property
    def folder(self) -> Path:
        """The images' folder: where folder mode claims the subject (a BIDS record is elsewhere: folders)."""
        return self.synth.parent

    def folders(self) -> list[Path]:
        """Every folder these outputs are in (their temporary files too), the images' first."""
        return list(dict.fromkeys(p.parent for p in self.all()))

    def all(self) -> list[Path]:
        """Every output, in the order they are published: the report, which marks completion, last."""
        return [p for p in (self.synth, self.sidecar, self.tsem, self.tsem_sidecar, self.halfwidth,
                            self.halfwidth_sidecar, self.report) if p is not None]

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
                                       "--overwrite; choose another --output or --subject-name")


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


#: What the values of each image mean: the report's and the BIDS sidecars' words.
UNITS = {"synth": f"network output [-1, 1] mapped linearly to [0, {OUTPUT_SCALE:g}]",
         "tsem": "|difference| of network outputs, [-1, 1] scale (paper Eq. 6)",
         "halfwidth": f"the synthesis's own units (0-{OUTPUT_SCALE:g}): the interval is synth ± halfwidth"}


def _beside(path: Path | None, record: Path) -> str | None:
    """`path` as the record names it: relative to the record's folder (a name in folder mode)."""
    return None if path is None else Path(os.path.relpath(path, record.parent)).as_posix()


def build_report(result: Result, paths: OutputPaths, inputs: dict[int, Path], *,
                 subject: str, model_id: str, backend: str, extra: dict[str, Any] | None = None,
                 precision: dict[str, str] | None = None, interval: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report, the run's record (host, pid, timings: never in a BIDS sidecar); `interval` the
    calibrated interval's block (tsf_trt.runs.outcomes.IntervalPlan.block): the one statement of how far
    to trust the synthesis ("tsem" only summarises the TSEM map). Outputs are named relative to it."""
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
            "synth": _beside(paths.synth, paths.report),
            "tsem": _beside(paths.tsem, paths.report),
            "synth_units": UNITS["synth"],
            "tsem_units": UNITS["tsem"],
            "halfwidth": _beside(paths.halfwidth, paths.report),
            "halfwidth_units": UNITS["halfwidth"],
            **({"sidecar": _beside(paths.sidecar, paths.report)} if paths.sidecar is not None else {}),
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
                  halfwidth_sidecar: dict[str, Any] | None = None, remove: Sequence[Path] = (),
                  sidecar: dict[str, Any] | None = None) -> None:
    """Write every file under a temporary name; publish them together when all are complete.

    The images go first and the report last, so the report marks a finished subject.
    `before_publish` runs just before the first rename (folder mode checks there that
    its claim on the subject still holds). Should anything fail between the renames
    (Ctrl-C included), the files this call put in place are removed again, and only those.
    `half_width` (output units, on `like`'s grid) goes to `paths.halfwidth`. `remove`: outputs
    of an earlier run that this one does not write (a half-width map where the interval no
    longer applies), removed just before the renames, only if tsf-trt's own, so no file is
    left that looks like this synthesis's interval. `sidecar`, `tsem_sidecar` and `halfwidth_sidecar`:
    a BIDS derivative's sidecars (tsf_trt.runs.bids_outputs.bids_sidecars), one for each sidecar name.
    """
    if paths.tsem is not None and result.tsem is None:
        raise ValueError("TSEM output requested but the result has none")
    if (paths.halfwidth is None) != (half_width is None):
        raise ValueError("a half-width map and its output name go together")
    sidecars = {path: content for path, content in ((paths.sidecar, sidecar), (paths.tsem_sidecar, tsem_sidecar),
                                                    (paths.halfwidth_sidecar, halfwidth_sidecar)) if path is not None}
    if any(content is None for content in sidecars.values()):
        raise ValueError("a BIDS sidecar's name and its content go together")
    inputs = Inputs.of(inputs)
    paths.refuse_inputs(inputs)
    with atomic_group(paths.all(), overwrite) as tmps:
        files = dict(zip(paths.all(), tmps))
        images = result.output_arrays()  # the one mapping of a result to its files, shared with Result.to_nifti
        for kind, path in (("synth", paths.synth), ("tsem", paths.tsem)):
            if path is not None:
                with disk_full_as_error(path):
                    write_volume(like, images[kind][0], files[path], description=images[kind][1])
        if paths.halfwidth is not None:
            with disk_full_as_error(paths.halfwidth):
                write_volume(like, np.ascontiguousarray(half_width, dtype=np.float32), files[paths.halfwidth],
                             description=f"tsf-trt {result.task} interval half-width")
        for path, content in sidecars.items():
            with disk_full_as_error(path):
                files[path].write_text(json.dumps(content, indent=2) + "\n")
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
    from tsf_trt.inputs.bids_derivatives import described_model

    described = described_model(root / "dataset_description.json") if bids else None
    if described not in (None, model_id):
        raise ModelConflict(f"{root / 'dataset_description.json'}: describes outputs of model {described}, and this "
                            f"run's model is {model_id}: {ONE_MODEL}")

