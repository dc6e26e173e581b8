"""What `infer` leaves on disk for one subject, written so that it is all or nothing.

Three files per subject and target: the synthesis, the TSEM and a JSON report. Each
is written under a temporary name and renamed when complete; the report goes last,
so its presence marks a finished subject (what folder mode's resume relies on).
"""

from __future__ import annotations

import json
import platform
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, sequences
from .pipeline import Result
from .preprocess import OUTPUT_SCALE, to_output_intensity
from .volume import Volume, atomic_path, check_writable, save_volume

REPORT_VERSION = 1


@dataclass(frozen=True)
class OutputPaths:
    synth: Path
    tsem: Path | None
    report: Path

    @classmethod
    def for_subject(cls, folder: str | Path, subject: str, target: int, tsem: bool) -> "OutputPaths":
        stem = Path(folder) / f"{subject}_{sequences.NAMES[target]}"
        return cls(Path(f"{stem}_synth.nii.gz"), Path(f"{stem}_tsem.nii.gz") if tsem else None,
                   Path(f"{stem}.json"))

    def all(self) -> list[Path]:
        return [p for p in (self.synth, self.tsem, self.report) if p is not None]

    def complete(self) -> bool:
        """True when a previous run finished this subject (report last, so it marks the end)."""
        if not all(p.is_file() for p in self.all()):
            return False
        try:
            return json.loads(self.report.read_text()).get("complete") is True
        except (OSError, ValueError):
            return False

    def check(self, overwrite: bool) -> None:
        """Fail before any work when an output exists or its folder is unwritable."""
        for path in self.all():
            check_writable(path, overwrite)


def build_report(result: Result, paths: OutputPaths, inputs: dict[int, Path], *,
                 subject: str, model_id: str, backend: str, extra: dict[str, Any] | None = None,
                 qc: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report; `qc` is the TSEM QC block (tsf_trt.qc.qc_block), None without TSEM."""
    return {
        "tsf_trt_version": __version__,
        "report_version": REPORT_VERSION,
        "subject": subject,
        "task": result.task,
        "target": sequences.NAMES[result.target],
        "sources": {sequences.NAMES[i]: str(inputs[i]) for i in result.sources},
        "weights": result.weights_by_name(),
        "model_id": model_id,
        "backend": backend,
        "batch_size": result.batch_size,
        "outputs": {
            "synth": paths.synth.name,
            "tsem": paths.tsem.name if paths.tsem else None,
            "synth_units": f"network output [-1, 1] mapped linearly to [0, {OUTPUT_SCALE:g}]",
            "tsem_units": "|difference| of network outputs, [-1, 1] scale (paper Eq. 6)",
        },
        "tsem": result.tsem_summary(),
        "qc": qc,
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "host": platform.node(),
        **(extra or {}),
        "complete": True,
    }


def write_outputs(result: Result, like: Volume, paths: OutputPaths, report: dict[str, Any], *,
                  overwrite: bool) -> None:
    """Write every file to a temporary name first; rename only when all are complete.

    Should anything fail between the renames (Ctrl-C included), the files this call
    already put in place are removed again, so a subject is never left half-written.
    """
    if paths.tsem is not None and result.tsem is None:
        raise ValueError("TSEM output requested but the result has none")
    before = {p: _identity(p) for p in paths.all()}
    try:
        with ExitStack() as stack:
            # ExitStack publishes in reverse order of entry: the report is entered first
            # so that it is renamed last, after both images are in place.
            report_tmp = stack.enter_context(atomic_path(paths.report, overwrite))
            synth_tmp = stack.enter_context(atomic_path(paths.synth, overwrite))
            save_volume(like, to_output_intensity(result.image), synth_tmp, overwrite=True,
                        description=f"tsf-trt {result.task} synthesis")
            if paths.tsem is not None:
                tsem_tmp = stack.enter_context(atomic_path(paths.tsem, overwrite))
                save_volume(like, np.ascontiguousarray(result.tsem, dtype=np.float32), tsem_tmp, overwrite=True,
                            description=f"tsf-trt {result.task} TSEM")
            report_tmp.write_text(json.dumps(report, indent=2) + "\n")
    except BaseException:
        for path, identity in before.items():
            if _identity(path) != identity:  # put in place by this call
                path.unlink(missing_ok=True)
        raise


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns
