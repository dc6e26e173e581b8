"""A BIDS derivative's files besides the images: each image's sidecar, the derivative's
dataset_description.json and .bidsignore, and its folder of run records
(tsf_trt.inputs.bids_derivatives names them all and says why).

A sidecar holds BIDS fields and one `tsf-trt` block (SIDECAR_BLOCK), nothing about the run that
made it: the run's record (OutputPaths.report, tsf_trt.runs.outputs.build_report) holds host, pid,
timings, the frame, the backend and precision, and goes last, so it marks a finished subject.

BIDS fields, from the schema's rules for derivatives ("Common data types and metadata"):
"Description" (RECOMMENDED), "Sources" (BIDS URIs: the raw inputs through DatasetLinks "raw")
and "SkullStripped", REQUIRED for every image derivative of MRI that is not a mask or a
segmentation. SkullStripped follows the inputs (skull_stripped): the network was trained on
skull-stripped inputs and reproduces their empty background, so a synthesis and its maps are
skull-stripped exactly when the inputs are; it is false when tsf_trt.inputs.preflight found any
input not skull-stripped. The background is the network's output there, not set to zero.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tsf_trt import sequences
from tsf_trt.errors import InputError
from tsf_trt.files.atomic import atomic_path, make_folder
from tsf_trt.files.ownership import MARK, is_own_file
from tsf_trt.inputs.bids_derivatives import (BIDSIGNORE, RECORD_FOLDER, bids_uri, dataset_description,
                                             described_model, legacy_map_paths)
from tsf_trt.inputs.subjects import Subject
from tsf_trt.runs.outputs import UNITS, OutputPaths
from tsf_trt.synthesis.pipeline import Result
from tsf_trt.synthesis.preprocess import OUTPUT_SCALE
from tsf_trt.uncertainty.calibration import STATEMENT
from tsf_trt.version import __version__

_log = logging.getLogger(__name__)

#: The one non-BIDS key of a sidecar (docs/outputs.md, "BIDS derivatives"): its "version" and "model_id" say
#: what made the image (and tell tsf-trt's own files: tsf_trt.files.ownership); "record" names the
#: run's record. The synthesis's block adds "task", "weights" (ω per input), "units" and its maps;
#: a map's adds "units" and "map_of" (the synthesis it describes); the half-width map's, "alpha".
SIDECAR_BLOCK = MARK
#: The preflight finding (tsf_trt.inputs.preflight.KINDS) that makes SkullStripped false.
NOT_SKULL_STRIPPED = "not-skull-stripped"


def skull_stripped(finding_kinds: Iterable[str]) -> bool:
    """SkullStripped of a synthesis and its maps (module docstring): false when preflight found an
    input not skull-stripped, true otherwise."""
    return NOT_SKULL_STRIPPED not in set(finding_kinds)


def bids_sidecars(subject: Subject, paths: OutputPaths, result: Result, deriv_root: Path, *, model_id: str,
                  skull_stripped: bool, interval: dict[str, Any] | None
                  ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
    """The sidecars of the synthesis, the TSEM and the half-width map (None for each file `paths`
    does not name, all None outside BIDS). "Sources": the raw inputs for the synthesis and the TSEM
    (the network made both from them), the synthesis for the half-width map (computed from it)."""
    if subject.bids is None:
        return None, None, None
    raw = raw_root(subject)
    sources = [bids_uri(subject.inputs[i], raw) if raw is not None else str(subject.inputs[i]) for i in result.sources]

    def here(path: Path | None) -> str | None:  # a file of this derivative, as a BIDS URI
        return None if path is None else bids_uri(path, deriv_root, "")

    block = {"version": __version__, "model_id": model_id, "record": here(paths.report)}
    common = {"SkullStripped": skull_stripped}
    synth = {"Description": f"{sequences.DISPLAY[result.target]} synthesised by TSF-Seq2Seq from "
                            f"{', '.join(sequences.DISPLAY[i] for i in result.sources)} (tsf-trt)",
             "Sources": sources, **common,
             SIDECAR_BLOCK: {**block, "task": result.task, "weights": result.weights_by_name(),
                             "units": UNITS["synth"], "tsem": here(paths.tsem), "halfwidth": here(paths.halfwidth)}}
    tsem = None if paths.tsem_sidecar is None else {
        "Description": "TSEM: |output with - output without task-specific attention| of the synthesis "
                       "(paper Eq. 6), in network units; high where the network had to refine",
        "Sources": sources, **common,
        SIDECAR_BLOCK: {**block, "map_of": here(paths.synth), "units": UNITS["tsem"]}}
    halfwidth = None if paths.halfwidth_sidecar is None or interval is None else {
        "Description": f"interval half-width: {STATEMENT} (alpha {interval['alpha']:g}); in the synthesis's "
                       f"own units (0-{OUTPUT_SCALE:g})",
        "Sources": [here(paths.synth)], **common,
        SIDECAR_BLOCK: {**block, "map_of": here(paths.synth), "units": UNITS["halfwidth"],
                        "alpha": interval["alpha"]}}
    return synth, tsem, halfwidth


def raw_root(subject: Subject) -> Path | None:
    """The raw BIDS dataset a BIDS subject's inputs are in (the folder above its sub-<label>/)."""
    if subject.bids is None or not subject.inputs:
        return None
    for folder in next(iter(subject.inputs.values())).parents:
        if folder.name == f"sub-{subject.bids[0]}":
            return folder.parent
    return None


def legacy_outputs(subject: Subject, deriv_root: Path, target: int) -> list[Path]:
    """Maps an earlier version left under the names it gave them (an image's suffix: what this version
    fixes), tsf-trt's own only: a run that redoes the subject removes them (write_outputs' `remove`)."""
    if subject.bids is None:
        return []
    return [p for p in legacy_map_paths(deriv_root, *subject.bids, target) if is_own_file(p)]


def start_derivative(deriv_root: Path, model_id: str, source: Path | None, *, overwrite: bool = False) -> None:
    """What a BIDS derivative has besides its subjects, before the first subject: its
    dataset_description.json, its .bidsignore and its folder of run records."""
    write_dataset_description(deriv_root, model_id, source, overwrite=overwrite)
    write_bidsignore(deriv_root)
    make_folder(deriv_root / RECORD_FOLDER)


def write_dataset_description(deriv_root: Path, model_id: str, source: Path | None, *,
                              overwrite: bool = False) -> Path | None:
    """The derivative's dataset_description.json, written once (several runs may share the
    folder: the first to finish it wins, an existing one is left as it is); with `overwrite`,
    one that names another model is replaced (the run replaces that model's outputs). Returns
    the path when this call wrote it."""
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


def write_bidsignore(deriv_root: Path) -> Path | None:
    """The derivative's .bidsignore (BIDSIGNORE): written when there is none; tsf-trt's own (by its
    first line) gets the lines it lacks; another's is left as it is, with a warning naming them
    (a validator then reports the maps and records as files the specification does not define).
    Returns the path when this call wrote it."""
    path = deriv_root / ".bidsignore"
    try:
        lines: list[str] | None = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = None
    except (OSError, UnicodeDecodeError):
        lines = []  # unreadable: not ours to replace
    if lines is None:
        wanted = list(BIDSIGNORE)
    else:
        missing = [line for line in BIDSIGNORE[1:] if line not in lines]
        if not missing:
            return None
        if not is_own_file(path):
            _log.warning("%s was not written by tsf-trt and lacks %s: a BIDS validator will report tsf-trt's "
                         "maps and run records as files the specification does not define", path, ", ".join(missing))
            return None
        wanted = [*lines, *missing]
    text = "\n".join(wanted) + "\n"
    try:
        with atomic_path(path, overwrite=lines is not None, own_location=lines is not None) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except InputError:
        if lines is None and path.exists():
            return None  # another run wrote it first
        raise
    return path
